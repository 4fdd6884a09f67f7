"""The SSR-Encoder aligner's sizes (upstream ``ssr_encoder.py``), torch-free: describing the method imports only this
module, building it :mod:`baselines.ssr_encoder_model`."""

from __future__ import annotations

from dataclasses import dataclass

#: Number of CLIP feature scales the subject encoder uses (upstream: ``hidden_states[4::4]`` of 24 layers).
NUM_SCALES = 6


@dataclass(frozen=True)
class AlignerConfig:
    """Sizes of the token-to-patch aligner (defaults: the official SD 1.5 + CLIP ViT-L/14 model)."""

    query_dim: int = 768  # the text encoder's width (SD 1.5: CLIP ViT-L/14 text, 768)
    image_dim: int = 1024  # the image encoder's width (CLIP ViT-L/14 vision, 1024)
    heads: int = 8
    head_dim: int = 64
    num_scales: int = NUM_SCALES

    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim
