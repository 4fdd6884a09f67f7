"""The HTML leaderboard: tables with known numbers, marks, paper tables, escaping, banner, and a real browser."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_score import (  # noqa: F401 (refs is a fixture)
    BLUE,
    RED,
    REFERENCE_RUN,
    add_method,
    build_results,
    fake_metrics,
    refs,
    run,
    solid,
)
from videobench import reporting as report_module
from videobench.reporting import rank_marks, write_report

CHROMIUM = shutil.which("chromium") or (Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)


class TableReader(HTMLParser):
    """Collects ``{table id: [(row label, row class, [(cell text, cell class), ...]), ...]}``."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list] = {}
        self.table = None
        self.row = None
        self.cell = None
        self.in_ci = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self.table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self.table is not None and "data-label" in attrs:
            self.row = (attrs["data-label"], attrs.get("class", ""), [])
            self.table.append(self.row)
        elif tag == "td" and self.row is not None:
            self.cell = ["", attrs.get("class", "")]
        elif tag == "span" and "ci" in (attrs.get("class") or "").split():
            self.in_ci = True

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.row[2].append((self.cell[0].strip(), self.cell[1]))
            self.cell = None
        elif tag == "span":
            self.in_ci = False
        elif tag == "table":
            self.table = None
            self.row = None

    def handle_data(self, data):
        if self.cell is not None and not self.in_ci:
            self.cell[0] += data


def read_tables(text: str) -> dict[str, list]:
    reader = TableReader()
    reader.feed(text)
    return reader.tables


#: what ``videobench generate --method customvideox`` records for the full method and the 3D-RA ablation
FULL_CVX = {"kind": "ours", "paper_row": "CustomVideoX", "table2_setting": "+ERAE"}
CVX_3DRA = {"kind": "ours", "table2_setting": "3D-RA"}


def build_full_results(tmp_path: Path, refs: Path, **metric_kwargs) -> Path:
    results = build_results(tmp_path, refs)
    red_ref = [str(refs / "red.png")]
    add_method(results, "beta", [
        {"case_id": "still", "frames": solid([RED] * 3), "references": red_ref},
        {"case_id": "still2", "frames": solid([RED] * 3), "references": red_ref, "subject": "cube"},
    ])
    add_method(results, "customvideox", [{"case_id": "v1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="videobench", run_info=FULL_CVX)
    add_method(results, "customvideox-3d-ra", [{"case_id": "v1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="videobench", run_info=CVX_3DRA)
    add_method(results, "ms-diffusion-i2v", [{"case_id": "d1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="dreambench", run_info={"kind": "two-stage", "paper_row": "MS-Diffusion"})
    run(results, fake_metrics(**metric_kwargs))
    return results


def test_rank_marks_ties_and_second():
    assert rank_marks([85.47, 84.39, 85.47, None, 76.42]) == ["best", "second", "best", "", ""]
    assert rank_marks([1.004, 1.0, 0.5]) == ["best", "best", "second"]  # compared as displayed
    assert rank_marks([3.0, None]) == ["", ""]  # one value: nothing to compare


def test_paper_rows_come_from_run_json_not_folder_names(tmp_path, refs):
    """A folder named like a paper method matches nothing; run.json's paper_row / table2_setting decide."""
    results = tmp_path / "RESULTS"
    red_ref = [str(refs / "red.png")]
    add_method(results, "ms-diffusion-i2v", [{"case_id": "a", "frames": solid([RED] * 3), "references": red_ref}],
               suite="dreambench")  # no paper_row in its run.json
    add_method(results, "run7", [{"case_id": "a", "frames": solid([RED] * 3), "references": red_ref}],
               suite="dreambench", run_info={"kind": "two-stage", "paper_row": "λ-Eclipse"})
    add_method(results, "my-ablation", [{"case_id": "a", "frames": solid([RED] * 3), "references": red_ref}],
               suite="videobench", run_info={"kind": "ours", "table2_setting": "+TAB"})
    run(results)
    tables = read_tables(write_report(results, progress=False).read_text())
    labels = [label for label, _, _ in tables["paper-table1"]]
    assert labels[labels.index("λ-Eclipse + CogVideoX-5B-I2V") + 1] == "ours: run7"
    assert "ours: ms-diffusion-i2v" not in labels
    paper2 = [label for label, _, _ in tables["paper-table2"]]
    assert paper2[paper2.index("+TAB") + 1] == "ours: my-ablation"


def test_paper_tables_as_read():
    paper = Path(report_module.__file__).parents[1] / "paper"
    table1 = pd.read_csv(paper / "table1.csv")
    table2 = pd.read_csv(paper / "table2.csv")
    assert len(table1) == 14 and set(table1["suite"]) == {"dreambench", "videobench"}
    assert list(table1[table1.suite == "videobench"].sort_values("row")["method"]) == [
        "BLIP-Diffusion", "IP-Adapter", "λ-Eclipse", "SSR-Encoder", "MS-Diffusion", "VideoBooth", "CustomVideoX"]
    columns = ["clip_t", "clip_i", "dino_i", "t_cons", "dynamic"]
    ours = table1[(table1.method == "CustomVideoX") & (table1.suite == "videobench")][columns].to_numpy()
    np.testing.assert_allclose(ours[0], table2[table2.setting == "+ERAE"][columns].to_numpy()[0])
    booth = table1[(table1.method == "VideoBooth") & (table1.suite == "videobench")]
    assert float(booth["dynamic"].iloc[0]) == 46.00  # the garbled \frac{46.00}{46.00} cell
    # the underlines that survived the extraction are the second-best value of each column
    for suite, seconds in {"dreambench": [34.01, 84.39, 87.54, 96.65, 56.64],
                           "videobench": [32.64, 90.26, 91.29, 97.35, 46.00]}.items():
        part = table1[table1.suite == suite]
        for column, second in zip(columns, seconds):
            marks = rank_marks(list(part[column]))
            assert {v for v, m in zip(part[column], marks) if m == "second"} == {second}, (suite, column)
    assert (Path(report_module.__file__).parents[2] / "reports" / "paper" / "table1.csv").is_file()


def test_report_tables_known_numbers(tmp_path, refs):
    results = build_full_results(tmp_path, refs)
    out = write_report(results, progress=False)
    assert out == results / "leaderboard.html"
    text = out.read_text()
    tables = read_tables(text)
    board = pd.read_csv(results / "leaderboard.csv").set_index("method")

    ours = {label: (kind, cells) for label, kind, cells in tables["ours"]}
    assert set(ours) == {"alpha", "beta", "customvideox", "customvideox-3d-ra", "ms-diffusion-i2v", "reference-still"}
    assert ours["reference-still"][0] == "row-reference"
    # Table 1 layout: DreamBench | VideoBench | smoke, five columns each (+ counts)
    assert len(ours["alpha"][1]) == 3 * 5 + 1
    smoke = {label: cells[10:15] for label, (_, cells) in ours.items()}
    assert smoke["alpha"][1][0] == f"{board.loc['alpha', 'clip_i']:.2f}"
    assert smoke["beta"][1] == ("100.00", "num best")  # CLIP-I: beta best
    assert smoke["alpha"][1][1] == "num second"  # ... alpha second
    assert smoke["reference-still"][1][1] == "num "  # calibration rows are not ranked
    assert smoke["alpha"][4] == ("50.00", "num best") and smoke["beta"][4] == ("0.00", "num second")  # D.D
    assert ours["alpha"][1][0] == ("—", "num ")  # no DreamBench run
    assert "[0.00, 100.00]" in text  # alpha's D.D interval

    paper1 = [(label, cells) for label, _, cells in tables["paper-table1"]]
    labels = [label for label, _ in paper1]
    assert labels.index("ours: customvideox") == labels.index("CustomVideoX") + 1
    assert labels.index("ours: ms-diffusion-i2v") == labels.index("MS-Diffusion + CogVideoX-5B-I2V") + 1
    custom = dict(paper1)["CustomVideoX"]
    assert custom[0] == ("34.28", "num best") and custom[5] == ("33.38", "num best")
    assert dict(paper1)["MS-Diffusion + CogVideoX-5B-I2V"][9] == ("54.00", "num best")
    paper2 = [label for label, _, _ in tables["paper-table2"]]
    assert paper2 == ["naive", "3D-RA", "ours: customvideox-3d-ra", "+TAB", "+ERAE", "ours: customvideox"]

    subjects = {label: cells for label, _, cells in tables["subjects-smoke"]}
    assert subjects["cube — alpha"][1][0] == "50.00" and subjects["ball — alpha"][1][0] == "100.00"
    assert "(no subject) — alpha" in subjects  # the malformed line is still listed, as failed
    assert text.count('class="thumb strip"') == 2 + 2 + 2 + 1 + 1 + 1  # one strip per decodable video
    assert "data:image/jpeg;base64," in text and "src=\"http" not in text and "file://" not in text
    assert 'id="random-banner"' not in text and 'id="failed-banner"' in text
    assert not list(results.glob(".leaderboard.html*"))


def test_user_text_is_escaped(tmp_path, refs):
    results = tmp_path / "RESULTS"
    add_method(results, "evil<b>", [
        {"case_id": "x1", "frames": solid([RED] * 3), "references": [str(refs / "red.png")],
         "prompt": "<script>alert(1)</script>", "subject": "<img src=x onerror=alert(2)>"},
        {"case_id": "x2", "references": [str(refs / "red.png")], "status": "failed", "error": "<i>oops</i>"},
    ])
    run(results)
    text = write_report(results, progress=False).read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "<i>oops</i>" not in text and "&lt;i&gt;oops&lt;/i&gt;" in text
    assert "evil<b>" not in text and "evil&lt;b&gt;" in text
    assert "<script" not in text.lower().replace("&lt;script", "")


def test_random_banner_and_missing_leaderboard(tmp_path, refs):
    results = build_results(tmp_path, refs)
    with pytest.raises(FileNotFoundError, match="videobench score"):
        write_report(results, progress=False)
    run(results, fake_metrics(random_weights=True))
    text = write_report(results, tmp_path / "out" / "page.html", progress=False).read_text()
    assert 'id="random-banner"' in text and "RANDOM WEIGHTS" in text
    assert "random weights</span>" in text  # the rows are tagged too


def test_report_write_is_atomic(tmp_path, refs, monkeypatch):
    results = build_results(tmp_path, refs)
    run(results)
    out = write_report(results, progress=False)
    before = out.read_text()

    def broken(context):
        raise RuntimeError("template exploded")

    monkeypatch.setattr("videobench.reporting.page.render_report", broken)
    with pytest.raises(RuntimeError):
        write_report(results, progress=False)
    assert out.read_text() == before and not list(results.glob(".leaderboard.html*"))


MEASURE = """
<script>
(function () {
  const table = document.getElementById('ours');
  const rows = [...table.tBodies[0].rows].map(row => ({
    label: row.dataset.label,
    cells: [...row.cells].slice(1).map(cell => cell.firstChild ? cell.firstChild.textContent.trim() : ''),
    visible: row.getBoundingClientRect().height > 0,
  }));
  const best = table.querySelector('td.best b');
  const second = table.querySelector('td.second u');
  const out = {
    height: table.getBoundingClientRect().height,
    width: table.getBoundingClientRect().width,
    rows: rows,
    bestWeight: getComputedStyle(best).fontWeight,
    secondDecoration: getComputedStyle(second).textDecorationLine,
    images: [...document.images].map(img => img.naturalWidth),
    plots: [...document.querySelectorAll('figure.plot')].map(figure => {
      const svg = figure.querySelector('svg');
      const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
      return {
        id: figure.id, width: box.width, height: box.height,
        points: [...figure.querySelectorAll('g[id^="ours-"], g[id^="paper-"]')].map(g => ({
          id: g.id, title: g.querySelector('title') ? g.querySelector('title').textContent : '',
          drawn: g.getBoundingClientRect().width > 0,
        })),
      };
    }),
  };
  const pre = document.createElement('pre');
  pre.id = 'measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def _chromium(args: list[str], tmp_path: Path, window: str = "1400,2000") -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={window}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path, refs):
    results = build_full_results(tmp_path, refs)
    page = write_report(results, progress=False)
    board = pd.read_csv(results / "leaderboard.csv").set_index("method")

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('<pre id="measure">') + len('<pre id="measure">')
    measured = json.loads(html.unescape(dom.stdout[start:dom.stdout.index("</pre>", start)]))
    assert measured["height"] > 100 and measured["width"] > 400  # really laid out
    rows = {row["label"]: row for row in measured["rows"]}
    assert set(rows) == set(board.index) and all(row["visible"] for row in rows.values())
    for method in board.index:  # the smoke group's five numbers, as drawn
        expected = [f"{board.loc[method, c]:.2f}" for c in ("clip_t", "clip_i", "dino_i", "t_cons", "dynamic")]
        if board.loc[method, "suite"] == "smoke":
            assert rows[method]["cells"][10:15] == expected, method
    assert int(measured["bestWeight"]) >= 700 and measured["secondDecoration"] == "underline"
    assert measured["images"] and all(width > 0 for width in measured["images"])  # data URIs decoded
    plots = {plot["id"]: plot for plot in measured["plots"]}
    assert set(plots) == {"plot-fidelity-vs-motion", "plot-text-vs-subject"}
    for plot in plots.values():  # drawn, with one point per (method, suite) of ours and every published point
        assert plot["width"] > 200 and plot["height"] > 150
        ours = {point["title"] for point in plot["points"] if point["id"].startswith("ours-") and point["drawn"]}
        assert ours == {f"{method} on {suite}" for method, suite in
                        zip(board.index, board["suite"].map({"smoke": "smoke", "videobench": "VideoBench",
                                                            "dreambench": "DreamBench"}))}
        paper = [point for point in plot["points"] if point["id"].startswith("paper-") and point["drawn"]]
        assert len(paper) == 14 and "CustomVideoX (paper) on VideoBench" in {point["title"] for point in paper}

    shot = tmp_path / "shot.png"
    result = _chromium([f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1400)
    assert (pixels < 200).mean() > 0.01  # text and table lines, not a blank page
    assert len(np.unique(pixels)) > 20


def test_plots_are_inline_svg_with_one_titled_point_per_run(tmp_path, refs):
    results = build_full_results(tmp_path, refs)
    text = write_report(results, progress=False).read_text()
    board = pd.read_csv(results / "leaderboard.csv")
    assert text.count('<figure class="plot"') == 2 and text.count("<svg") == 2
    assert 'href="http' not in text and 'src="http' not in text  # nothing is fetched: self-contained
    for method, suite in zip(board["method"], board["suite"]):
        gid = f"ours-{method}-{suite}".replace("+", "-").replace("_", "-").lower()
        assert text.count(f'<g id="{gid}"><title>') == 2, gid  # one point per plot
    # a plot whose columns were never scored is left out with a note, not drawn empty
    from videobench.reporting.plots import draw_plot

    plot = draw_plot({"id": "x", "title": "X", "x": "subject_consistency", "y": "dino_i"}, board)
    assert plot.svg == "" and "no subject_consistency column" in plot.note


def test_two_stage_intermediate_image_is_shown_beside_the_frames(tmp_path, refs):
    results = tmp_path / "RESULTS"
    folder = add_method(results, "two-stage", [
        {"case_id": "a", "frames": solid([RED] * 3), "references": [str(refs / "red.png")],
         "image": "images/a.png"}], run_info={"kind": "two-stage"})
    (folder / "images").mkdir()
    Image.new("RGB", (64, 64), BLUE).save(folder / "images" / "a.png")
    summary, _ = run(results)
    assert summary.ok and not summary.warnings  # the images folder is the layout's own, not stray
    text = write_report(results, progress=False).read_text()
    assert 'alt="intermediate image of a"' in text


def test_report_of_an_empty_results_folder(tmp_path):
    (tmp_path / "R").mkdir()
    with pytest.raises(ValueError, match="no method folder"):
        run(tmp_path / "R")
    with pytest.raises(FileNotFoundError, match="no leaderboard"):
        write_report(tmp_path / "R", progress=False)
    assert list((tmp_path / "R").iterdir()) == []  # an empty folder is an error that writes nothing


# ------------------------------------------------------------------------- several RESULTS folders (Table 1)
def build_suite_folders(tmp_path: Path, refs: Path) -> Path:
    """``results/dreambench`` and ``results/videobench``, one suite each, both holding ``customvideox``.

    The two customvideox runs differ on every column so a number in the wrong column group shows:
    DreamBench: a red still (CLIP-I 100, T.Cons 100, D.D 0), prompt of 6 characters (CLIP-T 0.60), a
    200 px wide reference (DINO-I 20); VideoBench: red/blue flashing (CLIP-I 50, T.Cons 0, D.D 100),
    18 characters (CLIP-T 1.80), a 210 px wide reference (DINO-I 21).
    """
    parent = tmp_path / "results"
    dream, video = parent / "dreambench", parent / "videobench"
    red, rgba = [str(refs / "red.png")], [str(refs / "red_rgba.png")]
    add_method(dream, "customvideox", [{"case_id": "dog-0", "frames": solid([RED] * 3), "references": red,
                                        "prompt": "a ball", "subject": "dog"}], suite="dreambench", run_info=FULL_CVX)
    add_method(dream, "alpha", [{"case_id": "dog-0", "frames": solid([RED, BLUE] * 2), "references": red,
                                 "subject": "dog"}], suite="dreambench")
    add_method(dream, "reference-still", [{"case_id": "dog-0", "frames": solid([RED] * 3), "references": red,
                                           "subject": "dog"}], suite="dreambench", run_info=REFERENCE_RUN)
    add_method(video, "customvideox", [{"case_id": "car-0", "frames": solid([RED, BLUE] * 2), "references": rgba,
                                        "prompt": "a red ball rolling", "subject": "car"}], suite="videobench",
               run_info=FULL_CVX)
    add_method(video, "customvideox-3d-ra", [{"case_id": "car-0", "frames": solid([RED] * 3), "references": red,
                                              "subject": "car"}], suite="videobench", run_info=CVX_3DRA)
    for folder in (dream, video):
        summary, _ = run(folder)
        assert summary.ok
    return parent


def _ours_row(text: str, method: str) -> list[tuple[str, str]]:
    rows = [cells for label, _, cells in read_tables(text)["ours"] if label == method]
    assert len(rows) == 1, f"{method}: {len(rows)} rows"
    return rows[0]


def test_report_merges_one_results_folder_per_suite(tmp_path, refs):
    parent = build_suite_folders(tmp_path, refs)
    dream, video = parent / "dreambench", parent / "videobench"
    out = write_report([dream, video], tmp_path / "reports" / "table1.html", progress=False)
    text = out.read_text()
    tables = read_tables(text)

    # one row per method folder name; DreamBench group = cells 0-4, VideoBench group = cells 5-9, then counts
    assert [label for label, _, _ in tables["ours"]] == ["alpha", "customvideox", "customvideox-3d-ra",
                                                        "reference-still"]
    custom = [value for value, _ in _ours_row(text, "customvideox")]
    assert custom[:5] == ["0.60", "100.00", "20.00", "100.00", "0.00"]
    assert custom[5:7] == ["1.80", "50.00"] and custom[7] == "21.00" and custom[9] == "100.00"
    assert float(custom[8]) == pytest.approx(0.0, abs=3.0)  # red/blue flashing: T.Cons ~ 0
    assert custom[10] == "DreamBench: 1/1; VideoBench: 1/1"
    for suite, folder, cells in (("dreambench", dream, custom[:5]), ("videobench", video, custom[5:10])):
        board = pd.read_csv(folder / "leaderboard.csv").set_index("method")
        assert board.loc["customvideox", "suite"] == suite
        columns = ("clip_t", "clip_i", "dino_i", "t_cons", "dynamic")
        assert cells == [f"{board.loc['customvideox', c]:.2f}" for c in columns]
    assert [value for value, _ in _ours_row(text, "alpha")][5:10] == ["—"] * 5  # no VideoBench run
    assert [value for value, _ in _ours_row(text, "customvideox-3d-ra")][:5] == ["—"] * 5

    # the paper tables match the merged row: one "ours" line under CustomVideoX with both suites
    paper1 = [(label, cells) for label, _, cells in tables["paper-table1"]]
    ours_lines = [cells for label, cells in paper1 if label == "ours: customvideox"]
    assert len(ours_lines) == 1 and [v for v, _ in ours_lines[0][:10]] == custom[:10]
    assert [label for label, _, _ in tables["paper-table2"]] == [
        "naive", "3D-RA", "ours: customvideox-3d-ra", "+TAB", "+ERAE", "ours: customvideox"]

    # sections labelled with the suite, and with the results folder where the method name is shared
    context = report_module.build_context([dream, video], progress=False)
    titles = {(c.method, c.suite): c.title for c in context["cases"]}
    assert titles[("customvideox", "dreambench")] == f"customvideox [{dream}] — DreamBench"
    assert titles[("customvideox", "videobench")] == f"customvideox [{video}] — VideoBench"
    assert titles[("alpha", "dreambench")] == "alpha — DreamBench"
    assert f"customvideox [{html.escape(str(dream))}] — DreamBench" in text
    assert f'data-method="customvideox" data-suite="videobench" data-results="{html.escape(str(video))}"' in text
    subjects = {table.table_id: table for table in context["subject_tables"]}
    assert set(subjects) == {"subjects-dreambench", "subjects-videobench"}
    assert [row.label for row in subjects["subjects-videobench"].rows] == [
        f"car — customvideox [{video}]", "car — customvideox-3d-ra"]
    caption = subjects["subjects-videobench"].caption
    assert str(video) in caption and str(dream) not in caption
    assert context["results_dirs"] == [str(dream), str(video)] and 'id="random-banner"' not in text
    assert text.count('class="thumb strip"') == 5


def test_report_expands_a_parent_of_results_folders(tmp_path, refs):
    parent = build_suite_folders(tmp_path, refs)
    dream, video = parent / "dreambench", parent / "videobench"
    (parent / "notes").mkdir()  # a folder that is no RESULTS folder is passed over
    assert report_module.resolve_results_dirs(parent) == [dream, video]
    assert report_module.resolve_results_dirs([video, parent, video]) == [video, dream]  # each folder once
    assert report_module.resolve_results_dirs(dream) == [dream]  # a RESULTS folder stands for itself

    from_parent = read_tables(write_report(parent, tmp_path / "a.html", progress=False).read_text())
    explicit = read_tables(write_report([dream, video], tmp_path / "b.html", progress=False).read_text())
    assert from_parent["ours"] == explicit["ours"] and from_parent["paper-table1"] == explicit["paper-table1"]

    add_method(parent / "unscored", "beta", [{"case_id": "x", "frames": solid([RED] * 3),
                                              "references": [str(refs / "red.png")]}])
    with pytest.raises(FileNotFoundError, match=r"unscored.*videobench score"):
        report_module.resolve_results_dirs(parent)
    with pytest.raises(FileNotFoundError, match="videobench score"):  # an unscored RESULTS folder itself
        write_report(parent / "unscored", tmp_path / "c.html", progress=False)
    with pytest.raises(FileNotFoundError, match="no subfolder holds one"):
        write_report(parent / "notes", tmp_path / "d.html", progress=False)


def test_report_refuses_one_method_and_suite_in_two_folders(tmp_path, refs):
    parent = build_suite_folders(tmp_path, refs)
    again = tmp_path / "rerun"
    add_method(again, "customvideox", [{"case_id": "car-0", "frames": solid([RED] * 3),
                                        "references": [str(refs / "red.png")], "subject": "car"}], suite="videobench")
    run(again)
    out = tmp_path / "table1.html"
    with pytest.raises(report_module.ReportInputError) as error:
        write_report([parent / "dreambench", parent / "videobench", again], out, progress=False)
    message = str(error.value)
    assert "'customvideox' on suite 'videobench'" in message
    assert str(parent / "videobench") in message and str(again) in message and "dreambench" not in message
    assert not out.exists()


def test_several_folders_need_an_out_path(tmp_path, refs):
    parent = build_suite_folders(tmp_path, refs)
    dream, video = parent / "dreambench", parent / "videobench"
    for given in ([dream, video], parent):
        with pytest.raises(report_module.ReportInputError, match="--out"):
            write_report(given, progress=False)
    assert not list(parent.rglob("*.html"))

    from click.testing import CliRunner

    from videobench.cli import EXIT_SETUP_ERROR, main

    runner = CliRunner()
    missing = runner.invoke(main, ["report", str(dream), str(video)])
    assert missing.exit_code == EXIT_SETUP_ERROR and "--out" in missing.output and "Traceback" not in missing.output
    same = str(video / "customvideox" / "..")
    twice = runner.invoke(main, ["report", str(video), same, "--out", str(tmp_path / "x.html")])
    assert twice.exit_code == 0, twice.output  # the same folder twice is one folder
    done = runner.invoke(main, ["report", str(dream), str(video), "--out", str(tmp_path / "t1.html")])
    assert done.exit_code == 0, done.output
    assert [label for label, _, _ in read_tables((tmp_path / "t1.html").read_text())["ours"]].count("customvideox") == 1
    single = runner.invoke(main, ["report", str(dream)])  # one folder: the default path still works
    assert single.exit_code == 0 and (dream / "leaderboard.html").is_file()
    assert runner.invoke(main, ["report"]).exit_code == 2  # RESULTS is required


def _visible_text(html_text: str, element_id: str) -> str:
    """The text a browser shows for the element ``id`` (tags dropped, whitespace collapsed)."""
    import re

    block = re.search(rf'<div[^>]*id="{element_id}"[^>]*>(.*?)</div>', html_text, re.DOTALL).group(1)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", block)).split())


def test_banner_and_header_sentences_are_separated(tmp_path, refs):
    results = build_results(tmp_path, refs)
    run_json = results / "alpha" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "random_weights": True}))
    run(results, fake_metrics(random_weights=True))
    text = write_report(results, progress=False).read_text()
    # trim_blocks must not glue sentences / words together: "...still.Generated", "folderRESULTS".
    assert "reference-still. Generated with random model weights: alpha." in _visible_text(text, "random-banner")
    assert f"results folder {results}" in _visible_text(text, "results-dirs")


def test_unreadable_leaderboard_is_one_clear_error(tmp_path, refs):
    from click.testing import CliRunner

    from videobench.cli import EXIT_SETUP_ERROR, main

    results = build_results(tmp_path, refs)
    run(results)
    for content, expected in (("", "unreadable leaderboard"), ("a,b\n1,2\n", "not a videobench leaderboard")):
        (results / "leaderboard.csv").write_text(content)
        out = CliRunner().invoke(main, ["report", str(results)])
        assert out.exit_code == EXIT_SETUP_ERROR and out.exception.__class__ is SystemExit, out.output
        assert out.output.count("\n") == 1 and expected in out.output and "leaderboard.csv" in out.output
        assert not (results / "leaderboard.html").exists()


def test_foreign_or_damaged_scores_csv_is_noted_not_shown_empty(tmp_path, refs):
    results = build_results(tmp_path, refs)
    run(results)
    (results / "alpha" / "scores.csv").write_text("garbage,x,y\n1,2,3\n")
    (results / "reference-still" / "scores.csv").write_text("")
    text = write_report(results, progress=False).read_text()
    assert "alpha/scores.csv: not a videobench scores.csv (no case_id column)" in text
    assert "reference-still/scores.csv: unreadable" in text


def test_a_method_scored_at_its_own_video_size_says_so(tmp_path, refs):
    results = tmp_path / "RESULTS"
    red = [str(refs / "red.png")]
    for name in ("a", "b"):
        add_method(results, name, [{"case_id": "c", "frames": solid([RED] * 3), "references": red}])
    add_method(results, "native", [{"case_id": "c", "frames": solid([RED] * 4, h=160, w=160), "references": red}],
               run_info={"kind": "video-model"})
    run(results)
    rows = {label: kind for label, kind, _ in read_tables(write_report(results, progress=False).read_text())["ours"]}
    text = write_report(results, progress=False).read_text()
    assert "scored at its own size 4x160x160 on smoke (most: 3x128x160)" in text and set(rows) == {"a", "b", "native"}


# ------------------------------------------------------------------------------------------- plot layout
def synthetic_board(n_rows: int, random: bool, seed: int = 0) -> pd.DataFrame:
    """``n_rows`` leaderboard rows on smoke with values spread over the axes (and a cluster of equal points)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_rows):
        record = {"method": f"method-number-{index}-i2v", "suite": "smoke", "reference": int(index < 2),
                  "random_weights": int(random), "method_random_weights": int(random)}
        for column in ("clip_t", "clip_i", "dino_i", "t_cons", "dynamic"):
            value = 100.0 if column == "dynamic" or index % 4 == 0 else float(rng.uniform(-5, 100))
            record.update({column: value, f"{column}_ci_low": value - 2, f"{column}_ci_high": value + 2})
        rows.append(record)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_rows, random", [(1, False), (5, False), (9, True), (9, False), (40, False)])
def test_plot_text_overlaps_no_text_point_or_frame(n_rows, random):
    """Measured from the figure's renderer at save time: no two texts overlap, no text overlaps a point or the axes
    frame, and every text lies inside the saved (tight) figure, whatever the number of rows."""
    from itertools import combinations

    from videobench.reporting.plots import figure, plot_specs, text_boxes

    board = synthetic_board(n_rows, random)
    for spec in plot_specs():
        boxes = text_boxes(figure(spec, board, random_panel=random))
        texts, points = boxes["texts"], boxes["points"]
        assert len(points) == n_rows + (0 if random else 14)  # ours, and the paper's 7 methods x 2 suites
        assert len(texts) > n_rows  # every row is named in the legend
        for (text_a, a), (text_b, b) in combinations(texts, 2):
            assert not a.overlaps(b), f"{spec['id']}: {text_a!r} overlaps {text_b!r}"
        for text, box in texts:
            assert not box.overlaps(boxes["frame"]), f"{spec['id']}: {text!r} overlaps the axes frame"
            for gid, point in points:
                assert not box.overlaps(point), f"{spec['id']}: {text!r} overlaps point {gid}"
            figure_box = boxes["figure"]
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and figure_box.y0 <= box.y0 \
                and box.y1 <= figure_box.y1, f"{spec['id']}: {text!r} is clipped"


def test_plot_legend_explains_every_marker_and_colour():
    """Suites are shapes (each in the legend), ours filled and the paper hollow (both explained), every method of
    ours and of the paper its own colour, and none grey."""
    from matplotlib.colors import to_rgb

    from videobench.reporting.plots import figure, plot_specs

    board = pd.concat([synthetic_board(9, False), synthetic_board(1, False).assign(suite="dreambench")])
    fig = figure(plot_specs()[0], board)
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    for label in ("DreamBench", "VideoBench", "smoke", "filled: ours (bars: 95% interval)", "hollow: paper, Table 1"):
        assert label in legend
    assert {f"method-number-{i}-i2v" for i in range(2, 9)} <= set(legend)
    assert {"method-number-0-i2v (reference)", "SSR-Encoder (paper)", "CustomVideoX (paper)"} <= set(legend)
    lines = [line for line in fig.axes[0].get_lines() if (line.get_gid() or "").startswith(("ours-", "paper-"))]
    by_method: dict[str, set] = {}
    for line in lines:
        filled = line.get_gid().startswith("ours-")
        colour = to_rgb(line.get_markerfacecolor() if filled else line.get_markeredgecolor())
        method = line.get_gid().rsplit("-", 1)[0]
        by_method.setdefault(method, set()).add(colour)
    assert all(len(found) == 1 for found in by_method.values())  # one colour per method, over its suites
    assigned = [next(iter(found)) for found in by_method.values()]
    assert len(set(assigned)) == len(assigned) == 9 + 7
    assert not any(max(rgb) - min(rgb) < 0.05 for rgb in assigned)  # no greys


def test_random_rows_are_drawn_in_their_own_panel_not_beside_the_paper():
    from videobench.reporting.plots import draw_plots

    board = pd.concat([synthetic_board(3, True), synthetic_board(1, False).assign(method="real-run")])
    plots = {plot.plot_id: plot for plot in draw_plots(board)}
    assert list(plots) == ["fidelity-vs-motion", "fidelity-vs-motion-random", "text-vs-subject",
                           "text-vs-subject-random"]
    comparison, panel = plots["fidelity-vs-motion"], plots["fidelity-vs-motion-random"]
    assert 'id="ours-real-run-smoke"' in comparison.svg and "method-number" not in comparison.svg
    assert comparison.svg.count('<g id="paper-') == 14
    assert panel.svg.count('<g id="ours-method-number-') == 3 and '<g id="paper-' not in panel.svg
    assert "RANDOM WEIGHTS" in panel.svg and "(random weights)</title>" in panel.svg
    assert comparison.title not in comparison.caption and panel.title not in panel.caption


# ------------------------------------------------------------------------- published rows and our rows
def _run_data(name: str, info: dict, results_dir: str = "R", scores: pd.DataFrame | None = None):
    from videobench.reporting.load import MethodData

    return MethodData(name, info, scores, {}, False, Path(results_dir) / name, results_dir=results_dir,
                      label=name, row=name)


def _board_row(name: str, suite: str, n_scored: int, random: int = 0, value: float = 50.0) -> dict:
    row = {"method": name, "row": name, "suite": suite, "reference": 0, "n_cases": n_scored, "n_scored": n_scored,
           "n_failed": 0, "random_weights": random, "method_random_weights": random}
    for column in ("clip_t", "clip_i", "dino_i", "t_cons", "dynamic"):
        row.update({column: value, f"{column}_ci_low": value - 1, f"{column}_ci_high": value + 1})
    return row


def test_a_published_row_is_reproduced_only_by_a_real_full_run():
    """Random weights, a preset or part of a suite never relabel the paper's row; a real run of every case of both
    published suites does. Our rows carry the random tag, never a mark, and every row has its counts."""
    from videobench.reporting.paper import PAPER_COUNTS, paper_table1

    board = pd.DataFrame([
        _board_row("cvx-tiny", "smoke", 4, random=1, value=99.0),  # best on every column, but random
        _board_row("ip-half", "dreambench", 375), _board_row("ip-half", "videobench", 530),
        _board_row("ms-full", "dreambench", 750), _board_row("ms-full", "videobench", 530),
    ])
    methods = [
        _run_data("cvx-tiny", {"paper_row": "CustomVideoX", "random_weights": True, "config": {"preset": "tiny"}}),
        _run_data("ip-half", {"paper_row": "IP-Adapter", "config": {"steps": 50}}),
        _run_data("ms-full", {"paper_row": "MS-Diffusion", "config": {"steps": 50}}),
    ]
    table = paper_table1(board, methods)
    rows = {row.label: row for row in table.rows}
    assert rows["CustomVideoX"].note == "published, not reproduced"
    assert rows["IP-Adapter + CogVideoX-5B-I2V"].note == "published, not reproduced"
    assert rows["MS-Diffusion + CogVideoX-5B-I2V"].note == "published; reproduced by ms-full"
    assert "CustomVideoX: our runs do not reproduce it (cvx-tiny: random weights, tiny preset, not run on "\
        "DreamBench, not run on VideoBench)" in table.notes
    assert "IP-Adapter: our runs do not reproduce it (ip-half: 375 of 750 DreamBench cases scored)" in table.notes
    tiny = rows["ours: cvx-tiny"]
    assert tiny.random and tiny.kind == "ours-side" and tiny.counts == "smoke: 4/4"
    assert all(cell.mark == "" for cell in tiny.cells)
    assert not rows["ours: ms-full"].random and rows["ours: ms-full"].counts == "DreamBench: 750/750; VideoBench: 530/530"
    assert all(row.counts == PAPER_COUNTS for row in table.rows if row.kind == "paper")
    assert all(row.counts for row in table.rows)


def test_random_rows_of_our_leaderboard_get_no_marks():
    from videobench.reporting.tables import leaderboard_table

    board = pd.DataFrame([_board_row("random-a", "smoke", 4, random=1, value=90.0),
                          _board_row("real-b", "smoke", 4, value=50.0), _board_row("real-c", "smoke", 4, value=40.0)])
    rows = {row.label: row for row in leaderboard_table(board).rows}
    assert rows["random-a"].random and {cell.mark for cell in rows["random-a"].cells} == {""}
    assert {cell.mark for cell in rows["real-b"].cells} == {"best"}
    assert {cell.mark for cell in rows["real-c"].cells} == {"second"}


# ------------------------------------------------------------------------------------ mixed runs
def test_runs_that_differ_are_kept_apart_and_say_why():
    """One folder name in two RESULTS folders shares a row only when generation settings, seed, key package
    versions and metric configuration are equal."""
    from videobench.reporting.load import assign_rows, label_methods

    def scores(dino: str) -> pd.DataFrame:
        return pd.DataFrame({"case_id": ["a", "b"], "error": ["", ""], "dino_config_sha256": [dino, dino],
                             "clip_config_sha256": ["c" * 64] * 2})

    base = {"config": {"steps": 50, "guidance": 6.0}, "seed": 0, "packages": {"torch": "2.4.0", "numpy": "1"}}
    alike = [_run_data("m", base, "A", scores("d" * 64)), _run_data("m", {**base, "packages": {"torch": "2.4.0",
                                                                                                "numpy": "2"}},
                                                                        "B", scores("d" * 64))]
    label_methods(alike)
    assign_rows(alike)
    assert [data.row for data in alike] == ["m", "m"] and not any(data.apart for data in alike)  # numpy is not key

    mixed = [_run_data("m", base, "A", scores("d" * 64)),
             _run_data("m", {**base, "config": {"steps": 4, "guidance": 6.0}, "seed": 1}, "B", scores("e" * 64))]
    label_methods(mixed)
    assign_rows(mixed)
    assert [data.row for data in mixed] == ["m [A]", "m [B]"]
    assert mixed[0].apart == ("kept apart from m [B]: generation settings (steps 50 vs 4); seed 0 vs 1; "
                              "dino metric settings (config dddddddd vs eeeeeeee)")


def test_mixed_folders_in_one_report_are_two_rows(tmp_path, refs):
    parent = build_suite_folders(tmp_path, refs)
    video = parent / "videobench"
    info = json.loads((video / "customvideox" / "run.json").read_text())
    (video / "customvideox" / "run.json").write_text(json.dumps({**info, "config": {"steps": 4}}))
    context = report_module.build_context([parent / "dreambench", video], progress=False)
    ours = {row.label: row for row in context["ours"].rows}
    dream_row, video_row = f"customvideox [{parent / 'dreambench'}]", f"customvideox [{video}]"
    assert dream_row in ours and video_row in ours and "customvideox" not in ours
    assert ours[dream_row].counts == "DreamBench: 1/1" and ours[video_row].counts == "VideoBench: 1/1"
    assert ours[dream_row].note == f"kept apart from {video_row}: generation settings (steps None vs 4)"
    assert ours[video_row].note.endswith(f"kept apart from {dream_row}: generation settings (steps 4 vs None)")
    paper = [row.label for row in context["paper_tables"][0].rows]
    assert f"ours: {dream_row}" in paper and f"ours: {video_row}" in paper


# ------------------------------------------------------------------------------------ provenance
def test_report_flags_a_video_the_run_did_not_write(tmp_path, refs):
    import hashlib

    from mediaio.video import write_video

    results = tmp_path / "RESULTS"
    red = [str(refs / "red.png")]
    folder = add_method(results, "alpha", [{"case_id": c, "frames": solid([RED] * 9), "references": red}
                                           for c in ("mine", "copied")], run_info={"seed": 0})
    records = [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]
    for record in records:
        record["video_sha256"] = hashlib.sha256((folder / record["video"]).read_bytes()).hexdigest()
    (folder / "cases.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    run(results)
    write_video(folder / "videos" / "copied.mp4", solid([BLUE] * 9), fps=8)  # swapped in after scoring

    context = report_module.build_context(results, progress=False)
    rows = {row.case_id: row for row in context["cases"][0].rows}
    assert rows["mine"].provenance == "" and rows["mine"].strip_caption == "6 of 9 frames"
    assert rows["copied"].provenance.startswith("the video is not the one this run wrote (sha256 ")
    assert context["n_provenance"] == 1
    text = report_module.render_report(context)
    assert 'id="provenance-banner"' in text and "not this run's video: the video is not the one" in text


def test_metric_settings_are_shown_and_mixed_ones_named():
    from videobench.reporting.page import metric_settings

    def scores(*dino: str) -> pd.DataFrame:
        return pd.DataFrame({"case_id": [str(i) for i in range(len(dino))], "error": [""] * len(dino),
                             "dino_config_sha256": list(dino), "clip_config_sha256": ["c" * 64] * len(dino)})

    methods = [_run_data("a", {}, "A", scores("d" * 64)), _run_data("b", {}, "A", scores("e" * 64, "d" * 64))]
    assert metric_settings(methods) == [
        f"clip: one configuration for every run (config {'c' * 12})",
        f"dino: 2 configurations (numbers compare only within one) — config {'d' * 12}: a; "
        f"config {'d' * 12}+{'e' * 12}: b",
        f"b: its cases were scored with 2 dino configurations ({'d' * 12}, {'e' * 12}); its means mix them, score it "
        "again",
    ]


CASE_WIDTHS = """
<script>
(function () {
  document.querySelectorAll('details').forEach(details => { details.open = true; });
  const pre = document.createElement('pre');
  pre.id = 'measure';
  pre.textContent = JSON.stringify({
    viewport: document.documentElement.clientWidth,
    tables: [...document.querySelectorAll('table.cases')].map(table => table.getBoundingClientRect().right),
    strips: [...document.querySelectorAll('img.strip')].map(img => img.getBoundingClientRect().width),
  });
  document.body.appendChild(pre);
})();
</script>
"""


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_per_case_tables_fit_a_1280_px_page(tmp_path, refs):
    results = build_full_results(tmp_path, refs)
    page = write_report(results, progress=False)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CASE_WIDTHS + "</body>"))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path, window="1280,1000")
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('<pre id="measure">') + len('<pre id="measure">')
    measured = json.loads(html.unescape(dom.stdout[start:dom.stdout.index("</pre>", start)]))
    assert 0 < measured["viewport"] <= 1280 and measured["tables"]
    assert all(right <= measured["viewport"] for right in measured["tables"]), measured
    assert measured["strips"] and all(width > 0 for width in measured["strips"])


def test_non_default_metric_settings_are_recorded_and_shown(env):
    """``-M`` settings are written beside scores.csv (metric_settings.json) and named on the page; defaults say so."""
    from tests.test_cli import invoke

    results = env / "results"
    assert invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results),
                  "--limit", "1").exit_code == 0
    scored = invoke("score", str(results), "--random-weights", "--metrics", "dino_i,t_cons", "-M",
                    "dino.crop_pct=0.5")
    assert scored.exit_code == 0, scored.output
    settings = json.loads((results / "reference-still" / "metric_settings.json").read_text())
    by_family = {entry["family"]: entry["settings"] for entry in settings.values()}
    assert by_family == {"dino": {"crop_pct": 0.5}, "clip": {}}
    assert invoke("report", str(results)).exit_code == 0
    page = (results / "leaderboard.html").read_text()
    assert "-M dino.crop_pct=0.5" in page and "(defaults)" in page
