"""`optim.lr_multipliers`: per-parameter-group learning rates, checked against PyTorch
param groups; multiplier 0 is exactly `optim.frozen`."""

import jax
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import clip_small
from jaxmm.train.optimizer import ParamGroups, make_optimizer

torch = pytest.importorskip("torch", reason="the reference is torch.optim: pip install torch")

LR = 0.01
# Hand-written expectation for MULTIPLIERS below: the longest matching prefix wins.
MULTIPLIERS = {"tower": 0.1, "head/bias": 0.5}
EXPECTED = {
    "tower/dense/kernel": 0.1,
    "tower/dense/bias": 0.1,
    "head/kernel": 1.0,
    "head/bias": 0.5,
}


def make_params(rng: np.random.Generator) -> dict:
    return {
        "tower": {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}},
        "head": {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=(2,))},
    }


def flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(k.key for k in path): np.asarray(leaf, np.float32)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def optim_config(name: str, **overrides) -> ConfigDict:
    config = ConfigDict(clip_small.get_config().optim.to_dict())
    config.update(name=name, learning_rate=LR, warmup_steps=0, end_factor=1.0)  # constant lr
    config.update(momentum=0.9, nesterov=False)  # read by sgd only
    config.update(overrides)
    return config


def run_optax(config: ConfigDict, params: dict, grads: list[dict], steps: int) -> dict:
    tx = make_optimizer(config, total_steps=steps)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    state = tx.init(params)
    for grad in grads:
        updates, state = tx.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    return flat(params)


def run_torch(make_optimizer, params: dict, grads: list[dict], clip: float) -> dict:
    """One torch param group per leaf, lr from EXPECTED, weight decay on kernels only."""
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in flat(params).items()}
    for tensor in tensors.values():
        tensor.requires_grad_(True)
    groups = [
        {"params": [t], "lr": LR * EXPECTED[k], "weight_decay_on": k.endswith("kernel")}
        for k, t in tensors.items()
    ]
    optimizer = make_optimizer(groups)
    for grad in grads:
        for key, value in flat(grad).items():
            tensors[key].grad = torch.tensor(value)
        if clip:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        optimizer.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def random_grads(rng, params, steps, scale):
    def draw(p):
        return (scale * rng.normal(size=p.shape)).astype(np.float32)

    return [jax.tree.map(draw, params) for _ in range(steps)]


def test_longest_matching_prefix_wins_and_zero_locks_whole_modules():
    config = ConfigDict({"lr_multipliers": {"image_tower": 0.1, "image_tower/block_0": 0}})
    config.frozen = ("text_tower/",)
    groups = ParamGroups.from_config(config)
    assert groups.multiplier("image_tower/block_0/kernel") == 0
    assert groups.multiplier("image_tower/block_1/kernel") == 0.1
    assert groups.multiplier("image_tower_2/kernel") == 1.0  # whole path components only
    assert groups.multiplier("text_tower/embed") == 0
    assert groups.is_locked(("text_tower",)) and groups.is_locked(("image_tower", "block_0"))
    # image_tower holds trained parameters besides its locked block: it stays in train mode.
    assert not groups.is_locked(("image_tower",)) and not groups.is_locked(())


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_adamw_groups_match_torch_param_groups(clip):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    # Gradients of norm ~3 so that clipping to 1 acts on every step.
    grads = random_grads(rng, params, steps=5, scale=1.0)
    config = optim_config("adamw", lr_multipliers=MULTIPLIERS, grad_clip_norm=clip)
    ours = run_optax(config, params, grads, steps=5)

    def adamw(groups):
        for group in groups:
            group["weight_decay"] = config.weight_decay if group.pop("weight_decay_on") else 0.0
        return torch.optim.AdamW(groups, betas=(config.b1, config.b2), eps=config.eps)

    reference = run_torch(adamw, params, grads, clip)
    for key, value in reference.items():
        # Reached: 2.4e-7 (no clip) and 1.2e-7 (clip) absolute, float32 rounding (torch's
        # clip also adds 1e-6 to the norm); the parameters moved by 4e-2.
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-6, err_msg=key)
    # The multipliers matter: the untouched-by-groups optimizer lands elsewhere.
    plain = run_optax(optim_config("adamw", grad_clip_norm=clip), params, grads, steps=5)
    assert np.abs(plain["tower/dense/kernel"] - ours["tower/dense/kernel"]).max() > 1e-2


def test_sgd_groups_match_torch_param_groups():
    rng = np.random.default_rng(1)
    params = make_params(rng)
    grads = random_grads(rng, params, steps=5, scale=1.0)
    config = optim_config("sgd", lr_multipliers=MULTIPLIERS, grad_clip_norm=0.0, weight_decay=0.05)
    ours = run_optax(config, params, grads, steps=5)

    def sgd(groups):
        for group in groups:
            group["weight_decay"] = config.weight_decay if group.pop("weight_decay_on") else 0.0
        return torch.optim.SGD(groups, momentum=config.momentum)

    reference = run_torch(sgd, params, grads, clip=0.0)
    for key, value in reference.items():
        # Reached: 9e-10 absolute; the parameters moved by 0.1.
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_multiplier_zero_is_exactly_a_freeze():
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), make_params(rng))
    grads = random_grads(rng, params, steps=3, scale=1.0)
    by_multiplier = make_optimizer(optim_config("adamw", lr_multipliers={"tower": 0}), 3)
    by_frozen = make_optimizer(optim_config("adamw", frozen=("tower",)), 3)
    state_m, state_f = by_multiplier.init(params), by_frozen.init(params)
    # No optimizer state at all for the frozen tower: Adam's moments cover the head only.
    moments = [x.shape for x in jax.tree.leaves(state_m) if x.ndim]
    assert sorted(moments) == sorted([(4, 2), (2,)] * 2)
    assert jax.tree.structure(state_m) == jax.tree.structure(state_f)
    p_m = p_f = params
    for grad in grads:
        u_m, state_m = by_multiplier.update(grad, state_m, p_m)
        u_f, state_f = by_frozen.update(grad, state_f, p_f)
        p_m, p_f = optax.apply_updates(p_m, u_m), optax.apply_updates(p_f, u_f)
    for key, value in flat(p_m).items():
        np.testing.assert_array_equal(value, flat(p_f)[key])
    np.testing.assert_array_equal(
        p_m["tower"]["dense"]["kernel"], params["tower"]["dense"]["kernel"]
    )
    assert not np.array_equal(p_m["head"]["kernel"], params["head"]["kernel"])


def test_a_prefix_matching_no_parameter_is_an_error_naming_it():
    params = make_params(np.random.default_rng(3))
    tx = make_optimizer(optim_config("adamw", lr_multipliers={"towr": 0.1}), 3)
    with pytest.raises(
        ValueError, match=r"optim.lr_multipliers prefix 'towr'.*\['head', 'tower'\]"
    ):
        tx.init(params)
    tx = make_optimizer(optim_config("adamw", frozen=("tower/dense/w",)), 3)
    with pytest.raises(ValueError, match=r"optim.frozen prefix 'tower/dense/w'"):
        tx.init(params)
    with pytest.raises(ValueError, match=r"optim.lr_multipliers\['tower'\] = -1"):
        make_optimizer(optim_config("adamw", lr_multipliers={"tower": -1}), 3)
    with pytest.raises(ValueError, match=r"'tower' multiplier 0.0 but optim.lr_multipliers"):
        make_optimizer(optim_config("adamw", lr_multipliers={"tower": 0.5}, frozen=("tower",)), 3)
