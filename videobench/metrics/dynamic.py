"""Dynamic degree (D.D), as VBench computes it (``vbench/dynamic_degree.py``), with batched RAFT-large flow.

Follows VBench v0.1.5 (tag ``v0.1.5``, commit 1039fe66; the file is the same on ``master`` as read at 45e79ec,
2026-03, last changed by f9d345a, 2024-12-31). For one video with frame rate ``fps``:

1. keep every ``max(1, round(fps / 8))``-th frame (Python ``round``: half to even); ``n`` = kept frames
   (VBench ``get_frames``/``extract_frame``; v0.1.1-v0.1.4 had ``round(fps / 8)``: 0, and a crash, at 4 fps and
   below). VBench decodes with OpenCV, this project with PyAV: on the project's mp4s both give the same RGB frames
   (checked with opencv-python-headless 5.0.0 and PyAV 18.1.0);
2. for each consecutive pair of kept frames, RAFT-large optical flow with 20 flow updates (torchvision
   ``raft_large``; its ``C_T_V1`` weights are the original ``raft-things.pth`` VBench loads), on frames padded
   (replicate, centred, as RAFT's ``InputPadder`` in its default ``sintel`` mode) to a multiple of 8; no resize.
   Deviation: frames under 128 px are also padded to 128 px, torchvision's RAFT minimum (VBench's RAFT runs on
   them unpadded); 128 px and larger are padded exactly as VBench;
3. a pair's score is the mean of the largest ``int(0.05 * h * w)`` flow magnitudes ``sqrt(u^2 + v^2)`` over the
   padded ``h x w`` flow field (:func:`flow_pair_score`; VBench ``get_score`` does not unpad);
4. the video is dynamic when at least ``round(4 * n / 16)`` pair scores strictly exceed the threshold
   ``6.0 * min(H, W) / 256``, ``H x W`` the *unpadded* frame size (VBench ``set_params`` and ``check_move``,
   :func:`is_dynamic`). A video with no pair is not dynamic (VBench's loop never returns True).

The threshold rule is selectable (:data:`DYNAMIC_RULES`, the ``rule`` keyword of :class:`DynamicDegreeMetric`):

* ``"vbench"`` (default): ``6.0 * min(H, W) / 256`` at every frame rate, as in every VBench release
  (v0.1.1 to v0.1.5) and on ``master``;
* ``"vbench-2024-fps-scaled"``: ``max(1, 8 / fps)`` times that, which VBench had on ``master`` for ten days only
  (commit 11abda9 "[fix] fps<8 bug", 2024-07-03, removed by fc4620b, 2024-07-13, never released). Under 8 fps
  it raises the threshold (6 fps, 240x320: 7.5 instead of 5.625); at 8 fps and above both rules agree.

A method's D.D is the percentage of its videos that are dynamic.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack

import numpy as np

from videobench.metrics.base import MetricInput
from videobench.metrics.model_metric import (
    ModelBuilder,
    ModelMetric,
    WeightsStamp,
    cpu_workers_option,
    with_weights_option,
)
from videobench.metrics.preprocess import distinct_images, frames_to_tensor, precision_context, seeded
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.metrics.workers import SingleThreadWorkers, even_slices, map_pieces, run_all, workers_for
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec, build_loaded, load_state_dict, strip_prefixes

# imported on first use: describing the family (options, weights) needs no torch
if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torchvision.models.optical_flow import RAFT

    from videobench.metrics import raft
else:
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")
    raft = lazy_module("videobench.metrics.raft")

_RAFT_URL = "https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth"
NUM_FLOW_UPDATES = 20
TOP_FRACTION = 0.05
BASE_THRESHOLD = 6.0
MIN_RAFT_SIZE = 128

#: Flow pixels (an eighth of the frame's in each axis) refined together on the Winograd (CPU) path; more pairs run
#: in further chunks, whose buffers stay in this CPU's caches. 16 pairs at 256x320 (1280 flow pixels each): 13.75 s
#: all at once, 12.7-12.9 s 3-4 at a time (medians of 4 interleaved rounds); the smoke size (8 pairs of 384) is one
#: chunk either way.
REFINE_POSITIONS = 4096

#: The threshold rules :func:`dynamic_threshold` knows; the first is the default (see the module docstring).
DYNAMIC_RULES: tuple[str, ...] = ("vbench", "vbench-2024-fps-scaled")
DEFAULT_RULE = DYNAMIC_RULES[0]
#: Where each rule comes from (recorded in :meth:`DynamicDegreeMetric.config`).
RULE_SOURCES: dict[str, str] = {
    "vbench": "VBench v0.1.5 vbench/dynamic_degree.py: thres = 6.0*min(H,W)/256",
    "vbench-2024-fps-scaled": "VBench commit 11abda9 (2024-07, unreleased): thres = max(1,8/fps)*6.0*min(H,W)/256",
}


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`DYNAMIC_RULES`, else a ``ValueError`` naming the accepted ones."""
    if rule not in DYNAMIC_RULES:
        raise ValueError(f"unknown dynamic degree rule {rule!r}; expected one of {', '.join(DYNAMIC_RULES)}")
    return rule


# --- the VBench rule: pure functions ----------------------------------------------------------------------
def frame_interval(fps: float) -> int:
    """``max(1, round(fps / 8))``: VBench samples videos down to about 8 fps."""
    return max(1, round(fps / 8))


def kept_frame_indices(num_frames: int, fps: float) -> list[int]:
    """Indices of the frames the dynamic degree looks at."""
    return list(range(0, num_frames, frame_interval(fps)))


def flow_pair_scores(flows: torch.Tensor) -> torch.Tensor:
    """Batched :func:`flow_pair_score`: ``(B, 2, h, w)`` flows -> ``(B,)`` float64 scores."""
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"expected (B, 2, h, w) flow fields, got {tuple(flows.shape)}")
    h, w = flows.shape[-2:]
    k = int(h * w * TOP_FRACTION)
    if k < 1:
        raise ValueError(f"a {h}x{w} flow field has no top {TOP_FRACTION:.0%} of pixels")
    magnitude = torch.linalg.vector_norm(flows.float(), dim=1).flatten(1)
    return magnitude.topk(k, dim=1).values.double().mean(dim=1)


def flow_pair_score(flow: torch.Tensor | np.ndarray) -> float:
    """Mean of the largest ``int(0.05 * h * w)`` magnitudes of a ``(2, h, w)`` flow field (VBench ``get_score``)."""
    flow = torch.as_tensor(flow)
    if flow.ndim != 3:
        raise ValueError(f"expected a (2, h, w) flow field, got {tuple(flow.shape)}")
    return float(flow_pair_scores(flow[None])[0])


def dynamic_threshold(height: int, width: int, fps: float = 8.0, rule: str = DEFAULT_RULE) -> float:
    """The flow threshold for unpadded ``H x W`` frames: ``6.0 * min(H, W) / 256`` (VBench ``set_params``).

    ``rule="vbench-2024-fps-scaled"`` multiplies it by ``max(1, 8 / fps)``; ``fps`` matters for no other rule.
    """
    factor = max(1.0, 8.0 / fps) if check_rule(rule) == "vbench-2024-fps-scaled" else 1.0
    return factor * BASE_THRESHOLD * min(height, width) / 256.0


def dynamic_count_needed(num_frames: int) -> int:
    """``round(4 * n / 16)`` with Python's half-to-even ``round`` (n = 2 -> 0, 6 -> 2, 10 -> 2, 14 -> 4)."""
    return round(4 * (num_frames / 16.0))


def is_dynamic(
    pair_scores: Sequence[float], num_frames: int, height: int, width: int, fps: float = 8.0,
    rule: str = DEFAULT_RULE,
) -> bool:
    """VBench's ``check_move``: at least ``round(4n/16)`` scores strictly above the threshold (and >= 1 pair)."""
    threshold = dynamic_threshold(height, width, fps, rule)
    over = sum(1 for score in pair_scores if score > threshold)
    return len(pair_scores) > 0 and over >= dynamic_count_needed(num_frames)


# --- RAFT weights ----------------------------------------------------------------------------------------
# Original princeton-vl/RAFT parameter names -> torchvision raft_large names (applied in order, first match).
_ENC = r"^(?P<enc>feature_encoder|context_encoder)\."
_BLOCK = _ENC + r"(?P<layer>layer\d)\.(?P<block>\d)\."
_ORIGINAL_TO_TORCHVISION: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^fnet\.", "feature_encoder."),
        (r"^cnet\.", "context_encoder."),
        (_ENC + r"conv1\.", r"\g<enc>.convnormrelu.0."),
        (_ENC + r"norm1\.", r"\g<enc>.convnormrelu.1."),
        (_ENC + r"conv2\.", r"\g<enc>.conv."),
        (_BLOCK + r"conv(?P<i>[12])\.", r"\g<enc>.\g<layer>.\g<block>.convnormrelu\g<i>.0."),
        (_BLOCK + r"norm(?P<i>[12])\.", r"\g<enc>.\g<layer>.\g<block>.convnormrelu\g<i>.1."),
        (r"^update_block\.encoder\.convc(?P<i>[12])\.", r"update_block.motion_encoder.convcorr\g<i>.0."),
        (r"^update_block\.encoder\.convf(?P<i>[12])\.", r"update_block.motion_encoder.convflow\g<i>.0."),
        (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
        (r"^update_block\.gru\.conv(?P<g>[zrq])(?P<i>[12])\.", r"update_block.recurrent_block.convgru\g<i>.conv\g<g>."),
        (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
        (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
    ]
]
# ``norm3`` is the same module as ``downsample.1`` in the original ResidualBlock, so it is saved twice.
_DUPLICATE_NORM3 = re.compile(_BLOCK + r"norm3\.")


def is_original_raft_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(re.match(r"^(module\.)?(fnet|cnet|update_block\.gru)\.", key) for key in state_dict)


def convert_original_raft_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ``raft-things.pth`` (``module.fnet.conv1.weight``, ...) -> torchvision ``raft_large`` keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in strip_prefixes(state_dict, ("module.",)).items():
        for pattern, replacement in _ORIGINAL_TO_TORCHVISION:
            key = pattern.sub(replacement, key, count=1)
        if _DUPLICATE_NORM3.match(key):
            continue
        out[key] = value
    for key in [k for k in out if k.endswith(".running_mean")]:  # checkpoints older than torch 0.4.1
        out.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0))
    return out


def raft_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either checkpoint format -> torchvision keys."""
    if is_original_raft_state_dict(raw):
        return convert_original_raft_state_dict(raw)
    return strip_prefixes(raw, ("module.",))


def build_raft_model(weights: str | Path | None = None, seed: int = 0) -> torch.nn.Module:
    """torchvision ``raft_large``; loaded strictly from ``weights`` (either format) or seeded random init."""
    from torchvision.models.optical_flow import raft_large

    if weights is not None:
        return build_loaded(raft_large, raft_state_dict(load_state_dict(weights)), weights).eval()
    with seeded(seed):
        return raft_large(weights=None, progress=False).eval()


def raft_final_flow(
    model: RAFT, image1: torch.Tensor, image2: torch.Tensor, num_flow_updates: int = NUM_FLOW_UPDATES
) -> torch.Tensor:
    """The last flow prediction of torchvision's ``RAFT.forward`` (images in [-1, 1], sides multiple of 8).

    ``RAFT.forward`` upsamples the flow after every update (for training losses); inference needs only the last
    one, so this runs the same modules and upsamples once: the same numbers, about a sixth less work.
    """
    fmap1, fmap2 = torch.chunk(model.feature_encoder(torch.cat([image1, image2])), chunks=2, dim=0)
    return _refine_flow(model, fmap1, fmap2, model.context_encoder(image1), num_flow_updates)


def raft_consecutive_flows(
    model: RAFT, frames: torch.Tensor, num_flow_updates: int = NUM_FLOW_UPDATES
) -> torch.Tensor:
    """:func:`raft_final_flow` of every consecutive pair ``frames[i] -> frames[i + 1]`` (``(n - 1, 2, H, W)``).

    A frame is the second image of one pair and the first of the next, so its features are computed once: n
    feature-encoder passes instead of 2(n - 1). RAFT-large's feature encoder normalises per sample (instance norm),
    so the flows are :func:`raft_final_flow`'s on the same pairs.
    """
    return raft_pair_flows(model, frames, [(i, i + 1) for i in range(len(frames) - 1)], num_flow_updates)


def raft_pair_flows(
    model: RAFT, frames: torch.Tensor, pairs: Sequence[tuple[int, int]], num_flow_updates: int = NUM_FLOW_UPDATES,
    winograd_tile: int = 0, workers: SingleThreadWorkers | None = None,
) -> torch.Tensor:
    """:func:`raft_final_flow` of ``frames[i] -> frames[j]`` for each ``(i, j)`` in ``pairs`` (``(len(pairs), 2, H, W)``).

    Each frame a pair names goes through the feature encoder once, and each first frame through the context
    encoder once (:func:`encode_frames`); consecutive pairs ``(i, i + 1)`` are :func:`raft_consecutive_flows`.
    With ``workers`` (CPU, :mod:`videobench.metrics.workers`) the pairs are refined in pieces, one per worker at a
    time; with a positive ``winograd_tile`` a piece holds at most :data:`REFINE_POSITIONS` flow pixels, so that the
    refinement's buffers stay in the caches.
    """
    needed = sorted({index for pair in pairs for index in pair})
    firsts = sorted({i for i, _ in pairs})
    features, contexts = encode_frames(model, frames, needed, firsts, winograd_tile, workers)
    position, context_position = ({index: k for k, index in enumerate(indices)} for indices in (needed, firsts))
    first = torch.tensor([position[i] for i, _ in pairs], device=features.device)
    second = torch.tensor([position[j] for _, j in pairs], device=features.device)
    context = torch.tensor([context_position[i] for i, _ in pairs], device=features.device)
    pieces = count = 1 if workers is None else workers.count
    if winograd_tile > 0:
        per_piece = max(1, REFINE_POSITIONS // ((frames.shape[-2] // 8) * (frames.shape[-1] // 8)))
        pieces = count * -(-len(pairs) // (count * per_piece))
    raft.fused_update(model, winograd_tile)  # built here, once, not by the workers at the same time
    return torch.cat(run_all([functools.partial(_refine_flow, model, features[first[part]], features[second[part]],
                                                contexts[context[part]], num_flow_updates, winograd_tile)
                              for part in even_slices(len(pairs), pieces)], workers))


def encode_frames(model: RAFT, frames: torch.Tensor, feature_indices: Sequence[int],
                  context_indices: Sequence[int], winograd_tile: int = 0, workers: SingleThreadWorkers | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """RAFT's feature maps of ``frames[feature_indices]`` and context maps of ``frames[context_indices]``.

    Both encoders normalise per sample (RAFT-large: instance norm in the feature encoder, batch norm with fixed
    statistics in the context encoder), so a frame's maps do not depend on its batch. With a positive
    ``winograd_tile`` (the CPU path) each frame is encoded on its own, by the channels-last encoders with Winograd
    3x3 convolutions (:func:`videobench.metrics.raft.channels_last_encoders`), on the ``workers``: a frame's
    activations stay in the caches, where a batch's would not (9 frames at 256x320, one thread: the feature encoder
    batched 1.61 s, frame by frame 1.21 s, with Winograd 0.98 s). Otherwise each encoder runs on its whole batch
    (split into one piece per worker). The feature maps are NCHW (for the correlation volume's matrix product)."""
    if winograd_tile <= 0:
        return (torch.cat(map_pieces(model.feature_encoder, frames[list(feature_indices)], workers)).contiguous(),
                torch.cat(map_pieces(model.context_encoder, frames[list(context_indices)], workers)))
    feature_encoder, context_encoder = raft.channels_last_encoders(model, winograd_tile)
    encoded = run_all([functools.partial(encoder, frames[index : index + 1])
                       for encoder, indices in ((feature_encoder, feature_indices), (context_encoder, context_indices))
                       for index in indices], workers)
    return torch.cat(encoded[: len(feature_indices)]).contiguous(), torch.cat(encoded[len(feature_indices) :])


def _refine_flow(model: RAFT, fmap1: torch.Tensor, fmap2: torch.Tensor, context: torch.Tensor,
                 num_flow_updates: int, winograd_tile: int = 0) -> torch.Tensor:
    """RAFT's correlation pyramid and ``num_flow_updates`` GRU refinements from the two images' feature maps and the
    first image's context encoder output; the upsampled last flow.

    The GRU runs as :class:`videobench.metrics.raft.FusedUpdate`: the context's share of its convolutions is
    computed once per pair instead of once per update; the correlation lookup as
    :class:`videobench.metrics.raft.PatchLookup` (one gathered patch and four bilinear weights per centroid). With
    a positive ``winograd_tile`` the refinement's large convolutions are Winograd ones and its tensors channels-last.
    Nothing is stored on ``model``: pieces run on several threads at once.
    """
    from torchvision.models.optical_flow._utils import make_coords_grid, upsample_flow

    batch, _, h, w = fmap1.shape
    corr_block = model.corr_block
    lookup = raft.PatchLookup(raft.correlation_pyramid(fmap1, fmap2, corr_block.num_levels), corr_block.radius)
    hidden_size = model.update_block.hidden_state_size
    hidden, context = torch.split(context, [hidden_size, context.shape[1] - hidden_size], dim=1)
    hidden, context = torch.tanh(hidden), F.relu(context)
    update = raft.fused_update(model, winograd_tile)
    layout = torch.channels_last if winograd_tile > 0 else torch.contiguous_format
    hidden = hidden.contiguous(memory_format=layout)
    context_terms = update.context_terms(context.contiguous(memory_format=layout))  # fixed for all updates
    coords0 = make_coords_grid(batch, h, w).to(fmap1.device).contiguous(memory_format=layout)
    coords1 = coords0.clone()
    for _ in range(num_flow_updates):
        corr = lookup(coords1, channels_last=winograd_tile > 0)
        hidden, delta = update(hidden, context_terms, corr, coords1 - coords0)
        coords1 = coords1 + delta
    return upsample_flow(coords1 - coords0, up_mask=model.mask_predictor(hidden))


def pad_for_raft(images: torch.Tensor, multiple: int = 8, min_size: int = MIN_RAFT_SIZE) -> torch.Tensor:
    """Replicate-pad ``(N, C, H, W)`` centred (RAFT's ``InputPadder``, sintel mode) to a multiple of 8, >= 128."""
    h, w = images.shape[-2:]
    target_h = max(math.ceil(h / multiple) * multiple, min_size)
    target_w = max(math.ceil(w / multiple) * multiple, min_size)
    pad_h, pad_w = target_h - h, target_w - w
    if not pad_h and not pad_w:
        return images
    return F.pad(images, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="replicate")


#: The ``convolutions`` choices of :class:`DynamicDegreeMetric` (see :attr:`DynamicDegreeMetric.winograd_tile`).
CONVOLUTION_ALGORITHMS = ("auto", "direct", "winograd")


# --- the metric ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DynamicOptions:
    """Options of the ``dynamic`` family."""

    weights: Path | None = option(None, "raft_large_C_T_V1-22a6c225.pth (torchvision) or raft-things.pth (else the "
                                        "weights folder or caches)")
    pair_batch_size: int = option(16, "RAFT frame pairs per batch", minimum=1)
    num_flow_updates: int = option(NUM_FLOW_UPDATES, "RAFT refinement iterations (VBench: 20)", minimum=1)
    rule: Literal["vbench", "vbench-2024-fps-scaled"] = option(
        DEFAULT_RULE, "threshold rule: vbench (VBench v0.1.5, the default) or the mid-2024 fps-scaled variant")
    convolutions: Literal["auto", "direct", "winograd"] = option(
        "auto", "RAFT convolutions: winograd (the refinement's as F(4x4,3x3), F(1x4,1x5); channels-last encoders "
                "with batch norms folded and Winograd 3x3, one frame at a time), direct (torchvision's modules as "
                "they are), or auto (winograd on CPU in fp32, direct elsewhere); the same numbers up to float "
                "rounding")
    cpu_workers: int = cpu_workers_option("encode frames and refine RAFT pairs")


@register_metric
class DynamicDegreeMetric(ModelMetric):
    """The ``dynamic`` family: ``dynamic`` in {0, 1} plus the rule's diagnostics.

    ``rule`` picks the threshold rule (one of :data:`DYNAMIC_RULES`, default ``"vbench"``: VBench v0.1.5); it is
    part of :meth:`config`, so scores under another rule are cached apart.
    """

    family = "dynamic"
    description = "D.D: VBench's dynamic degree with RAFT-large optical flow (percent of dynamic videos)"
    column_specs = (
        ColumnSpec("dynamic", "D.D", "VBench dynamic degree: 1 when enough frame pairs move more than the "
                   "threshold", order=50, unit="%", binary=True),
    )
    Options = DynamicOptions
    inputs = ()  # the video alone: cases sharing a video share its RAFT pass

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pair_batch_size: int = 16,
        num_flow_updates: int = NUM_FLOW_UPDATES,
        rule: str = DEFAULT_RULE,
        convolutions: str = "auto",
        **stamp: Unpack[WeightsStamp],
    ) -> None:
        self.rule = check_rule(rule)
        if convolutions not in CONVOLUTION_ALGORITHMS:
            raise ValueError(f"unknown convolutions {convolutions!r}; expected one of {CONVOLUTION_ALGORITHMS}")
        super().__init__(model, **stamp)
        self.pair_batch_size, self.num_flow_updates = pair_batch_size, num_flow_updates
        self.convolutions = convolutions

    @property
    def winograd_tile(self) -> int:
        """The Winograd output tile of RAFT's refinement convolutions (0: direct), from ``convolutions``: ``auto``
        is Winograd on CPU in fp32 (where oneDNN convolves directly; :mod:`videobench.metrics.winograd`) and direct
        on CUDA (cuDNN picks its own algorithms, Winograd among them) and under reduced precision."""
        use = self.convolutions == "winograd" or (
            self.convolutions == "auto" and torch.device(self.device).type == "cpu" and self.dtype == "fp32")
        return raft.WINOGRAD_TILE if use else 0

    @classmethod
    def weight_specs(cls, options: DynamicOptions) -> list[WeightSpec]:
        spec = WeightSpec(
            key=cls.weight_key, model="RAFT-large raft-things (torchvision raft_large C_T_V1)",
            file_names=("raft_large_C_T_V1-22a6c225.pth", "raft-things.pth", "raft_large.safetensors"),
            url=_RAFT_URL, url_hash_prefix="22a6c225",
            formats="torchvision's checkpoint, the original raft-things.pth (keys converted) or safetensors",
        )
        return [with_weights_option(spec, options, cls.family)]

    @classmethod
    def _model_builder(cls, options: DynamicOptions) -> ModelBuilder:
        return build_raft_model

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: DynamicOptions, stamp: WeightsStamp
                    ) -> DynamicDegreeMetric:
        return cls(model, pair_batch_size=options.pair_batch_size, num_flow_updates=options.num_flow_updates,
                   rule=options.rule, convolutions=options.convolutions, **stamp)

    def config(self) -> dict[str, Any]:
        return {
            **self._base_config("torchvision:raft_large"),
            "num_flow_updates": self.num_flow_updates,
            "rule": self.rule,
            "rule_definition": f"every max(1,round(fps/8))-th frame; top 5% flow magnitude; count >= round(4n/16) "
            f"pairs over the threshold; {RULE_SOURCES[self.rule]}",
            "padding": f"replicate to multiple of 8, min {MIN_RAFT_SIZE}",
            "convolutions": self.convolutions,
        }

    def pair_scores(self, frames: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` uint8 kept frames -> ``(n - 1,)`` pair scores, RAFT pairs in batches on the device.

        A pair is a function of its two frames' bytes: a pair that comes back (a still shot: every pair is the
        first; duplicated frames) is computed once (:func:`~videobench.metrics.preprocess.distinct_images`).
        """
        if len(frames) < 2:
            return torch.zeros(0, dtype=torch.float64)
        firsts, inverse = distinct_images(frames)
        pair_index: dict[tuple[int, int], int] = {}
        for pair in zip(inverse[:-1], inverse[1:]):
            pair_index.setdefault(pair, len(pair_index))
        pairs = list(pair_index)
        scores = []
        with torch.inference_mode(), precision_context(self.device, self.dtype):
            workers = workers_for(self.device, self.cpu_workers)
            images = pad_for_raft(frames[firsts].to(self.device).float() / 127.5 - 1.0)
            for start in range(0, len(pairs), self.pair_batch_size):
                flow = raft_pair_flows(self.model, images, pairs[start : start + self.pair_batch_size],
                                       self.num_flow_updates, self.winograd_tile, workers)
                scores.append(flow_pair_scores(flow.float()))
        distinct = torch.cat(scores).cpu()
        return distinct[[pair_index[pair] for pair in zip(inverse[:-1], inverse[1:])]]

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """``dynamic`` (1.0 or 0.0) and ``dd_*`` diagnostics (kept frames, pairs, pairs over threshold, ...)."""
        self._check_columns(columns)
        if len(sample.frames) < 2:
            raise ValueError(f"dynamic degree needs at least 2 frames, got {len(sample.frames)}")
        kept = frames_to_tensor(np.asarray(sample.frames)[kept_frame_indices(len(sample.frames), sample.fps)])
        height, width = int(kept.shape[-2]), int(kept.shape[-1])
        scores = self.pair_scores(kept).tolist()
        threshold = dynamic_threshold(height, width, sample.fps, self.rule)
        return {
            "dynamic": float(is_dynamic(scores, len(kept), height, width, sample.fps, self.rule)),
            "dd_num_frames": float(len(kept)),
            "dd_num_pairs": float(len(scores)),
            "dd_pairs_over_threshold": float(sum(s > threshold for s in scores)),
            "dd_count_needed": float(dynamic_count_needed(len(kept))),
            "dd_threshold": threshold,
            "dd_max_pair_score": max(scores, default=0.0),
        }
