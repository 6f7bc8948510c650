"""ModifiedResNet (CLIP's ResNet image tower) parity with open_clip through `jaxmm.convert`.

open_clip's `ModifiedResNet` is built with random weights (no downloads) and `randomise_`d, so
no BatchNorm statistic or bias keeps its constant init; embeddings are compared in fp32 by
relative error max|jax - torch| / max|torch|, in eval mode and in train mode (batch statistics
and the updated running statistics, which torch folds in with the unbiased variance). The CLIP
built on it is compared on embeddings and logits (tiny, RN101's real image tower with one text
layer, full RN50) and on one InfoNCE training step in train mode.
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install 'jaxmm[parity]'")
open_clip = pytest.importorskip(
    "open_clip", reason="parity tests need open_clip: pip install 'jaxmm[parity]'"
)

from jaxmm.convert import from_torch, to_torch  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from tests.parity.clip_reference import (  # noqa: E402
    assert_matches,
    inputs,
    reduced_open_clip,
    training_step_errors,
    worst,
)
from tests.parity.reference import randomise_, relative_error  # noqa: E402

# Two blocks in stage 1 (a block without shortcut conv), 64 px so the pool sees a 2x2 map
# (5 tokens: a mean token distinct from the single position a 32 px image would leave).
TINY = dict(stage_sizes=(2, 1, 1, 1), image_size=64, num_classes=0)


def tiny_open_clip_tower() -> torch.nn.Module:
    """The open_clip twin of `create_model('modified_resnet_test', **TINY)`."""
    torch.manual_seed(0)  # the constructor's init draws from the global generator
    tower = open_clip.modified_resnet.ModifiedResNet(
        layers=[2, 1, 1, 1], output_dim=32, heads=4, image_size=64, width=8
    )
    return randomise_(tower)


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())


def test_tiny_eval_embeddings_match_open_clip():
    reference = tiny_open_clip_tower()
    variables = from_torch("modified_resnet_test", reference.state_dict(), **TINY)
    x = images(2, 64)
    actual = create_model("modified_resnet_test", **TINY).apply(variables, x)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()
    assert actual.shape == (2, 32)
    # Reached 5.4e-7 on CPU.
    assert relative_error(actual, expected) <= 1e-5


def test_tiny_train_mode_matches_open_clip():
    reference = tiny_open_clip_tower()
    variables = from_torch("modified_resnet_test", reference.state_dict(), **TINY)
    x = images(4, 64, seed=1)
    actual, updates = create_model("modified_resnet_test", **TINY).apply(
        variables, x, train=True, mutable=["batch_stats"]
    )
    trained = copy.deepcopy(reference).train()
    with torch.no_grad():
        expected = trained(nchw(x)).numpy()
    # Reached 1.1e-6 on CPU.
    assert relative_error(actual, expected) <= 1e-5
    updated = to_torch("modified_resnet_test", {**variables, **updates}, **TINY)
    state = trained.state_dict()
    stats = [key for key in state if key.endswith(("running_mean", "running_var"))]
    errors = {key: relative_error(updated[key], state[key].numpy()) for key in stats}
    # Reached at most 9.5e-8 (layer4.0.downsample.1.running_mean).
    assert max(errors.values()) <= 1e-5, max(errors.items(), key=lambda item: item[1])


def test_round_trip_is_bit_exact():
    state_dict = tiny_open_clip_tower().state_dict()
    back = to_torch(
        "modified_resnet_test", from_torch("modified_resnet_test", state_dict, **TINY), **TINY
    )
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_wrong_state_dict_lists_every_problem():
    state_dict = dict(tiny_open_clip_tower().state_dict())
    del state_dict["layer1.1.bn2.running_var"]
    state_dict["layer5.0.conv1.weight"] = torch.zeros(1)
    # A 32 px checkpoint's positional embedding: 1 + 1 positions instead of 1 + 4.
    state_dict["attnpool.positional_embedding"] = torch.zeros(2, 256)
    with pytest.raises(ValueError) as info:
        from_torch("modified_resnet_test", state_dict, **TINY)
    message = str(info.value)
    assert "missing keys" in message and "layer1.1.bn2.running_var" in message
    assert "unexpected keys" in message and "layer5.0.conv1.weight" in message
    assert "attnpool.positional_embedding: expected (5, 256), got (2, 256)" in message


def test_wrong_image_size_is_a_clear_error():
    model = create_model("modified_resnet_test")  # 32 px
    with pytest.raises(ValueError, match="positional embedding is for 32x32"):
        model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))


@pytest.mark.slow
def test_rn50_eval_embeddings_match_open_clip():
    torch.manual_seed(0)
    reference = randomise_(
        open_clip.modified_resnet.ModifiedResNet(layers=[3, 4, 6, 3], output_dim=1024, heads=32)
    )
    variables = from_torch("modified_resnet50", reference.state_dict())
    x = images(2, 224)
    actual = jax.jit(create_model("modified_resnet50").apply)(variables, x)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()
    assert actual.shape == (2, 1024)
    # Reached 7.3e-7 on CPU.
    assert relative_error(actual, expected) <= 1e-5


def tiny_open_clip(image_size: int = 32) -> torch.nn.Module:
    """`clip_rn_test`'s twin; open_clip derives 4 heads as width * 32 / head_width (64)."""
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=[1, 1, 1, 1], width=8, image_size=image_size
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=16, vocab_size=512, width=32, heads=2, layers=2, mlp_ratio=2.0
        ),
        quick_gelu=True,
    )
    return randomise_(reference)


def test_tiny_clip_matches_open_clip():
    reference = tiny_open_clip()
    x, ids = inputs(2, 32, 16, 512)
    # Reached (image, text, logits): 6.1e-7, 5.6e-7, 2.9e-6 on CPU.
    assert_matches("clip_rn_test", reference, reference.state_dict(), x, ids)


def test_tiny_clip_training_step_matches_open_clip():
    # 64 px: the attention pool sees a 2x2 map, and every BatchNorm more than one value per image.
    images, tokens = inputs(8, 64, 16, 512, seed=1)
    # The key bias adds q . b to all of a query's logits alike, which softmax ignores: its
    # gradient is zero (torch's rounding noise reached 2e-8 beside 7e-2 for the key weights).
    zero_grads = ("visual.attnpool.k_proj.bias",)
    errors = training_step_errors(
        "clip_rn_test", tiny_open_clip(64), images, tokens, zero_grads, image={"image_size": 64}
    )
    # Reached 0.0 on CPU.
    assert errors.loss <= 1e-5, errors.loss
    # Worst reached: 4.3e-6 (visual.conv2.weight), median 1.3e-6, key bias 4.8e-9, on CPU.
    assert max(errors.grads.values()) <= 1e-5, worst(errors.grads)
    assert len(errors.running_stats) == 2 * 19  # 3 stem + 4 x 3 block + 4 shortcut BatchNorms
    # Worst reached: 6.9e-8 (visual.layer1.0.bn2.running_mean).
    assert max(errors.running_stats.values()) <= 1e-5, worst(errors.running_stats)


def test_rn101_one_text_layer_matches_open_clip():
    """RN101's real image tower (stages (3, 4, 23, 3), width 64, 32 heads, embedding 512, 224
    px) and its real text tower's widths, context and vocabulary, with one text layer."""
    reference = reduced_open_clip("clip_rn101", text_layers=1)
    x, ids = inputs(2, 224, 77, 49408)
    # Reached (image, text, logits): 6.3e-7, 1.3e-6, 3.8e-7 on CPU.
    assert_matches("clip_rn101", reference, reference.state_dict(), x, ids, text={"depth": 1})


@pytest.mark.slow
def test_clip_rn50_matches_open_clip():
    # OpenAI's RN50 weights use QuickGELU in the text tower (open_clip's `RN50` means nn.GELU).
    torch.manual_seed(0)
    reference = randomise_(open_clip.create_model("RN50-quickgelu", pretrained=None))
    x, ids = inputs(2, 224, 77, 49408)
    # Reached (image, text, logits): 4.8e-7, 1.4e-6, 4.1e-6 on CPU.
    assert_matches("clip_rn50", reference, reference.state_dict(), x, ids)
