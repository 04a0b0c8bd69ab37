"""Benchmark-session set-up: Triton's interpreter without a GPU, eager-first ordering, the session's
eager medians, and machine details (GPU, versions, date) added to pytest-benchmark's JSON output."""

import datetime
import os
import pathlib
import platform

import pytest
import torch

# As in tests/conftest.py: Triton reads TRITON_INTERPRET when the kernels are imported (first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = pathlib.Path(__file__).parent.resolve()


def pytest_collection_modifyitems(session, config, items):
    """Run each eager case of test_ops.py before the other backends of the same case, so that their
    speed-up is computed against the eager median measured in this session (stable sort, eager first;
    other files' items keep their places)."""
    ops_file = _HERE / "test_ops.py"
    positions = [n for n, item in enumerate(items) if pathlib.Path(item.path).resolve() == ops_file]
    mine = [items[n] for n in positions]
    mine.sort(
        key=lambda item: 0 if getattr(item, "callspec", None) and item.callspec.params.get("backend") == "eager" else 1
    )
    for n, item in zip(positions, mine):
        items[n] = item


@pytest.fixture(scope="session")
def eager_medians():
    """(device, op, shape, dtype, mode) -> median seconds of the eager backend in this session."""
    return {}


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the numbers were measured on (lands in the --benchmark-json file)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    machine_info["torch_version"] = torch.__version__
    machine_info["triton_version"] = triton_version
    machine_info["cuda_runtime"] = torch.version.cuda
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["cpu_threads"] = torch.get_num_threads()
    machine_info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    machine_info["platform"] = platform.platform()
    machine_info["date_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
