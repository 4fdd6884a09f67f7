"""VideoBooth's networks for diffusers 0.42: the 3D UNet with attention injection, the mapper, checkpoint conversion.

A port (own code, same parameter names and numerics) of github.com/Vchitect/VideoBooth (Jiang et al., CVPR 2024,
"VideoBooth: Diffusion-based Video Generation with Image Prompts"), written against the upstream files:

* ``models/unet.py`` ``UNet3DConditionModelWaterMark``: Stable Diffusion 1.4's UNet inflated to video. Every 2D
  conv runs per frame (``InflatedConv3d``), but the resnets' GroupNorm pools over all frames of a clip; each
  transformer block runs sparse-causal self-attention (``attn1``: a frame attends to the first and the previous
  frame), cross-attention to the text (``attn2``), the feed-forward, and a temporal self-attention (``attn_temp``,
  no positional encoding). After the last up block a small residual UNet of plain resnet blocks (the "watermark
  removal" branch: ``watermark_down_blocks``, ``watermark_up_blocks``, ``watermark_zero_out``) is added to the
  features before ``conv_norm_out``.
* ``models/attention.py``, ``models/resnet.py``, ``models/unet_blocks.py``: the blocks, and the second, "exemplar"
  branch: the noised latent of the image prompt runs through the same blocks alongside the video (with its own
  timestep and the unconditional text), and each block hands its exemplar features to the video's ``attn1``.
* ``sample_scripts/sample.py`` ``inj_forward_stattention`` (the *fine visual embeddings*, paper section 3.3):
  frame 0's queries attend to ``[exemplar keys; frame-0 keys]`` (``to_k_exemplar``/``to_v_exemplar`` applied to
  the exemplar features), and the result *replaces frame 0's values* in the sparse-causal attention of every frame;
  ``inj_forward_crossattention``: the text keys/values come from the mapper checkpoint's ``to_k``/``to_v``
  (upstream's ``to_k_global``); ``Mapper``: the *coarse visual embeddings* (5 MLP pairs over CLIP image features).

Nothing here depends on VideoBooth's pinned diffusers 0.11.1: the attention is ``F.scaled_dot_product_attention``,
the feed-forward and time embedding are diffusers 0.42's ``FeedForward`` / ``Timesteps`` / ``TimestepEmbedding``
(same parameter names as 0.11's). diffusers' ``UNet3DConditionModel`` (ModelScope: temporal convolutions,
``TransformerTemporalModel``) and ``UNetMotionModel`` (AnimateDiff motion modules, per-frame GroupNorm) are other
architectures with other key names, so the UNet is ported rather than mapped onto them.

Checkpoints (see :func:`assemble_unet_state_dict`): the 2D weights come from SD 1.4's ``unet/`` (diffusers layout,
loaded strictly as upstream's ``from_pretrained_2d`` does), ``watermark_remove_module.pt["ema_unet"]`` overlays the
whole video UNet (upstream: ``load_state_dict(strict=False)``), and ``mapper.pt["ema"]`` holds the mapper and the
attention projections that upstream attaches at run time; :func:`split_mapper_state_dict` maps its flat names
(``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k_new``) onto module paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.videobooth_config import CROSS_ATTN_DOWN, CROSS_ATTN_UP, DOWN, UP, UNetConfig
from videobench.weights import WeightsLoadError, strip_prefixes

# ------------------------------------------------------------------------------------------------ layers


class InflatedConv3d(nn.Conv2d):
    """A 2D convolution applied to every frame of a ``(B, C, F, H, W)`` video (``models/resnet.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, *y.shape[1:]).transpose(1, 2)


class ResnetBlock3D(nn.Module):
    """``ResnetBlock3D``: SD's resnet with per-frame convs; GroupNorm pools over frames as well as pixels."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0) -> None:
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = InflatedConv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = InflatedConv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (InflatedConv3d(in_channels, out_channels, kernel_size=1)
                              if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (shortcut + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    """A stride-2 per-frame conv (``Downsample3D(name="op")``: the parameters are ``conv.*``)."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest 2x spatial upsampling (frames kept), then a per-frame conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling lacks bf16 kernels on some backends (as upstream)
            x = x.float()
        if output_size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x.to(dtype))


class Attention(nn.Module):
    """diffusers 0.11's ``CrossAttention`` layout: ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Multi-head softmax attention, ``(B, Lq, inner) x (B, Lk, inner) -> (B, Lq, inner)``, scale 1/sqrt(d)."""
        b, lq, inner = query.shape
        d = inner // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], self.heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        return out.transpose(1, 2).reshape(b, lq, inner)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](x))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None, repeats: int = 1) -> torch.Tensor:
        """Self-attention, or cross-attention to ``context`` (whose batch is ``hidden``'s / ``repeats``: the text
        of a clip is shared by its frames; upstream repeats it per frame before the projections)."""
        source = hidden if context is None else context
        key, value = self.to_k(source), self.to_v(source)
        if repeats > 1:
            key, value = key.repeat_interleave(repeats, 0), value.repeat_interleave(repeats, 0)
        return self.project_out(self.attend(self.to_q(hidden), key, value))


class SparseCausalAttention(Attention):
    """``attn1``: frame ``i`` attends to frames 0 and ``i - 1``; the image prompt's features enter frame 0's values.

    ``to_k``/``to_v`` hold upstream's ``to_k_new``/``to_v_new`` (the mapper checkpoint's fine-tuned copies, which
    upstream uses in place of the base ones), ``to_k_exemplar``/``to_v_exemplar`` project the exemplar features.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int) -> None:
        super().__init__(query_dim, heads, dim_head)
        inner = heads * dim_head
        self.to_k_exemplar = nn.Linear(query_dim, inner, bias=False)
        self.to_v_exemplar = nn.Linear(query_dim, inner, bias=False)

    def forward(self, hidden: torch.Tensor, video_length: int, exemplar: torch.Tensor | None = None,
                injection_scale: float = 1.0) -> torch.Tensor:
        """``hidden``: ``(B*F, N, C)`` tokens (frames of a clip consecutive); ``exemplar``: ``(B, M, C)`` tokens of
        the image prompt (already normalised by the block's ``norm1``), or None for no injection.

        Attention injection (upstream ``inj_forward_stattention``)::

            u0 = attn(q_0, [k_ex; k_0], [v_ex; v_0])            # frame 0 reads the image prompt
            v_0 <- lerp(v_0, u0, injection_scale)               # upstream: injection_scale = 1 (v_0 <- u0)
            out_i = attn(q_i, [k_0; k_{i-1}], [v_0; v_{i-1}])   # sparse-causal, frame -1 := frame 0

        Keys stay the projected ones; only frame 0's values change, so every frame sees the injected values.
        """
        bf, n, _ = hidden.shape
        f = video_length
        b = bf // f
        query, key, value = self.to_q(hidden), self.to_k(hidden), self.to_v(hidden)
        inner = query.shape[-1]
        key, value = key.reshape(b, f, n, inner), value.reshape(b, f, n, inner)
        if exemplar is not None and injection_scale != 0:
            first_query = query.reshape(b, f, n, inner)[:, 0]
            injected = self.attend(first_query, torch.cat([self.to_k_exemplar(exemplar), key[:, 0]], dim=1),
                                   torch.cat([self.to_v_exemplar(exemplar), value[:, 0]], dim=1))
            first_value = torch.lerp(value[:, 0], injected, float(injection_scale))
            value = torch.cat([first_value[:, None], value[:, 1:]], dim=1)
        first = [0] * f
        former = [max(i - 1, 0) for i in range(f)]
        key = torch.cat([key[:, first], key[:, former]], dim=2).reshape(bf, 2 * n, inner)
        value = torch.cat([value[:, first], value[:, former]], dim=2).reshape(bf, 2 * n, inner)
        return self.project_out(self.attend(query, key, value))


class BasicTransformerBlock3D(nn.Module):
    """Sparse-causal self-attention, text cross-attention, GEGLU feed-forward, temporal self-attention."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int) -> None:
        from diffusers.models.attention import FeedForward  # diffusers loads when a model is built, not to list it

        super().__init__()
        self.attn1 = SparseCausalAttention(dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        self.attn_temp = Attention(dim, heads, dim_head)
        self.norm_temp = nn.LayerNorm(dim)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, video_length: int,
                exemplar: torch.Tensor | None = None, injection_scale: float = 1.0) -> torch.Tensor:
        """``hidden``: ``(B*F, N, C)``; ``context``: ``(B, L, D)`` text; ``exemplar``: ``(B, M, C)`` or None."""
        f = video_length
        exemplar = self.norm1(exemplar) if exemplar is not None else None
        hidden = self.attn1(self.norm1(hidden), f, exemplar, injection_scale) + hidden
        hidden = self.attn2(self.norm2(hidden), context, repeats=f) + hidden
        hidden = self.ff(self.norm3(hidden)) + hidden
        bf, n, c = hidden.shape
        temporal = hidden.reshape(bf // f, f, n, c).transpose(1, 2).reshape(-1, f, c)
        temporal = self.attn_temp(self.norm_temp(temporal)) + temporal
        return temporal.reshape(bf // f, n, f, c).transpose(1, 2).reshape(bf, n, c)


class Transformer3DModel(nn.Module):
    """GroupNorm, 1x1 ``proj_in``, transformer blocks, 1x1 ``proj_out``, residual (per frame)."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, cross_attention_dim: int, groups: int,
                 num_layers: int = 1) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock3D(inner, heads, dim_head, cross_attention_dim) for _ in range(num_layers)])
        self.proj_out = nn.Conv2d(inner, in_channels, kernel_size=1)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = self.proj_in(self.norm(x.transpose(1, 2).reshape(b * f, c, h, w)))
        return frames.flatten(2).transpose(1, 2)  # (B*F, H*W, inner)

    def _output(self, tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = residual.shape
        frames = self.proj_out(tokens.transpose(1, 2).reshape(b * f, -1, h, w))
        return residual + frames.reshape(b, f, c, h, w).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, exemplar: torch.Tensor | None = None,
                exemplar_context: torch.Tensor | None = None, injection_scale: float = 1.0,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The video ``x`` and, when given, the exemplar branch ``exemplar`` (both ``(B, C, F, H, W)``).

        Each block's exemplar input (the exemplar branch's own tokens before that block) is injected into the
        video's ``attn1`` at frame 0 of the exemplar; the exemplar branch itself runs with ``exemplar_context``
        and no injection. Upstream computes the exemplar branch twice (once inside the video's call, once on its
        own); both give these tensors.
        """
        f = x.shape[2]
        tokens = self._tokens(x)
        exemplar_tokens = self._tokens(exemplar) if exemplar is not None else None
        fe = exemplar.shape[2] if exemplar is not None else 0
        for block in self.transformer_blocks:
            injected = None
            if exemplar_tokens is not None:
                injected = exemplar_tokens.reshape(x.shape[0], fe, *exemplar_tokens.shape[1:])[:, 0]
            tokens = block(tokens, context, f, injected, injection_scale)
            if exemplar_tokens is not None:
                exemplar_tokens = block(exemplar_tokens, exemplar_context, fe)
        out = self._output(tokens, x)
        return out, (self._output(exemplar_tokens, exemplar) if exemplar_tokens is not None else None)


# ------------------------------------------------------------------------------------------------ blocks


@dataclass
class Branch:
    """The exemplar branch's state through the UNet: its features, skip connections, time embedding, text."""

    hidden: torch.Tensor
    temb: torch.Tensor
    context: torch.Tensor
    skips: tuple[torch.Tensor, ...] = ()


class DownBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 eps: float, add_downsample: bool, downsample_padding: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
            for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for resnet in self.resnets:
            x = resnet(x, temb)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class CrossAttnDownBlock3D(DownBlock3D):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 eps: float, add_downsample: bool, downsample_padding: int, heads: int, cross_attention_dim: int,
                 ) -> None:
        super().__init__(in_channels, out_channels, temb_channels, num_layers, groups, eps, add_downsample,
                         downsample_padding)
        self.attentions = nn.ModuleList([
            Transformer3DModel(heads, out_channels // heads, out_channels, cross_attention_dim, groups)
            for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor = None,
                exemplar: Branch | None = None, injection_scale: float = 1.0,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for resnet, attention in zip(self.resnets, self.attentions):
            x = resnet(x, temb)
            ex = None
            if exemplar is not None:
                ex = resnet(exemplar.hidden, exemplar.temb)
            x, ex = attention(x, context, ex, exemplar.context if exemplar else None, injection_scale)
            skips += (x,)
            if exemplar is not None:
                exemplar.hidden, exemplar.skips = ex, exemplar.skips + (ex,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
            if exemplar is not None:
                exemplar.hidden = self.downsamplers[0](exemplar.hidden)
                exemplar.skips += (exemplar.hidden,)
        return x, skips


class UpBlock3D(nn.Module):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, eps: float, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D((prev_output_channel if i == 0 else out_channels)
                          + (in_channels if i == num_layers - 1 else out_channels),
                          out_channels, temb_channels, groups, eps)
            for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                upsample_size: Sequence[int] | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x, skips = torch.cat([x, skips[-1]], dim=1), skips[:-1]
            x = resnet(x, temb)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock3D(UpBlock3D):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, eps: float, add_upsample: bool, heads: int,
                 cross_attention_dim: int) -> None:
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps,
                         add_upsample)
        self.attentions = nn.ModuleList([
            Transformer3DModel(heads, out_channels // heads, out_channels, cross_attention_dim, groups)
            for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                upsample_size: Sequence[int] | None = None, context: torch.Tensor = None,
                exemplar: Branch | None = None, exemplar_skips: tuple[torch.Tensor, ...] = (),
                injection_scale: float = 1.0) -> torch.Tensor:
        for resnet, attention in zip(self.resnets, self.attentions):
            x, skips = torch.cat([x, skips[-1]], dim=1), skips[:-1]
            x = resnet(x, temb)
            ex = None
            if exemplar is not None:
                ex = torch.cat([exemplar.hidden, exemplar_skips[-1]], dim=1)
                exemplar_skips = exemplar_skips[:-1]
                ex = resnet(ex, exemplar.temb)
            x, ex = attention(x, context, ex, exemplar.context if exemplar else None, injection_scale)
            if exemplar is not None:
                exemplar.hidden = ex
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
            if exemplar is not None:
                exemplar.hidden = self.upsamplers[0](exemplar.hidden, _with_frames(upsample_size, exemplar.hidden))
        return x


class UNetMidBlock3DCrossAttn(nn.Module):
    def __init__(self, channels: int, temb_channels: int, groups: int, eps: float, output_scale_factor: float,
                 heads: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(channels, channels, temb_channels, groups, eps, output_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList([
            Transformer3DModel(heads, channels // heads, channels, cross_attention_dim, groups)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, exemplar: Branch | None = None,
                injection_scale: float = 1.0) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        ex = self.resnets[0](exemplar.hidden, exemplar.temb) if exemplar is not None else None
        x, ex = self.attentions[0](x, context, ex, exemplar.context if exemplar else None, injection_scale)
        x = self.resnets[1](x, temb)
        if exemplar is not None:
            exemplar.hidden = self.resnets[1](ex, exemplar.temb)
        return x


def _with_frames(size: Sequence[int] | None, x: torch.Tensor) -> tuple[int, ...] | None:
    """An upsampling target ``(F, H, W)`` of the video, with ``x``'s frame count (the exemplar runs one frame)."""
    return None if size is None else (x.shape[2], *tuple(size)[1:])


def _plain_down_blocks(channels: Sequence[int], temb: int, layers: int, groups: int, eps: float,
                       padding: int) -> nn.ModuleList:
    blocks = []
    for i, out in enumerate(channels):
        blocks.append(DownBlock3D(channels[max(i - 1, 0)], out, temb, layers, groups, eps,
                                  add_downsample=i < len(channels) - 1, downsample_padding=padding))
    return nn.ModuleList(blocks)


def _plain_up_blocks(channels: Sequence[int], temb: int, layers: int, groups: int, eps: float) -> nn.ModuleList:
    reversed_channels = list(reversed(channels))
    blocks, out = [], reversed_channels[0]
    for i in range(len(channels)):
        prev, out = out, reversed_channels[i]
        skip_in = reversed_channels[min(i + 1, len(channels) - 1)]
        blocks.append(UpBlock3D(skip_in, prev, out, temb, layers + 1, groups, eps,
                                add_upsample=i < len(channels) - 1))
    return nn.ModuleList(blocks)


# ------------------------------------------------------------------------------------------------ the UNet


class VideoBoothUNet3D(nn.Module):
    """``UNet3DConditionModelWaterMark`` with the VideoBooth attention modules, as one module.

    ``forward(sample, timestep, context, exemplar=..., exemplar_timestep=..., exemplar_context=...)`` predicts the
    noise of ``sample`` ``(B, 4, F, H, W)``. With ``exemplar`` (the noised latent of the image prompt,
    ``(B, 4, Fe, H, W)``; upstream repeats it to 16 frames, one frame gives the same features since every frame of
    that branch is identical) the exemplar branch runs alongside and feeds the attention injection.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps  # loads with a model, not to list it

        config = config or UNetConfig()
        self.config = config
        channels, heads = config.block_out_channels, config.heads()
        if len(config.down_block_types) != len(channels) or len(config.up_block_types) != len(channels):
            raise ValueError("UNetConfig: one down and one up block type per block_out_channels entry")
        if config.watermark_block_out_channels[0] != channels[0]:
            raise ValueError("UNetConfig: the watermark branch starts at block_out_channels[0] channels")
        temb = channels[0] * 4
        groups, eps, layers = config.norm_num_groups, config.norm_eps, config.layers_per_block
        self.conv_in = InflatedConv3d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], temb)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(config.down_block_types):
            common = {"in_channels": channels[max(i - 1, 0)], "out_channels": channels[i], "temb_channels": temb,
                      "num_layers": layers, "groups": groups, "eps": eps, "add_downsample": i < len(channels) - 1,
                      "downsample_padding": config.downsample_padding}
            if kind == CROSS_ATTN_DOWN:
                self.down_blocks.append(CrossAttnDownBlock3D(**common, heads=heads[i],
                                                             cross_attention_dim=config.cross_attention_dim))
            elif kind == DOWN:
                self.down_blocks.append(DownBlock3D(**common))
            else:
                raise ValueError(f"UNetConfig: unknown down block type {kind!r}")
        self.mid_block = UNetMidBlock3DCrossAttn(channels[-1], temb, groups, eps, config.mid_block_scale_factor,
                                                 heads[-1], config.cross_attention_dim)
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(channels)), list(reversed(heads))
        out = reversed_channels[0]
        for i, kind in enumerate(config.up_block_types):
            prev, out = out, reversed_channels[i]
            common = {"in_channels": reversed_channels[min(i + 1, len(channels) - 1)],
                      "prev_output_channel": prev, "out_channels": out, "temb_channels": temb,
                      "num_layers": layers + 1, "groups": groups, "eps": eps, "add_upsample": i < len(channels) - 1}
            if kind == CROSS_ATTN_UP:
                self.up_blocks.append(CrossAttnUpBlock3D(**common, heads=reversed_heads[i],
                                                         cross_attention_dim=config.cross_attention_dim))
            elif kind == UP:
                self.up_blocks.append(UpBlock3D(**common))
            else:
                raise ValueError(f"UNetConfig: unknown up block type {kind!r}")

        watermark = config.watermark_block_out_channels
        self.watermark_down_blocks = _plain_down_blocks(watermark, temb, layers, groups, eps,
                                                        config.downsample_padding)
        self.watermark_up_blocks = _plain_up_blocks(watermark, temb, layers, groups, eps)
        self.watermark_zero_out = InflatedConv3d(channels[0], channels[0], kernel_size=1)
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = InflatedConv3d(channels[0], config.out_channels, kernel_size=3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def time_embed(self, timestep: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        return self.time_embedding(self.time_proj(t).to(self.dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                exemplar: torch.Tensor | None = None, exemplar_timestep: torch.Tensor | int | None = None,
                exemplar_context: torch.Tensor | None = None, injection_scale: float = 1.0) -> torch.Tensor:
        """The predicted noise of ``sample`` (see the class docstring); ``context`` is ``(B, L, D)`` text."""
        up_factor = 2 ** sum(block.upsamplers is not None for block in self.up_blocks)
        forward_upsample_size = any(size % up_factor for size in sample.shape[-2:])
        temb = self.time_embed(timestep, sample.shape[0], sample.device)
        x = self.conv_in(sample)
        branch = None
        if exemplar is not None:
            if exemplar_timestep is None or exemplar_context is None:
                raise ValueError("the exemplar branch needs exemplar_timestep and exemplar_context")
            branch = Branch(self.conv_in(exemplar), self.time_embed(exemplar_timestep, exemplar.shape[0],
                                                                     sample.device), exemplar_context)
            branch.skips = (branch.hidden,)

        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            if isinstance(block, CrossAttnDownBlock3D):
                x, block_skips = block(x, temb, context, branch, injection_scale)
            else:
                x, block_skips = block(x, temb)
                if branch is not None:
                    branch.hidden, exemplar_skips = block(branch.hidden, branch.temb)
                    branch.skips += exemplar_skips
            skips += block_skips
        x = self.mid_block(x, temb, context, branch, injection_scale)

        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            exemplar_skips: tuple[torch.Tensor, ...] = ()
            if branch is not None:
                exemplar_skips, branch.skips = branch.skips[-n:], branch.skips[:-n]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if isinstance(block, CrossAttnUpBlock3D):
                x = block(x, block_skips, temb, upsample_size, context, branch, exemplar_skips, injection_scale)
            else:
                if branch is not None:
                    branch.hidden = block(branch.hidden, exemplar_skips, branch.temb,
                                          _with_frames(upsample_size, branch.hidden))
                x = block(x, block_skips, temb, upsample_size)
        return self._output(x, temb)

    def _output(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The watermark-removal residual UNet on the features, then norm, SiLU, ``conv_out``."""
        features = x
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.watermark_down_blocks:
            x, block_skips = block(x, temb)
            skips += block_skips
        upsample_size = None
        for i, block in enumerate(self.watermark_up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            if i < len(self.watermark_up_blocks) - 1:
                upsample_size = skips[-1].shape[2:]
            x = block(x, block_skips, temb, upsample_size)
        x = self.watermark_zero_out(x)
        return self.conv_out(F.silu(self.conv_norm_out(features + x)))

    def transformer_block_paths(self) -> list[str]:
        """Module paths of every transformer block (``down_blocks.0.attentions.0.transformer_blocks.0``, ...)."""
        return [name for name, module in self.named_modules() if isinstance(module, BasicTransformerBlock3D)]


# ------------------------------------------------------------------------------------------------ the mapper


def _mlp(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.LeakyReLU(),
                         nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.LeakyReLU(),
                         nn.Linear(hidden_dim, output_dim))


class VideoBoothMapper(nn.Module):
    """The coarse visual embeddings (``sample.py`` ``Mapper``): CLIP image features -> word embeddings.

    For each of ``num_embeddings`` CLIP feature maps (upstream: the last hidden state and the hidden states after
    layers 4, 8, 12, 16 of CLIP ViT-L/14), ``mapping_i`` maps the class token and ``mapping_patch_i`` the patch
    tokens (averaged after the MLP); their sum is one token embedding. Output ``(B, num_embeddings, output_dim)``.
    """

    def __init__(self, input_dim: int = 1024, output_dim: int = 768, hidden_dim: int = 1024,
                 num_embeddings: int = 5) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        for i in range(num_embeddings):
            setattr(self, f"mapping_{i}", _mlp(input_dim, hidden_dim, output_dim))
            setattr(self, f"mapping_patch_{i}", _mlp(input_dim, hidden_dim, output_dim))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != self.num_embeddings:
            raise ValueError(f"the mapper takes {self.num_embeddings} feature maps, got {len(features)}")
        tokens = []
        for i, feature in enumerate(features):
            cls = getattr(self, f"mapping_{i}")(feature[:, :1])
            patches = getattr(self, f"mapping_patch_{i}")(feature[:, 1:]).mean(dim=1, keepdim=True)
            tokens.append(cls + patches)
        return torch.cat(tokens, dim=1)


def inject_word_embeddings(token_embeddings: torch.Tensor, input_ids: torch.Tensor,
                           placeholder_ids: Sequence[int], injected: torch.Tensor) -> torch.Tensor:
    """Put the mapper's ``E`` embeddings in place of the placeholder's tokens (``sample.py`` ``inj_forward_text``).

    For every position whose token is the placeholder's first token, the ``len(placeholder_ids)`` placeholder
    tokens are replaced by the ``E`` injected embeddings: the tokens after them shift right by
    ``E - len(placeholder)`` (the sequence keeps its length, so the last ones, i.e. padding, drop off) or left
    (filled from the end of the sequence). As upstream, a shift whose sizes do not fit is skipped and injected
    embeddings that run past the end are cut. ``token_embeddings``: ``(B, L, D)``; ``input_ids``: ``(B, L)``;
    ``injected``: ``(B, E, D)``.
    """
    out = token_embeddings.clone()
    if not placeholder_ids:
        return out
    length, count, n = token_embeddings.shape[1], injected.shape[1], len(placeholder_ids)
    for b in range(token_embeddings.shape[0]):
        for start in torch.nonzero(input_ids[b] == placeholder_ids[0]).flatten().tolist():
            end = start + n - 1
            tail = max(length - (start + count), 0)
            source = token_embeddings[b, end + 1:end + 1 + tail]
            if n > count:
                source = torch.cat([source, token_embeddings[b, length - (n - count):]], dim=0)
            if source.shape[0] == tail:
                out[b, start + count:] = source
            room = out[b, start:start + count].shape[0]
            out[b, start:start + room] = injected[b, :room].to(out.dtype)
    return out


# ------------------------------------------------------------------------------------------------ checkpoints

#: mapper.pt names of the attention projections upstream attaches: ``<attn path with _>_<suffix>`` -> parameter.
MAPPER_ATTN1 = {"to_k_new": "to_k", "to_v_new": "to_v", "to_k_exemplar": "to_k_exemplar",
                "to_v_exemplar": "to_v_exemplar"}
MAPPER_ATTN2 = {"to_k": "to_k", "to_v": "to_v"}
_MAPPER_HEAD = re.compile(r"^mapping(_patch)?_\d+\.")
#: Keys of the video UNet that SD 1.4's 2D UNet does not have (from the watermark module / the mapper).
_VIDEO_ONLY = re.compile(r"(\.attn_temp\.|\.norm_temp\.|^watermark_|_exemplar\.)")
_FROM_MAPPER = re.compile(r"_exemplar\.")


def mapper_key_map(unet: VideoBoothUNet3D) -> dict[str, str]:
    """``mapper.pt`` key -> UNet key for every attention projection the mapper checkpoint carries."""
    mapping = {}
    for path in unet.transformer_block_paths():
        for attn, table in (("attn1", MAPPER_ATTN1), ("attn2", MAPPER_ATTN2)):
            prefix = f"{path}.{attn}".replace(".", "_")
            for suffix, parameter in table.items():
                mapping[f"{prefix}_{suffix}.weight"] = f"{path}.{attn}.{parameter}.weight"
    return mapping


def split_mapper_state_dict(state: Mapping[str, torch.Tensor], unet: VideoBoothUNet3D, source: str,
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``mapper.pt``'s ``ema`` dict -> (the mapper's state dict, UNet attention weights by UNet key).

    Strict, as upstream's ``mapper.load_state_dict``: every attention projection must be there, and nothing else.
    """
    state = strip_prefixes(dict(state), ("module.",))
    key_map = mapper_key_map(unet)
    missing = [key for key in key_map if key not in state]
    unet_weights = {key_map[key]: value for key, value in state.items() if key in key_map}
    mapper = {key: value for key, value in state.items() if key not in key_map and _MAPPER_HEAD.match(key)}
    unexpected = sorted(set(state) - set(key_map) - set(mapper))
    if missing or unexpected:
        raise WeightsLoadError(
            f"{source}: not a VideoBooth mapper checkpoint for this UNet: {len(missing)} missing key(s)"
            + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f", {len(unexpected)} unexpected key(s)" + (f" (e.g. {', '.join(unexpected[:3])})" if unexpected else ""))
    return mapper, unet_weights


@dataclass
class AssembledUNet:
    """A complete UNet state dict and where each part came from (for the run's config and the tests)."""

    state_dict: dict[str, torch.Tensor]
    from_base: list[str]
    from_video: list[str]
    from_mapper: list[str]
    ignored_video_keys: list[str]


def _check_shapes(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], source: str) -> None:
    wrong = [f"{key} {tuple(value.shape)} != {tuple(expected[key])}" for key, value in state.items()
             if key in expected and tuple(value.shape) != tuple(expected[key])]
    if wrong:
        raise WeightsLoadError(f"{source}: {len(wrong)} tensor(s) of the wrong shape (e.g. {'; '.join(wrong[:3])})")


def assemble_unet_state_dict(expected: Mapping[str, torch.Size], base: Mapping[str, torch.Tensor] | None,
                             video: Mapping[str, torch.Tensor], mapper_weights: Mapping[str, torch.Tensor],
                             base_source: str | None, video_source: str) -> AssembledUNet:
    """Upstream's three loads as one state dict (``expected``: the UNet's key -> shape).

    1. ``base`` (SD 1.4 ``unet/``): exactly the 2D keys, strictly (``from_pretrained_2d``'s ``load_state_dict``).
       ``None`` skips it (``-o sd_base=false``); then ``video`` must hold every 2D tensor itself.
    2. ``video`` (``watermark_remove_module.pt["ema_unet"]``): overlays every key it has (``strict=False``; keys
       the UNet lacks are ignored and listed); the temporal layers and the watermark branch, which SD 1.4 lacks,
       must be among them (upstream would otherwise run them untrained).
    3. ``mapper_weights`` (from :func:`split_mapper_state_dict`): ``attn1.to_k/to_v`` (upstream's ``to_k_new`` /
       ``to_v_new``), ``attn1.to_k_exemplar/to_v_exemplar`` and ``attn2.to_k/to_v`` (``to_k_global``...).
    """
    video = strip_prefixes(dict(video), ("module.",))
    two_d = [key for key in expected if not _VIDEO_ONLY.search(key)]
    if base is not None:
        missing = [key for key in two_d if key not in base]
        unexpected = sorted(set(base) - set(two_d))
        if missing or unexpected:
            raise WeightsLoadError(
                f"{base_source}: not Stable Diffusion 1.x's UNet: {len(missing)} missing key(s)"
                + (f" (e.g. {', '.join(missing[:3])})" if missing else "") + f", {len(unexpected)} unexpected key(s)"
                + (f" (e.g. {', '.join(unexpected[:3])})" if unexpected else ""))
        _check_shapes(expected, base, str(base_source))
    _check_shapes(expected, video, video_source)
    needed = [key for key in expected if _VIDEO_ONLY.search(key) and not _FROM_MAPPER.search(key)]
    lacking = [key for key in needed if key not in video]
    if lacking:
        raise WeightsLoadError(f"{video_source}: lacks {len(lacking)} video-UNet tensor(s) that Stable Diffusion "
                               f"has no values for (e.g. {', '.join(lacking[:3])})")
    state = {key: base[key] for key in two_d} if base is not None else {}
    from_video = [key for key in video if key in expected]
    state.update({key: video[key] for key in from_video})
    wrong_mapper = [key for key in mapper_weights if key not in expected]
    if wrong_mapper:
        raise ValueError(f"mapper weights for keys the UNet lacks: {wrong_mapper[:3]}")
    state.update(mapper_weights)
    left = [key for key in expected if key not in state]
    if left:
        hint = ("; it does not hold the whole UNet: load Stable Diffusion 1.4's unet/ first (-o sd_base=true, as "
                "upstream)") if base is None else ""
        raise WeightsLoadError(f"{video_source}: no checkpoint provides {len(left)} UNet tensor(s) "
                               f"(e.g. {', '.join(left[:3])}){hint}")
    return AssembledUNet(
        state_dict=state,
        from_base=[key for key in two_d if base is not None and key not in video and key not in mapper_weights],
        from_video=[key for key in from_video if key not in mapper_weights],
        from_mapper=list(mapper_weights),
        ignored_video_keys=sorted(key for key in video if key not in expected),
    )


def expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in module.state_dict().items()}


def count_parameters(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())
