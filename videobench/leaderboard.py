"""From per-case scores to leaderboard rows: means x100 with 95% bootstrap confidence intervals.

``scores.csv`` holds raw per-case values (cosines in [-1, 1], ``dynamic`` in {0, 1}). A leaderboard
mean is ``scale * mean(values)`` over the cases that were scored without error, with each column's
registered scale (:class:`~videobench.metrics.registry.ColumnSpec`; 100 for all built-in ones), so cosines
read x100 and ``dynamic`` becomes D.D, the percent of dynamic videos (VBench's dynamic degree). The confidence interval is the
percentile bootstrap over cases: resample the cases with replacement ``n_resamples`` times, take each
resample's mean, and report the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from videobench.metrics.registry import column_specs

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    NaNs are dropped first. Draws ``n_resamples`` index vectors of length n at once from
    ``numpy.random.default_rng(seed)`` (the same stream a loop drawing one vector at a time would
    see), so the interval is reproducible. Returns ``(nan, nan)`` for no values.
    """
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan"), float("nan")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, array.size, size=(n_resamples, array.size))
    means = array[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    if np.ptp(array) == 0:  # constant data: a zero-width interval exactly (sums can differ in the last ulp)
        return float(array[0]), float(array[0])
    return float(low), float(high)


def weighted_bootstrap(values: np.ndarray, weights: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                       confidence: float = 0.95, seed: int = DEFAULT_SEED) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` of the weighted mean ``sum(w v) / sum(w)``: the same resampled index vectors as
    :func:`bootstrap_ci`, each resample's weighted mean (cases drawn with their weights)."""
    mean = float((values * weights).sum() / weights.sum())
    if np.ptp(values) == 0:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = (values[indices] * weights[indices]).sum(axis=1) / weights[indices].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def summarize_column(
    raw: Iterable[float], n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, scale: float = 100.0,
    weights: Iterable[float] | None = None,
) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` of ``scale * raw`` (NaNs dropped); weighted by ``weights`` when given."""
    numbers = pd.to_numeric(pd.Series(list(raw), dtype=object), errors="coerce")
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan) * scale
    if weights is not None:
        weight = pd.to_numeric(pd.Series(list(weights), dtype=object), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        keep = ~np.isnan(values) & np.isfinite(weight) & (weight > 0)
        if not keep.any():
            return float("nan"), float("nan"), float("nan")
        return weighted_bootstrap(values[keep], weight[keep], n_resamples=n_resamples, seed=seed)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return float(values.mean()), low, high


def _truthy(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin({"1", "true", "1.0", "yes"})


def aggregate(
    scores: pd.DataFrame,
    by: Sequence[str],
    columns: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One row per group of ``by``: for each column its mean x scale and 95% CI, plus counts.

    Rows with a non-empty ``error`` count as failed and are left out of every mean. Output
    columns: ``by...``, then ``<col>``, ``<col>_ci_low``, ``<col>_ci_high`` per column, then
    ``n_cases``, ``n_scored``, ``n_failed``, ``random_weights`` (0/1).
    """
    specs = column_specs()
    frame = scores.copy()
    error = frame["error"].fillna("").astype(str) if "error" in frame else pd.Series("", index=frame.index)
    frame["_failed"] = error.str.len() > 0
    random = _truthy(frame["random_weights"]) if "random_weights" in frame else pd.Series(False, index=frame.index)
    frame["_random"] = random
    rows = []
    for key, group in frame.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(by, key))
        ok = group[~group["_failed"]]
        for column in columns:
            raw = pd.to_numeric(ok[column], errors="coerce") if column in ok else pd.Series(dtype=float)
            scale = specs[column].scale if column in specs else 100.0
            weight = specs[column].weight if column in specs else None
            weights = pd.to_numeric(ok[weight], errors="coerce") if weight and weight in ok else None
            mean, low, high = summarize_column(raw, n_resamples=n_resamples, seed=seed, scale=scale, weights=weights)
            row.update({column: mean, f"{column}_ci_low": low, f"{column}_ci_high": high})
        row.update(
            n_cases=int(len(group)),
            n_scored=int((~group["_failed"]).sum()),
            n_failed=int(group["_failed"].sum()),
            random_weights=int(group["_random"].any()),
        )
        rows.append(row)
    ordered = list(by) + [c for column in columns for c in (column, f"{column}_ci_low", f"{column}_ci_high")]
    ordered += ["n_cases", "n_scored", "n_failed", "random_weights"]
    return pd.DataFrame(rows, columns=ordered)
