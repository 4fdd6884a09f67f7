"""Per-method cost estimates (FLOPs, peak memory, seconds per video per stage) and what reproducing Table 1 costs.

Issue 10, section 7. For every registered method with a cost model (``MethodSpec.cost``; all baselines,
CustomVideoX and the calibration rows), at the real sizes and default options: the FLOPs per video and the peak
memory of each stage on FakeTensors (no weights, no GPU: :mod:`videobench.costs`, :mod:`mediaio.fakecost`), and a
FLOP-proportional time at ``--tflops-per-s`` (default 359 TFLOP/s, the H100 measurement of issue 3). Then the
wall-clock estimate of Table 1 (every Table 1 row on DreamBench's 750 and VideoBench's 530 cases) on 1 and on 8
GPUs. The results are cached in ``reports/estimate_methods.json``, which ``videobench.costs`` (and ``videobench
reproduce``) read; ``--methods`` recomputes some methods and keeps the file's others.

Usage::

    python benchmarks/estimate_methods.py                                # all methods + variants, ~20 min on 2 cores
    python benchmarks/estimate_methods.py --methods videobooth,wan-vace  # recompute these, keep the rest
    python benchmarks/estimate_methods.py --tiny --out /tmp/tiny.json    # the tiny presets (a quick check)
    python benchmarks/estimate_methods.py --report-only                  # print the cached tables

Estimates, not measurements: FLOPs are exact for the code that runs (matmuls, convolutions, attention), the time
is FLOP-proportional at a bf16 DiT's efficiency (a lower bound for UNets, VAEs and fp32 stages), the peak counts
weights, activations and temporaries as allocated on the CPU's kernels (no CUDA workspaces or allocator slack).
``python benchmarks/gpu_acceptance.py --device cuda --sections baselines`` measures them on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videobench import costs  # noqa: E402
from videobench.costs import MethodCost, cost_key, format_duration  # noqa: E402

#: Extra settings costed besides the defaults (``method[key=value]`` in the cache).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "customvideox": [{"mode": "cached"}],
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
            cost = costs.compute_cost(name, overrides, context, rate)
            results[key] = cost
            log(f"[{time.perf_counter() - started:6.1f} s] {key}: {cost.tflops:.2f} TFLOP, {cost.peak_gib:.1f} GiB, "
                f"{cost.seconds_per_video:.1f} s/video")
    return results


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
    rows = costs.reproduction_estimate(methods)
    return {
        "suites": costs.TABLE1_SUITES,
        "rows": [{**row.__dict__, **{f"seconds_{g}_gpu": row.seconds(g) for g in gpus}} for row in rows],
        "total_seconds": {str(g): costs.total_seconds(rows, g) for g in gpus},
        "markdown": costs.reproduction_table(rows, gpus),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        default=None, help="comma-separated methods to (re)compute (default: all with a cost)")
    parser.add_argument("--no-variants", action="store_true", help="only the default options")
    parser.add_argument("--tiny", action="store_true", help="the tiny presets (a quick check of the script)")
    parser.add_argument("--tflops-per-s", type=float, default=costs.EFFECTIVE_TFLOPS_PER_S,
                        help="effective TFLOP/s of the reference GPU (default: the H100 measurement of issue 3)")
    parser.add_argument("--gpus", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8],
                        help="GPU counts of the Table 1 estimate (default 1,8)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON cache (default {costs.ESTIMATES_FILE}; --tiny: not written unless given)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the cache, compute nothing")
    args = parser.parse_args(argv)

    out = args.out or (None if args.tiny else costs.ESTIMATES_FILE)
    previous = json.loads(out.read_text(encoding="utf-8")) if out is not None and out.is_file() else {}
    methods = {key: MethodCost.from_dict(value) for key, value in previous.get("methods", {}).items()}
    methods = {key: cost.at_rate(args.tflops_per_s) for key, cost in methods.items()}
    started = time.perf_counter()
    if not args.report_only:
        names = args.methods or registered_costs()
        methods.update(compute(names, args.tiny, args.tflops_per_s, not args.no_variants))
    result: dict[str, Any] = {
        **{key: value for key, value in previous.items() if key not in ("methods", "table1_reproduction")},
        "estimate": True, "tiny": args.tiny, "tflops_per_s": args.tflops_per_s, "rate_source": costs.RATE_SOURCE,
        "reference_gpu": costs.REFERENCE_GPU,
        "methods": {key: cost.to_dict() for key, cost in sorted(methods.items())},
        "table1_reproduction": reproduction(methods, args.gpus),
    }
    if not args.report_only:
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
    if out is not None and not args.report_only:
        from mediaio.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=2, default=str))
        print(f"\nwritten: {out}")
    return result


if __name__ == "__main__":
    main()
