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
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch

from videobench.metrics.base import MetricInput
from videobench.metrics.preprocess import (
    CLIP_PREPROCESS,
    Preprocess,
    check_precision,
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
    check_weights,
    resolve_weights,
    sha256_file,
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
            raise WeightsLoadError(f"{weights}: cannot load into open_clip {model_name}: {error}") from error
    return model.eval()


class ClipMetric:
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
        weights_sha256: str | None = None,
        random_weights: bool = False,
        device: str = "cpu",
        dtype: str = "fp32",
        batch_size: int = 64,
        preprocess: Preprocess = CLIP_PREPROCESS,
        seed: int = 0,
    ) -> None:
        if weights_sha256 is None and not random_weights:
            raise ValueError("a ClipMetric needs the weights' sha256, or random_weights=True")
        check_precision(device, dtype)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name, self.pretrained = model_name, pretrained
        self.weights_sha256 = weights_sha256
        self.random_weights, self.seed = random_weights, seed
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.preprocess = preprocess

    @classmethod
    def from_weights(
        cls,
        weights: WeightsConfig,
        device: str = "cpu",
        dtype: str = "fp32",
        random_weights: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> ClipMetric:
        """Build from :class:`~videobench.weights.WeightsConfig` (resolving the file), or randomly when asked."""
        model_name = weights.clip_model
        if random_weights:
            model, sha = build_clip_model(model_name, None, seed), None
        else:
            check_weights(["clip"], weights)
            path = resolve_weights("clip", weights).path
            model, sha = build_clip_model(model_name, path), sha256_file(path)
        return cls(
            model,
            open_clip.get_tokenizer(model_name),
            model_name=model_name,
            pretrained="random" if random_weights else weights.clip_pretrained,
            weights_sha256=sha,
            random_weights=random_weights,
            device=device,
            dtype=dtype,
            seed=seed,
            **kwargs,
        )

    def config(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model": f"open_clip:{self.model_name}",
            "pretrained": self.pretrained,
            "weights_sha256": f"random(seed={self.seed})" if self.random_weights else self.weights_sha256,
            "preprocess": self.preprocess.config(),
            "dtype": self.dtype,
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
        columns = tuple(columns or self.columns)
        unknown = set(columns) - set(self.columns)
        if unknown:
            raise ValueError(f"the clip family does not compute {sorted(unknown)}")
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
