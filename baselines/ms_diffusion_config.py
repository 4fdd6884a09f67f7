"""The MS-Diffusion adapter's sizes and the subject box check (upstream ``inference.py``), torch-free: describing
the method imports only this module, building it :mod:`baselines.ms_diffusion_model`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MSAdapterConfig:
    """The sizes of the MS-Diffusion adapter (``inference.py``'s ``Resampler(...)`` and ``MSAdapter(...)``).

    The defaults are the released SDXL checkpoint's: 16 tokens per subject, 4 dummy tokens, a 4-layer resampler of
    width 1280 (20 heads of 64) over CLIP-G's 1664-wide penultimate hidden states, grounded on the 768-wide pooled
    output of SDXL's first text encoder (CLIP-L) and an 8-frequency Fourier embedding of the box, writing 2048-wide
    tokens (SDXL's ``cross_attention_dim``).
    """

    num_tokens: int = 16
    num_dummy_tokens: int = 4
    dim: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    ff_mult: int = 4
    fourier_freqs: int = 8
    embedding_dim: int = 1664
    output_dim: int = 2048
    phrase_dim: int = 768


def validate_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` as ``(x1, y1, x2, y2)`` in ``[0, 1]`` with ``x1 < x2`` and ``y1 < y2``; ``ValueError`` otherwise."""
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise ValueError(f"box must be 4 numbers x1,y1,x2,y2 in [0, 1], got {len(values)}")
    x1, y1, x2, y2 = values
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"box {values}: coordinates must lie in [0, 1]")
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box {values}: needs x1 < x2 and y1 < y2")
    return values  # type: ignore[return-value]
