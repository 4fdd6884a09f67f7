"""Where plugins come from: the built-in modules, and other packages' entry points; and how they stay cheap to load.

A plugin module registers its methods, metrics or suites when it is imported (``@register_method``,
``@register_metric``, ``@register_suite``). Built-in plugins are listed below; any installed package adds its own
through the entry-point groups ``videobench.methods``, ``videobench.metrics`` and ``videobench.suites``::

    # pyproject.toml of a third-party package
    [project.entry-points."videobench.methods"]
    my-method = "my_package.videobench_plugin"

Each entry point names a module (or an object inside one); loading it imports the module, which registers. A
plugin that fails to import is reported once as a warning naming the entry point, and the others still load.

Loading is lazy in two ways:

* Asking for one plugin by name (:func:`load_plugin`) imports only the module that defines it when the name is
  known (:data:`BUILTIN_METHODS`, or an entry point of that name); an unknown name loads everything (correct, only
  slower), so a new built-in plugin works before it is added to that map.
* A plugin module is its own metadata: ``videobench methods`` reads the names, kinds, descriptions, options and
  weights from the registrations, so importing a plugin module must be cheap. Plugin modules therefore import
  the model libraries (diffusers, transformers, open_clip, timm, peft, torchvision, and torch where the module's
  top level does not need it) lazily: inside the functions that build models, or through :func:`lazy_module`,
  a module stand-in that imports on first attribute access (the pattern of Scientific Python's SPEC 1,
  ``lazy_loader.load``). The model code runs unchanged; only the import moves.

  The alternative, a table of light metadata beside the modules (names, descriptions, options), was weighed and
  not taken: a contributor would describe a method twice (the table and ``@register_method``), the two would
  drift, and third-party packages would need a second mechanism; with cheap modules, one file that registers
  itself stays the whole contract.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import types
from collections.abc import Callable
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

METHODS_GROUP = "videobench.methods"
METRICS_GROUP = "videobench.metrics"
SUITES_GROUP = "videobench.suites"

#: The modules of this distribution that register plugins, per group (data: the harness names no plugin). A
#: package stands for every module in it, so a new file in ``baselines/`` registers by being there (except the
#: ``*_model`` / ``*_config`` modules beside a plugin module: its networks and settings, which register nothing).
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
        _import_with_submodules(module)
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


#: Endings of the modules in a plugin package that register nothing: the networks (``*_model``, which import torch)
#: and settings (``*_config``) of the plugin module beside them, imported by it when it needs them.
_HELPER_MODULE_SUFFIXES = ("_model", "_config")


def _import_with_submodules(name: str) -> None:
    """Import module ``name``; when it is a package, also every module in it (in name order) but its helpers."""
    module = importlib.import_module(name)
    for info in sorted(pkgutil.iter_modules(getattr(module, "__path__", [])), key=lambda info: info.name):
        if info.name.endswith(_HELPER_MODULE_SUFFIXES):
            continue
        importlib.import_module(f"{name}.{info.name}")


class LazyModule(types.ModuleType):
    """A stand-in for module ``name`` that imports it on first attribute access (see the module docstring).

    ``torch = lazy_module("torch")`` at a plugin's top level lets ``torch.zeros(...)`` in its functions work as
    with ``import torch``, while importing the plugin (to list it) does not import torch.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_lazy_target"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_module(name: str) -> Any:
    """Module ``name``, imported when first used: the real module when it is already imported, else a
    :class:`LazyModule` (typed ``Any`` so that ``torch.Tensor`` and friends type-check as attributes)."""
    return sys.modules.get(name) or LazyModule(name)
