"""Tests for `python -m jaxmm.data.export`: the built-in dataset written as JPEGs plus
`captions.csv`, read back through the user-caption builder exactly as `clip_captions.py` reads
a user's files."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxmm.data import export, shapes, user_captions

NUM = 12
# q95 4:4:4 JPEG of noisy 64 px scenes, in 8-bit levels: measured mean ~2.5, max 14..18;
# a neighbouring example differs by ~40 on average.
JPEG_MEAN_ATOL, JPEG_MAX_ATOL = 3.0, 24


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "my_captions"
    export.main(["--dataset=shapes", "--split=train", f"--num={NUM}", f"--out={out}"])
    return out


def test_layout_and_contents(exported):
    with (exported / "captions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "caption"]
    config = shapes.DEFAULT_CONFIG
    expected_rows = []
    for index in range(NUM):
        example = shapes.generate_example(
            shapes.dataclasses.replace(config, image_size=64), "train", index
        )
        name = f"images/train_{index:06d}.jpg"
        expected_rows += [[name, c] for c in example["captions"]]
        with Image.open(exported / name) as image:
            assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "RGB"
            pixels = np.asarray(image).astype(int)
        assert np.abs(pixels - example["image"]).mean() < JPEG_MEAN_ATOL
        assert np.abs(pixels - example["image"]).max() <= JPEG_MAX_ATOL
    assert rows[1:] == expected_rows
    assert len(rows) - 1 == NUM * config.captions_per_image


def test_user_caption_builder_reads_the_export(exported, tmp_path):
    builder = user_captions.ImageCaptionFile(
        exported / "captions.csv", data_dir=tmp_path / "tfds", val_fraction=0.25
    )
    builder.download_and_prepare()
    assert set(builder.info.splits) == {"train", "validation"}
    seen = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split)
        for i in range(len(source)):
            example = source[i]
            image_id = _text(example["image_id"])
            assert user_captions.hash_split(image_id, 0.25, 0.0) == split
            seen[image_id] = [_text(c) for c in example["captions"]]
            with Image.open(exported / image_id) as image:
                # Small RGB JPEGs are stored byte for byte: exactly the exported pixels.
                np.testing.assert_array_equal(example["image"], np.asarray(image))
    assert len(seen) == NUM
    index = 5
    expected = shapes.generate_example(
        shapes.dataclasses.replace(shapes.DEFAULT_CONFIG, image_size=64), "train", index
    )["captions"]
    assert seen[f"images/train_{index:06d}.jpg"] == expected


def test_refuses_to_overwrite_and_bad_options(exported, capsys):
    for argv, message in [
        ([f"--out={exported}"], "captions.csv already exists; choose another folder or pass"),
        (["--num=0", f"--out={exported}_x"], "num must be at least 1, got 0"),
        (["--split=dev", f"--out={exported}_x"], "invalid choice: 'dev'"),
        ([f"--out={exported / 'captions.csv'}"], "exists and is not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(error_lines) == 1 and message in error_lines[0], (argv, error_lines)


def test_command_line_help_and_run(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "jaxmm.data.export", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--out" in run.stdout and "--num" in run.stdout
    out = tmp_path / "valid"
    run = subprocess.run(
        [sys.executable, "-m", "jaxmm.data.export", "--split=validation", "--num=3"]
        + ["--image_size=32", f"--out={out}", "--dataset=shapes_multi"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"validation_{i:06d}.jpg" for i in range(3)
    ]
    with Image.open(out / "images" / "validation_000000.jpg") as image:
        assert image.size == (32, 32)
