"""Scatter plots of the leaderboard, drawn with matplotlib as inline SVG (the page needs no network or file).

Which plots: ``videobench/templates/plots.json`` (data: an id, a title and the x and y score columns of each; by
default subject fidelity DINO-I against dynamic degree, and text alignment CLIP-T against CLIP-I). Each plot has
one point per (method, suite) of our leaderboard with its 95% bootstrap interval on both axes as error bars, and
the paper's published Table 1 points beside them (hollow markers). Rows with random weights are not compared with
the paper: they get a panel of their own (``<id>-random``), without the paper's points. A plot whose columns the
leaderboard lacks is left out with a note.

Readability: no text is placed on the axes. The marker shape says the suite, filled is ours and hollow the paper,
and the colour says the method: each row of ours and each published method has its own colour (no greys, which
read as "reference"), explained by a legend table outside the axes, so no label can overlap another label, a point
or the frame whatever the number of rows (:func:`text_boxes` gives the text extents a test checks).

Every drawn point is an SVG group with an id (``ours-<method>-<suite>`` / ``paper-<method>-<suite>``, made of
letters, digits and dashes) and a ``<title>`` element naming it, so a browser test (and a reader hovering) can
find each point. Text comes from users (method names), so math text parsing is off and matplotlib escapes it in
the SVG; the SVG is deterministic (fixed hash salt, no date).
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from videobench.published import published_frame
from videobench.reporting.tables import column_label, flag, is_random, number, row_key
from videobench.suites import suite_label, suite_order

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
#: tab20 without its two greys, strong shades first: distinct colours none of which reads as "reference grey"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
#: legend entries per legend column before another column starts
LEGEND_ROWS = 24
_RC = {"svg.hashsalt": "videobench", "text.parse_math": False, "svg.fonttype": "none"}


@dataclass
class Plot:
    plot_id: str
    title: str
    svg: str = ""
    note: str = ""
    #: what the plot shows, beyond its title (the figure caption)
    caption: str = ""


def plot_specs() -> list[dict[str, str]]:
    return json.loads(resources.files("videobench").joinpath("templates", "plots.json").read_text(encoding="utf-8"))


def point_id(kind: str, method: str, suite: str) -> str:
    """An SVG id for a point: only letters, digits and dashes (user text never reaches an attribute raw)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{kind}-{method}-{suite}").strip("-").lower()


def colours(count: int) -> list[str]:
    """``count`` distinct, non-grey colours: :data:`PALETTE`, then evenly spaced hues at two lightnesses."""
    if count <= len(PALETTE):
        return list(PALETTE[:count])
    extra = count - len(PALETTE)
    generated = []
    for index in range(extra):
        hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps: neighbours far apart on the wheel
        r, g, b = colorsys.hls_to_rgb(hue, 0.35 if index % 2 else 0.6, 0.75)
        generated.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return list(PALETTE) + generated


def _value(record: dict[str, Any], column: str) -> tuple[float | None, float | None, float | None]:
    return number(record.get(column)), number(record.get(f"{column}_ci_low")), number(record.get(f"{column}_ci_high"))


def _error(value: float, low: float | None, high: float | None) -> list[list[float]]:
    return [[value - low if low is not None else 0.0], [high - value if high is not None else 0.0]]


def _legend_handles(suites: list[str], marker: dict[str, str], entries: list[tuple[str, str]], paper: bool,
                    random: bool = False):
    """The legend table: what the shapes mean (suites), filled vs hollow, and one colour per method."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def header(text: str) -> Line2D:
        return Line2D([], [], linestyle="none", marker="", label=text)

    handles: list[Line2D | Patch] = [header("Shape: suite")]
    handles += [Line2D([], [], linestyle="none", marker=marker[s], color="black", markersize=5, label=suite_label(s))
                for s in suites]
    handles.append(Line2D([], [], linestyle="none", marker="o", color="black", markersize=5,
                          label="filled: ours (bars: 95% interval)"))
    if paper:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="black",
                              markersize=5, label="hollow: paper, Table 1"))
    handles.append(header("Colour: method" + (", RANDOM WEIGHTS" if random else "")))
    handles += [Patch(facecolor=colour, edgecolor=colour, label=label) for label, colour in entries]
    return handles


def figure(spec: dict[str, str], board: pd.DataFrame, random_panel: bool = False):
    """The matplotlib Figure of one plot (see the module docstring), or None when nothing can be drawn.

    ``random_panel`` selects the rows drawn: False, the rows with real weights beside the paper's points; True, the
    rows with random weights alone.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure manager

    x, y = spec["x"], spec["y"]
    records = [r for r in board.to_dict("records") if is_random(r) == random_panel]
    points = [(r, _value(r, x), _value(r, y)) for r in records]
    points = [(r, vx, vy) for r, vx, vy in points if vx[0] is not None and vy[0] is not None]
    paper = published_frame("table1") if not random_panel else None
    paper_points = [] if paper is None else [
        (r, number(r.get(x)), number(r.get(y))) for r in paper.to_dict("records")]
    paper_points = [(r, vx, vy) for r, vx, vy in paper_points if vx is not None and vy is not None]
    if not points and not paper_points:
        return None
    suites = suite_order([str(r["suite"]) for r, _, _ in points] + [str(r["suite"]) for r, _, _ in paper_points])
    marker = {suite: MARKERS[i % len(MARKERS)] for i, suite in enumerate(suites)}
    ours_keys = list(dict.fromkeys(row_key(r) for r, _, _ in points))
    paper_keys = list(dict.fromkeys(str(r["method"]) for r, _, _ in paper_points))
    palette = colours(len(ours_keys) + len(paper_keys))
    colour_of = {("ours", key): palette[i] for i, key in enumerate(ours_keys)}
    colour_of.update({("paper", key): palette[len(ours_keys) + i] for i, key in enumerate(paper_keys)})
    reference = {row_key(r) for r, _, _ in points if flag(r.get("reference"))}

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for record, (vx, lx, hx), (vy, ly, hy) in points:
        method, suite = str(record["method"]), str(record["suite"])
        assert vx is not None and vy is not None  # points without both values are dropped above
        container = ax.errorbar([vx], [vy], xerr=_error(vx, lx, hx), yerr=_error(vy, ly, hy), fmt=marker[suite],
                                color=colour_of[("ours", row_key(record))], capsize=3, markersize=6)
        container.lines[0].set_gid(point_id("ours", method, suite))
    for record, vx, vy in paper_points:
        assert vx is not None and vy is not None  # paper_points without both values are dropped above
        suite = str(record["suite"])
        (line,) = ax.plot([vx], [vy], marker[suite], markerfacecolor="none", markersize=6, markeredgewidth=1.3,
                          markeredgecolor=colour_of[("paper", str(record["method"]))])
        line.set_gid(point_id("paper", str(record["method"]), suite))  # named by its <title> (hover)
    entries = [(f"{key} (reference)" if key in reference else key, colour_of[("ours", key)]) for key in ours_keys]
    entries += [(f"{key} (paper)", colour_of[("paper", key)]) for key in paper_keys]
    handles = _legend_handles(suites, marker, entries, paper=bool(paper_points), random=random_panel)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, fontsize=7,
              frameon=False, handlelength=1.2, ncols=math.ceil(len(handles) / LEGEND_ROWS))
    ax.set_xlabel(column_label(x))
    ax.set_ylabel(column_label(y))
    title = spec["title"] + (" — RANDOM WEIGHTS (not comparable to the paper)" if random_panel else "")
    ax.set_title(title, fontsize=9, color="#b00020" if random_panel else "black")
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    return fig


def text_boxes(fig) -> dict[str, Any]:
    """The display-space extents of a drawn figure's texts, points and axes frame (what a layout test checks).

    Returns ``{"texts": [(text, Bbox)], "points": [(gid, Bbox)], "frame": Bbox, "figure": Bbox}``; the figure box
    is the tight box ``savefig(bbox_inches="tight")`` keeps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    with _rc():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        ticks, drawn_ticks = set(), set()
        for axes in fig.axes:
            for axis in (axes.xaxis, axes.yaxis):
                low, high = sorted(axis.get_view_interval())
                slack = (high - low) * 1e-9
                for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                    labels = {id(tick.label1), id(tick.label2)}
                    ticks |= labels
                    if low - slack <= tick.get_loc() <= high + slack:  # what matplotlib draws
                        drawn_ticks |= labels
        texts = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text)
                 if t.get_visible() and t.get_text().strip() and (id(t) not in ticks or id(t) in drawn_ticks)]
        points = []
        for line in fig.findobj(lambda artist: bool(getattr(artist, "get_gid", lambda: None)())):
            if line.get_gid().startswith(("ours-", "paper-")):
                (px, py), = line.get_transform().transform(line.get_xydata())
                radius = line.get_markersize() / 72 * fig.dpi / 2
                points.append((line.get_gid(), Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)))
        ax = fig.axes[0]
        return {"texts": texts, "points": points, "frame": ax.get_window_extent(renderer),
                "figure": fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)}


def _rc():
    import matplotlib

    return matplotlib.rc_context(_RC)


def _svg(fig) -> str:
    buffer = io.StringIO()
    with _rc():
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def draw_plot(spec: dict[str, str], board: pd.DataFrame, random_panel: bool = False) -> Plot:
    """One scatter plot (see the module docstring) as an SVG string."""
    x, y = spec["x"], spec["y"]
    plot_id = spec["id"] + ("-random" if random_panel else "")
    title = spec["title"] + (" — random weights" if random_panel else "")
    what = f"{column_label(y)} against {column_label(x)}"
    caption = (f"{what} of our runs with random weights, in a panel of their own: their numbers say nothing about "
               "the methods and are not comparable to the paper's." if random_panel else
               f"{what}: our runs with real weights (filled, 95% bootstrap intervals) beside the paper's Table 1 "
               "(hollow).")
    plot = Plot(plot_id, title, caption=caption)
    if x not in board or y not in board:
        plot.note = f"not drawn: the leaderboard has no {x if x not in board else y} column (score it to see this plot)"
        return plot
    with _rc():
        fig = figure(spec, board, random_panel)
    if fig is None:
        plot.note = "nothing to draw"
        return plot
    plot.svg = _titled(_svg(fig), board, published_frame("table1"))
    ours = [r for r in board.to_dict("records") if is_random(r) == random_panel
            and number(r.get(x)) is not None and number(r.get(y)) is not None]
    if not ours and not random_panel:
        randoms = sum(is_random(r) for r in board.to_dict("records"))
        plot.note = ("our runs all use random weights: they are drawn in a panel of their own, not beside the paper"
                     if randoms else "none of our runs has both values yet; only the paper's points are drawn")
    return plot


def _titled(svg: str, board: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Add a ``<title>`` (hover text, and what a test reads) inside each point's group; drop the XML prologue."""
    from xml.sax.saxutils import escape

    svg = svg[svg.index("<svg"):]
    titles = {point_id("ours", str(r["method"]), str(r["suite"])):
              f"{r['method']} on {suite_label(str(r['suite']))}" + (" (random weights)" if is_random(r) else "")
              for r in board.to_dict("records")}
    titles.update({point_id("paper", str(r["method"]), str(r["suite"])): f"{r['method']} (paper) on "
                   f"{suite_label(str(r['suite']))}" for r in paper.to_dict("records")})
    for gid, title in titles.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{escape(title)}</title>', 1)
    return svg


def draw_plots(board: pd.DataFrame) -> list[Plot]:
    """Per plot spec: the comparison with the paper (real-weight rows), and a panel of the random-weight rows when
    there are any."""
    has_random = any(is_random(r) for r in board.to_dict("records"))
    plots = []
    for spec in plot_specs():
        plots.append(draw_plot(spec, board))
        if has_random:
            plots.append(draw_plot(spec, board, random_panel=True))
    return plots
