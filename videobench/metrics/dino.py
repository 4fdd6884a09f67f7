"""DINO-I: subject fidelity with self-supervised DINO ViT-S/16 features (DreamBooth's DINO metric, per frame).

DINO-I = 1/(R*T) * sum_r sum_t cos(phi(ref_r), phi(f_t)), where phi is the CLS token of DINO ViT-S/16 after the
final norm (timm ``vit_small_patch16_224`` with ``num_classes=0``: exactly DINO's ``VisionTransformer`` output).
Preprocessing as in DreamBooth's evaluation: Resize(256, bicubic), CenterCrop(224), ImageNet mean/std.

The original ``dino_deitsmall16_pretrain.pth`` loads as is: DINO's backbone uses timm's parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``) and has no head. Full training checkpoints (``teacher``/``student`` with ``backbone.``/``module.`` prefixes
and a projection ``head.``) are reduced to the backbone; timm's ``vit_small_patch16_224.dino`` safetensors also load.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Unpack

import timm
import torch

from videobench.metrics.base import MetricInput
from videobench.metrics.model_metric import ModelBuilder, ModelMetric, WeightsStamp
from videobench.metrics.preprocess import (
    DINO_PREPROCESS,
    Preprocess,
    embed_images,
    frames_to_tensor,
    image_to_tensor,
    seeded,
)
from videobench.weights import (
    WeightsConfig,
    build_loaded,
    load_state_dict,
    strip_prefixes,
)

DINO_ARCH = "vit_small_patch16_224"


def dino_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original DINO / timm checkpoint keys -> timm ``vit_small_patch16_224(num_classes=0)`` keys."""
    state = strip_prefixes(raw, ("module.", "backbone."))
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def build_dino_model(
    weights: str | Path | None = None, seed: int = 0, **model_kwargs: Any
) -> torch.nn.Module:
    """timm ViT-S/16 without classifier; loaded from ``weights`` (strictly) when given, else seeded random init.

    ``model_kwargs`` override timm's architecture (tests use a shallow model); they are part of the config.
    """
    def factory() -> torch.nn.Module:
        return timm.create_model(DINO_ARCH, pretrained=False, num_classes=0, **model_kwargs)

    if weights is not None:
        return build_loaded(factory, dino_state_dict(load_state_dict(weights)), weights).eval()
    with seeded(seed):
        return factory().eval()


class DinoMetric(ModelMetric):
    """The ``dino`` family: ``dino_i``."""

    family = "dino"
    columns = ("dino_i",)

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int = 64,
        preprocess: Preprocess = DINO_PREPROCESS,
        model_kwargs: dict[str, Any] | None = None,
        **stamp: Unpack[WeightsStamp],
    ) -> None:
        super().__init__(model, **stamp)
        self.batch_size, self.preprocess = batch_size, preprocess
        self.model_kwargs = dict(model_kwargs or {})

    @classmethod
    def _model_builder(cls, weights: WeightsConfig, kwargs: dict[str, Any]) -> ModelBuilder:
        """``kwargs["model_kwargs"]`` (timm architecture overrides) shape the network and stay in the config."""
        return functools.partial(build_dino_model, **(kwargs.get("model_kwargs") or {}))

    def config(self) -> dict[str, Any]:
        config = {**self._base_config(f"timm:{DINO_ARCH}"), "preprocess": self.preprocess.config()}
        if self.model_kwargs:
            config["model_kwargs"] = self.model_kwargs
        return config

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 -> ``(N, D)`` unit-norm DINO CLS features (float32)."""
        return embed_images(
            self.model, frames, self.preprocess, batch_size=self.batch_size, device=self.device, dtype=self.dtype
        )

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """``dino_i`` (mean cosine over all (reference, frame) pairs) plus ``num_frames`` / ``num_references``."""
        self._check_columns(columns)
        if not sample.references:
            raise ValueError("dino_i needs at least one reference image")
        frames = frames_to_tensor(sample.frames)
        if len(frames) == 0:
            raise ValueError("no frames to score")
        image = self.embed_frames(frames)
        refs = torch.cat([self.embed_frames(image_to_tensor(ref)) for ref in sample.references])
        return {
            "dino_i": (refs @ image.T).mean().item(),
            "num_frames": float(len(frames)),
            "num_references": float(len(refs)),
        }
