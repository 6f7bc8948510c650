"""`optim.frozen`: locked-image tuning (LiT) leaves the image tower exactly as it was."""

import jax
import numpy as np
import optax
from flax import traverse_util
from ml_collections import ConfigDict

from configs import clip_small
from jaxmm import sharding
from jaxmm.models import create_model
from jaxmm.train.objectives import Contrastive
from jaxmm.train.optimizer import frozen_labels, make_optimizer
from jaxmm.train.state import create_train_state
from jaxmm.train.steps import make_train_step


def test_frozen_labels_match_whole_path_components():
    params = {"image_tower": {"w": 0}, "image_tower_2": {"w": 0}, "text": {"a": {"w": 0}}}
    labels = frozen_labels(params, ("image_tower", "text/a"))
    assert labels == {
        "image_tower": {"w": "frozen"},
        "image_tower_2": {"w": "trained"},  # a prefix of the name, not of the path
        "text": {"a": {"w": "frozen"}},
    }


def test_locked_image_tuning_trains_only_the_text_side():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1, 500, size=(8, 16)).astype(np.int32)
    tokens[:, 10] = 511  # EOT
    batch = {"image": images, "tokens": tokens}
    model = create_model("clip_test")
    optim = ConfigDict(clip_small.get_config().optim.to_dict())
    optim.warmup_steps = 0
    optim.frozen = ("image_tower",)
    tx = make_optimizer(optim, total_steps=10)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, _ = create_train_state(lambda r: model.init(r, images[:1], tokens[:1]), tx, mesh, 0)
    before = traverse_util.flatten_dict(jax.device_get(state.params))
    step = jax.jit(make_train_step(model, tx, Contrastive("infonce"), optax.constant_schedule(0)))
    for _ in range(2):
        state, _ = step(state, batch)
    after = traverse_util.flatten_dict(jax.device_get(state.params))
    changed = {path[0] for path in before if not np.array_equal(before[path], after[path])}
    # Bit-identical tower (no update, no weight decay); everything else moves.
    assert "image_tower" not in changed
    assert {"text_tower", "image_projection", "text_projection"} <= changed
