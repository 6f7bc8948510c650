"""Fusion classifiers: an image tower and a text tower joined to answer questions about images
(VQA) or to classify image+text pairs.

`FusionClassifier` holds the two towers as CLIP does (`image_tower`, `text_tower`, with the
parameter trees of `jaxmm.models.clip.CLIP`'s towers, so a CLIP run's or OpenAI's tower weights
load into them) and one of three fusions, its parameters under the fusion's name:

- `concat`: late fusion of the pooled features, as the Concat baselines of the Hateful Memes
  benchmark (Kiela et al. 2020): each side layer-normed and projected to `hidden_dim`,
  concatenated, then Dense(hidden_dim) -> GELU -> dropout -> classifier.
- `bilinear`: low-rank bilinear pooling of the pooled features.
  With `bilinear_factors=1` it is MLB (Kim et al. 2017, "Hadamard Product for Low-rank Bilinear
  Pooling", section 3: `f = P^T (tanh(U^T x) * tanh(V^T y)) + b`, without the paper's
  attention over image regions); the rank r is `bilinear_rank`.
  With `bilinear_factors=k > 1` it is MFB (Yu et al. 2017, "Multi-modal Factorized Bilinear
  Pooling", section 3.1): linear projections to `k * o`, their element-wise product, dropout,
  sum pooling over each group of k consecutive factors to o = `bilinear_rank`, power
  normalisation `sign(z) sqrt|z|` and L2 normalisation, then the classifier; as the paper
  (and its reference code) MFB's projections have no tanh. Both apply dropout to the
  element-wise product, MFB's place for it (MLB's code drops the projections' inputs).
- `xattn`: two-stream cross-attention, the co-attention of ViLBERT (Lu et al. 2019) and the
  cross-modality encoder of LXMERT (Tan and Bansal 2019). Each tower's tokens are layer-normed
  and projected to `hidden_dim`; each of `num_layers` layers is a `CrossAttentionBlock` in
  which the text tokens self-attend under their padding mask and then attend to the image
  tokens; with `co_attention` the image tokens are updated symmetrically in the same layer
  (self-attention, then attention to the text with its padding hidden), both streams reading
  the other's previous layer as LXMERT does. Pooling: the text tokens' masked mean
  (`text_pool='mean'`) or their EOT token (`'eot'`), joined by the image tokens' mean under
  co-attention, then the same MLP and classifier as `concat`. The blocks order their
  sublayers self -> cross -> MLP (the Transformer decoder's order); LXMERT puts cross first.
- `image_only`, `text_only`: the baselines that show what fusion buys: `concat`'s MLP on one
  tower's pooled features (the other tower is built, so its weights still load, but unused).

Positions and types: a ViT's tokens already carry its learned positional embedding and the text
tower's its own, so neither gets another. The tokens of towers without an absolute position
embedding (ResNet's feature map, Swin's last stage) get a learned one, `[1, N, hidden_dim]` for
the N tokens of the image size the model is initialised at (as ViT's is), added after their
projection (`image_positions=None` decides this; True/False forces it). `'sincos'` adds the
fixed 2D sine-cosine embedding instead, for any tower: a CLIP tower trained on centred single
objects with random crops carries little position, and a learned embedding starting at
std 0.02 next to unit-scale features took longer than a CPU run to matter. The two streams never
share a sequence (each attention knows which side its keys come from), so no type embedding is
needed.

Text padding: the text tower is causal and pools at EOT (the largest id); the valid positions
here are SOT..EOT, which equals `tokens != 0` for the tokenizers' zero padding and also ignores
anything written after EOT, so a question's logits never depend on its padding.

Inputs: NHWC float images `[B, H, W, 3]` and int token ids `[B, L]`; output logits
`[B, num_classes]` in the compute dtype. Token ids `[B, Q, L]` ask Q questions of each image:
the image tower runs once per image and the logits are `[B, Q, num_classes]`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmm.models.clip import CLIP_VIT_STYLE, l2_normalize
from jaxmm.models.layers import ACTIVATIONS, CrossAttentionBlock, classifier_head, layer_norm
from jaxmm.models.positions import sincos_for_tokens
from jaxmm.models.vit import VisionTransformer

Dtype = Any

FUSIONS = ("concat", "bilinear", "xattn", "image_only", "text_only")
TEXT_POOLS = ("mean", "eot")
IMAGE_POSITIONS = ("none", "learned", "sincos")
# Image towers whose tokens already carry an absolute position embedding.
_POSITIONED_TOWERS: tuple[type[nn.Module], ...] = (VisionTransformer,)


def text_mask(tokens: jax.Array) -> jax.Array:
    """`[B, L]` ids -> `[B, L]` bool, True at SOT..EOT (EOT is the largest id, as in
    `jaxmm.models.text`)."""
    eot = jnp.argmax(tokens, axis=-1)  # [B]
    return jnp.arange(tokens.shape[-1])[None, :] <= eot[:, None]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """`[B, L, D]` tokens, `[B, L]` bool -> `[B, D]` mean over the True positions."""
    weights = mask.astype(x.dtype)[..., None]  # [B, L, 1]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


def mfb_pool(z: jax.Array, factors: int, eps: float = 1e-12) -> jax.Array:
    """MFB's pooling of a joint vector (Yu et al. 2017, section 3.1), in float32.

    `[B, o * k]` -> `[B, o]`: sum of each k consecutive entries, then `sign(z) sqrt|z|` and
    L2 normalisation. The square root is taken of `max(|z|, eps)`: its gradient at 0 is
    infinite, and `sign(0) = 0` keeps the value there exactly 0.
    """
    z = z.astype(jnp.float32).reshape(*z.shape[:-1], -1, factors).sum(axis=-1)  # [B, o]
    z = jnp.sign(z) * jnp.sqrt(jnp.maximum(jnp.abs(z), eps))
    return l2_normalize(z)


def _dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
    """A Dense into a fusion width: its kernel split like an MLP's (`embed` x `mlp`)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ("embed", "mlp")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
        name=name,
    )


def _pooled_constraint(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("batch", "act_embed"))


def _tokens_constraint(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))


class ClassifierMlp(nn.Module):
    """`[B, D]` -> Dense(hidden_dim) -> GELU -> dropout -> logits `[B, num_classes]`."""

    hidden_dim: int
    num_classes: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = ACTIVATIONS["gelu"](_dense(self.hidden_dim, self.dtype, self.param_dtype, "fc")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier_head(self.num_classes, self.dtype, self.param_dtype, "classifier")(x)


class ConcatFusion(nn.Module):
    """Pooled features by name (`image` `[B, Di]`, `text` `[B, Dt]`; one of them for the
    single-modality baselines) -> logits `[B, num_classes]`."""

    hidden_dim: int
    num_classes: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, sides: dict[str, jax.Array], *, train: bool) -> jax.Array:
        def side(x: jax.Array, name: str) -> jax.Array:
            # The towers' features differ in scale (a ViT's are normed, a ResNet's are not).
            x = layer_norm(1e-5, self.dtype, self.param_dtype, f"{name}_norm")(x)
            return _dense(self.hidden_dim, self.dtype, self.param_dtype, f"{name}_proj")(x)

        x = jnp.concatenate([side(x, name) for name, x in sides.items()], axis=-1)  # [B, k hidden]
        x = _pooled_constraint(x)
        mlp = ClassifierMlp(
            self.hidden_dim,
            self.num_classes,
            self.dropout,
            self.dtype,
            self.param_dtype,
            name="mlp",
        )
        return mlp(x, train=train)


class BilinearFusion(nn.Module):
    """MLB (`factors=1`) or MFB (`factors>1`) pooling of image `[B, Di]` and text `[B, Dt]`
    features -> logits `[B, num_classes]` (see the module docstring for the equations)."""

    rank: int
    num_classes: int
    factors: int = 1
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array, text: jax.Array, *, train: bool) -> jax.Array:
        if self.factors < 1:
            raise ValueError(f"bilinear_factors must be >= 1, got {self.factors}")
        width = self.rank * self.factors
        u = _dense(width, self.dtype, self.param_dtype, "image_proj")(image)  # [B, r k]
        v = _dense(width, self.dtype, self.param_dtype, "text_proj")(text)  # [B, r k]
        if self.factors == 1:
            u, v = jnp.tanh(u), jnp.tanh(v)  # MLB's nonlinearity on both sides
        z = nn.Dropout(self.dropout, deterministic=not train)(u * v)  # [B, r k]
        if self.factors > 1:
            z = mfb_pool(z, self.factors).astype(self.dtype)  # [B, r]
        z = _pooled_constraint(z)
        return classifier_head(self.num_classes, self.dtype, self.param_dtype, "classifier")(z)


class CrossAttentionFusion(nn.Module):
    """Two-stream cross-attention over image tokens `[B, N, Di]` and text tokens `[B, L, Dt]`
    -> logits `[B, num_classes]` (see the module docstring)."""

    width: int
    num_layers: int
    num_heads: int
    num_classes: int
    mlp_ratio: int = 4
    co_attention: bool = False
    text_pool: str = "mean"
    image_positions: str = "none"
    dropout: float = 0.0
    attention_impl: str | None = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, image: jax.Array, text: jax.Array, tokens: jax.Array, *, train: bool
    ) -> jax.Array:
        def ln(name: str) -> nn.LayerNorm:
            return layer_norm(1e-5, self.dtype, self.param_dtype, name)

        def project(x: jax.Array, name: str) -> jax.Array:
            # Normed first: a ResNet's tokens are not, a ViT's and the text's already are.
            return _dense(self.width, self.dtype, self.param_dtype, name)(ln(f"{name}_norm")(x))

        image = project(image, "image_proj")  # [B, N, W]
        if self.image_positions == "sincos":
            image = image + sincos_for_tokens(image.shape[1], self.width).astype(self.dtype)
        elif self.image_positions == "learned":
            positions = self.param(
                "image_pos_embed",
                nn.with_logical_partitioning(
                    nn.initializers.normal(stddev=0.02), (None, "length", "embed")
                ),
                (1, image.shape[1], self.width),
                self.param_dtype,
            )
            image = image + positions.astype(self.dtype)
        text = project(text, "text_proj")  # [B, L, W]
        image, text = _tokens_constraint(image), _tokens_constraint(text)

        valid = text_mask(tokens)  # [B, L]
        block = lambda name: CrossAttentionBlock(  # noqa: E731
            self.num_heads,
            self.mlp_ratio * self.width,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        for index in range(self.num_layers):
            # Both streams read the other's previous layer (LXMERT's simultaneous update).
            attended = block(f"text_block_{index}")(text, image, mask=valid[:, None, None, :])
            if self.co_attention:
                image = block(f"image_block_{index}")(image, text, context_mask=valid)
            text = attended

        text = ln("text_final_norm")(text)
        if self.text_pool == "eot":
            pooled = text[jnp.arange(text.shape[0]), jnp.argmax(tokens, axis=-1)]  # [B, W]
        else:
            pooled = masked_mean(text, valid)  # [B, W]
        if self.co_attention:
            image_pooled = ln("image_final_norm")(image).mean(axis=1)  # [B, W]
            pooled = jnp.concatenate([pooled, image_pooled], axis=-1)  # [B, 2W]
        pooled = _pooled_constraint(pooled)
        mlp = ClassifierMlp(
            self.width, self.num_classes, self.dropout, self.dtype, self.param_dtype, name="mlp"
        )
        return mlp(pooled, train=train)


def _check_tower(fusion: str, role: str, tower: nn.Module) -> None:
    """Raises if `tower` does not give what `fusion` reads: tokens for xattn, else pooled."""
    gives_tokens = getattr(tower, "output_tokens", None)
    kind = type(tower).__name__
    if fusion == "xattn" and gives_tokens is None:
        towers = "a ViT, Swin or ResNet image tower" if role == "image" else "the text tower"
        raise ValueError(
            f"fusion='xattn' attends to {role} tokens, but the {role} tower {kind} cannot "
            f"return them (it has no output_tokens); use fusion='concat' or 'bilinear', or "
            f"{towers}"
        )
    if fusion == "xattn" and not gives_tokens:
        raise ValueError(f"fusion='xattn' needs the {role} tower {kind} with output_tokens=True")
    if fusion != "xattn" and gives_tokens:
        raise ValueError(
            f"fusion={fusion!r} reads pooled features: build the {role} tower {kind} with "
            "output_tokens=False"
        )


class FusionClassifier(nn.Module):
    """`(images [B, H, W, 3], tokens [B, L])` -> logits `[B, num_classes]`.

    Attributes:
        image_tower: a registry image model with `num_classes=0`; with `output_tokens=True`
            for `xattn`.
        text_tower: the text Transformer; with `output_tokens=True` for `xattn`.
        fusion: 'concat', 'bilinear', 'xattn', or a baseline 'image_only' / 'text_only'
            (the module docstring).
        num_classes: answers or classes; 3,129 is the usual VQA v2 answer vocabulary (the
            answers given more than 8 times in training, Anderson et al. 2018); a trainer sizes
            it to its dataset.
        hidden_dim: `concat`'s projections and MLP; `xattn`'s token width and MLP.
        dropout: before the classifier (on the element-wise product for `bilinear`).
        num_layers, num_heads, mlp_ratio: `xattn`'s blocks (block MLP `mlp_ratio * hidden_dim`).
        co_attention: `xattn` also updates the image tokens from the text.
        text_pool: `xattn`'s text pooling, 'mean' (masked) or 'eot'.
        image_positions: what `xattn` adds to the projected image tokens: 'learned' (True)
            a learned position embedding, 'sincos' the fixed 2D sine-cosine one (at full
            strength from the first step), 'none' (False) nothing; None: 'learned' unless
            the tower is a ViT (whose tokens carry their own).
        bilinear_rank, bilinear_factors: `bilinear`'s joint width r (MLB) or o (MFB), and
            MFB's k (1 = MLB).
        attention_impl: the fusion blocks' attention (`jaxmm.models.layers`); the towers'
            is theirs.
    """

    image_tower: nn.Module
    text_tower: nn.Module
    fusion: str = "concat"
    num_classes: int = 3129
    hidden_dim: int = 512
    dropout: float = 0.1
    num_layers: int = 2
    num_heads: int = 8
    mlp_ratio: int = 4
    co_attention: bool = False
    text_pool: str = "mean"
    image_positions: bool | str | None = None
    bilinear_rank: int = 1200  # MLB's d for VQA (Kim et al. 2017)
    bilinear_factors: int = 1
    attention_impl: str | None = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        # At construction, so `create_model` fails before any tracing.
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.image_positions not in (None, True, False, *IMAGE_POSITIONS):
            raise ValueError(
                f"image_positions must be one of {IMAGE_POSITIONS} (or a bool, or None), "
                f"got {self.image_positions!r}"
            )
        if self.text_pool not in TEXT_POOLS:
            raise ValueError(f"text_pool must be one of {TEXT_POOLS}, got {self.text_pool!r}")
        _check_tower(self.fusion, "image", self.image_tower)
        _check_tower(self.fusion, "text", self.text_tower)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        # `train` reaches the towers, so the trainer can run a frozen tower in inference mode.
        image = self.image_tower(images, train=train)  # [B, Di] or [B, N, Di]
        if tokens.ndim == 3:
            # Q questions per image [B, Q, L]: the image is encoded once and its features
            # repeated for each question, the costly part of a VQA step shared.
            batch, questions = tokens.shape[:2]
            image = jnp.repeat(image, questions, axis=0)  # [B Q, ...]
            logits = self._fuse(image, tokens.reshape(batch * questions, -1), train)
            return logits.reshape(batch, questions, -1)
        return self._fuse(image, tokens, train)

    def _fuse(self, image: jax.Array, tokens: jax.Array, train: bool) -> jax.Array:
        """Image features `[B, Di]` or `[B, N, Di]`, tokens `[B, L]` -> logits `[B, classes]`."""
        text = self.text_tower(tokens, train=train)  # [B, Dt] or [B, L, Dt]
        common = dict(
            num_classes=self.num_classes,
            dropout=self.dropout,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=self.fusion,
        )
        if self.fusion == "concat":
            return ConcatFusion(self.hidden_dim, **common)(
                dict(image=image, text=text), train=train
            )
        if self.fusion in ("image_only", "text_only"):
            side = self.fusion.removesuffix("_only")
            features = dict(image=image, text=text)[side]
            return ConcatFusion(self.hidden_dim, **common)({side: features}, train=train)
        if self.fusion == "bilinear":
            fusion = BilinearFusion(self.bilinear_rank, factors=self.bilinear_factors, **common)
            return fusion(image, text, train=train)
        image_positions = self.image_positions
        if image_positions is None:
            image_positions = not isinstance(self.image_tower, _POSITIONED_TOWERS)
        if isinstance(image_positions, bool):
            image_positions = "learned" if image_positions else "none"
        fusion = CrossAttentionFusion(
            self.hidden_dim,
            self.num_layers,
            self.num_heads,
            mlp_ratio=self.mlp_ratio,
            co_attention=self.co_attention,
            text_pool=self.text_pool,
            image_positions=image_positions,
            attention_impl=self.attention_impl,
            **common,
        )
        return fusion(image, text, tokens, train=train)


# Image tower (registry name, overrides), text tower (registry name, overrides), fusion fields.
# The towers are those of a CLIP entry or config, so its weights load into them.
FUSION_VARIANTS: dict[str, dict[str, Any]] = {
    # clip_test's towers.
    "fusion_test": dict(
        image_tower="vit_test",
        image=CLIP_VIT_STYLE,
        text_tower="text_transformer_test",
        fusion="xattn",
        num_classes=10,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        bilinear_rank=32,
    ),
    # The towers of configs/clip_small.py (clip_test with its `model.image`/`model.text`).
    "fusion_small": dict(
        image_tower="vit_test",
        image=dict(
            CLIP_VIT_STYLE,
            patch_size=8,
            width=128,
            depth=4,
            num_heads=4,
            mlp_dim=256,
            pool="gap",
            stem="conv",
        ),
        text_tower="text_transformer_test",
        text=dict(context_length=32, width=128, depth=2, num_heads=4, mlp_dim=256),
        fusion="xattn",
        co_attention=True,
        hidden_dim=128,
        num_layers=2,
        num_heads=4,
        bilinear_rank=256,
    ),
    # clip_vit_b32's towers (OpenAI's weights load); LXMERT's cross-modality encoder size
    # (5 layers, 768 wide, 12 heads) and MLB's rank.
    "fusion_clip_vit_b32": dict(
        image_tower="vit_b32",
        image=CLIP_VIT_STYLE,
        text_tower="text_transformer",
        fusion="xattn",
        co_attention=True,
        hidden_dim=768,
        num_layers=5,
        num_heads=12,
        bilinear_rank=1200,
    ),
}
