"""make_synthetic: determinism, layout, counts, idempotence and the properties the paper is about."""

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from scstn_vcn.data import Market1501, build_dataset, build_train_loader, make_synthetic
from scstn_vcn.data.synthetic import MARKER, design_identities
from scstn_vcn.data.synthetic_render import random_camera, random_look, render

SMALL = dict(
    num_identities=12,
    images_per_identity=4,
    gallery_per_identity=3,
    query_per_identity=2,
    num_cameras=3,
    num_distractors=5,
    num_junk=4,
)


def digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "set", seed=0, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(small_set, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=0, workers=2, **SMALL)  # process count must not matter
    other = make_synthetic(tmp_path / "other", seed=1, **SMALL)
    assert digest(again) == digest(small_set)  # images and marker, byte for byte
    a, b = digest(small_set), digest(other)
    a.pop(MARKER), b.pop(MARKER)
    assert len(a) == len(b)  # same counts (cameras, and so names, depend on the seed)
    assert not set(a.values()) & set(b.values())  # no image in common


def test_layout_is_read_by_market1501_with_expected_counts(small_set):
    marker = json.loads((small_set / MARKER).read_text())
    counts = marker["counts"]
    assert counts == {"train": 6 * 4, "query": 6 * 2, "gallery": 6 * 3, "distractors": 5, "junk": 4}
    data = Market1501(small_set)
    assert data.num_train_pids == marker["num_train_ids"] == 6
    assert len(data.train) == 24 and len(data.query) == 12
    assert len(data.gallery) == 18 + 5  # junk (-1) dropped by the reader, distractors (0) kept
    assert sum(pid == 0 for _, pid, _ in data.gallery) == 5
    assert len(list((small_set / "bounding_box_test").glob("-1_c*.jpg"))) == 4
    for path, _, _ in data.train:
        name = Path(path).name  # Market-style: 0002_c1s1_000451_00.jpg
        assert len(name.split("_")[0]) == 4 and name[5] == "c" and name.endswith("_00.jpg")
    assert build_dataset("synthetic", small_set).num_train_pids == 6
    # Train and test identities are disjoint; every query has a gallery match in another camera.
    test_pids = {pid for _, pid, _ in data.query}
    assert not test_pids & {int(Path(p).name[:4]) for p, _, _ in data.train}
    gallery_cams = defaultdict(set)
    for _, pid, cam in data.gallery:
        gallery_cams[pid].add(cam)
    for _, pid, cam in data.query:
        assert gallery_cams[pid] - {cam}


def test_images_are_128x64_jpegs(small_set):
    from PIL import Image

    path = next((small_set / "query").glob("*.jpg"))
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (64, 128)


def test_existing_set_is_reused_and_others_refused(small_set, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*.jpg")}
    assert make_synthetic(small_set, seed=0, **SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*.jpg")} == before  # not rewritten
    with pytest.raises(FileExistsError, match="other parameters"):
        make_synthetic(small_set, seed=1, **SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(foreign)):
        make_synthetic(foreign, seed=0, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    make_synthetic(foreign, seed=0, overwrite=True, **SMALL)
    assert not (foreign / "notes.txt").exists() and (foreign / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # no temp folder left behind


def test_cli_entry_point(tmp_path, capsys):
    from scstn_vcn.cli import main

    assert (
        main(
            [
                "make-synthetic",
                str(tmp_path / "cli"),
                "--num-identities",
                "8",
                "--images-per-identity",
                "2",
                "--gallery-per-identity",
                "2",
                "--num-distractors",
                "0",
                "--num-junk",
                "0",
            ]
        )
        == 0
    )
    assert Market1501(tmp_path / "cli").num_train_pids == 4
    assert "wrote" in capsys.readouterr().out


def test_identities_come_in_swap_pairs():
    looks = design_identities(20, np.random.default_rng(0))
    for a, b in zip(looks[0::2], looks[1::2]):
        assert b == a.swapped() and a.upper != a.lower
    keys = {frozenset([a.upper, a.lower]) for a in looks[0::2]}
    assert len(keys) == 10  # no two pairs share their garments


def clean_front(look, rng_seed=5):
    """A person without background, camera or detection error, so only the look shows."""
    img = render(
        np.random.default_rng(rng_seed),
        look,
        random_camera(np.random.default_rng(0)),
        view="front",
        scale_range=(1.0, 1.0),
        shift=(0.0, 0.0),
        clean=True,
    )
    return img.astype(np.float64)


def test_swap_pairs_share_mean_colour_but_not_vertical_profile():
    """Global pooling (mean colour) cannot tell a swap pair apart; the vertical profile can."""
    for seed in range(8):
        look = random_look(np.random.default_rng(seed))
        a, b = clean_front(look), clean_front(look.swapped())
        mean_gap = np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max()
        profile_gap = np.abs(a.mean(axis=1) - b.mean(axis=1)).mean()  # per-row mean colour
        assert mean_gap < 4.0, (seed, mean_gap)
        assert profile_gap > 10.0, (seed, profile_gap)
        assert profile_gap > 4 * mean_gap


def test_detection_error_moves_and_scales_the_person():
    look = random_look(np.random.default_rng(3))
    cam = random_camera(np.random.default_rng(0))
    tops, heights = [], []
    for seed in range(30):
        img = render(np.random.default_rng(seed), look, cam, view="front", clean=True).astype(int)
        rows = np.nonzero(np.abs(img - 127).sum(axis=(1, 2)) > 0)[0]
        tops.append(rows.min())
        heights.append(rows.max() - rows.min())
    assert max(tops) - min(tops) >= 10  # parts land at different heights across images
    assert max(heights) - min(heights) >= 20  # scale 0.75-1.25 of ~109 px (clipped at the box)


def test_cameras_differ():
    look = random_look(np.random.default_rng(3))
    means = [
        render(np.random.default_rng(1), look, random_camera(np.random.default_rng(c)), view="front")
        .astype(float)
        .mean(axis=(0, 1))
        for c in range(4)
    ]
    assert max(np.abs(m - means[0]).max() for m in means[1:]) > 10


def test_train_loader_on_synthetic(small_set):
    data = Market1501(small_set)
    loader = build_train_loader(data, 64, 32, num_identities=3, num_instances=2, workers=0, seed=0)
    loader.batch_sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 2
    images, pids, camids, indices = batches[0]
    assert images.shape == (6, 3, 64, 32) and len(set(pids.tolist())) == 3
    assert all(data.train[i][1] == p for i, p in zip(indices.tolist(), pids.tolist()))


# ------------------------------------------------------------------------------- detection error knob


def test_default_detection_error_is_the_former_box(small_set):
    from scstn_vcn.data.synthetic_render import DEFAULT_DETECTION_ERROR, detection_error_box

    assert DEFAULT_DETECTION_ERROR == 0.25
    assert detection_error_box(DEFAULT_DETECTION_ERROR) == ((0.75, 1.25), (0.10, 0.12))  # exactly
    params = json.loads((small_set / MARKER).read_text())["params"]
    assert "detection_error" not in params and "num_test_identities" not in params  # default set unchanged


def test_zero_detection_error_centres_the_person_at_a_fixed_scale():
    import dataclasses

    from scstn_vcn.data.synthetic_render import detection_error_box

    scale_range, shift = detection_error_box(0.0)
    look = dataclasses.replace(random_look(np.random.default_rng(3)), bag=None)  # a bag hangs on one side
    cam = random_camera(np.random.default_rng(0))
    boxes = set()
    for seed in range(12):
        img = render(
            np.random.default_rng(seed), look, cam, view="front", scale_range=scale_range, shift=shift, clean=True
        ).astype(int)
        person = np.abs(img - 127).sum(axis=2) > 0
        rows, cols = np.nonzero(person.any(axis=1))[0], np.nonzero(person.any(axis=0))[0]
        boxes.add((rows.min(), rows.max(), cols.min(), cols.max()))
    assert len(boxes) == 1  # the same box in every image
    top, bottom, left, right = boxes.pop()
    assert abs((top + bottom) - (128 - 1)) <= 2 and abs((left + right) - (64 - 1)) <= 2  # centred


def test_detection_error_changes_the_images(small_set, tmp_path):
    wide = make_synthetic(tmp_path / "wide", seed=0, detection_error=0.4, **SMALL)
    assert json.loads((wide / MARKER).read_text())["params"]["detection_error"] == 0.4
    a, b = digest(small_set), digest(wide)
    assert set(a) == set(b)  # the same files...
    person = [k for k in a if k.startswith(("bounding_box_train", "query"))]
    assert all(a[k] != b[k] for k in person)  # ...every person drawn in another box
    with pytest.raises(ValueError, match="detection_error"):
        make_synthetic(tmp_path / "bad", seed=0, detection_error=-0.1, **SMALL)


def test_more_test_identities_keep_the_training_images(small_set, tmp_path):
    big = make_synthetic(tmp_path / "big", seed=0, **{**SMALL, "num_identities": 16}, num_test_identities=10)
    marker = json.loads((big / MARKER).read_text())
    assert marker["num_train_ids"] == 6 and marker["num_test_ids"] == 10 and marker["counts"]["query"] == 20
    train = lambda root: {k: v for k, v in digest(root).items() if k.startswith("bounding_box_train")}  # noqa: E731
    assert train(big) == train(small_set)
    with pytest.raises(ValueError, match="num_test_identities"):
        make_synthetic(tmp_path / "odd", seed=0, **SMALL, num_test_identities=5)


def test_make_synthetic_cli_detection_error(tmp_path, capsys):
    from scstn_vcn.cli import main

    args = [
        "make-synthetic",
        "--num-identities",
        "4",
        "--images-per-identity",
        "1",
        "--gallery-per-identity",
        "2",
        "--query-per-identity",
        "1",
        "--num-distractors",
        "0",
        "--num-junk",
        "0",
    ]
    assert main(args + [str(tmp_path / "e0"), "--detection-error", "0"]) == 0
    assert json.loads((tmp_path / "e0" / MARKER).read_text())["params"]["detection_error"] == 0.0
    capsys.readouterr()
    assert main(args + [str(tmp_path / "bad"), "--detection-error=-0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scstn-vcn make-synthetic: error: --detection-error") and len(err.splitlines()) == 1
