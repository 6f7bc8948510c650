"""PyTorch peers of the benchmarked jaxmm models, and their training step.

Each peer is built from the jaxmm module's own fields, so both sides train the same
architecture at the same sizes (and share one FLOP count, `benchmarks/flops.py`):
- `ResNet` -> torchvision `ResNet`, `MobileNetV2` -> torchvision `MobileNetV2`;
- `VisionTransformer` -> timm `VisionTransformer`, `SwinTransformer` -> timm `SwinTransformer`;
- `CLIP` with ViT towers -> transformers `CLIPModel`, its `CLIPConfig` written out from the
  towers' sizes (nothing is downloaded).
The step is what people run: bf16 autocast (with `dtype='bfloat16'`), AdamW (`fused=True` on
CUDA), channels_last memory for the CNNs, optionally `torch.compile` on the model (the fused
optimizer step stays eager). FLOPs are never counted here: torch's FlopCounterMode installs
global module hooks that make `torch.compile` silently fall back to eager.

torch, torchvision, timm and transformers are imported only by the peer that needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flax import linen as nn

from jaxmm.models.clip import CLIP
from jaxmm.models.mobilenet import MobileNetV2
from jaxmm.models.resnet import ResNet
from jaxmm.models.swin import SwinTransformer
from jaxmm.models.vit import VisionTransformer

# The optimizer both sides use (train_step.py builds the same one in optax).
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)


class PeerUnavailable(Exception):
    """The jaxmm model has no faithful PyTorch peer (the message says which field)."""


def _require(condition: bool, model: nn.Module, reason: str) -> None:
    if not condition:
        raise PeerUnavailable(f"{type(model).__name__}: {reason}")


def _torchvision_resnet(model: ResNet, image_size: int) -> torch.nn.Module:
    from torchvision.models import resnet

    _require(model.width == 64, model, f"torchvision fixes width 64, got width={model.width}")
    _require(model.stem == "imagenet", model, f"torchvision has no stem={model.stem!r}")
    block = {"basic": resnet.BasicBlock, "bottleneck": resnet.Bottleneck}[model.block]
    return resnet.ResNet(block, list(model.stage_sizes), num_classes=model.num_classes)


def _torchvision_mobilenet_v2(model: MobileNetV2, image_size: int) -> torch.nn.Module:
    from torchvision.models import MobileNetV2 as TorchMobileNetV2

    return TorchMobileNetV2(
        num_classes=model.num_classes,
        width_mult=model.width_mult,
        inverted_residual_setting=[list(stage) for stage in model.stages],
        dropout=model.dropout,
    )


_TIMM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def _timm_vit(model: VisionTransformer, image_size: int) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    _require(model.stem == "patch", model, f"timm has no stem={model.stem!r}")
    _require(model.activation in _TIMM_ACTIVATIONS, model, f"activation={model.activation!r}")
    return TimmViT(
        img_size=image_size,
        patch_size=model.patch_size,
        embed_dim=model.width,
        depth=model.depth,
        num_heads=model.num_heads,
        mlp_ratio=model.mlp_dim / model.width,
        num_classes=model.num_classes,
        class_token=model.pool == "cls",
        global_pool="token" if model.pool == "cls" else "avg",
        pre_norm=model.pre_norm,
        act_layer=_TIMM_ACTIVATIONS[model.activation],
    )


def _timm_swin(model: SwinTransformer, image_size: int) -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    return TimmSwin(
        img_size=image_size,
        patch_size=model.patch_size,
        embed_dim=model.embed_dim,
        depths=tuple(model.depths),
        num_heads=tuple(model.num_heads),
        window_size=model.window_size,
        mlp_ratio=model.mlp_ratio,
        num_classes=model.num_classes,
        drop_path_rate=model.drop_path_rate,
    )


def _transformers_clip(model: CLIP, image_size: int) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    image, text = model.image_tower, model.text_tower
    _require(isinstance(image, VisionTransformer), model, "the image tower is not a ViT")
    _require(
        image.pool == "cls" and image.pre_norm and image.stem == "patch" and not image.patch_bias,
        model,
        "transformers' CLIPModel has OpenAI's ViT layout only (cls pool, ln_pre, no patch bias)",
    )
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=image.width,
            intermediate_size=image.mlp_dim,
            num_hidden_layers=image.depth,
            num_attention_heads=image.num_heads,
            image_size=image_size,
            patch_size=image.patch_size,
            hidden_act=image.activation,
            layer_norm_eps=image.layer_norm_eps,
        ),
        text_config=dict(
            vocab_size=text.vocab_size,
            hidden_size=text.width,
            intermediate_size=text.mlp_dim,
            num_hidden_layers=text.depth,
            num_attention_heads=text.num_heads,
            max_position_embeddings=text.context_length,
            hidden_act=text.activation,
            layer_norm_eps=text.layer_norm_eps,
            # Pool at the EOT token, the largest id, as jaxmm's text tower does; SOT is the
            # one below it (OpenAI's 49406 and 49407), which keeps both in small vocabularies.
            bos_token_id=text.vocab_size - 2,
            eos_token_id=text.vocab_size - 1,
        ),
        projection_dim=model.embed_dim,
    )
    return CLIPModel(config)


_BUILDERS: dict[type[nn.Module], Callable[[Any, int], torch.nn.Module]] = {
    ResNet: _torchvision_resnet,
    MobileNetV2: _torchvision_mobilenet_v2,
    VisionTransformer: _timm_vit,
    SwinTransformer: _timm_swin,
    CLIP: _transformers_clip,
}
_CONVNETS = (ResNet, MobileNetV2)


def build_peer(model: nn.Module, image_size: int) -> torch.nn.Module:
    """The PyTorch twin of a jaxmm model (randomly initialised).

    Raises:
        PeerUnavailable: no builder for the model's class, or a field the peer cannot mirror.
    """
    builder = _BUILDERS.get(type(model))
    if builder is None:
        raise PeerUnavailable(f"no PyTorch peer for {type(model).__name__}")
    return builder(model, image_size)


@dataclasses.dataclass
class PeerStep:
    """A ready training step on a batch already on the device.

    Attributes:
        step: runs one step (forward, backward, AdamW) and waits for it to finish.
        peak_memory_bytes: the device's peak allocation since the step was built (None on CPU).
        device: the device's name.
    """

    step: Callable[[], None]
    peak_memory_bytes: Callable[[], int | None]
    device: str


def make_peer_step(
    model: nn.Module,
    batch: dict[str, np.ndarray],
    *,
    image_size: int,
    bfloat16: bool,
    compile_model: bool,
) -> PeerStep:
    """The peer's training step on `batch` (`image` `[B, H, W, 3]` float32 and `label` `[B]`
    or `tokens` `[B, L]` int32), copied to the device once."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # jax runs float32 matmuls as TF32 on NVIDIA cards by default; torch needs telling.
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True
    peer = build_peer(model, image_size).to(device).train()
    memory_format = torch.channels_last if isinstance(model, _CONVNETS) else torch.contiguous_format
    peer = peer.to(memory_format=memory_format)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
    images = images.to(device).contiguous(memory_format=memory_format)
    optimizer = torch.optim.AdamW(peer.parameters(), **ADAMW, fused=device.type == "cuda")
    forward = torch.compile(peer) if compile_model else peer

    if isinstance(model, CLIP):
        tokens = torch.from_numpy(batch["tokens"]).long().to(device)

        def loss_fn() -> torch.Tensor:
            return forward(input_ids=tokens, pixel_values=images, return_loss=True).loss

    else:
        labels = torch.from_numpy(batch["label"]).long().to(device)

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.cross_entropy(forward(images), labels)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def peak_memory_bytes() -> int | None:
        return torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return PeerStep(step, peak_memory_bytes, name)


def versions() -> dict[str, str]:
    """Versions of torch and of whichever model libraries are installed."""
    found = {"torch": torch.__version__}
    for name in ("torchvision", "timm", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            continue
    return found
