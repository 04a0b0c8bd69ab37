"""Which implementation runs an op: the process-wide backend setting and the availability checks.

Backends:
  "eager"  -- composed of torch ops; the reference, available everywhere.
  "triton" -- Triton kernels (scstn_vcn.kernels) on CUDA tensors; on CPU tensors only under the
              Triton interpreter (TRITON_INTERPRET=1 set before the kernels are imported).
  "native" -- the compiled extension scstn_vcn._C: C++ kernels for CPU tensors, CUDA kernels for
              CUDA tensors when the build had nvcc.

A backend that is asked for and not available raises BackendUnavailableError saying why and how to
get it; nothing falls back silently.
"""

import contextlib
import os

import torch

BACKENDS = ("eager", "triton", "native")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_NATIVE_OPS = tuple(
    f"scstn_vcn::{op}{suffix}"
    for op in ("channel_pool", "affine_hpool", "affine_hpool_separable", "vertical_proj")
    for suffix in ("", "_backward")
)
_setting = {"backend": "eager"}
_native_cache = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run on this machine or device."""


def check_backend_name(name, argument="backend"):
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def set_backend(name):
    """Set the process-wide default backend used when an op is called with backend=None."""
    _setting["backend"] = check_backend_name(name)


def get_backend():
    return _setting["backend"]


@contextlib.contextmanager
def use_backend(name):
    """Temporarily switch the process-wide default backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def triton_interpreting():
    """True when Triton kernels run in the interpreter (CPU tensors), as set at kernel import."""
    import sys

    kernels = sys.modules.get("scstn_vcn.kernels")
    if kernels is not None:
        return kernels.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_status(device_type):
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return False, f"triton is not installed ({error}); `pip install triton` (Linux only)"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available to torch"
        if triton_interpreting():
            return False, "the Triton kernels were imported with TRITON_INTERPRET=1, which runs them on the CPU only"
        return True, ""
    if device_type == "cpu":
        if triton_interpreting():
            return True, ""
        return False, (
            "Triton compiles for GPUs; it runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
            "in the environment before scstn_vcn's kernels are imported (slow, meant for tests), or use "
            "backend='native' on the CPU"
        )
    return False, f"Triton kernels support CUDA (and CPU when interpreted) tensors, not {device_type!r}"


def op_namespace(backend):
    """torch.ops namespace of a fused backend."""
    return torch.ops.scstn_vcn if backend == "native" else torch.ops.scstn_vcn_triton


# Called once scstn_vcn._C has been imported (its schemas exist). ops/_wiring.py, which sits above this
# module, adds the function that attaches the fake functions and autograd formulas to the native ops:
# a hook instead of an import keeps the imports pointing down.
_on_native_loaded = []


def when_native_loaded(callback):
    """Run `callback()` once the extension is imported: now if it already is, else right after the import."""
    _on_native_loaded.append(callback)
    if _native_cache.get("import", (False,))[0]:
        callback()


def load_native():
    """Import the compiled extension once; returns (ok, reason why not)."""
    if "import" not in _native_cache:
        try:
            import scstn_vcn._C  # noqa: F401  (its import runs the TORCH_LIBRARY registrations)

            _native_cache["import"] = (True, "")
            for callback in _on_native_loaded:
                callback()
        except ImportError as error:
            _native_cache["import"] = (
                False,
                f"the compiled extension scstn_vcn._C did not import ({error}); build it by installing "
                "the package from its source tree: `pip install --no-build-isolation .`",
            )
    return _native_cache["import"]


def _native_status(device_type):
    # What the extension registered cannot change once it is loaded: look it up once per device type.
    if device_type not in _native_cache:
        _native_cache[device_type] = _native_status_uncached(device_type)
    return _native_cache[device_type]


def _native_status_uncached(device_type):
    ok, why = load_native()
    if not ok:
        return ok, why
    key = _DISPATCH_KEYS.get(device_type)
    if key is None:
        return False, f"the native extension has kernels for CPU and CUDA tensors, not {device_type!r}"
    missing = [op for op in _NATIVE_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
    if len(missing) == len(_NATIVE_OPS):
        if device_type == "cuda":
            return False, (
                "scstn_vcn._C was built without its CUDA kernels (torch was not a CUDA build or nvcc was "
                "not found at build time); reinstall with SCSTN_VCN_CUDA=1 to require them"
            )
        return False, "scstn_vcn._C has no CPU kernels registered (a broken build; reinstall the package)"
    if missing:
        return (
            False,
            f"scstn_vcn._C has no {key} kernel for {', '.join(missing)} (a broken build; reinstall the package)",
        )
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is available to torch"
    return True, ""


def backend_status(name, device):
    """(available, reason) for backend `name` on `device` (a torch.device or a string)."""
    check_backend_name(name)
    device_type = torch.device(device).type
    if name == "eager":
        return True, ""
    if name == "triton":
        return _triton_status(device_type)
    return _native_status(device_type)


def available_backends(device=None):
    """The backends that can run ops on `device` (default: cuda when available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return [name for name in BACKENDS if backend_status(name, device)[0]]


def resolve(backend, device):
    """The backend name to run on `device`: the argument, or the process-wide setting if None."""
    name = get_backend() if backend is None else backend
    check_backend_name(name)
    if torch.compiler.is_compiling():
        # Availability was checked when the code ran eagerly; the trace only needs the name.
        return name
    ok, why = backend_status(name, device)
    if not ok:
        raise BackendUnavailableError(
            f"backend {name!r} is not available for {torch.device(device).type} tensors: {why}"
        )
    return name
