"""Swin Transformer parity with timm's `SwinTransformer` through `jaxmm.convert`.

timm models are built with random weights (no downloads), then every parameter is perturbed
(`randomise_`): LayerNorm weights init to 1 and biases to 0, and a mapping that swaps or drops
those would still pass on fresh weights. Outputs are compared in fp32 on the same images (NHWC
for jax, NCHW for torch) by relative error max|jax - torch| / max|torch|.

timm's constructor defaults to `drop_path_rate=0.1` (jaxmm: 0), so the references set it to 0:
eval mode ignores it, but the train-mode gradient check needs a deterministic forward pass.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install 'jaxmm[parity]'")
timm = pytest.importorskip("timm", reason="parity tests need timm: pip install 'jaxmm[parity]'")

from jaxmm.convert import from_torch, to_torch  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from tests.parity.reference import randomise_, relative_error  # noqa: E402

# A third stage for the 40x40 case; `swin_test` itself has two.
THREE_STAGES = dict(depths=(2, 2, 2), num_heads=(2, 4, 8))


def tiny_timm_swin(img_size: int = 32, num_classes: int = 10, **overrides) -> torch.nn.Module:
    """The timm twin of `create_model('swin_test', num_classes=..., **overrides)`."""
    config = {"depths": (2, 2), "num_heads": (2, 4), **overrides}
    torch.manual_seed(0)  # the constructor's init draws from the global generator
    model = timm.models.swin_transformer.SwinTransformer(
        img_size=img_size, patch_size=4, embed_dim=32, window_size=4, num_classes=num_classes,
        drop_path_rate=0.0, **config,
    )  # fmt: skip
    return randomise_(model)


@functools.cache
def swin_test_apply(**overrides):
    """`jax.jit(model.apply)` for `swin_test` with `overrides`, shared by the tests.

    Eager Flax dispatches (and compiles) every op on its own: 3x slower here than one jit.
    """
    return jax.jit(create_model("swin_test", **overrides).apply)


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())


def torch_outputs(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(nchw(images_nhwc)).numpy()


def windows_and_shifts(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(window, shift) of every timm block, stage by stage (square maps here)."""
    return [
        (block.window_size[0], block.shift_size[0])
        for stage in model.layers
        for block in stage.blocks
    ]


@pytest.mark.parametrize(
    "size, overrides, structure",
    [
        # 8x8 map, 4x4 windows: block 1 shifts by 2 (masked); merging to 4x4, no larger than
        # the window, so stage 1 keeps window 4 and does not shift.
        pytest.param(32, {}, [(4, 0), (4, 2), (4, 0), (4, 0)], id="shift-merge-noshift"),
        # 10x10 map: padded to 12x12 after the shift (mask over the padded map); 5x5 shifts and
        # pads too; merging 5x5 pads to 6x6; the 3x3 stage shrinks its window (and bias table).
        pytest.param(
            40, THREE_STAGES, [(4, 0), (4, 2), (4, 0), (4, 2), (3, 0), (3, 0)], id="pad-shrink"
        ),
    ],
)
def test_tiny_swin_logits_match_timm(size, overrides, structure):
    reference = tiny_timm_swin(size, **overrides)
    assert windows_and_shifts(reference) == structure  # the cases cover what they claim
    variables = from_torch("swin_test", reference.state_dict(), **overrides)
    x = images(3, size)
    logits = swin_test_apply(**overrides)(variables, x)
    # Reached 2.9e-7 (shift-merge-noshift) and 2.1e-7 (pad-shrink) on CPU.
    assert relative_error(logits, torch_outputs(reference, x)) <= 1e-5


@pytest.mark.parametrize("num_classes", [10, 0], ids=["head", "headless"])
def test_round_trip_is_exact(num_classes):
    state_dict = tiny_timm_swin(num_classes=num_classes).state_dict()
    # `relative_position_index` and `attn_mask` are non-persistent buffers: not in the dict.
    assert not [key for key in state_dict if key.endswith(("_index", "attn_mask"))]
    back = to_torch(
        "swin_test", from_torch("swin_test", state_dict, num_classes=num_classes),
        num_classes=num_classes,
    )  # fmt: skip
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_flax_weights_load_strictly_into_timm():
    """Weights changed on the Flax side go back into a fresh timm model and give its logits."""
    variables = from_torch("swin_test", tiny_timm_swin().state_dict())
    rng = np.random.default_rng(3)
    variables = jax.tree.map(
        lambda a: a + 0.05 * rng.standard_normal(a.shape, np.float32), variables
    )
    reference = tiny_timm_swin()
    state_dict = to_torch("swin_test", variables)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    x = images(3, 32, seed=1)
    logits = swin_test_apply()(variables, x)
    # Reached 2.1e-7 on CPU.
    assert relative_error(logits, torch_outputs(reference, x)) <= 1e-5


def test_features_without_head():
    reference = tiny_timm_swin(num_classes=0)  # timm: pooled output of the final norm
    variables = from_torch("swin_test", reference.state_dict(), num_classes=0)
    x = images(2, 32)
    features = swin_test_apply(num_classes=0)(variables, x)
    assert features.shape == (2, 64)
    # Reached 1.6e-7 on CPU.
    assert relative_error(features, torch_outputs(reference, x)) <= 1e-5


def test_mismatched_state_dict_lists_every_problem():
    state_dict = dict(tiny_timm_swin().state_dict())
    del state_dict["layers.1.downsample.reduction.weight"]
    state_dict["layers.0.downsample.reduction.weight"] = torch.zeros(64, 128)  # pre-timm-1.x
    state_dict["layers.0.blocks.1.attn.relative_position_bias_table"] = torch.zeros(49, 3)
    with pytest.raises(ValueError) as info:
        from_torch("swin_test", state_dict)
    message = str(info.value)
    assert "missing keys" in message and "layers.1.downsample.reduction.weight" in message
    assert "unexpected keys" in message and "layers.0.downsample.reduction.weight" in message
    assert (
        "layers.0.blocks.1.attn.relative_position_bias_table: expected (49, 2), got (49, 3)"
        in message
    )


def test_tiny_train_step_gradients_match_timm():
    """Loss and every parameter gradient of one train-mode cross-entropy step, in fp32.

    The relative position bias is a gather from the table, so its gradient is a scatter-add
    over repeated indices: easy to get subtly wrong, and checked here with everything else.
    """
    reference = tiny_timm_swin(40, **THREE_STAGES).train()
    x, labels = images(4, 40, seed=2), np.array([1, 4, 7, 9])
    loss_t = torch.nn.functional.cross_entropy(reference(nchw(x)), torch.from_numpy(labels))
    loss_t.backward()
    grads_t = from_torch(
        "swin_test", {name: p.grad for name, p in reference.named_parameters()}, **THREE_STAGES
    )["params"]

    model = create_model("swin_test", **THREE_STAGES)
    params = from_torch("swin_test", reference.state_dict(), **THREE_STAGES)["params"]

    def loss_fn(params):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss_j, grads_j = jax.jit(jax.value_and_grad(loss_fn))(params)
    # Reached 0.0 (loss, the same fp32 value) on CPU.
    assert abs(float(loss_j) - loss_t.item()) / abs(loss_t.item()) <= 1e-5
    errors = jax.tree_util.tree_leaves_with_path(jax.tree.map(relative_error, grads_j, grads_t))
    worst = max(errors, key=lambda item: item[1])
    # Reached at most 1.2e-6 over all parameter gradients (the bias table of
    # layers_0_blocks_1, the shifted and padded block) on CPU.
    assert worst[1] <= 1e-5, worst


@pytest.mark.slow
def test_swin_t_224_logits_match_timm():
    torch.manual_seed(0)
    reference = randomise_(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    x = images(2, 224)
    variables = from_torch("swin_t", reference.state_dict())
    logits = jax.jit(create_model("swin_t").apply)(variables, x)
    # Reached 4.3e-7 on CPU.
    assert relative_error(logits, torch_outputs(reference, x)) <= 1e-5
