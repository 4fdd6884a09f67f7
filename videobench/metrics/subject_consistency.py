"""Subject consistency, as VBench computes it (``vbench/subject_consistency.py``): opt-in, beyond the paper.

For a video of frames ``f_0 .. f_{T-1}`` with DINO ViT-B/16 features ``phi`` (CLS token, L2-normalised)::

    S = 1/(T-1) * sum_{t=1}^{T-1} ( max(0, cos(phi(f_{t-1}), phi(f_t))) + max(0, cos(phi(f_0), phi(f_t))) ) / 2

so a video whose subject keeps its look, frame to frame and against the first frame, scores 1. What VBench does,
step by step, and what this module does the same way:

* frames: ``load_video`` turns the decoded uint8 frames into a float32 tensor (``torch.Tensor(frames)``), and
  ``dino_transform(224)`` resizes that float tensor (short side to 224, long side ``int(224 * long / short)``,
  bilinear, no antialiasing), divides by 255 and applies the ImageNet mean/std (:func:`vbench_dino_transform`);
* the network: ``torch.hub.load("facebookresearch/dino", "dino_vitb16")``, DINO's own ``VisionTransformer``
  (``vision_transformer.py``): its stride-16 patch convolution drops the pixels past the last whole patch (a
  224x298 frame gives 14x18 patches), and ``interpolate_pos_encoding`` stretches the 14x14 position embeddings
  by the scale factor ``(n + 0.1) / 14`` per axis with plain bicubic interpolation
  (:func:`~videobench.metrics.dino_vit.interpolate_pos_encoding`) unless the frame is square with 14x14 patches.
  :class:`~videobench.metrics.dino_vit.DinoViT` runs timm's ViT-B/16 modules (the same weights:
  ``dino_vitbase16_pretrain.pth`` or timm's ``vit_base_patch16_224.dino``) in that order.
* the overall score: VBench divides the sum of every frame pair's value over all videos by the number of pairs
  (``sim / cnt``), so a longer video weighs more. ``subject_consistency`` is the mean over videos (each video
  counts once, like the other columns); ``subject_consistency_vbench`` holds the same per-video value and is
  averaged with the weights ``sc_num_pairs`` (``T - 1``), which is VBench's overall. Both are on the leaderboard.

Enable it with ``videobench score --metrics ...,subject_consistency``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from videobench.metrics.base import MetricInput
from videobench.metrics.dino import build_dino_model, check_vit_kwargs
from videobench.metrics.model_metric import ModelBuilder, ModelMetric, WeightsStamp, with_weights_option
from videobench.metrics.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    embed_distinct,
    frames_to_tensor,
    precision_context,
)
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec

# imported on first use: describing the family (options, weights) needs no torch
if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F

    from videobench.metrics import dino_vit
    from videobench.metrics.dino_vit import DinoViT
else:
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")
    dino_vit = lazy_module("videobench.metrics.dino_vit")

SUBJECT_ARCH = "vit_base_patch16_224.dino"
#: VBench's ``dino_transform(224)``: the short side's length.
VBENCH_DINO_SIZE = 224
_DINO_B16_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"


def subject_consistency(features: torch.Tensor) -> float:
    """VBench's per-video score from ``(T, D)`` L2-normalised frame features (see the module docstring)."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"subject consistency needs (T >= 2, D) features, got {tuple(features.shape)}")
    features = features.double()
    to_previous = (features[1:] * features[:-1]).sum(-1).clamp_min(0.0)
    to_first = (features[1:] * features[:1]).sum(-1).clamp_min(0.0)
    return float(((to_previous + to_first) / 2).mean())


def vbench_overall(scores: list[float], num_pairs: list[int]) -> float:
    """VBench's overall score: every frame pair of every video counts once (``sim / cnt``), i.e. the per-video
    scores weighted by their ``T - 1`` pairs."""
    if len(scores) != len(num_pairs) or not scores or min(num_pairs) < 1:
        raise ValueError("vbench_overall needs one positive pair count per video score")
    return sum(score * pairs for score, pairs in zip(scores, num_pairs)) / sum(num_pairs)


def vbench_dino_transform(frames: torch.Tensor, size: int = VBENCH_DINO_SIZE) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 -> VBench's ``dino_transform(size)`` of the float frames ``load_video`` makes."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    resized = TF.resize(frames.float(), [size], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return TF.normalize(resized / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))


def build_dino_vit(weights: str | Path | None = None, seed: int = 0, **model_kwargs: Any) -> DinoViT:
    """DINO ViT-B/16 (timm's modules, DINO's forward) loaded from ``weights`` or seeded random."""
    return dino_vit.DinoViT(build_dino_model(weights, seed, arch=SUBJECT_ARCH, **model_kwargs)).eval()


@dataclass(frozen=True)
class SubjectConsistencyOptions:
    """Options of the ``subject_consistency`` family."""

    weights: Path | None = option(None, "dino_vitbase16_pretrain.pth or timm's vit_base_patch16_224.dino "
                                        "safetensors (else the weights folder or caches)")
    batch_size: int = option(32, "frames per forward pass", minimum=1)
    model_kwargs: dict = option(default_factory=dict, help="timm architecture overrides (tests: a shallow model)")

    def __post_init__(self) -> None:
        check_vit_kwargs(self.model_kwargs)


@register_metric
class SubjectConsistencyMetric(ModelMetric):
    """The ``subject_consistency`` family (opt-in): VBench's subject consistency with DINO ViT-B/16."""

    family = "subject_consistency"
    description = "VBench subject consistency: DINO ViT-B/16 cosine of each frame to the previous and the first"
    column_specs = (
        ColumnSpec("subject_consistency", "Subj.Cons", "VBench subject consistency (DINO ViT-B/16, frame to "
                   "previous and to first frame), mean over videos", order=60),
        ColumnSpec("subject_consistency_vbench", "Subj.Cons (VBench)", "the same per video, weighted by its frame "
                   "pairs as VBench's overall score", order=61, weight="sc_num_pairs"),
    )
    Options = SubjectConsistencyOptions
    default = False

    def __init__(self, model: torch.nn.Module, *, batch_size: int = 32, model_kwargs: dict[str, Any] | None = None,
                 **stamp: Unpack[WeightsStamp]) -> None:
        super().__init__(model, **stamp)
        self.batch_size = batch_size
        self.model_kwargs = dict(model_kwargs or {})

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
        return functools.partial(build_dino_vit, **options.model_kwargs)

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: SubjectConsistencyOptions, stamp: WeightsStamp
                    ) -> SubjectConsistencyMetric:
        return cls(model, batch_size=options.batch_size, model_kwargs=options.model_kwargs, **stamp)

    def config(self) -> dict[str, Any]:
        config = {**self._base_config(f"timm:{SUBJECT_ARCH}"),
                  "preprocess": f"vbench dino_transform({VBENCH_DINO_SIZE}) on float frames",
                  "forward": "dino VisionTransformer (patch crop, interpolate_pos_encoding +0.1 bicubic)",
                  "rule": "vbench: mean over t>=1 of (max(0,cos(t-1,t)) + max(0,cos(0,t))) / 2"}
        if self.model_kwargs:
            config["model_kwargs"] = self.model_kwargs
        return config

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 -> ``(N, D)`` L2-normalised float32 DINO CLS features (a repeated frame once:
        :func:`~videobench.metrics.preprocess.embed_distinct`)."""
        def embed(images: torch.Tensor) -> torch.Tensor:
            outputs = []
            with torch.inference_mode(), precision_context(self.device, self.dtype):
                for chunk in torch.split(images, self.batch_size):
                    outputs.append(self.model(vbench_dino_transform(chunk.to(self.device))).float())
            return F.normalize(torch.cat(outputs), dim=-1)

        return embed_distinct(frames, embed)

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        columns = self._check_columns(columns)
        frames = frames_to_tensor(sample.frames)
        if len(frames) < 2:
            raise ValueError(f"subject consistency needs at least 2 frames, got {len(frames)}")
        value = subject_consistency(self.embed_frames(frames).cpu())
        return {**{column: value for column in columns}, "sc_num_pairs": float(len(frames) - 1)}
