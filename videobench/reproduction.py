"""``videobench reproduce table1|table2``: every row of a published table, generated, scored and reported.

The plan comes from the paper's tables (``videobench/paper/table*.csv``: which rows, on which suites) and from the
registered methods (which method reproduces which row): a Table 1 row is reproduced by the methods whose default
options declare that ``paper_row``; a Table 2 row by a method's ``table2_rows`` (the options of each setting). The
weight-free reference rows (kind ``reference``) join Table 1 as calibration. Nothing here names a method.

Each row has an id: the method name for Table 1, ``METHOD@SETTING`` for Table 2. Options reach rows by id or by
method name (``-o METHOD@SETTING.lora=FILE``, ``-o METHOD.steps=50``, or a config file mapping ids / method names to
options); a row's own id wins over its method's name, which wins over the row's declared options.

:func:`plan` resolves everything (suites and their cases, options, weights, estimated time) without running
anything; :func:`videobench.api.reproduce` then generates each row on each suite into ``OUT/<suite>/`` (resuming:
finished videos are skipped), scores each suite folder and writes one report ``OUT/<table>.html`` beside the paper's
numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from videobench.methods import MethodContext, MethodSpec, available_methods, methods_by_paper_row
from videobench.options import OptionError
from videobench.published import published_rows
from videobench.suites import get_suite, load_suite
from videobench.weights import ResolvedWeights, WeightsConfig, WeightSpec, resolve_weights

TABLES = ("table1", "table2")


@dataclass
class PlanRow:
    """One method run of the plan, on one or more suites."""

    row_id: str
    method: str
    paper_label: str
    options: dict[str, Any]
    suites: tuple[str, ...]
    cases: dict[str, int] = field(default_factory=dict)  # suite -> number of cases (-1: unknown, data missing)
    weights: list[ResolvedWeights] = field(default_factory=list)
    seconds_per_video: float | None = None
    estimate_source: str = ""

    @property
    def missing_weights(self) -> list[ResolvedWeights]:
        return [resolved for resolved in self.weights if not resolved.found]

    @property
    def n_cases(self) -> int:
        return sum(max(0, count) for count in self.cases.values())  # -1: data missing, count unknown

    def hours(self, gpus: int = 1) -> float | None:
        if self.seconds_per_video is None:
            return None
        return self.seconds_per_video * self.n_cases / 3600 / max(1, gpus)


@dataclass
class Plan:
    table: str
    rows: list[PlanRow]
    unreproducible: list[str]  # published rows no installed method reproduces
    data_missing: dict[str, str]  # suite -> why it cannot be loaded

    @property
    def missing_weights(self) -> list[tuple[str, ResolvedWeights]]:
        return [(row.row_id, resolved) for row in self.rows for resolved in row.missing_weights]


def run_order(rows: Sequence[PlanRow]) -> list[PlanRow]:
    """The order rows run in: the longest estimated first (by the cost model's hours), rows without an estimate
    after them, ties in the plan's order. Long rows first keep the last hours of a multi-GPU or time-limited job
    from waiting on one big row started late; the plan is still printed in the paper's order."""
    position = {id(row): index for index, row in enumerate(rows)}
    return sorted(rows, key=lambda row: (row.hours() is None, -(row.hours() or 0.0), position[id(row)]))


def missing_models(owned: Sequence[tuple[str, WeightSpec]], config: WeightsConfig) -> list[tuple[str, WeightSpec]]:
    """Each missing model once, owned by every row (or metric family) that needs it, in first-needed order:
    ``[("row A, row B", spec), ...]`` for :func:`videobench.weights.check_weights` (CogVideoX-5B-I2V, needed by
    six two-stage rows, is one entry)."""
    merged: dict[tuple, tuple[list[str], WeightSpec]] = {}
    for owner, spec in owned:
        owners, _ = merged.setdefault(spec.source_key, ([], spec))
        if owner not in owners:
            owners.append(owner)
    return [(", ".join(owners), spec) for owners, spec in merged.values()
            if not resolve_weights(spec, config).found]


def _declared_rows(table: str, methods: Mapping[str, MethodSpec]) -> tuple[list[PlanRow], list[str]]:
    """The plan's rows as the published table and the registry declare them (before options and suites)."""
    published = published_rows(table)
    rows: list[PlanRow] = []
    missing: list[str] = []
    if table == "table1":
        suites = tuple(dict.fromkeys(row["suite"] for row in published))
        by_row = methods_by_paper_row()
        for label in dict.fromkeys(row["method"] for row in published):
            names = by_row.get(label, [])
            if not names:
                missing.append(label)
            rows += [PlanRow(name, name, label, {}, suites) for name in names]
        rows += [PlanRow(name, name, "reference row", {}, suites)
                 for name, spec in methods.items() if spec.kind == "reference"]
        return rows, missing
    for record in published:
        setting, suite = record["setting"], record["suite"]
        found = [(name, spec.table2_rows[setting]) for name, spec in methods.items() if setting in spec.table2_rows]
        if not found:
            missing.append(setting)
        rows += [PlanRow(f"{name}@{setting}", name, setting, dict(options), (suite,)) for name, options in found]
    return rows, missing


def _row_options(row: PlanRow, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {**row.options, **dict(overrides.get(row.method) or {}), **dict(overrides.get(row.row_id) or {})}


def plan(
    table: str,
    context: MethodContext,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    suite: str | None = None,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    estimate: Callable[[MethodSpec, Any, MethodContext], tuple[float, str] | None] | None = None,
) -> Plan:
    """Resolve a table's plan: rows, options (validated), suites and cases, weights, estimated time.

    ``suite`` replaces the published suites (``--suite smoke`` runs the whole plan on the smoke suite);
    ``context`` is the run's generic settings (device, preset, random weights, weights folder); ``estimate``
    gives seconds per video and its source for a method (the per-step benchmarks / cost model).

    Raises:
        ValueError: an unknown table, options for rows or methods that are not in the plan, or a bad option.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose {' or '.join(TABLES)}")
    methods = available_methods()
    rows, unreproducible = _declared_rows(table, methods)
    overrides = dict(overrides or {})
    known = {row.row_id for row in rows} | {row.method for row in rows}
    stray = [key for key in overrides if key not in known]
    if stray:
        raise ValueError(f"options for {', '.join(map(repr, stray))}, which are not rows of {table}; rows: "
                         f"{', '.join(row.row_id for row in rows)}")
    data_missing: dict[str, str] = {}
    counts: dict[str, int] = {}  # suite -> cases (its declared count when its data is missing; -1: unknown)
    for row in rows:
        if suite is not None:
            row.suites = (suite,)
        for name in row.suites:
            if name not in counts:
                try:
                    count = len(load_suite(name, data_root).cases)
                except (FileNotFoundError, KeyError, ValueError) as error:
                    data_missing[name] = str(error).splitlines()[0]
                    declared = _declared_count(name)
                    count = -1 if declared is None else declared
                counts[name] = min(count, limit) if limit is not None and count >= 0 else count
            row.cases[name] = counts[name]
        spec = methods[row.method]
        row.options = _row_options(row, overrides)
        row_context = _context_for(spec, context)
        try:
            parsed = spec.parse_options(row.options)
        except OptionError as error:
            raise ValueError(f"row {row.row_id}: {error}") from None
        weights_config = context.weights_config or WeightsConfig()
        row.weights = [resolve_weights(weight, weights_config) for weight in spec.weight_specs(parsed, row_context)]
        if row_context.preset is not None:  # cost models cost the real sizes, not a preset's
            row.estimate_source = f"not estimated for the {row_context.preset} preset"
            continue
        result = estimate(spec, parsed, row_context) if estimate is not None else None
        if result is not None:
            row.seconds_per_video, row.estimate_source = result
    return Plan(table, rows, unreproducible, data_missing)


def _declared_count(name: str) -> int | None:
    """A suite's case count without its data (None: unknown suite or one that does not declare it)."""
    try:
        spec = get_suite(name)
    except KeyError:
        return None
    return spec.count() if spec.count is not None else None


def _context_for(spec: MethodSpec, context: MethodContext) -> MethodContext:
    """The run's context for one method: the preset only where the method has it."""
    preset = context.preset if context.preset in spec.presets else None
    return MethodContext(device=context.device, dtype=context.dtype, preset=preset,
                         random_weights=context.random_weights, weights_config=context.weights_config)


def _count_text(count: int, data_missing: bool) -> str:
    if count < 0:
        return "data missing"
    return f"{count} (data missing)" if data_missing else str(count)


def describe(plan_: Plan, gpus: Sequence[int] = (1, 8)) -> list[str]:
    """The plan as lines: one per row (suites x cases, weights, estimate), then what is missing."""
    lines = [f"{plan_.table}: {len(plan_.rows)} row(s)"]
    for row in plan_.rows:
        cases = ", ".join(f"{name} {_count_text(count, name in plan_.data_missing)}"
                          for name, count in row.cases.items())
        weights = ("weights: none needed" if not row.weights else
                   f"weights: {len(row.weights) - len(row.missing_weights)}/{len(row.weights)} present")
        hours = row.hours()
        estimate = (f"est. {hours:.1f} h on 1 GPU, {row.hours(max(gpus)):.2f} h on {max(gpus)}"
                    f" ({row.estimate_source})" if hours is not None else f"est. unknown ({row.estimate_source or 'no cost estimate'})")
        options = ", ".join(f"{key}={value}" for key, value in row.options.items())
        lines.append(f"  {row.row_id:28s} [{row.paper_label}] {cases}; {weights}; {estimate}"
                     + (f"; options: {options}" if options else ""))
    known = [row.hours() for row in plan_.rows]
    if known and all(hours is not None for hours in known):
        total = sum(hours for hours in known if hours is not None)
        lines.append("  total: " + ", ".join(f"{total / n:.1f} h on {n} GPU{'s' if n > 1 else ''}" for n in gpus))
    for label in plan_.unreproducible:
        lines.append(f"  not reproducible here: {label} (no installed method declares this row)")
    for name, why in plan_.data_missing.items():
        lines.append(f"  suite {name}: {why}")
    return lines
