"""The cost cache and what reproducing a table costs: per-method costs read back, rows x cases x GPUs -> hours.

Computing costs takes minutes (a 5B DiT, a video VAE decode), so ``benchmarks/estimate_methods.py`` caches them in
``reports/estimate_methods.json`` (:data:`ESTIMATES_FILE`); :func:`cached_cost`, :func:`estimated_run_seconds`
and :func:`reproduction_estimate` read that file (``videobench reproduce`` prints per-row times from it).

Nothing here knows a method registry: the callers pass the rows to cost (paper row -> method names), and
:func:`row_estimator` works on any method spec with a ``name`` and ``parse_options``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmodel.method_cost import MethodCost

#: The cache of computed costs (written by benchmarks/estimate_methods.py) and the variable that moves it.
ESTIMATES_FILE = Path(__file__).resolve().parents[1] / "reports" / "estimate_methods.json"
ESTIMATES_ENV = "VIDEOBENCH_COST_ESTIMATES"
#: Table 1's suites and their case counts (docs/suites.md).
TABLE1_SUITES: dict[str, int] = {"dreambench": 750, "videobench": 530}


def cost_key(method: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The cache key of ``method`` with ``overrides`` of its default options: ``wan-vace[variant=14b]`` (values as
    their JSON form would read: paths as text, tuples as lists)."""
    if not overrides:
        return method
    return f"{method}[{','.join(f'{key}={_plain(value)}' for key, value in sorted(overrides.items()))}]"


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def option_overrides(options: Any, defaults: Any) -> dict[str, Any]:
    """The fields of the options dataclass ``options`` whose value differs from ``defaults``'."""
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return {key: value for key, value in values.items() if getattr(defaults, key) != value}


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
    """``estimate(spec, options, context) -> (seconds per video, source) | None`` for :func:`videobench.reproduction.plan`,
    from ``costs`` (default: the cache, read once): the row's options when cached, else the method's defaults.
    ``spec`` is a registered method (its ``name`` and ``parse_options``), ``options`` its parsed options."""
    costs = load_estimates() if costs is None else costs

    def estimate(spec: Any, options: Any, context: Any) -> tuple[float, str] | None:
        overrides = option_overrides(options, spec.parse_options({}))
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


def reproduction_estimate(methods: Mapping[str, str | Sequence[str]], costs: Mapping[str, MethodCost] | None = None,
                          suites: Mapping[str, int] | None = None) -> list[ReproductionRow]:
    """Every table row (``methods``: paper row -> the method, or methods, that reproduce it, in the order the rows
    are listed) on every suite (``suites``: name -> cases, default :data:`TABLE1_SUITES`), with its seconds per
    video from ``costs`` (default: the cache); a method without a cost has ``seconds_per_video`` None."""
    costs = load_estimates() if costs is None else costs
    suites = TABLE1_SUITES if suites is None else suites
    rows = []
    for suite, cases in suites.items():
        for paper_row, names in methods.items():
            for method in [names] if isinstance(names, str) else names:
                cost = costs.get(method)
                seconds = cost.seconds_per_video if cost is not None else None
                rows.append(ReproductionRow(paper_row, method, suite, cases, seconds))
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
