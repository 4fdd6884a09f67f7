"""SHA-256 of files (memoised per path, size and modification time) and of JSON-serialisable objects."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, memoize: bool = True) -> str:
    """The sha256 hex digest of a regular file's bytes.

    With ``memoize`` (the default) a digest is reused while the file's resolved path, size and mtime stay the
    same; data verification passes ``memoize=False`` to read the bytes again.

    Raises:
        OSError: the file is missing or unreadable; ``IsADirectoryError`` / ``OSError`` for anything that is not
            a regular file (a FIFO or a device such as ``/dev/zero`` would never end).
    """
    path = Path(path)
    stat = path.stat()
    if not path.is_file():
        raise OSError(f"{path}: not a regular file")
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if not memoize or key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def json_sha256(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; non-JSON values through ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
