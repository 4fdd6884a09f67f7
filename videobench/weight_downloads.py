"""Fetch every model a target needs in one command: ``videobench weights download --for TARGET``.

A target is ``table1`` or ``table2`` (every row of the paper's table, as ``videobench reproduce`` plans it, plus the
metric models that score it), ``metrics`` (the default metric families), ``all`` (every registered method and
metric family), or a comma-separated list of method names (``ip-adapter+i2v,videobooth``, ``metrics`` may be one
of them). Each model is listed once with the rows that need it (:func:`collect_needs`).

Models on the Hugging Face Hub go through ``huggingface_hub`` (the standard cache, ``HF_HOME``, ``HF_TOKEN``,
``HF_ENDPOINT`` for a mirror, ``HF_HUB_OFFLINE``): :func:`list_remote` reads the repository's file tree (sizes, the
sha256 the Hub publishes for LFS files, whether the repository is gated), :func:`download` fetches only the files
the model needs (resuming partial files) and checks every published sha256 afterwards, removing a file that does
not match. Direct URLs (torch hub checkpoints) are fetched with HTTP range requests into torch hub's checkpoints
folder (resumable: a ``.part`` file), with torch hub's hash-prefix check.

Offline, or when the Hub cannot be reached, the first connection error stops everything with one line saying how
to proceed (:class:`HubUnreachable`): a mirror through ``HF_ENDPOINT``, or ``--from DIR`` (:func:`import_folder`),
a folder copied from a machine with network, e.g. made there by
``HF_HOME=DIR/hf TORCH_HOME=DIR/torch videobench weights download --for table1``.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mediaio.hashing import file_sha256
from videobench.weights import (
    ResolvedWeights,
    WeightsConfig,
    WeightSpec,
    _looks_like_hub_id,
    _torch_hub_dir,
    _torch_hub_file,
    resolve_weights,
)

TABLE_TARGETS = ("table1", "table2")
METRICS_TARGET = "metrics"
ALL_TARGET = "all"
_CHUNK = 1 << 20
#: Names of exception classes (any HTTP stack huggingface_hub uses) that mean "the host cannot be reached".
_CONNECTION_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "OfflineModeIsEnabled", "NetworkError",
                      "ProxyError", "URLError", "gaierror", "ConnectionRefusedError"}


class WeightsDownloadError(RuntimeError):
    """A model could not be fetched (gated, not found, hash mismatch); the message names it and what to do."""


class HubUnreachable(WeightsDownloadError):
    """The Hub (or a URL's host) cannot be reached: nothing else is tried."""


# ------------------------------------------------------------------------------------------------ what is needed


@dataclass
class Need:
    """One model a target needs, once, with every row (or metric family) that needs it."""

    spec: WeightSpec
    owners: list[str] = field(default_factory=list)

    def resolve(self, config: WeightsConfig) -> ResolvedWeights:
        return resolve_weights(self.spec, WeightsConfig(weights_dir=config.weights_dir, download=False))


def _merge(needs: dict[tuple, Need], owner: str, specs: Iterable[WeightSpec]) -> None:
    for spec in specs:
        existing = needs.setdefault(spec.source_key, Need(spec))
        if owner not in existing.owners:
            existing.owners.append(owner)


def _metric_needs(needs: dict[tuple, Need], families: Sequence[str]) -> None:
    from videobench.metrics.registry import metric_weight_specs, parse_metric_options

    parsed = parse_metric_options({})
    for family, spec in metric_weight_specs(families, parsed):
        _merge(needs, f"metric {family}", [spec])


def collect_needs(target: str, config: WeightsConfig | None = None) -> list[Need]:
    """Every model ``target`` needs (see the module docstring), in first-needed order.

    Raises:
        ValueError: an unknown target or method name (with the known ones).
    """
    from videobench.methods import MethodContext, available_methods
    from videobench.metrics.registry import metric_families

    config = config or WeightsConfig()
    needs: dict[tuple, Need] = {}
    context = MethodContext(weights_config=config)
    if target in TABLE_TARGETS:
        from videobench.reproduction import plan

        for row in plan(target, context).rows:
            _merge(needs, row.row_id, [resolved.spec for resolved in row.weights])
        _metric_needs(needs, [name for name, cls in metric_families().items() if cls.default])
        return list(needs.values())
    methods = available_methods()
    if target == ALL_TARGET:
        names = [*methods, METRICS_TARGET]
    else:
        names = [name.strip() for name in target.split(",") if name.strip()]
    unknown = [name for name in names if name not in methods and name != METRICS_TARGET]
    if unknown or not names:
        choices = ", ".join([*TABLE_TARGETS, METRICS_TARGET, ALL_TARGET])
        raise ValueError(f"--for {target!r}: unknown method(s) {', '.join(unknown) or '(none given)'}; give "
                         f"{choices}, or method names (`videobench methods`)")
    for name in names:
        if name == METRICS_TARGET:
            families = metric_families()
            wanted = list(families) if target == ALL_TARGET else [n for n, cls in families.items() if cls.default]
            _metric_needs(needs, wanted)
            continue
        spec = methods[name]
        _merge(needs, name, spec.weight_specs(spec.parse_options({}), context))
    return list(needs.values())


# ------------------------------------------------------------------------------------------------ the remote side


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # published by the Hub for LFS files


@dataclass
class Listing:
    """What fetching one model means: its files, their sizes, whether the repository is gated."""

    need: Need
    source: str  # "hub" or "url"
    files: list[RemoteFile] = field(default_factory=list)
    gated: str | None = None  # "auto" / "manual" when a token (and an accepted licence) is needed
    revision: str | None = None

    @property
    def size(self) -> int | None:
        sizes = [item.size for item in self.files]
        return None if not sizes or any(size is None for size in sizes) else sum(cast("list[int]", sizes))


def _is_connection_error(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if any(cls.__name__ in _CONNECTION_ERRORS for cls in type(seen).__mro__):
            if not isinstance(seen, urllib.error.HTTPError):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _unreachable(where: str, error: BaseException) -> HubUnreachable:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    reason = "HF_HUB_OFFLINE is set" if offline else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return HubUnreachable(
        f"cannot reach {where} ({reason}); nothing more was tried. Use a mirror (HF_ENDPOINT=URL), or copy the "
        "models from a machine with network (there: HF_HOME=DIR/hf TORCH_HOME=DIR/torch videobench weights "
        "download --for TARGET) and run `videobench weights download --for TARGET --from DIR` here")


def _gated_message(repo: str) -> str:
    return (f"{repo} is gated: accept its licence at {hub_endpoint()}/{repo} with your account, then set HF_TOKEN "
            "(a read token from your Hub settings) and run the command again")


def _select(paths: Sequence[str], spec: WeightSpec) -> list[str]:
    """The repository files a spec needs: a folder's ``allow_patterns`` (all when none), or a file's first
    candidate that exists."""
    if spec.folder:
        patterns = list(spec.hf_files)
        return [path for path in paths if not patterns or any(fnmatch.fnmatch(path, p) for p in patterns)]
    present = set(paths)
    return next(([name] for name in spec.hf_files if name in present), [])


def list_remote(need: Need, token: str | None = None) -> Listing:
    """Ask the Hub (or the URL's host) what fetching ``need`` means, without downloading.

    Raises:
        HubUnreachable: no connection (or offline mode); WeightsDownloadError: the repository or file is missing.
    """
    spec = need.spec
    repo = _repo_of(spec)
    if repo is None:
        if spec.url is None:
            raise WeightsDownloadError(f"{spec.model}: no online source is known; put it in place by hand")
        return Listing(need, "url", [RemoteFile(os.path.basename(spec.url), _url_size(spec.url), None)])
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        info = api.model_info(repo)
        tree = [item for item in api.list_repo_tree(repo, recursive=True, revision=info.sha)
                if isinstance(item, RepoFile)]
    except GatedRepoError:
        raise WeightsDownloadError(_gated_message(repo)) from None
    except RepositoryNotFoundError:
        raise WeightsDownloadError(f"{repo}: no such repository on {hub_endpoint()} (or it is private: set "
                                   "HF_TOKEN)") from None
    except Exception as error:
        if _is_connection_error(error):
            raise _unreachable(hub_endpoint(), error) from None
        raise WeightsDownloadError(f"{repo}: {type(error).__name__}: {error}") from None
    by_path = {item.path: item for item in tree}
    chosen = _select(list(by_path), spec)
    if not chosen:
        raise WeightsDownloadError(f"{repo}: none of {', '.join(spec.hf_files) or 'its files'} is in the repository")
    files = [RemoteFile(path, lfs.size if (lfs := by_path[path].lfs) else by_path[path].size,
                        lfs.sha256 if lfs else None) for path in chosen]
    gated = info.gated if isinstance(info.gated, str) else None
    return Listing(need, "hub", files, gated, info.sha)


def _repo_of(spec: WeightSpec) -> str | None:
    """The Hub repository of ``spec``: a hub id the user gave (``-o model=OWNER/NAME``), else the plugin's."""
    explicit = str(spec.explicit or "")
    if explicit:
        return explicit if _looks_like_hub_id(explicit) else None
    return spec.hf_repo


def _url_size(url: str) -> int | None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (the plugin's published URL)
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        raise _unreachable(urllib.parse.urlsplit(url).netloc, error) from None
    return int(length) if length and length.isdigit() else None


# ------------------------------------------------------------------------------------------------ fetching


def download(listing: Listing, token: str | None = None, progress: bool = True) -> Path:
    """Fetch one model (see :func:`list_remote`); returns the local file or folder.

    Hub files land in the Hugging Face cache in its own layout (``blobs/<etag>``, ``snapshots/<commit>/<path>``,
    ``refs/main``), so ``huggingface_hub``, diffusers and this project's offline lookups find them. Unlike
    ``huggingface_hub`` (which restarts a file whose download was interrupted), a transfer goes to
    ``blobs/<etag>.part`` and a later run continues it with an HTTP range request. Every sha256 the Hub publishes
    is checked before the file is put in place; a mismatch removes it and raises :class:`WeightsDownloadError`.
    """
    spec = listing.need.spec
    if listing.source == "url":
        assert spec.url is not None
        return _download_url(spec.url, spec.url_hash_prefix, progress)
    repo = _repo_of(spec)
    assert repo is not None
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    paths = [_fetch_hub_file(repo, item, token, progress) for item in listing.files]
    if not spec.folder:
        return paths[0]
    return paths[0].parents[len(Path(listing.files[0].path).parts) - 1]  # snapshots/<commit>/


def _fetch_hub_file(repo: str, item: RemoteFile, token: str | None, progress: bool) -> Path:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, item.path, endpoint=hub_endpoint())
    try:
        meta = get_hf_file_metadata(url, token=token)
    except GatedRepoError:
        raise WeightsDownloadError(_gated_message(repo)) from None
    except EntryNotFoundError:
        raise WeightsDownloadError(f"{repo}/{item.path}: not in the repository") from None
    except Exception as error:
        if _is_connection_error(error):
            raise _unreachable(hub_endpoint(), error) from None
        raise WeightsDownloadError(f"{repo}/{item.path}: {type(error).__name__}: {error}") from None
    if not meta.commit_hash or not meta.etag:
        raise WeightsDownloadError(f"{repo}/{item.path}: the server sent no commit or ETag header")
    storage = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    blob = storage / "blobs" / meta.etag
    pointer = storage / "snapshots" / meta.commit_hash / item.path
    if not blob.is_file():
        part = blob.with_name(blob.name + ".part")
        headers = build_hf_headers(token=token)
        headers.pop("accept-encoding", None)
        _ranged_get(meta.location, part, headers, f"{repo}/{item.path}", progress)
        if item.sha256 is not None:
            actual = file_sha256(part, memoize=False)
            if actual != item.sha256:
                part.unlink()
                raise WeightsDownloadError(
                    f"{repo}/{item.path}: sha256 mismatch (the Hub publishes {item.sha256}, the download has "
                    f"{actual}); the file was removed, run the command again")
        os.replace(part, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not pointer.exists():
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:  # no symlinks (some Windows setups): a copy, as huggingface_hub does
            shutil.copyfile(blob, pointer)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(meta.commit_hash)
    return pointer


def _ranged_get(url: str, part: Path, headers: dict[str, str], name: str, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing an existing ``part`` with a range request."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={offset}-"} if offset else {})})
    try:
        response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 (the Hub, a mirror or a plugin's URL)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part is already complete
            return
        raise WeightsDownloadError(f"{name}: HTTP {error.code} from {url}") from None
    except (urllib.error.URLError, OSError) as error:
        raise _unreachable(urllib.parse.urlsplit(url).netloc, error) from None
    with response:
        resumed = bool(offset) and response.status == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (offset if resumed else 0) if length and length.isdigit() else None
        bar = _bar(total, offset if resumed else 0, name, progress)
        with open(part, "ab" if resumed else "wb") as handle:
            for chunk in iter(lambda: response.read1(_CHUNK), b""):
                handle.write(chunk)
                handle.flush()
                bar(len(chunk))
        bar(None)
    if total is not None and part.stat().st_size != total:
        raise WeightsDownloadError(f"{name}: the transfer stopped at {part.stat().st_size} of {total} bytes; run "
                                   "the command again to continue it")


def _download_url(url: str, hash_prefix: str | None, progress: bool) -> Path:
    """A direct URL into torch hub's checkpoints folder (``<name>.part`` while it lasts; resumable), with torch
    hub's check that the file's sha256 starts with the prefix in its name."""
    target = _torch_hub_file(url)
    if target.is_file():
        return target
    part = target.with_name(target.name + ".part")
    _ranged_get(url, part, {}, os.path.basename(url), progress)
    if hash_prefix:
        digest = file_sha256(part, memoize=False)
        if not digest.startswith(hash_prefix):
            part.unlink()
            raise WeightsDownloadError(f"{url}: sha256 {digest[:12]}... does not start with the published "
                                       f"prefix {hash_prefix}; the file was removed, run the command again")
    os.replace(part, target)
    return target


def _bar(total: int | None, initial: int, name: str, enabled: bool) -> Callable[[int | None], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not enabled)

    def update(count: int | None) -> None:
        bar.close() if count is None else bar.update(count)

    return update


# ------------------------------------------------------------------------------------------------ --from DIR


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def import_folder(source: str | os.PathLike, needs: Sequence[Need], config: WeightsConfig) -> list[str]:
    """Copy what ``needs`` lacks from ``source`` (a folder copied from a machine with network) into the local
    caches; returns what was imported, one line each.

    ``source`` may hold a Hugging Face cache (``hf/hub/models--*``, ``hub/models--*`` or ``models--*``), torch hub
    checkpoints (``torch/hub/checkpoints/``, ``checkpoints/`` or the files at the top) and files or folders named
    as in the weights folder (the spec's file names), which go to the weights folder.
    """
    source = Path(source).expanduser()
    if not source.is_dir():
        raise WeightsDownloadError(f"--from {source}: no such folder")
    hub_roots = [p for p in (source / "hf" / "hub", source / "hub", source) if p.is_dir()]
    torch_roots = [p for p in (source / "torch" / "hub" / "checkpoints", source / "checkpoints", source) if p.is_dir()]
    imported: list[str] = []
    for need in needs:
        if need.resolve(config).found:
            continue
        spec = need.spec
        repo = _repo_of(spec)
        if repo is not None:
            name = "models--" + repo.replace("/", "--")
            found = next((root / name for root in hub_roots if (root / name).is_dir()), None)
            if found is not None:
                shutil.copytree(found, _hub_cache_dir() / name, symlinks=True, dirs_exist_ok=True)
                imported.append(f"{spec.model}: {found} -> {_hub_cache_dir() / name}")
                continue
        if spec.url and not spec.folder:
            base = os.path.basename(spec.url)
            found_file = next((root / base for root in torch_roots if (root / base).is_file()), None)
            if found_file is not None:
                target = _torch_hub_dir() / "checkpoints" / base
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(found_file, target)
                imported.append(f"{spec.model}: {found_file} -> {target}")
                continue
        for name in spec.file_names:
            candidate = source / name
            if candidate.is_dir() if spec.folder else candidate.is_file():
                target = config.resolved_weights_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree(candidate, target, dirs_exist_ok=True) if spec.folder
                 else shutil.copy2(candidate, target))
                imported.append(f"{spec.model}: {candidate} -> {target}")
                break
    return imported


# ------------------------------------------------------------------------------------------------ reporting


def human_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
