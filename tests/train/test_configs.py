"""Every experiment config loads, and its smoke setting trains end to end."""

import pathlib

import numpy as np
import pytest
from PIL import Image

import jaxmm.train
from configs import clip_b16, clip_captions, clip_small

CONFIGS = {"clip_small": clip_small, "clip_b16": clip_b16, "clip_captions": clip_captions}


def test_every_config_file_is_listed_here():
    files = {p.stem for p in pathlib.Path("configs").glob("*.py")} - {"__init__"}
    assert files == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_config_builds(name):
    config = CONFIGS[name].get_config()
    assert config.total_steps > 100
    assert config.data.image_size % config.model.get("image", {}).get("patch_size", 16) == 0


def write_caption_collection(folder: pathlib.Path, num_images: int = 24) -> pathlib.Path:
    """A user's collection: coloured PNGs and a CSV with two captions per image."""
    rng = np.random.default_rng(0)
    rows = ["image,caption"]
    for index in range(num_images):
        colour = ["red", "green", "blue"][index % 3]
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[..., index % 3] = 200
        pixels += rng.integers(0, 40, size=pixels.shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
        rows += [f"img{index}.png,a {colour} picture", f"img{index}.png,something {colour}"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder / "captions.csv"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_smoke_setting_trains(name, tmp_path):
    config = CONFIGS[name].get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    if name == "clip_captions":
        config.data.builder_kwargs.path = str(write_caption_collection(tmp_path))
        config.data.builder_kwargs.val_fraction = 0.25
    config.progress_bar = False
    metrics = jaxmm.train.run(config, tmp_path / "workdir")
    assert 0 <= metrics["retrieval/i2t_r1"] <= 1
    if config.data.name == "clip_shapes":
        assert 0 <= metrics["zeroshot/top1"] <= 1


def test_clip_b16_is_the_papers_architecture():
    config = clip_b16.get_config()
    assert config.model.name == "clip_vit_b16"
    assert (config.data.image_size, config.data.context_length) == (224, 77)
    assert config.tokenizer.kind == "clip"
    assert (config.optim.learning_rate, config.optim.weight_decay, config.batch_size) == (
        5e-4,
        0.2,
        32768,
    )
