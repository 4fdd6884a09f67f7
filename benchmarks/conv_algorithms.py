"""Milliseconds per call of RAFT's refinement convolutions: direct (oneDNN, NCHW and channels-last) against
Winograd (:class:`videobench.metrics.winograd.WinogradConv2d`, output tiles 2, 4, 6), with each one's error.

The shapes are those of one refinement update of ``--pairs`` frame pairs at ``--height x --width`` (the flow at an
eighth of the frame size): the motion encoder's 3x3 convolutions, the flow head's, and the GRU's 1x5 / 5x1 hidden
and motion parts as :class:`videobench.metrics.raft.FusedGRU` splits them. Each timing is the median of ``--runs``
calls after one warm-up call; the error is the largest difference from a float64 ``F.conv2d``, over the largest
output. Random weights and inputs: timings and rounding only.

    python benchmarks/conv_algorithms.py --pairs 8 --height 128 --width 192
    python benchmarks/conv_algorithms.py --pairs 16 --height 256 --width 320 --runs 5

This is what :data:`videobench.metrics.raft.WINOGRAD_TILE` (4) and
:data:`videobench.metrics.raft.WINOGRAD_MIN_CHANNEL_PRODUCT` were chosen from. On the project's 2-core CPU machine
(AVX2, torch 2.14.1, oneDNN 3.12), 8 pairs at 128x192 (the smoke suite's size), direct NCHW / direct channels-last /
Winograd with 4x4 tiles, ms: 256 -> 192 3x3 25.4 / 20.6 / 11.6, 256 -> 126 3x3 14.7 / 10.8 / 10.3, 128 -> 64 3x3
4.7 / 4.0 / 3.5, 128 -> 256 3x3 20.0 / 23.5 / 7.7, 256 -> 2 3x3 2.1 / 1.1 / 6.4, 128 -> 384 1x5 15.8 / 10.3 / 8.2,
128 -> 256 1x5 8.2 / 9.4 / 5.4, 128 -> 128 1x5 4.8 / 5.1 / 3.4 (5x1 alike). Errors: 3x3 with 4x4 tiles 6e-6 to
1e-5 of the output scale, 1x5 1.4e-6; 2x2 tiles 3e-7 but slower; 6x6 tiles 1e-5 to 3e-5 and no faster overall.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from videobench.metrics.winograd import WinogradConv2d

#: (input channels, output channels, kernel) of the convolutions one RAFT-large refinement update runs.
REFINEMENT_CONVOLUTIONS = (
    (256, 192, (3, 3)), (256, 126, (3, 3)), (128, 64, (3, 3)),  # motion encoder
    (128, 256, (3, 3)), (256, 2, (3, 3)),  # flow head
    (128, 384, (1, 5)), (128, 256, (1, 5)), (128, 128, (1, 5)),  # GRU 1: motion, hidden z/r, hidden q
    (128, 384, (5, 1)), (128, 256, (5, 1)), (128, 128, (5, 1)),  # GRU 2
)


def median_ms(fn: Callable[[], torch.Tensor], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: tuple[int, int],
                     tiles: list[int], runs: int) -> list[str]:
    """The table cells of one convolution: direct NCHW ms, direct channels-last ms, then per tile ms and error."""
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=padding)
        scale = float(exact.abs().max())
        cells = [f"{median_ms(lambda: F.conv2d(x, weight, bias, padding=padding), runs):.2f}",
                 f"{median_ms(lambda: F.conv2d(x_last, weight, bias, padding=padding), runs):.2f}"]
        for tile in tiles:
            conv = WinogradConv2d(weight, bias, padding, tile)
            error = float((conv(x_last).double() - exact).abs().max()) / scale
            cells += [f"{median_ms(lambda c=conv: c(x_last), runs):.2f}", f"{error:.1e}"]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tiles", default="2,4,6", help="Winograd output tiles to time")
    args = parser.parse_args()
    tiles = [int(tile) for tile in args.tiles.split(",")]
    height, width = args.height // 8, args.width // 8
    print(f"torch threads {torch.get_num_threads()} | {args.pairs} pairs, flow {height}x{width} | ms per call "
          f"(median of {args.runs}), error / largest output")
    header = " | ".join(f"F({tile}) ms | err" for tile in tiles)
    print(f"\n| convolution | direct ms | channels-last ms | {header} |")
    print("|---|---|---|" + "---|---|" * len(tiles))
    generator = torch.Generator().manual_seed(0)
    for in_channels, out_channels, kernel in REFINEMENT_CONVOLUTIONS:
        padding = (kernel[0] // 2, kernel[1] // 2)
        x = torch.randn(args.pairs, in_channels, height, width, generator=generator)
        weight = torch.randn(out_channels, in_channels, *kernel, generator=generator)
        weight /= (in_channels * kernel[0] * kernel[1]) ** 0.5
        bias = torch.randn(out_channels, generator=generator)
        cells = time_convolution(x, weight, bias, padding, tiles, args.runs)
        print(f"| {in_channels} -> {out_channels} {kernel[0]}x{kernel[1]} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
