"""Subject consistency, as VBench computes it (``vbench/subject_consistency.py``): opt-in, beyond the paper.

For a video of frames ``f_0 .. f_{T-1}`` with DINO ViT-B/16 features ``phi`` (CLS token, L2-normalised)::

    S = 1/(T-1) * sum_{t=1}^{T-1} ( max(0, cos(phi(f_{t-1}), phi(f_t))) + max(0, cos(phi(f_0), phi(f_t))) ) / 2

so a video whose subject keeps its look, frame to frame and against the first frame, scores 1. Frames are
preprocessed as VBench's ``dino_transform(224)``: the short side resized to 224 (bilinear, no antialiasing, aspect
kept, no crop), scaled to [0, 1], ImageNet mean/std; the ViT takes the non-square frame (timm's
``dynamic_img_size=True``). VBench loads DINO through ``torch.hub`` (``facebookresearch/dino``, ``dino_vitb16``);
here the same weights (``dino_vitbase16_pretrain.pth`` or timm's ``vit_base_patch16_224.dino``) go into timm's
ViT-B/16. The one difference: the positional embeddings are resampled to the frame's patch grid by timm (bicubic to
the exact grid size) instead of DINO's ``interpolate_pos_encoding`` (bicubic by a scale factor); the two agree up
to interpolation round-off. Enable it with ``videobench score --metrics ...,subject_consistency``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import torch

from videobench.metrics.base import MetricInput
from videobench.metrics.dino import build_dino_model
from videobench.metrics.model_metric import ModelBuilder, ModelMetric, WeightsStamp, with_weights_option
from videobench.metrics.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, embed_images, frames_to_tensor
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.options import option
from videobench.weights import WeightSpec

SUBJECT_ARCH = "vit_base_patch16_224.dino"
#: VBench's ``dino_transform(224)``: short side to 224, bilinear without antialiasing, no crop.
VBENCH_DINO_PREPROCESS = Preprocess(224, None, IMAGENET_MEAN, IMAGENET_STD, interpolation="bilinear",
                                    antialias=False)
_DINO_B16_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"


def subject_consistency(features: torch.Tensor) -> float:
    """VBench's per-video score from ``(T, D)`` L2-normalised frame features (see the module docstring)."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"subject consistency needs (T >= 2, D) features, got {tuple(features.shape)}")
    features = features.double()
    to_previous = (features[1:] * features[:-1]).sum(-1).clamp_min(0.0)
    to_first = (features[1:] * features[:1]).sum(-1).clamp_min(0.0)
    return float(((to_previous + to_first) / 2).mean())


@dataclass(frozen=True)
class SubjectConsistencyOptions:
    """Options of the ``subject_consistency`` family."""

    weights: Path | None = option(None, "dino_vitbase16_pretrain.pth or timm's vit_base_patch16_224.dino "
                                        "safetensors (else the weights folder or caches)")
    batch_size: int = option(32, "frames per forward pass", minimum=1)
    model_kwargs: dict = option(default_factory=dict, help="timm architecture overrides (tests: a shallow model)")


@register_metric
class SubjectConsistencyMetric(ModelMetric):
    """The ``subject_consistency`` family (opt-in): VBench's subject consistency with DINO ViT-B/16."""

    family = "subject_consistency"
    description = "VBench subject consistency: DINO ViT-B/16 cosine of each frame to the previous and the first"
    column_specs = (
        ColumnSpec("subject_consistency", "Subj.Cons", "VBench subject consistency (DINO ViT-B/16, frame to "
                   "previous and to first frame)", order=60),
    )
    Options = SubjectConsistencyOptions
    default = False

    def __init__(self, model: torch.nn.Module, *, batch_size: int = 32, model_kwargs: dict[str, Any] | None = None,
                 **stamp: Unpack[WeightsStamp]) -> None:
        super().__init__(model, **stamp)
        self.batch_size = batch_size
        self.model_kwargs = dict(model_kwargs or {})
        self.preprocess = VBENCH_DINO_PREPROCESS

    @classmethod
    def weight_specs(cls, options: SubjectConsistencyOptions) -> list[WeightSpec]:
        spec = WeightSpec(
            key=cls.weight_key, model="DINO ViT-B/16 (timm vit_base_patch16_224)",
            file_names=("dino_vitbase16_pretrain.pth", "dino_vitb16.safetensors"),
            hf_repo="timm/vit_base_patch16_224.dino", hf_files=("model.safetensors", "pytorch_model.bin"),
            url=_DINO_B16_URL, formats="the original DINO release (.pth) or timm's safetensors",
        )
        return [with_weights_option(spec, options, cls.family)]

    @classmethod
    def _model_builder(cls, options: SubjectConsistencyOptions) -> ModelBuilder:
        return functools.partial(build_dino_model, arch=SUBJECT_ARCH, dynamic_img_size=True, **options.model_kwargs)

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: SubjectConsistencyOptions, stamp: WeightsStamp
                    ) -> SubjectConsistencyMetric:
        return cls(model, batch_size=options.batch_size, model_kwargs=options.model_kwargs, **stamp)

    def config(self) -> dict[str, Any]:
        config = {**self._base_config(f"timm:{SUBJECT_ARCH}"), "preprocess": self.preprocess.config(),
                  "rule": "vbench: mean over t>=1 of (max(0,cos(t-1,t)) + max(0,cos(0,t))) / 2"}
        if self.model_kwargs:
            config["model_kwargs"] = self.model_kwargs
        return config

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        self._check_columns(columns)
        frames = frames_to_tensor(sample.frames)
        if len(frames) < 2:
            raise ValueError(f"subject consistency needs at least 2 frames, got {len(frames)}")
        features = embed_images(self.model, frames, self.preprocess, batch_size=self.batch_size,
                                device=self.device, dtype=self.dtype)
        return {"subject_consistency": subject_consistency(features.cpu())}
