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
from videobench.methods import available_methods
from videobench.suites import available_suites


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
    import torch

    out = invoke("generate", "--method", "nope", "--suite", "smoke", "--out", str(env / "r"))
    assert out.exit_code == EXIT_SETUP_ERROR and "unknown method 'nope'" in out.output
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r"), "--cases", "zzz")
    assert out.exit_code == EXIT_SETUP_ERROR and "zzz" in out.output
    assert out.output.strip() == "error: suite smoke: unknown case id(s): zzz"  # one plain line, no repr quotes
    out = invoke("generate", "--method", "reference-still", "--suite", "nope", "--out", str(env / "r"))
    assert out.output.strip().startswith(f"error: unknown suite 'nope'; available: {', '.join(available_suites())}")
    # A negative --limit would slice off the last cases ("cases[:-1]") instead of being refused.
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r"), "--limit", "-1")
    assert out.exit_code == EXIT_SETUP_ERROR and "--limit" in out.output and not (env / "r").exists()
    out = invoke("score", str(env / "r"), "--metrics", "clip_t,fvd")
    assert out.exit_code == EXIT_SETUP_ERROR and "fvd" in out.output
    out = invoke("generate", "--method", "reference-still", "--suite", "dreambench", "--out", str(env / "r"))
    assert out.exit_code == EXIT_SETUP_ERROR and "videobench data download dreambench" in out.output
    if not torch.cuda.is_available():
        out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r"),
                     "--device", "cuda")
        assert out.exit_code == EXIT_SETUP_ERROR and "no CUDA device is available" in out.output
        assert not (env / "r").exists()


def test_random_weights_help_says_what_scoring_does(env):
    # scoring with --random-weights never loads a weights file, even one that is present
    text = " ".join(invoke("score", "--help").output.split())
    assert "every metric model when scoring, even if its weights are present" in text
    assert "where weights are missing" not in text


def test_methods_and_suites_listing(env):
    methods = invoke("methods").output
    assert all(name in methods for name in available_methods())
    suites = invoke("suites").output
    assert all(name in suites for name in available_suites()) and "4 cases" in suites  # the smoke suite's


def test_run_json_records_the_suite_and_seed(env):
    results = env / "r"
    invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results), "--limit", "1", "--seed", "7")
    run = json.loads((results / "reference-still" / "run.json").read_text())
    assert run["suite"] == "smoke" and run["seed"] == 7 and run["config"]["height"] == 128


def test_download_flag_named_by_the_missing_weights_message_exists(env, monkeypatch):
    """The missing-weights message says "--download ... fetches it": the flag must exist and reach the resolver."""
    from videobench import weights as weights_module

    monkeypatch.delenv("VIDEOBENCH_DOWNLOAD", raising=False)
    asked = []
    monkeypatch.setattr(weights_module, "_download", lambda spec, repo: asked.append(spec.model) or (None, "offline test"))
    (env / "r").mkdir()
    without = invoke("score", str(env / "r"))
    assert without.exit_code == EXIT_SETUP_ERROR and "--download" in without.output and not asked
    out = invoke("score", str(env / "r"), "--download")
    assert out.exit_code == EXIT_SETUP_ERROR, out.output
    assert len(asked) == 3 and out.output.count("download failed: offline test") == 3


def test_scoring_a_method_folder_instead_of_results_is_refused(env):
    results = env / "results"
    invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results), "--limit", "1")
    method_dir = results / "reference-still"
    out = invoke("score", str(method_dir), "--random-weights", "--metrics", "t_cons")
    assert out.exit_code == EXIT_SETUP_ERROR
    assert f"is a method folder (it holds cases.jsonl); score the RESULTS folder above it: videobench score {results}" \
        in out.output
    assert not (method_dir / "leaderboard.csv").exists() and not (method_dir / "scores.csv").exists()


def test_unusable_device_dtype_or_weights_file_is_one_line_before_any_work(env, tmp_path):
    import torch

    (env / "r" / "m").mkdir(parents=True)  # a RESULTS folder with one (empty) method folder: scoring could start
    (env / "r" / "m" / "cases.jsonl").write_text("")
    random = ("--random-weights", "--metrics", "t_cons")
    cases = [((*random, "--score-dtype", "fp16"), "needs a CUDA device"),
             ((*random, "--device", "gpu"), "is not a torch device")]
    if not torch.cuda.is_available():
        cases.append(((*random, "--device", "cuda"), "no CUDA device is available"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pth")
    cases += [
        (("--metrics", "dynamic", "-M", f"dynamic.weights={tmp_path / 'junk.pth'}"), "junk.pth: cannot read weights"),
        (("--metrics", "dino_i", "-M", f"dino.weights={tmp_path / 'other.pth'}"),
         "other.pth: does not fit VisionTransformer: 150 missing key(s) (e.g. "),
    ]
    for args, expected in cases:
        out = CliRunner().invoke(main, ["score", str(env / "r"), *args])
        assert out.exit_code == EXIT_SETUP_ERROR and isinstance(out.exception, SystemExit), (args, out.output)
        assert out.output.startswith("error: ") and out.output.count("\n") == 1 and expected in out.output, out.output
        assert "weights_only` set to `False`" not in out.output  # never suggest unsafe loading


def test_run_checks_the_metric_weights_before_generating_anything(env):
    out = invoke("run", "--suite", "smoke", "--methods", "reference-still", "--out", str(env / "r"))
    assert out.exit_code == EXIT_SETUP_ERROR and "missing model weights for 3 model(s)" in out.output
    assert not (env / "r").exists()  # nothing generated
    out = invoke("run", "--suite", "smoke", "--methods", "reference-still", "--out", str(env / "r"), "--metrics", "zz")
    assert out.exit_code == EXIT_SETUP_ERROR and "unknown metric(s) 'zz'" in out.output and not (env / "r").exists()


def test_ctrl_c_exits_130_not_the_case_failure_code(env, monkeypatch):
    import videobench.generation as generate_module
    from videobench.cli_common import EXIT_INTERRUPTED

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "run_generation", interrupted)
    out = CliRunner().invoke(main, ["generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r")])
    assert out.exit_code == EXIT_INTERRUPTED and "resume" in out.output


# ------------------------------------------------------------------------------ method options and guards
def test_method_options_from_o_and_config_are_validated_before_any_work(env):
    out_dir = env / "r"
    args = ("generate", "--method", "customvideox", "--preset", "tiny", "--suite", "smoke", "--out", str(out_dir))
    out = invoke(*args, "-o", "speed=max")
    assert out.exit_code == EXIT_SETUP_ERROR and out.output.count("\n") == 1
    assert "method customvideox: unknown option(s) 'speed'; accepted: model, lora, ablation" in out.output
    out = invoke(*args, "-o", "mode=fast")
    assert "method customvideox: option mode='fast': choose one of joint, cached" in out.output
    out = invoke(*args, "-o", "steps")
    assert out.exit_code == EXIT_SETUP_ERROR and "-o 'steps': expected key=value" in out.output
    bad_yaml = env / "bad.yaml"
    bad_yaml.write_text("steps: [1, 2\n")
    out = invoke(*args, "--config", str(bad_yaml))
    assert out.exit_code == EXIT_SETUP_ERROR and f"--config {bad_yaml}: not valid YAML" in out.output
    listed = env / "list.json"
    listed.write_text("[1, 2]")
    out = invoke(*args, "--config", str(listed))
    assert "expected a mapping of option names to values, got list" in out.output
    assert not out_dir.exists()  # nothing was created by any of these


def test_config_file_options_reach_the_method_and_o_wins(env):
    config = env / "cvx.yaml"
    config.write_text("steps: 3\nablation: 3d-ra\n")
    out = invoke("generate", "--method", "customvideox", "--preset", "tiny", "--suite", "smoke", "--limit", "1",
                 "--out", str(env / "r"), "--config", str(config), "-o", "steps=2", "--random-weights")
    assert out.exit_code == 0, out.output
    run = json.loads((env / "r" / "customvideox-tiny-3d-ra" / "run.json").read_text())
    assert run["options"]["steps"] == 2 and run["options"]["ablation"] == "3d-ra"
    assert run["kind"] == "ours" and run["table2_setting"] == "3D-RA" and run["paper_row"] is None
    assert run["config"]["num_inference_steps"] == 2


@pytest.mark.parametrize("flag", ["--frames", "--height", "--width"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_zero_or_negative_sizes_are_refused(env, flag, value):
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(env / "r"), flag, value)
    assert out.exit_code == EXIT_SETUP_ERROR and flag in out.output and not (env / "r").exists()


def test_out_pointing_at_a_file_and_corrupt_run_json_are_one_line(env):
    target = env / "file.txt"
    target.write_text("x")
    args = ("generate", "--method", "reference-still", "--suite", "smoke", "--limit", "1")
    out = invoke(*args, "--out", str(target))
    assert out.exit_code == EXIT_SETUP_ERROR and out.output.count("\n") == 1
    assert f"--out {target}: {target} exists and is not a folder" in out.output
    results = env / "r"
    assert invoke(*args, "--out", str(results)).exit_code == 0
    run_json = results / "reference-still" / "run.json"
    for content, expected in (("{not json", "corrupt run.json"), ("[1, 2]", "run.json holds a JSON list")):
        run_json.write_text(content)
        out = invoke(*args, "--out", str(results))
        assert out.exit_code == EXIT_SETUP_ERROR and out.output.count("\n") == 1, out.output
        assert str(run_json) in out.output and expected in out.output


def test_methods_describe_themselves(env):
    listing = invoke("methods").output
    assert "reference-still" in listing and "reference" in listing and "[paper: CustomVideoX]" in listing
    detail = invoke("methods", "customvideox").output
    for expected in ("customvideox (ours)", "paper row: CustomVideoX", "presets: tiny", "ablation", "rope_shift",
                     "default 50" if False else "steps", "THUDM/CogVideoX-5b"):
        assert expected in detail, detail
    out = invoke("methods", "nope")
    assert out.exit_code == EXIT_SETUP_ERROR and "unknown method 'nope'" in out.output
    metrics = invoke("metrics").output
    assert "subject_consistency" in metrics and "opt-in" in metrics and "dino_i (DINO-I)" in metrics
    assert "-M clip.model=" in invoke("metrics", "clip").output


def test_weights_listing_covers_methods_and_metrics(env):
    out = invoke("weights")
    assert out.exit_code == 0
    for expected in ("clip: CLIP ViT-B-32-quickgelu", "dino: DINO ViT-S/16", "dynamic: RAFT-large",
                     "subject_consistency: DINO ViT-B/16", "customvideox: CogVideoX-5B", "missing"):
        assert expected in out.output, out.output
    only = invoke("weights", "--method", "customvideox", "-o", "ablation=naive")
    assert "CogVideoX-5B" in only.output and "LoRA" not in only.output and "RAFT" not in only.output
