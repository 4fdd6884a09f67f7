"""Stage manifests: one parquet file per curation stage, one row per clip, the decision and the reason.

A stage's manifest is what makes the pipeline resumable: a clip that already has a row is not decided again
(unless the stage is forced). Rows are buffered and the whole table is rewritten atomically (write to a temporary
file, rename) every ``flush_every`` decisions and when the stage ends, so an interrupted run loses at most the
last unflushed decisions and never leaves a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mediaio.atomic import atomic_path

KEEP = "keep"
DROP = "drop"

#: Columns every stage manifest has, in this order; stage-specific score columns follow.
BASE_COLUMNS = ("clip_id", "video", "caption", "decision", "reason_code", "reason")


@dataclass(frozen=True)
class Decision:
    """The outcome of one stage for one clip.

    ``reason_code`` is a short machine-readable tag (``low_resolution``, ``static``...), empty for a kept clip;
    ``reason`` is the human-readable sentence with the measured value and the threshold.
    ``values`` are the stage's measurements (scores, sizes, paths) stored as extra columns.
    """

    decision: str
    reason_code: str = ""
    reason: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.decision == KEEP

    @classmethod
    def keep(cls, **values: Any) -> Decision:
        return cls(KEEP, "", "", values)

    @classmethod
    def drop(cls, reason_code: str, reason: str, **values: Any) -> Decision:
        return cls(DROP, reason_code, f"{reason_code}: {reason}", values)


class StageManifest:
    """The parquet manifest of one stage (``OUT/manifests/<stage>.parquet``)."""

    def __init__(self, path: str | os.PathLike, force: bool = False, flush_every: int = 50) -> None:
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self._rows: dict[str, dict[str, Any]] = {}
        self._dirty = 0
        if self.path.is_file() and not force:
            frame = pd.read_parquet(self.path)
            for row in frame.to_dict(orient="records"):
                self._rows[str(row["clip_id"])] = row

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, clip_id: str) -> dict[str, Any] | None:
        return self._rows.get(clip_id)

    def record(self, clip_id: str, video: str, caption: str, decision: Decision) -> dict[str, Any]:
        """Store ``decision`` for ``clip_id`` (replacing an earlier row) and flush every ``flush_every`` rows."""
        row: dict[str, Any] = {
            "clip_id": clip_id,
            "video": video,
            "caption": caption,
            "decision": decision.decision,
            "reason_code": decision.reason_code,
            "reason": decision.reason,
        }
        row.update(decision.values)
        self._rows[clip_id] = row
        self._dirty += 1
        if self._dirty >= self.flush_every:
            self.flush()
        return row

    def kept_ids(self) -> list[str]:
        return [clip_id for clip_id, row in self._rows.items() if row["decision"] == KEEP]

    def frame(self) -> pd.DataFrame:
        """All rows as a DataFrame (base columns first, then the stage's own columns)."""
        return rows_to_frame(self._rows.values())

    def flush(self) -> None:
        """Rewrite the parquet file atomically with every row decided so far."""
        write_parquet(self.frame(), self.path)
        self._dirty = 0


def rows_to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame({column: pd.Series(dtype="object") for column in BASE_COLUMNS})
    extra = [column for column in frame.columns if column not in BASE_COLUMNS]
    return frame[[c for c in BASE_COLUMNS if c in frame.columns] + extra]


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame.to_parquet`` through :func:`mediaio.atomic.atomic_path` (never a half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, engine="pyarrow", index=False)
    return path
