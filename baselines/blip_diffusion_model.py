"""BLIP-Diffusion's networks and zero-shot sampler, written for diffusers 0.42 / transformers 5.

BLIP-Diffusion (Li, Li & Hoi, "BLIP-Diffusion: Pre-trained Subject Representation for Controllable Text-to-Image
Generation and Editing", NeurIPS 2023) conditions Stable Diffusion 1.5 on a subject: a BLIP-2 Q-Former reads the
reference image (through a CLIP ViT-L/14 with its last layer dropped) together with the subject's category word,
and its 16 query outputs, projected by a small MLP, are spliced into the CLIP text encoder's input right after the
prompt's first word ("a [16 subject embeddings] dog swimming underwater ...").

The official implementation is salesforce/LAVIS ``lavis/models/blip_diffusion_models/blip_diffusion.py``
(``BlipDiffusion.generate``); the published weights are ``Salesforce/blipdiffusion`` in the layout of diffusers'
``BlipDiffusionPipeline``. diffusers 0.42.1 still ships that pipeline (``diffusers.pipelines.deprecated.
blip_diffusion``, last supported in 0.33.1) but it no longer runs with transformers 5: its Q-Former calls
transformers-internal attention modules with the old signatures (and ``invert_attention_mask``, now gone), and its
context text encoder hands a ``causal_attention_mask`` to transformers' ``CLIPEncoder``, which ignores it (the
text encoder silently becomes bidirectional). Its Q-Former also downloads ``bert-base-uncased`` in its constructor.

So this module re-implements the three networks with plain PyTorch, with exactly the parameter names of the
published files (``qformer/`` and ``text_encoder/``):

* :class:`BlipSubjectEncoder`: diffusers' ``Blip2QFormerModel`` layout: ``visual_encoder.*`` (CLIP ViT with fused
  ``qkv``; its ``post_layernorm`` is LAVIS's ``ln_vision``), ``embeddings.*`` / ``encoder.layer.*`` (the BERT-style
  Q-Former), ``query_tokens`` and ``proj_layer.*`` (LAVIS's ``ProjLayer``);
* :class:`ContextCLIPTextModel`: CLIP's text transformer (``text_model.*``) taking the subject embeddings;

and :class:`BlipDiffusionSampler` runs LAVIS's ``generate`` with diffusers' ``UNet2DConditionModel``,
``AutoencoderKL`` and ``PNDMScheduler``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from baselines.blip_diffusion_config import CLIP_MEAN, CLIP_STD


def _activation(name: str) -> torch.nn.Module:
    """transformers' activation ``name`` (imported on use: registering the method needs no transformers)."""
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, H*D)`` -> ``(B, H, L, D)``."""
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, D)`` -> ``(B, L, H*D)``."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


# ------------------------------------------------------------------------------------- vision tower (CLIP ViT)


class VisionEmbeddings(nn.Module):
    """Patch embedding (no bias), class token and learned positions (LAVIS ``clip_vit.VisionTransformer``)."""

    def __init__(self, hidden_size: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.patch_embedding = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size, bias=False)
        num_positions = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Parameter(torch.zeros(1, num_positions, hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        return tokens + self.position_embedding[:, : tokens.shape[1]]


class VisionAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (``nn.MultiheadAttention``'s ``in_proj``)."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.projection = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(_heads(q, self.num_heads), _heads(k, self.num_heads),
                                             _heads(v, self.num_heads))
        return self.projection(_merge_heads(out))


class MLP(nn.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    """Pre-norm transformer block (CLIP's ``ResidualAttentionBlock``)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = VisionAttention(width, config.num_attention_heads, getattr(config, "qkv_bias", True))
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class LayerStack(nn.Module):
    """``layers.N`` (the vision tower's and CLIP text encoder's ``encoder``)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class VisionTransformer(nn.Module):
    """BLIP-Diffusion's frozen image encoder: CLIP ViT-L/14 (23 of 24 layers) + BLIP-2's ``ln_vision``.

    ``config`` is a ``transformers.Blip2VisionConfig`` (``hidden_size``, ``num_hidden_layers``, ``image_size``,
    ``patch_size``, ``layer_norm_eps``, ...). Returns every token's features, ``(B, 1 + patches, hidden)``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config.hidden_size, config.image_size, config.patch_size)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = LayerStack([VisionLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layernorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


# ------------------------------------------------------------------------------------------ Q-Former (BERT)


class QFormerEmbeddings(nn.Module):
    """Word + absolute position embeddings of the text, the query tokens prepended, then LayerNorm."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        text = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        queries = query_tokens.expand(input_ids.shape[0], -1, -1).to(text.dtype)
        return self.LayerNorm(torch.cat([queries, text], dim=1))


class QFormerSelfAttention(nn.Module):
    """BERT attention projections; keys/values from ``context`` (cross-attention) or the input itself."""

    def __init__(self, hidden_size: int, num_heads: int, context_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(context_size, hidden_size)
        self.value = nn.Linear(context_size, hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(_heads(self.query(x), self.num_heads),
                                             _heads(self.key(context), self.num_heads),
                                             _heads(self.value(context), self.num_heads), attn_mask=mask)
        return _merge_heads(out)


class AddNorm(nn.Module):
    """BERT's ``SelfOutput`` / ``Output``: ``LayerNorm(dense(x) + residual)``."""

    def __init__(self, in_size: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class QFormerAttention(nn.Module):
    """``attention`` (projections) + ``output`` (dense, residual, LayerNorm)."""

    def __init__(self, config: Any, context_size: int | None = None) -> None:
        super().__init__()
        self.attention = QFormerSelfAttention(config.hidden_size, config.num_attention_heads,
                                              context_size or config.hidden_size)
        self.output = AddNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.attention(x, x if context is None else context, mask), x)


class Intermediate(nn.Module):
    """BERT's ``Intermediate``: ``act(dense(x))``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class QFormerLayer(nn.Module):
    """One Q-Former layer (LAVIS ``Qformer.BertLayer``).

    Queries and text attend to each other (self-attention over the concatenation); the queries alone then
    cross-attend to the image features (every ``cross_attention_frequency``-th layer) and go through their own
    feed-forward (``intermediate_query``/``output_query``); the text goes through ``intermediate``/``output``.
    """

    def __init__(self, config: Any, index: int) -> None:
        super().__init__()
        self.attention = QFormerAttention(config)
        self.has_cross_attention = index % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.crossattention = QFormerAttention(config, context_size=config.encoder_hidden_size)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)
        self.intermediate_query = Intermediate(config)
        self.output_query = AddNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, num_queries: int, image_features: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask=mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.has_cross_attention:
            queries = self.crossattention(queries, context=image_features)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if text.shape[1] == 0:
            return queries
        text = self.output(self.intermediate(text), text)
        return torch.cat([queries, text], dim=1)


class QFormerEncoder(nn.Module):
    """``layer.N``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList([QFormerLayer(config, index) for index in range(config.num_hidden_layers)])


class ProjLayer(nn.Module):
    """LAVIS ``ProjLayer``: ``x + dropout(dense2(QuickGELU(dense1(LayerNorm(x)))))`` (dropout off at inference)."""

    def __init__(self, width: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense1 = nn.Linear(width, 4 * width)
        self.act_fn = _activation("quick_gelu")
        self.dense2 = nn.Linear(4 * width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dense2(self.act_fn(self.dense1(self.LayerNorm(x))))


class BlipSubjectEncoder(nn.Module):
    """The multimodal subject encoder (``qformer/`` of Salesforce/blipdiffusion).

    LAVIS ``Blip2Qformer.extract_features(mode="multimodal")`` followed by ``BlipDiffusion.proj_layer``: the query
    outputs of the Q-Former reading the image features and the subject word, projected into CLIP's text space.

    Args:
        config: a ``transformers.Blip2Config`` (``vision_config``, ``qformer_config``, ``num_query_tokens``).
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        qformer = config.qformer_config
        self.num_query_tokens = config.num_query_tokens
        self.embeddings = QFormerEmbeddings(qformer)
        self.visual_encoder = VisionTransformer(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer.hidden_size))
        self.proj_layer = ProjLayer(qformer.hidden_size)
        self.encoder = QFormerEncoder(qformer)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, num_query_tokens, hidden)`` subject embeddings of images ``(B, 3, H, W)`` and their subject words."""
        image_features = self.visual_encoder(pixel_values)
        x = self.embeddings(input_ids, self.query_tokens)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            queries = torch.ones(input_ids.shape[0], self.num_query_tokens, dtype=torch.bool,
                                 device=input_ids.device)
            mask = torch.cat([queries, attention_mask.bool()], dim=1)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, self.num_query_tokens, image_features, mask)
        return self.proj_layer(x[:, : self.num_query_tokens])


# ------------------------------------------------------------------------------- CLIP text encoder + context


class TextAttention(nn.Module):
    """CLIP's causal self-attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(_heads(self.q_proj(x), self.num_heads),
                                             _heads(self.k_proj(x), self.num_heads),
                                             _heads(self.v_proj(x), self.num_heads), is_causal=True)
        return self.out_proj(_merge_heads(out))


class TextLayer(nn.Module):
    """CLIP's ``CLIPEncoderLayer``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = TextAttention(width, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ContextTextEmbeddings(nn.Module):
    """Token embeddings with the subject embeddings spliced in at ``ctx_begin_pos``, plus positions."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, ctx_embeddings: torch.Tensor | None, ctx_begin_pos: int
                ) -> torch.Tensor:
        tokens = self.token_embedding(input_ids)
        if ctx_embeddings is not None:
            ctx = ctx_embeddings.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :ctx_begin_pos], ctx, tokens[:, ctx_begin_pos:]], dim=1)
        length, limit = tokens.shape[1], self.position_embedding.num_embeddings
        if length > limit:
            raise ValueError(f"{length} tokens (with the subject embeddings) exceed the text encoder's "
                             f"{limit} positions")
        return tokens + self.position_embedding(torch.arange(length, device=tokens.device)[None])


class ContextTextTransformer(nn.Module):
    """``text_model``: embeddings, ``encoder.layers``, ``final_layer_norm``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ContextTextEmbeddings(config)
        self.encoder = LayerStack([TextLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, ctx_embeddings: torch.Tensor | None = None,
                ctx_begin_pos: int = 2) -> torch.Tensor:
        x = self.embeddings(input_ids, ctx_embeddings, ctx_begin_pos)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)


class ContextCLIPTextModel(nn.Module):
    """CLIP's text encoder taking BLIP subject embeddings (LAVIS ``CtxCLIPTextModel``; ``text_encoder/``).

    With ``ctx_embeddings=None`` it is exactly ``transformers.CLIPTextModel``'s ``last_hidden_state``. With them,
    the ``(B, Q, D)`` embeddings are inserted after the first ``ctx_begin_pos`` token embeddings (BOS and the
    prompt's first word, "a"); the causal mask covers the whole spliced sequence, as upstream.

    Args:
        config: a ``transformers.CLIPTextConfig``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.text_model = ContextTextTransformer(config)

    @property
    def max_positions(self) -> int:
        return self.text_model.config.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, ctx_embeddings: torch.Tensor | None = None,
                ctx_begin_pos: int = 2) -> torch.Tensor:
        return self.text_model(input_ids, ctx_embeddings, ctx_begin_pos)


# ------------------------------------------------------------------------------------------------ sampler


@dataclass(frozen=True)
class ReferencePreprocess:
    """The reference image as the Q-Former's ViT sees it.

    ``crop="center"``: LAVIS's ``blip_diffusion_image_eval`` processor (bicubic resize of the shorter side to
    ``size``, centre crop, CLIP normalisation); ``crop="squash"``: diffusers' ``BlipImageProcessor`` (bicubic resize
    of the whole image to ``size x size``, ignoring its aspect ratio). Identical for square images.
    """

    size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    crop: Literal["center", "squash"] = "center"

    def resize(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        if self.crop == "squash":
            return rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
        if self.crop != "center":
            raise ValueError(f"reference crop {self.crop!r}: center or squash")
        width, height = rgb.size
        short = min(width, height)  # torchvision Resize(int): the long side is truncated, not rounded
        size = (self.size, int(self.size * height / width)) if width == short else \
            (int(self.size * width / height), self.size)
        resized = rgb.resize(size, Image.Resampling.BICUBIC) if size != rgb.size else rgb
        left = round((size[0] - self.size) / 2.0)
        top = round((size[1] - self.size) / 2.0)
        return resized.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``(3, size, size)`` float32, normalised."""
        pixels = torch.from_numpy(np.asarray(self.resize(image), dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (pixels - mean) / std


def build_prompt(prompt: str, subject: str | None, strength: float = 1.0, reps: int = 20) -> str:
    """LAVIS ``BlipDiffusion._build_prompt``: ``"a {subject} {prompt}"``, repeated ``int(strength * reps)`` times.

    ``subject=None`` takes ``prompt`` as it is (it already reads "a <subject> ..."). The repetition "amplifies the
    prompt" against the 16 subject embeddings; the tokenizer then truncates it to the text encoder's length.
    """
    text = prompt.strip() if subject is None else f"a {subject} {prompt.strip()}"
    count = int(strength * reps)
    if count < 1:
        raise ValueError(f"prompt_strength * prompt_reps = {strength * reps}: the prompt would be dropped")
    return ", ".join([text] * count)


class BlipDiffusionSampler:
    """Zero-shot subject-driven generation (LAVIS ``BlipDiffusion.generate`` with the PNDM scheduler).

    1. subject embeddings: the Q-Former on the reference image(s) and the source subject word (several
       references: their embeddings averaged with equal weights, as LAVIS's ``forward_ctx_embeddings``);
    2. the prompt, tokenised to ``max_positions - num_query_tokens`` tokens, encoded with the subject embeddings
       spliced in at ``ctx_begin_pos``; the negative prompt encoded without them (77 tokens);
    3. ``num_inference_steps`` PNDM steps with classifier-free guidance from ``N(0, I)`` latents (CPU generator),
       decoded by the VAE.
    """

    def __init__(self, *, subject_encoder: BlipSubjectEncoder, text_encoder: ContextCLIPTextModel, tokenizer: Any,
                 qformer_tokenizer: Any, unet: Any, vae: Any, scheduler: Any, preprocess: ReferencePreprocess,
                 ctx_begin_pos: int = 2) -> None:
        self.subject_encoder = subject_encoder.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.preprocess = preprocess
        self.ctx_begin_pos = ctx_begin_pos

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> BlipDiffusionSampler:
        for module in (self.subject_encoder, self.text_encoder, self.unet, self.vae):
            if dtype is not None and dtype != next(module.parameters()).dtype:
                module.to(device=device, dtype=dtype)
            else:  # diffusers warns about any dtype argument, even an unchanged one
                module.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_query_tokens(self) -> int:
        return self.subject_encoder.num_query_tokens

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def subject_embeddings(self, references: Sequence[Image.Image], subject: str) -> torch.Tensor:
        """``(1, Q, D)``: the mean of every reference's projected Q-Former output for ``subject``."""
        if not references:
            raise ValueError("no reference image")
        text = self.qformer_tokenizer([subject], return_tensors="pt", padding=True)
        dtype = next(self.subject_encoder.parameters()).dtype
        embeddings = []
        for image in references:
            pixels = self.preprocess(image)[None].to(self.device, dtype)
            embeddings.append(self.subject_encoder(pixels, text.input_ids.to(self.device),
                                                   text.attention_mask.to(self.device)))
        return torch.stack(embeddings).mean(dim=0)

    def _tokens(self, texts: list[str], length: int) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                              return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def encode_prompt(self, text: str, ctx_embeddings: torch.Tensor | None) -> torch.Tensor:
        """``(1, max_positions, D)`` conditioning: the prompt with the subject embeddings (or none)."""
        length = self.text_encoder.max_positions - (0 if ctx_embeddings is None else ctx_embeddings.shape[1])
        return self.text_encoder(self._tokens([text], length), ctx_embeddings, self.ctx_begin_pos)

    @torch.no_grad()
    def __call__(self, *, prompt: str, references: Sequence[Image.Image], subject: str, negative_prompt: str = "",
                 guidance_scale: float = 7.5, num_inference_steps: int = 50, height: int = 512, width: int = 512,
                 generator: torch.Generator | None = None) -> Image.Image:
        """One image of ``subject`` (from ``references``) for the already built ``prompt`` (see
        :func:`build_prompt`)."""
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        ctx = self.subject_embeddings(references, subject)
        condition = self.encode_prompt(prompt, ctx)
        guided = guidance_scale > 1.0
        if guided:
            condition = torch.cat([self.encode_prompt(negative_prompt, None), condition])
        unet_dtype = next(self.unet.parameters()).dtype
        condition = condition.to(unet_dtype)

        scheduler = copy.deepcopy(self.scheduler)  # PNDM keeps its multistep history on the instance
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            noise = self.unet(model_input.to(unet_dtype), t, encoder_hidden_states=condition).sample.float()
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample

        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray((image * 255).round().astype(np.uint8))
