"""CLIP ViT parity with open_clip's `CLIP` (OpenAI layout) through `jaxmm.convert`.

open_clip models are built with random weights (no downloads) and every parameter is
perturbed with `randomise_`. Image embeddings, text embeddings and the image->text logits
are compared in fp32 by relative error max|jax - torch| / max|torch|; one training step
compares the InfoNCE loss with open_clip's `ClipLoss` and the gradient of every parameter.
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
from jaxmm.losses import clip_infonce_loss  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from tests.parity.reference import randomise_, relative_error  # noqa: E402

# `create_model('clip_test')` twin: ViT 32 wide, 2 layers, 2 heads, patch 8 at 32x32; text
# 32 wide, 2 layers, 2 heads, context 16, vocabulary 512; MLPs twice the width.
TINY_VISION = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2)
TINY_TEXT = dict(context_length=16, vocab_size=512, width=32, heads=2, layers=2, mlp_ratio=2)
# open_clip's non-OpenAI models use exact GELU: jaxmm's `activation` is a tower field.
EXACT_GELU = dict(image=dict(activation="gelu"), text=dict(activation="gelu"))


def tiny_open_clip(quick_gelu: bool = True, **kwargs) -> torch.nn.Module:
    model = open_clip.model.CLIP(
        32,
        open_clip.model.CLIPVisionCfg(**TINY_VISION),
        open_clip.model.CLIPTextCfg(**TINY_TEXT),
        quick_gelu=quick_gelu,
        **kwargs,
    )
    return randomise_(model)


def inputs(batch: int, size: int, context: int, vocab: int, seed: int = 0):
    """NHWC images and token ids: SOT-like start, random words, EOT (the largest id), zeros."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3), np.float32)
    tokens = np.zeros((batch, context), np.int32)
    for row, length in enumerate(rng.integers(2, context + 1, batch)):
        tokens[row, : length - 1] = rng.integers(1, vocab - 1, length - 1)
        tokens[row, length - 1] = vocab - 1
    return images, tokens


def torch_outputs(model: torch.nn.Module, images: np.ndarray, tokens: np.ndarray):
    """open_clip's normalised image and text features and the logit scale (exponentiated)."""
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    return model(nchw, torch.from_numpy(tokens).long())


def assert_matches(name, reference, state_dict, images, tokens, **overrides) -> list[float]:
    """Converts `state_dict` (of `reference`) and compares embeddings and logits."""
    variables = from_torch(name, state_dict, **overrides)
    out = jax.jit(create_model(name, **overrides).apply)(variables, images, tokens)
    with torch.no_grad():
        image_ref, text_ref, scale_ref = (
            t.numpy() for t in torch_outputs(reference, images, tokens)
        )
    logits = np.exp(out.logit_scale) * out.image_embeddings @ out.text_embeddings.T
    errors = [
        relative_error(out.image_embeddings, image_ref),
        relative_error(out.text_embeddings, text_ref),
        relative_error(logits, scale_ref * image_ref @ text_ref.T),
    ]
    assert max(errors) <= 1e-5, errors
    return errors


@pytest.mark.parametrize(
    "quick_gelu, overrides",
    [
        # Reached (image, text, logits): 2.4e-7, 4.0e-7, 1.8e-6 on CPU.
        pytest.param(True, {}, id="openai-quick_gelu"),
        # Reached 2.1e-7, 3.7e-7, 3.9e-7 on CPU.
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
    reference = tiny_open_clip().train()
    images, tokens = inputs(8, 32, 16, 512, seed=1)
    image_ref, text_ref, scale_ref = torch_outputs(reference, images, tokens)
    loss_ref = open_clip.loss.ClipLoss()(image_ref, text_ref, scale_ref)
    loss_ref.backward()

    model = create_model("clip_test")

    def loss_fn(params):
        out = model.apply({"params": params}, images, tokens, train=True)
        return clip_infonce_loss(out.image_embeddings, out.text_embeddings, out.logit_scale)

    params = from_torch("clip_test", reference.state_dict())["params"]
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    # Reached 0.0 on CPU.
    assert relative_error(loss, loss_ref.item()) <= 1e-5
    grads_torch = to_torch("clip_test", {"params": grads})
    named = dict(reference.named_parameters())
    assert set(grads_torch) == set(named)
    errors = {key: relative_error(grads_torch[key], named[key].grad) for key in named}
    # Worst reached: 2.5e-6 (transformer.resblocks.0.ln_2.weight); median 1.3e-6, on CPU.
    assert max(errors.values()) <= 1e-5, max(errors.items(), key=lambda kv: kv[1])


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
