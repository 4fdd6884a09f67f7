"""Typed settings of :mod:`videobench.api`: one field per generic flag of the ``videobench`` command line.

Method options and metric options stay plain mappings (``{"steps": 2}``, ``{"clip": {"model": "ViT-L-14"}}``):
the registered plugin validates them exactly as it validates ``-o KEY=VALUE`` and ``-M FAMILY.KEY=VALUE`` (strings
are parsed into the option's type, a config file's values are taken as they are). The settings check only what
the command line's option types check (counts at least 0 or 1, a known precision), with the flag's name in the
message, so that the API and the CLI refuse the same values with the same words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videobench.errors import SettingsError

DTYPES = ("auto", "fp32", "fp16", "bf16")
SCORE_DTYPES = ("fp32", "fp16", "bf16")
LAUNCHERS = ("slurm", "local")

PathLike = str | os.PathLike


def _at_least(value: int | float | None, minimum: int, flag: str) -> None:
    if value is not None and value < minimum:
        raise SettingsError(f"{flag} {value}: must be at least {minimum}")


def _choice(value: str, choices: Sequence[str], flag: str) -> None:
    if value not in choices:
        raise SettingsError(f"{flag} {value!r}: choose one of {', '.join(choices)}")


@dataclass(kw_only=True)
class LaunchSettings:
    """``--launcher slurm|local --shards N`` and the job's resources (:mod:`videobench.launcher`)."""

    launcher: str
    shards: int = 1
    partition: str | None = None
    time_min: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    launcher_config: PathLike | None = None  # a YAML/JSON mapping of submitit parameters
    log_dir: PathLike | None = None  # default RESULTS/.slurm
    wait: bool = False

    def __post_init__(self) -> None:
        _choice(self.launcher, LAUNCHERS, "--launcher")
        _at_least(self.shards, 1, "--shards")
        _at_least(self.time_min, 1, "--time")
        _at_least(self.gpus, 0, "--gpus")
        _at_least(self.cpus, 1, "--cpus")
        _at_least(self.mem_gb, 0, "--mem")


@dataclass(kw_only=True)
class WeightsSettings:
    """Where model weights come from: ``--weights-dir``, ``--download``, ``--random-weights``."""

    weights_dir: PathLike | None = None
    download: bool = False  # False: $VIDEOBENCH_DOWNLOAD decides
    random_weights: bool = False

    def weights_config(self):
        """The :class:`~videobench.weights.WeightsConfig` of these settings."""
        from videobench.weights import WeightsConfig

        download = {"download": True} if self.download else {}  # else $VIDEOBENCH_DOWNLOAD decides
        return WeightsConfig(weights_dir=self.weights_dir, **download)


@dataclass(kw_only=True)
class CaseSettings(WeightsSettings):
    """Which cases a generation runs and how: the flags ``generate`` and ``run`` share."""

    suite: str | None = None  # None: the smoke suite
    data_root: PathLike | None = None
    limit: int | None = None
    cases: Sequence[str] | None = None  # case ids
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    preset: str | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    shard: str | None = None  # "i/n"
    overwrite: bool = False

    def __post_init__(self) -> None:
        _at_least(self.limit, 0, "--limit")
        for flag in ("frames", "height", "width"):
            _at_least(getattr(self, flag), 1, f"--{flag}")
        _choice(self.dtype, DTYPES, "--dtype")


@dataclass(kw_only=True)
class MetricSettings(WeightsSettings):
    """Which metrics score and how: ``--metrics``, ``-M``, ``--score-dtype``, ``--cache-dir``."""

    metrics: Sequence[str] | None = None  # columns or families; None: the default families
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # family -> options
    score_dtype: str = "fp32"
    cache_dir: PathLike | None = None

    def __post_init__(self) -> None:
        _choice(self.score_dtype, SCORE_DTYPES, "--score-dtype")


@dataclass(kw_only=True)
class GenerateSettings(CaseSettings):
    """``videobench generate``: one method over a suite's cases into ``out/<run name>/``."""

    method: str
    out: PathLike
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's options (-o, --config)
    launch: LaunchSettings | None = None


@dataclass(kw_only=True)
class ScoreSettings(MetricSettings):
    """``videobench score``: every method folder of ``results``."""

    results: PathLike
    device: str = "cpu"
    shard: str | None = None  # "i/n": this share's values into the cache only
    launch: LaunchSettings | None = None


@dataclass(kw_only=True)
class ReportSettings:
    """``videobench report``: one HTML page from one or more RESULTS folders."""

    results: PathLike | Sequence[PathLike]
    out: PathLike | None = None  # default RESULTS/leaderboard.html for one folder


@dataclass(kw_only=True)
class EvaluateSettings(CaseSettings, MetricSettings):
    """``videobench run``: generate, score and report; ``device`` serves both stages.

    ``preset`` applies to the methods that have it; the others (weight-free reference rows) run as they are.
    """

    out: PathLike = Path("results")
    methods: Sequence[str] | None = None  # None: the methods registered as the default run
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # method -> options

    def __post_init__(self) -> None:
        CaseSettings.__post_init__(self)
        MetricSettings.__post_init__(self)


@dataclass(kw_only=True)
class ReproduceSettings(MetricSettings):
    """``videobench reproduce table1|table2``: the plan of a published table, run into ``out``.

    ``row_options`` maps row ids (``METHOD@SETTING``) or method names to options. ``out`` may stay ``None`` for
    ``plan_only``. ``shard`` runs one share of every row and of the scoring (no tables, no page): what one task of
    ``launch`` does; the final run without it writes the tables and the page.
    """

    table: str
    out: PathLike | None = None
    row_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plan_only: bool = False
    suite: str | None = None  # every row on this suite instead of the published ones
    data_root: PathLike | None = None
    limit: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    preset: str | None = None
    shard: str | None = None
    launch: LaunchSettings | None = None

    def __post_init__(self) -> None:
        MetricSettings.__post_init__(self)
        _at_least(self.limit, 0, "--limit")
        _choice(self.dtype, DTYPES, "--dtype")
