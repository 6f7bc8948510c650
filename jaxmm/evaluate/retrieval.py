"""Image-text retrieval recall@K (the COCO / Flickr30k protocol of CLIP and open_clip).

* image->text: each image queries all M texts; it is retrieved at K if ANY of its captions is
  among the top K texts.
* text->image: each text queries all N images; it is retrieved at K if its own image is among
  the top K images.

Ranks and ties: the rank of a query is the number of candidates scoring strictly higher than
its best-scoring correct candidate, and a hit at K means rank < K. Ties with the correct
candidate thus count in its favour (the optimistic rank). Argsort-based implementations such
as open_clip's `get_clip_metrics` order ties arbitrarily; this rule does not depend on the
candidate order, and with real-valued embeddings exact ties are rare anyway. A query whose
correct score is NaN counts as a miss.

Memory is linear in N + M: similarities are computed `chunk_size` queries at a time, a
`[chunk_size, M]` or `[chunk_size, N]` block, never the full `[N, M]` matrix. The last chunk
is padded so the jitted kernels compile once per candidate-set shape.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Full float32 precision: ranks must not depend on the accelerator's default dot passes.
_PRECISION = jax.lax.Precision.HIGHEST


def _scores(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    """`[B, D] x [K, D] -> [B, K]` float32 similarities."""
    return jnp.einsum(
        "bd,kd->bk",
        queries.astype(jnp.float32),
        candidates.astype(jnp.float32),
        precision=_PRECISION,
    )


@jax.jit
def _image_to_text_ranks(
    images: jax.Array, image_ids: jax.Array, texts: jax.Array, text_to_image: jax.Array
) -> jax.Array:
    """Ranks of the best caption of each image in a chunk.

    Args:
      images: `[B, D]` query images.
      image_ids: `[B]` their indices (-1 for padding rows).
      texts: `[M, D]` all texts.
      text_to_image: `[M]` the image index of each text.

    Returns:
      `[B]` int32 ranks in [0, M]; M when the best correct score is NaN.
    """
    scores = _scores(images, texts)  # [B, M]
    correct = text_to_image[None, :] == image_ids[:, None]  # [B, M]
    best = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=1)  # [B]
    ranks = jnp.sum(scores > best[:, None], axis=1, dtype=jnp.int32)
    return jnp.where(jnp.isnan(best), scores.shape[1], ranks)


@jax.jit
def _text_to_image_ranks(
    texts: jax.Array, text_to_image: jax.Array, images: jax.Array
) -> jax.Array:
    """Ranks of each text's own image, for a chunk of texts.

    Args:
      texts: `[B, D]` query texts.
      text_to_image: `[B]` the image index of each (0 for padding rows).
      images: `[N, D]` all images.

    Returns:
      `[B]` int32 ranks in [0, N]; N when the correct score is NaN.
    """
    scores = _scores(texts, images)  # [B, N]
    correct = jnp.take_along_axis(scores, text_to_image[:, None], axis=1)  # [B, 1]
    ranks = jnp.sum(scores > correct, axis=1, dtype=jnp.int32)
    return jnp.where(jnp.isnan(correct[:, 0]), scores.shape[1], ranks)


def _chunked(kernel, queries: np.ndarray, ids: np.ndarray, pad_id: int, chunk_size: int, *rest):
    """Runs `kernel(query_chunk, id_chunk, *rest)` over fixed-size, padded chunks."""
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        chunk_ids = ids[start : start + chunk_size]
        valid = chunk.shape[0]
        pad = chunk_size - valid
        chunk = np.pad(chunk, ((0, pad), (0, 0)))
        chunk_ids = np.pad(chunk_ids, (0, pad), constant_values=pad_id)
        out.append(np.asarray(kernel(chunk, chunk_ids, *rest))[:valid])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def retrieval_ranks(
    image_embeddings: np.ndarray | jax.Array,
    text_embeddings: np.ndarray | jax.Array,
    text_to_image: np.ndarray | jax.Array,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval rank of every image query and every text query (see the module docstring).

    Args:
      image_embeddings: `[N, D]`, normalised (cosine similarity is the dot product).
      text_embeddings: `[M, D]`, normalised.
      text_to_image: `[M]` int in [0, N): the image each text describes. Every image needs
        at least one text.
      chunk_size: queries scored at a time.

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
    text_to_image = text_to_image.astype(np.int32)
    # Candidates go to the device once, not once per chunk.
    images_dev, texts_dev = jnp.asarray(images), jnp.asarray(texts)
    text_to_image_dev = jnp.asarray(text_to_image)
    i2t = _chunked(
        _image_to_text_ranks,
        images,
        np.arange(n, dtype=np.int32),
        -1,
        chunk_size,
        texts_dev,
        text_to_image_dev,
    )
    t2i = _chunked(_text_to_image_ranks, texts, text_to_image, 0, chunk_size, images_dev)
    return i2t, t2i


def retrieval_metrics(
    image_embeddings: np.ndarray | jax.Array,
    text_embeddings: np.ndarray | jax.Array,
    text_to_image: np.ndarray | jax.Array,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@K.

    Args:
      image_embeddings: `[N, D]`, normalised.
      text_embeddings: `[M, D]`, normalised.
      text_to_image: `[M]` int in [0, N): the image each text describes (e.g. 5 per image for
        COCO/Flickr). Every image needs at least one text.
      ks: the K values.
      chunk_size: queries scored at a time; memory is `O(chunk_size * (N + M))`.

    Returns:
      `{"i2t_r1": ..., "i2t_r5": ..., ..., "t2i_r10": ...}`: fractions in [0, 1] as Python
      floats, over all N images (i2t) and all M texts (t2i).
    """
    i2t, t2i = retrieval_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size)
    metrics = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}
    metrics.update({f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks})
    return metrics
