"""Where every pretrained file comes from, and loading it safely.

Every plugin (a metric family, a method) says what it needs as :class:`WeightSpec` objects: one file (a
checkpoint) or one folder (a diffusers / transformers model folder). Each resolves, in this order, from:

1. an explicit path given by the user (the spec's ``explicit``: ``-M dino.weights=FILE``, ``-o model=PATH``); a
   value of the form ``owner/name`` that is not a path is read as a Hugging Face hub id;
2. the weights folder (``--weights-dir`` / ``$VIDEOBENCH_WEIGHTS``, default ``~/.cache/videobench/weights``),
   holding a file or folder with one of the spec's names;
3. the Hugging Face cache (``local_files_only=True``) and the torch hub cache (``torch.hub.get_dir()/checkpoints``),
   i.e. files that open_clip / timm / torchvision / diffusers downloaded before;
4. the hubs themselves, only when downloading is enabled (``WeightsConfig(download=True)`` or
   ``VIDEOBENCH_DOWNLOAD=1``), for online users.

:func:`check_weights` resolves a list of specs and raises ONE :class:`MissingWeightsError` naming every missing
model, its file names and where they go, before any model is built. ``videobench weights`` prints
:func:`weights_table` for every registered metric and method.

Loading goes through :func:`load_state_dict` only: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediaio.hashing import file_sha256
from videobench.paths import cache_root

if TYPE_CHECKING:  # torch is imported where a file is loaded, not to look one up
    import torch

#: The environment variable naming the weights folder.
WEIGHTS_ENV = "VIDEOBENCH_WEIGHTS"
#: Set to 1 to let missing weights be downloaded from the hubs.
DOWNLOAD_ENV = "VIDEOBENCH_DOWNLOAD"


class MissingWeightsError(FileNotFoundError):
    """One or more model files cannot be found; the message lists each with where it goes."""

    def __init__(self, message: str, missing: Sequence[ResolvedWeights] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class WeightsLoadError(ValueError):
    """A weight file exists but cannot be read as a state dict of the expected model."""


def default_weights_dir() -> Path:
    """``$VIDEOBENCH_WEIGHTS``, else ``<cache root>/weights`` (``~/.cache/videobench/weights``)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return cache_root() / "weights"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsConfig:
    """Where to look for weights (``--weights-dir``) and whether missing ones may be downloaded (``--download``)."""

    weights_dir: str | os.PathLike | None = None
    download: bool = field(default_factory=lambda: _env_flag(DOWNLOAD_ENV))

    @property
    def resolved_weights_dir(self) -> Path:
        return Path(self.weights_dir).expanduser() if self.weights_dir else default_weights_dir()


@dataclass(frozen=True)
class WeightSpec:
    """One model file or folder a plugin needs, and where it may be found.

    Attributes:
        key: the plugin's name for it (``clip``, ``base``, ``adapter``); a factory receives the resolved paths
            by key.
        model: a human-readable model name (shown in messages and ``videobench weights``).
        file_names: names accepted in the weights folder (files, or folders when ``folder``), preferred first.
        folder: a model folder (diffusers/transformers layout) rather than one file.
        layout: entries a folder must hold (``model_index.json``, ``unet/``: a trailing ``/`` is a subfolder).
        hf_repo: the Hugging Face repository holding it (files or a whole snapshot).
        hf_files: for a file, the candidate files in ``hf_repo`` (paths inside the repository); for a folder,
            ``allow_patterns`` of the snapshot (empty: the whole repository).
        url: a direct download for a file, cached in torch hub's checkpoints folder.
        url_hash_prefix: torch hub's hash prefix check of that download.
        explicit: a path (or hub id) the user gave for it; it wins over every other source.
        option: how the user gives that path (``-M dino.weights=FILE``), for messages.
        formats: the accepted formats, for messages (``safetensors or .pth``).
    """

    key: str
    model: str
    file_names: tuple[str, ...] = ()
    folder: bool = False
    layout: tuple[str, ...] = ()
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()
    url: str | None = None
    url_hash_prefix: str | None = None
    explicit: str | os.PathLike | None = None
    option: str = ""
    formats: str = ""

    @property
    def source_key(self) -> tuple:
        """What makes two specs the same model to fetch or put in place (plugins may name it by other keys)."""
        return (self.hf_repo, tuple(self.hf_files), self.url, self.folder, str(self.explicit or ""),
                tuple(self.file_names))

    def with_explicit(self, value: str | os.PathLike | None) -> WeightSpec:
        """The same spec with the user's path (``None`` keeps it unset)."""
        return replace(self, explicit=value) if value not in (None, "") else self


@dataclass(frozen=True)
class ResolvedWeights:
    """The outcome of resolving one spec: a file/folder and where it was found, or ``source == "missing"``."""

    spec: WeightSpec
    path: Path | None
    source: str  # explicit | weights_dir | hf_cache | torch_hub_cache | downloaded | missing
    note: str = ""

    @property
    def found(self) -> bool:
        return self.path is not None

    def sha256(self) -> str | None:
        """The file's sha256 (folders have none)."""
        return file_sha256(self.path) if self.path is not None and self.path.is_file() else None


def _missing_layout(folder: Path, layout: Sequence[str]) -> list[str]:
    return [entry for entry in layout
            if not ((folder / entry.rstrip("/")).is_dir() if entry.endswith("/") else (folder / entry).is_file())]


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return (len(parts) == 2 and all(parts) and not value.startswith((".", "~", "/"))
            and not Path(value).expanduser().exists())


def _hf_cached_file(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # not in the cache (or huggingface_hub unavailable)
        return None


def _hf_cached_folder(repo: str, patterns: Sequence[str]) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=list(patterns) or None))
    except Exception:  # not in the cache
        return None


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``."""
    import sys

    if "torch" in sys.modules:  # a directory set with torch.hub.set_dir wins
        return Path(sys.modules["torch"].hub.get_dir())
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(torch_home).expanduser() / "hub"


def _torch_hub_file(url: str) -> Path:
    return _torch_hub_dir() / "checkpoints" / os.path.basename(url)


def _download(spec: WeightSpec, repo: str | None) -> tuple[Path | None, str]:
    """Fetch ``spec`` from its hub into the standard caches; ``(None, reason)`` when that fails."""
    errors = []
    if repo:
        from huggingface_hub import hf_hub_download, snapshot_download

        if spec.folder:
            try:
                return Path(snapshot_download(repo, allow_patterns=list(spec.hf_files) or None)), ""
            except Exception as error:
                errors.append(f"{repo}: {type(error).__name__}")
        for filename in () if spec.folder else spec.hf_files:
            try:
                return Path(hf_hub_download(repo, filename)), ""
            except Exception as error:  # try the next file name / source
                errors.append(f"{repo}/{filename}: {type(error).__name__}")
    if spec.url and not spec.folder:
        target = _torch_hub_file(spec.url)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            import torch

            torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=spec.url_hash_prefix)
            return target, ""
        except Exception as error:
            errors.append(f"{spec.url}: {type(error).__name__}: {error}")
    return None, "; ".join(errors) or "no online source is known"


def _checked(spec: WeightSpec, path: Path, source: str) -> ResolvedWeights:
    """A found folder must hold its layout; a missing entry makes it missing, saying which."""
    if spec.folder:
        if not path.is_dir():
            return ResolvedWeights(spec, None, "missing", note=f"{path} is not a folder")
        lacking = _missing_layout(path, spec.layout)
        if lacking:
            return ResolvedWeights(spec, None, "missing", note=f"{path} lacks {', '.join(lacking)}")
    elif not path.is_file():
        return ResolvedWeights(spec, None, "missing", note=f"{path} is not a file")
    return ResolvedWeights(spec, path, source)


def _hf_repo_in_cache(repo: str) -> bool:
    """Whether huggingface_hub's cache has a folder for model repository ``repo`` (``models--ORG--NAME``, its
    ``repo_folder_name``): a test that needs only ``huggingface_hub.constants``, so that listing weights that are not
    cached does not import huggingface_hub's download API (half a second)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # huggingface_hub unavailable: nothing is cached
        return False
    return (Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))).is_dir()


def _from_hub(spec: WeightSpec, repo: str) -> Path | None:
    if not _hf_repo_in_cache(repo):
        return None
    if spec.folder:
        return _hf_cached_folder(repo, spec.hf_files)
    for filename in spec.hf_files:
        cached = _hf_cached_file(repo, filename)
        if cached is not None:
            return cached
    return None


def resolve_weights(spec: WeightSpec, config: WeightsConfig | None = None) -> ResolvedWeights:
    """Find ``spec``'s file or folder (see the module docstring for the order); never raises for a missing one."""
    config = config or WeightsConfig()
    repo = spec.hf_repo
    if spec.explicit not in (None, ""):
        explicit = str(spec.explicit)
        if not _looks_like_hub_id(explicit):
            path = Path(explicit).expanduser()
            if path.exists():
                return _checked(spec, path, "explicit")
            return ResolvedWeights(spec, None, "missing", note=f"{spec.option or 'the path'} {path} does not exist")
        repo = explicit  # a hub id given by the user replaces the default repository
    else:
        folder = config.resolved_weights_dir
        for name in spec.file_names:
            candidate = folder / name
            if candidate.is_dir() if spec.folder else candidate.is_file():
                return _checked(spec, candidate, "weights_dir")
    if repo:
        cached = _from_hub(spec, repo)
        if cached is not None:
            return _checked(spec, cached, "hf_cache")
    if spec.url and not spec.folder and _torch_hub_file(spec.url).is_file():
        return ResolvedWeights(spec, _torch_hub_file(spec.url), "torch_hub_cache")
    if config.download and (repo or spec.url):
        downloaded, reason = _download(spec, repo)
        if downloaded is not None:
            return _checked(spec, downloaded, "downloaded")
        return ResolvedWeights(spec, None, "missing", note=f"download failed: {reason}")
    note = f"{repo} is not in the Hugging Face cache" if spec.explicit and repo == str(spec.explicit) else ""
    return ResolvedWeights(spec, None, "missing", note=note)


def _where_to_put(resolved: ResolvedWeights, config: WeightsConfig, owner: str = "") -> str:
    spec = resolved.spec
    what = "folder" if spec.folder else "file"
    names = " or ".join(spec.file_names) if spec.file_names else "(no local name)"
    label = f"{spec.model} [{owner + ': ' if owner else ''}{spec.key}]"
    lines = [f"  - {label}" + (f": {resolved.note}" if resolved.note else "")]
    if spec.file_names:
        lines.append(f"      put the {what} {names} in {config.resolved_weights_dir} (--weights-dir / ${WEIGHTS_ENV})"
                     + (f", or pass {spec.option}" if spec.option else ""))
    elif spec.option:
        lines.append(f"      pass {spec.option}")
    if spec.folder and spec.layout:
        lines.append(f"      (a folder holding {', '.join(spec.layout)})")
    elif spec.formats:
        lines.append(f"      (format: {spec.formats})")
    online = []
    if spec.hf_repo:
        online.append(f"huggingface.co/{spec.hf_repo}" + (f" ({', '.join(spec.hf_files)})" if spec.hf_files else ""))
    if spec.url:
        online.append(spec.url)
    if online:
        lines.append(f"      online: {' or '.join(online)} (--download / {DOWNLOAD_ENV}=1 fetches it into the cache)")
    return "\n".join(lines)


OwnedSpec = tuple[str, WeightSpec]


def check_weights(specs: Iterable[WeightSpec | OwnedSpec], config: WeightsConfig | None = None,
                  hint: str = "") -> dict[str, ResolvedWeights]:
    """Resolve every spec; ``key -> ResolvedWeights`` when all are found.

    ``specs`` holds :class:`WeightSpec` objects or ``(owner, spec)`` pairs (the owner, a plugin name, is shown in
    the message and keys the result as ``owner:key``). ``hint`` ends the message (e.g. a preset to try).

    Raises:
        MissingWeightsError: listing EVERY missing model, its expected names and where to put them.
    """
    config = config or WeightsConfig()
    found: dict[str, ResolvedWeights] = {}
    missing: list[tuple[str, ResolvedWeights]] = []
    for item in specs:
        owner, spec = item if isinstance(item, tuple) else ("", item)
        resolved = resolve_weights(spec, config)
        key = f"{owner}:{spec.key}" if owner else spec.key
        if resolved.found:
            found[key] = resolved
        else:
            missing.append((owner, resolved))
    if missing:
        body = "\n".join(_where_to_put(resolved, config, owner) for owner, resolved in missing)
        raise MissingWeightsError(
            f"missing model weights for {len(missing)} model(s):\n{body}\n"
            "(or pass --random-weights for a smoke run with random-initialised models; its outputs are meaningless)"
            + (f"\n{hint}" if hint else ""),
            [resolved for _, resolved in missing],
        )
    return found


def weights_table(specs: Iterable[WeightSpec | OwnedSpec], config: WeightsConfig | None = None
                  ) -> list[dict[str, Any]]:
    """One row per spec for ``videobench weights``: owner, key, model, file, found (where), path, sha256."""
    config = config or WeightsConfig()
    rows = []
    for item in specs:
        owner, spec = item if isinstance(item, tuple) else ("", item)
        resolved = resolve_weights(spec, config)
        rows.append({
            "owner": owner,
            "key": spec.key,
            "model": spec.model,
            "file": resolved.path.name if resolved.path else " | ".join(spec.file_names) or "-",
            "found": resolved.source,
            "path": str(resolved.path) if resolved.path else str(config.resolved_weights_dir),
            "online": f"huggingface.co/{spec.hf_repo}" if spec.hf_repo else (spec.url or ""),
            "sha256": resolved.sha256() or "",
            "note": resolved.note,
        })
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
    import torch

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
    import torch

    with torch.device("meta"):
        model = factory()
    load_into(model, state_dict, path, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise WeightsLoadError(f"{path}: no values for {left[:5]}")
    return model
