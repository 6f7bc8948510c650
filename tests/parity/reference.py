"""Helpers shared by the parity tests: the error measure and randomised PyTorch references.

Imported only after the test module has checked that torch is installed.
"""

import numpy as np
import torch


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Adds noise to every parameter and randomises BatchNorm statistics, in place.

    No weight keeps its structured init (constant norm scales and biases, zero means),
    so a wrong or missing mapping cannot hide. Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            # 1-D tensors (norm scale/bias, biases) init to constants; shift them clearly.
            scale = 0.1 if param.ndim == 1 else 0.02
            param.add_(scale * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
    return model.eval()
