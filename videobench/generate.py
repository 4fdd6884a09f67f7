"""Run a method over a suite's cases and write the results layout (see :mod:`videobench.results`).

The runner owns files, the generator owns pixels. It

- builds the generator once (a factory that lacks weights fails here, before any case runs);
- resumes: a case whose record says ``ok`` and whose video decodes is skipped;
- writes each video and every update of ``cases.jsonl`` atomically, under a file lock, so that shards
  (``--shard i/n`` on several GPUs or nodes sharing a folder) and interrupted runs never lose a record;
- records a failing case with its error and goes on with the others;
- shows progress with an ETA.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from videobench.cases import Case
from videobench.methods import Generator, validate_frames
from videobench.results import (
    CASES_FILE,
    RUN_FILE,
    check_case_id,
    package_versions,
    read_cases_jsonl,
    read_run_json,
    utc_now,
    video_relpath,
    write_cases_jsonl,
    write_run_json,
)
from videobench.suites import Suite
from mediaio.video import encoder_settings, is_valid_video, write_video

logger = logging.getLogger(__name__)


class RunConflictError(RuntimeError):
    """The method folder already holds a run with another suite or configuration."""


@dataclass
class GenerationSummary:
    method_dir: Path
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


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


@contextlib.contextmanager
def _locked(method_dir: Path) -> Iterator[None]:
    with open(method_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    with _locked(method_dir):
        records = _load_records(method_dir)
        records[record["case_id"]] = record
        rank = {case_id: i for i, case_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: (rank.get(r["case_id"], len(rank)), r["case_id"]))
        write_cases_jsonl(method_dir / CASES_FILE, ordered)


def _case_record(case: Case, seed: int, status: str, error: str | None = None, seconds: float | None = None) -> dict[str, Any]:
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
    if error is not None:
        record["error"] = error
    if seconds is not None:
        record["seconds"] = round(seconds, 3)
    return record


def _write_run_info(method_dir: Path, method: str, generator: Generator, suite: Suite, seed: int, overwrite: bool) -> dict[str, Any]:
    """Write run.json; refuse to mix suites or configurations in one method folder."""
    config = generator.config()
    path = method_dir / RUN_FILE
    started = utc_now()
    if path.is_file() and not overwrite:
        previous = read_run_json(path)
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
        "method": method,
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


def run_generation(
    method: str,
    generator: Generator,
    suite: Suite,
    cases: Sequence[Case],
    out: str | Path,
    seed: int = 0,
    shard: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerationSummary:
    """Generate every case of ``cases`` (this shard's part) into ``out/<generator.run_name>/``."""
    method_dir = Path(out) / generator.run_name
    (method_dir / "videos").mkdir(parents=True, exist_ok=True)
    for case in cases:
        check_case_id(case.case_id)
    _write_run_info(method_dir, method, generator, suite, seed, overwrite)

    shard_index, shard_count = parse_shard(shard)
    order = [case.case_id for case in suite.cases]
    mine = [case for i, case in enumerate(cases) if i % shard_count == shard_index]
    existing = {} if overwrite else _load_records(method_dir)
    summary = GenerationSummary(method_dir)

    bar = tqdm(mine, desc=f"generate {generator.run_name}", unit="video", disable=not progress)
    for case in bar:
        video_path = method_dir / video_relpath(case.case_id)
        previous = existing.get(case.case_id)
        if previous and previous.get("status") == "ok" and is_valid_video(video_path):
            summary.skipped.append(case.case_id)
            continue
        bar.set_postfix_str(case.case_id)
        start = time.perf_counter()
        try:
            frames = validate_frames(generator.generate(case, seed), case)
            write_video(video_path, frames, fps=generator.fps)
        except Exception as error:  # noqa: BLE001 - one failing case must not stop the run
            message = f"{type(error).__name__}: {error}"
            logger.error("case %s failed: %s", case.case_id, message)
            logger.debug("%s", traceback.format_exc())
            summary.failed[case.case_id] = message
            _update_record(method_dir, _case_record(case, seed, "failed", error=message), order)
            continue
        summary.generated.append(case.case_id)
        _update_record(method_dir, _case_record(case, seed, "ok", seconds=time.perf_counter() - start), order)
    with _locked(method_dir):
        info = read_run_json(method_dir / RUN_FILE)
        info["updated"] = utc_now()
        write_run_json(method_dir / RUN_FILE, {k: v for k, v in info.items() if k != "schema_version"})
    return summary
