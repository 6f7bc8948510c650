"""The image-folder builder: both layouts, class order, bad images, ignored files."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxmm.data.image_folder import ImageFolder
from jaxmm.data.user_captions import BadImageError


def write_images(folder: pathlib.Path, count: int, colour: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.zeros((20, 24, 3), np.uint8)
        pixels[..., colour] = 40 + 15 * i
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def prepared(root: pathlib.Path, tmp_path: pathlib.Path, **kwargs) -> ImageFolder:
    builder = ImageFolder(root, data_dir=tmp_path / "tfds", **kwargs)
    builder.download_and_prepare()
    return builder


def test_class_folders_are_hashed_into_splits_with_sorted_labels(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "dogs", 12, colour=0)
    write_images(root / "cats", 12, colour=1)
    (root / "cats" / "notes.txt").write_text("not an image")
    write_images(root / ".thumbnails", 2, colour=2)  # hidden: not a class
    builder = prepared(root, tmp_path, val_fraction=0.25)
    assert builder.info.features["label"].names == ["cats", "dogs"]
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["validation"].num_examples == 24
    assert builder.info.metadata["num_ignored_files"] == 1
    for split in ("train", "validation"):
        source = builder.as_data_source(split)
        for i in range(len(source)):
            example = source[i]
            image_id = example["image_id"].decode()
            label = builder.info.features["label"].names[example["label"]]
            assert image_id.startswith(label + "/")
            # The image really is the file's: dogs are red, cats green.
            assert example["image"][..., 0 if label == "dogs" else 1].mean() > 30


def test_split_folders_keep_their_split_and_share_class_indices(tmp_path):
    root = tmp_path / "flowers"
    write_images(root / "train" / "daisy", 3, colour=0)
    write_images(root / "train" / "rose", 3, colour=1)
    write_images(root / "val" / "tulip", 2, colour=2)  # a class only the val split has
    builder = prepared(root, tmp_path)
    assert builder.info.features["label"].names == ["daisy", "rose", "tulip"]
    assert builder.info.splits["train"].num_examples == 6
    validation = builder.as_data_source("validation")
    assert [int(validation[i]["label"]) for i in range(len(validation))] == [2, 2]


def test_a_corrupt_image_is_named_or_skipped(tmp_path):
    root = tmp_path / "broken"
    write_images(root / "a", 3, colour=0)
    write_images(root / "b", 3, colour=1)
    (root / "b" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(BadImageError, match="bad.jpg"):
        prepared(root, tmp_path, val_fraction=0.0)
    builder = prepared(root, tmp_path / "skip", val_fraction=0.0, on_bad_image="skip")
    assert builder.info.splits["train"].num_examples == 6
    assert builder.info.metadata["num_skipped_images"] == 1


def test_missing_or_empty_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class folders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "textonly" / "a").mkdir(parents=True)
    (tmp_path / "textonly" / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path / "textonly")
