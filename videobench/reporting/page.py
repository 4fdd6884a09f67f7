"""``videobench report``: one or more RESULTS folders -> one self-contained HTML leaderboard.

A method folder holds one suite, so Table 1 (one column group per suite) is naturally run as one RESULTS
folder per suite (``results/suite-a``, ``results/suite-b``). The report reads any number of RESULTS folders,
concatenates their ``leaderboard.csv`` rows and method folders, and keys the rows of our leaderboard and of the
paper-table matches by the method folder name: ``method-x`` of ``results/suite-a`` and ``method-x`` of
``results/suite-b`` form one row with both suites' column groups. A (method, suite) pair found in two folders is refused. A folder without its own
``leaderboard.csv`` whose subfolders are RESULTS folders stands for those subfolders (see
:func:`resolve_results_dirs`).

The page holds, in order:

1. a banner when any method or metric ran with random weights (the numbers then mean nothing), one when a
   video is not the one its run wrote (provenance: the sha256 and seed cases.jsonl recorded), and a note when
   cases failed;
2. our leaderboard in Table 1's layout (one column group per suite, in the suites' registered order; the
   registered score columns in their order), every mean with its 95% bootstrap interval, best **bold** and
   second underlined per column among the non-calibration methods with real weights; calibration methods
   (run.json ``kind: reference``) are shown as reference rows, random-weights rows are tagged; runs of one folder
   name that differ (generation settings, seed, key package versions, metric configuration) are separate rows
   saying why; then the metric settings (each family's configuration, and who used which);
3. the paper's Table 1 and Table 2 (``videobench/paper/*.csv``, sources in its README) with our matching
   runs beside each published row (matched by run.json's ``paper_row`` / ``table2_setting``); a published
   row stays "published, not reproduced" unless a run with real weights, no preset and the full suite reproduces
   it (with what is missing, or why our runs do not count);
4. a per-subject breakdown per suite (naming the results folders it comes from);
5. per-case rows per method folder, labelled with its suite (and its results folder when two folders
   hold a method of that name): the reference thumbnail, the intermediate image of two-stage methods, a
   strip of frames from the video, the scores and any error.

Plots (inline SVG) show DINO-I against D.D and CLIP-T against CLIP-I for every run with real weights beside the
paper's points, and the random-weights runs in a panel of their own (:mod:`~videobench.reporting.plots`).
Images are inlined as base64 JPEG data URIs; the page needs no other file. The template is rendered
by a jinja2 ``Environment(autoescape=True)``, so every string from users (prompts, method and subject
names, error messages) is escaped. The file is written atomically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from tqdm import tqdm

import videobench
from mediaio.atomic import atomic_write_text
from videobench.reporting.load import (
    MethodData,
    ReportInputError,
    load_results,
    metric_configs,
    read_metric_settings,
    resolve_results_dirs,
)
from videobench.reporting.media import case_rows
from videobench.reporting.paper import paper_table1, paper_table2
from videobench.reporting.plots import draw_plots
from videobench.reporting.tables import (
    board_columns,
    column_label,
    flag,
    leaderboard_table,
    scale_caption,
    subject_tables,
)
from videobench.results import utc_now
from videobench.suites import suite_order

DEFAULT_REPORT_NAME = "leaderboard.html"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("videobench", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def metric_settings(methods: Sequence[MethodData]) -> list[str]:
    """One line per metric family: the configuration(s) our runs were scored with (scores.csv's
    ``<family>_config_sha256``: model, weights, preprocessing, ``-M`` options). Where runs differ, which run used
    which (such runs never share a row); a run whose own cases mix configurations is named."""
    used: dict[str, dict[str, list[str]]] = {}
    settings: dict[str, str] = {}  # config hash (12 characters) -> its non-default settings, as -M options
    lines = []
    for data in methods:
        for config, entry in read_metric_settings(data.folder).items():
            settings[config[:12]] = " ".join(f"-M {entry['family']}.{key}={value}"
                                             for key, value in entry["settings"].items()) or "defaults"
        for family, configs in metric_configs(data.scores).items():
            used.setdefault(family, {}).setdefault("+".join(c[:12] for c in configs), []).append(data.label)
            if len(configs) > 1:
                lines.append(f"{data.label}: its cases were scored with {len(configs)} {family} configurations "
                             f"({', '.join(c[:12] for c in configs)}); its means mix them, score it again")
    def described(config: str) -> str:
        known = [settings[part] for part in config.split("+") if part in settings]
        return f"config {config}" + (f" ({'; '.join(known)})" if known else "")

    families = []
    for family in sorted(used):
        by_config = used[family]
        if len(by_config) == 1:
            families.append(f"{family}: one configuration for every run ({described(next(iter(by_config)))})")
        else:
            families.append(f"{family}: {len(by_config)} configurations (numbers compare only within one) — "
                            + "; ".join(f"{described(config)}: {', '.join(labels)}"
                                        for config, labels in sorted(by_config.items())))
    return families + lines


def build_context(
    results_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    max_cases_per_method: int | None = None,
    strip_frames: int = 6,
    thumb_height: int = 80,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    title: str | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain Python objects, from one or more RESULTS folders.

    ``results_dirs`` is expanded by :func:`resolve_results_dirs`; the folders' leaderboard rows and method
    folders are merged as the module docstring says.
    """
    folders = resolve_results_dirs(results_dirs)
    board, methods = load_results(folders)
    columns = board_columns(board) if len(board) else []
    records = board.to_dict("records")
    label_of = {(data.method, data.results_dir): data.label for data in methods}
    random_metrics = sorted({label_of.get((str(r["method"]), str(r["results_dir"])), str(r["method"]))
                             for r in records if flag(r.get("random_weights"))})
    random_methods = sorted(
        {label_of.get((str(r["method"]), str(r["results_dir"])), str(r["method"]))
         for r in records if flag(r.get("method_random_weights"))}
        | {data.label for data in methods if bool(data.info.get("random_weights", False))}
    )
    total = sum(len(d.scores) if d.scores is not None else 0 for d in methods)
    if max_cases_per_method is not None:
        total = sum(min(max_cases_per_method, len(d.scores) if d.scores is not None else 0) for d in methods)
    suite_rank = {suite: index for index, suite in enumerate(suite_order(s for d in methods for s in d.suites))}
    ordered = sorted(methods, key=lambda d: (d.reference, d.method, [suite_rank[s] for s in d.suites], d.results_dir))
    reference_cache: dict[Path, tuple[str | None, str]] = {}
    with tqdm(total=total, desc="report", unit="case", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        cases = [case_rows(data, columns, max_cases_per_method, strip_frames, thumb_height, reference_cache, bar)
                 for data in ordered]
    names = [str(path) for path in folders]
    return {
        "title": title or f"VideoBench leaderboard — {' + '.join(path.name for path in folders)}",
        "results_dir": ", ".join(names),
        "results_dirs": names,
        "generated": utc_now(),
        "version": videobench.__version__,
        "random_metrics": random_metrics,
        "random_methods": random_methods,
        "n_provenance": sum(method.n_provenance for method in cases),
        "n_failed": int(pd.to_numeric(board.get("n_failed", pd.Series(dtype=float)), errors="coerce").fillna(0).sum()),
        "ours": leaderboard_table(board, methods),
        "paper_tables": [paper_table1(board, methods), paper_table2(board, methods)],
        "subject_tables": subject_tables(methods, n_resamples, seed),
        "plots": draw_plots(board),
        "cases": cases,
        "case_columns": [column_label(c) for c in columns],
        "metric_settings": metric_settings(methods),
        "scale_caption": scale_caption(columns),
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
    title: str | None = None,
) -> Path:
    """Write the HTML leaderboard of one or more RESULTS folders atomically; return its path.

    ``results_dirs`` is one path or a sequence of them: RESULTS folders, or parent folders whose
    subfolders are RESULTS folders (the rule is :func:`resolve_results_dirs`'s). Their leaderboard rows
    are merged by method folder name, so ``write_report(["results/suite-a", "results/suite-b"],
    "reports/table1.html")`` gives Table 1 with both suites in each method's row.

    Needs each folder's ``leaderboard.csv`` and its methods' ``scores.csv`` (``videobench score``).
    ``out_path`` defaults to ``RESULTS/leaderboard.html`` when the paths stand for one RESULTS folder
    and is required otherwise. ``max_cases_per_method`` caps the per-case rows (the page embeds one
    reference thumbnail and one strip of ``strip_frames`` frames per case). ``title`` replaces the page's
    default title ("VideoBench leaderboard — <folders>"), e.g. for a reproduced paper table.

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
                                       progress=progress, title=title))
    atomic_write_text(out, html)
    return out
