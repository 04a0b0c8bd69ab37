"""FeatureExtractor: a trained model as a function from images to re-id features.

    fe = FeatureExtractor("runs/r50o_market1501/checkpoint.pth")   # or a model.safetensors file
    q = fe(["query.jpg"])                     # {"global": (1, Dg), "spatial": (1, Ds)} float32 CPU
    g = fe(gallery_paths)
    d = fe.distance(q, g)                     # (1, len(gallery)) fused cosine distance, as evaluated
    d, same = fe.verify("a.jpg", "b.jpg")     # (1,) distance, and whether it is <= the model's threshold

The model is rebuilt from the file's model settings (no data set is needed; how it runs, the device,
backend, batch size and autocast, is this constructor's, never the file's) and run in eval
mode with the evaluation transform (resize to the trained input size, ImageNet normalisation), so a
feature equals the one `scstn-vcn eval` computes for the same image file (on CUDA, `eval` autocasts
with the run's train.amp: pass the same `amp` to get its numbers).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from PIL import Image

from scstn_vcn.configs import MAX_BATCH

BRANCHES = ("global", "spatial")


class FeatureExtractor:
    """FeatureExtractor(checkpoint, device="auto", backend=None, batch_size=64, amp="off").

    checkpoint   a training checkpoint written by `scstn-vcn train` (or the demo), or a model file written by
                 `scstn-vcn export --format safetensors`; either is read as data only (no pickle code runs),
                 and a file that is not what it should be raises CheckpointError naming it.
    device       "auto" (the GPU when there is one), "cpu", "cuda", "cuda:N".
    backend      ops backend for the fused ops: "eager", "native", "triton", or None for the
                 process-wide setting (scstn_vcn.ops.set_backend; "eager" unless changed). A backend
                 that cannot run on the device raises BackendUnavailableError saying why.
    batch_size   images per forward pass, 1 to 4,096 (configs.MAX_BATCH).
    amp          "bf16" | "fp16" | "off": autocast on CUDA (the CPU always runs float32).
    """

    def __init__(self, checkpoint, device="auto", backend=None, batch_size=64, amp="off"):
        from scstn_vcn import ops
        from scstn_vcn.data.transforms import build_transforms
        from scstn_vcn.engine import model_file
        from scstn_vcn.engine.runtime import resolve_device
        from scstn_vcn.ops._backend import check_backend_name

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH}, got {batch_size!r}")
        if amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or 'off', got {amp!r}")
        self.checkpoint = os.fspath(checkpoint)
        self.device = resolve_device(device)
        if backend is not None:
            check_backend_name(backend)
            ok, why = ops.backend_status(backend, self.device)
            if not ok:
                raise ops.BackendUnavailableError(f"backend {backend!r} is not available on {self.device.type}: {why}")
        self.backend = backend
        self.batch_size = batch_size
        self.amp = amp
        source = model_file.open_model_source(self.checkpoint)
        self.config = source.config
        self.model = model_file.build_inference_model(source).to(self.device).eval()
        self.input_size = (int(self.config["data"]["height"]), int(self.config["data"]["width"]))
        self.transform = build_transforms(*self.input_size, is_train=False)
        self.feature_names = [n for n in BRANCHES if n in self.model.feature_dims]
        # The "same person" distance threshold a model file carries (engine.open_set), or None; verify() uses it.
        self.threshold = source.threshold

    def __repr__(self):
        model = self.config["model"]
        return (
            f"FeatureExtractor({self.checkpoint!r}, {model['backbone']}-{model['variant']}, input "
            f"{self.input_size[0]}x{self.input_size[1]}, device={str(self.device)!r}, backend={self.backend!r})"
        )

    # ----------------------------------------------------------------------------------- input

    def _image(self, item, index):
        """One image -> the model's normalised input (3, H, W), exactly as the evaluation loader makes it."""
        from scstn_vcn.data.image_dataset import read_image

        if isinstance(item, (str, os.PathLike)):
            image = read_image(os.fspath(item))
        elif isinstance(item, Image.Image):
            image = item.convert("RGB")
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise ValueError(
                    f"images[{index}]: a numpy image must be uint8 RGB of shape (H, W, 3), "
                    f"got {item.dtype} {item.shape}"
                )
            # Through PIL, as a file read by the evaluator is: the resize then matches exactly.
            image = Image.fromarray(np.ascontiguousarray(item), "RGB")
        else:
            raise TypeError(
                f"images[{index}]: expected an image path, a PIL image or a uint8 (H, W, 3) numpy "
                f"array, got {type(item).__name__}"
            )
        return self.transform(image)

    def _batches(self, images):
        """Model-input batches (B, 3, H, W) on the CPU, decoded one batch at a time."""
        if isinstance(images, torch.Tensor):
            if not images.is_floating_point() or images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"images: a tensor must be a float batch (N, 3, H, W) of normalised images, "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if tuple(images.shape[2:]) != self.input_size:
                raise ValueError(
                    f"images: the model was trained on {self.input_size[0]}x{self.input_size[1]} "
                    f"inputs, got a {images.shape[2]}x{images.shape[3]} batch; pass paths or PIL "
                    f"images to have them resized"
                )
            for start in range(0, images.shape[0], self.batch_size):
                yield images[start : start + self.batch_size]
            return
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            yield torch.stack([self._image(item, start + i) for i, item in enumerate(chunk)])

    # ----------------------------------------------------------------------------------- features

    @torch.no_grad()
    def extract(self, images, progress=None):
        """{"global": (N, Dg), "spatial": (N, Ds)} float32 CPU tensors for `images` (a list of paths,
        PIL images or uint8 (H, W, 3) RGB arrays, or a normalised float batch (N, 3, H, W));
        `progress` (e.g. a tqdm bar) is advanced by the number of images of each batch."""
        from scstn_vcn import ops
        from scstn_vcn.engine.features import autocast_context

        parts = {name: [] for name in self.feature_names}
        backend = ops.use_backend(self.backend) if self.backend is not None else contextlib.nullcontext()
        with backend:
            for batch in self._batches(images):
                with autocast_context(self.device, self.amp):
                    outputs = self.model(batch.to(self.device))
                for name in self.feature_names:
                    parts[name].append(outputs[name].float().cpu())
                if progress is not None:
                    progress.update(batch.shape[0])
        if not parts[self.feature_names[0]]:
            raise ValueError("images: no images given")
        return {name: torch.cat(chunks) for name, chunks in parts.items()}

    __call__ = extract

    def distance(self, query, gallery, branch="fusion"):
        """(len(query), len(gallery)) cosine distance between two results of `extract`, as the
        evaluation ranks: "fusion" is the sum of the global and spatial distances (the model's
        branches), "global" / "spatial" one branch alone."""
        from scstn_vcn.metrics import cosine_distance

        names = self.feature_names if branch == "fusion" else [branch]
        if branch != "fusion" and branch not in self.feature_names:
            raise ValueError(
                f"branch must be 'fusion' or one of {', '.join(map(repr, self.feature_names))}, got {branch!r}"
            )
        total = None
        for name in names:
            for label, feats in (("query", query), ("gallery", gallery)):
                if not isinstance(feats, dict) or name not in feats:
                    raise ValueError(f"{label}: expected the dict FeatureExtractor returns, with a {name!r} entry")
            dist = cosine_distance(query[name], gallery[name])
            # In place and in the evaluator's order (global, then spatial), so the sum rounds the same.
            total = dist if total is None else total.add_(dist)
        return total

    # ----------------------------------------------------------------------------------- open-set answers

    def compare(self, a, b, branch="fusion"):
        """(N,) distances between pairs, the distance `distance` ranks by. `a` and `b` are each one image (a
        path, PIL image or uint8 array), a list of them, or a result of `extract`; with N items on both sides
        the i-th is compared with the i-th, with one item on a side it is compared with every item of the
        other (as `search` compares its query with the gallery, giving the same numbers)."""
        a, b = (x if isinstance(x, dict) else self.extract(x) for x in (a, b))
        rows = []
        for label, feats in (("a", a), ("b", b)):
            if not feats or any(not isinstance(v, torch.Tensor) or v.dim() != 2 for v in feats.values()):
                raise ValueError(f"{label}: expected images or the dict FeatureExtractor returns")
            rows.append(next(iter(feats.values())).shape[0])
        if rows[0] == 1:
            return self.distance(a, b, branch)[0]
        if rows[1] == 1:
            return self.distance(b, a, branch)[0]
        if rows[0] != rows[1]:
            raise ValueError(f"a has {rows[0]} items and b {rows[1]}: compare pairs needs as many on each side, or one")
        pairs = [
            self.distance({n: v[i : i + 1] for n, v in a.items()}, {n: v[i : i + 1] for n, v in b.items()}, branch)
            for i in range(rows[0])
        ]
        return torch.cat(pairs, 1)[0]

    def verify(self, a, b, threshold=None):
        """(distances (N,), same (N,) bool): `compare(a, b)` and whether each distance is <= the threshold,
        i.e. the same person. `threshold` is a distance (on the distance `distance` ranks by: the fusion, or
        the model's one branch), a threshold record (engine.open_set), or None for `self.threshold`, the one
        the model file carries (`scstn-vcn export --threshold D` or `--threshold-fpr FPR --results
        results.json`)."""
        from scstn_vcn.engine import open_set

        distance = open_set.model_distance(self.feature_names)
        if threshold is None:
            threshold = self.threshold
            if threshold is None:
                raise ValueError(
                    f"{self.checkpoint}: the model carries no threshold; pass threshold=D, or export a model "
                    f"file with one (scstn-vcn export --threshold D, or --threshold-fpr FPR --results results.json)"
                )
        elif not isinstance(threshold, dict):
            threshold = open_set.check_threshold_record({"distance": distance, "value": threshold}, "threshold")
        threshold = open_set.check_threshold_record(threshold, "threshold")
        if threshold["distance"] != distance:
            raise ValueError(
                f"threshold: it is for the {threshold['distance']} distance, but this model compares by its "
                f"{distance} distance"
            )
        distances = self.compare(a, b, branch="fusion")
        return distances, distances <= threshold["value"]
