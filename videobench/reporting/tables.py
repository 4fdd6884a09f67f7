"""The report's tables: cells with intervals and best/second marks, our leaderboard, the per-subject breakdown.

Every table has one group of score columns per suite (Table 1's layout). Which columns, how they are labelled and
which way is better come from the metric registry (:mod:`videobench.metrics.registry`); suite labels and order
from the suite registry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from videobench.leaderboard import aggregate
from videobench.metrics.registry import column_specs, ordered_columns
from videobench.suites import suite_label, suite_order


def number(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def flag(value: Any) -> bool:
    """A 0/1 leaderboard flag; missing or NaN (a column one of several leaderboards lacks) is 0."""
    return bool(int(number(value) or 0))


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("λ", "lambda"))


def rank_marks(values: Sequence[float | None], decimals: int = 2, higher_is_better: bool = True) -> list[str]:
    """``"best"`` for the best value (ties all best), ``"second"`` for the next distinct value, else ``""``.

    Values are compared as displayed (rounded to ``decimals``), as the paper marks its tables; "best" is the
    highest value, or the lowest for a column where lower is better. A column with fewer than two values gets
    no marks.
    """
    rounded = [None if value is None else round(value, decimals) for value in values]
    if sum(value is not None for value in rounded) < 2:  # nothing to compare against
        return [""] * len(rounded)
    distinct = sorted({value for value in rounded if value is not None}, reverse=higher_is_better)
    best = distinct[0] if distinct else None
    second = distinct[1] if len(distinct) > 1 else None
    return ["best" if v is not None and v == best else "second" if v is not None and v == second else ""
            for v in rounded]


@dataclass
class Cell:
    value: float | None
    low: float | None = None
    high: float | None = None
    mark: str = ""
    n: int | None = None

    @property
    def text(self) -> str:
        return "—" if self.value is None else f"{self.value:.2f}"

    @property
    def ci_text(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"[{self.low:.2f}, {self.high:.2f}]"


@dataclass
class Row:
    label: str
    cells: list[Cell]
    kind: str = "ours"  # "ours", "reference", "paper", "ours-side", "missing"
    note: str = ""
    random: bool = False
    counts: str = ""


@dataclass
class Table:
    title: str
    groups: list[tuple[str, int]]  # (group label, number of columns)
    columns: list[str]  # column labels, all groups
    rows: list[Row]
    table_id: str = ""
    caption: str = ""
    first_header: str = "Method"
    column_names: tuple[str, ...] = ()  # the score columns of one group, in order
    notes: list[str] = field(default_factory=list)  # footnotes under the caption


def column_label(name: str) -> str:
    spec = column_specs().get(name)
    return spec.label if spec is not None else name


def suite_table(title: str, suites: Sequence[str], columns: Sequence[str], rows: list[Row], table_id: str,
                caption: str, first_header: str = "Method") -> Table:
    """A table with one group of ``columns`` per suite (Table 1's layout)."""
    return Table(title, [(suite_label(s), len(columns)) for s in suites],
                 [column_label(c) for _ in suites for c in columns], rows, table_id=table_id, caption=caption,
                 first_header=first_header, column_names=tuple(columns))


def mark_rows(rows: list[Row], columns: Sequence[str], ranked: Iterable[str] = ("ours", "paper")) -> None:
    """Best/second marks per cell column among the rows whose kind is in ``ranked`` (when 2 or more); rows with
    random weights are never ranked (their numbers mean nothing).

    ``columns`` are the score columns of one suite group (the cells repeat them per group).
    """
    ranked = set(ranked)
    eligible = [row for row in rows if row.kind in ranked and not row.random]
    if len(eligible) < 2 or not columns:  # a single row has nothing to be best against
        return
    specs = column_specs()
    for index in range(len(eligible[0].cells)):
        name = columns[index % len(columns)]
        higher = specs[name].higher_is_better if name in specs else True
        marks = rank_marks([row.cells[index].value for row in eligible], higher_is_better=higher)
        for row, mark in zip(eligible, marks):
            row.cells[index].mark = mark


def cell_from(record: dict[str, Any] | None, column: str, with_ci: bool = True) -> Cell:
    if record is None:
        return Cell(None)
    return Cell(
        number(record.get(column)),
        number(record.get(f"{column}_ci_low")) if with_ci else None,
        number(record.get(f"{column}_ci_high")) if with_ci else None,
        n=int(record["n_scored"]) if number(record.get("n_scored")) is not None else None,
    )


def board_columns(board: pd.DataFrame) -> list[str]:
    """The registered score columns a leaderboard has values for, in leaderboard order."""
    known = column_specs()
    return [c for c in ordered_columns(board.columns) if c in known and board[c].notna().any()]


def scale_caption(columns: Sequence[str] | None = None) -> str:
    """How the numbers of ``columns`` (default: every registered one) read, e.g. "CLIP-T, CLIP-I x100; D.D in %"."""
    known = column_specs()
    specs = [known[c] for c in columns if c in known] if columns is not None else list(known.values())
    scaled = [f"{spec.label}" for spec in specs if not spec.unit and spec.scale == 100]
    units = [f"{spec.label} in {spec.unit}" for spec in specs if spec.unit]
    return (f"{', '.join(scaled)} x100" if scaled else "") + (f"; {', '.join(units)}" if units else "")


def video_sizes(methods: Sequence[Any]) -> dict[tuple[str, str], str]:
    """``(row, suite) -> "TxHxW"``: the most common size of a method's scored videos on a suite (keyed by its table
    row, the method folder name unless runs of that name are kept apart)."""
    sizes = {}
    for data in methods:
        scores = data.scores
        if scores is None or not len(scores) or not {"num_frames", "height", "width"} <= set(scores.columns):
            continue
        for suite, part in scores[scores["error"] == ""].groupby("suite"):
            shapes = part[["num_frames", "height", "width"]].dropna().astype(int)
            if len(shapes):
                t, h, w = shapes.value_counts().index[0]
                sizes[(getattr(data, "row", "") or data.method, str(suite))] = f"{t}x{h}x{w}"
    return sizes


def size_notes(sizes: dict[tuple[str, str], str]) -> dict[str, str]:
    """``method -> note`` for methods whose videos have another size than most methods' on the same suite (a
    video model scored at its native size, say), so a reader sees that the numbers compare unlike videos."""
    notes: dict[str, list[str]] = {}
    for suite in {suite for _, suite in sizes}:
        on_suite = {method: size for (method, name), size in sizes.items() if name == suite}
        common = pd.Series(list(on_suite.values())).mode().iloc[0]
        for method, size in on_suite.items():
            if size != common:
                notes.setdefault(method, []).append(f"scored at its own size {size} on {suite_label(suite)} "
                                                    f"(most: {common})")
    return {method: "; ".join(parts) for method, parts in notes.items()}


def row_key(record: dict[str, Any]) -> str:
    """The table row a leaderboard record belongs to (``row``, set by the report's loader; else the method)."""
    row = record.get("row")
    return str(row) if isinstance(row, str) and row else str(record["method"])


def is_random(record: dict[str, Any] | None) -> bool:
    """A leaderboard record scored with random metric weights or generated with random model weights."""
    return record is not None and any(flag(record.get(name)) for name in ("random_weights", "method_random_weights"))


def counts_text(by_key: dict[tuple[str, str], dict[str, Any]], row: str, suites: Sequence[str]) -> str:
    """``"DreamBench: 3/4; smoke: 4/4"``: scored / cases of a row on each suite it has."""
    return "; ".join(
        f"{suite_label(suite)}: {int(by_key[(row, suite)]['n_scored'])}/{int(by_key[(row, suite)]['n_cases'])}"
        for suite in suites if (row, suite) in by_key
    )


def leaderboard_table(board: pd.DataFrame, methods_data: Sequence[Any] = ()) -> Table:
    """Our leaderboard in Table 1's layout: rows = methods, column groups = suites.

    Rows are keyed by method folder name (the ``row`` column the loader sets), so the rows of several RESULTS
    folders' leaderboards (one per suite) for the same folder name fill one row's column groups, unless the runs
    differ (generation settings, seed, package versions, metric configuration): then each is its own row and says
    why. A method whose videos have another size than most on a suite (frames x height x width, from scores.csv)
    says so in its row. Rows with random weights are tagged and never get best/second marks.
    """
    notes = size_notes(video_sizes(methods_data))
    apart = {data.row: data.apart for data in methods_data if getattr(data, "apart", "")}
    suites = suite_order(board["suite"].astype(str)) if len(board) else []
    columns = board_columns(board) if len(board) else []
    by_key = {(row_key(r), str(r["suite"])): r for r in board.to_dict("records")}
    firsts: dict[str, dict[str, Any]] = {}
    for record in board.to_dict("records"):
        firsts.setdefault(row_key(record), record)
    order = sorted(firsts, key=lambda m: (flag(firsts[m].get("reference")), m))
    rows = []
    for key in order:
        first = firsts[key]
        cells = [cell_from(by_key.get((key, suite)), column) for suite in suites for column in columns]
        random = any(is_random(by_key.get((key, s))) for s in suites)
        note = "; ".join(part for part in (notes.get(key, ""), apart.get(key, "")) if part)
        rows.append(Row(key, cells, kind="reference" if flag(first.get("reference")) else "ours",
                        random=random, counts=counts_text(by_key, key, suites), note=note))
    mark_rows(rows, columns, ranked=("ours",))
    return suite_table(
        "Our leaderboard", suites, columns, rows, table_id="ours",
        caption=f"Means over scored cases ({scale_caption(columns)}) with 95% bootstrap intervals. Bold: best, "
                "underlined: second best per column among the evaluated methods with real weights (reference and "
                "random-weights rows excluded).",
    )


def subject_tables(methods: Sequence[Any], n_resamples: int, seed: int) -> list[Table]:
    """Per suite: one row per (subject, method) with the means and 95% intervals.

    Rows name the method by its label (the folder name, plus its results folder where two folders share
    the name); each table's caption names the results folders it draws from.
    """
    by_label = {data.label: data for data in methods}
    parts = [data.scores.assign(method=data.label) for data in methods if data.scores is not None and len(data.scores)]
    if not parts:
        return []
    scores = pd.concat(parts, ignore_index=True)
    scores["subject"] = scores["subject"].fillna("").astype(str)
    scores["suite"] = scores["suite"].fillna("unknown").astype(str)
    columns = [c for c in ordered_columns(scores.columns) if c in column_specs()]
    table = aggregate(scores, by=["suite", "subject", "method"], columns=columns, n_resamples=n_resamples, seed=seed)
    tables = []
    for suite in suite_order(table["suite"]):
        rows = []
        part = table[table["suite"] == suite]
        for record in part.to_dict("records"):
            label = str(record["method"])
            kind = "reference" if by_label[label].reference else "ours"
            cells = [cell_from(record, c) for c in columns]
            rows.append(Row(f"{record['subject'] or '(no subject)'} — {label}", cells, kind=kind,
                            counts=f"{int(record['n_scored'])}/{int(record['n_cases'])}"))
        folders = list(dict.fromkeys(by_label[str(m)].results_dir for m in part["method"]))
        tables.append(suite_table(
            f"Per subject: {suite_label(suite)}", [suite], columns, rows, table_id=f"subjects-{slug(suite) or 'suite'}",
            caption=f"Suite {suite_label(suite)}, from {', '.join(folders)}.", first_header="Subject — method",
        ))
    return tables
