"""``videobench report``: one or more RESULTS folders -> one self-contained HTML leaderboard.

A method folder holds one suite, so Table 1 (DreamBench | VideoBench) is naturally run as one RESULTS
folder per suite (``results/dreambench``, ``results/videobench``). The report reads any number of
RESULTS folders, concatenates their ``leaderboard.csv`` rows and method folders, and keys the rows of
our leaderboard and of the paper-table matches by the method folder name: ``customvideox`` of
``results/dreambench`` and ``customvideox`` of ``results/videobench`` form one row with both suites'
column groups. A (method, suite) pair found in two folders is refused. A folder without its own
``leaderboard.csv`` whose subfolders are RESULTS folders stands for those subfolders (see
:func:`resolve_results_dirs`).

The page holds, in order:

1. a banner when any method or metric ran with random weights (the numbers then mean nothing) and a
   note when cases failed;
2. our leaderboard in Table 1's layout (one column group per suite: DreamBench | VideoBench | others;
   CLIP-T, CLIP-I, DINO-I, T.Cons, D.D), every mean with its 95% bootstrap interval, best **bold** and
   second underlined per column among the non-calibration methods; calibration methods
   (``reference-still``, ``reference-pan``) are shown as reference rows;
3. the paper's Table 1 and Table 2 (``videobench/paper/*.csv``, sources in its README) with our matching
   runs beside each published row;
4. a per-subject breakdown per suite (naming the results folders it comes from);
5. per-case rows per method folder, labelled with its suite (and its results folder when two folders
   hold a method of that name): the reference thumbnail, a strip of frames from the video, the raw
   scores x100 and any error.

Images are inlined as base64 JPEG data URIs; the page needs no other file. The template is rendered
by a jinja2 ``Environment(autoescape=True)``, so every string from users (prompts, method and subject
names, error messages) is escaped. The file is written atomically.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import jinja2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

import videobench
from videobench import results as layout
from mediaio.atomic import atomic_write_text
from mediaio.images import ImageError, load_reference_image
from videobench.leaderboard import COLUMN_LABELS, SCORE_COLUMNS, aggregate
from videobench.results import utc_now
from videobench.score import is_reference_method, read_scores, run_suite
from mediaio.video import VideoError, read_video

DEFAULT_REPORT_NAME = "leaderboard.html"
#: Suites shown first, in Table 1's order; any other suite follows alphabetically.
SUITE_ORDER = ("dreambench", "videobench")
SUITE_LABELS = {"dreambench": "DreamBench", "videobench": "VideoBench", "smoke": "smoke"}
#: Which of our method folders stand for a published Table 1 row: normalised-name fragments
#: (lower case, letters and digits only) any of which the folder name or run.json method must contain.
PAPER_ALIASES: dict[str, tuple[str, ...]] = {
    "BLIP-Diffusion": ("blipdiffusion",),
    "IP-Adapter": ("ipadapter",),
    "λ-Eclipse": ("lambdaeclipse", "eclipse"),
    "SSR-Encoder": ("ssrencoder",),
    "MS-Diffusion": ("msdiffusion",),
    "VideoBooth": ("videobooth",),
}
#: CustomVideoX run names (``customvideox[-preset][-ablation][-mode]``) -> Table 2 settings.
ABLATION_SETTINGS: dict[str, str] = {"naive": "naive", "3d-ra": "3D-RA", "3d-ra+tab": "+TAB", "3d-ra+tab+erae": "+ERAE"}
FULL_SETTING = "+ERAE"


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("λ", "lambda"))


def customvideox_setting(name: str) -> str | None:
    """The Table 2 setting of a CustomVideoX run name, or None for other methods.

    ``customvideox`` and ``customvideox-tiny`` are the full method (+ERAE); ``customvideox-3d-ra+tab``
    is +TAB, and so on (the longest ablation name found in the run name wins).
    """
    if not name.lower().startswith("customvideox"):
        return None
    rest = name.lower()[len("customvideox"):]
    tokens = rest.split("-")
    for ablation in sorted(ABLATION_SETTINGS, key=len, reverse=True):
        parts = ablation.split("-")
        for start in range(len(tokens) - len(parts) + 1):
            if tokens[start:start + len(parts)] == parts:
                return ABLATION_SETTINGS[ablation]
    return FULL_SETTING


def paper_method_for(method: str, method_name: str = "") -> str | None:
    """The published Table 1 method a method folder stands for (None when it matches none)."""
    setting = customvideox_setting(method) or customvideox_setting(method_name)
    if setting is not None:
        return "CustomVideoX" if setting == FULL_SETTING else None
    names = (_normalise(method), _normalise(method_name))
    for paper_name, fragments in PAPER_ALIASES.items():
        if any(fragment in name for fragment in fragments for name in names):
            return paper_name
    return None


# ------------------------------------------------------------------------------------- formatting
def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def rank_marks(values: Sequence[float | None], decimals: int = 2) -> list[str]:
    """``"best"`` for the highest value (ties all best), ``"second"`` for the next distinct value, else ``""``.

    Values are compared as displayed (rounded to ``decimals``), as the paper marks its tables. A column
    with fewer than two values gets no marks.
    """
    rounded = [None if value is None else round(value, decimals) for value in values]
    if sum(value is not None for value in rounded) < 2:  # nothing to compare against
        return [""] * len(rounded)
    distinct = sorted({value for value in rounded if value is not None}, reverse=True)
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
    kind: str = "ours"  # "ours", "reference", "paper"
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


def _suite_table(title: str, suites: Sequence[str], rows: list[Row], table_id: str, caption: str) -> Table:
    """A table with one group of the five score columns per suite (Table 1's layout)."""
    return Table(
        title, [(_suite_label(s), len(SCORE_COLUMNS)) for s in suites],
        [COLUMN_LABELS[c] for _ in suites for c in SCORE_COLUMNS], rows, table_id=table_id, caption=caption,
    )


def _mark_rows(rows: list[Row], ranked: Iterable[str] = ("ours", "paper")) -> None:
    """Set best/second marks per column among the rows whose kind is in ``ranked`` (when 2 or more)."""
    ranked = set(ranked)
    eligible = [row for row in rows if row.kind in ranked]
    if len(eligible) < 2:  # a single row has nothing to be best against
        return
    for index in range(len(eligible[0].cells)):
        marks = rank_marks([row.cells[index].value for row in eligible])
        for row, mark in zip(eligible, marks):
            row.cells[index].mark = mark


def _flag(value: Any) -> bool:
    """A 0/1 leaderboard flag; missing or NaN (a column one of several leaderboards lacks) is 0."""
    return bool(int(_number(value) or 0))


def _suite_label(suite: str) -> str:
    return SUITE_LABELS.get(suite, suite)


def _ordered_suites(suites: Iterable[str]) -> list[str]:
    suites = set(suites)
    return [s for s in SUITE_ORDER if s in suites] + sorted(suites - set(SUITE_ORDER))


def _cell_from(record: dict[str, Any] | None, column: str, with_ci: bool = True) -> Cell:
    if record is None:
        return Cell(None)
    return Cell(
        _number(record.get(column)),
        _number(record.get(f"{column}_ci_low")) if with_ci else None,
        _number(record.get(f"{column}_ci_high")) if with_ci else None,
        n=int(record["n_scored"]) if _number(record.get("n_scored")) is not None else None,
    )


# ------------------------------------------------------------------------------------------ images
def _jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit_height(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BICUBIC)


def frame_strip(frames: np.ndarray, count: int = 6, height: int = 64) -> Image.Image:
    """``count`` evenly spaced frames (first and last included), each ``height`` px tall, side by side."""
    indices = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
    tiles = [_fit_height(Image.fromarray(frames[i]), height) for i in indices]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    return strip


# -------------------------------------------------------------------------------------- loading
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


def _load_method(folder: Path, results_dir: str = "") -> MethodData:
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
        suites = tuple(_ordered_suites(s for s in scores["suite"].astype(str) if s))
    if not suites and info:
        suite = run_suite(info)[0]
        suites = (suite,) if suite != "unknown" else ()
    return MethodData(folder.name, info, scores, cases, is_reference_method(folder.name, info), folder, note,
                      results_dir=results_dir or str(folder.parent), suites=suites)


def resolve_results_dirs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The RESULTS folders that ``paths`` stand for, in the order given, each once.

    The rule, per path:

    1. a folder holding ``leaderboard.csv`` is a RESULTS folder;
    2. a folder holding method folders (subfolders with ``cases.jsonl``) but no ``leaderboard.csv`` is a
       RESULTS folder that was not scored: an error asking for ``videobench score``;
    3. otherwise, a folder whose subfolders hold ``leaderboard.csv`` is a parent of RESULTS folders
       (``results/`` holding ``results/dreambench`` and ``results/videobench``) and stands for those
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


def _check_unique_runs(board: pd.DataFrame, methods: list[MethodData]) -> None:
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


def _label_methods(methods: list[MethodData]) -> None:
    """Method folder name as label; with the results folder added where two folders share the name."""
    counts: dict[str, int] = {}
    for data in methods:
        counts[data.method] = counts.get(data.method, 0) + 1
    for data in methods:
        data.label = data.method if counts[data.method] == 1 else f"{data.method} [{data.results_dir}]"


def _read_board(results_dir: Path) -> pd.DataFrame:
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
    return board.assign(results_dir=str(results_dir))


def load_results(results_dirs: Sequence[Path]) -> tuple[pd.DataFrame, list[MethodData]]:
    """The concatenated leaderboard rows (with a ``results_dir`` column) and method folders of RESULTS folders.

    Raises:
        FileNotFoundError: a folder has no leaderboard.csv.
        ReportInputError: two folders hold the same (method, suite) pair.
    """
    boards = [_read_board(path) for path in results_dirs]
    board = pd.concat(boards, ignore_index=True) if len(boards) > 1 else boards[0]
    methods = [_load_method(folder, str(path)) for path in results_dirs for folder in layout.method_dirs(path)]
    _check_unique_runs(board, methods)
    _label_methods(methods)
    return board, methods


def _read_paper_table(name: str) -> pd.DataFrame:
    with resources.files("videobench").joinpath("paper", name).open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


# ------------------------------------------------------------------------------------------ tables
def leaderboard_table(board: pd.DataFrame) -> Table:
    """Our leaderboard in Table 1's layout: rows = methods, column groups = suites.

    Rows are keyed by method folder name, so the rows of several RESULTS folders' leaderboards (one per
    suite) for the same folder name fill one row's column groups.
    """
    suites = _ordered_suites(board["suite"].astype(str)) if len(board) else []
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    methods: dict[str, dict[str, Any]] = {}
    for record in board.to_dict("records"):
        methods.setdefault(str(record["method"]), record)
    order = sorted(methods, key=lambda m: (_flag(methods[m].get("reference")), m))
    rows = []
    for method in order:
        first = methods[method]
        cells = [_cell_from(by_key.get((method, suite)), column) for suite in suites for column in SCORE_COLUMNS]
        counts = "; ".join(
            f"{_suite_label(suite)}: {int(by_key[(method, suite)]['n_scored'])}/{int(by_key[(method, suite)]['n_cases'])}"
            for suite in suites if (method, suite) in by_key
        )
        random = any(_flag(by_key[(method, s)].get(flag)) for s in suites if (method, s) in by_key
                     for flag in ("random_weights", "method_random_weights"))
        rows.append(Row(method, cells, kind="reference" if _flag(first.get("reference")) else "ours",
                        random=random, counts=counts))
    _mark_rows(rows, ranked=("ours",))
    return _suite_table(
        "Our leaderboard", suites, rows, table_id="ours",
        caption="Means x100 over scored cases with 95% bootstrap intervals; D.D is the percent of dynamic videos. "
                "Bold: best, underlined: second best per column among the evaluated methods (reference rows excluded).",
    )


def paper_table1(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 1 with our matching runs under each paper row.

    Our runs are keyed by method folder name, so one folder name found in several RESULTS folders (one
    per suite) is one row with every suite it was run on.
    """
    paper = _read_paper_table("table1.csv")
    suites = list(SUITE_ORDER)
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    ours_by_paper: dict[str, set[str]] = {}
    for data in methods:
        match = paper_method_for(data.method, str(data.info.get("method", "")))
        if match:
            ours_by_paper.setdefault(match, set()).add(data.method)
    rows = []
    for (_, name), group in paper.groupby(["row", "method"], sort=True):
        by_suite = {str(r["suite"]): r for r in group.to_dict("records")}
        base = str(group["base"].fillna("").iloc[0])
        label = f"{name} + {base}" if base and name != "CustomVideoX" else str(name)
        cells = [_cell_from(by_suite.get(suite), column, with_ci=False) for suite in suites for column in SCORE_COLUMNS]
        rows.append(Row(label, cells, kind="paper", note="published"))
        for method in sorted(ours_by_paper.get(str(name), [])):
            ours = [_cell_from(by_key.get((method, suite)), column) for suite in suites for column in SCORE_COLUMNS]
            rows.append(Row(f"ours: {method}", ours, kind="ours-side", note="this run"))
    _mark_rows(rows, ranked=("paper",))
    return _suite_table(
        "Paper Table 1 (published) with our runs", suites, rows, table_id="paper-table1",
        caption="Published numbers (marks recomputed over the published rows); our runs of the same method "
                "are listed under each published row with their 95% intervals.",
    )


def paper_table2(board: pd.DataFrame, methods: Sequence[MethodData]) -> Table:
    """The published Table 2 (ablation, VideoBench) with our CustomVideoX ablation runs beside it."""
    paper = _read_paper_table("table2.csv")
    records = board.to_dict("records")
    run_names = {(data.method, suite): str(data.info.get("run_name", "")) for data in methods for suite in data.suites}
    rows = []
    for record in paper.sort_values("row").to_dict("records"):
        setting = str(record["setting"])
        rows.append(Row(setting, [_cell_from(record, c, with_ci=False) for c in SCORE_COLUMNS], kind="paper",
                        note="published"))
        for ours in records:
            method = str(ours["method"])
            name = run_names.get((method, str(ours["suite"])), "")
            if str(ours["suite"]) == str(record["suite"]) and setting in {customvideox_setting(method),
                                                                          customvideox_setting(name)}:
                rows.append(Row(f"ours: {method}", [_cell_from(ours, c) for c in SCORE_COLUMNS], kind="ours-side",
                                note="this run"))
    _mark_rows(rows, ranked=("paper",))
    return Table(
        "Paper Table 2 (ablation, VideoBench) with our runs", [("VideoBench", len(SCORE_COLUMNS))],
        [COLUMN_LABELS[c] for c in SCORE_COLUMNS], rows, table_id="paper-table2",
        caption="naive: reference injected as an extra frame; 3D-RA: 3D Reference Attention; +TAB: time-aware "
                "attention bias; +ERAE: entity region-aware enhancement (the full CustomVideoX).",
        first_header="Setting",
    )


def subject_tables(methods: Sequence[MethodData], n_resamples: int, seed: int) -> list[Table]:
    """Per suite: one row per (subject, method) with the means x100 and 95% intervals.

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
    table = aggregate(scores, by=["suite", "subject", "method"], n_resamples=n_resamples, seed=seed)
    tables = []
    for suite in _ordered_suites(table["suite"]):
        rows = []
        part = table[table["suite"] == suite]
        for record in part.to_dict("records"):
            label = str(record["method"])
            kind = "reference" if by_label[label].reference else "ours"
            cells = [_cell_from(record, c) for c in SCORE_COLUMNS]
            rows.append(Row(f"{record['subject'] or '(no subject)'} — {label}", cells, kind=kind,
                            counts=f"{int(record['n_scored'])}/{int(record['n_cases'])}"))
        folders = list(dict.fromkeys(by_label[str(m)].results_dir for m in part["method"]))
        tables.append(Table(
            f"Per subject: {_suite_label(suite)}", [(_suite_label(suite), len(SCORE_COLUMNS))],
            [COLUMN_LABELS[c] for c in SCORE_COLUMNS], rows, table_id=f"subjects-{_normalise(suite) or 'suite'}",
            caption=f"Suite {_suite_label(suite)}, from {', '.join(folders)}.", first_header="Subject — method",
        ))
    return tables


# ------------------------------------------------------------------------------------------ cases
@dataclass
class CaseRow:
    case_id: str
    subject: str
    prompt: str
    reference_uri: str | None
    strip_uri: str | None
    values: list[str]
    error: str
    media_note: str = ""


@dataclass
class MethodCases:
    method: str
    reference: bool
    rows: list[CaseRow] = field(default_factory=list)
    n_failed: int = 0
    omitted: int = 0
    note: str = ""
    #: the section heading: method label (with its results folder where the name is shared) and suite(s)
    title: str = ""
    suite: str = ""
    results_dir: str = ""


def _reference_path(folder: Path, record: dict[str, Any]) -> Path | None:
    references = record.get("references")
    if isinstance(references, str):
        references = [references]
    if not isinstance(references, list) or not references:
        return None
    path = Path(str(references[0])).expanduser()
    if not path.is_absolute():
        beside = folder / path
        path = beside if beside.exists() or not path.exists() else path.resolve()
    return path


def _strip_for(folder: Path, case: dict[str, Any], strip_frames: int, height: int) -> tuple[str | None, str]:
    """The frame strip of a case's video as a data URI, or (None, why not)."""
    if not case.get("video") or case.get("status", "ok") != "ok":
        return None, ""
    try:
        frames = read_video(layout.resolve_inside(folder, str(case["video"]))).frames
    except (VideoError, ValueError) as error:
        return None, str(error)
    return _jpeg_data_uri(frame_strip(frames, strip_frames, height)), ""


def _reference_thumbnail(path: Path, height: int, cache: dict[Path, tuple[str | None, str]]) -> tuple[str | None, str]:
    if path not in cache:
        try:
            cache[path] = _jpeg_data_uri(_fit_height(load_reference_image(path), height)), ""
        except ImageError as error:
            cache[path] = None, str(error)
    return cache[path]


def _display_values(record: dict[str, Any]) -> list[str]:
    values = []
    for column in SCORE_COLUMNS:
        number = _number(record.get(column))
        if number is None:
            values.append("—")
        elif column == "dynamic":
            values.append("yes" if number >= 0.5 else "no")
        else:
            values.append(f"{100 * number:.2f}")
    return values


def case_rows(
    data: MethodData, max_cases: int | None, strip_frames: int, thumb_height: int,
    reference_cache: dict[Path, tuple[str | None, str]], bar: tqdm, workers: int = 4,
) -> MethodCases:
    """Per-case rows of one method; videos are decoded for their frame strips on ``workers`` threads."""
    suite = ", ".join(_suite_label(suite) for suite in data.suites) or "unknown suite"
    out = MethodCases(data.method, data.reference, note=data.note, title=f"{data.label or data.method} — {suite}",
                      suite=", ".join(data.suites), results_dir=data.results_dir)
    if data.scores is None:
        return out
    records = data.scores.to_dict("records")
    out.n_failed = sum(1 for r in records if str(r.get("error") or ""))
    if max_cases is not None and len(records) > max_cases:
        out.omitted = len(records) - max_cases
        records = records[:max_cases]
    cases = [data.cases.get(str(record["case_id"]), {}) for record in records]
    strip_height = max(32, thumb_height * 3 // 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PyAV decodes without the GIL
        strips = pool.map(lambda case: _strip_for(data.folder, case, strip_frames, strip_height), cases)
        for record, case, (strip_uri, strip_note) in zip(records, cases, strips):
            error = str(record.get("error") or "")
            reference_uri, reference_note = None, ""
            ref_path = _reference_path(data.folder, case) if case else None
            if ref_path is not None:
                reference_uri, reference_note = _reference_thumbnail(ref_path, thumb_height, reference_cache)
            notes = [note for note in (reference_note, strip_note) if note and note not in error]
            out.rows.append(CaseRow(
                case_id=str(record["case_id"]), subject=str(record.get("subject") or case.get("subject") or ""),
                prompt=str(case.get("prompt", "")), reference_uri=reference_uri, strip_uri=strip_uri,
                values=_display_values(record), error=error, media_note="; ".join(notes),
            ))
            bar.update(1)
    return out


# ------------------------------------------------------------------------------------------ render
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("videobench", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_context(
    results_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    max_cases_per_method: int | None = None,
    strip_frames: int = 6,
    thumb_height: int = 80,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything the template shows, as plain Python objects, from one or more RESULTS folders.

    ``results_dirs`` is expanded by :func:`resolve_results_dirs`; the folders' leaderboard rows and method
    folders are merged as the module docstring says.
    """
    folders = resolve_results_dirs(results_dirs)
    board, methods = load_results(folders)
    records = board.to_dict("records")
    label_of = {(data.method, data.results_dir): data.label for data in methods}
    random_metrics = sorted({label_of.get((str(r["method"]), str(r["results_dir"])), str(r["method"]))
                             for r in records if _flag(r.get("random_weights"))})
    random_methods = sorted(
        {label_of.get((str(r["method"]), str(r["results_dir"])), str(r["method"]))
         for r in records if _flag(r.get("method_random_weights"))}
        | {data.label for data in methods if bool(data.info.get("random_weights", False))}
    )
    total = sum(len(d.scores) if d.scores is not None else 0 for d in methods)
    if max_cases_per_method is not None:
        total = sum(min(max_cases_per_method, len(d.scores) if d.scores is not None else 0) for d in methods)
    suite_rank = {suite: index for index, suite in enumerate(_ordered_suites(s for d in methods for s in d.suites))}
    ordered = sorted(methods, key=lambda d: (d.reference, d.method, [suite_rank[s] for s in d.suites], d.results_dir))
    reference_cache: dict[Path, tuple[str | None, str]] = {}
    with tqdm(total=total, desc="report", unit="case", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        cases = [case_rows(data, max_cases_per_method, strip_frames, thumb_height, reference_cache, bar)
                 for data in ordered]
    names = [str(path) for path in folders]
    return {
        "title": f"VideoBench leaderboard — {' + '.join(path.name for path in folders)}",
        "results_dir": ", ".join(names),
        "results_dirs": names,
        "generated": utc_now(),
        "version": videobench.__version__,
        "random_metrics": random_metrics,
        "random_methods": random_methods,
        "n_failed": int(pd.to_numeric(board.get("n_failed", pd.Series(dtype=float)), errors="coerce").fillna(0).sum()),
        "ours": leaderboard_table(board),
        "paper_tables": [paper_table1(board, methods), paper_table2(board, methods)],
        "subject_tables": subject_tables(methods, n_resamples, seed),
        "cases": cases,
        "case_columns": [COLUMN_LABELS[c] for c in SCORE_COLUMNS],
    }


def render_report(context: dict[str, Any]) -> str:
    return _environment().get_template("leaderboard.html").render(**context)


def write_report(
    results_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_path: str | os.PathLike | None = None,
    max_cases_per_method: int | None = None,
    strip_frames: int = 6,
    thumb_height: int = 80,
    progress: bool = True,
) -> Path:
    """Write the HTML leaderboard of one or more RESULTS folders atomically; return its path.

    ``results_dirs`` is one path or a sequence of them: RESULTS folders, or parent folders whose
    subfolders are RESULTS folders (the rule is :func:`resolve_results_dirs`'s). Their leaderboard rows
    are merged by method folder name, so ``write_report(["results/dreambench", "results/videobench"],
    "reports/table1.html")`` gives Table 1 with both suites in each method's row.

    Needs each folder's ``leaderboard.csv`` and its methods' ``scores.csv`` (``videobench score``).
    ``out_path`` defaults to ``RESULTS/leaderboard.html`` when the paths stand for one RESULTS folder
    and is required otherwise. ``max_cases_per_method`` caps the per-case rows (the page embeds one
    reference thumbnail and one strip of ``strip_frames`` frames per case).

    Raises:
        FileNotFoundError: a folder is missing, or is neither a scored RESULTS folder nor a parent of some.
        ReportInputError: several RESULTS folders and no ``out_path``; or two folders hold the same
            (method, suite) pair.
    """
    folders = resolve_results_dirs(results_dirs)
    if out_path is None and len(folders) > 1:
        raise ReportInputError(
            f"{len(folders)} RESULTS folders ({', '.join(str(path) for path in folders)}): "
            "say where the report goes with --out FILE (out_path)")
    out = Path(out_path) if out_path is not None else folders[0] / DEFAULT_REPORT_NAME
    html = render_report(build_context(folders, max_cases_per_method, strip_frames, thumb_height,
                                       progress=progress))
    atomic_write_text(out, html)
    return out
