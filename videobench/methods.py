"""The method registry: a method name -> a factory that builds a :class:`Generator`.

Adding a method is one :func:`register_method` call. The runner (:mod:`videobench.generate`) owns
files; a generator owns pixels: ``Generator.generate(case, seed)`` returns ``(T, H, W, 3)`` uint8
frames and never touches the results folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from videobench.cases import Case


@dataclass
class MethodConfig:
    """Options from ``videobench generate`` handed to a method factory.

    ``extra`` carries method-specific options (``--ablation``, ``--lora``, ...) so that the
    registry stays method-agnostic.
    """

    device: str = "cpu"
    dtype: str = "auto"
    preset: str | None = None
    model: str | None = None
    lora: str | None = None
    ablation: str | None = None
    random_weights: bool = False
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """What a method factory returns.

    Attributes:
        run_name: the method folder name under RESULTS (includes ablation/preset when relevant).
        fps: the frame rate the videos are written at.
        random_weights: True when any component is random-initialized (stamped in every output).
    """

    run_name: str
    fps: int
    random_weights: bool

    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description of everything that determines the output (run.json)."""

    def generate(self, case: Case, seed: int) -> np.ndarray:
        """Return the video of ``case`` as ``(T, H, W, 3)`` uint8 frames; same seed, same video."""


MethodFactory = Callable[[MethodConfig], Generator]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: MethodFactory
    description: str
    needs_weights: bool


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, needs_weights: bool = True) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator registering ``factory`` under ``name``."""

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(name, factory, description, needs_weights)
        return factory

    return decorator


def _load_builtin_methods() -> None:
    # Importing the modules registers their methods; imports are light (models load in factories).
    import videobench.calibration  # noqa: F401

    for module in ("customvideox.method", "baselines.methods"):
        try:
            __import__(module)
        except ModuleNotFoundError as error:  # the module is not written yet / optional
            if error.name != module:
                raise


def available_methods() -> dict[str, MethodSpec]:
    _load_builtin_methods()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> MethodSpec:
    methods = available_methods()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]


def build_generator(name: str, config: MethodConfig) -> Generator:
    return get_method(name).factory(config)


def validate_frames(frames: np.ndarray, case: Case) -> np.ndarray:
    """Check a generator's output contract; returns the frames as a contiguous uint8 array."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"case {case.case_id}: generator returned shape {frames.shape}, expected (T, H, W, 3)")
    if frames.dtype != np.uint8:
        raise ValueError(f"case {case.case_id}: generator returned dtype {frames.dtype}, expected uint8")
    if frames.shape[0] < 1:
        raise ValueError(f"case {case.case_id}: generator returned no frames")
    return np.ascontiguousarray(frames)
