"""Winograd convolutions (videobench.metrics.winograd): exact transforms, the same function as F.conv2d."""

from __future__ import annotations

import copy
import pickle
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videobench.metrics.winograd import (
    SHARED_WORKSPACES,
    WinogradConv2d,
    is_winograd_eligible,
    shared_workspace,
    winograd_matrices,
    winograd_module,
    winograd_rational_matrices,
)


@pytest.mark.parametrize(("m", "r"), [(1, 1), (2, 3), (4, 3), (6, 3), (2, 5), (4, 5), (3, 2), (1, 7)])
def test_transforms_compute_the_correlation_exactly(m, r):
    """``y = A^T [(G g) * (B^T d)]`` is the correlation ``y_i = sum_k g_k d_{i+k}`` for every g and d, i.e.
    ``sum_j A^T[i, j] G[j, k] B^T[j, t] = [t == i + k]``: checked in exact rationals."""
    a_t, g, b_t = winograd_rational_matrices(m, r)
    n = m + r - 1
    assert (len(a_t), len(a_t[0]), len(g), len(g[0]), len(b_t), len(b_t[0])) == (m, n, n, r, n, n)
    for i in range(m):
        for k in range(r):
            for t in range(n):
                total = sum((a_t[i][j] * g[j][k] * b_t[j][t] for j in range(n)), Fraction(0))
                assert total == (1 if t == i + k else 0), (i, k, t)


def test_f23_known_matrices():
    """F(2, 3) on the points 0, 1, -1 and infinity (Lavin & Gray's, up to the scaling of G's rows)."""
    a_t, g, b_t = winograd_matrices(2, 3)
    assert a_t.tolist() == [[1, 1, 1, 0], [0, 1, -1, 1]]
    assert g.tolist() == [[-1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    assert b_t.tolist() == [[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]


def test_too_large_a_tile_is_refused():
    with pytest.raises(ValueError, match="finite points"):
        winograd_rational_matrices(12, 3)
    with pytest.raises(ValueError, match="m >= 1"):
        winograd_rational_matrices(0, 3)


CASES = [  # (kernel, padding, tile, height, width)
    ((3, 3), (1, 1), 4, 16, 24),
    ((3, 3), (1, 1), 2, 7, 9),  # output not a multiple of the tile: cropped
    ((3, 3), (0, 0), 4, 11, 10),
    ((3, 3), (1, 1), 6, 13, 8),
    ((1, 5), (0, 2), 4, 6, 13),
    ((5, 1), (2, 0), 4, 13, 6),
    ((3, 5), (1, 2), 4, 9, 10),
]


@pytest.mark.parametrize(("kernel", "padding", "tile", "height", "width"), CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_equals_conv2d_in_float64(kernel, padding, tile, height, width, bias):
    """In float64 the rearranged sums agree with ``F.conv2d`` to rounding: the transforms' entries are at most 32
    for these tiles, so the difference stays far below 1e-10 of the output scale."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, height, width, dtype=torch.float64)
    weight = torch.randn(7, 5, *kernel, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64) if bias else None
    expected = F.conv2d(x, weight, b, padding=padding)
    conv = WinogradConv2d(weight, b, padding, tile)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = conv(x.contiguous(memory_format=layout))
        assert got.shape == expected.shape
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert (got - expected).abs().max() <= 1e-10 * expected.abs().max()


def test_float32_error_is_that_of_the_transforms():
    """fp32, a 3x3 kernel over 256 channels with 4x4 tiles (RAFT's motion encoder): the error is rounding in the
    transforms (entries up to 5, sums of 256 * 36 products), a few 1e-6 of the output scale; bounded by 1e-4 here."""
    torch.manual_seed(1)
    x, weight, b = torch.randn(2, 256, 16, 24), torch.randn(192, 256, 3, 3) / 48, torch.randn(192)
    expected = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
    got = WinogradConv2d(weight, b, 1, 4)(x)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_buffers_are_reused_without_aliasing_the_outputs():
    """The workspace is kept between calls of one shape and replaced for another; outputs are fresh tensors."""
    torch.manual_seed(2)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    conv = WinogradConv2d(weight, None, 1, 4)
    small, large = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 12, 20, dtype=torch.float64)
    first = conv(small)
    kept = first.clone()
    for x in (large, small, large):
        assert torch.allclose(conv(x), F.conv2d(x, weight, padding=1), rtol=0, atol=1e-10)
    assert torch.equal(first, kept)  # later calls did not write into an earlier output
    with torch.inference_mode():  # buffers made in inference mode are separate from those made outside it
        assert torch.allclose(conv(small), F.conv2d(small, weight, padding=1), rtol=0, atol=1e-10)
    assert torch.allclose(conv(small), F.conv2d(small, weight, padding=1), rtol=0, atol=1e-10)


def test_convolutions_of_one_geometry_share_buffers_without_mixing_them():
    """Whole forward passes use this thread's buffers for their geometry: two convolutions with the same shapes
    and other weights, called in turn, each compute their own function; one with another padding but the same
    padded input shape (8x8 padded by 1, 6x6 padded by 2) gets its own buffers, whose zero margins the other's
    interior would overwrite; the least recently used geometries beyond SHARED_WORKSPACES are dropped."""
    torch.manual_seed(3)
    weights = [torch.randn(5, 4, 3, 3, dtype=torch.float64) for _ in range(3)]
    same_a, same_b = WinogradConv2d(weights[0], None, 1, 4), WinogradConv2d(weights[1], None, 1, 4)
    wider = WinogradConv2d(weights[2], None, 2, 4)
    x8, x6 = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    first = same_a(x8)
    kept = first.clone()
    for _ in range(2):
        for conv, x, weight, padding in ((same_a, x8, weights[0], 1), (same_b, x8, weights[1], 1),
                                         (wider, x6, weights[2], 2)):
            assert torch.allclose(conv(x), F.conv2d(x, weight, padding=padding), rtol=0, atol=1e-10)
    assert torch.equal(first, kept)
    oldest = shared_workspace(("cpu", torch.float32, "geometry", 0))
    assert shared_workspace(("cpu", torch.float32, "geometry", 0)) is oldest
    for k in range(1, SHARED_WORKSPACES):
        shared_workspace(("cpu", torch.float32, "geometry", k))
    assert shared_workspace(("cpu", torch.float32, "geometry", 0)) is oldest  # still among the last 8 used
    for k in range(1, SHARED_WORKSPACES + 1):
        shared_workspace(("cpu", torch.float32, "geometry", k))
    assert shared_workspace(("cpu", torch.float32, "geometry", 0)) is not oldest


def test_copies_and_pickles():
    conv = WinogradConv2d(torch.randn(4, 3, 3, 3), torch.randn(4), 1)
    x = torch.randn(1, 3, 8, 8)
    conv(x)
    for other in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert torch.equal(other(x), conv(x))
    assert "kernel_size=(3, 3)" in repr(conv) and "tile=(4, 4)" in repr(conv)


def test_wrong_channels_and_ineligible_convolutions_are_refused():
    conv = WinogradConv2d(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="expected 3 input channels, got 5"):
        conv(torch.randn(1, 5, 8, 8))
    for bad in (nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(3, 4, 3, dilation=2), nn.Conv2d(4, 4, 3, groups=2),
                nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                nn.Conv2d(3, 4, 1)):
        assert not is_winograd_eligible(bad)
        with pytest.raises(ValueError, match="not a stride-1"):
            WinogradConv2d.from_conv(bad)
    assert is_winograd_eligible(nn.Conv2d(3, 4, (1, 5), padding=(0, 2)))


def test_winograd_module_converts_what_is_selected_and_leaves_the_original():
    torch.manual_seed(3)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 3, stride=2))).double()
    converted = winograd_module(block, tile=4, select=lambda weight: weight.shape[0] >= 16)
    assert isinstance(converted[3][0], WinogradConv2d)  # selected
    assert isinstance(converted[0], nn.Conv2d) and converted[0] is block[0]  # not selected: shared
    assert converted[2] is block[2] and isinstance(converted[3][1], nn.Conv2d)  # 1x1, stride 2: not eligible
    assert isinstance(block[3][0], nn.Conv2d)  # the original is unchanged
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(converted(x), block(x), rtol=0, atol=1e-10)
    everything = winograd_module(block)
    assert sum(isinstance(module, WinogradConv2d) for module in everything.modules()) == 2
