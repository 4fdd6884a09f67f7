"""Third-party plugins: a package installed beside the project adds a method, a metric and a suite through entry
points alone, and the CLI, runner, scorer and report use them without knowing them.

The "installed package" is a folder on PYTHONPATH holding the module and a ``.dist-info`` with its
``entry_points.txt``, exactly what pip leaves in site-packages; every command runs in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

PLUGIN = '''
"""A test plugin: one method, one metric family and one suite, each registered where it is defined."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from videobench.cases import Case
from videobench.methods import MethodContext, register_method
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.options import option
from videobench.suites.registry import Suite, register_suite


@dataclass(frozen=True)
class CheckerOptions:
    square: int = option(16, "checker square size in pixels", minimum=1)


class Checker:
    fps = 8
    random_weights = False

    def __init__(self, options, context):
        self.options, self.context = options, context
        self.run_name = f"ext-checker-{options.square}"

    def config(self):
        return {"square": self.options.square}

    def generate(self, case, seed):
        h, w, n = self.context.height, self.context.width, self.context.num_frames
        y, x = np.mgrid[0:h, 0:w]
        frames = []
        for t in range(n):
            board = (((x + 4 * t) // self.options.square + y // self.options.square) % 2).astype(np.uint8) * 255
            frames.append(np.repeat(board[..., None], 3, axis=-1))
        return np.stack(frames)


@register_method("ext-checker", description="moving checkerboard (a third-party test plugin)", kind="video-model",
                 options=CheckerOptions, paper_row="VideoBooth")
def build_checker(options, context):
    return Checker(options, context)


@dataclass(frozen=True)
class BrightnessOptions:
    scale: float = option(1.0, "multiplier")


@register_metric
class Brightness:
    family = "ext_brightness"
    description = "mean pixel brightness (a third-party test plugin)"
    column_specs = (ColumnSpec("brightness", "Bright.", "mean brightness in [0, 1]", order=70),)
    columns = ("brightness",)
    Options = BrightnessOptions
    default = False
    random_weights = False

    def __init__(self, options):
        self.options = options

    @classmethod
    def weight_specs(cls, options):
        return []

    @classmethod
    def build(cls, options, context):
        return cls(options)

    def config(self):
        return {"scale": self.options.scale}

    def score(self, sample, columns=None):
        return {"brightness": float(sample.frames.mean() / 255.0 * self.options.scale)}


@register_suite("ext-suite", label="External", version="ext-1", description="two grey subjects", order=50)
def build_suite(root):
    folder = root / "ext-suite"
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for index, grey in enumerate((60, 200)):
        path = folder / f"subject{index}.png"
        Image.new("RGB", (160, 160), (grey, grey, grey)).save(path)
        cases.append(Case(f"grey{index}-p0", "ext-suite", f"grey{index}", "a grey square", "square", (str(path),)))
    return Suite("ext-suite", "ext-1", "two grey subjects", tuple(cases), num_frames=4, height=128, width=128)
'''

ENTRY_POINTS = """
[videobench.methods]
ext-checker = vb_test_plugin

[videobench.metrics]
ext-brightness = vb_test_plugin

[videobench.suites]
ext-suite = vb_test_plugin
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "vb_test_plugin.py").write_text(PLUGIN)
    dist = site / "vb_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vb-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return site


def videobench(plugin_path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(Path(__file__).parents[1])]),
           "VIDEOBENCH_DATA": str(tmp_path / "data"), "VIDEOBENCH_SCORE_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "videobench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_third_party_method_metric_and_suite_run_through_every_stage(plugin_path, tmp_path):
    listing = videobench(plugin_path, tmp_path, "methods")
    assert listing.returncode == 0 and "ext-checker" in listing.stdout and "video-model" in listing.stdout
    assert "ext-suite" in videobench(plugin_path, tmp_path, "suites").stdout
    assert "brightness (Bright.)" in videobench(plugin_path, tmp_path, "metrics").stdout

    results = tmp_path / "results"
    bad = videobench(plugin_path, tmp_path, "generate", "--method", "ext-checker", "--suite", "ext-suite",
                     "--out", str(results), "-o", "square=0")
    assert bad.returncode == 2 and "method ext-checker: option square='0': must be >= 1 (int)" in bad.stderr
    made = videobench(plugin_path, tmp_path, "generate", "--method", "ext-checker", "--suite", "ext-suite",
                      "--out", str(results), "-o", "square=32")
    assert made.returncode == 0, made.stderr
    run = json.loads((results / "ext-checker-32" / "run.json").read_text())
    assert run["kind"] == "video-model" and run["options"] == {"square": 32} and run["suite_version"] == "ext-1"

    scored = videobench(plugin_path, tmp_path, "score", str(results), "--metrics", "brightness",
                        "-M", "ext_brightness.scale=2")
    assert scored.returncode == 0, scored.stderr
    scores = pd.read_csv(results / "ext-checker-32" / "scores.csv")
    assert scores["brightness"].tolist() == pytest.approx([1.0, 1.0], abs=0.02)  # half white, scale 2
    board = pd.read_csv(results / "leaderboard.csv")
    assert board.loc[0, "brightness"] == pytest.approx(100.0, abs=2) and board.loc[0, "paper_row"] == "VideoBooth"

    reported = videobench(plugin_path, tmp_path, "report", str(results))
    assert reported.returncode == 0, reported.stderr
    page = (results / "leaderboard.html").read_text()
    assert "Bright." in page and "ext-checker-32" in page and "External" in page
    assert "ours: ext-checker-32" in page  # under the paper row it declared


def test_a_broken_plugin_is_one_warning_and_the_others_still_load(plugin_path, tmp_path):
    broken = tmp_path / "broken_site"
    broken.mkdir()
    dist = broken / "vb_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vb-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[videobench.methods]\nbroken = vb_broken_missing_module\n")
    env_path = os.pathsep.join([str(broken), str(plugin_path)])
    out = videobench(Path(env_path), tmp_path, "methods")
    assert out.returncode == 0 and "ext-checker" in out.stdout and "customvideox" in out.stdout
    assert "plugin videobench.methods (broken = vb_broken_missing_module) failed to load" in out.stderr


def test_one_method_loads_without_importing_the_others():
    """`generate --method X` imports X's module only (the built-in name map is data; entry points map names too)."""
    code = ("import sys; from videobench.methods import get_method; get_method('reference-still'); "
            "print(sorted(m for m in sys.modules if m.startswith(('baselines', 'customvideox'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_builtin_method_map_matches_the_registry():
    from videobench.methods import available_methods
    from videobench.plugins import BUILTIN_METHODS

    specs = available_methods()
    assert set(BUILTIN_METHODS) <= set(specs)
    for name, module in BUILTIN_METHODS.items():
        assert specs[name].factory.__module__.startswith(module.rsplit(".", 1)[0]), name


@pytest.mark.slow
def test_an_installed_plugin_keeps_the_contract_and_leaves_the_registry_tests_green(plugin_path, tmp_path):
    """With the package installed, the registry-parametrised tests cover its plugins too, and the tests that list
    the registries still pass (none of them hard-codes what is registered)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(Path(__file__).parents[1])])}
    selection = ["tests/test_contract.py", "-k", "ext or brightness or not (tiny or cost or metric_scores)",
                 "tests/test_suites.py::test_available_suites", "tests/test_cli.py::test_methods_and_suites_listing",
                 "tests/test_plugins.py::test_the_builtin_method_map_matches_the_registry"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *selection],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = [line for line in done.stdout.splitlines() if "PASSED" in line]
    for plugin in ("ext-checker", "ext_brightness", "brightness", "ext-suite"):  # method, family, column, suite
        assert any(f"[{plugin}]" in line for line in passed), plugin
