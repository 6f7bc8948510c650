"""AlexNet and VGG parity with torchvision's `AlexNet` and `VGG` through `jaxmm.convert`.

torchvision models are built with random weights (no downloads) and perturbed by `randomise_`
(BatchNorm statistics included), converted, and compared in fp32 on the same images (NHWC for
jax, NCHW for torch) by relative error max|jax - torch| / max|torch|.

The tiny references keep torchvision's own modules and `Sequential` indices but get narrow
classifiers (`narrow_classifier_`: torchvision hard-codes 4096-wide Linears) and, for VGG,
narrow conv stages through `make_layers`. Image sizes are picked so that the adaptive pool
before the classifier meets every case: a 1x1 map replicated to 6x6/7x7, a small map
(bins differ per position, so a wrong flatten order shows), and overlapping bins.
"""

from __future__ import annotations

import copy
import functools

import jax
import numpy as np
import pytest
from flax import linen as nn

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install 'jaxmm[parity]'")
torchvision = pytest.importorskip(
    "torchvision", reason="parity tests need torchvision: pip install 'jaxmm[parity]'"
)

from jaxmm.convert import from_torch, to_torch  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from jaxmm.models.layers import adaptive_avg_pool  # noqa: E402
from tests.parity.reference import randomise_, relative_error  # noqa: E402

HIDDEN = 32  # fc6/fc7 width of the tiny references
TINY_STAGES = ((8,), (16,), (16, 16), (16, 16), (16, 16))  # VGG-11's shape, narrow
# Registry name -> the overrides that make it the tiny reference's twin.
TINY = {
    "alexnet": dict(hidden=HIDDEN, num_classes=10),
    "vgg11": dict(stages=TINY_STAGES, hidden=HIDDEN, num_classes=10),
    "vgg11_bn": dict(stages=TINY_STAGES, hidden=HIDDEN, num_classes=10),
}


def narrow_classifier_(model: torch.nn.Module, in_features: int, hidden: int) -> torch.nn.Module:
    """Swaps the three Linears of torchvision's `classifier` for narrow ones, in place.

    torchvision hard-codes fc6's input (256 * 6 * 6, 512 * 7 * 7) and the 4096 width whatever
    the conv widths; the `Sequential` itself (indices, ReLU and Dropout modules) stays as built.
    """
    fc6, fc7, fc8 = [
        i for i, layer in enumerate(model.classifier) if isinstance(layer, torch.nn.Linear)
    ]
    model.classifier[fc6] = torch.nn.Linear(in_features, hidden)
    model.classifier[fc7] = torch.nn.Linear(hidden, hidden)
    model.classifier[fc8] = torch.nn.Linear(hidden, model.classifier[fc8].out_features)
    return model


@functools.cache
def _tiny_reference(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the constructors' init draws from the global generator
    if name == "alexnet":
        model = narrow_classifier_(torchvision.models.alexnet(num_classes=10), 256 * 6 * 6, HIDDEN)
    else:
        vgg = torchvision.models.vgg
        cfg = [v for stage in TINY_STAGES for v in (*stage, "M")]
        model = vgg.VGG(vgg.make_layers(cfg, batch_norm=name.endswith("_bn")), num_classes=10)
        model = narrow_classifier_(model, TINY_STAGES[-1][-1] * 7 * 7, HIDDEN)
    return randomise_(model)


def tiny_reference(name: str) -> torch.nn.Module:
    """The torchvision twin of `create_model(name, **TINY[name])`, a fresh copy each call.

    Built once per name: the constructors first allocate torchvision's full 4096-wide head.
    """
    return copy.deepcopy(_tiny_reference(name))


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("size", [1, 5, 6, 7, 13, 14])
def test_adaptive_avg_pool_matches_torch(size):
    # Non-square on both sides: H = size -> 6 rows, W = size + 3 -> 7 columns.
    x = images(2, size + 3)[:, :size]
    pooled = adaptive_avg_pool(x, (6, 7))
    expected = torch.nn.AdaptiveAvgPool2d((6, 7))(nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert pooled.shape == expected.shape == (2, 6, 7, 3)
    # Reached at most 1.5e-7 (summation order; exactly 0 at size 1) on CPU.
    assert relative_error(pooled, expected) <= 1e-6


@pytest.mark.parametrize(
    "name, size",
    [
        # AlexNet: conv5's map is 1x1 at 64 px and 5x5 at 200 px (overlapping bins to 6x6).
        ("alexnet", 64),
        ("alexnet", 200),
        # VGG: 1x1, 3x3 and 9x9 (overlapping bins to 7x7) after the fifth pool; 100 -> 50 ->
        # 25 -> 12 also checks that odd maps pool down like torch's floor mode.
        ("vgg11", 100),
        ("vgg11_bn", 32),
        ("vgg11_bn", 100),
        ("vgg11_bn", 288),
    ],
)
def test_tiny_logits_match_torchvision(name, size):
    reference = tiny_reference(name)
    variables = from_torch(name, reference.state_dict(), **TINY[name])
    x = images(2, size)
    logits = jax.jit(create_model(name, **TINY[name]).apply)(variables, x)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()
    # Reached at most 7.9e-7 (alexnet, 200 px) on CPU.
    assert relative_error(logits, expected) <= 1e-5


def test_tiny_vgg_bn_train_mode_matches_torchvision():
    """Batch-statistics forward and the running-statistics update (momentum 0.1, unbiased var).

    Dropout is off on both sides (its masks come from different generators).
    """
    reference = tiny_reference("vgg11_bn")
    for layer in reference.classifier:
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    overrides = {**TINY["vgg11_bn"], "dropout": 0.0}
    variables = from_torch("vgg11_bn", reference.state_dict(), **overrides)
    x = images(4, 64, seed=1)
    model = create_model("vgg11_bn", **overrides)
    train_step = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train_step(variables)
    with torch.no_grad():
        expected = reference.train()(nchw(x)).numpy()
    # Reached 9.1e-7 on CPU.
    assert relative_error(logits, expected) <= 1e-5
    updated = to_torch("vgg11_bn", {**variables, **updates}, **overrides)
    expected_state = reference.state_dict()
    stats = [key for key in updated if key.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 8  # eight BatchNorms
    for key in stats:
        # Reached at most 1.8e-7. The last stage's BatchNorms see 4 * 4 * 4 = 64 values per
        # channel: Flax's `nn.BatchNorm` would fold in the biased variance, 63/64 of torch's.
        assert relative_error(updated[key], expected_state[key].numpy()) <= 1e-5, key


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn"])
def test_features_without_head(name):
    """`num_classes=0` is everything but fc8: the `[B, hidden]` features after fc7's ReLU."""
    reference = tiny_reference(name)
    reference.classifier[6] = torch.nn.Identity()  # fc8 is the last layer in both
    state_dict = reference.state_dict()
    assert not any(key.startswith("classifier.6.") for key in state_dict)
    overrides = {**TINY[name], "num_classes": 0}
    x = images(2, 96)
    model = create_model(name, **overrides)
    features = jax.jit(model.apply)(from_torch(name, state_dict, **overrides), x)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()
    assert features.shape == (2, HIDDEN)
    # Reached 1.3e-6 (alexnet) and 3.9e-7 (vgg11_bn) on CPU.
    assert relative_error(features, expected) <= 1e-5


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11_bn"])
def test_conversion_is_exact_both_ways(name):
    """torch -> jax -> torch, and Flax's own variable tree -> torch (strict load) -> jax."""
    reference = tiny_reference(name)
    with torch.no_grad():
        reference.train()(nchw(images(2, 64)))  # BatchNorm counters to 1: to_torch writes 0
    state_dict = reference.state_dict()
    back = to_torch(name, from_torch(name, state_dict, **TINY[name]), **TINY[name])
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        expected = 0 if key.endswith("num_batches_tracked") else value.numpy()
        np.testing.assert_array_equal(back[key], expected, err_msg=key)

    # The tree `model.init` builds (boxed, as init returns it), filled with noise: an abstract
    # init compiles nothing, and random-number kernels are slow to compile on these CPUs.
    model = create_model(name, **TINY[name])
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), images(1, 64))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32), abstract)
    converted = to_torch(name, variables, **TINY[name])
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in converted.items()}, strict=True)
    again = from_torch(name, reference.state_dict(), **TINY[name])
    jax.tree.map(np.testing.assert_array_equal, again, nn.unbox(variables))


def test_mismatched_state_dict_lists_every_problem():
    state_dict = dict(tiny_reference("vgg11_bn").state_dict())
    del state_dict["features.1.running_var"]  # the first BatchNorm
    state_dict["features.99.weight"] = torch.zeros(16, 16, 3, 3)
    state_dict["classifier.6.weight"] = torch.zeros(1000, HIDDEN)
    with pytest.raises(ValueError) as info:
        from_torch("vgg11_bn", state_dict, **TINY["vgg11_bn"])
    message = str(info.value)
    assert "missing keys" in message and "features.1.running_var" in message
    assert "unexpected keys" in message and "features.99.weight" in message
    assert f"classifier.6.weight: expected (10, {HIDDEN}), got (1000, {HIDDEN})" in message


@pytest.mark.parametrize("name", ["alexnet", "vgg11"])
def test_dropout_only_in_train_mode(name):
    model = create_model(name, **TINY[name])
    variables = from_torch(name, tiny_reference(name).state_dict(), **TINY[name])
    x = images(2, 64)
    jax.jit(model.apply)(variables, x)  # eval mode needs no 'dropout' rng: flax would raise
    train = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key}))
    assert not np.allclose(train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg16_bn"])
def test_real_size_logits_match_torchvision(name):
    """Real widths and depths at 224x224, where the adaptive pool is the identity."""
    torch.manual_seed(0)
    reference = randomise_(torchvision.models.get_model(name))
    x = images(2, 224)
    variables = from_torch(name, reference.state_dict())
    logits = jax.jit(create_model(name).apply)(variables, x)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()
    # Reached 1.2e-6 (alexnet) and 2.0e-6 (vgg16_bn) on CPU.
    assert relative_error(logits, expected) <= 1e-5
