"""MS-Diffusion (Wang et al., "MS-Diffusion: Multi-subject Zero-shot Image Personalization with Layout Guidance",
ICLR 2025) for diffusers 0.42.1: the grounding resampler, the multi-subject cross-attention, the ``ms_adapter.bin``
loader and a wrapper around ``StableDiffusionXLPipeline``.

Written from the official repository (github.com/MS-Diffusion/MS-Diffusion, which pins diffusers 0.23.1):

* ``msdiffusion/models/projection.py`` (``Resampler`` with ``latent_init_mode="grounding"``, ``FourierEmbedder``,
  ``PerceiverAttention``, ``FeedForward``) -> :class:`GroundingResampler`. Parameter names follow the checkpoint's
  ``image_proj`` keys so that its state dict loads as it is.
* ``msdiffusion/models/attention_processor.py`` (``MaskedIPAttnProcessor2_0``) -> :class:`MSCrossAttnProcessor`:
  the UNet's text cross-attention plus ``scale`` times an attention over the image tokens in which each subject's
  tokens only reach the latent positions inside its box; positions outside every box get no image contribution.
* ``msdiffusion/models/model.py`` (``MSAdapter.generate``) and ``inference.py`` -> :class:`MSDiffusionPipeline`.

Every deviation from upstream is listed in ``docs/baselines/ms-diffusion.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from baselines.ms_diffusion_config import MSAdapterConfig, validate_box
from videobench.weights import WeightsLoadError, describe_load_error, load_into

if TYPE_CHECKING:  # diffusers is imported where a model is built, not when the method registers
    from diffusers.models.attention_processor import Attention

#: The top-level entries of ``ms_adapter.bin`` (``MSAdapter.save_to_checkpoint`` / ``load_from_checkpoint``).
CHECKPOINT_PARTS = ("image_proj", "ms_adapter", "dummy_image_tokens")
#: ``inference.py``: reference images are resized to 512x512 before CLIP's own preprocessing.
REFERENCE_RESIZE = 512
#: OpenAI CLIP normalisation (``CLIPImageProcessor()`` defaults, which ``inference.py`` uses).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The additive bias that masks an attention logit (upstream's ``(1 - mask) * -10000.0``).
MASK_BIAS = -10000.0

CONVERSION_RECIPE = (
    "convert it once, in an environment you trust, to safetensors with flattened keys:\n"
    "  python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('ms_adapter.bin', map_location='cpu', weights_only=False); "
    "flat = {f'{part}.{key}': value.contiguous() for part in ('image_proj', 'ms_adapter') "
    "for key, value in sd[part].items()}; "
    "flat['dummy_image_tokens'] = sd['dummy_image_tokens'].detach().contiguous(); "
    "save_file(flat, 'ms_adapter.safetensors')\"\n"
    "and pass -o adapter=ms_adapter.safetensors"
)


# --------------------------------------------------------------------------------------- grounding resampler


class FourierBoxEmbedding(nn.Module):
    """Sin/cos features of box coordinates at ``num_freqs`` frequencies ``temperature ** (k / num_freqs)``.

    Follows upstream's ``FourierEmbedder`` (itself GLIGEN's): for boxes ``(N, 4)`` the output ``(N, num_freqs * 8)``
    is ordered frequency-major, then sin before cos, then the four coordinates
    (``[sin(f0 * x1..y2), cos(f0 * x1..y2), sin(f1 * x1..y2), ...]``). The frequencies are computed in float32 and
    cast to the input's dtype, as upstream's float32 buffer cast by ``.to(dtype)``.
    """

    def __init__(self, num_freqs: int = 8, temperature: float = 100.0) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.temperature = temperature

    def frequencies(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        exponents = torch.arange(self.num_freqs, dtype=torch.float32) / self.num_freqs
        return (self.temperature ** exponents).to(device=device, dtype=dtype)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        angles = boxes.unsqueeze(-2) * self.frequencies(boxes.device, boxes.dtype).unsqueeze(-1)  # (N, F, 4)
        return torch.stack((angles.sin(), angles.cos()), dim=-2).flatten(1)  # (N, F, 2, 4) -> (N, F * 8)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """The resampler's pre-norm MLP (keys ``0`` LayerNorm, ``1``/``3`` bias-free Linear, as in the checkpoint)."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latent queries attending to ``[image features; latents]`` (IP-Adapter Plus / Flamingo perceiver layer)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # (B, H, L, d)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        query = self._heads(self.to_q(latents))
        key, value = (self._heads(t) for t in self.to_kv(torch.cat((features, latents), dim=1)).chunk(2, dim=-1))
        # Upstream scales q and k by d ** -0.25 each (stabler in fp16) and takes the softmax in float32.
        factor = self.dim_head ** -0.25
        weights = ((query * factor) @ (key * factor).transpose(-2, -1)).float().softmax(dim=-1).to(value.dtype)
        return self.to_out((weights @ value).transpose(1, 2).flatten(2))


class GroundingResampler(nn.Module):
    """The grounding resampler: per subject, ``num_tokens`` image tokens from CLIP-G hidden states.

    The latent queries are not free parameters (as in IP-Adapter Plus) but ``latent_proj`` of the subject's phrase
    embedding concatenated with the Fourier embedding of its box (``latent_init_mode="grounding"``), layer-normed;
    ``drop_grounding`` swaps them for the learned ``grounding_latents``. Then ``depth`` perceiver layers over the
    projected image features, and a projection to the UNet's cross-attention width.
    """

    def __init__(self, config: MSAdapterConfig) -> None:
        super().__init__()
        self.config = config
        dim, tokens = config.dim, config.num_tokens
        grounding_dim = config.phrase_dim + config.fourier_freqs * 2 * 4
        self.grounding_latents = nn.Parameter(torch.randn(1, tokens, dim) / dim**0.5)
        self.fourier_embedder = FourierBoxEmbedding(config.fourier_freqs)
        self.latent_proj = nn.Sequential(nn.Linear(grounding_dim, grounding_dim * 2), nn.GELU(),
                                         nn.Linear(grounding_dim * 2, dim * tokens))
        self.latent_norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(config.embedding_dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, config.dim_head, config.heads), feed_forward(dim, config.ff_mult)])
            for _ in range(config.depth)
        )

    def grounding_queries(self, phrase_embeds: torch.Tensor, boxes: torch.Tensor,
                          drop_grounding: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, num_tokens, dim)`` latent queries from phrase embeddings ``(N, P)`` and boxes ``(N, 4)``."""
        grounding = torch.cat((phrase_embeds, self.fourier_embedder(boxes)), dim=-1)
        latents = self.latent_norm(self.latent_proj(grounding).unflatten(-1, (self.config.num_tokens, -1)))
        if drop_grounding is not None and bool(drop_grounding.any()):
            learned = self.grounding_latents.to(latents.dtype).expand_as(latents)
            latents = torch.where(drop_grounding.view(-1, 1, 1).to(latents.device), learned, latents)
        return latents

    def forward(self, image_embeds: torch.Tensor, phrase_embeds: torch.Tensor, boxes: torch.Tensor,
                drop_grounding: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens ``(N, num_tokens, output_dim)`` of ``N`` subjects.

        Args:
            image_embeds: ``(N, L, embedding_dim)`` penultimate CLIP-G hidden states, one subject image each.
            phrase_embeds: ``(N, phrase_dim)`` pooled text-encoder outputs of the subjects' phrases.
            boxes: ``(N, 4)`` boxes ``x1, y1, x2, y2`` in ``[0, 1]``.
            drop_grounding: ``(N,)`` bools; True uses the learned queries instead of the grounded ones.
        """
        latents = self.grounding_queries(phrase_embeds, boxes, drop_grounding)
        features = self.proj_in(image_embeds)
        for attention, mlp in self.layers:
            latents = attention(features, latents) + latents
            latents = mlp(latents) + latents
        return self.norm_out(self.proj_out(self.attention_norm(latents)))


# ------------------------------------------------------------------------------- multi-subject cross-attention


def box_region_masks(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, grid * grid, R)`` bools: latent position (row-major) inside box ``r``.

    As upstream's ``prepare_attention_mask_qk``: a box ``x1, y1, x2, y2`` in ``[0, 1]`` covers the columns
    ``floor(x1 * grid) <= x < ceil(x2 * grid)`` and the rows ``floor(y1 * grid) <= y < ceil(y2 * grid)``.
    """
    scaled = boxes.double() * grid
    start, end = scaled[..., :2].floor(), scaled[..., 2:].ceil()  # (B, R, 2) each: x, y
    index = torch.arange(grid, device=boxes.device, dtype=torch.float64)
    inside = (index >= start.unsqueeze(-1)) & (index < end.unsqueeze(-1))  # (B, R, 2, grid)
    region = inside[..., 1, :, None] & inside[..., 0, None, :]  # (B, R, rows, cols)
    return region.flatten(2).transpose(1, 2)


def image_token_bias(region: torch.Tensor, background: torch.Tensor, num_tokens: int, num_dummy_tokens: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """``(B, Lq, num_dummy + R * num_tokens)`` additive logits bias over ``[dummy tokens; subject tokens]``.

    A subject's tokens are open (0) inside its box and masked (-10000) elsewhere; the dummy tokens are open on the
    background (no box) and masked inside every box.
    """
    subjects = region.repeat_interleave(num_tokens, dim=-1)
    dummy = background.unsqueeze(-1).expand(*background.shape, num_dummy_tokens)
    allowed = torch.cat((dummy, subjects), dim=-1)
    return (~allowed).to(dtype) * MASK_BIAS


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation over the last dimension (upstream's ``minmax_normalize`` over ``h, w``)."""
    low = maps.amin(dim=-1, keepdim=True)
    high = maps.amax(dim=-1, keepdim=True)
    return (maps - low) / (high - low + 1e-5)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, L, H * d) -> (B, H, L, d)


class MSSelfAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for the UNet's self-attention layers, taking (and ignoring) the MS-Diffusion
    ``cross_attention_kwargs`` so that diffusers does not drop them with a warning at every layer."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.sdpa = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, phrase_idxes: torch.Tensor | None = None) -> torch.Tensor:
        return self.sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MSCrossAttnProcessor(nn.Module):
    """Multi-subject cross-attention (upstream ``MaskedIPAttnProcessor2_0``) for one UNet cross-attention layer.

    ``encoder_hidden_states`` is ``[text tokens (text_tokens); dummy tokens (num_dummy_tokens); subject 1 tokens
    (num_tokens); ...]``. The output is ``to_out(text_attention + scale * image_attention)``, where the image
    attention (own ``to_k_ip`` / ``to_v_ip`` projections, the layer's ``to_q``) is masked by the subjects' boxes
    (``cross_attention_kwargs={"boxes": (B, R, 4)}``): at a latent position inside box ``r`` only subject ``r``'s
    tokens are attended (plus any other box covering it); at a position outside every box the image attention is 0.

    With ``mask_threshold`` set (upstream's auto layout guidance), the processor also records, at every call, the
    text cross-attention map of each subject's phrase tokens (``cross_attention_kwargs["phrase_idxes"]``: ``(B, R,
    2)`` token spans, ``(0, 0)`` for none); from the ``start_step``-th call on, the regions are the positions where
    the min-max-normalised mean of the recorded maps exceeds ``mask_threshold``, instead of the boxes.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int = 16, num_dummy_tokens: int = 4,
                 text_tokens: int = 77, scale: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.num_tokens, self.num_dummy_tokens, self.text_tokens = num_tokens, num_dummy_tokens, text_tokens
        self.scale = scale
        self.mask_threshold: float | None = None
        self.start_step = 5
        self.text_maps: list[torch.Tensor] = []

    def configure(self, scale: float, mask_threshold: float | None = None, start_step: int = 5) -> None:
        """Set the image scale and the auto layout guidance, and forget recorded maps (before every generation)."""
        self.scale, self.mask_threshold, self.start_step = scale, mask_threshold, start_step
        self.text_maps = []

    # -- regions

    def _record_text_maps(self, probs: torch.Tensor, phrase_idxes: torch.Tensor | None, subjects: int) -> None:
        """Append ``(B, R, Lq)``: head- and token-mean text attention of each subject's phrase tokens."""
        if phrase_idxes is None:
            raise ValueError("MS-Diffusion's auto layout guidance (mask_threshold) needs phrase_idxes")
        batch, _, queries, _ = probs.shape
        maps = probs.new_zeros(batch, subjects, queries, dtype=torch.float32)
        for b in range(batch):
            for r in range(subjects):
                start, end = (int(v) for v in phrase_idxes[b, r])
                if end > start:
                    maps[b, r] = probs[b, :, :, start:end].float().mean(dim=-1).mean(dim=0)
        self.text_maps.append(maps)

    def _regions(self, boxes: torch.Tensor, queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(region (B, Lq, R), background (B, Lq))`` bools from the boxes or the recorded text maps."""
        if self.mask_threshold is not None and len(self.text_maps) >= self.start_step:
            mean_maps = _minmax(torch.stack(self.text_maps).mean(dim=0))  # (B, R, Lq)
            region = (mean_maps > self.mask_threshold).transpose(1, 2)
        else:
            grid = math.isqrt(queries)
            if grid * grid != queries:
                raise ValueError(f"MS-Diffusion's box masks need a square latent grid; got {queries} positions "
                                 "(use a square resolution)")
            region = box_region_masks(boxes, grid)
        return region, ~region.any(dim=-1)

    # -- attention

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, phrase_idxes: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("MSCrossAttnProcessor is for cross-attention layers (encoder_hidden_states is None)")
        if boxes is None:
            raise ValueError("MS-Diffusion needs cross_attention_kwargs={'boxes': (batch, subjects, 4)}")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, queries, _ = hidden_states.shape
        subjects = boxes.shape[1]
        expected = self.text_tokens + self.num_dummy_tokens + subjects * self.num_tokens
        if encoder_hidden_states.shape[1] != expected:
            raise ValueError(f"MS-Diffusion: {encoder_hidden_states.shape[1]} encoder tokens, expected {expected} "
                             f"({self.text_tokens} text + {self.num_dummy_tokens} dummy + {subjects} x "
                             f"{self.num_tokens} subject tokens)")
        if attention_mask is not None:  # text part only: the image part is the box mask
            attention_mask = attn.prepare_attention_mask(attention_mask, expected, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            attention_mask = attention_mask[..., : self.text_tokens]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        text, image = encoder_hidden_states.split([self.text_tokens, expected - self.text_tokens], dim=1)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        heads = attn.heads
        query = _split_heads(attn.to_q(hidden_states), heads)
        key, value = _split_heads(attn.to_k(text), heads), _split_heads(attn.to_v(text), heads)

        if self.mask_threshold is not None:  # explicit probabilities: the phrase maps are needed
            logits = (query @ key.transpose(-2, -1)) * attn.scale
            if attention_mask is not None:
                logits = logits + attention_mask
            probs = logits.softmax(dim=-1)
            self._record_text_maps(probs, phrase_idxes, subjects)
            text_out = probs @ value
        else:
            text_out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                      scale=attn.scale)

        region, background = self._regions(boxes, queries)
        bias = image_token_bias(region, background, self.num_tokens, self.num_dummy_tokens, query.dtype)
        ip_key, ip_value = _split_heads(self.to_k_ip(image), heads), _split_heads(self.to_v_ip(image), heads)
        ip_probs = ((query @ ip_key.transpose(-2, -1)) * attn.scale + bias.unsqueeze(1)).softmax(dim=-1)
        ip_probs = ip_probs.masked_fill(background[:, None, :, None], 0.0)  # no image condition off the boxes
        hidden_states = text_out + self.scale * (ip_probs @ ip_value)

        hidden_states = hidden_states.transpose(1, 2).flatten(2).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_ms_attention(unet: nn.Module, config: MSAdapterConfig, text_tokens: int = 77
                         ) -> dict[str, MSCrossAttnProcessor]:
    """Give every cross-attention layer of ``unet`` an :class:`MSCrossAttnProcessor` (self-attention layers an
    :class:`MSSelfAttnProcessor`), via ``unet.set_attn_processor``; returns the cross-attention processors by name,
    in ``unet.attn_processors`` order (the order that numbers the checkpoint's ``ms_adapter`` keys)."""
    processors: dict[str, Any] = {}
    for name in unet.attn_processors:
        layer = unet.get_submodule(name.removesuffix(".processor"))
        if layer.is_cross_attention:
            weight = layer.to_q.weight
            processors[name] = MSCrossAttnProcessor(
                layer.inner_dim, layer.cross_attention_dim, config.num_tokens, config.num_dummy_tokens, text_tokens,
                device=weight.device, dtype=weight.dtype,
            )
        else:
            processors[name] = MSSelfAttnProcessor()
    unet.set_attn_processor(processors)
    return {name: proc for name, proc in unet.attn_processors.items() if isinstance(proc, MSCrossAttnProcessor)}


# ------------------------------------------------------------------------------------------------- checkpoint


@dataclass
class MSAdapterCheckpoint:
    """The three parts of ``ms_adapter.bin``: the resampler's state dict, the attention processors' state dict
    (``nn.ModuleList(unet.attn_processors.values())`` keys: ``"<index>.to_k_ip.weight"``, ``"<index>.to_v_ip.weight"``
    for each cross-attention processor's index among ALL processors) and the dummy image tokens ``(1, 4, 2048)``."""

    image_proj: dict[str, torch.Tensor]
    ms_adapter: dict[str, torch.Tensor]
    dummy_image_tokens: torch.Tensor


def _tensor_dict(value: Any, path: Path, part: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not value:
        raise WeightsLoadError(f"{path}: '{part}' is not a state dict (found {type(value).__name__})")
    bad = [key for key, tensor in value.items() if not isinstance(tensor, torch.Tensor)]
    if bad:
        raise WeightsLoadError(f"{path}: '{part}' holds non-tensor entries (e.g. {bad[0]!r})")
    return {str(key): tensor for key, tensor in value.items()}


def read_ms_adapter_checkpoint(path: str | Path) -> MSAdapterCheckpoint:
    """Read ``ms_adapter.bin`` (``torch.load(weights_only=True)``) or its flattened safetensors conversion.

    A ``.safetensors`` file holds ``image_proj.<key>``, ``ms_adapter.<key>`` and ``dummy_image_tokens``. A file
    that ``weights_only`` unpickling refuses is not loaded; the error gives the conversion recipe.

    Raises:
        WeightsLoadError: naming the file, for an unreadable file or a missing / malformed part.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path), device="cpu")
        except Exception as error:
            raise WeightsLoadError(f"{path}: cannot read safetensors ({describe_load_error(error)})") from error
        raw: dict[str, Any] = {"image_proj": {}, "ms_adapter": {}}
        for key, tensor in flat.items():
            part, _, rest = key.partition(".")
            if part in ("image_proj", "ms_adapter") and rest:
                raw[part][rest] = tensor
            elif key == "dummy_image_tokens":
                raw[key] = tensor
            else:
                raise WeightsLoadError(f"{path}: unexpected key {key!r} (expected image_proj.*, ms_adapter.* and "
                                       "dummy_image_tokens)")
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsLoadError(f"{path}: torch.load(weights_only=True) cannot read it "
                                   f"({describe_load_error(error)}); {CONVERSION_RECIPE}") from error
    if not isinstance(raw, Mapping):
        raise WeightsLoadError(f"{path}: expected a dict with {', '.join(CHECKPOINT_PARTS)}, "
                               f"found {type(raw).__name__}")
    missing = [part for part in CHECKPOINT_PARTS if part not in raw]
    if missing:
        raise WeightsLoadError(f"{path}: not an MS-Diffusion checkpoint: missing {', '.join(missing)} "
                               f"(top-level keys: {', '.join(map(str, list(raw)[:8])) or 'none'})")
    dummy = raw["dummy_image_tokens"]
    if not isinstance(dummy, torch.Tensor) or dummy.ndim != 3 or dummy.shape[0] != 1:
        raise WeightsLoadError(f"{path}: dummy_image_tokens must be a (1, tokens, width) tensor, found "
                               f"{tuple(dummy.shape) if isinstance(dummy, torch.Tensor) else type(dummy).__name__}")
    return MSAdapterCheckpoint(_tensor_dict(raw["image_proj"], path, "image_proj"),
                               _tensor_dict(raw["ms_adapter"], path, "ms_adapter"), dummy.detach().clone())


def adapter_key_map(unet: nn.Module) -> dict[str, tuple[str, str]]:
    """``checkpoint key -> (processor name, parameter)`` for the ``ms_adapter`` part, from the index of each
    cross-attention processor among all of ``unet.attn_processors`` (upstream saves ``nn.ModuleList`` of them)."""
    keys = {}
    for index, (name, processor) in enumerate(unet.attn_processors.items()):
        if isinstance(processor, MSCrossAttnProcessor):
            for parameter in ("to_k_ip.weight", "to_v_ip.weight"):
                keys[f"{index}.{parameter}"] = (name, parameter)
    return keys


def load_ms_adapter(checkpoint: MSAdapterCheckpoint, path: str | Path, unet: nn.Module,
                    resampler: GroundingResampler, num_dummy_tokens: int, width: int) -> torch.Tensor:
    """Copy the checkpoint into ``resampler`` and ``unet``'s installed processors (strict, shape-checked); returns
    the dummy image tokens. ``WeightsLoadError`` names the file and the part for any missing / extra / misshapen key.
    """
    load_into(resampler, checkpoint.image_proj, f"{path} [image_proj]")
    keys = adapter_key_map(unet)
    missing = sorted(set(keys) - set(checkpoint.ms_adapter), key=_index_order)
    unexpected = sorted(set(checkpoint.ms_adapter) - set(keys), key=_index_order)
    if missing or unexpected:
        raise WeightsLoadError(
            f"{path} [ms_adapter]: does not fit the UNet's {len(keys) // 2} cross-attention layers: "
            f"{len(missing)} missing key(s)" + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f", {len(unexpected)} unexpected key(s)" + (f" (e.g. {', '.join(unexpected[:3])})" if unexpected else ""))
    processors = unet.attn_processors
    with torch.no_grad():
        for key, (name, parameter) in keys.items():
            target = processors[name].get_parameter(parameter)
            source = checkpoint.ms_adapter[key]
            if source.shape != target.shape:
                raise WeightsLoadError(f"{path} [ms_adapter]: {key} has shape {tuple(source.shape)}, the layer "
                                       f"{name} needs {tuple(target.shape)}")
            target.copy_(source)
    dummy = checkpoint.dummy_image_tokens
    if tuple(dummy.shape) != (1, num_dummy_tokens, width):
        raise WeightsLoadError(f"{path}: dummy_image_tokens has shape {tuple(dummy.shape)}, expected "
                               f"(1, {num_dummy_tokens}, {width})")
    return dummy


def _index_order(key: str) -> tuple[int, str]:
    head, _, rest = key.partition(".")
    return (int(head), rest) if head.isdigit() else (1 << 30, key)


# ------------------------------------------------------------------------------------------ text and image inputs


def _strip_end_punctuation(word: str) -> str:
    return re.sub(r"[.!?,:]$", "", word)


def phrase_token_span(tokenizer: Any, phrase: str, prompt: str, text_tokens: int = 77) -> tuple[int, int]:
    """The ``[start, end)`` token positions of ``phrase`` in the tokenised ``prompt``; ``(0, 0)`` when absent.

    Follows upstream's ``get_phrase_idx`` (first occurrence): prompt and phrase are split on whitespace; a prompt
    word matches a phrase word when equal after removing one trailing ``.!?,:``, or when it contains
    ``"-" + word``; positions count each word's tokens (``len(tokenizer.encode(word)) - 2``) after the start
    token. A span that reaches past the ``text_tokens`` the text encoder keeps counts as absent.
    """
    phrase_words, prompt_words = phrase.split(), prompt.split()
    n = len(phrase_words)

    def matches(words: Sequence[str]) -> bool:
        return len(words) == n and all(f"-{ph}" in pr or ph == _strip_end_punctuation(pr)
                                       for pr, ph in zip(words, phrase_words))

    def count(word: str) -> int:
        return len(tokenizer.encode(word)) - 2

    if n == 0:
        return (0, 0)
    start = 1
    for i in range(len(prompt_words)):
        window = prompt_words[i:i + n]
        if matches(window):
            window[-1] = _strip_end_punctuation(window[-1])
            end = start + sum(count(word) for word in window)
            return (start, end) if end > start and end <= text_tokens - 1 else (0, 0)
        start += count(prompt_words[i])
    return (0, 0)


def preprocess_reference(image: Image.Image, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` CLIP input of a reference image, as ``inference.py`` + ``CLIPImageProcessor()``.

    The image is resized to 512x512 (bicubic, aspect ratio not kept), then to ``size`` (CLIP's shortest-edge
    resize; the centre crop of a square is the whole image), scaled to ``[0, 1]`` and normalised with OpenAI CLIP's
    mean and std.
    """
    square = image.convert("RGB").resize((REFERENCE_RESIZE, REFERENCE_RESIZE), Image.Resampling.BICUBIC)
    square = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


# ------------------------------------------------------------------------------------------------ the pipeline


class MSDiffusionPipeline:
    """SDXL with MS-Diffusion for one subject per image (upstream ``MSAdapter.generate``, ``num_samples=1``).

    Holds a ``StableDiffusionXLPipeline`` whose UNet has the MS-Diffusion processors installed
    (:func:`install_ms_attention`), the CLIP-G ``CLIPVisionModelWithProjection``, the
    :class:`GroundingResampler` and the dummy image tokens. Build it with :meth:`from_components` (random adapter
    weights) and load an ``ms_adapter.bin`` with :meth:`load_adapter`.
    """

    def __init__(self, pipe: Any, image_encoder: nn.Module, resampler: GroundingResampler,
                 dummy_tokens: torch.Tensor, processors: dict[str, MSCrossAttnProcessor]) -> None:
        self.pipe, self.image_encoder, self.resampler = pipe, image_encoder, resampler
        self.dummy_tokens, self.processors = dummy_tokens, processors
        self.config = resampler.config

    @classmethod
    def from_components(cls, pipe: Any, image_encoder: nn.Module, config: MSAdapterConfig | None = None
                        ) -> MSDiffusionPipeline:
        """Install the processors into ``pipe.unet`` and build a resampler sized from the components."""
        unet = pipe.unet
        config = config or MSAdapterConfig()
        config = replace(config, embedding_dim=image_encoder.config.hidden_size,
                         output_dim=unet.config.cross_attention_dim, phrase_dim=pipe.text_encoder.config.hidden_size)
        processors = install_ms_attention(unet, config, text_tokens=pipe.tokenizer.model_max_length)
        resampler = GroundingResampler(config).to(device=unet.device, dtype=unet.dtype).eval()
        dummy = torch.randn(1, config.num_dummy_tokens, config.output_dim).to(device=unet.device, dtype=unet.dtype)
        return cls(pipe, image_encoder, resampler, dummy, processors)

    def load_adapter(self, path: str | Path) -> None:
        """Load ``ms_adapter.bin`` (or its safetensors conversion) into the resampler, processors and dummy tokens."""
        checkpoint = read_ms_adapter_checkpoint(path)
        dummy = load_ms_adapter(checkpoint, path, self.pipe.unet, self.resampler, self.config.num_dummy_tokens,
                                self.config.output_dim)
        self.dummy_tokens = dummy.to(device=self.device, dtype=self.dtype)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> MSDiffusionPipeline:
        """Move (and with ``dtype``, cast) every component: SDXL, the image encoder, the adapter."""
        if dtype is None or dtype == self.dtype:
            self.pipe.to(device)
        else:
            self.pipe.to(device, dtype)
        dtype = dtype or self.dtype
        self.image_encoder.to(device=device, dtype=dtype)
        self.resampler.to(device=device, dtype=dtype)
        self.dummy_tokens = self.dummy_tokens.to(device=device, dtype=dtype)
        return self

    # -- conditioning

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """``(1, L, 1664)`` penultimate-layer CLIP-G hidden states of the reference (``hidden_states[-2]``)."""
        size = self.image_encoder.config.image_size
        pixels = preprocess_reference(image, size).to(device=self.device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]

    @torch.no_grad()
    def encode_phrase(self, phrase: str) -> torch.Tensor:
        """``(1, 768)`` pooled output of SDXL's first text encoder for ``phrase`` (padded to max length)."""
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(phrase, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids.to(self.device)).pooler_output

    @torch.no_grad()
    def image_prompt_tokens(self, image: Image.Image, phrase: str, box: Sequence[float],
                            drop_grounding_tokens: bool = False) -> torch.Tensor:
        """``(1, num_dummy + num_tokens, 2048)``: the dummy tokens, then the subject's resampled image tokens."""
        dtype = self.resampler.proj_in.weight.dtype
        boxes = torch.tensor([validate_box(box)], device=self.device, dtype=dtype)
        tokens = self.resampler(self.encode_image(image).to(dtype), self.encode_phrase(phrase).to(dtype), boxes,
                                torch.tensor([drop_grounding_tokens], device=self.device))
        return torch.cat((self.dummy_tokens.to(tokens.dtype), tokens), dim=1)

    def configure_attention(self, scale: float, mask_threshold: float | None = None, start_step: int = 5) -> None:
        for processor in self.processors.values():
            processor.configure(scale, mask_threshold, start_step)

    # -- generation

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        prompt: str,
        phrase: str,
        *,
        box: Sequence[float] = (0.25, 0.25, 0.75, 0.75),
        scale: float = 0.6,
        negative_prompt: str = "monochrome, lowres, bad anatomy, worst quality, low quality",
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        resolution: int = 1024,
        generator: torch.Generator | None = None,
        drop_grounding_tokens: bool = False,
        mask_threshold: float | None = None,
        start_step: int = 5,
    ) -> Image.Image:
        """One image of the subject of ``image`` (named ``phrase`` in ``prompt``) inside ``box``."""
        pipe = self.pipe
        cfg = guidance_scale > 1.0
        subject = self.image_prompt_tokens(image, phrase, box, drop_grounding_tokens)
        prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
        )
        text_tokens = next(iter(self.processors.values())).text_tokens
        if prompt_embeds.shape[1] != text_tokens:
            raise ValueError(f"the prompt embeddings have {prompt_embeds.shape[1]} tokens, the processors split "
                             f"the encoder states after {text_tokens}")
        prompt_embeds = torch.cat((prompt_embeds, subject.to(prompt_embeds.dtype)), dim=1)
        boxes = torch.tensor([[validate_box(box)]], device=self.device, dtype=prompt_embeds.dtype)  # (1, R=1, 4)
        span = phrase_token_span(pipe.tokenizer, phrase, prompt, text_tokens)
        phrase_idxes = torch.tensor([[span]], device=self.device, dtype=torch.long)
        call: dict[str, Any] = {}
        if cfg:  # the unconditional half: zero image tokens, zero boxes, no phrase
            negative_embeds = torch.cat((negative_embeds, torch.zeros_like(subject).to(negative_embeds.dtype)), dim=1)
            call.update(negative_prompt_embeds=negative_embeds, negative_pooled_prompt_embeds=negative_pooled)
            boxes = torch.cat((torch.zeros_like(boxes), boxes))
            phrase_idxes = torch.cat((torch.zeros_like(phrase_idxes), phrase_idxes))
        self.configure_attention(scale, mask_threshold, start_step)
        try:
            result = pipe(
                prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps, generator=generator, height=resolution, width=resolution,
                cross_attention_kwargs={"boxes": boxes, "phrase_idxes": phrase_idxes}, output_type="pil", **call,
            )
        finally:
            self.configure_attention(scale)  # drop the recorded maps
        return result.images[0]
