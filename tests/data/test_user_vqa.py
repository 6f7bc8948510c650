"""Tests for jaxmm.data.user_vqa: a JSONL of questions and answers -> a tfds array_record dataset.

Every test builds into `tmp_path` from small images written by Pillow, reads back through
`as_data_source` (the path the training pipeline uses) and checks what came out.
"""

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
from jaxmm.data import user_vqa
from jaxmm.evaluate import vqa


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def folder(tmp_path) -> pathlib.Path:
    """Three JPEGs (one in a sub-folder), a PNG, a truncated JPEG and a text file named .jpg."""
    root = tmp_path / "vqa"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg(32, 24, 0))
    (root / "b.jpg").write_bytes(_jpeg(20, 20, 1))
    (root / "sub" / "c.jpg").write_bytes(_jpeg(16, 40, 2))
    Image.fromarray(np.full((8, 12), 90, np.uint8), "L").save(root / "d.png")
    good = _jpeg(64, 64, 3)
    (root / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_text("not an image\n")
    return root


def _write(path: pathlib.Path, lines) -> pathlib.Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _read_all(builder, decode_images=True) -> dict[str, dict[str, dict]]:
    """{split: {image_id: example}} with text as str."""
    builder.download_and_prepare()
    out = {}
    for split in builder.info.splits:
        kwargs = {} if decode_images else {"decoders": {"image": tfds.decode.SkipDecoding()}}
        source = builder.as_data_source(split, **kwargs)
        examples = {}
        for i in range(len(source)):
            ex = dict(source[i])
            for key in ("questions", "answers", "question_types"):
                ex[key] = [_text(t) for t in ex[key]]
            ex["heldout"] = [bool(h) for h in ex["heldout"]]
            examples[_text(ex["image_id"])] = ex
        out[split] = examples
    return out


LINES = [
    {"image": "a.jpg", "question": "What colour?", "answers": ["red", "Red", "dark red"]},
    {"image": "b.jpg", "question": "How many?", "answers": ["2"], "question_type": "how many"},
    {"image": "a.jpg", "question": "Is it a cat?", "answers": ["yes"], "question_type": "is it"},
    {"image": "sub/c.jpg", "question": "Where?", "answers": ["outside", "garden"]},
    {"image": "d.png", "question": "Any text?", "answers": ["no"], "question_type": None},
]


def test_groups_questions_per_image_in_the_vqa_schema(tmp_path, folder):
    path = _write(folder / "questions.jsonl", LINES)
    builder = user_vqa.VqaFile(path, data_dir=tmp_path / "tfds", val_fraction=0.0)
    data = _read_all(builder)
    assert set(data) == {"train"} and sorted(data["train"]) == [
        "a.jpg",
        "b.jpg",
        "d.png",
        "sub/c.jpg",
    ]
    a = data["train"]["a.jpg"]
    assert a["questions"] == ["What colour?", "Is it a cat?"]
    assert a["answers"] == ["red\nRed\ndark red", "yes"]
    assert a["question_types"] == ["", "is it"]
    assert a["heldout"] == [False, False]
    assert data["train"]["b.jpg"]["question_types"] == ["how many"]
    assert data["train"]["d.png"]["question_types"] == [""]
    assert vqa.split_answers(a["answers"][0].encode()) == ["red", "Red", "dark red"]
    # The small RGB JPEG is kept byte for byte: pixels equal Pillow's decode of the file.
    np.testing.assert_array_equal(a["image"], np.asarray(Image.open(folder / "a.jpg")))
    assert data["train"]["sub/c.jpg"]["image"].shape == (40, 16, 3)
    grey = data["train"]["d.png"]["image"]
    assert grey.shape == (8, 12, 3) and grey.dtype == np.uint8
    np.testing.assert_allclose(grey.astype(int), 90, atol=8)  # q95 JPEG of a flat level
    assert builder.info.metadata["num_skipped_images"] == 0
    # The stored answers score as the metric expects: "red" is given by 2 of 3 humans.
    assert vqa.soft_accuracy("red", a["answers"][0].encode()) == pytest.approx((2 / 3 + 2 / 3) / 3)
    # Stored non-JPEG images come back as JPEG.
    raw = _read_all(builder, decode_images=False)["train"]
    assert Image.open(io.BytesIO(raw["d.png"]["image"])).format == "JPEG"
    assert raw["a.jpg"]["image"] == (folder / "a.jpg").read_bytes()


def test_split_key_exclusion_and_hash_splits(tmp_path, folder):
    lines = [
        dict(LINES[0], split="train"),
        dict(LINES[1], split="val"),
        dict(LINES[2], split="TRAIN"),
        dict(LINES[3], split="test"),
        dict(LINES[4], split=None),  # excluded
    ]
    builder = user_vqa.VqaFile(_write(folder / "s.jsonl", lines), data_dir=tmp_path / "tfds")
    data = _read_all(builder)
    assert {s: sorted(d) for s, d in data.items()} == {
        "train": ["a.jpg"],
        "validation": ["b.jpg"],
        "test": ["sub/c.jpg"],
    }
    assert builder.info.metadata["num_excluded_images"] == 1
    # Without split keys images are hashed by path, exactly as caption files are.
    hashed = user_vqa.VqaFile(
        _write(folder / "h.jsonl", LINES), data_dir=tmp_path / "tfds", val_fraction=0.5
    )
    data = _read_all(hashed)
    want: dict[str, list[str]] = {}
    for name in ("a.jpg", "b.jpg", "d.png", "sub/c.jpg"):
        want.setdefault(uc.hash_split(name, 0.5, 0.0), []).append(name)
    assert {s: sorted(d) for s, d in data.items()} == want
    assert set(want) == {"train", "validation"}  # these four names land in both splits


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("corrupt.jpg", "truncated"), ("text.jpg", "not an image"), ("missing.jpg", "not found")],
)
def test_bad_image_error_names_image_and_line(tmp_path, folder, bad, reason):
    lines = [LINES[0], {"image": bad, "question": "q", "answers": ["a"]}, LINES[1]]
    builder = user_vqa.VqaFile(_write(folder / "q.jsonl", lines), data_dir=tmp_path / "tfds")
    with pytest.raises(uc.BadImageError) as info:
        builder.download_and_prepare()
    message = str(info.value)
    assert bad in message and "q.jsonl:2" in message and reason in message, message


def test_skip_mode_counts_and_warns(tmp_path, folder, caplog):
    bad = [
        {"image": name, "question": "q", "answers": ["a"]} for name in ("corrupt.jpg", "text.jpg")
    ]
    bad.append({"image": "missing.jpg", "question": "q", "answers": ["a"]})
    path = _write(folder / "q.jsonl", LINES + bad)
    builder = user_vqa.VqaFile(
        path, data_dir=tmp_path / "tfds", on_bad_image="skip", val_fraction=0.0
    )
    with caplog.at_level(logging.WARNING):
        data = _read_all(builder)
    assert sorted(data["train"]) == ["a.jpg", "b.jpg", "d.png", "sub/c.jpg"]
    assert builder.info.metadata["num_skipped_images"] == 3
    skipped = builder.info.metadata["skipped_images"]
    assert [re.search(r"image \S+/(\S+):", s).group(1) for s in skipped] == [
        "corrupt.jpg",
        "text.jpg",
        "missing.jpg",
    ]
    assert "skipped 3 bad images" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"bad\.jsonl: empty; expected one JSON object per line"),
        ("\n  \n", r"bad\.jsonl: empty"),
        (
            '{"image": "a.jpg", "question": "q", "answers": ["x"]}\n{"image": ',
            r":2: not valid JSON",
        ),
        ("[1, 2]", r":1: expected a JSON object, got list"),
        ('{"image": "a.jpg", "question": "q"}', r":1: missing 'answers'"),
        ('{"answers": ["x"]}', r":1: missing 'image', 'question'"),
        (
            '{"image": "a.jpg", "question": "q", "answers": []}',
            r":1: 'answers' must be a non-empty",
        ),
        (
            '{"image": "a.jpg", "question": "q", "answers": "yes"}',
            r":1: 'answers' must be a non-empty",
        ),
        ('{"image": "a.jpg", "question": "q", "answers": ["x", 3]}', r":1: answers\[1\] must be"),
        ('{"image": "a.jpg", "question": "q", "answers": ["x", " "]}', r":1: answers\[1\] must be"),
        (
            '{"image": "a.jpg", "question": "q", "answers": ["x\\ny"]}',
            r":1: answers\[0\] .* line break",
        ),
        ('{"image": "a.jpg", "question": 7, "answers": ["x"]}', r":1: 'question' must be"),
        ('{"image": "", "question": "q", "answers": ["x"]}', r":1: 'image' must be"),
        (
            '{"image": "a.jpg", "question": "q", "answers": ["x"], "question_type": 1}',
            r"'question_type'",
        ),
        (
            '{"image": "a.jpg", "question": "q", "answers": ["x"], "split": "training"}',
            r"unknown split",
        ),
        ('{"image": "a.jpg", "question": "q", "answers": ["\\ud800"]}', r":1: .*lone surrogate"),
        (
            '{"image": "a.jpg", "question": "q", "answers": ["x"], "split": "train"}\n'
            '{"image": "a.jpg", "question": "r", "answers": ["y"], "split": "test"}',
            r":2: image a\.jpg is in split test, but in train at .*bad\.jsonl:1",
        ),
        ('{"image": "a.jpg", "question": "q", "answers": ["x"], "split": null}', r"no images"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path, folder, content, message):
    path = folder / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        user_vqa.VqaFile(path, data_dir=tmp_path / "tfds").download_and_prepare()


def test_constructor_errors(tmp_path, folder):
    missing = folder / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        user_vqa.VqaFile(missing)
    csv = folder / "q.csv"
    csv.write_text("image,question\n")
    with pytest.raises(ValueError, match=r"q\.csv: expected a \.jsonl file"):
        user_vqa.VqaFile(csv)
    path = _write(folder / "q.jsonl", LINES)
    with pytest.raises(ValueError, match="on_bad_image"):
        user_vqa.VqaFile(path, on_bad_image="ignore")
    with pytest.raises(ValueError, match="bad split fractions"):
        user_vqa.VqaFile(path, val_fraction=0.6, test_fraction=0.5)


def test_data_dir_tracks_file_and_options(tmp_path, folder):
    path = _write(folder / "My Questions.jsonl", LINES)
    first = user_vqa.VqaFile(path, data_dir=tmp_path)
    assert re.fullmatch(r"my_questions_[0-9a-f]{10}", first.builder_config.name)
    assert pathlib.Path(first.data_dir).parts[-3] == "vqa_file"
    assert user_vqa.VqaFile(path, data_dir=tmp_path).data_dir == first.data_dir
    other = user_vqa.VqaFile(path, data_dir=tmp_path, val_fraction=0.2)
    assert other.data_dir != first.data_dir
    _write(path, LINES[:2])  # edited: size and mtime change
    assert user_vqa.VqaFile(path, data_dir=tmp_path).data_dir != first.data_dir
    clone = pickle.loads(pickle.dumps(other))
    assert clone.data_dir == other.data_dir and clone._fractions == (0.2, 0.0)


def test_flickr8k_photos(shared_data, tmp_path):
    photos = sorted((shared_data / "flickr8k_1000" / "images").glob("*.jpg"))[:3]
    if len(photos) < 3:
        pytest.skip("flickr8k_1000 holds fewer than 3 photos")
    lines = [
        {"image": str(p), "question": f"What is in photo {i}?", "answers": ["dog"] * 3}
        for i, p in enumerate(photos)
    ]
    builder = user_vqa.VqaFile(
        _write(tmp_path / "q.jsonl", lines),
        data_dir=tmp_path / "tfds",
        val_fraction=0.0,
        max_image_size=128,
    )
    data = _read_all(builder)["train"]
    assert sorted(data) == sorted(map(str, photos))
    for photo in photos:
        image = data[str(photo)]["image"]
        with Image.open(photo) as original:
            scale = 128 / max(original.size)
            want = (round(original.height * scale), round(original.width * scale))
        assert image.shape[2] == 3 and max(image.shape[:2]) == 128
        assert abs(image.shape[0] - want[0]) <= 1 and abs(image.shape[1] - want[1]) <= 1
