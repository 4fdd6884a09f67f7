"""Scoring, step 3 (write): the rows of ``scores.csv`` and of ``leaderboard.csv``, and reading them back.

``scores.csv`` holds one row per case: ids, the raw score columns (registry order; the default families' columns
are always there, empty when a ``--metrics`` subset did not compute them), the video diagnostics, the
error (empty when scored), whether a metric model was random, the input hashes, then each metric's diagnostics and
config hash. ``leaderboard.csv`` holds one row per (method, suite): the method's identity from run.json (name,
kind, paper row, Table 2 setting, reference flag, random weights) and every score column's mean x scale with its
95% bootstrap interval (:mod:`videobench.leaderboard`).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from videobench.leaderboard import aggregate
from videobench.metrics.registry import column_specs, default_columns, ordered_columns
from videobench.scoring.compute import DIAGNOSTIC_COLUMNS
from videobench.scoring.inputs import is_reference_run, run_suite

#: scores.csv columns before the score columns, and after them.
ID_COLUMNS = ("case_id", "suite", "subject")
TRAILING_COLUMNS = (*DIAGNOSTIC_COLUMNS, "error", "random_weights", "video_sha256", "inputs_sha256")
#: leaderboard.csv columns before the per-metric means and intervals.
LEADERBOARD_KEY_COLUMNS = ("method", "suite", "suite_version", "method_name", "kind", "paper_row", "table2_setting",
                           "reference")


def is_layout_column(name: str) -> bool:
    """A column of the scores.csv layout itself (ids, diagnostics, error, hashes), not a metric's output."""
    return name in ID_COLUMNS or name in TRAILING_COLUMNS


def score_columns_of(columns: Any) -> list[str]:
    """The registered score columns among ``columns``, in leaderboard order."""
    known = column_specs()
    return [name for name in ordered_columns(columns) if name in known]


def scores_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The scores.csv table of ``rows`` (see the module docstring for the column order and types)."""
    present = {key for row in rows for key in row}
    scores = score_columns_of(present | set(default_columns()))  # the default columns always, empty if not scored
    head = [*ID_COLUMNS, *scores, *TRAILING_COLUMNS]
    extras = sorted(present - set(head))
    frame = pd.DataFrame(rows, columns=head + extras)
    frame["error"] = frame["error"].fillna("").astype(str)
    frame["random_weights"] = frame["random_weights"].fillna(0).astype(int)
    specs = column_specs()
    for column in scores:
        if specs[column].binary:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("num_frames", "height", "width"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def partial_columns(method: str, frame: pd.DataFrame) -> list[str]:
    """Warnings for score columns that only some scored cases have (a ``--metrics`` run after videos changed).

    The leaderboard mean of such a column covers fewer cases than ``n_scored``; say so instead of hiding it.
    """
    ok = frame[frame["error"] == ""]
    messages = []
    for column in score_columns_of(frame.columns):
        missing = ok.loc[pd.to_numeric(ok[column], errors="coerce").isna(), "case_id"].tolist()
        if 0 < len(missing) < len(ok):
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            messages.append(f"{method}: {column} is missing for {len(missing)} of {len(ok)} scored case(s) ({shown}); "
                            f"its mean covers the others only; score {column} again to fill it")
    return messages


def method_identity(method: str, info: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard's identity columns of a method folder, from its run.json."""
    return {
        "method_name": str(info.get("method", method)),
        "kind": str(info.get("kind") or ""),
        "paper_row": str(info.get("paper_row") or ""),
        "table2_setting": str(info.get("table2_setting") or ""),
        "reference": int(is_reference_run(info)),
        "suite_version": run_suite(info)[1],
        "method_random_weights": int(bool(info.get("random_weights", False))),
    }


def build_leaderboard(
    frames: list[tuple[str, dict[str, Any], pd.DataFrame]], n_resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per (method, suite): means x scale with 95% bootstrap CIs (see :mod:`videobench.leaderboard`).

    ``random_weights`` says a metric model was random-initialised; ``method_random_weights`` that the method
    generated its videos with random weights (run.json); ``reference`` marks calibration rows (kind reference).
    """
    parts = [frame.assign(method=method) for method, _info, frame in frames if len(frame)]
    identity = {method: method_identity(method, info) for method, info, _frame in frames}
    columns = score_columns_of({column for _m, _i, frame in frames for column in frame.columns})
    empty = pd.DataFrame(columns=["method", "suite", "error", "random_weights", *columns])
    table = aggregate(pd.concat(parts, ignore_index=True) if parts else empty, by=["method", "suite"],
                      columns=columns, n_resamples=n_resamples, seed=seed)
    for key in ("suite_version", "method_name", "kind", "paper_row", "table2_setting", "reference",
                "method_random_weights"):
        table[key] = [identity[method][key] for method in table["method"]]
    ordered = list(LEADERBOARD_KEY_COLUMNS) + [c for c in table.columns if c not in LEADERBOARD_KEY_COLUMNS]
    return table[ordered]


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a scores.csv back (case ids as strings, empty errors as "")."""
    frame = pd.read_csv(path, dtype={"case_id": str, "subject": str, "suite": str, "error": str, "video_sha256": str,
                                     "inputs_sha256": str})
    for column in ("error", "subject", "suite"):
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame
