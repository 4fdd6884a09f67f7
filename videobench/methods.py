"""The method registry: a method describes itself where it is defined, and the harness reads that description.

A method is one module with one decorated factory::

    @dataclass(frozen=True)
    class MyOptions:
        steps: int = option(50, "denoising steps", minimum=1)

    @register_method("my-method", description="...", kind="video-model", options=MyOptions,
                     paper_row="VideoBooth", weights=my_weight_specs, presets=("tiny",))
    def build_my_method(options: MyOptions, context: MethodContext) -> Generator:
        ...

* ``options``: a typed dataclass (:mod:`videobench.options`); ``videobench generate -o key=value`` and
  ``--config FILE`` fill it, validated before any model loads.
* ``kind``: ``ours``, ``two-stage``, ``video-model`` or ``reference`` (a weight-free calibration row).
* ``paper_row`` / ``table2_setting``: the row of the paper's Table 1 / the setting of Table 2 this method
  reproduces, as text or as a function of the options (e.g. an ablation option picks the Table 2 row).
* ``default_run``: part of ``videobench run`` when no ``--methods`` is given (the README's main job).
* ``table2_rows``: the options that reproduce each Table 2 setting (``{"+TAB": {"ablation": "3d-ra+tab"}}``), for
  ``videobench reproduce table2``.
* ``weights``: ``weights(options, context) -> [WeightSpec]``, the files the run needs; the harness resolves them
  all, reports every missing one in one message, and hands the resolved paths to the factory
  (``context.weights[key]``). ``videobench weights`` and ``videobench methods NAME`` list them.
* ``cost``: ``cost(options, context) -> MethodCost`` (:mod:`costmodel.method_cost`), the FLOPs, peak memory and
  seconds per video of each stage at the real sizes (the tiny preset's with ``context.preset == "tiny"``), computed
  without weights or a GPU; ``benchmarks/estimate_methods.py`` caches them for the harness.

The runner (:mod:`videobench.generation`) owns files; a generator owns pixels: ``generate(case, seed)`` returns
``(T, H, W, 3)`` uint8 frames, or a :class:`GenerationOutput` that adds an intermediate image and diagnostics.
A generator that first makes an image per case and then animates it implements :class:`ImageFirstGenerator`,
so the runner can do every image first and release that model before the video model loads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

from videobench.cases import Case
from videobench.options import (
    NoOptions,
    OptionError,
    describe_options,
    did_you_mean,
    options_to_dict,
    parse_options,
)
from videobench.plugins import METHODS_GROUP, load_plugin, load_plugins
from videobench.results import check_name
from videobench.weights import ResolvedWeights, WeightsConfig, WeightSpec, check_weights

if TYPE_CHECKING:
    from costmodel.method_cost import MethodCost

#: What a method is, for the leaderboard: our model, an image model + image-to-video, a video model, or a
#: weight-free reference (calibration) row.
KINDS = ("ours", "two-stage", "video-model", "reference")
#: The phases of an :class:`ImageFirstGenerator`.
PHASES = ("image", "video")

OptionsT = TypeVar("OptionsT")


@dataclass
class MethodContext:
    """The generic settings of a run, handed to every method factory with its own options.

    ``num_frames``/``height``/``width``/``fps`` are the suite's geometry (or ``--frames``/``--height``/
    ``--width``); ``weights`` maps each :class:`~videobench.weights.WeightSpec` key the method asked for to where
    it was found (empty for random weights or presets that need none).
    """

    device: str = "cpu"
    dtype: str = "auto"
    preset: str | None = None
    random_weights: bool = False
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int = 8
    weights: Mapping[str, ResolvedWeights] = field(default_factory=dict)
    weights_config: WeightsConfig = field(default_factory=WeightsConfig)

    def weight_path(self, key: str) -> Path | None:
        """The resolved file or folder of weight ``key``, or None when the method did not ask for it."""
        resolved = self.weights.get(key)
        return resolved.path if resolved is not None else None


@dataclass
class GenerationOutput:
    """A generator's result for one case: the frames, and optionally an intermediate image and diagnostics.

    ``image`` (e.g. a two-stage method's stage-1 picture) is written to ``images/<case_id>.png``;
    ``diagnostics`` (numbers or short texts, e.g. ERAE's region coverage) go into the case's cases.jsonl record.
    """

    frames: np.ndarray
    image: Image.Image | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """What a method factory returns.

    Attributes:
        run_name: the method folder name under RESULTS.
        fps: the frame rate the videos are written at.
        random_weights: True when any component is random-initialised (stamped in every output).
    """

    run_name: str
    fps: int
    random_weights: bool

    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description of everything that determines the output (run.json)."""

    def generate(self, case: Case, seed: int) -> np.ndarray | GenerationOutput:
        """The video of ``case`` as ``(T, H, W, 3)`` uint8 frames (or with extras); same seed, same video."""


@runtime_checkable
class ImageFirstGenerator(Protocol):
    """A generator that makes an intermediate image per case, then the video from that image.

    The runner does the ``image`` phase for every case first (writing ``images/<case_id>.png``), calls
    :meth:`end_image_phase` (the image model can go), then the ``video`` phase, handing each case its image back.
    ``phases`` says which of the two this run does, so a small GPU can run them as two separate commands; a
    resumed run redoes neither phase's finished work.
    """

    run_name: str
    fps: int
    random_weights: bool
    phases: tuple[str, ...]

    def config(self) -> dict[str, Any]: ...

    def generate_image(self, case: Case, seed: int) -> Image.Image:
        """The intermediate image of ``case``."""

    def end_image_phase(self) -> None:
        """Release the image model (called once, after the last image of the run)."""

    def generate(self, case: Case, seed: int, image: Image.Image) -> np.ndarray | GenerationOutput:
        """The video of ``case`` from its intermediate ``image``."""


MethodFactory = Callable[[Any, MethodContext], Generator]
WeightsFn = Callable[[Any, MethodContext], list[WeightSpec]]
CostFn = Callable[[Any, MethodContext], "MethodCost"]


@dataclass(frozen=True)
class PaperRef:
    """The published row a run stands for: Table 1's method row, and Table 2's setting (ablations)."""

    table1_row: str | None = None
    table2_setting: str | None = None


@dataclass(frozen=True)
class MethodSpec(Generic[OptionsT]):
    """A registered method: its name, description, options, metadata and factory."""

    name: str
    description: str
    kind: str
    options: type
    factory: MethodFactory
    paper_row: str | Callable[[Any], str | None] | None = None
    table2_setting: str | Callable[[Any], str | None] | None = None
    weights: WeightsFn | None = None
    presets: tuple[str, ...] = ()
    default_run: bool = False
    table2_rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cost: CostFn | None = None

    def parse_options(self, raw: Mapping[str, Any] | None = None) -> Any:
        """The options dataclass from ``raw`` (texts or typed values). ``OptionError`` names method and key."""
        return parse_options(self.options, dict(raw or {}), owner=f"method {self.name}")

    def paper(self, options: Any) -> PaperRef:
        def pick(value: str | Callable[[Any], str | None] | None) -> str | None:
            return value(options) if callable(value) else value

        return PaperRef(pick(self.paper_row), pick(self.table2_setting))

    def weight_specs(self, options: Any, context: MethodContext) -> list[WeightSpec]:
        """The weights a run with ``options`` needs (none for presets/random weights where the method says so)."""
        return list(self.weights(options, context)) if self.weights is not None else []

    def check_preset(self, preset: str | None) -> None:
        if preset is not None and preset not in self.presets:
            accepted = ", ".join(self.presets) or "none"
            raise OptionError(f"method {self.name}: unknown preset {preset!r}{did_you_mean(preset, self.presets)}; "
                              f"its presets: {accepted}")

    def metadata(self, options: Any) -> dict[str, Any]:
        """What run.json records about the method: identity, kind, paper row and setting, resolved options."""
        paper = self.paper(options)
        return {
            "method": self.name,
            "description": self.description,
            "kind": self.kind,
            "paper_row": paper.table1_row,
            "table2_setting": paper.table2_setting,
            "options": options_to_dict(options),
        }

    def describe_options(self):
        return describe_options(self.options)

    def estimate_cost(self, options: Any = None, context: MethodContext | None = None) -> MethodCost | None:
        """The cost per video of a run with ``options`` (default: the defaults) on the reference GPU, computed now
        on FakeTensors (seconds to minutes; :func:`costmodel.estimates.cached_cost` reads the cache instead); None
        without a cost model."""
        if self.cost is None:
            return None
        context = context or MethodContext(device="cuda")
        self.check_preset(context.preset)
        return self.cost(self.parse_options() if options is None else options, context)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    description: str,
    kind: str,
    options: type = NoOptions,
    paper_row: str | Callable[[Any], str | None] | None = None,
    table2_setting: str | Callable[[Any], str | None] | None = None,
    weights: WeightsFn | None = None,
    presets: tuple[str, ...] = (),
    default_run: bool = False,
    table2_rows: Mapping[str, Mapping[str, Any]] | None = None,
    cost: CostFn | None = None,
) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator registering ``factory(options, context) -> Generator`` under ``name`` (see the module docstring)."""
    check_name(name, "method name")  # it names the method's folder under RESULTS
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"method {name!r}: options must be a dataclass type, got {options!r}")

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(name, description, kind, options, factory, paper_row, table2_setting, weights,
                                     tuple(presets), default_run, dict(table2_rows or {}), cost)
        return factory

    return decorator


def available_methods() -> dict[str, MethodSpec]:
    """Every registered method (built-in and entry points), by name."""
    load_plugins(METHODS_GROUP)
    return dict(sorted(_REGISTRY.items()))


def methods_by_paper_row() -> dict[str, list[str]]:
    """Table 1 label -> the methods whose default options reproduce that published row."""
    rows: dict[str, list[str]] = {}
    for name, spec in available_methods().items():
        try:
            row = spec.paper(spec.parse_options({})).table1_row
        except ValueError:  # a plugin whose defaults do not parse has no default row
            continue
        if row:
            rows.setdefault(row, []).append(name)
    return rows


def get_method(name: str) -> MethodSpec:
    """The method ``name``, importing only the module that defines it when that is known."""
    if name not in _REGISTRY:
        load_plugin(METHODS_GROUP, name)
    if name not in _REGISTRY:
        methods = available_methods()
        raise KeyError(f"unknown method {name!r}{did_you_mean(name, methods)}; available: {', '.join(methods)}")
    return _REGISTRY[name]


_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_torch_dtype(dtype: str, device: str):
    """``--dtype`` as a torch dtype: ``auto`` is bf16 on CUDA (the video models' dtype) and fp32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose auto, fp32, fp16 or bf16")
    return getattr(torch, _TORCH_DTYPES[dtype])


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _torch_grad_mode(mode: str) -> Callable[[_Fn], _Fn]:
    """A decorator running the function under ``torch.<mode>()``, with torch imported at the call, not when the
    function is defined (``@torch.no_grad()`` at a plugin's top level would import torch to list the plugin)."""

    def decorate(func: _Fn) -> _Fn:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            import torch

            with getattr(torch, mode)():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate


#: ``@no_grad`` / ``@inference_mode``: ``@torch.no_grad()`` / ``@torch.inference_mode()`` for a plugin module.
no_grad = _torch_grad_mode("no_grad")
inference_mode = _torch_grad_mode("inference_mode")


def gpu_dtype(context: MethodContext, auto: str = "bfloat16"):
    """The dtype a method's cost model runs in on the reference GPU: ``context.dtype``, ``auto`` meaning ``auto``'s
    dtype (the method's own choice on CUDA)."""
    import torch

    return getattr(torch, auto) if context.dtype == "auto" else resolve_torch_dtype(context.dtype, "cuda")


def build_generator(method: str | MethodSpec, raw_options: Mapping[str, Any] | None = None,
                    context: MethodContext | None = None) -> tuple[Generator, Any]:
    """Build a registered method's generator: ``(generator, resolved options)``.

    The options are parsed and validated, the preset checked, every weight file the run needs resolved (all missing
    ones reported in one :class:`~videobench.weights.MissingWeightsError`), then the factory runs with the resolved
    paths in ``context.weights``. The resolved options are the generator's ``resolved_options`` when it has them
    (values filled in from files, e.g. a LoRA's training settings), else the parsed ones.

    Raises:
        KeyError: an unknown method. videobench.options.OptionError: a bad option or preset.
        videobench.weights.MissingWeightsError: missing weights.
    """
    spec = get_method(method) if isinstance(method, str) else method
    context = context or MethodContext()
    spec.check_preset(context.preset)
    options = spec.parse_options(raw_options)
    hint = f"for a smoke run without any weights: --preset {' / '.join(spec.presets)}" if spec.presets else ""
    context.weights = check_weights(spec.weight_specs(options, context), context.weights_config, hint=hint)
    generator = spec.factory(options, context)
    check_name(generator.run_name, f"method {spec.name}: run_name")  # nothing is written outside --out
    return generator, getattr(generator, "resolved_options", options)


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


def as_output(result: np.ndarray | GenerationOutput, case: Case) -> GenerationOutput:
    """A generator's return value as a checked :class:`GenerationOutput`."""
    output = result if isinstance(result, GenerationOutput) else GenerationOutput(np.asarray(result))
    output.frames = validate_frames(output.frames, case)
    return output
