"""Atomic writes and the PyAV video round trip."""

from __future__ import annotations

import numpy as np
import pytest

from mediaio.atomic import atomic_open, atomic_write_json
from mediaio.video import VideoError, is_valid_video, read_video, write_video
from videobench.results import check_case_id, resolve_inside


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
    # a video kept on other storage and linked into videos/ is the user's layout, not an escape
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    (elsewhere / "b.mp4").write_bytes(b"x")
    (tmp_path / "method" / "videos").mkdir(parents=True)
    (tmp_path / "method" / "videos" / "b.mp4").symlink_to(elsewhere / "b.mp4")
    linked = resolve_inside(tmp_path / "method", "videos/b.mp4")
    assert linked.read_bytes() == b"x" and linked.parent == (tmp_path / "method" / "videos").resolve()
    with pytest.raises(ValueError, match="escapes"):
        resolve_inside(tmp_path / "method", "videos/../../store/b.mp4")
    for bad in ("a/b", "..", ".hidden", ""):
        with pytest.raises(ValueError):
            check_case_id(bad)


def test_a_video_cut_at_a_packet_boundary_is_truncated_not_shorter(tmp_path):
    """moov in front (faststart) and the file cut between two packets: the decoder raises nothing."""
    import av

    frames = np.random.default_rng(0).integers(0, 255, (12, 64, 96, 3), dtype=np.uint8)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert read_video(path).num_frames == 12
    with av.open(str(path)) as container:
        offsets = [packet.pos for packet in container.demux(container.streams.video[0]) if packet.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: offsets[7]])
    with pytest.raises(VideoError, match=r"cut.mp4: truncated video: 7 of the 12 frames"):
        read_video(cut, min_frames=2)
    assert not is_valid_video(cut, min_frames=2)  # generate's resume regenerates it
