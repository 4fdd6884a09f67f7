"""SSR-Encoder (Zhang et al., "SSR-Encoder: Encoding Selective Subject Representation for Subject-Driven
Generation", CVPR 2024) for diffusers 0.42.1: model code and loaders of the official checkpoints.

A port of github.com/Xiaojiu-z/SSR_Encoder (``ssr_encoder/ssr_encoder.py``, ``ssr_encoder/attention_processor.py``,
``infer_text.py``), written anew for the current diffusers/transformers. The pieces, with upstream's names:

* **Multi-scale image features** (``SSR_encoder.get_image_embeds``): CLIP ViT-L/14 (``CLIPVisionModel``) hidden
  states ``hidden_states[4::4]``, i.e. the outputs of encoder layers 4, 8, 12, 16, 20 and 24 (K = 6 scales of 257
  tokens x 1024, before ``post_layernorm``). The image is CLIP-preprocessed (224 px, bicubic, centre crop); the
  "unconditional" image is an all-zero tensor in CLIP's *normalised* space.
* **Token-to-patch aligner + detail-preserving subject encoder** (``Aligner`` with ``AlignerAttnProcessor``): the
  query (the subject word, encoded by Stable Diffusion 1.5's own CLIP text encoder: all 77 padded tokens x 768)
  attends to the LAST scale's patches: ``A = softmax(W_q z_q (W_k z_24)^T / sqrt(64))`` with 8 heads of 64; every
  scale k has its own value and output projections, ``c_k = W_out_k (A W_v_k z_k)``; the K results are
  concatenated along the tokens (K x 77 = 462 tokens) and layer-normalised (``Aligner.norm``).
* **Subject-conditioned cross-attention** (``SSRAttnProcessor2_0``): every UNet cross-attention (``attn2``) gets
  a second key/value projection (``to_k_SSR``, ``to_v_SSR``, no bias) for the subject tokens appended after the
  77 text tokens: ``out = to_out(Attn(q, K_text, V_text) + scale * Attn(q, K_SSR, V_SSR))``, the same query,
  no mask on the subject branch.

Checkpoints (upstream ``SSR_encoder.load_SSR(aligner_path, layers_path)``, both saved by ``accelerate.save_state``):

* ``pytorch_model.bin`` -- the aligner: ``aligner.to_q.weight`` [512, 768], ``aligner.to_k.weight`` [512, 1024],
  ``aligner.processor.to_v.{0..5}.weight`` [512, 1024], ``aligner.processor.to_out.{0..5}.weight`` [768, 512],
  ``norm.weight`` / ``norm.bias`` [768].
* ``pytorch_model_1.bin`` -- the subject layers, indexed by position in ``unet.attn_processors`` (32 processors
  in SD 1.5; the 16 cross-attentions are the odd ones): ``{i}.to_k_SSR.weight`` / ``{i}.to_v_SSR.weight``
  [hidden, 768] for i in 1, 3, ..., 31 (down 1-11: 320, 320, 640, 640, 1280, 1280; up 13-29: 1280 x3, 640 x3,
  320 x3; mid 31: 1280).

Both are read with safetensors or ``torch.load(weights_only=True)`` only (:func:`read_ssr_checkpoint`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from baselines.ssr_encoder_config import NUM_SCALES, AlignerConfig
from videobench.weights import WeightsLoadError, build_loaded, load_into, load_state_dict, strip_prefixes

#: CLIP's normalisation (``CLIPImageProcessor`` defaults, OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CONVERSION_RECIPE = (
    "convert it once, in an environment you trust, to safetensors (same keys) and pass that file instead:\n"
    "  python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('pytorch_model.bin', map_location='cpu', weights_only=False); "
    "save_file({k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
    "'ssr_aligner.safetensors')\"\n"
    "(likewise pytorch_model_1.bin -> ssr_layers.safetensors)"
)


# --------------------------------------------------------------------------------------- image preprocessing


def clip_pixels(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """``(N, 3, size, size)`` CLIP inputs, as ``transformers.CLIPImageProcessor()`` (the PIL one upstream used).

    Shortest edge resized to ``size`` with PIL bicubic (the long edge ``int(size * long / short)``), centre crop
    ``size x size`` (offsets floored), scaled to [0, 1], normalised with CLIP's mean and std.
    """
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    batch = []
    for image in images:
        rgb = image.convert("RGB")
        width, height = rgb.size
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)
        resized = rgb.resize(new_size, Image.Resampling.BICUBIC)
        left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
        cropped = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        batch.append(((cropped - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch))


# ------------------------------------------------------------------------------------------------- aligner


class AlignerScaleProjections(nn.Module):
    """Per-scale value and output projections (upstream ``AlignerAttnProcessor``: ``to_v[k]``, ``to_out[k]``)."""

    def __init__(self, config: AlignerConfig) -> None:
        super().__init__()
        self.to_v = nn.ModuleList(nn.Linear(config.image_dim, config.inner_dim, bias=False)
                                  for _ in range(config.num_scales))
        self.to_out = nn.ModuleList(nn.Linear(config.inner_dim, config.query_dim, bias=False)
                                    for _ in range(config.num_scales))


class AlignerAttention(nn.Module):
    """The query/key projections of the token-to-patch attention (upstream ``Aligner.aligner``, a diffusers
    ``Attention`` whose ``to_v``/``to_out`` were removed and whose processor holds the per-scale projections)."""

    def __init__(self, config: AlignerConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.to_q = nn.Linear(config.query_dim, config.inner_dim, bias=False)
        self.to_k = nn.Linear(config.image_dim, config.inner_dim, bias=False)
        self.processor = AlignerScaleProjections(config)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def attention_map(self, query_embeds: torch.Tensor, key_features: torch.Tensor) -> torch.Tensor:
        """The token-to-patch map ``A_t2p``: ``(B, heads, query tokens, patches)``, rows summing to 1."""
        query, key = self._heads(self.to_q(query_embeds)), self._heads(self.to_k(key_features))
        return torch.softmax(query @ key.transpose(-1, -2) * self.head_dim ** -0.5, dim=-1)

    def forward(self, query_embeds: torch.Tensor, scale_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, K * Lq, query_dim)``: the K scales' subject embeddings, concatenated along the tokens."""
        projections = self.processor
        if len(scale_features) != len(projections.to_v):
            raise ValueError(f"the aligner has {len(projections.to_v)} scales, got {len(scale_features)} features")
        probs = self.attention_map(query_embeds, scale_features[-1])
        batch, _, length, _ = probs.shape
        outputs = []
        for features, to_v, to_out in zip(scale_features, projections.to_v, projections.to_out):
            selected = probs @ self._heads(to_v(features))  # (B, heads, Lq, head_dim)
            outputs.append(to_out(selected.transpose(1, 2).reshape(batch, length, -1)))
        return torch.cat(outputs, dim=1)


class TokenToPatchAligner(nn.Module):
    """Upstream ``Aligner``: the token-to-patch attention over K scales, then ``LayerNorm`` (keys ``aligner.*``,
    ``norm.*``, exactly as in the official ``pytorch_model.bin``)."""

    def __init__(self, config: AlignerConfig | None = None) -> None:
        super().__init__()
        self.config = config or AlignerConfig()
        self.aligner = AlignerAttention(self.config)
        self.norm = nn.LayerNorm(self.config.query_dim)

    def forward(self, query_embeds: torch.Tensor, scale_features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.norm(self.aligner(query_embeds, scale_features))


# ------------------------------------------------------------------------------------------ subject encoder


def select_scales(hidden_states: Sequence[torch.Tensor], num_scales: int = NUM_SCALES) -> list[torch.Tensor]:
    """Upstream's ``hidden_states[4::4]`` for any depth: every ``L / K``-th layer output, the last one included.

    ``hidden_states`` is a transformers ``output_hidden_states`` tuple (the embeddings, then each of L layers).
    """
    layers = len(hidden_states) - 1
    if layers < num_scales or layers % num_scales:
        raise ValueError(f"an image encoder of {layers} layers cannot give {num_scales} evenly spaced scales")
    stride = layers // num_scales
    return list(hidden_states[stride::stride])


class SSRSubjectEncoder(nn.Module):
    """CLIP vision features at K scales -> the aligner -> subject tokens (upstream ``get_image_embeds``)."""

    def __init__(self, image_encoder: nn.Module, aligner: TokenToPatchAligner) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.aligner = aligner

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    def scale_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        output = self.image_encoder(pixel_values=pixel_values, output_hidden_states=True)
        return select_scales(output.hidden_states, self.aligner.config.num_scales)

    def forward(self, pixel_values: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        """``(N, K * Lq, D)`` subject tokens of N images, each with the query (``(1 or N, Lq, D)``)."""
        features = self.scale_features(pixel_values)
        query = query_embeds.expand(pixel_values.shape[0], -1, -1)
        return self.aligner(query, features)


# ------------------------------------------------------------------------------------- attention processor


class SSRAttnProcessor(nn.Module):
    """Subject-conditioned cross-attention (upstream ``SSRAttnProcessor2_0``) for diffusers' ``Attention``.

    ``encoder_hidden_states`` holds ``text_context_len`` text tokens, then the subject tokens. The text part goes
    through the layer's own ``to_k``/``to_v`` (with the attention mask, if any); the subject part through
    ``to_k_SSR``/``to_v_SSR`` with the same query and no mask; the two results are summed, the subject one times
    ``scale``, before ``to_out``. With no subject tokens the layer is the plain cross-attention.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, text_context_len: int = 77,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.hidden_size, self.cross_attention_dim = hidden_size, cross_attention_dim
        self.text_context_len, self.scale = text_context_len, scale
        self.to_k_SSR = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_SSR = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    @staticmethod
    def _attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        batch, heads = query.shape[0], attn.heads
        head_dim = key.shape[-1] // heads
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            encoder_hidden_states, subject = hidden_states, None
        else:
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            subject = encoder_hidden_states[:, self.text_context_len:]
            encoder_hidden_states = encoder_hidden_states[:, :self.text_context_len]

        if attention_mask is not None:
            text_length = encoder_hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, text_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        out = self._attend(attn, query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states),
                           attention_mask)
        if subject is not None and subject.shape[1] > 0:
            subject_out = self._attend(attn, query, self.to_k_SSR(subject), self.to_v_SSR(subject), None)
            out = out + self.scale * subject_out

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def ssr_processor_indices(unet) -> dict[int, str]:
    """``{index: processor name}`` of the layers upstream gives an ``SSRAttnProcessor``: every cross-attention
    (``attn2``), indexed by its position in ``unet.attn_processors`` (the checkpoint's key prefix)."""
    return {index: name for index, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")}


def install_ssr_processors(unet, text_context_len: int, scale: float = 1.0) -> dict[int, SSRAttnProcessor]:
    """Give every cross-attention of ``unet`` an :class:`SSRAttnProcessor` (self-attentions keep theirs).

    The new layers take the sizes of the attention they join (hidden = ``to_k.out_features``, cross dim =
    ``to_k.in_features``; upstream derives the same numbers from ``block_out_channels``) and the UNet's device
    and dtype. Returns them by checkpoint index.
    """
    modules = dict(unet.named_modules())
    parameter = next(unet.parameters())
    processors = dict(unet.attn_processors)
    installed: dict[int, SSRAttnProcessor] = {}
    for index, name in ssr_processor_indices(unet).items():
        attn = modules[name.removesuffix(".processor")]
        processor = SSRAttnProcessor(attn.to_k.out_features, attn.to_k.in_features, text_context_len, scale)
        installed[index] = processor.to(device=parameter.device, dtype=parameter.dtype)
        processors[name] = installed[index]
    unet.set_attn_processor(processors)
    return installed


def set_ssr_scale(unet, scale: float) -> None:
    """Upstream ``SSR_encoder.set_scale``: the subject branch's weight in every SSR processor."""
    for processor in unet.attn_processors.values():
        if isinstance(processor, SSRAttnProcessor):
            processor.scale = scale


# ------------------------------------------------------------------------------------------------ loading


def read_ssr_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An official SSR checkpoint's tensors (safetensors, or ``torch.load(weights_only=True)``; nothing else).

    ``module.`` prefixes (a DDP-wrapped save) are removed. A pickle that needs full unpickling is refused with
    the conversion recipe.
    """
    try:
        state_dict = load_state_dict(path)
    except WeightsLoadError as error:
        raise WeightsLoadError(f"{error}\n{CONVERSION_RECIPE}") from error
    return strip_prefixes(state_dict, ("module.",))


def load_aligner(path: str | os.PathLike, config: AlignerConfig | None = None) -> TokenToPatchAligner:
    """The aligner of the official checkpoint (``pytorch_model.bin``), built on the meta device and filled
    strictly (every key and shape must match ``config``; float32, cast it after)."""
    state_dict = {key: value.float() for key, value in read_ssr_checkpoint(path).items()}
    aligner = build_loaded(lambda: TokenToPatchAligner(config), state_dict, path)
    return aligner.eval()


_LAYER_KEY = re.compile(r"^(\d+)\.(to_k_SSR|to_v_SSR)\.weight$")


def load_ssr_layers(processors: Mapping[int, SSRAttnProcessor], path: str | os.PathLike) -> None:
    """Load the official subject-layer checkpoint (``pytorch_model_1.bin``: ``{i}.to_k_SSR.weight``...) into the
    processors of :func:`install_ssr_processors`, strictly: every key, index and shape must match."""
    state_dict = read_ssr_checkpoint(path)
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, value in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match is None or int(match.group(1)) not in processors:
            unexpected.append(key)
            continue
        grouped.setdefault(int(match.group(1)), {})[f"{match.group(2)}.weight"] = value
    missing = [f"{index}.{name}" for index in sorted(processors) for name in ("to_k_SSR.weight", "to_v_SSR.weight")
               if name not in grouped.get(index, {})]
    if missing or unexpected:
        raise WeightsLoadError(
            f"{path}: does not fit the UNet's {len(processors)} SSR cross-attention layers "
            f"(indices {', '.join(map(str, sorted(processors)))}): {len(missing)} missing key(s)"
            + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f", {len(unexpected)} unexpected key(s)" + (f" (e.g. {', '.join(sorted(unexpected)[:3])})"
                                                        if unexpected else "")
        )
    for index, processor in processors.items():
        dtype = processor.to_k_SSR.weight.dtype
        load_into(processor, {key: value.to(dtype) for key, value in grouped[index].items()},
                  f"{path} [layer {index}]")

