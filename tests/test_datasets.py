"""Data set readers on small fake trees of each layout, their error messages, transforms and loaders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scstn_vcn.data import (
    MSMT17,
    DukeMTMCreID,
    ImageDataset,
    Market1501,
    build_dataset,
    build_eval_loaders,
    build_transforms,
)


def jpeg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 8, 3), value, np.uint8)).save(path)


MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_00.jpg",
        "0002_c3s1_000551_01.jpg",
        "0007_c2s1_000101_00.jpg",
        "0007_c6s2_000201_00.jpg",
        "0011_c1s1_000301_00.jpg",
    ],
    "query": ["0003_c1s1_000001_00.jpg", "0005_c4s1_000002_00.jpg"],
    "bounding_box_test": [
        "0003_c2s1_000011_00.jpg",
        "0005_c5s1_000012_00.jpg",
        "0000_c1s1_000013_00.jpg",
        "-1_c3s1_000014_00.jpg",
        "-1_c1s1_000015_00.jpg",
        "0003_c1s1_000016_00.jpg",
    ],
}


def market_tree(root: Path, files=MARKET_FILES) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            jpeg(root / folder / name)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # ignored, as in some copies
    return root


def test_market1501_direct_root(tmp_path):
    data = Market1501(market_tree(tmp_path / "m"))
    assert data.root == tmp_path / "m"
    # Train: identities 2, 7, 11 relabelled 0, 1, 2 in order; cameras 0-based.
    assert [(Path(p).name, pid, cam) for p, pid, cam in data.train] == [
        ("0002_c1s1_000451_00.jpg", 0, 0),
        ("0002_c3s1_000551_01.jpg", 0, 2),
        ("0007_c2s1_000101_00.jpg", 1, 1),
        ("0007_c6s2_000201_00.jpg", 1, 5),
        ("0011_c1s1_000301_00.jpg", 2, 0),
    ]
    assert data.num_train_pids == 3 and data.num_train_cams == 4
    assert [(pid, cam) for _, pid, cam in data.query] == [(3, 0), (5, 3)]  # original ids kept
    gallery_pids = sorted(pid for _, pid, _ in data.gallery)
    assert gallery_pids == [0, 3, 3, 5]  # junk (-1) dropped, distractor (0) kept
    assert all(Path(p).is_file() for p, _, _ in data.train + data.query + data.gallery)


@pytest.mark.parametrize("folder", ["Market-1501-v15.09.15", "market1501"])
def test_market1501_parent_folder(tmp_path, folder):
    market_tree(tmp_path / folder)
    data = build_dataset("market1501", tmp_path)
    assert data.root == tmp_path / folder and len(data.train) == 5


def test_duke_parent_folder_and_names(tmp_path):
    files = {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg", "0005_c1_f0001234.jpg"],
        "query": ["0008_c3_f0000010.jpg"],
        "bounding_box_test": ["0008_c7_f0000020.jpg", "0000_c1_f0000030.jpg"],
    }
    market_tree(tmp_path / "DukeMTMC-reID", files)
    data = DukeMTMCreID(tmp_path)
    assert [(pid, cam) for _, pid, cam in data.train] == [(0, 1), (0, 7), (1, 0)]
    assert data.num_train_cams == 3 and [(pid, cam) for _, pid, cam in data.gallery] == [(0, 0), (8, 6)]
    assert build_dataset("DukeMTMC-reID", tmp_path).num_train_pids == 2


def msmt_tree(root: Path, version: str = "MSMT17_V1") -> Path:
    train_dir, test_dir = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}[version]
    lists = {
        "list_train.txt": [
            (train_dir, "0000/0000_000_01_0303morning_0015_0.jpg", 0),
            (train_dir, "0000/0000_001_05_0303morning_0036_1.jpg", 0),
            (train_dir, "0002/0002_000_15_0303noon_0100_0.jpg", 2),
        ],
        "list_val.txt": [(train_dir, "0001/0001_000_03_0303afternoon_0200_0.jpg", 1)],
        "list_query.txt": [(test_dir, "0000/0000_000_02_0303morning_0001_0.jpg", 0)],
        "list_gallery.txt": [
            (test_dir, "0000/0000_001_07_0303morning_0002_0.jpg", 0),
            (test_dir, "0004/0004_000_12_0303noon_0003_0.jpg", 4),
        ],
    }
    for list_name, rows in lists.items():
        for folder, rel, _ in rows:
            jpeg(root / folder / rel)
        (root / list_name).write_text("".join(f"{rel} {label}\n" for _, rel, label in rows))
    return root


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_lists_and_combine_trainval(tmp_path, version):
    msmt_tree(tmp_path / version, version)
    data = MSMT17(tmp_path)  # parent form
    assert data.root == tmp_path / version
    # Labels 0 and 2 relabelled to 0 and 1; cameras from the third field of the name, 0-based.
    assert [(pid, cam) for _, pid, cam in data.train] == [(0, 0), (0, 4), (1, 14)]
    assert [(pid, cam) for _, pid, cam in data.query] == [(0, 1)]
    assert [(pid, cam) for _, pid, cam in data.gallery] == [(0, 6), (4, 11)]
    assert all(Path(p).is_file() for p, _, _ in data.train + data.query + data.gallery)
    both = build_dataset("msmt17", tmp_path / version, combine_trainval=True)
    assert both.num_train_pids == 3 and len(both.train) == 4
    assert sorted({pid for _, pid, _ in both.train}) == [0, 1, 2]


def test_missing_root_names_path_and_expectation(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*bounding_box_train") as err:
        Market1501(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_wrong_layout_lists_places_looked(tmp_path):
    (tmp_path / "bounding_box_train").mkdir()  # no query/ nor bounding_box_test/
    with pytest.raises(FileNotFoundError) as err:
        Market1501(tmp_path)
    msg = str(err.value)
    assert "query" in msg and "bounding_box_test" in msg and str(tmp_path) in msg
    assert str(tmp_path / "Market-1501-v15.09.15") in msg


def test_msmt_wrong_layout(tmp_path):
    (tmp_path / "MSMT17_V1" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="list_train.txt"):
        MSMT17(tmp_path)


def test_unparseable_file_name_is_named(tmp_path):
    root = market_tree(tmp_path)
    jpeg(root / "query" / "person_without_ids.jpg")
    with pytest.raises(ValueError, match="person_without_ids.jpg"):
        Market1501(root)


def test_msmt_bad_list_line_is_named(tmp_path):
    root = msmt_tree(tmp_path / "MSMT17_V1")
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0001_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt:1"):
        MSMT17(root)
    (root / "list_query.txt").write_text("0000/badname.jpg 0\n")
    with pytest.raises(ValueError, match="badname.jpg"):
        MSMT17(root)


def test_empty_split_is_an_error(tmp_path):
    files = dict(MARKET_FILES, query=["-1_c1s1_000001_00.jpg"])  # only junk: empty once junk is dropped
    root = market_tree(tmp_path, files)
    with pytest.raises(ValueError, match=r"query split .* is empty"):
        Market1501(root)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="market1501, dukemtmcreid, msmt17, synthetic, manifest, folders"):
        build_dataset("cuhk03", tmp_path)


def test_the_users_layouts_by_name(tmp_path):
    # The manifest and folder readers are in the registry under names that ignore case, '-' and '_'.
    market = Market1501(market_tree(tmp_path / "m"))
    rows = [
        f"{p},{pid},{cam},{split}" for split in ("train", "query", "gallery") for p, pid, cam in getattr(market, split)
    ]
    (tmp_path / "m.csv").write_text("path,pid,camid,split\n" + "\n".join(rows) + "\n")
    data = build_dataset("Manifest", tmp_path / "m.csv")
    assert (data.train, data.query, data.gallery) == (market.train, market.query, market.gallery)
    for split in ("train", "query", "gallery"):
        for path, pid, _ in getattr(market, split):
            jpeg(tmp_path / "f" / split / str(pid) / Path(path).name)
    folders = build_dataset("FOLDERS", tmp_path / "f")
    assert [(Path(p).name, pid, cam) for p, pid, cam in folders.gallery] == [
        (Path(p).name, pid, cam) for p, pid, cam in market.gallery
    ]


def test_unreadable_and_missing_images_name_the_path(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = ImageDataset([(str(bad), 1, 0), (str(tmp_path / "gone.jpg"), 1, 0)])
    with pytest.raises(ValueError, match=str(bad)):
        ds[0]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ds[1]


def test_image_dataset_item_and_transforms(tmp_path):
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    jpeg(path, value=200)
    ds = ImageDataset([(str(path), 4, 2)], build_transforms(32, 16, is_train=False))
    image, pid, camid, index = ds[0]
    assert image.shape == (3, 32, 16) and image.dtype == torch.float32 and (pid, camid, index) == (4, 2, 0)
    # Normalised with ImageNet statistics: channel 0 of a ~200 grey is (200/255 - 0.485) / 0.229.
    assert image[0].mean().item() == pytest.approx((200 / 255 - 0.485) / 0.229, abs=0.05)
    train = build_transforms(32, 16, is_train=True, erasing_p=1.0)
    torch.manual_seed(0)
    out = train(Image.open(path).convert("RGB"))
    assert out.shape == (3, 32, 16)
    assert not torch.allclose(out, image)  # padding / erasing changed something


def test_eval_loaders_yield_pids_and_camids(tmp_path):
    data = Market1501(market_tree(tmp_path))
    query_loader, gallery_loader = build_eval_loaders(data, 32, 16, batch_size=3, workers=0)
    batches = list(gallery_loader)
    images = torch.cat([b[0] for b in batches])
    pids = torch.cat([b[1] for b in batches]).tolist()
    camids = torch.cat([b[2] for b in batches]).tolist()
    indices = torch.cat([b[3] for b in batches]).tolist()
    assert images.shape == (4, 3, 32, 16)
    assert pids == [pid for _, pid, _ in data.gallery] and camids == [c for _, _, c in data.gallery]
    assert indices == list(range(4))
    q = next(iter(query_loader))
    assert q[1].tolist() == [3, 5] and q[2].tolist() == [0, 3]
