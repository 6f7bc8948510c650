"""Swin Transformer (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows"), timm layout.

Matches timm's `timm/models/swin_transformer.py` (`SwinTransformer`, checked against timm 1.0.31):
- Patch embedding: a `patch_size` stride-`patch_size` conv with bias, then LayerNorm.
- Stages keep NHWC maps; stages 1.. start with `PatchMerging` (timm 1.x puts the downsample at
  the *start* of a stage; the original code put it at the end of the previous one).
- Blocks are pre-LN: `x + attn(ln(x))`, `x + mlp(ln(x))`; self-attention runs inside
  non-overlapping `window x window` windows with a learned relative position bias per head,
  and every odd block cyclically shifts the map by `window // 2` first (`roll(-s)`, attention,
  `roll(+s)`), masking pairs of tokens that the roll brought together from far apart (-100).
- When a stage's resolution is no larger than the window, the window shrinks to the
  resolution and the block does not shift (timm's `_calc_window_shift`). Maps not divisible by
  the window are zero-padded at the bottom/right after the shift, as timm does.
- LayerNorm eps 1e-5 (PyTorch's default, unlike timm's ViT), exact GELU, final LayerNorm,
  global average pool, then the `head` classifier; `num_classes=0` returns the pooled, normed
  features `[B, embed_dim * 2**(stages - 1)]`.

Input: NHWC float images `[B, H, W, 3]`, H and W divisible by `patch_size`. The sizes of the
relative position bias tables follow the image size wherever a stage's resolution is smaller
than the window (as timm's tables follow `img_size`), so initialise with the image size you
will run at; at `patch_size * window_size * 2**(stages - 1)` or larger every table has its
full `(2 * window - 1)**2` rows.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import linen as nn

from jaxmm.models.layers import (
    DenseNd,
    DropPath,
    MlpBlock,
    classifier_head,
    dot_product_attention,
    layer_norm,
    rematerialised,
    scanned_stack,
)

Dtype = Any
Pair = tuple[int, int]

# timm's shifted-window mask value: large enough to vanish under softmax, not -inf.
_MASK_VALUE = -100.0


def window_and_shift(resolution: Pair, window: int, shifted: bool) -> tuple[Pair, Pair]:
    """A block's `(window, shift)` per axis for a `[H, W]` map (timm's `_calc_window_shift`).

    A side no larger than the window becomes the window and is not shifted: one window then
    covers that side, and a roll would only wrap it around onto itself.
    """
    windows = tuple(min(side, window) for side in resolution)
    shifts = tuple(0 if side <= window or not shifted else window // 2 for side in resolution)
    return windows, shifts


def relative_position_index(window: Pair) -> np.ndarray:
    """`[N, N]` row of the bias table for each query/key pair of a window, N = wh * ww.

    Rows are ordered by (dy, dx), each offset shifted to start at 0, as in timm.
    """
    wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    dy, dx = coords[:, :, None] - coords[:, None, :]  # [N, N] each
    return (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)


def shifted_window_mask(padded: Pair, window: Pair, shift: Pair) -> np.ndarray:
    """Additive attention mask `[num_windows, N, N]`: 0 within a region, -100 across regions.

    After `roll(-shift)` the last `shift` rows/columns hold tokens from the opposite border;
    the map (padding included) is cut into up to 3 x 3 regions by those borders and tokens
    attend only within their own region. The slices are timm's, including its behaviour for a
    zero shift on one axis (the third slice then covers the whole axis).
    """
    labels = np.zeros(padded, np.int32)
    (wh, ww), (sh, sw) = window, shift
    rows = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None))
    cols = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None))
    for label, (row, col) in enumerate(itertools.product(rows, cols)):
        labels[row, col] = label
    windows = rearrange(labels, "(h p) (w q) -> (h w) (p q)", p=wh, q=ww)  # [nW, N]
    different = windows[:, None, :] != windows[:, :, None]  # [nW, N, N]
    return np.where(different, _MASK_VALUE, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, plus a relative position bias per head.

    `[B * nW, N, C]` (N = wh * ww tokens per window) -> `[B * nW, N, C]`.
    """

    num_heads: int
    window: Pair
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads
        qkv = DenseNd(
            features=(3, self.num_heads, head_dim),
            kernel_axes=("embed", "qkv", "heads", "kv"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="qkv",
        )(x)  # [B', N, 3, H, Dh]
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B', N, H, Dh] each

        wh, ww = self.window
        table = self.param(
            "relative_position_bias_table",
            nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), (None, "heads")),
            ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
            self.param_dtype,
        )
        bias = rearrange(table[relative_position_index(self.window)], "q k h -> h q k")
        if mask is not None:
            # Windows run image-major, so window w of every image sits at index b * nW + w:
            # split that axis so the [nW, N, N] mask broadcasts over the images.
            split = lambda t: rearrange(t, "(b w) n h d -> b w n h d", w=mask.shape[0])
            query, key, value = split(query), split(key), split(value)
            bias = bias + jnp.asarray(mask)[:, None]  # [nW, H, N, N]
        attended = dot_product_attention(
            query,
            key,
            value,
            bias=bias,
            implementation=self.attention_impl,
            pad_multiple=self.attention_pad_multiple,
        )
        attended = attended.reshape(qkv.shape[:2] + attended.shape[-2:])  # [B', N, H, Dh]
        return DenseNd(
            features=(width,),
            kernel_axes=("heads", "kv", "embed"),
            num_in_axes=2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )(attended)


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each pre-LN and residual: `[B, H, W, C]` -> same.

    `drop_path` at call time (a scanned stage's per-block rate) replaces the field.
    """

    num_heads: int
    window_size: int
    shifted: bool
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, drop_path=None) -> jax.Array:
        rate = self.drop_path if drop_path is None else drop_path
        batch, height, width, channels = x.shape
        window, shift = window_and_shift((height, width), self.window_size, self.shifted)
        ln = lambda name: layer_norm(1e-5, self.dtype, self.param_dtype, name)

        y = jnp.roll(ln("norm1")(x), (-shift[0], -shift[1]), axis=(1, 2))
        # Pad bottom/right to whole windows after the shift, as timm does; padding is cut off
        # again before the reverse shift.
        padded = (height + -height % window[0], width + -width % window[1])
        y = jnp.pad(y, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)))
        y = rearrange(y, "b (h p) (w q) c -> (b h w) (p q) c", p=window[0], q=window[1])
        mask = shifted_window_mask(padded, window, shift) if any(shift) else None
        y = WindowAttention(
            self.num_heads,
            window,
            self.attention_impl,
            self.attention_pad_multiple,
            self.dtype,
            self.param_dtype,
            name="attn",
        )(y, mask)  # [B * nW, N, C]
        y = rearrange(
            y, "(b h w) (p q) c -> b (h p) (w q) c", b=batch, h=padded[0] // window[0], p=window[0]
        )
        y = jnp.roll(y[:, :height, :width], shift, axis=(1, 2))
        x = x + DropPath(name="drop_path1")(y, rate, train=train)

        tokens = rearrange(x, "b h w c -> b (h w) c")  # the MLP's constraints expect [B, L, C]
        y = MlpBlock(
            int(channels * self.mlp_ratio), "gelu", self.dtype, self.param_dtype, name="mlp"
        )(ln("norm2")(tokens))
        y = rearrange(y, "b (h w) c -> b h w c", h=height)
        return x + DropPath(name="drop_path2")(y, rate, train=train)


class SwinBlockPair(nn.Module):
    """A window block and its shifted twin, the unit a scanned stage repeats:
    `(x [B, H, W, C], rates [2]) -> (x, None)` (`nn.scan`'s carry and output)."""

    block: dict  # SwinBlock fields but `shifted`
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, rates: jax.Array):
        for k, role in enumerate(PAIR_ROLES):
            block = SwinBlock(**self.block, shifted=role == "shifted", name=role)
            x = block(x, self.train, rates[k])
        return x, None


# Names of a scanned pair's blocks; `jaxmm.models.scan` stacks `layers_{i}_blocks_{2k}` under
# the first and `layers_{i}_blocks_{2k+1}` under the second.
PAIR_ROLES = ("unshifted", "shifted")


class PatchMerging(nn.Module):
    """2x2 neighbourhoods to channels, LayerNorm, bias-free Linear: `[B, H, W, C]` ->
    `[B, ceil(H / 2), ceil(W / 2), 2C]` (odd sides are zero-padded first, as in timm)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)))
        # Channel order x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]: the column
        # offset `j` is the outer one (timm's permute(0, 1, 3, 4, 2, 5)).
        x = rearrange(x, "b (h i) (w j) c -> b h w (j i c)", i=2, j=2)  # [B, H/2, W/2, 4C]
        x = layer_norm(1e-5, self.dtype, self.param_dtype, "norm")(x)
        return nn.Dense(
            2 * channels,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(), ("embed", None)
            ),
            name="reduction",
        )(x)


class SwinTransformer(nn.Module):
    """Swin classifier: `[B, H, W, 3]` -> logits `[B, num_classes]` (features if 0).

    Attributes:
        patch_size: side of the square patches embedded by the stem.
        embed_dim: channels of the first stage; doubled by each patch merging.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention windows (shrunk where a stage is smaller).
        mlp_ratio: MLP hidden width over the block width.
        drop_path_rate: stochastic depth rate of the last block, rising linearly from 0 at the
            first (timm's schedule); train mode only, with the `'dropout'` rng.
        num_classes: classifier outputs; 0 returns the pooled features.
        output_tokens: with `num_classes=0`, the normalised last-stage tokens `[B, h * w, C]`
            instead of their average.
    """

    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    output_tokens: bool = False
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    # One `nn.scan` over each stage's (unshifted, shifted) pairs; needs even depths.
    scan_layers: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _scanned_stage(self, x, stage: int, block: dict, rates: list[float], train: bool):
        """Stage `stage` as `nn.scan` over its `depth / 2` (unshifted, shifted) pairs."""
        if len(rates) % 2:
            raise ValueError(
                f"scan_layers pairs a stage's blocks, but stage {stage} has {len(rates)} blocks"
            )
        pair = rematerialised(SwinBlockPair, self.remat, scanned=True)
        stack = scanned_stack(pair, len(rates) // 2, in_axes=(0,))
        pair_rates = jnp.asarray(rates, jnp.float32).reshape(-1, 2)  # [depth / 2, 2]
        x, _ = stack(block, train, name=f"layers_{stage}_blocks")(x, pair_rates)
        return x

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        height, width = images.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch size {self.patch_size}"
            )
        if self.output_tokens and self.num_classes:
            raise ValueError("output_tokens=True returns features: it needs num_classes=0")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"{len(self.depths)} stage depths but {len(self.num_heads)} heads")
        ln = lambda name: layer_norm(1e-5, self.dtype, self.param_dtype, name)

        p = self.patch_size
        x = nn.Conv(
            self.embed_dim,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("patch_h", "patch_w", "channels", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="patch_embed",
        )(images.astype(self.dtype))  # [B, H / P, W / P, D]
        x = ln("patch_embed_norm")(x)

        rates = iter(np.linspace(0, self.drop_path_rate, sum(self.depths)).tolist())
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            if i > 0:
                x = PatchMerging(self.dtype, self.param_dtype, name=f"layers_{i}_downsample")(x)
            stage_rates = [next(rates) for _ in range(depth)]
            block = dict(
                num_heads=heads,
                window_size=self.window_size,
                mlp_ratio=self.mlp_ratio,
                attention_impl=self.attention_impl,
                attention_pad_multiple=self.attention_pad_multiple,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            if self.scan_layers:
                x = self._scanned_stage(x, i, block, stage_rates, train)
            else:
                # `train` is positional: `nn.remat` keeps it static by position.
                layer = rematerialised(SwinBlock, self.remat, scanned=False, static_argnums=(2,))
                for j, rate in enumerate(stage_rates):
                    x = layer(
                        **block, shifted=j % 2 == 1, drop_path=rate, name=f"layers_{i}_blocks_{j}"
                    )(x, train)
            x = nn.with_logical_constraint(x, ("batch", None, None, "act_embed"))

        x = ln("norm")(x)
        if self.output_tokens:
            return x.reshape(x.shape[0], -1, x.shape[-1])  # [B, h * w, C], row-major
        x = x.mean(axis=(1, 2))  # [B, embed_dim * 2**(stages - 1)]
        if not self.num_classes:
            return x
        return classifier_head(self.num_classes, self.dtype, self.param_dtype, "head")(x)


# Swin-T/S/B from Section 3.3 of the Swin paper: C = 96/96/128, depths 2-2-6-2 / 2-2-18-2,
# heads 3-6-12-24 / 4-8-16-32, window 7, patch 4; timm's `swin_{tiny,small,base}_patch4_window7_224`
# (whose constructor defaults to drop_path_rate=0.1; the paper trains T/S/B with 0.2/0.3/0.5).
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    # Tiny variant for tests, at 32x32: stage 0 is 8x8 with shifted 4x4 windows (masked),
    # then patch merging to 4x4, no larger than the window, so stage 1 does not shift.
    "swin_test": dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=10),
}
