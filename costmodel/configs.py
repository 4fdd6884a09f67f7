"""Shared pieces of the baselines' cost models: the real-size configs of the models they build on, and a builder of
a stage's components on FakeTensors.

Each method module has one small cost function next to its code (``ip_adapter.stage1_cost``, ``videobooth.cost``,
...) that builds its components at the real sizes (or the tiny preset's) with :class:`StageBuilder` and lists the
calls one video makes (:class:`~costmodel.counting.Piece`); :mod:`costmodel.method_cost` describes the result. The
configs here are the official ``config.json`` files of the public checkpoints (source named at each), which the
project otherwise reads from the weight folders at load time; models built from them on the meta device have the
real parameter counts and run the real shapes on FakeTensors, with no weights and no GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from costmodel.counting import (  # noqa: F401  (the call helpers the method modules use as cm.*)
    FakeStage,
    denoiser_calls,
    dtype_name,
    image_call,
    module_dtype,
    text_call,
    token_ids,
    vae_decode_call,
    vae_encode_call,
)
from costmodel.method_cost import EFFECTIVE_TFLOPS_PER_S, StageCost

# --- Stable Diffusion 1.x / SDXL --------------------------------------------------------------------------------
#: ``unet/config.json`` of stable-diffusion-v1-5/stable-diffusion-v1-5 (identical in CompVis/stable-diffusion-v1-4
#: and in Salesforce/blipdiffusion's ``unet/``).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
}
#: ``vae/config.json`` of stable-diffusion-v1-5 (the same architecture: CompVis SD 1.4, stabilityai/sd-vae-ft-ema /
#: -mse, Salesforce/blipdiffusion ``vae/``).
SD_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
#: ``unet/config.json`` of stabilityai/stable-diffusion-xl-base-1.0.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20), "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
#: ``vae/config.json`` of stable-diffusion-xl-base-1.0 (SD's architecture; decoded in fp32 under fp16: force_upcast).
SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

# --- CLIP towers (transformers CLIPTextConfig / CLIPVisionConfig) ------------------------------------------------
#: openai/clip-vit-large-patch14 ``text_config`` (= SD 1.x's and SDXL's first ``text_encoder/``).
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
#: laion/CLIP-ViT-bigG-14-laion2B-39B-b160k ``text_config`` (= SDXL's ``text_encoder_2/``, with its projection).
CLIP_BIGG_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280,
}
#: openai/clip-vit-large-patch14 ``vision_config`` (SSR-Encoder's and VideoBooth's image encoder).
CLIP_L_VISION: dict[str, Any] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu", "projection_dim": 768,
}
#: h94/IP-Adapter ``models/image_encoder/config.json`` (OpenCLIP ViT-H/14).
CLIP_H_VISION: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "projection_dim": 1024,
}
#: laion/CLIP-ViT-bigG-14-laion2B-39B-b160k ``vision_config`` with the model's projection_dim (= h94/IP-Adapter
#: ``sdxl_models/image_encoder``; MS-Diffusion's and λ-ECLIPSE's image encoder).
CLIP_BIGG_VISION: dict[str, Any] = {
    "hidden_size": 1664, "intermediate_size": 8192, "num_hidden_layers": 48, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "projection_dim": 1280,
}
#: CLIP's text length (every CLIP tokenizer here pads to it).
CLIP_TEXT_LENGTH = 77


class StageBuilder(FakeStage):
    """A :class:`~costmodel.counting.FakeStage` whose :meth:`cost` is a :class:`~costmodel.method_cost.StageCost`: the
    method modules build their components with it, list the calls one video makes, then cost the stage."""

    def cost(self, name: str, rate: float = EFFECTIVE_TFLOPS_PER_S, notes: str = "", memory: bool = True
             ) -> StageCost:
        return StageCost.from_pieces(name, self.measure(memory), rate, notes)


def sd_stage(builder: StageBuilder, unet: torch.nn.Module, vae: torch.nn.Module, *, steps: int, cfg: bool,
             height: int, width: int, context: tuple[int, int] | None,
             unet_kwargs: Callable[[int], dict[str, Any]] | None = None,
             decode_kwargs: dict[str, Any] | None = None) -> None:
    """The denoising and decoding calls of a Stable-Diffusion-like pipeline: ``steps`` UNet calls on the CFG batch
    (2 with ``cfg``) at ``height`` x ``width`` pixels with ``context`` = (tokens, width) of encoder states (None: no
    encoder states), then one VAE decode (with ``decode_kwargs``). ``unet_kwargs(batch)`` adds the call's extra
    inputs (added conditions, attention kwargs)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    batch = 2 if cfg else 1
    channels = unet.config.in_channels
    dtype = module_dtype(unet)

    def step() -> Any:
        latents = torch.randn(batch, channels, height // factor, width // factor, dtype=dtype)
        states = torch.randn(batch, *context, dtype=dtype) if context is not None else None
        return unet(latents, torch.tensor(500), states, **(unet_kwargs(batch) if unet_kwargs else {})).sample

    builder.add("UNet step", step, steps, f"batch {batch}, {height}x{width} px ({height // factor}x{width // factor} "
                                          f"latents)" + (f", {context[0]} context tokens" if context else ""))
    latent_channels = vae.config.latent_channels
    builder.add("VAE decode", vae_decode_call(vae, (1, latent_channels, height // factor, width // factor),
                                              **(decode_kwargs or {})), 1,
                f"{height}x{width} px, {dtype_name(module_dtype(vae))}")
