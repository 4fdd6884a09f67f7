"""``--device`` checked once, before any work: one clear line instead of a driver traceback mid-build."""

from __future__ import annotations

from typing import Any


def check_device(device: Any) -> Any:
    """Parse ``device`` and check it exists here; returns the ``torch.device``.

    ``cpu`` needs no check, so a weight-free run never imports torch for it (the device is returned as text then).

    Raises:
        ValueError: naming the device and what is available.
    """
    if str(device) == "cpu":
        return "cpu"
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {error}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: no CUDA device is available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    return parsed
