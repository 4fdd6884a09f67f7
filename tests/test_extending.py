"""docs/extending.md works as written: its files, pip-installed as a package, add a method, a metric family and a
suite that go through generate, score and report, and keep the contract of tests/test_contract.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def guide_files() -> dict[str, str]:
    """``path -> text`` of every code block of the guide that names a file."""
    return {path: text for _, path, text in BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}


def guide_commands() -> list[list[str]]:
    """The ``videobench ...`` lines of the guide's bash blocks, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["videobench"]:
                commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The guide's package, built and installed with pip into a folder of its own (no network, no dependencies)."""
    source = tmp_path_factory.mktemp("videobench-stripes")
    for path, text in guide_files().items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return target


def videobench(site: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "VIDEOBENCH_DATA": str(root / "data"),
           "VIDEOBENCH_WEIGHTS": str(root / "weights"), "VIDEOBENCH_SCORE_CACHE": str(root / "cache")}
    return subprocess.run([sys.executable, "-m", "videobench.cli", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)


def test_the_guide_names_a_package_with_three_plugins():
    files = guide_files()
    assert set(files) == {"pyproject.toml", "videobench_stripes/__init__.py", "videobench_stripes/method.py",
                          "videobench_stripes/metric.py", "videobench_stripes/suite.py"}
    assert [command[0] for command in guide_commands()] == ["methods", "generate", "score", "report"]


@pytest.mark.slow
def test_the_guide_package_runs_through_every_stage(site, tmp_path):
    outputs = {}
    for command in guide_commands():  # the guide's own commands, in its order
        done = videobench(site, tmp_path, *command)
        assert done.returncode == 0, (command, done.stderr)
        outputs[command[0]] = done.stdout
    assert "Stripes palette" in outputs["methods"] and "width" in outputs["methods"]
    results = tmp_path / "results" / "swatches"
    run = json.loads((results / "stripes-tiny" / "run.json").read_text())
    assert run["method"] == "stripes" and run["suite"] == "swatches" and run["random_weights"] is True
    scores = pd.read_csv(results / "stripes-tiny" / "scores.csv").set_index("case_id")
    assert list(scores.index) == ["teal-p0", "amber-p0"]
    # saturation 1 in every pixel (a shade scales every channel alike), up to x264 quantisation (crf 17, 4:2:0)
    assert scores["colourful"].tolist() == pytest.approx([1.0, 1.0], abs=0.02)
    board = pd.read_csv(results / "leaderboard.csv")
    assert board.loc[0, "colourful"] == pytest.approx(100.0, abs=2)
    page = (results / "leaderboard.html").read_text()
    assert "Colour." in page and "Swatches" in page and "stripes-tiny" in page


@pytest.mark.slow
def test_without_the_preset_the_palette_is_one_missing_weight_then_found(site, tmp_path):
    missing = videobench(site, tmp_path, "generate", "--method", "stripes", "--suite", "swatches", "--out", "r")
    assert missing.returncode != 0 and "stripes_palette.safetensors" in missing.stderr + missing.stdout
    from safetensors.numpy import save_file

    (tmp_path / "weights").mkdir()
    save_file({"shade": np.full(3, 0.5, dtype=np.float32)}, str(tmp_path / "weights" / "stripes_palette.safetensors"))
    made = videobench(site, tmp_path, "generate", "--method", "stripes", "--suite", "swatches", "--out", "r",
                      "-o", "width=4")
    assert made.returncode == 0, made.stderr
    run = json.loads((tmp_path / "r" / "stripes" / "run.json").read_text())
    assert run["random_weights"] is False and run["options"]["width"] == 4 and run["config"]["shade"] == [0.5] * 3


@pytest.mark.slow
def test_the_guide_plugins_keep_the_contract(site, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_contract.py",
                           "-k", "stripes or colourful or swatches"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = [line for line in done.stdout.splitlines() if "PASSED" in line]
    for plugin in ("stripes", "colourfulness", "colourful", "swatches"):  # method, family, column, suite
        assert any(f"[{plugin}]" in line for line in passed), plugin
    assert any("byte_identical" in line and "[stripes]" in line for line in passed)  # its tiny preset ran twice
