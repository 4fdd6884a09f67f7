"""``wan-vace``: Wan2.1-VACE (1.3B or 14B) as a subject-to-video model, through diffusers' ``WanVACEPipeline``.

VACE ("All-in-One Video Creation and Editing", Jiang et al., ICCV 2025, arXiv:2503.07598) adds a context branch to
the Wan2.1 text-to-video DiT: "VACE blocks" read a context video (inactive/reactive VAE latents of a source video,
plus a mask folded into 64 channels) and add their output to the main blocks listed in ``vace_layers``. Reference
images are VAE-encoded as extra latent frames placed *before* the video's frames (their mask is zero: "keep"), so
the model generates a video of the prompt that contains the reference subject. This row is that reference-to-video
(R2V) use: the case's reference image is the only condition besides the prompt; no source video, no mask (the
pipeline then uses an all-zero video with an all-one mask, as the official ``prepare_source`` does).

Settings follow the official inference of the Wan2.1 repository (``generate.py --task vace-1.3B|vace-14B``,
``wan/vace.py``, ``wan/configs/shared_config.py``; the VACE commit 18d53fe): UniPC with flow shift 16, 50 steps,
guidance 5.0, context scale 1.0, 81 frames at 16 fps, 480x832 (1.3B) or 720x1280 (14B), the Chinese default
negative prompt, UMT5 text length 512, the VAE in fp32 and the rest in bf16. diffusers' docstring example suggests
flow shift 3.0 (480p) / 5.0 (720p) instead (and its converted folders ship ``flow_shift=3.0``): ``-o flow_shift=3``.
See docs/baselines/wan-vace.md for every deviation.

The reference is handed to the pipeline as loaded (upright RGB, transparency composited on white); the pipeline
fits it inside the video frame (aspect kept, bilinear) and pads it with white, exactly like the official
``WanVace.prepare_source``.

Weights: the diffusers folders ``Wan-AI/Wan2.1-VACE-1.3B-diffusers`` / ``Wan-AI/Wan2.1-VACE-14B-diffusers``
(``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/`` (UMT5-XXL encoder), ``tokenizer/``,
``scheduler/``), loaded component by component with strict key checks (diffusers only *warns* about a missing
tensor and leaves it on the meta device). ``--preset tiny`` builds a random toy pipeline of the same structure.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from costmodel.method_cost import MethodCost
from mediaio.images import load_reference_image
from videobench.cases import Case
from videobench.methods import GenerationOutput, MethodContext, gpu_dtype, register_method, resolve_torch_dtype
from videobench.options import OptionError, option
from videobench.plugins import lazy_module
from videobench.weights import WeightsLoadError, WeightSpec, describe_load_error

torch = lazy_module("torch")  # imported on first use: listing this method does not load torch

logger = logging.getLogger(__name__)

METHOD_NAME = "wan-vace"

#: The diffusers folder layout of the published Wan2.1-VACE checkpoints.
WAN_VACE_LAYOUT = ("model_index.json", "transformer/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
#: ``allow_patterns`` for ``--download``: the pipeline's folders only (the repositories also hold README assets).
WAN_VACE_FILES = ("model_index.json", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*")

#: ``wan/configs/shared_config.py`` ``sample_neg_prompt`` (the official default negative prompt).
WAN_NEGATIVE_PROMPT_ZH = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
#: Its English translation, as diffusers' Wan / Wan-VACE examples pass it.
WAN_NEGATIVE_PROMPT_EN = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
NEGATIVE_PROMPT_ALIASES = {"wan": WAN_NEGATIVE_PROMPT_ZH, "wan-en": WAN_NEGATIVE_PROMPT_EN}

#: Official sampling settings (Wan2.1 ``generate.py`` for ``vace-*`` tasks; ``WanVace.generate``).
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
DEFAULT_FLOW_SHIFT = 16.0
DEFAULT_CONDITIONING_SCALE = 1.0
#: UMT5 text length (``wan_shared_cfg.text_len``; diffusers' default ``max_sequence_length``).
TEXT_LENGTH = 512

#: Wan2.1's VAE compresses time by 4 and space by 8; the DiT patchifies 1x2x2: frames are 4k+1, sides multiples of 16.
TEMPORAL_FACTOR = 4
SPATIAL_MULTIPLE = 16

@dataclass(frozen=True)
class VideoGeometry:
    """A video's frame count, size and frame rate."""

    num_frames: int
    height: int
    width: int
    fps: int

    def to_dict(self) -> dict[str, int]:
        return {"num_frames": self.num_frames, "height": self.height, "width": self.width, "fps": self.fps}


@dataclass(frozen=True)
class WanVACEVariant:
    """A published Wan2.1-VACE checkpoint: its hub folder, recommended geometry and transformer signature."""

    name: str
    label: str
    hf_repo: str
    native: VideoGeometry
    #: ``transformer/config.json`` values that tell the sizes apart (``scripts/convert_wan_to_diffusers.py``).
    signature: Mapping[str, Any]
    #: ``(height, width)`` pairs the official code accepts (Wan2.1 ``wan/configs/__init__.py`` ``SUPPORTED_SIZES``,
    #: ``vace-1.3B`` / ``vace-14B``).
    supported_sizes: tuple[tuple[int, int], ...] = ((480, 832), (832, 480))

    @property
    def folder_name(self) -> str:
        return self.hf_repo.split("/")[-1]


VARIANTS: dict[str, WanVACEVariant] = {
    "1.3b": WanVACEVariant(
        name="1.3b", label="Wan2.1-VACE-1.3B", hf_repo="Wan-AI/Wan2.1-VACE-1.3B-diffusers",
        native=VideoGeometry(num_frames=81, height=480, width=832, fps=16),
        signature={"num_attention_heads": 12, "num_layers": 30, "ffn_dim": 8960,
                   "vace_layers": list(range(0, 30, 2))},
    ),
    "14b": WanVACEVariant(
        name="14b", label="Wan2.1-VACE-14B", hf_repo="Wan-AI/Wan2.1-VACE-14B-diffusers",
        native=VideoGeometry(num_frames=81, height=720, width=1280, fps=16),
        signature={"num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824,
                   "vace_layers": list(range(0, 40, 5))},
        supported_sizes=((720, 1280), (1280, 720), (480, 832), (832, 480)),
    ),
}

#: Why this row's temporal metrics are not directly comparable with Table 1's (said in run.json and the docs).
COMPARABILITY_NOTE = ("Wan2.1-VACE's native clip is 81 frames at 16 fps (5 s), Table 1's rows 49 frames at 8 fps "
                      "(CogVideoX) or 16 at 8 fps (VideoBooth): T.Cons averages over more, closer frames and the "
                      "RAFT dynamic degree sees smaller steps per frame, so T.Cons and D.D are not directly "
                      "comparable with the paper's rows")


def unsupported_size(variant: WanVACEVariant, geometry: VideoGeometry) -> str | None:
    """A warning when ``geometry``'s size is not one the official code supports for ``variant`` (e.g. the suite's
    480x720 under ``-o geometry=suite``); None when it is."""
    if (geometry.height, geometry.width) in variant.supported_sizes:
        return None
    sizes = ", ".join(f"{h}x{w}" for h, w in variant.supported_sizes)
    return (f"{variant.label} at {geometry.height}x{geometry.width}: outside the sizes the official code supports "
            f"({sizes}); the model was not trained for it and its numbers are not upstream's")

# ------------------------------------------------------------------------------------------------ tiny preset

TINY_TEXT_LENGTH = 32
#: The tiny preset's own "native" geometry (a 4k+1 clip, sides multiples of 16, Wan's 16 fps).
TINY_GEOMETRY = VideoGeometry(num_frames=9, height=128, width=192, fps=16)  # 128 px: the scorer's smallest side
TINY_STEPS = 4
#: Wan2.1's structure at toy width: 16 latent channels, 96 context channels (2 x 16 latents + 64 mask channels),
#: 1x2x2 patches, VACE blocks on layers 0 and 2.
TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
    "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 48, "num_layers": 4, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 64, "vace_layers": [0, 2], "vace_in_channels": 96,
}
#: Wan's causal 3D VAE (4x time, 8x space, 16 latent channels) with 4 base channels. Its latents are ~0.1 in
#: size, so their normalisation statistics are mean 0 / std 0.1 (Wan's per-channel values belong to the real VAE).
TINY_VAE: dict[str, Any] = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                             "temperal_downsample": [False, True, True], "latents_mean": [0.0] * 16,
                             "latents_std": [0.1] * 16}
#: A two-layer UMT5 encoder (``d_model`` = the transformer's ``text_dim``).
TINY_UMT5: dict[str, Any] = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
                              "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
                              "feed_forward_proj": "gated-gelu"}
#: The scheduler of the converted diffusers folders (``convert_wan_to_diffusers.py``): UniPC on flow sigmas.
WAN_SCHEDULER: dict[str, Any] = {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                  "num_train_timesteps": 1000, "flow_shift": 3.0}


def build_tiny_pipeline(seed: int = 0):
    """A random-initialised ``WanVACEPipeline`` at toy size (CPU, seconds per video), fully offline.

    The tokenizer is the offline T5-style Unigram tokenizer of :mod:`toytokenizers.t5` (UMT5 uses the same
    ``<pad>=0, </s>=1, <unk>=2`` SentencePiece conventions).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from toytokenizers.t5 import build_tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(model_max_length=TINY_TEXT_LENGTH)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                   decoder_start_token_id=0, **TINY_UMT5)).eval()
        vae = AutoencoderKLWan(**TINY_VAE).eval()
        transformer = WanVACETransformer3DModel(**TINY_TRANSFORMER).eval()
    scheduler = UniPCMultistepScheduler(**WAN_SCHEDULER)
    return WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class WanVACEOptions:
    """The options of ``wan-vace`` (defaults: the official Wan2.1 VACE inference settings)."""

    variant: Literal["1.3b", "14b"] = option("1.3b", "Wan2.1-VACE size: 1.3b (480x832) or 14b (720x1280)")
    model: str | None = option(None, "the variant's diffusers folder or hub id (default Wan-AI/Wan2.1-VACE-<size>-"
                                     "diffusers from the weights folder or the HF cache)")
    steps: int | None = option(None, f"denoising steps (default {DEFAULT_STEPS}, official; tiny preset: {TINY_STEPS})",
                               minimum=1)
    guidance: float = option(DEFAULT_GUIDANCE, "classifier-free guidance scale (official 5.0)", minimum=0.0)
    flow_shift: float = option(DEFAULT_FLOW_SHIFT, "UniPC flow shift (official Wan2.1 VACE: 16; diffusers' example: "
                                                   "3 at 480p, 5 at 720p)", minimum=1e-3)
    negative_prompt: str = option("wan", "negative prompt: wan (official Chinese default), wan-en (its English "
                                         "translation, diffusers' examples), empty for none, or the text itself")
    conditioning_scale: float = option(DEFAULT_CONDITIONING_SCALE, "VACE context scale (official 1.0)", minimum=0.0)
    references: int = option(1, "how many of the case's reference images to pass (one latent frame each; "
                                "0: all of them)", minimum=0)
    geometry: Literal["native", "suite"] = option(
        "native", "native: the variant's recommended 81 frames at 480x832 / 720x1280, 16 fps; suite: the suite's "
                  "frames/size rounded to 4k+1 / multiples of 16")
    offload: bool = option(False, "enable_model_cpu_offload (CUDA GPUs with little memory)")

    def resolved_negative_prompt(self) -> str:
        return NEGATIVE_PROMPT_ALIASES.get(self.negative_prompt.strip().lower(), self.negative_prompt)


# ------------------------------------------------------------------------------------------------ geometry


def round_to_multiple(value: int, multiple: int = SPATIAL_MULTIPLE) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (halves up), at least one ``multiple``."""
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def round_num_frames(num_frames: int, factor: int = TEMPORAL_FACTOR) -> int:
    """``num_frames`` rounded to the nearest ``factor * k + 1`` (halves up), at least 1.

    The Wan VAE encodes the first frame alone and then groups of ``factor`` frames.
    """
    return max(0, math.floor((num_frames - 1) / factor + 0.5)) * factor + 1


def resolve_geometry(mode: str, native: VideoGeometry, context: MethodContext) -> VideoGeometry:
    """The video this run generates.

    ``native``: the model's recommended geometry. ``suite``: the suite's (``context``) frames, size and fps, each
    missing one taken from ``native``; frames rounded to 4k+1 and sides to multiples of 16.
    """
    if mode == "native":
        return native
    if mode != "suite":
        raise ValueError(f"geometry {mode!r}: native or suite")
    return VideoGeometry(
        num_frames=round_num_frames(context.num_frames or native.num_frames),
        height=round_to_multiple(context.height or native.height),
        width=round_to_multiple(context.width or native.width),
        fps=int(context.fps or native.fps),
    )


# ------------------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsLoadError(f"{path}: cannot read ({type(error).__name__}: {error})") from error


def identify_variant(transformer_config: Mapping[str, Any]) -> str | None:
    """The published variant whose transformer signature ``transformer_config`` has, or None (another size)."""
    for name, variant in VARIANTS.items():
        if all(transformer_config.get(key) == value for key, value in variant.signature.items()):
            return name
    return None


def check_model_folder(folder: Path, variant: str | None) -> dict[str, Any]:
    """Check that ``folder`` is a diffusers Wan2.1-VACE folder (of ``variant`` when given); its transformer config.

    Raises:
        WeightsLoadError: naming the file, for another pipeline class, a two-expert (Wan2.2) folder, or a
            transformer of the other published size.
    """
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") != "WanVACEPipeline":
        raise WeightsLoadError(f"{folder / 'model_index.json'}: a {index.get('_class_name')!r} folder, not a "
                               "WanVACEPipeline (Wan2.1-VACE diffusers) folder")
    if (index.get("transformer_2") or [None])[0] is not None:
        raise WeightsLoadError(f"{folder / 'model_index.json'}: a two-expert (Wan2.2) VACE folder; this method runs "
                               "the single-transformer Wan2.1-VACE checkpoints")
    config = _read_json(folder / "transformer" / "config.json")
    if config.get("_class_name") != "WanVACETransformer3DModel":
        raise WeightsLoadError(f"{folder / 'transformer' / 'config.json'}: a {config.get('_class_name')!r}, "
                               "not a WanVACETransformer3DModel")
    found = identify_variant(config)
    if variant is not None and found is not None and found != variant:
        raise WeightsLoadError(f"{folder}: holds {VARIANTS[found].label} but -o variant={variant} "
                               f"(pass -o variant={found}, or the {VARIANTS[variant].label} folder)")
    if found is None:
        logger.warning("%s: a WanVACE transformer of neither published size (%s heads, %s layers); loading it as "
                       "given", folder, config.get("num_attention_heads"), config.get("num_layers"))
    return config


def _strict(component: str, folder: Path, info: Mapping[str, Any]) -> list[str]:
    """Raise for missing / mismatched tensors (random init); return the unexpected keys (unused, harmless)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(item[0] if isinstance(item, tuple) else item) for item in info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if missing or mismatched or errors:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) (e.g. {', '.join(missing[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} of the wrong shape (e.g. {', '.join(mismatched[:3])})")
        if errors:
            parts.append(f"errors: {'; '.join(map(str, errors))[:300]}")
        raise WeightsLoadError(f"{folder / component}: the checkpoint does not fit the {component}'s config: "
                               + ", ".join(parts))
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        logger.warning("%s: %d unused tensor(s) in the checkpoint (e.g. %s)", folder / component, len(unexpected),
                       ", ".join(unexpected[:3]))
    return unexpected


def _load_component(folder: Path, component: str, unused: dict[str, list[str]], load: Callable[[], Any]):
    """``load()`` -> ``(model, loading_info)``, checked by :func:`_strict`; read errors name the folder."""
    try:
        model, info = load()
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsLoadError(f"{folder / component}: cannot load ({describe_load_error(error)})") from error
    unused[component] = _strict(component, folder, info)
    return model


def load_pipeline(folder: str | Path, dtype: torch.dtype, flow_shift: float, variant: str | None = None):
    """Load a diffusers Wan2.1-VACE folder component by component, offline, every tensor accounted for.

    The VAE is kept in fp32 (the official code and diffusers' examples decode in fp32); the transformer and the
    UMT5 encoder take ``dtype``. The scheduler is the folder's UniPC config with ``flow_shift`` set.

    Returns:
        ``(pipeline, info)``: the ``WanVACEPipeline`` and what was loaded (variant, architecture, unused tensors).

    Raises:
        WeightsLoadError: naming the file, for a folder that is not Wan2.1-VACE or a checkpoint that does not fit.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = Path(folder)
    transformer_config = check_model_folder(folder, variant)
    unused: dict[str, list[str]] = {}
    transformer = _load_component(folder, "transformer", unused, lambda: WanVACETransformer3DModel.from_pretrained(
        folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True, output_loading_info=True))
    vae = _load_component(folder, "vae", unused, lambda: AutoencoderKLWan.from_pretrained(
        folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True, output_loading_info=True))
    text_encoder = _load_component(folder, "text_encoder", unused, lambda: UMT5EncoderModel.from_pretrained(
        folder / "text_encoder", dtype=dtype, local_files_only=True, output_loading_info=True))
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler_config = UniPCMultistepScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)
    scheduler = UniPCMultistepScheduler.from_config(scheduler_config, flow_shift=flow_shift)
    if scheduler.config.prediction_type != "flow_prediction" or not scheduler.config.use_flow_sigmas:
        raise WeightsLoadError(f"{folder / 'scheduler'}: expected UniPC on flow sigmas (prediction_type="
                               "flow_prediction, use_flow_sigmas=true), as the Wan2.1-VACE folders ship")
    pipeline = WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                               scheduler=scheduler, transformer=transformer.eval())
    architecture = {key: transformer_config.get(key) for key in
                    ("num_attention_heads", "attention_head_dim", "num_layers", "ffn_dim", "vace_layers")}
    load_info = {"identified_variant": identify_variant(transformer_config), "architecture": architecture,
                 "unused_tensors": {key: len(value) for key, value in unused.items() if value}}
    return pipeline, load_info


# ------------------------------------------------------------------------------------------------ the generator


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` floats in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def select_references(paths: Sequence[str], count: int) -> list[Image.Image]:
    """The first ``count`` reference images (all for 0), as upright 8-bit RGB (alpha over white)."""
    chosen = list(paths) if count == 0 else list(paths)[:count]
    return [load_reference_image(path) for path in chosen]


@dataclass
class WanVACEGenerator:
    """A loaded ``WanVACEPipeline`` with the run's settings; ``generate`` is deterministic for a seed."""

    pipeline: Any
    run_name: str
    geometry: VideoGeometry
    call_kwargs: dict[str, Any]
    references: int
    settings: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False

    @property
    def fps(self) -> int:
        return self.geometry.fps

    def config(self) -> dict[str, Any]:
        return {**self.settings, "random_weights": self.random_weights}

    def generate(self, case: Case, seed: int) -> GenerationOutput:
        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        references = select_references(case.references, self.references)
        output = self.pipeline(
            prompt=case.prompt, reference_images=references, num_frames=self.geometry.num_frames,
            height=self.geometry.height, width=self.geometry.width,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **self.call_kwargs,
        )
        frames = frames_to_uint8(output.frames[0])
        return GenerationOutput(frames, diagnostics={"num_references": len(references)})


def run_name_for(options: WanVACEOptions, preset: str | None) -> str:
    """``wan-vace-1.3b`` / ``wan-vace-14b`` (``wan-vace-tiny`` for the preset), ``-suite`` for suite geometry."""
    name = f"{METHOD_NAME}-{preset or options.variant}"
    return name + ("-suite" if options.geometry == "suite" else "")


def wan_vace_weights(options: WanVACEOptions, context: MethodContext) -> list[WeightSpec]:
    """The variant's diffusers folder (none for the tiny preset)."""
    if context.preset is not None:
        return []
    if context.random_weights:
        raise OptionError(f"method {METHOD_NAME}: every component has published weights and --random-weights does "
                          "not build a random full-size model; use --preset tiny for a smoke run")
    variant = VARIANTS[options.variant]
    return [WeightSpec(
        key=f"{METHOD_NAME}-{variant.name}", model=f"{variant.label} (diffusers)", folder=True,
        file_names=(variant.folder_name,), layout=WAN_VACE_LAYOUT, hf_repo=variant.hf_repo, hf_files=WAN_VACE_FILES,
        explicit=options.model, option="-o model=FOLDER|HUB_ID",
    )]


def _place(pipeline, context: MethodContext, offload: bool) -> bool:
    """Move the pipeline to the run's device (or CPU-offload it on CUDA); True when offloading."""
    pipeline.set_progress_bar_config(disable=True)
    if offload and torch.device(context.device).type == "cuda":
        pipeline.enable_model_cpu_offload(device=context.device)
        return True
    if offload:
        logger.info("%s: offload applies to CUDA devices only; running on %s", METHOD_NAME, context.device)
    pipeline.to(context.device)
    return False


#: google/umt5-xxl's encoder (the ``text_encoder/config.json`` of the Wan2.1-VACE diffusers folders).
UMT5_XXL: dict[str, Any] = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                            "num_heads": 64, "relative_attention_num_buckets": 32,
                            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu"}


def cost(options: WanVACEOptions, context: MethodContext) -> MethodCost:
    """The cost per video on FakeTensors (:mod:`costmodel.configs`), as diffusers' ``WanVACEPipeline`` runs the
    reference-to-video call: UMT5-XXL on the prompt and the negative prompt, the VAE (fp32) on the all-zero control
    video twice (inactive and reactive halves) and on each reference, per UniPC step the transformer on the
    conditional and the unconditional pass (batch 1 each, the reference latent frames in front, the VACE context
    in every call), one VAE decode. The variant's real transformer config (``VARIANTS[...].signature`` over
    diffusers' defaults, which are the 14B's); the tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context))
    variant = VARIANTS[options.variant]
    if tiny:
        pipeline = build_tiny_pipeline(seed=0)
        transformer, text = builder.adopt(pipeline.transformer), builder.adopt(pipeline.text_encoder)
        vae = builder.adopt(pipeline.vae, torch.float32)
        native, steps, length = TINY_GEOMETRY, options.steps or TINY_STEPS, TINY_TEXT_LENGTH
    else:
        transformer = builder.build(lambda: WanVACETransformer3DModel(**variant.signature))
        text = builder.build(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)))
        vae = builder.build(lambda: AutoencoderKLWan(), torch.float32)  # diffusers' defaults: Wan2.1's VAE
        native, steps, length = variant.native, options.steps or DEFAULT_STEPS, TEXT_LENGTH
    geometry = resolve_geometry(options.geometry, native, context)
    references = options.references or 1  # 0 (all): one per case in the suites here
    frames = (geometry.num_frames - 1) // TEMPORAL_FACTOR + 1
    grid = (geometry.height // 8, geometry.width // 8)
    config, dtype = transformer.config, builder.dtype
    cfg = options.guidance > 1.0

    def step() -> torch.Tensor:
        latents = torch.randn(1, config.in_channels, frames + references, *grid, dtype=dtype)
        control = torch.randn(1, config.vace_in_channels, frames + references, *grid, dtype=dtype)
        states = torch.randn(1, length, config.text_dim, dtype=dtype)
        return transformer(latents, torch.tensor([500]), states, control_hidden_states=control,
                           control_hidden_states_scale=torch.ones(len(config.vace_layers)) * options.conditioning_scale,
                           return_dict=False)[0]

    scheduler = UniPCMultistepScheduler(**{**WAN_SCHEDULER, "flow_shift": options.flow_shift})
    calls = cm.denoiser_calls(scheduler, steps)
    pixels = (geometry.num_frames, geometry.height, geometry.width)
    builder.add("UMT5-XXL text encoder", lambda: text(cm.token_ids(length), torch.ones(1, length)),
                2 if cfg else 1, f"{length} tokens; prompt and negative prompt")
    builder.add("VAE encode (control video)", cm.vae_encode_call(vae, (1, 3, *pixels)), 2,
                f"{'x'.join(map(str, pixels))}, float32; inactive and reactive halves of the all-zero video")
    builder.add("VAE encode (reference)", cm.vae_encode_call(vae, (1, 3, 1, geometry.height, geometry.width)),
                references, "1 frame, float32")
    builder.add("transformer step", step, calls * (2 if cfg else 1),
                f"batch 1 ({'conditional and unconditional' if cfg else 'conditional'} pass), "
                f"{frames}+{references}x{grid[0]}x{grid[1]} latents, {length} text tokens")
    builder.add("VAE decode", cm.vae_decode_call(vae, (1, vae.config.z_dim, frames, *grid)), 1,
                f"{'x'.join(map(str, pixels))}, float32")
    label = "tiny" if tiny else variant.label
    stage = builder.cost(f"Wan2.1-VACE ({label})", notes=(
        f"{steps} UniPC steps, guidance {options.guidance}, {'x'.join(map(str, pixels))} ({options.geometry}), "
        f"{cm.dtype_name(dtype)} (VAE float32)"))
    return MethodCost(METHOD_NAME, [stage], setting={"preset": context.preset, "variant": options.variant,
                                                     "geometry": geometry.to_dict(), "steps": steps,
                                                     "dtype": cm.dtype_name(dtype)})


@register_method(
    METHOD_NAME,
    description="Wan2.1-VACE (1.3B / 14B) reference-to-video through diffusers' WanVACEPipeline (beyond the paper)",
    kind="video-model", options=WanVACEOptions, weights=wan_vace_weights, presets=("tiny",), cost=cost,
)
def build_wan_vace(options: WanVACEOptions, context: MethodContext) -> WanVACEGenerator:
    """Build the generator (the harness resolved and checked the weights folder before this call)."""
    dtype = resolve_torch_dtype(context.dtype, context.device)
    variant = VARIANTS[options.variant]
    if context.preset == "tiny":
        pipeline = build_tiny_pipeline(seed=0)
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config,
                                                                  flow_shift=options.flow_shift)
        if dtype != torch.float32:
            pipeline.transformer.to(dtype=dtype)
            pipeline.text_encoder.to(dtype=dtype)
        native, steps, text_length = TINY_GEOMETRY, options.steps or TINY_STEPS, TINY_TEXT_LENGTH
        model, load_info = "tiny", {"identified_variant": None, "architecture": "tiny"}
    else:
        folder = context.weight_path(f"{METHOD_NAME}-{variant.name}")
        if folder is None:
            raise RuntimeError(f"{variant.label} was not resolved (the harness resolves it before building)")
        pipeline, load_info = load_pipeline(folder, dtype, options.flow_shift, variant=variant.name)
        native, steps, text_length = variant.native, options.steps or DEFAULT_STEPS, TEXT_LENGTH
        model = str(options.model or variant.hf_repo)
        load_info["model_path"] = str(folder)
    offloaded = _place(pipeline, context, options.offload)

    multiple = pipeline.vae_scale_factor_spatial * pipeline.transformer.config.patch_size[1]
    if (multiple, pipeline.vae_scale_factor_temporal) != (SPATIAL_MULTIPLE, TEMPORAL_FACTOR):
        raise WeightsLoadError(f"{model}: VAE/patch factors {multiple}/{pipeline.vae_scale_factor_temporal}, expected "
                               f"Wan2.1's {SPATIAL_MULTIPLE}/{TEMPORAL_FACTOR}")
    geometry = resolve_geometry(options.geometry, native, context)
    size_warning = unsupported_size(variant, geometry) if context.preset is None else None
    if size_warning:
        logger.warning(size_warning)
    call_kwargs = {
        "negative_prompt": options.resolved_negative_prompt() or None,
        "num_inference_steps": int(steps),
        "guidance_scale": float(options.guidance),
        "conditioning_scale": float(options.conditioning_scale),
        "max_sequence_length": text_length,
    }
    requested = {"num_frames": context.num_frames, "height": context.height, "width": context.width,
                 "fps": context.fps}
    settings = {
        "method": METHOD_NAME, "preset": context.preset, "variant": None if context.preset else options.variant,
        "model": model,
        "pipeline": "diffusers.WanVACEPipeline",
        "scheduler": {"class": type(pipeline.scheduler).__name__, "flow_shift": float(options.flow_shift),
                      "prediction_type": pipeline.scheduler.config.prediction_type,
                      "use_flow_sigmas": bool(pipeline.scheduler.config.use_flow_sigmas)},
        "geometry": {"mode": options.geometry, **geometry.to_dict(),
                     **({"suite": requested} if options.geometry == "suite" else {}),
                     **({"upstream_supported": size_warning is None} if context.preset is None else {})},
        **({"size_warning": size_warning} if size_warning else {}),
        "comparability": COMPARABILITY_NOTE,
        "references": options.references, "reference_canvas": "fit inside the frame, white padding (pipeline)",
        "dtype": str(dtype).removeprefix("torch."), "vae_dtype": "float32", "offload": offloaded,
        **load_info, **call_kwargs,
    }
    return WanVACEGenerator(
        pipeline=pipeline, run_name=run_name_for(options, context.preset), geometry=geometry,
        call_kwargs=call_kwargs, references=options.references, settings=settings,
        random_weights=context.preset is not None,
    )
