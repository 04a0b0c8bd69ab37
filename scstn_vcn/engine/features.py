"""Feature extraction: the model in eval mode over a loader, without gradients, autocast on CUDA."""

import contextlib

import torch


def autocast_context(device, amp):
    """Mixed precision on CUDA only (amp = bf16 | fp16 | off); the CPU runs float32."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type="cuda", dtype=dtype)


def _split_batch(batch):
    """(images, pids, camids, paths or None) from a loader batch (tuple or dict)."""
    if isinstance(batch, dict):
        return batch["images"], batch["pids"], batch["camids"], batch.get("paths")
    images, pids, camids = batch[0], batch[1], batch[2]
    paths = batch[3] if len(batch) > 3 and isinstance(batch[3], (list, tuple)) else None
    return images, pids, camids, paths


@torch.no_grad()
def extract_features(model, loader, device, amp="off", progress=None, with_theta=False):
    """Run `model` over `loader`; returns {"feats": {name: (N, D) float32 CPU tensor},
    "pids": (N,) long, "camids": (N,) long, "paths": list or None}; with ``with_theta`` also "theta":
    (N, 2, 3) float32, the spatial transformer's theta of each image (None for a model without a
    spatial branch), which the evaluation report draws the alignment from at no extra forward pass."""
    was_training = model.training
    model.eval()
    feats, pids, camids, paths, thetas = {}, [], [], [], []
    have_paths = True
    try:
        for batch in loader:
            images, batch_pids, batch_camids, batch_paths = _split_batch(batch)
            with autocast_context(device, amp):
                outputs = model(images.to(device, non_blocking=True), **({"return_theta": True} if with_theta else {}))
            for name, value in outputs.items():
                if name == "theta":
                    thetas.append(value.float().cpu())
                    continue
                feats.setdefault(name, []).append(value.float().cpu())
            pids.append(torch.as_tensor(batch_pids).long())
            camids.append(torch.as_tensor(batch_camids).long())
            if batch_paths is None:
                have_paths = False
            else:
                paths.extend(batch_paths)
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was_training)
    if not pids:
        raise ValueError("extract_features: the loader yielded no batches (empty query or gallery set?)")
    out = {
        "feats": {name: torch.cat(parts) for name, parts in feats.items()},
        "pids": torch.cat(pids),
        "camids": torch.cat(camids),
        "paths": paths if have_paths else None,
    }
    if with_theta:
        out["theta"] = torch.cat(thetas) if thetas else None
    return out
