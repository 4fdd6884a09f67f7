"""Typed plugin options: a dataclass per method or metric, filled from ``key=value`` strings or a config file.

A plugin declares its options as a dataclass whose fields carry a help text::

    @dataclass(frozen=True)
    class ClipOptions:
        model: str = option("ViT-B-32-quickgelu", "open_clip architecture")
        batch_size: int = option(64, "images per forward pass", minimum=1)
        mode: Literal["joint", "cached"] | None = option(None, "reference mode (None: from the LoRA file)")

:func:`parse_options` turns strings (``-o key=value`` on the command line) or typed values (a YAML/JSON config
file) into that dataclass, converting and validating each value against the field's annotation: ``str``,
``int``, ``float``, ``bool``, :class:`~pathlib.Path`, ``Literal[...]`` choices, ``X | None`` (``none`` /
``null`` as text), and ``tuple[int, ...]`` / ``tuple[float, ...]`` (``1,2,3`` as text) and ``dict`` (a JSON object as text). Every problem is one
:class:`OptionError` line naming the owner (``method customvideox``), the key and what is accepted, raised
before any model loads. A dataclass's own ``__post_init__`` may raise ``ValueError`` for cross-field rules;
it is reported the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import stat
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null", ""}


class OptionError(ValueError):
    """An option that cannot be accepted; the message names the owner, the key and the accepted values."""


def did_you_mean(names: str | Sequence[str], choices: Iterable[str]) -> str:
    """The ``" (did you mean 'x'?)"`` part of an error about unknown ``names`` (empty when none is close).

    Each unknown name gets its closest choice by :func:`difflib.get_close_matches` (ratio >= 0.6); with several
    unknown names each hint says which name it is for.
    """
    names = [names] if isinstance(names, str) else list(names)
    choices = [str(choice) for choice in choices]
    hints = []
    for name in names:
        close = difflib.get_close_matches(str(name), choices, n=1)
        if close:
            hints.append(repr(close[0]) if len(names) == 1 else f"{close[0]!r} for {name!r}")
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def option(default: Any = MISSING, help: str = "", *, minimum: float | None = None,
           maximum: float | None = None, default_factory: Any = MISSING, nonfinite: bool = False) -> Any:
    """A dataclass field with a help text and optional numeric bounds (checked by :func:`parse_options`).

    NaN and infinities are refused in every numeric option (they pass any ``minimum``/``maximum`` comparison
    unnoticed) unless ``nonfinite=True`` declares them meaningful for the field.
    """
    metadata = {"help": help, "minimum": minimum, "maximum": maximum, "nonfinite": nonfinite}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``videobench methods NAME`` shows it."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class NoOptions:
    """The options dataclass of a plugin that takes none."""


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    """``(True, X)`` for ``X | None`` / ``Optional[X]``, else ``(False, annotation)``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) < len(get_args(annotation)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, annotation


def type_name(annotation: Any) -> str:
    """A short human-readable name of an option type (``int``, ``joint|cached``, ``path or none``)."""
    optional, inner = _is_optional(annotation)
    origin = get_origin(inner)
    if origin is Literal:
        text = "|".join(str(arg) for arg in get_args(inner))
    elif origin is tuple:
        text = f"comma-separated {get_args(inner)[0].__name__}s"
    elif origin is dict or inner is dict:
        text = "JSON object"
    elif isinstance(inner, type):
        text = {"Path": "path"}.get(inner.__name__, inner.__name__)
    else:
        text = str(inner)
    return f"{text} or none" if optional else text


def _convert(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (text or a typed value from a config file) to ``annotation``; ``ValueError`` when not."""
    optional, inner = _is_optional(annotation)
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE and optional):
        if optional:
            return None
        raise ValueError("a value is required")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ValueError(f"choose one of {', '.join(map(str, choices))}")
    if origin is tuple:
        item_type = get_args(inner)[0]
        items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        if items is None:
            raise ValueError(f"expected {type_name(inner)}")
        return tuple(_convert(item.strip() if isinstance(item, str) else item, item_type) for item in items)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        try:
            return int(value.strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    if inner is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if origin is dict or inner is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("expected a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError("expected a mapping")
        return dict(value)
    if inner is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError("expected a path")
        return Path(value).expanduser()
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("expected text")
        return str(value)
    # A plugin's field of a type no text converts to (list, set, a class): one option error, not a traceback.
    raise ValueError(f"the plugin declares this option as {getattr(inner, '__name__', inner)}, which cannot be set "
                     "(supported: str, int, float, bool, Path, Literal, tuple[X, ...], dict, X | None)")


def _check_bounds(value: Any, meta: Mapping[str, Any]) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if isinstance(item, float) and not math.isfinite(item) and not meta.get("nonfinite"):
            raise ValueError("expected a finite number (not NaN or infinity)")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if meta.get("minimum") is not None and item < meta["minimum"]:
                raise ValueError(f"must be >= {meta['minimum']}")
            if meta.get("maximum") is not None and item > meta["maximum"]:
                raise ValueError(f"must be <= {meta['maximum']}")


def option_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``name -> (field, resolved annotation)`` of an options dataclass."""
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def parse_options(cls: type[T], raw: Mapping[str, Any], owner: str) -> T:
    """Build ``cls`` from ``raw`` (texts or typed values), validating every key; see the module docstring.

    Raises:
        OptionError: one line naming ``owner``, the key, the value and what is accepted.
    """
    fields = option_fields(cls)
    unknown = [key for key in raw if key not in fields]
    if unknown:
        accepted = ", ".join(fields) or "none"
        raise OptionError(f"{owner}: unknown option(s) {', '.join(map(echo, unknown))}{did_you_mean(unknown, fields)}; "
                          f"accepted: {accepted}")
    values = {}
    for key, value in raw.items():
        info, annotation = fields[key]
        try:
            values[key] = _convert(value, annotation)
            _check_bounds(values[key], info.metadata)
        except ValueError as error:
            raise OptionError(f"{owner}: option {key}={echo(value)}: {error} ({type_name(annotation)})") from None
    try:
        return cls(**values)
    except ValueError as error:  # __post_init__'s cross-field rules
        raise OptionError(f"{owner}: {error}") from None


def describe_options(cls: type) -> list[OptionInfo]:
    """The options of ``cls`` with their types, defaults, help and choices (for ``videobench methods NAME``)."""
    rows = []
    for name, (info, annotation) in option_fields(cls).items():
        default = info.default if info.default is not MISSING else (
            info.default_factory() if info.default_factory is not MISSING else None)
        _, inner = _is_optional(annotation)
        choices = get_args(inner) if get_origin(inner) is Literal else ()
        rows.append(OptionInfo(name, type_name(annotation), default, str(info.metadata.get("help", "")), choices))
    return rows


def options_to_dict(options: Any) -> dict[str, Any]:
    """A JSON-friendly dict of an options instance (paths as text, tuples as lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def parse_assignments(items: Iterable[str], what: str = "-o") -> dict[str, str]:
    """``["key=value", ...]`` -> ``{"key": "value"}``; a later key wins. ``OptionError`` for a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{what} {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


#: Config files are small mappings of options: larger files are refused before they are parsed.
MAX_CONFIG_BYTES = 1 << 20
#: Values (scalars, keys, list items) a config file may hold once YAML aliases are expanded: an alias bomb of a few
#: hundred bytes expands to billions of them.
MAX_CONFIG_NODES = 100_000
#: Longest echo of a user's value in an error line.
MAX_ECHO = 80


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters (a bounded walk: never the whole of a huge
    value)."""
    if isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} of {len(value)} item(s)>"
    text = repr(value if not isinstance(value, str) else value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expanded_size(data: Any, path: Path) -> None:
    """Refuse data whose expansion (every alias counted as often as it is used) exceeds :data:`MAX_CONFIG_NODES`."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise OptionError(f"--config {path}: more than {MAX_CONFIG_NODES} values once YAML aliases are expanded "
                              "(an alias bomb?)")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _read_config_text(path: Path) -> str:
    """The UTF-8 text of a regular file of at most :data:`MAX_CONFIG_BYTES` (no FIFO, device or folder)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise OptionError(f"--config {path}: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise OptionError(f"--config {path}: {info.st_size} bytes; config files are limited to "
                              f"{MAX_CONFIG_BYTES} bytes")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise OptionError(f"--config {path}: cannot read ({error.strerror or error})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise OptionError(f"--config {path}: config files are limited to {MAX_CONFIG_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OptionError(f"--config {path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                          f"{error.start})") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file holding one mapping. ``OptionError`` naming the file.

    Only regular UTF-8 files of at most :data:`MAX_CONFIG_BYTES` are read, and the parsed data may hold at most
    :data:`MAX_CONFIG_NODES` values with YAML aliases expanded.
    """
    path = Path(path)
    text = _read_config_text(path)
    yaml_file = path.suffix.lower() in {".yaml", ".yml"}
    try:
        if yaml_file:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise OptionError(f"--config {path}: nested too deeply") from None
    except Exception as error:  # yaml.YAMLError / json.JSONDecodeError: one line either way
        raise OptionError(f"--config {path}: not valid {'YAML' if yaml_file else 'JSON'} "
                          f"({' '.join(str(error)[:400].split())[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    _check_expanded_size(data, path)
    bad_keys = [key for key in data if not isinstance(key, str)]
    if bad_keys:
        raise OptionError(f"--config {path}: option names must be text, got {echo(bad_keys[0])}")
    return data


def read_config_sections(path: str | Path) -> dict[str, dict[str, Any]]:
    """A config file mapping names (methods, rows) to mappings of their options; an empty section is ``{}``.

    Raises:
        OptionError: naming the file and the section that is not a mapping (``customvideox: 5``, a list).
    """
    data = read_config_file(path)
    sections: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise OptionError(f"--config {path}: section {echo(name)} must be a mapping of option names to values, "
                              f"got {type(values).__name__}")
        bad_keys = [key for key in values if not isinstance(key, str)]
        if bad_keys:
            raise OptionError(f"--config {path}: section {echo(name)}: option names must be text, "
                              f"got {echo(bad_keys[0])}")
        sections[name] = dict(values)
    return sections


__all__ = [
    "NoOptions", "OptionError", "OptionInfo", "describe_options", "did_you_mean", "echo", "option", "option_fields",
    "options_to_dict", "parse_assignments", "parse_options", "read_config_file", "read_config_sections", "type_name",
]
