"""The report's pictures of each case: the reference thumbnail, the intermediate image (two-stage methods) and a
strip of frames from the video ("6 of 9 frames"), inlined as base64 JPEG data URIs so the page needs no other file;
and each video's provenance: one that is not the video its run wrote (its sha256 differs from the one cases.jsonl
recorded, or the record's seed is not run.json's, :func:`videobench.results.provenance_problem`) or that changed
after it was scored is flagged in its row.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from mediaio.hashing import file_sha256
from mediaio.images import ImageError, load_reference_image
from mediaio.video import VideoError, read_video
from videobench import results as layout
from videobench.metrics.registry import column_specs
from videobench.reporting.load import MethodData
from videobench.reporting.tables import number
from videobench.suites import suite_label


def _jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit_height(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BICUBIC)


def strip_indices(n_frames: int, count: int) -> list[int]:
    """The indices of ``count`` evenly spaced frames of ``n_frames`` (first and last included)."""
    return [int(i) for i in np.unique(np.linspace(0, n_frames - 1, num=min(count, n_frames)).round().astype(int))]


def frame_strip(frames: np.ndarray, count: int = 6, height: int = 64) -> Image.Image:
    """``count`` evenly spaced frames (first and last included), each ``height`` px tall, side by side."""
    indices = strip_indices(len(frames), count)
    tiles = [_fit_height(Image.fromarray(frames[i]), height) for i in indices]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    return strip


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
    image_uri: str | None = None  # the intermediate image a two-stage method kept
    strip_caption: str = ""  # how many of the video's frames the strip shows ("6 of 9 frames")
    provenance: str = ""  # why the video is not the one its run wrote (or changed since it was scored)


@dataclass
class MethodCases:
    method: str
    reference: bool
    rows: list[CaseRow] = field(default_factory=list)
    n_failed: int = 0
    omitted: int = 0
    note: str = ""
    #: the section heading: method label (with its results folder where the name is shared) and suite(s)
    title: str = ""
    suite: str = ""
    results_dir: str = ""
    #: cases whose video is not the one the run wrote
    n_provenance: int = 0


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


@dataclass
class _Strip:
    uri: str | None = None
    note: str = ""
    caption: str = ""
    provenance: str = ""


def _strip_for(folder: Path, case: dict[str, Any], scored: dict[str, Any], run_seed: Any, strip_frames: int,
               height: int) -> _Strip:
    """The frame strip of a case's video as a data URI with its caption and provenance check, or why not."""
    if not case.get("video") or case.get("status", "ok") != "ok":
        return _Strip()
    try:
        path = layout.resolve_inside(folder, str(case["video"]))
        frames = read_video(path).frames
        sha = file_sha256(path)
    except (VideoError, ValueError, OSError) as error:
        return _Strip(note=str(error))
    problem = layout.provenance_problem(case, sha, run_seed)
    scored_sha = scored.get("video_sha256")
    if problem is None and isinstance(scored_sha, str) and scored_sha and scored_sha != sha and not scored.get("error"):
        problem = "the video changed after it was scored (its sha256 differs from scores.csv's); score again"
    shown = len(strip_indices(len(frames), strip_frames))
    return _Strip(_jpeg_data_uri(frame_strip(frames, strip_frames, height)), "", f"{shown} of {len(frames)} frames",
                  problem or "")


def _reference_thumbnail(path: Path, height: int, cache: dict[Path, tuple[str | None, str]]) -> tuple[str | None, str]:
    if path not in cache:
        try:
            cache[path] = _jpeg_data_uri(_fit_height(load_reference_image(path), height)), ""
        except ImageError as error:
            cache[path] = None, str(error)
    return cache[path]


def _image_for(folder: Path, case: dict[str, Any], height: int) -> tuple[str | None, str]:
    """The case's intermediate image (``image`` in its record) as a data URI, or (None, why not)."""
    if not isinstance(case.get("image"), str):
        return None, ""
    try:
        image = load_reference_image(layout.resolve_inside(folder, case["image"]))
    except (ImageError, ValueError) as error:
        return None, str(error)
    return _jpeg_data_uri(_fit_height(image, height)), ""


def display_values(record: dict[str, Any], columns: list[str]) -> list[str]:
    """Per-case values as shown: binary columns as yes/no, the others x their scale."""
    specs = column_specs()
    values = []
    for column in columns:
        value = number(record.get(column))
        spec = specs.get(column)
        if value is None:
            values.append("—")
        elif spec is not None and spec.binary:
            values.append("yes" if value >= 0.5 else "no")
        else:
            values.append(f"{(spec.scale if spec else 100.0) * value:.2f}")
    return values


def case_rows(
    data: MethodData, columns: list[str], max_cases: int | None, strip_frames: int, thumb_height: int,
    reference_cache: dict[Path, tuple[str | None, str]], bar: tqdm, workers: int = 4,
) -> MethodCases:
    """Per-case rows of one method; videos are decoded for their frame strips on ``workers`` threads."""
    suite = ", ".join(suite_label(suite) for suite in data.suites) or "unknown suite"
    out = MethodCases(data.method, data.reference, note=data.note, title=f"{data.label or data.method} — {suite}",
                      suite=", ".join(data.suites), results_dir=data.results_dir)
    if data.scores is None:
        return out
    records = data.scores.to_dict("records")
    out.n_failed = sum(1 for r in records if str(r.get("error") or ""))
    if max_cases is not None and len(records) > max_cases:
        out.omitted = len(records) - max_cases
        records = records[:max_cases]
    cases = [data.cases.get(str(record["case_id"]), {}) for record in records]
    strip_height = max(32, thumb_height * 3 // 4)
    run_seed = data.info.get("seed")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PyAV decodes without the GIL
        strips = pool.map(lambda pair: _strip_for(data.folder, pair[1], pair[0], run_seed, strip_frames, strip_height),
                          zip(records, cases))
        for record, case, strip in zip(records, cases, strips):
            strip_uri, strip_note = strip.uri, strip.note
            error = str(record.get("error") or "")
            reference_uri, reference_note = None, ""
            ref_path = _reference_path(data.folder, case) if case else None
            if ref_path is not None:
                reference_uri, reference_note = _reference_thumbnail(ref_path, thumb_height, reference_cache)
            image_uri, image_note = _image_for(data.folder, case, thumb_height)
            notes = [note for note in (reference_note, image_note, strip_note) if note and note not in error]
            out.rows.append(CaseRow(
                case_id=str(record["case_id"]), subject=str(record.get("subject") or case.get("subject") or ""),
                prompt=str(case.get("prompt", "")), reference_uri=reference_uri, strip_uri=strip_uri,
                values=display_values(record, columns), error=error, media_note="; ".join(notes),
                image_uri=image_uri, strip_caption=strip.caption, provenance=strip.provenance,
            ))
            out.n_provenance += bool(strip.provenance)
            bar.update(1)
    return out
