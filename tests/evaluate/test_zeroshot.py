"""Tests for jaxmm.evaluate.zeroshot and jaxmm.evaluate.templates."""

import ast
import math
import string

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.evaluate import templates as templates_lib
from jaxmm.evaluate import zeroshot

# --------------------------------------------------------------------------------------------
# zeroshot_classifier

_CONTEXT = 32


def _char_tokenize(texts: list[str]) -> np.ndarray:
    """A stand-in tokenizer: character codes, zero padded to `_CONTEXT`. `[len(texts), L]`."""
    tokens = np.zeros((len(texts), _CONTEXT), np.int32)
    for i, text in enumerate(texts):
        codes = [ord(c) for c in text[:_CONTEXT]]
        tokens[i, : len(codes)] = codes
    return tokens


class _HashingEncoder:
    """Deterministic, unnormalised text embeddings of token rows; records the batch shapes."""

    def __init__(self, dim: int = 6, seed: int = 0):
        self.projection = np.random.default_rng(seed).normal(size=(_CONTEXT, dim))
        self.shapes = []

    def __call__(self, tokens: np.ndarray) -> jnp.ndarray:
        self.shapes.append(tokens.shape)
        # A jax array with norms far from 1, as a real encoder might return.
        return jnp.asarray(np.tanh(tokens / 50.0 @ self.projection) * 3.0 + 0.5, jnp.float32)


def _reference_ensemble(encode, class_names, templates) -> np.ndarray:
    """CLIP's notebook, one prompt at a time in float64: normalise, average, renormalise."""
    rows = []
    for name in class_names:
        embs = np.stack(
            [np.asarray(encode(_char_tokenize([t.format(name)])), np.float64)[0] for t in templates]
        )
        embs /= np.linalg.norm(embs, axis=1, keepdims=True)
        mean = embs.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def test_classifier_matches_one_prompt_at_a_time_reference():
    class_names = ["red circle", "blue square", "green triangle", "yellow star", "cat"]
    templates = ["a photo of a {}.", "a {} on a textured background.", "there is a {} here."]
    encoder = _HashingEncoder()
    # 5 x 3 = 15 prompts in batches of 4: three full batches and one of 3 padded to 4.
    classifier = zeroshot.zeroshot_classifier(
        encoder, _char_tokenize, class_names, templates, batch_size=4
    )
    assert encoder.shapes == [(4, _CONTEXT)] * 4
    assert classifier.dtype == np.float32 and classifier.shape == (5, 6)
    expected = _reference_ensemble(_HashingEncoder(), class_names, templates)
    chex.assert_trees_all_close(classifier, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(np.linalg.norm(classifier, axis=1), np.ones(5), atol=1e-6)


def test_classifier_single_padded_batch():
    encoder = _HashingEncoder()
    classifier = zeroshot.zeroshot_classifier(
        encoder, _char_tokenize, ["a", "b"], ["{}.", "my {}"], batch_size=256
    )
    assert encoder.shapes == [(256, _CONTEXT)]
    expected = _reference_ensemble(_HashingEncoder(), ["a", "b"], ["{}.", "my {}"])
    chex.assert_trees_all_close(classifier, expected, rtol=1e-5, atol=1e-6)


def test_classifier_hand_worked_normalises_each_template_first():
    # Lookup "encoder": each prompt has a fixed, unnormalised embedding.
    table = {
        "a cat.": [2.0, 0.0, 0.0],  # -> [1, 0, 0]
        "the cat!": [0.0, 1.0, 0.0],  # -> [0, 1, 0]
        "a dog.": [0.0, 0.0, 5.0],  # -> [0, 0, 1]
        "the dog!": [0.0, 0.0, 1.0],  # -> [0, 0, 1]
    }
    texts = list(table)
    vectors = np.array([table[t] for t in texts])

    def tokenize(batch):
        return np.array([[texts.index(t)] for t in batch], np.int32)

    def encode(tokens):
        return jnp.asarray(vectors[tokens[:, 0]], jnp.bfloat16)  # bf16 comes back float32

    classifier = zeroshot.zeroshot_classifier(
        encode, tokenize, ["cat", "dog"], ["a {}.", "the {}!"], batch_size=3
    )
    # cat: mean([1, 0, 0], [0, 1, 0]) = [.5, .5, 0] -> [1/sqrt 2, 1/sqrt 2, 0]; averaging the
    # raw embeddings first would give [2, 1, 0] / sqrt 5 instead.  dog: [0, 0, 1].
    r = 1 / math.sqrt(2)
    expected = np.array([[r, r, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert classifier.dtype == np.float32
    chex.assert_trees_all_close(classifier, expected, atol=1e-6, rtol=0)


def test_classifier_rejects_empty_inputs():
    with pytest.raises(ValueError, match="at least one"):
        zeroshot.zeroshot_classifier(_HashingEncoder(), _char_tokenize, [], ["{}"])


# --------------------------------------------------------------------------------------------
# zeroshot_metrics, hand-worked

# classifier = I_3, so an image's scores are its own coordinates.
_CLASSIFIER = np.eye(3, dtype=np.float32)
_IMAGES = np.array(
    [
        [0.9, 0.1, 0.0],  # label 0: best 0            -> rank 0, hit
        [0.2, 0.7, 0.1],  # label 1: best 1            -> rank 0, hit
        [0.6, 0.3, 0.1],  # label 1: class 0 ahead     -> rank 1, miss
        [0.1, 0.2, 0.7],  # label 2: best 2            -> rank 0, hit
        [0.5, 0.5, 0.0],  # label 1: ties with 0, lower index first -> rank 1, miss
        [0.5, 0.5, 0.0],  # label 0: ties with 1, wins as lower index -> rank 0, hit
    ],
    np.float32,
)
_LABELS = np.array([0, 1, 1, 2, 1, 0])


def test_ranks_hand_worked_with_ties():
    ranks = zeroshot.true_class_ranks(_IMAGES, _LABELS, _CLASSIFIER, chunk_size=4)
    np.testing.assert_array_equal(ranks, [0, 0, 1, 0, 1, 0])


def test_metrics_hand_worked():
    metrics = zeroshot.zeroshot_metrics(_IMAGES, _LABELS, _CLASSIFIER, topk=(1, 2, 5))
    # top1: images 0, 1, 3, 5 -> 4/6.  top2: every rank <= 1 -> 1.  No top5 with 3 classes.
    # Per class: class 0 {0, 5} -> 2/2; class 1 {1, 2, 4} -> 1/3; class 2 {3} -> 1/1.
    # Balanced: (1 + 1/3 + 1) / 3 = 7/9.
    assert set(metrics) == {"top1", "top2", "mean_class_top1"}
    assert all(type(v) is float for v in metrics.values())
    chex.assert_trees_all_close(
        metrics, {"top1": 4 / 6, "top2": 1.0, "mean_class_top1": 7 / 9}, atol=1e-12, rtol=0
    )


def test_metrics_ignore_image_scale():
    # Cosine ranking does not depend on a positive scale of each image embedding.
    scaled = _IMAGES * np.array([[1.0], [3.0], [0.5], [2.0], [7.0], [0.25]], np.float32)
    assert zeroshot.zeroshot_metrics(scaled, _LABELS, _CLASSIFIER) == zeroshot.zeroshot_metrics(
        _IMAGES, _LABELS, _CLASSIFIER
    )


def test_metrics_mask():
    mask = np.array([True, True, True, False, True, False])
    metrics = zeroshot.zeroshot_metrics(_IMAGES, _LABELS, _CLASSIFIER, mask=mask)
    # Kept: images 0 (hit), 1 (hit), 2 (miss), 4 (miss) -> top1 2/4.
    # Class 0 {0} -> 1; class 1 {1, 2, 4} -> 1/3; class 2 has no kept example: left out.
    # Balanced: (1 + 1/3) / 2 = 2/3.
    chex.assert_trees_all_close(
        metrics, {"top1": 0.5, "mean_class_top1": 2 / 3}, atol=1e-12, rtol=0
    )
    per_class = zeroshot.per_class_accuracy(_IMAGES, _LABELS, _CLASSIFIER, mask=mask)
    np.testing.assert_allclose(per_class, [1.0, 1 / 3, np.nan], rtol=0, atol=1e-12)
    # Masking equals evaluating the subset.
    subset = zeroshot.zeroshot_metrics(_IMAGES[mask], _LABELS[mask], _CLASSIFIER)
    assert subset == metrics


def test_metrics_nan_embedding_is_a_miss():
    images = _IMAGES.copy()
    images[0] = np.nan  # was a hit
    metrics = zeroshot.zeroshot_metrics(images, _LABELS, _CLASSIFIER, topk=(1, 3))
    chex.assert_trees_all_close(metrics["top1"], 3 / 6, atol=1e-12, rtol=0)
    chex.assert_trees_all_close(metrics["top3"], 5 / 6, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "labels, mask, match",
    [
        (np.array([0, 1, 1, 2, 1, 3]), None, "labels must lie"),
        (np.array([0, 1, 1, 2, 1, -1]), None, "labels must lie"),
        (_LABELS.astype(np.float32), None, "integers"),
        (_LABELS, np.zeros(6, bool), "no examples"),
        (_LABELS, np.ones(5, bool), "mask"),
    ],
)
def test_metrics_reject_bad_input(labels, mask, match):
    with pytest.raises(ValueError, match=match):
        zeroshot.zeroshot_metrics(_IMAGES, labels, _CLASSIFIER, mask=mask)


# --------------------------------------------------------------------------------------------
# zeroshot_metrics against a brute-force numpy reference


def _reference_metrics(images, labels, classifier, topk):
    scores = images.astype(np.float64) @ classifier.astype(np.float64).T  # [N, C]
    # A stable sort of the negated scores puts ties in ascending class order.
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.array(
        [int(np.flatnonzero(row == y)[0]) for row, y in zip(order, labels, strict=True)]
    )
    metrics = {f"top{k}": float(np.mean(ranks < k)) for k in topk if k <= classifier.shape[0]}
    recalls = [np.mean(ranks[labels == c] == 0) for c in np.unique(labels)]
    metrics["mean_class_top1"] = float(np.mean(recalls))
    return ranks, metrics


@pytest.mark.parametrize("values", ["continuous", "integer"])
@pytest.mark.parametrize("chunk_size", [1, 5, 37, 50])
def test_metrics_match_brute_force(values, chunk_size):
    rng = np.random.default_rng(0)
    n, c, d = 37, 12, 8
    if values == "continuous":
        images = rng.normal(size=(n, d)).astype(np.float32)
        classifier = rng.normal(size=(c, d)).astype(np.float32)
    else:
        # Small integers: every score is exact, and ties are frequent.
        images = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
        classifier = rng.integers(-1, 2, size=(c, d)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    ranks, expected = _reference_metrics(images, labels, classifier, (1, 5, 10))
    got_ranks = zeroshot.true_class_ranks(images, labels, classifier, chunk_size=chunk_size)
    np.testing.assert_array_equal(got_ranks, ranks)
    metrics = zeroshot.zeroshot_metrics(
        images, labels, classifier, topk=(1, 5, 10), chunk_size=chunk_size
    )
    chex.assert_trees_all_close(metrics, expected, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# templates


def _placeholders(template: str) -> list[str | None]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


@pytest.mark.parametrize("name", sorted(templates_lib.TEMPLATES))
def test_templates_have_exactly_one_placeholder(name):
    templates = templates_lib.get_templates(name)
    assert templates and len(set(templates)) == len(templates)
    for template in templates:
        assert _placeholders(template) == [""], template
        assert "{" not in template.format("x") and "}" not in template.format("x")


def test_template_counts():
    assert len(templates_lib.get_templates("imagenet")) == 80
    assert len(templates_lib.get_templates("cifar10")) == 18
    assert templates_lib.get_templates("cifar100") == templates_lib.get_templates("cifar10")
    assert templates_lib.get_templates("simple") == ("a photo of a {}.",)
    assert 6 <= len(templates_lib.get_templates("shapes")) <= 10
    imagenet = templates_lib.get_templates("imagenet")
    # First, last, and the quirky ones of OpenAI's notebook, verbatim.
    assert imagenet[0] == "a bad photo of a {}."
    assert imagenet[-1] == "a tattoo of the {}."
    assert {"itap of a {}.", "a origami {}.", "a {} in a video game."} <= set(imagenet)


def test_class_names():
    assert len(templates_lib.CLASS_NAMES["cifar10"]) == 10
    assert len(templates_lib.CLASS_NAMES["cifar100"]) == 100
    assert len(set(templates_lib.CLASS_NAMES["cifar100"])) == 100
    assert templates_lib.CLASS_NAMES["cifar10"][0] == "airplane"
    assert templates_lib.CLASS_NAMES["cifar100"][-1] == "worm"


def test_unknown_template_set_lists_known_names():
    with pytest.raises(KeyError, match="imagenet") as err:
        templates_lib.get_templates("nope")
    assert "cifar10" in str(err.value) and "shapes" in str(err.value)


def _prompts_md_block(text: str, section: str, name: str) -> list[str]:
    body = text.split(f"## {section}\n", 1)[1]
    start = body.index(f"{name} = [") + len(f"{name} = ")
    return ast.literal_eval(body[start : body.index("]", start) + 1])


@pytest.mark.parametrize("section, key", [("CIFAR10", "cifar10"), ("CIFAR100", "cifar100")])
def test_cifar_data_matches_openai_prompts_file(shared_data, section, key):
    path = shared_data / "clip_bpe" / "openai_clip_prompts.md"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    text = path.read_text()
    assert list(templates_lib.CLASS_NAMES[key]) == _prompts_md_block(text, section, "classes")
    assert list(templates_lib.TEMPLATES[key]) == _prompts_md_block(text, section, "templates")
