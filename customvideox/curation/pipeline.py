"""``customvideox data build``: the three curation stages of Appendix A, resumable, and the pair dataset.

The stages run one after the other over the whole table (so each stage's models can be loaded only while it
runs)::

    captions ──> quality (stage 1) ──> entity (stage 2) ──> reference (stage 3) ──> pairs.parquet
                 manifests/quality     manifests/entity     manifests/reference

Each stage writes ``OUT/manifests/<stage>.parquet``: one row per clip it saw, ``decision`` (``keep`` / ``drop`` /
``error``), ``reason_code``, ``reason`` and the stage's measurements. A clip enters a stage only when the previous
stage kept it. A re-run skips every clip already decided (keep or drop) in a stage's manifest, so an interrupted
build continues where it stopped; ``force`` re-decides a stage from scratch. ``error`` rows (an exception while
deciding, e.g. a model failure) are retried by the next run and make the command exit non-zero. A stage's models
are only built when the stage has undecided clips (a finished build re-runs without loading any model).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from customvideox.curation.entity import EntityStage
from customvideox.curation.manifest import DROP, KEEP, Decision, StageManifest
from customvideox.curation.pairs import ClipSource, pair_dir, write_pairs
from customvideox.curation.quality import QualityFilter
from customvideox.curation.reference import CLIP_FILE, MASK_FILE, REFERENCE_FILE, ReferenceExtractor
from mediaio.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STAGES = ("quality", "entity", "reference")
ERROR = "error"
MANIFESTS_DIR = "manifests"

T = TypeVar("T")
#: A stage object, or a zero-argument factory that builds it when the stage has work.
Lazy = T | Callable[[], T]


def manifest_path(out: str | os.PathLike, stage: str) -> Path:
    return Path(out) / MANIFESTS_DIR / f"{stage}.parquet"


@dataclass
class StageSummary:
    stage: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason_code -> clips
    errors: int = 0
    decided_now: int = 0  # clips this run decided (the rest came from the manifest)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "kept": self.kept, "dropped": dict(self.dropped), "errors": self.errors,
                "decided_now": self.decided_now, "seconds": round(self.seconds, 3)}


@dataclass
class BuildSummary:
    stages: list[StageSummary]
    pairs: int
    out: Path

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {"stages": [s.as_dict() for s in self.stages], "pairs": self.pairs, "out": str(self.out)}


def _resolve(obj: Lazy[T]) -> T:
    return obj() if callable(obj) and not hasattr(obj, "assess") else obj  # type: ignore[return-value]


def run_stage(stage: str, out: Path, sources: Iterable[ClipSource], decide: Callable[[Any, ClipSource], Decision],
              worker: Lazy[Any], *, force: bool = False, flush_every: int = 50,
              progress: bool = True) -> tuple[StageManifest, StageSummary]:
    """Decide every undecided clip of ``sources`` with ``decide(worker, clip)`` and record it in the manifest.

    An exception while deciding one clip is recorded as an ``error`` row (naming the file and the exception) and
    the other clips still run.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    manifest = StageManifest(manifest_path(out, stage), force=force, flush_every=flush_every)
    sources = list(sources)
    todo = [s for s in sources if (row := manifest.get(s.clip_id)) is None or row["decision"] == ERROR]
    summary = StageSummary(stage, decided_now=len(todo))
    built = _resolve(worker) if todo else None
    random_weights = bool(getattr(built, "random_weights", False))
    try:
        for source in tqdm(todo, desc=f"stage {stage}", unit="clip", disable=not progress):
            try:
                decision = decide(built, source)
            except Exception as error:  # one clip's failure must not stop the others
                logger.exception("%s: stage %s failed on %s", source.clip_id, stage, source.path)
                decision = Decision(ERROR, "exception", f"{source.path}: {type(error).__name__}: {error}")
            values = dict(decision.values, random_weights=random_weights)
            manifest.record(source.clip_id, source.video, source.caption,
                            Decision(decision.decision, decision.reason_code, decision.reason, values))
    finally:
        manifest.flush()
    for source in sources:
        row = manifest.get(source.clip_id)
        if row is None:
            continue
        if row["decision"] == KEEP:
            summary.kept += 1
        elif row["decision"] == DROP:
            summary.dropped[row["reason_code"]] += 1
        else:
            summary.errors += 1
    summary.seconds = time.perf_counter() - started
    return manifest, summary


def _decide_quality(worker: QualityFilter, source: ClipSource) -> Decision:
    return worker.assess(source.path)


def _decide_entity(worker: EntityStage, source: ClipSource) -> Decision:
    return worker.assess(source.caption)


def _config_dict(worker: Any) -> Any:
    """A stage's thresholds (and its clip window) for ``build.json``."""
    config: Any = getattr(worker, "config", None)
    config = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    window = getattr(worker, "window", None)
    if isinstance(config, dict) and is_dataclass(window) and not isinstance(window, type):
        config = dict(config, window=asdict(window))
    return config


def build_pairs(sources: list[ClipSource], out: str | os.PathLike, *, quality: Lazy[QualityFilter],
                entity: Lazy[EntityStage], reference: Lazy[ReferenceExtractor], force: Iterable[str] = (),
                stages: Iterable[str] = STAGES, flush_every: int = 50, progress: bool = True,
                run_info: dict[str, Any] | None = None) -> BuildSummary:
    """Run the stages over ``sources`` into ``out`` and write ``out/pairs.parquet`` (see :mod:`.pairs`).

    ``quality``, ``entity``, ``reference`` are the stage objects or factories building them; ``force`` names
    stages to re-decide from scratch (``"all"`` for every stage); ``stages`` limits the run (a stage that is not
    run keeps its manifest and stops the clips from flowing further).
    """
    out = Path(out)
    force = set(STAGES) if "all" in set(force) else set(force)
    unknown = (force | set(stages)) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; expected {list(STAGES)} or 'all'")
    stages = [s for s in STAGES if s in set(stages)]
    summaries: list[StageSummary] = []
    by_id = {s.clip_id: s for s in sources}
    current = list(sources)
    entities: dict[str, str] = {}
    workers: dict[str, Any] = {}

    def keep_workers(name: str, worker: Lazy[Any]) -> Lazy[Any]:
        def build() -> Any:
            workers[name] = _resolve(worker)
            return workers[name]
        return build

    for stage in STAGES:
        if stage not in stages:
            manifest = StageManifest(manifest_path(out, stage))  # read-only view of an earlier run
            ids = {s.clip_id for s in current}
            current = [by_id[c] for c in manifest.kept_ids() if c in ids]
        elif stage == "quality":
            manifest, summary = run_stage(stage, out, current, _decide_quality, keep_workers(stage, quality),
                                          force=stage in force, flush_every=flush_every, progress=progress)
            summaries.append(summary)
        elif stage == "entity":
            manifest, summary = run_stage(stage, out, current, _decide_entity, keep_workers(stage, entity),
                                          force=stage in force, flush_every=flush_every, progress=progress)
            summaries.append(summary)
        else:
            def decide_reference(worker: ReferenceExtractor, source: ClipSource, entities=entities) -> Decision:
                return worker.assess(source.path, entities[source.clip_id], pair_dir(out, source.clip_id))

            manifest, summary = run_stage(stage, out, current, decide_reference, keep_workers(stage, reference),
                                          force=stage in force, flush_every=flush_every, progress=progress)
            summaries.append(summary)
        kept = set(manifest.kept_ids())
        current = [s for s in current if s.clip_id in kept]
        if stage == "entity":
            entities = {c: str(manifest.get(c)["entity"]) for c in kept}  # type: ignore[index]

    rows = _pair_rows(out, current, entities) if "reference" in stages or _has_manifest(out, "reference") else []
    if len(rows) or "reference" in stages:
        write_pairs(out, rows)
    # a stage that built no model this run (nothing left to decide) keeps what the run that decided it recorded
    previous = _read_build_info(out)
    info = dict(run_info or {})
    info.update(summary=[s.as_dict() for s in summaries], pairs=len(rows),
                configs={**previous.get("configs", {}), **{name: _config_dict(w) for name, w in workers.items()}},
                random_weights={**previous.get("random_weights", {}),
                                **{name: bool(getattr(w, "random_weights", False)) for name, w in workers.items()}})
    atomic_write_json(out / "build.json", info)
    return BuildSummary(summaries, len(rows), out)


def _read_build_info(out: Path) -> dict[str, Any]:
    """The previous run's ``build.json`` (empty when there is none or it is unreadable)."""
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _has_manifest(out: Path, stage: str) -> bool:
    return manifest_path(out, stage).is_file()


def _pair_rows(out: Path, kept: list[ClipSource], entities: dict[str, str]) -> list[dict[str, Any]]:
    """``pairs.parquet`` rows for clips kept by all three stages (paths relative to ``out``)."""
    reference = StageManifest(manifest_path(out, "reference"))
    quality = StageManifest(manifest_path(out, "quality"))
    entity_manifest = StageManifest(manifest_path(out, "entity"))
    rows = []
    for source in kept:
        ref, q, ent = reference.get(source.clip_id), quality.get(source.clip_id), entity_manifest.get(source.clip_id)
        if not ref or ref["decision"] != KEEP:
            continue
        folder = Path("pairs") / source.clip_id
        rows.append({
            "clip_id": source.clip_id,
            "reference": str(folder / REFERENCE_FILE),
            "mask": str(folder / MASK_FILE),
            "clip": str(folder / CLIP_FILE),
            "caption": source.caption,
            "entity": entities.get(source.clip_id) or (ent or {}).get("entity", ""),
            "num_frames": int(ref["clip_frames"]),
            "height": int(ref["clip_height"]),
            "width": int(ref["clip_width"]),
            "fps": float(ref["clip_fps"]),
            "source_video": source.video,
            "box_score": float(ref["box_score"]),
            "random_weights": bool(ref.get("random_weights") or (q or {}).get("random_weights")
                                   or (ent or {}).get("random_weights")),
        })
    return rows
