"""CLIP ViT parity with open_clip's `CLIP` (OpenAI layout) through `jaxmm.convert`.

open_clip models are built with random weights (no downloads) and every parameter is
perturbed with `randomise_`. Image embeddings, text embeddings and the image->text logits
are compared in fp32 by relative error max|jax - torch| / max|torch|; one training step
compares the InfoNCE loss with open_clip's `ClipLoss` and the gradient of every parameter.
The variant table is checked against the JSON configs open_clip ships, B/16 and L/14 run at
their real widths, heads, patch and image sizes with one layer per tower, and checkpoints that
store `logit_scale`/`logit_bias` as `[1]` convert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install 'jaxmm[parity]'")
open_clip = pytest.importorskip("open_clip", reason="parity tests need open_clip_torch")

from jaxmm.convert import from_torch, load_state_dict, to_torch  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from tests.parity.clip_reference import (  # noqa: E402
    OPEN_CLIP_NAMES,
    assert_matches,
    inputs,
    open_clip_config,
    reduced_open_clip,
    training_step_errors,
    worst,
)
from tests.parity.reference import randomise_  # noqa: E402

# `create_model('clip_test')` twin: ViT 32 wide, 2 layers, 2 heads, patch 8 at 32x32; text
# 32 wide, 2 layers, 2 heads, context 16, vocabulary 512; MLPs twice the width.
TINY_VISION = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2)
TINY_TEXT = dict(context_length=16, vocab_size=512, width=32, heads=2, layers=2, mlp_ratio=2)
# open_clip's non-OpenAI models use exact GELU: jaxmm's `activation` is a tower field.
EXACT_GELU = dict(image=dict(activation="gelu"), text=dict(activation="gelu"))


def tiny_open_clip(quick_gelu: bool = True, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)  # the constructor's init draws from the global generator
    model = open_clip.model.CLIP(
        32,
        open_clip.model.CLIPVisionCfg(**TINY_VISION),
        open_clip.model.CLIPTextCfg(**TINY_TEXT),
        quick_gelu=quick_gelu,
        **kwargs,
    )
    return randomise_(model)


@pytest.mark.parametrize(
    "quick_gelu, overrides",
    [
        # Reached (image, text, logits): 2.7e-7, 5.5e-7, 7.4e-7 on CPU.
        pytest.param(True, {}, id="openai-quick_gelu"),
        # Reached 2.7e-7, 4.2e-7, 4.4e-7 on CPU.
        pytest.param(False, EXACT_GELU, id="open_clip-gelu"),
    ],
)
def test_tiny_clip_matches_open_clip(quick_gelu, overrides):
    images, tokens = inputs(4, 32, 16, 512)
    reference = tiny_open_clip(quick_gelu)
    assert_matches("clip_test", reference, reference.state_dict(), images, tokens, **overrides)


@pytest.mark.slow
def test_vit_b32_matches_open_clip():
    # OpenAI's weights run with QuickGELU: open_clip's `-quickgelu` config, jaxmm's default.
    reference = randomise_(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None))
    images, tokens = inputs(2, 224, 77, 49408)
    # Reached (image, text, logits): 8.1e-7, 1.3e-6, 7.9e-7 on CPU.
    assert_matches("clip_vit_b32", reference, reference.state_dict(), images, tokens)


def test_training_step_matches_open_clip():
    images, tokens = inputs(8, 32, 16, 512, seed=1)
    errors = training_step_errors("clip_test", tiny_open_clip(), images, tokens)
    # Reached 0.0 on CPU.
    assert errors.loss <= 1e-5, errors.loss
    # Worst reached: 2.3e-6 (transformer.resblocks.1.ln_1.bias); median 1.1e-6, on CPU.
    assert max(errors.grads.values()) <= 1e-5, worst(errors.grads)


def open_clip_fields(config: dict) -> dict:
    """jaxmm field values implied by an open_clip JSON config, through open_clip's own config
    dataclasses (for their defaults: head_width 64, mlp_ratio 4) and its tower-building rules."""
    vision = open_clip.model.CLIPVisionCfg(**config["vision_cfg"])
    text = open_clip.model.CLIPTextCfg(**config["text_cfg"])
    activation = "quick_gelu" if config.get("quick_gelu", False) else "gelu"
    if isinstance(vision.layers, (tuple, list)):
        # open_clip's `_build_vision_tower`: a ModifiedResNet whose attention pool has
        # width * 32 // head_width heads and maps to the embedding width.
        image = dict(
            stage_sizes=tuple(vision.layers),
            width=vision.width,
            num_heads=vision.width * 32 // vision.head_width,
            output_dim=config["embed_dim"],
            image_size=vision.image_size,
        )
    else:
        # The ViT tower has no image size field: its positional embedding takes the input's
        # (or, in `from_torch`, the checkpoint's) token count.
        image = dict(
            patch_size=vision.patch_size,
            width=vision.width,
            depth=vision.layers,
            num_heads=vision.width // vision.head_width,
            mlp_dim=int(vision.width * vision.mlp_ratio),
            activation=activation,
        )
    return dict(
        embed_dim=config["embed_dim"],
        image_tower=image,
        text_tower=dict(
            vocab_size=text.vocab_size,
            context_length=text.context_length,
            width=text.width,
            depth=text.layers,
            num_heads=text.heads,
            mlp_dim=int(text.width * text.mlp_ratio),
            activation=activation,
        ),
    )


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_NAMES))
def test_variant_matches_open_clip_config(name):
    expected = open_clip_fields(open_clip_config(OPEN_CLIP_NAMES[name]))
    model = create_model(name)
    actual = {
        "embed_dim": model.embed_dim,
        **{
            tower: {field: getattr(getattr(model, tower), field) for field in fields}
            for tower, fields in expected.items()
            if tower != "embed_dim"
        },
    }
    assert actual == expected


@pytest.mark.parametrize(
    "name",
    [
        # Reached (image, text, logits): 8.8e-7, 1.2e-6, 1.3e-6 on CPU.
        "clip_vit_b16",
        # Reached 1.6e-6, 1.6e-6, 1.8e-6 on CPU.
        "clip_vit_l14",
    ],
)
def test_reduced_depth_matches_open_clip(name):
    """The real architecture (widths, heads, MLP, patch, 224 px, context and vocabulary from
    open_clip's JSON) with one layer per tower, to keep the test to seconds."""
    reference = reduced_open_clip(name, vision_layers=1, text_layers=1)
    images, tokens = inputs(2, 224, 77, 49408)
    overrides = dict(image=dict(depth=1), text=dict(depth=1))
    assert_matches(name, reference, reference.state_dict(), images, tokens, **overrides)


def test_scalars_stored_as_vectors_convert():
    # SigLIP-style checkpoints and some open_clip exports store `logit_scale` and `logit_bias`
    # as `[1]`; this model has both.
    reference = tiny_open_clip(init_logit_bias=-10.0)
    state_dict = reference.state_dict()
    scalars = ("logit_scale", "logit_bias")
    vectors = {**state_dict, **{key: state_dict[key].reshape(1) for key in scalars}}
    images, tokens = inputs(2, 32, 16, 512)
    # Reached (image, text, logits with bias): 1.5e-7, 3.2e-7, 7.4e-8 on CPU.
    assert_matches("clip_test", reference, vectors, images, tokens, init_logit_bias=-10.0)
    back = to_torch(
        "clip_test", from_torch("clip_test", vectors, init_logit_bias=-10.0), init_logit_bias=-10.0
    )
    for key in scalars:
        # Back in open_clip's own layout, `[]`, with the same value.
        assert back[key].shape == () and back[key] == state_dict[key].item(), key


def test_wrongly_shaped_logit_scale_is_named():
    state_dict = {**tiny_open_clip().state_dict(), "logit_scale": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"logit_scale: expected \(\), got \(2,\)"):
        from_torch("clip_test", state_dict)


@pytest.mark.parametrize("logit_bias", [None, -10.0], ids=["clip", "siglip-bias"])
def test_round_trip_is_exact(logit_bias):
    reference = tiny_open_clip(init_logit_bias=logit_bias)
    state_dict = reference.state_dict()
    # open_clip's causal mask is a non-persistent buffer: not in the state dict.
    assert "attn_mask" not in state_dict
    variables = from_torch("clip_test", state_dict, init_logit_bias=logit_bias)
    back = to_torch("clip_test", variables, init_logit_bias=logit_bias)
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_round_trip_from_flax_init_is_exact():
    model = create_model("clip_test")
    images, tokens = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32)
    params = jax.device_get(nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), images, tokens)))
    state_dict = to_torch("clip_test", params)
    jax.tree.map(np.testing.assert_array_equal, from_torch("clip_test", state_dict), params)
    # The converted dict loads into open_clip's twin with strict key checking.
    tiny_open_clip().load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})


def test_mismatched_state_dict_lists_every_problem():
    state_dict = dict(tiny_open_clip().state_dict())
    del state_dict["visual.ln_post.bias"]
    state_dict["transformer.resblocks.5.ln_1.weight"] = torch.zeros(32)
    state_dict["text_projection"] = torch.zeros(32, 64)
    with pytest.raises(ValueError) as info:
        from_torch("clip_test", state_dict)
    message = str(info.value)
    assert "missing keys" in message and "visual.ln_post.bias" in message
    assert "unexpected keys" in message and "transformer.resblocks.5.ln_1.weight" in message
    assert "text_projection: expected (32, 32), got (32, 64)" in message


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".torchscript.pt"])
def test_load_checkpoint_file(tmp_path, suffix):
    reference = tiny_open_clip()
    path = tmp_path / f"clip{suffix}"
    if suffix == ".pt":
        # open_clip training checkpoints: {'state_dict': ...} saved from DistributedDataParallel.
        wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
        torch.save({"epoch": 1, "state_dict": wrapped}, path)
    elif suffix == ".safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")
        safetensors_torch.save_file(reference.state_dict(), str(path))
    else:
        # OpenAI's releases are TorchScript archives, which `weights_only` loading rejects.
        torch.jit.script(reference).save(str(path))
    images, tokens = inputs(2, 32, 16, 512)
    state_dict = load_state_dict(path)
    assert set(state_dict) == set(reference.state_dict())
    assert_matches("clip_test", reference, state_dict, images, tokens)
