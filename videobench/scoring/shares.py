"""Scoring by several processes: each computes its share of the metric values into the score cache, one writes.

``videobench score`` under ``torchrun``/``srun`` (or with ``--shard i/n``) calls :func:`score_share`:

1. the share: every ``n``-th case of RESULTS (all method folders, in folder and file order, counting only the
   cases a full run would score), starting at ``i``, goes through the same :class:`~videobench.scoring.compute.
   Scorer` as a single-process run; its values land in the shared score cache and nowhere else;
2. under a launcher, a barrier (:mod:`videobench.sync`) waits for every rank; then rank 0 runs the ordinary
   single-process :func:`videobench.scoring.runner.score_results`, which finds every value in the cache (it hashes each
   video, decodes none) and writes ``scores.csv`` and ``leaderboard.csv`` exactly as one process would have;
3. without a launcher (``--shard i/n``, e.g. tasks of a SLURM array), the share stops after step 1: a final
   ``videobench score RESULTS`` without ``--shard`` writes the tables once every share finished.

A case whose metric fails in a share is left to the writer, which computes it again and records the error in
scores.csv as a single run does. The score cache must be on storage every rank sees (``--cache-dir``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videobench import results as layout
from videobench.distributed import launch_from_environment
from videobench.generation import parse_shard
from videobench.metrics.base import Metric
from videobench.scoring.compute import ScoreCache, Scorer, default_cache_dir, make_plans
from videobench.scoring.inputs import CaseError, Log, case_id_of, check_not_method_folder, collect_case, read_case_lines
from videobench.scoring.runner import ScoreSummary, _prefetch, score_results
from videobench.sync import wait_for_all_ranks

logger = logging.getLogger(__name__)


@dataclass
class ShareSummary:
    """What one share computed; the tables are someone else's job (``ok`` is always true: see the writer)."""

    results_dir: Path
    shard: str
    n_cases: int
    metric_calls: int
    cache_hits: int
    n_deferred: int  # cases whose values could not be computed here; the writer reports them
    writer_note: str

    @property
    def ok(self) -> bool:
        return True

    @property
    def exit_code(self) -> int:
        return 0

    def describe(self) -> str:
        deferred = f", {self.n_deferred} left to the writer (errors)" if self.n_deferred else ""
        return (f"share {self.shard}: {self.n_cases} case(s), {self.metric_calls} metric computation(s), "
                f"{self.cache_hits} from the cache{deferred}\n{self.writer_note}")


def scorable_cases(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(method folder, record)`` of every case a full run computes, in the order shares are dealt from.

    The same cases :func:`videobench.scoring.runner.score_method` computes: a parseable line that is the last one of its
    case id. Records whose generation failed are included (they fail at once, as in a full run).
    """
    cases = []
    for method_dir in layout.method_dirs(results_dir):
        _path, lines, last_line = read_case_lines(method_dir)
        for line in lines:
            if line.error is None and line.record is not None and last_line.get(case_id_of(line)) == line.line_number:
                cases.append((method_dir, line.record))
    return cases


def compute_share(results_dir: str | os.PathLike, metrics: Sequence[Metric], shard: str,
                  columns: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, log: Log | None = None, prefetch: int = 2) -> tuple[int, Scorer, int]:
    """Compute the metric values of share ``shard`` (``"i/n"``) of RESULTS into the score cache.

    Returns ``(number of cases in the share, the scorer with its counts, number of cases that failed)``.
    """
    index, count = parse_shard(shard)
    results_dir = Path(results_dir)
    check_not_method_folder(results_dir)
    scorer = Scorer(make_plans(metrics, columns), ScoreCache(cache_dir or default_cache_dir()))
    mine = scorable_cases(results_dir)[index::count]

    def prepare(item: tuple[Path, dict[str, Any]]):
        method_dir, record = item
        return scorer.prepare(collect_case(method_dir, record, f"{method_dir.name} case {record.get('case_id')}"))

    failed = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="videobench-decode") as pool, \
            tqdm(total=len(mine), desc=f"scoring share {shard}", unit="video", disable=not progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        for _item, future in _prefetch(pool, prepare, mine, depth=prefetch):
            try:
                scorer.compute(future.result())
            except CaseError as error:
                failed += 1
                (log or logger.info)(f"{error} (the writer of scores.csv records it)")
            bar.update(1)
    return len(mine), scorer, failed


def score_share(results_dir: str | os.PathLike, metrics: Sequence[Metric], shard: str,
                columns: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None,
                progress: bool = True, log: Log | None = None) -> ScoreSummary | ShareSummary:
    """Compute share ``shard``; under a launcher, wait for every rank and let rank 0 write the tables.

    Returns the :class:`~videobench.scoring.runner.ScoreSummary` of the writer (rank 0 of a launch), else a
    :class:`ShareSummary`. Raises :class:`videobench.sync.SyncError` when another rank died before the end.
    """
    results_dir = Path(results_dir)
    n_cases, scorer, failed = compute_share(results_dir, metrics, shard, columns, cache_dir, progress, log)
    launch = launch_from_environment()
    if launch is not None:
        wait_for_all_ranks(results_dir, "score")
        if launch.is_main:
            return score_results(results_dir, metrics, columns=columns, cache_dir=cache_dir, progress=progress,
                                 log=log)
        note = f"rank 0 of {launch.world_size} writes scores.csv and leaderboard.csv from the shared cache"
    else:
        note = (f"only the cache was written: once every share has finished, `videobench score {results_dir}` "
                "without --shard writes scores.csv and leaderboard.csv")
    return ShareSummary(results_dir, shard, n_cases, scorer.metric_calls, scorer.cache_hits, failed, note)
