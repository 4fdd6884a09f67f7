"""Suite registry: ``load_suite(name, data_root)`` and the data files behind each suite."""

from __future__ import annotations

import os
from typing import Iterable

from videobench.data import DataFile, ShippedFile, resolve_data_root

_SUITES = ("smoke", "dreambench", "videobench")


def available_suites() -> list[str]:
    """Suite names, in this order: ``smoke``, ``dreambench``, ``videobench``."""
    return list(_SUITES)


def _module(name: str):
    if name not in _SUITES:
        raise KeyError(f"unknown suite {name!r}; available: {', '.join(_SUITES)}")
    from videobench.suites import dreambench, smoke, videobench

    return {"smoke": smoke, "dreambench": dreambench, "videobench": videobench}[name]


def load_suite(name: str, data_root: str | os.PathLike | None = None):
    """The suite ``name`` with reference paths under the data root (see :func:`videobench.data.resolve_data_root`).

    ``smoke`` draws its images there on first use; ``dreambench`` and ``videobench`` raise
    :class:`~videobench.data.MissingDataError` naming the missing files and the download command.
    """
    module = _module(name)
    return module.build(resolve_data_root(data_root))


def data_files(name: str, subjects: Iterable[str] | None = None) -> list[DataFile]:
    """Downloadable files of a suite (``smoke`` has none)."""
    module = _module(name)
    if name == "smoke":
        return []
    subjects = None if subjects is None else list(subjects)
    files = module.data_files(subjects=subjects)
    if subjects is not None:
        known = {s["id"] for s in module.load_spec()["subjects"]}
        unknown = sorted(set(subjects) - known)
        if unknown:
            raise KeyError(f"suite {name!r} has no subject(s) {', '.join(unknown)}")
    return files


def shipped_files(name: str) -> list[ShippedFile]:
    """License/attribution texts shipped in the package and copied to the data root on download."""
    module = _module(name)
    return [] if name == "smoke" else module.shipped_files()
