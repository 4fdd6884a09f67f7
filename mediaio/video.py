"""Reading and writing mp4 videos with PyAV (which bundles ffmpeg).

Frames are ``(T, H, W, 3)`` uint8 RGB numpy arrays everywhere in the project.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from mediaio.atomic import atomic_path


class VideoError(ValueError):
    """A video that cannot be used: missing, empty, corrupt, truncated or too small."""


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = 17) -> Path:
    """Encode ``frames`` as H.264 (yuv420p) mp4 at ``fps``, atomically.

    Odd heights or widths are padded by one edge row/column (yuv420p needs even sizes).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("cannot write a video with no frames")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, read without decoding pixels."""

    height: int
    width: int
    num_frames: int
    fps: float

    @property
    def short_side(self) -> int:
        return min(self.height, self.width)


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0) or 8.0


@contextlib.contextmanager
def _open_video_stream(path: Path, action: str) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``path``'s first video stream; every failure becomes one :class:`VideoError` naming the file."""
    if not path.is_file():
        raise VideoError(f"{path}: video file is missing")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: video file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            yield container, container.streams.video[0]
    except VideoError:
        raise
    except (av.FFmpegError, ValueError, OSError) as error:
        raise VideoError(f"{path}: cannot {action} video ({type(error).__name__}: {error})") from error


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame count and fps from the container, without decoding pixels.

    Raises:
        VideoError: naming the file when it is missing, empty or not a readable video.
    """
    path = Path(path)
    with _open_video_stream(path, "read") as (container, stream):
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        fps = _stream_fps(stream)
        count = int(stream.frames or 0)
        if count <= 0:
            count = sum(1 for packet in container.demux(stream) if packet.size)
    if height <= 0 or width <= 0:
        raise VideoError(f"{path}: video stream has no frame size")
    return VideoInfo(height, width, count, fps)


def read_video(path: str | os.PathLike, min_frames: int = 1, min_size: int = 0) -> Video:
    """Decode every frame of ``path`` to RGB.

    Raises:
        VideoError: naming the file, when it is missing, empty, not decodable, truncated, has fewer than
            ``min_frames`` frames or a side shorter than ``min_size`` pixels.
    """
    path = Path(path)
    with _open_video_stream(path, "decode") as (container, stream):
        fps = _stream_fps(stream)
        declared = int(stream.frames or 0)  # the container's index (mp4: sample count); 0 when unknown
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if declared and len(frames) < declared:  # cut at a packet boundary: decodes "fine", only shorter
        raise VideoError(f"{path}: truncated video: {len(frames)} of the {declared} frames in its index are decodable")
    if len(frames) < min_frames:
        raise VideoError(f"{path}: {len(frames)} decodable frame(s), at least {min_frames} needed")
    if not frames:
        raise VideoError(f"{path}: no decodable frames")
    array = np.stack(frames)
    if min(array.shape[1:3]) < min_size:
        raise VideoError(
            f"{path}: frames are {array.shape[1]}x{array.shape[2]} px, the short side must be at least {min_size} px"
        )
    return Video(array, fps)


def is_valid_video(path: str | os.PathLike, min_frames: int = 1) -> bool:
    """True when ``path`` decodes to at least ``min_frames`` frames (used by resume)."""
    try:
        read_video(path, min_frames=min_frames)
    except VideoError:
        return False
    return True
