"""The evaluation report without a browser: the per-query records of the streaming evaluation against a
dense per-query reference, the camera-pair matrix against a loop, and the written folder (data, summary,
thumbnails, atomicity, bad input). tests/test_report_browser.py opens the page in Chromium."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from scstn_vcn.engine.evaluator import EvalResults, to_percent, write_results
from scstn_vcn.metrics import RerankConfig, cosine_distance, evaluate_features
from scstn_vcn.metrics.per_query import CODE_DISCARDED, CODE_NEGATIVE, CODE_POSITIVE, PerQueryRecorder
from scstn_vcn.report import LoadedRun, ReportError, ReportRun, read_report, thumbnails, write_report
from scstn_vcn.report.records import camera_matrix
from scstn_vcn.report.writer import DATA_FILE, DATA_PREFIX

TOPK = 5


def _image(path, pid, cam):
    """A 64 x 32 picture whose colours say its identity and camera (so thumbnails differ)."""
    rng = np.random.default_rng(abs(pid) * 31 + cam)
    pixels = np.empty((64, 32, 3), dtype=np.uint8)
    pixels[:32] = rng.integers(0, 256, 3)
    pixels[32:] = rng.integers(0, 256, 3)
    pixels[:, :4] = 40 * cam
    Image.fromarray(pixels).save(path)


def synthetic_evaluation(folder, seed=0, noise=1.0, chunk_size=7):
    """A small evaluation with every case the page shows: 10 identities over 4 cameras, junk gallery
    items (-1), matches seen only by the query's own camera (discarded), a query whose identity is not in
    the gallery and one whose only gallery image is from its own camera (no valid match), ties. Returns
    (results with per-query records, query items, gallery items, query/gallery features, thetas)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    query, gallery = [], []
    for pid in range(10):
        for cam in range(4):
            if (pid + cam) % 3 == 0:
                query.append((pid, cam))
            gallery += [(pid, cam)] * (1 + (pid * cam) % 2)
    query += [(20, 1), (21, 2)]  # 20: not in the gallery; 21: only in its own camera
    gallery += [(21, 2), (-1, 0), (-1, 3), (-1, 1)]
    dims = {"global": 12, "spatial": 20}
    centres = {n: rng.standard_normal((30, d)) for n, d in dims.items()}

    def feats(items):
        out = {}
        for name in dims:
            rows = [centres[name][pid % 30] + noise * rng.standard_normal(dims[name]) for pid, _ in items]
            out[name] = torch.tensor(np.array(rows), dtype=torch.float32)
        return out

    qf, gf = feats(query), feats(gallery)
    gf["global"][5] = gf["global"][4]  # an exact tie, broken by gallery index
    items = []
    for split, ids in (("q", query), ("g", gallery)):
        listed = []
        for i, (pid, cam) in enumerate(ids):
            path = os.path.join(folder, f"{split}{i:03d}_{pid}_c{cam}.png")
            _image(path, pid, cam)
            listed.append((path, pid, cam))
        items.append(listed)
    q_items, g_items = items

    def thetas(n):
        scale = rng.uniform(0.7, 1.0, n)
        theta = np.zeros((n, 2, 3), dtype=np.float32)
        theta[:, 0, 0] = scale * rng.uniform(0.9, 1.0, n)
        theta[:, 1, 1] = scale
        theta[:, :, 2] = rng.uniform(-0.2, 0.2, (n, 2))
        return theta

    results = evaluate_features(
        qf,
        gf,
        [p for p, _ in query],
        [p for p, _ in gallery],
        [c for _, c in query],
        [c for _, c in gallery],
        chunk_size=chunk_size,
        rerank=RerankConfig(k1=6, k2=3, lambda_value=0.3),
        record_topk=TOPK,
    )
    return results, q_items, g_items, qf, gf, thetas(len(query)), thetas(len(gallery))


def dense_per_query(distmat, q_items, g_items, topk):
    """Each query's AP, INP, first-match rank / gallery index and top k from a full matrix, one query at a
    time (the protocol of scstn_vcn.metrics.rank, written out)."""
    q_pids = np.array([it[1] for it in q_items])
    q_cams = np.array([it[2] for it in q_items])
    g_pids = np.array([it[1] for it in g_items])
    g_cams = np.array([it[2] for it in g_items])
    out = []
    for i in range(len(q_items)):
        order = np.argsort(distmat[i], kind="stable")
        same = g_pids[order] == q_pids[i]
        discarded = (g_pids[order] == -1) | (same & (g_cams[order] == q_cams[i]))
        code = np.where(discarded, CODE_DISCARDED, np.where(same, CODE_POSITIVE, CODE_NEGATIVE))
        matches = same[~discarded]
        ranks = np.flatnonzero(matches) + 1
        record = {"top": order[:topk], "code": code[:topk]}
        if ranks.size:
            record.update(
                ap=np.mean(np.arange(1, ranks.size + 1) / ranks),
                inp=ranks.size / ranks[-1],
                rank=ranks[0],
                first=order[~discarded][ranks[0] - 1],
            )
        else:
            record.update(ap=np.nan, inp=np.nan, rank=0, first=-1)
        out.append(record)
    return out


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report_data")
    return synthetic_evaluation(str(folder))


def test_per_query_records_equal_a_dense_reference(evaluation):
    results, q_items, g_items, qf, gf, _, _ = evaluation
    dist = {n: cosine_distance(qf[n], gf[n]).numpy() for n in ("global", "spatial")}
    dist["fusion"] = (
        cosine_distance(qf["global"], gf["global"]) + cosine_distance(qf["spatial"], gf["spatial"])
    ).numpy()
    for row, distmat in dist.items():
        records = results[row]["per_query"]
        reference = dense_per_query(distmat, q_items, g_items, TOPK)
        np.testing.assert_array_equal(records.top, np.array([r["top"] for r in reference]), err_msg=row)
        np.testing.assert_array_equal(records.code, np.array([r["code"] for r in reference]), err_msg=row)
        np.testing.assert_array_equal(records.first_rank, [r["rank"] for r in reference], err_msg=row)
        np.testing.assert_array_equal(records.first_index, [r["first"] for r in reference], err_msg=row)
        np.testing.assert_allclose(records.ap, [r["ap"] for r in reference], rtol=1e-12, err_msg=row)
        np.testing.assert_allclose(records.inp, [r["inp"] for r in reference], rtol=1e-12, err_msg=row)
        np.testing.assert_allclose(records.dist, np.take_along_axis(distmat, records.top, 1), atol=1e-6)
    # Both kinds of invalid query are there, recorded as such.
    assert (results["fusion"]["per_query"].first_rank == 0).sum() == 2


def test_per_query_records_add_up_to_the_table(evaluation):
    """mAP, mINP and CMC are the means of the records over valid queries: rows re-ranked too."""
    results = evaluation[0]
    assert set(results) == {"global", "spatial", "fusion", "global+rk", "spatial+rk", "fusion+rk"}
    for values in results.values():
        records = values["per_query"]
        valid = records.valid
        assert valid.sum() == values["num_valid_queries"]
        assert np.isnan(records.ap[~valid]).all()
        assert records.ap[valid].mean() == pytest.approx(values["mAP"], abs=1e-12)
        assert records.inp[valid].mean() == pytest.approx(values["mINP"], abs=1e-12)
        for n in (1, 5, 10):
            assert np.mean(records.first_rank[valid] <= n) == pytest.approx(values[f"rank{n}"], abs=1e-12)
        kept = records.kept_ranks()
        # The first match inside the top k is where the kept ranks say it is.
        for q in np.flatnonzero(valid & (records.first_rank <= kept.max(axis=1))):
            position = np.flatnonzero(kept[q] == records.first_rank[q])[0]
            assert records.code[q, position] == CODE_POSITIVE and records.top[q, position] == records.first_index[q]


def test_recording_does_not_change_the_metrics(evaluation):
    _, q_items, g_items, qf, gf, _, _ = evaluation
    ids = ([it[1] for it in q_items], [it[1] for it in g_items], [it[2] for it in q_items], [it[2] for it in g_items])
    plain = evaluate_features(qf, gf, *ids, chunk_size=5)
    recorded = evaluate_features(qf, gf, *ids, chunk_size=5, record_topk=3)
    for row in plain:
        for metric in ("rank1", "rank5", "mAP", "mINP"):
            assert plain[row][metric] == recorded[row][metric]
        assert "per_query" not in plain[row] and recorded[row]["per_query"].top.shape == (len(q_items), 3)
    # k beyond the gallery keeps the whole row.
    whole = evaluate_features(qf, gf, *ids, record_topk=1000)["global"]["per_query"]
    assert whole.top.shape == (len(q_items), len(g_items))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="record_topk must be a positive integer"):
            evaluate_features(qf, gf, *ids, record_topk=bad)
    with pytest.raises(ValueError, match="no chunk"):
        PerQueryRecorder(3).compute()


def test_the_recorder_keeps_only_k_columns():
    """What it keeps of a chunk is its own (B, k) memory, not views of the chunk's (B, G) order and codes."""
    b, g, k = 6, 5000, 4
    dist = torch.rand(b, g)
    order = torch.sort(dist, dim=1, stable=True).indices
    code = torch.randint(0, 3, (b, g), dtype=torch.uint8).gather(1, order)
    recorder = PerQueryRecorder(k)
    recorder.add_sorted(dist, order, code)
    kept = recorder._sorted[0]
    assert all(t.untyped_storage().nbytes() <= b * k * 8 for t in kept)
    np.testing.assert_array_equal(kept[0].numpy(), order[:, :k].numpy())


def test_camera_matrix_against_a_loop(evaluation):
    results, q_items, g_items, *_ = evaluation
    for row in ("global", "fusion+rk"):
        records = results[row]["per_query"]
        matrix = camera_matrix(records, [it[2] for it in q_items], [it[2] for it in g_items])
        for i, qc in enumerate(matrix["qcams"]):
            for j, gc in enumerate(matrix["gcams"]):
                chosen = [
                    q
                    for q in range(len(q_items))
                    if records.first_rank[q] > 0 and q_items[q][2] == qc and g_items[records.first_index[q]][2] == gc
                ]
                assert matrix["counts"][i][j] == len(chosen)
                assert matrix["hits"][i][j] == sum(records.first_rank[q] == 1 for q in chosen)
        hits = np.sum(matrix["hits"])
        assert hits / np.sum(matrix["counts"]) == pytest.approx(results[row]["rank1"], abs=1e-12)


def make_run(results, payload, thetas=None, label="model", short=None):
    qt, gt = thetas if thetas is not None else (None, None)
    return ReportRun(label, payload, results, qt, gt, {"model": "synthetic"}, short)


def write_synthetic_report(folder, evaluation, compare=None):
    """The report of `evaluation` (and of a second one on the same data) into `folder`; its payloads."""
    results, q_items, g_items, _, _, qt, gt = evaluation
    settings = {"rerank": {"k1": 6, "k2": 3, "lambda_value": 0.3}, "query_expansion": None}
    payload = write_results(
        os.path.join(folder, "results.json"), EvalResults(results, settings), {"dataset": "synthetic"}
    )
    runs = [make_run(results, payload, (qt, gt), "model A")]
    payloads = [payload]
    if compare is not None:
        other = EvalResults(compare, settings)
        payloads.append(write_results(os.path.join(folder, "results-B.json"), other, {"dataset": "synthetic"}))
        runs.append(make_run(compare, payloads[1], None, "model B"))
    return write_report(folder, runs, q_items, g_items), payloads


def read_data(folder):
    text = open(os.path.join(folder, DATA_FILE), encoding="utf-8").read()
    assert text.startswith(DATA_PREFIX)
    return read_report(folder)


def test_the_report_folder(evaluation, tmp_path):
    results, q_items, g_items, *_ = evaluation
    index, (payload,) = write_synthetic_report(str(tmp_path), evaluation)
    assert index == str(tmp_path / "index.html")
    page = (tmp_path / "index.html").read_text()
    data = read_data(str(tmp_path))
    run = data["runs"][0]
    # The summary is results.json's, and the page prints it as the table does (2 decimals).
    assert run["summary"] == json.loads((tmp_path / "results.json").read_text())["results"] == to_percent(results)
    for row, values in to_percent(results).items():
        cells = page.split(f'<tr data-row="{row}">')[1].split("</tr>")[0]
        # row name, the metrics in results.json's order, the valid queries
        expected = [row] + [f"{v:.2f}" for v in values.values()] + [str(results[row]["num_valid_queries"])]
        assert cells == "".join(f"<td>{text}</td>" for text in expected)
    assert page.count("<polyline") == len(results)  # one CMC curve per row
    # Per-query data: AP in percent as results.json rounds, null where no valid match.
    fusion = run["per_query"]["fusion"]
    records = results["fusion"]["per_query"]
    assert fusion["ap"] == [None if np.isnan(v) else round(100 * v, 2) for v in records.ap]
    assert fusion["code"][0] == "".join(map(str, records.code[0]))
    # No reference to anything outside the folder.
    for text in (page, open(tmp_path / "report.js").read(), open(tmp_path / "report.css").read()):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        assert "//cdn" not in text and "@import" not in text
    # Thumbnails: every query and every gallery item shown, once each, plus the alignments; no temp file.
    shown = {g for rec in run["per_query"].values() for row in rec["top"] for g in row}
    shown |= {g for rec in run["per_query"].values() for g in rec["first"] if g >= 0}
    files = sorted(os.listdir(tmp_path / "thumbs"))
    plain = [f for f in files if "-a." not in f]
    assert len(plain) == len(set(data["query"]["thumb"])) + len(shown) == len(q_items) + len(shown)
    assert {g for g, name in enumerate(data["gallery"]["thumb"]) if name} == shown
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] + [f for f in files if f.endswith(".tmp")]
    with Image.open(tmp_path / "thumbs" / data["query"]["thumb"][0]) as image:
        assert image.size == (thumbnails.THUMB_WIDTH, thumbnails.THUMB_HEIGHT)
    # Alignment: each query and its top match in the spatial row.
    align = run["align"]
    spatial = results["spatial"]["per_query"]
    kept = spatial.code != CODE_DISCARDED
    assert align["match"] == [int(spatial.top[q][kept[q].argmax()]) for q in range(len(q_items))]
    assert all(os.path.isfile(tmp_path / "thumbs" / name) for name in align["query"] + align["gallery"] if name)
    # Written again: nothing rewritten, the same data.
    mtimes = {f: os.stat(tmp_path / "thumbs" / f).st_mtime_ns for f in files}
    write_synthetic_report(str(tmp_path), evaluation)
    assert {f: os.stat(tmp_path / "thumbs" / f).st_mtime_ns for f in files} == mtimes


def test_crop_box_and_aligned_thumbnail(tmp_path):
    """theta = half scale, shifted right: the box is the right-middle quarter, and the aligned image is
    that part of the image blown up (a left/right split picture shows only its right colour)."""
    theta = np.array([[0.5, 0.0, 0.5], [0.0, 0.5, 0.0]], dtype=np.float32)
    assert thumbnails.crop_box(theta) == [[0.5, 0.25], [1.0, 0.25], [1.0, 0.75], [0.5, 0.75]]
    pixels = np.zeros((96, 48, 3), dtype=np.uint8)
    pixels[:, 24:] = (0, 200, 0)
    path = str(tmp_path / "split.png")
    Image.fromarray(pixels).save(path)
    thumbnails.write_thumbnails(str(tmp_path), [path], [(path, theta)])
    with Image.open(tmp_path / "thumbs" / thumbnails.thumbnail_name(path, theta)) as image:
        aligned = np.asarray(image.convert("RGB"), dtype=np.float64)
    inner = aligned[8:-8, 8:-8]
    assert inner[..., 1].mean() > 170 and inner[..., 0].mean() < 30


def test_compare_two_models_and_a_report_folder(evaluation, tmp_path):
    results, q_items, g_items, qf, gf, _, _ = evaluation
    ids = ([it[1] for it in q_items], [it[1] for it in g_items], [it[2] for it in q_items], [it[2] for it in g_items])
    other = evaluate_features({"global": qf["global"]}, {"global": gf["global"]}, *ids, record_topk=TOPK)
    write_synthetic_report(str(tmp_path / "a"), evaluation, compare=other)
    data = read_data(str(tmp_path / "a"))
    assert [r["label"] for r in data["runs"]] == ["model A", "model B"]
    assert [r["short"] for r in data["runs"]] == ["A", "B"]
    assert data["runs"][1]["align"] is None
    # A report folder as the second model: the same data, read back.
    single = tmp_path / "single"
    write_synthetic_report(str(single), evaluation)
    loaded = read_report(str(single / "index.html"))
    target = tmp_path / "b"
    write_report(
        str(target), [make_run(other, to_percent_payload(other)), LoadedRun(loaded, str(single))], q_items, g_items
    )
    both = read_data(str(target))
    assert both["runs"][1]["per_query"] == loaded["runs"][0]["per_query"]
    assert all(os.path.isfile(target / "thumbs" / n) for n in both["runs"][1]["align"]["query"])
    # Another data set cannot be compared (here: one query relabelled).
    changed = q_items[:-1] + [(q_items[-1][0], 99, q_items[-1][2])]
    with pytest.raises(ReportError, match="query split .* is not this evaluation's"):
        write_report(
            str(tmp_path / "c"),
            [make_run(other, to_percent_payload(other)), LoadedRun(loaded, str(single))],
            changed,
            g_items,
        )


def to_percent_payload(results):
    return {"results": to_percent(results), "units": "percent"}


def test_bad_input_is_one_clear_error(evaluation, tmp_path):
    results, q_items, g_items, qf, gf, _, _ = evaluation
    payload = to_percent_payload(results)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ReportError, match="exists and is not a folder"):
        write_report(str(a_file), [make_run(results, payload)], q_items, g_items)
    foreign = tmp_path / "site"
    foreign.mkdir()
    (foreign / "index.html").write_text("<html>my page</html>")
    with pytest.raises(ReportError, match="did not write"):
        write_report(str(foreign), [make_run(results, payload)], q_items, g_items)
    assert (foreign / "index.html").read_text() == "<html>my page</html>"
    ids = ([it[1] for it in q_items], [it[1] for it in g_items], [it[2] for it in q_items], [it[2] for it in g_items])
    plain = evaluate_features(qf, gf, *ids)
    with pytest.raises(ReportError, match="no per-query records; evaluate with record_topk"):
        write_report(str(tmp_path / "r"), [make_run(plain, payload)], q_items, g_items)
    with pytest.raises(ReportError, match="no data.js"):
        read_report(str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / DATA_FILE).write_text(DATA_PREFIX + "{not json};")
    with pytest.raises(ReportError, match="not valid JSON"):
        read_report(str(tmp_path / "bad"))
    missing = [("/nonexistent/x.png", 1, 1)] + q_items[1:]
    with pytest.raises(FileNotFoundError, match="/nonexistent/x.png does not exist"):
        write_report(str(tmp_path / "m"), [make_run(results, payload)], missing, g_items)
