"""Where the curation models come from, and the one missing-model message.

Every model is read from a path. A path given on the command line wins; otherwise the model is looked up under its
expected name in the models folder, which is the project's weights folder (``--weights-dir`` /
``$VIDEOBENCH_WEIGHTS``, default ``~/.cache/videobench/weights``), so that the benchmark's and the curation's
models sit together:

===============  =========================================  ===============================================
model            expected file / folder in the models folder  online source (for users with a network)
===============  =========================================  ===============================================
aesthetic head   ``sac+logos+ava1-l14-linearMSE.pth``         github.com/christophschuhmann/improved-aesthetic-predictor
CLIP ViT-L/14    ``clip_vit_l14_openai.safetensors`` (or      open_clip ``ViT-L-14-quickgelu`` / ``openai``
                 ``.bin`` / ``.pt``; an open_clip state dict)
RAFT-large       as in :mod:`videobench.weights` (dynamic)   torchvision ``raft_large`` C_T_V1
Qwen2.5          folder ``Qwen2.5-7B-Instruct/``              huggingface.co/Qwen/Qwen2.5-7B-Instruct
Grounding DINO   folder ``grounding-dino-base/``              huggingface.co/IDEA-Research/grounding-dino-base
SAM              folder ``sam-vit-huge/``                     huggingface.co/facebook/sam-vit-huge
===============  =========================================  ===============================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from videobench.weights import WEIGHTS_ENV, MissingWeightsError, default_weights_dir


@dataclass(frozen=True)
class ModelSpec:
    """One curation model: a human name, its file or folder name in the models folder, its flag and online home."""

    key: str
    model: str
    name: str  # file or folder name expected in the models folder
    flag: str
    online: str
    folder: bool = False  # a transformers folder (config.json + weights) rather than one file
    alternatives: tuple[str, ...] = ()
    random_ok: bool = False  # --random-weights can stand in for it (smoke runs)


AESTHETIC = ModelSpec(
    "aesthetic", "LAION improved aesthetic predictor (MLP head on CLIP ViT-L/14)",
    "sac+logos+ava1-l14-linearMSE.pth", "--aesthetic-weights",
    "https://github.com/christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth)",
    alternatives=("sac+logos+ava1-l14-linearMSE.safetensors",), random_ok=True,
)
CLIP_L14 = ModelSpec(
    "clip", "CLIP ViT-L/14 (OpenAI weights, open_clip ViT-L-14-quickgelu)",
    "clip_vit_l14_openai.safetensors", "--clip-weights",
    "open_clip ViT-L-14-quickgelu/openai (huggingface.co/timm/vit_large_patch14_clip_224.openai)",
    alternatives=("clip_vit_l14_openai.bin", "clip_vit_l14_openai.pt"), random_ok=True,
)
QWEN = ModelSpec(
    "llm", "Qwen2.5-Instruct (entity extraction)", "Qwen2.5-7B-Instruct", "--llm",
    "huggingface.co/Qwen/Qwen2.5-7B-Instruct", folder=True,
)
GROUNDING_DINO = ModelSpec(
    "detector", "Grounding DINO (transformers GroundingDinoForObjectDetection)", "grounding-dino-base", "--detector",
    "huggingface.co/IDEA-Research/grounding-dino-base", folder=True,
)
SAM = ModelSpec(
    "segmenter", "SAM (transformers SamModel)", "sam-vit-huge", "--segmenter",
    "huggingface.co/facebook/sam-vit-huge", folder=True,
)


def models_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir else default_weights_dir()


def _usable(path: Path, spec: ModelSpec) -> bool:
    return (path / "config.json").is_file() if spec.folder else path.is_file()


def resolve_model(spec: ModelSpec, explicit: str | os.PathLike | None, weights_dir: str | os.PathLike | None) -> Path:
    """The file/folder for ``spec``: ``explicit`` when given, else ``<models folder>/<spec.name>``.

    Raises:
        MissingWeightsError: naming the model, the expected file or folder and where to put it.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if _usable(path, spec):
            return path
        note = f"{spec.flag} {path} " + ("has no config.json" if spec.folder and path.is_dir() else "does not exist")
        raise MissingWeightsError(missing_message([(spec, note)], weights_dir))
    folder = models_dir(weights_dir)
    for name in (spec.name, *spec.alternatives):
        if _usable(folder / name, spec):
            return folder / name
    raise MissingWeightsError(missing_message([(spec, "")], weights_dir))


def missing_message(specs: list[tuple[ModelSpec, str]], weights_dir: str | os.PathLike | None) -> str:
    """The project's missing-weights message (the layout of :func:`videobench.weights.check_weights`) for
    ``(spec, note)`` pairs."""
    folder = models_dir(weights_dir)
    lines = [f"missing model weights for {len(specs)} model(s):"]
    for spec, note in specs:
        kind = "folder (config.json + weights + processor files)" if spec.folder else "file"
        names = " or ".join((spec.name, *spec.alternatives))
        lines += [
            f"  - {spec.model} [{spec.key}]" + (f": {note}" if note else ""),
            f"      put the {kind} {names} in {folder} (--weights-dir / ${WEIGHTS_ENV}),",
            f"      or pass {spec.flag} PATH; online: {spec.online}",
        ]
    if all(spec.random_ok for spec, _ in specs):
        lines.append("(or pass --random-weights for a smoke run with random-initialised models; its output is "
                     "meaningless)")
    return "\n".join(lines)


def check_models(wanted: list[tuple[ModelSpec, str | os.PathLike | None]],
                 weights_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Resolve every ``(spec, explicit path)`` before any work; one error lists every missing model.

    Raises:
        MissingWeightsError: naming each missing model, its expected file or folder and where to put it.
    """
    found: dict[str, Path] = {}
    missing: list[tuple[ModelSpec, str]] = []
    for spec, explicit in wanted:
        try:
            found[spec.key] = resolve_model(spec, explicit, weights_dir)
        except MissingWeightsError:
            path = Path(explicit).expanduser() if explicit else None
            note = "" if path is None else f"{spec.flag} {path} " + (
                "has no config.json" if spec.folder and path.is_dir() else "does not exist")
            missing.append((spec, note))
    if missing:
        raise MissingWeightsError(missing_message(missing, weights_dir))
    return found


def merge_missing(errors: list[MissingWeightsError]) -> MissingWeightsError:
    """One missing-weights error from several (the curation's models and videobench's RAFT), so that a single
    message names every missing model."""
    body: list[str] = []
    footers: list[str] = []
    for error in errors:  # each message: a header line, "  - model" entries with indented details, a footer
        lines = str(error).splitlines()[1:]
        body += [line for line in lines if line.startswith(" ")]
        footers += [line for line in lines if not line.startswith(" ")]
    count = sum(line.startswith("  - ") for line in body)
    missing = [r for error in errors for r in getattr(error, "missing", [])]
    footer = footers[:1] if len(footers) == len(errors) else []  # --random-weights helps only if it helps all
    return MissingWeightsError("\n".join([f"missing model weights for {count} model(s):", *body, *footer]), missing)
