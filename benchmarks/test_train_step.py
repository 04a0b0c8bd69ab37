"""One training step (forward, Eq. 8 loss, backward, Adam) with the eager ops vs the fused backend.

CPU: resnet18-O at 128x64, batch 16 (4 identities x 4 images), eager vs native.
CUDA: the paper's R50-O at 384x128, batch 96 (16 x 6), bf16 autocast, eager vs triton vs native;
skipped without a GPU. Speeds go to benchmark.extra_info (images/s); nothing is asserted about them.
"""

import os
import time

import pytest
import torch

from scstn_vcn import ops
from scstn_vcn.engine.features import autocast_context
from scstn_vcn.engine.optim import build_optimizer
from scstn_vcn.losses import ReIDLoss
from scstn_vcn.models import build_model

CASES = {
    "cpu": dict(backbone="resnet18", size=(128, 64), P=4, K=4, amp="off", rounds=5),
    "cuda": dict(backbone="resnet50", size=(384, 128), P=16, K=6, amp="bf16", rounds=20),
}
OPTIM = {"lr": 5e-4, "weight_decay": 5e-4, "betas": [0.9, 0.999]}
_EAGER_MEDIAN = {}  # device -> eager median step time of this session (conftest runs eager first)


def _skip_reason(device, backend):
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    ok, why = ops.backend_status(backend, device)
    return None if ok else f"backend {backend!r} is not available on {device}: {why}"


@pytest.mark.parametrize(
    "device, backend", [("cpu", "eager"), ("cpu", "native"), ("cuda", "eager"), ("cuda", "triton"), ("cuda", "native")]
)
def test_train_step(benchmark, device, backend):
    reason = _skip_reason(device, backend)
    if reason:
        pytest.skip(reason)
    case = CASES[device]
    torch.manual_seed(0)
    dev = torch.device(device)
    num_classes = 64
    model = build_model(num_classes, backbone=case["backbone"], variant="O", input_size=case["size"]).to(dev)
    loss_fn = ReIDLoss(num_classes).to(dev)
    optimizer = build_optimizer(model, OPTIM)
    batch = case["P"] * case["K"]
    images = torch.randn(batch, 3, *case["size"], device=dev)
    labels = torch.arange(case["P"], device=dev).repeat_interleave(case["K"])

    def step():
        with autocast_context(dev, case["amp"]):
            total, _ = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return total

    with ops.use_backend(backend):
        model.train()
        step()  # warm-up: lazy initialisation, kernel compilation
        start = time.perf_counter()
        total = benchmark.pedantic(step, rounds=case["rounds"], iterations=1, warmup_rounds=1)
        elapsed = time.perf_counter() - start
    assert torch.isfinite(total)
    median = benchmark.stats.stats.median if benchmark.stats else elapsed / (case["rounds"] + 1)
    if backend == "eager":
        _EAGER_MEDIAN[device] = median
    elif device in _EAGER_MEDIAN:
        benchmark.extra_info["speedup_vs_eager"] = round(_EAGER_MEDIAN[device] / median, 3)
    benchmark.extra_info.update(
        {
            "device": device,
            "backend": backend,
            "backbone": case["backbone"],
            "input": list(case["size"]),
            "batch": batch,
            "amp": case["amp"],
            "images_per_s": round(batch / median, 1),
            "torch_threads": torch.get_num_threads(),
            # Other jobs on the machine slow CPU steps a lot (OpenMP oversubscription): keep the load with the numbers.
            "loadavg_1min": round(os.getloadavg()[0], 2),
        }
    )
