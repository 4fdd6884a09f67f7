"""The contract every registered plugin keeps, parametrised over the registries (built-in and installed packages).

Like diffusers' ``ModelTesterMixin`` (``tests/models/test_modeling_common.py``), which runs one set of checks on
every model class, these run one set of checks on every method, metric family and suite the registries hold, so a
new plugin is tested by being registered, and the per-plugin test files keep only what is specific to one plugin.

* a method: its options parse their defaults and refuse a bad value of every option (and an unknown key) with one
  error naming the method and the key; its tiny preset (if it has one) generates byte-identical videos in two fresh
  processes; it needs no weight file with the tiny preset and lists the ones a real run needs; its cost model (if
  it has one) is consistent and counts exactly the FLOPs a real run of the tiny preset makes;
* a metric family: its options likewise; its columns are declared once, every declared column comes back from
  ``score`` as a number (0/1 when binary), the same for the same seed and for any subset of columns; the
  leaderboard shows ``scale x mean`` and ranks by the declared direction;
* a suite: its case ids are unique file names, the same in another data root and in another process, and its
  declared count (what plans use before a download) is its number of cases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from costmodel.method_cost import EFFECTIVE_TFLOPS_PER_S, MethodCost
from videobench.leaderboard import aggregate
from videobench.methods import MethodContext, available_methods, get_method
from videobench.metrics.base import MetricInput
from videobench.metrics.registry import MetricContext, metric_families
from videobench.options import OptionError, option_fields, options_to_dict
from videobench.reporting.tables import rank_marks
from videobench.suites import available_suites, get_suite, load_suite
from videobench.weights import WeightSpec

REPO = Path(__file__).resolve().parents[1]
METHODS = sorted(available_methods())
TINY_METHODS = [name for name in METHODS if "tiny" in get_method(name).presets]
COST_METHODS = [name for name in METHODS if get_method(name).cost is not None]
FAMILIES = list(metric_families())
SUITES = available_suites()
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _env(**extra: str) -> dict[str, str]:
    """This tree first on PYTHONPATH (before any plugin folder already there), for the fresh processes."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **extra}


# --- options, for methods and metric families alike -----------------------------------------------------------------
def _bad_values(options: type) -> list[tuple[str, str]]:
    """``(key, text)`` pairs that the option parser must refuse, derived from each field's type and bounds."""
    bad = []
    for key, (info, annotation) in option_fields(options).items():
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
        kind = inner[0] if len(inner) == 1 else annotation
        origin = typing.get_origin(kind)
        if origin is Literal:
            bad.append((key, "not-a-choice"))
        elif kind is bool:
            bad.append((key, "maybe"))
        elif kind is int or (origin is tuple and typing.get_args(kind)[0] is int):
            bad.append((key, "1.5x"))
        elif kind is float or (origin is tuple and typing.get_args(kind)[0] is float):
            bad.append((key, "many"))
        elif kind is dict or origin is dict:
            bad.append((key, "[1, 2"))
        if info.metadata.get("minimum") is not None:
            bad.append((key, str(info.metadata["minimum"] - 1)))
        if info.metadata.get("maximum") is not None:
            bad.append((key, str(info.metadata["maximum"] + 1)))
    return bad


def check_options(options: type, parse, owner: str) -> None:
    """Defaults parse and round-trip through their dict; every bad value and an unknown key are one error each."""
    defaults = parse({})
    assert parse(options_to_dict(defaults)) == defaults
    with pytest.raises(OptionError) as unknown:
        parse({"no_such_option": "1"})
    assert str(unknown.value).startswith(f"{owner}: unknown option(s) 'no_such_option'")
    for key, text in _bad_values(options):
        with pytest.raises(OptionError) as refused:
            parse({key: text})
        assert str(refused.value).startswith(f"{owner}: option {key}={text!r}: "), (key, text)
        assert "\n" not in str(refused.value)


# --- methods --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_method_options_validate_and_refuse(name):
    spec = get_method(name)
    check_options(spec.options, spec.parse_options, f"method {name}")
    for setting, raw in spec.table2_rows.items():  # every Table 2 setting is a valid set of options
        assert spec.paper(spec.parse_options(raw)).table2_setting is not None, setting
    with pytest.raises(OptionError, match=f"^method {re.escape(name)}: unknown preset 'no-such-preset'"):
        spec.check_preset("no-such-preset")


@pytest.mark.parametrize("name", METHODS)
def test_method_metadata_and_weights_are_listed(name):
    spec = get_method(name)
    options = spec.parse_options()
    metadata = spec.metadata(options)
    assert metadata["method"] == name and metadata["kind"] == spec.kind and json.dumps(metadata)
    needed = spec.weight_specs(options, MethodContext())
    assert all(isinstance(weight, WeightSpec) and weight.model for weight in needed)
    assert len({weight.key for weight in needed}) == len(needed)
    if "tiny" in spec.presets:  # "a smoke run without any weights: --preset tiny"
        assert spec.weight_specs(options, MethodContext(preset="tiny")) == []
    from videobench.cli import main

    listing = CliRunner().invoke(main, ["methods", name])
    assert listing.exit_code == 0, listing.output
    for weight in needed:
        assert weight.key in listing.output and weight.model in listing.output


def _selected_methods(request: pytest.FixtureRequest, fixture: str) -> list[str]:
    """The methods of the selected tests (``-k``) that use ``fixture``, in registry order."""
    names = {item.callspec.params["name"] for item in request.session.items
             if fixture in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")}
    return [name for name in TINY_METHODS if name in names]


@pytest.fixture(scope="module")
def tiny_runs(request, tmp_path_factory) -> tuple[Path, Path]:
    """Each selected tiny preset on the first smoke case in two fresh processes, the second in reverse order."""
    root = tmp_path_factory.mktemp("tiny_runs")
    env = _env(VIDEOBENCH_DATA=str(root / "data"), VIDEOBENCH_WEIGHTS=str(root / "no-weights"))
    outs = (root / "first", root / "second")
    names = _selected_methods(request, "tiny_runs")
    orders = (names, names[::-1])
    runs = [subprocess.Popen([sys.executable, "-m", "tests.contract.tiny_runs", str(out), *order], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for out, order in zip(outs, orders)]
    errors = [run.communicate(timeout=1200)[1] for run in runs]
    for run, error in zip(runs, errors):
        assert run.returncode == 0, error[-3000:]
    return outs


def _run_folder(out: Path, name: str) -> Path:
    [folder] = [path.parent for path in (out / name).glob("*/run.json")]
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_METHODS)
def test_tiny_preset_is_byte_identical_in_fresh_processes(name, tiny_runs):
    first, second = (_run_folder(out, name) for out in tiny_runs)
    [record] = [json.loads(line) for line in (first / "cases.jsonl").read_text().splitlines()]
    assert record["status"] == "ok", record
    videos = sorted(path.relative_to(first) for path in first.rglob("*.mp4"))
    assert videos == sorted(path.relative_to(second) for path in second.rglob("*.mp4")) and len(videos) == 1
    assert (first / videos[0]).read_bytes() == (second / videos[0]).read_bytes()
    images = sorted(path.relative_to(first) for path in (first / "images").glob("*.png")) if (
        first / "images").is_dir() else []
    for image in images:  # a two-stage method's stage-1 picture too
        assert (first / image).read_bytes() == (second / image).read_bytes()
    run = json.loads((first / "run.json").read_text())
    assert run["method"] == name and run["random_weights"] is True


def tiny_cost(name: str) -> MethodCost:
    spec = get_method(name)
    context = MethodContext(device="cuda", preset="tiny" if "tiny" in spec.presets else None)
    return spec.estimate_cost(spec.parse_options(), context)


@pytest.mark.slow
@pytest.mark.parametrize("name", COST_METHODS)
def test_cost_model_is_consistent_and_round_trips(name, one_thread):
    cost = tiny_cost(name)
    assert isinstance(cost, MethodCost) and cost.method == name and cost.stages
    assert cost.tflops == pytest.approx(sum(stage.tflops for stage in cost.stages))
    assert cost.seconds_per_video == pytest.approx(sum(stage.seconds for stage in cost.stages))
    for stage in cost.stages:
        assert stage.tflops == pytest.approx(sum(part["tflops"] for part in stage.parts), abs=1e-12)
        assert stage.seconds == pytest.approx(stage.tflops / EFFECTIVE_TFLOPS_PER_S)
        assert stage.peak_gib >= 0 and all(part["calls"] > 0 for part in stage.parts)
    if get_method(name).kind == "reference":
        assert cost.tflops == 0 and cost.peak_gib == 0
    else:
        assert cost.tflops > 0 and cost.peak_gib > 0
    assert MethodCost.from_dict(json.loads(json.dumps(cost.to_dict()))) == cost
    doubled = cost.at_rate(2 * EFFECTIVE_TFLOPS_PER_S)
    assert doubled.seconds_per_video == pytest.approx(cost.seconds_per_video / 2) and doubled.tflops == cost.tflops


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in TINY_METHODS if name in COST_METHODS])
def test_cost_model_counts_the_flops_of_a_tiny_run(name, tiny_runs, one_thread):
    """FlopCounterMode over one generation of the tiny preset (``tests/contract/tiny_runs.py``) = the model's sum,
    exactly, on a prompt whose entity word has the token count the model assumes (one or two tokens)."""
    real = json.loads((tiny_runs[0] / name / "flops.json").read_text())
    assert min(real.values()) > 0
    assert round(tiny_cost(name).tflops * 1e12) in real.values(), real


# --- metric families ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_metric_options_validate_and_refuse(family):
    from videobench.options import parse_options

    options = metric_families()[family].Options
    check_options(options, lambda raw: parse_options(options, raw, owner=f"metric {family}"), f"metric {family}")


@pytest.mark.parametrize("family", FAMILIES)
def test_metric_columns_are_declared_once_with_a_direction_and_scale(family):
    cls = metric_families()[family]
    names = [spec.name for spec in cls.column_specs]
    assert names and len(set(names)) == len(names)
    others = {spec.name for other, c in metric_families().items() if other != family for spec in c.column_specs}
    assert not set(names) & others
    for spec in cls.column_specs:
        assert spec.label and isinstance(spec.higher_is_better, bool)
        assert math.isfinite(spec.scale) and spec.scale > 0 and math.isfinite(spec.order)
    assert all(isinstance(weight, WeightSpec) for weight in cls.weight_specs(cls.Options()))


def _synthetic_samples() -> list[MetricInput]:
    """A static video of the reference, and a square moving across it, at a size every model preprocesses."""
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    static = np.repeat(reference[None], 6, axis=0)
    moving = static.copy()
    for t in range(len(moving)):
        moving[t, 30:60, 8 * t:8 * t + 30] = (250, 20, 20)
    prompt = "a red square moving across a textured background"
    return [MetricInput(frames, 8.0, [Image.fromarray(reference)], prompt, "square") for frames in (static, moving)]


@pytest.fixture(scope="module")
def metric_scores(one_thread):
    """``scores(family)``: the scores of two builds with the same seed (random weights) on the synthetic samples,
    and the first build; each family built once per module, when a test asks for it."""
    samples, done = _synthetic_samples(), {}

    def scores(family: str) -> tuple[list[dict], list[dict], Any]:
        if family not in done:
            cls = metric_families()[family]
            builds = [cls.build(cls.Options(), MetricContext(random_weights=True, seed=0)) for _ in range(2)]
            done[family] = (*([metric.score(sample) for sample in samples] for metric in builds), builds[0])
        return done[family]

    return scores


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_metric_scores_every_column_as_a_number_deterministically(family, metric_scores):
    cls = metric_families()[family]
    first, second, metric = metric_scores(family)
    assert first == second  # same seed, same weights, same numbers
    json.dumps(metric.config())
    samples = _synthetic_samples()
    for sample, scores in zip(samples, first):
        for spec in cls.column_specs:
            value = scores[spec.name]
            assert isinstance(value, float) and math.isfinite(value), (spec.name, value)
            if spec.binary:
                assert value in (0.0, 1.0), (spec.name, value)
            alone = metric.score(sample, columns=(spec.name,))
            assert alone[spec.name] == pytest.approx(value, rel=1e-5, abs=1e-6), spec.name  # a subset, same value


@pytest.mark.parametrize("column", [spec for cls in metric_families().values() for spec in cls.column_specs],
                         ids=lambda spec: spec.name)
def test_leaderboard_shows_scale_times_mean_and_ranks_by_direction(column):
    raw = [0.0, 1.0, 1.0, 0.0] if column.binary else [0.25, 0.5, 0.75, 0.5]
    scores = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4, column.name: raw + [0.0] * 4})
    board = aggregate(scores, ["method"], [column.name], n_resamples=50).set_index("method")
    assert board.loc["a", column.name] == pytest.approx(column.scale * np.mean(raw))
    assert board.loc["b", column.name] == 0.0
    marks = rank_marks([board.loc["a", column.name], board.loc["b", column.name]],
                       higher_is_better=column.higher_is_better)
    assert marks == (["best", "second"] if column.higher_is_better else ["second", "best"])


# --- suites ---------------------------------------------------------------------------------------------------------
def data_root(name: str, root: Path) -> Path:
    """A data root for suite ``name``: every file the suite declares, as a placeholder of its pinned size (loading
    checks presence and size; case ids never depend on pixels), and nothing for a suite drawn by code."""
    for item in get_suite(name).data_files():
        target = root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as file:
            file.truncate(item.size)
    return root


@pytest.fixture(scope="module")
def ids_in_a_fresh_process(tmp_path_factory) -> dict[str, list[str]]:
    roots = {name: data_root(name, tmp_path_factory.mktemp("suite")) for name in SUITES}
    code = ("import json, sys; from videobench.suites import load_suite\n"
            "roots = json.loads(sys.argv[1])\n"
            "print(json.dumps({name: [case.case_id for case in load_suite(name, root).cases]"
            " for name, root in roots.items()}))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps({k: str(v) for k, v in roots.items()})],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", SUITES)
def test_suite_case_ids_are_stable_and_match_the_declared_count(name, tmp_path, ids_in_a_fresh_process):
    spec = get_suite(name)
    suite = load_suite(name, data_root(name, tmp_path / "a"))
    ids = [case.case_id for case in suite.cases]
    assert ids and len(set(ids)) == len(ids) and all(CASE_ID.match(case_id) for case_id in ids)
    assert suite.name == name and suite.version == spec.version
    assert all(case.suite == name and case.prompt and case.references for case in suite.cases)
    assert min(suite.num_frames, suite.height, suite.width, suite.fps) > 0
    again = load_suite(name, data_root(name, tmp_path / "b"))
    assert [case.case_id for case in again.cases] == ids
    assert [dataclasses.replace(case, references=()) for case in again.cases] == [
        dataclasses.replace(case, references=()) for case in suite.cases]
    assert ids_in_a_fresh_process[name] == ids
    if spec.count is not None:
        assert spec.count() == len(ids)
