"""Position embeddings for grids of image tokens: fixed 2D sine-cosine embeddings, and the
resampling of a learned ViT embedding to another grid size."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> jax.Array:
    """Fixed 2D sine-cosine embeddings of a `height x width` grid, `[height * width, dim]`
    in row-major token order (MoCo v3, Chen et al. 2021; MAE; timm's
    `build_sincos2d_pos_embed`).

    A quarter of `dim` each: sin(y w), sin(x w), cos(y w), cos(x w) for the frequencies
    `w_i = temperature ** (-i / (dim / 4))`, y and x the token's row and column.
    """
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = temperature ** (-jnp.arange(quarter, dtype=jnp.float32) / quarter)  # [D/4]
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    angles = jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1)[..., None] * frequencies
    # angles [N, 2, D/4] -> [sin y, sin x, cos y, cos x]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1).reshape(-1, dim)


def resample_position_embedding(pos_embed: jax.Array, num_tokens: int) -> jax.Array:
    """A ViT's learned position embedding `[1, (1 +) N, D]` for another square token grid.

    Loading a tower trained at one image size into a model at another (a CLIP image tower
    trained at 32 px read at 64 px, fine-tuning at a higher resolution, Dosovitskiy et al.
    2021, section 3.2) changes the number of patch tokens. The grid of embeddings is resized
    bilinearly with half-pixel centres (PyTorch's `interpolate(mode='bilinear',
    align_corners=False)`, no antialiasing); a leading class-token embedding is kept as is.

    Args:
        pos_embed: `[1, T, D]`, T a square number of patches, or one more with a class token.
        num_tokens: the target T, square (or a square plus one for the class token).

    Raises:
        ValueError: either count fits no square grid (with the same class-token prefix).
    """
    have = pos_embed.shape[1]
    layout, new_layout = grid_layout(have), grid_layout(num_tokens)
    if layout is None or new_layout is None or layout[0] != new_layout[0]:
        raise ValueError(
            f"cannot resample a position embedding of {have} tokens to {num_tokens}: "
            "neither fits a square grid of patches (with or without a class token)"
        )
    (prefix, side), new_side = layout, new_layout[1]
    width = pos_embed.shape[-1]
    head, grid = pos_embed[:, :prefix], pos_embed[:, prefix:].reshape(1, side, side, width)
    grid = jax.image.resize(
        grid.astype(jnp.float32), (1, new_side, new_side, width), "bilinear", antialias=False
    )
    grid = grid.reshape(1, new_side * new_side, width).astype(pos_embed.dtype)
    return jnp.concatenate([head, grid], axis=1)


def grid_layout(num_tokens: int) -> tuple[int, int] | None:
    """`(prefix, side)` when `num_tokens` is a square grid of `side x side` patch tokens after
    `prefix` (0, or 1 for a class token) leading ones; None when it is neither."""
    for prefix in (0, 1):
        count = num_tokens - prefix
        side = math.isqrt(count) if count > 0 else 0
        if side and side * side == count:
            return prefix, side
    return None


def sincos_for_tokens(num_tokens: int, dim: int) -> jax.Array:
    """`[num_tokens, dim]` `sincos_2d` embeddings of a square token grid; a leading class
    token gets zeros."""
    if (layout := grid_layout(num_tokens)) is None:
        raise ValueError(f"sine-cosine positions need a square grid of tokens, got {num_tokens}")
    prefix, side = layout
    return jnp.concatenate([jnp.zeros((prefix, dim)), sincos_2d(side, side, dim)])
