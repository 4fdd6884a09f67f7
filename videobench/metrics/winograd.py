"""Winograd minimal filtering for stride-1 convolutions with fixed weights (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), for CPU inference where oneDNN computes them directly.

A correlation of ``m`` outputs with an ``r``-tap filter, ``F(m, r)``, needs ``m + r - 1`` multiplications instead of
``m r``: ``y = A^T [(G g) * (B^T d)]`` on an input tile ``d`` of ``n = m + r - 1`` samples. Nested over both axes, an
``(mh x mw)`` output tile of a ``(kh x kw)`` convolution costs ``nh nw`` products per input and output channel
instead of ``mh mw kh kw``: for a 3x3 kernel and 4x4 tiles 36 instead of 144 (4x fewer), for a 1x5 kernel and 1x4
tiles 8 instead of 20 (2.5x fewer). Summed over the input channels, the products become ``nh nw`` independent matrix
products, which is where the time goes; the tile transforms are cheap passes over memory.

The matrices come from the Toom-Cook construction (:func:`winograd_matrices`): polynomial multiplication evaluated at
``n - 1`` finite points and at infinity, transposed into a correlation, computed exactly in rationals. The points
are the usual small ones (``0, +-1, +-2, +-1/2, ...``); the larger the tile, the larger the matrices' entries and the
float error: in fp32 a 3x3 convolution with 4x4 tiles differs from the direct one by about 1e-5 of its output's
scale, 2x2 tiles by about 4e-7.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import torch
from torch import nn

#: Interpolation points of ``F(m, r)`` (``m + r - 2`` finite ones; the last point is infinity), smallest first.
POINTS: tuple[Fraction, ...] = tuple(Fraction(p) for p in
                                     (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 4, -4, Fraction(1, 4)))


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


@functools.lru_cache(maxsize=None)
def winograd_rational_matrices(m: int, r: int) -> tuple[tuple[tuple[Fraction, ...], ...], ...]:
    """Exact ``(A^T, G, B^T)`` of ``F(m, r)``: ``A^T`` is ``m x n``, ``G`` is ``n x r``, ``B^T`` is ``n x n``.

    Toom-Cook: the product ``s = x * g`` of an ``m``- and an ``r``-coefficient polynomial is evaluated at the points
    ``a_j`` (``A x``: Vandermonde rows ``a_j^i``; ``G g``: ``g(a_j) / f_j`` with ``f_j = prod_{l != j} (a_j - a_l)``)
    and at infinity (the leading coefficients), multiplied pointwise and interpolated back by Lagrange
    (``B``: column ``j`` holds the coefficients of ``prod_{l != j} (x - a_l)``, the infinity column those of
    ``prod_l (x - a_l)``). Transposing ``s = B [(G g) * (A x)]`` in ``x`` and ``s`` turns the convolution into the
    correlation ``y_i = sum_k g_k d_{i + k} = A^T [(G g) * (B^T d)]``.
    """
    if m < 1 or r < 1:
        raise ValueError(f"F(m, r) needs m >= 1 and r >= 1, got F({m}, {r})")
    n = m + r - 1
    if n == 1:
        one = ((Fraction(1),),)
        return one, one, one
    if n - 1 > len(POINTS):
        raise ValueError(f"F({m}, {r}) needs {n - 1} finite points; at most {len(POINTS)} are defined")
    points = POINTS[: n - 1]
    factors = [_prod(a - b for b in points if b != a) for a in points]
    a_t = [[a ** i for a in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = [[a ** k / f for k in range(r)] for a, f in zip(points, factors)] + [[Fraction(int(k == r - 1))
                                                                             for k in range(r)]]
    columns = []
    for j in range(n - 1):
        poly = [Fraction(1)]
        for b in points[:j] + points[j + 1 :]:
            poly = _poly_mul(poly, [-b, Fraction(1)])
        columns.append(poly + [Fraction(0)])
    full = [Fraction(1)]
    for b in points:
        full = _poly_mul(full, [-b, Fraction(1)])
    columns.append(full)
    b_t = [list(column) for column in columns]  # row j of B^T is column j of B
    return tuple(map(tuple, a_t)), tuple(map(tuple, g)), tuple(map(tuple, b_t))


def _prod(values: Iterable[Fraction]) -> Fraction:
    out = Fraction(1)
    for value in values:
        out *= value
    return out


def winograd_matrices(m: int, r: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """``(A^T, G, B^T)`` of ``F(m, r)`` (:func:`winograd_rational_matrices`) as tensors of ``dtype``."""
    return tuple(torch.tensor([[float(x) for x in row] for row in matrix], dtype=dtype)
                 for matrix in winograd_rational_matrices(m, r))


class WinogradConv2d(nn.Module):
    """A stride-1, undilated, ungrouped 2-D convolution (cross-correlation, as ``F.conv2d``) computed with nested
    Winograd ``F(mh, kh) x F(mw, kw)`` (see the module docstring); the same function as ``F.conv2d`` with the given
    weight, bias and padding, up to float rounding.

    Works channels-last: the output is an ``(N, C, H, W)`` tensor in ``torch.channels_last`` memory format, and an
    input in that format is read without a copy. The filter transform ``U = G g G^T`` is computed once, in float64,
    at construction. A forward pass gathers the ``(nh x nw)`` input tiles (stride ``(mh, mw)``) of the zero-padded
    input as runs of channels, transforms them with one matrix product (``B^T d B`` for all tiles at once: the
    Kronecker product of the two axes' ``B^T``), multiplies them with ``U`` as ``nh nw`` batched matrix products that
    sum over the input channels, transforms the products back (``A^T M A``, one matrix product) and lays the
    ``(mh x mw)`` output tiles out as the output, adding the bias. An axis whose kernel has one tap is not tiled
    (``F(1, 1)``).
    """

    u: torch.Tensor
    input_transform: torch.Tensor
    input_transform_h: torch.Tensor
    input_transform_w: torch.Tensor
    output_transform: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 padding: tuple[int, int] | int = 0, tile: int = 4) -> None:
        super().__init__()
        out_channels, in_channels, kh, kw = weight.shape
        self.padding = (padding, padding) if isinstance(padding, int) else (int(padding[0]), int(padding[1]))
        self.tile = (tile if kh > 1 else 1, tile if kw > 1 else 1)
        self.kernel_size = (kh, kw)
        (at_h, g_h, bt_h), (at_w, g_w, bt_w) = (winograd_matrices(m, k) for m, k in zip(self.tile, self.kernel_size))
        self.window = (bt_h.shape[0], bt_w.shape[0])
        u = torch.einsum("ak,bl,ockl->abco", g_h, g_w, weight.detach().double().cpu())  # (nh, nw, C, K)
        dtype = weight.dtype
        self.register_buffer("u", u.reshape(-1, in_channels, out_channels).to(weight.device, dtype).contiguous())
        self.register_buffer("input_transform", torch.kron(bt_h, bt_w).to(weight.device, dtype))
        self.register_buffer("input_transform_h", bt_h.to(weight.device, dtype))
        self.register_buffer("input_transform_w", bt_w.to(weight.device, dtype))
        self.register_buffer("output_transform", torch.kron(at_h, at_w).to(weight.device, dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_channels, self.in_channels = out_channels, in_channels
        self._local = threading.local()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, tile: int = 4) -> WinogradConv2d:
        """The Winograd form of ``conv`` (stride 1, dilation 1, groups 1, integer zero padding)."""
        if not is_winograd_eligible(conv):
            raise ValueError(f"not a stride-1, undilated, ungrouped, zero-padded convolution: {conv}")
        return cls(conv.weight, conv.bias, cast("tuple[int, int]", conv.padding), tile)

    def __getstate__(self) -> dict[str, object]:  # copy.deepcopy, pickle: the per-thread buffers stay behind
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"tile={self.tile}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transformed = self.transform_input(x, shared=True)  # nothing outlives the call but the output
        return self.transform_output(self.multiply(transformed), transformed)

    def transform_input(self, x: torch.Tensor, shared: bool = False) -> TransformedInput:
        """``B^T d B`` of every input tile of ``x``: ``(nh * nw, tiles, C)`` (the first phase of :meth:`forward`).

        The result lives in this convolution's buffers until its next call, or with ``shared`` in buffers this
        thread shares with every convolution of the same geometry (:func:`shared_workspace`), valid until the next
        one of them runs."""
        batch, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {channels}")
        (mh, mw), (nh, nw), (kh, kw), (ph, pw) = self.tile, self.window, self.kernel_size, self.padding
        out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
        th, tw = -(-out_h // mh), -(-out_w // mw)  # tiles per axis
        padded_h, padded_w = (th - 1) * mh + nh, (tw - 1) * mw + nw
        padded_shape = (batch, padded_h, padded_w, channels)
        space = (shared_workspace((x.device, x.dtype, torch.is_inference_mode_enabled(), padded_shape, self.padding,
                                   self.kernel_size, self.tile, self.out_channels)) if shared
                 else self._workspace(x, padded_shape))
        # (B, H', W', C): the margins stay zero, the interior is the input (no copy of channels for channels-last)
        xp = space.get("padded", (batch, padded_h, padded_w, channels), zero=True)
        xp[:, ph : ph + height, pw : pw + width].copy_(x.permute(0, 2, 3, 1))
        s_b, s_h, s_w, _ = xp.stride()
        # every tile's (nh x nw) window as runs of C channels: (nh * nw, B * th * tw * C)
        tiles = space.get("tiles", (nh, nw, batch, th, tw, channels))
        tiles.copy_(xp.as_strided(tiles.shape, (s_h, s_w, s_b, mh * s_h, mw * s_w, 1)))
        v = space.get("transformed", (nh * nw, batch * th * tw * channels))
        if nh > 1 and nw > 1:  # B^T d B one axis at a time: 2 n instead of n^2 products per value
            rows = space.get("row_transformed", (nh, nw * batch * th * tw * channels))
            torch.mm(self.input_transform_h, tiles.view(nh, -1), out=rows)
            torch.matmul(self.input_transform_w, rows.view(nh, nw, -1), out=v.view(nh, nw, -1))
        else:
            torch.mm(self.input_transform, tiles.view(nh * nw, -1), out=v)
        return TransformedInput(v.view(nh * nw, -1, channels), batch, (th, tw), (out_h, out_w), space)

    def multiply(self, transformed: TransformedInput, weight: torch.Tensor | None = None,
                 accumulate: torch.Tensor | None = None) -> torch.Tensor:
        """The products with the transformed filters, summed over the input channels: ``(nh * nw, tiles, K)``.

        ``weight`` replaces this convolution's ``U`` (another one's, with the same tiles: a convolution split by
        input channels); with ``accumulate`` the products are added to it in place (the sum of two convolutions
        over different inputs, before one output transform)."""
        u = self.u if weight is None else weight
        if accumulate is not None:
            return accumulate.baddbmm_(transformed.values, u)
        products = transformed.workspace.get("products", (*transformed.values.shape[:2], u.shape[-1]))
        return torch.bmm(transformed.values, u, out=products)

    def transform_output(self, products: torch.Tensor, transformed: TransformedInput,
                         addend: torch.Tensor | None = None) -> torch.Tensor:
        """``A^T M A`` of every tile, laid out as the channels-last output, plus the bias and ``addend`` (an
        ``(N, K, H, W)`` tensor of the output's shape, read in any layout)."""
        (mh, mw), (nh, nw), out_channels = self.tile, self.window, products.shape[-1]
        batch, (th, tw), (out_h, out_w) = transformed.batch, transformed.tiles, transformed.output_size
        y = transformed.workspace.get("output_tiles", (mh * mw, products[0].numel()))
        torch.mm(self.output_transform, products.view(nh * nw, -1), out=y)
        y6 = y.view(mh, mw, batch, th, tw, out_channels).permute(2, 3, 0, 4, 1, 5)
        out = products.new_empty(batch, th, mh, tw, mw, out_channels)
        exact_fit = th * mh == out_h and tw * mw == out_w
        if self.bias is not None:
            torch.add(y6, self.bias, out=out)
        elif addend is not None and exact_fit:
            torch.add(y6, addend.permute(0, 2, 3, 1).view(batch, th, mh, tw, mw, out_channels), out=out)
            addend = None
        else:
            out.copy_(y6)
        out = out.view(batch, th * mh, tw * mw, out_channels)
        if not exact_fit:
            out = out[:, :out_h, :out_w].contiguous()
        out = out.permute(0, 3, 1, 2)
        return out if addend is None else out.add_(addend)

    def _workspace(self, x: torch.Tensor, padded_shape: tuple[int, ...]) -> _Workspace:
        """This thread's intermediate buffers for inputs like ``x`` (kept between calls: a RAFT refinement calls a
        convolution 20 times with one shape, and fresh multi-megabyte buffers cost page faults each time); one
        shape at a time: a new batch or frame size replaces them."""
        return _kept_workspace(self._local, (x.device, x.dtype, torch.is_inference_mode_enabled(), padded_shape), 1)


#: Geometries whose buffers :func:`shared_workspace` keeps per thread (RAFT's encoders have three, its motion
#: encoder and flow head four).
SHARED_WORKSPACES = 8
_shared = threading.local()


def shared_workspace(key: tuple[object, ...]) -> _Workspace:
    """This thread's buffers for one convolution geometry ``key`` (device, dtype, inference mode, padded input
    shape, padding, kernel, tile, output channels: the key fixes every buffer's shape, and the padded input's zero
    margins), shared by all :class:`WinogradConv2d` of that geometry and kept for the :data:`SHARED_WORKSPACES`
    geometries used last. A whole :meth:`WinogradConv2d.forward` needs them only until it returns, so the eight
    64-channel 3x3 convolutions of RAFT's two encoders share one set (about 60 MB for a frame at 256x320) instead
    of keeping eight; fresh buffers of that size would cost their page faults on every call."""
    return _kept_workspace(_shared, key, SHARED_WORKSPACES)


def _kept_workspace(store: threading.local, key: tuple[object, ...], capacity: int) -> _Workspace:
    """The workspace of ``key`` (which starts with the device and dtype) in this thread's ``store``, made on first
    use; the store keeps the ``capacity`` keys used last."""
    spaces = cast("OrderedDict[tuple[object, ...], _Workspace]", store.__dict__.setdefault("spaces", OrderedDict()))
    space = spaces.pop(key, None)
    if space is None:
        device, dtype = cast("tuple[torch.device, torch.dtype]", key[:2])
        space = _Workspace(device, dtype)
    spaces[key] = space  # the most recently used last
    while len(spaces) > capacity:
        spaces.popitem(last=False)
    return space


@dataclass(frozen=True)
class TransformedInput:
    """:meth:`WinogradConv2d.transform_input`'s result: the transformed tiles ``(nh * nw, tiles, C)`` (in the
    convolution's workspace: valid until its next call) and the geometry the output transform needs."""

    values: torch.Tensor
    batch: int
    tiles: tuple[int, int]
    output_size: tuple[int, int]
    workspace: _Workspace


class _Workspace:
    """Named buffers of one device and dtype, reused while their shape stays the same."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], zero: bool = False) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = (torch.zeros if zero else torch.empty)(shape, device=self.device, dtype=self.dtype)
            self.buffers[name] = buffer
        return buffer


def is_winograd_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` that :class:`WinogradConv2d` computes: stride 1, dilation 1, groups 1,
    zero integer padding and a kernel larger than 1x1."""
    return (isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.kernel_size != (1, 1))


def winograd_module(module: nn.Module, tile: int = 4,
                    select: Callable[[torch.Tensor], bool] | None = None) -> nn.Module:
    """A copy of ``module`` whose eligible convolutions (:func:`is_winograd_eligible`, and ``select(weight)`` when
    given) are :class:`WinogradConv2d` with output tiles of ``tile``; the other submodules are shared with
    ``module``, which is unchanged."""
    if is_winograd_eligible(module) and (select is None or select(cast(nn.Conv2d, module).weight)):
        return WinogradConv2d.from_conv(cast(nn.Conv2d, module), tile)
    if not module._modules:
        return module
    out = copy.copy(module)
    out._modules = {name: None if child is None else winograd_module(child, tile, select)
                    for name, child in module._modules.items()}
    return out
