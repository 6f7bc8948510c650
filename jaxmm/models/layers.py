"""Building blocks shared by the model families.

CNN pieces that reproduce PyTorch exactly: `BatchNorm` (torch's running-statistics rule) and
`adaptive_avg_pool` (`nn.AdaptiveAvgPool2d`'s bins), used by ResNet, AlexNet and VGG.

Pre-LayerNorm Transformer blocks as in ViT (Dosovitskiy et al. 2021) and CLIP
(Radford et al. 2021). Attention keeps q/k/v in one `DenseGeneral` whose kernel
is `[embed, 3, heads, head_dim]`: one matmul like PyTorch's fused `in_proj`/`qkv`
(a reshape converts between them), while the `heads` axis stays a separate
dimension that tensor parallelism can split.

Every parameter carries logical axis names (see `jaxmm.sharding`); activations
are constrained only at block boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
Initializer = Callable[..., jax.Array]


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's GELU approximation, `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch `nn.GELU()` (erf form); `jax.nn.gelu` defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_exact,
    "gelu_tanh": jax.nn.gelu,
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
}


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None):
    """LayerNorm with the two-pass variance PyTorch uses (tighter parity than Flax's fast one)."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class DenseNd(nn.Module):
    """A dense layer whose kernel keeps its N-D shape `[*in_dims, *features]`.

    Contracts the last `num_in_axes` axes of the input. Flax's `DenseGeneral` creates a
    flat kernel and reshapes it, which clashes with N-D logical sharding constraints.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    num_in_axes: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_dims = x.shape[x.ndim - self.num_in_axes :]
        in_axes = tuple(range(self.num_in_axes))
        out_axes = tuple(range(self.num_in_axes, self.num_in_axes + len(self.features)))
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(in_axis=in_axes, out_axis=out_axes),
                self.kernel_axes,
            ),
            (*in_dims, *self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(
                nn.initializers.zeros, self.kernel_axes[self.num_in_axes :]
            ),
            self.features,
            self.param_dtype,
        )
        x_axes = tuple(range(x.ndim - self.num_in_axes, x.ndim))
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype), ((x_axes, in_axes), ((), ()))
        )
        return y + bias.astype(self.dtype)


ATTENTION_IMPLEMENTATIONS = (None, "auto", "xla", "cudnn")
# What "auto" pads to when it picks cuDNN: its training kernels reject ViT's 197 tokens, and a
# multiple of 8 ran as fast as 64 with less memory on an H200 (BENCHMARKS.md).
_CUDNN_PAD_MULTIPLE = 8


def _cudnn_suits(query: jax.Array, bias: jax.Array | None, mask: jax.Array | None) -> bool:
    """Whether "auto" takes cuDNN's fused attention: on an NVIDIA GPU, in bf16/fp16, for the
    shapes measured to run and pay there (no bias or boolean mask; head dim a multiple of 8
    up to 128). Swin's biased windows and anything else stay on XLA."""
    device = jax.devices()[0]
    return (
        device.platform == "gpu"
        and "nvidia" in device.device_kind.lower()
        and query.dtype in (jnp.bfloat16, jnp.float16)
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 128
        and bias is None
        and mask is None
    )


def _pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    """Pads `axis` of `x` at its end up to `size` (an axis of size 1 broadcasts and stays)."""
    if x.shape[axis] in (1, size):
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _flatten_batch(x: jax.Array | None, batch_shape: tuple[int, ...]) -> jax.Array | None:
    """`[..., H, T, S]` broadcastable to `batch_shape + [H, T, S]` -> `[B', H, T, S]` with B'
    1 when `x` does not vary over the batch (so a shared bias is never copied per example)."""
    if x is None:
        return None
    x = x.reshape((1,) * (len(batch_shape) + 3 - x.ndim) + x.shape)
    if all(size == 1 for size in x.shape[: len(batch_shape)]):
        return x.reshape((1, *x.shape[-3:]))
    x = jnp.broadcast_to(x, (*batch_shape, *x.shape[-3:]))
    return x.reshape((-1, *x.shape[-3:]))


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: str | None = None,
    pad_multiple: int = 0,
) -> jax.Array:
    """The one attention of every jaxmm model: `softmax(scale * q k^T + bias) v` per head.

    Built on `jax.nn.dot_product_attention`, which keeps the logits and the softmax in
    float32 whatever the input dtype (bf16 loses the small probabilities that carry the
    gradient) and, with `implementation='cudnn'`, runs cuDNN's fused flash attention.

    Args:
        query: `[..., T, H, Dh]`; any number of leading batch axes (Swin's windows add one).
        key: `[..., S, H, Dh]`.
        value: `[..., S, H, Dh]`.
        bias: additive, broadcastable to `[..., H, T, S]` (Swin's relative positions and
            shifted-window mask).
        mask: boolean, broadcastable to `[..., H, T, S]`; False drops the key for that query.
        is_causal: query t attends to keys `<= t` (the text tower); fused kernels skip the
            masked half instead of computing it.
        scale: multiplies the logits; default `Dh ** -0.5`.
        implementation: None or 'xla' (portable einsum-softmax-einsum), 'cudnn' (GPU only),
            or 'auto': cuDNN, padded to a multiple of 8, where it is known to run and pay
            (`_cudnn_suits`), else XLA.
        pad_multiple: pads T and S up to a multiple of this and masks the padding by sequence
            lengths, for fused kernels that want aligned lengths (ViT's 197 tokens -> 200).

    Returns:
        `[..., T, H, Dh]` in the dtype of `query`.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
            f"got {implementation!r}"
        )
    if implementation == "auto":
        implementation = "cudnn" if _cudnn_suits(query, bias, mask) else "xla"
        if implementation == "cudnn":
            pad_multiple = pad_multiple or _CUDNN_PAD_MULTIPLE
    batch_shape = query.shape[:-3]
    length, key_length = query.shape[-3], key.shape[-3]
    flat = lambda t: t.reshape((-1, *t.shape[-3:]))  # [B', L, H, Dh]
    query, key, value = flat(query), flat(key), flat(value)
    bias, mask = _flatten_batch(bias, batch_shape), _flatten_batch(mask, batch_shape)
    lengths = {}
    if pad_multiple > 1 and (length % pad_multiple or key_length % pad_multiple):
        padded_q = -(-length // pad_multiple) * pad_multiple
        padded_k = -(-key_length // pad_multiple) * pad_multiple
        query = _pad_axis(query, 1, padded_q)
        key, value = _pad_axis(key, 1, padded_k), _pad_axis(value, 1, padded_k)
        if bias is not None:
            bias = _pad_axis(_pad_axis(bias, 2, padded_q), 3, padded_k)
        if mask is not None:
            mask = _pad_axis(_pad_axis(mask, 2, padded_q), 3, padded_k, value=False)
        batch = query.shape[0]
        lengths = dict(
            query_seq_lengths=jnp.full((batch,), length, jnp.int32),
            key_value_seq_lengths=jnp.full((batch,), key_length, jnp.int32),
        )
    out = jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=None if bias is None else bias.astype(query.dtype),
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        implementation=implementation,
        **lengths,
    )
    return out[:, :length].reshape((*batch_shape, length, *out.shape[-2:]))


def _append_to_cache(
    module: nn.Module, key: jax.Array, value: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """Autoregressive decoding: keeps the keys and values of every position seen so far.

    The call that creates the `cache` collection (`init`, or `apply(..., mutable=['cache'])`
    on a module without one) sizes it by its input, `[B, max_length, H, Dh]`, and returns
    None: that call attends causally over its own tokens. Every later call writes its T
    keys/values at `cache_index` and returns the whole cache with the mask `[1, 1, T,
    max_length]` of the positions each of its queries may read (its own and earlier ones).
    Writing past `max_length` is not checked (XLA clamps the slice): callers bound the length.

    Args:
        module: the attention module owning the cache variables.
        key: `[B, T, H, Dh]`.
        value: `[B, T, H, Dh]`.
    """
    initialised = module.has_variable("cache", "cached_key")
    cached_key = module.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = module.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialised:
        return None
    length, capacity = key.shape[1], cached_key.value.shape[1]
    start = index.value
    at = (0, start, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, at)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, at)
    index.value = start + length
    positions = start + jnp.arange(length)  # [T] of the queries
    mask = jnp.arange(capacity)[None, :] <= positions[:, None]  # [T, max_length]
    return cached_key.value, cached_value.value, mask[None, None]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over `[B, L, D]` (see `dot_product_attention` for the masks).

    With `decode=True` it attends over a key/value cache (`_append_to_cache`): one or a few
    new tokens per call, each reading every earlier position, as a causal decoder generating
    text does; the parameters are the same either way.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = "auto"
    pad_multiple: int = 0

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        *,
        decode: bool = False,
    ) -> jax.Array:
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
        )(x)  # [B, L, 3, H, Dh]
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, Dh] each
        if decode:
            if mask is not None:
                raise ValueError("decode=True builds its own mask from the cache; pass no mask")
            cached = _append_to_cache(self, key, value)
            if cached is not None:
                key, value, mask = cached  # [B, max_length, H, Dh] x 2, [1, 1, L, max_length]
                is_causal = False
        attended = dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            implementation=self.implementation,
            pad_multiple=self.pad_multiple,
        )  # [B, L, H, Dh]
        return DenseNd(
            features=(width,),
            kernel_axes=("heads", "kv", "embed"),
            num_in_axes=2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(attended)


class CrossAttention(nn.Module):
    """Multi-head attention of queries `[B, T, D]` over a context `[B, S, Dc]` (text tokens
    over image tokens, a caption decoder over the image), through `dot_product_attention`.

    The output has the queries' width `D`; keys and values are projected from the context's
    own width, so towers of different widths meet without an adapter.

    With `decode=True` the keys and values of the context are kept in the `cache` collection:
    a call with the context projects and stores them, a call with `context=None` reads them,
    so a decoder generating text projects the image once per sequence, not once per token.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = "auto"
    pad_multiple: int = 0

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None,
        context_mask: jax.Array | None = None,
        *,
        decode: bool = False,
    ) -> jax.Array:
        """`context_mask` `[B, S]` bool: False marks context positions no query may read.

        `context` may be None only with `decode=True`, after a call that passed it.
        """
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads
        project = lambda features, axes, name: DenseNd(  # noqa: E731
            features=features,
            kernel_axes=axes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        query = project((self.num_heads, head_dim), ("embed", "heads", "kv"), "query")(x)
        if context is None:
            if not (decode and self.has_variable("cache", "cached_key")):
                raise ValueError(
                    "context=None reads the cached context: it needs decode=True and an "
                    "earlier decode call that passed the context"
                )
            key = self.variable("cache", "cached_key").value  # [B, S, H, Dh]
            value = self.variable("cache", "cached_value").value
        else:
            key_value = project(
                (2, self.num_heads, head_dim), ("embed", "qkv", "heads", "kv"), "kv"
            )(context)  # [B, S, 2, H, Dh]
            key, value = key_value[:, :, 0], key_value[:, :, 1]
            if decode:
                for name, array in (("cached_key", key), ("cached_value", value)):
                    self.variable("cache", name, lambda a=array: a).value = array
        mask = None if context_mask is None else context_mask[:, None, None, :]  # [B, 1, 1, S]
        attended = dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            implementation=self.implementation,
            pad_multiple=self.pad_multiple,
        )  # [B, T, H, Dh]
        return DenseNd(
            features=(width,),
            kernel_axes=("heads", "kv", "embed"),
            num_in_axes=2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(attended)


class MlpBlock(nn.Module):
    """Dense -> activation -> Dense, `[.., D] -> [.., D]`."""

    hidden_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(
            self.hidden_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(), ("embed", "mlp")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="fc1",
        )(x)
        x = nn.with_logical_constraint(x, ("batch", "act_length", "act_mlp"))
        x = ACTIVATIONS[self.activation](x)
        return nn.Dense(
            width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(), ("mlp", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="fc2",
        )(x)


class DropPath(nn.Module):
    """Stochastic depth: each sample's branch is zeroed with probability `rate` and the kept
    ones scaled by `1 / (1 - rate)`.

    The same draws as `nn.Dropout(rate, broadcast_dims=(1, ..., ndim - 1))` of the same name,
    but the rate is a call argument, so a scanned stack can feed each block its own (traced)
    rate.
    """

    @nn.compact
    def __call__(self, x: jax.Array, rate, *, train: bool) -> jax.Array:
        if not train or (isinstance(rate, float | int) and rate == 0):
            return x
        keep = 1.0 - rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per example
        draw = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jax.lax.select(jnp.broadcast_to(draw, x.shape), x / keep, jnp.zeros_like(x))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic depth, rising linearly from 0 to `rate` (timm's `dpr` list)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class EncoderBlock(nn.Module):
    """Pre-LN residual block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.

    With `scanned=True` it returns `(x, None)`, the `(carry, output)` pair `nn.scan` expects.
    `drop_path` (a call argument, so a scan can give each layer its own) is the stochastic
    depth rate of both branches when `train` is set.
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    is_causal: bool = False
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    scanned: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, drop_path=0.0):
        ln = lambda name: layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)
        attention = MultiHeadAttention(
            self.num_heads,
            self.dtype,
            self.param_dtype,
            self.attention_impl,
            self.attention_pad_multiple,
            name="attn",
        )
        y = attention(ln("ln_1")(x), mask, self.is_causal)
        x = x + DropPath(name="drop_path1")(y, drop_path, train=self.train)
        y = MlpBlock(self.mlp_dim, self.activation, self.dtype, self.param_dtype, name="mlp")(
            ln("ln_2")(x)
        )
        x = x + DropPath(name="drop_path2")(y, drop_path, train=self.train)
        x = nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))
        return (x, None) if self.scanned else x


class CrossAttentionBlock(nn.Module):
    """Pre-LN block that reads a context: `x + self_attn(ln(x))`, `x + cross_attn(ln(x), c)`,
    then `x + mlp(ln(x))`, as in the Transformer decoder (Vaswani et al. 2017) and the
    co-attention layers of ViLBERT/LXMERT.

    `mask` `[B, 1, T, T]` or `is_causal` restrict the self-attention (causal for a caption
    decoder, padding for question tokens); `context_mask` `[B, S]` hides context padding.
    `decode=True` runs both attentions on their caches (`MultiHeadAttention`,
    `CrossAttention`): a few new tokens per call, `context` None after the first call.
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    is_causal: bool = False
    attention_impl: str | None = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None,
        mask: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        *,
        decode: bool = False,
    ) -> jax.Array:
        ln = lambda name: layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)
        self_attention = MultiHeadAttention(
            self.num_heads, self.dtype, self.param_dtype, self.attention_impl, name="attn"
        )
        x = x + self_attention(ln("ln_1")(x), mask, self.is_causal, decode=decode)
        cross_attention = CrossAttention(
            self.num_heads, self.dtype, self.param_dtype, self.attention_impl, name="cross_attn"
        )
        x = x + cross_attention(ln("ln_cross")(x), context, context_mask, decode=decode)
        x = x + MlpBlock(self.mlp_dim, self.activation, self.dtype, self.param_dtype, name="mlp")(
            ln("ln_2")(x)
        )
        return nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))


# What a rematerialised block keeps from its forward pass for the backward one (the rest is
# recomputed): "full" keeps only its inputs; the dots policies keep matmul outputs, which
# are the expensive part to recompute; "offload_dots" parks those in host memory.
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload_dots": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def rematerialised(
    block: type[nn.Module], remat: str, scanned: bool, static_argnums: tuple[int, ...] = ()
) -> type[nn.Module]:
    """`block` itself for `remat='none'`, else wrapped in `nn.remat` with that policy
    (`static_argnums` count `self` as 0: Python values such as a `train` flag)."""
    if remat == "none":
        return block
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    # Inside a scan the loop already stops XLA merging recomputation into the forward pass;
    # outside one, `prevent_cse` has to.
    return nn.remat(
        block,
        policy=REMAT_POLICIES[remat],
        prevent_cse=not scanned,
        static_argnums=static_argnums,
    )


def scanned_stack(block: type[nn.Module], depth: int, *, in_axes=(nn.broadcast,)):
    """`nn.scan` of `depth` copies of `block` over the carry (the first call argument).

    Each parameter gains a leading `[depth]` axis, named `layers` for the sharding rules; the
    other call arguments are the same for every layer (`nn.broadcast`, e.g. a mask) or sliced
    along their first axis (`0`, e.g. per-layer drop-path rates). Compiles one block instead
    of `depth`: `jaxmm.models.scan` converts the parameters to and from the per-layer layout.
    """
    return nn.scan(
        block,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Encoder(nn.Module):
    """A stack of `depth` encoder blocks: `block_0` .. `block_{depth-1}`, or with
    `scan_layers` one scanned `blocks` whose parameters are stacked along a `layers` axis.

    `remat` ('none' or a `REMAT_POLICIES` key) trades recomputation for activation memory.
    `drop_path_rate` is the stochastic depth of the last block, rising linearly from 0 at the
    first (timm's ViT schedule); it acts only with `train`, drawing from the `'dropout'` rng.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    is_causal: bool = False
    attention_impl: str | None = "auto"
    attention_pad_multiple: int = 0
    scan_layers: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    drop_path_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        block = rematerialised(EncoderBlock, self.remat, self.scan_layers)
        fields = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            layer_norm_eps=self.layer_norm_eps,
            is_causal=self.is_causal,
            attention_impl=self.attention_impl,
            attention_pad_multiple=self.attention_pad_multiple,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            train=self.train,
        )
        # Without stochastic depth the blocks get no rate at all: nothing draws, nothing traces.
        rates = drop_path_rates(self.drop_path_rate, self.depth) if self.drop_path_rate else None
        if self.scan_layers:
            if rates is None:
                stack = scanned_stack(block, self.depth)
                x, _ = stack(**fields, scanned=True, name="blocks")(x, mask)
            else:
                stack = scanned_stack(block, self.depth, in_axes=(nn.broadcast, 0))
                rates = jnp.asarray(rates, jnp.float32)
                x, _ = stack(**fields, scanned=True, name="blocks")(x, mask, rates)
            return x
        for index in range(self.depth):
            extra = () if rates is None else (rates[index],)
            x = block(**fields, name=f"block_{index}")(x, mask, *extra)
        return x


class BatchNorm(nn.Module):
    """Batch normalisation over `[B, H, W, C]` with PyTorch's running-statistics rule.

    Train mode normalises with the biased batch variance and folds the *unbiased* one
    (times n / (n - 1), n = B * H * W) into `batch_stats/var`, exactly as `torch.nn.BatchNorm2d`;
    eval mode uses `batch_stats/mean` and `batch_stats/var`. Statistics are computed in float32
    (float64 when `dtype` is float64): bfloat16 sums over B * H * W values would lose them.

    Under `jit` with the batch sharded over devices, the means below are global reductions, so
    the statistics are synchronised across devices (SyncBatchNorm) with no extra code: XLA
    inserts the all-reduce. Works for any `[B, ..., C]` input (the last axis is the channel).
    """

    momentum: float = 0.9  # decay of the running average; torch's momentum 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (features,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (features,),
            self.param_dtype,
        )
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        compute = jnp.promote_types(self.dtype, jnp.float32)
        x32 = x.astype(compute)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x32.mean(axis=axes)  # [C]
            var = jnp.square(x32 - mean).mean(axis=axes)  # biased, [C]
            n = x32.size // features
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(compute) + bias.astype(compute)
        return y.astype(self.dtype)


def _adaptive_avg_pool_axis(x: jax.Array, axis: int, out: int) -> jax.Array:
    """Averages `out` bins along `axis` of size n, as torch does.

    Bin i spans `floor(i * n / out)` .. `ceil((i + 1) * n / out)` (end excluded): bins overlap
    when n is not a multiple of `out`, and repeat rows when n < out.
    """
    size = x.shape[axis]
    bins = []
    for i in range(out):
        start, end = i * size // out, -(-(i + 1) * size // out)  # floor, ceil
        bins.append(jax.lax.slice_in_dim(x, start, end, axis=axis).mean(axis, keepdims=True))
    return jnp.concatenate(bins, axis=axis)


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """PyTorch's `nn.AdaptiveAvgPool2d`: `[B, H, W, C]` -> `[B, out_h, out_w, C]` for any H, W.

    Every output bin is a rectangle of rows x columns, so pooling the rows and then the columns
    gives the same means with `out_h + out_w` slices instead of `out_h * out_w`.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    return _adaptive_avg_pool_axis(_adaptive_avg_pool_axis(x, 1, out_h), 2, out_w)


_LECUN_NORMAL = nn.initializers.lecun_normal()


def classifier_head(
    num_classes: int,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
    kernel_init: nn.initializers.Initializer = _LECUN_NORMAL,
) -> nn.Dense:
    """The final Linear of an image classifier, `[B, D]` -> `[B, num_classes]`.

    Its input dimension is sharded like every `embed` axis; the classes stay whole. The
    references' inits differ (torch's Linear default, N(0, 0.01), zeros for timm's ViT);
    converted weights replace them, so each model passes the init it trains best from.
    """
    return nn.Dense(
        num_classes,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        name=name,
    )
