"""The user cache root of videobench: data, weights and the score cache live under it by default."""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the whole cache root (data, weights and score cache each have their own variable too).
CACHE_ENV = "VIDEOBENCH_CACHE"


def cache_root() -> Path:
    """``$VIDEOBENCH_CACHE``, else ``$XDG_CACHE_HOME/videobench``, else ``~/.cache/videobench``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "videobench"
