"""CLIP-T, CLIP-I and T.Cons from one CLIP image pass over the video (open_clip).

Definitions, as in the subject-driven video literature (the paper, section 6; DreamBooth; VBench):

* CLIP-T  = 1/T * sum_t cos(E_img(f_t), E_txt(prompt))                 -- text alignment, over all frames;
* CLIP-I  = 1/(R*T) * sum_r sum_t cos(E_img(ref_r), E_img(f_t))        -- subject fidelity, all (ref, frame) pairs;
* T.Cons  = 1/(T-1) * sum_t cos(E_img(f_t), E_img(f_{t+1}))            -- temporal consistency.

The default model is ViT-B/32 with OpenAI's weights, built as open_clip ``ViT-B-32-quickgelu`` (OpenAI's towers use
QuickGELU). Images are preprocessed as open_clip does (short side to 224 bicubic, center crop 224, CLIP mean/std),
batched on the device (:mod:`videobench.metrics.preprocess`). Values are raw cosines in [-1, 1].
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Unpack

import open_clip
import torch

from videobench.metrics.base import MetricInput
from videobench.metrics.model_metric import ModelBuilder, ModelMetric, WeightsStamp
from videobench.metrics.preprocess import (
    CLIP_PREPROCESS,
    Preprocess,
    embed_images,
    frames_to_tensor,
    image_to_tensor,
    precision_context,
    seeded,
)
from videobench.weights import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    WeightsConfig,
    WeightsLoadError,
    describe_load_error,
)

CLIP_COLUMNS = ("clip_t", "clip_i", "t_cons")


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded" warning: we load (or stamp random) weights ourselves."""

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_clip_model(
    model_name: str = DEFAULT_CLIP_MODEL, weights: str | Path | None = None, seed: int = 0
) -> torch.nn.Module:
    """An open_clip model, random-initialised with ``seed`` and then loaded from ``weights`` when given.

    ``weights`` is an open_clip / OpenAI state dict (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)`` by open_clip's own :func:`open_clip.load_checkpoint`).
    """
    with _quiet_open_clip(), seeded(seed):
        model = open_clip.create_model(model_name, pretrained=None)
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
        except Exception as error:
            raise WeightsLoadError(
                f"{weights}: cannot load into open_clip {model_name}: {describe_load_error(error)}"
            ) from error
    return model.eval()


class ClipMetric(ModelMetric):
    """The ``clip`` family: ``clip_t``, ``clip_i`` and ``t_cons`` from one image-embedding pass."""

    family = "clip"
    columns = CLIP_COLUMNS

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str = DEFAULT_CLIP_MODEL,
        pretrained: str = DEFAULT_CLIP_PRETRAINED,
        batch_size: int = 64,
        preprocess: Preprocess = CLIP_PREPROCESS,
        **stamp: Unpack[WeightsStamp],
    ) -> None:
        super().__init__(model, **stamp)
        self.tokenizer = tokenizer
        self.model_name, self.pretrained = model_name, pretrained
        self.batch_size, self.preprocess = batch_size, preprocess

    @classmethod
    def _model_builder(cls, weights: WeightsConfig, kwargs: dict[str, Any]) -> ModelBuilder:
        return functools.partial(build_clip_model, weights.clip_model)

    @classmethod
    def _from_model(
        cls, model: torch.nn.Module, weights: WeightsConfig, stamp: WeightsStamp, **kwargs: Any
    ) -> ClipMetric:
        """Add the model's tokenizer and names; ``pretrained`` reads ``random`` for random weights."""
        pretrained = "random" if stamp["random_weights"] else weights.clip_pretrained
        return cls(
            model, open_clip.get_tokenizer(weights.clip_model),
            model_name=weights.clip_model, pretrained=pretrained, **stamp, **kwargs,
        )

    def config(self) -> dict[str, Any]:
        return {
            **self._base_config(f"open_clip:{self.model_name}"),
            "pretrained": self.pretrained,
            "preprocess": self.preprocess.config(),
        }

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 -> ``(N, D)`` unit-norm CLIP image embeddings (float32)."""
        return embed_images(
            self.model.encode_image, frames, self.preprocess,
            batch_size=self.batch_size, device=self.device, dtype=self.dtype,
        )

    def embed_text(self, prompt: str) -> torch.Tensor:
        """``(D,)`` unit-norm CLIP text embedding of ``prompt`` (float32)."""
        tokens = self.tokenizer([prompt]).to(self.device)
        with torch.inference_mode(), precision_context(self.device, self.dtype):
            text = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(text, dim=-1)[0]

    # -- the metric ---------------------------------------------------------------------------------------
    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """Raw cosines for ``columns`` (default all three) plus ``num_frames`` / ``num_references``."""
        columns = self._check_columns(columns)
        frames = frames_to_tensor(sample.frames)
        if len(frames) == 0:
            raise ValueError("no frames to score")
        out: dict[str, float] = {"num_frames": float(len(frames))}
        image = self.embed_frames(frames)
        if "clip_t" in columns:
            out["clip_t"] = (image @ self.embed_text(sample.prompt)).mean().item()
        if "clip_i" in columns:
            if not sample.references:
                raise ValueError("clip_i needs at least one reference image")
            refs = torch.cat([self.embed_frames(image_to_tensor(ref)) for ref in sample.references])
            out["clip_i"] = (refs @ image.T).mean().item()
            out["num_references"] = float(len(refs))
        if "t_cons" in columns:
            if len(image) < 2:
                raise ValueError(f"t_cons needs at least 2 frames, got {len(image)}")
            out["t_cons"] = (image[1:] * image[:-1]).sum(-1).mean().item()
        return out
