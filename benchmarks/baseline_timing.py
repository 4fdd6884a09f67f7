"""Seconds per video of the comparison baselines at real sizes with random weights: their cost models run for real.

Each method's cost model (``MethodSpec.cost``, :mod:`costmodel.method_cost`) lists the
calls one video makes on the components it builds from the real configs; inside
:func:`costmodel.counting.run_for_real` the same code builds those components on the GPU with random weights (in the
method's own dtype) and times each call: a denoiser step ``warmup`` + ``repeats`` times (the median, extrapolated to
the default number of steps), every other call (text/image encoders, the VAE encode and decode) once. Stage 2
(CogVideoX-5B-I2V, shared by every two-stage method) is measured once per process and reused.

``benchmarks/gpu_acceptance.py`` runs this as its ``baselines`` section (one row per stage and per method, within
the section's budget, in :data:`ORDER`); ``python benchmarks/baseline_timing.py --device cuda`` runs it alone.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.counting import run_for_real  # noqa: E402
from costmodel.method_cost import MethodCost  # noqa: E402
from videobench.methods import MethodContext, get_method  # noqa: E402

#: Measurement order: stage 2 first (every two-stage row needs it), the cheap SD-1.5-sized stage 1s, SDXL, then the
#: video models, the largest last (what the budget cuts is the least shared).
ORDER = ("reference+i2v", "ip-adapter+i2v", "blip-diffusion+i2v", "ssr-encoder+i2v", "lambda-eclipse+i2v",
         "ms-diffusion+i2v", "videobooth", "wan-vace")
#: Seconds a method needs on an H100/H200 (building its random components included), to skip what cannot finish:
#: stage 2 builds 5B + T5-XXL and decodes 49x480x720; Wan-VACE builds UMT5-XXL and encodes 81x480x832 twice.
NEEDS_S = {"reference+i2v": 60.0, "wan-vace": 75.0, "videobooth": 25.0, "ms-diffusion+i2v": 20.0}
DEFAULT_NEED_S = 15.0


def need_seconds(name: str, tiny: bool) -> float:
    """About how long measuring ``name`` takes (:data:`NEEDS_S`; a few seconds for the tiny presets)."""
    return 5.0 if tiny else NEEDS_S.get(name, DEFAULT_NEED_S)


def measure_method(name: str, device: str | torch.device, tiny: bool = False, warmup: int = 1, repeats: int = 2
                   ) -> MethodCost:
    """``name``'s default run timed on ``device`` (random weights, each method's own dtype; the tiny preset with
    ``tiny``); the GPU memory is released afterwards."""
    spec = get_method(name)
    context = MethodContext(device=str(device), preset="tiny" if tiny and spec.presets else None)
    try:
        with run_for_real(device, warmup=warmup, repeats=repeats):
            return spec.estimate_cost(spec.parse_options({}), context)
    finally:
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict[str, MethodCost]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny presets (a CPU check)")
    parser.add_argument("--methods", default=",".join(ORDER), help="comma-separated methods, in order")
    args = parser.parse_args(argv)
    results = {}
    for name in [n.strip() for n in args.methods.split(",") if n.strip()]:
        started = time.perf_counter()
        cost = results[name] = measure_method(name, args.device, args.tiny)
        for stage in cost.stages:
            print(f"{name} | {stage.name} | {stage.seconds:.2f} s/video | peak {stage.peak_gib:.1f} GiB | "
                  f"{stage.tflops:.1f} TFLOP | {stage.source}")
        print(f"  ({time.perf_counter() - started:.0f} s)")
    return results


if __name__ == "__main__":
    main()
