"""MobileNet v1 (timm), v2 and v3 (torchvision) parity through `jaxmm.convert`.

References are built with random weights (no downloads) and perturbed by `randomise_`, so no
BatchNorm keeps its identity init. Outputs are compared in fp32 on the same images (NHWC for
jax, NCHW for torch) by relative error max|jax - torch| / max|torch|.

The tiny registry variants hold every structural kind of their family (stride-2 depthwise
blocks, blocks with and without expansion, residual and plain inverted blocks, squeeze-excite,
ReLU and hardswish blocks, v3's two-Linear head); the full-size tables are checked against the
references' own constructors, and `mobilenet_v2`/`mobilenet_v3_large` run at 224x224.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install 'jaxmm[parity]'")
torchvision = pytest.importorskip(
    "torchvision", reason="parity tests need torchvision: pip install 'jaxmm[parity]'"
)
timm = pytest.importorskip("timm", reason="parity tests need timm: pip install 'jaxmm[parity]'")

import jax  # noqa: E402
from timm.models.efficientnet import _gen_mobilenet_v1  # noqa: E402
from torchvision.models import mobilenetv3  # noqa: E402

from jaxmm.convert import from_torch, to_torch  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from jaxmm.models.mobilenet import MOBILENET_V2_VARIANTS, MOBILENET_V3_VARIANTS  # noqa: E402
from tests.parity.reference import randomise_, relative_error  # noqa: E402

TINY = ("mobilenet_v1_test", "mobilenet_v2_test", "mobilenet_v3_test")


def tiny_v1(num_classes: int = 10) -> torch.nn.Module:
    # timm's own generator at width 0.25 and half depth: stages of 1, 1, 1, 3, 1 blocks.
    return _gen_mobilenet_v1(
        "mobilenetv1_test",
        channel_multiplier=0.25,
        depth_multiplier=0.5,
        num_classes=num_classes,
    )


def tiny_v2(num_classes: int = 10, dropout: float = 0.2) -> torch.nn.Module:
    row = MOBILENET_V2_VARIANTS["mobilenet_v2_test"]
    return torchvision.models.MobileNetV2(
        num_classes=num_classes,
        width_mult=row["width_mult"],
        inverted_residual_setting=[list(stage) for stage in row["stages"]],
        dropout=dropout,
    )


def tiny_v3(num_classes: int = 10, dropout: float = 0.2) -> torch.nn.Module:
    """torchvision's `MobileNetV3` from the jaxmm table (torchvision writes RE/HS)."""
    row = MOBILENET_V3_VARIANTS["mobilenet_v3_test"]
    configs, in_channels = [], row["stem_channels"]
    for kernel, expanded, out, use_se, activation, stride in row["blocks"]:
        act = {"relu": "RE", "hardswish": "HS"}[activation]
        configs.append(
            mobilenetv3.InvertedResidualConfig(
                input_channels=in_channels,
                kernel=kernel,
                expanded_channels=expanded,
                out_channels=out,
                use_se=use_se,
                activation=act,
                stride=stride,
                dilation=1,
                width_mult=1.0,
            )
        )
        in_channels = out
    return mobilenetv3.MobileNetV3(
        configs, row["last_channels"], num_classes=num_classes, dropout=dropout
    )


REFERENCES = {
    "mobilenet_v1_test": tiny_v1,
    "mobilenet_v2_test": tiny_v2,
    "mobilenet_v3_test": tiny_v3,
}


def reference(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)  # the constructors' init draws from the global generator
    return randomise_(REFERENCES[name](**kwargs))


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())


def outputs(name: str, model: torch.nn.Module, x: np.ndarray, **overrides):
    """Eval-mode outputs of the converted jaxmm model and of the reference on `x`."""
    variables = from_torch(name, model.state_dict(), **overrides)
    logits = jax.jit(create_model(name, **overrides).apply)(variables, x)
    with torch.no_grad():
        expected = model.eval()(nchw(x)).numpy()
    assert logits.shape == expected.shape
    return logits, expected


@pytest.mark.parametrize("name", TINY)
def test_tiny_logits_match_reference(name):
    # Reached 1.4e-7 (v1), 1.5e-7 (v2), 3.7e-8 (v3) on CPU.
    assert relative_error(*outputs(name, reference(name), images(4, 64))) <= 1e-5


@pytest.mark.parametrize(
    "name, build",
    [
        ("mobilenet_v1", lambda: timm.create_model("mobilenetv1_100")),
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),
        ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large),
    ],
)
def test_full_size_tables_match_the_reference_constructors(name, build):
    """Every registry table converts its reference's state dict exactly (keys and shapes)."""
    state_dict = build().state_dict()
    back = to_torch(name, from_torch(name, state_dict))
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("name", ["mobilenet_v2_test", "mobilenet_v3_test"])
def test_tiny_train_mode_matches_torchvision(name):
    """Batch-statistics forward and running-statistics update (v2 momentum 0.1, v3 0.01).

    Dropout is off on both sides: torch's random mask cannot be reproduced.
    """
    model = reference(name, dropout=0.0)
    variables = from_torch(name, model.state_dict(), dropout=0.0)
    x = images(4, 64, seed=1)
    apply = partial(create_model(name, dropout=0.0).apply, train=True, mutable=["batch_stats"])
    logits, updates = jax.jit(apply)(variables, x)
    with torch.no_grad():
        expected = model.train()(nchw(x)).numpy()
    # Reached 2.8e-7 (v2) and 7.4e-8 (v3) on CPU.
    assert relative_error(logits, expected) <= 1e-5
    updated = to_torch(name, {**variables, **updates}, dropout=0.0)
    errors = {
        key: relative_error(updated[key], value.numpy())
        for key, value in model.state_dict().items()
        if key.endswith(("running_mean", "running_var"))
    }
    # Reached at most 2.6e-7 (v2) and 9.9e-8 (v3). A wrong momentum (torch's 0.1 for v3)
    # is off by 6.4e-1 here, a wrong eps (1e-5 for v3) by 3.5e-3.
    assert max(errors.values()) <= 1e-5, max(errors.items(), key=lambda item: item[1])


@pytest.mark.parametrize("name", TINY)
def test_round_trip_is_exact_except_the_batch_counter(name):
    model = reference(name)
    with torch.no_grad():
        model.train()(nchw(images(2, 32)))  # counters to 1: to_torch writes 0 back
    state_dict = model.state_dict()
    back = to_torch(name, from_torch(name, state_dict))
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            assert back[key] == 0, key
            continue
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def _headless(name: str) -> torch.nn.Module:
    """The reference with its final Linear removed: timm by `num_classes=0`, torchvision by
    replacing the last `classifier` entry (v3 keeps `classifier.0` and its hardswish)."""
    if name == "mobilenet_v1_test":
        return reference(name, num_classes=0)
    model = reference(name)
    model.classifier[-1] = torch.nn.Identity()
    return model


@pytest.mark.parametrize("name, width", [(TINY[0], 256), (TINY[1], 1280), (TINY[2], 64)])
def test_features_without_head(name, width):
    features, expected = outputs(name, _headless(name), images(2, 64), num_classes=0)
    assert features.shape == (2, width)
    # Reached 2.0e-7 (v1), 1.9e-7 (v2), 1.7e-7 (v3) on CPU.
    assert relative_error(features, expected) <= 1e-5


def test_mismatched_state_dict_lists_every_problem():
    state_dict = dict(reference("mobilenet_v3_test").state_dict())
    del state_dict["features.1.block.1.fc1.bias"]
    state_dict["features.9.0.weight"] = torch.zeros(8, 8, 1, 1)
    state_dict["classifier.3.weight"] = torch.zeros(1000, 64)
    with pytest.raises(ValueError) as info:
        from_torch("mobilenet_v3_test", state_dict)
    message = str(info.value)
    assert "missing keys" in message and "features.1.block.1.fc1.bias" in message
    assert "unexpected keys" in message and "features.9.0.weight" in message
    assert "classifier.3.weight: expected (10, 64), got (1000, 64)" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, build",
    [
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
        ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large),
    ],
)
def test_full_size_logits_match_torchvision_at_224(name, build):
    torch.manual_seed(0)
    # Reached 5.3e-7 (v2) and 2.5e-7 (v3 large) on CPU.
    assert relative_error(*outputs(name, randomise_(build()), images(2, 224))) <= 1e-5
