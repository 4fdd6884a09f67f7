"""VideoBench: a benchmark for zero-shot subject-driven ("customized") video generation.

The flow (see ``docs/architecture.md``)::

    suite spec -> cases -> generate (a method) -> RESULTS/<method>/{run.json, cases.jsonl, videos/}
                                                   -> score -> scores.csv, leaderboard.csv -> report (HTML)

Every stage reads only what the previous stage wrote to disk.

The Python API is :mod:`videobench.api` (``from videobench.api import generate, score, report, reproduce``);
``videobench.evaluate``, the settings, result and error classes are also reachable from here, imported on first
use so that ``import videobench`` stays light. ``generate``, ``score``, ``report`` and ``reproduce`` are reached
through :mod:`videobench.api` only: ``videobench.generate`` (and the others) name the modules that do the work, and
Python replaces a package attribute by its submodule once that is imported.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Names served from :mod:`videobench.api` on first access (PEP 562).
_API_NAMES = (
    "Console", "DataMissingError", "EvaluateResult", "EvaluateSettings", "GenerateResult", "GenerateSettings",
    "LaunchError", "LaunchSettings", "ReportSettings", "ReproduceResult", "ReproduceSettings", "ResultsFolderError",
    "ScoreResult", "ScoreSettings", "SettingsError", "VideoBenchError", "WeightsMissingError", "evaluate",
)

__all__ = ["__version__", "api", *_API_NAMES]


def __getattr__(name: str) -> Any:
    if name == "api" or name in _API_NAMES:
        import importlib

        api = importlib.import_module("videobench.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'videobench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "api", *_API_NAMES})
