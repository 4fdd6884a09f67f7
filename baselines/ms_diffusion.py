"""``ms-diffusion+i2v``: MS-Diffusion (Wang et al., ICLR 2025) makes the subject image, CogVideoX-5B-I2V animates it.

Stage 1 is SDXL base 1.0 with MS-Diffusion's grounding resampler and multi-subject cross-attention
(:mod:`baselines.ms_diffusion_model`), one subject per case: the case's first reference image, its entity word as
the subject's phrase, and a layout box (default ``0.25,0.25,0.75,0.75``, the single-subject box of upstream's
``inference.py``). Sampling follows ``inference.py``: ``"best quality, high quality, "`` before the prompt, the
negative prompt ``"monochrome, lowres, bad anatomy, worst quality, low quality"``, 30 steps of SDXL's Euler
scheduler, guidance 7.5, image scale 0.6, 1024x1024.

Weights (resolved by the harness; ``videobench weights`` lists them):

* ``sdxl``: ``stabilityai/stable-diffusion-xl-base-1.0`` (diffusers folder; ``-o sdxl_model=``);
* ``image_encoder``: ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` loaded as ``CLIPVisionModelWithProjection``
  (``-o image_encoder=``);
* ``adapter``: ``doge1516/MS-Diffusion`` ``ms_adapter.bin`` (``-o adapter=``), read with
  ``torch.load(weights_only=True)`` (or a flattened safetensors conversion).

The ``tiny`` preset builds every component random and small (SDXL-structured UNet with ``text_time`` added
embeddings, two CLIP text encoders with an offline tokenizer, a CLIP vision tower, a small resampler) so the method
runs on a CPU in seconds; its images are meaningless.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from baselines.ms_diffusion_config import MSAdapterConfig, validate_box
from baselines.two_stage import TinyPresetModel, TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from toytokenizers import clip as toy_clip
from toytokenizers.corpus import corpus_words
from videobench.methods import MethodContext, gpu_dtype, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")
nets = lazy_module("baselines.ms_diffusion_model")  # the networks: built by a run, not to list the method

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
CLIP_G = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
MS_DIFFUSION_REPO = "doge1516/MS-Diffusion"
MS_ADAPTER_FILE = "ms_adapter.bin"

#: The diffusers folder layout of SDXL base 1.0, and the files of it that are fetched with --download.
SDXL_LAYOUT = ("model_index.json", "unet/", "vae/", "text_encoder/", "text_encoder_2/", "tokenizer/", "tokenizer_2/",
               "scheduler/")
SDXL_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "text_encoder/config.json",
              "text_encoder/model.safetensors", "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
              "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
              "vae/diffusion_pytorch_model.safetensors")
#: The transformers files of CLIP-G (its open_clip files are not needed).
CLIP_G_FILES = ("config.json", "preprocessor_config.json", "model*.safetensors*", "pytorch_model*.bin*")

#: ``inference.py``'s single-subject box (``boxes = [[[0.25, 0.25, 0.75, 0.75]]]  # dog``).
DEFAULT_BOX = (0.25, 0.25, 0.75, 0.75)
DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
DEFAULT_PREFIX = "best quality, high quality, "

#: The tiny preset's caps (random components: a few steps of a 64x64 image are enough to run every code path).
TINY_RESOLUTION = 64
TINY_STEPS = 4


@dataclass(frozen=True)
class MSDiffusionOptions(TwoStageOptions):
    """Stage-1 options of ``ms-diffusion+i2v`` (defaults: upstream's ``inference.py`` and ``MSAdapter.generate``)."""

    sdxl_model: str | None = option(None, f"SDXL base: a diffusers folder or hub id (default {SDXL_BASE})")
    image_encoder: str | None = option(
        None, f"CLIP-G image encoder (transformers CLIPVisionModelWithProjection folder or hub id; default {CLIP_G})")
    adapter: str | None = option(
        None, f"MS-Diffusion checkpoint ms_adapter.bin (or its safetensors conversion; default {MS_DIFFUSION_REPO})")
    scale: float = option(0.6, "image condition scale (upstream default 0.6; 0.4 for subjects that fill the frame)",
                          minimum=0.0)
    box: tuple[float, ...] = option(
        DEFAULT_BOX, "the subject's layout box x1,y1,x2,y2 in [0, 1] (upstream's single-subject demo box)")
    steps: int = option(30, "SDXL denoising steps (upstream inference.py: 30)", minimum=1)
    guidance: float = option(7.5, "classifier-free guidance scale (upstream default 7.5)", minimum=0.0)
    resolution: int = option(1024, "image side in pixels (square; upstream 1024x1024)", minimum=64)
    negative_prompt: str = option(DEFAULT_NEGATIVE, "negative prompt (upstream default)")
    prompt_prefix: str = option(DEFAULT_PREFIX, "text put before the case's prompt (upstream demos' prefix)")
    drop_grounding_tokens: bool = option(
        False, "replace the phrase+box grounded resampler queries by the learned ones (upstream drop_grounding_tokens)")
    mask_threshold: float | None = option(
        None, "auto layout guidance: after start_step steps, the subject region is where its phrase's text attention "
              "exceeds this (0-1; none: the box throughout)", minimum=0.0, maximum=1.0)
    start_step: int = option(5, "auto layout guidance: the step from which the text attention replaces the box",
                             minimum=1)

    def __post_init__(self) -> None:
        validate_box(self.box)
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} must be a multiple of 8")


def stage1_weight_specs(options: MSDiffusionOptions, context: MethodContext) -> list[WeightSpec]:
    """SDXL base, the CLIP-G image encoder and ``ms_adapter.bin``."""
    return [
        WeightSpec(key="sdxl", model="SDXL base 1.0 (diffusers)", folder=True,
                   file_names=("stable-diffusion-xl-base-1.0",), layout=SDXL_LAYOUT, hf_repo=SDXL_BASE,
                   hf_files=SDXL_FILES, explicit=options.sdxl_model, option="-o sdxl_model=FOLDER|HUB_ID"),
        WeightSpec(key="image_encoder", model="CLIP ViT-bigG-14 laion2B-39B-b160k (transformers)", folder=True,
                   file_names=("CLIP-ViT-bigG-14-laion2B-39B-b160k",), layout=("config.json",), hf_repo=CLIP_G,
                   hf_files=CLIP_G_FILES, explicit=options.image_encoder, option="-o image_encoder=FOLDER|HUB_ID"),
        WeightSpec(key="adapter", model="MS-Diffusion adapter (ms_adapter.bin)",
                   file_names=(MS_ADAPTER_FILE, f"MS-Diffusion/{MS_ADAPTER_FILE}", "ms_adapter.safetensors"),
                   hf_repo=MS_DIFFUSION_REPO, hf_files=(MS_ADAPTER_FILE,), explicit=options.adapter,
                   option="-o adapter=FILE",
                   formats="torch state dict read with weights_only=True, or its flattened safetensors conversion"),
    ]


def stage1_dtype(context: MethodContext) -> torch.dtype:
    """``--dtype``; ``auto`` is float16 on CUDA (upstream's dtype for SDXL, CLIP-G and the adapter), else float32."""
    if context.dtype == "auto":
        return torch.float16 if str(context.device).startswith("cuda") else torch.float32
    return resolve_torch_dtype(context.dtype, context.device)


# ---------------------------------------------------------------------------------------------- official weights


#: The sizes of the released ``ms_adapter.bin`` (``inference.py``'s ``Resampler``/``MSAdapter`` arguments).
OFFICIAL_ADAPTER = MSAdapterConfig()


def clip_vision_config(folder: str | Path):
    """The vision config of a CLIP folder: a ``CLIPVisionModelWithProjection`` folder's own, or for a full
    ``CLIPModel`` folder (laion's CLIP-G) its ``vision_config`` with the model's top-level ``projection_dim``, the
    width of the ``visual_projection`` stored there (transformers 5 would otherwise use the vision config's
    default, 512, and refuse the 1280-wide projection)."""
    import json

    from transformers import CLIPVisionConfig

    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") != "clip":
        return CLIPVisionConfig.from_pretrained(str(folder))
    vision = dict(raw.get("vision_config") or {})
    vision.pop("model_type", None)
    if "projection_dim" in raw:
        vision["projection_dim"] = raw["projection_dim"]
    return CLIPVisionConfig(**vision)


def load_ms_diffusion(sdxl: str | Path, image_encoder: str | Path, adapter: str | Path, device: str = "cpu",
                      dtype: torch.dtype | None = None, config: MSAdapterConfig | None = None
                      ) -> nets.MSDiffusionPipeline:
    """MS-Diffusion from the SDXL base folder, the CLIP-G folder and ``ms_adapter.bin`` (all local), in ``dtype``
    (None: float32).

    ``config`` (default :data:`OFFICIAL_ADAPTER`) gives the adapter's sizes that the components do not; the
    encoder / text / UNet widths are read from the loaded components.
    """
    dtype = dtype or torch.float32
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPVisionModelWithProjection

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl), dtype=dtype, add_watermarker=False)
    encoder = CLIPVisionModelWithProjection.from_pretrained(
        str(image_encoder), config=clip_vision_config(image_encoder), dtype=dtype).eval()
    pipeline = nets.MSDiffusionPipeline.from_components(pipe, encoder, config or OFFICIAL_ADAPTER)
    pipeline.load_adapter(adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipeline.to(device)


# -------------------------------------------------------------------------------------------------- tiny preset

#: Sizes of the tiny preset (SDXL's structure: DownBlock2D then cross-attention blocks, linear projections,
#: ``text_time`` added embeddings of 6 size/crop numbers plus the second encoder's pooled output).
def _tiny_words() -> tuple[str, ...]:
    return tuple(sorted(set(corpus_words()) | set(DEFAULT_PREFIX.replace(",", " ").split())))


#: Whole-word tokens of the tiny tokenizer: the tiny T5 tokenizer's prompt words and upstream's prompt prefix.
TINY_WORDS = _tiny_words()
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 77, "projection_dim": 32, "hidden_act": "quick_gelu"}
TINY_TIME_DIM = 8
TINY_UNET = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (16, 32),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2), "attention_head_dim": (2, 4), "norm_num_groups": 8,
    "cross_attention_dim": 2 * TINY_TEXT["hidden_size"], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": TINY_TIME_DIM,
    "projection_class_embeddings_input_dim": TINY_TEXT["projection_dim"] + 6 * TINY_TIME_DIM,
}
TINY_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (8, 16), "latent_channels": 4,
            "norm_num_groups": 8, "layers_per_block": 1, "sample_size": TINY_RESOLUTION}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8, "projection_dim": 16, "hidden_act": "gelu"}
TINY_ADAPTER = MSAdapterConfig(num_tokens=4, num_dummy_tokens=4, dim=32, depth=2, dim_head=8, heads=4, ff_mult=2,
                               embedding_dim=TINY_VISION["hidden_size"], output_dim=TINY_UNET["cross_attention_dim"],
                               phrase_dim=TINY_TEXT["hidden_size"])
#: SDXL base 1.0's scheduler (scheduler/scheduler_config.json).
SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "interpolation_type": "linear",
                  "use_karras_sigmas": False, "steps_offset": 1, "timestep_spacing": "leading"}


def build_tiny_clip_tokenizer(model_max_length: int = 77):
    """An offline CLIP BPE tokenizer: every printable character (alone and word-final ``</w>``) plus BPE merges
    that make each word of :data:`TINY_WORDS` one token; identical on every machine."""
    characters = [c for c in string.printable if not c.isspace()]
    return toy_clip.tiny_clip_tokenizer(model_max_length, characters, TINY_WORDS, specials_first=True)


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A random ``StableDiffusionXLPipeline`` with SDXL's structure at toy size (64x64 images, CPU-friendly)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_TEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config).eval()
        text_encoder_2 = CLIPTextModelWithProjection(text_config).eval()
        unet = UNet2DConditionModel(**TINY_UNET).eval()
        vae = AutoencoderKL(**TINY_VAE).eval()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=build_tiny_clip_tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )


def build_tiny_ms_diffusion(seed: int = 0) -> nets.MSDiffusionPipeline:
    """The tiny preset: a tiny SDXL, a tiny CLIP vision tower and a random MS-Diffusion adapter."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    pipe = build_tiny_sdxl_pipeline(seed)
    pipe.set_progress_bar_config(disable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION)).eval()
        return nets.MSDiffusionPipeline.from_components(pipe, encoder, TINY_ADAPTER)


# --------------------------------------------------------------------------------------------- the personaliser


class MSDiffusionPersonalizer(TinyPresetModel):
    """Stage 1 of ``ms-diffusion+i2v``: one SDXL image of the case's subject (first reference image) for its prompt."""

    def __init__(self, pipeline: nets.MSDiffusionPipeline, options: MSDiffusionOptions, *, tiny: bool,
                 models: dict[str, str]) -> None:
        self.pipeline, self.options, self.tiny, self.models = pipeline, options, tiny, models
        self.steps = min(options.steps, TINY_STEPS) if tiny else options.steps
        self.resolution = min(options.resolution, TINY_RESOLUTION) if tiny else options.resolution

    def config(self) -> dict[str, Any]:
        options = self.options
        return {
            "stage1": "MS-Diffusion (SDXL base 1.0 + grounding resampler + multi-subject cross-attention)",
            **self.models, "reference": "first reference image", "phrase": "the case's entity word",
            "box": list(validate_box(options.box)), "scale": options.scale, "steps": self.steps,
            "guidance": options.guidance, "resolution": self.resolution, "negative_prompt": options.negative_prompt,
            "prompt_prefix": options.prompt_prefix, "drop_grounding_tokens": options.drop_grounding_tokens,
            "mask_threshold": options.mask_threshold, "start_step": options.start_step,
            "scheduler": type(self.pipeline.pipe.scheduler).__name__,
            "dtype": str(self.pipeline.dtype).removeprefix("torch."),
        }

    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        if not references:
            raise ValueError("MS-Diffusion needs a reference image")
        options = self.options
        return self.pipeline(
            references[0], options.prompt_prefix + prompt, entity, box=options.box, scale=options.scale,
            negative_prompt=options.negative_prompt, num_inference_steps=self.steps, guidance_scale=options.guidance,
            resolution=self.resolution, generator=torch.Generator("cpu").manual_seed(seed),
            drop_grounding_tokens=options.drop_grounding_tokens, mask_threshold=options.mask_threshold,
            start_step=options.start_step,
        ).convert("RGB")


def build_personalizer(options: MSDiffusionOptions, context: MethodContext) -> MSDiffusionPersonalizer:
    """The tiny preset's random pipeline, or the official weights the harness resolved."""
    dtype = stage1_dtype(context)
    if context.preset == "tiny":
        pipeline = build_tiny_ms_diffusion().to(context.device, dtype)
        return MSDiffusionPersonalizer(pipeline, options, tiny=True, models={"model": "tiny (random)"})
    paths = {key: context.weight_path(key) for key in ("sdxl", "image_encoder", "adapter")}
    unresolved = [key for key, path in paths.items() if path is None]
    if unresolved:
        raise RuntimeError(f"ms-diffusion+i2v: weights {', '.join(unresolved)} were not resolved "
                           "(the harness resolves them before building)")
    pipeline = load_ms_diffusion(paths["sdxl"], paths["image_encoder"], paths["adapter"], context.device, dtype)
    models = {"sdxl": str(options.sdxl_model or SDXL_BASE), "image_encoder": str(options.image_encoder or CLIP_G),
              "adapter": str(options.adapter or f"{MS_DIFFUSION_REPO}/{MS_ADAPTER_FILE}")}
    return MSDiffusionPersonalizer(pipeline, options, tiny=False, models=models)


def stage1_cost(options: MSDiffusionOptions, context: MethodContext) -> StageCost:
    """Stage 1's cost per video on FakeTensors (:mod:`costmodel.configs`): SDXL with MS-Diffusion's processors
    (:func:`~baselines.ms_diffusion_model.install_ms_attention`) and grounding resampler, as
    :class:`MSDiffusionPipeline` runs them: CLIP-G on the reference, CLIP-L on the phrase, the resampler, both
    text encoders on the prompt and the negative prompt, ``steps`` UNet calls on the CFG batch, one VAE decode
    (fp32 under fp16: SDXL's force_upcast); the tiny preset's components with ``context.preset == "tiny"``."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context, auto="float16"))  # stage1_dtype: upstream's fp16 on CUDA
    if tiny:
        pipeline = build_tiny_ms_diffusion()
        parts = {"unet": pipeline.pipe.unet, "text_encoder": pipeline.pipe.text_encoder,
                 "text_encoder_2": pipeline.pipe.text_encoder_2, "vae": pipeline.pipe.vae,
                 "image_encoder": pipeline.image_encoder, "resampler": pipeline.resampler}
        resolution, steps = min(options.resolution, TINY_RESOLUTION), min(options.steps, TINY_STEPS)
    else:
        def sdxl_with_adapter() -> dict[str, torch.nn.Module]:
            unet = UNet2DConditionModel(**cm.SDXL_UNET)
            text_encoder = CLIPTextModel(CLIPTextConfig(**cm.CLIP_L_TEXT))
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cm.CLIP_BIGG_VISION))
            pipe = SimpleNamespace(unet=unet, text_encoder=text_encoder,
                                   tokenizer=SimpleNamespace(model_max_length=cm.CLIP_TEXT_LENGTH))
            ms = nets.MSDiffusionPipeline.from_components(pipe, encoder, OFFICIAL_ADAPTER)
            return {"unet": unet, "text_encoder": text_encoder, "image_encoder": encoder, "resampler": ms.resampler,
                    "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cm.CLIP_BIGG_TEXT)),
                    "vae": AutoencoderKL(**cm.SDXL_VAE)}

        with builder.constructing():
            parts = sdxl_with_adapter()
        resolution, steps = options.resolution, options.steps
    vae_upcast = builder.dtype == torch.float16 and parts["vae"].config.force_upcast
    modules = {key: builder.adopt(module, torch.float32 if key == "vae" and vae_upcast else None)
               for key, module in parts.items()}
    unet, encoder, resampler = modules["unet"], modules["image_encoder"], modules["resampler"]
    config = resampler.config
    for processor in unet.attn_processors.values():
        if hasattr(processor, "configure"):
            processor.configure(options.scale, options.mask_threshold, options.start_step)

    cfg = options.guidance > 1.0
    length, size = cm.CLIP_TEXT_LENGTH, int(encoder.config.image_size)
    tokens = (size // int(encoder.config.patch_size)) ** 2 + 1

    def image_prompt() -> torch.Tensor:
        pixels = torch.randn(1, 3, size, size, dtype=builder.dtype)
        hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return resampler(hidden, torch.randn(1, config.phrase_dim, dtype=builder.dtype),
                         torch.tensor([validate_box(options.box)], dtype=builder.dtype))

    builder.add("image prompt (CLIP-G + resampler)", image_prompt, 1, f"{size}x{size} reference, {tokens} tokens")
    builder.add("phrase (text encoder 1)", cm.text_call(modules["text_encoder"], length), 1, f"{length} tokens")
    for index, key in enumerate(("text_encoder", "text_encoder_2")):
        builder.add(f"text encoder {index + 1}", cm.text_call(modules[key], length, output_hidden_states=True),
                    2 if cfg else 1, f"{length} tokens; prompt and negative prompt")
    context_tokens = length + config.num_dummy_tokens + config.num_tokens

    def unet_kwargs(batch: int) -> dict[str, Any]:
        boxes = torch.tensor([[list(validate_box(options.box))]] * batch, dtype=builder.dtype)
        added = {"text_embeds": torch.randn(batch, int(modules["text_encoder_2"].config.projection_dim),
                                            dtype=builder.dtype),
                 "time_ids": torch.randn(batch, 6, dtype=builder.dtype)}
        phrase = torch.tensor([[[3, 4]]] * batch)
        return {"added_cond_kwargs": added, "cross_attention_kwargs": {"boxes": boxes, "phrase_idxes": phrase}}

    calls = cm.denoiser_calls(EulerDiscreteScheduler(**SDXL_SCHEDULER), steps)
    cm.sd_stage(builder, unet, modules["vae"], steps=calls, cfg=cfg, height=resolution, width=resolution,
                context=(context_tokens, int(unet.config.cross_attention_dim)), unet_kwargs=unet_kwargs)
    return builder.cost("stage 1: MS-Diffusion (SDXL)" + (" (tiny)" if tiny else ""),
                        notes=f"{steps} Euler steps, guidance {options.guidance}, {resolution}x{resolution}, "
                              f"{cm.dtype_name(builder.dtype)}" + (", VAE in float32" if vae_upcast else ""))


register_two_stage(
    "ms-diffusion+i2v",
    description="MS-Diffusion (SDXL + grounding resampler + box-masked multi-subject cross-attention) makes the "
                "subject image, CogVideoX-5B-I2V animates it",
    options=MSDiffusionOptions, build_stage1=build_personalizer, stage1_weights=stage1_weight_specs,
    paper_row="MS-Diffusion", stage1_cost=stage1_cost, stage1_dtype="fp16",
)
