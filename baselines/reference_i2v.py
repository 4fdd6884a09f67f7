"""``reference+i2v``: CogVideoX-5B-I2V animating the reference image itself (no stage 1).

The control row of the two-stage baselines: what image-to-video alone does with the subject's photo. The gap
between it and ``<method>+i2v`` is what that method's stage 1 (putting the subject into the prompt's scene)
contributes. The reference is fitted inside the video with white padding by default (``-o fit=pad``): reference
photos are object shots that a centre crop would cut and a squash would distort (``squash`` and ``cover`` remain
options).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from baselines.two_stage import FitMode, TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from videobench.methods import MethodContext
from videobench.options import option
from videobench.weights import WeightSpec


@dataclass(frozen=True)
class ReferenceI2VOptions(TwoStageOptions):
    fit: FitMode = option(  # noqa: RUF009  (option() is a dataclasses.field)
        "pad", "the reference to the video size: pad (fit inside, white padding), squash (resize) or cover (scale + "
               "centre crop)")


class ReferenceImage:
    """Stage 1 that returns the case's first reference image unchanged."""

    random_weights = False

    def config(self) -> dict[str, Any]:
        return {"stage1": "the first reference image"}

    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        return references[0]


def _build(options: ReferenceI2VOptions, context: MethodContext) -> ReferenceImage:
    return ReferenceImage()


def _no_weights(options: ReferenceI2VOptions, context: MethodContext) -> list[WeightSpec]:
    return []


def _no_compute(options: ReferenceI2VOptions, context: MethodContext) -> StageCost:
    return StageCost.free("stage 1: the reference image as it is")


register_two_stage(
    "reference+i2v",
    description="CogVideoX-5B-I2V on the reference image itself (shows what a stage-1 model contributes)",
    options=ReferenceI2VOptions, build_stage1=_build, stage1_weights=_no_weights, stage1_cost=_no_compute,
)
