"""Checkpoints: written atomically, checked on load.

A checkpoint is a dict saved by torch.save with
    format, version, epoch (epochs completed), model, optimizer, scheduler, rng, config, identity
where `identity` (num_classes, backbone, variant, ablation, kwargs) says what model the weights
fit. Writing goes to a temporary file in the destination folder, which is flushed, fsync'ed and
then os.replace'd over the destination: a crash or a full disk mid-write leaves the previous
checkpoint as it was, never a truncated one.
"""

import os
import tempfile

import torch

FORMAT = "scstn-vcn-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or made for another model; the message names its path."""


def atomic_torch_save(obj, path):
    """torch.save `obj` to `path` so that `path` is either the old file or the complete new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
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
        "config": config,
        "identity": identity,
    }
    if extra:
        state.update(extra)
    return state


def save_checkpoint(path, **kwargs):
    atomic_torch_save(make_checkpoint(**kwargs), path)


def load_checkpoint(path, map_location="cpu"):
    """Read and sanity-check a checkpoint; CheckpointError names the path and the problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a folder, expected a file written by `scstn-vcn train`")
    try:
        # weights_only=False: the checkpoint holds the RNG states (numpy arrays, tuples) and the
        # config; only load checkpoints you trust, as with any pickle.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises various types for a truncated/garbled file
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({type(error).__name__}: {error}); the file is corrupt or not a checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an scstn-vcn checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {state.get('version')!r}, expected {VERSION}")
    for key in ("model", "config", "identity", "epoch"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path}: missing its {key!r} entry")
    return state


def check_identity(path, state, expected):
    """Refuse a checkpoint whose model was built differently from the one being built now."""
    found = state["identity"]
    diffs = [
        f"{key}: checkpoint has {found.get(key)!r}, this run expects {expected[key]!r}"
        for key in expected
        if found.get(key) != expected[key]
    ]
    if diffs:
        raise CheckpointError(f"checkpoint {path} is of another configuration ({'; '.join(diffs)})")


def load_model_weights(path, state, model):
    """Load the weights strictly; a key/shape mismatch becomes a CheckpointError naming the path."""
    try:
        unwrap(model).load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model being built ({' '.join(first[:3])})"
        ) from None
