"""CustomVideoX's transformer: diffusers' CogVideoX with a LoRA reference stream (paper section 4).

:class:`CustomVideoXTransformer3DModel` *is* a :class:`~diffusers.CogVideoXTransformer3DModel` (same config,
same weights, ``from_pretrained`` on a CogVideoX ``transformer`` folder); it only adds keyword arguments
to ``forward``. Without a reference the base forward runs unchanged (bit-identical output, LoRA or not).

With a reference latent ``z_r`` (one clean VAE latent frame of the reference image):

* the reference tokens are patch-embedded like a video frame and pass through the *same* blocks (norms,
  attention, feed-forward), with the reference LoRA active for them only (Eq. 4 and Figure 2);
* they are clean, so their adaLN modulation (the video branch's shift/scale/gate of ``norm1``/``norm2``)
  is computed from the timestep-0 embedding, not from the noisy step's;
* their RoPE positions are the first video frame's shifted by delta (Eq. 5, :mod:`customvideox.positions`);
* every block runs one 3D Reference Attention over ``[text, video, reference]`` with TAB and ERAE as
  per-query biases on the reference keys (:mod:`customvideox.attention`).

Reference modes (:class:`~customvideox.config.ReferenceConfig`): ``joint`` recomputes the reference tokens
at every step, attending to all tokens (Eq. 4 literally); ``cached`` extracts the reference stream once
(attending only to itself, as in Algorithm 1 line 3) with :meth:`build_reference_cache` and reuses its
per-layer keys and values at every step. The ``naive`` ablation instead prepends ``z_r`` as an extra input
frame of the base model (no LoRA) and drops that frame from the output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel, ModelMixin  # noqa: F401
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import CogVideoXLayerNormZero
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

from . import lora as lora_utils
from .attention import (
    CustomVideoXAttnProcessor,
    EntityTokens,
    ReferenceBias,
    RotaryEmbedding,
    entity_token_indices,
    time_aware_bias,
)
from .config import ReferenceConfig
from .positions import reference_rotary_pos_embed, video_rotary_pos_embed

# ``ModelMixin`` is imported above on purpose: a pipeline saved with this transformer names the module
# ``customvideox.transformer`` in ``model_index.json``, and diffusers' loader looks up its base classes
# (``ModelMixin``) in that module's namespace to check and load the component.


@dataclass
class ReferenceCache:
    """Per-layer reference keys and values of the cached mode (post QK-norm, post RoPE).

    Attributes:
        keys, values: one ``(B_r, heads, N_ref, d)`` tensor per block.
        latent_size: the reference latent's ``(height, width)``.
        reference_config: the config the cache was built with (its ``rope_shift`` is baked in).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    latent_size: tuple[int, int]
    reference_config: ReferenceConfig

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def layer(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s (k, v), tiled to ``batch_size`` (e.g. one reference for both CFG halves)."""
        return _tile(self.keys[index], batch_size), _tile(self.values[index], batch_size)

    def to(self, *args: Any, **kwargs: Any) -> "ReferenceCache":
        return ReferenceCache(
            [k.to(*args, **kwargs) for k in self.keys],
            [v.to(*args, **kwargs) for v in self.values],
            self.latent_size,
            self.reference_config,
        )


def _tile(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat a reference batch to ``batch_size`` (``[r1..rn]`` -> ``[r1..rn, r1..rn]``, the CFG layout)."""
    n = x.shape[0]
    if n == batch_size:
        return x
    if batch_size % n:
        raise ValueError(f"reference batch {n} does not divide the video batch {batch_size}")
    return x.repeat(batch_size // n, *([1] * (x.dim() - 1)))


def modulate_clean(
    norm: CogVideoXLayerNormZero, x: torch.Tensor, temb_clean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The video branch's adaLN of ``norm`` applied to reference tokens with the timestep-0 embedding.

    Returns ``(modulated tokens, gate)``; ``CogVideoXLayerNormZero``'s first three chunks are the video
    branch's shift, scale and gate.
    """
    shift, scale, gate = norm.linear(norm.silu(temb_clean)).chunk(6, dim=1)[:3]
    return norm.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :], gate[:, None, :]


def _entity_tokens(
    mask: torch.Tensor | None, tokens: EntityTokens | None, batch: int, text_len: int, device: torch.device
) -> EntityTokens | None:
    """ERAE's entity token indices for a batch of ``batch``: from precomputed ``tokens`` (no host sync, no graph
    break under torch.compile) or else from the ``(B, L)`` bool ``mask``; None when there is no entity."""
    if tokens is not None:
        index, valid = tokens
        if index.dim() != 2 or index.shape != valid.shape:
            raise ValueError(f"entity_tokens: index {tuple(index.shape)} and valid {tuple(valid.shape)} must be (B, E)")
        return _tile(index.to(device), batch), _tile(valid.to(device=device, dtype=torch.bool), batch)
    if mask is None:
        return None
    mask = _tile(mask.to(device=device, dtype=torch.bool), batch)
    if mask.shape[1] != text_len:
        raise ValueError(f"entity_token_mask has {mask.shape[1]} tokens, the prompt embedding {text_len}")
    return entity_token_indices(mask)


def _processor(block: CogVideoXBlock) -> CustomVideoXAttnProcessor:
    proc = block.attn1.processor
    return proc if isinstance(proc, CustomVideoXAttnProcessor) else CustomVideoXAttnProcessor()


def reference_block_forward(
    block: CogVideoXBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    reference_states: torch.Tensor | None,
    temb: torch.Tensor,
    temb_clean: torch.Tensor | None,
    image_rotary_emb: RotaryEmbedding | None,
    reference_rotary_emb: RotaryEmbedding | None,
    reference_kv: tuple[torch.Tensor, torch.Tensor] | None,
    bias: ReferenceBias | None,
    scope: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One ``CogVideoXBlock`` over video, text and (joint mode) reference tokens.

    Mirrors ``CogVideoXBlock.forward`` for video and text; reference tokens get the clean modulation and
    share the attention (:meth:`CustomVideoXAttnProcessor.with_reference`) and the feed-forward.
    """
    text_len, video_len = encoder_hidden_states.size(1), hidden_states.size(1)
    norm_h, norm_e, gate_msa, enc_gate_msa = block.norm1(hidden_states, encoder_hidden_states, temb)
    norm_r = gate_r = None
    if reference_states is not None:
        norm_r, gate_r = modulate_clean(block.norm1, reference_states, temb_clean)
    attn_h, attn_e, attn_r = _processor(block).with_reference(
        block.attn1, norm_h, norm_e, image_rotary_emb, norm_r, reference_rotary_emb, reference_kv, bias, scope, backend
    )
    hidden_states = hidden_states + gate_msa * attn_h
    encoder_hidden_states = encoder_hidden_states + enc_gate_msa * attn_e
    if reference_states is not None:
        reference_states = reference_states + gate_r * attn_r

    norm_h, norm_e, gate_ff, enc_gate_ff = block.norm2(hidden_states, encoder_hidden_states, temb)
    parts = [norm_e, norm_h]
    if reference_states is not None:
        norm_r, gate_ff_r = modulate_clean(block.norm2, reference_states, temb_clean)
        parts.append(norm_r)
    ff_output = block.ff(torch.cat(parts, dim=1))
    hidden_states = hidden_states + gate_ff * ff_output[:, text_len : text_len + video_len]
    encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff_output[:, :text_len]
    if reference_states is not None:
        reference_states = reference_states + gate_ff_r * ff_output[:, text_len + video_len :]
    return hidden_states, encoder_hidden_states, reference_states


def reference_self_block_forward(
    block: CogVideoXBlock,
    reference_states: torch.Tensor,
    temb_clean: torch.Tensor,
    reference_rotary_emb: RotaryEmbedding | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block over the reference stream alone (cached mode). Returns ``(states, k_ref, v_ref)``."""
    norm_r, gate = modulate_clean(block.norm1, reference_states, temb_clean)
    out, k_ref, v_ref = _processor(block).reference_self_attention(block.attn1, norm_r, reference_rotary_emb)
    reference_states = reference_states + gate * out
    norm_r, gate = modulate_clean(block.norm2, reference_states, temb_clean)
    reference_states = reference_states + gate * block.ff(norm_r)
    return reference_states, k_ref, v_ref


class CustomVideoXTransformer3DModel(CogVideoXTransformer3DModel):
    """CogVideoX transformer with CustomVideoX's reference branch (3D Reference Attention, TAB, ERAE).

    Same config and weights as :class:`~diffusers.CogVideoXTransformer3DModel`; load it with
    ``CustomVideoXTransformer3DModel.from_pretrained("<CogVideoX-5b>/transformer")`` (or
    ``from_pretrained("THUDM/CogVideoX-5b", subfolder="transformer")``), then :meth:`add_reference_lora`
    or :meth:`load_reference_lora`.
    """

    _reference_config: ReferenceConfig | None = None

    # -- configuration -----------------------------------------------------------------------------
    @property
    def reference_config(self) -> ReferenceConfig:
        """The default :class:`ReferenceConfig` of ``forward`` (set by :meth:`add_reference_lora` / loading)."""
        return self._reference_config or ReferenceConfig()

    @reference_config.setter
    def reference_config(self, config: ReferenceConfig) -> None:
        self._reference_config = config

    def _install_processors(self) -> None:
        for block in self.transformer_blocks:
            if not isinstance(block.attn1.processor, CustomVideoXAttnProcessor):
                block.attn1.set_processor(CustomVideoXAttnProcessor())

    def add_reference_lora(self, config: ReferenceConfig | None = None) -> int:
        """Inject the ``"reference"`` peft LoRA (rank ``config.lora_rank`` on ``config.lora_targets`` of every
        block). Returns the number of LoRA parameters."""
        config = config or self.reference_config
        self._install_processors()
        count = lora_utils.add_reference_lora(self, config)
        self.reference_config = config
        return count

    def save_reference_lora(self, path: str, config: ReferenceConfig | None = None):
        """Save the reference LoRA as diffusers-style safetensors (see :mod:`customvideox.lora`)."""
        return lora_utils.save_reference_lora(self, path, config or self.reference_config)

    def load_reference_lora(
        self, path: str, overrides: Mapping[str, Any] | ReferenceConfig | None = None
    ) -> ReferenceConfig:
        """Load a reference LoRA file (injecting the adapter if needed). The file's recorded settings (mode,
        ablation, RoPE shift of Eq. 5, TAB/ERAE constants of Eq. 6-8, ...) with ``overrides`` (a mapping of only
        the explicitly set keys; see :func:`customvideox.lora.resolve_file_config`) become :attr:`reference_config`,
        which is returned."""
        self._install_processors()
        self.reference_config = lora_utils.load_reference_lora(self, path, overrides)
        return self.reference_config

    # -- serialization ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """Save as a plain CogVideoX transformer plus, when injected, the reference LoRA next to it.

        The weights file holds the base weights under CogVideoX's own names (peft's ``to_q.base_layer.weight``
        is written as ``to_q.weight``; no LoRA tensor), so any CogVideoX loader reads it. The reference LoRA
        goes to ``pytorch_lora_weights.safetensors`` in the same folder (``CustomVideoXPipeline.from_pretrained``
        loads it back).
        """
        if not lora_utils.has_reference_lora(self):
            return super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        handle = self.register_state_dict_post_hook(lora_utils.strip_lora_from_state_dict)
        try:
            super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        finally:
            handle.remove()
        if is_main_process:
            self.save_reference_lora(str(Path(save_directory) / lora_utils.LORA_WEIGHT_NAME))

    # -- shared pieces ------------------------------------------------------------------------------
    def _time_embedding(self, timestep: torch.Tensor, timestep_cond, ofs, dtype: torch.dtype) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(timestep).to(dtype=dtype), timestep_cond)
        if self.ofs_embedding is not None:
            emb = emb + self.ofs_embedding(self.ofs_proj(ofs).to(dtype=dtype))
        return emb

    def _timesteps(self, timestep: Any, batch_size: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        return t.expand(batch_size) if t.dim() == 0 else t

    def _check_reference(self, reference_latents: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if reference_latents.dim() == 4:
            reference_latents = reference_latents[:, None]
        if reference_latents.dim() != 5 or reference_latents.shape[1] != 1:
            raise ValueError(
                f"reference_latents must be (B, 1, C, H, W) (one latent frame), got {tuple(reference_latents.shape)}"
            )
        if reference_latents.shape[2:] != hidden_states.shape[2:]:
            raise ValueError(
                f"reference latent (C, H, W) = {tuple(reference_latents.shape[2:])} must match the video latent's "
                f"{tuple(hidden_states.shape[2:])}: resize or pad the reference image to the video size first"
            )
        return reference_latents

    def _embed_reference(self, reference_latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Patch-embed one reference latent frame like a video frame: ``(B_r, 1, C, H, W) -> (B_r, N_ref, D)``."""
        if self.config.patch_size_t is not None:
            raise NotImplementedError("the reference branch supports CogVideoX 1.0 checkpoints (patch_size_t=None)")
        embed = self.patch_embed
        batch, _, channels, height, width = reference_latents.shape
        tokens = embed.proj(reference_latents.reshape(batch, channels, height, width).to(dtype))
        tokens = tokens.flatten(2).transpose(1, 2)
        if embed.use_positional_embeddings or embed.use_learned_positional_embeddings:
            # sincos-position models (CogVideoX-2b): the reference shares the first frame's embedding.
            pos = embed._get_positional_embeddings(height, width, 1, device=tokens.device)
            tokens = tokens + pos[:, embed.max_text_seq_length :].to(tokens.dtype)
        return self.embedding_dropout(tokens)

    def _reference_rotary(self, height: int, width: int, config: ReferenceConfig, device) -> RotaryEmbedding | None:
        if not self.config.use_rotary_positional_embeddings:
            return None
        return reference_rotary_pos_embed(self.config, height, width, config.rope_shift, device=device)

    def _unpatchify(self, hidden_states: torch.Tensor, batch: int, frames: int, height: int, width: int):
        p = self.config.patch_size
        output = hidden_states.reshape(batch, frames, height // p, width // p, -1, p, p)
        return output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    # -- cached mode ------------------------------------------------------------------------------
    def build_reference_cache(
        self,
        reference_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        reference_config: ReferenceConfig | None = None,
        reference_rotary_emb: RotaryEmbedding | None = None,
        timestep_cond: torch.Tensor | None = None,
        ofs: torch.Tensor | None = None,
        lora_scale: float = 1.0,
    ) -> ReferenceCache:
        """Extract the reference features once (Algorithm 1 line 3) for ``mode="cached"``.

        The reference tokens run through all blocks with the LoRA and the timestep-0 modulation,
        attending only to themselves, and every block's reference keys and values are stored.

        Args:
            reference_latents: ``(B_r, 1, C, H, W)`` clean reference latent(s).
            encoder_hidden_states: accepted so callers can pass joint-mode arguments unchanged; unused,
                since the cached reference does not attend to text (it is prompt- and CFG-independent).
            lora_scale: strength of the reference LoRA, as ``attention_kwargs={"scale": ...}`` of ``forward``
                (in cached mode the LoRA acts only here, so the scale must be given when the cache is built).
        """
        config = reference_config or self.reference_config
        self._install_processors()
        if reference_latents.dim() == 4:
            reference_latents = reference_latents[:, None]
        batch, _, _, height, width = reference_latents.shape
        dtype = self.proj_out.weight.dtype
        zeros = torch.zeros(batch, device=reference_latents.device, dtype=torch.long)
        temb_clean = self._time_embedding(zeros, timestep_cond, ofs, dtype)
        rotary = reference_rotary_emb or self._reference_rotary(height, width, config, reference_latents.device)
        states = self._embed_reference(reference_latents, dtype)
        keys, values = [], []
        scaled = USE_PEFT_BACKEND and lora_scale != 1.0
        if scaled:
            scale_lora_layers(self, lora_scale)
        try:
            for block in self.transformer_blocks:
                states, k_ref, v_ref = reference_self_block_forward(block, states, temb_clean, rotary)
                keys.append(k_ref)
                values.append(v_ref)
        finally:
            if scaled:
                unscale_lora_layers(self, lora_scale)
        return ReferenceCache(keys, values, (height, width), config)

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.LongTensor,
        timestep_cond: torch.Tensor | None = None,
        ofs: int | float | torch.LongTensor | None = None,
        image_rotary_emb: RotaryEmbedding | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        reference_latents: torch.Tensor | None = None,
        entity_token_mask: torch.Tensor | None = None,
        reference_cache: ReferenceCache | None = None,
        reference_config: ReferenceConfig | None = None,
        reference_rotary_emb: RotaryEmbedding | None = None,
        entity_maps: list | None = None,
        entity_tokens: EntityTokens | None = None,
        erae_coverage: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """CogVideoX forward with an optional reference.

        Args (beyond :meth:`CogVideoXTransformer3DModel.forward`'s):
            reference_latents: ``(B_r, 1, C, H, W)`` clean VAE latent of the reference image (``B_r`` divides
                ``B``; it is tiled, e.g. one reference for both CFG halves). ``None`` and no cache: the base
                model runs, bit-identical to CogVideoX.
            entity_token_mask: ``(B, L)`` bool, True on the entity word's T5 tokens (ERAE, Eq. 8). A sample
                whose row is all False (or ``None``) runs without ERAE.
            reference_cache: from :meth:`build_reference_cache` (cached mode; built on the fly if absent).
            reference_config: overrides :attr:`reference_config` for this call.
            reference_rotary_emb: overrides the shifted reference RoPE (Eq. 5).
            entity_maps: a list that receives every layer's ERAE entity map ``(B, F, H', W')``.
            entity_tokens: ``entity_token_indices(entity_token_mask)`` computed once (e.g. per video, before the
                denoising loop): used instead of ``entity_token_mask``, it spares each step a host sync and, under
                ``torch.compile``, a graph break.
            erae_coverage: a ``(B,)`` float32 tensor on the model's device; every layer where ERAE runs adds, in
                place, the fraction of each sample's video tokens inside its entity region ``R_e`` (Eq. 8), so after
                the call it holds the sum over layers (divide by ``len(transformer_blocks)`` for the mean). Nothing
                is read back to the host.

        Returns the denoiser output for the video frames only.
        """
        self._install_processors()
        if reference_latents is None and reference_cache is None:
            return super().forward(
                hidden_states, encoder_hidden_states, timestep, timestep_cond, ofs, image_rotary_emb,
                attention_kwargs, return_dict,
            )
        config = reference_config or self.reference_config
        if not config.uses_reference_branch:
            output = self._forward_naive(
                hidden_states, encoder_hidden_states, timestep, timestep_cond, ofs, image_rotary_emb,
                attention_kwargs, reference_latents,
            )
        else:
            lora_scale = (attention_kwargs or {}).get("scale", 1.0)
            if USE_PEFT_BACKEND and lora_scale != 1.0:
                scale_lora_layers(self, lora_scale)
            try:
                output = self._forward_reference(
                    hidden_states, encoder_hidden_states, timestep, timestep_cond, ofs, image_rotary_emb,
                    reference_latents, entity_token_mask, reference_cache, config, reference_rotary_emb, entity_maps,
                    entity_tokens, erae_coverage,
                )
            finally:
                if USE_PEFT_BACKEND and lora_scale != 1.0:
                    unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _forward_naive(
        self, hidden_states, encoder_hidden_states, timestep, timestep_cond, ofs, image_rotary_emb,
        attention_kwargs, reference_latents,
    ) -> torch.Tensor:
        """Table 2's baseline: ``z_r`` prepended as frame 0 of the noisy input; that frame's output dropped."""
        if reference_latents is None:
            raise ValueError("the 'naive' ablation needs reference_latents (it has no reference cache)")
        reference_latents = self._check_reference(reference_latents, hidden_states)
        batch, frames, _, height, width = hidden_states.shape
        frames_in = torch.cat([_tile(reference_latents.to(hidden_states.dtype), batch), hidden_states], dim=1)
        rotary = None
        if image_rotary_emb is not None:  # the caller's table covers F frames; the input now has F + 1
            rotary = video_rotary_pos_embed(self.config, frames + 1, height, width, device=hidden_states.device)
        output = super().forward(
            frames_in, encoder_hidden_states, timestep, timestep_cond, ofs, rotary, attention_kwargs, return_dict=False
        )[0]
        return output[:, 1:]

    def _forward_reference(
        self, hidden_states, encoder_hidden_states, timestep, timestep_cond, ofs, image_rotary_emb,
        reference_latents, entity_token_mask, reference_cache, config: ReferenceConfig, reference_rotary_emb,
        entity_maps, entity_tokens, erae_coverage,
    ) -> torch.Tensor:
        batch, frames, _, height, width = hidden_states.shape
        device, dtype = hidden_states.device, hidden_states.dtype
        if reference_latents is not None:
            reference_latents = self._check_reference(reference_latents, hidden_states)
        if self.config.patch_size_t is not None:
            raise NotImplementedError("the reference branch supports CogVideoX 1.0 checkpoints (patch_size_t=None)")
        t = self._timesteps(timestep, batch, device)
        emb = self._time_embedding(t, timestep_cond, ofs, dtype)
        emb_clean = None  # the reference's timestep-0 embedding: only joint mode runs reference tokens here

        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        text_len = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = tokens[:, :text_len], tokens[:, text_len:]

        p = self.config.patch_size
        bias = ReferenceBias(
            erae_lambda=config.erae_lambda, erae_b1=config.erae_b1, erae_normalization=config.erae_normalization,
            video_grid=(frames, height // p, width // p), entity_maps=entity_maps, coverage=erae_coverage,
        )
        if config.uses_tab:
            bias.tab = time_aware_bias(t.float(), config.num_train_timesteps, config.tab_gamma, config.tab_eps)
        if config.uses_erae:
            entity = _entity_tokens(entity_token_mask, entity_tokens, batch, text_len, device)
            if entity is not None:
                bias.entity_index, bias.entity_valid = entity

        reference_states = rotary_ref = None
        if config.mode == "cached":
            if reference_cache is None:
                if reference_latents is None:
                    raise ValueError("mode='cached' needs reference_latents or a reference_cache")
                reference_cache = self.build_reference_cache(
                    reference_latents, reference_config=config, reference_rotary_emb=reference_rotary_emb, ofs=ofs
                )
            self._check_cache(reference_cache, height, width)
        else:
            if reference_latents is None:
                raise ValueError(
                    "mode='joint' needs reference_latents; a reference_cache is only used with mode='cached'"
                )
            reference_states = _tile(self._embed_reference(reference_latents, dtype), batch)
            emb_clean = self._time_embedding(torch.zeros_like(t), timestep_cond, ofs, dtype)
            rotary_ref = reference_rotary_emb or self._reference_rotary(height, width, config, device)

        for index, block in enumerate(self.transformer_blocks):
            kv = reference_cache.layer(index, batch) if reference_cache is not None else None
            args = (
                block, hidden_states, encoder_hidden_states, reference_states, emb, emb_clean, image_rotary_emb,
                rotary_ref, kv, bias if bias.active else None, config.scope, config.attention_backend,
            )
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states, encoder_hidden_states, reference_states = self._gradient_checkpointing_func(
                    reference_block_forward, *args
                )
            else:
                hidden_states, encoder_hidden_states, reference_states = reference_block_forward(*args)

        hidden_states = self.norm_final(hidden_states)
        hidden_states = self.norm_out(hidden_states, temb=emb)
        hidden_states = self.proj_out(hidden_states)
        return self._unpatchify(hidden_states, batch, frames, height, width)

    def _check_cache(self, cache: ReferenceCache | None, height: int, width: int) -> None:
        if cache is None:
            raise ValueError("mode='cached' needs reference_latents or a reference_cache from build_reference_cache")
        if len(cache.keys) != len(self.transformer_blocks):
            raise ValueError(f"reference cache has {len(cache.keys)} layers, the model {len(self.transformer_blocks)}")
        if tuple(cache.latent_size) != (height, width):
            raise ValueError(
                f"reference cache was built for latent size {cache.latent_size}, the video is {(height, width)}"
            )
