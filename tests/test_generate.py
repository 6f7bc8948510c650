"""Generation against uncached rollouts and brute-force enumeration on a tiny captioner."""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmm import generate
from jaxmm.models import create_model

# Ids of the tiny vocabulary: padding 0, words 1 and 2, SOT 3, EOT 4.
PAD, SOT, EOT, VOCAB, LENGTH = 0, 3, 4, 5, 4
IDS = dict(max_length=LENGTH, sot_id=SOT, eot_id=EOT, pad_id=PAD)


@pytest.fixture(scope="module")
def tiny():
    """A captioner over 5 ids whose weights are scaled up so its distributions are peaked
    and differ between images and positions."""
    model = create_model(
        "captioner_test",
        image=dict(depth=1),
        decoder=dict(vocab_size=VOCAB, max_length=LENGTH, depth=1),
    )
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    tokens = jnp.zeros((1, LENGTH), jnp.int32)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(3), images[:1], tokens))
    variables = jax.tree.map(lambda x: 20 * x if x.ndim >= 2 else x, variables)
    return model, variables, images


@pytest.fixture(scope="module")
def greedy(tiny):
    model, variables, images = tiny
    return np.asarray(generate.make_generate(model, **IDS)(variables, images, None))


@partial(jax.jit, static_argnums=0)
def _next_log_probs(model, variables, images, prefix):
    """Uncached next-token log-probabilities after `prefix [B, T]`, padding and SOT masked."""
    logits = model.apply(variables, images, prefix)[:, -1]
    logits = logits.at[:, jnp.asarray([PAD, SOT])].set(generate.NEG)
    return jax.nn.log_softmax(logits)


def _log_probs(model, variables, images, prefix) -> np.ndarray:
    return np.asarray(_next_log_probs(model, variables, images, jnp.asarray(prefix, jnp.int32)))


def _enumerate(model, variables, images, alpha):
    """Every sequence the decoder can produce (words then EOT, or LENGTH - 1 words), scored
    as `log p / lp(n)` from the uncached model; `[(score, tokens)]` per image, best first."""
    words = (1, 2)
    sequences = [(*w, EOT) for n in range(LENGTH - 1) for w in itertools.product(words, repeat=n)]
    sequences += list(itertools.product(words, repeat=LENGTH - 1))
    scored = [[] for _ in range(images.shape[0])]
    for seq in sequences:
        logp = np.zeros(images.shape[0])
        prefix = np.full((images.shape[0], 1), SOT)
        for token in seq:
            logp += _log_probs(model, variables, images, prefix)[:, token]
            prefix = np.concatenate([prefix, np.full((images.shape[0], 1), token)], axis=1)
        lp = ((5 + len(seq)) / 6) ** alpha
        padded = [SOT, *seq] + [PAD] * (LENGTH - 1 - len(seq))
        for i in range(images.shape[0]):
            scored[i].append((logp[i] / lp, padded))
    return [sorted(s, key=lambda pair: -pair[0]) for s in scored]


def test_greedy_equals_the_uncached_argmax_rollout(tiny, greedy):
    """The whole prefix is re-run without any cache at every step, and the argmax taken."""
    model, variables, images = tiny
    want = np.full((images.shape[0], LENGTH), PAD, np.int32)
    want[:, 0] = SOT
    done = np.zeros(images.shape[0], bool)
    for t in range(1, LENGTH):
        chosen = _log_probs(model, variables, images, want[:, :t]).argmax(-1)
        want[:, t] = np.where(done, PAD, chosen)
        done |= want[:, t] == EOT
    np.testing.assert_array_equal(greedy, want)
    assert len({tuple(row) for row in want}) > 1  # the images are captioned differently


def test_beam_size_one_is_greedy(tiny, greedy):
    model, variables, images = tiny
    for alpha in (0.0, 2.0):
        beams, _ = jax.jit(
            lambda v, x, a=alpha: generate.beam_search(
                model, v, x, beam_size=1, length_penalty=a, **IDS
            )
        )(variables, images)
        np.testing.assert_array_equal(np.asarray(beams[:, 0]), greedy)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_finds_the_best_of_all_sequences(tiny, alpha):
    """With 12 beams no extension is ever dropped (at most 4 live beams x 3 continuations), so
    beam search must return the enumerated optimum and its score (float32, peaked logits:
    2e-4 absolute), and its finished list is the top of the enumeration, in order."""
    model, variables, images = tiny
    beam = generate.make_generate(model, beam_size=12, length_penalty=alpha, **IDS)
    tokens, scores = jax.jit(
        lambda v, x: generate.beam_search(model, v, x, beam_size=12, length_penalty=alpha, **IDS)
    )(variables, images)
    ranked = _enumerate(model, variables, images, alpha)
    for i, candidates in enumerate(ranked):
        best_score, best = candidates[0]
        assert best_score - candidates[1][0] > 1e-3, "a tie would make the test ambiguous"
        np.testing.assert_array_equal(np.asarray(tokens[i, 0]), best)
        np.testing.assert_allclose(
            np.asarray(scores[i, :5]), [s for s, _ in candidates[:5]], atol=2e-4
        )
    np.testing.assert_array_equal(np.asarray(beam(variables, images, None)), tokens[:, 0])
    # The length penalty reorders the candidates of some image, so the test depends on it.
    if alpha:
        top = lambda ranking: [[list(t) for _, t in r[:5]] for r in ranking]  # noqa: E731
        assert top(ranked) != top(_enumerate(model, variables, images, 0.0))


def test_length_penalty_is_gnmts():
    # ((5 + 3) / 6) ** 0.6 and ((5 + 1) / 6) ** 2, worked out by hand.
    np.testing.assert_allclose(generate.gnmt_length_penalty(3.0, 0.6), 1.188_401, atol=1e-6)
    np.testing.assert_allclose(generate.gnmt_length_penalty(1.0, 2.0), 1.0)


def test_top_p_towards_zero_is_greedy(tiny, greedy):
    model, variables, images = tiny
    rng = jax.random.PRNGKey(0)
    sampled = generate.make_generate(model, top_p=1e-6, **IDS)(variables, images, rng)
    np.testing.assert_array_equal(np.asarray(sampled), greedy)


def test_sampled_tokens_stay_inside_the_nucleus(tiny):
    """Each sampled token is among the fewest most probable tokens (uncached model, numpy)
    whose probability reaches top_p; over many draws more than one token is taken."""
    model, variables, images = tiny
    top_p, temperature = 0.8, 1.5
    images = jnp.tile(images, (8, 1, 1, 1))  # 32 sequences
    sample = generate.make_generate(model, top_p=top_p, temperature=temperature, **IDS)
    tokens = np.asarray(sample(variables, images, jax.random.PRNGKey(1)))
    seen = set()
    for t in range(1, LENGTH):
        logp = _log_probs(model, variables, images, tokens[:, :t]) / temperature
        for row in range(tokens.shape[0]):
            if tokens[row, t - 1] in (EOT, PAD):
                assert tokens[row, t] == PAD
                continue
            p = np.exp(logp[row] - logp[row].max())
            p /= p.sum()
            order = np.argsort(-p)
            size = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)
            assert tokens[row, t] in order[:size], (row, t, p)
            seen.add((t, int(tokens[row, t])))
    assert len(seen) > LENGTH  # more than one token drawn at some step


def test_nucleus_logits_by_hand():
    logits = jnp.log(jnp.asarray([0.1, 0.5, 0.15, 0.25]))
    # Sorted 0.5, 0.25, 0.15, 0.1: 0.5 < 0.7, 0.75 >= 0.7: the nucleus is {1, 3}.
    kept = np.asarray(generate.nucleus_logits(logits, 0.7)) > generate.NEG / 2
    np.testing.assert_array_equal(kept, [False, True, False, True])
    everything = np.asarray(generate.nucleus_logits(logits, 1.0)) > generate.NEG / 2
    assert everything.all()


def test_bad_settings_are_refused(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match="must be distinct"):
        generate.make_generate(model, max_length=4, sot_id=3, eot_id=3)
    with pytest.raises(ValueError, match="beam_size"):
        generate.make_generate(model, beam_size=0, **IDS)
    with pytest.raises(ValueError, match="max_length"):
        generate.make_generate(model, max_length=1, sot_id=3, eot_id=4)
