"""Bad user data: every case either works (converted, truncated) or fails naming the file.

Each test builds a tiny collection in `tmp_path` and goes through the user-data builders
(`ImageCaptionFile`, `ImageFolder`) and the input pipeline as training does.
"""

import io
import json
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from jaxmm.data import pipeline
from jaxmm.data.image_folder import ImageFolder
from jaxmm.data.tokenizer import train_bpe_tokenizer
from jaxmm.data.user_captions import BadImageError, CocoCaptions, ImageCaptionFile

# Stored images are JPEG q95; on flat colours the error stays within a few levels (reached:
# at most 1, on rgba, cmyk and rgb16).
JPEG_ATOL = 3


def _png_rgb16(height: int, width: int, rgb: tuple[int, int, int]) -> bytes:
    """A 16-bit RGB PNG written by hand from the PNG spec (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + np.tile(np.array(rgb, ">u2"), width).tobytes()  # filter 0, then pixels
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # depth 16, colour type 2
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _write_odd_images(folder: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    """Images in every channel layout users have, each a flat colour; returns the expected RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (12, 10), 77).save(folder / "grey.png")
    Image.new("LA", (12, 10), (90, 255)).save(folder / "grey_alpha.png")
    # Half-transparent red over the white background: 255 * (1 - 128 / 255) = 127 on G and B.
    Image.new("RGBA", (12, 10), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("RGB", (12, 10), (200, 30, 40)).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "rgb16.png").write_bytes(_png_rgb16(10, 12, (257 * 10, 257 * 120, 257 * 250)))
    Image.fromarray(np.full((10, 12), 257 * 200, np.uint16)).save(folder / "grey16.png")
    Image.new("1", (12, 10), 1).save(folder / "bilevel.png")
    return {
        "grey.png": (77, 77, 77),
        "grey_alpha.png": (90, 90, 90),
        "rgba.png": (255, 127, 127),
        "cmyk.jpg": (200, 30, 40),
        "rgb16.png": (10, 120, 250),
        "grey16.png": (200, 200, 200),
        "bilevel.png": (255, 255, 255),
    }


def _by_id(builder, split: str = "train") -> dict[str, dict]:
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    return {pipeline.as_text(e["image_id"]): e for e in examples}


def _assert_flat_rgb(image: np.ndarray, rgb: tuple[int, int, int], name: str) -> None:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    error = np.abs(image.astype(int) - np.array(rgb)).max()
    assert error <= JPEG_ATOL, (name, error, image[0, 0])


def test_caption_file_images_of_any_channel_layout_become_rgb(tmp_path):
    expected = _write_odd_images(tmp_path / "photos")
    csv = tmp_path / "photos" / "captions.csv"
    csv.write_text("image,caption\n" + "".join(f"{n},a picture\n" for n in expected))
    builder = ImageCaptionFile(csv, data_dir=tmp_path / "tfds", val_fraction=0.0)
    builder.download_and_prepare()
    examples = _by_id(builder)
    assert sorted(examples) == sorted(expected)
    for name, rgb in expected.items():
        _assert_flat_rgb(examples[name]["image"], rgb, name)


def test_image_folder_images_of_any_channel_layout_become_rgb(tmp_path):
    expected = _write_odd_images(tmp_path / "root" / "odd")
    (tmp_path / "root" / "plain").mkdir()  # a second class
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "root" / "plain" / "x.png")
    builder = ImageFolder(tmp_path / "root", data_dir=tmp_path / "tfds", val_fraction=0.0)
    builder.download_and_prepare()
    examples = _by_id(builder)
    for name, rgb in expected.items():
        _assert_flat_rgb(examples[f"odd/{name}"]["image"], rgb, name)


def _truncated_png() -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()[:2000]


BAD_IMAGES = {
    "truncated.png": _truncated_png,
    "empty.jpg": lambda: b"",
    "notes.jpg": lambda: b"shopping list: eggs\n",
}


@pytest.mark.parametrize("bad", [*BAD_IMAGES, "missing.jpg", "folder.jpg"])
def test_bad_image_in_a_caption_file_is_named_with_its_line(tmp_path, bad):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    if bad in BAD_IMAGES:
        (tmp_path / bad).write_bytes(BAD_IMAGES[bad]())
    elif bad == "folder.jpg":
        (tmp_path / bad).mkdir()
    csv = tmp_path / "captions.csv"
    csv.write_text(f"image,caption\nok.png,fine\n{bad},broken\n")
    builder = ImageCaptionFile(csv, data_dir=tmp_path / "tfds", val_fraction=0.0)
    with pytest.raises(BadImageError, match=rf"captions\.csv:3: image \S*{bad}"):
        builder.download_and_prepare()


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
def test_bad_image_in_an_image_folder_is_named(tmp_path, bad):
    (tmp_path / "root" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "root" / "cats" / "ok.png")
    (tmp_path / "root" / "cats" / bad).write_bytes(BAD_IMAGES[bad]())
    builder = ImageFolder(tmp_path / "root", data_dir=tmp_path / "tfds", val_fraction=0.0)
    with pytest.raises(BadImageError, match=rf"image \S*cats/{bad}"):
        builder.download_and_prepare()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("latin1.csv", b"image,caption\na.png,ok\nb.png,caf\xe9\n"),
        ("latin1.tsv", b"image\tcaption\na.png\tok\nb.png\tcaf\xe9\n"),
        (
            "latin1.jsonl",
            b'{"image": "a.png", "caption": "ok"}\n\n{"image": "b", "caption": "\xe9"}',
        ),
    ],
)
def test_caption_file_not_in_utf8_is_named_with_its_line(tmp_path, name, content):
    # Policy: no guessing of encodings; the error says where the first bad byte is.
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name}:3: not UTF-8 .* re-save the file as UTF-8"):
        ImageCaptionFile(path, data_dir=tmp_path / "tfds").download_and_prepare()


@pytest.mark.parametrize("field", ["image", "caption"])
def test_jsonl_lone_surrogate_escape_is_named_with_its_line(tmp_path, field):
    # Valid JSON, but "\ud800" is no character: UTF-8 cannot store it (found by test_fuzz).
    line = {"image": "a.png", "caption": "fine", field: "caf\ud800"}
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "ok"}\n' + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl:2: 'caf\\ud800' holds '\\ud800', a lone"):
        ImageCaptionFile(path, data_dir=tmp_path / "tfds").download_and_prepare()


def test_coco_file_not_in_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "captions_train.json"
    path.write_bytes(b'{"images": [],\n "annotations": [\n {"caption": "\xff"}]}')
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"captions_train\.json:3: not UTF-8"):
        CocoCaptions(path, tmp_path / "images", data_dir=tmp_path / "tfds").download_and_prepare()


def test_file_name_that_is_not_utf8_is_read_and_named_readably(tmp_path):
    # A Latin-1 file name from an old archive: Python holds its 0xE9 byte as a surrogate.
    cats = tmp_path / "root" / "cats"
    cats.mkdir(parents=True)
    odd = os.fsdecode(os.fsencode(cats) + b"/caf\xe9.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(odd)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(cats / "plain.png")
    builder = ImageFolder(tmp_path / "root", data_dir=tmp_path / "tfds", val_fraction=0.0)
    builder.download_and_prepare()
    examples = _by_id(builder)
    assert sorted(examples) == ["cats/caf\\xe9.png", "cats/plain.png"]
    _assert_flat_rgb(examples["cats/caf\\xe9.png"]["image"], (0, 200, 0), "caf\\xe9.png")


def test_empty_split_is_named_with_the_data_directory(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    csv = tmp_path / "captions.csv"
    csv.write_text("image,caption,split\na.png,only training,train\n")
    builder = ImageCaptionFile(csv, data_dir=tmp_path / "tfds")
    builder.download_and_prepare()
    with pytest.raises(ValueError) as info:
        builder.as_data_source("validation")
    message = str(info.value)
    assert "split 'validation'" in message and str(csv) in message, message
    assert str(builder.data_dir) in message and "['train']" in message, message
    assert len(builder.as_data_source("train[:1]")) == 1  # split slices still read

    # The same for a folder layout whose val/ folder holds no class with images.
    (tmp_path / "root" / "train" / "cats").mkdir(parents=True)
    (tmp_path / "root" / "val" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "root" / "train" / "cats" / "a.png")
    folder = ImageFolder(tmp_path / "root", data_dir=tmp_path / "tfds")
    folder.download_and_prepare()
    with pytest.raises(ValueError, match=r"split 'validation' of \S*root is empty"):
        folder.as_data_source("validation")


def test_caption_longer_than_the_context_is_cut_keeping_eot_last(tmp_path):
    words = [f"word{i % 50}" for i in range(300)]
    long_caption = " ".join(words)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "caption": long_caption}))
    builder = ImageCaptionFile(tmp_path / "c.jsonl", data_dir=tmp_path / "tfds", val_fraction=0)
    builder.download_and_prepare()
    tokenizer = train_bpe_tokenizer(["word1 word2 word3"], vocab_size=600)
    config = ConfigDict(
        dict(
            image_size=8,
            context_length=16,
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            flip=False,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
        )
    )
    example = pipeline.image_text_example(
        builder.as_data_source("train")[0],
        np.random.default_rng(0),
        tokenizer=tokenizer,
        config=config,
    )
    tokens = example["tokens"]
    ids = tokenizer.encode(long_caption)
    assert len(ids) > 300  # far longer than the context
    # open_clip's rule: SOT, the first context - 2 ids, EOT; no padding left.
    assert tokens.tolist() == [tokenizer.sot_id, *ids[:14], tokenizer.eot_id]
    assert example["image"].shape == (8, 8, 3)
