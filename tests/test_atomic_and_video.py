"""Atomic writes and the PyAV video round trip."""

from __future__ import annotations

import numpy as np
import pytest

from videobench.atomic import atomic_open, atomic_write_json
from videobench.results import resolve_inside, check_case_id
from videobench.video import VideoError, is_valid_video, read_video, write_video


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("old complete content\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write("new half")
            raise RuntimeError("killed")
    assert path.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "run.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a" / "run.json").read_text().startswith('{\n  "a": [')


def test_video_round_trip_is_close(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 8, 12, 3), dtype=np.uint8)
    frames = np.repeat(np.kron(base, np.ones((1, 16, 16, 1), dtype=np.uint8)), 5, axis=0)  # smooth 128x192 blocks
    write_video(tmp_path / "v.mp4", frames, fps=8)
    video = read_video(tmp_path / "v.mp4")
    assert video.frames.shape == (5, 128, 192, 3) and video.fps == 8
    assert np.abs(video.frames.astype(int) - frames.astype(int)).mean() < 4


def test_odd_sizes_are_padded(tmp_path):
    write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 47, 3), dtype=np.uint8))
    assert read_video(tmp_path / "odd.mp4").size == (34, 48)


@pytest.mark.parametrize("content", [b"", b"not an mp4 at all" * 10])
def test_bad_videos_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match="bad.mp4"):
        read_video(path)
    assert not is_valid_video(path)


def test_min_frames_and_size(tmp_path):
    write_video(tmp_path / "one.mp4", np.zeros((1, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(VideoError, match="at least 2 needed"):
        read_video(tmp_path / "one.mp4", min_frames=2)
    with pytest.raises(VideoError, match="at least 128 px"):
        read_video(tmp_path / "one.mp4", min_size=128)


def test_paths_cannot_escape(tmp_path):
    assert resolve_inside(tmp_path, "videos/a.mp4") == (tmp_path / "videos/a.mp4").resolve()
    for bad in ("../x.mp4", "/etc/passwd", "videos/../../x"):
        with pytest.raises(ValueError, match="escapes"):
            resolve_inside(tmp_path, bad)
    for bad in ("a/b", "..", ".hidden", ""):
        with pytest.raises(ValueError):
            check_case_id(bad)
