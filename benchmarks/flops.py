"""Analytic FLOP counts for the training-step benchmark.

How FLOPs are counted (the same figure serves the jaxmm model and its PyTorch peer, which
compute the same layers):
- `matmul_flops(fn, *args)` traces `fn` to a jaxpr (shapes only, nothing runs) and adds
  2 x the multiply-accumulates of every `dot_general` and `conv_general_dilated` in it:
  dense layers, attention's `QK^T` and `AV`, convolutions (depthwise ones by their group
  size), CLIP's `[N, N]` similarity matrix. Elementwise work, norms, softmax and pooling
  are not counted, as in the usual MFU convention (PaLM appendix B, torch's FlopCounterMode).
- A training step counts 3 x the forward pass (the backward pass is two matmuls per forward
  one: gradients of the activations and of the weights), `TRAIN_FLOPS_PER_FORWARD_FLOP`.
- `vit_forward_flops` is the closed form for a ViT: 24 n d^2 + 4 n^2 d per layer (with an MLP
  4d wide) plus the patch embedding and the head. `tests/test_flops.py` checks that the
  traced count equals it, that a hand-counted ResNet matches, and that XLA's own
  `cost_analysis` on CPU agrees. (XLA's count is not used for the benchmark: on GPU it
  misses GEMMs handed to cuBLAS/cuDNN.)

MFU = achieved FLOP/s / the card's dense bf16 peak (`PEAK_BF16_TFLOPS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend import core

TRAIN_FLOPS_PER_FORWARD_FLOP = 3

# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s, no sparsity), matched against
# `jax.Device.device_kind` / `torch.cuda.get_device_name` in order: "H100 PCIe" before "H100".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (device kind "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)


def peak_bf16_tflops(device_kind: str) -> float | None:
    """The card's dense bf16 peak, or None when unknown (CPUs): MFU is then n/a."""
    for name, peak in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def _dot_general_flops(eqn: core.JaxprEqn) -> int:
    """2 x batch x contracted x lhs-free x rhs-free sizes of one `dot_general`."""
    lhs, rhs = (var.aval.shape for var in eqn.invars)
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[d] for d in lhs_contract)
    batch = math.prod(lhs[d] for d in lhs_batch)
    lhs_free = math.prod(lhs) // (contracted * batch)
    rhs_free = math.prod(rhs) // (contracted * batch)
    return 2 * batch * contracted * lhs_free * rhs_free


def _conv_flops(eqn: core.JaxprEqn) -> int:
    """2 x output elements x (kernel window x input features per group) of one convolution."""
    rhs = eqn.invars[1].aval.shape
    output = eqn.outvars[0].aval.shape
    # rhs_spec = (out-feature dim, in-feature dim, *spatial dims) of the kernel; the kernel's
    # in-feature size is already per group (1 for a depthwise convolution).
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    window = math.prod(rhs[d] for d in rhs_spec[2:])
    return 2 * math.prod(output) * window * rhs[rhs_spec[1]]


_COUNTED: dict[str, Callable[[core.JaxprEqn], int]] = {
    "dot_general": _dot_general_flops,
    "conv_general_dilated": _conv_flops,
}


def _sub_jaxprs(eqn: core.JaxprEqn) -> Iterator[core.Jaxpr]:
    """The jaxprs nested in an equation's parameters (jit, custom_jvp/vjp, remat, cond)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr: core.Jaxpr) -> int:
    """Matmul and convolution FLOPs of a jaxpr, nested calls included.

    Raises:
        NotImplementedError: a `while` loop, whose trip count the jaxpr does not give.
    """
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _COUNTED:
            total += _COUNTED[name](eqn)
        elif name == "while":
            raise NotImplementedError("cannot count FLOPs through a while loop")
        elif name == "cond":  # one branch runs: count the dearest
            total += max(jaxpr_flops(branch) for branch in _sub_jaxprs(eqn))
        elif name == "scan":  # the body runs `length` times
            total += eqn.params["length"] * sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn))
        else:
            total += sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn))
    return total


def matmul_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of the matmuls and convolutions of `fn(*args)`; args may be `ShapeDtypeStruct`s."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def vit_layer_flops(tokens: int, width: int, mlp_dim: int) -> int:
    """Forward FLOPs of one pre-LN Transformer layer over `[n, d]` tokens.

    q, k, v and output projections 8 n d^2, MLP 4 n d mlp_dim, `QK^T` and `AV` 4 n^2 d:
    24 n d^2 + 4 n^2 d when `mlp_dim = 4 d`.
    """
    n, d = tokens, width
    return 8 * n * d * d + 4 * n * d * mlp_dim + 4 * n * n * d


def vit_forward_flops(
    image_size: int,
    patch_size: int,
    width: int,
    depth: int,
    mlp_dim: int,
    num_classes: int,
    class_token: bool = True,
) -> int:
    """Forward FLOPs of one image through a ViT: patch embedding, `depth` layers, head."""
    patches = (image_size // patch_size) ** 2
    patch_embed = 2 * patches * (patch_size * patch_size * 3) * width
    layers = depth * vit_layer_flops(patches + int(class_token), width, mlp_dim)
    return patch_embed + layers + 2 * width * num_classes
