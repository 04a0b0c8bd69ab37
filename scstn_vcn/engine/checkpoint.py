"""Checkpoints: plain data, written atomically, checked on load.

A checkpoint is a dict saved by torch.save with
    format, version, epoch (epochs completed), model, optimizer, scheduler, rng, config, identity
where `identity` (num_classes, backbone, variant, ablation, kwargs, input_size) says what model the
weights fit. Everything in it is a tensor or plain data (dict, list, str, int, float, bool, None), so
it is read with `torch.load(..., weights_only=True)`: PyTorch's restricted unpickler, which builds
tensors and containers and refuses every other global. A file that needs anything else (a class, a
function such as os.system: a pickle can call any of them) is refused with the names it would call,
before any of it runs; scstn-vcn never falls back to a full unpickle.

Version 1 checkpoints kept numpy's RNG state as a numpy array, which the restricted unpickler does not
build; `convert_v1_checkpoint` (the `scstn-vcn convert-checkpoint OLD NEW --trust` command) rewrites
one as version 2, reading it with the unpickler allowed exactly the numpy globals such a file holds.

Writing goes to a temporary file in the destination folder, which is flushed, fsync'ed and then
os.replace'd over the destination: a crash or a full disk mid-write leaves the previous file as it
was, never a truncated one.
"""

import os
import pickle
import pickletools
import re
import stat
import tempfile
import zipfile

import numpy as np
import torch

FORMAT = "scstn-vcn-checkpoint"
VERSION = 2
CONVERT_HINT = "scstn-vcn convert-checkpoint {path} NEW.pth --trust"


class CheckpointError(RuntimeError):
    """A checkpoint or model file that is missing, unreadable, unsafe or made for another model; the
    message names its path."""


def _some(items, limit=3):
    """The first `limit` of `items`, and how many more there are: keeps an error message on one short line."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ------------------------------------------------------------------------------ writing


PROC_STATUS = "/proc/self/status"


def _umask_from_proc():
    """The umask from the `Umask:` line of /proc/self/status (Linux 4.7 and later), or None where there is none."""
    try:
        with open(PROC_STATUS) as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mode_of_a_new_file():
    """The mode the kernel gives a file created with 0o666 (that is, with the umask applied), from a probe file
    in a fresh private folder."""
    folder = tempfile.mkdtemp(prefix="scstn-vcn-umask-")
    try:
        probe = os.path.join(folder, "probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            return stat.S_IMODE(os.stat(probe).st_mode)
        finally:
            os.unlink(probe)
    finally:
        os.rmdir(folder)


def default_file_mode():
    """The mode a file created with open() gets (0o666 less the umask): mkstemp's private 0o600 is right for
    the temporary file, not for the model or features it becomes, which the user may want to share.

    The umask is read without changing it: os.umask can only set it (returning the old value), and setting
    it to read it is process-wide, so a file another thread creates in between would get mode 0o666. Linux
    says it in /proc/self/status; where that has no `Umask:` line (before Linux 4.7, without /proc, other
    systems) a probe file created with 0o666 shows the mode the umask leaves."""
    umask = _umask_from_proc()
    return _mode_of_a_new_file() if umask is None else 0o666 & ~umask


def atomic_write(path, write):
    """Call write(handle) on a temporary file beside `path`, then rename it to `path`: `path` is either
    the old file or the complete new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Leave no temporary file behind; the destination was never touched.
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    # Persist the rename itself (the directory entry); not supported on every platform.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj, path):
    """torch.save `obj` to `path` so that `path` is either the old file or the complete new one."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def plain_data(value, where):
    """`value` as plain data (dict with str keys, list, str, int, float, bool, None; tuples become lists,
    paths strings), which both torch.load(weights_only=True) and JSON read; TypeError names the entry
    that is none of these."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    # A subclass (numpy's float64 is a float) or a numpy scalar pickles as its own class: store the plain value.
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, np.generic) and type(value.item()) in (bool, int, float, str):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [plain_data(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, a saved configuration needs str keys")
            out[key] = plain_data(item, f"{where}.{key}")
        return out
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be saved; "
        f"use str, int, float, bool, None, lists and dicts"
    )


def unwrap(model):
    """The module under DistributedDataParallel (its state_dict keys have no 'module.' prefix)."""
    return model.module if hasattr(model, "module") else model


def make_checkpoint(model, optimizer, scheduler, epoch, config, identity, rng_state, extra=None):
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state,
        "config": plain_data(config, "config"),
        "identity": plain_data(identity, "identity"),
    }
    if extra:
        state.update(extra)
    return state


def save_checkpoint(path, **kwargs):
    atomic_torch_save(make_checkpoint(**kwargs), path)


# ------------------------------------------------------------------------------ reading


def looks_like_safetensors(path):
    """Whether the file starts as a safetensors file does: an 8-byte little-endian header length that fits
    in the file, then the JSON header's '{'."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _top_level_pickle(path):
    """The bytes of the pickle that holds the object of a torch file (data.pkl of the zip archive torch.save
    writes), or None. Only read, never run."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                return None
            info = archive.getinfo(names[0])
            if info.file_size > 64 * 2**20:  # a checkpoint's object pickle is kilobytes; the tensors are elsewhere
                return None
            return archive.read(info)
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def static_format_tag(path):
    """(format tag, version) of a torch file read as opcodes only (pickletools, which executes nothing):
    the values following the first 'format' and 'version' strings, as make_checkpoint writes them first."""
    data = _top_level_pickle(path)
    tag = version = None
    if data is None:
        return tag, version
    previous = None
    try:
        for index, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if index > 64:
                break
            if opcode.name in ("BINPUT", "LONG_BINPUT", "MEMOIZE", "PUT", "MARK", "PROTO", "FRAME"):
                continue
            if previous == "format" and isinstance(arg, str) and tag is None:
                tag = arg
            if previous == "version" and isinstance(arg, int) and version is None:
                version = arg
            previous = arg if isinstance(arg, str) else None
    except Exception:  # a garbled pickle: whatever was read so far
        pass
    return tag, version


def unsafe_globals(path, error):
    """The globals (module.name) a torch file's pickle would call that a weights-only load refuses: from
    torch's static scan of the archive, or else from the unpickler's error message."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))


# The globals a version-1 checkpoint holds beyond plain data: numpy's RNG key array and its dtype. The pickle
# names the array constructor by the module it had in the numpy that wrote it (numpy.core before 2.0).
def _numpy_v1_globals():
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


NUMPY_V1_NAMES = frozenset(
    {
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.UInt32DType",
    }
)


def _refusal(path, error):
    """The CheckpointError for a file the weights-only load refused or could not read."""
    names = unsafe_globals(path, error) if isinstance(error, pickle.UnpicklingError) else []
    if names:
        tag, version = static_format_tag(path)
        if tag == FORMAT and version == 1 and set(names) <= NUMPY_V1_NAMES:
            return CheckpointError(
                f"checkpoint {path}: format version 1, which keeps numpy's RNG state as a pickled numpy array that "
                f"scstn-vcn no longer unpickles; if you trust where the file came from, convert it once with "
                f"`{CONVERT_HINT.format(path=path)}`"
            )
        return CheckpointError(
            f"checkpoint {path}: refused, it is not plain data: its pickle would call {_some(names, 4)}, which a "
            f"weights-only load does not allow (scstn-vcn writes only tensors and plain values); nothing in it was run"
        )
    if looks_like_safetensors(path):
        return CheckpointError(
            f"checkpoint {path}: is a safetensors model file (inference weights only); this needs the training "
            f"checkpoint (checkpoint.pth) with its optimizer and RNG state"
        )
    text = str(error).strip()
    if isinstance(error, pickle.UnpicklingError):
        # torch's message goes on to suggest weights_only=False; keep only what the restricted unpickler found.
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        text = found.group(1) if found else "the restricted unpickler refused it"
    reason = text.splitlines()[0] if text else ""
    return CheckpointError(
        f"checkpoint {path}: cannot be read ({type(error).__name__}: {reason}); the file is corrupt or not a checkpoint"
    )


def _check_path(path, what="checkpoint", expected="a file written by `scstn-vcn train`"):
    if not os.path.exists(path):
        raise CheckpointError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path}: is a folder, expected {expected}")


def load_checkpoint(path, map_location="cpu"):
    """Read and sanity-check a checkpoint with torch.load(weights_only=True); CheckpointError names the path
    and the problem (missing, corrupt, not plain data, version 1, another format)."""
    path = os.fspath(path)
    _check_path(path)
    try:
        # Through a file object: torch.load would hand a path named *.safetensors to safetensors instead.
        with open(path, "rb") as handle:
            state = torch.load(handle, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises various types for a refused, truncated or garbled file
        raise _refusal(path, error) from None
    return _check_state(path, state)


def _check_state(path, state):
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an scstn-vcn checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {state.get('version')!r}, expected {VERSION}")
    for key in ("model", "config", "identity", "epoch"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path}: missing its {key!r} entry")
    for key in ("config", "identity"):
        if not isinstance(state[key], dict):
            raise CheckpointError(
                f"checkpoint {path}: its {key!r} entry is a {type(state[key]).__name__}, expected a dict"
            )
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"checkpoint {path}: its 'model' entry is not a state dict of tensors")
    return state


def convert_v1_checkpoint(old_path, new_path):
    """Rewrite the version-1 checkpoint `old_path` as a version-2 one at `new_path` (which must not exist).

    The old file is read with the weights-only unpickler allowed exactly the numpy globals of a version-1
    RNG state (the array constructor, ndarray, dtype, the uint32 dtype), not with a full unpickle; a file
    that needs any other global is refused. The new file is then read back with load_checkpoint."""
    from scstn_vcn.engine.seed import plain_rng_state

    old_path, new_path = os.fspath(old_path), os.fspath(new_path)
    _check_path(old_path)
    if os.path.exists(new_path):
        raise CheckpointError(
            f"{new_path}: already exists; give a new path for the converted checkpoint (the original is kept as it is)"
        )
    try:
        with torch.serialization.safe_globals(_numpy_v1_globals()), open(old_path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:
        names = unsafe_globals(old_path, error) if isinstance(error, pickle.UnpicklingError) else []
        beyond = [n for n in names if n not in NUMPY_V1_NAMES]
        if beyond:
            raise CheckpointError(
                f"checkpoint {old_path}: refused, its pickle would call {_some(beyond, 4)}, which a version-1 "
                f"checkpoint never holds (only numpy's RNG array beyond plain data); nothing in it was run"
            ) from None
        if names:  # only numpy's globals, yet not readable with them: not the arrays version 1 wrote
            raise CheckpointError(
                f"checkpoint {old_path}: its numpy content is more than the uint32 RNG array "
                f"of a version-1 checkpoint; not converted"
            ) from None
        raise _refusal(old_path, error) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {old_path}: not an scstn-vcn checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") == VERSION:
        raise CheckpointError(f"checkpoint {old_path}: already format version {VERSION}, nothing to convert")
    if state.get("version") != 1:
        raise CheckpointError(
            f"checkpoint {old_path}: format version {state.get('version')!r}; only version 1 converts to {VERSION}"
        )
    try:
        rng = state.get("rng")
        if rng is not None:
            rng = [plain_rng_state(s["python"], s["numpy"], s["torch"], s.get("cuda")) for s in rng]
        state.update(
            version=VERSION,
            rng=rng,
            config=plain_data(state.get("config"), "config"),
            identity=plain_data(state.get("identity"), "identity"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {old_path}: its RNG state or configuration is not what version 1 "
            f"wrote ({type(error).__name__}: {error})"
        ) from None
    _check_state(old_path, state)
    atomic_torch_save(state, new_path)
    return load_checkpoint(new_path)


# ------------------------------------------------------------------------------ checks


def check_identity(path, state, expected, what="checkpoint"):
    """Refuse a checkpoint whose model was built differently from the one being built now."""
    found = state["identity"]
    diffs = [
        f"{key}: {what} has {found.get(key)!r}, this run expects {expected[key]!r}"
        for key in expected
        if found.get(key) != expected[key]
    ]
    if diffs:
        raise CheckpointError(f"{what} {path} is of another configuration ({'; '.join(diffs)})")


def check_weights(path, weights, expected, what="checkpoint"):
    """Refuse `weights` unless its keys, shapes and dtypes are exactly those of the state dict `expected`
    (which may live on the meta device). Run before load_state_dict, which would otherwise copy the
    fitting tensors into the model before it complains about the rest."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{what} {path}: its weights are not a state dict of tensors")
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape (file vs model) {_some(shapes)}")
    dtypes = [
        f"{k} {weights[k].dtype} vs {v.dtype}"
        for k, v in expected.items()
        if k in weights and weights[k].dtype != v.dtype
    ]
    if dtypes:
        problems.append(f"dtype (file vs model) {_some(dtypes)}")
    if problems:
        raise CheckpointError(f"{what} {path}: its weights do not fit the model being built ({'; '.join(problems)})")


def load_model_weights(path, state, model, what="checkpoint"):
    """Check every key, shape and dtype, then load strictly: a mismatch is a CheckpointError naming the path,
    and the model is left untouched."""
    target = unwrap(model)
    check_weights(path, state["model"], target.state_dict(), what)
    target.load_state_dict(state["model"], strict=True)
