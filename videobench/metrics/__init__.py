"""The metric families and their registry.

:func:`build_metrics` builds each needed family once per run::

    metrics = build_metrics(["clip_t", "dino_i", "dynamic"], WeightsConfig(weights_dir="weights"), device="cuda",
                            options={"clip": {"model": "ViT-L-14"}})
    for metric in metrics:
        row.update(metric.score(sample, tuple(c for c in columns if c in metric.columns)))

Families register themselves (:func:`~videobench.metrics.registry.register_metric`); the built-in ones are the five
metrics of the paper (``clip``: CLIP-T, CLIP-I, T.Cons; ``dino``: DINO-I; ``dynamic``: D.D) and VBench's subject
consistency (opt-in).
"""

from videobench.metrics.base import Metric, MetricInput
from videobench.metrics.registry import (
    ColumnSpec,
    MetricContext,
    build_metrics,
    column_family,
    column_specs,
    default_columns,
    expand_columns,
    families_for,
    metric_families,
    ordered_columns,
    register_metric,
)

__all__ = [
    "ColumnSpec", "Metric", "MetricContext", "MetricInput", "build_metrics", "column_family", "column_specs",
    "default_columns", "expand_columns", "families_for", "metric_families", "ordered_columns", "register_metric",
]
