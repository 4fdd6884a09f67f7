"""The paper's published Table 1 and Table 2 (``videobench/paper/*.csv``) with our matching runs beside them.

A run stands for a published row when its run.json says so: ``paper_row`` (Table 1's method label) and
``table2_setting`` (Table 2's row), both recorded by ``videobench generate`` from the method's registered
metadata. Nothing is inferred from folder names. A published row counts as reproduced only by a run that
:func:`reproduces` it: real weights (neither the method nor the metrics random-initialised), no preset (the tiny
presets are not the paper's settings) and every case of the full suite scored, on every suite the paper reports
the row on. Any other published row keeps "published, not reproduced" with what is missing (the method to run,
that no installed method reproduces it, or why our runs do not count); our runs under it are shown for what they
are (random weights, preset, partial suite), never ranked and never relabelling the paper's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from videobench.methods import methods_by_paper_row
from videobench.published import published_caption, published_frame
from videobench.reporting.load import MethodData
from videobench.reporting.tables import Row, Table, cell_from, counts_text, is_random, mark_rows, row_key, suite_table
from videobench.suites import get_suite, suite_label, suite_order

#: the "scored / cases" cell of a published row: the paper states no per-row case counts
PAPER_COUNTS = "not stated in the paper"


def paper_columns(paper: pd.DataFrame) -> list[str]:
    """The score columns of a published table (every column after the row's description)."""
    return [c for c in paper.columns if c not in {"row", "method", "base", "suite", "setting",
                                                  "reference_attention_3d", "tab", "erae"}]


def missing_note(label: str, installed: dict[str, list[str]]) -> tuple[str, str]:
    """``(short note, footnote)`` of a published row nobody ran: what is missing to reproduce it."""
    if label in installed:
        commands = " or ".join(f"videobench generate --method {name}" for name in installed[label])
        return "published, not reproduced", f"{label}: not in these results; run {commands} on each suite"
    return "published, not reproduced", f"{label}: no installed method reproduces this row"


def _runs_by(methods: Sequence[MethodData], key: str) -> dict[str, set[str]]:
    """``published row -> our table rows`` (see :func:`videobench.reporting.load.assign_rows`) whose run.json names it."""
    runs: dict[str, set[str]] = {}
    for data in methods:
        value = data.info.get(key)
        if value:
            runs.setdefault(str(value), set()).add(data.row or data.method)
    return runs


def full_suite_size(suite: str) -> int | None:
    """The number of cases of a registered suite (without its data), or None when it does not declare one."""
    try:
        spec = get_suite(suite)
    except KeyError:
        return None
    return spec.count() if spec.count is not None else None


def why_not_reproduced(row: str, suites: Sequence[str], by_key: dict[tuple[str, str], dict[str, Any]],
                       methods: Sequence[MethodData]) -> str:
    """Why our table row ``row`` does not reproduce a published row on ``suites`` (the paper's), or ``""``."""
    reasons = []
    runs = [data for data in methods if (data.row or data.method) == row]
    records = [by_key.get((row, suite)) for suite in suites]
    if any(is_random(record) for record in records) or any(data.info.get("random_weights") for data in runs):
        reasons.append("random weights")
    presets = sorted({str(data.info["config"]["preset"]) for data in runs if isinstance(data.info.get("config"), dict)
                      and data.info["config"].get("preset")})
    if presets:
        reasons.append(f"{', '.join(presets)} preset")
    for suite, record in zip(suites, records):
        size = full_suite_size(suite)
        if record is None:
            reasons.append(f"not run on {suite_label(suite)}")
        elif size is None or int(record.get("n_scored") or 0) < size:
            reasons.append(f"{int(record.get('n_scored') or 0)} of {size or '?'} {suite_label(suite)} cases scored")
    return ", ".join(reasons)


def _suites(paper: pd.DataFrame, board: pd.DataFrame, ours: set[str]) -> list[str]:
    """The published suites, then any other suite our matching runs were scored on (e.g. smoke)."""
    published = list(dict.fromkeys(paper["suite"].astype(str)))
    others = {str(r["suite"]) for r in board.to_dict("records") if str(r["method"]) in ours} - set(published)
    return published + suite_order(others)


def _paper_rows_with_ours(paper: pd.DataFrame, key: str, label_of, note_of, board: pd.DataFrame,
                          runs: dict[str, set[str]], methods: Sequence[MethodData],
                          ) -> tuple[list[Row], list[str], list[str], list[str]]:
    """One published row per ``key`` value (its cells per suite), each followed by our runs of that row; and the
    footnotes saying what is missing for the rows nobody reproduced."""
    columns = paper_columns(paper)
    suites = _suites(paper, board, {method for methods in runs.values() for method in methods})
    by_key = {(row_key(r), str(r["suite"])): r for r in board.to_dict("records")}
    rows, notes = [], []
    for (_, name), group in paper.groupby(["row", key], sort=True):
        by_suite = {str(r["suite"]): r for r in group.to_dict("records")}
        published = list(dict.fromkeys(str(s) for s in group["suite"]))
        cells = [cell_from(by_suite.get(suite), column, with_ci=False) for suite in suites for column in columns]
        ours = sorted(runs.get(str(name), []))
        why = {mine: why_not_reproduced(mine, published, by_key, methods) for mine in ours}
        reproduced = [mine for mine in ours if not why[mine]]
        if reproduced:
            note, footnote = f"published; reproduced by {', '.join(reproduced)}", ""
        elif ours:
            note = "published, not reproduced"
            footnote = f"{name}: our runs do not reproduce it (" + "; ".join(
                f"{mine}: {why[mine]}" for mine in ours) + ")"
        else:
            note, footnote = note_of(str(name))
        rows.append(Row(label_of(group), cells, kind="paper", note=note, counts=PAPER_COUNTS))
        if footnote:
            notes.append(footnote)
        for mine in ours:
            cells_ours = [cell_from(by_key.get((mine, suite)), column) for suite in suites for column in columns]
            random = any(is_random(by_key.get((mine, suite))) for suite in suites)
            rows.append(Row(f"ours: {mine}", cells_ours, kind="ours-side", random=random,
                            note="this run" + (f"; not a reproduction: {why[mine]}" if why[mine] else ""),
                            counts=counts_text(by_key, mine, suites)))
    mark_rows(rows, columns, ranked=("paper",))
    return rows, suites, columns, notes


def paper_table1(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 1 with our matching runs (run.json's ``paper_row``) under each paper row.

    Our runs are keyed by method folder name, so one folder name found in several RESULTS folders (one per suite)
    is one row with every suite it was run on; suites beyond the paper's (smoke) get their own column group.
    """
    paper = published_frame("table1")
    runs = _runs_by(methods, "paper_row")
    installed = methods_by_paper_row() if set(paper["method"].astype(str)) - set(runs) else {}

    def label(group: pd.DataFrame) -> str:
        name, base = str(group["method"].iloc[0]), str(group["base"].fillna("").iloc[0])
        return f"{name} + {base}" if base else name

    rows, suites, columns, notes = _paper_rows_with_ours(
        paper, "method", label, lambda name: missing_note(name, installed), board, runs, methods)
    text = published_caption("table1")
    table = suite_table(text["title"], suites, columns, rows, table_id="paper-table1", caption=text["caption"])
    table.notes = notes
    return table


def paper_table2(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 2 (ablation) with our runs of each setting (run.json's ``table2_setting``) under it."""
    paper = published_frame("table2")
    runs = _runs_by(methods, "table2_setting")
    rows, suites, columns, notes = _paper_rows_with_ours(
        paper, "setting", lambda group: str(group["setting"].iloc[0]),
        lambda name: ("published, not reproduced", f"{name}: not in these results"), board, runs, methods)
    text = published_caption("table2")
    table = suite_table(text["title"], suites, columns, rows, table_id="paper-table2", caption=text["caption"],
                        first_header="Setting")
    table.notes = notes
    return table


def paper_points(table: str = "table1") -> list[dict[str, Any]]:
    """The published rows as records (for the plots)."""
    paper = published_frame(table)
    return [{**record, "label": str(record.get("method") or record.get("setting"))}
            for record in paper.to_dict("records")]
