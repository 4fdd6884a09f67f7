"""``videobench score``: RESULTS -> ``<method>/scores.csv`` per method -> ``leaderboard.csv``.

One results folder goes through three steps, each in its own module and in this order:

1. collect (:mod:`videobench.scoring.inputs`): the method folders, their run.json and cases.jsonl, and per case
   the video and reference images, hashed (and decoded when a metric has to run);
2. compute (:mod:`videobench.scoring.compute`): which metric computes which column, the score cache (outside
   RESULTS), the metric calls, and carrying over the columns a ``--metrics`` subset does not compute;
3. write (:mod:`videobench.scoring.outputs`): ``scores.csv`` per method and ``leaderboard.csv``.

Metrics are built once by the caller and passed in; they never read files. Hashing and decoding of the next cases
run on a worker thread while the metrics work on the current one (PyAV releases the GIL).

Bad input never stops the run: a corrupt, empty or truncated video, fewer than 2 frames, frames smaller than
128 px, a missing, unreadable or non-regular reference image, a malformed ``cases.jsonl`` line (bad JSON, a lone
surrogate), a case whose generation failed or is pending, a path escaping the method folder, or a metric raising
on one video each give ONE line naming the case and the file (logged, and kept in the ``error`` column of
``scores.csv``); every other case is still scored and :attr:`ScoreSummary.failed` says whether anything failed.
Stray files and folders are reported as warnings; a folder that looks like a method folder (run.json or
videos/) without a cases.jsonl is an error.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from mediaio.atomic import atomic_open, atomic_write_json
from videobench import results as layout
from videobench.metrics.base import Metric
from videobench.scoring.compute import ScoreCache, Scorer, carry_over, default_cache_dir, make_plans
from videobench.scoring.inputs import (
    CaseError,
    Log,
    case_id_of,
    check_not_method_folder,
    collect_case,
    listed_files,
    previous_scores,
    read_case_lines,
    read_run_info,
    run_suite,
    stray_in_method,
    stray_in_results,
)
from videobench.scoring.outputs import build_leaderboard, is_layout_column, partial_columns, read_scores, scores_frame

__all__ = ["CaseError", "MethodSummary", "ScoreSummary", "check_not_method_folder", "read_scores", "score_results"]


@dataclass
class MethodSummary:
    """What scoring one method folder did."""

    method: str
    scores_csv: Path
    suites: list[str]
    n_cases: int
    n_scored: int
    n_failed: int
    random_weights: bool
    errors: list[str] = field(default_factory=list)


@dataclass
class ScoreSummary:
    """The outcome of :func:`score_results`; ``failed``/``exit_code`` feed the CLI's exit status."""

    results_dir: Path
    leaderboard_csv: Path | None
    methods: list[MethodSummary]
    warnings: list[str]
    global_errors: list[str]
    metric_calls: int  # (video, metric) computations actually run
    cache_hits: int  # (video, metric) results taken from the cache

    @property
    def n_failed(self) -> int:
        return sum(method.n_failed for method in self.methods)

    @property
    def n_scored(self) -> int:
        return sum(method.n_scored for method in self.methods)

    @property
    def errors(self) -> list[str]:
        return self.global_errors + [error for method in self.methods for error in method.errors]

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def describe(self) -> str:
        """A few human-readable lines for the CLI."""
        lines = [
            f"{m.method}: {m.n_cases} case(s), {m.n_scored} scored, {m.n_failed} failed"
            + (" [RANDOM metric weights]" if m.random_weights else "") + f" -> {m.scores_csv}"
            for m in self.methods
        ]
        lines += self.global_errors
        lines.append(f"{self.metric_calls} metric computation(s), {self.cache_hits} from the cache")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s) (see above)")
        if self.leaderboard_csv is not None:
            lines.append(f"leaderboard: {self.leaderboard_csv}")
        if self.n_failed:
            lines.append(f"FAILED: {self.n_failed} case(s) could not be scored (the error column of scores.csv)")
        return "\n".join(lines)


def _prefetch(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Sequence[Any], depth: int
              ) -> Iterator[tuple[Any, Future]]:
    """Yield ``(item, future of fn(item))`` in order, keeping ``depth`` items submitted ahead."""
    queue: deque[tuple[Any, Future]] = deque()
    iterator = iter(items)
    for item in itertools.islice(iterator, max(1, depth)):
        queue.append((item, pool.submit(fn, item)))
    while queue:
        item, future = queue.popleft()
        for following in itertools.islice(iterator, 1):
            queue.append((following, pool.submit(fn, following)))
        yield item, future


def score_method(method_dir: Path, scorer: Scorer, warnings: list[str], bar: tqdm, log: Log, prefetch: int = 2,
                 ) -> tuple[MethodSummary, pd.DataFrame, dict[str, Any]]:
    """Score one method folder and write its scores.csv; returns the summary, rows and run info."""
    method = method_dir.name
    info = read_run_info(method_dir, warnings, log)
    suite, _version = run_suite(info)
    cases_path, lines, last_line = read_case_lines(method_dir)
    previous = previous_scores(method_dir / layout.SCORES_FILE)
    selected = {column for plan in scorer.plans for column in plan.columns}
    run_configs = {plan.metric.family: plan.config_hash for plan in scorer.plans}
    random_metrics = any(plan.metric.random_weights for plan in scorer.plans)

    def prepare(line: layout.CaseLine):
        """Worker-thread part: hashing, cache look-ups, decoding (None: nothing to prepare)."""
        case_id = case_id_of(line)
        if line.error is not None or last_line.get(case_id) != line.line_number:
            return None
        return scorer.prepare(collect_case(method_dir, line.record or {}, f"{method} case {case_id}"))

    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    videos: set[Path] = set()
    files: set[Path] = set()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="videobench-decode") as pool:
        for line, future in _prefetch(pool, prepare, lines, depth=prefetch):
            record = line.record or {}
            case_id = case_id_of(line)
            bar.set_postfix_str(f"{method}/{case_id}", refresh=False)
            bar.update(1)
            if line.error is None and last_line.get(case_id) != line.line_number:
                warnings.append(f"{method} case {case_id}: {cases_path}:{line.line_number} is superseded by "
                                f"line {last_line[case_id]}")
                continue
            row: dict[str, Any] = {"case_id": case_id, "suite": str(record.get("suite") or suite),
                                   "subject": str(record.get("subject", "")), "random_weights": int(random_metrics)}
            try:
                if line.error is not None:
                    raise CaseError(f"{method} case {case_id}: {line.error}")
                listed_videos, listed_others = listed_files(method_dir, record)
                videos |= listed_videos
                files |= listed_others
                row.update(scorer.compute(future.result()))
                carry_over(row, previous.get(case_id), selected, run_configs, is_layout_column)
                row["error"] = ""
            except CaseError as error:
                row["error"] = str(error)
                errors.append(str(error))
                log(str(error))
            rows.append(row)

    for message in [*stray_in_method(method_dir, videos, files | _listed_images(method_dir, lines))]:
        warnings.append(message)
        log(f"warning: {message}")
    frame = scores_frame(rows)
    for message in partial_columns(method, frame):
        warnings.append(message)
        log(f"warning: {message}")
    scores_csv = method_dir / layout.SCORES_FILE
    with atomic_open(scores_csv) as handle:
        frame.to_csv(handle, index=False, float_format="%.8g", lineterminator="\n")
    write_metric_settings(method_dir, scorer.plans)
    n_failed = int((frame["error"] != "").sum()) if len(frame) else 0
    summary = MethodSummary(
        method=method, scores_csv=scores_csv, suites=sorted(set(frame["suite"])) if len(frame) else [suite],
        n_cases=len(frame), n_scored=len(frame) - n_failed, n_failed=n_failed,
        random_weights=bool(len(frame) and frame["random_weights"].astype(int).any()), errors=errors,
    )
    return summary, frame, info


def write_metric_settings(method_dir: Path, plans: Sequence[Any]) -> None:
    """Add this scoring's metric configurations (hash -> family and non-default settings) to the method folder's
    :data:`~videobench.results.METRIC_SETTINGS_FILE`; hashes of earlier scorings stay (carried-over cases use them)."""
    path = method_dir / layout.METRIC_SETTINGS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    for plan in plans:
        known[plan.config_hash] = {"family": plan.metric.family,
                                   "settings": dict(getattr(plan.metric, "settings", None) or {})}
    atomic_write_json(path, dict(sorted(known.items())))


def _listed_images(method_dir: Path, lines: list[layout.CaseLine]) -> set[Path]:
    """The intermediate images the records name (they belong to the folder, not strays)."""
    images = {(method_dir / str((line.record or {}).get("image"))).resolve()
              for line in lines if isinstance((line.record or {}).get("image"), str)}
    return images | {(method_dir / layout.IMAGES_DIR).resolve()}


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return sum(1 for raw in handle if raw.strip())


def _default_log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def score_results(
    results_dir: str | os.PathLike,
    metrics: Sequence[Metric],
    columns: Iterable[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Log | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    prefetch: int = 2,
) -> ScoreSummary:
    """Score every method folder of ``results_dir``; write each ``scores.csv`` and ``leaderboard.csv``.

    Args:
        results_dir: the RESULTS folder (layout in :mod:`videobench.results`).
        metrics: built metric instances (:class:`~videobench.metrics.base.Metric`), loaded once.
        columns: score columns or families to compute (``--metrics``); ``None`` for all offered.
        cache_dir: where cached values live; default :func:`~videobench.scoring.compute.default_cache_dir`
            (never inside RESULTS).
        progress: show a tqdm progress bar with ETA on stderr.
        log: receives each error/warning line; default prints it to stderr above the bar.
        n_resamples, seed: the bootstrap of the leaderboard's confidence intervals.
        prefetch: how many cases a worker thread hashes and decodes ahead of the metrics.

    Raises:
        FileNotFoundError / NotADirectoryError: ``results_dir`` is not a folder.
        ValueError: ``columns`` names an unknown metric or one that no given metric computes, or
            ``results_dir`` is a method folder rather than a RESULTS folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise FileNotFoundError(f"{results_dir}: results folder does not exist")
    if not results_dir.is_dir():
        raise NotADirectoryError(f"{results_dir}: not a folder")
    check_not_method_folder(results_dir)
    log = log or _default_log
    scorer = Scorer(make_plans(metrics, columns), ScoreCache(cache_dir or default_cache_dir()))
    methods = layout.method_dirs(results_dir)
    warnings: list[str] = []
    global_errors: list[str] = []
    stray_warnings, stray_errors = stray_in_results(results_dir, methods)
    for message in stray_warnings:
        warnings.append(message)
        log(f"warning: {message}")
    for message in stray_errors:
        global_errors.append(message)
        log(message)
    if not methods:
        message = f"{results_dir}: no method folder (a folder holding {layout.CASES_FILE}) to score"
        global_errors.append(message)
        log(message)

    summaries: list[MethodSummary] = []
    frames: list[tuple[str, dict[str, Any], pd.DataFrame]] = []
    total = sum(_count_lines(method_dir / layout.CASES_FILE) for method_dir in methods)
    with tqdm(total=total, desc="scoring", unit="video", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for method_dir in methods:
            summary, frame, info = score_method(method_dir, scorer, warnings, bar, log, prefetch=prefetch)
            summaries.append(summary)
            frames.append((method_dir.name, info, frame))

    leaderboard = build_leaderboard(frames, n_resamples=n_resamples, seed=seed)
    leaderboard_csv = results_dir / layout.LEADERBOARD_FILE
    with atomic_open(leaderboard_csv) as handle:
        leaderboard.to_csv(handle, index=False, float_format="%.4f", lineterminator="\n")
    return ScoreSummary(
        results_dir=results_dir, leaderboard_csv=leaderboard_csv, methods=summaries, warnings=warnings,
        global_errors=global_errors, metric_calls=scorer.metric_calls, cache_hits=scorer.cache_hits,
    )
