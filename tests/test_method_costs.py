"""Per-method cost models: the FakeTensor machinery against closed forms and real runs, what particular cost models
add up (CFG, the shared stage 2), the cache and Table 1 reproduction estimate, and the gpu_acceptance ``baselines``
section. Every registered cost model's consistency and its FLOPs against a real tiny run: tests/test_contract.py."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from costmodel import estimates as costs
from costmodel.counting import (
    FakeStage,
    Piece,
    count_flops,
    measure_pieces,
    run_for_real,
    text_call,
    track_peak_memory,
)
from costmodel.method_cost import EFFECTIVE_TFLOPS_PER_S, MethodCost, StageCost
from tests.test_gpu_acceptance import _run, acceptance  # noqa: F401 (acceptance is a fixture)
from videobench.methods import MethodContext, get_method, methods_by_paper_row
from videobench.published import in_published_order

REPO = Path(__file__).resolve().parents[1]


def tiny_context(name: str) -> MethodContext:
    """The tiny preset where the method has one (the calibration rows have none)."""
    return MethodContext(device="cuda", preset="tiny" if get_method(name).presets else None)


@functools.lru_cache(maxsize=None)
def tiny_cost(name: str, **overrides) -> MethodCost:
    spec = get_method(name)
    return spec.estimate_cost(spec.parse_options(overrides), tiny_context(name))


# --- the machinery against closed forms and real runs ---------------------------------------------------------------
def test_a_linear_call_counts_its_closed_form_times_its_calls():
    stage = FakeStage(torch.float32)
    linear = stage.build(lambda: torch.nn.Linear(64, 32))
    stage.add("linear", lambda: linear(torch.randn(8, 64)), calls=5)
    cost = stage.measure()
    [piece] = cost.pieces
    assert piece.flops_per_call == 2 * 8 * 64 * 32 and cost.flops == 5 * 2 * 8 * 64 * 32
    assert cost.resident_bytes == (64 * 32 + 32) * 4 and cost.peak_bytes >= cost.resident_bytes + 8 * 32 * 4


def test_fake_pieces_peak_equals_the_real_run():
    """The same call tracked on real tensors and on FakeTensors (through measure_pieces): the same peak."""
    torch.manual_seed(0)
    real = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 16)).eval()
    with torch.no_grad():
        real_peak = track_peak_memory(lambda: real(torch.randn(8, 64)), real)["total"]
    stage = FakeStage(torch.float32)
    fake = stage.adopt(real)
    stage.add("mlp", lambda: fake(torch.randn(8, 64)))
    assert stage.measure().peak_bytes == real_peak


def test_a_tiny_unet_step_counts_what_a_real_run_counts(one_thread):
    from diffusers import UNet2DConditionModel

    from baselines.blip_diffusion import TINY_UNET

    torch.manual_seed(0)
    real = UNet2DConditionModel(**TINY_UNET).eval()

    def step(unet):
        return unet(torch.randn(2, 4, 16, 16), torch.tensor(500), torch.randn(2, 7, 32)).sample

    with torch.no_grad():
        real_flops = count_flops(lambda: step(real))[1]
    stage = FakeStage(torch.float32)
    fake = stage.build(lambda: UNet2DConditionModel(**TINY_UNET))
    stage.add("step", lambda: step(fake), calls=3)
    cost = stage.measure(memory=False)
    assert cost.pieces[0].flops_per_call == real_flops > 0 and cost.flops == 3 * real_flops


def test_a_piece_sees_the_tensors_an_earlier_piece_keeps():
    """A cache built by one piece and read by the next counts toward the next one's peak (``tracked``)."""
    mode = FakeTensorMode()
    kept: dict[str, torch.Tensor] = {}

    def build() -> None:
        kept["cache"] = torch.zeros(1024, 256)

    def read() -> torch.Tensor:
        return kept["cache"].sum()

    plain = measure_pieces([Piece("build", build), Piece("read", read)], mode, [])
    tracked = measure_pieces([Piece("build", build), Piece("read", read, tracked=lambda: [kept["cache"]])], mode, [])
    assert tracked.pieces[1].peak_bytes - plain.pieces[1].peak_bytes == 1024 * 256 * 4


def test_run_for_real_times_the_same_calls_and_counts_the_same_flops(one_thread):
    stage = FakeStage(torch.float32)
    linear = stage.build(lambda: torch.nn.Linear(64, 32))
    stage.add("linear", lambda: linear(torch.randn(8, 64)), calls=10)
    fake = stage.measure()
    with run_for_real("cpu", warmup=1, repeats=2):
        real_stage = FakeStage(torch.float32)
        real_linear = real_stage.build(lambda: torch.nn.Linear(64, 32))
        real_stage.add("linear", lambda: real_linear(torch.randn(8, 64)), calls=10)
        real = real_stage.measure()
    assert not isinstance(real_linear.weight, torch._subclasses.fake_tensor.FakeTensor)
    assert real.flops == fake.flops and real.device == "cpu" and fake.seconds is None
    assert real.seconds == pytest.approx(10 * real.pieces[0].seconds_per_call) and real.seconds > 0
    stage_cost = StageCost.from_pieces("linear", real)
    assert stage_cost.measured and stage_cost.seconds == real.seconds and stage_cost.source.startswith("measured")


# --- the cost of every method ---------------------------------------------------------------------------------------
def test_cfg_doubles_the_denoiser_batch_and_the_prompt_encodes(one_thread):
    with_cfg = {part["name"]: part for part in tiny_cost("ip-adapter+i2v").stages[0].parts}
    without = {part["name"]: part for part in tiny_cost("ip-adapter+i2v", guidance=1.0).stages[0].parts}
    assert with_cfg["UNet step"]["tflops_per_call"] == pytest.approx(2 * without["UNet step"]["tflops_per_call"])
    assert with_cfg["UNet step"]["calls"] == without["UNet step"]["calls"] == 4  # the tiny preset's steps
    assert (with_cfg["text encoder 1"]["calls"], without["text encoder 1"]["calls"]) == (2, 1)
    assert with_cfg["VAE decode"] == without["VAE decode"]


def test_a_two_stage_cost_is_its_stage_1_plus_the_shared_stage_2(one_thread):
    from baselines.ssr_encoder import stage1_cost
    from baselines.two_stage import i2v_cost

    spec = get_method("ssr-encoder+i2v")
    options, context = spec.parse_options({}), tiny_context("ssr-encoder+i2v")
    stage1, stage2 = tiny_cost("ssr-encoder+i2v").stages
    assert stage2 == i2v_cost(options, context) == tiny_cost("reference+i2v").stages[1]
    assert stage1 == stage1_cost(options, context) and stage1.name.startswith("stage 1")
    assert tiny_cost("reference+i2v").stages[0].tflops == 0
    assert [part["name"] for part in stage2.parts] == ["T5 prompt encode", "VAE encode (image)", "transformer step",
                                                       "VAE decode"]


# --- the cache, the harness lookup and the Table 1 estimate ---------------------------------------------------------
def _cost(method: str, seconds: float, tflops: float = 1.0) -> MethodCost:
    return MethodCost(method, [StageCost("video", tflops, 2.0, seconds)])


def test_cached_costs_give_run_times_on_one_and_eight_gpus(tmp_path, monkeypatch):
    path = tmp_path / "estimate_methods.json"
    cached = {"videobooth": _cost("videobooth", 6.0), "wan-vace[variant=14b]": _cost("wan-vace", 2000.0)}
    path.write_text(json.dumps({"methods": {key: cost.to_dict() for key, cost in cached.items()}}))
    monkeypatch.setenv(costs.ESTIMATES_ENV, str(path))
    assert costs.cached_cost("videobooth") == cached["videobooth"]
    assert costs.cached_cost("wan-vace", {"variant": "14b"}).seconds_per_video == 2000.0
    assert costs.cached_cost("customvideox") is None and costs.estimated_run_seconds("customvideox", 10) is None
    assert costs.estimated_run_seconds("videobooth", 750) == 750 * 6.0
    assert costs.estimated_run_seconds("videobooth", 750, gpus=8) == math.ceil(750 / 8) * 6.0 == 94 * 6.0
    assert costs.cached_cost("videobooth", tflops_per_s=2 * EFFECTIVE_TFLOPS_PER_S).seconds_per_video == (
        pytest.approx(1.0 / (2 * EFFECTIVE_TFLOPS_PER_S)))  # rescaled FLOP-proportionally
    with pytest.raises(ValueError, match="gpus must be >= 1"):
        costs.run_seconds(1.0, 10, 0)


def test_table1_reproduction_covers_every_row_on_both_suites():
    table1 = in_published_order("table1", methods_by_paper_row())
    assert list(table1) == ["BLIP-Diffusion", "IP-Adapter", "λ-Eclipse", "SSR-Encoder",
                            "MS-Diffusion", "VideoBooth", "CustomVideoX"]
    seconds = {"blip-diffusion+i2v": 90.0, "videobooth": 6.0}
    rows = costs.reproduction_estimate(table1, {name: _cost(name, s) for name, s in seconds.items()})
    assert [(row.suite, row.cases) for row in rows][::7] == [("dreambench", 750), ("videobench", 530)]
    assert len(rows) == 14 and {row.method for row in rows} == {name for names in table1.values() for name in names}
    by_key = {(row.method, row.suite): row for row in rows}
    assert by_key["videobooth", "videobench"].seconds(8) == math.ceil(530 / 8) * 6.0
    assert by_key["customvideox", "dreambench"].seconds(1) is None  # not cached: no estimate, counted 0
    assert costs.total_seconds(rows, 1) == (750 + 530) * (90.0 + 6.0)
    table = costs.reproduction_table(rows)
    assert table.count("\n") == 2 + 14 and "| **all rows** |" in table and "| - |" in table
    assert costs.format_duration(7200) == "2.0 h" and costs.format_duration(None) == "-"


def _load_script(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_estimate_methods_script_writes_the_cache_the_harness_reads(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repo on sys.path
    script = _load_script("estimate_methods", monkeypatch)
    out = tmp_path / "estimate.json"
    result = script.main(["--tiny", "--methods", "videobooth,reference-still", "--out", str(out)])
    printed = capsys.readouterr().out
    assert set(result["methods"]) == {"videobooth", "reference-still"} and result["tiny"]
    monkeypatch.setenv(costs.ESTIMATES_ENV, str(out))
    assert costs.cached_cost("videobooth").tflops == result["methods"]["videobooth"]["tflops"] > 0
    assert "| videobooth | VideoBooth (tiny) |" in printed and "Table 1 reproduction" in printed
    rows = result["table1_reproduction"]["rows"]
    assert {row["method"] for row in rows if row["seconds_per_video"] is not None} == {"videobooth"}
    again = script.main(["--tiny", "--methods", "reference-pan", "--out", str(out)])  # keeps the others
    assert set(again["methods"]) == {"videobooth", "reference-still", "reference-pan"}


# --- the gpu_acceptance section -------------------------------------------------------------------------------------
def test_baselines_section_skips_what_does_not_fit_with_the_reason(acceptance):  # noqa: F811
    context = acceptance.Context(device=torch.device("cpu"), dtype=torch.float32, tiny=True,
                                 deadline=time.monotonic() + 2.0)
    rows = list(acceptance.baselines_section(context))
    assert [row.name for row in rows] == [f"{name}, s/video" for name in acceptance.baseline_timing.ORDER]
    assert all(row.value is None and row.status == "unmeasured" and row.note.startswith("not run: about 5 s needed")
               for row in rows)


@pytest.mark.slow
def test_baselines_section_times_every_stage_at_tiny_size(acceptance, tmp_path, one_thread):  # noqa: F811
    report = _run(acceptance, tmp_path, "--sections", "baselines", "--section-budget", "baselines=600",
                  "--budget-s", "900")
    [section] = report["sections"]
    assert section["name"] == "baselines" and section["status"] == "ok"
    rows = {row["name"]: row for row in section["rows"]}
    assert all(row["value"] > 0 and row["status"] == "info" for row in rows.values())
    stage2 = [name for name in rows if ": stage 2: " in name]
    assert stage2 == ["reference+i2v: stage 2: CogVideoX-5B-I2V (tiny), s/video"]  # measured once, reused
    for name in acceptance.baseline_timing.ORDER:
        if get_method(name).kind == "two-stage":
            video = rows[f"{name}: video (stage 1 + stage 2), s/video"]["value"]
            stage1 = sum(row["value"] for key, row in rows.items() if key.startswith(f"{name}: stage 1"))
            assert video == pytest.approx(stage1 + rows[stage2[0]]["value"])
        else:
            assert any(key.startswith(f"{name}: ") and "peak" in row["note"] for key, row in rows.items())


def test_text_call_makes_its_tokens_inside_the_stage_mode():
    stage = FakeStage(torch.float32)
    embedding = stage.build(lambda: torch.nn.Embedding(10, 4))
    stage.add("embed", text_call(embedding, 7, batch=3))
    assert stage.measure().pieces[0].flops_per_call == 0  # a lookup: no matmul, but it runs on FakeTensors


def test_cost_key_writes_option_values_as_their_json_reads():
    assert costs.cost_key("m") == "m" and costs.cost_key("m", {}) == "m"
    assert costs.cost_key("m", {"size": (1, 2), "lora": Path("a") / "b.safetensors"}) == (
        "m[lora=a/b.safetensors,size=[1, 2]]")


def test_row_estimator_takes_any_spec_and_prefers_the_rows_own_options():
    from dataclasses import dataclass

    @dataclass
    class Options:
        variant: str = "small"
        steps: int = 50

    class Spec:
        name = "toy"

        @staticmethod
        def parse_options(raw):
            return Options(**raw)

    estimate = costs.row_estimator({"toy": _cost("toy", 10.0), "toy[variant=big]": _cost("toy", 30.0)})
    assert estimate(Spec, Options(), None)[0] == 10.0
    assert estimate(Spec, Options(variant="big"), None)[0] == 30.0
    seconds, source = estimate(Spec, Options(steps=20), None)  # not cached with these options: the defaults' cost
    assert seconds == 10.0 and source.startswith("cost model of the default options")
    assert costs.row_estimator({})(Spec, Options(), None) is None


def test_training_route_rows_follow_the_papers_schedule(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repo on sys.path
    script = _load_script("training_route_cost", monkeypatch)
    micro = {"gradient_checkpointing": False, "micro_step_tflops": 100.0, "peak_gib": 47.5}
    (row,) = script.training_rows({"training": [micro]}, 50.0)
    assert row["seconds_per_item"] == 2 * 100.0 / 50.0  # gradient accumulation 2
    assert row["hours"] == 4.0 * 10_000 / 3600 and row["gpu_hours"] == row["hours"] * 16
    saved = tmp_path / "route.json"
    saved.write_text(json.dumps({"rows": [row]}))
    assert script.main(["--report-only", str(saved)])["rows"] == [row]
    assert "| customvideox train (gradient checkpointing off) | optimizer step | 200.00 | 4.000 | 10,000 | 177.8 |" \
        in capsys.readouterr().out
