"""Atomic file writes: write to a temporary file in the same folder, then rename.

An interrupted run therefore never leaves a half-written CSV, JSON, HTML or video behind: the
destination either holds the previous complete content or the new complete content.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


class DiskFullError(OSError):
    """The device filled up while ``path`` was written (``ENOSPC``); the destination was left as it was."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device: {path}")
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A full device (``ENOSPC`` from the writer or the rename) raises :class:`DiskFullError` naming ``path``.

    ``suffix`` defaults to the destination's suffix so that tools choosing a format from the file
    name (PyAV, pandas) still see it. On an exception the temporary file is removed and ``path``
    is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=(suffix if suffix is not None else path.suffix) + ".part",
            dir=path.parent,
        )
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFullError(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp adds ".part" after the real suffix; give writers a name that ends in the real suffix.
    writer_path = tmp_path.with_name(tmp_path.name[: -len(".part")])
    try:
        yield writer_path
        os.replace(writer_path, path)
    except OSError as error:
        if error.errno == errno.ENOSPC and not isinstance(error, DiskFullError):
            raise DiskFullError(path) from None
        raise
    finally:
        for leftover in (writer_path, tmp_path):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; rename it onto ``path`` when the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
