"""Videos made elsewhere: export a suite's cases for another tool, import that tool's videos as a method folder.

The way VBench and OpenS2V-Eval are used (generate with any tool, then score a folder) works here in two steps::

    videobench suites videobench --export cases.jsonl      # case_id, prompt, subject, entity, references, seed
    # ... generate one video per case with your tool, named <case_id>.mp4 ...
    videobench import my_videos/ --suite videobench --method my-model --out results/videobench
    videobench score results/videobench && videobench report results/videobench

:func:`export_cases` writes a suite's cases as JSON lines or CSV. :func:`import_videos` builds the results layout
(``docs/results-layout.md``) from a plain folder of videos named by case id, or by a CSV that maps file names to
case ids: every case must be there (or ``allow_missing`` records the absent ones as failed cases) and every file
must decode, else one error names each offending case and file and nothing is written. The videos are copied byte
for byte (never re-encoded, so the scores see exactly what the tool made); run.json says ``kind: imported`` and
where the videos came from, and score and report treat the folder like any other method's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediaio.atomic import atomic_path, atomic_write_text
from mediaio.video import VideoError, read_video
from videobench.cases import Case
from videobench.results import (
    CASES_FILE,
    RUN_FILE,
    VIDEOS_DIR,
    check_case_id,
    package_versions,
    utc_now,
    write_cases_jsonl,
    write_run_json,
)
from videobench.suites import Suite

#: Containers PyAV decodes that video tools commonly write.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
#: The columns of an exported case list, in order.
EXPORT_FIELDS = ("case_id", "suite", "suite_version", "subject", "category", "prompt_id", "entity", "prompt",
                 "references", "seed")
#: The kind an imported method folder has in run.json (the leaderboard shows it).
IMPORTED_KIND = "imported"
#: How many offending cases an error lists before it says "and N more".
_LISTED = 10


class ImportFolderError(ValueError):
    """The folder cannot become a method folder (missing or undecodable videos, a bad mapping, a taken label)."""


# ------------------------------------------------------------------------------------------------ export


def case_rows(suite: Suite, cases: Sequence[Case] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One plain mapping per case with :data:`EXPORT_FIELDS` (``references`` a list of absolute paths)."""
    return [
        {
            "case_id": case.case_id, "suite": suite.name, "suite_version": suite.version, "subject": case.subject,
            "category": case.category, "prompt_id": case.prompt_id, "entity": case.entity, "prompt": case.prompt,
            "references": list(case.references), "seed": seed,
        }
        for case in (suite.cases if cases is None else cases)
    ]


def export_cases(suite: Suite, path: str | os.PathLike, cases: Sequence[Case] | None = None, seed: int = 0) -> Path:
    """Write the cases to ``path``: ``.jsonl`` (one object per line) or ``.csv`` (references joined by ``;``).

    Written atomically; returns the path. Raises :class:`ValueError` for any other suffix.
    """
    path = Path(path)
    rows = case_rows(suite, cases, seed)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "references": ";".join(row["references"])})
        text = buffer.getvalue()
    else:
        raise ValueError(f"--export {path}: the file must end in .jsonl or .csv")
    atomic_write_text(path, text)
    return path


# ------------------------------------------------------------------------------------------------ import


@dataclass
class ImportResult:
    """What :func:`import_videos` wrote."""

    method_dir: Path
    imported: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def read_mapping(path: str | os.PathLike) -> dict[str, str]:
    """A CSV with the columns ``file`` and ``case_id`` -> ``{file name: case id}`` (file names relative to the
    videos folder). One error names the file and line of a problem."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"file", "case_id"} <= set(reader.fieldnames):
                raise ImportFolderError(f"{path}: the mapping needs the columns 'file' and 'case_id' "
                                        f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
            mapping: dict[str, str] = {}
            for number, row in enumerate(reader, start=2):
                name, case_id = (row.get("file") or "").strip(), (row.get("case_id") or "").strip()
                if not name or not case_id:
                    raise ImportFolderError(f"{path}:{number}: empty 'file' or 'case_id'")
                if name in mapping:
                    raise ImportFolderError(f"{path}:{number}: {name!r} is mapped twice")
                mapping[name] = case_id
    except UnicodeDecodeError as error:
        raise ImportFolderError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ImportFolderError(f"{path}: cannot read the mapping ({error.strerror or error})") from None
    return mapping


def find_videos(folder: Path, cases: Sequence[Case], mapping: Mapping[str, str] | None = None) -> dict[str, Path]:
    """``{case_id: video path}`` for the cases found in ``folder``.

    Without a mapping a video is ``<case_id><suffix>`` (a suffix of :data:`VIDEO_SUFFIXES`); two files for one
    case, or a mapping naming an unknown case or a missing file, is an error.
    """
    known = {case.case_id for case in cases}
    found: dict[str, Path] = {}
    if mapping is not None:
        unknown = sorted(case_id for case_id in mapping.values() if case_id not in known)
        if unknown:
            raise ImportFolderError(f"the mapping names case id(s) not in the suite: {_listing(unknown)}")
        absent = sorted(name for name in mapping if not (folder / name).is_file())
        if absent:
            raise ImportFolderError(f"{folder}: mapped file(s) missing: {_listing(absent)}")
        for name, case_id in mapping.items():
            if case_id in found:
                raise ImportFolderError(f"the mapping gives case {case_id} two files: {found[case_id].name}, {name}")
            found[case_id] = folder / name
        return found
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES or path.stem not in known:
            continue
        if path.stem in found:
            raise ImportFolderError(f"{folder}: two videos for case {path.stem}: {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return found


def _check_label(label: str) -> str:
    try:
        return check_case_id(label)
    except ValueError:
        raise ImportFolderError(f"--method {label!r}: the label names a folder: use a plain name "
                                "(no '/', '\\', leading '.')") from None


def import_videos(folder: str | os.PathLike, suite: Suite, label: str, out: str | os.PathLike, *,
                  mapping: Mapping[str, str] | None = None, cases: Sequence[Case] | None = None,
                  seed: int | None = None, allow_missing: bool = False, overwrite: bool = False,
                  min_frames: int = 2) -> ImportResult:
    """Build ``out/<label>/`` from the videos in ``folder`` (see the module docstring).

    Args:
        folder: the videos, named ``<case_id>.<suffix>`` (or as ``mapping`` says).
        suite: the suite the videos answer; ``cases`` restricts it (default: every case).
        label: the method folder's name and the leaderboard row's name.
        mapping: ``{file name in folder: case id}`` (:func:`read_mapping`).
        seed: the seed the tool used, if it had one (recorded; ``None`` records none).
        allow_missing: record absent cases as failed instead of refusing the import.
        overwrite: replace an existing method folder of the same label.
        min_frames: fewer decodable frames than this is an error (T.Cons and D.D need 2).

    Raises:
        ImportFolderError: naming every offending case and file; nothing is written then.
    """
    folder, out = Path(folder), Path(out)
    label = _check_label(label)
    if not folder.is_dir():
        raise ImportFolderError(f"{folder}: no such folder of videos")
    selected = list(suite.cases if cases is None else cases)
    videos = find_videos(folder, selected, mapping)
    missing = [case.case_id for case in selected if case.case_id not in videos]
    if missing and not allow_missing:
        raise ImportFolderError(f"{folder}: {len(missing)} of {len(selected)} case(s) have no video: "
                                f"{_listing(missing)} (name files <case_id>.mp4, give --mapping, or --allow-missing)")
    if not videos:
        raise ImportFolderError(f"{folder}: no video of suite {suite.name} found")
    fps_values: list[float] = []
    problems = []
    for case_id, path in videos.items():
        try:
            fps_values.append(read_video(path, min_frames=min_frames).fps)
        except VideoError as error:
            problems.append(f"{case_id}: {error}")
    if problems:
        raise ImportFolderError(f"{len(problems)} video(s) cannot be used: " + "; ".join(problems[:_LISTED])
                                + (f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""))
    method_dir = out / label
    if method_dir.exists():
        if not method_dir.is_dir() or (any(method_dir.iterdir()) and not overwrite):
            raise ImportFolderError(f"{method_dir} exists; choose another --method label or --overwrite")
        shutil.rmtree(method_dir)
    (method_dir / VIDEOS_DIR).mkdir(parents=True)
    result = ImportResult(method_dir)
    records = []
    for case in selected:
        record: dict[str, Any] = {
            "case_id": case.case_id, "suite": case.suite, "subject": case.subject, "category": case.category,
            "prompt_id": case.prompt_id, "prompt": case.prompt, "entity": case.entity,
            "references": list(case.references),
        }
        source = videos.get(case.case_id)
        if source is None:
            result.missing.append(case.case_id)
            record.update(video=f"{VIDEOS_DIR}/{case.case_id}.mp4", status="failed",
                          error=f"no video for this case in {folder}")
        else:
            relpath = f"{VIDEOS_DIR}/{case.case_id}{source.suffix.lower()}"
            with atomic_path(method_dir / relpath) as tmp:
                shutil.copyfile(source, tmp)
            record.update(video=relpath, status="ok", source=source.name)
            result.imported.append(case.case_id)
        if seed is not None:
            record["seed"] = seed
        records.append(record)
    write_cases_jsonl(method_dir / CASES_FILE, records)
    now = utc_now()
    write_run_json(method_dir / RUN_FILE, {
        "method": label,
        "description": f"videos imported from {folder}",
        "kind": IMPORTED_KIND,
        "paper_row": None,
        "table2_setting": None,
        "options": {},
        "run_name": label,
        "suite": suite.name,
        "suite_version": suite.version,
        "config": {"imported_from": str(folder.resolve()), "mapping": mapping is not None},
        "seed": seed,
        "fps": sorted(fps_values)[len(fps_values) // 2],
        "random_weights": False,
        "imported": {"from": str(folder.resolve()), "videos": len(result.imported), "missing": len(missing)},
        "packages": package_versions(),
        "started": now,
        "updated": now,
    })
    return result
