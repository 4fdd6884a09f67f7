"""``videobench report``: one or more RESULTS folders -> one self-contained HTML leaderboard.

The page is built in :mod:`videobench.reporting.page` from the folders (:mod:`~videobench.reporting.load`), our tables
(:mod:`~videobench.reporting.tables`), the paper's tables (:mod:`~videobench.reporting.paper`), plots
(:mod:`~videobench.reporting.plots`) and each case's pictures (:mod:`~videobench.reporting.media`).
"""

from videobench.reporting.load import ReportInputError, load_results, resolve_results_dirs
from videobench.reporting.page import DEFAULT_REPORT_NAME, build_context, render_report, write_report
from videobench.reporting.tables import rank_marks

__all__ = [
    "DEFAULT_REPORT_NAME", "ReportInputError", "build_context", "load_results", "rank_marks", "render_report",
    "resolve_results_dirs", "write_report",
]
