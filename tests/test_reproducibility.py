"""Same frames / same command and seed -> the same mp4 bytes, checked across separate processes.

The encoder's bytes used to depend on the process's CPU affinity (x264 sliced threads, one slice per CPU) and on
the CPU's SIMD extensions (x264's mbtree and intra search): see ``mediaio.video.X264_OPTIONS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mediaio.hashing import file_sha256
from mediaio.video import encode_mp4, encoder_settings, read_video, write_video, x264_options

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

WRITE_SCRIPT = """
import os, sys
import numpy as np
from mediaio.video import write_video
if sys.argv[2] == "one-cpu" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
write_video(sys.argv[1], np.load(sys.argv[3]), fps=8)
"""


def _frames(num_frames: int = 9, height: int = 128, width: int = 192) -> np.ndarray:
    """Noise-like frames (what a random-weights model makes): the content most sensitive to encoder choices."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def _write_in_subprocess(tmp_path: Path, name: str, mode: str, frames_file: Path) -> Path:
    path = tmp_path / name
    done = subprocess.run([sys.executable, "-c", WRITE_SCRIPT, str(path), mode, str(frames_file)],
                          check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


def test_write_video_gives_the_same_bytes_in_separate_processes(tmp_path):
    frames_file = tmp_path / "frames.npy"
    np.save(frames_file, _frames())
    a = _write_in_subprocess(tmp_path, "a.mp4", "all-cpus", frames_file)
    b = _write_in_subprocess(tmp_path, "b.mp4", "all-cpus", frames_file)
    one = _write_in_subprocess(tmp_path, "one.mp4", "one-cpu", frames_file)  # PyAV's defaults: 1 slice, not 2
    assert a.read_bytes() == b.read_bytes() == one.read_bytes()
    write_video(tmp_path / "here.mp4", np.load(frames_file), fps=8)
    assert (tmp_path / "here.mp4").read_bytes() == a.read_bytes()


def test_bytes_do_not_depend_on_the_cpu_simd_extensions(tmp_path):
    """x264 with all its assembly off (``asm=0``, the C code any CPU runs) writes the very same bytes."""
    frames = _frames()
    options = x264_options()
    encode_mp4(tmp_path / "simd.mp4", frames, 8, options)
    params = ":".join(filter(None, [options.get("x264-params"), "asm=0"]))
    encode_mp4(tmp_path / "c.mp4", frames, 8, {**options, "x264-params": params})
    assert (tmp_path / "simd.mp4").read_bytes() == (tmp_path / "c.mp4").read_bytes()


def test_encoder_settings_are_the_ones_used_and_quality_is_kept(tmp_path):
    settings = encoder_settings()
    assert settings["crf"] == "17" and settings["threads"] == "1" and settings["x264-params"] == "cpu-independent=1"
    frames = _frames()
    write_video(tmp_path / "new.mp4", frames)
    data = (tmp_path / "new.mp4").read_bytes()
    sei = data[data.index(b"x264 - core") :].split(b"\x00", 1)[0].decode()  # x264 writes its options in an SEI
    assert " threads=1 " in sei and " sliced_threads=0 " in sei and " crf=17.0 " in sei and " mbtree=1 " in sei
    # the writer's options before the fix (PyAV's default threads), same crf: no worse in error, no larger
    encode_mp4(tmp_path / "old.mp4", frames, 8, {"crf": "17", "preset": "medium"})
    new_error, old_error = (np.abs(read_video(tmp_path / f"{x}.mp4").frames.astype(int) - frames.astype(int)).mean()
                            for x in ("new", "old"))
    assert new_error <= old_error * 1.01
    assert (tmp_path / "new.mp4").stat().st_size <= (tmp_path / "old.mp4").stat().st_size * 1.01


# --- the CLI, end to end --------------------------------------------------------------------------------------
VOLATILE_RUN_KEYS = {"started", "updated"}  # wall-clock times
VOLATILE_CASE_KEYS = {"seconds"}


def _generate(tmp_path: Path, out: str) -> Path:
    command = [sys.executable, "-m", "videobench.cli", "generate", "--method", "customvideox", "--preset", "tiny",
               "--suite", "smoke", "--seed", "0", "--limit", "2", "--data-root", str(tmp_path / "data"),
               "--out", str(tmp_path / out)]
    done = subprocess.run(command, check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tmp_path / out / "customvideox-tiny"


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE_CASE_KEYS}
            for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cli_generate_twice_in_fresh_processes_gives_identical_files(tmp_path):
    a, b = _generate(tmp_path, "A"), _generate(tmp_path, "B")
    videos = sorted(p.name for p in (a / "videos").iterdir())
    assert videos == ["red_circle-p01.mp4", "red_circle-p02.mp4"]
    for name in videos:
        assert file_sha256(a / "videos" / name) == file_sha256(b / "videos" / name), name
        assert np.array_equal(read_video(a / "videos" / name).frames, read_video(b / "videos" / name).frames)
    run_a, run_b = (json.loads((x / "run.json").read_text()) for x in (a, b))
    assert run_a.keys() == run_b.keys() and VOLATILE_RUN_KEYS <= run_a.keys()
    assert {k: v for k, v in run_a.items() if k not in VOLATILE_RUN_KEYS} == {
        k: v for k, v in run_b.items() if k not in VOLATILE_RUN_KEYS}
    assert run_a["video_encoder"] == encoder_settings() and run_a["seeds"]["base"] == 0
    assert _records(a / "cases.jsonl") == _records(b / "cases.jsonl")
    assert all(r["status"] == "ok" for r in _records(a / "cases.jsonl"))
