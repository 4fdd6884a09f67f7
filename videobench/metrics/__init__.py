"""The five metrics: CLIP-T, CLIP-I, T.Cons (one CLIP pass), DINO-I, and RAFT dynamic degree.

:func:`build_metrics` builds each needed model family once per run::

    metrics = build_metrics(["clip_t", "dino_i", "dynamic"], WeightsConfig(weights_dir="weights"), device="cuda")
    for metric in metrics:
        row.update(metric.score(sample, tuple(c for c in columns if c in metric.columns)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from videobench.metrics.base import METRIC_COLUMNS, Metric, MetricInput
from videobench.metrics.preprocess import check_device, check_precision
from videobench.weights import WeightsConfig, check_weights

__all__ = ["METRIC_COLUMNS", "Metric", "MetricInput", "build_metrics", "families_for"]


def families_for(columns: Sequence[str]) -> list[str]:
    """The model families (``clip``, ``dino``, ``dynamic``) that ``columns`` need, in leaderboard order."""
    unknown = [c for c in columns if c not in METRIC_COLUMNS]
    if unknown:
        raise ValueError(f"unknown metric column(s) {unknown}; expected some of {list(METRIC_COLUMNS)}")
    wanted = set(columns)
    return list(dict.fromkeys(family for column, family in METRIC_COLUMNS.items() if column in wanted))


def build_metrics(
    columns: Sequence[str],
    weights: WeightsConfig,
    device: str = "cpu",
    dtype: str = "fp32",
    random_weights: bool = False,
    **options: Any,
) -> list[Metric]:
    """One :class:`Metric` per family needed by ``columns``, each model built (and its weights loaded) once.

    Missing weight files are all reported together before any model is built
    (:class:`~videobench.weights.MissingWeightsError`); an unusable ``device``/``dtype`` raises ``ValueError`` first.
    ``random_weights=True`` builds seeded random models instead;
    those metrics carry ``random_weights = True`` and say so in ``config()``. ``options`` go to every family's
    ``from_weights`` (e.g. ``seed``, ``batch_size`` for clip/dino, ``pair_batch_size`` and ``rule`` for dynamic)
    when it takes them.
    """
    from videobench.metrics.clip import ClipMetric
    from videobench.metrics.dino import DinoMetric
    from videobench.metrics.dynamic import DynamicDegreeMetric

    families = families_for(columns)
    check_device(device)  # bad device or precision: fail before any weight lookup or model build
    check_precision(device, dtype)
    if not random_weights:
        check_weights(families, weights)
    builders = {"clip": ClipMetric, "dino": DinoMetric, "dynamic": DynamicDegreeMetric}
    accepted = {
        "clip": {"seed", "batch_size"},
        "dino": {"seed", "batch_size", "model_kwargs"},
        "dynamic": {"seed", "pair_batch_size", "num_flow_updates", "rule"},
    }
    return [
        builders[family].from_weights(
            weights, device=device, dtype=dtype, random_weights=random_weights,
            **{k: v for k, v in options.items() if k in accepted[family]},
        )
        for family in families
    ]
