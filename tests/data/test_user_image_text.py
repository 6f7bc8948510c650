"""Tests for jaxmm.data.user_image_text: a CSV or JSONL of (image, text, label) rows -> tfds.

Every test writes small images with Pillow into `tmp_path`, builds, reads back through
`as_data_source` (the path the training pipeline uses) and checks what came out.
"""

import csv
import io
import json
import logging
import pathlib
import pickle
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxmm.data import user_captions as uc
from jaxmm.data import user_image_text as uit


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def folder(tmp_path) -> pathlib.Path:
    """Three JPEGs (one in a sub-folder), a PNG, a truncated JPEG and a text file named .jpg."""
    root = tmp_path / "shop"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg(32, 24, 0))
    (root / "b.jpg").write_bytes(_jpeg(20, 20, 1))
    (root / "sub" / "c.jpg").write_bytes(_jpeg(16, 40, 2))
    Image.fromarray(np.full((8, 12), 90, np.uint8), "L").save(root / "d.png")
    good = _jpeg(64, 64, 3)
    (root / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_text("not an image\n")
    return root


def _csv(path: pathlib.Path, rows: list[list[str]]) -> pathlib.Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _jsonl(path: pathlib.Path, lines) -> pathlib.Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _read_all(builder) -> dict[str, list[dict]]:
    """{split: [example, ...]} in file order (by `image_id`, then text), text as str."""
    builder.download_and_prepare()
    out = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split)
        rows = [dict(source[i]) for i in range(len(source))]
        for row in rows:
            row["text"], row["image_id"] = _text(row["text"]), _text(row["image_id"])
        out[split] = sorted(rows, key=lambda r: (r["image_id"], r["text"]))
    return out


ROWS = [
    ["Image", "text", "LABEL", "notes"],  # names match case-insensitively; extras ignored
    ["a.jpg", "Red wool scarf, hand-knitted", "clothing", "x"],
    ["b.jpg", 'Steel kettle, 1.5 l "fast boil"', "kitchen", ""],
    ["a.jpg", "The same photo, another listing", "clothing", ""],
    ["sub/c.jpg", "", "garden", ""],  # an empty text is allowed and counted
    ["d.png", "Grey tile sample", "kitchen", ""],
]


def test_csv_rows_become_examples(tmp_path, folder):
    path = _csv(folder / "items.csv", ROWS)
    builder = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds", val_fraction=0.0)
    data = _read_all(builder)
    assert builder.info.features["label"].names == ["clothing", "garden", "kitchen"]
    assert [(r["image_id"], r["text"], int(r["label"])) for r in data["train"]] == [
        ("a.jpg", "Red wool scarf, hand-knitted", 0),
        ("a.jpg", "The same photo, another listing", 0),
        ("b.jpg", 'Steel kettle, 1.5 l "fast boil"', 2),
        ("d.png", "Grey tile sample", 2),
        ("sub/c.jpg", "", 1),
    ]
    a, _, b, d, c = data["train"]
    # The small RGB JPEG is kept byte for byte: pixels equal Pillow's decode of the file.
    np.testing.assert_array_equal(a["image"], np.asarray(Image.open(folder / "a.jpg")))
    assert b["image"].shape == (20, 20, 3) and c["image"].shape == (40, 16, 3)
    assert d["image"].shape == (8, 12, 3) and d["image"].dtype == np.uint8
    np.testing.assert_allclose(d["image"].astype(int), 90, atol=8)  # q95 JPEG of a flat level
    assert builder.info.metadata["num_empty_texts"] == 1
    assert builder.info.metadata["num_skipped_images"] == 0
    assert set(data["train"][0]) == {"image", "text", "label", "image_id"}


def test_jsonl_integer_labels_sort_numerically_and_hash_splits(tmp_path, folder):
    lines = [
        {"image": "a.jpg", "text": "one", "label": 10},
        {"image": "b.jpg", "text": "two", "label": "2"},
        {"image": "sub/c.jpg", "text": "three", "label": 2},
        {"image": "d.png", "text": "four", "label": "-1"},
        {"image": "a.jpg", "text": "five", "label": 2},
    ]
    path = _jsonl(folder / "items.jsonl", lines)
    builder = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds", val_fraction=0.5)
    data = _read_all(builder)
    names = builder.info.features["label"].names
    assert names == ["-1", "2", "10"]
    want: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        split = uc.hash_split(line["image"], 0.5, 0.0)  # by image: a.jpg's rows stay together
        want.setdefault(split, []).append((line["image"], line["text"]))
    got = {s: [(r["image_id"], r["text"]) for r in rows] for s, rows in data.items()}
    assert got == {s: sorted(v) for s, v in want.items()}
    assert set(want) == {"train", "validation"}  # these names land in both splits
    for rows in data.values():
        for row in rows:
            line = next(x for x in lines if x["text"] == row["text"])
            assert names[row["label"]] == str(line["label"])


def test_split_column_and_given_classes(tmp_path, folder):
    rows = [
        ["image", "text", "label", "split"],
        ["a.jpg", "t1", "cat", "train"],
        ["b.jpg", "t2", "dog", "VAL"],
        ["sub/c.jpg", "t3", "cat", "test"],
        ["d.png", "t4", "bird", "none"],  # excluded: its label makes no class by itself
    ]
    path = _csv(folder / "s.csv", rows)
    builder = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds")
    data = _read_all(builder)
    assert {s: [r["text"] for r in d] for s, d in data.items()} == {
        "train": ["t1"],
        "validation": ["t2"],
        "test": ["t3"],
    }
    assert builder.info.features["label"].names == ["cat", "dog"]
    assert builder.info.metadata["num_excluded_rows"] == 1
    given = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds", classes=["dog", "cat", "fox"])
    data = _read_all(given)
    assert given.info.features["label"].names == ["dog", "cat", "fox"]
    assert [int(data[s][0]["label"]) for s in ("train", "validation", "test")] == [1, 0, 1]
    assert given.data_dir != builder.data_dir
    with pytest.raises(ValueError, match=r"s\.csv:3: label 'dog' is not one of the 1 classes"):
        uit.ImageTextLabelFile(path, classes=["cat"])
    with pytest.raises(ValueError, match="distinct"):
        uit.ImageTextLabelFile(path, classes=["cat", "cat", "dog"])
    with pytest.raises(ValueError, match="list of class names"):
        uit.ImageTextLabelFile(path, classes="cat,dog")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("corrupt.jpg", "truncated"), ("text.jpg", "not an image"), ("missing.jpg", "not found")],
)
def test_bad_image_error_names_image_and_line(tmp_path, folder, bad, reason):
    path = _csv(folder / "q.csv", [ROWS[0], ROWS[1], [bad, "t", "x", ""], ROWS[2]])
    builder = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds", val_fraction=0.0)
    with pytest.raises(uc.BadImageError) as info:
        builder.download_and_prepare()
    message = str(info.value)
    assert bad in message and "q.csv:3" in message and reason in message, message


def test_skip_mode_counts_and_warns(tmp_path, folder, caplog):
    bad = [{"image": n, "text": "t", "label": "x"} for n in ("corrupt.jpg", "text.jpg", "nope.jpg")]
    good = [
        {"image": "a.jpg", "text": "ok", "label": "x"},
        {"image": "b.jpg", "text": "ok", "label": "y"},
    ]
    path = _jsonl(folder / "q.jsonl", bad[:1] + good + bad[1:])
    builder = uit.ImageTextLabelFile(
        path, data_dir=tmp_path / "tfds", on_bad_image="skip", val_fraction=0.0
    )
    with caplog.at_level(logging.WARNING):
        data = _read_all(builder)
    assert [r["image_id"] for r in data["train"]] == ["a.jpg", "b.jpg"]
    assert builder.info.metadata["num_skipped_images"] == 3
    skipped = builder.info.metadata["skipped_images"]
    assert [re.search(r"q\.jsonl:(\d+): image \S+/(\S+):", s).groups() for s in skipped] == [
        ("1", "corrupt.jpg"),
        ("4", "text.jpg"),
        ("5", "nope.jpg"),
    ]
    assert "skipped 3 bad images" in caplog.text


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "", r"bad\.csv: empty; expected a header"),
        ("bad.csv", "image,caption,label\na.jpg,t,x\n", r"bad\.csv:1: header .* lacks 'text'"),
        ("bad.csv", "image,text,label\na.jpg,t,x\nb.jpg,t, with comma,x\n", r":3: 4 fields"),
        ("bad.csv", "image,text,label\na.jpg,t,\n", r":2: 'label' must be a non-empty"),
        ("bad.csv", "image,text,label\n,t,x\n", r":2: 'image' must be a non-empty"),
        ("bad.csv", "image,text,label,split\na.jpg,t,x,training\n", r":2: unknown split"),
        ("bad.csv", "image,text,label,split\na.jpg,t,x,none\n", r"every row is excluded"),
        ("bad.csv", "image,text,label\n", r"bad\.csv: no rows"),
        ("bad.jsonl", "\n  \n", r"bad\.jsonl: no rows"),
        (
            "bad.jsonl",
            '{"image": "a.jpg", "text": "t", "label": "x"}\n{"image": ',
            r":2: not valid",
        ),
        ("bad.jsonl", "[1, 2]", r":1: expected a JSON object, got list"),
        ("bad.jsonl", '{"image": "a.jpg", "label": "x"}', r":1: missing 'text'"),
        (
            "bad.jsonl",
            '{"image": "a.jpg", "text": null, "label": "x"}',
            r":1: 'text' must be a str",
        ),
        ("bad.jsonl", '{"image": "a.jpg", "text": "t", "label": true}', r":1: 'label' must be"),
        ("bad.jsonl", '{"image": "a.jpg", "text": "t", "label": 1.5}', r":1: 'label' must be"),
        ("bad.jsonl", '{"image": 3, "text": "t", "label": "x"}', r":1: 'image' must be"),
        ("bad.jsonl", '{"image": "a.jpg", "text": "\\ud800", "label": "x"}', r":1: .*surrogate"),
        ("bad.txt", "image,text,label\n", r"bad\.txt: expected a \.csv or \.jsonl file"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path, folder, name, content, message):
    path = folder / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds")


def test_missing_file_and_bad_options(tmp_path, folder):
    missing = folder / "nope.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        uit.ImageTextLabelFile(missing)
    path = _csv(folder / "items.csv", ROWS)
    with pytest.raises(ValueError, match="on_bad_image"):
        uit.ImageTextLabelFile(path, on_bad_image="ignore")
    with pytest.raises(ValueError, match="bad split fractions"):
        uit.ImageTextLabelFile(path, val_fraction=0.6, test_fraction=0.5)
    (folder / "latin1.csv").write_bytes("image,text,label\na.jpg,caf\xe9,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv:2: not UTF-8"):
        uit.ImageTextLabelFile(folder / "latin1.csv")


def test_data_dir_tracks_file_and_options(tmp_path, folder):
    path = _csv(folder / "My Items.csv", ROWS)
    first = uit.ImageTextLabelFile(path, data_dir=tmp_path)
    assert re.fullmatch(r"my_items_[0-9a-f]{10}", first.builder_config.name)
    assert pathlib.Path(first.data_dir).parts[-3] == "image_text_label_file"
    assert uit.ImageTextLabelFile(path, data_dir=tmp_path).data_dir == first.data_dir
    other = uit.ImageTextLabelFile(path, data_dir=tmp_path, val_fraction=0.2)
    assert other.data_dir != first.data_dir
    clone = pickle.loads(pickle.dumps(other))
    assert clone.data_dir == other.data_dir and clone._fractions == (0.2, 0.0)
    _csv(path, ROWS[:3])  # edited: size and mtime change
    assert uit.ImageTextLabelFile(path, data_dir=tmp_path).data_dir != first.data_dir


def test_prepared_copy_reads_without_the_source(tmp_path, folder):
    path = _csv(folder / "items.csv", ROWS)
    builder = uit.ImageTextLabelFile(path, data_dir=tmp_path / "tfds", val_fraction=0.0)
    builder.download_and_prepare()
    reread = tfds.builder_from_directory(builder.data_dir)
    assert reread.info.features["label"].names == ["clothing", "garden", "kitchen"]
    assert len(reread.as_data_source("train")) == 5
