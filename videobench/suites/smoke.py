"""The ``smoke`` suite: 3 subjects drawn by code, 4 cases, no external files (version ``v1``).

Reference images (256x256 RGB, white background, hard edges, drawn with numpy so every platform produces the
same pixels): ``red_circle`` (a red disc), ``blue_square`` (a blue square), ``green_triangle`` (a green
upward triangle). On load they are rendered into ``<data_root>/smoke/<subject>/00.png``: a file whose decoded
pixels already hash to the expected value is kept, anything else is (re)written atomically. Case ids follow
``<subject>-<prompt id>``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from mediaio.atomic import atomic_path
from videobench.cases import Case
from videobench.data import join_inside
from videobench.suites.registry import Suite, register_suite

NAME = "smoke"
VERSION = "v1"
SIZE = 256
DESCRIPTION = "Smoke test: 3 shapes drawn by code (red circle, blue square, green triangle), 4 cases, offline."

# subject -> (entity, RGB colour)
SUBJECTS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red_circle": ("circle", (220, 30, 30)),
    "blue_square": ("square", (30, 60, 220)),
    "green_triangle": ("triangle", (30, 170, 60)),
}
# (prompt id, subject, prompt)
PROMPTS: tuple[tuple[str, str, str], ...] = (
    ("p01", "red_circle", "a red circle bouncing from left to right across a white background"),
    ("p02", "red_circle", "a red circle growing larger as the camera slowly zooms in"),
    ("p03", "blue_square", "a blue square spinning slowly in the middle of a white background"),
    ("p04", "green_triangle", "a green triangle sliding down from the top of a white background"),
)


def _mask(subject: str, size: int = SIZE) -> np.ndarray:
    """Boolean shape mask, sampled at pixel centres."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2
    if subject == "red_circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (0.34 * size) ** 2
    if subject == "blue_square":
        half = 0.30 * size
        return (np.abs(x - c) <= half) & (np.abs(y - c) <= half)
    if subject == "green_triangle":
        top, bottom, half = 0.16 * size, 0.82 * size, 0.36 * size
        t = (y - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(x - c) <= t * half)
    raise KeyError(f"smoke has no subject {subject!r}")


def render(subject: str, size: int = SIZE) -> np.ndarray:
    """The subject's reference image as an ``(size, size, 3)`` uint8 array."""
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    image[_mask(subject, size)] = SUBJECTS[subject][1]
    return image


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 over shape and RGB bytes (independent of the PNG encoder)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def _file_pixel_sha256(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                return None
            return pixel_sha256(np.asarray(image))
    except (OSError, ValueError, SyntaxError):
        return None


def ensure_images(root: Path) -> dict[str, Path]:
    """Render the reference images under ``root/smoke`` (idempotent); returns subject -> path."""
    paths = {}
    for subject in SUBJECTS:
        path = join_inside(root, f"smoke/{subject}/00.png")
        pixels = render(subject)
        if _file_pixel_sha256(path) != pixel_sha256(pixels):
            with atomic_path(path) as tmp:
                Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
        paths[subject] = path
    return paths


@register_suite(NAME, label="smoke", version=VERSION, description=DESCRIPTION, order=100, default=True)
def build(root: Path) -> Suite:
    """The smoke suite; its images are drawn into ``root/smoke`` first."""
    paths = ensure_images(root)
    cases = tuple(
        Case(
            case_id=f"{subject}-{prompt_id}", suite=NAME, subject=subject, prompt=prompt,
            entity=SUBJECTS[subject][0], references=(str(paths[subject]),), category="shape", prompt_id=prompt_id,
        )
        for prompt_id, subject, prompt in PROMPTS
    )
    # 9 frames at 128x192 (the 480x720 aspect ratio, the 128 px minimum of the scorer) keep the whole
    # generate + score + report loop to about a minute on a 2-core CPU.
    return Suite(name=NAME, version=VERSION, description=DESCRIPTION, cases=cases, num_frames=9, height=128, width=192)
