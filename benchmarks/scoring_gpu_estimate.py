"""A cost-model estimate of the GPU scoring speed-up (the scorer against the peers' per-frame/per-pair loops) from
counts made on the CPU, for machines without a GPU; ``benchmarks/gpu_acceptance.py``'s ``scoring`` section measures
the real ratio on one.

Both paths of :mod:`score_throughput` run on the CPU with the operators the CUDA path runs (RAFT's ``convolutions``
direct, as ``auto`` is on CUDA; no CPU workers) at the real frame size, with a few frames; two counts are made per
metric family and path:

* operator calls (every ATen operator that reaches a kernel, views and metadata excluded): on a GPU each is at least
  one kernel launch, and eager PyTorch spends several microseconds of host time per launch;
* FLOPs (``FlopCounterMode``: matrix products and convolutions).

Counted at ``--frames`` and ``--frames + 2`` frames and extrapolated linearly to ``--target-frames`` (the peers loop
per frame and per pair; the scorer batches up to its batch sizes, so its RAFT calls grow per batch of
``pair_batch_size`` pairs, and its CLIP/DINO calls are constant up to ``batch_size`` frames). The estimate of one
path is ``max(calls x launch_us, FLOPs / rate)`` (host-bound or device-bound, the two overlapping), summed over the
families, for each assumed ``(launch_us, rate)``: the host time per operator and the sustained fp32 rate of these
convolutions and matrix products (cuDNN may use TF32 for convolutions, PyTorch's default; matrix products stay
fp32). These are assumptions, not measurements: the printed range is the estimate.

    python benchmarks/scoring_gpu_estimate.py --frames 3 --height 480 --width 720 --target-frames 49
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import score_throughput
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from videobench.metrics import MetricInput

#: Operators that only describe a tensor (no kernel on a GPU).
_METADATA_OPERATORS = frozenset({
    "view", "_unsafe_view", "as_strided", "expand", "permute", "transpose", "t", "slice", "select", "unsqueeze",
    "squeeze", "reshape", "alias", "detach", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh",
    "empty", "empty_strided", "empty_like", "_reshape_alias", "view_as", "unfold", "diagonal", "narrow",
    "contiguous", "_to_copy_meta", "is_same_size", "_local_scalar_dense", "item", "size", "stride", "dim",
})

#: (host microseconds per operator, sustained TFLOP/s) pairs the estimate is printed for: eager PyTorch on an H100
#: with a fast host (5 us per operator) or a busy one (10 us); these shapes at 25 or 50 TFLOP/s (fp32 without tensor
#: cores: the H100's peak is 67) or at 150 (cuDNN's TF32 tensor-core convolutions, PyTorch's default for both paths;
#: RAFT's work is almost all convolutions).
ASSUMPTIONS = ((5.0, 25.0), (5.0, 50.0), (5.0, 150.0), (10.0, 25.0), (10.0, 50.0), (10.0, 150.0))


class OperatorCalls(TorchDispatchMode):
    """Counts the ATen operators that run a kernel (:data:`_METADATA_OPERATORS` excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name not in _METADATA_OPERATORS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def count(metric, sample: MetricInput, path: str) -> tuple[int, float]:
    """Operator calls and FLOPs of one scoring of ``sample`` by ``metric`` on ``path`` (``batched`` or ``naive``)."""
    score_throughput.forget_embeddings(metric)
    run = (lambda: metric.score(sample)) if path == "batched" else (
        lambda: score_throughput.NAIVE[metric.family](metric, sample))
    calls = OperatorCalls()
    with FlopCounterMode(display=False) as flops, calls:
        run()
    return sum(calls.calls.values()), float(flops.get_total_flops())


def extrapolate(small: float, large: float, frames: int, target: int, step: int = 2) -> float:
    """The value at ``target`` frames on the line through ``(frames, small)`` and ``(frames + step, large)``."""
    return small + (large - small) * (target - frames) / step


def estimate(counts: dict[str, dict[str, tuple[float, float]]], launch_us: float, tflops: float) -> dict[str, float]:
    """Estimated seconds per path: per family ``max(calls x launch_us, FLOPs / rate)``, summed."""
    return {path: sum(max(calls * launch_us * 1e-6, flops / (tflops * 1e12)) for calls, flops in row.values())
            for path, row in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3, help="frames of the counted videos (and this plus 2)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--target-frames", type=int, default=49)
    parser.add_argument("--references", type=int, default=3)
    args = parser.parse_args()

    metrics = score_throughput.random_metrics("cpu")
    for metric in metrics:
        metric.cpu_workers = 1  # the GPU has none
        if metric.family == "dynamic":
            metric.convolutions = "direct"  # what "auto" is on CUDA
    sizes = (args.frames, args.frames + 2)
    raw: dict[int, dict[str, dict[str, tuple[int, float]]]] = {}
    for frames in sizes:
        sample = score_throughput.build_sample(frames, args.height, args.width, references=args.references)
        raw[frames] = {path: {metric.family: count(metric, sample, path) for metric in metrics}
                       for path in ("batched", "naive")}
    pair_batch = next(m.pair_batch_size for m in metrics if m.family == "dynamic")
    counts: dict[str, dict[str, tuple[float, float]]] = {"batched": {}, "naive": {}}
    for path in counts:
        for family in raw[sizes[0]][path]:
            (calls_small, flops_small), (calls_large, flops_large) = (raw[n][path][family] for n in sizes)
            calls = extrapolate(calls_small, calls_large, args.frames, args.target_frames)
            if path == "batched" and family == "dynamic":  # one RAFT call sequence per batch of pairs
                calls = calls_large * math.ceil((args.target_frames - 1) / pair_batch)
            elif path == "batched":  # one batch of frames (and one of references) up to the batch size
                calls = calls_large
            counts[path][family] = (calls, extrapolate(flops_small, flops_large, args.frames, args.target_frames))

    print(f"RANDOM WEIGHTS (counts only) | counted on CPU at {sizes[0]} and {sizes[1]} frames of "
          f"{args.height}x{args.width}, extrapolated to {args.target_frames} frames, {args.references} references")
    print("\n| family  | scorer calls | scorer GFLOP | peers' calls | peers' GFLOP |")
    print("|---------|--------------|--------------|--------------|--------------|")
    for family in counts["batched"]:
        (calls_b, flops_b), (calls_n, flops_n) = counts["batched"][family], counts["naive"][family]
        print(f"| {family:7} | {calls_b:12.0f} | {flops_b / 1e9:12.1f} | {calls_n:12.0f} | {flops_n / 1e9:12.1f} |")
    print("\n| host us/operator | TFLOP/s | scorer s | peers' s | speed-up |")
    print("|------------------|---------|----------|----------|----------|")
    for launch_us, tflops in ASSUMPTIONS:
        seconds = estimate(counts, launch_us, tflops)
        print(f"| {launch_us:16g} | {tflops:7g} | {seconds['batched']:8.3f} | {seconds['naive']:8.3f} | "
              f"{seconds['naive'] / seconds['batched']:7.2f}x |")


if __name__ == "__main__":
    main()
