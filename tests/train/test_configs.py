"""Every experiment config loads, and its smoke setting trains end to end."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxmm.train
from configs import (
    alexnet_imagenet,
    caption_coco,
    caption_small,
    clip_b16,
    clip_captions,
    clip_resnet50,
    clip_small,
    distill_clip_small,
    distill_shapes,
    image_text_shapes,
    longtail_shapes,
    mobilenet_v2_cifar10,
    resnet18_cifar10,
    resnet18_shapes,
    resnet50_imagenet,
    swin_t_imagenet,
    vgg16_imagenet,
    vit_b16_imagenet,
    vqa_bilinear,
    vqa_concat,
    vqa_xattn,
)
from jaxmm.data import pipeline
from jaxmm.models import list_models

CONFIGS = {
    "clip_small": clip_small,
    "caption_small": caption_small,
    "caption_coco": caption_coco,
    "clip_b16": clip_b16,
    "clip_captions": clip_captions,
    "clip_resnet50": clip_resnet50,
    "resnet18_shapes": resnet18_shapes,
    "longtail_shapes": longtail_shapes,
    "resnet50_imagenet": resnet50_imagenet,
    "vit_b16_imagenet": vit_b16_imagenet,
    "swin_t_imagenet": swin_t_imagenet,
    "alexnet_imagenet": alexnet_imagenet,
    "vgg16_imagenet": vgg16_imagenet,
    "resnet18_cifar10": resnet18_cifar10,
    "mobilenet_v2_cifar10": mobilenet_v2_cifar10,
    "image_text_shapes": image_text_shapes,
    "vqa_concat": vqa_concat,
    "vqa_bilinear": vqa_bilinear,
    "vqa_xattn": vqa_xattn,
    "distill_shapes": distill_shapes,
    "distill_clip_small": distill_clip_small,
}
# Students need a teacher run: tests/train/test_distillation.py trains theirs from smoke ones.
DISTILLED = {"distill_shapes", "distill_clip_small"}
CLASSIFICATION = sorted(
    name for name, module in CONFIGS.items() if module.get_config().task == "classification"
)


def test_every_config_file_is_listed_here():
    files = {p.stem for p in pathlib.Path("configs").glob("*.py")} - {"__init__"}
    assert files == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_config_builds(name):
    config = CONFIGS[name].get_config()
    assert config.total_steps > 100
    assert config.data.image_size % config.model.get("image", {}).get("patch_size", 16) == 0
    assert config.model.name in list_models()
    assert config.batch_size % 8 == 0 and config.eval.batch_size % 8 == 0


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


# One config per real dataset: the other ImageNet/CIFAR configs share these data sections
# (asserted below) and differ in model and optimizer, which their smoke runs exercise.
MOCKED = {"resnet50_imagenet": "imagenet2012", "resnet18_cifar10": "cifar10"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """One tfds folder for the module, so the built-in dataset is generated once."""
    return str(tmp_path_factory.mktemp("tfds"))


# The mocked configs train their smoke model on their own dataset's plumbing instead (below).
@pytest.mark.parametrize("name", sorted(set(CONFIGS) - set(MOCKED) - DISTILLED))
def test_smoke_setting_trains(name, tmp_path, data_dir):
    config = CONFIGS[name].get_config("smoke")
    config.data.data_dir = data_dir
    if name == "clip_captions":
        config.data.builder_kwargs.path = str(write_caption_collection(tmp_path))
        config.data.builder_kwargs.val_fraction = 0.25
    config.progress_bar = False
    metrics = jaxmm.train.run(config, tmp_path / "workdir")
    if config.task == "vqa":
        types = {key for key in metrics if key.startswith("vqa/accuracy_")}
        assert len(types) == 7 and 0 <= metrics["vqa/accuracy"] <= 1, metrics
        assert 0 <= metrics["vqa/heldout_accuracy"] <= 1
        return
    if config.task == "captioning":
        for key in ("caption/bleu4", "caption/cider", "caption/attribute_accuracy"):
            assert np.isfinite(metrics[key]) and metrics[key] >= 0, (key, metrics)
        return
    if config.task == "image_text_classification":
        assert 0 <= metrics["eval/top1"] <= metrics["eval/top5"] <= 1
        assert 0 <= metrics["eval/heldout_top1"] <= 1
        return
    if name in CLASSIFICATION:
        assert 0 <= metrics["eval/top1"] <= metrics["eval/top5"] <= 1
        # Held-out colour-shape classes never appear in training: a classifier cannot score.
        assert metrics.get("eval/heldout_top1", 0) == 0
        return
    assert 0 <= metrics["retrieval/i2t_r1"] <= 1
    if config.data.name == "clip_shapes":
        assert 0 <= metrics["zeroshot/top1"] <= 1


def test_mocked_configs_stand_for_every_dataset_config():
    for name in CLASSIFICATION:
        data = CONFIGS[name].get_config().data
        if data.name in ("clip_shapes", "longtail_shapes"):
            continue
        twin = next(m for m, dataset in MOCKED.items() if dataset == data.name)
        reference = CONFIGS[twin].get_config().data
        for key in ("name", "train_split", "label_key", "eval_crop_fraction"):
            assert data[key] == reference[key], (name, key)


@pytest.mark.parametrize("name", sorted(MOCKED))
def test_real_dataset_plumbing_under_mock_data(name, tmp_path, monkeypatch):
    """The full config's dataset (imagenet2012, cifar10) read through tfds's mock data.

    The model and run length come from the smoke setting; data name, splits, label feature,
    crop fractions and normalisation are the real config's.
    """
    # tfds 4.9's mock data source sets `__getitems__` to an unbound `functools.partial`
    # (testing/mocking.py), so batched reads fail under the mock only; read one by one.
    monkeypatch.setattr(
        pipeline, "_read_batch", lambda source, indices: [source[int(i)] for i in indices]
    )
    config = CONFIGS[name].get_config()
    assert config.data.name == MOCKED[name]
    smoke = CONFIGS[name].get_config("smoke")
    for key in ("batch_size", "total_steps", "log_every", "checkpoint_every", "model", "eval"):
        config[key] = smoke[key]
    config.eval.split = CONFIGS[name].get_config().eval.split
    config.data.image_size = smoke.data.image_size
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    with tfds.testing.mock_data(num_examples=24):
        metrics = jaxmm.train.run(config, tmp_path / "workdir")
    assert 0 <= metrics["eval/top1"] <= metrics["eval/top5"] <= 1


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
