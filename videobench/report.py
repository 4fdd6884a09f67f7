"""``videobench report``: RESULTS -> one self-contained HTML leaderboard.

The page holds, in order:

1. a banner when any method or metric ran with random weights (the numbers then mean nothing) and a
   note when cases failed;
2. our leaderboard in Table 1's layout (one column group per suite: DreamBench | VideoBench | others;
   CLIP-T, CLIP-I, DINO-I, T.Cons, D.D), every mean with its 95% bootstrap interval, best **bold** and
   second underlined per column among the non-calibration methods; calibration methods
   (``reference-still``, ``reference-pan``) are shown as reference rows;
3. the paper's Table 1 and Table 2 (``videobench/paper/*.csv``, sources in its README) with our matching
   runs beside each published row;
4. a per-subject breakdown per suite;
5. per-case rows per method: the reference thumbnail, a strip of frames from the video, the raw scores
   x100 and any error.

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
from videobench.atomic import atomic_write_text
from videobench.images import ImageError, load_reference_image
from videobench.leaderboard import COLUMN_LABELS, SCORE_COLUMNS, aggregate
from videobench.results import utc_now
from videobench.score import is_reference_method, read_scores
from videobench.video import VideoError, read_video

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
@dataclass
class MethodData:
    method: str
    info: dict[str, Any]
    scores: pd.DataFrame | None
    cases: dict[str, dict[str, Any]]
    reference: bool
    folder: Path
    note: str = ""


def _load_method(folder: Path) -> MethodData:
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
    elif not note:
        note = "not scored yet (run videobench score)"
    return MethodData(folder.name, info, scores, cases, is_reference_method(folder.name, info), folder, note)


def _read_paper_table(name: str) -> pd.DataFrame:
    with resources.files("videobench").joinpath("paper", name).open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


# ------------------------------------------------------------------------------------------ tables
def leaderboard_table(board: pd.DataFrame) -> Table:
    """Our leaderboard in Table 1's layout: rows = methods, column groups = suites."""
    suites = _ordered_suites(board["suite"].astype(str)) if len(board) else []
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    methods: dict[str, dict[str, Any]] = {}
    for record in board.to_dict("records"):
        methods.setdefault(str(record["method"]), record)
    order = sorted(methods, key=lambda m: (bool(methods[m]["reference"]), m))
    rows = []
    for method in order:
        first = methods[method]
        cells = [_cell_from(by_key.get((method, suite)), column) for suite in suites for column in SCORE_COLUMNS]
        counts = "; ".join(
            f"{_suite_label(suite)}: {int(by_key[(method, suite)]['n_scored'])}/{int(by_key[(method, suite)]['n_cases'])}"
            for suite in suites if (method, suite) in by_key
        )
        random = any(bool(int(by_key[(method, s)].get("random_weights", 0) or 0))
                     or bool(int(by_key[(method, s)].get("method_random_weights", 0) or 0))
                     for s in suites if (method, s) in by_key)
        rows.append(Row(method, cells, kind="reference" if int(first["reference"]) else "ours",
                        random=random, counts=counts))
    _mark_rows(rows, ranked=("ours",))
    return Table(
        "Our leaderboard", [(_suite_label(s), len(SCORE_COLUMNS)) for s in suites],
        [COLUMN_LABELS[c] for _ in suites for c in SCORE_COLUMNS], rows, table_id="ours",
        caption="Means x100 over scored cases with 95% bootstrap intervals; D.D is the percent of dynamic videos. "
                "Bold: best, underlined: second best per column among the evaluated methods (reference rows excluded).",
    )


def paper_table1(board: pd.DataFrame, methods: dict[str, MethodData]) -> Table:
    """The published Table 1 with our matching runs under each paper row."""
    paper = _read_paper_table("table1.csv")
    suites = list(SUITE_ORDER)
    by_key = {(str(r["method"]), str(r["suite"])): r for r in board.to_dict("records")}
    ours_by_paper: dict[str, list[str]] = {}
    for method, data in methods.items():
        match = paper_method_for(method, str(data.info.get("method", "")))
        if match:
            ours_by_paper.setdefault(match, []).append(method)
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
    return Table(
        "Paper Table 1 (published) with our runs", [(_suite_label(s), len(SCORE_COLUMNS)) for s in suites],
        [COLUMN_LABELS[c] for _ in suites for c in SCORE_COLUMNS], rows, table_id="paper-table1",
        caption="Published numbers (marks recomputed over the published rows); our runs of the same method "
                "are listed under each published row with their 95% intervals.",
    )


def paper_table2(board: pd.DataFrame, methods: dict[str, MethodData]) -> Table:
    """The published Table 2 (ablation, VideoBench) with our CustomVideoX ablation runs beside it."""
    paper = _read_paper_table("table2.csv")
    records = board.to_dict("records")
    rows = []
    for record in paper.sort_values("row").to_dict("records"):
        setting = str(record["setting"])
        rows.append(Row(setting, [_cell_from(record, c, with_ci=False) for c in SCORE_COLUMNS], kind="paper",
                        note="published"))
        for ours in records:
            method = str(ours["method"])
            name = str(methods[method].info.get("run_name", "")) if method in methods else ""
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


def subject_tables(methods: dict[str, MethodData], n_resamples: int, seed: int) -> list[Table]:
    """Per suite: one row per (subject, method) with the means x100 and 95% intervals."""
    parts = [data.scores.assign(method=name) for name, data in methods.items()
             if data.scores is not None and len(data.scores)]
    if not parts:
        return []
    scores = pd.concat(parts, ignore_index=True)
    scores["subject"] = scores["subject"].fillna("").astype(str)
    scores["suite"] = scores["suite"].fillna("unknown").astype(str)
    table = aggregate(scores, by=["suite", "subject", "method"], n_resamples=n_resamples, seed=seed)
    tables = []
    for suite in _ordered_suites(table["suite"]):
        rows = []
        for record in table[table["suite"] == suite].to_dict("records"):
            method = str(record["method"])
            kind = "reference" if methods[method].reference else "ours"
            rows.append(Row(f"{record['subject'] or '(no subject)'} — {method}", [_cell_from(record, c) for c in SCORE_COLUMNS],
                            kind=kind, counts=f"{int(record['n_scored'])}/{int(record['n_cases'])}"))
        tables.append(Table(
            f"Per subject: {_suite_label(suite)}", [(_suite_label(suite), len(SCORE_COLUMNS))],
            [COLUMN_LABELS[c] for c in SCORE_COLUMNS], rows, table_id=f"subjects-{_normalise(suite) or 'suite'}",
            first_header="Subject — method",
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
    out = MethodCases(data.method, data.reference, note=data.note)
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
    results_dir: Path,
    max_cases_per_method: int | None = None,
    strip_frames: int = 6,
    thumb_height: int = 80,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything the template shows, as plain Python objects."""
    board_path = results_dir / layout.LEADERBOARD_FILE
    if not board_path.is_file():
        raise FileNotFoundError(f"{board_path}: no leaderboard; run `videobench score {results_dir}` first")
    board = pd.read_csv(board_path, dtype={"method": str, "suite": str, "method_name": str})
    methods = {folder.name: _load_method(folder) for folder in layout.method_dirs(results_dir)}
    random_metrics = sorted({str(r["method"]) for r in board.to_dict("records") if int(r.get("random_weights", 0) or 0)})
    random_methods = sorted(
        {str(r["method"]) for r in board.to_dict("records") if int(r.get("method_random_weights", 0) or 0)}
        | {name for name, data in methods.items() if bool(data.info.get("random_weights", False))}
    )
    total = sum(len(d.scores) if d.scores is not None else 0 for d in methods.values())
    if max_cases_per_method is not None:
        total = sum(min(max_cases_per_method, len(d.scores) if d.scores is not None else 0) for d in methods.values())
    reference_cache: dict[Path, tuple[str | None, str]] = {}
    with tqdm(total=total, desc="report", unit="case", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        cases = [case_rows(methods[name], max_cases_per_method, strip_frames, thumb_height, reference_cache, bar)
                 for name in sorted(methods, key=lambda m: (methods[m].reference, m))]
    return {
        "title": f"VideoBench leaderboard — {results_dir.name}",
        "results_dir": str(results_dir),
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
    results_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    max_cases_per_method: int | None = None,
    strip_frames: int = 6,
    thumb_height: int = 80,
    progress: bool = True,
) -> Path:
    """Write the HTML leaderboard of ``results_dir`` (default ``RESULTS/leaderboard.html``) atomically.

    Needs ``RESULTS/leaderboard.csv`` and the methods' ``scores.csv`` (``videobench score``).
    ``max_cases_per_method`` caps the per-case rows (the page embeds one reference thumbnail and one
    strip of ``strip_frames`` frames per case).

    Raises:
        FileNotFoundError: when ``results_dir`` or its leaderboard.csv is missing.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: results folder does not exist")
    out = Path(out_path) if out_path is not None else results_dir / DEFAULT_REPORT_NAME
    html = render_report(build_context(results_dir, max_cases_per_method, strip_frames, thumb_height,
                                       progress=progress))
    atomic_write_text(out, html)
    return out
