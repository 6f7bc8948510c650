"""InfoNCE and SigLIP without the global `[N, N]` logit matrix: block by block around a ring.

`jaxmm.losses` computes both losses on the whole `[N, N]` logit matrix (the reference).
Here the batch is cut into P blocks of n = N / P rows. Block p keeps its image rows `x_p`;
the text rows travel: at step k block p holds `y_{(p + k) mod P}` and works on the `[n, n]`
logits of that pair. After P steps every pair of blocks has met once and everything that
travelled is back home. One mechanism does every pass (`Ring.reduce`): a function of one
block pair gives a part for each image row, a part for each text row and a part of a total;
row parts stay and merge, text parts travel with their texts and merge, totals add up.
The blocks live in two places (`Blocks`):

* `DeviceRing`: the blocks are the devices of the mesh's batch axes, under `jax.shard_map`;
  a step's travel is a `lax.ppermute` to the neighbour (the ring exchange of big_vision's
  chunked SigLIP and open_clip's `SigLipLoss(bidir=False)`, the schedule of ring
  attention). Alone it builds each step's `[n, n]` block: memory per device O(n^2 + n D).
* `Chunks`: the blocks are row chunks of one array, under `jax.vmap` with an axis name;
  `ppermute` over a vmapped axis is a roll of the chunk axis. All chunks of one step run
  at once, so memory is O(N c + N D) for chunks of c rows: linear in N for a fixed c.

A block pair's parts are themselves an all-pairs reduction over the pair's sub-blocks, so
`DeviceRing(inner=Chunks(c))` runs the chunk ring inside each device step: the `[n, n]`
block is never built, and memory per device is O(n c + n D), linear in the local batch.

InfoNCE needs every row's and every column's log-sum-exp: the row accumulators stay with
the image block, the column accumulators travel with their text block and arrive home
complete; its positives `l_ii` are row-wise dot products, outside the ring. SigLIP's pairs
are independent, so the blocks' losses simply add up; its labels (and the accuracy's
argmax) come from global row indices that travel with the rows.

Gradients come from a `jax.custom_vjp` whose backward pass is a second trip around the
ring: each pair recomputes its logits and differentiates that pair's share of the loss
with `jax.vjp`; the text gradients travel with the texts and arrive home at the end.
Differentiating the forward scan instead would store every step's travelling block and
logits for the backward pass, O(N D) per device for the ring and O(N^2 D / c) for chunks.
For InfoNCE a pair's share is `sum exp(l_ij - r_i) + exp(l_ij - c_j)` with the final row
and column log-sum-exps r, c held fixed: its gradient in `l_ij` is the softmax that the
log-sum-exp's gradient is made of.

Everything is computed in float32 at full matmul precision, like `jaxmm.losses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

from jaxmm import sharding

# The mesh axes the batch is split over (the `batch` logical rule), so the ring follows
# the data sharding wherever the rules put it.
BATCH_AXES = dict(sharding.DEFAULT_RULES)["batch"]

Tree = Any
# `pair(rows, cols, shared) -> (row_part, col_part, total)` on one block pair: `rows` and
# `cols` are trees of `[n, ...]` arrays (image side, text side), the parts `[n, ...]` trees.
Pair = Callable[[Tree, Tree, Tree], tuple[Tree, Tree, Tree]]


def _add(a: Tree, b: Tree) -> Tree:
    return jax.tree.map(jnp.add, a, b)


def _zeros(shapes: Tree) -> Tree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@dataclasses.dataclass(frozen=True)
class Merge:
    """How the parts of the same rows from different pairs combine into one."""

    combine: Callable[[Tree, Tree], Tree]  # associative
    empty: Callable[[Tree], Tree]  # shapes of a part -> the part that changes nothing


SUM = Merge(_add, _zeros)


@dataclasses.dataclass(frozen=True)
class Ring:
    """The P blocks seen from inside one of them: an axis name to exchange over, its size."""

    axis: str | tuple[str, ...]
    size: int

    def shift(self, tree: Tree) -> Tree:
        """Block p receives block p + 1's arrays (so it holds `y_{p+k}` after k shifts)."""
        perm = [(i, (i - 1) % self.size) for i in range(self.size)]
        return jax.tree.map(lambda t: lax.ppermute(t, self.axis, perm), tree)

    def reduce(self, pair: Pair, merge: Merge, rows: Tree, cols: Tree, shared: Tree):
        """This block's rows against every block's cols, k = 0..P-1.

        Returns:
          `(row_acc, col_acc, total)`: the merged parts of this block's rows and of its own
          cols (which travelled round and came home), and this block's share of the total.
        """

        def step(carry, _):
            (row_acc, total), (cols, col_acc) = carry
            row_part, col_part, part = pair(rows, cols, shared)
            stay = merge.combine(row_acc, row_part), _add(total, part)
            travel = cols, merge.combine(col_acc, col_part)
            return (stay, self.shift(travel)), None

        row_shapes, col_shapes, total_shapes = jax.eval_shape(pair, rows, cols, shared)
        stay = merge.empty(row_shapes), _zeros(total_shapes)
        travel = cols, merge.empty(col_shapes)
        ((row_acc, total), (_, col_acc)), _ = lax.scan(step, (stay, travel), length=self.size)
        return row_acc, col_acc, total


def _rows_of(tree: Tree) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


@dataclasses.dataclass(frozen=True)
class Chunks:
    """Blocks = chunks of `size` rows of one array (a batch smaller than `size` is one chunk)."""

    size: int

    def reduce(self, pair: Pair, merge: Merge, rows: Tree, cols: Tree, shared: Tree):
        """`Ring.reduce` over all chunk pairs: `([N, ...] row parts, [N, ...] col parts, total)`."""
        num_rows = _rows_of(rows)
        size = min(self.size, num_rows)
        if size < 1 or num_rows % size:
            raise ValueError(
                f"a batch of {num_rows} rows does not split into chunks of {self.size}"
            )
        count = num_rows // size

        def split(tree):  # [N, ...] -> [count, size, ...]
            return jax.tree.map(lambda a: a.reshape(count, size, *a.shape[1:]), tree)

        def join(tree):  # [count, size, ...] -> [N, ...]
            return jax.tree.map(lambda a: a.reshape(num_rows, *a.shape[2:]), tree)

        row_acc, col_acc, totals = jax.vmap(
            partial(Ring("chunks", count).reduce, pair, merge),
            in_axes=(0, 0, None),
            axis_name="chunks",
        )(split(rows), split(cols), shared)
        return join(row_acc), join(col_acc), jax.tree.map(partial(jnp.sum, axis=0), totals)


@dataclasses.dataclass(frozen=True)
class DeviceRing:
    """Blocks = the devices of the mesh's batch axes (`mesh=None`: the `jax.set_mesh` one).

    `inner` is how a device goes through its `[n, n]` block pair of a step: None builds it
    whole; `Chunks(c)` runs the chunk ring on it, `[n / c, c, c]` logits at a time.
    """

    mesh: Mesh | AbstractMesh | None = None
    axes: tuple[str, ...] = BATCH_AXES
    inner: Chunks | None = None

    def reduce(self, pair: Pair, merge: Merge, rows: Tree, cols: Tree, shared: Tree):
        """`Ring.reduce` on every device: row and col parts sharded like the rows, the total
        summed over devices (replicated)."""
        if self.inner is not None and not isinstance(self.inner, Chunks):
            raise ValueError(f"DeviceRing(inner=...) takes Chunks or None, got {self.inner!r}")
        mesh = self.mesh if self.mesh is not None else jax.sharding.get_abstract_mesh()
        if mesh.empty:
            raise ValueError(
                "loss_impl='ring' needs a device mesh: pass DeviceRing(mesh) or call inside "
                "`with jax.set_mesh(mesh)`"
            )
        missing = [axis for axis in self.axes if axis not in mesh.shape]
        if missing:
            raise ValueError(f"the ring's batch axes {missing} are not in the mesh {mesh.shape}")
        size = 1
        for axis in self.axes:
            size *= mesh.shape[axis]
        if _rows_of(rows) % size:
            raise ValueError(
                f"a batch of {_rows_of(rows)} rows does not split over {size} ring devices"
            )
        if self.inner is not None:
            pair = partial(self.inner.reduce, pair, merge)
        ring = Ring(self.axes, size)

        def per_device(rows, cols, shared):
            row_acc, col_acc, total = ring.reduce(pair, merge, rows, cols, shared)
            return row_acc, col_acc, jax.tree.map(partial(lax.psum, axis_name=self.axes), total)

        blocked = P(self.axes)
        # The accumulators start as constants (`Merge.empty`, replicated) and become
        # per-device, which the varying-axes type check rejects in a scan carry; nothing
        # here is differentiated by JAX (the custom_vjp is outside), so it is not needed.
        return jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(blocked, blocked, P()),
            out_specs=(blocked, blocked, P()),
            check_vma=False,
        )(rows, cols, shared)


Blocks = DeviceRing | Chunks


def _similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """`[n, D] x [m, D] -> [n, m]` cosine similarities at full float32 precision."""
    return jnp.einsum("nd,md->nm", x, y, precision=lax.Precision.HIGHEST)


def _is_positive(row_ids: jax.Array, col_ids: jax.Array) -> jax.Array:
    """`[n] x [m] -> [n, m]`: the pair is a matching image and caption (global index i == j)."""
    return row_ids[:, None] == col_ids[None, :]


def _as_f32(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _check_pair(image_embeddings: jax.Array, text_embeddings: jax.Array) -> None:
    if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "expected image and text embeddings of the same shape [N, D], got "
            f"{image_embeddings.shape} and {text_embeddings.shape}"
        )


def _with_ids(x, y):
    """`(rows, cols)` trees: the embeddings with their global indices."""
    ids = jnp.arange(x.shape[0])
    return (x, ids), (y, ids)


def _gradients(blocks: Blocks, share: Callable, rows: Tree, cols: Tree, params, cotangent):
    """Gradients of `sum over block pairs of share(x, y, params, row_stats, col_stats)`.

    Args:
      blocks: the blocks.
      share: a pair's share of the loss, whose gradient in (x, y, params) with the
        statistics held fixed is that pair's share of the loss's gradient.
      rows: `(x, *row_stats)`: `[N, D]` image rows and per-row statistics (`[N]` global
        indices, log-sum-exps, ...).
      cols: `(y, *col_stats)`: the same for the text rows.
      params: the replicated scalars (log scale, bias, ...).
      cotangent: the scalar the loss's gradient is scaled by.

    Returns:
      `(dx, dy, dparams)`: dx, dy `[N, D]`, dparams like params.
    """

    def pair(rows, cols, shared):
        params, cotangent = shared
        (x, *row_stats), (y, *col_stats) = rows, cols
        _, vjp = jax.vjp(lambda x, y, p: share(x, y, p, row_stats, col_stats), x, y, params)
        return vjp(cotangent)

    return blocks.reduce(pair, SUM, rows, cols, (params, cotangent))


def _total(blocks: Blocks, share: Callable, rows: Tree, cols: Tree, params) -> jax.Array:
    """`sum over block pairs of share(x, y, params, row_stats, col_stats)`, a scalar."""

    def pair(rows, cols, params):
        (x, *row_stats), (y, *col_stats) = rows, cols
        return (), (), share(x, y, params, row_stats, col_stats)

    return blocks.reduce(pair, SUM, rows, cols, params)[2]


# --------------------------------------------------------------------------------------------
# InfoNCE


def _log_sum_exps(rows: jax.Array, cols: jax.Array, log_scale: jax.Array):
    """A pair's row and column log-sum-exps `[n]`, `[m]` of `exp(log_scale) * x y^T`."""
    logits = jnp.exp(log_scale) * _similarity(rows, cols)  # [n, m]
    return jax.nn.logsumexp(logits, axis=1), jax.nn.logsumexp(logits, axis=0), ()


# Log-sum-exps of disjoint parts of a row combine by log-add-exp; nothing is -inf.
LOG_ADD_EXP = Merge(jnp.logaddexp, lambda s: jnp.full(s.shape, -jnp.inf, s.dtype))


def _lse_forward(blocks: Blocks, x, y, log_scale):
    """`sum_i lse(row i) + sum_j lse(column j)` of the logits, and those `[N]` lse's."""
    row_lse, col_lse, _ = blocks.reduce(_log_sum_exps, LOG_ADD_EXP, x, y, log_scale)
    return jnp.sum(row_lse) + jnp.sum(col_lse), (row_lse, col_lse)


def _softmax_share(x, y, params, row_stats, col_stats):
    """Its gradient in the logits, with the lse's fixed, is the row plus the column softmax."""
    (log_scale,), (row_lse,), (col_lse,) = params, row_stats, col_stats
    logits = jnp.exp(log_scale) * _similarity(x, y)  # [n, m]
    return jnp.sum(jnp.exp(logits - row_lse[:, None]) + jnp.exp(logits - col_lse[None, :]))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lse_total(blocks: Blocks, x, y, log_scale):
    return _lse_forward(blocks, x, y, log_scale)[0]


def _lse_total_fwd(blocks, x, y, log_scale):
    total, (row_lse, col_lse) = _lse_forward(blocks, x, y, log_scale)
    return total, (x, y, log_scale, row_lse, col_lse)


def _lse_total_bwd(blocks, residuals, cotangent):
    x, y, log_scale, row_lse, col_lse = residuals
    dx, dy, (dlog_scale,) = _gradients(
        blocks, _softmax_share, (x, row_lse), (y, col_lse), (log_scale,), cotangent
    )
    return dx, dy, dlog_scale


_lse_total.defvjp(_lse_total_fwd, _lse_total_bwd)


def infonce_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    logit_scale: jax.Array | float,
    blocks: Blocks,
) -> jax.Array:
    """`losses.clip_infonce_loss` computed block by block.

    Args:
      image_embeddings: `[N, D]`, L2-normalised.
      text_embeddings: `[N, D]`; row i is the caption of image i.
      logit_scale: scalar log inverse temperature.
      blocks: `DeviceRing()`, `DeviceRing(inner=Chunks(c))` or `Chunks(c)`.

    Returns:
      Scalar float32 loss, equal to the global one up to float32 round-off.
    """
    _check_pair(image_embeddings, text_embeddings)
    x, y, log_scale = _as_f32(image_embeddings, text_embeddings, logit_scale)
    # The positives are local to each row, so they are left to JAX's autodiff outside
    # the ring; the blocks only see the log-sum-exps.
    positives = jnp.exp(log_scale) * jnp.sum(x * y, axis=-1)  # [N], the diagonal
    # -log softmax(l)_ii = lse_i - l_ii, summed over both directions; divided by 2N.
    lse_total = _lse_total(blocks, x, y, log_scale)
    return (lse_total - 2 * jnp.sum(positives)) / (2 * x.shape[0])


# --------------------------------------------------------------------------------------------
# SigLIP


def _siglip_share(num_rows, x, y, params, row_stats, col_stats):
    """The pair's `-1/N sum log_sigmoid(label * logit)`: labels +1 on the positives."""
    (log_scale, bias), (row_ids,), (col_ids,) = params, row_stats, col_stats
    logits = jnp.exp(log_scale) * _similarity(x, y) + bias  # [n, m]
    labels = jnp.where(_is_positive(row_ids, col_ids), 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / num_rows


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _siglip(blocks: Blocks, x, y, log_scale, bias):
    share = partial(_siglip_share, x.shape[0])
    return _total(blocks, share, *_with_ids(x, y), (log_scale, bias))


def _siglip_fwd(blocks, x, y, log_scale, bias):
    return _siglip(blocks, x, y, log_scale, bias), (x, y, log_scale, bias)


def _siglip_bwd(blocks, residuals, cotangent):
    x, y, log_scale, bias = residuals
    share = partial(_siglip_share, x.shape[0])
    dx, dy, (dlog_scale, dbias) = _gradients(
        blocks, share, *_with_ids(x, y), (log_scale, bias), cotangent
    )
    return dx, dy, dlog_scale, dbias


_siglip.defvjp(_siglip_fwd, _siglip_bwd)


def siglip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    blocks: Blocks,
) -> jax.Array:
    """`losses.siglip_loss` computed block by block.

    Args:
      image_embeddings: `[N, D]`, L2-normalised.
      text_embeddings: `[N, D]`; row i is the caption of image i.
      logit_scale: scalar log temperature.
      logit_bias: scalar bias.
      blocks: `DeviceRing()`, `DeviceRing(inner=Chunks(c))` or `Chunks(c)`.

    Returns:
      Scalar float32 loss, equal to the global one up to float32 round-off.
    """
    _check_pair(image_embeddings, text_embeddings)
    return _siglip(blocks, *_as_f32(image_embeddings, text_embeddings, logit_scale, logit_bias))


# --------------------------------------------------------------------------------------------
# In-batch retrieval accuracy (a training metric; no gradient)


def _best_matches(rows: Tree, cols: Tree, shared: Tree):
    """Per row and per column of the pair: `(max similarity [n], global index of it [n])`."""
    del shared
    (x, row_ids), (y, col_ids) = rows, cols
    sim = _similarity(x, y)  # [n, m]
    # Ids grow along a block, so argmax's first-index rule is the lowest global index.
    by_row = jnp.max(sim, axis=1), col_ids[jnp.argmax(sim, axis=1)]
    by_col = jnp.max(sim, axis=0), row_ids[jnp.argmax(sim, axis=0)]
    return by_row, by_col, ()


def _better_match(best: tuple[jax.Array, jax.Array], other: tuple[jax.Array, jax.Array]):
    """Per-row `(max, argmax)` of two candidates, ties going to the lower index."""
    (best_value, best_index), (value, index) = best, other
    better = (value > best_value) | ((value == best_value) & (index < best_index))
    return jnp.where(better, value, best_value), jnp.where(better, index, best_index)


# No match yet: similarity -inf, an index beyond every row.
BETTER_MATCH = Merge(
    _better_match,
    lambda s: (jnp.full(s[0].shape, -jnp.inf), jnp.full(s[1].shape, jnp.iinfo(s[1].dtype).max)),
)


def clip_accuracy(
    image_embeddings: jax.Array, text_embeddings: jax.Array, blocks: Blocks
) -> tuple[jax.Array, jax.Array]:
    """`losses.clip_accuracy` computed block by block (ties to the lowest index too).

    Args:
      image_embeddings: `[N, D]`.
      text_embeddings: `[N, D]`; row i is the caption of image i.
      blocks: `DeviceRing()`, `DeviceRing(inner=Chunks(c))` or `Chunks(c)`.

    Returns:
      `(i2t_acc, t2i_acc)`: float32 scalars in [0, 1].
    """
    _check_pair(image_embeddings, text_embeddings)
    x, y = jax.lax.stop_gradient(_as_f32(image_embeddings, text_embeddings))
    rows, cols = _with_ids(x, y)
    (_, i2t), (_, t2i), _ = blocks.reduce(_best_matches, BETTER_MATCH, rows, cols, ())
    ids = rows[1]
    return jnp.mean(i2t == ids, dtype=jnp.float32), jnp.mean(t2i == ids, dtype=jnp.float32)
