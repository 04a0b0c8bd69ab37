"""The run's CUDA device becomes the current device (--device cuda:1 in a single process).

Kernels launched without an explicit device (Triton's among them) go to torch.cuda.current_device(),
so the trainer must make its resolved device current. No GPU is needed: set_device is recorded.
"""

import pytest
import torch

from scstn_vcn.configs import load_config
from scstn_vcn.engine import runtime
from scstn_vcn.engine import trainer as trainer_module


@pytest.fixture
def set_device_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(torch.device(device)))
    return calls


def test_activate_device_sets_only_indexed_cuda_devices(set_device_calls):
    assert runtime.activate_device(torch.device("cpu")) == torch.device("cpu")
    runtime.activate_device(torch.device("cuda"))  # no index: whatever is current stays current
    assert set_device_calls == []
    assert runtime.activate_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert set_device_calls == [torch.device("cuda", 1)]


class _StopAfterDevice(Exception):
    pass


def test_trainer_makes_its_cuda_device_current(monkeypatch, set_device_calls):
    def stop(*args, **kwargs):
        raise _StopAfterDevice  # the rest of the set-up would need the GPU itself

    monkeypatch.setattr(trainer_module, "resolve_device", lambda name, local_rank=0: torch.device("cuda", 1))
    monkeypatch.setattr(trainer_module, "choose_backend", stop)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        with pytest.raises(_StopAfterDevice):
            trainer_module.Trainer(load_config("demo"), progress=False, say=lambda *a, **k: None)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    assert set_device_calls == [torch.device("cuda", 1)]
