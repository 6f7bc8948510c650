"""Caption generation with a `jaxmm.models.captioner.Captioner`: greedy, beam search, nucleus.

Every decoder runs on the captioner's key/value cache (`Captioner.decode`): the image is
encoded once, its cross-attention keys/values are stored at the first step, and each later
step feeds one token per sequence. Shapes are fixed (`[B, max_length]` outputs, a cache of
`max_length` positions), so each function compiles once under `jax.jit`; the loops are
`lax.while_loop`s that stop early when every sequence has ended.

Sequences start with SOT at position 0 and end with EOT followed by padding (id 0); a
sequence that reaches `max_length` without EOT is cut there. Padding and SOT are never
generated: their logits are masked.

- `greedy_search`: the most probable token at each step.
- `beam_search`: beam search with the GNMT length penalty (Wu et al. 2016, eq. 14),
  `lp(n) = ((5 + n) / 6) ** alpha` over the `n` generated tokens (EOT included, SOT not),
  scores `log p / lp(n)`. Each step keeps the `beam_size` best of all extensions of the live
  beams; an extension ending in EOT leaves the beam for the finished set, which keeps its
  `beam_size` best, so beam size 1 is greedy search. The search stops when no live beam
  can still beat the worst of `beam_size` finished ones (with `alpha >= 0` a live beam's
  final score is at most `log p / lp(max_length - 1)`), and beams still live at
  `max_length` are scored as they are.
- `sample`: nucleus (top-p) sampling (Holtzman et al. 2020) at a temperature: the smallest
  set of most probable tokens whose probability reaches `top_p`, renormalised.

`make_generate` picks one from settings and returns the jitted `(variables, images, rng)
-> tokens [B, max_length]` that evaluation and `python -m jaxmm.caption` use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# Stands for -inf in scores that are added to and compared (inf - inf would give NaN).
NEG = -1e9
Cache = Any
Step = Callable[[jax.Array, Cache, jax.Array | None], tuple[jax.Array, Cache]]


def gnmt_length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's `((5 + n) / 6) ** alpha` for `n` generated tokens."""
    return ((5.0 + length) / 6.0) ** alpha


def init_cache(model: nn.Module, variables: Any, context: jax.Array, max_length: int) -> Cache:
    """Zeroed decoding caches for `context.shape[0]` sequences of up to `max_length` tokens."""
    tokens = jnp.zeros((context.shape[0], max_length), jnp.int32)

    def created(variables, tokens, context):
        return model.apply(variables, tokens, context, method="decode", mutable=["cache"])[1]

    shapes = jax.eval_shape(created, _without_cache(variables), tokens, context)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _without_cache(variables: Any) -> dict[str, Any]:
    return {key: value for key, value in variables.items() if key != "cache"}


def make_step(model: nn.Module, variables: Any) -> Step:
    """`(tokens [B, T], cache, context or None) -> (logits of the last token [B, V], cache)`."""
    variables = _without_cache(variables)

    def step(tokens: jax.Array, cache: Cache, context: jax.Array | None = None):
        logits, updated = model.apply(
            {**variables, "cache": cache}, tokens, context, method="decode", mutable=["cache"]
        )
        return logits[:, -1], updated["cache"]

    return step


def _mask_banned(logits: jax.Array, banned: tuple[int, ...]) -> jax.Array:
    """`logits [..., V]` with the `banned` ids (padding, SOT) at `NEG`."""
    return logits.at[..., jnp.asarray(banned)].set(NEG)


def nucleus_logits(logits: jax.Array, top_p: float, temperature: float = 1.0) -> jax.Array:
    """`logits [..., V] / temperature` with every token outside the nucleus at `NEG`.

    The nucleus is the smallest set of most probable tokens whose probability reaches
    `top_p` (the most probable token always belongs to it; tokens tied with its least
    probable one belong too). `top_p >= 1` keeps every token.
    """
    logits = logits.astype(jnp.float32) / temperature
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    probabilities = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probabilities, axis=-1) - probabilities
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: the first has 0 before
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, NEG)


def _check(max_length: int, sot_id: int, eot_id: int, pad_id: int) -> tuple[int, ...]:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (SOT and one token), got {max_length}")
    if len({sot_id, eot_id, pad_id}) != 3:
        raise ValueError(f"SOT {sot_id}, EOT {eot_id} and padding {pad_id} must be distinct")
    return (pad_id, sot_id)


def _prime(model, variables, images, batch_repeat: int, max_length: int, sot_id: int):
    """Encodes `images`, repeats each `batch_repeat` times, and runs the SOT step.

    Returns `(step, logits [B * repeat, V], cache)`.
    """
    context = model.apply(_without_cache(variables), images, method="encode")  # [B, N, D]
    context = jnp.repeat(context, batch_repeat, axis=0)
    cache = init_cache(model, variables, context, max_length)
    step = make_step(model, variables)
    sot = jnp.full((context.shape[0], 1), sot_id, jnp.int32)
    logits, cache = step(sot, cache, context)
    return step, logits, cache


def _autoregressive(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    select: Callable[[jax.Array, jax.Array], jax.Array],
    rng: jax.Array,
    *,
    max_length: int,
    sot_id: int,
    eot_id: int,
    pad_id: int,
) -> jax.Array:
    """One token per step chosen by `select(masked logits [B, V], key) -> [B]`."""
    banned = _check(max_length, sot_id, eot_id, pad_id)
    step, logits, cache = _prime(model, variables, images, 1, max_length, sot_id)
    batch = images.shape[0]
    tokens = jnp.full((batch, max_length), pad_id, jnp.int32).at[:, 0].set(sot_id)
    done = jnp.zeros((batch,), bool)

    def running(state):
        t, _, done, _, _ = state
        return (t < max_length) & ~done.all()

    def body(state):
        t, tokens, done, logits, cache = state
        chosen = select(_mask_banned(logits, banned), jax.random.fold_in(rng, t))
        chosen = jnp.where(done, pad_id, chosen).astype(jnp.int32)
        tokens = tokens.at[:, t].set(chosen)
        done = done | (chosen == eot_id)
        logits, cache = step(chosen[:, None], cache)
        return t + 1, tokens, done, logits, cache

    state = (jnp.array(1, jnp.int32), tokens, done, logits, cache)
    return jax.lax.while_loop(running, body, state)[1]


def greedy_search(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    *,
    max_length: int,
    sot_id: int,
    eot_id: int,
    pad_id: int = 0,
) -> jax.Array:
    """`[B, H, W, 3]` images -> `[B, max_length]` tokens, the most probable one each step."""
    return _autoregressive(
        model,
        variables,
        images,
        lambda logits, key: jnp.argmax(logits, axis=-1),
        jax.random.PRNGKey(0),  # unused
        max_length=max_length,
        sot_id=sot_id,
        eot_id=eot_id,
        pad_id=pad_id,
    )


def sample(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    rng: jax.Array,
    *,
    top_p: float = 0.9,
    temperature: float = 1.0,
    max_length: int,
    sot_id: int,
    eot_id: int,
    pad_id: int = 0,
) -> jax.Array:
    """Nucleus sampling: `[B, H, W, 3]` images -> `[B, max_length]` tokens (`nucleus_logits`)."""
    if not 0 < top_p:
        raise ValueError(f"top_p must be > 0, got {top_p}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def select(logits, key):
        return jax.random.categorical(key, nucleus_logits(logits, top_p, temperature), axis=-1)

    return _autoregressive(
        model,
        variables,
        images,
        select,
        rng,
        max_length=max_length,
        sot_id=sot_id,
        eot_id=eot_id,
        pad_id=pad_id,
    )


def _gather_beams(tree: Any, parents: jax.Array, batch: int, beams: int) -> Any:
    """Each `[B * K, ...]` leaf of `tree` reordered so beam k takes beam `parents[b, k]`'s row
    (scalars, such as cache positions, are shared and stay)."""
    flat = (parents + beams * jnp.arange(batch)[:, None]).reshape(-1)  # [B * K]

    def gather(leaf):
        return leaf if leaf.ndim == 0 else jnp.take(leaf, flat, axis=0)

    return jax.tree.map(gather, tree)


def beam_search(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    *,
    beam_size: int,
    length_penalty: float = 0.6,
    max_length: int,
    sot_id: int,
    eot_id: int,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Beam search (see the module docstring).

    Returns:
        `(tokens [B, K, max_length], scores [B, K])`, best first; a score is the sequence's
        log-probability over `lp(n)`, `NEG` for an empty slot.
    """
    banned = _check(max_length, sot_id, eot_id, pad_id)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    batch, beams = images.shape[0], beam_size
    step, logits, cache = _prime(model, variables, images, beams, max_length, sot_id)
    vocab = logits.shape[-1]
    seqs = jnp.full((batch, beams, max_length), pad_id, jnp.int32).at[:, :, 0].set(sot_id)
    # Every beam starts as the same SOT: only the first may extend, or it would appear K times.
    alive_logp = jnp.full((batch, beams), NEG).at[:, 0].set(0.0)
    finished = (seqs, jnp.full((batch, beams), NEG))
    longest = gnmt_length_penalty(max_length - 1.0, length_penalty)

    def running(state):
        t, _, alive_logp, (_, finished_scores), _, _ = state
        # A live beam ends no better than log p / lp(max_length - 1): log p only falls, and
        # lp grows with length for alpha >= 0.
        best_logp = alive_logp.max(axis=1)
        best_alive = jnp.where(best_logp > NEG / 2, best_logp / longest, NEG)
        settled = finished_scores.min(axis=1) >= best_alive
        return (t < max_length) & ~settled.all()

    def body(state):
        t, seqs, alive_logp, (finished_seqs, finished_scores), logits, cache = state
        logp = jax.nn.log_softmax(_mask_banned(logits, banned).astype(jnp.float32), axis=-1)
        candidates = alive_logp[..., None] + logp.reshape(batch, beams, vocab)  # [B, K, V]
        top_logp, top = jax.lax.top_k(candidates.reshape(batch, beams * vocab), beams)  # [B, K]
        parents, tokens = top // vocab, top % vocab
        top_seqs = jnp.take_along_axis(seqs, parents[..., None], axis=1).at[:, :, t].set(tokens)
        valid = top_logp > NEG / 2
        ended = valid & (tokens == eot_id)
        # Extensions ending in EOT join the finished ones; the best K stay.
        ended_scores = jnp.where(ended, top_logp / gnmt_length_penalty(t, length_penalty), NEG)
        finished = _best(
            jnp.concatenate([finished_seqs, top_seqs], axis=1),
            jnp.concatenate([finished_scores, ended_scores], axis=1),
            beams,
        )
        # The others live on: an ended slot stays empty (NEG) and extends no further.
        alive_logp = jnp.where(ended, NEG, top_logp)
        cache = _gather_beams(cache, parents, batch, beams)
        logits, cache = step(tokens.reshape(-1, 1), cache)
        return t + 1, top_seqs, alive_logp, finished, logits, cache

    state = (jnp.array(1, jnp.int32), seqs, alive_logp, finished, logits, cache)
    t, seqs, alive_logp, (finished_seqs, finished_scores), _, _ = jax.lax.while_loop(
        running, body, state
    )
    # Beams still live are scored as they stand (cut at max_length, or unable to win).
    alive_scores = jnp.where(
        alive_logp > NEG / 2, alive_logp / gnmt_length_penalty(t - 1.0, length_penalty), NEG
    )
    return _best(
        jnp.concatenate([finished_seqs, seqs], axis=1),
        jnp.concatenate([finished_scores, alive_scores], axis=1),
        beams,
    )


def _best(seqs: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The `k` best of `seqs [B, M, L]` by `scores [B, M]`, best first (earlier on ties)."""
    top_scores, index = jax.lax.top_k(scores, k)
    return jnp.take_along_axis(seqs, index[..., None], axis=1), top_scores


def make_generate(
    model: nn.Module,
    *,
    max_length: int,
    sot_id: int,
    eot_id: int,
    pad_id: int = 0,
    beam_size: int = 1,
    length_penalty: float = 0.6,
    top_p: float = 0.0,
    temperature: float = 1.0,
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """The jitted `(variables, images [B, H, W, 3], rng) -> tokens [B, max_length]`.

    `top_p > 0` samples from the nucleus (`rng` draws); otherwise `beam_size > 1` runs beam
    search and `beam_size == 1` greedy search (`rng` unused).
    """
    ids = dict(max_length=max_length, sot_id=sot_id, eot_id=eot_id, pad_id=pad_id)
    _check(max_length, sot_id, eot_id, pad_id)
    if top_p > 0:

        def generate(variables, images, rng):
            return sample(
                model, variables, images, rng, top_p=top_p, temperature=temperature, **ids
            )

    elif beam_size > 1:

        def generate(variables, images, rng):
            del rng
            tokens, _ = beam_search(
                model,
                variables,
                images,
                beam_size=beam_size,
                length_penalty=length_penalty,
                **ids,
            )
            return tokens[:, 0]

    elif beam_size == 1:

        def generate(variables, images, rng):
            del rng
            return greedy_search(model, variables, images, **ids)

    else:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    return jax.jit(generate)
