"""What a method costs per video, and what reproducing a table costs: the harness side of the per-method cost model.

Every registered method may carry a ``cost`` function (``register_method(..., cost=fn)``; two-stage methods give
``register_two_stage(..., stage1_cost=fn)``): ``fn(options, context) -> MethodCost``. It computes, at the real sizes
and the method's default options, per stage (a two-stage baseline's image model, then CogVideoX-5B-I2V; a video
model's whole generation) the FLOPs per video and the peak memory on FakeTensors (:mod:`mediaio.fakecost`: the real
configs built on the meta device, no weights, no GPU), and a FLOP-proportional time at the effective rate of the
reference GPU. With ``context.preset == "tiny"`` it computes the same at the tiny preset's sizes (a quick check).

The rate: :data:`EFFECTIVE_TFLOPS_PER_S` = 359 TFLOP/s, from vanilla CogVideoX-5B's CFG step (664.4 TFLOP at 49x480x720,
``reports/estimate_5b.json``) measured at 1.85 s/step on an H100 (``benchmarks/step_latency.py``, vanilla row). It is a *bf16 DiT*
efficiency: UNets, VAEs (convolutions), fp32 stages and small batches run below it, so the seconds here are
lower bounds; a measurement (``benchmarks/gpu_acceptance.py --sections baselines``) replaces them per stage.

Computing costs takes minutes (a 5B DiT, a video VAE decode), so ``benchmarks/estimate_methods.py`` caches them in
``reports/estimate_methods.json`` (:data:`ESTIMATES_FILE`); :func:`cached_cost`, :func:`estimated_run_seconds`
and :func:`reproduction_estimate` read that file (``videobench reproduce`` prints per-row times from it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mediaio.fakecost import PiecesCost
    from videobench.methods import MethodContext

GIB = 2**30
#: Effective TFLOP/s of the reference GPU (see the module docstring).
EFFECTIVE_TFLOPS_PER_S = 359.0
REFERENCE_GPU = "H100 80GB (1 GPU)"
RATE_SOURCE = ("vanilla CogVideoX-5B CFG step, 664.4 TFLOP at 49x480x720 bf16 (reports/estimate_5b.json), "
               "measured at 1.85 s/step on an H100 (benchmarks/step_latency.py): 359 TFLOP/s")
FAKE_SOURCE = "fake-tensor cost model"
#: The cache of computed costs (written by benchmarks/estimate_methods.py) and the variable that moves it.
ESTIMATES_FILE = Path(__file__).resolve().parents[1] / "reports" / "estimate_methods.json"
ESTIMATES_ENV = "VIDEOBENCH_COST_ESTIMATES"
#: Table 1's suites and their case counts (docs/suites.md).
TABLE1_SUITES: dict[str, int] = {"dreambench": 750, "videobench": 530}


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
        """A stage from its pieces: run on FakeTensors (:func:`mediaio.fakecost.measure_pieces`: FLOP-proportional
        seconds at ``rate``) or timed for real (:func:`mediaio.fakecost.time_pieces`: the measured seconds)."""
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


def gpu_dtype(context: MethodContext, auto: str = "bfloat16"):
    """The dtype a method runs in on the reference GPU: ``context.dtype``, ``auto`` meaning ``auto``'s dtype."""
    import torch

    from videobench.methods import resolve_torch_dtype

    return getattr(torch, auto) if context.dtype == "auto" else resolve_torch_dtype(context.dtype, "cuda")


# --- computing and caching ---------------------------------------------------------------------------------------
def cost_key(method: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The cache key of ``method`` with ``overrides`` of its default options: ``wan-vace[variant=14b]``."""
    if not overrides:
        return method
    return f"{method}[{','.join(f'{key}={value}' for key, value in sorted(overrides.items()))}]"


def compute_cost(method: str, overrides: Mapping[str, Any] | None = None, context: MethodContext | None = None,
                 tflops_per_s: float = EFFECTIVE_TFLOPS_PER_S) -> MethodCost | None:
    """Compute ``method``'s cost now (seconds to minutes); None when the method has no cost model."""
    from videobench.methods import get_method

    spec = get_method(method)
    cost = spec.estimate_cost(spec.parse_options(dict(overrides or {})), context)
    if cost is None:
        return None
    return cost.at_rate(tflops_per_s) if tflops_per_s != cost.tflops_per_s else cost


def estimates_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$VIDEOBENCH_COST_ESTIMATES``, else :data:`ESTIMATES_FILE`."""
    return Path(path or os.environ.get(ESTIMATES_ENV) or ESTIMATES_FILE)


def load_estimates(path: str | os.PathLike | None = None) -> dict[str, MethodCost]:
    """The cached costs by key (:func:`cost_key`); empty when the file does not exist."""
    file = estimates_path(path)
    if not file.is_file():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    return {key: MethodCost.from_dict(value) for key, value in data.get("methods", {}).items()}


def cached_cost(method: str, overrides: Mapping[str, Any] | None = None, path: str | os.PathLike | None = None,
                tflops_per_s: float | None = None) -> MethodCost | None:
    """``method``'s cached cost (default options, or ``overrides``) at ``tflops_per_s`` (default: as cached);
    None when the cache does not hold it."""
    cost = load_estimates(path).get(cost_key(method, overrides))
    if cost is not None and tflops_per_s is not None:
        cost = cost.at_rate(tflops_per_s)
    return cost


def row_estimator(costs: Mapping[str, MethodCost] | None = None):
    """``estimate(spec, options, context) -> (seconds per video, source) | None`` for :func:`videobench.reproduce.plan`,
    from ``costs`` (default: the cache, read once): the row's options when cached, else the method's defaults."""
    from videobench.options import options_to_dict

    costs = load_estimates() if costs is None else costs

    def estimate(spec: Any, options: Any, context: Any) -> tuple[float, str] | None:
        defaults = options_to_dict(spec.parse_options({}))
        overrides = {key: value for key, value in options_to_dict(options).items() if defaults.get(key) != value}
        cost = costs.get(cost_key(spec.name, overrides)) if overrides else None
        source = "cost model"
        if cost is None:
            cost = costs.get(spec.name)
            source = "cost model of the default options" if overrides else source
        if cost is None:
            return None
        where = "measured" if any(stage.measured for stage in cost.stages) else f"{cost.tflops_per_s:.0f} TFLOP/s"
        return cost.seconds_per_video, f"{source}, {cost.reference_gpu}, {where}"

    return estimate


# --- reproducing a table -----------------------------------------------------------------------------------------
def run_seconds(seconds_per_video: float, cases: int, gpus: int = 1) -> float:
    """Wall time of ``cases`` videos on ``gpus`` GPUs, each GPU generating whole videos (the cases split evenly;
    model loading and scoring not included)."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    return math.ceil(cases / gpus) * seconds_per_video


def estimated_run_seconds(method: str, cases: int, gpus: int = 1, overrides: Mapping[str, Any] | None = None,
                          path: str | os.PathLike | None = None) -> float | None:
    """``cases`` videos of ``method`` on ``gpus`` GPUs from the cached cost; None when it is not cached."""
    cost = cached_cost(method, overrides, path)
    return None if cost is None else run_seconds(cost.seconds_per_video, cases, gpus)


@dataclass(frozen=True)
class ReproductionRow:
    """One table row to reproduce: a method on a suite of ``cases`` cases, ``seconds_per_video`` each."""

    paper_row: str
    method: str
    suite: str
    cases: int
    seconds_per_video: float | None

    def seconds(self, gpus: int) -> float | None:
        return None if self.seconds_per_video is None else run_seconds(self.seconds_per_video, self.cases, gpus)


def table1_methods() -> dict[str, str]:
    """Table 1's rows -> the registered method that reproduces each with its default options, in the paper's row
    order (``videobench/paper/table1.csv``)."""
    import csv

    from videobench.methods import available_methods

    rows = {}
    for name, spec in available_methods().items():
        row = spec.paper(spec.parse_options({})).table1_row
        if row is not None:
            rows[row] = name
    with (Path(__file__).parent / "paper" / "table1.csv").open(encoding="utf-8") as handle:
        order = {line["method"]: int(line["row"]) for line in csv.DictReader(handle)}
    return dict(sorted(rows.items(), key=lambda item: (order.get(item[0], len(order) + 1), item[0])))


def reproduction_estimate(costs: Mapping[str, MethodCost] | None = None, methods: Mapping[str, str] | None = None,
                          suites: Mapping[str, int] | None = None) -> list[ReproductionRow]:
    """Every Table 1 row (``methods``: paper row -> method, default :func:`table1_methods`) on every suite
    (``suites``: name -> cases, default :data:`TABLE1_SUITES`), with its seconds per video from ``costs``
    (default: the cache); a method without a cost has ``seconds_per_video`` None."""
    costs = load_estimates() if costs is None else costs
    methods = table1_methods() if methods is None else methods
    suites = TABLE1_SUITES if suites is None else suites
    rows = []
    for suite, cases in suites.items():
        for paper_row, method in methods.items():
            cost = costs.get(method)
            rows.append(ReproductionRow(paper_row, method, suite, cases,
                                        cost.seconds_per_video if cost is not None else None))
    return rows


def total_seconds(rows: Iterable[ReproductionRow], gpus: int) -> float:
    """All rows one after the other on ``gpus`` GPUs (rows without a cost count 0)."""
    return sum(row.seconds(gpus) or 0.0 for row in rows)


def format_duration(seconds: float | None) -> str:
    """``3.2 h``, ``41 min``, ``12 s`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"


def reproduction_table(rows: Sequence[ReproductionRow], gpus: Sequence[int] = (1, 8)) -> str:
    """The rows as a Markdown table (seconds per video, cases, wall time per GPU count) with a total line."""
    header = ["Table 1 row", "method", "suite", "cases", "s/video", *(f"{g} GPU{'s' if g > 1 else ''}" for g in gpus)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        per_video = "-" if row.seconds_per_video is None else f"{row.seconds_per_video:.1f}"
        lines.append("| " + " | ".join([row.paper_row, row.method, row.suite, str(row.cases), per_video,
                                        *(format_duration(row.seconds(g)) for g in gpus)]) + " |")
    lines.append("| **all rows** | | | " + str(sum(row.cases for row in rows)) + " | | "
                 + " | ".join(f"**{format_duration(total_seconds(rows, g))}**" for g in gpus) + " |")
    return "\n".join(lines)
