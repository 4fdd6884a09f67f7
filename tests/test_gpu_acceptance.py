"""benchmarks/gpu_acceptance.py: budgets, cut-offs, interruptions, the report files, and the tiny CPU path."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
STATUSES = {"pass", "fail", "unmeasured", "info"}


@pytest.fixture(scope="module")
def acceptance():
    """The script as the module ``gpu_acceptance`` (what ``--extra-sections`` modules import)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ and the repo on sys.path
        spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, "gpu_acceptance", module)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture
def registry(acceptance, monkeypatch):
    """An empty section registry for fake sections (the real one is restored afterwards)."""
    monkeypatch.setattr(acceptance, "SECTIONS", [])
    return acceptance


def _run(acceptance, tmp_path, *extra: str) -> dict:
    argv = ["--tiny", "--device", "cpu", "--out-dir", str(tmp_path), *extra]
    return acceptance.main(argv, started=time.monotonic())


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every table of ``markdown`` as rows of cells, split on unescaped pipes."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            assert line.endswith("|") and not line.endswith("\\|"), line
            current.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def _check_markdown(markdown: str, report: dict) -> None:
    """Three well-formed tables (targets, measurements, sections) matching the JSON report."""
    targets, measurements, sections = _tables(markdown)
    for table in (targets, measurements, sections):
        header, separator, *body = table
        assert separator == ["---"] * len(header)
        assert all(len(row) == len(header) for row in body)
    rows = [(s["name"], row) for s in report["sections"] for row in s["rows"]]
    assert [(cells[0], cells[1], cells[5]) for cells in measurements[2:]] == [
        (name, row["name"].replace("|", "\\|"), row["status"]) for name, row in rows
    ]
    assert [cells[0] for cells in targets[2:]] == [t["text"] for t in report["targets"]]
    assert [(cells[0], cells[2]) for cells in sections[2:]] == [(s["name"], s["status"]) for s in report["sections"]]


# --- targets and rows ---------------------------------------------------------------------------------------------
def test_targets_judge_their_limits(acceptance):
    cached = acceptance.TARGETS["cached_step"]
    assert (cached.judge(1.05), cached.judge(1.0501), cached.judge(None)) == ("pass", "fail", "unmeasured")
    video = acceptance.TARGETS["video_50"]  # strictly below 90 s
    assert (video.judge(89.9), video.judge(90.0)) == ("pass", "fail")
    speedup = acceptance.TARGETS["scoring_speedup"]
    assert (speedup.judge(5.0), speedup.judge(4.99)) == ("pass", "fail")
    assert acceptance.Row("x", 2.0, "s", target="joint_step", checked=1.13).status == "fail"
    assert acceptance.Row("x", 2.0, "s").status == "info"
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        acceptance.Row("x", 1.0, target="nope")


def test_register_section_places_and_refuses(registry):
    def rows(ctx):
        return []

    registry.register_section(registry.Section("b", "B", rows))
    registry.register_section(registry.Section("a", "A", rows), before="b")
    assert [s.name for s in registry.SECTIONS] == ["a", "b"]
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register_section(registry.Section("a", "A again", rows))
    with pytest.raises(ValueError, match=r"unknown target\(s\) \['speed'\]"):
        registry.register_section(registry.Section("c", "C", rows, targets=("speed",)))


# --- budgets, cut-offs, errors ------------------------------------------------------------------------------------
def test_budgets_cut_offs_and_errors_keep_every_finished_row(registry, tmp_path):
    Row, Section = registry.Row, registry.Section

    def measured(ctx):
        yield Row("fast | ok", 1.0, "s/step", target="cached_step", checked=1.01, note="a | b")
        yield Row("slow", 2.0, "s/step", target="cached_step", checked=1.20)

    def hangs(ctx):
        yield Row("before the hang", 3.0, "s")
        time.sleep(60)
        yield Row("never", 4.0, "s")

    def breaks(ctx):
        raise RuntimeError("boom")
        yield

    for section in [
        Section("measured", "two rows", measured, targets=("cached_step",)),
        Section("hangs", "cut off", hangs, budget_s=1.0),
        Section("breaks", "raises", breaks),
        Section("too_big", "cannot fit", measured, min_s=1000, targets=("video_50",)),
        Section("after", "still runs", measured),
    ]:
        registry.register_section(section)
    started = time.monotonic()
    report = _run(registry, tmp_path, "--budget-s", "120")
    assert time.monotonic() - started < 30

    on_disk = json.loads((tmp_path / "gpu_acceptance_tiny.json").read_text())
    assert on_disk["sections"] == report["sections"] and on_disk["finished"] and on_disk["interrupted"] is None
    sections = {s["name"]: s for s in report["sections"]}
    assert [s["name"] for s in report["sections"]] == ["measured", "hangs", "breaks", "too_big", "after"]
    assert sections["measured"]["status"] == sections["after"]["status"] == "ok"
    assert [r["status"] for r in sections["measured"]["rows"]] == ["pass", "fail"]
    assert sections["hangs"]["status"] == "timeout" and "1 s budget" in sections["hangs"]["reason"]
    assert [r["name"] for r in sections["hangs"]["rows"]] == ["before the hang"]
    assert 1.0 <= sections["hangs"]["wall_s"] < 10
    assert sections["breaks"]["status"] == "error" and sections["breaks"]["reason"] == "RuntimeError: boom"
    assert sections["too_big"]["status"] == "skipped" and sections["too_big"]["reason"].startswith("needs >= 1000 s")
    assert sections["too_big"]["rows"] == []
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["cached_step"]["status"] == "partial"  # 2 of the 4 rows pass
    assert targets["video_50"]["status"] == "unmeasured"
    assert "too_big: skipped (needs >= 1000 s" in targets["video_50"]["measured"][0]
    assert registry.exit_code(report) == 1  # a section raised
    _check_markdown((tmp_path / "gpu_acceptance_tiny.md").read_text(), report)


def test_sections_can_be_chosen_and_added_from_a_module(registry, tmp_path, monkeypatch):
    module = tmp_path / "acceptance_extra_rows.py"
    module.write_text(
        "from gpu_acceptance import Row, Section, register_section\n\n\n"
        "def baseline_rows(ctx):\n"
        "    yield Row('image personalization, s/video', 12.5, 's', note=str(ctx.tiny))\n\n\n"
        "register_section(Section('baselines', 'baselines per stage', baseline_rows, budget_s=30))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register_section(registry.Section("other", "not chosen", lambda ctx: []))
    report = _run(registry, tmp_path / "out", "--extra-sections", "acceptance_extra_rows", "--sections", "baselines")
    [section] = report["sections"]
    assert section["name"] == "baselines" and section["status"] == "ok" and section["budget_s"] == 30
    assert section["rows"][0]["value"] == 12.5 and section["rows"][0]["note"] == "True"
    with pytest.raises(SystemExit, match=r"unknown section\(s\) \['nope'\]; known: other, baselines"):
        _run(registry, tmp_path / "out", "--skip", "nope")


def test_a_section_that_cannot_fit_the_global_budget_is_skipped(registry, tmp_path):
    registry.register_section(registry.Section("first", "fits", lambda ctx: [registry.Row("r", 1.0)], min_s=1))
    registry.register_section(registry.Section("second", "does not", lambda ctx: [registry.Row("r", 1.0)], min_s=5))
    report = _run(registry, tmp_path, "--budget-s", "3")
    assert [(s["status"], len(s["rows"])) for s in report["sections"]] == [("ok", 1), ("skipped", 0)]
    assert report["sections"][1]["reason"] == "needs >= 5 s, 3 s left"


# --- the CUDA tests section ---------------------------------------------------------------------------------------
FAKE_CUDA_TESTS = """
import pytest


def test_passes():
    pass


def test_fails():
    assert 1 == 2


@pytest.mark.skip(reason="no device")
def test_skipped():
    pass


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_metrics_stay_within_0_1_points(dtype):
    assert dtype == "fp16"
"""


def test_cuda_tests_rows_count_outcomes_and_name_failures(acceptance, tmp_path):
    tests = tmp_path / "test_fake_cuda.py"
    tests.write_text(FAKE_CUDA_TESTS)
    ctx = acceptance.Context(torch.device("cpu"), torch.float32, section_deadline=time.monotonic() + 120)
    summary, drift = acceptance.cuda_tests_section(ctx, str(tests))
    assert summary.value == "2 passed, 2 failed, 1 skipped" and summary.status == "fail"
    assert [name.split("::")[-1] for name in summary.data["failing"]] == [
        "test_fails", "test_half_precision_metrics_stay_within_0_1_points[bf16]"
    ]
    assert "exit code 1" in summary.note and "test_fails" in summary.note
    assert drift.value == "fp16: PASSED, bf16: FAILED" and drift.status == "fail"


def test_cuda_tests_killed_at_the_cap_are_unmeasured(acceptance, tmp_path):
    tests = tmp_path / "test_hangs.py"
    tests.write_text("import time\n\n\ndef test_hangs():\n    time.sleep(600)\n")
    ctx = acceptance.Context(torch.device("cpu"), torch.float32, section_deadline=time.monotonic() + 8)
    started = time.monotonic()
    summary, drift = acceptance.cuda_tests_section(ctx, str(tests))
    assert time.monotonic() - started < 30
    assert summary.status == "unmeasured" and summary.note.startswith("killed at the time cap")
    assert summary.data["exit_code"] is None
    assert drift.value is None and drift.status == "unmeasured"


# --- the shared model's training round trip -----------------------------------------------------------------------
def test_training_in_place_restores_the_inference_model(acceptance, one_thread):
    import step_latency
    import train_step

    model, _, lora_cfg, _ = step_latency.build(torch.device("cpu"), torch.bfloat16, tiny=True)
    step_latency.ensure_reference_lora(model, lora_cfg)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    assert any(requires_grad.values()) and not all(requires_grad.values())  # peft's LoRA only
    with train_step.reference_lora_training(model) as trainable:
        assert trainable and all(p.dtype == torch.float32 and p.requires_grad for p in trainable)
        assert model.training and model.gradient_checkpointing
        assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "lora_" not in n)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.numel() for p in trainable)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(after[n].dtype == tensor.dtype and torch.equal(after[n], tensor) for n, tensor in before.items())
    assert not model.training and not model.gradient_checkpointing
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires_grad


# --- the reused scripts keep their own command lines ---------------------------------------------------------------
def test_step_latency_cli_runs_the_tiny_preset(acceptance, tmp_path, one_thread):
    import step_latency

    out = tmp_path / "step_latency.json"
    result = step_latency.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--steps", "1", "--warmup", "0",
                                "--e2e-steps", "1", "--out", str(out)])
    assert json.loads(out.read_text())["per_step"] == result["per_step"]
    assert [row["variant"] for row in result["per_step"]] == [name for name, _ in step_latency.VARIANTS]
    assert result["per_step"][0]["vs_vanilla"] == 1.0 and not result["targets_meaningful"]
    assert set(result["targets"]) == {"joint <= 1.12x vanilla", "cached <= 1.05x vanilla", "TAB+ERAE adds <= 3%"}
    e2e = result["end_to_end"]
    assert e2e["total_s"] == pytest.approx(e2e["reference_s"] + e2e["denoise_s"] + e2e["decode_s"])


def test_train_step_cli_runs_the_tiny_preset(acceptance, tmp_path, monkeypatch, one_thread):
    import train_step

    out = tmp_path / "train_step.json"
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--tiny", "--steps", "1", "--warmup", "0", "--out", str(out)])
    train_step.main()
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["latent_shape"] == [1, 3, 4, 16, 24]
    assert result["seconds_per_micro_step"] == pytest.approx(result["seconds_per_optimizer_step"] / 2)
    assert result["lora_parameters"] > 0 and 0 < result["last_loss"] < 10


def test_score_throughput_table_sums_families_and_the_speed_up(acceptance, capsys):
    import score_throughput

    rows = {"batched": {"clip": 0.1, "dino": 0.1, "dynamic": 0.2}, "naive": {"clip": 1.0, "dino": 0.5, "dynamic": 0.5}}
    score_throughput.print_table(rows, ["clip", "dino", "dynamic"])
    printed = capsys.readouterr().out
    assert "| batched |    0.100 |    0.100 |    0.200 |   0.400 |    5.00x |" in printed
    assert "| naive   |    1.000 |    0.500 |    0.500 |   2.000 |    1.00x |" in printed


def test_score_throughput_flop_table_gives_the_flop_ratio_and_each_rate(acceptance, capsys):
    import score_throughput

    flops = {"batched": {"clip": 1e9, "dynamic": 3e9}, "naive": {"clip": 1e9, "dynamic": 5e9}}
    seconds = {"batched": {"clip": 0.5, "dynamic": 1.5}, "naive": {"clip": 0.5, "dynamic": 2.5}}
    score_throughput.print_flop_table(flops, seconds, ["clip", "dynamic"])
    printed = capsys.readouterr().out
    assert "| batched |      1.0 |      3.0 |    4.0 |      1.50x |     2.0 |" in printed
    assert "| naive   |      1.0 |      5.0 |    6.0 |      1.00x |     2.0 |" in printed


def test_score_throughput_counts_the_peers_extra_work(acceptance):
    """The peer loop's RAFT encodes both images of every pair and upsamples after every update: more FLOPs than the
    scorer's on the same clip. The same images go through the same image encoders, the peers' with every token
    through the last block (the scorer's: the class token; the cosine products are grouped differently: thousands
    of FLOPs against billions), and the peers' text tower also runs over the prompt's padding: the difference is
    exactly those parts' FLOPs."""
    import score_throughput
    from torch.utils.flop_counter import FlopCounterMode

    from videobench.metrics.clip import encode_text_prefix

    def flops_of(fn, *args) -> int:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn(*args)
        return counter.get_total_flops()

    metrics = {metric.family: metric for metric in score_throughput.random_metrics("cpu")}
    sample = score_throughput.build_sample(3, 64, 96, references=1)
    flops = score_throughput.count_flops(list(metrics.values()), sample)
    assert flops["naive"]["dynamic"] > flops["batched"]["dynamic"] > 0
    image = torch.randn(1, 3, 224, 224)
    images = len(sample.frames) + len(sample.references)
    clip, dino = metrics["clip"], metrics["dino"]
    saved = {
        "clip": images * (flops_of(clip.model.encode_image, image) - flops_of(clip.encode_images, image))
        + flops_of(clip.model.encode_text, clip.tokenizer([sample.prompt]))
        - flops_of(encode_text_prefix, clip.model, clip.tokenizer([sample.prompt])),
        "dino": images * (flops_of(dino.model, image) - flops_of(dino.encode_images, image)),
    }
    for family, difference in saved.items():
        assert difference > 0 and flops["batched"][family] > 1e6
        assert flops["naive"][family] - flops["batched"][family] == pytest.approx(difference, rel=1e-5)


def test_scoring_gpu_estimate_counts_kernels_and_takes_the_slower_of_host_and_device(acceptance):
    """The GPU estimate's operator counter counts the operators that run kernels (not views), its extrapolation is
    the line through the two counts, and a path's seconds per family are the larger of calls x launch time and
    FLOPs / rate."""
    import scoring_gpu_estimate as estimate

    x = torch.randn(4, 6)
    with estimate.OperatorCalls() as calls:
        y = (x.view(6, 4).t() + 1).relu()
        torch.mm(y, x.t().contiguous())
    assert calls.calls["add"] == 1 and calls.calls["relu"] == 1 and calls.calls["mm"] == 1
    assert not {"view", "t", "transpose"} & set(calls.calls)
    assert estimate.extrapolate(10, 14, frames=3, target=49) == 102  # 10 + 2 per frame x 46
    counts = {"batched": {"a": (1000.0, 1e12), "b": (100000.0, 1e9)}, "naive": {"a": (2e5, 2e12)}}
    seconds = estimate.estimate(counts, launch_us=10.0, tflops=50.0)
    assert seconds["batched"] == pytest.approx(0.02 + 1.0)  # device-bound 1e12 / 5e13, host-bound 1e5 x 10 us
    assert seconds["naive"] == pytest.approx(2.0)  # host 2e5 x 10 us = 2 s against device 0.04 s


# --- the tiny CPU path --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_cpu_run_reports_every_section(acceptance, tmp_path, capsys, one_thread):
    names = ("cuda_tests", "step_latency", "end_to_end", "scoring", "train_step", "baselines", "compiled")
    budgets = [arg for name in names for arg in ("--section-budget", f"{name}=600")]  # loaded CI: structure only
    report = _run(acceptance, tmp_path, "--budget-s", "1800", *budgets)
    printed = capsys.readouterr().out

    on_disk = json.loads((tmp_path / "gpu_acceptance_tiny.json").read_text())
    assert on_disk == json.loads(json.dumps(report, default=str))
    assert report["finished"] and report["interrupted"] is None and acceptance.exit_code(report) == 0
    assert report["random_weights"] and report["tiny"] and not report["targets_meaningful"]
    assert report["torch"] == torch.__version__ and report["diffusers"] and report["device"] == "cpu"
    assert report["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", report["git_commit"])
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == list(names)
    for section in sections.values():
        assert section["status"] == "ok" and section["rows"] and section["wall_s"] > 0, section
        assert all(row["status"] in STATUSES for row in section["rows"])
    for target in acceptance.TARGETS.values():  # targets printed next to the numbers
        assert target.text in printed
    assert {t["target"] for t in report["targets"]} == set(acceptance.TARGETS)

    if not torch.cuda.is_available():
        assert [row["status"] for row in sections["cuda_tests"]["rows"]] == ["unmeasured", "unmeasured"]
    steps = {row["name"]: row for row in sections["step_latency"]["rows"]}
    assert set(steps) >= {"vanilla", "joint, TAB+ERAE off", "joint, TAB+ERAE on", "cached, TAB+ERAE off",
                          "cached, TAB+ERAE on"}
    for mode in ("joint", "cached"):
        ratio = steps[f"{mode}, TAB+ERAE on"]["value"] / steps[f"{mode}, TAB+ERAE off"]["value"]
        assert steps[f"TAB+ERAE overhead, {mode}"]["checked"] == pytest.approx(ratio)
    reference, decode, video = sections["end_to_end"]["rows"]
    assert video["target"] == "video_50" and video["value"] == pytest.approx(
        reference["value"] + 50 * steps["cached, TAB+ERAE on"]["value"] + decode["value"])
    batched, naive, speedup = sections["scoring"]["rows"]
    assert speedup["value"] == pytest.approx(naive["value"] / batched["value"])
    assert set(batched["data"]) == {"clip", "dino", "dynamic"}
    training, memory = sections["train_step"]["rows"]
    assert training["value"] > 0 and memory["status"] == "unmeasured"  # peak memory is CUDA-only
    baselines = [row["name"].split(":")[0] for row in sections["baselines"]["rows"]]
    assert sorted(set(baselines)) == sorted(acceptance.baseline_timing.ORDER)  # tests/test_method_costs.py: details
    compiled = [row["name"] for row in sections["compiled"]["rows"]]
    assert compiled == ["vanilla, compiled", "cached, TAB+ERAE on, compiled", "joint, TAB+ERAE on, compiled",
                        "50-step video, compiled"]
    _check_markdown((tmp_path / "gpu_acceptance_tiny.md").read_text(), report)


@pytest.mark.slow
def test_sigterm_keeps_the_sections_already_written(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    report_path = tmp_path / "gpu_acceptance_tiny.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if report_path.exists() and json.loads(report_path.read_text())["sections"][0]["status"] != "pending":
                break
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before the first section was written"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output
    report = json.loads(report_path.read_text())
    assert report["interrupted"] == "SIGTERM" and not report["finished"]
    first, *rest = report["sections"]
    assert first["name"] == "cuda_tests" and first["status"] == "ok" and len(first["rows"]) == 2
    assert rest and all(s["status"] in ("ok", "interrupted", "pending") for s in rest)
    assert any(s["status"] in ("interrupted", "pending") for s in rest)
    markdown = (tmp_path / "gpu_acceptance_tiny.md").read_text()
    assert "INTERRUPTED by SIGTERM" in markdown
    _check_markdown(markdown, report)


def test_conv_algorithms_times_every_refinement_convolution(acceptance, capsys, monkeypatch):
    """benchmarks/conv_algorithms.py: one row per refinement convolution, each Winograd error within fp32 rounding."""
    import conv_algorithms

    monkeypatch.setattr(sys, "argv", ["conv_algorithms.py", "--pairs", "1", "--height", "64", "--width", "64",
                                      "--runs", "1", "--tiles", "2,4"])
    conv_algorithms.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "->" in line]
    assert len(rows) == len(conv_algorithms.REFINEMENT_CONVOLUTIONS)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 7 and all(float(error) < 1e-4 for error in (cells[4], cells[6]))
