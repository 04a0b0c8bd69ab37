"""Where a run executes: the device, and which backend runs the fused ops (--fused / --kernels)."""

import torch

from scstn_vcn import ops


def resolve_device(name="auto", local_rank=0):
    """'auto' -> the local rank's GPU when CUDA is available, else the CPU."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"train.device / --device: {name!r} is not a device (expected auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available to torch on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def activate_device(device):
    """Make a CUDA `device` the process's current device.

    Kernels launched without an explicit device (Triton's, torch's default-stream work, NCCL) use the
    current device; with --device cuda:1 in a single process the current device would otherwise stay
    cuda:0. CPU devices need nothing; a CUDA device without an index (plain "cuda") keeps the current one.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def choose_backend(fused, kernels, device):
    """The op backend for this run, set process-wide.

    Eager unless `fused`; fused means `kernels` (triton | native) or, when not given, triton on
    CUDA and native on the CPU. An unavailable backend raises ops.BackendUnavailableError with
    its reason: a run asked to be fused never silently runs eager.
    """
    if kernels is not None and not fused:
        raise ValueError(f"--kernels {kernels} only applies with --fused (the default runs the eager ops)")
    if not fused:
        name = "eager"
    else:
        name = kernels or ("triton" if device.type == "cuda" else "native")
    ok, why = ops.backend_status(name, device)
    if not ok:
        raise ops.BackendUnavailableError(
            f"--fused asked for the {name!r} backend on {device.type}, which is not available: {why}"
        )
    ops.set_backend(name)
    return name
