"""What a method costs per video: :class:`MethodCost`, its stages (:class:`StageCost`) and the effective rate that
turns FLOPs into seconds.

Every registered method may carry a ``cost`` function (``register_method(..., cost=fn)``; two-stage methods give
``register_two_stage(..., stage1_cost=fn)``): ``fn(options, context) -> MethodCost``. It computes, at the real sizes
and the method's default options, per stage (a two-stage baseline's image model, then CogVideoX-5B-I2V; a video
model's whole generation) the FLOPs per video and the peak memory on FakeTensors (:mod:`costmodel.counting`: the real
configs built on the meta device, no weights, no GPU), and a FLOP-proportional time at the effective rate of the
reference GPU. With ``context.preset == "tiny"`` it computes the same at the tiny preset's sizes (a quick check).

The rate: :data:`EFFECTIVE_TFLOPS_PER_S` = 359 TFLOP/s, from vanilla CogVideoX-5B's CFG step (664.4 TFLOP at
49x480x720, ``reports/estimate_5b.json``) measured at 1.85 s/step on an H100 (bf16, batch 2, random weights; the
default of ``benchmarks/estimate.py --vanilla-seconds``). It is a *bf16 DiT* efficiency: UNets, VAEs
(convolutions), fp32 stages and small batches run below it, so the seconds here are lower bounds; a measurement (``benchmarks/gpu_acceptance.py --sections baselines``) replaces them per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from costmodel.counting import PiecesCost

GIB = 2**30
#: Effective TFLOP/s of the reference GPU (see the module docstring).
EFFECTIVE_TFLOPS_PER_S = 359.0
REFERENCE_GPU = "H100 80GB (1 GPU)"
RATE_SOURCE = ("vanilla CogVideoX-5B CFG step, 664.4 TFLOP at 49x480x720 bf16 (reports/estimate_5b.json), "
               "measured at 1.85 s/step on an H100: 359 TFLOP/s")
FAKE_SOURCE = "fake-tensor cost model"


@dataclass
class StageCost:
    """One stage of a generation, per video: FLOPs (``tflops``), peak memory, seconds at the cost's rate.

    ``source`` says where the numbers come from (:data:`FAKE_SOURCE`, or ``measured on <GPU>``); ``parts`` lists
    the calls the stage adds up (name, calls, TFLOP per call and in all, peak GiB, what the call is).
    """

    name: str
    tflops: float
    peak_gib: float
    seconds: float
    source: str = FAKE_SOURCE
    parts: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    @classmethod
    def from_pieces(cls, name: str, pieces: PiecesCost, rate: float = EFFECTIVE_TFLOPS_PER_S, notes: str = ""
                    ) -> StageCost:
        """A stage from its pieces: run on FakeTensors (:func:`costmodel.counting.measure_pieces`: FLOP-proportional
        seconds at ``rate``) or timed for real (:func:`costmodel.counting.time_pieces`: the measured seconds)."""
        tflops = pieces.flops / 1e12
        parts = [piece.to_dict() for piece in pieces.pieces]
        if pieces.seconds is not None:
            return cls(name, tflops, pieces.peak_bytes / GIB, pieces.seconds,
                       f"measured on {pieces.device}, random weights", parts, notes)
        return cls(name, tflops, pieces.peak_bytes / GIB, tflops / rate, FAKE_SOURCE, parts, notes)

    @classmethod
    def free(cls, name: str, notes: str = "") -> StageCost:
        """A stage without model compute (e.g. the reference image used as it is)."""
        return cls(name, 0.0, 0.0, 0.0, "no model compute", [], notes)

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


@dataclass
class MethodCost:
    """A method's cost per video: its stages (run one after the other), at ``tflops_per_s`` on ``reference_gpu``.

    ``setting`` records what was costed (sizes, steps, guidance, dtype, preset), so a cached cost can be matched to
    the options it was computed for.
    """

    method: str
    stages: list[StageCost]
    tflops_per_s: float = EFFECTIVE_TFLOPS_PER_S
    reference_gpu: str = REFERENCE_GPU
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def tflops(self) -> float:
        return sum(stage.tflops for stage in self.stages)

    @property
    def seconds_per_video(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    @property
    def peak_gib(self) -> float:
        """The largest stage peak (stages run one after the other; a two-stage run releases stage 1 first)."""
        return max((stage.peak_gib for stage in self.stages), default=0.0)

    def at_rate(self, tflops_per_s: float) -> MethodCost:
        """The same cost at another effective rate (FLOP-proportional stages rescaled; measured ones kept)."""
        if tflops_per_s <= 0:
            raise ValueError(f"tflops_per_s must be positive, got {tflops_per_s}")
        stages = [stage if stage.measured else replace(stage, seconds=stage.tflops / tflops_per_s)
                  for stage in self.stages]
        return replace(self, stages=stages, tflops_per_s=tflops_per_s)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tflops": self.tflops, "seconds_per_video": self.seconds_per_video,
                "peak_gib": self.peak_gib}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodCost:
        stages = [StageCost(**{k: v for k, v in stage.items() if k in StageCost.__dataclass_fields__})
                  for stage in data["stages"]]
        return cls(data["method"], stages, float(data.get("tflops_per_s", EFFECTIVE_TFLOPS_PER_S)),
                   data.get("reference_gpu", REFERENCE_GPU), dict(data.get("setting", {})))
