"""`jaxmm.train.config_check`: bad configs fail before any compute, naming every culprit."""

import importlib
import logging
import pathlib

import pytest
from ml_collections import ConfigDict

import jaxmm.train
from configs import clip_small, resnet18_shapes, swin_t_imagenet, vit_b16_imagenet
from jaxmm.train import config_check, tasks


def _clip_rn50_config(arg: str) -> ConfigDict:
    """The smoke CLIP run with OpenAI's RN50 image tower, which only takes 224 px images."""
    config = clip_small.get_config(arg)
    config.model = dict(name="clip_rn50", text=config.model.text.to_dict())
    return config


CONFIG_NAMES = sorted(p.stem for p in pathlib.Path("configs").glob("*.py") if p.stem != "__init__")


def _replace(config: ConfigDict, section: str, **changes) -> ConfigDict:
    """`config` with `section` swapped for a copy holding `changes`: the way a config file
    can bring in unknown keys and wrong types, which field-by-field assignment refuses."""
    config[section] = {**config[section].to_dict(), **changes}
    return config


def _problems(config: ConfigDict) -> str:
    with pytest.raises(ValueError) as info:
        config_check.check_config(config)
    return str(info.value)


@pytest.mark.parametrize("arg", [None, "smoke"])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_shipped_config_passes(name, arg):
    # No false alarms: every experiment (e.g. an AdamW classifier, a ModifiedResNet CLIP) is
    # accepted as written.
    config_check.check_config(importlib.import_module(f"configs.{name}").get_config(arg))


def test_unknown_keys_are_all_reported_with_the_closest_known_key():
    config = _replace(clip_small.get_config("smoke"), "optim", lerning_rate=1e-3, momentun=0.9)
    config = _replace(config, "eval", split="test", evry=10)
    with config.unlocked():
        config.learning_rate = 0.1  # a real key, in the wrong section
        config.old_field = 1  # nothing like it
    message = _problems(config)
    assert "5 config problem(s)" in message, message
    assert "optim.lerning_rate: unknown key (did you mean optim.learning_rate?)" in message
    # momentum is an SGD key, known from the classification base.
    assert "optim.momentun: unknown key (did you mean optim.momentum?)" in message
    assert "eval.evry: unknown key (did you mean eval.every?)" in message
    assert "learning_rate: unknown key (did you mean optim.learning_rate?)" in message
    assert "\n  old_field: unknown key\n" in message + "\n"


def test_a_classification_config_takes_shared_keys_from_the_contrastive_base():
    # vit_b16_imagenet is a classifier with AdamW (b1, b2, eps are only in clip_small).
    config = vit_b16_imagenet.get_config("smoke")
    config = _replace(config, "optim", b2=0.95, lr_multipliers={"head": 10.0})
    config_check.check_config(config)
    assert config.task == "classification"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("optim", "warmup_steps", "100", "optim.warmup_steps='100': expected an int"),
        ("optim", "learning_rate", "3e-4", "optim.learning_rate='3e-4': expected a float"),
        ("data", "flip", 1, "data.flip=1: expected a bool"),
        ("data", "image_size", 32.0, "data.image_size=32.0: expected an int"),
        ("data", "mean", 0.5, "data.mean=0.5: expected a tuple or list"),
        ("eval", "every", {"steps": 5}, "eval.every={'steps': 5}: expected an int"),
        ("data", "builder_kwargs", "x", "data.builder_kwargs='x': expected a section"),
    ],
)
def test_wrong_types_name_key_value_and_expected_type(section, key, value, expected):
    message = _problems(_replace(clip_small.get_config("smoke"), section, **{key: value}))
    assert expected in message, message


@pytest.mark.parametrize("key", ["total_steps", "log_every", "checkpoint_every"])
def test_step_intervals_must_be_positive(key):
    # Each divides the step number in the loop: 0 used to end a run in ZeroDivisionError.
    config = clip_small.get_config("smoke")
    config[key] = 0
    assert f"{key}=0: must be a positive number of steps" in _problems(config)


def test_ints_stand_for_floats_and_lists_for_tuples():
    config = _replace(clip_small.get_config("smoke"), "optim", learning_rate=1, weight_decay=0)
    config = _replace(config, "data", mean=[0.5, 0.5, 0.5])
    config_check.check_config(config)


def test_unknown_model_field_names_it_and_the_model():
    config = clip_small.get_config("smoke")
    config.model.image = {**config.model.image.to_dict(), "patchsize": 4}
    message = _problems(config)
    assert "model (model.name='clip_test')" in message
    assert "image tower" in message and "vit_test" in message
    assert "'patchsize' (did you mean 'patch_size'?)" in message, message

    config = resnet18_shapes.get_config("smoke")
    config.model = dict(name="resnet_test", stem="cifar", widht=8)
    message = _problems(config)
    assert "resnet_test" in message and "'widht' (did you mean 'width'?)" in message, message

    config.model = dict(name="resnet_tset")
    assert "model.name='resnet_tset'" in _problems(config)


def test_unknown_builder_option_names_it():
    config = clip_small.get_config("smoke")
    config.data.name = "image_caption_file"
    config.data.builder_kwargs = dict(path="c.csv", on_bad_imgae="skip", image_root="")
    message = _problems(config)
    assert "data.builder_kwargs.on_bad_imgae: not an option of data.name='image_caption_file'" in (
        message
    )
    assert "did you mean data.builder_kwargs.on_bad_image?" in message, message


def test_every_task_has_a_base_config():
    assert set(config_check.BASE_CONFIGS) == set(tasks.TASKS)
    for task, module in config_check.BASE_CONFIGS.items():
        assert importlib.import_module(module).get_config().task == task


def test_unknown_task_suggests_the_known_one():
    config = clip_small.get_config("smoke")
    config.task = "contrastiv"
    assert "task='contrastiv' is unknown (did you mean contrastive?)" in _problems(config)


@pytest.mark.parametrize(
    ("get_config", "image_size", "expected"),
    [
        # clip_test's ViT patch 8 (model.image.patch_size).
        (clip_small.get_config, 36, "36 is not divisible by the patch size 8 of clip_test"),
        (vit_b16_imagenet.get_config, 36, "36 is not divisible by the patch size 8 of vit_test"),
        (swin_t_imagenet.get_config, 34, "34 is not divisible by the patch size 4 of swin_test"),
        # OpenAI's RN50 (ModifiedResNet): the attention pool's positional embedding fixes the size.
        (_clip_rn50_config, 64, "data.image_size=64 but clip_rn50's image tower is built for 224"),
    ],
)
def test_image_size_must_fit_the_model(get_config, image_size, expected):
    config = get_config("smoke")
    config.data.image_size = image_size
    message = _problems(config)
    assert expected in message, message


def test_tokens_must_fit_the_text_context():
    config = clip_small.get_config("smoke")
    config.data.context_length = 20  # the smoke text tower holds 16
    message = _problems(config)
    assert "data.context_length=20 exceeds the text tower's context 16" in message, message


def test_without_base_configs_keys_are_not_checked_and_a_warning_says_so(monkeypatch, caplog):
    monkeypatch.setitem(config_check.BASE_CONFIGS, "contrastive", "no_such_package.base")
    config = _replace(clip_small.get_config("smoke"), "optim", lerning_rate=1.0)
    with caplog.at_level(logging.WARNING):
        config_check.check_config(config)
    assert "config keys and types not checked" in caplog.text


def test_training_refuses_a_bad_config_before_touching_the_workdir(tmp_path):
    # A resumed run with a mistyped config file must leave what is saved alone.
    saved = tmp_path / "checkpoints" / "100" / "state"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"checkpoint")
    config = _replace(clip_small.get_config("smoke"), "optim", lerning_rate=1.0)
    with pytest.raises(ValueError, match="optim.lerning_rate: unknown key"):
        jaxmm.train.run(config, tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        pathlib.Path("checkpoints"),
        pathlib.Path("checkpoints/100"),
        pathlib.Path("checkpoints/100/state"),
    ]
    assert saved.read_bytes() == b"checkpoint"
