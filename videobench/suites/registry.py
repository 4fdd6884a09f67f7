"""The suite registry: a suite describes itself where it is defined (``@register_suite``), the harness reads that.

A suite is one module with a decorated ``build(data_root) -> Suite`` and its spec: name, display label, version,
description, its place in the leaderboard (``order``), and, for suites with downloadable images, its data files
(pinned, sha256-checked; :mod:`videobench.data`) and the license texts shipped with the package. Other packages add
suites through the ``videobench.suites`` entry-point group (:mod:`videobench.plugins`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from videobench.cases import Case
from videobench.data import DataFile, ShippedFile, resolve_data_root
from videobench.options import did_you_mean
from videobench.plugins import SUITES_GROUP, load_plugins


@dataclass(frozen=True)
class Suite:
    """A loaded suite: its cases and the default video geometry for methods generating it.

    ``--frames/--height/--width`` override the geometry. The paper's setting is 49 frames at 480x720, 8 fps; the
    smoke suite is smaller so that the whole generate + score + report loop runs on a laptop CPU.
    """

    name: str
    version: str
    description: str
    cases: tuple[Case, ...]
    num_frames: int = 49
    height: int = 480
    width: int = 720
    fps: int = 8

    def select(self, case_ids: list[str] | None = None, limit: int | None = None) -> list[Case]:
        """The cases named in ``case_ids`` (in suite order; unknown ids raise), then the first ``limit``."""
        cases = list(self.cases)
        if case_ids:
            known = {case.case_id for case in cases}
            unknown = [case_id for case_id in case_ids if case_id not in known]
            if unknown:
                raise KeyError(f"suite {self.name}: unknown case id(s): {', '.join(unknown)}")
            wanted = set(case_ids)
            cases = [case for case in cases if case.case_id in wanted]
        if limit is not None:
            cases = cases[:limit]
        return cases


SuiteBuilder = Callable[[Path], Suite]


@dataclass(frozen=True)
class SuiteSpec:
    """A registered suite (see the module docstring)."""

    name: str
    label: str
    version: str
    description: str
    order: float
    build: SuiteBuilder
    files: Callable[[Iterable[str] | None], list[DataFile]] | None = None
    shipped: Callable[[], list[ShippedFile]] | None = None
    subjects: Callable[[], list[str]] | None = None
    default: bool = False
    count: Callable[[], int] | None = None

    @property
    def downloadable(self) -> bool:
        return self.files is not None

    def data_files(self, subjects: Iterable[str] | None = None) -> list[DataFile]:
        """The downloadable files (of ``subjects`` only, when given); none for suites drawn by code."""
        if self.files is None:
            return []
        if subjects is not None:
            subjects = list(subjects)
            unknown = sorted(set(subjects) - set(self.subjects() if self.subjects else ()))
            if unknown:
                raise KeyError(f"suite {self.name!r} has no subject(s) {', '.join(unknown)}")
        return self.files(subjects)

    def shipped_files(self) -> list[ShippedFile]:
        """License/attribution texts shipped in the package and copied to the data root on download."""
        return self.shipped() if self.shipped is not None else []


_SUITES: dict[str, SuiteSpec] = {}


def register_suite(
    name: str,
    *,
    label: str,
    version: str,
    description: str,
    order: float,
    files: Callable[[Iterable[str] | None], list[DataFile]] | None = None,
    shipped: Callable[[], list[ShippedFile]] | None = None,
    subjects: Callable[[], list[str]] | None = None,
    default: bool = False,
    count: Callable[[], int] | None = None,
) -> Callable[[SuiteBuilder], SuiteBuilder]:
    """Decorator registering ``build(data_root) -> Suite`` as suite ``name`` (``default``: the suite commands use
    when none is named; the embedded smoke suite is; ``count``: its number of cases without its data, for plans
    and time estimates before a download)."""

    def decorator(build: SuiteBuilder) -> SuiteBuilder:
        if name in _SUITES and _SUITES[name].build is not build:
            raise ValueError(f"suite {name!r} is already registered")
        _SUITES[name] = SuiteSpec(name, label, version, description, order, build, files, shipped, subjects, default,
                                   count)
        return build

    return decorator


def suite_specs() -> dict[str, SuiteSpec]:
    """Every registered suite, in leaderboard order."""
    load_plugins(SUITES_GROUP)
    return dict(sorted(_SUITES.items(), key=lambda item: (item[1].order, item[0])))


def available_suites() -> list[str]:
    return list(suite_specs())


def downloadable_suites() -> list[str]:
    return [name for name, spec in suite_specs().items() if spec.downloadable]


def get_suite(name: str) -> SuiteSpec:
    specs = suite_specs()
    if name not in specs:
        raise KeyError(f"unknown suite {name!r}{did_you_mean(name, specs)}; available: {', '.join(specs)}")
    return specs[name]


def default_suite() -> str:
    """The suite registered as the default (the first by order when none is)."""
    specs = suite_specs()
    return next((name for name, spec in specs.items() if spec.default), next(iter(specs)))


def load_suite(name: str | None, data_root: str | os.PathLike | None = None) -> Suite:
    """The suite ``name`` (None: :func:`default_suite`) with reference paths under the data root
    (see :func:`videobench.data.resolve_data_root`).

    Suites drawn by code render their images there on first use; the others raise
    :class:`~videobench.data.MissingDataError` naming the missing files and the download command.
    """
    return get_suite(name or default_suite()).build(resolve_data_root(data_root))


def suite_label(name: str) -> str:
    """The display label of a suite (its name when it is not registered)."""
    spec = suite_specs().get(name)
    return spec.label if spec is not None else name


def suite_order(names: Iterable[str]) -> list[str]:
    """``names`` in leaderboard order: registered suites by their order, others after them by name."""
    specs = suite_specs()
    names = set(names)
    known = [name for name in specs if name in names]
    return known + sorted(names - set(known))
