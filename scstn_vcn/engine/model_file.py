"""Model files: a trained model to share, as safetensors; and one way to open either kind of file for inference.

A model file holds the weights inference needs (the model's state dict without the ID classifiers, unless
asked for) in safetensors, a format that is a JSON header and raw tensor bytes, so reading one runs no
code. Its metadata (str -> str) carries

    format          "scstn-vcn-model"
    format_version  "1"
    config          what defines the model: model.backbone / variant / ablation / kwargs and data.name /
                    height / width, JSON (configs.model_settings); never how a run runs
    identity        what the weights fit (backbone, variant, ablation, kwargs, num_classes, input_size), JSON
    classifiers     "true" when the ID classifiers are in the file, else "false"
    epoch           epochs the model was trained for, when known
    threshold       when exported with one: the distance threshold for "same person", with the ROC point it
                    was measured at, JSON (engine.open_set)
    scstn_vcn       the version of scstn-vcn that wrote it

`open_model_source(path)` reads either a model file or a training checkpoint (decided by the file's
content: a safetensors header, else a torch file read with weights_only=True) and checks what it says
about itself. Whatever the file's configuration says beyond the model's settings (an older file carries
the whole training configuration: threads, workers, folders, device, evaluation settings) is ignored: the
recipient's run runs as their flags and the defaults say (configs.config_from_model).
`build_inference_model(source, config)` then builds the model twice: first on the meta
device (no memory), to compare every key, shape and dtype of the file with it before anything is
loaded, so a file of another configuration is refused before its tensors are read and a configuration
in a hostile file cannot make us allocate more than the file holds; then for real, loaded strictly.
"""

import dataclasses
import json
import os
import zipfile
from collections.abc import Callable

import torch

from scstn_vcn.engine.checkpoint import (
    CheckpointError,
    atomic_write,
    check_identity,
    check_weights,
    load_checkpoint,
    looks_like_safetensors,
    plain_data,
)

FORMAT = "scstn-vcn-model"
VERSION = "1"
SUFFIX = ".safetensors"
WRITTEN_BY = "a file written by `scstn-vcn export --format safetensors`"


@dataclasses.dataclass
class ModelSource:
    """What a checkpoint or a model file says about the model in it; `load()` reads the weights."""

    path: str
    kind: str  # "checkpoint" | "model file"
    config: dict  # DEFAULTS with the file's model settings (configs.config_from_model), validated
    identity: dict
    has_classifiers: bool
    epoch: int | None
    shapes: dict  # key -> shape of every tensor, known before the weights are read
    load: Callable[[], dict]  # () -> {key: tensor}
    threshold: dict | None = None  # a model file's threshold record (engine.open_set), if it carries one


def is_model_file(path):
    """A safetensors model file rather than a torch checkpoint: by its content, or, for a file that is neither
    (a broken one), by its .safetensors name, so that the error speaks of the format the user meant."""
    if looks_like_safetensors(path):
        return True
    return os.fspath(path).endswith(SUFFIX) and not zipfile.is_zipfile(path)


def classifier_keys(model):
    """The state-dict keys of the ID classifiers (used in training only)."""
    params = {id(p) for p in model.classifier_parameters()}
    return {name for name, p in model.named_parameters() if id(p) in params}


# ------------------------------------------------------------------------------ writing


def save_model_file(path, model, config, identity, with_classifiers=False, epoch=None, threshold=None):
    """Write `model`'s inference weights (and its classifiers with `with_classifiers`) with `config` and
    `identity` as metadata to `path`, atomically. Returns the number of bytes written."""
    from safetensors.torch import save as safetensors_bytes

    from scstn_vcn._version import __version__

    path = os.fspath(path)
    classifiers = classifier_keys(model)
    if with_classifiers and not classifiers:
        raise CheckpointError(
            f"{path}: the model has no ID classifiers to write (it was loaded from a model file "
            f"exported without --with-classifiers)"
        )
    # Own contiguous CPU copies: safetensors refuses tensors that share memory.
    tensors = {
        key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in model.state_dict().items()
        if with_classifiers or key not in classifiers
    }
    from scstn_vcn.configs import model_settings

    metadata = {
        "format": FORMAT,
        "format_version": VERSION,
        # The model's settings only: the author's threads, workers, folders and evaluation settings are theirs.
        "config": json.dumps(plain_data(model_settings(config), "config"), allow_nan=False),
        "identity": json.dumps(plain_data(identity, "identity"), allow_nan=False),
        "classifiers": "true" if with_classifiers else "false",
        "scstn_vcn": __version__,
    }
    if epoch is not None:
        metadata["epoch"] = str(int(epoch))
    if threshold is not None:
        from scstn_vcn.engine.open_set import check_threshold_record

        metadata["threshold"] = json.dumps(check_threshold_record(threshold, path), allow_nan=False)
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))
    return len(data)


# ------------------------------------------------------------------------------ reading


def _validated_config(path, kind, saved):
    """DEFAULTS with the model settings of the file's configuration, validated; the rest of it is ignored."""
    from scstn_vcn.configs import ConfigError, config_from_model

    if not isinstance(saved, dict):
        raise CheckpointError(f"{kind} {path}: its configuration is a {type(saved).__name__}, expected a mapping")
    try:
        return config_from_model(saved, source=f"{kind} {path}")
    except (ConfigError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{kind} {path}: its saved configuration is not valid ({error})") from None


def _check_identity_fields(path, kind, identity):
    num_classes = identity.get("num_classes") if isinstance(identity, dict) else None
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        got = f"num_classes={num_classes!r}" if isinstance(identity, dict) else f"a {type(identity).__name__}"
        raise CheckpointError(f"{kind} {path}: its identity has no positive integer num_classes (got {got})")


def _metadata_json(path, metadata, key):
    try:
        value = json.loads(metadata[key])
    except KeyError:
        raise CheckpointError(f"model file {path}: its metadata has no {key!r} entry; expected {WRITTEN_BY}") from None
    except ValueError as error:
        raise CheckpointError(f"model file {path}: its {key!r} metadata is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"model file {path}: its {key!r} metadata is a JSON {type(value).__name__}, expected an object"
        )
    return value


def read_model_file(path):
    """The ModelSource of a safetensors model file: its header and metadata read and checked, the tensors
    read only by load()."""
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors' SafetensorError (a truncated file, a bad header) and OSError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"model file {path}: not a readable safetensors file ({reason}); expected {WRITTEN_BY}"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"model file {path}: no scstn-vcn metadata (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}); expected {WRITTEN_BY}"
        )
    if metadata.get("format_version") != VERSION:
        raise CheckpointError(
            f"model file {path}: format version {metadata.get('format_version')!r}, this "
            f"scstn-vcn reads version {VERSION}"
        )
    config = _validated_config(path, "model file", _metadata_json(path, metadata, "config"))
    identity = _metadata_json(path, metadata, "identity")
    _check_identity_fields(path, "model file", identity)
    classifiers = metadata.get("classifiers")
    if classifiers not in ("true", "false"):
        raise CheckpointError(
            f"model file {path}: its 'classifiers' metadata is {classifiers!r}, expected 'true' or 'false'"
        )
    epoch = metadata.get("epoch")
    epoch = int(epoch) if epoch is not None and epoch.isdigit() else None

    def load():
        try:
            with safe_open(path, framework="pt", device="cpu") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:  # the file changed or broke since its header was read
            raise CheckpointError(f"model file {path}: its tensors cannot be read ({error})") from None

    threshold = metadata.get("threshold")
    if threshold is not None:
        from scstn_vcn.engine.open_set import ThresholdError, parse_threshold_metadata

        try:
            threshold = parse_threshold_metadata(threshold, f"model file {path}")
        except ThresholdError as error:
            raise CheckpointError(str(error)) from None
    return ModelSource(path, "model file", config, identity, classifiers == "true", epoch, shapes, load, threshold)


def read_training_checkpoint(path):
    """The ModelSource of a training checkpoint (read with weights_only=True by load_checkpoint)."""
    path = os.fspath(path)
    state = load_checkpoint(path)
    config = _validated_config(path, "checkpoint", state["config"])
    _check_identity_fields(path, "checkpoint", state["identity"])
    weights = state["model"]
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    return ModelSource(
        path, "checkpoint", config, state["identity"], True, int(state["epoch"]), shapes, lambda: weights
    )


def open_model_source(path):
    """A training checkpoint or a safetensors model file, by content; CheckpointError names the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{'model file' if path.endswith(SUFFIX) else 'checkpoint'} {path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a folder, expected a training checkpoint or a model file")
    return read_model_file(path) if is_model_file(path) else read_training_checkpoint(path)


def build_inference_model(source, config=None):
    """The model of `source` with its weights, on the CPU in eval mode. `config` (default: the source's own)
    must describe the same model (check_identity). Every key, shape and dtype is checked before any
    tensor goes into the model; the ID classifiers exist only when the source has them."""
    from scstn_vcn.configs import model_identity
    from scstn_vcn.engine.builders import build_model_from_config

    config = source.config if config is None else config
    num_classes = source.identity["num_classes"]
    check_identity(source.path, {"identity": source.identity}, model_identity(config, num_classes), what=source.kind)
    build_classes = num_classes if source.has_classifiers else None

    def build():
        try:
            return build_model_from_config(config, build_classes, pretrained=False)
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(
                f"{source.kind} {source.path}: its configuration does not build a model ({error})"
            ) from None

    with torch.device("meta"):
        expected = build().state_dict()
    if source.shapes != {key: tuple(value.shape) for key, value in expected.items()}:
        # Refused from the header alone: the same message as for the tensors, without reading them.
        dtype = {key: value.dtype for key, value in expected.items()}
        headers = {
            key: torch.empty(shape, dtype=dtype.get(key, torch.float32), device="meta")
            for key, shape in source.shapes.items()
        }
        check_weights(source.path, headers, expected, source.kind)
    weights = source.load()
    check_weights(source.path, weights, expected, source.kind)
    model = build()
    model.load_state_dict(weights, strict=True)
    return model.eval()
