"""λ-ECLIPSE's prior and its concept-embedding step, written for diffusers 0.42 / transformers 5.

λ-ECLIPSE (Patel et al. 2024, "λ-ECLIPSE: Multi-Concept Personalized Text-to-Image Diffusion Models by
Leveraging CLIP Latent Space", arXiv:2402.05195; inference code github.com/eclipse-t2i/lambda-eclipse-inference)
is a *non-diffusion* prior: one forward pass of a small transformer maps

* the CLIP ViT-bigG-14 text hidden states of the prompt, in which the hidden state at every token of the concept
  word is replaced by the CLIP image embedding of the subject image (``get_text_feats`` in upstream's
  ``src/pipelines/pipeline_kandinsky_subject_prior.py``),
* the prompt's pooled, projected text embedding,
* a "control" image embedding (the embedding of an all-zero pixel tensor when no Canny edge map is given),
* a Gaussian noise vector (the only randomness of the prior),

to one CLIP image embedding, which drives the Kandinsky 2.2 decoder.

The network (upstream ``src/priors/lambda_prior_transformer.py``) is diffusers' unCLIP ``PriorTransformer``
without its timestep embedding and with one more input token, ``embedding_control``. Its published checkpoint
(``ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0``: ``config.json`` + ``diffusion_pytorch_model.safetensors``, 139 MB,
fp32) therefore cannot be loaded by diffusers' ``PriorTransformer``; :class:`LambdaEclipsePrior` is our
re-implementation with the same parameter names. :func:`load_prior` reads the folder strictly.

This module also builds the tiny preset's offline CLIP tokenizer (:func:`build_tiny_clip_tokenizer`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from baselines.lambda_eclipse_config import PRIOR_CONFIG_FILE, PRIOR_WEIGHTS_FILE, LambdaPriorConfig
from toytokenizers import clip as toy_clip
from toytokenizers.corpus import corpus_words
from videobench.weights import WeightsLoadError, build_loaded, load_state_dict

logger = logging.getLogger(__name__)

#: Additive mask value of upstream's prior (text padding and the causal mask).
MASK_VALUE = -10000.0


# ----------------------------------------------------------------------------------------------- the prior


class LambdaEclipsePrior(nn.Module):
    """λ-ECLIPSE's prior: one transformer pass from text (with concept images) to a CLIP image embedding.

    Token sequence (upstream ``lambda_prior_transformer.py``): ``[text hidden states (77), control, text
    embedding, noise, prd]``, plus a learned positional embedding; self-attention with a causal mask and the text
    padding mask; the output is the final ``prd`` token projected to the CLIP image space. There is no timestep and
    no sampling loop. ``clip_mean`` / ``clip_std`` are in the checkpoint but unused (upstream never un-normalises
    the prediction).
    """

    def __init__(self, config: LambdaPriorConfig) -> None:
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock

        config.validate()
        self.config = config
        inner = config.inner_dim
        proj_dim = config.embedding_proj_dim or config.embedding_dim
        clip_dim = config.clip_embed_dim or config.embedding_dim

        self.proj_in = nn.Linear(config.embedding_dim, inner)
        self.embedding_proj_norm = nn.LayerNorm(proj_dim) if config.embedding_proj_norm_type == "layer" else None
        self.embedding_proj = nn.Linear(proj_dim, inner)
        self.embedding_control = nn.Linear(proj_dim, inner)
        self.encoder_hidden_states_proj = nn.Linear(config.embedding_dim, inner)
        self.positional_embedding = nn.Parameter(torch.zeros(1, config.sequence_length, inner))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner))
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, config.num_attention_heads, config.attention_head_dim,
                                  dropout=config.dropout, activation_fn="gelu", attention_bias=True)
            for _ in range(config.num_layers)
        ])
        self.norm_in = nn.LayerNorm(inner) if config.norm_in_type == "layer" else None
        self.norm_out = nn.LayerNorm(inner)
        self.proj_to_clip_embeddings = nn.Linear(inner, clip_dim)
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    def attention_bias(self, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(batch * heads, L, L)`` additive mask: padded text keys and future positions get ``-10000``."""
        padding = (1.0 - text_mask.to(dtype)) * MASK_VALUE
        padding = nn.functional.pad(padding, (0, self.config.additional_embeddings), value=0.0)
        length = self.config.sequence_length
        causal = torch.full((length, length), MASK_VALUE, dtype=dtype, device=text_mask.device).triu_(1)
        bias = padding[:, None, :] + causal
        return bias.repeat_interleave(self.config.num_attention_heads, dim=0)

    def forward(
        self,
        noise: torch.Tensor,
        text_embeds: torch.Tensor,
        text_hidden_states: torch.Tensor,
        text_mask: torch.Tensor,
        control_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """The predicted CLIP image embedding, ``(batch, clip_dim)``.

        Args:
            noise: ``(batch, embedding_dim)`` Gaussian input (upstream's ``hidden_states``).
            text_embeds: ``(batch, embedding_dim)`` pooled projected text embedding (``proj_embedding``).
            text_hidden_states: ``(batch, num_embeddings, embedding_dim)`` text hidden states with the concept
                positions replaced by image embeddings (``encoder_hidden_states``).
            text_mask: ``(batch, num_embeddings)`` tokenizer attention mask (1: real token).
            control_embeds: ``(batch, embedding_dim)`` control image embedding.
        """
        if text_hidden_states.shape[1] != self.config.num_embeddings:
            raise ValueError(f"the prior takes {self.config.num_embeddings} text tokens, got "
                             f"{text_hidden_states.shape[1]}")
        if self.embedding_proj_norm is not None:
            text_embeds = self.embedding_proj_norm(text_embeds)
        batch = noise.shape[0]
        tokens = torch.cat([
            self.encoder_hidden_states_proj(text_hidden_states),
            self.embedding_control(control_embeds)[:, None],
            self.embedding_proj(text_embeds)[:, None],
            self.proj_in(noise)[:, None],
            self.prd_embedding.to(noise.dtype).expand(batch, -1, -1),
        ], dim=1)
        hidden = tokens + self.positional_embedding.to(tokens.dtype)
        bias = self.attention_bias(text_mask, hidden.dtype)
        if self.norm_in is not None:
            hidden = self.norm_in(hidden)
        for block in self.transformer_blocks:
            hidden = block(hidden, attention_mask=bias)
        return self.proj_to_clip_embeddings(self.norm_out(hidden)[:, -1])


def load_prior(folder: str | os.PathLike) -> LambdaEclipsePrior:
    """The prior of a ``Lambda-ECLIPSE-Prior-v1.0`` folder (``config.json`` + safetensors), loaded strictly.

    Raises:
        WeightsLoadError: naming the file, for a missing/unreadable file, an unknown config, or a state dict that
            does not fit the config (missing, unexpected or mis-shaped keys).
    """
    folder = Path(folder)
    config_path, weights_path = folder / PRIOR_CONFIG_FILE, folder / PRIOR_WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WeightsLoadError(f"{path}: missing (a λ-ECLIPSE prior folder holds {PRIOR_CONFIG_FILE} and "
                                   f"{PRIOR_WEIGHTS_FILE})")
    config = LambdaPriorConfig.from_json(config_path)
    state_dict = load_state_dict(weights_path)
    return build_loaded(lambda: LambdaEclipsePrior(config), state_dict, weights_path).eval()


def save_prior(prior: LambdaEclipsePrior, folder: str | os.PathLike) -> Path:
    """Write ``prior`` in the published layout (used by the tests and for converted checkpoints)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PRIOR_CONFIG_FILE).write_text(json.dumps(prior.config.to_json_dict(), indent=2))
    tensors = {key: value.detach().contiguous() for key, value in prior.state_dict().items()}
    save_file(tensors, str(folder / PRIOR_WEIGHTS_FILE))
    return folder


# --------------------------------------------------------------------------------- concept-word embeddings


def concept_token_ids(tokenizer, concept: str) -> list[int]:
    """The token ids of ``concept`` without BOS/EOS (upstream: ``tokenizer(name)["input_ids"][1:-1]``)."""
    return list(tokenizer(concept)["input_ids"][1:-1])


def concept_positions(input_ids: torch.Tensor, concept_ids: Sequence[int]) -> torch.Tensor:
    """Boolean ``input_ids``-shaped mask of every position holding one of ``concept_ids``.

    Upstream replaces each token id of the concept word wherever that id occurs in the prompt (every occurrence,
    and each sub-word token of a multi-token word on its own).
    """
    if not concept_ids:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    ids = torch.as_tensor(list(concept_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids)


def insert_concept_embeddings(
    hidden_states: torch.Tensor, positions: torch.Tensor, image_embeds: torch.Tensor
) -> torch.Tensor:
    """``hidden_states`` ``(B, T, D)`` with the rows at ``positions`` ``(B, T)`` set to ``image_embeds`` ``(B, D)``."""
    if image_embeds.shape[-1] != hidden_states.shape[-1]:
        raise ValueError(f"image embedding width {image_embeds.shape[-1]} != text width {hidden_states.shape[-1]}")
    replacement = image_embeds.to(hidden_states.dtype)[:, None, :].expand_as(hidden_states)
    return torch.where(positions[..., None], replacement, hidden_states)


# -------------------------------------------------------------------------------- tiny offline tokenizer


@lru_cache(maxsize=1)
def tiny_clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The tiny CLIP tokenizer's ``(vocab, merges)``: CLIP's byte alphabet, whole words of the tiny corpus."""
    vocab, merges = toy_clip.tiny_clip_vocab(list(toy_clip.byte_unicode_table().values()), corpus_words())
    return vocab, tuple(merges)


def build_tiny_clip_tokenizer(model_max_length: int = 32):
    """A deterministic offline :class:`~transformers.CLIPTokenizer` for the tiny preset.

    CLIP's byte-level BPE (lower-casing, ``</w>`` word ends) over a vocabulary defined in code: the 256 byte
    symbols, alone and word-final, and merges that make every word of :data:`toytokenizers.corpus.TINY_CORPUS` a
    single token. Padding is ``!`` (id 0), as in the CLIP-ViT-bigG-14 tokenizer.
    """
    return toy_clip.tiny_clip_tokenizer(model_max_length, list(toy_clip.byte_unicode_table().values()),
                                        corpus_words(), pad_token="!")
