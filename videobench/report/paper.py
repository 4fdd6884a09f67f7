"""The paper's published Table 1 and Table 2 (``videobench/paper/*.csv``) with our matching runs beside them.

A run stands for a published row when its run.json says so: ``paper_row`` (Table 1's method label) and
``table2_setting`` (Table 2's row), both recorded by ``videobench generate`` from the method's registered
metadata. Nothing is inferred from folder names. A published row without a run is kept and marked "published,
not reproduced", with what is missing: the method to run, or that no installed method reproduces it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import pandas as pd

from videobench.report.load import MethodData
from videobench.report.tables import Row, Table, cell_from, column_label, mark_rows, suite_table
from videobench.suites import suite_label

logger = logging.getLogger(__name__)


def read_paper_table(name: str) -> pd.DataFrame:
    with resources.files("videobench").joinpath("paper", name).open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


def paper_caption(table: str) -> dict[str, str]:
    """The title and caption of a published table (``videobench/paper/captions.json``)."""
    text = resources.files("videobench").joinpath("paper", "captions.json").read_text(encoding="utf-8")
    return json.loads(text)[table]


def paper_columns(paper: pd.DataFrame) -> list[str]:
    """The score columns of a published table (every column after the row's description)."""
    return [c for c in paper.columns if c not in {"row", "method", "base", "suite", "setting",
                                                  "reference_attention_3d", "tab", "erae"}]


def registered_paper_rows() -> dict[str, list[str]]:
    """Table 1 label -> the installed methods whose default options reproduce it."""
    from videobench.methods import available_methods

    rows: dict[str, list[str]] = {}
    for name, spec in available_methods().items():
        try:
            row = spec.paper(spec.parse_options({})).table1_row
        except Exception as error:  # a plugin whose defaults do not parse must not break the report
            logger.debug("method %s: no default paper row (%s)", name, error)
            continue
        if row:
            rows.setdefault(row, []).append(name)
    return rows


def missing_note(label: str, installed: dict[str, list[str]]) -> str:
    if label in installed:
        commands = " or ".join(f"`videobench generate --method {name}`" for name in installed[label])
        return f"published, not reproduced in these results: run {commands} on each suite"
    return "published, not reproduced: no installed method reproduces this row"


def _runs_by(methods: Sequence[MethodData], key: str) -> dict[str, set[str]]:
    runs: dict[str, set[str]] = {}
    for data in methods:
        value = data.info.get(key)
        if value:
            runs.setdefault(str(value), set()).add(data.method)
    return runs


def paper_table1(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 1 with our matching runs under each paper row.

    Our runs are keyed by method folder name, so one folder name found in several RESULTS folders (one
    per suite) is one row with every suite it was run on.
    """
    paper = read_paper_table("table1.csv")
    suites = list(dict.fromkeys(paper["suite"].astype(str)))
    columns = paper_columns(paper)
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    ours_by_paper = _runs_by(methods, "paper_row")
    installed = registered_paper_rows() if set(paper["method"].astype(str)) - set(ours_by_paper) else {}
    rows = []
    for (_, name), group in paper.groupby(["row", "method"], sort=True):
        by_suite = {str(r["suite"]): r for r in group.to_dict("records")}
        base = str(group["base"].fillna("").iloc[0])
        label = f"{name} + {base}" if base else str(name)
        cells = [cell_from(by_suite.get(suite), column, with_ci=False) for suite in suites for column in columns]
        ours = sorted(ours_by_paper.get(str(name), []))
        rows.append(Row(label, cells, kind="paper",
                        note="published" if ours else missing_note(str(name), installed)))
        for method in ours:
            mine = [cell_from(by_key.get((method, suite)), column) for suite in suites for column in columns]
            rows.append(Row(f"ours: {method}", mine, kind="ours-side", note="this run"))
    mark_rows(rows, columns, ranked=("paper",))
    text = paper_caption("table1")
    return suite_table(text["title"], suites, columns, rows, table_id="paper-table1", caption=text["caption"])


def paper_table2(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 2 (ablation) with our runs of the same setting (run.json's table2_setting) beside it."""
    paper = read_paper_table("table2.csv")
    columns = paper_columns(paper)
    setting_of = {(data.method, suite): str(data.info.get("table2_setting") or "")
                  for data in methods for suite in data.suites}
    records = board.to_dict("records")
    rows = []
    for record in paper.sort_values("row").to_dict("records"):
        setting, suite = str(record["setting"]), str(record["suite"])
        matches = [ours for ours in records if str(ours["suite"]) == suite
                   and setting_of.get((str(ours["method"]), suite)) == setting]
        rows.append(Row(setting, [cell_from(record, c, with_ci=False) for c in columns], kind="paper",
                        note="published" if matches else "published, not reproduced in these results"))
        for ours in matches:
            rows.append(Row(f"ours: {ours['method']}", [cell_from(ours, c) for c in columns], kind="ours-side",
                            note="this run"))
    mark_rows(rows, columns, ranked=("paper",))
    suites = list(dict.fromkeys(paper["suite"].astype(str)))
    text = paper_caption("table2")
    return Table(text["title"], [(suite_label(s), len(columns)) for s in suites], [column_label(c) for c in columns],
                 rows, table_id="paper-table2", caption=text["caption"], first_header="Setting",
                 column_names=tuple(columns))


def paper_points(table: str = "table1.csv") -> list[dict[str, Any]]:
    """The published rows as records (for the plots)."""
    paper = read_paper_table(table)
    return [{**record, "label": str(record.get("method") or record.get("setting"))}
            for record in paper.to_dict("records")]
