"""The paper's published Table 1 and Table 2 (``videobench/paper/*.csv``) with our matching runs beside them.

A run stands for a published row when its run.json says so: ``paper_row`` (Table 1's method label) and
``table2_setting`` (Table 2's row), both recorded by ``videobench generate`` from the method's registered
metadata. Nothing is inferred from folder names. A published row without a run is kept and marked "published,
not reproduced", with what is missing: the method to run, or that no installed method reproduces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from videobench.methods import methods_by_paper_row
from videobench.published import published_caption, published_frame
from videobench.report.load import MethodData
from videobench.report.tables import Row, Table, cell_from, mark_rows, suite_table
from videobench.suites import suite_order


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
    runs: dict[str, set[str]] = {}
    for data in methods:
        value = data.info.get(key)
        if value:
            runs.setdefault(str(value), set()).add(data.method)
    return runs


def _suites(paper: pd.DataFrame, board: pd.DataFrame, ours: set[str]) -> list[str]:
    """The published suites, then any other suite our matching runs were scored on (e.g. smoke)."""
    published = list(dict.fromkeys(paper["suite"].astype(str)))
    others = {str(r["suite"]) for r in board.to_dict("records") if str(r["method"]) in ours} - set(published)
    return published + suite_order(others)


def _paper_rows_with_ours(paper: pd.DataFrame, key: str, label_of, note_of, board: pd.DataFrame,
                          runs: dict[str, set[str]]) -> tuple[list[Row], list[str], list[str], list[str]]:
    """One published row per ``key`` value (its cells per suite), each followed by our runs of that row; and the
    footnotes saying what is missing for the rows nobody ran."""
    columns = paper_columns(paper)
    suites = _suites(paper, board, {method for methods in runs.values() for method in methods})
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    rows, notes = [], []
    for (_, name), group in paper.groupby(["row", key], sort=True):
        by_suite = {str(r["suite"]): r for r in group.to_dict("records")}
        cells = [cell_from(by_suite.get(suite), column, with_ci=False) for suite in suites for column in columns]
        ours = sorted(runs.get(str(name), []))
        note, footnote = ("published", "") if ours else note_of(str(name))
        rows.append(Row(label_of(group), cells, kind="paper", note=note))
        if footnote:
            notes.append(footnote)
        for method in ours:
            mine = [cell_from(by_key.get((method, suite)), column) for suite in suites for column in columns]
            rows.append(Row(f"ours: {method}", mine, kind="ours-side", note="this run"))
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
        paper, "method", label, lambda name: missing_note(name, installed), board, runs)
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
        lambda name: ("published, not reproduced", f"{name}: not in these results"), board, runs)
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
