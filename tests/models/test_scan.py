"""Scanned layers and rematerialisation change the parameter layout and the memory, never the
numbers: outputs and gradients equal the per-layer model's, and checkpoints convert."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmm import convert
from jaxmm.models import create_model
from jaxmm.models.layers import REMAT_POLICIES
from jaxmm.models.scan import match_layout, stack_layers, unstack_layers
from tests.models.tiny_inputs import tiny_inputs

# (registry name, overrides that scan every transformer stack of the model)
SCANNED = {
    "vit_test": dict(scan_layers=True),
    "text_transformer_test": dict(scan_layers=True),
    "clip_test": dict(image=dict(scan_layers=True), text=dict(scan_layers=True)),
    # Swin scans each stage's (unshifted, shifted) pairs.
    "swin_test": dict(scan_layers=True),
}


def _init(name, **overrides):
    model = create_model(name, **overrides)
    return model, nn.unbox(model.init(jax.random.PRNGKey(0), *tiny_inputs(name)))


def assert_gradients_close(got, expected):
    """Equal up to float32 rounding: summing terms of the largest gradient's magnitude in
    another order moves a result by ~1e-7 of that magnitude, whatever its own size."""
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(expected))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6 * scale)


def _loss(model, inputs):
    def loss(params):
        leaves = jax.tree.leaves(model.apply({"params": params}, *inputs))
        return sum(jnp.sum(jnp.sin(3 * x)) for x in leaves)

    return loss


@pytest.mark.parametrize("name", sorted(SCANNED))
def test_scanned_model_equals_per_layer_model(name):
    inputs = tiny_inputs(name)
    plain, variables = _init(name)
    scanned, scanned_init = _init(name, **SCANNED[name])
    stacked = stack_layers(variables)
    # The stacked tree has exactly the scanned model's structure and shapes.
    chex.assert_trees_all_equal_shapes_and_dtypes(stacked, scanned_init)
    chex.assert_trees_all_close(
        scanned.apply(stacked, *inputs), plain.apply(variables, *inputs), atol=1e-6
    )
    grads = jax.grad(_loss(plain, inputs))(variables["params"])
    scanned_grads = jax.grad(_loss(scanned, inputs))(stacked["params"])
    assert_gradients_close(unstack_layers(scanned_grads), grads)


def test_scanned_parameters_carry_the_layers_axis():
    model = create_model("vit_test", scan_layers=True)
    boxed = model.init(jax.random.PRNGKey(0), *tiny_inputs("vit_test"))
    kernel = boxed["params"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert kernel.names == ("layers", "embed", "mlp")
    assert kernel.value.shape[0] == model.depth


@pytest.mark.parametrize("remat", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_policies_keep_gradients(remat, scan_layers):
    inputs = tiny_inputs("vit_test")
    base, variables = _init("vit_test", scan_layers=scan_layers)
    remat_model = create_model("vit_test", scan_layers=scan_layers, remat=remat)
    expected = jax.grad(_loss(base, inputs))(variables["params"])
    got = jax.jit(jax.grad(_loss(remat_model, inputs)))(variables["params"])
    assert_gradients_close(got, expected)


def test_unknown_remat_policy_is_named():
    with pytest.raises(ValueError, match="'sometimes'"):
        _init("vit_test", remat="sometimes")
    assert "offload_dots" in REMAT_POLICIES


def test_match_layout_converts_each_tower_its_own_way():
    """A CLIP that scans only its text tower: the image tower keeps `block_i`."""
    _, variables = _init("clip_test")
    _, target = _init("clip_test", text=dict(scan_layers=True))
    matched = match_layout(variables, target)
    chex.assert_trees_all_equal_shapes(matched, target)
    assert "block_0" in matched["params"]["image_tower"]["encoder"]
    back = match_layout(matched, variables)
    chex.assert_trees_all_equal(back, jax.tree.map(np.asarray, variables))


@pytest.mark.parametrize("name", ["vit_test", "clip_test", "swin_test"])
def test_converters_speak_the_per_layer_layout_for_scanned_models(name):
    """`to_torch` of scanned variables equals `to_torch` of the same per-layer ones, and
    `from_torch` into a scanned model returns the stacked layout."""
    _, variables = _init(name)
    overrides = SCANNED[name]
    state_dict = convert.to_torch(name, variables)
    scanned_state = convert.to_torch(name, stack_layers(variables), **overrides)
    assert scanned_state.keys() == state_dict.keys()
    for key in state_dict:
        np.testing.assert_array_equal(scanned_state[key], state_dict[key], err_msg=key)
    restored = convert.from_torch(name, state_dict, **overrides)
    chex.assert_trees_all_equal(restored, stack_layers(jax.tree.map(np.asarray, variables)))


def test_swin_pairs_stack_even_blocks_as_unshifted_and_odd_as_shifted():
    _, variables = _init("swin_test", depths=(4, 2), num_heads=(2, 4))
    stage = stack_layers(variables)["params"]["layers_0_blocks"]
    per_layer = variables["params"]
    for j in range(4):
        role = ("unshifted", "shifted")[j % 2]
        np.testing.assert_array_equal(
            stage[role]["attn"]["qkv"]["kernel"][j // 2],
            per_layer[f"layers_0_blocks_{j}"]["attn"]["qkv"]["kernel"],
        )
    chex.assert_trees_all_equal(unstack_layers(stack_layers(variables)), variables)


def test_scanned_swin_stochastic_depth_draws_per_block():
    """Train mode with drop-path rates fed through the scan: some samples keep both branches
    of a block dropped and some not, and evaluation ignores the rates."""
    model = create_model("swin_test", scan_layers=True, drop_path_rate=0.9, num_classes=0)
    images = np.repeat(tiny_inputs("swin_test")[0][:1], 16, axis=0)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), images))
    evaluated = model.apply(variables, images)
    chex.assert_trees_all_close(evaluated, jnp.broadcast_to(evaluated[:1], evaluated.shape))
    trained = model.apply(variables, images, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    distinct = np.unique(np.round(np.asarray(trained), 5), axis=0)
    assert 1 < len(distinct) < len(images)


def test_swin_scan_needs_even_stage_depths():
    with pytest.raises(ValueError, match="stage 0 has 3 blocks"):
        _init("swin_test", scan_layers=True, depths=(3, 2))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_swin_remat_keeps_gradients(scan_layers):
    inputs = tiny_inputs("swin_test")
    base, variables = _init("swin_test", scan_layers=scan_layers)
    remat_model = create_model("swin_test", scan_layers=scan_layers, remat="full")
    expected = jax.grad(_loss(base, inputs))(variables["params"])
    got = jax.jit(jax.grad(_loss(remat_model, inputs)))(variables["params"])
    assert_gradients_close(got, expected)
