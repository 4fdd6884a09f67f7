"""Scatter plots of the leaderboard, drawn with matplotlib as inline SVG (the page needs no network or file).

Which plots: ``videobench/templates/plots.json`` (data: an id, a title and the x and y score columns of each; by
default subject fidelity DINO-I against dynamic degree, and text alignment CLIP-T against CLIP-I). Each plot has
one point per (method, suite) of our leaderboard with its 95% bootstrap interval on both axes as error bars, and
the paper's published Table 1 points beside them (hollow markers). A plot whose columns the leaderboard lacks is
left out with a note.

Every drawn point is an SVG group with an id (``ours-<method>-<suite>`` / ``paper-<method>-<suite>``, made of
letters, digits and dashes) and a ``<title>`` element naming it, so a browser test (and a reader hovering) can
find each point. Text comes from users (method names), so math text parsing is off and matplotlib escapes it in
the SVG; the SVG is deterministic (fixed hash salt, no date).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from videobench.published import published_frame
from videobench.report.tables import column_label, flag, number
from videobench.suites import suite_label, suite_order

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass
class Plot:
    plot_id: str
    title: str
    svg: str = ""
    note: str = ""


def plot_specs() -> list[dict[str, str]]:
    return json.loads(resources.files("videobench").joinpath("templates", "plots.json").read_text(encoding="utf-8"))


def point_id(kind: str, method: str, suite: str) -> str:
    """An SVG id for a point: only letters, digits and dashes (user text never reaches an attribute raw)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{kind}-{method}-{suite}").strip("-").lower()


def _value(record: dict[str, Any], column: str) -> tuple[float | None, float | None, float | None]:
    return number(record.get(column)), number(record.get(f"{column}_ci_low")), number(record.get(f"{column}_ci_high"))


def _error(value: float, low: float | None, high: float | None) -> list[list[float]]:
    return [[value - low if low is not None else 0.0], [high - value if high is not None else 0.0]]


def draw_plot(spec: dict[str, str], board: pd.DataFrame) -> Plot:
    """One scatter plot (see the module docstring) as an SVG string."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure manager

    x, y = spec["x"], spec["y"]
    plot = Plot(spec["id"], spec["title"])
    if x not in board or y not in board:
        plot.note = f"not drawn: the leaderboard has no {x if x not in board else y} column (score it to see this plot)"
        return plot
    paper = published_frame("table1")
    suites = suite_order(list(board["suite"].astype(str)) + list(paper["suite"].astype(str)))
    marker = {suite: MARKERS[i % len(MARKERS)] for i, suite in enumerate(suites)}
    with matplotlib.rc_context({"svg.hashsalt": "videobench", "text.parse_math": False, "svg.fonttype": "none"}):
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.subplots()
        drawn = 0
        for index, record in enumerate(board.to_dict("records")):
            (vx, lx, hx), (vy, ly, hy) = _value(record, x), _value(record, y)
            if vx is None or vy is None:
                continue
            method, suite = str(record["method"]), str(record["suite"])
            colour = "#888888" if flag(record.get("reference")) else f"C{index % 10}"
            container = ax.errorbar([vx], [vy], xerr=_error(vx, lx, hx), yerr=_error(vy, ly, hy),
                                    fmt=marker[suite], color=colour, capsize=3, markersize=6,
                                    label=f"{method} ({suite_label(suite)})")
            container.lines[0].set_gid(point_id("ours", method, suite))
            ax.annotate(method, (vx, vy), textcoords="offset points", xytext=(5, 4), fontsize=7)
            drawn += 1
        paper_drawn = False
        for record in paper.to_dict("records"):
            vx, vy = number(record.get(x)), number(record.get(y))
            if vx is None or vy is None:
                continue
            suite = str(record["suite"])
            (line,) = ax.plot([vx], [vy], marker[suite], markerfacecolor="none", markeredgecolor="#777777",
                              markersize=6, label="paper, Table 1" if not paper_drawn else None)
            line.set_gid(point_id("paper", str(record["method"]), suite))  # named by its <title> (hover)
            paper_drawn = True
        ax.set_xlabel(column_label(x))
        ax.set_ylabel(column_label(y))
        ax.set_title(f"{spec['title']} (ours filled with 95% intervals; paper hollow)", fontsize=8)
        ax.legend(fontsize=6, loc="best", frameon=False)
        ax.grid(alpha=0.3)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plot.svg = _titled(buffer.getvalue(), board, paper)
    if not drawn:
        plot.note = "none of our runs has both values yet; only the paper's points are drawn"
    return plot


def _titled(svg: str, board: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Add a ``<title>`` (hover text, and what a test reads) inside each point's group; drop the XML prologue."""
    from xml.sax.saxutils import escape

    svg = svg[svg.index("<svg"):]
    titles = {point_id("ours", str(r["method"]), str(r["suite"])): f"{r['method']} on {suite_label(str(r['suite']))}"
              for r in board.to_dict("records")}
    titles.update({point_id("paper", str(r["method"]), str(r["suite"])): f"{r['method']} (paper) on "
                   f"{suite_label(str(r['suite']))}" for r in paper.to_dict("records")})
    for gid, title in titles.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{escape(title)}</title>', 1)
    return svg


def draw_plots(board: pd.DataFrame) -> list[Plot]:
    return [draw_plot(spec, board) for spec in plot_specs()]
