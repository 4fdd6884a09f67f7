"""The Python API (:mod:`videobench.api`) against the command line that wraps it.

The same run through ``videobench run`` and through :func:`videobench.api.evaluate` writes the same bytes; every
setup error is a typed :class:`~videobench.errors.VideoBenchError` whose text is the CLI's one ``error:`` line; the
result objects hold what the files hold; the README's notebook example runs as written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.test_cli import invoke
from videobench import api
from videobench.cli import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, main
from videobench.errors import (
    DataMissingError,
    LaunchError,
    ResultsFolderError,
    SettingsError,
    VideoBenchError,
    WeightsMissingError,
)
from videobench.scoring.runner import read_scores

REPO = Path(__file__).resolve().parents[1]
# Fast, weight-free scoring: T.Cons from a small random-initialised open_clip tower.
T_CONS = {"metrics": ["t_cons"], "metric_options": {"clip": {"model": "ViT-S-32"}}, "random_weights": True}
T_CONS_FLAGS = ["--random-weights", "--metrics", "t_cons", "-M", "clip.model=ViT-S-32"]
QUIET = api.Console(quiet=True)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (lock files aside) by relative path, with the fields that record wall-clock time
    or the folder's own path masked: run.json's ``started``/``updated``, cases.jsonl's ``seconds``, the page's
    ``generated`` stamp."""
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == ".lock":
            continue
        data = path.read_bytes()
        if path.name == "run.json":
            info = json.loads(data)
            info.update(started="-", updated="-")
            data = json.dumps(info, sort_keys=True).encode()
        elif path.name == "cases.jsonl":
            data = re.sub(rb'"seconds": [0-9.e-]+', b'"seconds": -', data)
        elif path.suffix == ".html":
            data = re.sub(rb"generated [0-9T:+-]+", b"generated -", data.replace(str(root).encode(), b"RESULTS"))
        files[str(path.relative_to(root))] = data
    return files


def test_the_same_run_through_the_cli_and_the_api_writes_the_same_files(env):
    methods = "reference-still,reference-pan"
    by_cli, by_api = env / "cli" / "results", env / "api" / "results"
    out = invoke("run", "--suite", "smoke", "--methods", methods, "--limit", "3", "--seed", "3", "--out", str(by_cli),
                 *T_CONS_FLAGS)
    assert out.exit_code == 0, out.output
    result = api.evaluate(api.EvaluateSettings(suite="smoke", methods=methods.split(","), limit=3, seed=3,
                                               out=by_api, **T_CONS), progress=False, console=QUIET)
    assert result.ok
    cli_files, api_files = _files(by_cli), _files(by_api)
    assert sorted(cli_files) == sorted(api_files)
    assert {"leaderboard.csv", "leaderboard.html", "reference-pan/run.json", "reference-pan/cases.jsonl",
            "reference-pan/scores.csv", "reference-still/videos/blue_square-p03.mp4"} <= set(cli_files)
    for name, data in cli_files.items():
        assert api_files[name] == data, name

    # the result holds what was written
    assert [run.method for run in result.generated] == ["reference-still", "reference-pan"]
    assert result.generated[0].generated == ["red_circle-p01", "red_circle-p02", "blue_square-p03"]
    assert all(path.is_file() for run in result.generated for path in run.paths)
    assert result.report == by_api / "leaderboard.html" and result.report.is_file()
    assert set(result.scored.paths) == {by_api / "leaderboard.csv", by_api / "reference-still" / "scores.csv",
                                        by_api / "reference-pan" / "scores.csv"}
    for method in ("reference-still", "reference-pan"):
        expected = read_scores(by_api / method / "scores.csv")
        ours = result.scores[result.scores["method"] == method].drop(columns="method").reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, expected)
    pd.testing.assert_frame_equal(result.leaderboard, pd.read_csv(by_api / "leaderboard.csv"))


def test_generate_and_score_results_resume_and_record_failures(env):
    results = env / "r"
    settings = api.GenerateSettings(method="reference-still", suite="smoke", limit=2, out=results)
    first = api.generate(settings, progress=False, console=QUIET)
    assert first.ok and first.generated == ["red_circle-p01", "red_circle-p02"] and first.skipped == []
    assert first.run_name == "reference-still" and first.method_dir == results / "reference-still"
    again = api.generate(api.GenerateSettings(method="reference-still", suite="smoke", limit=3, out=results),
                         progress=False, console=QUIET)
    assert again.generated == ["blue_square-p03"] and again.skipped == ["red_circle-p01", "red_circle-p02"]
    assert again.paths == [results / "reference-still" / name for name in
                           ("run.json", "cases.jsonl", "videos/blue_square-p03.mp4")]

    video = results / "reference-still" / "videos" / "red_circle-p02.mp4"
    video.write_bytes(video.read_bytes()[:200])
    scored = api.score(api.ScoreSettings(results=results, **T_CONS), progress=False, console=QUIET)
    assert not scored.ok
    assert list(scored.failures) == ["reference-still"]
    assert list(scored.failures["reference-still"]) == ["red_circle-p02"]
    assert "red_circle-p02.mp4" in scored.failures["reference-still"]["red_circle-p02"]
    assert scored.scores["case_id"].tolist() == ["red_circle-p01", "red_circle-p02", "blue_square-p03"]
    assert scored.scores.loc[0, "t_cons"] == pytest.approx(1.0, abs=1e-5)  # identical frames, whatever the weights
    # the CLI says the same with its exit status
    assert invoke("score", str(results), *T_CONS_FLAGS).exit_code == EXIT_CASE_FAILURES


def test_report_returns_the_page_it_wrote(env):
    results = env / "r"
    api.generate(api.GenerateSettings(method="reference-pan", suite="smoke", limit=1, out=results),
                 progress=False, console=QUIET)
    api.score(api.ScoreSettings(results=results, **T_CONS), progress=False, console=QUIET)
    page = api.report(api.ReportSettings(results=results, out=env / "page.html"), progress=False, console=QUIET)
    assert page == env / "page.html" and "reference-pan" in page.read_text()
    with pytest.raises(ResultsFolderError, match=re.escape(str(env / "nothing"))):
        api.report(api.ReportSettings(results=[results, env / "nothing"]), progress=False, console=QUIET)


# (settings, API error class, CLI arguments of the same mistake)
MISTAKES = [
    (lambda env: api.GenerateSettings(method="nope", out=env / "r"), SettingsError,
     ["generate", "--method", "nope", "--out", "{env}/r"]),
    (lambda env: api.GenerateSettings(method="reference-still", cases=["zzz"], out=env / "r"), SettingsError,
     ["generate", "--method", "reference-still", "--cases", "zzz", "--out", "{env}/r"]),
    (lambda env: api.GenerateSettings(method="customvideox", preset="tiny", options={"speed": "max"}, out=env / "r"),
     SettingsError, ["generate", "--method", "customvideox", "--preset", "tiny", "-o", "speed=max", "--out", "{env}/r"]),
    (lambda env: api.GenerateSettings(method="reference-still", suite="dreambench", out=env / "r"), DataMissingError,
     ["generate", "--method", "reference-still", "--suite", "dreambench", "--out", "{env}/r"]),
    (lambda env: api.GenerateSettings(method="customvideox", out=env / "r"), WeightsMissingError,
     ["generate", "--method", "customvideox", "--out", "{env}/r"]),
    (lambda env: api.GenerateSettings(method="reference-still", out=env / "file.txt"), ResultsFolderError,
     ["generate", "--method", "reference-still", "--out", "{env}/file.txt"]),
    (lambda env: api.ScoreSettings(results=env), WeightsMissingError, ["score", "{env}"]),
    (lambda env: api.ScoreSettings(results=env, metrics=["clip_t", "fvd"]), SettingsError,
     ["score", "{env}", "--metrics", "clip_t,fvd"]),
    (lambda env: api.ScoreSettings(results=env / "nowhere", **T_CONS), ResultsFolderError,
     ["score", "{env}/nowhere", *T_CONS_FLAGS]),
    (lambda env: api.ScoreSettings(results=env, score_dtype="fp16", **T_CONS), SettingsError,
     ["score", "{env}", "--score-dtype", "fp16", *T_CONS_FLAGS]),
    (lambda env: api.EvaluateSettings(methods=["reference-still"], method_options={"customvideox": {"steps": 2}},
                                      out=env / "r"), SettingsError,
     ["run", "--methods", "reference-still", "-o", "customvideox.steps=2", "--out", "{env}/r"]),
    (lambda env: api.ReproduceSettings(table="table3"), SettingsError, ["reproduce", "table3", "--plan-only"]),
    (lambda env: api.ReproduceSettings(table="table1", suite="smoke", out=env / "r"), WeightsMissingError,
     ["reproduce", "table1", "--suite", "smoke", "--out", "{env}/r"]),
]


@pytest.mark.parametrize("index", range(len(MISTAKES)))
def test_setup_errors_are_typed_and_are_the_cli_line(env, index):
    make, error_class, args = MISTAKES[index]
    (env / "file.txt").write_text("x")
    with pytest.raises(error_class) as caught:
        stage = {api.GenerateSettings: api.generate, api.ScoreSettings: api.score,
                 api.EvaluateSettings: api.evaluate, api.ReproduceSettings: api.reproduce}
        settings = make(env)
        stage[type(settings)](settings, progress=False, console=QUIET)
    assert isinstance(caught.value, VideoBenchError)
    result = CliRunner().invoke(main, [arg.format(env=env) for arg in args])
    assert result.exit_code == EXIT_SETUP_ERROR, result.output
    expected = f"error: {caught.value}\n"
    if args[0] == "reproduce":  # after the plan it prints
        assert result.output.endswith(expected)
    else:  # nothing else: the error is all the command says
        assert result.output == expected


def test_settings_refuse_what_the_flags_refuse():
    for make, message in (
        (lambda: api.GenerateSettings(method="reference-still", out="r", limit=-1), "--limit -1: must be at least 0"),
        (lambda: api.GenerateSettings(method="reference-still", out="r", frames=0), "--frames 0: must be at least 1"),
        (lambda: api.GenerateSettings(method="reference-still", out="r", dtype="fp64"), "--dtype 'fp64': choose one"),
        (lambda: api.ScoreSettings(results="r", score_dtype="auto"), "--score-dtype 'auto': choose one of fp32"),
        (lambda: api.LaunchSettings(launcher="pbs"), "--launcher 'pbs': choose one of slurm, local"),
        (lambda: api.LaunchSettings(launcher="local", shards=0), "--shards 0: must be at least 1"),
    ):
        with pytest.raises(SettingsError, match=re.escape(message)):
            make()


def test_a_shard_that_disagrees_with_the_launch_is_a_launch_setting_error(env, monkeypatch):
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match="--shard 0/2 disagrees with torchrun"):
        api.generate(api.GenerateSettings(method="reference-still", out=env / "r", shard="0/2"), console=QUIET)
    # no board to meet the other rank on: the launch as a whole cannot run
    with pytest.raises(LaunchError, match="set VIDEOBENCH_SYNC_ID"):
        api.generate(api.GenerateSettings(method="reference-still", out=env / "r"), console=QUIET)
    with pytest.raises(SettingsError, match="--shard and --launcher do not go together"):
        api.generate(api.GenerateSettings(method="reference-still", out=env / "r", shard="0/2",
                                          launch=api.LaunchSettings(launcher="local")), console=QUIET)


def test_reproduce_plan_only_needs_no_out_and_returns_the_plan(env):
    result = api.reproduce(api.ReproduceSettings(table="table2", suite="smoke", preset="tiny", plan_only=True),
                           console=QUIET)
    assert [row.row_id for row in result.plan.rows] == ["customvideox@naive", "customvideox@3D-RA",
                                                        "customvideox@+TAB", "customvideox@+ERAE"]
    assert result.generated == [] and result.report is None
    out = invoke("reproduce", "table2", "--suite", "smoke", "--preset", "tiny", "--plan-only")
    assert out.exit_code == 0 and "table2: 4 row(s)" in out.output
    with pytest.raises(SettingsError, match="--out is needed to run the plan"):
        api.reproduce(api.ReproduceSettings(table="table2", suite="smoke", preset="tiny"), console=QUIET)


def test_import_videobench_is_light_and_serves_the_api_lazily():
    code = ("import sys, videobench; heavy = [m for m in ('torch', 'pandas', 'click', 'videobench.api') "
            "if m in sys.modules]; print(heavy); print(all(getattr(videobench, name) is getattr(videobench.api, name) "
            "for name in ('generate', 'score', 'report', 'reproduce', 'evaluate')), "
            "videobench.VideoBenchError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["[]", "True videobench.errors"]


def test_the_api_imports_neither_the_cli_nor_click_commands():
    code = "import sys, videobench.api, videobench.launcher; print('videobench.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def _readme_notebook_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- notebook example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its notebook example"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_notebook_example_runs_as_written(env, monkeypatch):
    code = _readme_notebook_example()
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(env)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    shown = eval(code.strip().splitlines()[-1], namespace)  # the last line is what a notebook shows
    assert isinstance(shown, pd.DataFrame) and len(shown) >= 4 and "clip_t" in shown
    assert (env / "results" / "notebook" / "leaderboard.csv").is_file()
