"""MixUp and CutMix: images and labels mixed as the papers define them, lambda the kept area
for CutMix, timm's switch and mixing probabilities, and the classification loss on a mixed
batch against timm's soft-target cross-entropy on its mixed targets."""

import numpy as np
import pytest
from scipy import stats

from jaxmm.data import batch_augment
from jaxmm.data.batch_augment import Mixing


def constant_batch(num: int = 8, size: int = 16) -> dict[str, np.ndarray]:
    """Image k is filled with the value k, so every pixel says which image it came from."""
    images = np.broadcast_to(
        np.arange(num, dtype=np.float32)[:, None, None, None], (num, size, size, 3)
    )
    return {"image": images.copy(), "label": np.arange(num, dtype=np.int32) + 10}


def pair_rngs(num_pairs: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, k]) for k in range(num_pairs)]


def test_mixup_blends_images_and_pairs_labels():
    batch = constant_batch()
    mixed = batch_augment.mix_batch(batch, pair_rngs(4), Mixing(mixup_alpha=0.8))
    lam = mixed["mix_lambda"]
    np.testing.assert_array_equal(mixed["label"], batch["label"])
    np.testing.assert_array_equal(mixed["mix_label"], [11, 10, 13, 12, 15, 14, 17, 16])
    partner = np.arange(8) ^ 1
    expected = lam * np.arange(8) + (1 - lam) * partner
    np.testing.assert_allclose(mixed["image"][:, 3, 5, 1], expected, rtol=1e-6)
    np.testing.assert_array_equal(lam[0::2], lam[1::2])  # one draw per pair
    assert mixed["mix_label"].dtype == np.int32 and lam.dtype == np.float32


def test_cutmix_lambda_is_the_share_of_own_pixels():
    batch = constant_batch(num=40, size=24)
    mixed = batch_augment.mix_batch(batch, pair_rngs(20), Mixing(cutmix_alpha=1.0))
    for k in range(40):
        own = np.mean(mixed["image"][k, ..., 0] == k)
        partner = np.mean(mixed["image"][k, ..., 0] == (k ^ 1))
        assert own == pytest.approx(mixed["mix_lambda"][k], abs=1e-7)
        assert own + partner == pytest.approx(1.0)
    assert (mixed["mix_lambda"] < 1).any()


def test_cutmix_box_is_a_clipped_square_root_box():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lam = rng.uniform()
        top, left, bottom, right = batch_augment.cutmix_box(rng, 32, 40, lam)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 40
        side = np.sqrt(1 - lam)
        assert bottom - top <= int(32 * side) and right - left <= int(40 * side)


def test_mixup_lambda_follows_the_beta_distribution():
    mixing = Mixing(mixup_alpha=0.8)
    rng = np.random.default_rng(0)
    lams = [mixing.draw(rng)[0] for _ in range(3000)]
    assert stats.kstest(lams, stats.beta(0.8, 0.8).cdf).pvalue > 1e-3


def test_switch_and_mix_probabilities():
    rng = np.random.default_rng(0)
    draws = [Mixing(0.8, 1.0, prob=0.6, switch_prob=0.3).draw(rng) for _ in range(4000)]
    lams, cutmix = np.asarray([d[0] for d in draws]), np.asarray([d[1] for d in draws])
    assert abs(np.mean(lams < 1) - 0.6) < 0.025  # 3.2 binomial standard deviations
    assert abs(cutmix[lams < 1].mean() - 0.3) < 0.03
    assert not cutmix[lams == 1].any()


@pytest.mark.parametrize(
    ("field", "value"),
    [("mixup_alpha", -1.0), ("cutmix_alpha", -0.5), ("mix_prob", 1.2), ("mix_switch_prob", -0.1)],
)
def test_bad_mixing_settings_are_one_line_errors(field, value):
    from ml_collections import ConfigDict

    with pytest.raises(ValueError, match=f"data.{field}") as error:
        Mixing.from_config(ConfigDict({"mixup_alpha": 0.8, field: value}))
    assert "\n" not in str(error.value)


def test_off_by_default():
    from ml_collections import ConfigDict

    assert Mixing.from_config(ConfigDict({})) is None
    assert Mixing.from_config(ConfigDict({"mix_prob": 0.5})) is None


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mixed_loss_equals_timms_soft_target_cross_entropy(label_smoothing):
    """`Classification.loss` on a mixed batch against timm's `mixup_target` (mixed, smoothed
    one-hot targets) under its `SoftTargetCrossEntropy`; float32 tolerance 1e-5."""
    torch = pytest.importorskip("torch")
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    from jaxmm.train.objectives import Classification

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.asarray([0, 1, 2, 3, 4, 0], np.int32)
    partners = labels[np.arange(6) ^ 1]
    lam = np.asarray([0.3, 0.3, 1.0, 1.0, 0.75, 0.75], np.float32)
    batch = {"label": labels, "mix_label": partners, "mix_lambda": lam}
    loss, metrics = Classification(label_smoothing).loss(logits, batch)
    # timm mixes a batch with its reverse under one lambda: on the two examples of a pair
    # that is exactly this pair's mixing.
    targets = torch.cat(
        [
            mixup_target(
                torch.from_numpy(labels[k : k + 2]).long(), 5, float(lam[k]), label_smoothing
            )
            for k in range(0, 6, 2)
        ]
    )
    expected = SoftTargetCrossEntropy()(torch.from_numpy(logits), targets)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == labels))
