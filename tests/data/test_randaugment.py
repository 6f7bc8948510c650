"""RandAugment: spec parsing, each op against torchvision's functional op where both define
it alike (exact, or within 1 for Color), each op and its magnitude mapping against timm's,
and the random pipeline's output statistics against timm's `rand-m9-mstd0.5`."""

import random

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jaxmm.data import randaugment
from tests.data.test_augment_ops import as_tensor, from_tensor, sample_image

torch = pytest.importorskip("torch")
F = pytest.importorskip("torchvision.transforms.v2.functional")
auto_augment = pytest.importorskip("timm.data.auto_augment")

FILL = (128, 128, 128)
# Where torchvision's op means the same thing: (argument, torchvision call, max difference).
TORCHVISION = {
    "Invert": (None, lambda t, a: F.invert(t), 0),
    "AutoContrast": (None, lambda t, a: F.autocontrast(t), 0),
    "Equalize": (None, lambda t, a: F.equalize(t), 0),
    "Posterize": (3, F.posterize, 0),
    "Solarize": (200, F.solarize, 0),
    "Brightness": (1.6, F.adjust_brightness, 0),
    "Sharpness": (1.7, F.adjust_sharpness, 0),
    "Contrast": (1.5, F.adjust_contrast, 0),
    # PIL's Color blends with its integer "L" image, torchvision with the float grey level.
    "Color": (0.4, F.adjust_saturation, 1),
    # Integer shifts and quarter turns move pixel centres onto pixel centres: no resampling.
    "TranslateXRel": (
        0.25,
        lambda t, a: F.affine(t, 0.0, [-16, 0], 1.0, [0.0, 0.0], fill=list(FILL)),
        0,
    ),
    "TranslateYRel": (
        -0.125,
        lambda t, a: F.affine(t, 0.0, [0, 8], 1.0, [0.0, 0.0], fill=list(FILL)),
        0,
    ),
    "Rotate": (90.0, lambda t, a: F.rotate(t, a, fill=list(FILL)), 0),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_op_equals_torchvision(name):
    argument, reference, tolerance = TORCHVISION[name]
    image = sample_image(64, 64)
    ours = np.asarray(randaugment.OPS[name].apply(Image.fromarray(image), argument, FILL))
    theirs = from_tensor(reference(as_tensor(image), argument))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= tolerance


TIMM_HPARAMS = dict(img_mean=FILL, interpolation=Image.Resampling.BICUBIC)


INCREASING = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}


@pytest.mark.parametrize("increasing", [False, True])
@pytest.mark.parametrize("name", randaugment.OP_NAMES)
@pytest.mark.parametrize("magnitude", [0.0, 3.3, 9.0, 10.0])
def test_op_and_magnitude_equal_timms(name, magnitude, increasing):
    """Same argument for a magnitude (up to the random sign), same image for an argument."""
    op = (randaugment.INCREASING_OPS if increasing else randaugment.OPS)[name]
    timm_name = name + ("Increasing" if increasing and name in INCREASING else "")
    timm_list = auto_augment._RAND_INCREASING_TRANSFORMS if increasing else None
    assert timm_name in (timm_list or auto_augment._RAND_TRANSFORMS)
    timm_level = auto_augment.LEVEL_TO_ARG[timm_name]
    argument = None
    if op.to_argument is not None:
        rng = np.random.default_rng(0)
        # The sign is random in both: compare distances from the op's neutral argument.
        neutral = 1.0 if increasing and name in INCREASING - {"Posterize", "Solarize"} else 0.0
        argument = op.to_argument(magnitude, rng)
        random.seed(0)
        (expected,) = timm_level(magnitude, TIMM_HPARAMS)
        assert abs(argument - neutral) == pytest.approx(abs(expected - neutral), abs=1e-12)
    else:
        assert timm_level is None
    image = Image.fromarray(sample_image(40, 48))
    if name == "Posterize" and argument == 0:  # timm passes 0 bits on to Pillow, which refuses
        np.testing.assert_array_equal(np.asarray(op.apply(image, argument, FILL)), 0)
        return
    timm_args = () if argument is None else (argument,)
    expected = auto_augment.NAME_TO_OP[timm_name](
        image, *timm_args, fillcolor=FILL, resample=Image.Resampling.BICUBIC
    )
    np.testing.assert_array_equal(np.asarray(op.apply(image, argument, FILL)), expected)


def test_signed_ops_take_both_signs_equally():
    rng = np.random.default_rng(0)
    signs = [np.sign(randaugment.OPS["ShearX"].to_argument(9.0, rng)) for _ in range(2000)]
    assert abs(np.mean(signs)) < 0.07  # 3.1 standard deviations of a fair coin's mean


def test_parse_reads_timms_spec():
    assert randaugment.parse("rand-m9-mstd0.5") == randaugment.RandAugment(9.0, 2, 0.5, 0.5)
    assert randaugment.parse("rand-m7-n3-p1.0") == randaugment.RandAugment(7.0, 3, 0.0, 1.0)
    assert randaugment.parse("rand") == randaugment.RandAugment()
    assert randaugment.parse("rand-m9-mstd101").magnitude_std == float("inf")
    increasing = randaugment.parse("rand-m9-mstd0.5-inc1")
    assert increasing.increasing and increasing.ops is randaugment.INCREASING_OPS


@pytest.mark.parametrize("spec", ["rnd-m9", "rand-m9-w1", "rand-x", "rand-m11", "rand-p2"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(ValueError, match=r"data\.randaugment") as error:
        randaugment.parse(spec)
    assert "\n" not in str(error.value)


def test_magnitude_noise_is_clipped_gaussian():
    config = randaugment.parse("rand-m9-mstd0.5")
    rng = np.random.default_rng(0)
    draws = np.asarray([randaugment.sample_magnitude(rng, config) for _ in range(3000)])
    assert draws.max() <= 10 and draws.min() >= 0
    inside = draws[draws < 10]  # the normal's part below the clip at 10
    assert abs(inside.mean() - 9 + 0.5 * stats.norm.pdf(2) / stats.norm.cdf(2)) < 0.03


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5", "rand-m9-mstd0.5-inc1"])
def test_pipeline_statistics_match_timms(spec):
    """Per-image mean absolute change, and the share of untouched images, of 600 passes of
    jaxmm's and timm's pipeline over one image: two-sample Kolmogorov-Smirnov."""
    image = sample_image(48, 48)
    config = randaugment.parse(spec)
    rng = np.random.default_rng(0)
    ours = [
        np.abs(randaugment.rand_augment(image, rng, config, FILL).astype(int) - image).mean()
        for _ in range(600)
    ]
    timm_transform = auto_augment.rand_augment_transform(spec, TIMM_HPARAMS)
    random.seed(0)
    np.random.seed(0)
    pil = Image.fromarray(image)
    theirs = [
        np.abs(np.asarray(timm_transform(pil)).astype(int) - image).mean() for _ in range(600)
    ]
    result = stats.ks_2samp(ours, theirs)
    assert result.pvalue > 1e-3, result
    # Both coins fail (1/4), or an op that leaves this image alone: about a third untouched.
    untouched = np.mean(np.asarray(ours) == 0), np.mean(np.asarray(theirs) == 0)
    assert abs(untouched[0] - untouched[1]) < 0.08, untouched


def test_fill_colour_is_the_mean_in_uint8():
    assert randaugment.fill_colour((0.485, 0.456, 0.406)) == (124, 116, 104)  # timm's img_mean
