"""`optim.frozen`: locked-image tuning (LiT) leaves the image tower exactly as it was, running
it in inference mode, from a converted OpenAI-layout checkpoint through the trainer too."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util
from ml_collections import ConfigDict

import jaxmm.train
from configs import clip_small
from jaxmm import losses, sharding
from jaxmm.data import datasets
from jaxmm.models import create_model
from jaxmm.train import tasks
from jaxmm.train.objectives import Contrastive
from jaxmm.train.optimizer import ParamGroups, make_optimizer
from jaxmm.train.pretrained import load_variables
from jaxmm.train.state import create_train_state
from jaxmm.train.steps import make_train_step


def test_frozen_prefixes_match_whole_path_components():
    params = {"image_tower": {"w": 0}, "image_tower_2": {"w": 0}, "text": {"a": {"w": 0}}}
    labels = ParamGroups.from_config(ConfigDict({"frozen": ("image_tower", "text/a")})).labels
    assert labels(params) == {
        "image_tower": {"w": "frozen"},
        "image_tower_2": {"w": "trained"},  # a prefix of the name, not of the path
        "text": {"a": {"w": "frozen"}},
    }


def clip_batch(batch_size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 500, size=(batch_size, 16)).astype(np.int32)
    tokens[:, 10] = 511  # EOT
    images = rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32)
    return {"image": images, "tokens": tokens}


def lit_state_and_step(model_name: str, lock: bool):
    """A one-device train state of `model_name` and its jitted step, the image tower frozen
    (and so locked in inference mode) when `lock`."""
    batch = clip_batch()
    model = create_model(model_name)
    optim = ConfigDict(clip_small.get_config().optim.to_dict())
    optim.warmup_steps = 0
    optim.frozen = ("image_tower",) if lock else ()
    tx = make_optimizer(optim, total_steps=10)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, _ = create_train_state(
        lambda r: model.init(r, batch["image"][:1], batch["tokens"][:1]), tx, mesh, 0
    )
    locked = ParamGroups.from_config(optim).is_locked
    step = make_train_step(model, tx, Contrastive("infonce"), optax.constant_schedule(0), locked)
    return model, state, jax.jit(step), batch


def flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(dict(tree)))


def changed_towers(before, after) -> set[str]:
    """Top-level module names under which `after` differs from `before` (a superset)."""
    before, after = flat(before), flat(after)
    return {path[1] for path in after if not np.array_equal(before[path], after[path])}


def test_locked_image_tuning_trains_only_the_text_side():
    _, state, step, batch = lit_state_and_step("clip_test", lock=True)
    before = state.variables
    for _ in range(2):
        state, _ = step(state, batch)
    # Bit-identical tower (no update, no weight decay); everything else moves.
    assert changed_towers(before, state.variables) == {
        "text_tower",
        "image_projection",
        "text_projection",
        "logit_scale",
    }


def test_a_locked_batchnorm_tower_runs_in_inference_mode():
    """LiT runs the locked tower as at inference: ModifiedResNet's BatchNorm normalises with
    the running statistics and leaves them as they were."""
    model, state, step, batch = lit_state_and_step("clip_rn_test", lock=True)
    before = state.variables
    # The loss the step should see: the image side exactly as `encode_image` at inference.
    image = model.apply(before, batch["image"], method=model.encode_image)
    text = model.apply(before, batch["tokens"], train=True, method=model.encode_text)
    expected_loss = losses.clip_infonce_loss(image, text, before["params"]["logit_scale"])
    state, metrics = step(state, batch)
    # Reached: equal to float32 rounding (rtol 1e-6); a train-mode tower is 0.02 away.
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-6)
    assert changed_towers(before, state.variables) == {
        "text_tower",
        "text_projection",
        "logit_scale",
    }

    # In train mode the tower would move its statistics and change the loss: the checks
    # above can fail.
    train_image, train_state = model.apply(
        before, batch["image"], train=True, mutable=["batch_stats"], method=model.encode_image
    )
    assert "image_tower" in changed_towers(before, train_state)
    train_loss = losses.clip_infonce_loss(train_image, text, before["params"]["logit_scale"])
    assert abs(float(train_loss) - float(expected_loss)) > 1e-3


torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")


def test_lit_from_an_openai_layout_checkpoint(tmp_path):
    """The trainer starts from a `.pt` state dict in OpenAI's layout (written by
    `jaxmm.convert.to_torch`) and, with the image tower frozen, leaves it bit for bit."""
    from jaxmm import convert

    config = clip_small.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    config.total_steps = 2
    config.optim.frozen = ("image_tower",)
    workdir = tmp_path / "lit"
    # The task of the run (it saves the tokenizer the run then reuses) gives the model the
    # checkpoint must fit; its random initialisation stands in for OpenAI's weights.
    task = tasks.make_task(config, datasets.prepare_builder(config.data), workdir)
    pretrained = nn.unbox(task.model.init(jax.random.PRNGKey(7), *task.init_inputs()))
    state_dict = convert.to_torch(task.model_name, pretrained, **task.model_overrides)
    assert "visual.conv1.weight" in state_dict and "token_embedding.weight" in state_dict
    checkpoint = tmp_path / "ViT-tiny.pt"
    torch.save({key: torch.from_numpy(value) for key, value in state_dict.items()}, checkpoint)

    config.init_from = str(checkpoint)
    jaxmm.train.run(config, workdir)
    trained = flat(load_variables(str(workdir), task))
    loaded = flat(load_variables(str(checkpoint), task))
    image = [path for path in loaded if path[1] == "image_tower"]
    assert image and all(np.array_equal(trained[p], loaded[p]) for p in image)
    moved = [
        p for p in loaded if p[1] == "text_tower" and not np.array_equal(trained[p], loaded[p])
    ]
    assert len(moved) == len([p for p in loaded if p[1] == "text_tower"])
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert 0 <= final["zeroshot/top1"] <= 1
