"""Reading and writing mp4 videos with PyAV (which bundles ffmpeg).

Frames are ``(T, H, W, 3)`` uint8 RGB numpy arrays everywhere in the project.

Every mp4 is written with :data:`X264_OPTIONS`, which make libx264's output a function of the frames, the crf
and the library versions only (docs/reproducibility.md): the same frames give the same bytes in any process and
on any x86 CPU with the same PyAV wheel.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import av
import numpy as np

from mediaio.atomic import atomic_path

DEFAULT_CRF = 17

#: libx264 options of every video :func:`write_video` writes (the crf is added per call). Without the last two,
#: the same frames gave different files, and decoded frames differing by up to ~28/255 at crf 17, depending on
#: the machine the process ran on:
#:
#: * ``threads=1``: PyAV opens encoders with ``thread_count=0`` (one thread per CPU in the process's affinity
#:   mask) and sliced threads, so x264 cut every frame into ``min(CPUs, macroblock rows / 4)`` slices (2 for the
#:   128x192 smoke videos, up to 7 at 480x720); slices change the bitstream (no prediction across them).
#:   One thread, one slice, whatever the process may run on.
#: * ``x264-params=cpu-independent=1``: x264 picks CPU-specific algorithms at run time: the macroblock-tree
#:   propagation uses SIMD code with an approximate reciprocal (``rcpps``, whose precision is CPU-model specific;
#:   FMA and AVX-512 variants round differently) and SSSE3+ CPUs use a different 4x4/8x8 intra mode search
#:   (``intra_*_x9``). x264's own option switches both to its canonical C code (x264 ``common/mc.c``
#:   ``x264_mc_init``, ``encoder/encoder.c``); mbtree itself, and so the quality, is kept.
#:
#: x264 has no random state, and the mp4 muxer writes zero creation/modification times and the libavformat
#: version string (constant for one PyAV version), so nothing else varies.
X264_OPTIONS: Mapping[str, str] = MappingProxyType(
    {"preset": "medium", "threads": "1", "x264-params": "cpu-independent=1"}
)


def x264_options(crf: int = DEFAULT_CRF) -> dict[str, str]:
    """The libx264 options :func:`write_video` uses: :data:`X264_OPTIONS` plus ``crf``."""
    return {"crf": str(crf), **X264_OPTIONS}


def encoder_settings(crf: int = DEFAULT_CRF) -> dict[str, str]:
    """What determines the bytes of a written video besides the frames (recorded in run.json)."""
    return {
        "codec": "libx264",
        "pix_fmt": "yuv420p",
        **x264_options(crf),
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "pyav": av.__version__,
    }


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


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = DEFAULT_CRF) -> Path:
    """Encode ``frames`` as H.264 (yuv420p) mp4 at ``fps`` with :func:`x264_options`, atomically.

    The same frames, fps and crf give the same bytes in any process (see :data:`X264_OPTIONS`).
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
        encode_mp4(tmp, frames, fps, x264_options(crf))
    return path


def encode_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, options: Mapping[str, str]) -> None:
    """Encode even-sized ``(T, H, W, 3)`` uint8 ``frames`` to ``path`` with libx264 ``options`` (no checks).

    :func:`write_video` is the API; this is its encoder with the options open, for tests and benchmarks.
    """
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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
