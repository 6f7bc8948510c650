"""Image-text retrieval recall@K (the COCO / Flickr30k protocol of CLIP and open_clip).

* image->text: each image queries all M texts; it is retrieved at K if ANY of its captions is
  among the top K texts.
* text->image: each text queries all N images; it is retrieved at K if its own image is among
  the top K images.

Ranks and ties: the rank of a query is the number of candidates scoring strictly higher than
its best-scoring correct candidate, and a hit at K means rank < K. Ties with the correct
candidate thus count in its favour (the optimistic rank). Argsort-based implementations such
as open_clip's `get_clip_metrics` order ties arbitrarily; this rule does not depend on the
candidate order, and with real-valued embeddings exact ties are rare anyway. A query with a
NaN score for any correct candidate counts as a miss (rank = number of candidates).

Both directions are one computation: candidates carry the id of the item they belong to
(a text its image, an image its own index), and a query's correct candidates are those
carrying the query's id.

Memory and devices: the candidates are split across every device of the mesh, and the
queries are streamed `chunk_size` at a time, each chunk replicated. A device scores its
chunk against its own slice, a `[chunk_size, K / devices]` block, and the devices combine
only per-query numbers (the best correct score by `pmax`, the count ahead of it by `psum`),
so no device ever holds the full `[N, M]` matrix nor all candidates' scores of a chunk.
Scores, maxima and integer counts do not depend on how the candidates are split, so the
ranks are the same on any number of devices. Padding (candidates up to a multiple of the
device count, the last query chunk up to `chunk_size`) keeps one compiled shape per
candidate set and is never counted or retrieved.
"""

from collections.abc import Sequence
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmm import sharding

# Full float32 precision: ranks must not depend on the accelerator's default dot passes.
_PRECISION = jax.lax.Precision.HIGHEST
# Ids of padding rows. No query carries the padding candidates' id, and the two differ, so
# a padding query never "owns" a padding candidate either.
_PAD_CANDIDATE_ID = -1
_PAD_QUERY_ID = -2


def _ranks_on_device(
    queries: jax.Array,
    query_ids: jax.Array,
    candidates: jax.Array,
    candidate_ids: jax.Array,
    *,
    axes: tuple[str, ...],
    num_candidates: int,
) -> jax.Array:
    """One device's share of the ranking, inside `shard_map` over `axes`.

    Args:
      queries: `[B, D]` a chunk of queries (the same on every device).
      query_ids: `[B]` the id each query's correct candidates carry.
      candidates: `[K_local, D]` this device's slice of the candidates.
      candidate_ids: `[K_local]` their ids; `_PAD_CANDIDATE_ID` for padding rows.
      axes: the mesh axes the candidates are split over.
      num_candidates: K, the number of real candidates (the rank of a NaN query).

    Returns:
      `[B]` int32 ranks in [0, K], the same on every device.
    """
    scores = jnp.einsum(
        "bd,kd->bk",
        queries.astype(jnp.float32),
        candidates.astype(jnp.float32),
        precision=_PRECISION,
    )  # [B, K_local]
    correct = candidate_ids[None, :] == query_ids[:, None]  # [B, K_local]
    # NaN is kept out of the maximum and flagged apart: how a cross-device max treats NaN
    # depends on the backend, a flag does not.
    nan = jnp.isnan(scores)
    nan_correct = jax.lax.pmax(jnp.any(correct & nan, axis=1).astype(jnp.int32), axes) > 0
    best = jnp.max(jnp.where(correct & ~nan, scores, -jnp.inf), axis=1)  # [B]
    best = jax.lax.pmax(best, axes)
    real = (candidate_ids != _PAD_CANDIDATE_ID)[None, :]  # [1, K_local]
    ahead = jnp.sum((scores > best[:, None]) & real, axis=1, dtype=jnp.int32)  # [B]
    ahead = jax.lax.psum(ahead, axes)
    return jnp.where(nan_correct, num_candidates, ahead)


@lru_cache(maxsize=16)
def _ranking_kernel(mesh: Mesh, num_candidates: int):
    """The jitted `(queries, query_ids, candidates, candidate_ids) -> ranks [B]` for `mesh`:
    candidates split along their first axis over all of its axes, queries and ranks
    replicated."""
    axes = tuple(mesh.axis_names)
    split, whole = PartitionSpec(axes), PartitionSpec()
    body = partial(_ranks_on_device, axes=axes, num_candidates=num_candidates)
    return jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(whole, whole, split, split), out_specs=whole)
    )


def _pad_rows(array: np.ndarray, rows: int, value: float = 0) -> np.ndarray:
    """`array` extended along axis 0 to `rows` rows of `value`."""
    widths = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, widths, constant_values=value)


def _ranks(
    queries: np.ndarray,
    query_ids: np.ndarray,
    candidates: np.ndarray,
    candidate_ids: np.ndarray,
    mesh: Mesh,
    chunk_size: int,
) -> np.ndarray:
    """`[Q]` ranks of every query (`[Q, D]`, ids `[Q]`) among `[K, D]` candidates (ids `[K]`)."""
    num_devices = mesh.devices.size
    padded = -(-candidates.shape[0] // num_devices) * num_devices
    split = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    whole = sharding.replicated(mesh)
    # Candidates go to the devices once, not once per chunk.
    candidates_dev = sharding.global_array_from_host(_pad_rows(candidates, padded), split)
    candidate_ids_dev = sharding.global_array_from_host(
        _pad_rows(candidate_ids, padded, _PAD_CANDIDATE_ID), split
    )
    kernel = _ranking_kernel(mesh, candidates.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        chunk_ids = query_ids[start : start + chunk_size]
        ranks = kernel(
            sharding.global_array_from_host(_pad_rows(chunk, chunk_size), whole),
            sharding.global_array_from_host(_pad_rows(chunk_ids, chunk_size, _PAD_QUERY_ID), whole),
            candidates_dev,
            candidate_ids_dev,
        )
        out.append(np.asarray(ranks)[: chunk.shape[0]])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def retrieval_ranks(
    image_embeddings: np.ndarray | jax.Array,
    text_embeddings: np.ndarray | jax.Array,
    text_to_image: np.ndarray | jax.Array,
    chunk_size: int = 1024,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval rank of every image query and every text query (see the module docstring).

    Args:
      image_embeddings: `[N, D]`, normalised (cosine similarity is the dot product).
      text_embeddings: `[M, D]`, normalised.
      text_to_image: `[M]` int in [0, N): the image each text describes. Every image needs
        at least one text.
      chunk_size: queries scored at a time.
      mesh: the devices the candidates are split over (all its devices, whatever the axes);
        default: every device, `sharding.make_mesh()`.

    Returns:
      `(i2t_ranks [N], t2i_ranks [M])` int ranks, 0 being the best.
    """
    images = np.asarray(image_embeddings)
    texts = np.asarray(text_embeddings)
    text_to_image = np.asarray(text_to_image)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"expected [N, D] and [M, D] embeddings, got {images.shape}, {texts.shape}"
        )
    if text_to_image.shape != texts.shape[:1] or not np.issubdtype(text_to_image.dtype, np.integer):
        raise ValueError(
            f"text_to_image must be [M]={texts.shape[:1]} ints, got {text_to_image.shape} "
            f"{text_to_image.dtype}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to evaluate")
    if text_to_image.size and (text_to_image.min() < 0 or text_to_image.max() >= n):
        raise ValueError(f"text_to_image must lie in [0, {n})")
    uncaptioned = np.flatnonzero(np.bincount(text_to_image, minlength=n) == 0)
    if uncaptioned.size:
        raise ValueError(
            f"{uncaptioned.size} images have no caption (first: {uncaptioned[:5].tolist()})"
        )
    mesh = mesh or sharding.make_mesh()
    text_to_image = text_to_image.astype(np.int32)
    image_ids = np.arange(n, dtype=np.int32)
    i2t = _ranks(images, image_ids, texts, text_to_image, mesh, chunk_size)
    t2i = _ranks(texts, text_to_image, images, image_ids, mesh, chunk_size)
    return i2t, t2i


def retrieval_metrics(
    image_embeddings: np.ndarray | jax.Array,
    text_embeddings: np.ndarray | jax.Array,
    text_to_image: np.ndarray | jax.Array,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Image->text and text->image recall@K.

    Args:
      image_embeddings: `[N, D]`, normalised.
      text_embeddings: `[M, D]`, normalised.
      text_to_image: `[M]` int in [0, N): the image each text describes (e.g. 5 per image for
        COCO/Flickr). Every image needs at least one text.
      ks: the K values.
      chunk_size: queries scored at a time; memory per device is
        `O(chunk_size * (N + M) / devices)` for the scores plus `(N + M) * D / devices` for
        the candidates.
      mesh: the devices to split the candidates over (default: every device).

    Returns:
      `{"i2t_r1": ..., "i2t_r5": ..., ..., "t2i_r10": ...}`: fractions in [0, 1] as Python
      floats, over all N images (i2t) and all M texts (t2i).
    """
    i2t, t2i = retrieval_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size, mesh)
    metrics = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}
    metrics.update({f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks})
    return metrics
