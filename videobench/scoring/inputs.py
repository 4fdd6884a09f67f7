"""Scoring, step 1 (collect): what a method folder holds, and each case's inputs.

From a method folder this module reads run.json (suite, kind), cases.jsonl (one record per case, the later of two
lines with the same case id winning), the previous scores.csv, and reports stray entries. For one case it
resolves and hashes the video and the reference images (:class:`CaseInputs`: the cache keys), and decodes them
into a :class:`~videobench.metrics.base.MetricInput` when a metric has to run.

Every problem with one case is a :class:`CaseError` whose message names the case and the file, a video that is not
the one its run wrote included (:func:`videobench.results.provenance_problem`: the sha256 and seed that
``videobench generate`` recorded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from mediaio.hashing import file_sha256, json_sha256
from mediaio.images import ImageError, load_reference_image
from mediaio.video import Video, VideoError, read_video
from videobench import results as layout
from videobench.metrics.base import MetricInput

#: A video needs at least this many frames (T.Cons and D.D compare consecutive frames).
MIN_FRAMES = 2
#: And a short side of at least this many pixels (RAFT's padding rule; CLIP/DINO crop 224).
MIN_SIZE = 128
#: Entries of a method folder that belong to the layout.
METHOD_OWN_ENTRIES = {layout.RUN_FILE, layout.CASES_FILE, layout.SCORES_FILE, layout.METRIC_SETTINGS_FILE,
                      layout.VIDEOS_DIR, layout.IMAGES_DIR}
#: Entries of RESULTS that are ours, not stray (the report's default output and a pre-0.2 score cache included).
RESULTS_OWN_ENTRIES = {layout.LEADERBOARD_FILE, "leaderboard.html", ".score_cache"}

Log = Callable[[str], None]


class CaseError(Exception):
    """A case that cannot be scored; the message names the case and the file."""


# ------------------------------------------------------------------------------------------ the method folder


def read_run_info(method_dir: Path, warnings: list[str], log: Log) -> dict[str, Any]:
    """run.json, or ``{}`` with a warning when it is missing or unreadable (the suite then comes from the cases)."""
    path = method_dir / layout.RUN_FILE
    if not path.is_file():
        message = f"{method_dir.name}: {path} is missing; suite taken from cases.jsonl"
    else:
        try:
            return layout.read_run_json(path)
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


def is_reference_run(info: dict[str, Any] | None) -> bool:
    """True for a weight-free calibration run (run.json ``kind: reference``), shown as a reference row."""
    return str((info or {}).get("kind", "")) == "reference"


def read_case_lines(method_dir: Path) -> tuple[Path, list[layout.CaseLine], dict[str, int]]:
    """``(cases.jsonl path, its lines, case id -> the line number that wins)``; the later duplicate wins."""
    cases_path = method_dir / layout.CASES_FILE
    try:
        lines = layout.read_cases_jsonl(cases_path)
    except OSError as error:
        lines = [layout.CaseLine(0, None, f"{cases_path}: unreadable ({error})")]
    last_line: dict[str, int] = {}
    for line in lines:
        if line.record is not None and line.error is None:
            last_line[str(line.record["case_id"])] = line.line_number
    return cases_path, lines, last_line


def case_id_of(line: layout.CaseLine) -> str:
    return str((line.record or {}).get("case_id") or f"line-{line.line_number}")


def previous_scores(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an existing scores.csv by case id (``{}`` when there is none or it is unreadable)."""
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


def stray_in_method(method_dir: Path, listed_videos: set[Path], listed_files: set[Path] | frozenset[Path] = frozenset()) -> list[str]:
    """Entries of a method folder that no case uses (reference images kept beside the videos are used)."""
    stray = []
    for entry in sorted(method_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        resolved = entry.resolve()
        if any(ref == resolved or resolved in ref.parents for ref in listed_files):
            continue
        if entry.name not in METHOD_OWN_ENTRIES:
            stray.append(f"{entry}: stray {'folder' if entry.is_dir() else 'file'} in method folder, ignored")
    videos = method_dir / layout.VIDEOS_DIR
    if videos.is_dir():
        for entry in sorted(videos.iterdir()):
            if not entry.name.startswith(".") and entry.resolve() not in listed_videos:
                stray.append(f"{entry}: not listed in {layout.CASES_FILE}, ignored")
    return stray


def stray_in_results(results_dir: Path, methods: list[Path]) -> tuple[list[str], list[str]]:
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


def check_not_method_folder(results_dir: Path) -> None:
    """Refuse a method folder given as RESULTS, or a RESULTS folder without any method folder: either would get a
    header-only leaderboard.csv written into it. Nothing is written; the caller exits with "nothing could run"."""
    if (results_dir / layout.CASES_FILE).is_file():
        raise ValueError(f"{results_dir} is a method folder (it holds {layout.CASES_FILE}); score the RESULTS "
                         f"folder above it: videobench score {results_dir.parent}")
    if results_dir.is_dir() and not layout.method_dirs(results_dir):
        raise ValueError(f"{results_dir}: no method folder (a folder holding {layout.CASES_FILE}) to score")


# ------------------------------------------------------------------------------------------------ one case


def reference_paths(method_dir: Path, record: dict[str, Any], where: str) -> list[Path]:
    """The case's reference images; relative paths resolve against the method folder, then the working folder."""
    references = record.get("references")
    if isinstance(references, str):
        references = [references]
    if not isinstance(references, list) or not references:
        raise CaseError(f"{where}: no reference images listed")
    paths = []
    for reference in references:
        path = Path(str(reference)).expanduser()
        if not path.is_absolute():
            beside = method_dir / path
            path = beside if beside.exists() or not path.exists() else path.resolve()
        paths.append(path)
    return paths


def listed_files(method_dir: Path, record: dict[str, Any]) -> tuple[set[Path], set[Path]]:
    """``(videos, other files)`` a record names inside the method folder (for the stray-entry check)."""
    videos, others = set(), set()
    if isinstance(record.get("video"), str):
        videos.add((method_dir / record["video"]).resolve())
    references = record.get("references")
    references = [references] if isinstance(references, str) else references
    for reference in references if isinstance(references, list) else []:
        if isinstance(reference, str) and not Path(reference).expanduser().is_absolute():
            others.add((method_dir / reference).resolve())
    return videos, others


def reference_sha256(path: Path, where: str) -> str:
    """The reference's sha256 (memoised); a missing, unreadable or non-regular file is one CaseError."""
    try:
        path.stat()
    except OSError:
        raise CaseError(f"{where}: reference image {path} is missing") from None
    if not path.is_file():
        raise CaseError(f"{where}: reference image {path} is not a regular file (a folder, FIFO or device)")
    try:
        return file_sha256(path)
    except OSError as error:
        raise CaseError(f"{where}: reference image {path} is unreadable ({error})") from None


@dataclass
class CaseInputs:
    """Everything the metrics of one case see, by hash: the cache's keys."""

    where: str
    video_path: Path
    video_sha256: str
    inputs_sha256: str
    prompt: str
    entity: str
    references: list[Path] = field(default_factory=list)
    #: Each input by name (``prompt``, ``entity``, ``references``: the reference images' sha256s), for the cache
    #: key of a metric that reads only some of them (:func:`inputs_key`).
    parts: dict[str, Any] = field(default_factory=dict)

    def inputs_key(self, names: Sequence[str] | None) -> str:
        """The hash of the inputs ``names`` (``None``: all of them, :attr:`inputs_sha256`)."""
        if names is None or set(names) >= set(self.parts):
            return self.inputs_sha256
        unknown = set(names) - set(self.parts)
        if unknown:
            raise ValueError(f"unknown metric inputs {sorted(unknown)}; known: {sorted(self.parts)}")
        return json_sha256({"only": sorted(names), **{name: self.parts[name] for name in sorted(names)}})


@lru_cache(maxsize=64)
def _run_seed_of(path: str, mtime_ns: int, size: int) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    return info.get("seed") if isinstance(info, dict) else None


def run_seed(method_dir: Path) -> Any:
    """run.json's base seed (read once per file version), or None when there is no readable run.json."""
    path = method_dir / layout.RUN_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    return _run_seed_of(str(path), stat.st_mtime_ns, stat.st_size)


def collect_case(method_dir: Path, record: dict[str, Any], where: str) -> CaseInputs:
    """Check the record, resolve and hash its video and references. Raises :class:`CaseError`.

    A video whose bytes are not those the run recorded, or a record whose seed is not the run's, is refused
    (:func:`videobench.results.provenance_problem`).
    """
    status = record.get("status", "ok")
    if status != "ok":
        detail = record.get("error") or "no error message recorded"
        what = "not generated yet" if status == "pending" else "generation failed"
        raise CaseError(f"{where}: {what} ({detail}); see {method_dir / layout.CASES_FILE}")
    if not isinstance(record.get("video"), str) or not record["video"].strip():
        raise CaseError(f"{where}: no video path (video: {record.get('video')!r}) in "
                        f"{method_dir / layout.CASES_FILE}")
    try:
        video_path = layout.resolve_inside(method_dir, str(record["video"]))
    except ValueError as error:
        raise CaseError(f"{where}: video path refused: {error}") from None
    if not video_path.is_file():
        raise CaseError(f"{where}: {video_path}: video file is missing")
    try:
        video_sha = file_sha256(video_path)
    except OSError as error:
        raise CaseError(f"{where}: {video_path}: unreadable ({error})") from None
    problem = layout.provenance_problem(record, video_sha, run_seed(method_dir))
    if problem is not None:
        raise CaseError(f"{where}: {video_path}: {problem}; generate it again (videobench generate resumes it)")
    references = reference_paths(method_dir, record, where)
    prompt, entity = str(record.get("prompt", "")), str(record.get("entity", ""))
    inputs = {"prompt": prompt, "entity": entity,
              "references": [reference_sha256(path, where) for path in references]}
    return CaseInputs(where, video_path, video_sha, json_sha256(inputs), prompt, entity, references, inputs)


def decode_video(inputs: CaseInputs) -> Video:
    try:
        return read_video(inputs.video_path, min_frames=MIN_FRAMES, min_size=MIN_SIZE)
    except VideoError as error:
        raise CaseError(f"{inputs.where}: {error}") from None


def video_info(video: Video) -> dict[str, Any]:
    """The diagnostics columns of a decoded video."""
    return {"num_frames": video.num_frames, "fps": video.fps, "height": video.size[0], "width": video.size[1]}


def metric_input(inputs: CaseInputs, video: Video) -> MetricInput:
    """The decoded frames and reference images of a case, as the metrics take them."""
    references = []
    for path in inputs.references:
        try:
            references.append(load_reference_image(path))
        except ImageError as error:
            raise CaseError(f"{inputs.where}: {error}") from None
    return MetricInput(frames=video.frames, fps=video.fps, references=references, prompt=inputs.prompt,
                       entity=inputs.entity)
