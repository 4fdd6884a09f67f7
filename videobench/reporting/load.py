"""The report's input: one or more RESULTS folders, their leaderboard rows and their method folders.

Several folders (one per suite) merge into one report: a method folder name found in several of them is one row
with each suite's columns (Table 1), but only when the runs are alike (:func:`run_identity`: the same generation
settings, seed, key package versions and metric configuration); runs that differ are kept apart, each its own row
saying why (:func:`assign_rows`). A folder without its own ``leaderboard.csv`` whose subfolders are RESULTS folders
stands for those subfolders (:func:`resolve_results_dirs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from videobench import results as layout
from videobench.scoring.inputs import is_reference_run, run_suite
from videobench.scoring.outputs import read_scores
from videobench.suites import suite_order


class ReportInputError(ValueError):
    """The RESULTS folders given cannot make one report (clashing runs, no output path, not RESULTS)."""


@dataclass
class MethodData:
    method: str
    info: dict[str, Any]
    scores: pd.DataFrame | None
    cases: dict[str, dict[str, Any]]
    reference: bool
    folder: Path
    note: str = ""
    #: the RESULTS folder it was read from, as given (for labels and errors)
    results_dir: str = ""
    #: its suites: those of scores.csv, else run.json's (a method folder normally holds exactly one)
    suites: tuple[str, ...] = ()
    #: the name shown in per-subject and per-case sections (unique over all folders; see ``_label_methods``)
    label: str = ""
    #: its row in our leaderboard and the paper tables (the folder name, or the label when kept apart)
    row: str = ""
    #: why the row is kept apart from runs of the same folder name in other RESULTS folders
    apart: str = ""


def load_method(folder: Path, results_dir: str = "") -> MethodData:
    info: dict[str, Any] = {}
    note = ""
    if (folder / layout.RUN_FILE).is_file():
        try:
            info = layout.read_run_json(folder / layout.RUN_FILE)
        except (OSError, ValueError) as error:
            note = f"{folder / layout.RUN_FILE}: unreadable ({error})"
    cases = {}
    for line in layout.read_cases_jsonl(folder / layout.CASES_FILE):
        if line.record is not None and line.record.get("case_id") is not None:
            cases[str(line.record["case_id"])] = line.record
    scores = None
    if (folder / layout.SCORES_FILE).is_file():
        try:
            scores = read_scores(folder / layout.SCORES_FILE)
        except (OSError, ValueError, KeyError) as error:
            note = f"{folder / layout.SCORES_FILE}: unreadable ({error})"
        if scores is not None and "case_id" not in scores:
            note = f"{folder / layout.SCORES_FILE}: not a videobench scores.csv (no case_id column); score again"
            scores = None
    elif not note:
        note = "not scored yet (run videobench score)"
    suites: tuple[str, ...] = ()
    if scores is not None and "suite" in scores and len(scores):
        suites = tuple(suite_order(s for s in scores["suite"].astype(str) if s))
    if not suites and info:
        suite = run_suite(info)[0]
        suites = (suite,) if suite != "unknown" else ()
    return MethodData(folder.name, info, scores, cases, is_reference_run(info), folder, note,
                      results_dir=results_dir or str(folder.parent), suites=suites)


def resolve_results_dirs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The RESULTS folders that ``paths`` stand for, in the order given, each once.

    The rule, per path:

    1. a folder holding ``leaderboard.csv`` is a RESULTS folder;
    2. a folder holding method folders (subfolders with ``cases.jsonl``) but no ``leaderboard.csv`` is a
       RESULTS folder that was not scored: an error asking for ``videobench score``;
    3. otherwise, a folder whose subfolders hold ``leaderboard.csv`` is a parent of RESULTS folders
       (``results/`` holding ``results/suite-a`` and ``results/suite-b``) and stands for those
       subfolders, in name order; a subfolder holding method folders but no ``leaderboard.csv`` is then
       an error (it would silently miss from the report);
    4. anything else is an error.

    A folder reached twice (given twice, or given and also found under a parent) counts once.

    Raises:
        FileNotFoundError: a path is missing or is neither a scored RESULTS folder nor a parent of some.
        ReportInputError: no path given.
    """
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not given:
        raise ReportInputError("no RESULTS folder given")
    found: list[Path] = []
    for path in map(Path, given):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: results folder does not exist")
        if (path / layout.LEADERBOARD_FILE).is_file():
            found.append(path)
            continue
        if layout.method_dirs(path):
            raise FileNotFoundError(f"{path / layout.LEADERBOARD_FILE}: no leaderboard; "
                                    f"run `videobench score {path}` first")
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        scored = [p for p in children if (p / layout.LEADERBOARD_FILE).is_file()]
        unscored = [p for p in children if p not in scored and layout.method_dirs(p)]
        if unscored:
            raise FileNotFoundError(
                f"{path}: RESULTS folder(s) without {layout.LEADERBOARD_FILE}: "
                f"{', '.join(str(p) for p in unscored)}; run `videobench score` on each first")
        if not scored:
            raise FileNotFoundError(
                f"{path / layout.LEADERBOARD_FILE}: no leaderboard, and no subfolder holds one; "
                f"run `videobench score {path}` first (or name the RESULTS folders)")
        found.extend(scored)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def check_unique_runs(board: pd.DataFrame, methods: list[MethodData]) -> None:
    """Refuse a (method, suite) pair held by two RESULTS folders: Table 1 would have two values for one cell."""
    holders: dict[tuple[str, str], list[str]] = {}
    pairs = {(str(r["method"]), str(r["suite"]), str(r["results_dir"])) for r in board.to_dict("records")}
    pairs |= {(data.method, suite, data.results_dir) for data in methods for suite in data.suites}
    for method, suite, folder in sorted(pairs):
        if folder not in holders.setdefault((method, suite), []):
            holders[(method, suite)].append(folder)
    clashes = [f"method {method!r} on suite {suite!r} is in both {folders[0]} and {folders[1]}"
               + (f" (and {', '.join(folders[2:])})" if len(folders) > 2 else "")
               for (method, suite), folders in holders.items() if len(folders) > 1]
    if clashes:
        raise ReportInputError("; ".join(clashes) + ". A method's results on one suite must come from one "
                               "RESULTS folder: rename one method folder or report the folders separately.")


def label_methods(methods: list[MethodData]) -> None:
    """Method folder name as label; with the results folder added where two folders share the name."""
    counts: dict[str, int] = {}
    for data in methods:
        counts[data.method] = counts.get(data.method, 0) + 1
    for data in methods:
        data.label = data.method if counts[data.method] == 1 else f"{data.method} [{data.results_dir}]"


#: packages whose versions change generated videos or metric values: runs that differ in them are not merged
KEY_PACKAGES = ("torch", "diffusers", "transformers", "open_clip_torch", "timm")
#: the scores.csv columns naming the configuration of the metric family that produced a value
CONFIG_SUFFIX = "_config_sha256"


def read_metric_settings(method_dir: Path) -> dict[str, dict[str, Any]]:
    """A method folder's :data:`~videobench.results.METRIC_SETTINGS_FILE` (config hash -> family and non-default
    settings); entries that are not of that shape, or an unreadable file, are left out (the page then shows hashes)."""
    import json

    try:
        data = json.loads((method_dir / layout.METRIC_SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(config): entry for config, entry in data.items()
            if isinstance(entry, dict) and isinstance(entry.get("family"), str)
            and isinstance(entry.get("settings"), dict)}


def metric_configs(scores: pd.DataFrame | None) -> dict[str, tuple[str, ...]]:
    """``family -> the distinct config hashes`` of the scored (error-free) rows of a scores.csv."""
    if scores is None or not len(scores):
        return {}
    ok = scores[scores["error"].fillna("").astype(str) == ""] if "error" in scores else scores
    configs = {}
    for column in sorted(c for c in scores.columns if str(c).endswith(CONFIG_SUFFIX)):
        values = sorted({str(v) for v in ok[column] if isinstance(v, str) and v})
        if values:
            configs[column[: -len(CONFIG_SUFFIX)]] = tuple(values)
    return configs


def run_identity(data: MethodData) -> dict[str, Any]:
    """What must be equal for two runs' numbers to share a row: generation settings (run.json ``config``: model,
    LoRA, steps, guidance, ...), the seed, the versions of :data:`KEY_PACKAGES` and each metric family's
    configuration (the ``<family>_config_sha256`` columns of scores.csv)."""
    packages = data.info["packages"] if isinstance(data.info.get("packages"), dict) else {}
    return {
        "generation settings": data.info.get("config"),
        "seed": data.info.get("seed"),
        **{f"{name} version": packages.get(name) for name in KEY_PACKAGES},
        **{f"{family} metric settings": configs for family, configs in metric_configs(data.scores).items()},
    }


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(v[:8] for v in value)
    if isinstance(value, dict):
        return "{…}"
    return str(value)


def identity_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two :func:`run_identity` results, e.g. ``"seed 0 vs 1; dino metric settings"``."""
    parts = []
    for key in sorted(set(a) | set(b), key=lambda k: list(a).index(k) if k in a else len(a)):
        if a.get(key) == b.get(key):
            continue
        if key == "generation settings" and (isinstance(a.get(key), dict) or isinstance(b.get(key), dict)):
            mine = a[key] if isinstance(a.get(key), dict) else {}
            theirs = b[key] if isinstance(b.get(key), dict) else {}
            names = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            parts.append("generation settings (" + ", ".join(
                f"{k} {_short(mine.get(k))} vs {_short(theirs.get(k))}" for k in names) + ")")
        elif key.endswith("metric settings"):
            parts.append(f"{key} (config {_short(a.get(key))} vs {_short(b.get(key))})")
        else:
            parts.append(f"{key} {_short(a.get(key))} vs {_short(b.get(key))}")
    return "; ".join(parts)


def assign_rows(methods: list[MethodData]) -> None:
    """Give each method folder its table row: folders of one name from several RESULTS folders share a row only
    when their :func:`run_identity` is equal; otherwise each is its own row (its label) saying what differs."""
    by_name: dict[str, list[MethodData]] = {}
    for data in methods:
        by_name.setdefault(data.method, []).append(data)
    for name, group in by_name.items():
        identities = [run_identity(data) for data in group]
        alike = all(identity == identities[0] for identity in identities)
        for data, identity in zip(group, identities):
            data.row = name if alike else data.label
            if not alike:
                others = [f"{other.label}: {identity_difference(identity, theirs)}"
                          for other, theirs in zip(group, identities) if other is not data and theirs != identity]
                data.apart = "kept apart from " + "; ".join(others)


def read_board(results_dir: Path) -> pd.DataFrame:
    board_path = results_dir / layout.LEADERBOARD_FILE
    if not board_path.is_file():
        raise FileNotFoundError(f"{board_path}: no leaderboard; run `videobench score {results_dir}` first")
    try:
        board = pd.read_csv(board_path, dtype={"method": str, "suite": str, "method_name": str})
    except (ValueError, pd.errors.ParserError) as error:  # EmptyDataError is a ValueError
        raise ReportInputError(f"{board_path}: unreadable leaderboard ({type(error).__name__}: {error}); "
                               f"run `videobench score {results_dir}` again") from None
    missing = [column for column in ("method", "suite") if column not in board]
    if missing:
        raise ReportInputError(f"{board_path}: not a videobench leaderboard (no {', '.join(missing)} column); "
                               f"run `videobench score {results_dir}` again")
    check_board_numbers(board, board_path)
    return board.assign(results_dir=str(results_dir))


#: leaderboard.csv columns that hold counts or flags besides the metric columns and their intervals.
_COUNT_COLUMNS = ("n_cases", "n_scored", "n_failed", "random_weights", "method_random_weights", "reference")


def check_board_numbers(board: pd.DataFrame, board_path: Path) -> None:
    """Refuse a metric, interval or count cell that is not a finite number (``inf``, ``abc``); empty cells are
    allowed (a column nothing was scored for). Raises :class:`ReportInputError` naming the file, method and column."""
    from videobench.metrics.registry import column_specs

    names = [name for spec in column_specs() for name in (spec, f"{spec}_ci_low", f"{spec}_ci_high")]
    for column in [name for name in (*names, *_COUNT_COLUMNS) if name in board]:
        text = board[column]
        numbers = pd.to_numeric(text, errors="coerce").astype(float)
        bad = text.notna() & (text.astype(str).str.strip() != "") & ~numbers.map(math.isfinite)
        if bad.any():
            row = bad.idxmax()
            value = str(text[row])
            shown = repr(value if len(value) <= 40 else value[:37] + "...")
            raise ReportInputError(f"{board_path}: method {board.at[row, 'method']!r}, column {column}: {shown} is not "
                                   f"a finite number; run `videobench score {board_path.parent}` again")


def load_results(results_dirs: Sequence[Path]) -> tuple[pd.DataFrame, list[MethodData]]:
    """The concatenated leaderboard rows (with ``results_dir`` and ``row`` columns: where each came from, and the
    table row it belongs to, see :func:`assign_rows`) and method folders of RESULTS folders.

    Raises:
        FileNotFoundError: a folder has no leaderboard.csv.
        ReportInputError: two folders hold the same (method, suite) pair.
    """
    boards = [read_board(path) for path in results_dirs]
    board = pd.concat(boards, ignore_index=True) if len(boards) > 1 else boards[0]
    methods = [load_method(folder, str(path)) for path in results_dirs for folder in layout.method_dirs(path)]
    check_unique_runs(board, methods)
    label_methods(methods)
    assign_rows(methods)
    row_of = {(data.method, data.results_dir): data.row for data in methods}
    board["row"] = [row_of.get((str(r["method"]), str(r["results_dir"])), str(r["method"]))
                    for r in board.to_dict("records")]
    return board, methods
