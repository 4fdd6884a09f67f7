"""Scoring, step 2 (compute): which metric computes which column, the score cache, one case's values.

Caching: every metric result is stored under the cache folder (default ``~/.cache/videobench/score_cache``,
``$VIDEOBENCH_SCORE_CACHE`` or ``--cache-dir``; never inside RESULTS, so a results folder someone hands you cannot
carry forged values), one JSON file per entry written atomically, keyed by the sha256 of the video's bytes, of the
inputs the metrics see besides the video (prompt, entity, the reference images' bytes) and of the metric's
``config()`` (model, weights sha256, preprocessing). A re-run computes only what changed, and an interrupted run
resumes where it stopped. With ``--metrics`` only some columns are computed; the others are carried over from the
previous ``scores.csv`` rows of the same video and inputs (:func:`carry_over`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mediaio.atomic import atomic_write_json
from mediaio.hashing import json_sha256
from videobench.metrics.base import Metric, MetricInput
from videobench.metrics.registry import column_family, expand_columns
from videobench.paths import cache_root
from videobench.scoring.inputs import CaseError, CaseInputs, decode_video, metric_input, video_info

CACHE_VERSION = 1
#: Overrides the score cache folder.
SCORE_CACHE_ENV = "VIDEOBENCH_SCORE_CACHE"
DIAGNOSTIC_COLUMNS = ("num_frames", "fps", "height", "width")


def default_cache_dir() -> Path:
    """``$VIDEOBENCH_SCORE_CACHE``, else ``<cache root>/score_cache`` (outside any RESULTS folder)."""
    env = os.environ.get(SCORE_CACHE_ENV)
    return Path(env).expanduser() if env else cache_root() / "score_cache"


# ------------------------------------------------------------------------------------------- metric plans


def select_columns(
    metrics: Sequence[Metric], columns: Iterable[str] | None = None
) -> list[tuple[Metric, tuple[str, ...]]]:
    """Which metric computes which requested column.

    ``columns`` holds score column names or metric family names (standing for all their columns); ``None``
    means every column the given metrics offer. The first metric offering a column computes it. Raises
    ``ValueError`` for an unknown name or a column no given metric computes.
    """
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise TypeError(f"{metric!r} does not implement the Metric protocol (videobench.metrics.base)")
    offered: dict[str, Metric] = {}
    for metric in metrics:
        for column in metric.columns:
            offered.setdefault(column, metric)
    if columns is None:
        owner = column_family()
        wanted = [column for column in owner if column in offered] + [c for c in offered if c not in owner]
    else:
        wanted = expand_columns(list(columns))
        missing = [column for column in wanted if column not in offered]
        if missing:
            raise ValueError(f"no metric was built for {', '.join(missing)} (requested with --metrics)")
    if not wanted:
        raise ValueError("nothing to score: no metric columns selected")
    plan: list[tuple[Metric, tuple[str, ...]]] = []
    for metric in metrics:
        mine = tuple(column for column in wanted if offered[column] is metric)
        if mine:
            plan.append((metric, mine))
    return plan


def metric_config_hash(metric: Metric) -> str:
    """sha256 of the metric's family, config and random-weights flag (the cache's metric key)."""
    return json_sha256({"family": metric.family, "random_weights": bool(metric.random_weights),
                        "config": metric.config()})


def metric_inputs(metric: Metric) -> tuple[str, ...] | None:
    """The case inputs a metric reads besides the video (its optional ``inputs`` attribute; ``None``: all).

    A family that declares them (``dynamic``: none; ``dino``: the references) is cached per video and those inputs
    only, so cases sharing a video (one clip scored against several prompts) compute it once.
    """
    names = getattr(metric, "inputs", None)
    return None if names is None else tuple(names)


def config_column(family: str) -> str:
    """The scores.csv column holding the config hash of the ``family`` metric that produced a row's values."""
    return f"{family}_config_sha256"


@dataclass
class MetricPlan:
    metric: Metric
    columns: tuple[str, ...]
    config_hash: str


def make_plans(metrics: Sequence[Metric], columns: Iterable[str] | None) -> list[MetricPlan]:
    return [MetricPlan(metric, cols, metric_config_hash(metric)) for metric, cols in select_columns(metrics, columns)]


# ------------------------------------------------------------------------------------------------- cache


class ScoreCache:
    """One JSON file per entry under ``root`` (two-level fan-out), each written atomically.

    An unreadable or malformed entry (e.g. from a disk that filled up) counts as a miss.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._path(key), encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), value)


# ------------------------------------------------------------------------------------------------ one case


@dataclass
class PreparedCase:
    """A case ready for the metrics: cached values already in ``row``, the rest in ``pending``."""

    inputs: CaseInputs
    row: dict[str, Any]
    pending: list[tuple[MetricPlan, str, dict[str, Any], tuple[str, ...]]] = field(default_factory=list)
    sample: MetricInput | None = None


@dataclass
class Scorer:
    """Cache look-ups and metric calls for the cases of a run (counts what it computed and what it reused)."""

    plans: list[MetricPlan]
    cache: ScoreCache
    metric_calls: int = 0
    cache_hits: int = 0

    def prepare(self, inputs: CaseInputs) -> PreparedCase:
        """Look up the cache; decode the video and references only when a value (or the video info) is missing.

        Everything here is I/O (run ahead of the metrics on a worker thread); raises CaseError.
        """
        prepared = PreparedCase(inputs, {"video_sha256": inputs.video_sha256, "inputs_sha256": inputs.inputs_sha256})
        info_key = json_sha256({"v": CACHE_VERSION, "video_info": inputs.video_sha256})
        info = self.cache.get(info_key)
        for plan in self.plans:
            prepared.row[config_column(plan.metric.family)] = plan.config_hash
            key = json_sha256({"v": CACHE_VERSION, "video": inputs.video_sha256,
                               "inputs": inputs.inputs_key(metric_inputs(plan.metric)), "metric": plan.config_hash})
            entry = self.cache.get(key) or {}
            values = entry.get("values", {}) if isinstance(entry.get("values"), dict) else {}
            missing = tuple(column for column in plan.columns if column not in values)
            if missing:
                prepared.pending.append((plan, key, values, missing))
            else:
                self.cache_hits += 1
                prepared.row.update(values)
        if prepared.pending or info is None:
            video = decode_video(inputs)
            info = video_info(video)
            self.cache.put(info_key, info)
            if prepared.pending:
                prepared.sample = metric_input(inputs, video)
        prepared.row.update({name: info.get(name) for name in DIAGNOSTIC_COLUMNS})
        return prepared

    def compute(self, prepared: PreparedCase) -> dict[str, Any]:
        """Run the metrics whose values were not cached; cache them; return the row. Raises CaseError."""
        row, where, video_path = prepared.row, prepared.inputs.where, prepared.inputs.video_path
        for plan, key, values, missing in prepared.pending:
            entry = self.cache.get(key)  # an earlier case with the same video and inputs may have filled it since
            cached = entry.get("values") if isinstance(entry, dict) else None
            if isinstance(cached, dict) and all(column in cached for column in missing):
                self.cache_hits += 1
                row.update(cached)
                continue
            self.metric_calls += 1
            assert prepared.sample is not None, "a case with pending metrics has its video decoded"
            try:
                computed = plan.metric.score(prepared.sample, columns=missing)
            except Exception as error:  # one bad video must not stop the run
                raise CaseError(f"{where}: {plan.metric.family} metric failed on {video_path} "
                                f"({type(error).__name__}: {error})") from None
            absent = [column for column in missing if column not in computed]
            if absent:
                raise CaseError(f"{where}: {plan.metric.family} metric returned no {', '.join(absent)} "
                                f"for {video_path}")
            values = {**values, **{name: _plain(value) for name, value in computed.items()}}
            self.cache.put(key, {"family": plan.metric.family, "config_hash": plan.config_hash, "values": values})
            row.update(values)
        return row


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (numpy floats/ints/bools, tensors' .item())."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


# -------------------------------------------------------------------------------------------- carry-over


def carry_over(row: dict[str, Any], old: dict[str, Any] | None, selected: set[str],
               run_configs: dict[str, str], own_columns: Callable[[str], bool]) -> None:
    """Keep the previous scores.csv values of the score columns not computed in this run.

    Only for the same video *and* the same metric inputs (prompt, entity, reference images' bytes:
    ``inputs_sha256``), so a fixed reference or prompt never keeps a stale score; and only from the same metric
    configuration when this run built that family too (``run_configs``: family -> config hash), so
    ``--metrics`` with another model of a family never keeps that family's other columns from the old model. The other metrics' diagnostics
    (``dd_*``, ...) and config hashes come along with their scores; ``own_columns(name)`` says which columns of
    the old row are the layout's own (never carried).
    """
    if old is None or _is_error(old):
        return
    if any(str(old.get(key)) != str(row.get(key)) for key in ("video_sha256", "inputs_sha256")):
        return
    owner = column_family()
    carried = False
    for column, family in owner.items():
        if column in selected or not _is_number(old.get(column)):
            continue
        old_config = old.get(config_column(family))
        if family in run_configs and str(old_config) != run_configs[family]:
            continue  # computed by another configuration of a model this run uses
        row[column] = old[column]
        if family not in run_configs and isinstance(old_config, str) and old_config:
            row[config_column(family)] = old_config
        carried = True
    if not carried:
        return
    for column, value in old.items():  # diagnostics of the metrics not run now
        if column not in row and column not in owner and not own_columns(column) and _is_number(value):
            row[column] = value
    if _is_true(old.get("random_weights")):
        row["random_weights"] = 1


def _is_number(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "1.0", "true", "yes"}


def _is_error(row: dict[str, Any]) -> bool:
    value = row.get("error")
    return isinstance(value, str) and bool(value.strip())
