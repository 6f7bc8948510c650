"""`jaxmm.models.positions`: the fixed 2D sine-cosine embedding against timm's, and
`resample_position_embedding` (a ViT's position grid for another image size) against
PyTorch's bilinear `interpolate` (half-pixel centres, no antialiasing)."""

import numpy as np
import pytest

from jaxmm.models.positions import resample_position_embedding, sincos_2d

torch = pytest.importorskip("torch")


def _torch_resample(grid_tokens: np.ndarray, side: int, new_side: int) -> np.ndarray:
    width = grid_tokens.shape[-1]
    grid = torch.tensor(grid_tokens).reshape(1, side, side, width).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        grid, size=(new_side, new_side), mode="bilinear", align_corners=False
    )
    return out.permute(0, 2, 3, 1).reshape(1, new_side * new_side, width).numpy()


@pytest.mark.parametrize(
    "side, new_side, class_token", [(4, 8, False), (4, 8, True), (12, 7, True), (7, 14, False)]
)
def test_matches_pytorch_bilinear(side, new_side, class_token):
    prefix = int(class_token)
    pos = np.random.default_rng(side).normal(size=(1, prefix + side * side, 6)).astype(np.float32)
    ours = np.asarray(resample_position_embedding(pos, prefix + new_side * new_side))
    assert ours.shape == (1, prefix + new_side * new_side, 6)
    np.testing.assert_allclose(ours[:, :prefix], pos[:, :prefix])  # the class token as is
    expected = _torch_resample(pos[:, prefix:], side, new_side)
    np.testing.assert_allclose(ours[:, prefix:], expected, atol=1e-6)


def test_same_grid_is_unchanged():
    pos = np.random.default_rng(0).normal(size=(1, 17, 4)).astype(np.float32)
    np.testing.assert_allclose(resample_position_embedding(pos, 17), pos, atol=1e-6)


def test_counts_without_a_square_grid_are_refused():
    with pytest.raises(ValueError, match="cannot resample a position embedding of 12 tokens"):
        resample_position_embedding(np.zeros((1, 12, 4), np.float32), 16)


@pytest.mark.parametrize("height, width, dim", [(8, 8, 128), (3, 5, 16)])
def test_sincos_matches_timm(height, width, dim):
    timm_sincos = pytest.importorskip("timm.layers.pos_embed_sincos")
    expected = timm_sincos.build_sincos2d_pos_embed([height, width], dim).numpy()
    np.testing.assert_allclose(sincos_2d(height, width, dim), expected, atol=1e-6)


def test_sincos_needs_a_multiple_of_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)
