r"""The training objective of Eq. 8:

    L = L_sc + alpha L_sr + beta L_gc + gamma L_gr

L_sc, L_gc: label-smoothed cross entropy on the spatial / global logits; L_sr, L_gr: ranked list loss on
the spatial / global features after their BN layer. alpha = 0.5, beta = 0.5, gamma = 1e-7 as the paper
states. A branch absent from the model output drops its two terms (e.g. "Baseline": beta L_gc + gamma L_gr);
use_rll=False drops L_sr and L_gr ("w/o L_r").
"""

from torch import nn

from scstn_vcn.losses.label_smooth import CrossEntropyLabelSmooth
from scstn_vcn.losses.ranked_list import RankedListLoss


class ReIDLoss(nn.Module):
    """ReIDLoss(num_classes, ...)(outputs, labels) -> (total, parts).

    outputs: the model's train-mode dict {"global": {"features", "logits"}, "spatial": {...}} (other keys,
    e.g. "theta", are ignored). parts: the unweighted terms present, detached, under the names
    "spatial_ce" (L_sc), "spatial_rll" (L_sr), "global_ce" (L_gc), "global_rll" (L_gr).
    """

    def __init__(
        self,
        num_classes,
        alpha=0.5,
        beta=0.5,
        gamma=1e-7,
        use_rll=True,
        label_smoothing=0.1,
        rll_margin=0.4,
        rll_alpha=1.2,
        rll_tval=10.0,
    ):
        super().__init__()
        self.ce = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.rll = RankedListLoss(rll_margin, rll_alpha, rll_tval) if use_rll else None
        # (branch, weight of its CE, weight of its RLL), Eq. 8.
        self.weights = {"spatial": (1.0, float(alpha)), "global": (float(beta), float(gamma))}

    def forward(self, outputs, labels):
        total, parts = None, {}
        for branch, (w_ce, w_rll) in self.weights.items():
            if branch not in outputs:
                continue
            out = outputs[branch]
            if not isinstance(out, dict) or "features" not in out or "logits" not in out:
                raise ValueError(
                    f"outputs[{branch!r}] must be the train-mode dict with 'features' and 'logits' "
                    "(call the model in train mode)"
                )
            terms = [(f"{branch}_ce", w_ce, self.ce(out["logits"], labels))]
            if self.rll is not None:
                terms.append((f"{branch}_rll", w_rll, self.rll(out["features"], labels)))
            for name, weight, value in terms:
                parts[name] = value.detach()
                total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(f"outputs has neither a 'global' nor a 'spatial' branch (keys: {sorted(outputs)})")
        return total, parts
