"""Stage 1, video quality (Appendix A, first stage): resolution, aesthetic score, motion score, temporal consistency.

A clip is kept when, in this order (the first failing check is the drop reason):

1. ``resolution``: the short side is at least ``min_short_side`` pixels (1080 for "1080p"), read from the stream
   header without decoding;
2. ``too_short``: the video has the frames the target clip needs (``start + (num_frames - 1) * interval + 1``);
3. ``aesthetic``: the LAION improved aesthetic predictor (an MLP on L2-normalised CLIP ViT-L/14 image embeddings,
   ``sac+logos+ava1-l14-linearMSE``) averaged over the sampled frames is at least ``min_aesthetic`` (5.3);
4. ``static``: the motion score, the mean optical-flow magnitude (RAFT, pixels at a short side of
   ``flow_short_side``) between consecutive sampled frames, is at least ``min_motion``;
5. ``temporal_consistency``: the smallest CLIP cosine similarity of consecutive sampled frames is at least
   ``min_temporal_consistency`` (a cut or a flicker shows up as one low cosine).

The sampled frames are exactly the frames the target clip will use (``ClipWindow``), so the filter judges what the
trainer sees. The CLIP embeddings are computed once and serve both the aesthetic score and temporal consistency.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from customvideox.curation.manifest import Decision
from customvideox.curation.models import AESTHETIC, CLIP_L14, check_models
from mediaio.video import VideoError, VideoInfo, probe_video  # noqa: F401 (probe_video re-exported)

# ------------------------------------------------------------------------------------------------- video access


@dataclass(frozen=True)
class ClipWindow:
    """Which frames become the target clip: ``start + k * interval`` for ``k < num_frames`` (section 6.1: 25, 3).

    ``start`` is 1 by default: the reference image comes from frame 0 and the target clip is the frames after it.
    """

    num_frames: int = 25
    interval: int = 3
    start: int = 1

    def indices(self) -> list[int]:
        return [self.start + k * self.interval for k in range(self.num_frames)]

    @property
    def frames_needed(self) -> int:
        return self.start + (self.num_frames - 1) * self.interval + 1


def read_frames(path: str | os.PathLike, indices: Sequence[int], short_side: int | None = None) -> np.ndarray:
    """Decode only the frames at ``indices``, returned in ascending index order (duplicates once), uint8 RGB.

    ``short_side`` downsizes while decoding (swscale) so that 1080p sources never sit in memory at full size.

    Raises:
        VideoError: naming the file when it cannot be decoded or holds fewer frames than asked for.
    """
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        raise ValueError("read_frames needs at least one frame index")
    wanted_set, last = set(wanted), wanted[-1]
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted_set:
                    if short_side and min(frame.height, frame.width) > short_side:
                        scale = short_side / min(frame.height, frame.width)
                        frame = frame.reformat(width=max(2, round(frame.width * scale)),
                                               height=max(2, round(frame.height * scale)))
                    out[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
    except (av.FFmpegError, ValueError, OSError, IndexError) as error:
        raise VideoError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error
    if len(out) < len(wanted):
        raise VideoError(f"{path}: {len(out)} of the {len(wanted)} wanted frames decoded (last wanted {last})")
    return np.stack([out[i] for i in wanted])


# ------------------------------------------------------------------------------------------------- interfaces


@runtime_checkable
class ImageEmbedder(Protocol):
    """Frames ``(N, H, W, 3)`` uint8 -> L2-normalised image embeddings ``(N, D)`` (D = 768 for ViT-L/14)."""

    random_weights: bool

    def embed(self, frames: np.ndarray) -> torch.Tensor: ...


@runtime_checkable
class MotionScorer(Protocol):
    """Frames ``(N, H, W, 3)`` uint8 -> one motion score (mean flow magnitude between consecutive frames)."""

    random_weights: bool

    def score(self, frames: np.ndarray) -> float: ...


#: ``flow_fn(first, second)``: two ``(N, H, W, 3)`` uint8 batches -> flow ``(N, 2, H, W)`` in pixels.
FlowFn = Callable[[np.ndarray, np.ndarray], torch.Tensor]


# ------------------------------------------------------------------------------------------------- aesthetic


class AestheticMLP(nn.Module):
    """The head of the LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor).

    Linear 768->1024->128->64->16->1 with dropouts 0.2, 0.2, 0.1 and no activations, exactly as the original
    ``MLP.layers`` (so its state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}`` load as they are). Its input is the
    L2-normalised CLIP ViT-L/14 image embedding; its output is the predicted mean rating on a 1-10 scale.
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def load_aesthetic_mlp(path: str | os.PathLike, input_size: int = 768) -> AestheticMLP:
    """Build :class:`AestheticMLP` and load ``path`` (``.pth`` via ``torch.load(weights_only=True)`` or safetensors).

    Raises:
        videobench.weights.WeightsLoadError: naming the file when it does not hold this MLP's state dict.
    """
    from videobench.weights import load_into, load_state_dict, strip_prefixes

    state = strip_prefixes(load_state_dict(path), ("module.",))
    mlp = AestheticMLP(input_size)
    load_into(mlp, state, path)
    return mlp.eval()


# ------------------------------------------------------------------------------------------------- CLIP


class OpenClipEmbedder:
    """CLIP image embeddings with an open_clip model (default ``ViT-L-14-quickgelu``, OpenAI weights).

    Preprocessing and batching are videobench's (:func:`videobench.metrics.preprocess.embed_images` with the CLIP
    transform), so the curation and the benchmark embed frames identically.
    """

    def __init__(self, model: nn.Module, device: str = "cpu", batch_size: int = 32,
                 random_weights: bool = False) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.random_weights = random_weights

    @classmethod
    def from_path(cls, path: str | os.PathLike | None, model_name: str = "ViT-L-14-quickgelu", device: str = "cpu",
                  random_weights: bool = False, **kwargs: Any) -> OpenClipEmbedder:
        """Load an open_clip state dict from ``path`` (strict); ``random_weights`` builds a seeded random model."""
        from videobench.metrics.clip import build_clip_model

        if path is None and not random_weights:
            raise ValueError("OpenClipEmbedder.from_path needs a weights path or random_weights=True")
        model = build_clip_model(model_name, weights=None if random_weights else path)
        return cls(model, device=device, random_weights=random_weights, **kwargs)

    def embed(self, frames: np.ndarray) -> torch.Tensor:
        from videobench.metrics.preprocess import CLIP_PREPROCESS, embed_images, frames_to_tensor

        return embed_images(self.model.encode_image, frames_to_tensor(frames), CLIP_PREPROCESS,
                            batch_size=self.batch_size, device=self.device, dtype="fp32").cpu()


class AestheticPredictor:
    """Aesthetic score of frames: :class:`AestheticMLP` on their normalised CLIP ViT-L/14 embeddings."""

    def __init__(self, mlp: AestheticMLP, random_weights: bool = False) -> None:
        self.mlp = mlp.eval()
        self.random_weights = random_weights

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.normalize(embeddings.float(), dim=-1))


def temporal_consistency(embeddings: torch.Tensor) -> tuple[float, float]:
    """(min, mean) cosine similarity of consecutive frame embeddings (VBench-style CLIP temporal consistency)."""
    if len(embeddings) < 2:
        return 1.0, 1.0
    emb = F.normalize(embeddings.float(), dim=-1)
    cosines = (emb[1:] * emb[:-1]).sum(-1)
    return float(cosines.min()), float(cosines.mean())


# ------------------------------------------------------------------------------------------------- motion


def _resize_for_flow(frames: np.ndarray, short_side: int) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, h, w)`` float in [0, 255], short side ``short_side``, sides multiples of 8."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    scale = short_side / min(x.shape[-2:])
    size = [max(8, int(round(s * scale / 8)) * 8) for s in x.shape[-2:]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class FlowMotionScorer:
    """Motion score = mean optical-flow magnitude (pixels at short side ``flow_short_side``) over consecutive frames.

    The flow comes from ``flow_fn`` (RAFT by default, see :func:`raft_flow_fn`); frames are resized before the flow
    so that the score does not depend on the source resolution.
    """

    def __init__(self, flow_fn: FlowFn, flow_short_side: int = 256, batch_size: int = 8,
                 random_weights: bool = False) -> None:
        self.flow_fn = flow_fn
        self.flow_short_side = flow_short_side
        self.batch_size = batch_size
        self.random_weights = random_weights

    @torch.no_grad()
    def score(self, frames: np.ndarray) -> float:
        if len(frames) < 2:
            return 0.0
        x = _resize_for_flow(frames, self.flow_short_side).round().clamp(0, 255).to(torch.uint8)
        x = x.permute(0, 2, 3, 1).numpy()
        magnitudes = []
        for start in range(0, len(x) - 1, self.batch_size):
            first = x[start:start + self.batch_size][: len(x) - 1 - start]
            second = x[start + 1:start + 1 + len(first)]
            flow = torch.as_tensor(self.flow_fn(first, second)).float()
            magnitudes.append(flow.norm(dim=1).flatten(1).mean(1))
        return float(torch.cat(magnitudes).mean())


def raft_flow_fn(weights: str | os.PathLike | None, device: str = "cpu", random_weights: bool = False,
                 num_flow_updates: int = 20) -> FlowFn:
    """A :data:`FlowFn` over videobench's RAFT-large (:mod:`videobench.metrics.dynamic`: torchvision ``raft_large``,
    either checkpoint format, the final flow of 20 updates, frames padded as RAFT's ``InputPadder``)."""
    from videobench.metrics.dynamic import build_raft_model, pad_for_raft, raft_final_flow

    if weights is None and not random_weights:
        raise ValueError("raft_flow_fn needs a weights path or random_weights=True")
    model = build_raft_model(None if random_weights else weights).to(device)

    @torch.inference_mode()
    def flow_fn(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        def prep(images: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().to(device)
            return pad_for_raft(x / 127.5 - 1.0)  # RAFT expects [-1, 1]

        return raft_final_flow(model, prep(first), prep(second), num_flow_updates).cpu()

    return flow_fn


# ------------------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class QualityConfig:
    """Stage-1 thresholds (Appendix A): 1080p, aesthetic >= 5.3; motion and consistency thresholds are ours."""

    min_short_side: int = 1080
    min_aesthetic: float = 5.3
    min_motion: float = 0.5
    min_temporal_consistency: float = 0.85
    flow_short_side: int = 256
    decode_short_side: int = 448  # frames are decoded at this short side for CLIP and flow (both resize further)


class QualityFilter:
    """Decides one clip: ``assess(path) -> Decision`` with the measured values as manifest columns."""

    stage = "quality"

    def __init__(self, embedder: ImageEmbedder, aesthetic: Callable[[torch.Tensor], torch.Tensor],
                 motion: MotionScorer, config: QualityConfig = QualityConfig(),
                 window: ClipWindow = ClipWindow()) -> None:
        self.embedder = embedder
        self.aesthetic = aesthetic
        self.motion = motion
        self.config = config
        self.window = window

    @property
    def random_weights(self) -> bool:
        return any(getattr(m, "random_weights", False) for m in (self.embedder, self.aesthetic, self.motion))

    def assess(self, path: str | os.PathLike) -> Decision:
        cfg = self.config
        try:
            info = probe_video(path)
        except VideoError as error:
            return Decision.drop("unreadable", str(error))
        values: dict[str, Any] = {"height": info.height, "width": info.width, "num_frames": info.num_frames,
                                  "fps": info.fps}
        if info.short_side < cfg.min_short_side:
            return Decision.drop("low_resolution", f"{info.height}x{info.width}: short side {info.short_side} px "
                                 f"< {cfg.min_short_side} px", **values)
        if info.num_frames < self.window.frames_needed:
            return Decision.drop("too_short", f"{info.num_frames} frames < {self.window.frames_needed} needed for "
                                 f"{self.window.num_frames} frames at an interval of {self.window.interval}", **values)
        try:
            frames = read_frames(path, self.window.indices(), short_side=cfg.decode_short_side)
        except VideoError as error:
            return Decision.drop("unreadable", str(error), **values)
        embeddings = self.embedder.embed(frames)
        values["aesthetic"] = float(self.aesthetic(embeddings).mean())
        if values["aesthetic"] < cfg.min_aesthetic:
            return Decision.drop("aesthetic", f"aesthetic score {values['aesthetic']:.3f} < {cfg.min_aesthetic}",
                                 **values)
        values["motion"] = self.motion.score(frames)
        if values["motion"] < cfg.min_motion:
            return Decision.drop("static", f"motion score {values['motion']:.3f} px < {cfg.min_motion} px", **values)
        values["temporal_consistency"], values["temporal_consistency_mean"] = temporal_consistency(embeddings)
        if values["temporal_consistency"] < cfg.min_temporal_consistency:
            return Decision.drop("temporal_consistency", f"lowest consecutive-frame CLIP cosine "
                                 f"{values['temporal_consistency']:.3f} < {cfg.min_temporal_consistency} "
                                 "(a cut or flicker)", **values)
        return Decision.keep(**values)


def build_quality_filter(weights_dir: str | os.PathLike | None = None, *, clip_weights: str | None = None,
                         aesthetic_weights: str | None = None, raft_weights: str | None = None,
                         clip_model: str = "ViT-L-14-quickgelu", flow_fn: FlowFn | None = None,
                         config: QualityConfig = QualityConfig(), window: ClipWindow = ClipWindow(),
                         device: str = "cpu", random_weights: bool = False) -> QualityFilter:
    """The paper's stage 1 with real models from paths (or random-initialised ones behind ``random_weights``).

    Raises:
        videobench.weights.MissingWeightsError: naming each missing model file and where it goes.
    """
    if random_weights:
        embedder = OpenClipEmbedder.from_path(None, clip_model, device=device, random_weights=True)
        aesthetic = AestheticPredictor(AestheticMLP(), random_weights=True)
        if flow_fn is None:
            flow_fn = raft_flow_fn(None, device=device, random_weights=True)
    else:
        found = check_models([(CLIP_L14, clip_weights), (AESTHETIC, aesthetic_weights)], weights_dir)
        if flow_fn is None:
            flow_fn = raft_flow_fn(_resolve_raft(weights_dir, raft_weights), device=device)
        embedder = OpenClipEmbedder.from_path(found["clip"], clip_model, device=device)
        aesthetic = AestheticPredictor(load_aesthetic_mlp(found["aesthetic"]))
    motion = FlowMotionScorer(flow_fn, config.flow_short_side, random_weights=random_weights)
    return QualityFilter(embedder, aesthetic, motion, config, window)


def raft_weight_spec(raft_weights: str | os.PathLike | None = None):
    """RAFT-large as videobench's dynamic-degree metric declares it, with ``--raft-weights`` as the explicit file."""
    from videobench.metrics.dynamic import DynamicDegreeMetric, DynamicOptions

    (spec,) = DynamicDegreeMetric.weight_specs(DynamicOptions(weights=Path(raft_weights) if raft_weights else None))
    return dataclasses.replace(spec, option="--raft-weights FILE")


def _resolve_raft(weights_dir: str | os.PathLike | None, raft_weights: str | os.PathLike | None) -> Path:
    """RAFT-large resolved exactly like videobench's dynamic-degree metric (``--raft-weights`` / weights folder)."""
    from videobench.weights import WeightsConfig, check_weights

    resolved = check_weights([raft_weight_spec(raft_weights)], WeightsConfig(weights_dir=weights_dir))
    return next(iter(resolved.values())).path
