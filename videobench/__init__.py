"""VideoBench: a benchmark for zero-shot subject-driven ("customized") video generation.

The flow (see ``docs/architecture.md``)::

    suite spec -> cases -> generate (a method) -> RESULTS/<method>/{run.json, cases.jsonl, videos/}
                                                   -> score -> scores.csv, leaderboard.csv -> report (HTML)

Every stage reads only what the previous stage wrote to disk.

The Python API: ``videobench.generate``, ``videobench.score``, ``videobench.report``, ``videobench.reproduce`` and
``videobench.evaluate`` (= generate + score + report), with their settings, result and error classes, all defined in
:mod:`videobench.api` and imported from there on first use, so that ``import videobench`` stays light. The modules
that do the work are named for it: :mod:`videobench.generation`, :mod:`videobench.scoring`,
:mod:`videobench.reporting`, :mod:`videobench.reproduction`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Names served from :mod:`videobench.api` on first access (PEP 562).
_API_NAMES = (
    "Console", "DataMissingError", "EvaluateResult", "EvaluateSettings", "GenerateResult", "GenerateSettings",
    "LaunchError", "LaunchSettings", "ReportSettings", "ReproduceResult", "ReproduceSettings", "ResultsFolderError",
    "ScoreResult", "ScoreSettings", "SettingsError", "VideoBenchError", "WeightsMissingError", "evaluate", "generate",
    "report", "reproduce", "score",
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
