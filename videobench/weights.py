"""Where every pretrained file comes from, and loading it safely.

Each metric family needs one model file. It resolves, in this order, from:

1. an explicit file (``--clip-weights``, ``--dino-weights``, ``--raft-weights``);
2. the weights folder (``--weights-dir`` / ``VIDEOBENCH_WEIGHTS``, default ``~/.cache/videobench/weights``),
   holding a file with one of the expected names below;
3. the Hugging Face cache (``hf_hub_download(..., local_files_only=True)``) and the torch hub cache
   (``torch.hub.get_dir()/checkpoints``), i.e. files that open_clip / timm / torchvision downloaded before;
4. the hubs themselves, only when downloading is enabled (``WeightsConfig(download=True)`` or
   ``VIDEOBENCH_DOWNLOAD=1``), for online users.

Expected file names in the weights folder (the first is preferred; all formats load as they are):

=========  ====================================  ==========================================================
family     model                                 file names
=========  ====================================  ==========================================================
clip       open_clip ``ViT-B-32-quickgelu``      ``clip_vit_b32_openai.safetensors`` | ``.bin`` | ``.pt``
           (OpenAI weights)                      (an open_clip or OpenAI *state dict*; open_clip's hub files
                                                 ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``
                                                 renamed; not OpenAI's TorchScript archive)
dino       DINO ViT-S/16                         ``dino_deitsmall16_pretrain.pth`` (the original release) |
                                                 ``dino_vits16.safetensors`` (timm ``vit_small_patch16_224.dino``)
dynamic    RAFT-large (raft-things)              ``raft_large_C_T_V1-22a6c225.pth`` (torchvision) |
                                                 ``raft-things.pth`` (the original release, keys converted) |
                                                 ``raft_large.safetensors``
=========  ====================================  ==========================================================

Another ``clip_model`` uses ``clip_<model>_<pretrained>.safetensors`` (lower case, ``-`` as ``_``).

Loading goes through :func:`load_state_dict` only: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mediaio.hashing import file_sha256

#: The environment variable naming the weights folder.
WEIGHTS_ENV = "VIDEOBENCH_WEIGHTS"
#: Set to 1 to let missing weights be downloaded from the hubs.
DOWNLOAD_ENV = "VIDEOBENCH_DOWNLOAD"

DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"

#: The command-line flag that names each family's explicit file.
FAMILY_FLAGS = {"clip": "--clip-weights", "dino": "--dino-weights", "dynamic": "--raft-weights"}

_KNOWN_CLIP_STEMS = {
    ("ViT-B-32-quickgelu", "openai"): "clip_vit_b32_openai",
    ("ViT-B-32", "openai"): "clip_vit_b32_openai",
}
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
_RAFT_URL = "https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth"


class MissingWeightsError(FileNotFoundError):
    """One or more model files cannot be found; the message lists each with where it goes."""

    def __init__(self, message: str, missing: Sequence[ResolvedWeights] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class WeightsLoadError(ValueError):
    """A weight file exists but cannot be read as a state dict of the expected model."""


def default_weights_dir() -> Path:
    """``$VIDEOBENCH_WEIGHTS``, else ``$XDG_CACHE_HOME/videobench/weights`` (``~/.cache/...``)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "videobench" / "weights"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsConfig:
    """Where the metric models come from (the ``--*-weights``, ``--weights-dir``, ``--clip-model`` options)."""

    clip_weights: str | os.PathLike | None = None
    dino_weights: str | os.PathLike | None = None
    raft_weights: str | os.PathLike | None = None
    weights_dir: str | os.PathLike | None = None
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str = DEFAULT_CLIP_PRETRAINED
    download: bool = field(default_factory=lambda: _env_flag(DOWNLOAD_ENV))

    @property
    def resolved_weights_dir(self) -> Path:
        return Path(self.weights_dir).expanduser() if self.weights_dir else default_weights_dir()

    def explicit(self, family: str) -> Path | None:
        value = {"clip": self.clip_weights, "dino": self.dino_weights, "dynamic": self.raft_weights}[family]
        return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class WeightSpec:
    """What one family's model file is called and where the hubs keep it."""

    family: str
    model: str  # human-readable model name
    file_names: tuple[str, ...]  # accepted names in the weights folder, preferred first
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()
    url: str | None = None  # a direct download, cached in torch hub's checkpoints folder
    url_hash_prefix: str | None = None

    @property
    def flag(self) -> str:
        return FAMILY_FLAGS[self.family]


@dataclass(frozen=True)
class ResolvedWeights:
    """The outcome of resolving one family: a file and where it was found, or ``source == "missing"``."""

    spec: WeightSpec
    path: Path | None
    source: str  # explicit | weights_dir | hf_cache | torch_hub_cache | downloaded | missing
    note: str = ""

    @property
    def found(self) -> bool:
        return self.path is not None

    def sha256(self) -> str | None:
        return file_sha256(self.path) if self.path is not None else None


def clip_file_stem(model: str, pretrained: str) -> str:
    """The weights-folder file stem for an open_clip model + pretrained tag."""
    known = _KNOWN_CLIP_STEMS.get((model, pretrained))
    if known:
        return known
    return "clip_" + re.sub(r"[^a-z0-9]+", "_", f"{model}_{pretrained}".lower()).strip("_")


def _clip_hf_repo(model: str, pretrained: str) -> str | None:
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    except Exception:  # unknown model names have no hub entry
        return None
    hub = cfg.get("hf_hub") or ""
    repo = hub.rstrip("/")
    if not repo:
        return None
    # "org/name/" is a repo with open_clip's default file names; "org/name/file" names one file.
    return repo if hub.endswith("/") or repo.count("/") == 1 else os.path.dirname(repo)


def weight_spec(family: str, config: WeightsConfig) -> WeightSpec:
    """The :class:`WeightSpec` for ``family`` (``clip``, ``dino`` or ``dynamic``)."""
    if family == "clip":
        stem = clip_file_stem(config.clip_model, config.clip_pretrained)
        return WeightSpec(
            family="clip",
            model=f"CLIP {config.clip_model} ({config.clip_pretrained}), open_clip",
            file_names=(f"{stem}.safetensors", f"{stem}.bin", f"{stem}.pt"),
            hf_repo=_clip_hf_repo(config.clip_model, config.clip_pretrained),
            hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        )
    if family == "dino":
        return WeightSpec(
            family="dino",
            model="DINO ViT-S/16 (timm vit_small_patch16_224)",
            file_names=("dino_deitsmall16_pretrain.pth", "dino_vits16.safetensors"),
            hf_repo="timm/vit_small_patch16_224.dino",
            hf_files=("model.safetensors", "pytorch_model.bin"),
            url=_DINO_URL,
        )
    if family == "dynamic":
        return WeightSpec(
            family="dynamic",
            model="RAFT-large raft-things (torchvision raft_large C_T_V1)",
            file_names=("raft_large_C_T_V1-22a6c225.pth", "raft-things.pth", "raft_large.safetensors"),
            url=_RAFT_URL,
            url_hash_prefix="22a6c225",
        )
    raise ValueError(f"unknown metric family {family!r}; expected one of {sorted(FAMILY_FLAGS)}")


def _hf_cached(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # not in the cache (or huggingface_hub unavailable)
        return None


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(spec: WeightSpec) -> tuple[Path | None, str]:
    """Fetch ``spec`` from its hub into the standard caches; ``(None, reason)`` when that fails."""
    errors = []
    if spec.hf_repo:
        from huggingface_hub import hf_hub_download

        for filename in spec.hf_files:
            try:
                return Path(hf_hub_download(spec.hf_repo, filename)), ""
            except Exception as error:  # try the next file name / source
                errors.append(f"{spec.hf_repo}/{filename}: {type(error).__name__}")
    if spec.url:
        target = _torch_hub_file(spec.url)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=spec.url_hash_prefix)
            return target, ""
        except Exception as error:
            errors.append(f"{spec.url}: {type(error).__name__}: {error}")
    return None, "; ".join(errors)


def resolve_weights(family: str, config: WeightsConfig) -> ResolvedWeights:
    """Find ``family``'s weight file (see the module docstring for the order); never raises for a missing file."""
    spec = weight_spec(family, config)
    explicit = config.explicit(family)
    if explicit is not None:
        if explicit.is_file():
            return ResolvedWeights(spec, explicit, "explicit")
        return ResolvedWeights(spec, None, "missing", note=f"{spec.flag} {explicit} does not exist")
    folder = config.resolved_weights_dir
    for name in spec.file_names:
        if (folder / name).is_file():
            return ResolvedWeights(spec, folder / name, "weights_dir")
    if spec.hf_repo:
        for filename in spec.hf_files:
            cached = _hf_cached(spec.hf_repo, filename)
            if cached is not None:
                return ResolvedWeights(spec, cached, "hf_cache")
    if spec.url and _torch_hub_file(spec.url).is_file():
        return ResolvedWeights(spec, _torch_hub_file(spec.url), "torch_hub_cache")
    if config.download:
        path, reason = _download(spec)
        if path is not None:
            return ResolvedWeights(spec, path, "downloaded")
        return ResolvedWeights(spec, None, "missing", note=f"download failed: {reason}")
    return ResolvedWeights(spec, None, "missing")


def _where_to_put(resolved: ResolvedWeights, config: WeightsConfig) -> str:
    spec = resolved.spec
    names = " or ".join(spec.file_names)
    lines = [
        f"  - {spec.model} [{spec.family}]" + (f": {resolved.note}" if resolved.note else ""),
        f"      put {names} in {config.resolved_weights_dir} (--weights-dir / ${WEIGHTS_ENV}),",
        f"      or pass {spec.flag} FILE",
    ]
    online = []
    if spec.hf_repo:
        online.append(f"huggingface.co/{spec.hf_repo}")
    if spec.url:
        online.append(spec.url)
    if online:
        lines[-1] += f"; online: {' or '.join(online)} (--download / {DOWNLOAD_ENV}=1 fetches it)"
    return "\n".join(lines)


def check_weights(families: Iterable[str], config: WeightsConfig) -> None:
    """Fail before any work when a needed model file is missing.

    Raises:
        MissingWeightsError: listing EVERY missing model, its expected file names and where to put them.
    """
    missing = [r for r in (resolve_weights(f, config) for f in dict.fromkeys(families)) if not r.found]
    if missing:
        body = "\n".join(_where_to_put(r, config) for r in missing)
        raise MissingWeightsError(
            f"missing model weights for {len(missing)} model(s):\n{body}\n"
            "(or pass --random-weights for a smoke run with random-initialised models; its scores are meaningless)",
            missing,
        )


def weights_table(config: WeightsConfig, families: Sequence[str] = ("clip", "dino", "dynamic")) -> list[dict[str, Any]]:
    """One row per model for ``videobench weights``: model, family, file, found (where), path, sha256."""
    rows = []
    for family in families:
        resolved = resolve_weights(family, config)
        rows.append(
            {
                "model": resolved.spec.model,
                "family": family,
                "file": resolved.path.name if resolved.path else " | ".join(resolved.spec.file_names),
                "found": resolved.source,
                "path": str(resolved.path) if resolved.path else str(config.resolved_weights_dir),
                "sha256": resolved.sha256() or "",
            }
        )
    return rows


def describe_load_error(error: BaseException, limit: int = 300) -> str:
    """One short line for a failed weights load (torch's messages run to many lines and, for pickles,
    suggest ``weights_only=False``, which this project never does)."""
    if isinstance(error, pickle.UnpicklingError):
        return (f"{type(error).__name__}: not a safetensors file nor a tensors-only torch checkpoint "
                "(torch.load(weights_only=True) refused it)")
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with safetensors or ``torch.load(weights_only=True)`` (nothing else).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and keeps tensor entries only.

    Raises:
        WeightsLoadError: naming the file, when it is not a readable state dict.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsLoadError(
            f"{path}: cannot read weights with safetensors / torch.load(weights_only=True) "
            f"({describe_load_error(error)})"
        ) from error
    for key in ("state_dict", "model", "teacher"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        raise WeightsLoadError(f"{path}: expected a state dict, found {type(checkpoint).__name__}")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsLoadError(f"{path}: the file holds no tensors")
    return tensors


def strip_prefixes(state_dict: dict[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.`` from DataParallel, ``backbone.`` from DINO) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_into(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike, assign: bool = False
) -> None:
    """``model.load_state_dict(strict=True)``, re-raised as :class:`WeightsLoadError` naming ``path``."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise WeightsLoadError(
            f"{path}: does not fit {type(model).__name__}: {len(missing)} missing key(s)"
            + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f", {len(unexpected)} unexpected key(s)" + (f" (e.g. {', '.join(unexpected[:3])})" if unexpected else "")
        )
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as error:  # shape mismatches
        raise WeightsLoadError(f"{path}: does not fit {type(model).__name__}: {describe_load_error(error)}") from error


def build_loaded(
    factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], path: str | os.PathLike
) -> torch.nn.Module:
    """Build ``factory()`` on the meta device (no random initialisation) and assign ``state_dict`` strictly."""
    with torch.device("meta"):
        model = factory()
    load_into(model, state_dict, path, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise WeightsLoadError(f"{path}: no values for {left[:5]}")
    return model
