"""Figures (PNG, matplotlib's Agg backend, no display needed):

training curves   loss / accuracy / learning rate (and eval metrics) per epoch from log.csv
ranked lists      Fig. 7: a query and its top-k gallery images, green border = same identity
alignment         Fig. 5: the input image and the same image resampled with the SC-STN's theta
heat maps         Fig. 6: the channel mean of the backbone map M, upsampled over the image
search results    a query image and its nearest gallery images, with distances (`scstn-vcn search`)
ROC               verification: TPR against FPR per evaluation row, with the thresholds (`eval`, `visualize --what roc`)
"""

import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FIGURES = ("curves", "ranked", "alignment", "heatmap", "roc")


def save_figure(fig, path, dpi=100):
    """Write the figure to a temporary file beside `path` and rename it: never a half-written image."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{root}.tmp{os.getpid()}{ext or '.png'}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=(ext.lstrip(".") or "png"))
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_training_curves(log_csv, path):
    """Loss terms, accuracy, lr and any rank-1/mAP columns of `log_csv` against the epoch."""
    from scstn_vcn.engine.logging import read_csv_log

    if not os.path.isfile(log_csv):
        raise FileNotFoundError(
            f"training log {log_csv}: no such file (expected the log.csv of a `scstn-vcn train` run)"
        )
    rows = read_csv_log(log_csv)
    if not rows:
        raise ValueError(f"training log {log_csv}: holds no epoch rows")
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in rows[-1] if k == "loss" or k.startswith("loss_")]
    eval_keys = [k for k in rows[-1] if k.endswith("_rank1") or k.endswith("_mAP")]
    panels = [
        ("loss", loss_keys, True),
        ("accuracy (global ID, train)", ["acc"], False),
        ("learning rate", ["lr"], False),
    ]
    if eval_keys:
        panels.append(("evaluation (%)", eval_keys, False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, keys, log_scale) in zip(np.atleast_1d(axes), panels):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), float)]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
        if log_scale and all(r.get("loss", 1) > 0 for r in rows):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def load_images(items, height, width):
    """(raw images in [0, 1] (N, 3, H, W), the normalised model input) for (path, pid, camid) items."""
    from scstn_vcn.data.image_dataset import read_image
    from scstn_vcn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    raw = []
    for item in items:
        image = read_image(item[0]).resize((width, height))
        raw.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    raw = torch.stack(raw)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return raw, (raw - mean) / std


def _show(ax, image, title=None, border=None):
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_edgecolor(border)
            spine.set_linewidth(4)
    if title:
        ax.set_title(title, fontsize=7)


def ranked_lists(distmat, q_items, g_items, height, width, path, num_queries=4, topk=10):
    """Fig. 7. Gallery images of the query's identity and camera are skipped (the protocol)."""
    q_pids = np.array([it[1] for it in q_items])
    q_cams = np.array([it[2] for it in q_items])
    g_pids = np.array([it[1] for it in g_items])
    g_cams = np.array([it[2] for it in g_items])
    distmat = np.asarray(distmat)
    # Evenly spread queries that have a valid match, so the figure is not one identity.
    valid = [q for q in range(len(q_items)) if np.any((g_pids == q_pids[q]) & (g_cams != q_cams[q]))]
    if not valid:
        raise ValueError("ranked lists: no query has a gallery match from another camera")
    chosen = [valid[i] for i in np.linspace(0, len(valid) - 1, min(num_queries, len(valid))).astype(int)]
    fig, axes = plt.subplots(len(chosen), topk + 1, figsize=(1.1 * (topk + 1), 2.3 * len(chosen)), squeeze=False)
    for row, q in enumerate(chosen):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q])) & (g_pids[order] != -1)
        top = order[keep][:topk]
        raw_q, _ = load_images([q_items[q]], height, width)
        _show(axes[row, 0], raw_q[0], f"query\nid {q_pids[q]}", border="black")
        raw_g, _ = load_images([g_items[i] for i in top], height, width)
        for col, (g, image) in enumerate(zip(top, raw_g), start=1):
            match = g_pids[g] == q_pids[q]
            _show(axes[row, col], image, f"{col}: id {g_pids[g]}", border="green" if match else "red")
        for col in range(len(top) + 1, topk + 1):
            axes[row, col].axis("off")
    fig.suptitle("ranked lists (fusion distance): green = same identity, red = different")
    return save_figure(fig, path)


def resample_with_theta(raw, theta):
    """Images (N, 3, H, W) resampled by the transformer's theta (N, 2, 3), zeros outside: the crop the
    SC-STN chose, at the images' own resolution (theta works in the normalised [-1, 1] frame)."""
    grid = F.affine_grid(theta.to(raw.dtype), raw.shape, align_corners=False)
    return F.grid_sample(raw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def alignment_figure(model, items, height, width, device, path):
    """Fig. 5: each input image beside the image resampled by the model's SC-STN theta.

    theta maps output to source coordinates in the normalised [-1, 1] frame, so the same theta
    applies at the image's resolution as at the feature map's (affine_grid with align_corners=False
    is resolution-independent)."""
    raw, inputs = load_images(items, height, width)
    model.eval()
    out = model(inputs.to(device), return_theta=True)
    if "theta" not in out:
        raise ValueError("alignment: the model has no spatial branch, so no theta to show")
    theta = out["theta"].float().cpu()
    aligned = resample_with_theta(raw, theta)
    fig, axes = plt.subplots(2, len(items), figsize=(1.3 * len(items), 5), squeeze=False)
    for col in range(len(items)):
        t = theta[col]
        _show(axes[0, col], raw[col], f"id {items[col][1]}")
        _show(axes[1, col], aligned[col], f"s {t[0, 0]:.2f},{t[1, 1]:.2f}\nt {t[0, 2]:.2f},{t[1, 2]:.2f}")
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("SC-STN")
    fig.suptitle("SC-STN alignment: input (top), affine-resampled with the predicted theta (bottom)")
    return save_figure(fig, path)


@torch.no_grad()
def heatmap_figure(model, items, height, width, device, path):
    """Fig. 6: the channel mean of the backbone's map M, min-max scaled, over each image."""
    raw, inputs = load_images(items, height, width)
    model.eval()
    feature_map = model.backbone(inputs.to(device)).float().mean(dim=1, keepdim=True).cpu()
    heat = F.interpolate(feature_map, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    lo = heat.flatten(1).min(1).values.view(-1, 1, 1)
    hi = heat.flatten(1).max(1).values.view(-1, 1, 1)
    heat = (heat - lo) / (hi - lo).clamp_min(1e-12)
    fig, axes = plt.subplots(1, len(items), figsize=(1.3 * len(items), 2.8), squeeze=False)
    for col in range(len(items)):
        _show(axes[0, col], raw[col], f"id {items[col][1]}")
        axes[0, col].imshow(heat[col].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    fig.suptitle("activation: channel mean of the backbone map")
    return save_figure(fig, path)


def pick_items(items, count):
    """`count` items spread over the list (distinct identities where possible)."""
    by_pid = {}
    for item in items:
        by_pid.setdefault(item[1], item)
    pool = list(by_pid.values()) if len(by_pid) >= count else list(items)
    index = np.linspace(0, len(pool) - 1, min(count, len(pool))).astype(int)
    return [pool[i] for i in index]


def draw_model_figures(model, dataset, config, device, folder, which, num_queries=4, topk=10, features=None):
    """The model-based figures of `which` (ranked, alignment, heatmap) into `folder`; their paths.
    `features` = (query, gallery) from extract_features, to skip extracting them again."""
    height, width = int(config["data"]["height"]), int(config["data"]["width"])
    written = []
    if "ranked" in which:
        from scstn_vcn.metrics import cosine_distance

        if features is None:
            from scstn_vcn.engine.evaluator import extract_query_gallery

            features = extract_query_gallery(model, dataset, config, device)
        query, gallery = features
        names = [n for n in ("global", "spatial") if n in query["feats"]]
        distmat = sum(cosine_distance(query["feats"][n], gallery["feats"][n]) for n in names)
        written.append(
            ranked_lists(
                distmat.cpu().numpy(),
                dataset.query,
                dataset.gallery,
                height,
                width,
                os.path.join(folder, "ranked_lists.png"),
                num_queries,
                topk,
            )
        )
    samples = pick_items(dataset.query, 8)
    if "alignment" in which:
        written.append(alignment_figure(model, samples, height, width, device, os.path.join(folder, "alignment.png")))
    if "heatmap" in which:
        written.append(heatmap_figure(model, samples, height, width, device, os.path.join(folder, "heatmaps.png")))
    return written


def draw_ranked(query_path, gallery_paths, ranked, height, width, path, branch="fusion", title=None):
    """The query (black border) and its ranked gallery images [(rank, gallery index, distance)], each titled
    with its rank, distance and file name; written to `path` (PNG). `title` replaces the figure's title."""
    columns = len(ranked) + 1
    fig, axes = plt.subplots(1, columns, figsize=(1.2 * columns, 3.0), squeeze=False)
    raw_q, _ = load_images([(query_path,)], height, width)
    _show(axes[0, 0], raw_q[0], "query\n" + _short(query_path), border="black")
    if ranked:
        raw_g, _ = load_images([(gallery_paths[index],) for _, index, _ in ranked], height, width)
        for (rank, index, dist), image, ax in zip(ranked, raw_g, axes[0, 1:]):
            _show(ax, image, f"{rank}: {dist:.3f}\n{_short(gallery_paths[index])}")
    fig.suptitle(title or f"top {len(ranked)} of the gallery by {branch} cosine distance")
    return save_figure(fig, path)


def _short(path, limit=16):
    """The file name, its middle elided when long (the start and end usually tell images apart)."""
    name = os.path.basename(path)
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "…" + name[-(limit - 1 - head) :]


def roc_figure(rows, path, title="verification ROC"):
    """TPR against FPR (log scale) of each evaluation row, from results.json's "verification" rows
    ({name: {"roc": {"fpr", "tpr", "threshold"}, "points": [...]}}, scstn_vcn.engine.open_set); each
    reported point (TPR at a target FPR) is marked, and the legend gives its TPR and distance threshold.
    A re-ranked row ("+rk") is drawn dashed in its plain row's colour."""
    if not rows:
        raise ValueError("ROC figure: no verification rows to draw (evaluate with eval.fprs set)")
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    colours = {}
    lowest = 1.0
    targets = []
    for name, row in rows.items():
        fpr = np.array([np.nan if v is None else v for v in row["roc"]["fpr"]], dtype=np.float64)
        tpr = np.array([np.nan if v is None else v for v in row["roc"]["tpr"]], dtype=np.float64)
        shown = fpr > 0  # a log axis has no FPR 0
        if not shown.any():
            continue
        lowest = min(lowest, float(fpr[shown].min()))
        base = name.split("+", 1)[0]
        points = [p for p in row["points"] if p["tpr"] is not None]
        targets = targets or [p["target_fpr"] for p in points]
        rates = "/".join(f"{100 * p['tpr']:.1f}" for p in points)
        cuts = "/".join("none" if p["threshold"] is None else f"{p['threshold']:.3f}" for p in points)
        label = f"{name}: TPR {rates} %, d ≤ {cuts}"
        style = "--" if "+rk" in name else "-"
        (line,) = ax.plot(fpr[shown], tpr[shown], style, color=colours.get(base), label=label, linewidth=1.4)
        colours.setdefault(base, line.get_color())
        marked = [(p["fpr"], p["tpr"]) for p in points if p["fpr"] is not None and p["fpr"] > 0]
        if marked:
            ax.plot(*zip(*marked), "o", color=line.get_color(), markersize=4)
    for target in targets:
        ax.axvline(target, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlim(lowest / 1.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate (different people accepted)")
    ax.set_ylabel("true positive rate (same person accepted)")
    ax.grid(True, which="major", alpha=0.3)
    from scstn_vcn.metrics.verification import fpr_label

    at = "/".join(fpr_label(t) for t in targets)
    ax.legend(
        fontsize=7, loc="lower right", title=f"at FPR {at} (dotted): TPR and distance threshold", title_fontsize=7
    )
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def write_roc_figures(folder, evaluated):
    """The ROC figure of each evaluated target [(target, results)] into `folder`: roc.png for one target,
    roc_<data set>.png for several; targets evaluated without TPR@FPR get none. Returns the paths."""
    from scstn_vcn.engine.open_set import verification_section

    written = []
    for number, (target, results) in enumerate(evaluated, 1):
        section = verification_section(results)
        if section is None:
            continue
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(target.name))
        name = "roc.png" if len(evaluated) == 1 else f"roc_{number}_{safe}.png"
        written.append(roc_figure(section["rows"], os.path.join(folder, name), f"verification ROC on {target.label}"))
    return written
