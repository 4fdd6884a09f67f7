"""Quality, size, speed and machine-independence of the libx264 settings of ``mediaio.video.write_video``.

For each content and each option set, at the same crf: file size, PSNR and max / mean absolute error of the
decoded frames against the source frames (RGB, all pixels), encode seconds, and how many different files the
same frames give when the encoder runs (a) as is, (b) in a thread pinned to one CPU (x264 sizes its threads
from the CPU affinity mask) and (c) with x264's assembly disabled (``asm=0``: its C code, what a CPU without
the SIMD extensions of this one would run). ``distinct files: 1`` means the bytes did not depend on either.

    python benchmarks/video_encoding.py                      # synthetic 49x480x720 pan + the 9x128x192 smoke pan
    python benchmarks/video_encoding.py --npy frames.npy     # also your own (T, H, W, 3) uint8 frames

The numbers in docs/reproducibility.md come from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from mediaio.video import DEFAULT_CRF, encode_mp4, read_video, x264_options
from videobench.calibration import pan_zoom_frames


def option_sets(crf: int) -> dict[str, dict[str, str]]:
    """``before``: the options of the writer before the fix (PyAV's thread defaults); ``after``: today's."""
    before = {"crf": str(crf), "preset": "medium"}
    return {
        "before (crf, preset)": before,
        "threads=1": {**before, "threads": "1"},
        "threads=1, mbtree=0": {**before, "threads": "1", "x264-params": "mbtree=0"},
        "after (x264_options)": x264_options(crf),
    }


def synthetic_pan(num_frames: int = 49, height: int = 480, width: int = 720, seed: int = 0) -> np.ndarray:
    """Textured scene (smooth blobs + fine grain + hard-edged rectangles) under a slow pan and zoom."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 24, width // 24, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    canvas += rng.integers(-12, 13, canvas.shape, dtype=np.int16)
    for _ in range(12):
        top, left = int(rng.integers(0, height - 60)), int(rng.integers(0, width - 90))
        canvas[top : top + 60, left : left + 90] = rng.integers(0, 256, 3)
    return pan_zoom_frames(Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)), num_frames)


def smoke_pan(num_frames: int = 9) -> np.ndarray:
    """The smoke suite's red disc on white at 128x192, under the reference-pan camera move."""
    yy, xx = np.mgrid[:128, :192]
    canvas = np.full((128, 192, 3), 255, dtype=np.uint8)
    canvas[(yy - 64) ** 2 + (xx - 96) ** 2 < 40**2] = (220, 30, 30)
    return pan_zoom_frames(Image.fromarray(canvas), num_frames)


@contextlib.contextmanager
def pinned_to_one_cpu() -> Iterator[None]:
    """Run the block in this thread restricted to one CPU (a no-op where affinity is not available)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def without_asm(options: Mapping[str, str]) -> dict[str, str]:
    params = options.get("x264-params")
    return {**options, "x264-params": f"{params}:asm=0" if params else "asm=0"}


def measure(frames: np.ndarray, options: Mapping[str, str], fps: int, folder: Path) -> dict[str, float]:
    path = folder / "video.mp4"
    start = time.perf_counter()
    encode_mp4(path, frames, fps, options)
    seconds = time.perf_counter() - start
    hashes = {hashlib.sha256(path.read_bytes()).hexdigest()}
    size = path.stat().st_size
    decoded = read_video(path).frames.astype(np.int16)
    error = np.abs(decoded - frames.astype(np.int16))
    mse = float(np.mean(error.astype(np.float64) ** 2))
    with pinned_to_one_cpu():
        encode_mp4(folder / "one_cpu.mp4", frames, fps, options)
    encode_mp4(folder / "no_asm.mp4", frames, fps, without_asm(options))
    hashes |= {hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("one_cpu.mp4", "no_asm.mp4")}
    return {
        "bytes": size,
        "psnr": 10 * np.log10(255.0**2 / mse) if mse else float("inf"),
        "max_abs": int(error.max()),
        "mean_abs": float(error.mean()),
        "seconds": seconds,
        "distinct": len(hashes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--npy", nargs="*", default=[], help="extra (T, H, W, 3) uint8 frame arrays")
    args = parser.parse_args()
    contents = {"synthetic pan 49x480x720": synthetic_pan(), "smoke pan 9x128x192": smoke_pan()}
    contents |= {Path(p).name: np.load(p) for p in args.npy}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"crf {args.crf}; CPUs in affinity mask: {cpus}")
    print("| content | options | bytes | PSNR dB | max abs | mean abs | encode s | distinct files |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in contents.items():
            for label, options in option_sets(args.crf).items():
                r = measure(frames, options, args.fps, Path(tmp))
                print(f"| {name} | {label} | {r['bytes']} | {r['psnr']:.2f} | {r['max_abs']} | {r['mean_abs']:.3f} "
                      f"| {r['seconds']:.2f} | {r['distinct']} |")


if __name__ == "__main__":
    main()
