"""The per-example augmentation ops against torchvision's functional ops on the same image
and parameters, and their random parameters against the distributions torchvision draws.

Tolerances: float ops agree to 1e-5 (float32 rounding); uint8 results differ by at most 1,
torchvision truncating to uint8 where jaxmm rounds.
"""

import numpy as np
import pytest
from scipy import stats

from jaxmm.data import color_jitter, erasing, image_ops

torch = pytest.importorskip("torch")
F = pytest.importorskip("torchvision.transforms.v2.functional")


def sample_image(height: int = 40, width: int = 48) -> np.ndarray:
    """uint8 `[H, W, 3]`: noise over colour gradients, with pure grey, black, white and
    saturated primaries (the hue conversion's edge cases)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], -1)
    image = np.clip(image + rng.normal(0, 30, image.shape), 0, 255).astype(np.uint8)
    image[:4, :4] = 128
    image[4:8, :4] = 0
    image[8:12, :4] = 255
    image[:4, 4:8] = (255, 0, 0)
    image[:4, 8:12] = (0, 255, 0)
    image[:4, 12:16] = (0, 0, 255)
    return image


def as_tensor(image: np.ndarray):
    """uint8 `[H, W, 3]` -> torch `[3, H, W]`, same dtype."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def from_tensor(tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


ADJUST = {
    "brightness": (color_jitter.adjust_brightness, F.adjust_brightness, (0.3, 1.0, 1.7)),
    "contrast": (color_jitter.adjust_contrast, F.adjust_contrast, (0.2, 1.0, 1.8)),
    "saturation": (color_jitter.adjust_saturation, F.adjust_saturation, (0.0, 0.6, 1.9)),
    "hue": (color_jitter.adjust_hue, F.adjust_hue, (-0.5, -0.23, 0.0, 0.1, 0.45)),
}


@pytest.mark.parametrize("name", sorted(ADJUST))
def test_adjustment_equals_torchvision_on_float_images(name):
    ours, theirs, factors = ADJUST[name]
    image = sample_image().astype(np.float32) / 255
    for factor in factors:
        expected = from_tensor(theirs(as_tensor(image), factor))
        np.testing.assert_allclose(ours(image, factor), expected, atol=1e-5, err_msg=f"{factor}")


@pytest.mark.parametrize("name", sorted(ADJUST))
def test_adjustment_on_uint8_is_torchvisions_up_to_rounding(name):
    """torchvision on a uint8 tensor truncates to uint8; jaxmm rounds: at most 1 apart."""
    _, theirs, factors = ADJUST[name]
    image = sample_image()
    index = color_jitter.NAMES.index(name)
    for factor in factors:
        factors4 = [None] * 4
        factors4[index] = factor
        expected = from_tensor(theirs(as_tensor(image), factor)).astype(int)
        diff = np.abs(color_jitter.jitter(image, factors4).astype(int) - expected)
        assert diff.max() <= 1, (factor, diff.max())


def test_jitter_in_any_order_is_torchvisions_sequence():
    image = sample_image()
    factors = [1.3, 0.7, 1.4, -0.12]
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        expected = as_tensor(image).float() / 255
        for index in order:
            expected = ADJUST[color_jitter.NAMES[index]][1](expected, factors[index])
        expected = np.round(from_tensor(expected) * 255).astype(int)
        diff = np.abs(color_jitter.jitter(image, factors, order).astype(int) - expected)
        assert diff.max() <= 1, (order, diff.max())


def test_jitter_factors_are_drawn_from_torchvisions_ranges():
    """Uniform on [max(0, 1 - s), 1 + s] (hue [-h, h]), as `ColorJitter` draws them."""
    from torchvision.transforms import v2

    strengths = (0.4, 1.5, 0.2, 0.1)
    rng = np.random.default_rng(0)
    ours = np.asarray([color_jitter.sample_factors(rng, strengths) for _ in range(2000)])
    torch.manual_seed(0)
    reference = v2.ColorJitter(*strengths)
    draws = [reference.make_params([]) for _ in range(2000)]
    theirs = np.asarray([[d[f"{n}_factor"] for n in color_jitter.NAMES] for d in draws])
    for column in range(4):
        result = stats.ks_2samp(ours[:, column], theirs[:, column])
        assert result.pvalue > 1e-3, (column, result)
    assert ours[:, 1].min() >= 0 and ours[:, 3].min() >= -0.1 and ours[:, 3].max() <= 0.1


def test_zero_strengths_draw_nothing_and_change_nothing():
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert color_jitter.sample_factors(rng, (0, 0, 0, 0)) == [None] * 4
    assert rng.bit_generator.state == state
    np.testing.assert_array_equal(color_jitter.jitter(sample_image(), [None] * 4), sample_image())


@pytest.mark.parametrize("strengths", [(0.4, 0.4), (-0.1, 0, 0, 0), (0, 0, 0, 0.6)])
def test_bad_jitter_strengths_are_one_line_errors(strengths):
    with pytest.raises(ValueError, match=r"data\.color_jitter") as error:
        color_jitter.check_strengths(strengths)
    assert "\n" not in str(error.value)


def test_padded_crop_equals_torchvision_pad_then_crop():
    image = sample_image(32, 32)
    padded = image_ops.pad(image, 4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        left, top, right, bottom = image_ops.random_crop_box(rng, 40, 40, 32)
        expected = F.crop(F.pad(as_tensor(image), [4], fill=0), top, left, 32, 32)
        np.testing.assert_array_equal(padded[top:bottom, left:right], from_tensor(expected))


def test_random_crop_offsets_are_uniform():
    rng = np.random.default_rng(0)
    lefts = [image_ops.random_crop_box(rng, 40, 40, 32)[0] for _ in range(4500)]
    counts = np.bincount(lefts, minlength=9)
    assert stats.chisquare(counts).pvalue > 1e-3, counts  # 9 offsets, 0..8, equally likely


def test_erase_equals_torchvision_erase():
    image = np.random.default_rng(0).normal(size=(24, 20, 3)).astype(np.float32)
    values = np.random.default_rng(1).normal(size=(7, 5, 3)).astype(np.float32)
    ours = erasing.erase(image, (3, 11, 7, 5), values)
    theirs = F.erase(as_tensor(image), 3, 11, 7, 5, as_tensor(values))
    np.testing.assert_array_equal(ours, from_tensor(theirs))
    np.testing.assert_array_equal(image[3:10, 11:16], image[3:10, 11:16])  # input untouched


def test_erase_boxes_follow_timms_distribution():
    """Area and aspect of the erased box against timm's RandomErasing on the same size:
    two-sample Kolmogorov-Smirnov, and every box inside the image and the stated ranges."""
    from timm.data.random_erasing import RandomErasing

    height, width = 32, 48
    rng = np.random.default_rng(0)
    ours = [erasing.erase_box(rng, height, width) for _ in range(1500)]
    assert all(b is not None for b in ours)
    ours_area = np.asarray([h * w for _, _, h, w in ours]) / (height * width)
    for top, left, h, w in ours:
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    torch.manual_seed(0)
    import random

    random.seed(0)
    reference = RandomErasing(probability=1.0, mode="const", device="cpu")
    theirs_area = []
    for _ in range(1500):
        erased = reference(torch.ones(3, height, width))
        theirs_area.append(float((erased[0] == 0).float().mean()))
    result = stats.ks_2samp(ours_area, theirs_area)
    assert result.pvalue > 1e-3, result
    assert ours_area.min() >= 0.015 and ours_area.max() <= 0.36


def test_erase_box_fits_strictly_inside_as_timm_and_torchvision_require():
    rng = np.random.default_rng(0)
    boxes = [erasing.erase_box(rng, 6, 6) for _ in range(2000)]
    sides = np.asarray([(h, w) for _, _, h, w in filter(None, boxes)])
    assert sides.max() == 5 and sides.min() >= 1  # a 6-pixel side would fill the image


@pytest.mark.parametrize("mode", erasing.MODES)
def test_random_erasing_modes(mode):
    image = np.full((32, 32, 3), 5.0, np.float32)
    erased = erasing.random_erasing(image, np.random.default_rng(3), prob=1.0, mode=mode)
    changed = np.any(erased != 5.0, axis=-1)
    assert 0.015 <= changed.mean() <= 0.36
    values = erased[changed]
    if mode == "const":
        np.testing.assert_array_equal(values, 0.0)
    elif mode == "rand":
        assert len(np.unique(values, axis=0)) == 1  # one colour for the whole box
    else:
        assert len(np.unique(values)) == values.size  # fresh noise per pixel and channel


def test_erasing_probability():
    image = np.zeros((16, 16, 3), np.float32)
    rng = np.random.default_rng(0)
    erased = [np.any(erasing.random_erasing(image, rng, 0.25, "pixel") != 0) for _ in range(2000)]
    assert abs(np.mean(erased) - 0.25) < 0.03  # 3.1 binomial standard deviations


@pytest.mark.parametrize(("prob", "mode"), [(1.5, "pixel"), (0.2, "noise")])
def test_bad_erasing_settings_are_one_line_errors(prob, mode):
    with pytest.raises(ValueError, match=r"data\.erase_") as error:
        erasing.check(prob, mode)
    assert "\n" not in str(error.value)
