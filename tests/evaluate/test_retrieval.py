"""Tests for jaxmm.evaluate.retrieval: hand-worked ties, a brute-force reference, chunking,
and the candidates split over 1, 8 and 2x2x2 devices (tests/conftest.py gives 8 CPU devices)."""

import re

import chex
import jax
import numpy as np
import pytest

from jaxmm import sharding
from jaxmm.evaluate import retrieval

MESHES = {
    "1 device": lambda: sharding.make_mesh(devices=jax.devices()[:1]),
    "8 devices": lambda: sharding.make_mesh(),
    "2x2x2 devices": lambda: sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2}),
}


@pytest.fixture(autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 CPU devices"


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


# Not a multiple of the 8 devices nor of the chunk sizes above 1 below; for the seeds used,
# the texts (1 to 5 per image) are not either.
N_IMAGES = 13


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("values", ["continuous", "integer"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, N_IMAGES + 5])
def test_matches_brute_force(values, chunk_size, mesh_name):
    rng = np.random.default_rng(0 if values == "continuous" else 1)
    images, texts, text_to_image = _random_dataset(rng, N_IMAGES, 6, values)
    assert len(texts) % 8 and (chunk_size == 1 or len(texts) % chunk_size)  # padding
    mesh = MESHES[mesh_name]()
    i2t_ref, t2i_ref = _brute_force_ranks(images, texts, text_to_image)
    i2t, t2i = retrieval.retrieval_ranks(
        images, texts, text_to_image, chunk_size=chunk_size, mesh=mesh
    )
    np.testing.assert_array_equal(i2t, i2t_ref)
    np.testing.assert_array_equal(t2i, t2i_ref)
    ks = (1, 5, 10)
    metrics = retrieval.retrieval_metrics(
        images, texts, text_to_image, ks=ks, chunk_size=chunk_size, mesh=mesh
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


def test_same_ranks_on_one_and_eight_devices():
    """Flickr-like: 5 captions per image, 301 images (37.6 per device), frequent exact ties."""
    rng = np.random.default_rng(3)
    n, per_image = 301, 5
    text_to_image = rng.permutation(np.repeat(np.arange(n), per_image))
    # Coarse values: many exact ties, every score exact in float32.
    images = rng.integers(-2, 3, size=(n, 8)).astype(np.float32)
    texts = rng.integers(-2, 3, size=(n * per_image, 8)).astype(np.float32)
    one = retrieval.retrieval_ranks(
        images, texts, text_to_image, chunk_size=64, mesh=MESHES["1 device"]()
    )
    eight = retrieval.retrieval_ranks(
        images, texts, text_to_image, chunk_size=64, mesh=MESHES["8 devices"]()
    )
    reference = _brute_force_ranks(images, texts, text_to_image)
    for got_one, got_eight, want in zip(one, eight, reference, strict=True):
        np.testing.assert_array_equal(got_eight, got_one)
        np.testing.assert_array_equal(got_one, want)
    # Not a degenerate case: ranks spread over many values (here i2t up to 1211, t2i up to 300).
    assert len(np.unique(reference[0])) > 50 and len(np.unique(reference[1])) > 50


def test_padding_is_never_retrieved():
    """Every real score is negative, so a zero padding row (score 0) would outrank them all."""
    rng = np.random.default_rng(4)
    images = np.concatenate([np.ones((N_IMAGES, 1)), rng.normal(size=(N_IMAGES, 3))], axis=1)
    text_to_image = np.repeat(np.arange(N_IMAGES), 2)  # 26 texts: pads to 32 on 8 devices
    texts = np.concatenate([np.full((26, 1), -10.0), rng.normal(size=(26, 3))], axis=1)
    images, texts = images.astype(np.float32), texts.astype(np.float32)
    assert (images @ texts.T).max() < 0
    i2t, t2i = retrieval.retrieval_ranks(
        images, texts, text_to_image, chunk_size=5, mesh=MESHES["8 devices"]()
    )
    i2t_ref, t2i_ref = _brute_force_ranks(images, texts, text_to_image)
    np.testing.assert_array_equal(i2t, i2t_ref)
    np.testing.assert_array_equal(t2i, t2i_ref)
    assert i2t.max() <= len(texts) - 2 and t2i.max() <= N_IMAGES - 1


def test_streams_fixed_chunks_against_split_candidates(monkeypatch):
    """Each kernel call gets one `[chunk_size, D]` query block, replicated, and the padded
    candidates split into `[K_padded / 8, D]` slices, one per device."""
    rng = np.random.default_rng(2)
    images, texts, text_to_image = _random_dataset(rng, N_IMAGES, 4, "continuous")
    m = len(texts)
    calls = []
    make_kernel = retrieval._ranking_kernel

    def spy(mesh, num_candidates):
        kernel = make_kernel(mesh, num_candidates)

        def wrapped(queries, query_ids, candidates, candidate_ids):
            calls.append((num_candidates, queries, query_ids, candidates, candidate_ids))
            return kernel(queries, query_ids, candidates, candidate_ids)

        return wrapped

    monkeypatch.setattr(retrieval, "_ranking_kernel", spy)
    retrieval.retrieval_metrics(images, texts, text_to_image, chunk_size=5)
    i2t_calls = [c for c in calls if c[0] == m]
    t2i_calls = [c for c in calls if c[0] == N_IMAGES]
    assert len(i2t_calls) == -(-N_IMAGES // 5) and len(t2i_calls) == -(-m // 5)
    for num_candidates, queries, query_ids, candidates, candidate_ids in calls:
        padded = -(-num_candidates // 8) * 8
        assert queries.shape == (5, 4) and query_ids.shape == (5,)
        assert queries.sharding.is_fully_replicated
        assert candidates.shape == (padded, 4) and candidate_ids.shape == (padded,)
        assert len(candidates.sharding.device_set) == 8
        assert candidates.sharding.shard_shape(candidates.shape) == (padded // 8, 4)


def test_compiled_kernel_scores_one_slice_per_device():
    """The memory claim, read off the compiled program: each device computes a
    `[chunk, K / 8]` score block and the devices exchange only per-query numbers."""
    mesh = MESHES["8 devices"]()
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    chunk, k, d = 64, 1024, 16
    args = (
        jax.ShapeDtypeStruct((chunk, d), np.float32, sharding=whole),
        jax.ShapeDtypeStruct((chunk,), np.int32, sharding=whole),
        jax.ShapeDtypeStruct((k, d), np.float32, sharding=split),
        jax.ShapeDtypeStruct((k,), np.int32, sharding=split),
    )
    hlo = retrieval._ranking_kernel(mesh, k).lower(*args).compile().as_text()
    dots = re.findall(r"= (\S+) dot\(", hlo)
    assert dots and all(shape.startswith(f"f32[{chunk},{k // 8}]") for shape in dots), dots
    for gather in ("all-gather", "all-to-all", "collective-permute"):
        assert gather not in hlo
    reduced = re.findall(r"= (\S+) all-reduce\(", hlo)
    assert reduced and all(re.fullmatch(rf"[a-z0-9]+\[{chunk}\]\S*", s) for s in reduced), reduced


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
