"""Benchmarks of re-id evaluation: streaming ``evaluate_features`` vs the naive full distance
matrix + ``evaluate_rank``. Time is measured by pytest-benchmark (one round: each case takes
seconds); the peak extra memory goes in ``benchmark.extra_info``:

* CPU: peak resident-set size above the level at the start of the call (Linux: the high-water
  mark VmHWM is reset by writing 5 to /proc/self/clear_refs, then read from /proc/self/status).
* CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated at the start.

Speed is recorded, never asserted. Sizes: on the CPU 1,000 queries x 20,000 gallery images
with the paper's feature sizes (2048 global + 12,288 spatial, float32), and one query chunk
against an MSMT17-size gallery (82,161) to check the default chunk's memory; on CUDA the full
MSMT17 scale, 11,659 x 82,161 (skipped without a GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_utils import reset_peak_rss, status_kib

from scstn_vcn.metrics import DEFAULT_CHUNK_SIZE, cosine_distance, evaluate_features, evaluate_rank_full

DIMS = {"global": 2048, "spatial": 12288}
MSMT17_QUERY, MSMT17_GALLERY, MSMT17_IDS, MSMT17_CAMS = 11659, 82161, 3060, 15


def _measure_cpu(fn):
    """Run fn(); return (result, peak extra RSS in MiB or None where the peak cannot be reset)."""
    if not reset_peak_rss():
        return fn(), None
    base = status_kib("VmRSS")
    out = fn()
    return out, (status_kib("VmHWM") - base) / 1024


def _ids(rng, num_q, num_g, num_ids, num_cams):
    return (
        rng.integers(0, num_ids, num_q),
        rng.integers(0, num_ids, num_g),
        rng.integers(0, num_cams, num_q),
        rng.integers(0, num_cams, num_g),
    )


def _feats(n, gen, device="cpu", dtype=torch.float32):
    return {k: torch.randn(n, d, generator=gen, device=device, dtype=dtype) for k, d in DIMS.items()}


def _naive(qf, gf, q_pids, g_pids, q_cams, g_cams):
    """The full-matrix way: every (num_query, num_gallery) matrix at once, then evaluate_rank."""
    dists = {k: cosine_distance(qf[k], gf[k]) for k in qf}
    dists["fusion"] = dists["global"] + dists["spatial"]
    return {k: evaluate_rank_full(d, q_pids, g_pids, q_cams, g_cams) for k, d in dists.items()}


@pytest.fixture(scope="module")
def cpu_case():
    gen = torch.Generator().manual_seed(0)
    qf, gf = _feats(1000, gen), _feats(20000, gen)
    ids = _ids(np.random.default_rng(0), 1000, 20000, num_ids=700, num_cams=6)
    return qf, gf, ids


def _record(benchmark, peak_mib, **info):
    benchmark.extra_info.update(info)
    benchmark.extra_info["peak_extra_memory_mib"] = None if peak_mib is None else round(peak_mib, 1)
    benchmark.extra_info["memory_measure"] = "cpu peak RSS (VmHWM) above start"


@pytest.mark.slow
def test_bench_eval_streaming_cpu(benchmark, cpu_case):
    chunk_size = DEFAULT_CHUNK_SIZE
    qf, gf, ids = cpu_case
    out, peak = benchmark.pedantic(
        lambda: _measure_cpu(lambda: evaluate_features(qf, gf, *ids, chunk_size=chunk_size)), rounds=1, iterations=1
    )
    _record(benchmark, peak, queries=1000, gallery=20000, chunk_size=chunk_size, dtype="float32")
    benchmark.extra_info["fusion_mAP"] = out["fusion"]["mAP"]
    assert set(out) == {"global", "spatial", "fusion"}


@pytest.mark.slow
def test_bench_eval_naive_full_matrix_cpu(benchmark, cpu_case):
    qf, gf, ids = cpu_case
    out, peak = benchmark.pedantic(lambda: _measure_cpu(lambda: _naive(qf, gf, *ids)), rounds=1, iterations=1)
    _record(benchmark, peak, queries=1000, gallery=20000, dtype="float32")
    benchmark.extra_info["fusion_mAP"] = out["fusion"]["mAP"]
    assert set(out) == {"global", "spatial", "fusion"}


@pytest.mark.slow
def test_bench_eval_one_chunk_msmt17_gallery_cpu(benchmark):
    """One default-size query chunk (fusion on) against 82,161 gallery images: the per-chunk
    peak memory that the streaming evaluator needs at MSMT17 scale (small feature dims, so the
    features themselves are negligible)."""
    gen = torch.Generator().manual_seed(1)
    small = {"global": 32, "spatial": 64}
    qf = {k: torch.randn(DEFAULT_CHUNK_SIZE, d, generator=gen) for k, d in small.items()}
    gf = {k: torch.randn(MSMT17_GALLERY, d, generator=gen) for k, d in small.items()}
    ids = _ids(np.random.default_rng(1), DEFAULT_CHUNK_SIZE, MSMT17_GALLERY, MSMT17_IDS, MSMT17_CAMS)
    out, peak = benchmark.pedantic(
        lambda: _measure_cpu(lambda: evaluate_features(qf, gf, *ids)), rounds=1, iterations=1
    )
    _record(benchmark, peak, queries=DEFAULT_CHUNK_SIZE, gallery=MSMT17_GALLERY, chunk_size=DEFAULT_CHUNK_SIZE)
    assert out["fusion"]["num_valid_queries"] > 0


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_bench_eval_streaming_msmt17_cuda(benchmark, dtype):
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    qf, gf = _feats(MSMT17_QUERY, gen, device, dtype), _feats(MSMT17_GALLERY, gen, device, dtype)
    ids = _ids(np.random.default_rng(0), MSMT17_QUERY, MSMT17_GALLERY, MSMT17_IDS, MSMT17_CAMS)

    def run():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = evaluate_features(qf, gf, *ids)
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated(device) - base) / 2**20

    out, peak = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        queries=MSMT17_QUERY,
        gallery=MSMT17_GALLERY,
        chunk_size=DEFAULT_CHUNK_SIZE,
        dtype=str(dtype),
        peak_extra_memory_mib=round(peak, 1),
        memory_measure="torch.cuda.max_memory_allocated above start",
        device=torch.cuda.get_device_name(device),
    )
    assert out["fusion"]["num_valid_queries"] > 0
