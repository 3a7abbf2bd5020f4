"""Spatial averaging against hand-computed block means and a loop reference."""

import pytest
import torch

from adahessian import spatial_average
from adahessian.reference import reference_block_average


def t(values):
    return torch.tensor(values, dtype=torch.float64)


HAND = [
    pytest.param(t(3.0), 4, t(3.0), id="rank0-unchanged"),
    pytest.param(t([1.0, 5.0, 9.0]), 2, t([1.0, 5.0, 9.0]), id="rank1-unchanged"),
    pytest.param(t([[1, 2, 3, 4]]), 2, t([[1.5, 1.5, 3.5, 3.5]]), id="rank2-block-divides"),
    pytest.param(t([[1, 2, 3, 4, 5]]), 2, t([[1.5, 1.5, 3.5, 3.5, 5]]), id="rank2-short-last"),
    pytest.param(t([[1, 2, 3, 4, 5]]), 3, t([[2, 2, 2, 4.5, 4.5]]), id="rank2-block3-of-5"),
    pytest.param(t([[1, 2, 3, 4, 5]]), 8, t([[3, 3, 3, 3, 3]]), id="rank2-block-longer-than-row"),
    pytest.param(
        t([[1, 2, 6], [0, 0, 3]]), 3, t([[3, 3, 3], [1, 1, 1]]), id="rank2-one-block-per-row"
    ),
    pytest.param(t([[1, 2, 6], [0, 0, 3]]), 1, t([[1, 2, 6], [0, 0, 3]]), id="rank2-block1-none"),
    pytest.param(
        t([[[1, 2, 6]], [[0, 0, 3]]]), 5, t([[[3, 3, 3]], [[1, 1, 1]]]), id="rank3-conv1d-kernel"
    ),
    pytest.param(
        t([[[[1, 2], [3, 6]], [[0, 0], [0, 4]]]]),
        1,
        t([[[[3, 3], [3, 3]], [[1, 1], [1, 1]]]]),
        id="rank4-conv2d-kernel",
    ),
    pytest.param(
        t([[[[[1, 3]], [[5, 7]]]]]), 1, t([[[[[4, 4]], [[4, 4]]]]]), id="rank5-conv3d-kernel"
    ),
]


@pytest.mark.parametrize(("d", "block_size", "expected"), HAND)
def test_matches_hand_computed_block_means(d, block_size, expected):
    before = d.clone()
    out = spatial_average(d, block_size)
    assert out.shape == d.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.equal(d, before), "the input must not be modified"


SHAPES = [(), (5,), (3, 8), (3, 7), (4, 1), (2, 3, 5), (4, 2, 3, 3), (2, 3, 2, 3, 2), (3, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 32], ids=lambda b: f"block{b}")
def test_matches_loop_reference(shape, block_size):
    d = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = spatial_average(d, block_size)
    torch.testing.assert_close(out, reference_block_average(d, block_size), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 8), (4, 2, 3, 3)], ids=["rank2", "rank4"])
def test_preserves_block_sums(shape):
    d = torch.rand(shape, dtype=torch.float64)
    torch.testing.assert_close(spatial_average(d, 4).sum(), d.sum())


def test_rejects_block_size_below_one():
    with pytest.raises(ValueError, match="block_size"):
        spatial_average(torch.ones(2, 2), 0)
