"""Re-identification evaluation: cosine distance, CMC / mAP / mINP under the standard
(Market-1501 / torchreid) protocol, and a query-chunked streaming evaluator for large galleries.

* ``cosine_distance(a, b)``: 1 - cos, (len(a), len(b)).
* ``evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50) -> (cmc, mAP)``
  (torchreid's signature) and ``evaluate_rank_full(...) -> {"cmc", "mAP", "mINP", "num_valid_queries"}``;
  ``valid_query_mask(q_pids, g_pids, q_camids, g_camids)``: which queries have a valid match at all.
* ``evaluate_features(query_feats, gallery_feats, q_pids, g_pids, q_camids, g_camids, *, fusion,
  chunk_size, device, max_rank, rerank=None, query_expansion=None) -> {name: {"rank1", "rank5", "rank10",
  "mAP", "mINP", ...}}``; with ``rerank=RerankConfig(...)`` also "name+rk" rows, with
  ``query_expansion=QueryExpansionConfig(...)`` "name+qe" (and "name+qe+rk") rows; every row also has
  "TPR@FPR=1e-4" ... and "threshold@FPR=1e-4" ... (``fprs=``, scstn_vcn.metrics.verification).
* ``StreamingVerification(q_pids, q_camids, g_pids, g_camids, fprs)``: TPR at target FPRs over all kept
  query-gallery pairs, exact, fed chunks of distance rows.
* ``k_reciprocal_rerank(query, gallery, config)``: k-reciprocal re-ranked (q, g) distances in memory
  linear in q + g; ``alpha_query_expansion(query, gallery, config)``: alpha-QE'd features.
"""

from .distance import cosine_distance
from .query_expansion import QueryExpansionConfig, alpha_query_expansion
from .rank import evaluate_rank, evaluate_rank_full, valid_query_mask
from .rerank import RerankConfig, k_reciprocal_rerank
from .streaming import DEFAULT_CHUNK_SIZE, StreamingRankEvaluator, evaluate_features
from .verification import DEFAULT_FPRS, StreamingVerification

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_FPRS",
    "QueryExpansionConfig",
    "RerankConfig",
    "StreamingRankEvaluator",
    "StreamingVerification",
    "alpha_query_expansion",
    "cosine_distance",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_rank_full",
    "k_reciprocal_rerank",
    "valid_query_mask",
]
