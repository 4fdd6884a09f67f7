"""``ssr-encoder+i2v``: SSR-Encoder (Zhang et al., CVPR 2024) makes the subject image, CogVideoX-5B-I2V animates it.

Stage 1 follows upstream's text-query inference (github.com/Xiaojiu-z/SSR_Encoder, ``infer_text.py`` with
``SSR_encoder.generate``): Stable Diffusion 1.5 with every cross-attention given an SSR subject branch, the subject
query = the case's entity word, the prompt = the case's prompt, the reference = the case's first reference image;
subject scale 0.65, 30 UniPC steps, guidance 5, negative prompt "bad quality", 512x512. The model code and the
checkpoint loaders are in :mod:`baselines.ssr_encoder_model`; deviations from upstream are listed in
``docs/baselines/ssr-encoder.md``.

Weights (all offline, resolved by the harness): the SD 1.5 diffusers folder, CLIP ViT-L/14 in transformers format
(the vision tower is the image encoder; the query is encoded by SD 1.5's own text encoder, as upstream does), and
the two official SSR files: ``pytorch_model.bin`` (the token-to-patch aligner) and ``pytorch_model_1.bin`` (the
subject cross-attention layers), read with safetensors or ``torch.load(weights_only=True)`` only.

The tiny preset (``--preset tiny``) builds the same structure at toy size with random weights and an offline
character-level CLIP tokenizer: a 64x64 image in 3 steps.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from baselines.ssr_encoder_config import AlignerConfig
from baselines.two_stage import TinyPresetModel, TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from toytokenizers import clip as toy_clip
from videobench.methods import MethodContext, gpu_dtype, no_grad, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")
nets = lazy_module("baselines.ssr_encoder_model")  # the networks: built by a run, not to list the method

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_VIT_L14 = "openai/clip-vit-large-patch14"
#: Where the official checkpoints are published: upstream's README ("Pretrained Models") links this Google Drive
#: folder, holding ``pytorch_model.bin`` and ``pytorch_model_1.bin`` for ``models/ssr_model/``. No Hugging Face
#: repository is named anywhere upstream, so these files are never downloaded: they go in the weights folder
#: (``ssr_model/``) or are given with ``-o aligner=`` / ``-o layers=``.
SSR_DRIVE_FOLDER = "drive.google.com/drive/folders/1pMwzGRA8QzHjEH5Hc4zDwdsSDwjwQKMW"

SD15_LAYOUT = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
#: The parts of the SD 1.5 repository a download fetches (fp32 safetensors; no EMA/full checkpoints).
SD15_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json",
              "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
CLIP_FILES = ("config.json", "model.safetensors")
SSR_FORMATS = "the official torch pickle of tensors (torch.load(weights_only=True)) or safetensors with the same keys"

#: SD 1.5's ``scheduler/scheduler_config.json`` (PNDM); upstream replaces it by UniPC built from this config.
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}

# Tiny preset: toy sizes of the same components.
TINY_TEXT_LENGTH = 32
TINY_IMAGE_SIZE = 64
TINY_STEPS = 3
TINY_TEXT: dict[str, Any] = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "max_position_embeddings": TINY_TEXT_LENGTH}
#: 6 layers, so that every layer is one of the 6 scales (ViT-L/14: every 4th of 24).
TINY_VISION: dict[str, Any] = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 6,
                               "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TINY_UNET: dict[str, Any] = {
    "sample_size": TINY_IMAGE_SIZE // 4, "in_channels": 4, "out_channels": 4, "block_out_channels": (16, 32),
    "layers_per_block": 1, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": TINY_TEXT["hidden_size"],
    "attention_head_dim": 4, "norm_num_groups": 4,
}
#: 4x spatial compression (SD 1.5: 8x), so that the UNet works on 16x16 latents.
TINY_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (8, 8, 16), "latent_channels": 4,
    "norm_num_groups": 4, "layers_per_block": 1, "sample_size": TINY_IMAGE_SIZE,
}
#: The official 8 heads of 64 (fixed by upstream, not by the encoders' widths) between toy-sized encoders.
TINY_ALIGNER = AlignerConfig(query_dim=TINY_TEXT["hidden_size"], image_dim=TINY_VISION["hidden_size"])


@dataclass(frozen=True)
class SSREncoderOptions(TwoStageOptions):
    """Stage-1 options; the defaults are upstream's ``infer_text.py``."""

    base_model: str | None = option(None, f"Stable Diffusion 1.5: a diffusers folder or hub id (default {SD15})")
    image_encoder: str | None = option(
        None, f"CLIP ViT-L/14 in transformers format: a folder or hub id (default {CLIP_VIT_L14})")
    aligner: str | None = option(None, "the SSR aligner checkpoint (official models/ssr_model/pytorch_model.bin)")
    layers: str | None = option(
        None, "the SSR subject-layer checkpoint (official models/ssr_model/pytorch_model_1.bin)")
    scale: float = option(0.65, "subject scale of the SSR cross-attention (upstream: 0.65, advised 0.5-0.8)",
                          minimum=0.0)
    steps: int = option(30, "stage-1 denoising steps (UniPC, upstream: 30)", minimum=1)
    guidance: float = option(5.0, "stage-1 classifier-free guidance (upstream infer_text.py: 5)", minimum=0.0)
    negative_prompt: str = option("bad quality", "stage-1 negative prompt (upstream infer_text.py)")
    uncond_query: str = option("", "the subject query of the unconditional branch (upstream: empty)")
    height: int = option(512, "stage-1 image height (SD 1.5: 512)", minimum=64)
    width: int = option(512, "stage-1 image width (SD 1.5: 512)", minimum=64)
    num_references: int = option(
        1, "reference images encoded: 1 = the first (upstream's single-image mode); more = the subject tokens of "
           "each are concatenated, as upstream's multi-image generate_multi does", minimum=1)
    precision: Literal["fp32", "fp16", "bf16", "auto"] = option(
        "fp32", "stage-1 dtype (upstream: fp32); auto follows the run's --dtype")

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")


# ------------------------------------------------------------------------------------------------ weights


def ssr_weight_specs(options: SSREncoderOptions, context: MethodContext) -> list[WeightSpec]:
    """SD 1.5, CLIP ViT-L/14 and the two official SSR checkpoint files."""
    return [
        WeightSpec(key="sd15", model="Stable Diffusion 1.5 (diffusers)", folder=True,
                   file_names=("stable-diffusion-v1-5",), layout=SD15_LAYOUT, hf_repo=SD15, hf_files=SD15_FILES,
                   explicit=options.base_model, option="-o base_model=FOLDER|HUB_ID"),
        WeightSpec(key="clip_vit_l14", model="CLIP ViT-L/14 (transformers)", folder=True,
                   file_names=("clip-vit-large-patch14",), layout=("config.json",), hf_repo=CLIP_VIT_L14,
                   hf_files=CLIP_FILES, explicit=options.image_encoder, option="-o image_encoder=FOLDER|HUB_ID"),
        WeightSpec(key="ssr_aligner", model=f"SSR-Encoder token-to-patch aligner ({SSR_DRIVE_FOLDER})",
                   file_names=("ssr_model/pytorch_model.bin", "ssr_aligner.safetensors"),
                   explicit=options.aligner, option="-o aligner=FILE", formats=SSR_FORMATS),
        WeightSpec(key="ssr_layers", model=f"SSR-Encoder subject cross-attention layers ({SSR_DRIVE_FOLDER})",
                   file_names=("ssr_model/pytorch_model_1.bin", "ssr_layers.safetensors"),
                   explicit=options.layers, option="-o layers=FILE", formats=SSR_FORMATS),
    ]


# ---------------------------------------------------------------------------------------------- components


def build_tiny_clip_tokenizer(model_max_length: int = TINY_TEXT_LENGTH):
    """An offline :class:`~transformers.CLIPTokenizer` with a character-level vocabulary defined here.

    CLIP's structure (byte-level BPE with ``</w>`` word ends, lower-casing, ``<|startoftext|>`` = 0,
    ``<|endoftext|>`` = 1 as end, padding and unknown token) over every printable ASCII character, alone and as
    a word end, with no merges: each word is its characters. Nothing is downloaded; the ids never change.
    """
    characters = sorted({c for c in string.printable if not c.isspace() and not c.isupper()})
    return toy_clip.tiny_clip_tokenizer(model_max_length, characters, specials_first=True)


def build_tiny_components(seed: int = 0) -> tuple[Any, nets.SSRSubjectEncoder]:
    """A random-initialised SD 1.5-structured pipeline and SSR subject encoder at toy size (CPU-friendly)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_clip_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **TINY_TEXT)).eval()
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
        unet = UNet2DConditionModel(**TINY_UNET).eval()
        vae = AutoencoderKL(**TINY_VAE).eval()
        aligner = nets.TokenToPatchAligner(TINY_ALIGNER).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    return pipe, nets.SSRSubjectEncoder(image_encoder, aligner)


def load_official_components(context: MethodContext, dtype: torch.dtype) -> tuple[Any, nets.SSRSubjectEncoder]:
    """SD 1.5 and CLIP ViT-L/14 from their folders, the aligner from the official file (no random init)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModel

    folders = {key: context.weight_path(key) for key in ("sd15", "clip_vit_l14", "ssr_aligner", "ssr_layers")}
    lacking = [key for key, path in folders.items() if path is None]
    if lacking:
        raise RuntimeError(f"SSR-Encoder weights not resolved: {', '.join(lacking)} (the harness resolves them)")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folders["sd15"]), torch_dtype=dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    image_encoder = CLIPVisionModel.from_pretrained(str(folders["clip_vit_l14"]), torch_dtype=dtype).eval()
    config = AlignerConfig(query_dim=pipe.text_encoder.config.hidden_size, image_dim=image_encoder.config.hidden_size)
    aligner = nets.load_aligner(folders["ssr_aligner"], config).to(dtype=dtype)
    return pipe, nets.SSRSubjectEncoder(image_encoder, aligner)


# ---------------------------------------------------------------------------------------------- stage 1


class SSREncoderPersonalizer(TinyPresetModel):
    """Stage 1: SSR-Encoder on SD 1.5 (upstream ``SSR_encoder.generate`` with a text query)."""

    def __init__(self, pipe, encoder: nets.SSRSubjectEncoder, options: SSREncoderOptions, *, tiny: bool,
                 device: str, describe: dict[str, Any]) -> None:
        from diffusers import UniPCMultistepScheduler

        self.options, self.tiny = options, tiny
        self.device = torch.device(device)
        # upstream: UniPC from SD 1.5's scheduler config, in diffusers 0.23.1, whose last step goes to sigma_min
        # (diffusers 0.42.1 defaults to final_sigmas_type="zero": the last step goes to sigma 0)
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, final_sigmas_type="sigma_min")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.encoder = encoder.to(self.device)
        self.dtype = pipe.unet.dtype
        self.text_length = pipe.tokenizer.model_max_length
        self.steps = min(options.steps, TINY_STEPS) if tiny else options.steps
        self.height, self.width = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) if tiny else (options.height, options.width)
        self._describe = describe

    def config(self) -> dict[str, Any]:
        options = self.options
        return {
            "stage1": "SSR-Encoder (SD 1.5 + CLIP ViT-L/14 token-to-patch aligner, text query = entity word)",
            **self._describe, "scheduler": "UniPCMultistepScheduler (final sigma: sigma_min)", "steps": self.steps,
            "guidance_scale": options.guidance, "scale": options.scale, "negative_prompt": options.negative_prompt,
            "uncond_query": options.uncond_query, "height": self.height, "width": self.width,
            "num_references": options.num_references, "dtype": str(self.dtype).removeprefix("torch."),
        }

    def encode_text(self, text: str) -> torch.Tensor:
        """``(1, 77, 768)``: SD 1.5's CLIP text encoder, padded to the tokenizer's length (upstream
        ``pipe._encode_prompt``, its last hidden state)."""
        embeds, _ = self.pipe.encode_prompt(text, self.device, 1, False)
        return embeds

    def subject_tokens(self, references: Sequence[Image.Image], entity: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and unconditional subject tokens, ``(1, N * K * 77, 768)`` each.

        Conditional: each reference image with the entity word as query; unconditional: an all-zero (normalised)
        image with ``uncond_query``.
        """
        pixels = nets.clip_pixels(references, self.encoder.image_size).to(self.device, self.dtype)
        cond = self.encoder(pixels, self.encode_text(entity))
        uncond = self.encoder(torch.zeros_like(pixels), self.encode_text(self.options.uncond_query))
        width = cond.shape[-1]
        return cond.reshape(1, -1, width), uncond.reshape(1, -1, width)

    @no_grad
    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        if not references:
            raise ValueError("SSR-Encoder needs at least one reference image")
        cond, uncond = self.subject_tokens(list(references)[:self.options.num_references], entity)
        prompt_embeds = torch.cat([self.encode_text(prompt), cond], dim=1)
        negative_embeds = torch.cat([self.encode_text(self.options.negative_prompt), uncond], dim=1)
        nets.set_ssr_scale(self.pipe.unet, self.options.scale)
        output = self.pipe(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
            guidance_scale=self.options.guidance, num_inference_steps=self.steps, height=self.height,
            width=self.width, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil",
        )
        return output.images[0].convert("RGB")


def _stage1_dtype(options: SSREncoderOptions, context: MethodContext) -> torch.dtype:
    if options.precision == "auto":
        return resolve_torch_dtype(context.dtype, context.device)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.precision]


def build_ssr_encoder(options: SSREncoderOptions, context: MethodContext) -> SSREncoderPersonalizer:
    """The stage-1 personaliser: the tiny preset's random components, or the official weights."""
    tiny = context.preset == "tiny"
    dtype = _stage1_dtype(options, context)
    if tiny:
        pipe, encoder = build_tiny_components()
        if dtype != torch.float32:
            pipe, encoder = pipe.to(dtype=dtype), encoder.to(dtype=dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            nets.install_ssr_processors(pipe.unet, pipe.tokenizer.model_max_length)
        describe: dict[str, Any] = {"model": "tiny"}
    else:
        pipe, encoder = load_official_components(context, dtype)
        processors = nets.install_ssr_processors(pipe.unet, pipe.tokenizer.model_max_length)
        nets.load_ssr_layers(processors, context.weight_path("ssr_layers"))
        describe = {"base_model": str(context.weight_path("sd15")),
                    "image_encoder": str(context.weight_path("clip_vit_l14")),
                    "aligner": str(context.weight_path("ssr_aligner")),
                    "layers": str(context.weight_path("ssr_layers"))}
    return SSREncoderPersonalizer(pipe, encoder, options, tiny=tiny, device=context.device, describe=describe)


def stage1_cost(options: SSREncoderOptions, context: MethodContext) -> StageCost:
    """Stage 1's cost per video on FakeTensors (:mod:`costmodel.configs`), as :class:`SSREncoderPersonalizer`
    runs: SD 1.5's text encoder on the entity, the empty query, the prompt and the negative prompt; the subject
    encoder (CLIP ViT-L/14 at 6 scales + the aligner) on the references and on the zero image; ``steps`` UniPC
    calls of the UNet (SSR processors in every cross-attention) on the CFG batch; one VAE decode. In the stage's
    ``precision`` (upstream: fp32); the tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    dtype = gpu_dtype(context) if options.precision == "auto" else _stage1_dtype(options, context)
    builder = cm.StageBuilder(dtype)
    if tiny:
        pipe, subject = build_tiny_components()
        unet, text, vae = pipe.unet, pipe.text_encoder, pipe.vae
        height = width = TINY_IMAGE_SIZE
        steps = min(options.steps, TINY_STEPS)
    else:
        with builder.constructing():
            unet, vae = UNet2DConditionModel(**cm.SD15_UNET), AutoencoderKL(**cm.SD_VAE)
            text = CLIPTextModel(CLIPTextConfig(**cm.CLIP_L_TEXT))
            vision = CLIPVisionModel(CLIPVisionConfig(**cm.CLIP_L_VISION))
            subject = nets.SSRSubjectEncoder(vision, nets.TokenToPatchAligner(AlignerConfig(
                query_dim=text.config.hidden_size, image_dim=vision.config.hidden_size)))
        height, width, steps = options.height, options.width, options.steps
    length = text.config.max_position_embeddings
    nets.install_ssr_processors(unet, length, options.scale)
    unet, text, vae, subject = (builder.adopt(module) for module in (unet, text, vae, subject))
    cfg = options.guidance > 1.0
    references = options.num_references
    size, width_text = subject.image_size, text.config.hidden_size

    def subject_tokens() -> torch.Tensor:
        return subject(torch.randn(references, 3, size, size, dtype=dtype),
                       torch.randn(1, length, width_text, dtype=dtype))

    builder.add("text encoder", cm.text_call(text, length), 4,
                f"{length} tokens; entity, empty query, prompt, negative prompt")
    builder.add("subject encoder (CLIP ViT-L/14 + aligner)", subject_tokens, 2,
                f"{references} reference(s) at {size}x{size}; then the zero image")
    scales = subject.aligner.config.num_scales
    calls = cm.denoiser_calls(UniPCMultistepScheduler.from_config(SD15_SCHEDULER, final_sigmas_type="sigma_min"),
                              steps)
    cm.sd_stage(builder, unet, vae, steps=calls, cfg=cfg, height=height, width=width,
                context=(length * (1 + references * scales), int(unet.config.cross_attention_dim)))
    return builder.cost("stage 1: SSR-Encoder (SD 1.5)" + (" (tiny)" if tiny else ""),
                        notes=f"{steps} UniPC steps, guidance {options.guidance}, {height}x{width}, "
                              f"{cm.dtype_name(dtype)}")


register_two_stage(
    "ssr-encoder+i2v",
    description="SSR-Encoder (SD 1.5; CLIP ViT-L/14 token-to-patch aligner queried with the entity word) makes the "
                "subject image, CogVideoX-5B-I2V animates it",
    options=SSREncoderOptions, build_stage1=build_ssr_encoder, stage1_weights=ssr_weight_specs,
    paper_row="SSR-Encoder", stage1_cost=stage1_cost, stage1_dtype="fp32",
)
