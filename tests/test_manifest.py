"""The CSV manifest reader (scstn_vcn.data.manifest): the lists the Market-1501 reader gives for the same
images, and one clear error naming the manifest and the line for every kind of bad input."""

import csv
import os
from pathlib import Path

import pytest

from scstn_vcn.data import Item, ManifestDataset, build_dataset, make_synthetic

SMALL = dict(
    num_identities=8,
    seed=3,
    images_per_identity=3,
    gallery_per_identity=3,
    query_per_identity=1,
    num_distractors=3,
    num_junk=2,
)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """The small synthetic set in the Market-1501 layout, read by the Market-1501 reader."""
    return build_dataset("synthetic", make_synthetic(tmp_path_factory.mktemp("manifest") / "market", **SMALL))


def write_csv(path, rows, header=("path", "pid", "camid", "split")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_manifest_of_the_market_lists_reads_back_the_same_lists(market, tmp_path):
    # Written here from the reader's lists, independently of make_synthetic's writer: the columns in another
    # order with an extra one, query paths relative to the manifest's folder, the others absolute, a junk line.
    rows = []
    for split in ("train", "query", "gallery"):
        for path, pid, camid in getattr(market, split):
            shown = os.path.relpath(path, tmp_path) if split == "query" else path
            rows.append((split, camid, "note", shown, pid))
    (tmp_path / "junk.jpg").write_bytes(Path(market.gallery[0].path).read_bytes())
    rows.insert(3, ("gallery", 0, "junk box", "junk.jpg", -1))  # dropped, as the Market-1501 reader drops junk
    manifest = write_csv(tmp_path / "mine.csv", rows, ("split", "camid", "comment", "path", "pid"))
    data = ManifestDataset(manifest)
    assert data.train == market.train and data.query == market.query and data.gallery == market.gallery
    assert data.num_train_pids == market.num_train_pids


def test_make_synthetic_writes_a_manifest_that_gives_the_market_lists(market, tmp_path):
    root = make_synthetic(tmp_path / "set", layout="manifest", **SMALL)
    # The folder form of the root finds its manifest.csv.
    data = build_dataset("manifest", root)
    assert data.manifest == root / "manifest.csv"
    for split in ("train", "query", "gallery"):
        ours, theirs = getattr(data, split), getattr(market, split)
        assert [(Path(p).relative_to(root), pid, cam) for p, pid, cam in ours] == [
            (Path(p).relative_to(market.root), pid, cam) for p, pid, cam in theirs
        ]
        assert all(Path(a).read_bytes() == Path(b).read_bytes() for (a, _, _), (b, _, _) in zip(ours, theirs))
    # The junk lines (pid -1) are in the file and dropped, as the Market-1501 reader drops junk.
    assert ",-1," in (root / "manifest.csv").read_text()


def test_training_ids_are_relabelled_in_sorted_order_and_the_file_order_is_kept(tmp_path):
    for name in "abcdef":
        (tmp_path / f"{name}.png").write_bytes(b"")
    manifest = write_csv(
        tmp_path / "m.csv",
        [
            ("a.png", 40, 2, "train"),
            ("b.png", 7, 0, "Train"),  # split names ignore case and spaces
            ("c.png", 40, 1, " train "),
            ("d.png", 40, 5, "query"),
            ("e.png", 40, 3, "gallery"),
            ("f.png", 0, 3, "gallery"),  # 0 is an identity like any other (Market's distractors)
        ],
    )
    data = ManifestDataset(manifest)
    p = str(tmp_path)
    assert data.train == [Item(f"{p}/a.png", 1, 2), Item(f"{p}/b.png", 0, 0), Item(f"{p}/c.png", 1, 1)]
    assert data.query == [Item(f"{p}/d.png", 40, 5)]
    assert data.gallery == [Item(f"{p}/e.png", 40, 3), Item(f"{p}/f.png", 0, 3)]
    assert data.describe(data.query[0]) == f"{manifest}:5 ({p}/d.png)"


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def images(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


BAD_LINES = {
    "missing image": (("gone.jpg", "1", "0", "gallery"), "image {root}/gone.jpg does not exist"),
    "folder for an image": ((".", "1", "0", "gallery"), "is a folder"),
    "non-integer pid": (("b.jpg", "x7", "0", "gallery"), "pid 'x7' is not an integer"),
    "fractional pid": (("b.jpg", "7.0", "0", "gallery"), "pid '7.0' is not an integer"),
    "non-integer camid": (("b.jpg", "1", "1.5", "gallery"), "camid '1.5' is not an integer"),
    "empty camid": (("b.jpg", "1", "", "gallery"), "camid '' is not an integer"),
    "negative camid": (("b.jpg", "1", "-1", "gallery"), "camid -1; expected a camera >= 0"),
    "pid below -1": (("b.jpg", "-2", "0", "gallery"), "pid -2; expected -1 (junk) or an identity >= 0"),
    "unknown split": (("b.jpg", "1", "0", "test"), "unknown split 'test'; expected one of train, query, gallery"),
    "duplicate path": (("./a.jpg", "2", "1", "gallery"), "./a.jpg is listed again (first on line 2)"),
    "empty path": (("", "1", "0", "gallery"), "the path is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_lines_name_the_manifest_and_the_line(images, case):
    row, message = BAD_LINES[case]
    manifest = write_csv(images / "m.csv", [("a.jpg", "1", "0", "query"), row, ("c.jpg", "1", "1", "gallery")])
    with pytest.raises(ValueError) as error:
        ManifestDataset(manifest)
    assert str(error.value).startswith(f"{manifest}:3: ")
    assert message.format(root=images) in str(error.value)


def test_a_header_without_the_columns_is_refused(images):
    manifest = write_csv(images / "m.csv", [("a.jpg", "1", "query")], header=("path", "pid", "split"))
    with pytest.raises(ValueError, match=rf"{manifest}:1: the header lacks the column\(s\) camid"):
        ManifestDataset(manifest)


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,pid,camid,split\n", "lists no image"),
        ("path,pid,camid,split\n\n\n", "lists no image"),
        (b"path,pid,camid,split\n\xff\xfe,1,0,query\n", "not a UTF-8 text file"),
    ],
)
def test_empty_or_unreadable_manifests(images, content, message):
    manifest = images / "m.csv"
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as error:
        ManifestDataset(manifest)
    assert str(manifest) in str(error.value)


def test_missing_manifest_and_folder_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'no.csv'} does not exist"):
        ManifestDataset(tmp_path / "no.csv")
    with pytest.raises(FileNotFoundError, match="is a folder without a manifest.csv"):
        ManifestDataset(tmp_path)


def test_an_empty_split_is_refused_where_it_is_needed(images):
    manifest = write_csv(images / "m.csv", [("a.jpg", "1", "0", "query"), ("b.jpg", "1", "1", "gallery")])
    data = ManifestDataset(manifest)  # an evaluation target: no training split is fine when reading
    with pytest.raises(
        ValueError, match=rf"the train split of {manifest} \(lines with split=train\) is empty.*training"
    ):
        data.require(["train"], "training")
    data.require(["query", "gallery"], "evaluation")


def test_a_query_identity_without_gallery_image_is_reported_or_refused(images):
    manifest = write_csv(
        images / "m.csv",
        [("a.jpg", "1", "0", "query"), ("b.jpg", "5", "0", "query"), ("c.jpg", "1", "1", "gallery")],
    )
    data = ManifestDataset(manifest)
    assert data.queries_without_gallery() == [data.query[1]]
    note = data.check_queries()
    assert f"1 of 2 queries (1 identities, e.g. identity 5, {manifest}:3 ({images}/b.jpg))" in note
    assert "evaluation counts them as invalid queries" in note
    with pytest.raises(ValueError, match=rf"{manifest}:3 .*data.strict_queries is on"):
        data.check_queries(strict=True)


def test_cli_names_the_manifest_line_in_one_line(images, capsys):
    from scstn_vcn.cli import main

    manifest = write_csv(images / "m.csv", [("a.jpg", "1", "0", "train"), ("a.jpg", "1", "0", "train")])
    code = main(["train", "--config", "demo", "--dataset", "manifest", "--data-root", str(manifest), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{manifest}:3: a.jpg is listed again" in err
