"""Losses as pure functions of arrays.

Contrastive image-text losses:

* `clip_infonce_loss`: the symmetric InfoNCE of CLIP (Radford et al. 2021, "Learning
  Transferable Visual Models From Natural Language Supervision", Fig. 3 pseudocode; matches
  open_clip's `ClipLoss` on one device).
* `siglip_loss`: the pairwise sigmoid loss of SigLIP (Zhai et al. 2023, "Sigmoid Loss for
  Language Image Pre-Training", Algorithm 1; matches big_vision's `siglip` trainer).

Knowledge distillation: `distillation_kl` (Hinton et al. 2015) for classifiers,
`clip_similarity_distillation_loss` and `embedding_distillation_loss` for CLIP students.

The contrastive losses are written over the GLOBAL batch with plain `jnp` ops. Called under
`jax.jit` on embeddings sharded along the batch axis, XLA inserts the collectives (an
all-gather of the other tower's embeddings and the cross-device reductions), so there is no
per-device code here and the result equals the one-device result.

Everything is computed in float32 whatever the input dtype: with a logit scale up to 100 the
logits of bf16 embeddings would carry errors of order 0.1, enough to change the loss.
"""

import jax
import jax.numpy as jnp
import optax

# The similarity matrix is a tiny share of a CLIP step's FLOPs (N^2 D against N times a
# tower), so it is computed at full float32 precision rather than the bf16/TF32 passes that
# accelerators use for float32 dots by default.
_PRECISION = jax.lax.Precision.HIGHEST


def _check_pair(image_embeddings: jax.Array, text_embeddings: jax.Array) -> None:
    if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "expected image and text embeddings of the same shape [N, D], got "
            f"{image_embeddings.shape} and {text_embeddings.shape}"
        )


def _similarity(image_embeddings: jax.Array, text_embeddings: jax.Array) -> jax.Array:
    """Cosine similarities of already normalised embeddings, in float32.

    Args:
      image_embeddings: `[N, D]`.
      text_embeddings: `[N, D]`.

    Returns:
      `[N, N]` float32, rows indexed by image, columns by text.
    """
    img = image_embeddings.astype(jnp.float32)
    txt = text_embeddings.astype(jnp.float32)
    return jnp.einsum("nd,md->nm", img, txt, precision=_PRECISION)


def clip_infonce_loss(
    image_embeddings: jax.Array, text_embeddings: jax.Array, logit_scale: jax.Array | float
) -> jax.Array:
    """Symmetric InfoNCE loss of CLIP over the global batch.

    `logits = exp(logit_scale) * img @ txt.T`; the loss is the mean of the image->text
    cross-entropy (softmax over each row) and the text->image cross-entropy (softmax over
    each column), both with the matching pair, on the diagonal, as target.

    Args:
      image_embeddings: `[N, D]`, L2-normalised by the model; any float dtype.
      text_embeddings: `[N, D]`, L2-normalised; row i is the caption of image i.
      logit_scale: scalar, the log of the inverse temperature (CLIP initialises it to
        ln(1/0.07)); exponentiated here.

    Returns:
      Scalar float32 loss.
    """
    _check_pair(image_embeddings, text_embeddings)
    scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
    logits = scale * _similarity(image_embeddings, text_embeddings)  # [N, N]
    # The positives are the diagonal; taking it as a row-wise dot product instead of
    # jnp.diagonal keeps it local to each batch shard.
    positives = scale * jnp.sum(
        image_embeddings.astype(jnp.float32) * text_embeddings.astype(jnp.float32), axis=-1
    )  # [N]
    # -log softmax(logits)[i, i] = logsumexp(logits[i]) - logits[i, i], stable for any scale.
    image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positives)
    text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - positives)
    return 0.5 * (image_to_text + text_to_image)


def clip_accuracy(
    image_embeddings: jax.Array, text_embeddings: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Top-1 in-batch retrieval accuracy, a cheap training metric.

    Ties go to the lowest index (`argmax` semantics), so a tie with an earlier item counts
    as a miss.

    Args:
      image_embeddings: `[N, D]`.
      text_embeddings: `[N, D]`; row i is the caption of image i.

    Returns:
      `(i2t_acc, t2i_acc)`: float32 scalars in [0, 1], the fraction of images whose most
      similar text is their own caption, and of texts whose most similar image is their own.
    """
    _check_pair(image_embeddings, text_embeddings)
    sim = _similarity(image_embeddings, text_embeddings)  # [N, N]
    targets = jnp.arange(sim.shape[0])
    i2t = jnp.mean((jnp.argmax(sim, axis=1) == targets).astype(jnp.float32))
    t2i = jnp.mean((jnp.argmax(sim, axis=0) == targets).astype(jnp.float32))
    return i2t, t2i


def siglip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
) -> jax.Array:
    """Pairwise sigmoid loss of SigLIP over the global batch.

    `logits = exp(logit_scale) * img @ txt.T + logit_bias`; every one of the N^2 pairs is an
    independent binary problem with label +1 on the diagonal and -1 elsewhere:

        loss = -1/N * sum_{i,j} log_sigmoid(label_ij * logits_ij)

    i.e. the sum over all pairs divided by the batch size N, not by N^2: this is the
    paper's normalisation (Algorithm 1) and big_vision's (`-mean(sum(..., axis=-1))`).

    Args:
      image_embeddings: `[N, D]`, L2-normalised; any float dtype.
      text_embeddings: `[N, D]`, L2-normalised; row i is the caption of image i.
      logit_scale: scalar log temperature `t'` (the paper initialises it to ln 10).
      logit_bias: scalar bias `b` (the paper initialises it to -10).

    Returns:
      Scalar float32 loss.
    """
    _check_pair(image_embeddings, text_embeddings)
    scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
    bias = jnp.asarray(logit_bias, jnp.float32)
    logits = scale * _similarity(image_embeddings, text_embeddings) + bias  # [N, N]
    n = logits.shape[0]
    labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0  # +1 on the diagonal, -1 elsewhere
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


def softmax_cross_entropy_per_example(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy of each example against integer labels, with optional label
    smoothing.

    With smoothing `a` the target is `(1 - a) * one_hot + a / C` (Szegedy et al. 2016;
    `optax.smooth_labels`, same as torch's `label_smoothing`).

    Args:
      logits: `[N, C]`, any float dtype; upcast to float32.
      labels: `[N]` int class indices in [0, C).
      label_smoothing: `a` in [0, 1).

    Returns:
      `[N]` float32 losses.
    """
    logits = logits.astype(jnp.float32)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), label_smoothing
    )
    return optax.softmax_cross_entropy(logits, targets)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Mean of `softmax_cross_entropy_per_example` over the N examples: scalar float32."""
    return jnp.mean(softmax_cross_entropy_per_example(logits, labels, label_smoothing))


# ----------------------------------------------------------------------------- class imbalance
#
# Per-example losses for long-tailed classification, `[N, C]` logits against `[N]` int labels,
# all in float32. A class the training split lacks (count 0) counts as one example in the
# class statistics below, so its weight and log-prior stay finite.


def softmax_focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Softmax focal loss `-(1 - p_y)^gamma * log p_y` of each example (Lin et al. 2017,
    "Focal Loss for Dense Object Detection", eq. 4 on the softmax probability of the label).

    `gamma = 0` is the cross-entropy. The paper's `alpha_t` is a per-class weight here:
    multiply by `class_balanced_weights` (or any `[C]` weights) taken at the labels.

    Returns:
      `[N]` float32 losses.
    """
    log_p = jnp.take_along_axis(
        jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], axis=-1
    )[:, 0]
    # -expm1(log p) is 1 - p without cancellation when p is close to 1.
    return -((-jnp.expm1(log_p)) ** gamma) * log_p


def sigmoid_focal_loss(
    logits: jax.Array, labels: jax.Array, gamma: float = 2.0, alpha: float = 0.25
) -> jax.Array:
    """Sigmoid focal loss of each example: C independent binary problems, label one-hot,
    summed over the classes (Lin et al. 2017, eq. 5; torchvision's `sigmoid_focal_loss`).

    `alpha` weighs the positive term and `1 - alpha` the negatives; a negative `alpha`
    weighs neither (torchvision's convention).

    Returns:
      `[N]` float32 losses.
    """
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    p = jax.nn.sigmoid(logits)
    cross_entropy = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum(axis=-1)


def class_balanced_weights(class_counts: jax.Array, beta: float) -> jax.Array:
    """`[C]` float32 class weights from the effective number of samples (Cui et al. 2019,
    "Class-Balanced Loss Based on Effective Number of Samples", eq. 6 and section 4).

    `w_c = (1 - beta) / (1 - beta^n_c)`, scaled so that they sum to C. `beta = 0` weighs all
    classes alike; `beta -> 1` tends to inverse class frequency.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = jnp.maximum(jnp.asarray(class_counts, jnp.float32), 1.0)
    # E_n = (1 - beta^n) / (1 - beta), with 1 - beta^n as -expm1(n log beta): beta = 0.9999
    # would lose digits otherwise (beta = 0: log 0 = -inf gives E_n = 1, as it should).
    effective_number = -jnp.expm1(counts * jnp.log(beta)) / (1 - beta)
    weights = 1.0 / effective_number
    return weights * (counts.shape[0] / weights.sum())


def log_class_priors(class_counts: jax.Array) -> jax.Array:
    """`[C]` float32 log of each class's share of the training split."""
    counts = jnp.maximum(jnp.asarray(class_counts, jnp.float32), 1.0)
    return jnp.log(counts) - jnp.log(counts.sum())


def logit_adjusted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    log_priors: jax.Array,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Logit-adjusted softmax cross-entropy of each example (Menon et al. 2021, "Long-Tail
    Learning via Logit Adjustment", eq. 10): the cross-entropy of `logits + tau * log pi`.

    Training against the prior-shifted logits makes the unshifted ones, used at test time,
    estimate the balanced (class-uniform) posterior; `tau = 1` is Bayes-consistent for the
    balanced error.

    Args:
      logits: `[N, C]`.
      labels: `[N]` int.
      log_priors: `[C]` log class priors of the training split (`log_class_priors`).
      tau: scale of the adjustment.
      label_smoothing: as in `softmax_cross_entropy_per_example`.

    Returns:
      `[N]` float32 losses.
    """
    shifted = logits.astype(jnp.float32) + tau * jnp.asarray(log_priors, jnp.float32)
    return softmax_cross_entropy_per_example(shifted, labels, label_smoothing)


def distillation_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0, axis: int = -1
) -> jax.Array:
    """Knowledge distillation's loss of each row (Hinton et al. 2015, "Distilling the Knowledge
    in a Neural Network"): `T^2 KL(softmax(teacher / T) || softmax(student / T))` along
    `axis`.

    The `T^2` keeps the gradient's size independent of the temperature, so the distillation
    term can be mixed with a hard-label loss at any `T` (the paper's section 2). Equals
    PyTorch's `kl_div(log_softmax(s / T), softmax(t / T))` summed over the classes, times
    `T^2`.

    Args:
      student_logits: `[..., C, ...]`, any float dtype.
      teacher_logits: the same shape; the target, not differentiated by callers' intent
        (wrap it in `jax.lax.stop_gradient` where it could carry a gradient).
      temperature: `T > 0`; higher softens both distributions.
      axis: the class axis.

    Returns:
      float32, `student_logits`'s shape without `axis`.
    """
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, got {temperature}")
    log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis)
    log_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis)
    kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=axis)
    return temperature**2 * kl


def clip_similarity_distillation_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    logit_scale: jax.Array | float,
    teacher_image_embeddings: jax.Array,
    teacher_text_embeddings: jax.Array,
    teacher_logit_scale: jax.Array | float,
    temperature: float = 1.0,
) -> jax.Array:
    """A CLIP student's image-text logits distilled from a CLIP teacher's, over the global
    batch: the mean of `distillation_kl` along each row (image -> text) and along each column
    (text -> image) of the `[N, N]` logits, the two directions of CLIP's own loss.

    This is the logit distillation of Yang et al. 2024 ("CLIP-KD: An Empirical Study of CLIP
    Model Distillation"): the student learns how the teacher ranks every caption of the batch
    for each image, not only which one matches. Each model's logits use its own scale.

    Args:
      image_embeddings, text_embeddings: the student's `[N, D]`, L2-normalised.
      logit_scale: the student's log inverse temperature.
      teacher_image_embeddings, teacher_text_embeddings: the teacher's `[N, D']` (`D'` may
        differ from `D`): their dot products times `exp(teacher_logit_scale)` are the
        teacher's logits.
      teacher_logit_scale: the teacher's log inverse temperature (0 for embeddings that
        carry it already).
      temperature: the distillation temperature applied to both.

    Returns:
      Scalar float32 loss.
    """
    _check_pair(image_embeddings, text_embeddings)
    _check_pair(teacher_image_embeddings, teacher_text_embeddings)
    student = jnp.exp(jnp.asarray(logit_scale, jnp.float32)) * _similarity(
        image_embeddings, text_embeddings
    )
    teacher = jnp.exp(jnp.asarray(teacher_logit_scale, jnp.float32)) * _similarity(
        teacher_image_embeddings, teacher_text_embeddings
    )
    image_to_text = jnp.mean(distillation_kl(student, teacher, temperature, axis=1))
    text_to_image = jnp.mean(distillation_kl(student, teacher, temperature, axis=0))
    return 0.5 * (image_to_text + text_to_image)


def embedding_distillation_loss(embeddings: jax.Array, teacher_embeddings: jax.Array) -> jax.Array:
    """Mean cosine distance `1 - cos(student, teacher)` of each pair of `[N, D]` embeddings:
    CLIP-KD's feature distillation (its mean squared error of L2-normalised embeddings is
    `2 (1 - cos) / D`), for a student whose embedding width equals the teacher's. The
    teacher's may have any positive scale. Scalar float32."""
    if embeddings.shape != teacher_embeddings.shape:
        raise ValueError(
            f"embedding distillation needs the teacher's embedding shape, got "
            f"{embeddings.shape} (student) and {teacher_embeddings.shape} (teacher)"
        )
    student = embeddings.astype(jnp.float32)
    teacher = teacher_embeddings.astype(jnp.float32)
    cosine = jnp.sum(student * teacher, -1) / (
        jnp.linalg.norm(student, axis=-1) * jnp.linalg.norm(teacher, axis=-1) + 1e-12
    )
    return jnp.mean(1.0 - cosine)
