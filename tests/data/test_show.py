"""`python -m jaxmm.data.show` writes a PNG grid of the training views of a config."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import resnet18_shapes
from jaxmm.data import datasets, show


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The smoke config with every per-example and batch augmentation on."""
    config = resnet18_shapes.get_config("smoke")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.data.update(
        crop_padding=2,
        randaugment="rand-m9-mstd0.5",
        erase_prob=0.5,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
    )
    return config


def test_grid_layout():
    images = np.stack([np.full((40, 40, 3), k, np.uint8) for k in range(5)])
    canvas = show.grid(images)  # 3 columns x 2 rows of 120-pixel tiles (3x), 2-pixel gaps
    assert canvas.shape == (2 * 122 + 2, 3 * 122 + 2, 3)
    assert (canvas[2:122, 2:122] == 0).all() and (canvas[124:244, 124:244] == 4).all()
    assert (canvas[124:244, 246:366] == 255).all()  # the empty sixth tile


def test_unaugmented_views_are_the_dataset_images(config):
    """With every augmentation off and the whole 32 px image as the crop, the shown views
    are training images exactly: the normalisation is undone, not just rescaled."""
    plain = resnet18_shapes.get_config("smoke")
    plain.data.data_dir = config.data.data_dir
    plain.data.update(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
    views = show.training_images(plain, 4)
    source = datasets.prepare_builder(plain.data).as_data_source("train")
    images = {np.asarray(source[i]["image"]).tobytes() for i in range(len(source))}
    assert all(view.tobytes() in images for view in views)


def test_grid_shows_the_training_views(config, tmp_path):
    out = show.save_grid(config, tmp_path / "grid.png", num=6)
    saved = np.asarray(Image.open(out))
    views = show.training_images(config, 6)
    assert views.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(saved[2:98:3, 2:98:3], views[0])  # tile 0, enlarged 3x
    with pytest.raises(ValueError, match="must name a .png file"):
        show.save_grid(config, tmp_path / "grid.jpg")


def test_command_writes_a_png(config, tmp_path):
    out = tmp_path / "grid.png"
    command = [
        sys.executable,
        "-m",
        "jaxmm.data.show",
        "--config=configs/resnet18_shapes.py:smoke",
        f"--config.data.data_dir={config.data.data_dir}",
        "--config.data.randaugment=rand-m9-mstd0.5",
        f"--out={out}",
        "--num=4",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == (2 * 98 + 2, 2 * 98 + 2)
    config = config.copy_and_resolve_references()
    config.data.randaugment = "rand-q1"
    with pytest.raises(ValueError, match="data.randaugment='rand-q1'"):
        show.training_images(config, 4)  # before any data is read
