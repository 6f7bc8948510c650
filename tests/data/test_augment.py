"""The training pipeline with the augmentation switches: off by default and then bit-identical
to the plain crop-flip-normalise view, deterministic, identical on any process count,
repeated augmentation's layout, and one-line errors for bad settings or tasks."""

from functools import partial

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmm.data import augment, image_ops, pipeline

BASE = dict(
    image_size=32,
    crop_scale=(0.7, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip=True,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    num_threads=1,
    label_key="label",
)
EVERYTHING = dict(
    crop_padding=4,
    color_jitter=(0.4, 0.4, 0.4, 0.1),
    color_jitter_random_order=True,
    randaugment="rand-m9-mstd0.5",
    erase_prob=0.5,
    erase_mode="pixel",
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    mix_prob=0.9,
    mix_switch_prob=0.5,
    repeated_augmentations=2,
)
DEFAULTS = dict(
    crop_padding=0,
    color_jitter=(0.0, 0.0, 0.0, 0.0),
    color_jitter_random_order=False,
    randaugment="",
    erase_prob=0.0,
    erase_mode="pixel",
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    mix_prob=1.0,
    mix_switch_prob=0.5,
    repeated_augmentations=1,
)


def make_source(num: int = 40) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 256, (36, 44, 3), dtype=np.uint8), "label": np.int64(i)}
        for i in range(num)
    ]


def data_config(**fields) -> ConfigDict:
    return ConfigDict({**BASE, **fields})


def batches(config: ConfigDict, count: int = 2, source=None, **kwargs) -> list[dict]:
    source = source or make_source()
    iterator = pipeline.train_iterator(
        source,
        partial(pipeline.image_label_example, config=config),
        config,
        batch_size=kwargs.pop("batch_size", 8),
        seed=kwargs.pop("seed", 0),
        **kwargs,
    )
    return [next(iterator) for _ in range(count)]


def plain_view(image: np.ndarray, rng: np.random.Generator, config: ConfigDict) -> np.ndarray:
    """The training view before the augmentation switches existed: crop, flip, normalise."""
    box = image_ops.random_resized_crop_box(
        rng, image.shape[0], image.shape[1], tuple(config.crop_scale), tuple(config.crop_ratio)
    )
    image = image_ops.crop_resize(image, box, config.image_size)
    if config.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    return image_ops.normalize(image, config.mean, config.std)


def test_defaults_are_the_plain_view_bit_for_bit():
    image = make_source(1)[0]["image"]
    for config in (data_config(), data_config(**DEFAULTS)):
        for seed in range(20):
            plain_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed)
            np.testing.assert_array_equal(
                pipeline.augment_image(image, rng, config), plain_view(image, plain_rng, config)
            )
            # No extra draws either: what comes after (a caption's choice) is unchanged too.
            assert rng.bit_generator.state == plain_rng.bit_generator.state


def test_default_fields_leave_the_batches_unchanged():
    plain, explicit = batches(data_config()), batches(data_config(**DEFAULTS))
    for a, b in zip(plain, explicit, strict=True):
        assert set(a) == set(b) == {"image", "label"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_base_configs_default_to_off():
    from configs import clip_small, resnet18_shapes

    for module in (resnet18_shapes, clip_small):
        data = module.get_config().data
        for key, value in DEFAULTS.items():
            if key in data:
                assert tuple(np.atleast_1d(data[key])) == tuple(np.atleast_1d(value)), key
        augment.check(data)


# The settings that act alone (the others qualify one of these).
SWITCHES = (
    "crop_padding",
    "color_jitter",
    "randaugment",
    "erase_prob",
    "mixup_alpha",
    "cutmix_alpha",
    "repeated_augmentations",
)


@pytest.mark.parametrize("name", SWITCHES)
def test_each_switch_changes_the_batch(name):
    config = data_config(**{name: EVERYTHING[name]})
    plain, switched = batches(data_config(), 1)[0], batches(config, 1)[0]
    assert switched["image"].shape == plain["image"].shape
    assert switched["image"].dtype == np.float32
    assert not np.array_equal(switched["image"], plain["image"])


def test_everything_on_is_deterministic_and_process_count_invariant():
    config = data_config(**EVERYTHING)
    whole = batches(config, 3)
    np.testing.assert_array_equal(batches(config, 3)[2]["image"], whole[2]["image"])
    halves = [batches(config, 3, process_index=i, process_count=2) for i in range(2)]
    for step in range(3):
        assert set(whole[step]) == {"image", "label", "mix_label", "mix_lambda"}
        for key in whole[step]:
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, whole[step][key], err_msg=key)
    other_seed = batches(config, 1, seed=1)[0]
    assert not np.array_equal(other_seed["image"], whole[0]["image"])


@pytest.mark.parametrize(("batch_size", "count"), [(8, 2), (8, 3)])
def test_repeated_augmentation_copies_each_image_with_its_own_view(batch_size, count):
    config = data_config(repeated_augmentations=count)
    (batch,) = batches(config, 1, batch_size=batch_size)
    labels = batch["label"]  # the label is the example's index
    distinct = -(-batch_size // count)
    np.testing.assert_array_equal(labels, np.tile(labels[:distinct], count)[:batch_size])
    assert len(set(labels.tolist())) == distinct
    assert not np.array_equal(batch["image"][0], batch["image"][distinct])  # another view


def test_repeats_never_pair_an_image_with_its_copy():
    config = data_config(repeated_augmentations=3, mixup_alpha=0.8)
    for batch in batches(config, 4, batch_size=8):
        assert (batch["label"] != batch["mix_label"]).all()


def fake_contrastive_example(example, rng, config):
    return {"image": pipeline.augment_image(example["image"], rng, config), "tokens": np.zeros(4)}


@pytest.mark.parametrize("switch", [dict(mixup_alpha=0.8), dict(repeated_augmentations=2)])
def test_batch_augmentation_is_refused_for_other_tasks(switch):
    config = data_config(**switch)
    with pytest.raises(ValueError, match="image classification") as error:
        pipeline.train_iterator(
            make_source(),
            partial(fake_contrastive_example, config=config),
            config,
            batch_size=8,
            seed=0,
        )
    assert "\n" not in str(error.value)


BAD = [
    (dict(crop_padding=-1), "data.crop_padding"),
    (dict(color_jitter=(0.4, 0.4, 0.4)), "data.color_jitter"),
    (dict(randaugment="rand-m9-q3"), "data.randaugment"),
    (dict(erase_prob=2.0), "data.erase_prob"),
    (dict(erase_mode="noise"), "data.erase_mode"),
    (dict(mixup_alpha=-1.0), "data.mixup_alpha"),
    (dict(repeated_augmentations=0), "data.repeated_augmentations"),
    (dict(repeated_augmentations=5), "data.repeated_augmentations"),
]


@pytest.mark.parametrize(("fields", "culprit"), BAD)
def test_bad_settings_fail_at_once_in_one_line(fields, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")) as error:
        batches(data_config(**fields), 1)
    assert "\n" not in str(error.value)


def test_mixing_needs_an_even_batch_per_process():
    with pytest.raises(ValueError, match="per-process batch"):
        batches(data_config(mixup_alpha=0.5), 1, batch_size=6, process_count=2)


def test_check_config_knows_the_new_fields():
    from configs import resnet18_shapes
    from jaxmm.train.config_check import check_config

    config = resnet18_shapes.get_config("smoke")
    for key, value in EVERYTHING.items():
        config.data[key] = value
    check_config(config)
    config.data.mixup_alfa = 0.8
    with pytest.raises(ValueError, match="did you mean data.mixup_alpha"):
        check_config(config)


def test_deit_and_swin_recipes_carry_their_augmentation():
    from configs import swin_t_imagenet, vit_b16_imagenet

    deit, swin = vit_b16_imagenet.get_config(), swin_t_imagenet.get_config()
    for config in (deit, swin):
        data = config.data
        assert data.randaugment == "rand-m9-mstd0.5-inc1"
        assert (data.mixup_alpha, data.cutmix_alpha, data.mix_switch_prob) == (0.8, 1.0, 0.5)
        assert (data.erase_prob, data.erase_mode) == (0.25, "pixel")
        assert config.label_smoothing == 0.1
        augment.check(data)
    assert (deit.data.repeated_augmentations, deit.model.drop_path_rate) == (3, 0.1)
    assert (swin.data.repeated_augmentations, swin.model.drop_path_rate) == (1, 0.2)
