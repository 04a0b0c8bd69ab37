"""`scstn-vcn search`: rank a gallery of images against one query image and draw the top k."""

import os
import tempfile

import numpy as np


def rank_gallery(distances, gallery_paths, query_path, topk):
    """[(rank, gallery index, distance)] of the `topk` nearest gallery images, nearest first (ties keep
    the gallery's order). The query's own file, if it is in the gallery, is left out."""
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    query_real = os.path.realpath(query_path)
    order = np.argsort(distances, kind="stable")
    kept = [int(i) for i in order if os.path.realpath(gallery_paths[i]) != query_real]
    return [(rank, index, float(distances[index])) for rank, index in enumerate(kept[:topk], start=1)]


def draw_ranked(query_path, gallery_paths, ranked, height, width, path, branch="fusion"):
    """The query (black border) and its ranked gallery images, each titled with its rank, distance and
    file name; written to `path` (PNG)."""
    from scstn_vcn import visualize as vis

    columns = len(ranked) + 1
    fig, axes = vis.plt.subplots(1, columns, figsize=(1.2 * columns, 3.0), squeeze=False)
    raw_q, _ = vis.load_images([(query_path,)], height, width)
    vis._show(axes[0, 0], raw_q[0], "query\n" + _short(query_path), border="black")
    if ranked:
        raw_g, _ = vis.load_images([(gallery_paths[index],) for _, index, _ in ranked], height, width)
        for (rank, index, dist), image, ax in zip(ranked, raw_g, axes[0, 1:]):
            vis._show(ax, image, f"{rank}: {dist:.3f}\n{_short(gallery_paths[index])}")
    fig.suptitle(f"top {len(ranked)} of the gallery by {branch} cosine distance")
    return _save_png_atomically(fig, path)


def _save_png_atomically(fig, path):
    """Write the figure to a temporary file beside `path`, then rename it: never a half-written PNG."""
    from scstn_vcn import visualize as vis

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        vis.plt.close(fig)
    return path


def _short(path, limit=16):
    """The file name, its middle elided when long (the start and end usually tell images apart)."""
    name = os.path.basename(path)
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "…" + name[-(limit - 1 - head):]
