"""The curation's input (videos + captions) and output (the pair dataset the trainer reads).

Input: a folder of videos and a caption table, CSV or JSONL, with one row per video. The columns are ``video`` (the
file name or path relative to the videos folder) and ``caption``: OpenVid-1M's ``OpenVid-1M.csv`` layout, whose
other columns (aesthetic score, motion score, ...) are ignored. Other column names: ``video_column`` /
``caption_column``.

Output (``OUT``)::

    OUT/pairs.parquet                    one row per pair (columns: PAIR_COLUMNS)
    OUT/pairs/<clip_id>/reference.png    the masked (white background), cropped subject from frame 0
    OUT/pairs/<clip_id>/mask.png         its mask (255 = subject), same size
    OUT/pairs/<clip_id>/clip.mp4         the target clip: 25 frames, 480x720, H.264, fps = source fps / 3
    OUT/manifests/{quality,entity,reference}.parquet   every clip's decision per stage
    OUT/build.json                       the configuration and models of the last run

Paths in ``pairs.parquet`` are relative to ``OUT``. :class:`PairDataset` reads it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from customvideox.curation.manifest import write_parquet

PAIRS_FILE = "pairs.parquet"
PAIRS_DIR = "pairs"
#: The columns of ``pairs.parquet``, in order.
PAIR_COLUMNS = ("clip_id", "reference", "mask", "clip", "caption", "entity", "num_frames", "height", "width", "fps",
                "source_video", "box_score", "random_weights")


class CaptionTableError(ValueError):
    """The caption table cannot be used (unreadable, missing columns, duplicate clips)."""


@dataclass(frozen=True)
class ClipSource:
    clip_id: str
    video: str  # as written in the caption table
    path: Path  # the video file
    caption: str


def clip_id_for(video: str) -> str:
    """A file-system-safe id from the table's video entry: path without suffix, ``/`` -> ``__``."""
    stem = str(Path(video).with_suffix("")).replace("\\", "/").strip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")) or "clip"


def load_captions(table: str | os.PathLike, videos_dir: str | os.PathLike, video_column: str = "video",
                  caption_column: str = "caption") -> list[ClipSource]:
    """Read a CSV or JSONL caption table into :class:`ClipSource` rows (videos are not opened here).

    Raises:
        CaptionTableError: naming the file, when it is unreadable, empty, lacks a column or lists a clip twice.
    """
    table = Path(table)
    try:
        if table.suffix.lower() in {".jsonl", ".ndjson"}:
            frame = pd.read_json(table, lines=True, dtype=False)
        elif table.suffix.lower() in {".csv", ".tsv"}:
            frame = pd.read_csv(table, sep="\t" if table.suffix.lower() == ".tsv" else ",", dtype=str,
                                keep_default_na=False)
        elif table.suffix.lower() == ".parquet":
            frame = pd.read_parquet(table)
        else:
            raise CaptionTableError(f"{table}: caption table must be .csv, .tsv, .jsonl or .parquet")
    except CaptionTableError:
        raise
    except (OSError, ValueError) as error:
        raise CaptionTableError(f"{table}: cannot read caption table ({type(error).__name__}: {error})") from error
    missing = [c for c in (video_column, caption_column) if c not in frame.columns]
    if missing:
        raise CaptionTableError(f"{table}: missing column(s) {missing}; found {list(frame.columns)} "
                                "(use --video-column / --caption-column)")
    if frame.empty:
        raise CaptionTableError(f"{table}: caption table has no rows (nothing to curate)")
    sources, seen = [], {}
    for line, (video, caption) in enumerate(zip(frame[video_column], frame[caption_column]), start=2):
        video = str(video).strip()
        if not video:
            raise CaptionTableError(f"{table}: row {line} has an empty {video_column!r}")
        clip_id = clip_id_for(video)
        if clip_id in seen:
            raise CaptionTableError(f"{table}: rows {seen[clip_id]} and {line} both give clip id {clip_id!r}")
        seen[clip_id] = line
        caption = "" if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption)
        sources.append(ClipSource(clip_id, video, Path(videos_dir) / video, caption))
    return sources


def pair_dir(out: str | os.PathLike, clip_id: str) -> Path:
    return Path(out) / PAIRS_DIR / clip_id


def write_pairs(out: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write ``OUT/pairs.parquet`` (atomically) with :data:`PAIR_COLUMNS`."""
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    return write_parquet(frame, Path(out) / PAIRS_FILE)


def read_pairs(out: str | os.PathLike) -> pd.DataFrame:
    """``OUT/pairs.parquet`` as a DataFrame (paths relative to ``OUT``)."""
    path = Path(out) / PAIRS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pair manifest; build one with `customvideox data build`")
    return pd.read_parquet(path)


class PairDataset:
    """The pair dataset: ``dataset[i]`` is a dict with ``clip_id``, ``reference`` (PIL RGB), ``mask`` (PIL L),
    ``frames`` (``(T, H, W, 3)`` uint8), ``caption`` and ``entity``. Use it under a torch ``DataLoader`` with a
    collate function of the trainer's choosing."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.table = read_pairs(self.root)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from mediaio.video import read_video

        row = self.table.iloc[index]
        with Image.open(self.root / row["reference"]) as reference, Image.open(self.root / row["mask"]) as mask:
            reference_rgb, mask_l = reference.convert("RGB"), mask.convert("L")
        return {
            "clip_id": row["clip_id"],
            "reference": reference_rgb,
            "mask": mask_l,
            "frames": read_video(self.root / row["clip"], min_frames=int(row["num_frames"])).frames,
            "caption": row["caption"],
            "entity": row["entity"],
        }
