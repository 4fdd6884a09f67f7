"""VideoBench: a benchmark for zero-shot subject-driven ("customized") video generation.

The flow (see ``docs/architecture.md``)::

    suite spec -> cases -> generate (a method) -> RESULTS/<method>/{run.json, cases.jsonl, videos/}
                                                   -> score -> scores.csv, leaderboard.csv -> report (HTML)

Every stage reads only what the previous stage wrote to disk.
"""

__version__ = "0.1.0"
