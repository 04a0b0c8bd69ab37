"""The evaluation report in a real browser: Debian's headless Chromium (/usr/bin/chromium, which .ci/run
installs) driven by Playwright, on the report of the small synthetic evaluation of tests/test_report.py.

Every test records the page's console errors and network requests: there must be no error, and every
request must be a file:// URL inside the report folder (no server, no network, no CDN)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_report import synthetic_evaluation, write_synthetic_report

from scstn_vcn.metrics import evaluate_features

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (.ci/run installs Debian's chromium package)"
)
# As root Chromium needs --no-sandbox; the rest keeps it from reaching for the network in the background.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GREEN, RED, GREY = "rgb(26, 150, 65)", "rgb(215, 25, 28)", "rgb(170, 170, 170)"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary profile (user data dir) of its own.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_report")
    evaluation = synthetic_evaluation(str(root / "data"))
    results, q_items, g_items, qf, gf, _, _ = evaluation
    single = root / "single"
    write_synthetic_report(str(single), evaluation)
    ids = ([it[1] for it in q_items], [it[1] for it in g_items], [it[2] for it in q_items], [it[2] for it in g_items])
    other = evaluate_features({"global": qf["global"]}, {"global": gf["global"]}, *ids, record_topk=5)
    compare = root / "compare"
    write_synthetic_report(str(compare), evaluation, compare=other)
    return {"single": single, "compare": compare, "evaluation": evaluation, "other": other}


class Page:
    """A page of the report with its console errors and requests recorded."""

    def __init__(self, browser, folder):
        self.folder = Path(folder)
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto((self.folder / "index.html").as_uri())
        self.page.wait_for_load_state("load")

    def check_clean(self):
        assert self.errors == []
        inside = self.folder.as_uri() + "/"
        outside = [url for url in self.requests if not url.startswith(inside)]
        assert outside == [] and self.requests

    def cards(self):
        return self.page.eval_on_selector_all(
            ".card", "cards => cards.map(c => [Number(c.dataset.q), Number(c.dataset.cam), Number(c.dataset.pid)])"
        )

    def select(self, selector, value):
        self.page.select_option(selector, value)

    def close(self):
        self.check_clean()
        self.context.close()


@pytest.fixture
def single(browser, reports):
    page = Page(browser, reports["single"])
    yield page
    page.close()


def test_the_page_loads_offline_without_errors(single):
    page = single.page
    assert page.title() == "Evaluation report"
    page.click(".card button.more")  # the detail view, with the SC-STN alignment
    assert page.locator(".details .alignment figure").count() == 4
    page.select_option("#f-size", "25")
    page.select_option("#f-row", "spatial+rk")
    single.check_clean()
    loaded = {url.rsplit("/", 1)[-1] for url in single.requests}
    assert {"index.html", "report.css", "data.js", "report.js"} <= loaded
    assert any("/thumbs/" in url for url in single.requests)
    # The images really are there: every shown <img> decoded.
    broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => i.complete && i.naturalWidth === 0).length")
    assert broken == 0
    assert page.screenshot()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_summary_equals_results_json(single, reports):
    payload = json.loads((reports["single"] / "results.json").read_text())
    results = reports["evaluation"][0]
    table = single.page.eval_on_selector_all(
        "table.results tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
    )
    expected = [
        [row] + [f"{v:.2f}" for v in values.values()] + [str(results[row]["num_valid_queries"])]
        for row, values in payload["results"].items()
    ]
    assert sorted(table) == sorted(expected) and len(table) == 6
    # The camera matrix's corner is the row's rank-1 as results.json has it.
    corner = single.page.text_content("#cam-matrix th.total")
    assert corner == f"{payload['results']['fusion']['rank1']:.2f}"
    single.select("#f-row", "global+rk")
    assert single.page.text_content("#cam-matrix th.total") == f"{payload['results']['global+rk']['rank1']:.2f}"


def _worst_first(records):
    """Valid queries by AP (percent, 2 decimals), ties by the later first match, then query order;
    queries without a valid match last."""
    ap = np.round(100 * records.ap, 2)
    valid = [q for q in range(len(ap)) if records.first_rank[q] > 0]
    invalid = [q for q in range(len(ap)) if records.first_rank[q] == 0]
    return sorted(valid, key=lambda q: (ap[q], -records.first_rank[q], q)) + invalid


def test_worst_first_then_other_sorts(single, reports):
    results = reports["evaluation"][0]
    single.select("#f-size", "200")
    shown = [q for q, _, _ in single.cards()]
    assert shown == _worst_first(results["fusion"]["per_query"])
    assert shown[0] == int(np.nanargmin(results["fusion"]["per_query"].ap))
    single.select("#f-row", "global")
    assert [q for q, _, _ in single.cards()] == _worst_first(results["global"]["per_query"])
    single.select("#f-sort", "ap-desc")
    assert single.cards()[0][0] == int(np.nanargmax(results["global"]["per_query"].ap))
    single.select("#f-sort", "rank-desc")
    assert single.cards()[0][0] == int(np.argmax(results["global"]["per_query"].first_rank))
    # The queries without a valid match are shown, marked.
    single.select("#f-show", "invalid")
    cards = single.page.locator(".card")
    assert cards.count() == 2
    assert all("no valid match" in text for text in cards.all_inner_texts())


def test_camera_and_identity_filters(single, reports):
    _, q_items, *_ = reports["evaluation"]
    single.select("#f-size", "200")
    for cam in sorted({it[2] for it in q_items}):
        single.select("#f-cam", str(cam))
        cards = single.cards()
        assert {c for _, c, _ in cards} == {cam}
        assert sorted(q for q, _, _ in cards) == [q for q, it in enumerate(q_items) if it[2] == cam]
        assert single.page.text_content("#status").startswith(f"{len(cards)} of {len(q_items)} queries")
    single.select("#f-cam", "all")
    pid = q_items[0][1]
    single.page.fill("#f-pid", str(pid))
    assert sorted(q for q, _, _ in single.cards()) == [q for q, it in enumerate(q_items) if it[1] == pid]
    # Paging: 16 queries at 25, 50 ... a page are one page; the pager says so.
    single.page.fill("#f-pid", "")
    assert single.page.text_content("#page-text") == "page 1 of 1"


def test_border_colours_follow_the_identities(single, reports):
    _, q_items, g_items, *_ = reports["evaluation"]
    single.select("#f-size", "200")
    thumbs = single.page.eval_on_selector_all(
        ".card .strip figure.thumb:not(.query)",
        """figs => figs.map(f => [Number(f.closest('.card').dataset.q), Number(f.dataset.g),
                                  getComputedStyle(f.querySelector('img')).borderTopColor])""",
    )
    seen = set()
    for q, g, colour in thumbs:
        (_, q_pid, q_cam), (_, g_pid, g_cam) = q_items[q], g_items[g]
        if g_pid == -1 or (g_pid == q_pid and g_cam == q_cam):
            expected = GREY  # junk, or the query's identity seen by its own camera: not ranked
        else:
            expected = GREEN if g_pid == q_pid else RED
        assert colour == expected, (q, g)
        seen.add(colour)
    assert seen == {GREEN, RED, GREY}


def test_two_models_side_by_side(browser, reports):
    page = Page(browser, reports["compare"])
    try:
        results, other = reports["evaluation"][0], reports["other"]
        assert page.page.locator("table.results").count() == 2
        page.select("#f-size", "200")
        # Default rows: A's fusion, B's (only) global; sorted by |AP B - AP A|, largest first.
        a = np.round(100 * results["fusion"]["per_query"].ap, 2)
        b = np.round(100 * other["global"]["per_query"].ap, 2)
        shown = [q for q, _, _ in page.cards()]
        gaps = [abs(b[q] - a[q]) for q in shown if not np.isnan(a[q] - b[q])]
        assert gaps == sorted(gaps, reverse=True) and gaps[0] == np.nanmax(np.abs(b - a))
        assert page.page.locator(".card").first.locator(".run-list").count() == 2
        page.select("#f-sort", "delta-b")
        first = page.cards()[0][0]
        assert b[first] - a[first] == np.nanmax(b - a)
        page.select("#f-row-b", "global")
        page.select("#f-row", "global")
        page.select("#f-show", "differ")
        for q, _, _ in page.cards():
            ranks = (results["global"]["per_query"].first_rank[q], other["global"]["per_query"].first_rank[q])
            assert (ranks[0] == 1) != (ranks[1] == 1)
        assert page.page.locator("#cam-matrix table").count() == 2
    finally:
        page.close()
