"""Benchmark data: where it lives, how it is fetched from its pinned public sources, how it is checked.

Data root (``resolve_data_root``): the ``data_root`` argument (``--data-root``), else ``$VIDEOBENCH_DATA``, else
``$XDG_CACHE_HOME/videobench/data`` (``~/.cache/videobench/data`` when ``XDG_CACHE_HOME`` is unset).

Layout under the root (every path comes from a versioned spec in ``videobench/suites/data``)::

    dreambench/<subject>/<nn>.jpg             DreamBooth images (google/dreambooth, pinned commit)
    dreambench/prompts_and_classes.txt        upstream attribution / prompt files (pinned, sha256-checked)
    dreambench/references_and_licenses.txt
    dreambench/LICENSE.txt                    CC-BY-4.0 text of the dataset (shipped in the package)
    videobench/objects/<id>/00.png|jpg        the 22 extra VideoBench subjects (each pinned to its repo commit)
    videobench/LICENSES.txt                   their licenses and attribution (shipped in the package)
    smoke/<subject>/00.png                    drawn by code on first use of the smoke suite

``download`` fetches every file of a suite from ``https://raw.githubusercontent.com/<repo>/<commit>/<path>``
(or a mirror laid out the same way, or a local folder laid out like ``shared/datasets``), checks its sha256
while streaming, writes it atomically, skips files that already verify (resume), retries transient failures
and reports each failed file in one line. When the source cannot be reached at all (no route, name resolution or
connection refused: an offline machine), it stops after that first error with one line saying what to do instead
(``--from DIR``, ``--base-url``), rather than trying every file. ``verify`` re-hashes every file of a suite. No path taken from a
spec may leave the data root: absolute paths and ``..`` are rejected when the spec is read, and every join
goes through :func:`join_inside`.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Protocol, Sequence

from mediaio.atomic import atomic_open, atomic_path
from mediaio.hashing import file_sha256
from videobench.paths import cache_root

DATA_ENV = "VIDEOBENCH_DATA"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
_CHUNK = 1 << 20


class DataError(RuntimeError):
    """A problem with benchmark data (bad spec, failed download, missing files)."""


class MissingDataError(DataError, FileNotFoundError):
    """A suite's reference images are not in the data root."""


class DownloadError(DataError):
    """One or more files could not be fetched and verified; ``failures`` maps data path -> reason."""

    def __init__(self, message: str, failures: dict[str, str]):
        super().__init__(message)
        self.failures = failures


class _Fatal(Exception):
    """A per-file failure that retrying cannot fix (404, checksum mismatch)."""


class _Unreachable(Exception):
    """The source host cannot be reached at all: no other file will fare better."""


class _NotTried(Exception):
    """Skipped: an earlier file found the source unreachable."""


def _connection_refused(error: BaseException) -> bool:
    """No route, no name resolution or a refused connection: the host is unreachable, not the file."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
        isinstance(reason, OSError) and reason.errno in (101, 113))  # ENETUNREACH, EHOSTUNREACH


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_root``, else ``$VIDEOBENCH_DATA``, else ``<user cache>/videobench/data``."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (cache_root() / "data").resolve()


def safe_relpath(path: str, what: str = "path") -> str:
    """Validate a relative POSIX path taken from a spec; refuse anything that could leave its base folder."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise DataError(f"spec {what} {path!r} is not a plain relative POSIX path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise DataError(f"spec {what} {path!r} is absolute; only paths inside the data root are allowed")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise DataError(f"spec {what} {path!r} contains '..' or empty/'.' parts; it could escape the data root")
    return str(pure)


def join_inside(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` for a spec path, validated lexically by :func:`safe_relpath` (no ``..``, not absolute),
    so the result is always under ``root``; symlinks a user placed inside the root are honoured."""
    return Path(root) / safe_relpath(relative)


@dataclass(frozen=True)
class DataFile:
    """One file of a suite's data, pinned by content.

    Attributes:
        path: where it goes, relative to the data root (e.g. ``dreambench/dog2/00.jpg``).
        sha256: the expected SHA-256 of its bytes; size: its byte count.
        repo, commit, source_path: the public source ``<repo>@<commit>:<source_path>``.
        mirror_path: where it lies in a local copy laid out like ``shared/datasets``.
    """

    path: str
    sha256: str
    size: int
    repo: str
    commit: str
    source_path: str
    mirror_path: str

    def __post_init__(self) -> None:
        for name in ("path", "source_path", "mirror_path"):
            safe_relpath(getattr(self, name), name)
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise DataError(f"spec file {self.path!r}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if len(self.commit) != 40:
            raise DataError(f"spec file {self.path!r}: commit {self.commit!r} is not a full 40-digit SHA")

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        """``<base>/<repo>/<commit>/<source_path>``, the raw.githubusercontent.com layout."""
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{urllib.parse.quote(self.source_path)}"


@dataclass(frozen=True)
class ShippedFile:
    """A text shipped inside the package (license, attribution), copied to ``path`` under the data root."""

    path: str
    resource: str

    def __post_init__(self) -> None:
        safe_relpath(self.path, "path")
        safe_relpath(self.resource, "resource")

    def read_bytes(self) -> bytes:
        return resources.files("videobench.suites").joinpath("data", self.resource).read_bytes()


def missing_files(root: Path, files: Iterable[DataFile]) -> list[str]:
    """Data paths that are absent or have the wrong size (a cheap check; ``verify`` re-hashes)."""
    missing = []
    for item in files:
        target = join_inside(root, item.path)
        if not target.is_file() or target.stat().st_size != item.size:
            missing.append(item.path)
    return missing


def require_files(suite: str, root: Path, files: Iterable[DataFile]) -> None:
    """Raise :class:`MissingDataError` naming the missing files and the command that fetches them."""
    missing = missing_files(root, files)
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise MissingDataError(
            f"suite {suite!r}: {len(missing)} reference image(s) missing or incomplete under data root {root}:\n"
            f"  {shown}\nFetch them with:  videobench data download {suite} --data-root {root}"
        )


# ----------------------------------------------------------------------------------------------- download


@dataclass
class DownloadReport:
    suite: str
    data_root: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _base_for(repo: str, base_urls: str | Mapping[str, str] | None) -> str:
    if base_urls is None:
        return DEFAULT_BASE_URL
    if isinstance(base_urls, str):
        return base_urls
    return base_urls.get(repo) or base_urls.get("*") or DEFAULT_BASE_URL


def _open_source(item: DataFile, base_urls, source_dir: Path | None, timeout: float):
    """A (binary stream, description, expected length or None) for one file."""
    if source_dir is not None:
        local = join_inside(source_dir, item.mirror_path)
        if not local.is_file():
            raise _Fatal(f"not found in local source folder: {local}")
        return open(local, "rb"), str(local), None
    url = item.url(_base_for(item.repo, base_urls))
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https or a chosen mirror)
    except urllib.error.HTTPError as err:
        if err.code in (404, 403, 410):
            raise _Fatal(f"HTTP {err.code} for {url}") from err
        raise
    length = response.headers.get("Content-Length")
    return response, url, (int(length) if length and length.isdigit() else None)


def _fetch_one(item: DataFile, root: Path, base_urls, source_dir: Path | None, retries: int,
               backoff: float, timeout: float, stop: threading.Event | None = None) -> str:
    """Fetch, hash and atomically place one file. Returns 'downloaded' or 'skipped'; raises DataError,
    :class:`_Unreachable` (setting ``stop``) or :class:`_NotTried` (``stop`` was already set)."""
    target = join_inside(root, item.path)
    if target.is_file() and target.stat().st_size == item.size and file_sha256(target, memoize=False) == item.sha256:
        return "skipped"
    last_error = "unknown error"
    for attempt in range(max(1, retries)):
        if stop is not None and stop.is_set():
            raise _NotTried()
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            stream, origin, expected_len = _open_source(item, base_urls, source_dir, timeout)
            with stream, atomic_path(target) as tmp:
                digest, size = hashlib.sha256(), 0
                with open(tmp, "wb") as out:
                    for chunk in iter(functools.partial(stream.read, _CHUNK), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if expected_len is not None and size != expected_len:
                    raise ConnectionError(f"truncated transfer from {origin}: {size} of {expected_len} bytes")
                if digest.hexdigest() != item.sha256:
                    raise _Fatal(
                        f"sha256 mismatch for {origin}: expected {item.sha256}, got {digest.hexdigest()} "
                        f"({size} bytes); nothing was written"
                    )
            return "downloaded"
        except _Fatal as err:
            raise DataError(f"{item.path}: {err}") from None
        except urllib.error.URLError as err:
            if _connection_refused(err) and not isinstance(err, urllib.error.HTTPError):
                if stop is not None:
                    stop.set()
                url = item.url(_base_for(item.repo, base_urls))
                raise _Unreachable(f"{urllib.parse.urlsplit(url).netloc} ({err.reason})") from None
            last_error = f"{type(err).__name__}: {err}"
        except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
            last_error = f"{type(err).__name__}: {err}"
    raise DataError(f"{item.path}: failed after {max(1, retries)} attempt(s): {last_error}")


def _write_shipped(root: Path, shipped: Iterable[ShippedFile]) -> None:
    for item in shipped:
        target = join_inside(root, item.path)
        data = item.read_bytes()
        if not (target.is_file() and target.read_bytes() == data):
            with atomic_open(target, "wb") as handle:
                handle.write(data)


class SuiteData(Protocol):
    """What downloading needs of a suite (:class:`videobench.suites.registry.SuiteSpec` is one)."""

    name: str

    def data_files(self, subjects: Iterable[str] | None = None) -> list[DataFile]: ...

    def shipped_files(self) -> list[ShippedFile]: ...


def download(
    suite: SuiteData,
    data_root: str | os.PathLike | None = None,
    base_urls: str | Mapping[str, str] | None = None,
    progress: bool = True,
    *,
    source_dir: str | os.PathLike | None = None,
    subjects: Iterable[str] | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    workers: int = 4,
) -> DownloadReport:
    """Fetch every file of ``suite`` into the data root, verified against the spec's sha256.

    Args:
        suite: the suite's spec (``get_suite("dreambench")``); suites drawn by code have nothing to download.
        data_root: see :func:`resolve_data_root`.
        base_urls: a mirror root laid out as ``<repo>/<commit>/<path>`` (one string for every repository, or
            a mapping ``repo -> base`` with ``"*"`` as fallback); default ``https://raw.githubusercontent.com``.
        progress: show a tqdm bar.
        source_dir: read from a local folder laid out like ``shared/datasets`` instead of the network.
        subjects: only these subjects' images (attribution files are always fetched).
        retries, backoff, timeout: per-file attempts for transient errors, first back-off (doubling), seconds.
        workers: parallel transfers.

    Files that already verify are skipped (resume). A file with a wrong checksum is never written. When any
    file fails, :class:`DownloadError` lists every failure in one line each, after all other files are done.
    """
    root = resolve_data_root(data_root)
    files = suite.data_files(subjects)
    name = suite.name
    source = Path(source_dir).resolve() if source_dir is not None else None
    report = DownloadReport(suite=name, data_root=root)
    root.mkdir(parents=True, exist_ok=True)
    bar = None
    stop = threading.Event()
    unreachable: list[str] = []
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc=f"download {name}", unit="file")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {
                pool.submit(_fetch_one, item, root, base_urls, source, retries, backoff, timeout, stop): item
                for item in files
            }
            for future in as_completed(futures):
                item = futures[future]
                try:
                    outcome = future.result()
                except _NotTried:
                    continue
                except _Unreachable as err:
                    unreachable.append(str(err))
                    continue
                except DataError as err:
                    report.failed[item.path] = str(err)
                else:
                    (report.downloaded if outcome == "downloaded" else report.skipped).append(item.path)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    order = {item.path: i for i, item in enumerate(files)}
    report.downloaded.sort(key=order.__getitem__)
    report.skipped.sort(key=order.__getitem__)
    if unreachable:
        done = len(report.downloaded) + len(report.skipped)
        raise DownloadError(
            f"videobench data download {name}: cannot reach {unreachable[0]}; stopped after the first connection "
            f"error ({done} of {len(files)} file(s) verified, kept). Offline? Copy a folder laid out like the "
            f"upstream repositories here and run `videobench data download {name} --from DIR`, or give a mirror "
            "with --base-url URL.",
            {"*": unreachable[0]},
        )
    _write_shipped(root, suite.shipped_files())
    if report.failed:
        lines = "\n".join(f"  {report.failed[path]}" for path in sorted(report.failed, key=order.__getitem__))
        raise DownloadError(
            f"videobench data download {name}: {len(report.failed)} of {len(files)} file(s) failed "
            f"(data root {root}):\n{lines}\n{len(report.downloaded) + len(report.skipped)} verified file(s) are "
            f"kept; run the same command again to resume.",
            dict(report.failed),
        )
    return report


# ------------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class CorruptFile:
    path: str
    expected_sha256: str
    actual_sha256: str


@dataclass
class VerifyReport:
    """The result of :func:`verify`: every file of the checked suites is ok, missing or corrupt."""

    data_root: Path
    suites: tuple[str, ...]
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[CorruptFile] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.missing and not self.corrupt

    @property
    def checked(self) -> int:
        return len(self.ok) + len(self.missing) + len(self.corrupt)

    def lines(self) -> list[str]:
        """Human-readable lines: one per problem, then a summary."""
        out = [f"missing: {path}" for path in self.missing]
        out += [f"corrupt: {c.path} (sha256 {c.actual_sha256}, expected {c.expected_sha256})" for c in self.corrupt]
        status = "OK" if self.passed else "FAILED"
        out.append(
            f"{status}: {', '.join(self.suites)} under {self.data_root}: {len(self.ok)} ok, "
            f"{len(self.missing)} missing, {len(self.corrupt)} corrupt"
        )
        if not self.passed:
            out.append("repair with: " + "; ".join(
                f"videobench data download {s} --data-root {self.data_root}" for s in self.suites))
        return out


def verify(data_root: str | os.PathLike | None, suites: Sequence[SuiteData]) -> VerifyReport:
    """Check presence and sha256 of every file of ``suites``."""
    root = resolve_data_root(data_root)
    report = VerifyReport(data_root=root, suites=tuple(suite.name for suite in suites))
    seen: set[str] = set()
    for suite in suites:
        for item in suite.data_files():
            if item.path in seen:
                continue
            seen.add(item.path)
            target = join_inside(root, item.path)
            if not target.is_file():
                report.missing.append(item.path)
                continue
            actual = file_sha256(target, memoize=False)
            if actual == item.sha256:
                report.ok.append(item.path)
            else:
                report.corrupt.append(CorruptFile(item.path, item.sha256, actual))
    return report


def build_mirror(files: Iterable[DataFile], source_dir: str | os.PathLike, dest: str | os.PathLike,
                 symlink: bool = False) -> Path:
    """Lay ``files`` out from a folder arranged like ``shared/datasets`` as an upstream-style mirror
    (``<dest>/<repo>/<commit>/<source_path>``) that ``download(base_urls=...)`` can be pointed at (served over
    HTTP, or used for an offline mirror). Returns ``dest``."""
    source, dest = Path(source_dir).resolve(), Path(dest).resolve()
    for item in {f.path: f for f in files}.values():
        src = join_inside(source, item.mirror_path)
        out = join_inside(dest, f"{item.repo}/{item.commit}/{item.source_path}")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() or out.is_symlink():
            out.unlink()
        if symlink:
            out.symlink_to(src)
        else:
            shutil.copyfile(src, out)
    return dest
