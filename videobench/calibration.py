"""Weight-free calibration methods shown as reference rows on every leaderboard.

- ``reference-still``: the reference image fitted to the video size and held for every frame. Zero
  motion, so it is the copy-paste ceiling of CLIP-I / DINO-I, scores T.Cons 1.0 and D.D 0.
- ``reference-pan``: the same canvas with a slow pan and zoom: what pure camera motion earns on
  T.Cons and D.D without any subject motion.

Fitting: the image keeps its aspect ratio, is scaled to fit inside the frame (bicubic) and padded with
white, the usual background of product-style reference photos (DreamBench, VideoBench objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mediaio.images import fit_to_canvas, load_reference_image
from videobench.cases import Case
from videobench.methods import MethodContext, register_method
from videobench.options import NoOptions


def pan_zoom_frames(canvas: Image.Image, num_frames: int, max_zoom: float = 1.25) -> np.ndarray:
    """A slow camera move over ``canvas``: zoom 1 -> ``max_zoom`` while panning left to right.

    Frame ``i`` crops a window ``1/zoom_i`` the canvas size whose centre moves linearly across the
    horizontal slack, and resizes it back to the canvas size (bilinear).
    """
    width, height = canvas.size
    frames = []
    for i in range(num_frames):
        progress = i / max(1, num_frames - 1)
        zoom = 1.0 + (max_zoom - 1.0) * progress
        crop_w, crop_h = width / zoom, height / zoom
        left = (width - crop_w) * progress
        top = (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        frames.append(np.asarray(canvas.resize((width, height), Image.Resampling.BILINEAR, box=box)))
    return np.stack(frames)


@dataclass
class ReferenceCalibration:
    """A :class:`~videobench.methods.Generator` that animates the case's first reference image."""

    run_name: str
    num_frames: int
    height: int
    width: int
    fps: int = 8
    pan: bool = False
    max_zoom: float = 1.25
    random_weights: bool = False

    def config(self) -> dict[str, Any]:
        return {
            "method": self.run_name,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "fit": "contain, bicubic, white padding",
            **({"motion": "pan left-to-right + zoom", "max_zoom": self.max_zoom} if self.pan else {"motion": "none"}),
        }

    def generate(self, case: Case, seed: int) -> np.ndarray:
        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        canvas = fit_to_canvas(load_reference_image(case.references[0]), self.height, self.width)
        if self.pan:
            return pan_zoom_frames(canvas, self.num_frames, self.max_zoom)
        return np.repeat(np.asarray(canvas)[None], self.num_frames, axis=0)


def _calibration(context: MethodContext, name: str, pan: bool) -> ReferenceCalibration:
    return ReferenceCalibration(name, num_frames=context.num_frames or 49, height=context.height or 480,
                                width=context.width or 720, fps=context.fps, pan=pan)


def _no_model_cost(name: str):
    """A calibration row's cost: no model, a few milliseconds of CPU image work per video (0 FLOPs counted)."""
    from costmodel.method_cost import MethodCost, StageCost

    def cost(options: NoOptions, context: MethodContext) -> MethodCost:
        stage = StageCost.free("frames from the reference image (CPU, no model)")
        return MethodCost(name, [stage], setting={"preset": context.preset})

    return cost


@register_method("reference-still", kind="reference", default_run=True, cost=_no_model_cost("reference-still"),
                 description="reference image held still (copy-paste ceiling, zero motion)")
def reference_still(options: NoOptions, context: MethodContext) -> ReferenceCalibration:
    return _calibration(context, "reference-still", pan=False)


@register_method("reference-pan", kind="reference", default_run=True, cost=_no_model_cost("reference-pan"),
                 description="reference image with a slow pan and zoom (pure camera motion)")
def reference_pan(options: NoOptions, context: MethodContext) -> ReferenceCalibration:
    return _calibration(context, "reference-pan", pan=True)
