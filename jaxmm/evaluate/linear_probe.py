"""Linear-probe evaluation: logistic regression on frozen image features (CLIP, section 3.2).

OpenAI's protocol (Radford et al. 2021, appendix A.3): the image features of a labelled split
are L2-normalised, a multinomial logistic regression with an L2 penalty is fitted to them,
and its strength is chosen on a validation split by a parametric search: a coarse sweep over
C = 1e-6, 1e-4, ..., 1e6, then repeatedly halving the log-spaced interval around the best C
until it reaches 8 steps per decade. The classifier is then refitted with that C on train +
validation and scored on the evaluation split.

C has scikit-learn's meaning (OpenAI used `sklearn.linear_model.LogisticRegression`, whose
lbfgs solver minimises `C * sum_i CE_i + ||W||^2 / 2` and leaves the bias unpenalised). The
same minimiser is found here from the per-example mean, `mean_i CE_i + ||W||^2 / (2 C N)`,
which keeps the loss O(1) whatever N is. It is solved full-batch by L-BFGS (`optax.lbfgs`)
inside one jitted `while_loop`, so the whole fit runs on the accelerator and the C sweep
reuses one compilation (C is a traced argument).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The coarse sweep's log10(C) grid and the final resolution, from the CLIP paper.
COARSE_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
STEPS_PER_DECADE = 8
_NORM_EPS = 1e-12


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows of `[N, D]` scaled to unit L2 norm (zero rows stay zero)."""
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, _NORM_EPS)


def logits(params: dict[str, jax.Array], features: jax.Array) -> jax.Array:
    """`[N, D] -> [N, C]` class scores of a probe `{"weights": [D, C], "bias": [C]}`."""
    # Full float32 precision: the solver's line search needs exact function values.
    return (
        jnp.einsum("nd,dc->nc", features, params["weights"], precision=jax.lax.Precision.HIGHEST)
        + params["bias"]
    )


def objective(
    params: dict[str, jax.Array],
    features: jax.Array,
    labels: jax.Array,
    c: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """`mean_i CE_i + ||W||^2 / (2 C N)`: scikit-learn's L2 logistic loss divided by `C * N`.

    `mask` (`[N]` bool) keeps only some examples, N being their count: the C sweep fits subsets
    of one array, so its shapes, and the compiled solver, stay the same.
    """
    mask = jnp.ones(labels.shape, bool) if mask is None else mask
    n = jnp.sum(mask)
    log_probs = jax.nn.log_softmax(logits(params, features))
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return jnp.sum(jnp.where(mask, nll, 0.0)) / n + jnp.sum(params["weights"] ** 2) / (2.0 * c * n)


@partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit(features, labels, mask, c, tol, *, num_classes: int, max_iter: int):
    # Strong penalties make the weights' curvature (about 1 / (C N)) dwarf the unpenalised
    # bias's (at most 1), which stalls L-BFGS for thousands of steps. Solving for
    # V = W * sqrt(1 + 1 / (C N)) brings both to order 1 (the features are unit-norm).
    scale = jnp.sqrt(1.0 + 1.0 / (c * jnp.sum(mask)))

    def loss(scaled):
        params = {"weights": scaled["weights"] / scale, "bias": scaled["bias"]}
        return objective(params, features, labels, c, mask)

    scaled = {
        "weights": jnp.zeros((features.shape[1], num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    solver = optax.lbfgs()
    # Reuses the value and gradient the line search already computed at the accepted point.
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        scaled, state = carry
        value, grad = value_and_grad(scaled, state=state)
        updates, state = solver.update(grad, state, scaled, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(scaled, updates), state

    def not_converged(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return (count == 0) | ((count < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

    scaled, state = jax.lax.while_loop(not_converged, step, (scaled, solver.init(scaled)))
    params = {"weights": scaled["weights"] / scale, "bias": scaled["bias"]}
    return params, optax.tree_utils.tree_get(state, "count")


def fit_logistic_regression(
    features: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    num_classes: int,
    c: float,
    *,
    mask: np.ndarray | jax.Array | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> dict[str, jax.Array]:
    """Minimises `objective` from zero weights with L-BFGS.

    Args:
      features: `[N, D]` float32 (normalise them first for OpenAI's protocol).
      labels: `[N]` int in [0, num_classes).
      num_classes: C, the probe's output count.
      c: inverse L2 strength, scikit-learn's `C`.
      mask: optional `[N]` bool: fit only the True examples.
      max_iter: L-BFGS iterations at most (one iteration may evaluate the loss several times).
      tol: stop once the gradient's L2 norm (with respect to the rescaled weights) is below.

    Returns:
      `{"weights": [D, num_classes], "bias": [num_classes]}` float32.
    """
    labels = jnp.asarray(labels, jnp.int32)
    params, _ = _fit(
        jnp.asarray(features, jnp.float32),
        labels,
        jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask, bool),
        jnp.float32(c),
        jnp.float32(tol),
        num_classes=num_classes,
        max_iter=max_iter,
    )
    return params


def accuracy(params: dict[str, jax.Array], features: jax.Array, labels: np.ndarray) -> float:
    """Top-1 accuracy of the probe on `[N, D]` features (argmax ties go to the lower class)."""
    predictions = np.asarray(jnp.argmax(logits(params, jnp.asarray(features)), axis=1))
    return float(np.mean(predictions == np.asarray(labels)))


def sweep_c(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    **fit_kwargs,
) -> tuple[float, dict[float, float]]:
    """OpenAI's search for C: the coarse grid, then halve the log step around the best.

    Args:
      train, validation: `(features [N, D], labels [N])` pairs, features already normalised.
      num_classes: the class count.
      **fit_kwargs: passed to `fit_logistic_regression`.

    Returns:
      `(best C, {C: validation accuracy})` over every C tried. Equal accuracies go to the
      smaller C (the stronger penalty): small validation sets tie often.
    """
    # Fit on the train rows of train + validation: the same shapes as `linear_probe`'s refit.
    features = jnp.asarray(np.concatenate([train[0], validation[0]]))
    labels = jnp.asarray(np.concatenate([train[1], validation[1]]))
    is_train = np.arange(len(labels)) < len(train[1])
    val_x, val_y = jnp.asarray(validation[0]), np.asarray(validation[1])
    scores: dict[float, float] = {}  # log10(C) -> validation accuracy

    def score(log10_c: float) -> None:
        if log10_c not in scores:
            params = fit_logistic_regression(
                features, labels, num_classes, 10.0**log10_c, mask=is_train, **fit_kwargs
            )
            scores[log10_c] = accuracy(params, val_x, val_y)

    def best() -> float:
        return max(sorted(scores), key=lambda log10_c: scores[log10_c])  # first max: smallest C

    for log10_c in COARSE_LOG10_C:
        score(log10_c)
    step = COARSE_LOG10_C[1] - COARSE_LOG10_C[0]
    while step > 1 / STEPS_PER_DECADE:
        step /= 2
        centre = best()
        for log10_c in (centre - step, centre + step):
            # The search stays inside the coarse grid's range, as in the paper.
            if COARSE_LOG10_C[0] <= log10_c <= COARSE_LOG10_C[-1]:
                score(log10_c)
    return 10.0 ** best(), {10.0**k: v for k, v in sorted(scores.items())}


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    **fit_kwargs,
) -> dict[str, float]:
    """The full protocol: normalise, choose C on `validation`, refit on both, score `test`.

    Args:
      train, validation, test: `(features [N, D], labels [N])` of unnormalised image features.
      num_classes: the class count.
      **fit_kwargs: passed to `fit_logistic_regression`.

    Returns:
      `{"top1": test accuracy, "C": the chosen C}`.
    """
    splits = (train, validation, test)
    train, validation, test = ((l2_normalize(x), np.asarray(y)) for x, y in splits)
    c, _ = sweep_c(train, validation, num_classes, **fit_kwargs)
    params = fit_logistic_regression(
        np.concatenate([train[0], validation[0]]),
        np.concatenate([train[1], validation[1]]),
        num_classes,
        c,
        **fit_kwargs,
    )
    return {"top1": accuracy(params, test[0], test[1]), "C": c}
