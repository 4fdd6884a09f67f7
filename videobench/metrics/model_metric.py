"""The plumbing the model-based metric families share (``clip``, ``dino``, ``dynamic``, ``subject_consistency``).

Each family wraps one network. They share:

* the weights contract: a metric is built from one weights file (resolved by the harness, its sha256 recorded), or
  from seeded random weights behind an explicit ``random_weights=True``, never silently (:meth:`ModelMetric.build`);
* the precision contract: fp32 anywhere, fp16/bf16 autocast only on CUDA (:func:`check_precision`);
* the cache key: :meth:`ModelMetric.config` names everything that changes the numbers, and
  :func:`videobench.scoring.runner.metric_config_hash` hashes it; :meth:`ModelMetric._base_config` is the common part
  (family, model, weights sha256 or ``random(seed=N)``, dtype).

A family subclasses :class:`ModelMetric`, declares its registry description (``family``, ``description``,
``column_specs``, ``Options``, ``default``; see :mod:`videobench.metrics.registry`), its weight file
(:meth:`weight_specs`) and how its network is built (:meth:`_model_builder`) and wrapped (:meth:`_from_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict

from mediaio.hashing import file_sha256
from videobench.metrics.preprocess import check_precision
from videobench.metrics.registry import ColumnSpec, MetricContext
from videobench.options import option, parse_options
from videobench.weights import WeightsConfig, WeightSpec, check_weights

if TYPE_CHECKING:
    import torch

#: ``build_fn(weights_path_or_None, seed)``: a model loaded (strictly) from the file, or seeded random when None.
ModelBuilder = Callable[[Path | None, int], "torch.nn.Module"]


class WeightsStamp(TypedDict, total=False):
    """The constructor keywords every family shares: where the weights came from, and how the model runs."""

    weights_sha256: str | None
    random_weights: bool
    device: str
    dtype: str
    seed: int
    cpu_workers: int


class ModelMetric:
    """Base of the model-based metric families: holds the model, its weights stamp, device and precision."""

    family: ClassVar[str]
    description: ClassVar[str]
    column_specs: ClassVar[tuple[ColumnSpec, ...]]
    columns: ClassVar[tuple[str, ...]]
    Options: ClassVar[type]
    default: ClassVar[bool] = True
    #: The key of the family's one weight file in :meth:`weight_specs`.
    weight_key: ClassVar[str] = "model"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "column_specs" in cls.__dict__:
            cls.columns = tuple(column.name for column in cls.column_specs)

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        weights_sha256: str | None = None,
        random_weights: bool = False,
        device: str = "cpu",
        dtype: str = "fp32",
        seed: int = 0,
        cpu_workers: int = 0,
    ) -> None:
        if weights_sha256 is None and not random_weights:
            raise ValueError(f"a {type(self).__name__} needs the weights' sha256, or random_weights=True")
        if cpu_workers < 0:
            raise ValueError(f"cpu_workers must be >= 0 (0: one per torch thread), got {cpu_workers}")
        check_precision(device, dtype)
        self.model = model.to(device).eval()
        self.weights_sha256, self.random_weights, self.seed = weights_sha256, random_weights, seed
        self.device, self.dtype = device, dtype
        #: CPU worker threads for the batch's pieces (:func:`videobench.metrics.workers.workers_for`; 0: one per
        #: torch thread); families whose Options have ``cpu_workers`` (:func:`cpu_workers_option`) set it.
        self.cpu_workers = cpu_workers

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def weight_specs(cls, options: Any) -> list[WeightSpec]:
        """The family's weight file for ``options`` (its ``weights`` option, if set, is the explicit path)."""
        raise NotImplementedError

    @classmethod
    def build(cls, options: Any, context: MetricContext) -> Self:
        """Build from the resolved weight file in ``context`` (sha256 recorded), or seeded random weights."""
        build_fn = cls._model_builder(options)
        if context.random_weights:
            model, sha = build_fn(None, context.seed), None
        else:
            path = context.weight_path(cls.weight_key)
            if path is None:
                raise ValueError(f"the {cls.family} metric's weights were not resolved (key {cls.weight_key!r})")
            model, sha = build_fn(path, context.seed), file_sha256(path)
        stamp = WeightsStamp(weights_sha256=sha, random_weights=context.random_weights, device=context.device,
                             dtype=context.dtype, seed=context.seed, cpu_workers=getattr(options, "cpu_workers", 0))
        return cls._from_model(model, options, stamp)

    @classmethod
    def create(
        cls,
        options: Any | Mapping[str, Any] | None = None,
        *,
        weights: WeightsConfig | None = None,
        device: str = "cpu",
        dtype: str = "fp32",
        random_weights: bool = False,
        seed: int = 0,
    ) -> Self:
        """Scripts' and tests' shortcut: parse ``options`` (a mapping or the Options), resolve the weights, build.

        Raises:
            videobench.weights.MissingWeightsError: the weight file is missing (with where to put it).
            videobench.options.OptionError: a bad option.
        """
        if not isinstance(options, cls.Options):
            options = parse_options(cls.Options, dict(options or {}), owner=f"metric {cls.family}")
        check_precision(device, dtype)
        resolved = {} if random_weights else check_weights(cls.weight_specs(options), weights)
        context = MetricContext(device=device, dtype=dtype, random_weights=random_weights, seed=seed, weights=resolved)
        return cls.build(options, context)

    @classmethod
    def _model_builder(cls, options: Any) -> ModelBuilder:
        """The family's ``build_fn(path_or_None, seed)`` for ``options``."""
        raise NotImplementedError

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: Any, stamp: WeightsStamp) -> Self:
        """Wrap a built ``model``; families whose constructor needs more (a tokenizer, names) override this."""
        raise NotImplementedError

    # -- the cache key ---------------------------------------------------------------------------------------
    def _base_config(self, model: str) -> dict[str, Any]:
        """The fields every family's config has: family, model, weights sha256 (or ``random(seed=N)``), dtype."""
        return {
            "family": self.family,
            "model": model,
            "weights_sha256": f"random(seed={self.seed})" if self.random_weights else self.weights_sha256,
            "dtype": self.dtype,
        }

    def config(self) -> dict[str, Any]:
        """Everything that changes the numbers (model, weights sha256, preprocessing): the cache key."""
        raise NotImplementedError

    # -- scoring ---------------------------------------------------------------------------------------------
    def _check_columns(self, columns: tuple[str, ...] | None) -> tuple[str, ...]:
        """``columns`` (default: all of :attr:`columns`), refusing any this family does not compute."""
        columns = tuple(columns or self.columns)
        unknown = set(columns) - set(self.columns)
        if unknown:
            raise ValueError(f"the {self.family} family does not compute {sorted(unknown)}")
        return columns


def cpu_workers_option(work: str) -> Any:
    """The ``cpu_workers`` option of a family whose batches split into independent pieces (``work`` says what
    the workers do): how many threads run the pieces on CPU, each with one intra-op thread
    (:mod:`videobench.metrics.workers`). Not part of the cache key: it changes the numbers by float rounding only."""
    return option(0, f"on CPU, threads that each {work} of their own with one intra-op thread (0: one per torch "
                     f"thread; 1: the calling thread alone, every operator parallel); the same numbers up to float "
                     f"rounding", minimum=0)


def with_weights_option(spec: WeightSpec, options: Any, family: str) -> WeightSpec:
    """``spec`` with the family's ``weights`` option as its explicit path (``-M family.weights=FILE``)."""
    return replace(spec, explicit=getattr(options, "weights", None), option=f"-M {family}.weights=FILE")


__all__ = ["ModelBuilder", "ModelMetric", "WeightsStamp", "with_weights_option"]
