"""Example inputs for every tiny (`*_test`) registry variant."""

import numpy as np


def tiny_inputs(name: str, batch: int = 2) -> tuple[np.ndarray, ...]:
    """The positional inputs of `create_model(name)`: images, tokens or both."""
    rng = np.random.default_rng(0)
    # AlexNet's stride-4 conv and three 3x3 pools need 63 px (jaxmm.models.alexnet.MIN_SIZE).
    size = 64 if name.startswith("alexnet") else 32
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    tokens = rng.integers(1, 500, size=(batch, 16)).astype(np.int32)
    tokens[:, 10] = 511  # EOT: the largest id of the tiny text tower's vocabulary
    if name.startswith(("clip", "fusion", "captioner")):
        return images, tokens
    if name.startswith("text"):
        return (tokens,)
    return (images,)
