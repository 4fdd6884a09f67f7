"""RAFT-large inference for the dynamic degree: the final flow of torchvision's ``RAFT.forward`` with less work.

torchvision's ``RAFT.forward`` (``torchvision/models/optical_flow/raft.py``, the architecture of princeton-vl's
``core/raft.py`` that VBench runs) encodes both images of a pair, builds the correlation pyramid, encodes the
context of the first image and runs ``num_flow_updates`` GRU refinements, upsampling the flow after each one.
:func:`videobench.metrics.dynamic.raft_consecutive_flows` computes the same last flow for every consecutive pair
of a clip and saves five kinds of work, none of which changes the arithmetic beyond float rounding:

* each frame goes through the feature encoder once (it is the second image of one pair and the first of the next;
  RAFT-large's feature encoder normalises per sample, so a frame's features do not depend on its batch);
* the flow is upsampled (and the upsampling mask predicted) once, after the last update;
* the GRU's input is ``cat([hidden, context, motion])`` and its convolutions are linear in it, so each of the six
  GRU convolutions (``convz``, ``convr``, ``convq`` of the 1x5 and the 5x1 unit) splits into a hidden, a context and
  a motion part. The context is fixed for all updates of a pair: its part (plus the bias) is computed once per pair
  instead of once per update, a third of the GRU's work. The hidden parts of ``convz`` and ``convr`` (same input)
  run as one convolution, and so do the three motion parts (:class:`FusedGRU`);
* on CPU (``winograd_tile`` positive) the refinement's convolutions with many channels (the motion encoder's and
  the flow head's 3x3, the GRU's 1x5 and 5x1 hidden and motion parts) run as Winograd convolutions
  (:class:`videobench.metrics.winograd.WinogradConv2d`: 4x fewer multiplications for a 3x3 kernel, 2.5x for 1x5)
  on channels-last tensors, the layout in which its tile transforms are runs of channels; the feature and context
  encoders run channels-last too, one frame at a time, batch norms folded into their convolutions and their
  stride-1 3x3 convolutions Winograd ones (:func:`channels_last_encoder`);
* the correlation lookup gathers, per centroid and level, the ``(2r + 2)^2`` integer-aligned volume entries around
  it and blends them with the centroid's four bilinear weights, shared by all its ``(2r + 1)^2`` window samples,
  instead of ``grid_sample``'s four reads and weights per sample (:class:`PatchLookup`).

:meth:`videobench.metrics.dynamic.DynamicDegreeMetric.pair_scores` also runs a pair that comes back in a clip
(the same two frames' bytes: a still shot, duplicated frames) once.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from videobench.metrics import winograd


class FixedConv2d(nn.Module):
    """``F.conv2d`` with a fixed weight, optional bias and integer padding (stride 1): the direct counterpart of
    :class:`videobench.metrics.winograd.WinogradConv2d`."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


def fixed_conv(weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, ...],
               winograd_tile: int = 0) -> nn.Module:
    """A stride-1 convolution with fixed weights: Winograd (:class:`~videobench.metrics.winograd.WinogradConv2d`,
    output tiles of ``winograd_tile``) when ``winograd_tile`` is positive and it pays (:func:`winograd_pays`), else
    direct."""
    if winograd_tile > 0 and winograd_pays(weight):
        return winograd.WinogradConv2d(weight, bias, cast("tuple[int, int]", tuple(padding)), winograd_tile)
    return FixedConv2d(weight, bias, padding)


#: The Winograd output tile of RAFT's refinement convolutions on CPU: F(4x4, 3x3) and F(1x4, 1x5) (4x and 2.5x fewer
#: multiplications; 2x2 tiles were slower, 6x6 ones no faster and less exact).
WINOGRAD_TILE = 4

#: Winograd pays on CPU when a convolution has at least this many input x output channels (measured with
#: ``benchmarks/conv_algorithms.py`` and, for the encoders, one frame at a time on one thread at 256x320: 64 -> 64
#: channels at 128x160 17.0 ms direct channels-last against 13.5 ms, 96 -> 96 at 64x80 8.7 against 5.8 ms, 128 -> 128
#: at 32x40 3.9 against 2.0 ms); RAFT's 3x3 256 -> 2 (the flow head's last) is 3-6x faster direct.
WINOGRAD_MIN_CHANNEL_PRODUCT = 64 * 64


def winograd_pays(weight: torch.Tensor) -> bool:
    """Whether a convolution of this ``(out, in, kh, kw)`` weight is computed with Winograd (see
    :data:`WINOGRAD_MIN_CHANNEL_PRODUCT`; 1x1 convolutions never are)."""
    out_channels, in_channels, kh, kw = weight.shape
    return (kh, kw) != (1, 1) and out_channels * in_channels >= WINOGRAD_MIN_CHANNEL_PRODUCT


class FusedGRU(nn.Module):
    """One ``ConvGRU`` of RAFT's recurrent block with its convolutions split by input (see the module docstring).

    ``h' = (1 - z) h + z q`` with ``z = sigmoid(Wz [h, x])``, ``r = sigmoid(Wr [h, x])``,
    ``q = tanh(Wq [r h, x])`` and ``x = [context, motion]``; :meth:`context_terms` is the context part of the three
    pre-activations (bias included), :meth:`forward` adds the hidden and motion parts, with Winograd convolutions
    when ``winograd_tile`` is positive.
    """

    def __init__(self, gru: nn.Module, hidden_size: int, context_size: int, winograd_tile: int = 0) -> None:
        super().__init__()
        convs = cast("tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]", (gru.convz, gru.convr, gru.convq))
        padding = cast("tuple[int, ...]", convs[0].padding)  # RAFT's ConvGRU pads by integers
        split = [torch.split(conv.weight.detach(), [hidden_size, context_size,
                                                    conv.in_channels - hidden_size - context_size], dim=1)
                 for conv in convs]
        bias = torch.cat([cast(torch.Tensor, conv.bias).detach() for conv in convs])
        self.context_conv = FixedConv2d(torch.cat([parts[1] for parts in split]).contiguous(), bias, padding)
        self.motion_conv = fixed_conv(torch.cat([parts[2] for parts in split]).contiguous(), None, padding,
                                      winograd_tile)
        self.hidden_zr_conv = fixed_conv(torch.cat([split[0][0], split[1][0]]).contiguous(), None, padding,
                                         winograd_tile)
        self.hidden_q_conv = fixed_conv(split[2][0].contiguous(), None, padding, winograd_tile)
        self.hidden_size = hidden_size
        self.winograd = all(isinstance(conv, winograd.WinogradConv2d)
                            for conv in (self.motion_conv, self.hidden_zr_conv, self.hidden_q_conv))

    def context_terms(self, context: torch.Tensor) -> torch.Tensor:
        """``(B, 3 * hidden, H, W)``: the context part plus bias of the z, r and q pre-activations."""
        return self.context_conv(context)

    def forward(self, hidden: torch.Tensor, motion: torch.Tensor, context_terms: torch.Tensor) -> torch.Tensor:
        n = self.hidden_size
        if self.winograd:
            z, q = self._gates_winograd(hidden, motion, context_terms)
        else:
            from_motion = self.motion_conv(motion).add_(context_terms)
            zr = torch.sigmoid_(self.hidden_zr_conv(hidden).add_(from_motion[:, : 2 * n]))
            z, r = zr[:, :n], zr[:, n:]
            q = torch.tanh_(self.hidden_q_conv(r * hidden).add_(from_motion[:, 2 * n :]))
        dtype = torch.promote_types(hidden.dtype, q.dtype)  # autocast: the convolutions' outputs may be fp16
        return torch.lerp(hidden.to(dtype), q.to(dtype), z.to(dtype))  # (1 - z) h + z q in one pass

    def _gates_winograd(self, hidden: torch.Tensor, motion: torch.Tensor, context_terms: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` and ``q`` with the hidden and motion parts of each pre-activation summed in the Winograd domain:
        one output transform per gate instead of one per part, the context terms added by the output's layout
        pass."""
        n = self.hidden_size
        motion_conv, hidden_zr_conv, hidden_q_conv = cast("tuple[winograd.WinogradConv2d, ...]", (
            self.motion_conv, self.hidden_zr_conv, self.hidden_q_conv))
        u_motion = motion_conv.u  # the motion part's transformed filters: the z/r outputs, then the q outputs
        from_motion = motion_conv.transform_input(motion)
        from_hidden = hidden_zr_conv.transform_input(hidden)
        products = motion_conv.multiply(from_motion, u_motion[..., : 2 * n],
                                        accumulate=hidden_zr_conv.multiply(from_hidden))
        zr = torch.sigmoid_(hidden_zr_conv.transform_output(products, from_hidden, addend=context_terms[:, : 2 * n]))
        z, r = zr[:, :n], zr[:, n:]
        from_reset = hidden_q_conv.transform_input(r * hidden)
        products = motion_conv.multiply(from_motion, u_motion[..., 2 * n :], accumulate=hidden_q_conv.multiply(from_reset))
        q = torch.tanh_(hidden_q_conv.transform_output(products, from_reset, addend=context_terms[:, 2 * n :]))
        return z, q


class FusedUpdate(nn.Module):
    """RAFT's update block (motion encoder, the two GRUs, flow head) with :class:`FusedGRU` units.

    Built from a torchvision ``raft_large`` model; shares its motion encoder and flow head modules (copies of them
    with Winograd convolutions where :func:`winograd_pays`, when ``winograd_tile`` is positive), copies the GRU
    weights (rearranged). Rebuild it after changing the model's weights.
    """

    def __init__(self, model: nn.Module, winograd_tile: int = 0) -> None:
        super().__init__()
        block = cast(nn.Module, model.update_block)
        recurrent = cast(nn.Module, block.recurrent_block)
        grus = cast("tuple[nn.Module, nn.Module]", (recurrent.convgru1, recurrent.convgru2))
        self.hidden_size = cast(int, block.hidden_state_size)
        motion_encoder, flow_head = cast(nn.Module, block.motion_encoder), cast(nn.Module, block.flow_head)
        motion_size = cast(int, motion_encoder.out_channels)
        context_size = cast(nn.Conv2d, grus[0].convz).in_channels - self.hidden_size - motion_size
        if winograd_tile > 0:
            motion_encoder, flow_head = (winograd.winograd_module(module, winograd_tile, select=winograd_pays)
                                         for module in (motion_encoder, flow_head))
        self.motion_encoder, self.flow_head = motion_encoder, flow_head
        self.grus = nn.ModuleList(FusedGRU(gru, self.hidden_size, context_size, winograd_tile) for gru in grus)

    def context_terms(self, context: torch.Tensor) -> list[torch.Tensor]:
        return [cast(FusedGRU, gru).context_terms(context) for gru in self.grus]

    def forward(self, hidden: torch.Tensor, context_terms: list[torch.Tensor], corr: torch.Tensor,
                flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        motion = self.motion_encoder(flow, corr)
        for gru, terms in zip(self.grus, context_terms):
            hidden = gru(hidden, motion, terms)
        return hidden, self.flow_head(hidden)


class PatchLookup:
    """RAFT's correlation lookup (torchvision ``CorrBlock.index_pyramid``) as a gather of integer-aligned patches
    and one shared bilinear blend per centroid, without ``grid_sample``.

    The ``(2r + 1)^2`` window offsets are integers, so all samples of one centroid ``(x, y)`` share its fractional
    parts ``(fx, fy)``: the window is the bilinear blend, with the same weights ``(1 - fx, fx)`` and ``(1 - fy, fy)``,
    of the ``(2r + 2)^2`` volume entries at ``floor(x) - r .. floor(x) + r + 1`` (and the same in ``y``). Entries
    outside the volume are zeros (``grid_sample``'s zero padding, ``align_corners=True``): each level is padded by
    ``2r + 2`` zeros per side and ``floor`` is clamped to ``[-(r + 2), size + r]``, beyond which every entry of the
    patch is padding. Each level's volume is stored transposed (x-major: a row of the buffer is one x, its entries
    run along y) and all levels' padded volumes sit side by side in one buffer, so one ``index_select`` fetches the
    ``2r + 2`` runs of ``2r + 2`` consecutive entries of every centroid's patch at every level, and two ``lerp``
    (along y, then x) blend them: ``(2r + 2)^2`` reads and shared weights per centroid and level instead of
    ``grid_sample``'s ``4 (2r + 1)^2`` reads and per-sample weights. The patch comes out in ``index_pyramid``'s
    order (level-major, then the x offset, then the y offset): the channels-last output is a view of it. The values
    are the same bilinear interpolation up to float rounding (pair scores move by about 2e-7 relative). Volumes are
    read in fp32 at least, as ``grid_sample`` does under autocast.
    """

    def __init__(self, pyramid: list[torch.Tensor], radius: int) -> None:
        device, side, pad = pyramid[0].device, 2 * radius + 2, 2 * radius + 2
        self.radius = radius
        steps = torch.arange(side, device=device)
        sizes = torch.tensor([volume.shape[-1:-3:-1] for volume in pyramid], device=device)  # (levels, 2): (W, H)
        strides = sizes[:, 1] + 2 * pad  # a row of the transposed, padded volume: one x, all (padded) y
        # all levels' transposed, padded volumes side by side per centroid: one gather serves every level
        padded = [F.pad(volume.transpose(-1, -2), [pad, pad, pad, pad]).flatten(1) for volume in pyramid]
        bases = torch.tensor([0] + [level.shape[1] for level in padded[:-1]], device=device).cumsum(0)
        # fp32 at least, as grid_sample runs under autocast
        volumes = torch.cat(padded, dim=1).to(torch.promote_types(pyramid[0].dtype, torch.float32))
        # every run of ``side`` consecutive entries along y as one item: a patch is ``side`` such runs (one per x)
        self.runs = volumes.view(-1).as_strided((volumes.numel() - side + 1, side), (1, 1))
        self.rows = torch.arange(0, volumes.numel(), volumes.shape[1], device=device).view(-1, 1)  # row starts
        self.offsets = (bases.view(-1, 1) + steps.view(1, side) * strides.view(-1, 1)).flatten()  # (levels * side)
        self.strides = strides
        self.scales = 2.0 ** -torch.arange(len(pyramid), device=device, dtype=volumes.dtype).view(-1, 1)
        self.low = torch.full_like(sizes, -(radius + 2), dtype=volumes.dtype)
        self.high = (sizes + radius).to(volumes.dtype)
        self.shift = pad - radius

    def __call__(self, coords: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``(B, 2, h, w)`` centroids in level-0 pixels -> ``(B, levels * (2r + 1)^2, h, w)`` correlation features
        (laid out channels-last when ``channels_last``: a view of the blended patches, no copy)."""
        batch, _, h, w = coords.shape
        levels, side = len(self.scales), 2 * self.radius + 2
        # index_pyramid halves the centroids per level (exact in binary): (N, levels, 2)
        points = coords.permute(0, 2, 3, 1).reshape(batch * h * w, 1, 2).to(self.scales.dtype) * self.scales
        floor = torch.floor(points)
        fraction = (points - floor).unsqueeze(-1)  # (N, levels, 2, 1)
        first = torch.clamp(floor, self.low, self.high).long() + self.shift  # patch origin in the padded volume
        start = first[..., 1] + first[..., 0] * self.strides  # (N, levels)
        index = start.add_(self.rows).repeat_interleave(side, dim=1).add_(self.offsets)  # one run per x step
        patch = self.runs.index_select(0, index.view(-1)).view(-1, levels, side, side)  # (N, levels, x, y)
        along_y = torch.lerp(patch[..., :-1], patch[..., 1:], fraction[:, :, 1:2])
        window = torch.lerp(along_y[:, :, :-1], along_y[:, :, 1:], fraction[:, :, 0:1])  # (N, levels, x, y)
        window = window.view(batch, h, w, -1)  # index_pyramid's channel order: level, x offset, y offset
        if channels_last:
            return window.permute(0, 3, 1, 2)
        return window.permute(0, 3, 1, 2).contiguous()


def correlation_pyramid(fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """torchvision ``CorrBlock.build_pyramid``'s pyramid, returned instead of kept on the module (threads share the
    model): the ``(B h w, 1, h, w)`` dot products of every feature of ``fmap1`` with every feature of ``fmap2`` over
    the square root of the channel count, then ``num_levels - 1`` times 2x2 average-pooled."""
    if fmap1.shape != fmap2.shape:
        raise ValueError(f"feature maps of different shapes: {tuple(fmap1.shape)} and {tuple(fmap2.shape)}")
    batch, channels, h, w = fmap1.shape
    if min(h, w) < 2 ** num_levels:
        raise ValueError(f"{h}x{w} feature maps are too small for {num_levels} correlation levels (need "
                         f"{2 ** num_levels} per side: frames of at least {8 * 2 ** num_levels} pixels)")
    volume = torch.matmul(fmap1.view(batch, channels, h * w).transpose(1, 2), fmap2.view(batch, channels, h * w))
    volume = volume.view(batch * h * w, 1, h, w) / torch.sqrt(torch.tensor(channels))
    pyramid = [volume]
    for _ in range(num_levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], kernel_size=2, stride=2))
    return pyramid


def fused_update(model: nn.Module, winograd_tile: int = 0) -> FusedUpdate:
    """The model's :class:`FusedUpdate` for ``winograd_tile``, built once and kept on the model (weights are fixed at
    inference)."""
    return cast(FusedUpdate, _derived(model, ("update", winograd_tile), cast(nn.Module, model.update_block),
                                      lambda: FusedUpdate(model, winograd_tile)))


def channels_last_encoders(model: nn.Module, winograd_tile: int = 0) -> tuple[nn.Module, nn.Module]:
    """Copies of the model's feature and context encoders for CPU inference (:func:`channels_last_encoder` with
    ``winograd_tile``), built once and kept on the model."""
    def kept(name: str) -> nn.Module:
        encoder = cast(nn.Module, getattr(model, f"{name}_encoder"))
        return _derived(model, ("encoder", name, winograd_tile), encoder,
                        functools.partial(channels_last_encoder, encoder, winograd_tile))

    return kept("feature"), kept("context")


def channels_last_encoder(encoder: nn.Module, winograd_tile: int = 0) -> nn.Module:
    """A copy of a RAFT encoder computing the same function with channels-last tensors, where oneDNN's convolutions
    with 64-128 channels are faster (the 64-channel 3x3 at 128x160, one thread: 377 -> 266 ms): each batch norm
    (inference: a fixed affine map) folded into the convolution before it (``fuse_conv_bn_eval``), each instance
    norm a :class:`SampleInstanceNorm`; with a positive ``winograd_tile`` the stride-1 3x3 convolutions where
    :func:`winograd_pays` (every one of them: 64, 96 and 128 channels) are Winograd ones. Same numbers up to float
    rounding; the input may be in either layout, the output is channels-last."""
    copy_ = copy.deepcopy(encoder)
    for module in list(copy_.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module)):
            layer = module[index]
            if (isinstance(layer, nn.BatchNorm2d) and not layer.training and index > 0
                    and isinstance(module[index - 1], nn.Conv2d)):
                module[index - 1] = fuse_conv_bn_eval(cast(nn.Conv2d, module[index - 1]), layer)
                module[index] = nn.Identity()
            elif isinstance(layer, nn.InstanceNorm2d) and not layer.track_running_stats:
                module[index] = SampleInstanceNorm(layer)
    copy_ = copy_.to(memory_format=torch.channels_last)
    return winograd.winograd_module(copy_, winograd_tile, select=winograd_pays) if winograd_tile > 0 else copy_


class SampleInstanceNorm(nn.Module):
    """``nn.InstanceNorm2d`` without running statistics, as one training-mode batch norm per sample (the statistics
    over one sample's pixels per channel are its instance statistics): batch norm has channels-last kernels,
    instance norm copies a channels-last input to NCHW and back."""

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias  # None unless affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 1:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        out = torch.empty_like(x)
        for index in range(len(x)):
            out[index : index + 1] = F.batch_norm(x[index : index + 1], None, None, self.weight, self.bias,
                                                  training=True, eps=self.eps)
        return out


def _derived(model: nn.Module, key: tuple[object, ...], source: nn.Module, build: Callable[[], nn.Module]
             ) -> nn.Module:
    """``build()``, kept on ``model`` under ``key`` and rebuilt when ``source``'s weights change (a state dict loaded
    afterwards, a move to another device: another storage or in-place version)."""
    cache = model.__dict__.setdefault("_videobench_derived", {})
    version = tuple(value for p in source.parameters() for value in (p.data_ptr(), p._version))
    version += tuple(value for b in source.buffers() for value in (b.data_ptr(), b._version))
    entry = cache.get(key)
    if entry is None or entry[0] != version:
        entry = cache[key] = (version, build().to(next(model.parameters()).device))
    return cast(nn.Module, entry[1])
