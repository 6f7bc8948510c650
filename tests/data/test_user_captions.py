"""Tests for jaxmm.data.user_captions: caption files and COCO JSON -> tfds array_record datasets.

Every test builds into `tmp_path` from small images written on the fly, reads back through
`as_data_source` (the path the training pipeline uses) and checks what came out.
"""

import hashlib
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

JPEG_ATOL = 8  # q95 JPEG error on flat colour regions, in 8-bit levels


def _text(x) -> str:
    """Real data gives bytes, tfds mock data gives str."""
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 128 + 0 * x], -1)
    rgb = rgb + rng.integers(-10, 10, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, **kwargs)
    return out.getvalue()


@pytest.fixture
def images(tmp_path) -> pathlib.Path:
    """A folder of small images in the formats users have, plus three bad ones."""
    root = tmp_path / "collection"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg_bytes(_photo(64, 48)))
    _photo(40, 30, seed=1).save(root / "b.png")
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 0)  # transparent red: must come out white
    rgba[:, 20:] = (0, 0, 255, 255)  # opaque blue
    Image.fromarray(rgba, "RGBA").save(root / "c_rgba.png")
    Image.fromarray(np.full((32, 16), 77, np.uint8), "L").save(root / "d_grey.png")
    (root / "e_big.jpg").write_bytes(_jpeg_bytes(_photo(1200, 600, seed=2)))
    sixteen = np.full((10, 12), 257 * 200, np.uint16)
    Image.fromarray(sixteen).save(root / "f_16bit.png")  # I;16, level 200 of 255
    palette = Image.fromarray(np.repeat([[0] * 4 + [1] * 4], 8, axis=0).astype(np.uint8), "P")
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)  # index 0 green, index 1 transparent
    palette.info["transparency"] = 1
    palette.save(root / "g_palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    (root / "rotated.jpg").write_bytes(_jpeg_bytes(_photo(40, 20, seed=3), exif=exif))
    (root / "sub" / "h.jpg").write_bytes(_jpeg_bytes(_photo(30, 30, seed=4)))
    good = _jpeg_bytes(_photo(64, 64, seed=5))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    return root


GOOD = ["a.jpg", "b.png", "c_rgba.png", "d_grey.png", "e_big.jpg", "f_16bit.png"]
GOOD += ["g_palette.png", "rotated.jpg", "sub/h.jpg"]


def _write_csv(path: pathlib.Path, rows, header="image,caption", delimiter=","):
    lines = [header] + [delimiter.join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read_all(builder, decode_images: bool = True) -> dict[str, dict[str, dict]]:
    """{split: {image_id: example}} with text as str."""
    builder.download_and_prepare()
    out = {}
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    for split in builder.info.splits:
        source = builder.as_data_source(split, decoders=decoders)
        examples = [source[i] for i in range(len(source))]
        for ex in examples:
            ex["captions"] = [_text(c) for c in ex["captions"]]
            ex["image_id"] = _text(ex["image_id"])
        out[split] = {ex["image_id"]: ex for ex in examples}
    return out


def _build_csv(tmp_path, images, rows, **kwargs):
    csv_path = _write_csv(images / "captions.csv", rows)
    kwargs.setdefault("val_fraction", 0.0)
    return uc.ImageCaptionFile(csv_path, data_dir=tmp_path / "tfds", **kwargs)


def test_csv_groups_captions_and_converts_images(tmp_path, images):
    rows = [(name, f"caption of {name}") for name in GOOD]
    rows.insert(1, ("a.jpg", '"second, with a comma and ""quotes"""'))
    rows.append(("a.jpg", "third a"))
    data = _read_all(_build_csv(tmp_path, images, rows))
    assert set(data) == {"train"} and sorted(data["train"]) == sorted(GOOD)
    train = data["train"]
    assert train["a.jpg"]["captions"] == [
        "caption of a.jpg",
        'second, with a comma and "quotes"',
        "third a",
    ]
    assert train["sub/h.jpg"]["captions"] == ["caption of sub/h.jpg"]
    for name, ex in train.items():
        assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3, name
        assert ex["image"].shape[2] == 3, name
    shapes = {name: ex["image"].shape[:2] for name, ex in train.items()}
    assert shapes["a.jpg"] == (48, 64) and shapes["b.png"] == (30, 40)
    assert shapes["e_big.jpg"] == (256, 512)  # longer side to max_image_size=512
    assert shapes["rotated.jpg"] == (40, 20)  # EXIF orientation applied
    # The small upright RGB JPEG is stored byte for byte: pixels equal Pillow's decode.
    np.testing.assert_array_equal(train["a.jpg"]["image"], np.asarray(Image.open(images / "a.jpg")))
    rgba = train["c_rgba.png"]["image"].astype(int)
    np.testing.assert_allclose(rgba[10, 5], [255, 255, 255], atol=JPEG_ATOL)
    np.testing.assert_allclose(rgba[10, 35], [0, 0, 255], atol=JPEG_ATOL)
    np.testing.assert_allclose(train["d_grey.png"]["image"].astype(int), 77, atol=JPEG_ATOL)
    np.testing.assert_allclose(train["f_16bit.png"]["image"].astype(int), 200, atol=JPEG_ATOL)
    palette = train["g_palette.png"]["image"].astype(int)
    np.testing.assert_allclose(palette[4, 1], [0, 255, 0], atol=JPEG_ATOL)
    np.testing.assert_allclose(palette[4, 6], [255, 255, 255], atol=JPEG_ATOL)  # transparent


def test_keep_size_and_reencode_rule(tmp_path, images):
    rows = [("e_big.jpg", "big"), ("b.png", "png")]
    builder = _build_csv(tmp_path, images, rows, max_image_size=None)
    raw = _read_all(builder, decode_images=False)["train"]
    assert raw["e_big.jpg"]["image"] == (images / "e_big.jpg").read_bytes()
    # Every stored image is JPEG, whatever the source format.
    assert Image.open(io.BytesIO(raw["b.png"]["image"])).format == "JPEG"
    assert Image.open(io.BytesIO(raw["e_big.jpg"]["image"])).size == (1200, 600)


def test_tsv_split_column_and_exclusion(tmp_path, images):
    rows = [
        ("a.jpg", 'a "quoted" caption, comma', "train"),
        ("b.png", "b", "val"),
        ("b.png", " ", "val"),  # empty caption: dropped and counted
        ("g_palette.png", "", "train"),  # no caption left: image excluded
        ("d_grey.png", "d", "DEV"),
        ("sub/h.jpg", "h", "test"),
        ("e_big.jpg", "excluded", "none"),
        ("rotated.jpg", "also excluded", ""),
        ("a.jpg", "second a", "train"),
    ]
    tsv = _write_csv(images / "c.tsv", ["\t".join(r) for r in rows], "image\ttext\tsplit", "")
    builder = uc.ImageCaptionFile(tsv, data_dir=tmp_path / "tfds")
    data = _read_all(builder)
    assert {s: sorted(d) for s, d in data.items()} == {
        "train": ["a.jpg"],
        "validation": ["b.png", "d_grey.png"],
        "test": ["sub/h.jpg"],
    }
    # TSV is read without quote handling: quotes are part of the caption.
    assert data["train"]["a.jpg"]["captions"] == ['a "quoted" caption, comma', "second a"]
    assert builder.info.metadata["num_excluded_images"] == 3
    assert builder.info.metadata["num_empty_captions"] == 2
    assert data["validation"]["b.png"]["captions"] == ["b"]
    assert builder.info.metadata["num_skipped_images"] == 0


def test_jsonl_caption_and_captions_forms(tmp_path, images):
    lines = [
        {"image": "a.jpg", "caption": "one"},
        {"image": "b.png", "captions": ["two", "three"], "split": "validation"},
        {"image_path": "a.jpg", "text": "four"},
        {"image": "c_rgba.png", "captions": ["x"], "split": None},
    ]
    path = images / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    builder = uc.ImageCaptionFile(path, data_dir=tmp_path / "tfds", val_fraction=0.0)
    data = _read_all(builder)
    # A line without a split key is hashed (val_fraction 0: train); null excludes the image.
    assert data["train"]["a.jpg"]["captions"] == ["one", "four"]
    assert data["validation"]["b.png"]["captions"] == ["two", "three"]
    assert "c_rgba.png" not in data["train"] and builder.info.metadata["num_excluded_images"] == 1


def test_coco_per_split_files(tmp_path, images):
    def coco(names, captions):
        return {
            "images": [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": j, "image_id": 100 + i, "caption": c} for j, (i, c) in captions],
        }

    train = tmp_path / "captions_train.json"
    pairs = [(0, "a1"), (1, "b1"), (0, "a2")]
    train.write_text(json.dumps(coco(["a.jpg", "b.png", "d_grey.png"], enumerate(pairs))))
    val = tmp_path / "captions_val.json"
    val.write_text(json.dumps(coco(["h.jpg"], enumerate([(0, "h1")]))))
    builder = uc.CocoCaptions(
        {"train": train, "val": val},
        image_root={"train": images, "validation": images / "sub"},
        data_dir=tmp_path / "tfds",
    )
    data = _read_all(builder)
    assert sorted(data["train"]) == ["a.jpg", "b.png"]  # d_grey.png has no caption
    assert data["train"]["a.jpg"]["captions"] == ["a1", "a2"]
    assert data["validation"]["h.jpg"]["image"].shape == (30, 30, 3)
    assert builder.info.metadata["num_excluded_images"] == 1
    with pytest.raises(ValueError, match="image_root has no folder for split 'validation'"):
        uc.CocoCaptions({"train": train, "validation": val}, {"train": images})
    with pytest.raises(FileNotFoundError, match="nope.json"):
        uc.CocoCaptions(tmp_path / "nope.json", images)


def test_hash_split_is_stable_and_proportional():
    # Pinned values: assignment must not change across runs, machines or Python versions.
    names = [f"img_{i:05d}.jpg" for i in range(20000)]
    splits = [uc.hash_split(n, 0.1, 0.05) for n in names]
    assert hashlib.sha256(",".join(splits).encode()).hexdigest()[:12] == "eeee5ca556e8"
    counts = {s: splits.count(s) / len(names) for s in ("train", "validation", "test")}
    assert abs(counts["validation"] - 0.1) < 0.01 and abs(counts["test"] - 0.05) < 0.01
    assert [uc.hash_split(f"img_{i}.jpg", 0.5, 0.0) for i in range(8)] == 4 * ["train"] + 4 * [
        "validation"
    ]
    # Growing the validation share only moves images out of train, never between val/test.
    wider = [uc.hash_split(n, 0.2, 0.05) for n in names]
    assert all(w == s for s, w in zip(splits, wider, strict=True) if s != "train")


def test_build_is_deterministic_across_workers(tmp_path, images):
    rows = [(name, f"caption {name}") for name in GOOD]
    csv_path = _write_csv(images / "captions.csv", rows)
    one = uc.ImageCaptionFile(csv_path, data_dir=tmp_path / "d1", val_fraction=0.3, num_workers=1)
    many = uc.ImageCaptionFile(csv_path, data_dir=tmp_path / "d2", val_fraction=0.3, num_workers=4)
    a, b = _read_all(one, decode_images=False), _read_all(many, decode_images=False)
    assert {s: sorted(d) for s, d in a.items()} == {s: sorted(d) for s, d in b.items()}
    assert set(a) == {"train", "validation"}
    for split in a:
        for name in a[split]:
            assert a[split][name]["image"] == b[split][name]["image"], name


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("truncated.jpg", "truncated"),
        ("text.jpg", "not an image"),
        ("missing.jpg", "not found"),
    ],
)
def test_bad_image_error_names_image_and_line(tmp_path, images, bad, reason):
    rows = [("a.jpg", "ok"), (bad, "bad"), ("b.png", "ok")]
    with pytest.raises(uc.BadImageError) as info:
        _build_csv(tmp_path, images, rows).download_and_prepare()
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert bad in message and "captions.csv:3" in message and reason in message, message


def test_skip_mode_counts_and_logs(tmp_path, images, caplog):
    rows = [(name, "c") for name in GOOD] + [
        ("truncated.jpg", "c"),
        ("text.jpg", "c"),
        ("missing.jpg", "c"),
    ]
    builder = _build_csv(tmp_path, images, rows, on_bad_image="skip")
    with caplog.at_level(logging.WARNING):
        data = _read_all(builder)
    assert sorted(data["train"]) == sorted(GOOD)
    assert builder.info.metadata["num_skipped_images"] == 3
    skipped = builder.info.metadata["skipped_images"]
    assert [re.search(r"image \S+/(\S+):", s).group(1) for s in skipped] == [
        "truncated.jpg",
        "text.jpg",
        "missing.jpg",
    ]
    assert "skipped 3 bad images" in caplog.text
    # The counts survive a reload from disk.
    again = uc.ImageCaptionFile(
        images / "captions.csv", data_dir=tmp_path / "tfds", on_bad_image="skip", val_fraction=0.0
    )
    assert again.data_dir == builder.data_dir
    assert again.info.metadata["num_skipped_images"] == 3
    # A split with nothing but bad images fails loudly at build time, naming the split.
    only_bad = _write_csv(images / "bad.csv", [("text.jpg", "c")])
    with pytest.raises(uc.BadImageError, match="split train: all 1 images are bad"):
        uc.ImageCaptionFile(
            only_bad, data_dir=tmp_path / "tfds", on_bad_image="skip", val_fraction=0.0
        ).download_and_prepare()


def test_caption_file_errors(tmp_path, images):
    def build(name, content, **kwargs):
        path = images / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        uc.ImageCaptionFile(path, data_dir=tmp_path / "tfds", **kwargs).download_and_prepare()

    missing = images / "nope.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        uc.ImageCaptionFile(missing)
    with pytest.raises(ValueError, match="empty"):
        build("empty.csv", "")
    with pytest.raises(ValueError, match="no images"):
        build("header.csv", "image,caption\n")
    with pytest.raises(ValueError, match=r"bad_header\.csv:1: header"):
        build("bad_header.csv", "picture,words\na.jpg,x\n")
    with pytest.raises(ValueError, match=r"latin1\.csv:3: not UTF-8"):
        build("latin1.csv", b"image,caption\na.jpg,ok\nb.png,caf\xe9\n")
    with pytest.raises(ValueError, match=r"split\.csv:2: unknown split 'training'"):
        build("split.csv", "image,caption,split\na.jpg,x,training\n")
    with pytest.raises(ValueError, match=r"fields\.csv:2: 3 fields"):
        build("fields.csv", "image,caption\na.jpg,a, b\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        build("broken.jsonl", '{"image": "a.jpg", "caption": "x"}\n{"image": \n')
    with pytest.raises(ValueError, match=r"conflict\.csv:3: image a\.jpg is in split test"):
        build("conflict.csv", "image,caption,split\na.jpg,x,train\na.jpg,y,test\n")
    with pytest.raises(ValueError, match="expected a .csv, .tsv or .jsonl"):
        build("x.txt", "image,caption\n")
    with pytest.raises(ValueError, match="on_bad_image"):
        build("ok.csv", "image,caption\na.jpg,x\n", on_bad_image="ignore")
    with pytest.raises(ValueError, match="split column 'fold' not in header"):
        build("fold.csv", "image,caption\na.jpg,x\n", split_key="fold")
    build("custom.csv", "photo,desc\na.jpg,x\n", image_key="photo", caption_key="desc")
    # A UTF-8 BOM (Excel's CSV export) is not part of the first column's name.
    build("bom.csv", "\ufeffimage,caption\na.jpg,x\n", val_fraction=0.0)


def test_unknown_split_read_names_it(tmp_path, images):
    builder = _build_csv(tmp_path, images, [("a.jpg", "x")])
    builder.download_and_prepare()
    with pytest.raises(ValueError, match="'test'"):
        builder.as_data_source("test")


def test_data_dir_tracks_source_and_options(tmp_path, images):
    csv_path = _write_csv(images / "captions.csv", [("a.jpg", "x")])
    first = uc.ImageCaptionFile(csv_path, data_dir=tmp_path)
    assert re.fullmatch(r"captions_[0-9a-f]{10}", first.builder_config.name)
    assert uc.ImageCaptionFile(csv_path, data_dir=tmp_path).data_dir == first.data_dir
    other_option = uc.ImageCaptionFile(csv_path, data_dir=tmp_path, max_image_size=256)
    assert other_option.data_dir != first.data_dir
    _write_csv(csv_path, [("a.jpg", "x"), ("b.png", "y")])  # edited: size and mtime change
    assert uc.ImageCaptionFile(csv_path, data_dir=tmp_path).data_dir != first.data_dir
    # Builders pickle (tfds sends them to workers) and keep their folder, even though the
    # source changed since other_option was made.
    clone = pickle.loads(pickle.dumps(other_option))
    assert clone.data_dir == other_option.data_dir and clone._max_image_size == 256


def test_flickr8k_subset(shared_data, tmp_path):
    root = shared_data / "flickr8k_1000"
    rows = (root / "captions.csv").read_text().splitlines()
    subset = tmp_path / "captions.csv"
    subset.write_text("\n".join(rows[: 1 + 5 * 50]) + "\n")  # 50 images, 5 captions each
    # Paths in captions.csv are bare file names: found through the images/ fallback.
    builder = uc.ImageCaptionFile(subset, data_dir=tmp_path / "tfds", image_root=root)
    data = _read_all(builder)
    assert sum(len(d) for d in data.values()) == 50 and set(data) <= {"train", "validation"}
    want: dict[str, list[str]] = {}
    for line in rows[1 : 1 + 5 * 50]:
        name, caption = line.split(",", 1)
        want.setdefault(name, []).append(caption.strip('"').replace('""', '"'))
    for split in data.values():
        for name, ex in split.items():
            assert ex["captions"] == want[name]
            assert ex["image"].shape[2] == 3 and max(ex["image"].shape[:2]) <= 256

    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    chosen = pairs[:30] + [p for p in pairs[30:] if p["official_split"] is None]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(p) for p in chosen) + "\n")
    builder = uc.ImageCaptionFile(jsonl, data_dir=tmp_path / "tfds", image_root=root)
    data = _read_all(builder)
    names = {"train": "train", "dev": "validation", "test": "test"}
    expect: dict[str, set[str]] = {}
    for p in chosen:
        if p["official_split"] is not None:
            expect.setdefault(names[p["official_split"]], set()).add(p["image"])
    assert {s: set(d) for s, d in data.items()} == expect
    assert builder.info.metadata["num_excluded_images"] == 9
