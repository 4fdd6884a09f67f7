"""``videobench generate --method customvideox``: CustomVideoX as a VideoBench method (with ``cli.py`` and
``curation/``, one of the three parts of ``customvideox`` that import ``videobench``; see the package docstring).

Options (``-o key=value`` or ``--config FILE``; ``videobench methods customvideox`` lists them): the base
model (``model``: CogVideoX-5B folder or hub id), the reference LoRA (``lora``), the Table 2 row
(``ablation``), the reference mode, the RoPE shift of Eq. 5, sampling (``steps``, ``guidance``,
``negative_prompt``, ``dynamic_cfg``) and ``compile``. ``--preset tiny`` builds
:func:`customvideox.presets.build_tiny_pipeline` (random weights, CPU-sized).

The run name (the method folder under RESULTS) is ``customvideox`` for the full method on CogVideoX-5B,
plus ``-tiny`` for the preset, ``-<ablation>`` for the other Table 2 rows, ``-<mode>`` when a non-default
mode is asked for and ``-random`` when a real base model runs with an untrained LoRA, so Table 2's rows sit
side by side. The report does not read these names: run.json records the method, its Table 2 setting and its
resolved options.

Each case's reference is the *first* image of ``case.references`` (the paper conditions on one image).
Weights load once, in the factory. The noise comes from a CPU ``torch.Generator`` seeded with the case seed:
same seed, same video.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from costmodel.method_cost import MethodCost
from customvideox.base_model import COGVIDEOX_5B, MODEL_LAYOUT
from customvideox.config import LORA_WEIGHT_NAME, ReferenceConfig
from mediaio.images import load_reference_image
from videobench.cases import Case
from videobench.methods import GenerationOutput, MethodContext, gpu_dtype, register_method, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec

torch = lazy_module("torch")  # imported on first use: listing this method does not load torch

logger = logging.getLogger(__name__)

FULL_METHOD = "3d-ra+tab+erae"
#: The paper's sampling setting (section 6.1): DDIM, 50 steps; CogVideoX's guidance 6.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 6.0
#: Table 2's row label of each ablation (``reports/paper/table2.csv``).
TABLE2_SETTINGS = {"naive": "naive", "3d-ra": "3D-RA", "3d-ra+tab": "+TAB", FULL_METHOD: "+ERAE"}
Ablation = Literal["naive", "3d-ra", "3d-ra+tab", "3d-ra+tab+erae"]
#: The options that are ReferenceConfig settings (explicit values override the LoRA file's).
REFERENCE_OPTION_KEYS = ("ablation", "mode", "rope_shift", "tab_gamma", "tab_eps", "erae_lambda", "erae_normalization")


@dataclass(frozen=True)
class CustomVideoXOptions:
    """The options of the ``customvideox`` method (``None``: the LoRA file's value, else the paper's)."""

    model: str | None = option(None, f"CogVideoX-5B: a diffusers folder or hub id (default {COGVIDEOX_5B} "
                                     "from the Hugging Face cache)")
    lora: Path | None = option(None, "the reference LoRA (.safetensors from `customvideox train`)")
    ablation: Ablation | None = option(None, "Table 2 row (default: the LoRA file's, else the full method)")
    mode: Literal["joint", "cached"] | None = option(None, "reference mode (default: the LoRA file's, else joint)")
    rope_shift: tuple[float, ...] | None = option(
        None, "delta of Eq. 5 as t,h,w in RoPE grid units (default: the LoRA file's, else -1,0,0)")
    tab_gamma: float | None = option(None, "gamma of TAB's M(t) (Eq. 7; default: the LoRA file's, else 10)")
    tab_eps: float | None = option(None, "epsilon of TAB's M(t) (Eq. 7; default: the LoRA file's, else 0.1)")
    erae_lambda: float | None = option(None, "ERAE's region threshold lambda (Eq. 8; default: the file's, else 0.1)")
    erae_normalization: Literal["per-frame", "per-clip", "probability"] | None = option(
        None, "how ERAE normalises the entity map before the lambda threshold (default: the file's, else per-frame)")
    steps: int | None = option(None, f"denoising steps (default {DEFAULT_STEPS}; tiny preset: 8)", minimum=1)
    guidance: float | None = option(None, f"classifier-free guidance (default {DEFAULT_GUIDANCE})", minimum=0.0)
    negative_prompt: str | None = option(None, "negative prompt")
    dynamic_cfg: bool = option(False, "CogVideoX's dynamic CFG schedule")
    compile: bool = option(False, "torch.compile the denoiser (pays off on GPUs; the first case compiles)")
    compile_backend: str = option("inductor", "torch.compile backend when compile=true")

    def __post_init__(self) -> None:
        if self.rope_shift is not None and len(self.rope_shift) != 3:
            raise ValueError(f"option rope_shift={','.join(map(str, self.rope_shift))}: give 3 numbers t,h,w")

    def reference_overrides(self) -> dict[str, Any]:
        """The reference-branch settings the user set explicitly (the others come from the LoRA file, else the
        paper's; :func:`customvideox.config.resolve_reference_config`)."""
        return {key: getattr(self, key) for key in REFERENCE_OPTION_KEYS if getattr(self, key) is not None}


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` floats in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def run_name_for(preset: str | None, ablation: str, mode: str, random_lora: bool) -> str:
    """The method folder name: see the module docstring."""
    parts = ["customvideox"]
    if preset:
        parts.append(preset)
    if ablation != FULL_METHOD:
        parts.append(ablation)
    if mode != ReferenceConfig().mode:
        parts.append(mode)
    if random_lora and not preset:
        parts.append("random")
    return "-".join(parts)


@dataclass
class CustomVideoXGenerator:
    """A loaded :class:`~customvideox.pipeline.CustomVideoXPipeline` with the run's sampling settings."""

    pipeline: Any
    run_name: str
    settings: dict[str, Any]
    resolved_options: CustomVideoXOptions
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    fps: int = 8

    @property
    def random_weights(self) -> bool:
        return bool(self.pipeline.random_weights)

    def config(self) -> dict[str, Any]:
        return {**self.settings, "random_weights": self.random_weights,
                "reference_config": self.pipeline.reference_config.to_dict()}

    def generate(self, case: Case, seed: int) -> GenerationOutput:
        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        output = self.pipeline(
            load_reference_image(case.references[0]), case.prompt, entity=case.entity or None,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **self.call_kwargs,
        )
        diagnostics = {key: value for key, value in (output.diagnostics[0] or {}).items() if value is not None}
        return GenerationOutput(frames_to_uint8(output.frames[0]), diagnostics=diagnostics)


def _saved_lora(model: str | None) -> Path | None:
    """The LoRA a folder written by ``CustomVideoXPipeline.save_pretrained`` carries beside its transformer."""
    if model is None:
        return None
    candidate = Path(model).expanduser() / "transformer" / LORA_WEIGHT_NAME
    return candidate if candidate.is_file() else None


def customvideox_weights(options: CustomVideoXOptions, context: MethodContext) -> list[WeightSpec]:
    """CogVideoX-5B and, except for the naive row or random weights, the reference LoRA."""
    if context.preset is not None:
        return [WeightSpec(key="lora", model="CustomVideoX reference LoRA", explicit=options.lora,
                           option="-o lora=FILE.safetensors")] if options.lora else []
    specs = [WeightSpec(
        key="base", model="CogVideoX-5B (diffusers)", folder=True, file_names=("CogVideoX-5b",), layout=MODEL_LAYOUT,
        hf_repo=COGVIDEOX_5B, explicit=options.model, option="-o model=FOLDER|HUB_ID",
    )]
    lora = options.lora or _saved_lora(options.model)
    if lora is not None or (options.ablation != "naive" and not context.random_weights):
        specs.append(WeightSpec(
            key="lora", model="CustomVideoX reference LoRA (no weights are published: train one with "
                              "`customvideox train`, or pass --random-weights for an untrained branch)",
            explicit=lora, option="-o lora=FILE.safetensors", formats="safetensors from `customvideox train`",
        ))
    return specs


def _compile_backend(options: CustomVideoXOptions) -> str | None:
    if not options.compile:
        return None
    backends = torch._dynamo.list_backends(exclude_tags=())
    if options.compile_backend not in backends:
        raise ValueError(f"compile_backend={options.compile_backend!r}: choose one of {', '.join(backends)}")
    return options.compile_backend


def _table1_row(options: CustomVideoXOptions) -> str | None:
    return "CustomVideoX" if (options.ablation or FULL_METHOD) == FULL_METHOD else None


def _table2_setting(options: CustomVideoXOptions) -> str | None:
    return TABLE2_SETTINGS[options.ablation or FULL_METHOD]


#: The entity word's T5 tokens in the cost model (ERAE's cost grows with it; a two-token word like "teddy bear").
COST_ENTITY_TOKENS = 2


def customvideox_cost(options: CustomVideoXOptions, context: MethodContext) -> MethodCost:
    """The cost per video on FakeTensors (:mod:`costmodel.counting`), as :class:`~customvideox.pipeline.
    CustomVideoXPipeline` runs: T5-XXL on the prompt and the negative prompt, one VAE encode of the reference, the
    cached mode's reference extraction (once), ``steps`` transformer calls on the CFG batch with the reference
    branch of the options' ablation and mode (a two-token entity word), one VAE decode (untiled, as the method
    runs it). The paper's reference settings (LoRA rank 128, joint mode, the full method) with the options'
    explicit overrides; the tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler
    from transformers import T5Config, T5EncoderModel

    from costmodel.counting import FakeStage, denoiser_calls, dtype_name, text_call, vae_decode_call, vae_encode_call
    from costmodel.method_cost import StageCost
    from customvideox import presets
    from customvideox.fake_tensors import cfg_step_inputs
    from customvideox.transformer import CustomVideoXTransformer3DModel

    tiny = context.preset == "tiny"
    stage = FakeStage(gpu_dtype(context))
    overrides = options.reference_overrides()
    if tiny:
        pipeline = presets.build_tiny_pipeline(seed=0, reference_overrides=overrides)
        config = pipeline.reference_config
        transformer, text, vae = (stage.adopt(m) for m in (pipeline.transformer, pipeline.text_encoder, pipeline.vae))
        call = presets.TINY_CALL_DEFAULTS
        frames, height, width = (context.num_frames or call["num_frames"], context.height or call["height"],
                                 context.width or call["width"])
    else:
        config = ReferenceConfig(**overrides)

        def transformer_with_lora() -> CustomVideoXTransformer3DModel:
            model = CustomVideoXTransformer3DModel(**presets.COGVIDEOX_5B_TRANSFORMER)
            model.add_reference_lora(config)
            return model

        transformer = stage.build(transformer_with_lora)
        text = stage.build(lambda: T5EncoderModel(T5Config(**presets.T5_XXL)))
        vae = stage.build(lambda: AutoencoderKLCogVideoX(**presets.COGVIDEOX_5B_VAE))
        frames, height, width = context.num_frames or 49, context.height or 480, context.width or 720
    steps = int(options.steps or (min(DEFAULT_STEPS, presets.TINY_CALL_DEFAULTS["num_inference_steps"]) if tiny
                                  else DEFAULT_STEPS))
    guidance = float(options.guidance if options.guidance is not None else DEFAULT_GUIDANCE)
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = ((frames - 1) // vae.config.temporal_compression_ratio + 1, height // spatial, width // spatial,
             transformer.config.max_text_seq_length)
    uses_reference, cached = config.uses_reference_branch, config.mode == "cached"
    built: dict[str, Any] = {}  # the cached mode's reference cache, built once by its own piece

    def inputs() -> dict[str, Any]:
        x = cfg_step_inputs(transformer, shape, torch.device("cpu"), stage.dtype)
        x["entity_tokens"] = tuple(part[:, :COST_ENTITY_TOKENS] for part in x["entity_tokens"])
        x["reference"] = torch.cat([x["reference"]] * x["latents"].shape[0])  # the pipeline's CFG layout
        return x

    def step() -> torch.Tensor:  # the pipeline passes the reference whatever the ablation (naive: an extra frame)
        x = inputs()
        return transformer(x["latents"], x["prompt_embeds"], x["timestep"], image_rotary_emb=x["rotary"],
                           reference_latents=x["reference"], entity_tokens=x["entity_tokens"],
                           reference_cache=built.get("cache"), reference_config=config, return_dict=False)[0]

    def cache_build() -> None:  # from the one unique reference (the pipeline's reference_latents[:1])
        built["cache"] = transformer.build_reference_cache(inputs()["reference"][:1], reference_config=config)

    def cache_tensors() -> list[torch.Tensor]:
        return [*built["cache"].keys, *built["cache"].values] if "cache" in built else []

    length = shape[3]
    stage.add("T5 prompt encode", text_call(text, length), 2 if guidance > 1 else 1, f"{length} tokens")
    stage.add("VAE encode (reference)", vae_encode_call(vae, (1, 3, 1, height, width)), 1, f"1 frame, {height}x{width}")
    if uses_reference and cached:
        stage.add("reference cache build (once)", cache_build, 1, "cached mode's reference keys/values")
    calls = denoiser_calls(CogVideoXDDIMScheduler(**presets.COGVIDEOX_5B_SCHEDULER), steps)
    stage.add(f"transformer step ({config.ablation}, {config.mode})", step, calls,
              f"batch 2, {shape[0]}x{shape[1]}x{shape[2]} latents + 1 reference frame, {length} text tokens",
              tracked=cache_tensors)
    stage.add("VAE decode", vae_decode_call(vae, (1, vae.config.latent_channels, shape[0], shape[1], shape[2])), 1,
              f"{frames}x{height}x{width}, {dtype_name(stage.dtype)}, untiled")
    name = "CustomVideoX" + (" (tiny)" if tiny else " (CogVideoX-5B)")
    notes = (f"{steps} DDIM steps, guidance {guidance}, {frames}x{height}x{width}, {dtype_name(stage.dtype)}; "
             f"{config.ablation}, {config.mode} mode, LoRA rank {config.lora_rank}")
    result = StageCost.from_pieces(name, stage.measure(), notes=notes)
    return MethodCost("customvideox", [result], setting={"preset": context.preset, "ablation": config.ablation,
                                                         "mode": config.mode, "steps": steps, "guidance": guidance,
                                                         "dtype": dtype_name(stage.dtype)})


@register_method(
    "customvideox",
    description="CustomVideoX (3D reference attention, TAB, ERAE) on CogVideoX-5B; -o ablation=... for Table 2 rows",
    kind="ours", options=CustomVideoXOptions, paper_row=_table1_row, table2_setting=_table2_setting,
    weights=customvideox_weights, presets=("tiny",), default_run=True, cost=customvideox_cost,
    table2_rows={setting: {"ablation": ablation} for ablation, setting in TABLE2_SETTINGS.items()},
)
def build_customvideox(options: CustomVideoXOptions, context: MethodContext) -> CustomVideoXGenerator:
    """Build the CustomVideoX generator (the harness resolved and checked the weights before this call)."""
    dtype = resolve_torch_dtype(context.dtype, context.device)
    compile_backend = _compile_backend(options)
    overrides = options.reference_overrides()
    lora = context.weight_path("lora")
    if context.preset == "tiny":
        from customvideox.presets import TINY_CALL_DEFAULTS, build_tiny_pipeline

        defaults = dict(TINY_CALL_DEFAULTS)
        pipeline = build_tiny_pipeline(seed=0, reference_overrides=overrides)
        if dtype != torch.float32:
            pipeline = pipeline.to(dtype=dtype)
        if lora is not None:
            pipeline.load_reference_lora(lora, overrides=overrides)
        model_name = "tiny"
    else:
        from customvideox.pipeline import CustomVideoXPipeline

        defaults = dict(num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE)
        pipeline = CustomVideoXPipeline.from_pretrained(context.weight_path("base"), lora=lora,
                                                        reference_overrides=overrides, dtype=dtype)
        model_name = str(options.model or COGVIDEOX_5B)
    pipeline = pipeline.to(context.device)
    pipeline.set_progress_bar_config(disable=True)
    if compile_backend is not None:
        pipeline.transformer.compile(backend=compile_backend, dynamic=False)

    call_kwargs = {
        "num_frames": context.num_frames or defaults.get("num_frames"),
        "height": context.height or defaults.get("height"),
        "width": context.width or defaults.get("width"),
        "num_inference_steps": int(options.steps or defaults["num_inference_steps"]),
        "guidance_scale": float(options.guidance if options.guidance is not None else defaults["guidance_scale"]),
        "negative_prompt": options.negative_prompt,
        "use_dynamic_cfg": options.dynamic_cfg,
    }
    resolved = pipeline.reference_config  # the LoRA file's settings, with the explicit options on top
    resolved_options = dataclasses.replace(options, **{key: getattr(resolved, key) for key in REFERENCE_OPTION_KEYS})
    settings = {
        "method": "customvideox", "preset": context.preset, "model": model_name,
        "lora": str(lora) if lora else None, "dtype": str(dtype).removeprefix("torch."), "compile": compile_backend,
        **call_kwargs,
    }
    random_lora = pipeline.random_weights and context.preset is None
    return CustomVideoXGenerator(
        pipeline=pipeline, run_name=run_name_for(context.preset, resolved.ablation, resolved.mode, random_lora),
        settings=settings, resolved_options=resolved_options, call_kwargs=call_kwargs, fps=context.fps,
    )
