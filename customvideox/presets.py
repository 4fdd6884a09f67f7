"""Model presets. ``tiny``: a random-initialised CustomVideoX small enough for a 2-core CPU.

The tiny preset has CogVideoX-5B's *structure* (the same component classes, rotary positions, v-prediction
DDIM with zero-terminal-SNR, the reference LoRA) at toy sizes: 2 transformer blocks of width 32, a 4-level
3D causal VAE with 4-8 channels (8x spatial, 4x temporal compression, like the real one; 4 channels at the
two finest levels, where the VAE's 3D convolutions cost most on a CPU), a 2-layer T5
encoder of width 32 and the offline tokenizer of :mod:`toytokenizers.t5`. It renders 9 frames of
128x192 (3 latent frames of 16x24) in 8 DDIM steps. Every weight is random (``torch.manual_seed(seed)``),
so the videos are noise-like textures; the pipeline and everything it writes carry ``random_weights=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler
from transformers import T5Config, T5EncoderModel

from customvideox.config import ReferenceConfig, explicit_overrides, resolve_reference_config
from customvideox.pipeline import CustomVideoXPipeline
from customvideox.transformer import CustomVideoXTransformer3DModel
from toytokenizers.t5 import build_tiny_tokenizer

#: CogVideoX-5B's scheduler config (``scheduler/scheduler_config.json``): DDIM, v-prediction, zero terminal SNR.
COGVIDEOX_5B_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing",
)

#: CogVideoX-5B ``transformer/config.json`` (THUDM/CogVideoX-5b; the I2V model differs in ``in_channels`` and its
#: learned positional embeddings, :data:`COGVIDEOX_5B_I2V_TRANSFORMER`).
COGVIDEOX_5B_TRANSFORMER: dict[str, Any] = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    max_text_seq_length=226, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
#: CogVideoX-5B-I2V ``transformer/config.json`` (THUDM/CogVideoX-5b-I2V): the image latents are concatenated to
#: the noise (32 channels in) and the positions are learned as well as rotary.
COGVIDEOX_5B_I2V_TRANSFORMER: dict[str, Any] = dict(
    COGVIDEOX_5B_TRANSFORMER, in_channels=32, use_learned_positional_embeddings=True,
)
#: CogVideoX-5B ``vae/config.json`` differs from ``AutoencoderKLCogVideoX``'s defaults only in the scaling factor
#: (the same VAE in CogVideoX-5B-I2V).
COGVIDEOX_5B_VAE: dict[str, Any] = dict(scaling_factor=0.7)
#: CogVideoX-5B's text encoder (``text_encoder/config.json``): the T5 v1.1 XXL encoder, 226 tokens.
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, dropout_rate=0.0,
)

TINY_TEXT_LENGTH = 32

#: ``CogVideoXTransformer3DModel`` config of the tiny preset (5B: 48 heads x 64, 42 layers, 226 text tokens).
TINY_TRANSFORMER: dict[str, Any] = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
    text_embed_dim=32, num_layers=2, sample_width=24, sample_height=16, sample_frames=9, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_LENGTH, use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
)

#: ``AutoencoderKLCogVideoX`` config of the tiny preset (5B: channels 128-512, 16 latent channels).
TINY_VAE: dict[str, Any] = dict(
    block_out_channels=(4, 4, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
    temporal_compression_ratio=4, sample_height=128, sample_width=192, scaling_factor=0.7,
)

#: ``T5Config`` of the tiny text encoder (5B: T5 v1.1 XXL, d_model 4096); vocab size set from the tokenizer.
TINY_T5: dict[str, Any] = dict(
    d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
)

#: Sampling defaults of the tiny preset (the video size comes from the transformer config: 9x128x192).
TINY_CALL_DEFAULTS: dict[str, Any] = dict(num_frames=9, height=128, width=192, num_inference_steps=8,
                                          guidance_scale=6.0)

#: The tiny reference LoRA's rank (the real one: 128, paper section 6.1).
TINY_LORA_RANK = 8


def randomize_reference_lora(transformer: torch.nn.Module, generator: torch.Generator, std: float = 0.02) -> int:
    """Give the reference LoRA's up-projections random values (PEFT initialises them to zero).

    A zero LoRA would make the reference branch equal to the base weights; the tiny preset wants a
    reference branch that actually differs, so tests of LoRA save/load and of "LoRA touches reference
    tokens only" are meaningful. Returns the number of tensors changed.
    """
    changed = 0
    for name, parameter in transformer.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            changed += 1
    return changed


def tiny_reference_config(overrides: Mapping[str, Any] | None = None) -> ReferenceConfig:
    """The tiny preset's settings: the paper defaults, LoRA rank :data:`TINY_LORA_RANK`, then ``overrides``
    (only the explicitly set keys, as in :func:`~customvideox.config.resolve_reference_config`)."""
    tiny = {"lora_rank": TINY_LORA_RANK, "lora_alpha": float(TINY_LORA_RANK)}
    return resolve_reference_config(None, {**tiny, **explicit_overrides(overrides)})[0]


def build_tiny_pipeline(
    seed: int = 0,
    device: str | torch.device = "cpu",
    reference_config: ReferenceConfig | None = None,
    reference_overrides: Mapping[str, Any] | None = None,
) -> CustomVideoXPipeline:
    """The tiny random-initialised CustomVideoX pipeline (see the module docstring).

    The same ``seed`` gives bit-identical weights. The settings are ``reference_config`` if given, else
    :func:`tiny_reference_config` of ``reference_overrides`` (default: the full method, ``3d-ra+tab+erae``, with
    LoRA rank :data:`TINY_LORA_RANK`). A LoRA file loaded later (``load_reference_lora``) brings its own settings.
    """
    if reference_config is not None and reference_overrides is not None:
        raise ValueError("give reference_overrides (the explicitly set keys) or reference_config, not both")
    reference_config = reference_config or tiny_reference_config(reference_overrides)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(model_max_length=TINY_TEXT_LENGTH)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_T5)).eval()
    vae = AutoencoderKLCogVideoX(**TINY_VAE).eval()
    transformer = CustomVideoXTransformer3DModel(**TINY_TRANSFORMER)
    transformer.add_reference_lora(reference_config)
    randomize_reference_lora(transformer, torch.Generator().manual_seed(seed + 1))
    transformer.eval()
    scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)
    pipe = CustomVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                scheduler=scheduler)
    pipe.reference_config = reference_config
    pipe.random_base_weights = True
    pipe.reference_lora_path = None
    return pipe.to(device)
