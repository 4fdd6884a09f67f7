"""Per-method cost estimates (FLOPs, peak memory, seconds per video per stage) and what reproducing Table 1 costs.

For every registered method with a cost model (``MethodSpec.cost``; all baselines,
CustomVideoX and the calibration rows), at the real sizes and default options: the FLOPs per video and the peak
memory of each stage on FakeTensors (no weights, no GPU: :mod:`costmodel.method_cost`, :mod:`costmodel.counting`),
and a FLOP-proportional time at ``--tflops-per-s`` (default 359 TFLOP/s, vanilla CogVideoX-5B's step measured on an H100). Then the
wall-clock estimate of Table 1 (every Table 1 row on DreamBench's 750 and VideoBench's 530 cases) on 1 and on 8
GPUs. The results are cached in ``reports/estimate_methods.json``, which :mod:`costmodel.estimates` (and ``videobench
reproduce``) read; ``--methods`` recomputes some methods and keeps the file's others.

Usage::

    python benchmarks/estimate_methods.py                                # all methods + variants, ~20 min on 2 cores
    python benchmarks/estimate_methods.py --methods videobooth,wan-vace  # recompute these, keep the rest
    python benchmarks/estimate_methods.py --tiny --out /tmp/tiny.json    # the tiny presets (a quick check)
    python benchmarks/estimate_methods.py --report-only                  # print the cached tables
    python benchmarks/estimate_methods.py --cpu-runs ip-adapter+i2v,...  # real-config CPU runs, one at a time

``--cpu-runs``: each method's real-size components (random weights, built by its
cost model with the same classes, adapters and attention processors the method uses) run every call of one
generation once, for real, on this machine's CPU at a small shape with 1 step (:data:`CPU_RUNS`), each in its own
subprocess, one after the other; the wall time and the peak RSS go into the JSON (``cpu_real_config_runs``).

Estimates, not measurements: FLOPs are exact for the code that runs (matmuls, convolutions, attention), the time
is FLOP-proportional at a bf16 DiT's efficiency (a lower bound for UNets, VAEs and fp32 stages), the peak counts
weights, activations and temporaries as allocated on the CPU's kernels (no CUDA workspaces or allocator slack).
``python benchmarks/gpu_acceptance.py --device cuda --sections baselines`` measures them on a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel import estimates  # noqa: E402
from costmodel import method_cost as costs  # noqa: E402
from costmodel.estimates import cost_key, format_duration  # noqa: E402
from costmodel.method_cost import MethodCost  # noqa: E402

#: Extra settings costed besides the defaults (``method[key=value]`` in the cache).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "customvideox": [{"mode": "cached"}, {"ablation": "naive"}, {"ablation": "3d-ra"}, {"ablation": "3d-ra+tab"}],
    "ip-adapter+i2v": [{"variant": "sdxl"}],
    "wan-vace": [{"variant": "14b"}],
}


def registered_costs() -> list[str]:
    """Every registered method with a cost model, by name."""
    from videobench.methods import available_methods

    return [name for name, spec in available_methods().items() if spec.cost is not None]


def compute(names: Sequence[str], tiny: bool, rate: float, variants: bool, log=print) -> dict[str, MethodCost]:
    """The cost of each method in ``names`` (and its :data:`VARIANTS` unless ``variants`` is False), by cache key."""
    from videobench.methods import MethodContext, get_method

    results = {}
    for name in names:
        preset = "tiny" if tiny and "tiny" in get_method(name).presets else None  # calibration rows have none
        for overrides in [{}] + (VARIANTS.get(name, []) if variants else []):
            key = cost_key(name, overrides)
            started = time.perf_counter()
            context = MethodContext(device="cuda", preset=preset)
            spec = get_method(name)
            cost = spec.estimate_cost(spec.parse_options(dict(overrides)), context)
            cost = cost.at_rate(rate) if rate != cost.tflops_per_s else cost
            results[key] = cost
            log(f"[{time.perf_counter() - started:6.1f} s] {key}: {cost.tflops:.2f} TFLOP, {cost.peak_gib:.1f} GiB, "
                f"{cost.seconds_per_video:.1f} s/video")
    return results


@dataclass(frozen=True)
class CpuRun:
    """A real-config CPU run: ``cost`` (``module:function``, ``function(options, context) -> StageCost | MethodCost``;
    a two-stage method's stage 1 only: CogVideoX-5B-I2V and T5-XXL would need 21 GB) with ``options`` and
    ``context`` giving a small shape and 1 step, in ``dtype`` (fp32 where the weights fit in ~12 GB, else bf16),
    with ``patches`` (``module:ATTRIBUTE`` -> value) where even bf16 does not fit, each stated in ``note``."""

    cost: str
    options: dict[str, Any]
    dtype: str = "fp32"
    context: dict[str, Any] = field(default_factory=dict)
    patches: dict[str, Any] = field(default_factory=dict)
    note: str = ""


SMALL_IMAGE = {"height": 64, "width": 64, "steps": 1}
CPU_RUNS: dict[str, CpuRun] = {
    "ip-adapter+i2v": CpuRun("baselines.ip_adapter:stage1_cost", SMALL_IMAGE),
    "blip-diffusion+i2v": CpuRun("baselines.blip_diffusion:stage1_cost", SMALL_IMAGE),
    "ssr-encoder+i2v": CpuRun("baselines.ssr_encoder:stage1_cost", SMALL_IMAGE),
    "lambda-eclipse+i2v": CpuRun("baselines.lambda_eclipse:stage1_cost", SMALL_IMAGE, "bf16",
                                 note="bf16: CLIP-G text + vision, the prior and the Kandinsky decoder are 15.6 GB "
                                      "in fp32"),
    "ms-diffusion+i2v": CpuRun("baselines.ms_diffusion:stage1_cost", {"resolution": 64, "steps": 1}, "bf16",
                               note="bf16, the VAE too (SDXL, CLIP-G and the adapter are 19 GB in fp32)"),
    "videobooth": CpuRun("baselines.videobooth:cost", {"steps": 1},
                         note="VideoBooth's native 16x256x256 (it takes no other size), 1 step: 2 UNet calls"),
    "wan-vace": CpuRun("baselines.wan_vace:cost", {"variant": "1.3b", "geometry": "suite", "steps": 1}, "bf16",
                       context={"num_frames": 5, "height": 64, "width": 64},
                       patches={"baselines.wan_vace:UMT5_XXL": {
                           "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 1,
                           "num_heads": 64, "relative_attention_num_buckets": 32,
                           "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu"}},
                       note="5x64x64 (suite geometry), bf16; UMT5-XXL with 1 of its 24 layers (all 24 are 11.4 GB "
                            "in bf16); the 1.3B transformer with its 15 VACE blocks and the VAE (fp32) at real config"),
}


def _resolve(path: str) -> tuple[Any, str]:
    module, _, attribute = path.partition(":")
    return importlib.import_module(module), attribute


def cpu_run(name: str) -> dict[str, Any]:
    """Run :data:`CPU_RUNS` ``[name]`` in this process; its calls' seconds, the wall time and the peak RSS."""
    import torch

    from costmodel.counting import run_for_real
    from videobench.methods import MethodContext, get_method

    run = CPU_RUNS[name]
    started = time.perf_counter()
    for path, value in run.patches.items():
        module, attribute = _resolve(path)
        setattr(module, attribute, value)
    module, attribute = _resolve(run.cost)
    spec = get_method(name)
    context = MethodContext(device="cpu", dtype=run.dtype, **run.context)
    with run_for_real("cpu", warmup=0, repeats=1), torch.no_grad():
        cost = getattr(module, attribute)(spec.parse_options(run.options), context)
    stages = cost.stages if isinstance(cost, MethodCost) else [cost]
    return {
        "method": name, "options": run.options, "context": run.context, "dtype": run.dtype, "note": run.note,
        "patched": sorted(run.patches), "wall_s": time.perf_counter() - started,
        "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch_threads": torch.get_num_threads(),
        "stages": [{"name": stage.name, "seconds": stage.seconds, "tflops": stage.tflops,
                    "parts": [{key: part[key] for key in ("name", "calls", "tflops_per_call", "seconds_per_call")}
                              for part in stage.parts]} for stage in stages],
    }


def cpu_runs(names: Sequence[str], log=print) -> dict[str, dict[str, Any]]:
    """:func:`cpu_run` of each name in its own subprocess, one after the other (a failure or a kill is recorded)."""
    results = {}
    for name in names:
        log(f"real-config CPU run: {name} ({CPU_RUNS[name].note or 'fp32'})")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--cpu-run", name], capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode == 0 and lines:
            results[name] = json.loads(lines[-1])
            log(f"  {results[name]['wall_s']:.0f} s wall, peak RSS {results[name]['max_rss_gib']:.1f} GiB")
        else:
            results[name] = {"method": name, "failed": True, "returncode": done.returncode,
                             "wall_s": time.perf_counter() - started, "error": done.stderr[-2000:]}
            log(f"  FAILED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return results


def cpu_runs_table(runs: Mapping[str, dict[str, Any]]) -> str:
    """Markdown: method, shape and dtype, wall time, peak RSS, the calls' seconds."""
    lines = ["| method | run | wall s | peak RSS GiB | calls (s each) |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        if run.get("failed"):
            lines.append(f"| {name} | failed (exit {run['returncode']}) | {run['wall_s']:.0f} | - | - |")
            continue
        setting = ", ".join(f"{k}={v}" for k, v in {**run["options"], **run["context"]}.items())
        calls = "; ".join(f"{part['name']} {part['seconds_per_call']:.1f}" for stage in run["stages"]
                          for part in stage["parts"])
        lines.append(f"| {name} | {setting}, {run['dtype']} | {run['wall_s']:.0f} | {run['max_rss_gib']:.1f} | "
                     f"{calls} |")
    return "\n".join(lines)


def cost_table(methods: Mapping[str, MethodCost]) -> str:
    """Markdown: one line per stage (method, stage, TFLOP/video, peak GiB, s/video at the cost's rate), a total per
    multi-stage method."""
    lines = ["| method | stage | TFLOP/video | est. peak GiB | est. s/video |", "|---|---|---|---|---|"]
    for key, cost in methods.items():
        for stage in cost.stages:
            lines.append(f"| {key} | {stage.name} | {stage.tflops:.2f} | {stage.peak_gib:.1f} | {stage.seconds:.1f} |")
        if len(cost.stages) > 1:
            lines.append(f"| {key} | **total** | **{cost.tflops:.2f}** | {cost.peak_gib:.1f} | "
                         f"**{cost.seconds_per_video:.1f}** |")
    return "\n".join(lines)


def parts_table(methods: Mapping[str, MethodCost]) -> str:
    """Markdown: every call each stage adds up (calls, TFLOP per call and in all, peak GiB while it runs)."""
    lines = ["| method | stage | call | calls | TFLOP/call | TFLOP | peak GiB | what |", "|" + "---|" * 8]
    for key, cost in methods.items():
        for stage in cost.stages:
            for part in stage.parts:
                lines.append(f"| {key} | {stage.name} | {part['name']} | {part['calls']:g} | "
                             f"{part['tflops_per_call']:.3f} | {part['tflops']:.2f} | {part['peak_gib']:.1f} | "
                             f"{part['note']} |")
    return "\n".join(lines)


def reproduction(methods: Mapping[str, MethodCost], gpus: Sequence[int]) -> dict[str, Any]:
    """Table 1's rows on both suites from ``methods``: the rows, the Markdown table, totals per GPU count."""
    from videobench.methods import methods_by_paper_row
    from videobench.published import in_published_order

    rows = estimates.reproduction_estimate(in_published_order("table1", methods_by_paper_row()), methods)
    return {
        "suites": estimates.TABLE1_SUITES,
        "rows": [{**row.__dict__, **{f"seconds_{g}_gpu": row.seconds(g) for g in gpus}} for row in rows],
        "total_seconds": {str(g): estimates.total_seconds(rows, g) for g in gpus},
        "markdown": estimates.reproduction_table(rows, gpus),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        default=None, help="comma-separated methods to (re)compute (default: all with a cost)")
    parser.add_argument("--no-variants", action="store_true", help="only the default options")
    parser.add_argument("--tiny", action="store_true", help="the tiny presets (a quick check of the script)")
    parser.add_argument("--tflops-per-s", type=float, default=costs.EFFECTIVE_TFLOPS_PER_S,
                        help="effective TFLOP/s of the reference GPU (default: vanilla CogVideoX-5B's step measured on an H100)")
    parser.add_argument("--gpus", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8],
                        help="GPU counts of the Table 1 estimate (default 1,8)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON cache (default {estimates.ESTIMATES_FILE}; --tiny: not written unless given)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the cache, compute nothing")
    parser.add_argument("--cpu-runs", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        default=None, help=f"real-config CPU runs, one at a time (of {', '.join(CPU_RUNS)})")
    parser.add_argument("--cpu-run", default=None, help=argparse.SUPPRESS)  # the subprocess of --cpu-runs
    args = parser.parse_args(argv)
    if args.cpu_run:
        print(json.dumps(cpu_run(args.cpu_run), default=str), flush=True)
        return {}

    out = args.out or (None if args.tiny else estimates.ESTIMATES_FILE)
    previous = json.loads(out.read_text(encoding="utf-8")) if out is not None and out.is_file() else {}
    methods = {key: MethodCost.from_dict(value) for key, value in previous.get("methods", {}).items()}
    methods = {key: cost.at_rate(args.tflops_per_s) for key, cost in methods.items()}
    started = time.perf_counter()
    runs = dict(previous.get("cpu_real_config_runs", {}))
    if args.cpu_runs is not None:
        runs.update(cpu_runs(args.cpu_runs))
    elif not args.report_only:
        names = args.methods or registered_costs()
        methods.update(compute(names, args.tiny, args.tflops_per_s, not args.no_variants))
    result: dict[str, Any] = {
        **{key: value for key, value in previous.items() if key not in ("methods", "table1_reproduction")},
        "estimate": True, "tiny": args.tiny, "tflops_per_s": args.tflops_per_s, "rate_source": costs.RATE_SOURCE,
        "reference_gpu": costs.REFERENCE_GPU,
        "methods": {key: cost.to_dict() for key, cost in sorted(methods.items())},
        "table1_reproduction": reproduction(methods, args.gpus),
        **({"cpu_real_config_runs": runs} if runs else {}),
    }
    if args.cpu_runs is None and not args.report_only:
        import diffusers
        import torch

        result.update(torch=torch.__version__, diffusers=diffusers.__version__,
                      seconds=time.perf_counter() - started)
    print(f"\nper-method cost per video at {args.tflops_per_s:g} TFLOP/s ({costs.REFERENCE_GPU}; {costs.RATE_SOURCE})")
    print(cost_table(dict(sorted(methods.items()))))
    totals = result["table1_reproduction"]["total_seconds"]
    print("\nTable 1 reproduction (generation only; model loading and scoring not included):")
    print(result["table1_reproduction"]["markdown"])
    print("all rows: " + ", ".join(f"{format_duration(totals[str(g)])} on {g} GPU{'s' if g > 1 else ''}"
                                   for g in args.gpus))
    if runs:
        print("\nreal-config CPU runs (random weights, small shape, 1 step):")
        print(cpu_runs_table(runs))
    if out is not None and (not args.report_only or args.cpu_runs is not None):
        from mediaio.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=2, default=str))
        print(f"\nwritten: {out}")
    return result


if __name__ == "__main__":
    main()
