"""The metric registry: a metric family describes itself where it is defined, and the scorer and report read that.

A family is one class decorated with :func:`register_metric`. It declares

* ``family`` (``clip``), ``description``, and ``column_specs``: one :class:`ColumnSpec` per score column it
  computes (name, display label, ``higher_is_better``, display scale and unit, whether values are 0/1, and its
  place in the leaderboard);
* ``Options``: a typed options dataclass (:mod:`videobench.options`), set with ``-M family.key=value``;
* ``default``: whether ``videobench score`` computes it without ``--metrics`` (opt-in families say False);
* ``weight_specs(options) -> [WeightSpec]``: the files it needs (``videobench weights`` lists them);
* ``build(options, context) -> Metric``: the built metric (see :class:`~videobench.metrics.base.Metric`), from
  the resolved weights in ``context.weights`` or, with ``context.random_weights``, from seeded random weights.

The scorer (:mod:`videobench.scoring.runner`), the leaderboard and the report name no family: they ask this module.
Other packages add families through the ``videobench.metrics`` entry-point group (:mod:`videobench.plugins`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from videobench.options import did_you_mean, parse_options
from videobench.plugins import METRICS_GROUP, load_plugins
from videobench.weights import ResolvedWeights, WeightsConfig, WeightSpec, check_weights


@dataclass(frozen=True)
class ColumnSpec:
    """One score column: how it is named, shown and ranked.

    The leaderboard shows ``scale * mean(raw values)`` followed by ``unit`` (cosines x100; D.D: 100 x the fraction
    of dynamic videos, in %). ``binary`` columns hold 0/1 per case (shown as yes/no per case).
    """

    name: str
    label: str
    description: str
    order: float
    higher_is_better: bool = True
    scale: float = 100.0
    unit: str = ""
    binary: bool = False
    #: A per-case column whose values weight this column's mean (None: every case counts once).
    weight: str | None = None


@dataclass
class MetricContext:
    """How a family's model is built: device, precision, seeded random weights, and the resolved weight files."""

    device: str = "cpu"
    dtype: str = "fp32"
    random_weights: bool = False
    seed: int = 0
    weights: Mapping[str, ResolvedWeights] = field(default_factory=dict)

    def weight_path(self, key: str):
        resolved = self.weights.get(key)
        return resolved.path if resolved is not None else None


class MetricFamily(Protocol):
    """What :func:`register_metric` expects of a family class."""

    family: str
    description: str
    column_specs: tuple[ColumnSpec, ...]
    Options: type
    default: bool

    @classmethod
    def weight_specs(cls, options: Any) -> list[WeightSpec]: ...

    @classmethod
    def build(cls, options: Any, context: MetricContext) -> Any: ...


_FAMILIES: dict[str, Any] = {}  # family classes (see MetricFamily), duck-typed


def register_metric(cls: Any) -> Any:
    """Class decorator registering a metric family (see the module docstring)."""
    for attribute in ("family", "description", "column_specs", "Options", "default", "weight_specs", "build"):
        if not hasattr(cls, attribute):
            raise TypeError(f"metric family {cls.__name__} lacks {attribute!r}")
    if cls.family in _FAMILIES and _FAMILIES[cls.family] is not cls:
        raise ValueError(f"metric family {cls.family!r} is already registered")
    taken = {column.name: family for family, other in _FAMILIES.items() if other is not cls
             for column in other.column_specs}
    clash = [column.name for column in cls.column_specs if column.name in taken]
    if clash:
        raise ValueError(f"metric family {cls.family!r}: column(s) {clash} already belong to {taken[clash[0]]!r}")
    _FAMILIES[cls.family] = cls
    return cls


def metric_families() -> dict[str, Any]:
    """Every registered family (built-in and entry points), in leaderboard order of their first column."""
    load_plugins(METRICS_GROUP)
    return dict(sorted(_FAMILIES.items(), key=lambda item: min(c.order for c in item[1].column_specs)))


def column_specs() -> dict[str, ColumnSpec]:
    """Every known score column, in leaderboard order."""
    columns = [column for cls in metric_families().values() for column in cls.column_specs]
    return {column.name: column for column in sorted(columns, key=lambda column: column.order)}


def column_family() -> dict[str, str]:
    """``column -> family``."""
    return {column.name: cls.family for cls in metric_families().values() for column in cls.column_specs}


def default_columns() -> list[str]:
    """The columns ``videobench score`` computes without ``--metrics`` (those of the default families)."""
    families, owner = metric_families(), column_family()
    return [name for name in column_specs() if families[owner[name]].default]


def ordered_columns(names: Iterable[str]) -> list[str]:
    """``names`` (columns) in leaderboard order; unknown names last, in the order given."""
    names = list(dict.fromkeys(names))
    known = [name for name in column_specs() if name in names]
    return known + [name for name in names if name not in known]


def expand_columns(names: Sequence[str] | None) -> list[str]:
    """``--metrics`` names (columns or family names) -> columns in leaderboard order; ``None`` -> the defaults.

    Raises:
        ValueError: naming the unknown names and what is accepted.
    """
    if names is None:
        return default_columns()
    families = metric_families()
    owner = column_family()
    wanted: list[str] = []
    unknown = []
    for name in names:
        if name in owner:
            wanted.append(name)
        elif name in families:
            wanted += [column.name for column in families[name].column_specs]
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}{did_you_mean(unknown, [*owner, *families])}; "
                         f"choose from columns "
                         f"{', '.join(owner)} or families {', '.join(families)}")
    if not wanted:
        raise ValueError("nothing to score: no metric columns selected")
    return ordered_columns(wanted)


def families_for(columns: Sequence[str]) -> list[str]:
    """The families that compute ``columns``, in leaderboard order."""
    owner = column_family()
    unknown = [column for column in columns if column not in owner]
    if unknown:
        raise ValueError(f"unknown metric column(s) {unknown}{did_you_mean(unknown, owner)}; known: {list(owner)}")
    return list(dict.fromkeys(owner[column] for column in ordered_columns(columns)))


def parse_metric_options(raw: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """``{family: {key: value}}`` -> ``{family: Options instance}`` for every family; unknown families refused."""
    families = metric_families()
    raw = dict(raw or {})
    unknown = [family for family in raw if family not in families]
    if unknown:
        raise ValueError(f"options for unknown metric famil{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}{did_you_mean(unknown, families)}; families: {', '.join(families)}")
    return {family: parse_options(cls.Options, dict(raw.get(family) or {}), owner=f"metric {family}")
            for family, cls in families.items()}


def metric_weight_specs(families: Iterable[str], options: Mapping[str, Any]) -> list[tuple[str, WeightSpec]]:
    """``(family, spec)`` for every weight file the ``families`` need with ``options`` (parsed)."""
    registry = metric_families()
    families = list(families)
    unknown = [family for family in families if family not in registry]
    if unknown:
        raise ValueError(f"unknown metric famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}"
                         f"{did_you_mean(unknown, registry)}; families: {', '.join(registry)}")
    return [(family, spec) for family in families for spec in registry[family].weight_specs(options[family])]


def build_metrics(
    columns: Sequence[str] | None = None,
    weights: WeightsConfig | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    random_weights: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> list[Any]:
    """One metric per family needed by ``columns``, each model built (and its weights loaded) once.

    ``options`` maps a family to its options (``{"clip": {"model": "ViT-L-14"}}``, texts or typed values).
    Every missing weight file of every family is reported together before any model is built
    (:class:`~videobench.weights.MissingWeightsError`); an unusable ``device``/``dtype`` raises ``ValueError``
    first. ``random_weights=True`` builds seeded random models instead; those metrics carry
    ``random_weights = True`` and say so in ``config()``.
    """
    from videobench.metrics.preprocess import check_device, check_precision

    columns = expand_columns(columns)
    families = families_for(columns)
    check_device(device)
    check_precision(device, dtype)
    parsed = parse_metric_options(options)
    resolved: dict[str, ResolvedWeights] = {}
    if not random_weights:
        resolved = check_weights(metric_weight_specs(families, parsed), weights)
    registry = metric_families()
    built = []
    for family in families:
        mine = {key.split(":", 1)[1]: value for key, value in resolved.items() if key.startswith(f"{family}:")}
        context = MetricContext(device=device, dtype=dtype, random_weights=random_weights, seed=seed, weights=mine)
        metric = registry[family].build(parsed[family], context)
        metric.settings = non_default_settings(parsed[family])
        built.append(metric)
    return built


def non_default_settings(options: Any) -> dict[str, Any]:
    """The fields of a family's parsed options that differ from its defaults (what ``-M`` changed), JSON-ready."""
    from videobench.options import options_to_dict

    try:
        defaults = options_to_dict(type(options)())
    except TypeError:  # an options class with required fields: every field is a setting
        defaults = {}
    return {key: value for key, value in options_to_dict(options).items() if defaults.get(key, object()) != value}
