"""The benchmark's analytic FLOP count (`benchmarks/flops.py`) against numbers we did not make:
hand-worked counts, torchvision's published per-model operation counts, and XLA's own
`cost_analysis` on CPU."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from benchmarks import flops
from jaxmm.models import create_model


def forward_flops(model: nn.Module, image_size: int, batch: int = 1) -> int:
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    return flops.matmul_flops(lambda v, x: model.apply(v, x), variables, images)


def test_vit_test_matches_the_hand_count():
    # vit_test at 32 px: 16 patches of 8x8x3, n = 17 tokens (class token), d = 32, MLP 64,
    # 2 layers, 10 classes. Worked by hand:
    patch_embed = 2 * 16 * (8 * 8 * 3) * 32  # 196,608
    projections = 2 * 17 * 32 * (3 * 32) + 2 * 17 * 32 * 32  # qkv + out: 139,264
    mlp = 2 * 17 * 32 * 64 * 2  # fc1 + fc2: 139,264
    attention = 2 * 17 * 17 * 32 * 2  # QK^T + AV: 36,992
    head = 2 * 32 * 10  # 640
    expected = patch_embed + 2 * (projections + mlp + attention) + head
    assert expected == 828_288
    assert forward_flops(create_model("vit_test"), 32) == expected
    assert flops.vit_forward_flops(32, 8, width=32, depth=2, mlp_dim=64, num_classes=10) == expected


def test_vit_layer_is_24nd2_plus_4n2d():
    n, d = 197, 768
    assert flops.vit_layer_flops(n, d, 4 * d) == 24 * n * d**2 + 4 * n**2 * d


class TinyConvNet(nn.Module):
    """3x3 conv 3 -> 4 channels (no padding), a depthwise stride-2 3x3 conv, a dense layer."""

    @nn.compact
    def __call__(self, x):  # [B, 10, 10, 3]
        x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False)(x)  # [B, 8, 8, 4]
        x = nn.Conv(4, (3, 3), (2, 2), padding="VALID", feature_group_count=4, use_bias=False)(
            x
        )  # [B, 3, 3, 4]
        return nn.Dense(5, use_bias=False)(x.reshape(x.shape[0], -1))  # [B, 5]


def test_convolutions_match_the_hand_count_and_xla():
    images = jax.ShapeDtypeStruct((2, 10, 10, 3), jnp.float32)
    model = TinyConvNet()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    # Per image: 2 x 8*8*4 outputs x 3*3*3 taps = 13,824; depthwise 2 x 3*3*4 outputs x 3*3*1
    # taps = 648; dense 2 x 36 x 5 = 360; 14,832 per image, 2 images.
    expected = 2 * (13_824 + 648 + 360)
    ours = flops.matmul_flops(model.apply, variables, images)
    assert ours == expected
    # Without padding, bias or activations there is nothing else for XLA to count.
    xla = jax.jit(model.apply).lower(variables, images).compile().cost_analysis()["flops"]
    assert ours == pytest.approx(xla, rel=1e-6)


def test_vit_agrees_with_xla_cost_analysis():
    # XLA also counts elementwise work (softmax, GELU, LayerNorm, residual adds), which the
    # matmul count leaves out: ours / XLA is 0.943 for vit_ti16 at 64 px (17 tokens).
    model = create_model("vit_ti16")
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    apply = lambda v, x: model.apply(v, x)
    xla = jax.jit(apply).lower(variables, images).compile().cost_analysis()["flops"]
    ours = flops.matmul_flops(apply, variables, images)
    assert ours == flops.vit_forward_flops(64, 16, 192, 12, 768, 1000)
    assert 0.9 <= ours / xla <= 1.0, ours / xla


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)
@pytest.mark.parametrize(
    "jaxmm_name, weights",
    [
        ("resnet50", "ResNet50_Weights"),
        ("mobilenet_v2", "MobileNet_V2_Weights"),
        ("vit_b16", "ViT_B_16_Weights"),
    ],
)
def test_matches_torchvision_published_operation_counts(jaxmm_name, weights):
    """torchvision publishes each model's forward GFLOPS at 224 px (multiply-adds, 3 decimals):
    4.089, 0.301, 17.564; ours in multiply-adds are 4.0892, 0.3008, 17.5638. (Swin-T also
    agrees, 4.4906 against 4.491; left out to keep the suite short.)"""
    models = pytest.importorskip("torchvision.models")
    published_gmacs = getattr(models, weights).IMAGENET1K_V1.meta["_ops"]
    ours_gmacs = forward_flops(create_model(jaxmm_name), 224) / 2 / 1e9
    assert ours_gmacs == pytest.approx(published_gmacs, abs=5e-4)  # their rounding


def test_vit_b16_training_count_is_close_to_torch_flop_counter():
    # DESIGN.md section 5: torch's FlopCounterMode gave 105.9 train GFLOP/img for timm ViT-B/16;
    # 3 x our forward gives 105.38, 0.5% below (the conventions differ in how the backward is
    # counted: torch counts the backward kernels it runs, we count 2 x forward).
    train = flops.TRAIN_FLOPS_PER_FORWARD_FLOP * flops.vit_forward_flops(
        224, 16, 768, 12, 3072, 1000
    )
    assert train / 1e9 == pytest.approx(105.9, rel=0.01)


@pytest.mark.parametrize(
    "device_kind, peak",
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("cpu", None)],
)  # fmt: skip
def test_peak_by_device_kind(device_kind, peak):
    assert flops.peak_bf16_tflops(device_kind) == peak


def test_while_loops_are_refused():
    with pytest.raises(NotImplementedError, match="while"):
        flops.matmul_flops(lambda x: jax.lax.while_loop(lambda v: v.sum() < 1, lambda v: v @ v, x),
                           jnp.ones((2, 2)))  # fmt: skip
