"""`init_from` with a task's `pretrained_subtrees`: only those top-level subtrees are loaded
(from another model's run), must fit exactly, and everything else starts fresh."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from jaxmm.models import create_model
from jaxmm.train.checkpoint import Checkpointer
from jaxmm.train.pretrained import load_pretrained

IMAGE = dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="gap", stem="conv")
IMAGES = np.zeros((1, 32, 32, 3), np.float32)
TOKENS = np.zeros((1, 15), np.int32)


def make_task(name: str, subtrees: tuple[str, ...], **overrides) -> types.SimpleNamespace:
    """The parts of a trainer task that `load_pretrained` reads."""
    return types.SimpleNamespace(
        model=create_model(name, **overrides),
        model_name=name,
        model_overrides=overrides,
        init_inputs=lambda: (IMAGES, TOKENS),
        pretrained_subtrees=subtrees,
    )


def init(task, seed: int) -> dict:
    return nn.unbox(jax.jit(task.model.init)(jax.random.PRNGKey(seed), *task.init_inputs()))


def save_run(folder, variables) -> str:
    """A jaxmm run folder whose newest checkpoint holds `variables` (as the trainer saves)."""
    checkpointer = Checkpointer(folder / "checkpoints")
    checkpointer.save(1, {"params": variables["params"]}, {})
    checkpointer.close()
    return str(folder)


def flat(tree) -> dict:
    return traverse_util.flatten_dict(dict(tree))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """A CLIP run whose image tower is the smoke captioner's (configs/caption_small.py:smoke)."""
    clip = make_task("clip_test", (), image=IMAGE)
    variables = init(clip, seed=1)
    return save_run(tmp_path_factory.mktemp("clip"), variables), variables


def test_captioner_takes_only_the_image_tower_of_a_clip_run(clip_run):
    path, clip_variables = clip_run
    task = make_task("captioner_test", ("image_tower",), image=IMAGE)
    fresh = init(task, seed=0)
    loaded = flat(load_pretrained(path, task, fresh))
    clip_flat, fresh_flat = flat(clip_variables), flat(fresh)
    assert loaded.keys() == fresh_flat.keys()
    towers = 0
    for key, value in loaded.items():
        if key[1] == "image_tower":
            np.testing.assert_array_equal(value, clip_flat[key])
            assert not np.array_equal(value, fresh_flat[key]) or value.std() == 0
            towers += 1
        else:  # the decoder and the projection keep their fresh initialisation
            np.testing.assert_array_equal(value, fresh_flat[key])
    assert towers == sum(key[1] == "image_tower" for key in clip_flat)


def test_any_model_with_that_subtree(tmp_path):
    """Nothing is specific to captioners: a CLIP task taking the image tower of a captioning
    run (the other way round); its text tower, projections and temperature stay fresh. A
    source holding every parameter of the run's model would load whole (the test below)."""
    captioner = make_task("captioner_test", (), image=IMAGE)
    captioner_variables = init(captioner, seed=3)
    path = save_run(tmp_path, captioner_variables)
    task = make_task("clip_test", ("image_tower",), image=IMAGE)
    fresh = init(task, seed=5)
    loaded, fresh_flat = flat(load_pretrained(path, task, fresh)), flat(fresh)
    source = flat(captioner_variables)
    for key, value in loaded.items():
        np.testing.assert_array_equal(
            value, source[key] if key[1] == "image_tower" else fresh_flat[key]
        )


def test_a_tower_that_does_not_fit_is_refused_naming_the_parameters(clip_run):
    path, _ = clip_run
    task = make_task("captioner_test", ("image_tower",), image={**IMAGE, "width": 64})
    with pytest.raises(ValueError, match=r"(?s)does not fit.*mis-shaped.*image_tower/"):
        load_pretrained(path, task, init(task, seed=0))


def test_a_source_without_the_subtree_is_refused(tmp_path):
    text = make_task("text_transformer_test", ())
    text.init_inputs = lambda: (TOKENS,)
    path = save_run(tmp_path, init(text, seed=0))
    task = make_task("captioner_test", ("image_tower",), image=IMAGE)
    with pytest.raises(ValueError, match="image_tower"):
        load_pretrained(path, task, init(task, seed=0))


def test_a_run_of_the_tasks_own_model_loads_whole(tmp_path):
    """Resuming or evaluating a captioning run loads its decoder too."""
    task = make_task("captioner_test", ("image_tower",), image=IMAGE)
    trained = jax.tree.map(lambda x: x + 1.0, init(task, seed=2))
    path = save_run(tmp_path, trained)
    loaded = flat(load_pretrained(path, task, init(task, seed=0)))
    for key, value in flat(trained).items():
        np.testing.assert_array_equal(loaded[key], value)
    assert jnp.asarray(loaded[("params", "decoder", "ln_final", "scale")]).mean() == 2.0
