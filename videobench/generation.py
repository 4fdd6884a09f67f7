"""Run a method over a suite's cases and write the results layout (see :mod:`videobench.results`).

The runner owns files, the generator owns pixels. It

- gets a generator built once (:func:`videobench.methods.build_generator`: options validated, every weight file
  resolved and each missing one reported in one message, before any model loads);
- resumes: a case whose record says ``ok`` and whose video decodes is skipped, unless the video is not the one the
  run wrote (its sha256 differs from the record's) or the record's seed is not the run's: that case is made again;
- records each video's sha256 and seed in its cases.jsonl record (provenance, checked by ``score`` and ``report``);
- writes each video, intermediate image and every update of ``cases.jsonl`` atomically, under a file lock, so that
  shards (``--shard i/n`` on several GPUs or nodes sharing a folder) and interrupted runs never lose a record;
- records a failing case with its error and goes on with the others;
- runs an :class:`~videobench.methods.ImageFirstGenerator` in two phases (every image, then every video);
- removes temporary files that a killed run left behind;
- shows progress with an ETA, and keeps third-party libraries' console noise (warnings, their loggers' messages,
  e.g. a tokenizer's "sequence longer than 77 tokens") out of it: what a case's models say while it runs goes into
  that case's ``diagnostics`` (``library_messages``) in cases.jsonl (:func:`capture_library_messages`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from mediaio.atomic import atomic_path
from mediaio.hashing import file_sha256
from mediaio.images import ImageError, load_reference_image
from mediaio.video import encoder_settings, is_valid_video, write_video
from videobench.cases import Case
from videobench.methods import PHASES, Generator, ImageFirstGenerator, as_output
from videobench.results import (
    CASES_FILE,
    IMAGES_DIR,
    RUN_FILE,
    RunFileError,
    check_case_id,
    check_name,
    image_relpath,
    package_versions,
    provenance_problem,
    read_cases_jsonl,
    read_run_json,
    utc_now,
    video_relpath,
    write_cases_jsonl,
    write_run_json,
)
from videobench.suites import Suite

logger = logging.getLogger(__name__)

#: A temporary file of :func:`mediaio.atomic.atomic_path` (``.<name>.<8 random chars><suffix>[.part]``).
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?(\.part)?$")
#: A temporary file younger than this is never swept (another node may be writing it).
STALE_AFTER_S = 600.0


class RunConflictError(RuntimeError):
    """The method folder already holds a run with another suite or configuration, or cannot be used."""


@dataclass
class GenerationSummary:
    method_dir: Path
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    #: case id -> why its existing video was not accepted on resume (made again)
    replaced: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


# ------------------------------------------------------------------------------------------------ the folder


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> ``(0, 1)``."""
    if not shard:
        return 0, 1
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard must look like 'i/n' (e.g. 0/4), got {shard!r}") from error
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {shard!r}: need 0 <= i < n")
    return index, count


def _lock(method_dir: Path) -> FileLock:
    return FileLock(str(method_dir / ".lock"))


def _open_files() -> set[str]:
    """Paths held open by any process of this machine (Linux ``/proc``; empty elsewhere)."""
    held: set[str] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return held
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                try:
                    held.add(os.readlink(fd))
                except OSError:
                    continue
        except OSError:
            continue
    return held


def sweep_stale_temp_files(method_dir: Path, older_than: float, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files a killed run left in ``method_dir`` (and its videos/images folders).

    A file is stale when it looks like :func:`mediaio.atomic.atomic_path`'s temporary file, was last modified
    before ``older_than`` (the start of this run) and at least ``min_age_s`` ago (another node may be writing),
    and no process of this machine holds it open. Returns the removed paths.
    """
    now = time.time()
    candidates = [
        path for folder in (method_dir, method_dir / "videos", method_dir / IMAGES_DIR) if folder.is_dir()
        for path in folder.iterdir() if path.is_file() and _TEMP_FILE.match(path.name)
    ]
    stale = []
    for path in candidates:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime < older_than and now - mtime >= min_age_s:
            stale.append(path)
    if not stale:
        return []
    held = _open_files()
    removed = []
    for path in stale:
        if str(path.resolve()) in held:
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def _load_records(method_dir: Path) -> dict[str, dict[str, Any]]:
    path = method_dir / CASES_FILE
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line in read_cases_jsonl(path):
        if line.error:
            logger.warning("%s (the case will be generated again)", line.error)
        elif line.record is not None:
            records[str(line.record["case_id"])] = line.record
    return records


def _update_record(method_dir: Path, record: dict[str, Any], order: Sequence[str]) -> None:
    """Merge one case record into cases.jsonl (re-read under the lock: shards may have written)."""
    with _lock(method_dir):
        records = _load_records(method_dir)
        previous = records.get(record["case_id"], {})
        for key in ("image", "image_seconds"):  # an image made by an earlier phase stays listed
            if key in previous and key not in record:
                record[key] = previous[key]
        records[record["case_id"]] = record
        rank = {case_id: i for i, case_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: (rank.get(r["case_id"], len(rank)), r["case_id"]))
        write_cases_jsonl(method_dir / CASES_FILE, ordered)


#: Loggers of this repository: their messages stay on the console; every other library's are captured per case.
OWN_LOGGERS = ("videobench", "customvideox", "baselines", "mediaio")


def _is_own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class _Collect(logging.Handler):
    """Collects third-party log records as ``LEVEL logger: message`` lines."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if not _is_own(record):
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def capture_library_messages() -> Iterator[list[str]]:
    """Route third-party warnings and log messages (WARNING and up) emitted inside the block into a list.

    Python warnings are recorded with :func:`warnings.catch_warnings` (every occurrence, as ``Category: text``).
    Log records are taken from the root logger's handlers (a filter drops the third-party ones there) and from
    loggers that print on their own (``propagate=False`` with handlers, as transformers' and diffusers' default
    stream handlers do); this repository's own loggers (:data:`OWN_LOGGERS`) keep printing as before. The list
    holds each distinct line once, in first-seen order.
    """
    lines: list[str] = []
    collect = _Collect(lines)
    root = logging.getLogger()
    silenced = [logger for logger in logging.Logger.manager.loggerDict.values()
                if isinstance(logger, logging.Logger) and logger.handlers and not logger.propagate
                and logger.name.split(".", 1)[0] not in OWN_LOGGERS]
    saved = {logger: logger.handlers for logger in silenced}
    for handler in root.handlers:
        handler.addFilter(_is_own)  # a callable filter: keeps only our own records
    root.addHandler(collect)
    for logger in silenced:
        logger.handlers = [collect]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield lines
            finally:
                lines.extend(f"{item.category.__name__}: {item.message}" for item in caught)
    finally:
        for logger, handlers in saved.items():
            logger.handlers = handlers
        root.removeHandler(collect)
        for handler in root.handlers:
            handler.removeFilter(_is_own)
        lines[:] = list(dict.fromkeys(lines))


def _with_messages(diagnostics: Mapping[str, Any] | None, messages: Sequence[str]) -> dict[str, Any] | None:
    """A case's diagnostics plus the library messages captured while it ran (None when both are empty)."""
    merged = {**(diagnostics or {}), **({"library_messages": list(messages)} if messages else {})}
    return merged or None


def _case_record(case: Case, seed: int, status: str, **extra: Any) -> dict[str, Any]:
    record = {
        "case_id": case.case_id,
        "suite": case.suite,
        "subject": case.subject,
        "category": case.category,
        "prompt_id": case.prompt_id,
        "prompt": case.prompt,
        "entity": case.entity,
        "references": list(case.references),
        "video": video_relpath(case.case_id),
        "seed": seed,
        "status": status,
    }
    record.update({key: value for key, value in extra.items() if value is not None})
    return record


def _write_run_info(method_dir: Path, generator: Generator | ImageFirstGenerator, metadata: Mapping[str, Any], suite: Suite, seed: int,
                    overwrite: bool) -> dict[str, Any]:
    """Write run.json; refuse to mix suites or configurations in one method folder."""
    config = generator.config()
    path = method_dir / RUN_FILE
    started = utc_now()
    if path.is_file() and not overwrite:
        try:
            previous = read_run_json(path)
        except RunFileError as error:
            raise RunConflictError(f"{error}; move it away or use --overwrite to start the folder again") from None
        if previous.get("suite") != suite.name or previous.get("suite_version") != suite.version:
            raise RunConflictError(
                f"{path}: holds suite {previous.get('suite')} {previous.get('suite_version')}, "
                f"not {suite.name} {suite.version}; use another --out folder or --overwrite"
            )
        if previous.get("config") != config or previous.get("seed") != seed:
            raise RunConflictError(
                f"{path}: the existing run used another configuration or seed; resuming would mix videos. "
                "Use another --out folder, or --overwrite to regenerate every case"
            )
        started = previous.get("started", started)
    info = {
        **dict(metadata),
        "method": metadata.get("method", generator.run_name),
        "run_name": generator.run_name,
        "suite": suite.name,
        "suite_version": suite.version,
        "config": config,
        "seed": seed,
        "seeds": {"base": seed, "rule": "every case uses the base seed"},
        "fps": generator.fps,
        "random_weights": bool(generator.random_weights),
        "packages": package_versions(),
        "video_encoder": encoder_settings(),
        "started": started,
        "updated": utc_now(),
    }
    write_run_json(path, info)
    return info


def prepare_method_dir(out: str | os.PathLike, run_name: str) -> Path:
    """``out/<run_name>`` with its videos folder; one clear error when ``out`` (or the folder) is a file."""
    out = Path(out)
    check_name(run_name, "run name")
    for path in (out, out / run_name, out / run_name / "videos"):
        if path.exists() and not path.is_dir():
            raise RunConflictError(f"--out {out}: {path} exists and is not a folder")
    (out / run_name / "videos").mkdir(parents=True, exist_ok=True)
    return out / run_name


# ------------------------------------------------------------------------------------------------ running


def _write_image(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.convert("RGB").save(tmp, format="PNG")


def _valid_image(path: Path) -> bool:
    try:
        load_reference_image(path)
    except ImageError:
        return False
    return True


@dataclass
class _Run:
    generator: Any
    method_dir: Path
    seed: int
    order: list[str]
    existing: dict[str, dict[str, Any]]
    summary: GenerationSummary
    progress: bool

    def fail(self, case: Case, message: str, **extra: Any) -> None:
        logger.error("case %s failed: %s", case.case_id, message)
        logger.debug("%s", traceback.format_exc())
        self.summary.failed[case.case_id] = message
        _update_record(self.method_dir, _case_record(case, self.seed, "failed", error=message, **extra), self.order)

    def video_done(self, case: Case) -> bool:
        """A finished case: an ``ok`` record whose video decodes and is the one this run wrote (see
        :func:`videobench.results.provenance_problem`); a video that is not is reported and made again."""
        previous = self.existing.get(case.case_id)
        path = self.method_dir / video_relpath(case.case_id)
        if not (previous and previous.get("status") == "ok" and is_valid_video(path)):
            return False
        problem = provenance_problem(previous, file_sha256(path), self.seed)
        if problem is not None:
            if case.case_id not in self.summary.replaced:
                logger.warning("case %s: %s: %s; generating it again", case.case_id, path, problem)
            self.summary.replaced[case.case_id] = problem
            return False
        return True

    def image_phase(self, cases: Sequence[Case]) -> None:
        """Make the intermediate image of every case that lacks a valid one (and has no finished video)."""
        bar = tqdm(cases, desc=f"images {self.generator.run_name}", unit="image", disable=not self.progress)
        for case in bar:
            path = self.method_dir / image_relpath(case.case_id)
            if self.video_done(case) or _valid_image(path):
                continue
            bar.set_postfix_str(case.case_id)
            start = time.perf_counter()
            messages: list[str] = []
            try:
                with capture_library_messages() as messages:
                    image = self.generator.generate_image(case, self.seed)
                _write_image(path, image)
            except Exception as error:  # noqa: BLE001 - one failing case must not stop the run
                self.fail(case, f"{type(error).__name__}: {error}", diagnostics=_with_messages(None, messages))
                continue
            self.summary.images.append(case.case_id)
            _update_record(self.method_dir, _case_record(
                case, self.seed, "pending", image=image_relpath(case.case_id),
                image_seconds=round(time.perf_counter() - start, 3),
                error="image made; the video phase has not run yet",
                diagnostics=_with_messages(None, messages)), self.order)

    def video_phase(self, cases: Sequence[Case], needs_image: bool) -> None:
        bar = tqdm(cases, desc=f"generate {self.generator.run_name}", unit="video", disable=not self.progress)
        for case in bar:
            if self.video_done(case):
                self.summary.skipped.append(case.case_id)
                continue
            bar.set_postfix_str(case.case_id)
            start = time.perf_counter()
            messages: list[str] = []
            try:
                if needs_image:
                    image_path = self.method_dir / image_relpath(case.case_id)
                    if not _valid_image(image_path):
                        raise FileNotFoundError(f"no intermediate image {image_path} (run the image phase first)")
                    with capture_library_messages() as messages:
                        result = self.generator.generate(case, self.seed, load_reference_image(image_path))
                else:
                    with capture_library_messages() as messages:
                        result = self.generator.generate(case, self.seed)
                output = as_output(result, case)
                video_path = self.method_dir / video_relpath(case.case_id)
                write_video(video_path, output.frames, fps=self.generator.fps)
                video_sha256 = file_sha256(video_path, memoize=False)
                image = None
                if output.image is not None:
                    _write_image(self.method_dir / image_relpath(case.case_id), output.image)
                    image = image_relpath(case.case_id)
            except Exception as error:  # noqa: BLE001 - one failing case must not stop the run
                self.fail(case, f"{type(error).__name__}: {error}", diagnostics=_with_messages(None, messages))
                continue
            self.summary.generated.append(case.case_id)
            _update_record(self.method_dir, _case_record(
                case, self.seed, "ok", image=image, seconds=round(time.perf_counter() - start, 3),
                diagnostics=_with_messages(output.diagnostics, messages), video_sha256=video_sha256), self.order)


def selection_outcome(method_dir: Path, case_ids: Sequence[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """``(ok, failed: case id -> error, missing)`` among ``case_ids`` according to ``method_dir``'s cases.jsonl.

    What rank 0 reports for every rank once all shards finished: a case is missing when it has no record, or only
    a ``pending`` one (its image phase ran, its video phase did not).
    """
    records = _load_records(method_dir)
    ok, failed, missing = [], {}, []
    for case_id in case_ids:
        status = records.get(case_id, {}).get("status")
        if status == "ok":
            ok.append(case_id)
        elif status == "failed":
            failed[case_id] = str(records[case_id].get("error", ""))
        else:
            missing.append(case_id)
    return ok, failed, missing


def run_generation(
    generator: Generator | ImageFirstGenerator,
    suite: Suite,
    cases: Sequence[Case],
    out: str | os.PathLike,
    seed: int = 0,
    shard: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> GenerationSummary:
    """Generate every case of ``cases`` (this shard's part) into ``out/<generator.run_name>/``.

    ``metadata`` is what run.json records about the method (:meth:`videobench.methods.MethodSpec.metadata`:
    method, kind, paper row, Table 2 setting, resolved options).
    """
    started = time.time()
    method_dir = prepare_method_dir(out, generator.run_name)
    for case in cases:
        check_case_id(case.case_id)
    _write_run_info(method_dir, generator, metadata or {}, suite, seed, overwrite)
    summary = GenerationSummary(method_dir)
    summary.swept = [str(path) for path in sweep_stale_temp_files(method_dir, older_than=started)]
    for path in summary.swept:
        logger.info("removed a temporary file left by an interrupted run: %s", path)

    shard_index, shard_count = parse_shard(shard)
    mine = [case for i, case in enumerate(cases) if i % shard_count == shard_index]
    run = _Run(generator, method_dir, seed, [case.case_id for case in suite.cases],
               {} if overwrite else _load_records(method_dir), summary, progress)
    phases = tuple(getattr(generator, "phases", ("video",)))
    image_first = isinstance(generator, ImageFirstGenerator)
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown or (not image_first and phases != ("video",)):
        raise ValueError(f"{generator.run_name}: unknown generation phase(s) {phases}")
    if overwrite:
        for case in mine:  # --overwrite redoes the images too
            (method_dir / image_relpath(case.case_id)).unlink(missing_ok=True)
    if "image" in phases:
        (method_dir / IMAGES_DIR).mkdir(exist_ok=True)
        run.image_phase(mine)
        cast(ImageFirstGenerator, generator).end_image_phase()  # "image" is only among an image-first's phases
    if "video" in phases:
        run.video_phase([case for case in mine if case.case_id not in summary.failed], needs_image=image_first)
    with _lock(method_dir):
        info = read_run_json(method_dir / RUN_FILE)
        info["updated"] = utc_now()
        write_run_json(method_dir / RUN_FILE, {k: v for k, v in info.items() if k != "schema_version"})
    return summary
