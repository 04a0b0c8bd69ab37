"""index.html of the report: the static part (the results tables, the settings and what the run recorded,
the CMC curves as inline SVG) rendered here from the report's data, and the empty frame of the query
browser that assets/report.js fills from data.js. No external resource: the page works offline from
file://, with only report.css, report.js, data.js and thumbs/ beside it."""

from __future__ import annotations

import json
from html import escape

from scstn_vcn.engine.evaluator import HEADERS

GENERATOR = "scstn-vcn report"
LONGEST_INFO = 240  # characters of a recorded value the summary prints
# One colour per row, in row order; re-ranked rows dashed, query-expanded rows dotted.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")


def _value(value):
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.2f}"  # as format_table prints results.json's numbers
    return escape(str(value))


def results_table(run):
    columns = run["columns"]
    head = "".join(f"<th>{escape(HEADERS.get(c, c))}</th>" for c in columns)
    body = []
    for row in run["rows"]:
        cells = "".join(f"<td>{_value(run['summary'][row].get(c))}</td>" for c in columns)
        valid = run["num_valid"][row]
        body.append(f'<tr data-row="{escape(row)}"><td>{escape(row)}</td>{cells}<td>{valid}</td></tr>')
    return (
        f'<table class="results"><thead><tr><th>row</th>{head}<th>valid queries</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _plain(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=False)
    return str(value)


def info_list(run):
    """The settings and everything else results.json recorded (checkpoint, data, versions ...)."""
    entries = list(run["info"].items()) + list(run["recorded"].items())
    settings = run.get("settings") or {}
    for name, values in settings.items():
        entries.append((name.replace("_", " "), "off" if not values else _plain(values)))
    shown = []
    for key, value in entries:
        text = _plain(value)
        if len(text) > LONGEST_INFO:  # e.g. a ROC curve: the page lists, results.json holds
            text = f"({len(text):,} characters: see results.json)"
        shown.append(f"<dt>{escape(str(key))}</dt><dd>{escape(text)}</dd>")
    items = "".join(shown)
    return f'<dl class="info">{items}</dl>'


def cmc_svg(run, width=560, height=300):
    """Every row's CMC curve (rank 1 .. the evaluation's max rank) as an inline SVG."""
    curves = {row: run["cmc"][row] for row in run["rows"]}
    ranks = max(len(c) for c in curves.values())
    lows = [v for c in curves.values() for v in c if v is not None]
    low = max(0.0, min(lows) // 10 * 10) if lows else 0.0
    left, right, top, bottom = 44, 120, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(rank):
        return left + (rank - 1) / max(1, ranks - 1) * plot_w

    def y(value):
        return top + (100.0 - value) / max(1e-9, 100.0 - low) * plot_h

    parts = [
        f'<svg class="cmc" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="CMC curves">'
    ]
    step = 10 if 100 - low > 30 else 5
    tick = low
    while tick <= 100.0001:
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    for rank in sorted({1, 5, 10, 20, 30, 40, 50, ranks} & set(range(1, ranks + 1))):
        parts.append(f'<text x="{x(rank):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{rank}</text>')
    parts.append(f'<path class="axis" d="M{left},{top} V{top + plot_h} H{left + plot_w}"/>')
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 3}" text-anchor="middle">rank</text>'
        f'<text x="12" y="{top + plot_h / 2:.0f}" transform="rotate(-90 12 {top + plot_h / 2:.0f})" '
        'text-anchor="middle">matching rate (%)</text>'
    )
    for index, (row, values) in enumerate(curves.items()):
        colour = PALETTE[index % len(PALETTE)]
        dash = ' stroke-dasharray="6 3"' if row.endswith("+rk") else (' stroke-dasharray="2 2"' if "+qe" in row else "")
        points = " ".join(f"{x(r + 1):.1f},{y(v):.1f}" for r, v in enumerate(values) if v is not None)
        parts.append(
            f'<polyline data-row="{escape(row)}" fill="none" stroke="{colour}" stroke-width="1.8"{dash} '
            f'points="{points}"><title>{escape(row)}: rank-1 {values[0]:.2f}</title></polyline>'
        )
        ly = top + 8 + 16 * index
        parts.append(
            f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 30}" y1="{ly}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{left + plot_w + 35}" y="{ly + 4}">{escape(row)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_page(data, title, subtitle):
    runs = data["runs"]
    blocks = []
    for run in runs:
        heading = f"{run['short']}: {run['label']}" if len(runs) > 1 else run["label"]
        blocks.append(
            '<div class="run">'
            f'<h3>{escape(heading)}</h3><div class="table-wrap">{results_table(run)}</div>'
            f'<div class="run-body"><div><h4>CMC</h4>{cmc_svg(run)}</div>{info_list(run)}</div></div>'
        )
    legend = (
        '<p class="legend"><span><i style="border-color:#1d1d1f"></i>query</span>'
        '<span><i style="border-color:rgb(26,150,65)"></i>match</span>'
        '<span><i style="border-color:rgb(215,25,28)"></i>non-match</span>'
        '<span><i style="border-color:rgb(170,170,170)"></i>junk or same camera (not ranked: the protocol '
        "skips it)</span> Numbers under a gallery image: its rank among the ranked items · its identity.</p>"
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="stylesheet" href="report.css">
</head>
<body>
<header><h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p></header>
<section id="summary"><h2>Summary</h2>{"".join(blocks)}</section>
<section id="cameras"><h2>Rank-1 by camera pair</h2>
<p class="sub">Valid queries by their camera (rows) and the camera of their first match (columns): the
percentage found at rank 1, and how many queries (n). The corner is the row's rank-1. Click a query camera
to list its queries.</p>
<div id="cam-matrix"></div></section>
<section id="queries"><h2>Queries</h2>
<div id="controls">
<label id="l-row">row <select id="f-row"></select></label>
<label id="l-row-b" hidden>row <select id="f-row-b"></select></label>
<label>sort <select id="f-sort"></select></label>
<label>camera <select id="f-cam"></select></label>
<label>identity <input id="f-pid" type="text" size="10" placeholder="e.g. 12, 40"></label>
<label>show <select id="f-show"></select></label>
<label><select id="f-size"></select></label>
</div>
{legend}
<div id="status"></div>
<div id="list"><noscript>The query browser needs JavaScript (nothing is loaded from outside this folder).
</noscript></div>
<div class="pager"><button type="button" id="prev">previous</button><span id="page-text"></span>
<button type="button" id="next">next</button></div>
</section>
<script src="data.js"></script>
<script src="report.js"></script>
</body>
</html>
"""
