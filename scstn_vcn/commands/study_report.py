"""Tables and figures of `scstn-vcn study` from its results.csv rows (see scstn_vcn/commands/study.py).

table3.md / .png: one row per variant in the paper's order, ours as mean +- std over seeds for the
feature the row is about, the paper's Market-1501 numbers beside them, and the paper's orderings
checked seed by seed (runs with the same seed share initial weights of the common parts and the
order of the batches, so differences are paired by seed).
misalignment.md / .png: rank-1 and mAP against the detection error level, one line per variant.
"""

import os
import statistics

from scstn_vcn.models import ABLATIONS

# Table 3 of the paper: ResNet-50 (O) on Market-1501, (rank-1, mAP) in percent.
PAPER_TABLE3 = {
    "baseline": (94.0, 85.3),
    "spatial_only": (94.9, 86.4),
    "vcn_no_stn": (95.2, 87.0),
    "plain_stn": (85.1, 62.4),
    "stn_no_rotation": (86.9, 70.6),
    "scstn_eps1": (95.3, 87.6),
    "scstn_eps_fixed": (95.4, 88.1),
    "gp_head": (94.1, 86.2),
    "fc_head": (95.3, 87.2),
    "vcn_no_hpool": (95.2, 87.1),
    "vcn_shared": (95.0, 86.5),
    "mgn_stripes": (95.7, 87.5),
    "no_rll": (95.8, 87.7),
    "full": (96.1, 88.6),
}

# The orderings the paper draws from Table 3: (group, better, worse, strict). strict=False is "at
# least as good" (>=).
ORDERINGS = [
    ("(1) VCN and SC-STN add up", "full", "vcn_no_stn", True),
    ("(1) VCN and SC-STN add up", "vcn_no_stn", "baseline", True),
    ("(1) VCN and SC-STN add up", "full", "baseline", True),
    ("(2) an unconstrained STN hurts", "vcn_no_stn", "plain_stn", True),
    ("(2) an unconstrained STN hurts", "vcn_no_stn", "stn_no_rotation", True),
    ("(3) learned eps", "full", "scstn_eps_fixed", False),
    ("(3) learned eps", "full", "scstn_eps1", False),
    ("(4) VCN beats the other heads", "full", "gp_head", True),
    ("(4) VCN beats the other heads", "full", "fc_head", True),
    ("(4) VCN beats the other heads", "full", "vcn_shared", True),
    ("(4) VCN beats the other heads", "full", "vcn_no_hpool", True),
    ("(4) VCN beats the other heads", "full", "mgn_stripes", True),
    ("(5) the ranked list loss helps", "full", "no_rll", True),
]
METRICS = (("rank1", "rank-1"), ("mAP", "mAP"))


def row_feature(variant):
    """The feature a Table 3 row is about: the baseline has only f^g, "f^s w/o f^g" only f^s, the
    others are the fusion of both."""
    return {"baseline": "global", "spatial_only": "spatial"}.get(variant, "fusion")


def collect(rows, level=""):
    """{variant: {seed: {metric: value}}} for each variant's row feature at one detection-error level."""
    out = {}
    for r in rows:
        if r["detection_error"] == level and r["feature"] == row_feature(r["variant"]):
            out.setdefault(r["variant"], {})[int(r["seed"])] = {m: float(r[m]) for m, _ in METRICS}
    return out


def mean_std(values):
    values = list(values)
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values):
    values = list(values)
    mean, std = mean_std(values)
    return "n/a" if mean != mean else (f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}")


def paired(data, better, worse, metric, strict):
    """(mean difference, its std over seeds, seeds where it holds, seeds compared) or None."""
    if better not in data or worse not in data:
        return None
    seeds = sorted(set(data[better]) & set(data[worse]))
    if not seeds:
        return None
    diffs = [data[better][s][metric] - data[worse][s][metric] for s in seeds]
    holds = sum(d > 0 if strict else d >= 0 for d in diffs)
    mean, std = mean_std(diffs)
    return mean, std, holds, len(seeds)


def verdict(mean, std, holds, n):
    if holds == n and mean > 0 and (n == 1 or mean > std):
        return "holds" if n > 1 else "holds (1 seed)"
    if holds == 0 and mean < 0:
        return "reversed"
    return "within noise"


def _table3_markdown(data, variants, seeds, params):
    base_params = params.get("baseline")
    lines = [
        f"# Table 3 ablations: ours (mean ± std over seeds {', '.join(map(str, seeds))}) and the paper "
        "(ResNet-50 (O), Market-1501)",
        "",
        "| row | variant | feature | paper rank-1 | paper mAP | rank-1 | mAP | seeds | params added |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        seeds_v = data.get(v, {})
        paper = PAPER_TABLE3.get(v, (float("nan"),) * 2)
        added = f"{params[v] - base_params:+,}" if base_params is not None and v in params else "n/a"
        lines.append(
            f"| {ABLATIONS[v].row} | {v} | {row_feature(v)} | {paper[0]:.1f} | {paper[1]:.1f} | "
            f"{fmt(s['rank1'] for s in seeds_v.values())} | {fmt(s['mAP'] for s in seeds_v.values())} | "
            f"{len(seeds_v)} | {added} |"
        )
    lines += [
        "",
        "## The paper's orderings, seed by seed",
        "",
        "Differences are ours (better − worse, percentage points), paired by seed: mean ± std over the "
        'seeds, and in how many seeds the ordering holds. "holds": in every seed and the mean exceeds '
        'the spread; "reversed": in no seed; otherwise "within noise".',
        "",
        "| claim | better | worse | paper Δ rank-1 / mAP | Δ rank-1 | holds | Δ mAP | holds | verdict (rank-1 / mAP) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group, better, worse, strict in ORDERINGS:
        cells, verdicts = [], []
        for metric, _ in METRICS:
            result = paired(data, better, worse, metric, strict)
            if result is None:
                break
            mean, std, holds, n = result
            cells += [f"{mean:+.2f} ± {std:.2f}", f"{holds}/{n}"]
            verdicts.append(verdict(mean, std, holds, n))
        if len(cells) < 4:
            continue
        pb, pw = PAPER_TABLE3[better], PAPER_TABLE3[worse]
        op = ">" if strict else "≥"
        lines.append(
            f"| {group} | {better} {op} | {worse} | {pb[0] - pw[0]:+.1f} / {pb[1] - pw[1]:+.1f} | "
            + " | ".join(cells)
            + f" | {' / '.join(verdicts)} |"
        )
    return "\n".join(lines) + "\n"


def _misalignment_markdown(rows, variants, seeds, levels):
    lines = [
        f"# Rank-1 / mAP against detection error (mean ± std over seeds {', '.join(map(str, seeds))})",
        "",
        "Level E: person scale drawn from [1 − E, 1 + E], shifted by up to 0.4 E of the box height and "
        "0.48 E of its width (the default set is E = 0.25).",
        "",
        "| variant | feature | " + " | ".join(f"E = {lv:g}" for lv in levels) + " |",
        "| --- | --- | " + " | ".join("---" for _ in levels) + " |",
    ]
    per_level = {lv: collect(rows, f"{lv:g}") for lv in levels}
    for metric, label in METRICS:
        for v in variants:
            cells = [fmt(s[metric] for s in per_level[lv].get(v, {}).values()) for lv in levels]
            lines.append(f"| {v} ({label}) | {row_feature(v)} | " + " | ".join(cells) + " |")
    pairs = [("full", "vcn_no_stn"), ("full", "plain_stn"), ("vcn_no_stn", "baseline")]
    lines += [
        "",
        "Paired gaps (percentage points, better − worse, mean ± std over seeds, seeds where > 0):",
        "",
        "| gap | " + " | ".join(f"E = {lv:g}" for lv in levels) + " |",
        "| --- | " + " | ".join("---" for _ in levels) + " |",
    ]
    for better, worse in pairs:
        for metric, label in METRICS:
            cells = []
            for lv in levels:
                result = paired(per_level[lv], better, worse, metric, True)
                cells.append(
                    "n/a" if result is None else f"{result[0]:+.2f} ± {result[1]:.2f} ({result[2]}/{result[3]})"
                )
            if any(c != "n/a" for c in cells):
                lines.append(f"| {better} − {worse} ({label}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig, path):
    from scstn_vcn.figures import save_figure

    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _table3_figure(data, variants, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(variants) + 4), 4.5), squeeze=False)
    x = np.arange(len(variants))
    for ax, (metric, label) in zip(axes[0], METRICS):
        stats = [mean_std(s[metric] for s in data.get(v, {}).values()) for v in variants]
        ax.bar(
            x, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, color="tab:blue", label="ours (mean ± std)"
        )
        ax.plot(
            x,
            [PAPER_TABLE3[v][0 if metric == "rank1" else 1] for v in variants],
            "k_",
            markersize=14,
            markeredgewidth=2,
            label="paper (Market-1501)",
        )
        finite = [m - s for m, s in stats if m == m] + [
            PAPER_TABLE3[v][0 if metric == "rank1" else 1] for v in variants
        ]
        ax.set_ylim(max(0, min(finite) - 5), 100)
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    _save(fig, path)
    plt.close(fig)


def _misalignment_figure(rows, variants, levels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_level = {lv: collect(rows, f"{lv:g}") for lv in levels}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], METRICS):
        for v in variants:
            pts = [(lv, *mean_std(s[metric] for s in per_level[lv].get(v, {}).values())) for lv in levels]
            pts = [p for p in pts if p[1] == p[1]]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=f"{v} ({row_feature(v)})",
                )
        ax.set_xlabel("detection error E")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _write_text(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_reports(output, rows, variants, seeds, levels, params):
    """Write the study's tables and figures into `output`; returns their paths."""
    if levels is None:
        data = collect(rows, "")
        md, png = os.path.join(output, "table3.md"), os.path.join(output, "table3.png")
        _write_text(md, _table3_markdown(data, variants, seeds, params))
        _table3_figure(data, variants, png)
    else:
        md, png = os.path.join(output, "misalignment.md"), os.path.join(output, "misalignment.png")
        _write_text(md, _misalignment_markdown(rows, variants, seeds, levels))
        _misalignment_figure(rows, variants, levels, png)
    return [md, png]
