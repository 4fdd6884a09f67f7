"""``videobench generate --method customvideox``: CustomVideoX as a VideoBench generator.

Options (:class:`~videobench.methods.MethodConfig`):

* ``preset``: ``"tiny"`` builds :func:`customvideox.presets.build_tiny_pipeline` (random weights, CPU-sized);
  ``None`` loads CogVideoX-5B (``model``: folder or hub id, see :mod:`customvideox.weights`) and the reference
  LoRA (``lora``: safetensors).
* ``ablation``: a Table 2 row (``naive``, ``3d-ra``, ``3d-ra+tab``, ``3d-ra+tab+erae`` = the full method).
* ``device``, ``dtype`` (``auto``: bf16 on CUDA, fp32 on CPU), ``num_frames``/``height``/``width`` (the suite's
  geometry unless overridden), ``extra``: ``mode`` (``joint``/``cached``), ``steps``, ``guidance``,
  ``negative_prompt``, ``dynamic_cfg``, ``compile`` (True: ``torch.compile`` the transformer with inductor; a
  string: that torch.compile backend).

The run name (the method folder under RESULTS) is ``customvideox`` for the full method on CogVideoX-5B,
plus ``-tiny`` for the preset, ``-<ablation>`` for the other Table 2 rows, ``-<mode>`` when a non-default
mode is asked for and ``-random`` when a real base model runs with an untrained LoRA
(``customvideox-tiny-3d-ra+tab``, ``customvideox-naive``, ...), so Table 2's rows sit side by side.

Each case's reference is the *first* image of ``case.references`` (the paper conditions on one image),
read with :func:`mediaio.images.load_reference_image` (EXIF upright, alpha over white, RGB).
Weights load once, in the factory; missing weights fail there, before any case runs. The noise comes
from a CPU ``torch.Generator`` seeded with the case seed: same seed, same video.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from customvideox.config import ABLATIONS, MODES, ReferenceConfig
from customvideox.lora import LORA_WEIGHT_NAME
from customvideox.weights import MissingWeightsError, check_lora_file, locate_base_model
from videobench.cases import Case
from videobench.methods import MethodConfig, register_method

logger = logging.getLogger(__name__)

FULL_METHOD = "3d-ra+tab+erae"
#: The paper's sampling setting (section 6.1): DDIM, 50 steps; CogVideoX's guidance 6.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 6.0
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> bf16 on CUDA (CogVideoX-5B's dtype), fp32 elsewhere; else the named dtype."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose auto, fp32, fp16 or bf16")
    return _DTYPES[dtype]


def run_name_for(preset: str | None, ablation: str, mode: str | None, random_lora: bool) -> str:
    """The method folder name: see the module docstring."""
    parts = ["customvideox"]
    if preset:
        parts.append(preset)
    if ablation != FULL_METHOD:
        parts.append(ablation)
    if mode is not None and mode != ReferenceConfig().mode:
        parts.append(mode)
    if random_lora and not preset:
        parts.append("random")
    return "-".join(parts)


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` floats in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class CustomVideoXGenerator:
    """A loaded :class:`~customvideox.pipeline.CustomVideoXPipeline` with the run's sampling settings."""

    pipeline: Any
    run_name: str
    settings: dict[str, Any]
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    fps: int = 8

    @property
    def random_weights(self) -> bool:
        return bool(self.pipeline.random_weights)

    def config(self) -> dict[str, Any]:
        return {**self.settings, "random_weights": self.random_weights,
                "reference_config": self.pipeline.reference_config.to_dict()}

    def generate(self, case: Case, seed: int) -> np.ndarray:
        from mediaio.images import load_reference_image

        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        reference = load_reference_image(case.references[0])
        output = self.pipeline(
            reference, case.prompt, entity=case.entity or None, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np", **self.call_kwargs,
        )
        return frames_to_uint8(output.frames[0])


def _locate_weights(config: MethodConfig, ablation: str) -> tuple[Path, Path | None]:
    """The base model folder and the LoRA file; one :class:`MissingWeightsError` listing everything missing."""
    problems: list[str] = []
    model_dir = lora = None
    try:
        model_dir = locate_base_model(config.model)
    except MissingWeightsError as error:
        problems.append(str(error))
    requested_lora = config.lora
    saved_lora = model_dir / "transformer" / LORA_WEIGHT_NAME if model_dir is not None else None
    if requested_lora is None and saved_lora is not None and saved_lora.is_file():
        requested_lora = saved_lora  # a folder written by CustomVideoXPipeline.save_pretrained carries its LoRA
    try:
        lora = check_lora_file(requested_lora, ablation, config.random_weights)
    except MissingWeightsError as error:
        problems.append(str(error))
    if problems:
        raise MissingWeightsError("\n".join(problems))
    return model_dir, lora


def _reference_config(config: MethodConfig, ablation: str, mode: str | None, preset: str | None) -> ReferenceConfig:
    from customvideox.presets import TINY_LORA_RANK

    changes: dict[str, Any] = {"ablation": ablation}
    if mode is not None:
        changes["mode"] = mode
    if preset == "tiny":
        changes.update(lora_rank=TINY_LORA_RANK, lora_alpha=float(TINY_LORA_RANK))
    return ReferenceConfig(**changes)


def _compile_backend(value: bool | str | None) -> str | None:
    """The ``compile`` option: False/None -> eager, True -> inductor, a string -> that torch.compile backend.

    The transformer is compiled in place (``nn.Module.compile``): its denoising calls run compiled, the cached
    mode's once-per-video reference extraction (a method call) stays eager. The first case pays the compilation.
    """
    if value in (None, False):
        return None
    if value is True:
        return "inductor"
    if not isinstance(value, str) or value not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"compile={value!r}: True or a torch.compile backend ({', '.join(torch._dynamo.list_backends())})")
    return value


@register_method(
    "customvideox",
    "CustomVideoX (3D reference attention, TAB, ERAE) on CogVideoX-5B; --ablation for Table 2 rows, "
    "--preset tiny for a random-initialised CPU smoke model",
    needs_weights=True,
)
def build_customvideox(config: MethodConfig) -> CustomVideoXGenerator:
    """Build the CustomVideoX generator (weights are located and checked before anything loads)."""
    ablation = config.ablation or FULL_METHOD
    if ablation not in ABLATIONS:
        raise ValueError(f"--ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    extra = dict(config.extra)
    mode = extra.pop("mode", None)
    if mode is not None and mode not in MODES:
        raise ValueError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    preset = config.preset
    if preset not in (None, "tiny"):
        raise ValueError(f"--preset {preset!r}: the customvideox presets are: tiny")
    reference_config = _reference_config(config, ablation, mode, preset)
    dtype = resolve_dtype(config.dtype, config.device)

    if preset == "tiny":
        from customvideox.presets import TINY_CALL_DEFAULTS, build_tiny_pipeline

        defaults = dict(TINY_CALL_DEFAULTS)
        if config.model is not None:
            logger.warning("customvideox: --preset tiny builds its own random model; --model %s is ignored", config.model)
        pipeline = build_tiny_pipeline(seed=0, reference_config=reference_config)
        if dtype != torch.float32:
            pipeline = pipeline.to(dtype=dtype)
        if config.lora is not None:
            pipeline.load_reference_lora(check_lora_file(config.lora, ablation, True))
        model_name, lora_path = "tiny", config.lora
    else:
        model_dir, lora = _locate_weights(config, ablation)  # fails here, before any work, when missing
        from customvideox.pipeline import CustomVideoXPipeline

        defaults = dict(num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE)
        pipeline = CustomVideoXPipeline.from_pretrained(
            model_dir, lora=lora, reference_config=reference_config, dtype=dtype
        )
        model_name, lora_path = str(config.model or "THUDM/CogVideoX-5b"), (str(lora) if lora else None)
    pipeline = pipeline.to(config.device)
    pipeline.set_progress_bar_config(disable=True)
    compile_backend = _compile_backend(extra.pop("compile", False))
    if compile_backend is not None:
        pipeline.transformer.compile(backend=compile_backend, dynamic=False)

    call_kwargs = {
        "num_frames": config.num_frames or defaults.get("num_frames"),
        "height": config.height or defaults.get("height"),
        "width": config.width or defaults.get("width"),
        "num_inference_steps": int(extra.pop("steps", None) or defaults["num_inference_steps"]),
        "guidance_scale": float(extra.pop("guidance", None) or defaults["guidance_scale"]),
        "negative_prompt": extra.pop("negative_prompt", None),
        "use_dynamic_cfg": bool(extra.pop("dynamic_cfg", False)),
    }
    if extra:
        logger.warning("customvideox: ignoring unknown options %s", sorted(extra))
    settings = {
        "method": "customvideox", "preset": preset, "model": model_name, "lora": lora_path,
        "ablation": ablation, "mode": reference_config.mode, "dtype": str(dtype).removeprefix("torch."),
        "compile": compile_backend,
        **{k: v for k, v in call_kwargs.items()},
    }
    random_lora = pipeline.random_weights and preset is None
    return CustomVideoXGenerator(
        pipeline=pipeline, run_name=run_name_for(preset, ablation, mode, random_lora), settings=settings,
        call_kwargs=call_kwargs, fps=config.fps,
    )
