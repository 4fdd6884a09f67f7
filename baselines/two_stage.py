"""Two-stage baselines of the paper's Table 1: an image personalisation model, then CogVideoX-5B-I2V.

Stage 1 (:class:`ImagePersonalizer`) makes one image of the case's subject for the prompt from the reference
image(s); stage 2 (:class:`CogVideoXI2V`, diffusers' ``CogVideoXImageToVideoPipeline`` on CogVideoX-5B-I2V: 49
frames, 480x720, 50 steps, guidance 6) animates that image with the same prompt.

A stage-1 method registers with :func:`register_two_stage`, giving its options dataclass (a subclass of
:class:`TwoStageOptions`), a builder of its personaliser, and its weight specs. The generator is an
:class:`~videobench.methods.ImageFirstGenerator`: the runner makes every stage-1 image first (kept as
``RESULTS/<method>/images/<case_id>.png``), releases the stage-1 model, then loads CogVideoX-5B-I2V once for all
videos, so two large models are never resident at once. ``-o stage=1`` / ``-o stage=2`` run the stages as separate
commands (a small GPU, or stage 1 on another machine); ``stage`` is not part of the run's identity, so both
commands write into the same method folder.

The stage-1 image is fitted to the video's 480x720 before stage 2 (``-o fit``): ``squash`` (default) resizes it to
480x720 without keeping the aspect, exactly what diffusers' ``CogVideoXImageToVideoPipeline`` does with any image it
is given (``VideoProcessor.preprocess`` -> ``VaeImageProcessor.resize``, ``resize_mode="default"``, Lanczos);
``cover`` scales it to cover 480x720 and centre-crops (a square loses 120 rows at the top and the bottom; this
module's earlier default); ``pad`` fits it inside with white padding. The paper does not say how its stage-1 images
met the I2V model.

Stage 2 runs as THUDM's ``inference/cli_demo.py`` runs CogVideoX-5B-I2V (github.com/THUDM/CogVideo): the checkpoint's
scheduler config loaded into ``CogVideoXDPMScheduler`` with ``timestep_spacing="trailing"`` ("using
CogVideoXDPMScheduler for CogVideoX-5B / CogVideoX-5B-I2V"), ``use_dynamic_cfg=True`` ("used for DPM scheduler"),
50 steps, guidance 6, bf16. ``-o i2v_scheduler=ddim`` keeps the checkpoint's ``CogVideoXDDIMScheduler`` (the call of
diffusers' pipeline example; with ``-o i2v_dynamic_cfg=false`` the pipeline's own defaults).

Precision per stage: ``-o stage1_dtype`` and ``-o i2v_dtype`` (``auto``, ``fp32``, ``fp16``, ``bf16``). ``auto`` is
the stage's upstream precision on CUDA (stage 1: registered by each method; stage 2: bf16, the precision CogVideoX-5B
was trained in and its authors recommend) and fp32 elsewhere; a ``--dtype`` other than ``auto`` replaces both
``auto`` defaults; an explicit per-stage option wins over ``--dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from costmodel.method_cost import MethodCost, StageCost
from mediaio.images import fit_to_canvas, load_reference_image
from videobench.cases import Case
from videobench.methods import MethodContext, register_method, resolve_torch_dtype
from videobench.options import OptionError, option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec

torch = lazy_module("torch")  # imported on first use: listing this method does not load torch

logger = logging.getLogger(__name__)

COGVIDEOX_5B_I2V = "THUDM/CogVideoX-5b-I2V"
#: The diffusers folder layout of CogVideoX-5B-I2V.
I2V_LAYOUT = ("model_index.json", "transformer/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
I2V_WEIGHT_KEY = "i2v"
#: Stage 2's precision on CUDA under ``auto``: CogVideoX-5B was trained in bf16 and THUDM recommend it
#: (CogVideo ``README.md``, "Inference Precision"; ``inference/cli_demo.py`` ``--dtype bfloat16``).
I2V_UPSTREAM_DTYPE = "bf16"
#: Stage 2's schedulers: ``dpm`` as THUDM's ``inference/cli_demo.py`` (``CogVideoXDPMScheduler.from_config(
#: pipe.scheduler.config, timestep_spacing="trailing")``), ``ddim`` the checkpoint's own ``CogVideoXDDIMScheduler``.
I2V_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm": ("CogVideoXDPMScheduler", {"timestep_spacing": "trailing"}),
    "ddim": ("CogVideoXDDIMScheduler", {}),
}
DtypeChoice = Literal["auto", "fp32", "fp16", "bf16"]
FitMode = Literal["squash", "cover", "pad"]


@runtime_checkable
class ImagePersonalizer(Protocol):
    """Stage 1: an image of the reference subject, as the prompt describes it.

    ``personalize`` is deterministic for a given ``seed`` (its noise comes from a CPU ``torch.Generator``).
    ``random_weights`` says that a component is random-initialised (tiny presets); ``config()`` names every
    setting that changes the image (model, variant, scale, steps, guidance, resolution).
    """

    random_weights: bool

    def config(self) -> dict[str, Any]: ...

    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        """One RGB image of the subject of ``references`` (8-bit RGB, upright) for ``prompt``."""


@dataclass(frozen=True)
class TwoStageOptions:
    """Options every two-stage method has: stage 2 (CogVideoX-5B-I2V) and the run's stages."""

    stage: Literal["1", "2", "both"] = option(
        "both", "which stages this run does: 1 (images only), 2 (videos from the kept images) or both")
    i2v_model: str | None = option(
        None, f"CogVideoX-5B-I2V: a diffusers folder or hub id (default {COGVIDEOX_5B_I2V} from the HF cache)")
    i2v_steps: int = option(50, "stage-2 denoising steps (paper: 50)", minimum=1)
    i2v_guidance: float = option(6.0, "stage-2 classifier-free guidance (CogVideoX: 6)", minimum=0.0)
    i2v_scheduler: Literal["dpm", "ddim"] = option(
        "dpm", "stage-2 scheduler: dpm (CogVideoXDPMScheduler, trailing spacing, as THUDM's cli_demo.py) or ddim "
               "(the checkpoint's CogVideoXDDIMScheduler, as diffusers' example)")
    i2v_dynamic_cfg: bool = option(
        True, "CogVideoX's dynamic CFG schedule (THUDM's cli_demo.py: on, meant for the DPM scheduler; the "
              "pipeline's default: off)")
    fit: FitMode = option(  # noqa: RUF009  (option() is a dataclasses.field)
        "squash", "the stage-1 image to the video size: squash (resize, as diffusers' I2V pipeline does), cover "
                  "(scale + centre crop) or pad (fit inside, white padding)")
    stage1_dtype: DtypeChoice = option(  # noqa: RUF009
        "auto", "stage-1 precision: auto (the stage-1 upstream's on CUDA, fp32 elsewhere; --dtype replaces it)")
    i2v_dtype: DtypeChoice = option(  # noqa: RUF009
        "auto", "stage-2 precision: auto (bf16 on CUDA as CogVideoX's authors recommend, fp32 elsewhere; --dtype "
                "replaces it)")
    offload: bool = option(False, "enable_model_cpu_offload for stage 2 (GPUs with little memory)")


# ------------------------------------------------------------------------------------------------ stage 2


def stage_dtype(choice: str, run_dtype: str, device: str, upstream: str) -> str:
    """The dtype name (``fp32``/``fp16``/``bf16``) one stage runs in.

    An explicit ``choice`` wins; else a ``--dtype`` (``run_dtype``) other than ``auto``; else ``upstream`` on CUDA
    and ``fp32`` elsewhere (half precision on the CPU is slow and not every kernel has it).
    """
    if choice != "auto":
        return choice
    if run_dtype != "auto":
        return run_dtype
    return upstream if str(device).startswith("cuda") else "fp32"


def image_on_canvas(image: Image.Image, height: int, width: int, mode: str) -> Image.Image:
    """``image`` as a ``height x width`` picture.

    ``squash``: resized to ``width x height`` with Lanczos, aspect not kept: what diffusers'
    ``CogVideoXImageToVideoPipeline`` does to its ``image`` (``VaeImageProcessor.resize``, ``resize_mode="default"``,
    ``resample="lanczos"``), so the pipeline then leaves it as it is. ``cover``: scaled to cover and
    centre-cropped. ``pad``: fitted inside with white padding.
    """
    if mode == "squash":
        rgb = image.convert("RGB")
        return rgb if rgb.size == (width, height) else rgb.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "pad":
        return fit_to_canvas(image, height, width)
    if mode != "cover":
        raise ValueError(f"fit mode {mode!r}: squash, cover or pad")
    rgb = image.convert("RGB")
    scale = max(width / rgb.width, height / rgb.height)
    size = (max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale)))
    resized = rgb.resize(size, Image.Resampling.BICUBIC) if size != rgb.size else rgb
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))


def i2v_weight_spec(options: TwoStageOptions) -> WeightSpec:
    return WeightSpec(
        key=I2V_WEIGHT_KEY, model="CogVideoX-5B-I2V (diffusers)", folder=True, file_names=("CogVideoX-5b-I2V",),
        layout=I2V_LAYOUT, hf_repo=COGVIDEOX_5B_I2V, explicit=options.i2v_model,
        option="-o i2v_model=FOLDER|HUB_ID",
    )


def build_tiny_i2v_pipeline(seed: int = 0):
    """A random-initialised ``CogVideoXImageToVideoPipeline`` at toy size (9 frames of 128x192, CPU-friendly).

    The structure of CogVideoX-5B-I2V (image latents concatenated to the noise: twice the latent channels in,
    learned positional embeddings, v-prediction DDIM) with the tiny preset's VAE, T5 and offline tokenizer.
    """
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from customvideox.presets import COGVIDEOX_5B_SCHEDULER, TINY_T5, TINY_TEXT_LENGTH, TINY_TRANSFORMER, TINY_VAE
    from toytokenizers.t5 import build_tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(model_max_length=TINY_TEXT_LENGTH)
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_T5)).eval()
        vae = AutoencoderKLCogVideoX(**TINY_VAE).eval()
        latent = TINY_VAE["latent_channels"]
        transformer = CogVideoXTransformer3DModel(**{
            **TINY_TRANSFORMER, "in_channels": 2 * latent, "out_channels": latent,
            "use_learned_positional_embeddings": True,
        }).eval()
    scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)


TINY_TEXT_LENGTH = 32  # customvideox.presets.TINY_TEXT_LENGTH (kept in step by a test)
#: Sampling defaults of the tiny stage 2 (the preset's transformer has learned positions for 9x128x192).
TINY_I2V_CALL: dict[str, Any] = dict(num_frames=9, height=128, width=192, num_inference_steps=4,
                                     max_sequence_length=TINY_TEXT_LENGTH)


class TinyPresetModel:
    """A baseline's model run (a stage-1 personalizer or the stage-2 I2V model) whose weights are random exactly when
    it runs the tiny preset (``self.tiny``, set by the subclass): the one place the harness's ``random_weights``
    comes from for these runs (recorded in run.json and shown on the report)."""

    tiny: bool = False

    @property
    def random_weights(self) -> bool:
        return self.tiny


class CogVideoXI2V(TinyPresetModel):
    """Stage 2: CogVideoX-5B-I2V (or the tiny preset) through diffusers, loaded on first use."""

    def __init__(self, options: TwoStageOptions, context: MethodContext) -> None:
        self.options, self.context = options, context
        self.tiny = context.preset == "tiny"
        self.dtype = resolve_torch_dtype(stage_dtype(options.i2v_dtype, context.dtype, context.device,
                                                     I2V_UPSTREAM_DTYPE), context.device)
        self.call = dict(TINY_I2V_CALL) if self.tiny else dict(num_frames=49, height=480, width=720,
                                                                num_inference_steps=options.i2v_steps)
        for key, value in (("num_frames", context.num_frames), ("height", context.height), ("width", context.width)):
            if value and not self.tiny:
                self.call[key] = value
        if self.tiny:
            self.call["num_inference_steps"] = min(options.i2v_steps, TINY_I2V_CALL["num_inference_steps"])

    def scheduler_setting(self) -> dict[str, Any]:
        """The scheduler's class and config: CogVideoX-5B-I2V's ``scheduler/scheduler_config.json``
        (:data:`customvideox.presets.COGVIDEOX_5B_SCHEDULER`) with the overrides of ``i2v_scheduler``."""
        from customvideox.presets import COGVIDEOX_5B_SCHEDULER

        name, overrides = I2V_SCHEDULERS[self.options.i2v_scheduler]
        return {"class": name, "config": {**COGVIDEOX_5B_SCHEDULER, **overrides}, "overrides": dict(overrides)}

    def config(self) -> dict[str, Any]:
        return {
            "model": "tiny" if self.tiny else str(self.options.i2v_model or COGVIDEOX_5B_I2V),
            "pipeline": "diffusers.CogVideoXImageToVideoPipeline", **self.call,
            "guidance_scale": self.options.i2v_guidance, "use_dynamic_cfg": self.options.i2v_dynamic_cfg,
            "scheduler": self.scheduler_setting(), "fit": self.options.fit,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @functools.cached_property
    def pipeline(self):
        """The pipeline, loaded on first use (once per run)."""
        return self._load()

    def _load(self):
        if self.tiny:
            pipe = build_tiny_i2v_pipeline()
            if self.dtype != torch.float32:
                pipe = pipe.to(dtype=self.dtype)
        else:
            from diffusers import CogVideoXImageToVideoPipeline

            folder = self.context.weight_path(I2V_WEIGHT_KEY)
            if folder is None:
                raise RuntimeError("CogVideoX-5B-I2V was not resolved (the harness resolves it before building)")
            pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(folder), torch_dtype=self.dtype)
            pipe.vae.enable_tiling()
        pipe.scheduler = self._scheduler(pipe.scheduler.config)
        if self.options.offload and torch.device(self.context.device).type == "cuda":
            pipe.enable_model_cpu_offload(device=self.context.device)
        else:
            pipe = pipe.to(self.context.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _scheduler(self, checkpoint_config: Any):
        """``i2v_scheduler``'s class from the checkpoint's scheduler config (as ``cli_demo.py``); a checkpoint whose
        config differs from the one run.json records is named in a warning."""
        import diffusers

        setting = self.scheduler_setting()
        scheduler = getattr(diffusers, setting["class"]).from_config(checkpoint_config, **setting["overrides"])
        differing = {key: (scheduler.config.get(key), value) for key, value in setting["config"].items()
                     if scheduler.config.get(key) != value}
        if differing:
            logger.warning("CogVideoX-5B-I2V's scheduler config differs from the recorded one: %s "
                           "(loaded, recorded)", differing)
        return scheduler

    def animate(self, image: Image.Image, prompt: str, seed: int) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 frames of ``image`` (fitted to the video size) animated as ``prompt`` says."""
        canvas = image_on_canvas(image, self.call["height"], self.call["width"], self.options.fit)
        output = self.pipeline(
            image=canvas, prompt=prompt, guidance_scale=self.options.i2v_guidance,
            use_dynamic_cfg=self.options.i2v_dynamic_cfg, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np", **self.call,
        )
        frames = np.asarray(output.frames[0], dtype=np.float32)
        return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- stage 2's cost


def i2v_cost(options: TwoStageOptions, context: MethodContext) -> StageCost:
    """Stage 2's cost per video (on FakeTensors, or timed inside :func:`costmodel.counting.run_for_real`):
    CogVideoX-5B-I2V at the run's size (default 49x480x720), T5-XXL on the
    prompt (and the negative prompt under CFG), one VAE encode of the image, ``i2v_steps`` transformer calls on the
    CFG batch, one tiled VAE decode; the tiny preset's components with ``context.preset == "tiny"``.

    The same for every two-stage method: computed once per process and setting.
    """
    from costmodel.counting import current_execution

    tiny = context.preset == "tiny"
    call = CogVideoXI2V(options, context).call
    return _i2v_cost(tiny, call["num_frames"], call["height"], call["width"], call["num_inference_steps"],
                     options.i2v_guidance > 1.0,
                     resolve_torch_dtype(stage_dtype(options.i2v_dtype, context.dtype, "cuda", I2V_UPSTREAM_DTYPE),
                                         "cuda"), current_execution())


@functools.lru_cache(maxsize=8)
def _i2v_cost(tiny: bool, frames: int, height: int, width: int, steps: int, cfg: bool, dtype: torch.dtype,
              execution: Any = None) -> StageCost:
    """:func:`i2v_cost` (``execution``: the :func:`costmodel.counting.run_for_real` in effect, part of the key)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from costmodel.configs import StageBuilder, denoiser_calls, dtype_name, text_call, vae_decode_call
    from customvideox import presets
    from customvideox.positions import video_rotary_pos_embed

    if tiny:
        latent = presets.TINY_VAE["latent_channels"]
        transformer_config = {**presets.TINY_TRANSFORMER, "in_channels": 2 * latent, "out_channels": latent,
                              "use_learned_positional_embeddings": True}
        vae_config, t5_config, text_length = presets.TINY_VAE, presets.TINY_T5, TINY_TEXT_LENGTH
    else:
        transformer_config, vae_config = presets.COGVIDEOX_5B_I2V_TRANSFORMER, presets.COGVIDEOX_5B_VAE
        t5_config, text_length = presets.T5_XXL, transformer_config["max_text_seq_length"]
    builder = StageBuilder(dtype)
    transformer = builder.build(lambda: CogVideoXTransformer3DModel(**transformer_config))
    text_encoder = builder.build(lambda: T5EncoderModel(T5Config(**t5_config)))
    vae = builder.build(lambda: AutoencoderKLCogVideoX(**vae_config))
    if not tiny:
        vae.enable_tiling()  # CogVideoXI2V._load: the real pipeline decodes tiled
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_frames = (frames - 1) // vae.config.temporal_compression_ratio + 1
    grid = (height // spatial, width // spatial)
    latent_channels = vae.config.latent_channels
    batch = 2 if cfg else 1

    def step() -> torch.Tensor:
        rotary = video_rotary_pos_embed(transformer.config, latent_frames, *grid)
        hidden = torch.randn(batch, latent_frames, transformer.config.in_channels, *grid, dtype=dtype)
        text = torch.randn(batch, text_length, transformer.config.text_embed_dim, dtype=dtype)
        return transformer(hidden, text, torch.full((batch,), 500), image_rotary_emb=rotary, return_dict=False)[0]

    def encode_image() -> torch.Tensor:
        return vae.encode(torch.randn(1, 3, 1, height, width, dtype=dtype)).latent_dist.mode()

    calls = denoiser_calls(CogVideoXDDIMScheduler(**presets.COGVIDEOX_5B_SCHEDULER), steps)
    builder.add("T5 prompt encode", text_call(text_encoder, text_length), batch, f"{text_length} tokens")
    builder.add("VAE encode (image)", encode_image, 1, f"1 frame, {height}x{width}")
    builder.add("transformer step", step, calls, f"batch {batch}, {latent_frames}x{grid[0]}x{grid[1]} latents, "
                                                 f"{text_length} text tokens")
    builder.add("VAE decode" + ("" if tiny else " (tiled)"),
                vae_decode_call(vae, (1, latent_channels, latent_frames, *grid)), 1,
                f"{frames}x{height}x{width}, {dtype_name(dtype)}")
    name = "stage 2: CogVideoX-5B-I2V" + (" (tiny)" if tiny else "")
    return builder.cost(name, notes=f"{calls} steps, CFG {'on' if cfg else 'off'}, {frames}x{height}x{width}, "
                                    f"{dtype_name(dtype)}; all components resident (no offload)")


# ------------------------------------------------------------------------------------------- the generator

Stage1Builder = Callable[[Any, MethodContext], ImagePersonalizer]
Stage1Cost = Callable[[Any, MethodContext], StageCost]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stage1_context(options: TwoStageOptions, context: MethodContext, upstream_dtype: str) -> MethodContext:
    """``context`` with stage 1's dtype (:func:`stage_dtype`) in place of ``--dtype``: what stage 1 is built with."""
    return dataclasses.replace(context, dtype=stage_dtype(options.stage1_dtype, context.dtype, context.device,
                                                          upstream_dtype))


class TwoStageGenerator:
    """An :class:`~videobench.methods.ImageFirstGenerator`: stage 1 for every case, then stage 2."""

    def __init__(self, name: str, options: TwoStageOptions, context: MethodContext, build_stage1: Stage1Builder,
                 stage1_upstream_dtype: str = "fp32") -> None:
        self.name, self.options, self.context = name, options, context
        self.stage1_context = stage1_context(options, context, stage1_upstream_dtype)
        self._build_stage1 = build_stage1
        self._stage1: ImagePersonalizer | None = None
        self.stage2 = CogVideoXI2V(options, context)
        self.run_name = name + (f"-{context.preset}" if context.preset else "")
        self.fps = context.fps
        self.phases = {"1": ("image",), "2": ("video",), "both": ("image", "video")}[options.stage]

    @property
    def stage1(self) -> ImagePersonalizer:
        if self._stage1 is None:
            self._stage1 = self._build_stage1(self.options, self.stage1_context)
        return self._stage1

    @property
    def random_weights(self) -> bool:
        return self.context.preset is not None or self.stage2.random_weights

    def config(self) -> dict[str, Any]:
        """The run's identity: the options without ``stage`` (which stages a command runs changes no output)."""
        options = {key: value for key, value in vars(self.options).items() if key != "stage"}
        return {"method": self.name, "preset": self.context.preset, "options": _plain(options),
                "stage1_dtype": self.stage1_context.dtype, "stage2": self.stage2.config()}

    def generate_image(self, case: Case, seed: int) -> Image.Image:
        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        references = [load_reference_image(path) for path in case.references]
        image = self.stage1.personalize(references, case.prompt, case.entity, seed)
        if not isinstance(image, Image.Image):
            raise TypeError(f"stage 1 of {self.name} returned {type(image).__name__}, not a PIL image")
        return image.convert("RGB")

    def end_image_phase(self) -> None:
        self._stage1 = None
        release_memory()

    def generate(self, case: Case, seed: int, image: Image.Image) -> np.ndarray:
        return self.stage2.animate(image, case.prompt, seed)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def register_two_stage(
    name: str,
    *,
    description: str,
    options: type[TwoStageOptions],
    build_stage1: Stage1Builder,
    stage1_weights: Callable[[Any, MethodContext], list[WeightSpec]],
    paper_row: str | None = None,
    presets: tuple[str, ...] = ("tiny",),
    stage1_cost: Stage1Cost | None = None,
    stage1_dtype: str = "fp32",
) -> None:
    """Register ``name`` (``<stage-1 method>+i2v``) as a ``two-stage`` method.

    ``build_stage1(options, context)`` builds the personaliser (called lazily, once, at the first image; with
    ``context.preset == "tiny"`` it builds random tiny components). ``stage1_weights(options, context)`` lists its
    files (none for the tiny preset). The weights a run needs follow ``stage``: stage 1's for ``1``, CogVideoX-5B-I2V
    for ``2``, both for ``both``. ``stage1_cost(options, context)`` is stage 1's cost per video
    (:class:`~costmodel.method_cost.StageCost`); the method's cost is it plus :func:`i2v_cost` (both stages, whatever
    ``stage`` a run does), each costed in the dtype it runs in on CUDA. ``stage1_dtype`` is the stage-1 upstream's
    precision, what ``-o stage1_dtype=auto`` runs on CUDA (:func:`stage_dtype`).
    """
    if not issubclass(options, TwoStageOptions):
        raise TypeError(f"{name}: options must subclass TwoStageOptions")

    def weights(opts: TwoStageOptions, context: MethodContext) -> list[WeightSpec]:
        specs = list(stage1_weights(opts, context)) if opts.stage in ("1", "both") else []
        specs += [i2v_weight_spec(opts)] if opts.stage in ("2", "both") else []
        if context.preset is None:
            return specs
        # A preset builds random components and opens no weight file: a weight path given with it would be recorded
        # in run.json without ever being read, so it is refused.
        ignored = [f"{spec.key}={spec.explicit}" for spec in specs if spec.explicit is not None]
        if ignored:
            raise OptionError(f"method {name}: --preset {context.preset} builds random components and reads no "
                              f"weight file, so it would ignore the weights given as {', '.join(ignored)}; drop the "
                              "option or run without --preset")
        return []

    def factory(opts: TwoStageOptions, context: MethodContext) -> TwoStageGenerator:
        return TwoStageGenerator(name, opts, context, build_stage1, stage1_dtype)

    def cost(opts: TwoStageOptions, context: MethodContext) -> MethodCost:
        stage2 = i2v_cost(opts, context)
        setting = {key: value for key, value in vars(opts).items() if key not in ("stage", "offload")}
        on_gpu = stage1_context(opts, dataclasses.replace(context, device="cuda"), stage1_dtype)
        return MethodCost(name, [stage1_cost(opts, on_gpu), stage2],
                          setting={"preset": context.preset, "options": _plain(setting)})

    register_method(name, description=description, kind="two-stage", options=options, paper_row=paper_row,
                    weights=weights, presets=presets, cost=cost if stage1_cost is not None else None)(factory)
