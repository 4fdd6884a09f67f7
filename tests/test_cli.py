"""The ``videobench`` CLI end to end on the smoke suite, with random-initialised metric models.

generate (two calibration methods) -> score (all five metrics) -> report, then resume, a corrupt video and
the exit codes.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from videobench.cli import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, main


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VIDEOBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_generate_score_report_resume_and_corrupt_video(env):
    results = env / "results"
    for method in ("reference-still", "reference-pan"):
        out = invoke("generate", "--method", method, "--suite", "smoke", "--out", str(results), "--limit", "2")
        assert out.exit_code == 0, out.output
        assert "2 generated, 0 already done, 0 failed" in out.output

    # Resume: nothing is generated twice.
    again = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results), "--limit", "2")
    assert again.exit_code == 0 and "0 generated, 2 already done" in again.output

    # Missing metric weights: one message naming every model, before any work.
    missing = invoke("score", str(results))
    assert missing.exit_code == EXIT_SETUP_ERROR
    for expected in ("dino_deitsmall16_pretrain.pth", "raft", "clip"):
        assert expected in missing.output.lower()
    assert not (results / "leaderboard.csv").exists()

    scored = invoke("score", str(results), "--random-weights")
    assert scored.exit_code == 0, scored.output
    board = pd.read_csv(results / "leaderboard.csv")
    assert set(board["method"]) == {"reference-still", "reference-pan"}
    assert (board["random_weights"] == 1).all() and (board["n_scored"] == 2).all()
    still = pd.read_csv(results / "reference-still" / "scores.csv")
    # Identical frames: T.Cons is exactly 1 whatever the CLIP weights.
    assert still["t_cons"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)

    # Corrupt one video: its case gets an error naming the file, the others keep their scores, exit code 1.
    video = results / "reference-pan" / "videos" / "red_circle-p01.mp4"
    video.write_bytes(video.read_bytes()[:200])
    rescored = invoke("score", str(results), "--random-weights")
    assert rescored.exit_code == EXIT_CASE_FAILURES
    pan = pd.read_csv(results / "reference-pan" / "scores.csv").set_index("case_id")
    assert "red_circle-p01.mp4" in str(pan.loc["red_circle-p01", "error"])
    assert pd.isna(pan.loc["red_circle-p02", "error"]) and not pd.isna(pan.loc["red_circle-p02", "clip_i"])

    report = invoke("report", str(results))
    assert report.exit_code == 0
    html = (results / "leaderboard.html").read_text()
    assert "RANDOM WEIGHTS" in html.upper() and "reference-pan" in html

    # Regenerating the damaged case repairs it.
    repaired = invoke("generate", "--method", "reference-pan", "--suite", "smoke", "--out", str(results), "--limit", "2")
    assert "1 generated, 1 already done" in repaired.output


def test_bad_options_fail_clearly(env):
    out = invoke("generate", "--method", "nope", "--suite", "smoke", "--out", str(env / "r"))
    assert out.exit_code == EXIT_SETUP_ERROR and "unknown method 'nope'" in out.output
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r"), "--cases", "zzz")
    assert out.exit_code == EXIT_SETUP_ERROR and "zzz" in out.output
    out = invoke("score", str(env / "r"), "--metrics", "clip_t,fvd")
    assert out.exit_code == EXIT_SETUP_ERROR and "fvd" in out.output
    out = invoke("generate", "--method", "reference-still", "--suite", "dreambench", "--out", str(env / "r"))
    assert out.exit_code == EXIT_SETUP_ERROR and "videobench data download dreambench" in out.output


def test_methods_and_suites_listing(env):
    methods = invoke("methods").output
    assert "reference-still" in methods and "customvideox" in methods
    suites = invoke("suites").output
    assert "smoke" in suites and "4 cases" in suites


def test_run_json_records_the_suite_and_seed(env):
    results = env / "r"
    invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results), "--limit", "1", "--seed", "7")
    run = json.loads((results / "reference-still" / "run.json").read_text())
    assert run["suite"] == "smoke" and run["seed"] == 7 and run["config"]["height"] == 128
