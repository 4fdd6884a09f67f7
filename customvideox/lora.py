"""The reference LoRA: injection (peft), counting, and safetensors save/load in diffusers' key format.

The LoRA (rank 128 by default) sits on ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every block's
``attn1`` as one peft adapter named ``"reference"``. The attention processor routes only the reference
tokens through it (:mod:`customvideox.attention`), so the base model is untouched for text and video.

Files use diffusers' LoRA layout: ``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight`` and so on,
with the peft config in the ``lora_adapter_metadata`` safetensors metadata entry, so
``CogVideoXPipeline.load_lora_weights(path, adapter_name="reference")`` reads them too. The full
:class:`~customvideox.config.ReferenceConfig` the LoRA was trained with is recorded in the
``customvideox_reference_config`` entry; loading resolves it against the caller's explicit overrides
(:func:`resolve_file_config`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mediaio.atomic import atomic_path

from .config import (  # noqa: F401 (LORA_WEIGHT_NAME re-exported)
    LORA_WEIGHT_NAME,
    REFERENCE_ADAPTER_NAME,
    ReferenceConfig,
    legacy_overrides,
    resolve_reference_config,
)

if TYPE_CHECKING:
    from diffusers import ModelMixin

logger = logging.getLogger(__name__)

#: diffusers' metadata key for the packed peft config.
LORA_METADATA_KEY = "lora_adapter_metadata"
#: Our metadata key for the full :class:`ReferenceConfig` used at training time.
REFERENCE_CONFIG_METADATA_KEY = "customvideox_reference_config"
KEY_PREFIX = "transformer."


def reference_lora_config(config: ReferenceConfig) -> LoraConfig:
    """The peft :class:`LoraConfig` of the reference LoRA (B initialized to zero: the LoRA starts as identity)."""
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.lora_targets),
        init_lora_weights=True,
    )


def has_reference_lora(model: "ModelMixin") -> bool:
    return REFERENCE_ADAPTER_NAME in (getattr(model, "peft_config", None) or {})


def add_reference_lora(model: "ModelMixin", config: ReferenceConfig | None = None) -> int:
    """Inject the reference LoRA into every block's ``attn1``; returns the number of LoRA parameters."""
    config = config or ReferenceConfig()
    if has_reference_lora(model):
        raise ValueError(f"the model already has a '{REFERENCE_ADAPTER_NAME}' LoRA adapter")
    model.add_adapter(reference_lora_config(config), adapter_name=REFERENCE_ADAPTER_NAME)
    return count_lora_parameters(model)


def lora_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The reference LoRA's parameters (``lora_A`` / ``lora_B`` of the ``reference`` adapter)."""
    tag = f".{REFERENCE_ADAPTER_NAME}."
    return [(n, p) for n, p in model.named_parameters() if ".lora_" in n and tag in n]


def count_lora_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for _, p in lora_parameters(model))


def mark_only_reference_lora_trainable(model: torch.nn.Module) -> int:
    """Freeze everything but the reference LoRA; returns the trainable parameter count."""
    model.requires_grad_(False)
    for _, p in lora_parameters(model):
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_lora_state_dict(model: "ModelMixin") -> dict[str, torch.Tensor]:
    """The LoRA weights with diffusers' keys (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``)."""
    if not has_reference_lora(model):
        raise ValueError(f"the model has no '{REFERENCE_ADAPTER_NAME}' LoRA adapter (call add_reference_lora first)")
    state = get_peft_model_state_dict(model, adapter_name=REFERENCE_ADAPTER_NAME)
    return {KEY_PREFIX + k: v.detach().contiguous() for k, v in state.items()}


def strip_lora_from_state_dict(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """A ``state_dict`` post-hook: drop peft's LoRA tensors and rename ``*.base_layer.*`` to the base names,
    so the state dict is the plain base model's (used when saving a model that carries the reference LoRA)."""
    for key in list(state_dict):
        if ".lora_" in key:
            del state_dict[key]
        elif ".base_layer." in key:
            state_dict[key.replace(".base_layer.", ".")] = state_dict.pop(key)


def lora_file_path(path: str | os.PathLike) -> Path:
    """The LoRA file ``path`` names: itself for a ``.safetensors`` file, else ``path/pytorch_lora_weights.safetensors``."""
    path = Path(path)
    return path / LORA_WEIGHT_NAME if path.is_dir() or path.suffix != ".safetensors" else path


def save_reference_lora(
    model: "ModelMixin", path: str | os.PathLike, config: ReferenceConfig | None = None
) -> Path:
    """Write the reference LoRA to ``path`` (a ``.safetensors`` file, or a folder that gets
    ``pytorch_lora_weights.safetensors``) atomically; returns the file path."""
    file = lora_file_path(path)
    config = config or getattr(model, "reference_config", None) or ReferenceConfig()
    peft_config = model.peft_config[REFERENCE_ADAPTER_NAME] if has_reference_lora(model) else None
    tensors = reference_lora_state_dict(model)
    packed = {
        KEY_PREFIX + "r": peft_config.r,
        KEY_PREFIX + "lora_alpha": peft_config.lora_alpha,
        KEY_PREFIX + "target_modules": sorted(peft_config.target_modules),
    }
    metadata = {
        "format": "pt",
        LORA_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
        REFERENCE_CONFIG_METADATA_KEY: json.dumps(config.to_dict(), sort_keys=True),
    }
    with atomic_path(file) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return file


def _tensor_shapes(handle) -> dict[str, tuple[int, ...]]:
    return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


def _strip_prefix(key: str) -> str:
    return key.removeprefix(KEY_PREFIX)


def _check_lora_keys(file: Path, keys: list[str]) -> None:
    if not keys or not all(".lora_A." in k or ".lora_B." in k for k in keys):
        raise ValueError(f"{file}: not a LoRA file (expected only '*.lora_A.weight' / '*.lora_B.weight' tensors)")


def _metadata_json(file: Path, metadata: dict[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored under ``key`` in a safetensors header; ``ValueError`` naming the file and key."""
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: metadata {key!r} is not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: metadata {key!r} is not a JSON object (got {type(value).__name__})")
    return value


def _settings_from_metadata(file: Path, metadata: dict[str, str], shapes: dict[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    """The recorded ReferenceConfig, or (a file without our record) the LoRA shape from its tensors and diffusers'
    ``lora_adapter_metadata`` (alpha; default the rank)."""
    if REFERENCE_CONFIG_METADATA_KEY in metadata:
        return _metadata_json(file, metadata, REFERENCE_CONFIG_METADATA_KEY)
    rank = next(shape[0] for k, shape in shapes.items() if ".lora_A." in k)
    packed = _metadata_json(file, metadata, LORA_METADATA_KEY)
    alpha = packed.get(KEY_PREFIX + "lora_alpha", rank)
    targets = sorted({k.split(".attn1.", 1)[1].rsplit(".lora_", 1)[0] for k in shapes if ".attn1." in k})
    return {"lora_rank": rank, "lora_alpha": alpha, "lora_targets": targets}


def _open_lora(path: str | os.PathLike, load_tensors: bool) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    file = lora_file_path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"reference LoRA not found: {file} (expected a .safetensors file or a folder holding {LORA_WEIGHT_NAME})"
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {_strip_prefix(k): v for k, v in _tensor_shapes(handle).items()}
            tensors = {_strip_prefix(k): handle.get_tensor(k) for k in handle.keys()} if load_tensors else {}
    except (SafetensorError, OSError) as error:  # cut short, or not safetensors at all
        detail = " ".join(str(error).split())[:200]
        raise ValueError(f"{file}: not a readable safetensors file ({detail})") from None
    _check_lora_keys(file, list(shapes))
    return file, _settings_from_metadata(file, metadata, shapes), tensors


def read_reference_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The :class:`ReferenceConfig` fields a LoRA file records (no tensor is read).

    A file written by :func:`save_reference_lora` (``customvideox train``) records every field it was trained
    with; a file from another tool gives only its shape (``lora_rank``, ``lora_alpha``, ``lora_targets``).
    """
    return _open_lora(path, load_tensors=False)[1]


def read_reference_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a reference LoRA file: its tensors (keys without the ``transformer.`` prefix) and its recorded
    settings (:func:`read_reference_settings`)."""
    _, settings, state = _open_lora(path, load_tensors=True)
    return state, settings


def resolve_file_config(
    path: str | os.PathLike, overrides: Mapping[str, Any] | ReferenceConfig | None = None
) -> ReferenceConfig:
    """The configuration a run with this LoRA uses: the file's settings unless ``overrides`` sets a key
    (:func:`~customvideox.config.resolve_reference_config`). Each override that contradicts the file is logged
    once (``logging.warning``) with the file, the key, the file's value and the override.

    ``overrides`` is a mapping of only the explicitly set keys; a full :class:`ReferenceConfig` (the older API)
    counts its non-default fields as set (:func:`~customvideox.config.legacy_overrides`).
    """
    return _resolve(lora_file_path(path), read_reference_settings(path), overrides)


def _resolve(
    file: Path, settings: dict[str, Any], overrides: Mapping[str, Any] | ReferenceConfig | None
) -> ReferenceConfig:
    if isinstance(overrides, ReferenceConfig):
        overrides = legacy_overrides(overrides, with_lora_shape=False)
    config, conflicts = resolve_reference_config(settings, overrides, source=f"reference LoRA {file}")
    for message in conflicts:
        logger.warning("%s", message)
    return config


def load_reference_lora(
    model: "ModelMixin", path: str | os.PathLike, overrides: Mapping[str, Any] | ReferenceConfig | None = None
) -> ReferenceConfig:
    """Load a reference LoRA file into ``model`` (injecting the adapter if needed); returns the resolved config
    (the file's settings with ``overrides``, see :func:`resolve_file_config`; the caller applies it).

    Raises a ValueError naming the file when its keys or shapes do not match the model's adapter.
    """
    state, settings = read_reference_lora(path)
    config = _resolve(lora_file_path(path), settings, overrides)
    if not has_reference_lora(model):
        add_reference_lora(model, config)
    expected = get_peft_model_state_dict(model, adapter_name=REFERENCE_ADAPTER_NAME)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    mismatched = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{lora_file_path(path)} does not fit the model's reference LoRA: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {sorted(mismatched)[:3]} "
            f"(file rank {config.lora_rank}, targets {config.lora_targets})"
        )
    set_peft_model_state_dict(model, state, adapter_name=REFERENCE_ADAPTER_NAME)
    return config
