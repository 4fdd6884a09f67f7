"""The metric interface: a metric takes decoded frames and a case's references/prompt, returns raw numbers.

Metrics never read files; the scorer (:mod:`videobench.scoring.runner`) owns decoding, batching, caching and devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass
class MetricInput:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    references: list[Image.Image]  # RGB, 8 bit
    prompt: str
    entity: str = ""


@runtime_checkable
class Metric(Protocol):
    family: str  # the registered family name ("clip", "dino", ...)
    columns: tuple[str, ...]  # the score columns this family can produce
    random_weights: bool

    # Optional: ``inputs``, the names of the MetricInput fields read besides the frames and fps (of "prompt",
    # "entity", "references"); the score cache keys the family on those only. Without it, on all of them.

    def config(self) -> dict[str, Any]:
        """Everything that changes the numbers (model, weights sha256, preprocessing): the cache key."""

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """Raw values (cosines in [-1, 1], ``dynamic`` in {0, 1}) plus diagnostics for ``columns``."""
