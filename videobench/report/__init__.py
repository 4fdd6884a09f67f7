"""``videobench report``: one or more RESULTS folders -> one self-contained HTML leaderboard.

The page is built in :mod:`videobench.report.page` from the folders (:mod:`~videobench.report.load`), our tables
(:mod:`~videobench.report.tables`), the paper's tables (:mod:`~videobench.report.paper`), plots
(:mod:`~videobench.report.plots`) and each case's pictures (:mod:`~videobench.report.media`).
"""

from videobench.report.load import ReportInputError, load_results, resolve_results_dirs
from videobench.report.page import DEFAULT_REPORT_NAME, build_context, render_report, write_report
from videobench.report.tables import rank_marks

__all__ = [
    "DEFAULT_REPORT_NAME", "ReportInputError", "build_context", "load_results", "rank_marks", "render_report",
    "resolve_results_dirs", "write_report",
]
