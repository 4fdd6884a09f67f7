"""Where plugins come from: the built-in modules, and other packages' entry points.

A plugin module registers its methods, metrics or suites when it is imported (``@register_method``,
``@register_metric``, ``@register_suite``). Built-in plugins are listed below; any installed package adds its own
through the entry-point groups ``videobench.methods``, ``videobench.metrics`` and ``videobench.suites``::

    # pyproject.toml of a third-party package
    [project.entry-points."videobench.methods"]
    my-method = "my_package.videobench_plugin"

Each entry point names a module (or an object inside one); loading it imports the module, which registers. A
plugin that fails to import is reported once as a warning naming the entry point, and the others still load.

Asking for one plugin by name (:func:`load_plugin`) imports only the module that defines it when the name is known
(:data:`BUILTIN_METHODS`, or an entry point of that name), so ``videobench generate --method X`` does not import
every other method's libraries; listing all of them imports everything.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

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

#: Where each built-in method is defined (data), so that one method loads without the others.
BUILTIN_METHODS: dict[str, str] = {
    "reference-still": "videobench.calibration",
    "reference-pan": "videobench.calibration",
    "customvideox": "customvideox.method",
    "reference+i2v": "baselines.reference_i2v",
    "ip-adapter+i2v": "baselines.ip_adapter",
    "ms-diffusion+i2v": "baselines.ms_diffusion",
    "blip-diffusion+i2v": "baselines.blip_diffusion",
    "lambda-eclipse+i2v": "baselines.lambda_eclipse",
    "ssr-encoder+i2v": "baselines.ssr_encoder",
    "videobooth": "baselines.videobooth",
    "wan-vace": "baselines.wan_vace",
}
_BUILTIN_BY_NAME = {METHODS_GROUP: BUILTIN_METHODS}

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


def load_plugin(group: str, name: str) -> None:
    """Import what defines plugin ``name`` of ``group``: its built-in module or its entry point, else everything."""
    if group in _LOADED:
        return
    module = _BUILTIN_BY_NAME.get(group, {}).get(name)
    if module is not None:
        _import(group, name, module, lambda: importlib.import_module(module))
        return
    for entry_point in metadata.entry_points(group=group, name=name):
        _import(group, name, entry_point.value, entry_point.load)
        return
    load_plugins(group)


class PluginLoadError(ValueError):
    """The module that defines a plugin failed to import; one line naming the plugin, the module and the error."""


def _import(group: str, name: str, where: str, load: Callable[[], Any]) -> None:
    try:
        load()
    except Exception as error:  # the plugin's own bug or a missing dependency: one line, not its traceback
        first = (str(error).splitlines() or [""])[0][:200]
        raise PluginLoadError(f"plugin {name!r} ({group}): {where} failed to import "
                              f"({type(error).__name__}: {first})") from None


def reload_plugins(group: str) -> None:
    """Forget that ``group`` was loaded, so the next :func:`load_plugins` looks at the entry points again."""
    _LOADED.discard(group)
