"""The plumbing the three model-based metric families share (``clip``, ``dino``, ``dynamic``).

Each family wraps one network (open_clip CLIP, timm DINO ViT-S/16, torchvision RAFT-large). They share:

* the weights contract: a metric is built from a weights file whose sha256 it records, or from seeded random
  weights behind an explicit ``random_weights=True``, never silently (:meth:`ModelMetric.from_weights`);
* the precision contract: fp32 anywhere, fp16/bf16 autocast only on CUDA (:func:`check_precision`);
* the cache key: :meth:`ModelMetric.config` names everything that changes the numbers, and
  :func:`videobench.score.metric_config_hash` hashes it; :meth:`ModelMetric._base_config` is the common part
  (family, model, weights sha256 or ``random(seed=N)``, dtype).

The metric definitions themselves live in the families' modules (:mod:`videobench.metrics.clip`,
:mod:`videobench.metrics.dino`, :mod:`videobench.metrics.dynamic`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypedDict

import torch

from videobench.metrics.preprocess import check_precision
from mediaio.hashing import file_sha256
from videobench.weights import WeightsConfig, check_weights, resolve_weights

#: ``build_fn(weights_path_or_None, seed)``: a model loaded (strictly) from the file, or seeded random when None.
ModelBuilder = Callable[[Path | None, int], torch.nn.Module]


class WeightsStamp(TypedDict, total=False):
    """The constructor keywords every family shares: where the weights came from, and how the model runs."""

    weights_sha256: str | None
    random_weights: bool
    device: str
    dtype: str
    seed: int


class ModelMetric:
    """Base of the model-based metric families: holds the model, its weights stamp, device and precision.

    Subclasses set :attr:`family` and :attr:`columns`, implement ``score``, extend :meth:`_base_config` in
    ``config``, and say how their network is built (:meth:`_model_builder`) and wrapped (:meth:`_from_model`).
    """

    family: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        weights_sha256: str | None = None,
        random_weights: bool = False,
        device: str = "cpu",
        dtype: str = "fp32",
        seed: int = 0,
    ) -> None:
        if weights_sha256 is None and not random_weights:
            raise ValueError(f"a {type(self).__name__} needs the weights' sha256, or random_weights=True")
        check_precision(device, dtype)
        self.model = model.to(device).eval()
        self.weights_sha256, self.random_weights, self.seed = weights_sha256, random_weights, seed
        self.device, self.dtype = device, dtype

    # -- construction from a weights config ------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        weights: WeightsConfig,
        device: str = "cpu",
        dtype: str = "fp32",
        random_weights: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> Self:
        """Build from :class:`~videobench.weights.WeightsConfig` (resolving the file), or randomly when asked.

        ``random_weights=True`` builds the network from ``seed`` (stamped ``random(seed=N)`` in :meth:`config`);
        otherwise the family's weights file must exist (:func:`~videobench.weights.check_weights`), is loaded
        strictly and its sha256 recorded. ``kwargs`` go to the family's constructor.
        """
        build_fn = cls._model_builder(weights, kwargs)
        if random_weights:
            model, sha = build_fn(None, seed), None
        else:
            check_weights([cls.family], weights)
            path = resolve_weights(cls.family, weights).path
            model, sha = build_fn(path, seed), file_sha256(path)
        stamp = WeightsStamp(weights_sha256=sha, random_weights=random_weights, device=device, dtype=dtype, seed=seed)
        return cls._from_model(model, weights, stamp, **kwargs)

    @classmethod
    def _model_builder(cls, weights: WeightsConfig, kwargs: dict[str, Any]) -> ModelBuilder:
        """The family's ``build_fn(path_or_None, seed)`` for ``weights`` and the ``from_weights`` keywords."""
        raise NotImplementedError

    @classmethod
    def _from_model(
        cls, model: torch.nn.Module, weights: WeightsConfig, stamp: WeightsStamp, **kwargs: Any
    ) -> Self:
        """Wrap a built ``model``; families whose constructor needs more (a tokenizer, names) override this."""
        return cls(model, **stamp, **kwargs)

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


__all__ = ["ModelBuilder", "ModelMetric", "WeightsStamp"]
