"""Tests for jaxmm.evaluate.retrieval: hand-worked ties, brute-force reference, chunking."""

import chex
import numpy as np
import pytest

from jaxmm.evaluate import retrieval


def _brute_force_ranks(images, texts, text_to_image):
    """Full `[N, M]` float64 matrix; rank = candidates strictly above the best correct one.

    Counted by binary search in the sorted row, unlike the library's comparison-and-sum.
    """
    scores = images.astype(np.float64) @ texts.astype(np.float64).T  # [N, M]
    n, m = scores.shape
    i2t = np.empty(n, np.int64)
    for i in range(n):
        best = scores[i, text_to_image == i].max()
        i2t[i] = m - np.searchsorted(np.sort(scores[i]), best, side="right")
    t2i = np.empty(m, np.int64)
    for j in range(m):
        correct = scores[text_to_image[j], j]
        t2i[j] = n - np.searchsorted(np.sort(scores[:, j]), correct, side="right")
    return i2t, t2i


def _argsort_ranks(images, texts, text_to_image):
    """open_clip-style ranks: position in a descending argsort (same as above without ties)."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T
    i2t = [np.flatnonzero(text_to_image[np.argsort(-row)] == i)[0] for i, row in enumerate(scores)]
    t2i = [
        np.flatnonzero(np.argsort(-col) == text_to_image[j])[0] for j, col in enumerate(scores.T)
    ]
    return np.array(i2t), np.array(t2i)


def _metrics_from_ranks(i2t, t2i, ks):
    out = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}
    out.update({f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks})
    return out


def _random_dataset(rng, n, d, values):
    captions_per_image = rng.integers(1, 6, size=n)  # 1 to 5 captions per image
    text_to_image = np.repeat(np.arange(n), captions_per_image)
    text_to_image = text_to_image[rng.permutation(len(text_to_image))]  # not contiguous
    m = len(text_to_image)
    if values == "continuous":
        images = rng.normal(size=(n, d))
        texts = rng.normal(size=(m, d))
        images /= np.linalg.norm(images, axis=1, keepdims=True)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    else:
        # Small integers: every score is exact in float32, and ties are frequent.
        images = rng.integers(-1, 2, size=(n, d))
        texts = rng.integers(-1, 2, size=(m, d))
    return images.astype(np.float32), texts.astype(np.float32), text_to_image


N_IMAGES = 13


@pytest.mark.parametrize("values", ["continuous", "integer"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, N_IMAGES + 5])
def test_matches_brute_force(values, chunk_size):
    rng = np.random.default_rng(0 if values == "continuous" else 1)
    images, texts, text_to_image = _random_dataset(rng, N_IMAGES, 6, values)
    i2t_ref, t2i_ref = _brute_force_ranks(images, texts, text_to_image)
    i2t, t2i = retrieval.retrieval_ranks(images, texts, text_to_image, chunk_size=chunk_size)
    np.testing.assert_array_equal(i2t, i2t_ref)
    np.testing.assert_array_equal(t2i, t2i_ref)
    ks = (1, 5, 10)
    metrics = retrieval.retrieval_metrics(
        images, texts, text_to_image, ks=ks, chunk_size=chunk_size
    )
    assert list(metrics) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in metrics.values())
    chex.assert_trees_all_close(
        metrics, _metrics_from_ranks(i2t_ref, t2i_ref, ks), atol=1e-12, rtol=0
    )
    if values == "continuous":
        # Without ties, the argsort-position definition agrees.
        i2t_sort, t2i_sort = _argsort_ranks(images, texts, text_to_image)
        np.testing.assert_array_equal(i2t, i2t_sort)
        np.testing.assert_array_equal(t2i, t2i_sort)
    else:
        assert (i2t < 10).mean() < 1.0 or (t2i < 10).mean() < 1.0  # not a trivial case


def test_hand_worked_with_ties():
    images = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    texts = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, -1]], np.float32)
    text_to_image = np.array([0, 1, 1, 0, 2])
    # Scores (image x text):
    #          t0  t1  t2  t3  t4       correct
    #   img0 [  1,  1,  0,  1,  0]      t0, t3
    #   img1 [  0,  0,  1,  1, -1]      t1, t2
    #   img2 [  1,  1,  1,  2, -1]      t4
    # image->text, best correct score and how many texts are strictly higher:
    #   img0: best 1 (t0/t3), none higher (t1 ties)  -> rank 0
    #   img1: best 1 (t2), none higher (t3 ties)     -> rank 0
    #   img2: best -1 (t4), t0..t3 higher            -> rank 4
    # text->image, own image's score and how many images are strictly higher:
    #   t0 -> img0: 1, scores [1, 0, 1]   (img2 ties)     -> rank 0
    #   t1 -> img1: 0, scores [1, 0, 1]   (img0, img2)    -> rank 2
    #   t2 -> img1: 1, scores [0, 1, 1]   (img2 ties)     -> rank 0
    #   t3 -> img0: 1, scores [1, 1, 2]   (img2)          -> rank 1
    #   t4 -> img2: -1, scores [0, -1, -1] (img0)         -> rank 1
    i2t, t2i = retrieval.retrieval_ranks(images, texts, text_to_image, chunk_size=2)
    np.testing.assert_array_equal(i2t, [0, 0, 4])
    np.testing.assert_array_equal(t2i, [0, 2, 0, 1, 1])
    metrics = retrieval.retrieval_metrics(
        images, texts, text_to_image, ks=(1, 2, 3, 5), chunk_size=2
    )
    expected = {
        "i2t_r1": 2 / 3, "i2t_r2": 2 / 3, "i2t_r3": 2 / 3, "i2t_r5": 1.0,
        "t2i_r1": 2 / 5, "t2i_r2": 4 / 5, "t2i_r3": 1.0, "t2i_r5": 1.0,
    }  # fmt: skip
    chex.assert_trees_all_close(metrics, expected, atol=1e-12, rtol=0)


def test_scores_in_fixed_size_chunks(monkeypatch):
    """Each kernel call sees a [chunk_size, D] block of queries: no [N, M] matrix, one shape."""
    rng = np.random.default_rng(2)
    images, texts, text_to_image = _random_dataset(rng, N_IMAGES, 4, "continuous")
    seen = []

    def spy(kernel, name):
        def wrapped(queries, ids, *candidates):
            seen.append((name, queries.shape, ids.shape, [c.shape for c in candidates]))
            return kernel(queries, ids, *candidates)

        return wrapped

    monkeypatch.setattr(
        retrieval, "_image_to_text_ranks", spy(retrieval._image_to_text_ranks, "i2t")
    )
    monkeypatch.setattr(
        retrieval, "_text_to_image_ranks", spy(retrieval._text_to_image_ranks, "t2i")
    )
    retrieval.retrieval_metrics(images, texts, text_to_image, chunk_size=5)
    m = len(texts)
    i2t_calls = [s for s in seen if s[0] == "i2t"]
    t2i_calls = [s for s in seen if s[0] == "t2i"]
    assert len(i2t_calls) == -(-N_IMAGES // 5) and len(t2i_calls) == -(-m // 5)
    assert all(s[1:3] == ((5, 4), (5,)) for s in i2t_calls + t2i_calls)
    assert all(s[3] == [(m, 4), (m,)] for s in i2t_calls)
    assert all(s[3] == [(N_IMAGES, 4)] for s in t2i_calls)


def test_nan_embeddings_are_misses():
    images = np.eye(3, dtype=np.float32)
    texts = np.eye(3, dtype=np.float32)
    text_to_image = np.arange(3)
    images[1] = np.nan  # a perfect retrieval otherwise
    i2t, t2i = retrieval.retrieval_ranks(images, texts, text_to_image)
    assert i2t[1] == 3 and t2i[1] == 3  # worse than any real rank
    np.testing.assert_array_equal(i2t[[0, 2]], [0, 0])


@pytest.mark.parametrize(
    "text_to_image, match",
    [
        (np.array([0, 0, 1, 1]), "no caption"),  # image 2 has no caption
        (np.array([0, 1, 2, 3]), r"\[0, 3\)"),
        (np.array([0, 1, 2]), "text_to_image"),
        (np.array([0.0, 1.0, 2.0, 2.0]), "text_to_image"),
    ],
)
def test_rejects_bad_text_to_image(text_to_image, match):
    with pytest.raises(ValueError, match=match):
        retrieval.retrieval_metrics(np.eye(3), np.ones((4, 3)), text_to_image)
