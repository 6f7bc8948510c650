"""COCO captions as users have them on disk (`annotations/captions_{train,val}2017.json`,
`train2017/`, `val2017/`), from the command line exactly as the README writes it, and the
other ways of naming COCO's files (one JSON, a mapping written in a config file)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from configs import clip_captions
from jaxmm.data import datasets, user_captions

REPO = pathlib.Path(__file__).resolve().parents[2]
COLOURS = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 210)}


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _write_split(root: pathlib.Path, name: str, num: int, first_id: int) -> None:
    """`root/name2017/*.jpg` (real JPEGs, COCO's file names) and its caption JSON."""
    folder = root / f"{name}2017"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(first_id)
    images, annotations = [], []
    for i in range(num):
        image_id = first_id + i
        colour = list(COLOURS)[i % 3]
        pixels = np.full((48, 64, 3), COLOURS[colour], np.uint8)
        pixels[8:40, 8:24] = 255 - pixels[8:40, 8:24]
        pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(folder / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": 48, "width": 64})
        for j, caption in enumerate([f"a {colour} picture", f"something {colour} with a bar"]):
            annotations.append({"id": 10 * image_id + j, "image_id": image_id, "caption": caption})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"captions_{name}2017.json").write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations})
    )


@pytest.fixture
def coco_root(tmp_path) -> pathlib.Path:
    root = tmp_path / "coco"
    _write_split(root, "train", 16, first_id=1000)
    _write_split(root, "val", 8, first_id=5000)
    return root


def _splits(builder) -> dict[str, dict[str, list[str]]]:
    builder.download_and_prepare()
    out = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split)
        out[split] = {
            _text(source[i]["image_id"]): [_text(c) for c in source[i]["captions"]]
            for i in range(len(source))
        }
    return out


def test_readme_command_trains_on_a_coco_folder(coco_root, tmp_path):
    """The README's command with `:smoke`, a fresh data folder and two steps."""
    tfds_dir, workdir = tmp_path / "tfds", tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "train.py", "--config=configs/clip_captions.py:smoke"]
        + [
            "--config.data.name=coco_caption_files",
            f"--config.data.builder_kwargs.path={coco_root}",
        ]
        + [f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}", "--config.total_steps=2"]
        + ["--config.progress_bar=False"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert 0 <= final["retrieval/i2t_r1"] <= 1
    # The run read COCO's own splits: val2017 is the validation split (nothing hashed).
    config = clip_captions.get_config("smoke").data
    config.name, config.data_dir = "coco_caption_files", str(tfds_dir)
    config.builder_kwargs.path = str(coco_root)
    builder = datasets.get_builder(config)
    assert (tfds_dir / builder.name / builder.builder_config.name).is_dir()  # the run's copy
    data = _splits(builder)
    assert sorted(data) == ["train", "validation"]
    assert sorted(data["train"]) == [f"{1000 + i:012d}.jpg" for i in range(16)]
    assert sorted(data["validation"]) == [f"{5000 + i:012d}.jpg" for i in range(8)]
    assert data["validation"][f"{5001:012d}.jpg"] == [
        "a green picture",
        "something green with a bar",
    ]


def test_missing_parts_of_a_coco_folder_are_named(coco_root, tmp_path):
    def build(path, **kwargs):
        config = clip_captions.get_config("smoke").data
        config.name = "coco_caption_files"
        config.data_dir = str(tmp_path / "tfds")
        config.builder_kwargs.path = str(path)
        config.builder_kwargs.update(kwargs)
        return datasets.get_builder(config)

    (coco_root / "val2017").rename(coco_root / "val_elsewhere")
    with pytest.raises(FileNotFoundError, match=r"image folder for split 'validation' not found: "):
        build(coco_root)
    (coco_root / "annotations" / "captions_train2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations/captions_train2017.json not found"):
        build(coco_root)
    with pytest.raises(ValueError, match="image_root='/x' given with the COCO folder"):
        build(coco_root, image_root="/x")
    with pytest.raises(ValueError, match="coco_caption_files needs data.builder_kwargs.image_root"):
        build(tmp_path / "no_such.json")
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found: .*no_such.json"):
        build(tmp_path / "no_such.json", image_root=str(coco_root))


def test_a_coco_folder_without_val_hashes_validation_from_train(coco_root, tmp_path):
    (coco_root / "annotations" / "captions_val2017.json").unlink()
    data = _splits(user_captions.CocoCaptions(coco_root, data_dir=tmp_path, val_fraction=0.3))
    names = [f"{1000 + i:012d}.jpg" for i in range(16)]
    expected = {n: user_captions.hash_split(n, 0.3, 0.0) for n in names}
    assert {n for split in data.values() for n in split} == set(names)
    for split, examples in data.items():
        assert all(expected[n] == split for n in examples)
    assert 0 < len(data["validation"]) < 16  # 0.3 of 16 images, by a stable hash


def test_one_json_and_a_config_mapping(coco_root, tmp_path):
    # One JSON and its folder (the older command): train, and validation hashed from it.
    config = clip_captions.get_config("smoke").data
    config.name, config.data_dir = "coco_caption_files", str(tmp_path / "one")
    config.builder_kwargs.path = str(coco_root / "annotations" / "captions_train2017.json")
    config.builder_kwargs.image_root = str(coco_root / "train2017")
    data = _splits(datasets.get_builder(config))
    assert sorted(data) == ["train", "validation"]
    assert len(data["train"]) + len(data["validation"]) == 16

    # A mapping written in a config file reaches the builder as a ConfigDict.
    config = ConfigDict(
        dict(
            name="coco_caption_files",
            data_dir=str(tmp_path / "mapping"),
            builder_kwargs=dict(
                path=dict(
                    train=str(coco_root / "annotations" / "captions_train2017.json"),
                    val=str(coco_root / "annotations" / "captions_val2017.json"),
                ),
                image_root=dict(
                    train=str(coco_root / "train2017"), validation=str(coco_root / "val2017")
                ),
                # As clip_captions.py carries it: unused, since a validation file is given.
                val_fraction=0.1,
            ),
        )
    )
    data = _splits(datasets.get_builder(config))
    assert {k: len(v) for k, v in data.items()} == {"train": 16, "validation": 8}


def test_real_coco_val2017_annotations(shared_data, tmp_path):
    """COCO's own JSON (extra fields, captions with stray spaces and newlines) in a folder."""
    real = json.loads((shared_data / "captions" / "coco_captions_val2017.json").read_text())
    images = real["images"][:6]
    ids = {image["id"] for image in images}
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for name in ("train2017", "val2017"):
        (root / name).mkdir()
    for image in images:
        Image.new("RGB", (40, 30), (90, 120, 150)).save(root / "train2017" / image["file_name"])
    subset = dict(
        real, images=images, annotations=[a for a in real["annotations"] if a["image_id"] in ids]
    )
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(subset))
    data = _splits(user_captions.CocoCaptions(root, data_dir=tmp_path / "tfds"))
    assert list(data) == ["train"]
    assert sorted(data["train"]) == sorted(image["file_name"] for image in images)
    first = images[0]
    expected = [a["caption"] for a in subset["annotations"] if a["image_id"] == first["id"]]
    assert data["train"][first["file_name"]] == expected and len(expected) >= 5
