"""The folder-per-identity reader (scstn_vcn.data.identity_folders): ``<root>/<split>/<pid>/<image>``, cameras
from ``c<digits>`` in the names or a camera per file, the Market-1501 reader's lists for the same images, and
one clear error naming the folder for each kind of bad input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scstn_vcn.data import IdentityFolders, Item, build_dataset, make_synthetic
from scstn_vcn.data.identity_folders import camera_in_name
from scstn_vcn.engine.evaluator import query_counts
from scstn_vcn.metrics import evaluate_rank_full, valid_query_mask

SMALL = dict(
    num_identities=8,
    seed=5,
    images_per_identity=3,
    gallery_per_identity=3,
    query_per_identity=2,
    num_distractors=3,
    num_junk=2,
)


def image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 4, 3), value, np.uint8)).save(path)
    return path


def tree(root, files):
    """Files given as "split/pid/name" under root."""
    for rel in files:
        image(root / rel)
    return root


def test_the_folder_layout_of_the_synthetic_set_gives_the_market_lists(tmp_path):
    market = build_dataset("synthetic", make_synthetic(tmp_path / "market", **SMALL))
    root = make_synthetic(tmp_path / "folders", layout="folders", **SMALL)
    data = build_dataset("folders", root)
    assert sorted(p.name for p in root.iterdir()) == ["gallery", "query", "synthetic.json", "train"]
    assert (root / "gallery" / "-1").is_dir() and (root / "gallery" / "0000").is_dir()  # junk, distractors
    for split in ("train", "query", "gallery"):
        ours, theirs = getattr(data, split), getattr(market, split)
        assert [(Path(p).name, pid, cam) for p, pid, cam in ours] == [
            (Path(p).name, pid, cam) for p, pid, cam in theirs
        ]
        assert all(Path(a).read_bytes() == Path(b).read_bytes() for (a, _, _), (b, _, _) in zip(ours, theirs))
        assert all(Path(p).parent.name == f"{pid:04d}" for p, pid, _ in ours if split != "train")


@pytest.mark.parametrize(
    "name, camera",
    [
        ("0002_c1s1_000451_00.jpg", 0),  # Market-1501
        ("0001_c2_f0046182.jpg", 1),  # DukeMTMC-reID
        ("c3_frame77.jpg", 2),
        ("img_c12.png", 11),
        ("img-c4-x.jpg", 3),
        ("abc12.jpg", None),  # c after a letter: not a camera
        ("cam3.jpg", None),
        ("frame_0042.jpg", None),
        ("2c5.jpg", None),  # c after a digit
    ],
)
def test_camera_from_the_name(name, camera):
    assert camera_in_name(Path(name)) == camera


def test_camera_zero_in_a_name_is_refused():
    with pytest.raises(ValueError, match=r"image x/c0_a.jpg: camera c0 in its name; cameras in names are 1-based"):
        camera_in_name(Path("x/c0_a.jpg"))


def test_files_without_a_camera_are_cameras_of_their_own(tmp_path):
    root = tree(
        tmp_path,
        [
            "train/0010/a.jpg",
            "train/0010/b_c2.jpg",
            "train/3/z.jpg",  # identity 3 sorts before 0010 (as a number), so it is read first
            "query/0010/q.jpg",
            "gallery/0010/g1.jpg",
            "gallery/0010/g2_c5.jpg",
            "gallery/7/g3.jpg",
        ],
    )
    data = IdentityFolders(root)
    r = str(root)
    # Named cameras: c2 -> 1, c5 -> 4. The others are numbered from 5 in reading order (train, query, gallery).
    assert data.train == [
        Item(f"{r}/train/3/z.jpg", 0, 5),
        Item(f"{r}/train/0010/a.jpg", 1, 6),
        Item(f"{r}/train/0010/b_c2.jpg", 1, 1),
    ]
    assert data.query == [Item(f"{r}/query/0010/q.jpg", 10, 7)]
    assert data.gallery == [
        Item(f"{r}/gallery/7/g3.jpg", 7, 8),
        Item(f"{r}/gallery/0010/g1.jpg", 10, 9),
        Item(f"{r}/gallery/0010/g2_c5.jpg", 10, 4),
    ]
    # With cameras of their own no gallery image of the query's identity is discarded: both count.
    g_pids, g_cams = [it.pid for it in data.gallery], [it.camid for it in data.gallery]
    result = evaluate_rank_full(np.array([[0.0, 0.2, 0.1]]), [10], g_pids, [7], g_cams)
    assert result["num_valid_queries"] == 1 and result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_one_camera_for_everything_is_one_clear_error(tmp_path):
    root = tree(tmp_path, ["query/1/q_c1.jpg", "gallery/1/g_c1.jpg", "gallery/2/h_c1.jpg"])
    with pytest.raises(ValueError, match="every image is from the one camera 0.*leave the camera out of the names"):
        query_counts(IdentityFolders(root))


def test_only_the_splits_that_are_there(tmp_path):
    data = IdentityFolders(tree(tmp_path, ["query/1/a.jpg", "gallery/1/b.jpg"]))
    assert data.train == [] and len(data.query) == 1
    with pytest.raises(ValueError, match=rf"the split folder {tmp_path / 'train'} is empty .*; training needs it"):
        data.require(["train"], "training")


BAD_TREES = {
    "non-integer identity": (["train/alice/a.jpg"], "identity folder {root}/train/alice: its name is not an integer"),
    "identity below -1": (["train/-3/a.jpg"], "identity folder {root}/train/-3: identity -3"),
    "unknown split": (["train/1/a.jpg", "test/1/a.jpg"], "holds the folder 'test', which is no split"),
    "image in the split folder": (["query/0001_c1.jpg"], "split folder {root}/query: image 0001_c1.jpg lies directly"),
    "camera zero": (["query/1/c0.jpg"], "camera c0 in its name"),
    "nested folder": (["gallery/1/cam1/a.jpg"], "identity folder {root}/gallery/1: holds a folder cam1"),
}


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_trees_name_the_folder(tmp_path, case):
    files, message = BAD_TREES[case]
    root = tree(tmp_path / "data", files)
    with pytest.raises(ValueError) as error:
        IdentityFolders(root)
    assert message.format(root=root) in str(error.value)


def test_empty_folders_are_refused(tmp_path):
    root = tree(tmp_path / "data", ["train/1/a.jpg"])
    (root / "train" / "2").mkdir()
    (root / "train" / "2" / "notes.txt").write_text("no image")
    with pytest.raises(ValueError, match=rf"identity folder {root}/train/2: holds no image"):
        IdentityFolders(root)
    (root / "train" / "2" / "a.png").write_bytes(b"")
    (root / "query").mkdir()
    with pytest.raises(ValueError, match=rf"split folder {root}/query: holds no identity folder"):
        IdentityFolders(root)


def test_roots_without_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IdentityFolders(tmp_path / "nowhere")
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(ValueError, match="'bounding_box_train', which is no split"):
        IdentityFolders(tmp_path)
    (tmp_path / "bounding_box_train").rmdir()
    (tmp_path / ".cache").mkdir()  # hidden folders are not splits
    with pytest.raises(FileNotFoundError, match="holds none of the split folders train, query, gallery"):
        IdentityFolders(tmp_path)


def test_valid_query_mask_agrees_with_the_metrics(tmp_path):
    # The count reported before evaluating is the one the metrics average over (random ids and cameras,
    # junk in the gallery, identities missing from it).
    rng = np.random.default_rng(0)
    for _ in range(20):
        q_pids, q_cams = rng.integers(0, 6, 15), rng.integers(0, 3, 15)
        g_pids, g_cams = rng.integers(-1, 5, 30), rng.integers(0, 3, 30)
        mask = valid_query_mask(q_pids, g_pids, q_cams, g_cams)
        brute = [
            any(gp == qp and gc != qc for gp, gc in zip(g_pids, g_cams) if gp != -1) for qp, qc in zip(q_pids, q_cams)
        ]
        assert mask.tolist() == brute
        if mask.any():
            distmat = rng.random((15, 30))
            assert evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams)["num_valid_queries"] == mask.sum()
