"""Knowledge-distillation losses against PyTorch's `kl_div` and `cosine_similarity`, and the
gradient Hinton et al. (2015) derive by hand. float32, tolerance 1e-6 relative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import losses

torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")
F = torch.nn.functional

TOLERANCE = 1e-6


def torch_distillation(student: np.ndarray, teacher: np.ndarray, t: float, dim: int) -> float:
    """The usual PyTorch knowledge-distillation term: KL(teacher || student) of the softened
    distributions along `dim`, averaged over the other axis, times T^2."""
    log_student = F.log_softmax(torch.from_numpy(student) / t, dim=dim)
    teacher_probs = F.softmax(torch.from_numpy(teacher) / t, dim=dim)
    per_row = F.kl_div(log_student, teacher_probs, reduction="none").sum(dim=dim)
    return float(per_row.mean() * t * t)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_kl_matches_torch_kl_div(temperature):
    rng = np.random.default_rng(0)
    student = rng.normal(size=(8, 10)).astype(np.float32) * 3
    teacher = rng.normal(size=(8, 10)).astype(np.float32) * 3
    ours = jnp.mean(losses.distillation_kl(student, teacher, temperature))
    expected = torch_distillation(student, teacher, temperature, dim=1)
    np.testing.assert_allclose(ours, expected, rtol=TOLERANCE)


def test_distillation_kl_gradient_is_hintons():
    """d/dz_i of T^2 KL = T (softmax(z / T)_i - softmax(v / T)_i): section 2 of the paper,
    with its 1/T made T by the T^2 factor; zero when the student equals the teacher."""
    rng = np.random.default_rng(1)
    student = rng.normal(size=(5,)).astype(np.float32)
    teacher = rng.normal(size=(5,)).astype(np.float32)
    t = 3.0
    grad = jax.grad(lambda z: losses.distillation_kl(z, teacher, t))(student)
    softmax = lambda x: np.exp(x / t) / np.exp(x / t).sum()  # noqa: E731
    np.testing.assert_allclose(grad, t * (softmax(student) - softmax(teacher)), atol=1e-6)
    assert float(losses.distillation_kl(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_kl_refuses_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be positive"):
        losses.distillation_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.0)


def normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_similarity_distillation_matches_torch_on_rows_and_columns():
    rng = np.random.default_rng(2)
    image, text = normalised(rng, 6, 8), normalised(rng, 6, 8)
    teacher_image, teacher_text = normalised(rng, 6, 12), normalised(rng, 6, 12)
    scale, teacher_scale, t = np.log(20.0), np.log(50.0), 2.0
    student_logits = 20.0 * image @ text.T
    teacher_logits = 50.0 * teacher_image @ teacher_text.T
    expected = 0.5 * (
        torch_distillation(student_logits, teacher_logits, t, dim=1)
        + torch_distillation(student_logits, teacher_logits, t, dim=0)
    )
    ours = losses.clip_similarity_distillation_loss(
        image, text, scale, teacher_image, teacher_text, teacher_scale, t
    )
    np.testing.assert_allclose(ours, expected, rtol=TOLERANCE)
    # The same teacher logits given as embeddings that carry the scale.
    root = np.sqrt(50.0)
    folded = losses.clip_similarity_distillation_loss(
        image, text, scale, teacher_image * root, teacher_text * root, 0.0, t
    )
    np.testing.assert_allclose(folded, expected, rtol=TOLERANCE)


def test_embedding_distillation_is_torch_cosine_distance_at_any_teacher_scale():
    rng = np.random.default_rng(3)
    student, teacher = normalised(rng, 6, 8), rng.normal(size=(6, 8)).astype(np.float32) * 7
    expected = float(
        (1 - F.cosine_similarity(torch.from_numpy(student), torch.from_numpy(teacher))).mean()
    )
    ours = losses.embedding_distillation_loss(student, teacher)
    np.testing.assert_allclose(ours, expected, rtol=TOLERANCE)
    with pytest.raises(ValueError, match="embedding shape"):
        losses.embedding_distillation_loss(student, teacher[:, :4])
