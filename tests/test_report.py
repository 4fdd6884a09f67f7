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

from tests.test_score import RED, add_method, build_results, fake_metrics, refs, run, solid  # noqa: F401 (fixture)
from videobench import report as report_module
from videobench.report import customvideox_setting, paper_method_for, rank_marks, write_report

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


def build_full_results(tmp_path: Path, refs: Path, **metric_kwargs) -> Path:
    results = build_results(tmp_path, refs)
    red_ref = [str(refs / "red.png")]
    add_method(results, "beta", [
        {"case_id": "still", "frames": solid([RED] * 3), "references": red_ref},
        {"case_id": "still2", "frames": solid([RED] * 3), "references": red_ref, "subject": "cube"},
    ])
    add_method(results, "customvideox", [{"case_id": "v1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="videobench")
    add_method(results, "customvideox-3d-ra", [{"case_id": "v1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="videobench")
    add_method(results, "ms-diffusion-i2v", [{"case_id": "d1", "frames": solid([RED] * 3), "references": red_ref}],
               suite="dreambench")
    run(results, fake_metrics(**metric_kwargs))
    return results


def test_rank_marks_ties_and_second():
    assert rank_marks([85.47, 84.39, 85.47, None, 76.42]) == ["best", "second", "best", "", ""]
    assert rank_marks([1.004, 1.0, 0.5]) == ["best", "best", "second"]  # compared as displayed
    assert rank_marks([3.0, None]) == ["", ""]  # one value: nothing to compare


def test_method_matching():
    assert customvideox_setting("customvideox") == "+ERAE"
    assert customvideox_setting("customvideox-tiny") == "+ERAE"
    assert customvideox_setting("customvideox-tiny-3d-ra+tab") == "+TAB"
    assert customvideox_setting("customvideox-3d-ra") == "3D-RA"
    assert customvideox_setting("customvideox-naive-cached") == "naive"
    assert customvideox_setting("videobooth") is None
    assert paper_method_for("customvideox") == "CustomVideoX"
    assert paper_method_for("customvideox-naive") is None
    assert paper_method_for("ms-diffusion-i2v") == "MS-Diffusion"
    assert paper_method_for("run7", "lambda-eclipse") == "λ-Eclipse"
    assert paper_method_for("reference-still") is None


def test_paper_tables_as_read():
    paper = Path(report_module.__file__).parent / "paper"
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
    assert (Path(report_module.__file__).parents[1] / "reports" / "paper" / "table1.csv").is_file()


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

    monkeypatch.setattr(report_module, "render_report", broken)
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
  };
  const pre = document.createElement('pre');
  pre.id = 'measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1400,2000", *args]
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

    shot = tmp_path / "shot.png"
    result = _chromium([f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1400)
    assert (pixels < 200).mean() > 0.01  # text and table lines, not a blank page
    assert len(np.unique(pixels)) > 20


def test_report_of_an_empty_results_folder(tmp_path):
    (tmp_path / "R").mkdir()
    summary, _ = run(tmp_path / "R")
    assert summary.failed
    text = write_report(tmp_path / "R", progress=False).read_text()
    assert "No scored method yet." in text and 'id="paper-table1"' in text
