"""``videobench score``: RESULTS -> ``<method>/scores.csv`` per method -> ``leaderboard.csv``.

For every method folder (:func:`videobench.results.method_dirs`) and every line of its
``cases.jsonl``, the scorer decodes the video, loads the reference images as 8-bit RGB and hands a
:class:`~videobench.metrics.base.MetricInput` to each metric. Metrics are built once by the caller
and passed in; they never read files.

Caching: every metric result is stored under ``RESULTS/.score_cache/`` (one JSON file per entry,
written atomically) keyed by the sha256 of the video's bytes, of the inputs the metrics see besides
the video (prompt, entity, the reference images' bytes) and of the metric's :meth:`config` (which
names the model, its weights and preprocessing). A re-run therefore computes only what changed, and
an interrupted run resumes where it stopped. With ``columns`` (``--metrics``) only some columns are
computed; the others are carried over from the previous ``scores.csv`` rows of the same video.

Bad input never stops the run: a corrupt, empty or truncated video, fewer than 2 frames, frames
smaller than 128 px, a missing or unreadable reference image, a malformed ``cases.jsonl`` line, a
case whose generation failed, a path escaping the method folder, or a metric raising on one video
each give ONE line naming the case and the file (logged, and kept in the ``error`` column of
``scores.csv``); every other case is still scored and :attr:`ScoreSummary.failed` says whether
anything failed. Stray files and folders are reported as warnings; a folder that looks like a method
folder (run.json or videos/) without a cases.jsonl is an error.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from videobench import results as layout
from mediaio.atomic import atomic_open, atomic_write_json
from mediaio.hashing import file_sha256, json_sha256
from mediaio.images import ImageError, load_reference_image
from videobench.leaderboard import SCORE_COLUMNS, aggregate
from videobench.metrics.base import METRIC_COLUMNS, Metric, MetricInput
from mediaio.video import VideoError, read_video

#: A video needs at least this many frames (T.Cons and D.D compare consecutive frames).
MIN_FRAMES = 2
#: And a short side of at least this many pixels (RAFT's padding rule; CLIP/DINO crop 224).
MIN_SIZE = 128
CACHE_DIRNAME = ".score_cache"
CACHE_VERSION = 1
#: The weight-free calibration methods; leaderboards show them as reference rows.
REFERENCE_METHODS = ("reference-still", "reference-pan")
DIAGNOSTIC_COLUMNS = ("num_frames", "fps", "height", "width")
#: scores.csv columns, in order; diagnostics returned by metrics follow them.
SCORES_CSV_COLUMNS = (
    "case_id", "suite", "subject", *SCORE_COLUMNS, *DIAGNOSTIC_COLUMNS, "error", "random_weights", "video_sha256",
    "inputs_sha256",
)
#: leaderboard.csv columns before the per-metric means and intervals.
LEADERBOARD_KEY_COLUMNS = ("method", "suite", "suite_version", "method_name", "reference")
#: Entries of RESULTS that are ours, not stray (the report's default output included).
RESULTS_OWN_ENTRIES = {layout.LEADERBOARD_FILE, "leaderboard.html", CACHE_DIRNAME}
METHOD_OWN_ENTRIES = {layout.RUN_FILE, layout.CASES_FILE, layout.SCORES_FILE, layout.VIDEOS_DIR}

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------- summary
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


# ------------------------------------------------------------------------------ metric selection
def select_columns(
    metrics: Sequence[Metric], columns: Iterable[str] | None = None
) -> list[tuple[Metric, tuple[str, ...]]]:
    """Which metric computes which requested column.

    ``columns`` holds score column names (``clip_t``, ``clip_i``, ``dino_i``, ``t_cons``,
    ``dynamic``) or metric family names (``clip``, ``dino``, ``dynamic``) standing for all their
    columns; ``None`` means every column the given metrics offer. The first metric offering a column
    computes it. Raises ``ValueError`` for an unknown name or a column no given metric computes.
    """
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise TypeError(f"{metric!r} does not implement the Metric protocol (videobench.metrics.base)")
    offered: dict[str, Metric] = {}
    for metric in metrics:
        for column in metric.columns:
            offered.setdefault(column, metric)
    if columns is None:
        wanted = [column for column in SCORE_COLUMNS if column in offered]
    else:
        families = {family for family in METRIC_COLUMNS.values()}
        wanted = []
        unknown = []
        for name in columns:
            if name in METRIC_COLUMNS:
                expanded = [name]
            elif name in families:
                expanded = [column for column, family in METRIC_COLUMNS.items() if family == name]
            else:
                unknown.append(name)
                continue
            wanted += [column for column in expanded if column not in wanted]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(METRIC_COLUMNS)} or the families {', '.join(sorted(families))}"
            )
        missing = [column for column in wanted if column not in offered]
        if missing:
            raise ValueError(f"no metric was built for {', '.join(missing)} (requested with --metrics)")
        wanted = [column for column in SCORE_COLUMNS if column in wanted]
    if not wanted:
        raise ValueError("nothing to score: no metric columns selected")
    plan: list[tuple[Metric, tuple[str, ...]]] = []
    for metric in metrics:
        mine = tuple(column for column in wanted if offered[column] is metric)
        if mine:
            plan.append((metric, mine))
    return plan


def metric_config_hash(metric: Metric) -> str:
    """sha256 of the metric's family, config and random-weights flag (the cache's metric key)."""
    payload = {"family": metric.family, "random_weights": bool(metric.random_weights), "config": metric.config()}
    return json_sha256(payload)


# --------------------------------------------------------------------------------------- cache
class ScoreCache:
    """One JSON file per entry under ``root`` (two-level fan-out), each written atomically.

    An unreadable or malformed entry (e.g. from a disk that filled up) counts as a miss.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._path(key), encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), value)


# ----------------------------------------------------------------------------------- per case
class CaseError(Exception):
    """A case that cannot be scored; the message names the case and the file."""


@dataclass
class _MetricPlan:
    metric: Metric
    columns: tuple[str, ...]
    config_hash: str


@dataclass
class _Scorer:
    plans: list[_MetricPlan]
    cache: ScoreCache
    log: Log
    metric_calls: int = 0
    cache_hits: int = 0
    _reference_hashes: dict[tuple[str, int, int], str] = field(default_factory=dict)

    # -- inputs --------------------------------------------------------------------------------
    def reference_paths(self, method_dir: Path, record: dict[str, Any], where: str) -> list[Path]:
        references = record.get("references")
        if isinstance(references, str):
            references = [references]
        if not isinstance(references, list) or not references:
            raise CaseError(f"{where}: no reference images listed")
        paths = []
        for reference in references:
            path = Path(str(reference)).expanduser()
            if not path.is_absolute():
                # Relative references resolve against the method folder, then the working directory.
                beside = method_dir / path
                path = beside if beside.exists() or not path.exists() else path.resolve()
            paths.append(path)
        return paths

    def reference_sha256(self, path: Path, where: str) -> str:
        try:
            stat = path.stat()
        except OSError:
            raise CaseError(f"{where}: reference image {path} is missing") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._reference_hashes:
            try:
                self._reference_hashes[key] = file_sha256(path)
            except OSError as error:
                raise CaseError(f"{where}: reference image {path} is unreadable ({error})") from None
        return self._reference_hashes[key]

    # -- scoring -------------------------------------------------------------------------------
    def prepare_case(self, method_dir: Path, record: dict[str, Any], where: str) -> "_Prepared":
        """Hash, look up the cache and, when anything is missing, decode the video and references.

        Everything here is I/O (run ahead of the metrics on a worker thread); raises CaseError.
        """
        if record.get("status", "ok") != "ok":
            detail = record.get("error") or "no error message recorded"
            raise CaseError(f"{where}: generation failed ({detail}); see {method_dir / layout.CASES_FILE}")
        if not isinstance(record.get("video"), str) or not record["video"].strip():
            raise CaseError(f"{where}: no video path (video: {record.get('video')!r}) in "
                            f"{method_dir / layout.CASES_FILE}")
        try:
            video_path = layout.resolve_inside(method_dir, str(record["video"]))
        except ValueError as error:
            raise CaseError(f"{where}: video path refused: {error}") from None
        if not video_path.is_file():
            raise CaseError(f"{where}: {video_path}: video file is missing")
        video_sha = file_sha256(video_path)
        reference_paths = self.reference_paths(method_dir, record, where)
        inputs = {
            "prompt": str(record.get("prompt", "")),
            "entity": str(record.get("entity", "")),
            "references": [self.reference_sha256(path, where) for path in reference_paths],
        }
        inputs_hash = json_sha256(inputs)
        prepared = _Prepared(where=where, video_path=video_path,
                             row={"video_sha256": video_sha, "inputs_sha256": inputs_hash})
        info_key = json_sha256({"v": CACHE_VERSION, "video_info": video_sha})
        info = self.cache.get(info_key)
        for plan in self.plans:
            prepared.row[config_column(plan.metric.family)] = plan.config_hash
            key = json_sha256({"v": CACHE_VERSION, "video": video_sha, "inputs": inputs_hash, "metric": plan.config_hash})
            entry = self.cache.get(key) or {}
            values = entry.get("values", {}) if isinstance(entry.get("values"), dict) else {}
            missing = tuple(column for column in plan.columns if column not in values)
            if missing:
                prepared.pending.append((plan, key, values, missing))
            else:
                self.cache_hits += 1
                prepared.row.update(values)
        if prepared.pending or info is None:
            try:
                video = read_video(video_path, min_frames=MIN_FRAMES, min_size=MIN_SIZE)
            except VideoError as error:
                raise CaseError(f"{where}: {error}") from None
            info = {"num_frames": video.num_frames, "fps": video.fps, "height": video.size[0], "width": video.size[1]}
            self.cache.put(info_key, info)
            if prepared.pending:
                references = []
                for path in reference_paths:
                    try:
                        references.append(load_reference_image(path))
                    except ImageError as error:
                        raise CaseError(f"{where}: {error}") from None
                prepared.sample = MetricInput(
                    frames=video.frames, fps=video.fps, references=references,
                    prompt=inputs["prompt"], entity=inputs["entity"],
                )
        prepared.row.update({name: info.get(name) for name in DIAGNOSTIC_COLUMNS})
        return prepared

    def compute_case(self, prepared: "_Prepared") -> dict[str, Any]:
        """Run the metrics whose values were not cached; cache them; return the row. Raises CaseError."""
        row = prepared.row
        for plan, key, values, missing in prepared.pending:
            self.metric_calls += 1
            try:
                computed = plan.metric.score(prepared.sample, columns=missing)
            except Exception as error:  # one bad video must not stop the run
                raise CaseError(
                    f"{prepared.where}: {plan.metric.family} metric failed on {prepared.video_path} "
                    f"({type(error).__name__}: {error})"
                ) from None
            absent = [column for column in missing if column not in computed]
            if absent:
                raise CaseError(
                    f"{prepared.where}: {plan.metric.family} metric returned no {', '.join(absent)} "
                    f"for {prepared.video_path}"
                )
            values = {**values, **{name: _plain(value) for name, value in computed.items()}}
            self.cache.put(key, {"family": plan.metric.family, "config_hash": plan.config_hash, "values": values})
            row.update(values)
        return row


@dataclass
class _Prepared:
    """A case ready for the metrics: cached values already in ``row``, the rest in ``pending``."""

    where: str
    video_path: Path
    row: dict[str, Any]
    pending: list[tuple[_MetricPlan, str, dict[str, Any], tuple[str, ...]]] = field(default_factory=list)
    sample: MetricInput | None = None


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (numpy floats/ints/bools, tensors' .item())."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------- method folder
def _read_run_info(method_dir: Path, warnings: list[str], log: Log) -> dict[str, Any]:
    path = method_dir / layout.RUN_FILE
    if not path.is_file():
        message = f"{method_dir.name}: {path} is missing; suite taken from cases.jsonl"
        warnings.append(message)
        log(f"warning: {message}")
        return {}
    try:
        info = layout.read_run_json(path)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return info
    except (OSError, ValueError) as error:
        message = f"{method_dir.name}: {path} is unreadable ({error}); suite taken from cases.jsonl"
        warnings.append(message)
        log(f"warning: {message}")
        return {}


def run_suite(info: dict[str, Any]) -> tuple[str, str]:
    """``(suite name, suite version)`` from run.json (``suite`` as a string or ``{name, version}``)."""
    suite = info.get("suite")
    version = info.get("suite_version", "")
    if isinstance(suite, dict):
        version = suite.get("version", version)
        suite = suite.get("name")
    return (str(suite) if suite else "unknown"), str(version or "")


def is_reference_method(method: str, info: dict[str, Any] | None = None) -> bool:
    """True for the calibration methods (reference rows): by run.json's ``method`` or the folder name."""
    names = {method, str((info or {}).get("method", ""))}
    return any(name == ref or name.startswith(ref + "-") or name.startswith(ref + "_")
               for name in names for ref in REFERENCE_METHODS)


def _stray_in_method(method_dir: Path, listed_videos: set[Path], listed_references: set[Path] = frozenset()
                     ) -> list[str]:
    """Entries of a method folder that no case uses (reference images kept beside the videos are used)."""
    stray = []
    for entry in sorted(method_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        resolved = entry.resolve()
        if any(ref == resolved or resolved in ref.parents for ref in listed_references):
            continue
        if entry.name not in METHOD_OWN_ENTRIES:
            stray.append(f"{entry}: stray {'folder' if entry.is_dir() else 'file'} in method folder, ignored")
    videos = method_dir / layout.VIDEOS_DIR
    if videos.is_dir():
        for entry in sorted(videos.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.resolve() not in listed_videos:
                stray.append(f"{entry}: not listed in {layout.CASES_FILE}, ignored")
    return stray


def _stray_in_results(results_dir: Path, methods: list[Path]) -> tuple[list[str], list[str]]:
    """``(warnings, errors)`` about RESULTS entries that are not method folders.

    A folder that looks like a method folder (it has run.json or videos/) but lacks cases.jsonl is an
    error: its videos cannot be scored. Any other stray file or folder is a warning.
    """
    method_names = {path.name for path in methods}
    warnings, errors = [], []
    for entry in sorted(results_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in RESULTS_OWN_ENTRIES or entry.name in method_names:
            continue
        if entry.is_dir() and ((entry / layout.RUN_FILE).exists() or (entry / layout.VIDEOS_DIR).is_dir()):
            errors.append(f"{entry}: looks like a method folder but has no {layout.CASES_FILE}; not scored")
        elif entry.is_dir():
            warnings.append(f"{entry}: folder without {layout.CASES_FILE}, not a method folder; ignored")
        else:
            warnings.append(f"{entry}: stray file in RESULTS, ignored")
    return warnings, errors


def _previous_scores(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype={"case_id": str, "error": str, "video_sha256": str, "inputs_sha256": str},
                            keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    if "case_id" not in frame or "video_sha256" not in frame:
        return {}
    return {str(row["case_id"]): row for row in frame.to_dict("records")}


def score_method(
    method_dir: Path,
    scorer: _Scorer,
    warnings: list[str],
    bar: tqdm,
    prefetch: int = 2,
) -> tuple[MethodSummary, pd.DataFrame, dict[str, Any]]:
    """Score one method folder and write its scores.csv; returns the summary, rows and run info."""
    method = method_dir.name
    log = scorer.log
    info = _read_run_info(method_dir, warnings, log)
    suite, _version = run_suite(info)
    cases_path = method_dir / layout.CASES_FILE
    try:
        lines = layout.read_cases_jsonl(cases_path)
    except OSError as error:
        lines = [layout.CaseLine(0, None, f"{cases_path}: unreadable ({error})")]
    previous = _previous_scores(method_dir / layout.SCORES_FILE)
    selected = {column for plan in scorer.plans for column in plan.columns}
    run_configs = {plan.metric.family: plan.config_hash for plan in scorer.plans}
    random_metrics = any(plan.metric.random_weights for plan in scorer.plans)
    # A case id listed twice: the later line wins (a resumed generate may append), the earlier is noted.
    last_line: dict[str, int] = {}
    for line in lines:
        if line.record is not None and line.error is None:
            last_line[str(line.record["case_id"])] = line.line_number

    def case_id_of(line: layout.CaseLine) -> str:
        return str((line.record or {}).get("case_id") or f"line-{line.line_number}")

    def prepare(line: layout.CaseLine) -> _Prepared | None:
        """Worker-thread part: hashing, cache look-ups, decoding (None: nothing to prepare)."""
        case_id = case_id_of(line)
        if line.error is not None or last_line.get(case_id) != line.line_number:
            return None
        where = f"{method} case {case_id}"
        try:
            return scorer.prepare_case(method_dir, line.record or {}, where)
        except OSError as error:
            raise CaseError(f"{where}: {error}") from None

    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    listed_videos: set[Path] = set()
    listed_references: set[Path] = set()
    # Decoding the next videos overlaps with the metrics on the current one (PyAV releases the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="videobench-decode") as pool:
        for line, future in _prefetch(pool, prepare, lines, depth=prefetch):
            record = line.record or {}
            case_id = case_id_of(line)
            row: dict[str, Any] = {
                "case_id": case_id,
                "suite": str(record.get("suite") or suite),
                "subject": str(record.get("subject", "")),
                "random_weights": int(random_metrics),
            }
            bar.set_postfix_str(f"{method}/{case_id}", refresh=False)
            try:
                if line.error is not None:
                    raise CaseError(f"{method} case {case_id}: {line.error}")
                if last_line.get(case_id) != line.line_number:
                    warnings.append(f"{method} case {case_id}: {cases_path}:{line.line_number} is superseded by "
                                    f"line {last_line[case_id]}")
                    bar.update(1)
                    continue
                if isinstance(record.get("video"), str):
                    listed_videos.add((method_dir / record["video"]).resolve())
                references = record.get("references")
                references = [references] if isinstance(references, str) else references
                for reference in references if isinstance(references, list) else []:
                    if isinstance(reference, str) and not Path(reference).expanduser().is_absolute():
                        listed_references.add((method_dir / reference).resolve())
                row.update(scorer.compute_case(future.result()))
                _carry_over(row, previous.get(case_id), selected, run_configs)
                row["error"] = ""
            except CaseError as error:
                row["error"] = str(error)
                errors.append(str(error))
                log(str(error))
            rows.append(row)
            bar.update(1)

    for message in _stray_in_method(method_dir, listed_videos, listed_references):
        warnings.append(message)
        log(f"warning: {message}")

    frame = _scores_frame(rows)
    for message in _partial_columns(method, frame):
        warnings.append(message)
        log(f"warning: {message}")
    scores_csv = method_dir / layout.SCORES_FILE
    with atomic_open(scores_csv) as handle:
        frame.to_csv(handle, index=False, float_format="%.8g", lineterminator="\n")
    n_failed = int((frame["error"] != "").sum()) if len(frame) else 0
    summary = MethodSummary(
        method=method, scores_csv=scores_csv, suites=sorted(set(frame["suite"])) if len(frame) else [suite],
        n_cases=len(frame), n_scored=len(frame) - n_failed, n_failed=n_failed,
        random_weights=bool(len(frame) and frame["random_weights"].astype(int).any()), errors=errors,
    )
    return summary, frame, info


def _partial_columns(method: str, frame: pd.DataFrame) -> list[str]:
    """Warnings for score columns that only some scored cases have (a ``--metrics`` run after videos changed).

    The leaderboard mean of such a column covers fewer cases than ``n_scored``; say so instead of hiding it.
    """
    ok = frame[frame["error"] == ""]
    messages = []
    for column in SCORE_COLUMNS:
        missing = ok.loc[pd.to_numeric(ok[column], errors="coerce").isna(), "case_id"].tolist()
        if 0 < len(missing) < len(ok):
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            messages.append(f"{method}: {column} is missing for {len(missing)} of {len(ok)} scored case(s) ({shown}); "
                            f"its mean covers the others only; score {column} again to fill it")
    return messages


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


def config_column(family: str) -> str:
    """The scores.csv column holding the config hash of the ``family`` metric that produced a row's values."""
    return f"{family}_config_sha256"


def _carry_over(row: dict[str, Any], old: dict[str, Any] | None, selected: set[str],
                run_configs: dict[str, str] | None = None) -> None:
    """Keep the previous scores.csv values of the columns not computed in this run.

    Only for the same video *and* the same metric inputs (prompt, entity, reference images'
    bytes: ``inputs_sha256``), so a fixed reference or prompt never keeps a stale score; and only
    from the same metric configuration when this run built that family too (``run_configs``:
    family -> config hash), so ``--metrics clip_t --clip-model X`` never keeps a CLIP-I of model Y.
    The other metrics' diagnostics (``dd_*``, ...) and config hashes come along with their scores.
    """
    if old is None or _is_error(old):
        return
    if any(str(old.get(key)) != str(row.get(key)) for key in ("video_sha256", "inputs_sha256")):
        return
    run_configs = run_configs or {}
    carried = False
    for column in SCORE_COLUMNS:
        if column in selected or not _is_number(old.get(column)):
            continue
        family = METRIC_COLUMNS[column]
        old_config = old.get(config_column(family))
        if family in run_configs and str(old_config) != run_configs[family]:
            continue  # computed by another configuration of a model this run uses
        row[column] = old[column]
        if family not in run_configs and isinstance(old_config, str) and old_config:
            row[config_column(family)] = old_config
        carried = True
    if not carried:
        return
    for column, value in old.items():  # diagnostics of the metrics not run now
        if column not in row and column not in SCORES_CSV_COLUMNS and _is_number(value):
            row[column] = value
    if _is_true(old.get("random_weights")):
        row["random_weights"] = 1


def _is_number(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "1.0", "true", "yes"}


def _is_error(row: dict[str, Any]) -> bool:
    value = row.get("error")
    return isinstance(value, str) and bool(value.strip())


def _scores_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    extras = sorted({key for row in rows for key in row} - set(SCORES_CSV_COLUMNS))
    frame = pd.DataFrame(rows, columns=list(SCORES_CSV_COLUMNS) + extras)
    frame["error"] = frame["error"].fillna("").astype(str)
    frame["random_weights"] = frame["random_weights"].fillna(0).astype(int)
    if "dynamic" in frame:
        frame["dynamic"] = pd.to_numeric(frame["dynamic"], errors="coerce").astype("Int64")
    for column in ("num_frames", "height", "width"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


# ---------------------------------------------------------------------------------- leaderboard
def build_leaderboard(
    frames: list[tuple[str, dict[str, Any], pd.DataFrame]], n_resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per (method, suite): means x100 with 95% bootstrap CIs (see :mod:`videobench.leaderboard`).

    ``random_weights`` says a metric model was random-initialised; ``method_random_weights`` that the
    method generated its videos with random weights (run.json); ``reference`` marks calibration rows.
    """
    parts = [frame.assign(method=method) for method, _info, frame in frames if len(frame)]
    extra = {
        method: {
            "method_name": str(info.get("method", method)),
            "reference": int(is_reference_method(method, info)),
            "suite_version": run_suite(info)[1],
            "method_random_weights": int(bool(info.get("random_weights", False))),
        }
        for method, info, _frame in frames
    }
    empty = pd.DataFrame(columns=["method", "suite", "error", "random_weights", *SCORE_COLUMNS])
    table = aggregate(pd.concat(parts, ignore_index=True) if parts else empty, by=["method", "suite"],
                      n_resamples=n_resamples, seed=seed)
    for key in ("suite_version", "method_name", "reference", "method_random_weights"):
        table[key] = [extra[method][key] for method in table["method"]]
    ordered = list(LEADERBOARD_KEY_COLUMNS) + [c for c in table.columns if c not in LEADERBOARD_KEY_COLUMNS]
    return table[ordered]


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return sum(1 for raw in handle if raw.strip())


def _default_log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def check_not_method_folder(results_dir: Path) -> None:
    """Refuse a method folder given as RESULTS (it would get an empty leaderboard.csv written into it)."""
    if (results_dir / layout.CASES_FILE).is_file():
        raise ValueError(f"{results_dir} is a method folder (it holds {layout.CASES_FILE}); score the RESULTS "
                         f"folder above it: videobench score {results_dir.parent}")


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
        cache_dir: where cached values live; default ``RESULTS/.score_cache``.
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
    plans = [_MetricPlan(metric, cols, metric_config_hash(metric)) for metric, cols in select_columns(metrics, columns)]
    scorer = _Scorer(plans=plans, cache=ScoreCache(cache_dir or results_dir / CACHE_DIRNAME), log=log)
    methods = layout.method_dirs(results_dir)
    warnings: list[str] = []
    global_errors: list[str] = []
    stray_warnings, stray_errors = _stray_in_results(results_dir, methods)
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
            summary, frame, info = score_method(method_dir, scorer, warnings, bar, prefetch=prefetch)
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


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a scores.csv back (case ids as strings, empty errors as "")."""
    frame = pd.read_csv(path, dtype={"case_id": str, "subject": str, "suite": str, "error": str, "video_sha256": str,
                                     "inputs_sha256": str})
    for column in ("error", "subject", "suite"):
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame
