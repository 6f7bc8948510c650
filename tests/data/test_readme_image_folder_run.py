"""The README's image-folder classification command, shrunk to its smoke setting: the same
overrides (`data.name=image_folder`, `builder_kwargs.path`, `builder_config=""`,
`eval.split=validation`) on a tiny `pets/cat`, `pets/dog` collection, trained two steps."""

import numpy as np
from PIL import Image

import jaxmm.train
from configs import resnet18_shapes
from jaxmm.data import datasets


def test_readme_image_folder_command_trains(tmp_path):
    pets = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for name, colour in {"cat": (200, 120, 40), "dog": (40, 90, 200)}.items():
        (pets / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.full((36, 44, 3), colour, np.uint8) + rng.integers(0, 30, (36, 44, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(pets / name / f"{name}{i}.jpg")
    config = resnet18_shapes.get_config("smoke")
    config.data.name = "image_folder"
    config.data.builder_kwargs.path = str(pets)
    config.data.builder_config = ""
    config.eval.split = "validation"
    config.data.data_dir = str(tmp_path / "tfds")
    config.total_steps = 2
    config.progress_bar = False
    metrics = jaxmm.train.run(config, tmp_path / "run")
    assert 0 <= metrics["eval/top1"] <= 1 and 0 <= metrics["eval/mean_class_top1"] <= 1
    # The run's dataset: classes from the sorted folder names, validation hashed out of them.
    builder = datasets.get_builder(config.data)
    assert builder.info.features["label"].names == ["cat", "dog"]
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes["train"] + sizes["validation"] == 24 and sizes["validation"] > 0
