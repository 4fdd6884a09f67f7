"""Loading reference images as 8-bit RGB, whatever the file holds.

Reference images come from datasets and from users: PNGs with alpha, grayscale or palette images,
CMYK JPEGs, 16-bit PNG/TIFF scans, camera JPEGs whose EXIF says "rotate me". The metrics want one
thing: an upright ``RGB`` :class:`PIL.Image.Image` with 8 bits per channel. Conversion rules:

* EXIF orientation is applied first (``ImageOps.exif_transpose``), as every viewer does.
* Transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is composited over white,
  the background DreamBench-style product shots assume; Pillow's plain ``convert("RGB")`` would
  instead reveal whatever colour hides under alpha 0.
* 16-bit integer images (``I;16*`` modes, and ``I`` as 16-bit PNG/TIFF decode to) are scaled from
  [0, 65535] to [0, 255] (``round(v / 257)``); Pillow's ``convert("L")`` would clip them instead.
* Float images (``F``) are read as [0, 1] intensities when their maximum is at most 1, else as
  [0, 255] when at most 255, else as [0, 65535].
* Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) goes through Pillow's
  ``convert("RGB")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """A reference image that cannot be used: missing, unreadable, truncated or not an image."""


_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _scale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Map ``[0, full_scale]`` linearly onto ``[0, 255]`` with rounding and clipping."""
    scaled = np.rint(values.astype(np.float64) * (255.0 / full_scale))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit integer or float single-channel image as an 8-bit ``L`` image (rules in the module doc)."""
    values = np.asarray(image)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        peak = float(finite.max()) if finite.size else 0.0
        full_scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
        values = np.nan_to_num(values, nan=0.0, posinf=full_scale, neginf=0.0)
    else:
        full_scale = 65535.0
    return Image.fromarray(_scale_to_uint8(values, full_scale), mode="L")


def to_rgb8(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert an opened image to upright 8-bit RGB (see the module docstring for the rules)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        image = _high_bit_depth_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_reference_image(path: str | os.PathLike) -> Image.Image:
    """Read ``path`` fully and return it as an upright 8-bit RGB image.

    Raises:
        ImageError: naming the file, when it is missing, empty, not an image, truncated or
            otherwise undecodable.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: reference image is missing")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: reference image is empty (0 bytes)")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated files fail here, not later inside a metric
            image = to_rgb8(opened)
            return image.copy() if image is opened else image
    except UnidentifiedImageError as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: image too large ({error})") from error
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow reports truncation as OSError("image file is truncated ...") and some corrupt
        # headers as SyntaxError/ValueError.
        raise ImageError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


def fit_to_canvas(
    image: Image.Image,
    height: int,
    width: int,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Scale ``image`` to fit inside ``height x width`` (aspect kept) and centre it on a ``background`` canvas.

    White is the usual background of product-style reference photos (DreamBench, VideoBench objects). An image
    that already has the scaled size is not resampled.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(width / rgb.width, height / rgb.height)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    resized = rgb.resize(size, resample) if size != rgb.size else rgb
    canvas = Image.new("RGB", (width, height), tuple(background))
    canvas.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas
