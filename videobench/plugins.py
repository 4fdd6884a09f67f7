"""Where plugins come from: the built-in modules, and other packages' entry points.

A plugin module registers its methods, metrics or suites when it is imported (``@register_method``,
``@register_metric``, ``@register_suite``). Built-in plugins are listed below; any installed package adds its own
through the entry-point groups ``videobench.methods``, ``videobench.metrics`` and ``videobench.suites``::

    # pyproject.toml of a third-party package
    [project.entry-points."videobench.methods"]
    my-method = "my_package.videobench_plugin"

Each entry point names a module (or an object inside one); loading it imports the module, which registers. A
plugin that fails to import is reported once as a warning naming the entry point, and the others still load.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata

logger = logging.getLogger(__name__)

METHODS_GROUP = "videobench.methods"
METRICS_GROUP = "videobench.metrics"
SUITES_GROUP = "videobench.suites"

#: The modules of this distribution that register plugins, per group (data: the harness names no plugin).
BUILTIN_PLUGINS: dict[str, tuple[str, ...]] = {
    METHODS_GROUP: ("videobench.calibration", "customvideox.method", "baselines"),
    METRICS_GROUP: (
        "videobench.metrics.clip", "videobench.metrics.dino", "videobench.metrics.dynamic",
        "videobench.metrics.subject_consistency",
    ),
    SUITES_GROUP: ("videobench.suites.smoke", "videobench.suites.dreambench", "videobench.suites.videobench"),
}

_LOADED: set[str] = set()


def load_plugins(group: str) -> None:
    """Import the built-in plugin modules of ``group`` and every installed entry point of it (once per process)."""
    if group in _LOADED:
        return
    _LOADED.add(group)
    for module in BUILTIN_PLUGINS.get(group, ()):
        importlib.import_module(module)
    for entry_point in metadata.entry_points(group=group):
        try:
            entry_point.load()
        except Exception as error:  # one broken third-party plugin must not take the others down
            logger.warning("plugin %s (%s = %s) failed to load: %s: %s", group, entry_point.name,
                           entry_point.value, type(error).__name__, error)


def reload_plugins(group: str) -> None:
    """Forget that ``group`` was loaded, so the next :func:`load_plugins` looks at the entry points again."""
    _LOADED.discard(group)
