"""The results layout, a contract shared with other tools::

    RESULTS/<method>/run.json       method, suite + version, config, seeds, package versions, timestamps
    RESULTS/<method>/cases.jsonl    one JSON object per case: case_id, subject, prompt, entity,
                                    references (list of image paths), video (path relative to the
                                    method folder), seed, status ("ok" or "failed"), error (when failed),
                                    video_sha256 (the bytes the run wrote: provenance)
    RESULTS/<method>/videos/<case_id>.mp4
    RESULTS/<method>/images/<case_id>.png    an intermediate image (two-stage methods), named in the record

Scoring adds ``RESULTS/<method>/scores.csv`` and ``RESULTS/leaderboard.csv``.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from mediaio.atomic import atomic_open, atomic_write_json

RUN_FILE = "run.json"
CASES_FILE = "cases.jsonl"
VIDEOS_DIR = "videos"
IMAGES_DIR = "images"
SCORES_FILE = "scores.csv"
#: ``{config sha256: {"family": ..., "settings": {option: value}}}``: the metric settings behind each
#: ``<family>_config_sha256`` of scores.csv that differ from the family's defaults (``-M``), for the report.
METRIC_SETTINGS_FILE = "metric_settings.json"
LEADERBOARD_FILE = "leaderboard.csv"
SCHEMA_VERSION = 1
REQUIRED_CASE_FIELDS = ("case_id", "subject", "prompt", "entity", "references", "video", "status")
_TRACKED_PACKAGES = (
    "videobench-customvideox", "torch", "torchvision", "diffusers", "transformers", "peft",
    "open_clip_torch", "timm", "av", "numpy", "pillow",
)


def check_name(name: object, what: str) -> str:
    """``name`` if it is one safe path component (a method folder under RESULTS), else ``ValueError`` naming ``what``.

    Refused: empty, ``.``/``..`` or any leading dot (hidden folders such as ``.locks`` belong to the harness), a
    ``/``, ``\\`` or NUL, a control character, more than 255 bytes: nothing may resolve outside ``--out``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: expected a non-empty folder name, got {name!r}"[:200])
    shown = repr(name) if len(name) <= 80 else repr(name[:77]) + "..."
    if name.startswith(".") or any(char in name for char in "/\\\0") or not name.isprintable():
        raise ValueError(f"{what} {shown}: must be one folder name (no '/', '\\', leading '.' or control characters)")
    if len(name.encode("utf-8")) > 255:
        raise ValueError(f"{what} {shown}: longer than 255 bytes")
    return name


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def video_relpath(case_id: str) -> str:
    return f"{VIDEOS_DIR}/{case_id}.mp4"


def image_relpath(case_id: str) -> str:
    return f"{IMAGES_DIR}/{case_id}.png"


class RunFileError(ValueError):
    """A run.json that cannot be read (not JSON, or not a JSON object); the message names the file."""


def provenance_problem(record: dict[str, Any], video_sha256: str | None, run_seed: Any = None) -> str | None:
    """Why a case's video is not the one its run wrote, or None.

    ``videobench generate`` records each video's sha256 and seed in its cases.jsonl record when it writes the
    video. A file whose bytes differ from the recorded sha256 was replaced afterwards (copied in from another run,
    re-encoded); a record whose seed differs from run.json's base seed was not written by this run (every case
    uses the base seed). Records without these fields (other tools) are not checked.
    """
    recorded = record.get("video_sha256")
    if isinstance(recorded, str) and recorded and video_sha256 and recorded != video_sha256:
        return (f"the video is not the one this run wrote (sha256 {video_sha256[:12]}…, cases.jsonl records "
                f"{recorded[:12]}…): damaged, replaced or copied from another run")
    seed = record.get("seed")
    if run_seed is not None and seed is not None and str(seed) != str(run_seed):
        return f"case seed {seed} differs from the run's seed {run_seed} (run.json): not made by this run"
    return None


def check_case_id(case_id: str) -> str:
    """A case id becomes a file name: refuse separators and dot-only names."""
    if not case_id or case_id in {".", ".."} or any(c in case_id for c in "/\\\0") or case_id.startswith("."):
        raise ValueError(f"invalid case_id {case_id!r}: it must be a plain file name")
    return case_id


@dataclass
class CaseLine:
    """One parsed line of cases.jsonl, or the error that made it unusable."""

    line_number: int
    record: dict[str, Any] | None
    error: str | None = None


def read_cases_jsonl(path: str | os.PathLike) -> list[CaseLine]:
    """Parse cases.jsonl leniently: malformed lines come back with an ``error`` naming file and line."""
    path = Path(path)
    lines: list[CaseLine] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                lines.append(CaseLine(number, None, f"{path}:{number}: malformed JSON ({error.msg})"))
                continue
            if not isinstance(record, dict):
                lines.append(CaseLine(number, None, f"{path}:{number}: expected a JSON object"))
                continue
            missing = [key for key in REQUIRED_CASE_FIELDS if key not in record]
            if missing:
                lines.append(CaseLine(number, record, f"{path}:{number}: missing field(s) {', '.join(missing)}"))
                continue
            bad = _unencodable_field(record)
            if bad:
                lines.append(CaseLine(number, None, f"{path}:{number}: field {bad!r} holds text that is not valid "
                                                    "Unicode (a lone surrogate); the line is ignored"))
                continue
            try:
                check_case_id(str(record["case_id"]))
            except ValueError as error:
                lines.append(CaseLine(number, record, f"{path}:{number}: {error}"))
                continue
            lines.append(CaseLine(number, record))
    return lines


def _unencodable_field(value: Any, name: str = "") -> str | None:
    """The name of the first field (nested fields joined with '.') whose text cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return name or "(value)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad = _unencodable_field(str(key), name) or _unencodable_field(item, f"{name}.{key}" if name else str(key))
            if bad:
                return bad
    if isinstance(value, list):
        for index, item in enumerate(value):
            bad = _unencodable_field(item, f"{name}[{index}]")
            if bad:
                return bad
    return None


def write_cases_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite cases.jsonl atomically, one sorted-key JSON object per line."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def write_run_json(path: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, **info})


def read_run_json(path: str | os.PathLike) -> dict[str, Any]:
    """run.json as a dict. Raises :class:`RunFileError` naming the file when it is not one JSON object."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFileError(f"{path}: corrupt run.json ({error})") from None
    if not isinstance(info, dict):
        raise RunFileError(f"{path}: run.json holds a JSON {type(info).__name__}, not an object")
    return info


def method_dirs(results: str | os.PathLike) -> list[Path]:
    """Every folder of RESULTS that holds a cases.jsonl (other entries are stray and ignored)."""
    results = Path(results)
    return sorted(p for p in results.iterdir() if p.is_dir() and (p / CASES_FILE).is_file())


def resolve_inside(base: Path, relative: str) -> Path:
    """Join ``relative`` to ``base`` and refuse any result outside ``base`` (``..``, absolute paths).

    The check is on the path as written (normalised, not following links): a ``videos/`` entry that is a
    symbolic link to other storage is the user's own layout and stays allowed.
    """
    base = base.resolve()
    target = Path(os.path.normpath(base / relative))
    if target != base and base not in target.parents:
        raise ValueError(f"path {relative!r} escapes {base}")
    return target
