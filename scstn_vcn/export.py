"""Export: query/gallery features to .npz, the inference model to ONNX (eager ops), and the model to share as a
safetensors model file (scstn_vcn.engine.model_file)."""

import os
import tempfile

import numpy as np
import torch

from scstn_vcn import ops
from scstn_vcn.engine import model_file
from scstn_vcn.engine.checkpoint import atomic_write, default_file_mode


def export_features(model, dataset, config, device, path):
    """query_/gallery_ {global, spatial, pids, camids, paths} arrays in one .npz file."""
    from scstn_vcn.engine.evaluator import extract_query_gallery

    amp = config["train"]["amp"] if device.type == "cuda" else "off"
    query, gallery = extract_query_gallery(model, dataset, config, device, amp)
    arrays = {}
    for prefix, result, items in (("query", query, dataset.query), ("gallery", gallery, dataset.gallery)):
        for name, feats in result["feats"].items():
            arrays[f"{prefix}_{name}"] = feats.numpy()
        arrays[f"{prefix}_pids"] = result["pids"].numpy()
        arrays[f"{prefix}_camids"] = result["camids"].numpy()
        arrays[f"{prefix}_paths"] = np.array([str(it[0]) for it in items])
    # Into a file object (np.savez appends .npz to a name without it), as a temporary file renamed into place.
    atomic_write(path, lambda handle: np.savez(handle, **arrays))
    return path


def export_model_file(model, config, source, path, with_classifiers=False, threshold=None):
    """`model` (built from `source`, a model_file.ModelSource, with `config`) as a safetensors model file:
    the inference weights, the ID classifiers only with `with_classifiers`, and `threshold` (a record of
    engine.open_set: the distance that decides "same person") when given; returns the file's size in bytes."""
    from scstn_vcn.configs import model_identity

    identity = model_identity(config, source.identity["num_classes"])
    if "trained_on" in source.identity:  # the data sets it was trained on (informative, never compared)
        identity["trained_on"] = source.identity["trained_on"]
    return model_file.save_model_file(
        path, model, config, identity, with_classifiers=with_classifiers, epoch=source.epoch, threshold=threshold
    )


class _InferenceWrapper(torch.nn.Module):
    """Tuple outputs (ONNX has no dicts): the features in a fixed order."""

    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, images):
        out = self.model(images)
        return tuple(out[n] for n in self.names)


def export_onnx(model, config, path, opset=20):
    """The eval-mode model, images (B, 3, H, W) -> global, spatial features, with a dynamic batch."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        from scstn_vcn.engine.errors import MissingDependencyError

        raise MissingDependencyError(
            f"ONNX export needs the onnx and onnxscript packages ({error}); `pip install onnx onnxscript`"
        ) from None
    model = model.cpu().eval()
    names = [n for n in ("global", "spatial") if n in model.feature_dims]
    wrapper = _InferenceWrapper(model, names).eval()
    height, width = int(config["data"]["height"]), int(config["data"]["width"])
    example = torch.randn(2, 3, height, width)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    # The fused backends are custom ops ONNX does not know; the eager ops are standard torch ops.
    with ops.use_backend("eager"), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=["images"],
            output_names=names,
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
        )
    # ONNXProgram.save wants a path: a fresh temporary name beside `path` (never a fixed, guessable one), renamed
    # into place once complete.
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path))
    )
    os.close(fd)
    try:
        program.save(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
