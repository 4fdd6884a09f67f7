"""``lambda-eclipse+i2v``: λ-ECLIPSE (Patel et al. 2024) makes the subject image, CogVideoX-5B-I2V animates it.

Stage 1 follows the upstream inference code (github.com/eclipse-t2i/lambda-eclipse-inference, ``test_quick.py``
/ ``test.py`` / ``src/pipelines/pipeline_kandinsky_subject_prior.py``):

1. the prompt is tokenised by the CLIP ViT-bigG-14 tokenizer (padded to 77 tokens) and encoded by
   ``CLIPTextModelWithProjection`` (with the attention mask): per-token hidden states and the pooled, projected
   text embedding;
2. the subject image goes through ``CLIPImageProcessor`` and ``CLIPVisionModelWithProjection``: its 1280-d image
   embedding replaces the text hidden state at every prompt position holding a token of the concept word (here
   the case's entity word);
3. the λ-ECLIPSE prior (:class:`~baselines.lambda_eclipse_model.LambdaEclipsePrior`, not a diffusion model: one
   forward pass from a Gaussian noise vector) predicts the CLIP image embedding, with the embedding of an
   all-zero pixel tensor as its "control" input (no Canny map);
4. the Kandinsky 2.2 decoder (diffusers ``KandinskyV22Pipeline``: UNet + MoVQ, DDPM) renders it at 512x512 with
   50 steps and classifier-free guidance 7.5 against the zero-image embedding.

Weights (all offline, resolved by the harness): the prior ``ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0``, the
CLIP ViT-bigG-14 encoders (``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` by default, as in upstream's ``test.py``;
or the ``text_encoder``/``image_encoder`` folders of ``kandinsky-community/kandinsky-2-2-prior``, as in upstream's
Gradio demo) and the decoder ``kandinsky-community/kandinsky-2-2-decoder``. See docs/baselines/lambda-eclipse.md
for every deviation from upstream.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from baselines.lambda_eclipse_config import PRIOR_CONFIG_FILE, PRIOR_WEIGHTS_FILE, LambdaPriorConfig
from baselines.two_stage import TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from videobench.methods import MethodContext, gpu_dtype, no_grad, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightsLoadError, WeightSpec, describe_load_error

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")
nets = lazy_module("baselines.lambda_eclipse_model")  # the networks: built by a run, not to list the method

logger = logging.getLogger(__name__)

NAME = "lambda-eclipse+i2v"
PAPER_ROW = "λ-Eclipse"

LAMBDA_ECLIPSE_PRIOR = "ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0"
CLIP_BIGG = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
KANDINSKY_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
KANDINSKY_DECODER = "kandinsky-community/kandinsky-2-2-decoder"

PRIOR_KEY, CLIP_KEY, DECODER_KEY = "lambda_prior", "clip_bigg", "kandinsky_decoder"

#: Upstream's decoder call (``test_quick.py``, ``test.py``): 50 steps, guidance 7.5, the pipeline's 512x512.
DECODER_STEPS, DECODER_GUIDANCE, DECODER_SIZE = 50, 7.5, 512
#: The decoder's latent grid is 1/8 of the image and must be whole after MoVQ's 8x: sizes are multiples of 64.
SIZE_MULTIPLE = 64


@dataclass(frozen=True)
class EncoderSource:
    """Where the CLIP ViT-bigG-14 text/vision encoders, tokenizer and image processor live in a folder."""

    repo: str
    folder_name: str
    text_encoder: str
    image_encoder: str
    tokenizer: str
    image_processor: str
    hf_files: tuple[str, ...]
    layout: tuple[str, ...]
    upstream: str


#: ``laion``: one transformers ``CLIPModel`` folder holding both towers (upstream ``test.py``, and the text
#: encoder/tokenizer of ``test_quick.py``). ``kandinsky-prior``: the prior pipeline's sub-folders (upstream
#: ``main.py``; the image encoder/processor of ``test_quick.py``). Both are CLIP ViT-bigG-14 laion2B-39B-b160k.
ENCODER_SOURCES: dict[str, EncoderSource] = {
    "laion": EncoderSource(
        repo=CLIP_BIGG, folder_name="CLIP-ViT-bigG-14-laion2B-39B-b160k", text_encoder="", image_encoder="",
        tokenizer="", image_processor="",
        hf_files=("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.json", "merges.txt", "*.safetensors.index.json",
                  "pytorch_model-*.safetensors", "model*.safetensors"),
        layout=("config.json", "preprocessor_config.json"),
        upstream="test.py (both towers); test_quick.py (text tower)",
    ),
    "kandinsky-prior": EncoderSource(
        repo=KANDINSKY_PRIOR, folder_name="kandinsky-2-2-prior", text_encoder="text_encoder",
        image_encoder="image_encoder", tokenizer="tokenizer", image_processor="image_processor",
        hf_files=("model_index.json", "text_encoder/config.json", "text_encoder/*.safetensors*",
                  "image_encoder/config.json", "image_encoder/*.safetensors*", "tokenizer/*", "image_processor/*"),
        layout=("text_encoder/", "image_encoder/", "tokenizer/", "image_processor/"),
        upstream="main.py (Gradio demo); test_quick.py (image tower)",
    ),
}

DECODER_LAYOUT = ("model_index.json", "unet/", "movq/", "scheduler/")
DECODER_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                 "unet/diffusion_pytorch_model.safetensors", "movq/config.json",
                 "movq/diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class LambdaEclipseOptions(TwoStageOptions):
    """Options of ``lambda-eclipse+i2v`` (stage 1; stage 2's come from :class:`TwoStageOptions`)."""

    prior_model: str | None = option(
        None, f"λ-ECLIPSE prior: a folder (config.json + safetensors) or hub id (default {LAMBDA_ECLIPSE_PRIOR})")
    encoders: Literal["laion", "kandinsky-prior"] = option(
        "laion", f"CLIP ViT-bigG-14 encoders: laion ({CLIP_BIGG}, upstream test.py) or kandinsky-prior "
                 f"(the text_encoder/image_encoder folders of {KANDINSKY_PRIOR}, upstream demo)")
    clip_model: str | None = option(None, "the encoders' folder or hub id (default: the repository of `encoders`)")
    decoder_model: str | None = option(
        None, f"Kandinsky 2.2 decoder: a diffusers folder or hub id (default {KANDINSKY_DECODER})")
    steps: int = option(DECODER_STEPS, "decoder denoising steps (upstream: 50)", minimum=1)
    guidance: float = option(
        DECODER_GUIDANCE, "decoder classifier-free guidance (upstream test_quick.py/test.py: 7.5; demo: 4)",
        minimum=0.0)
    height: int = option(DECODER_SIZE, "stage-1 image height, a multiple of 64 (upstream: 512)", minimum=64)
    width: int = option(DECODER_SIZE, "stage-1 image width, a multiple of 64 (upstream: 512)", minimum=64)
    references: Literal["first", "mean"] = option(
        "first", "subject embedding: the first reference image (upstream: one image per concept) or the mean "
                 "CLIP image embedding of all of them")

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            if getattr(self, name) % SIZE_MULTIPLE:
                raise ValueError(f"{name}={getattr(self, name)}: must be a multiple of {SIZE_MULTIPLE}")


# ------------------------------------------------------------------------------------------------- weights


def weight_specs(options: LambdaEclipseOptions, context: MethodContext) -> list[WeightSpec]:
    """The three stage-1 weight folders: the prior, the CLIP ViT-bigG-14 encoders and the Kandinsky 2.2 decoder."""
    source = ENCODER_SOURCES[options.encoders]
    return [
        WeightSpec(
            key=PRIOR_KEY, model="λ-ECLIPSE prior (Lambda-ECLIPSE-Prior-v1.0)", folder=True,
            file_names=("Lambda-ECLIPSE-Prior-v1.0",), layout=(PRIOR_CONFIG_FILE, PRIOR_WEIGHTS_FILE),
            hf_repo=LAMBDA_ECLIPSE_PRIOR, hf_files=(PRIOR_CONFIG_FILE, PRIOR_WEIGHTS_FILE),
            explicit=options.prior_model, option="-o prior_model=FOLDER|HUB_ID", formats="safetensors",
        ),
        WeightSpec(
            key=CLIP_KEY, model=f"CLIP ViT-bigG-14 encoders ({options.encoders})", folder=True,
            file_names=(source.folder_name,), layout=source.layout, hf_repo=source.repo, hf_files=source.hf_files,
            explicit=options.clip_model, option="-o clip_model=FOLDER|HUB_ID", formats="safetensors",
        ),
        WeightSpec(
            key=DECODER_KEY, model="Kandinsky 2.2 decoder (diffusers)", folder=True,
            file_names=("kandinsky-2-2-decoder",), layout=DECODER_LAYOUT, hf_repo=KANDINSKY_DECODER,
            hf_files=DECODER_FILES, explicit=options.decoder_model, option="-o decoder_model=FOLDER|HUB_ID",
            formats="safetensors",
        ),
    ]


@dataclass
class ClipEncoders:
    """CLIP ViT-bigG-14: tokenizer, text tower (hidden states + projected embedding), image tower, processor."""

    tokenizer: Any
    text_encoder: Any
    image_encoder: Any
    image_processor: Any


def _check_loading_info(path: Path, info: dict[str, Any]) -> None:
    problems = [f"{len(info.get(key) or [])} {key.replace('_', ' ')}" for key in ("missing_keys", "mismatched_keys")
                if info.get(key)]
    if problems:
        example = (list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []])[:3]
        raise WeightsLoadError(f"{path}: does not fit the model: {', '.join(problems)} (e.g. {', '.join(example)})")


def load_transformers_model(cls: type, path: Path, dtype: torch.dtype, **config_overrides: Any):
    """``cls.from_pretrained`` from a local folder; a missing or mis-shaped tensor is an error.

    Safetensors are preferred; a folder with only ``.bin`` shards is read by transformers with
    ``torch.load(weights_only=True)``. A ``CLIPModel`` folder holds both towers: loading one tower leaves the
    other's tensors unexpected (ignored).
    """
    try:
        model, info = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=None, local_files_only=True,
                                          output_loading_info=True, **config_overrides)
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsLoadError(f"{path}: cannot load {cls.__name__} ({describe_load_error(error)})") from error
    _check_loading_info(path, info)
    return model.eval().requires_grad_(False)


def load_diffusers_model(cls: type, path: Path, dtype: torch.dtype):
    """``cls.from_pretrained`` (diffusers) from a local folder, every tensor required (safetensors preferred; a
    ``.bin`` is read with ``torch.load(weights_only=True)``)."""
    try:
        model, info = cls.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=None, local_files_only=True,
                                          output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsLoadError(f"{path}: cannot load {cls.__name__} ({describe_load_error(error)})") from error
    _check_loading_info(path, info)
    return model.eval().requires_grad_(False)


def clip_model_projection(folder: Path) -> dict[str, int]:
    """``{"projection_dim": d}`` from a ``CLIPModel`` folder's top-level config (upstream passes
    ``projection_dim=1280`` when it loads one tower of the laion ``CLIPModel``: a tower's sub-config may carry
    transformers' default 512 instead)."""
    config_path = folder / "config.json"
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsLoadError(f"{config_path}: cannot read the CLIP config ({error})") from error
    if raw.get("model_type") == "clip" and isinstance(raw.get("projection_dim"), int):
        return {"projection_dim": raw["projection_dim"]}
    return {}


def load_clip_encoders(folder: str | os.PathLike, source: str, dtype: torch.dtype) -> ClipEncoders:
    """The CLIP ViT-bigG-14 components from a folder laid out as ``ENCODER_SOURCES[source]``.

    The image processor is transformers' PIL backend (``CLIPImageProcessorPil``): the resize/crop of the
    ``CLIPImageProcessor`` upstream ran with (transformers 4), not transformers 5's torchvision default.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    layout = ENCODER_SOURCES[source]
    folder = Path(folder)

    def part(name: str) -> Path:
        return folder / name if name else folder

    overrides = clip_model_projection(folder) if not layout.text_encoder else {}

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(part(layout.tokenizer)), local_files_only=True)
        processor = CLIPImageProcessorPil.from_pretrained(str(part(layout.image_processor)), local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsLoadError(f"{folder}: cannot load the CLIP tokenizer / image processor "
                               f"({describe_load_error(error)})") from error
    return ClipEncoders(
        tokenizer=tokenizer,
        text_encoder=load_transformers_model(CLIPTextModelWithProjection, part(layout.text_encoder), dtype,
                                             **overrides),
        image_encoder=load_transformers_model(CLIPVisionModelWithProjection, part(layout.image_encoder), dtype,
                                              **overrides),
        image_processor=processor,
    )


def load_decoder(folder: str | os.PathLike, dtype: torch.dtype):
    """``KandinskyV22Pipeline`` (UNet, MoVQ, DDPM scheduler) from a ``kandinsky-2-2-decoder`` folder."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    folder = Path(folder)
    unet = load_diffusers_model(UNet2DConditionModel, folder / "unet", dtype)
    movq = load_diffusers_model(VQModel, folder / "movq", dtype)
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


# ----------------------------------------------------------------------------------------------- tiny preset

TINY_TEXT_LENGTH = 32
TINY_EMBED_DIM = 32
TINY_IMAGE_SIZE = 64
TINY_DECODER_STEPS = 4
#: CLIP towers of the tiny preset (ViT-bigG-14: width 1280/1664, 32/48 layers, projection 1280).
TINY_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": TINY_EMBED_DIM, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": TINY_TEXT_LENGTH, "projection_dim": TINY_EMBED_DIM, "hidden_act": "gelu",
}
TINY_CLIP_VISION: dict[str, Any] = {
    "image_size": 32, "patch_size": 8, "hidden_size": TINY_EMBED_DIM, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": TINY_EMBED_DIM, "hidden_act": "gelu",
}
TINY_PRIOR = LambdaPriorConfig(num_attention_heads=2, attention_head_dim=8, num_layers=2,
                               embedding_dim=TINY_EMBED_DIM, num_embeddings=TINY_TEXT_LENGTH)
#: The decoder UNet's structure (image-embedding addition + image_proj cross-attention tokens, simple
#: cross-attention blocks, scale-shift resnets, learned variance) at toy size; the real one is 384..1536 wide.
TINY_UNET: dict[str, Any] = {
    "in_channels": 4, "out_channels": 8, "sample_size": 32, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "addition_embed_type": "image", "addition_embed_type_num_heads": 4,
    "encoder_hid_dim": TINY_EMBED_DIM, "encoder_hid_dim_type": "image_proj",
    "cross_attention_dim": 32, "attention_head_dim": 8,
    "resnet_time_scale_shift": "scale_shift", "class_embed_type": None, "norm_num_groups": 8,
}
TINY_MOVQ: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "vq_embed_dim": 4, "num_vq_embeddings": 12,
    "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), "norm_num_groups": 8, "norm_type": "spatial",
}
#: ``kandinsky-2-2-decoder/scheduler/scheduler_config.json`` (DDPM, linear betas, epsilon).
KANDINSKY_DECODER_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
    "clip_sample": False, "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False,
}


@dataclass
class LambdaEclipseComponents:
    """Everything stage 1 runs: the CLIP encoders, the prior and the decoder pipeline."""

    encoders: ClipEncoders
    prior: nets.LambdaEclipsePrior
    decoder: Any


def build_tiny_encoders() -> ClipEncoders:
    """Random tiny CLIP towers over the offline tiny tokenizer (caller seeds the RNG)."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = nets.build_tiny_clip_tokenizer(model_max_length=TINY_TEXT_LENGTH)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **TINY_CLIP_TEXT)
    size = TINY_CLIP_VISION["image_size"]
    return ClipEncoders(
        tokenizer=tokenizer,
        text_encoder=CLIPTextModelWithProjection(text_config).eval(),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION)).eval(),
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
    )


def build_tiny_prior() -> nets.LambdaEclipsePrior:
    """A random tiny prior (the learned tokens get small random values instead of the zeros of a fresh init)."""
    prior = nets.LambdaEclipsePrior(TINY_PRIOR)
    with torch.no_grad():
        for parameter in (prior.positional_embedding, prior.prd_embedding):
            parameter.normal_(std=0.02)
    return prior.eval()


def build_tiny_decoder():
    """A random tiny ``KandinskyV22Pipeline`` (Kandinsky 2.2's UNet/MoVQ structure, the decoder's scheduler)."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    return KandinskyV22Pipeline(unet=UNet2DConditionModel(**TINY_UNET).eval(), movq=VQModel(**TINY_MOVQ).eval(),
                                scheduler=DDPMScheduler(**KANDINSKY_DECODER_SCHEDULER))


def build_tiny_components(seed: int = 0) -> LambdaEclipseComponents:
    """The tiny preset: every component random-initialised from ``seed``, CPU-sized."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LambdaEclipseComponents(build_tiny_encoders(), build_tiny_prior(), build_tiny_decoder())


# ------------------------------------------------------------------------------------------ the personaliser


@dataclass
class TextFeatures:
    """The prompt as the prior sees it (upstream ``get_text_feats``), before the concept insertion."""

    input_ids: torch.Tensor  # (1, T)
    attention_mask: torch.Tensor  # (1, T)
    text_embeds: torch.Tensor  # (1, D) pooled + projected
    hidden_states: torch.Tensor  # (1, T, D) last hidden state


class LambdaEclipse:
    """Stage 1 of ``lambda-eclipse+i2v``: the λ-ECLIPSE prior + the Kandinsky 2.2 decoder (one concept)."""

    def __init__(self, components: LambdaEclipseComponents, *, steps: int = DECODER_STEPS,
                 guidance: float = DECODER_GUIDANCE, height: int = DECODER_SIZE, width: int = DECODER_SIZE,
                 references: str = "first", device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 random_weights: bool = False, sources: dict[str, str] | None = None) -> None:
        dtype = dtype or torch.float32
        if references not in ("first", "mean"):
            raise ValueError(f"references={references!r}: first or mean")
        self.encoders, self.prior, self.decoder = components.encoders, components.prior, components.decoder
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        self.references = references
        self.device, self.dtype = torch.device(device), dtype
        self.random_weights = random_weights
        self.sources = dict(sources or {})
        for module in (self.encoders.text_encoder, self.encoders.image_encoder, self.prior):
            module.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.decoder.to(self.device)
        if self.decoder.unet.dtype != dtype:
            self.decoder.to(dtype=dtype)
        self.decoder.set_progress_bar_config(disable=True)
        self._zero_embed: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        return {
            "stage1": "λ-ECLIPSE prior (one pass) + Kandinsky 2.2 decoder", **self.sources,
            "decoder_steps": self.steps, "decoder_guidance": self.guidance, "height": self.height,
            "width": self.width, "references": self.references, "control": "zero-image embedding",
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # --- encoders

    @no_grad
    def encode_text(self, prompt: str) -> TextFeatures:
        """Pad/truncate to the prior's text length (77: bigG's ``model_max_length``, which upstream pads to) and
        encode with the attention mask, as upstream."""
        length = self.prior.config.num_embeddings
        tokens = self.encoders.tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                                         return_tensors="pt")
        input_ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        output = self.encoders.text_encoder(input_ids=input_ids, attention_mask=mask)
        return TextFeatures(input_ids, mask, output.text_embeds, output.last_hidden_state)

    @no_grad
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, D)`` projected CLIP image embeddings of RGB images."""
        pixels = self.encoders.image_processor([image.convert("RGB") for image in images],
                                               return_tensors="pt")["pixel_values"]
        return self.encoders.image_encoder(pixel_values=pixels.to(self.device, self.dtype)).image_embeds

    @no_grad
    def zero_image_embed(self) -> torch.Tensor:
        """``(1, D)`` embedding of an all-zero pixel tensor: the prior's control input and the decoder's negative."""
        if self._zero_embed is None:
            size = self.encoders.image_encoder.config.image_size
            zeros = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
            self._zero_embed = self.encoders.image_encoder(pixel_values=zeros).image_embeds
        return self._zero_embed

    def subject_embedding(self, references: Sequence[Image.Image]) -> torch.Tensor:
        """``(1, D)``: the first reference's embedding, or the mean over all references (``references=mean``)."""
        if not references:
            raise ValueError("λ-ECLIPSE needs at least one reference image")
        chosen = references[:1] if self.references == "first" else references
        return self.encode_images(chosen).mean(dim=0, keepdim=True)

    # --- prior

    def prior_inputs(self, prompt: str, entity: str, subject_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prior's text inputs with the subject embedding at the concept word's positions."""
        text = self.encode_text(prompt)
        concept_ids = nets.concept_token_ids(self.encoders.tokenizer, entity)
        positions = nets.concept_positions(text.input_ids, concept_ids)
        missing = [tid for tid in concept_ids if not bool((text.input_ids == tid).any())]
        if missing or not concept_ids:
            logger.warning("λ-ECLIPSE: the concept word %r is not (fully) in the prompt %r; tokens %s are not "
                           "replaced by the subject embedding", entity, prompt, missing or "(none)")
        return {
            "text_embeds": text.text_embeds,
            "text_hidden_states": nets.insert_concept_embeddings(text.hidden_states, positions, subject_embeds),
            "text_mask": text.attention_mask,
            "concept_positions": positions,
        }

    @no_grad
    def image_embedding(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int
                        ) -> torch.Tensor:
        """``(1, D)`` CLIP image embedding the prior predicts for ``prompt`` with the subject of ``references``."""
        inputs = self.prior_inputs(prompt, entity, self.subject_embedding(references))
        width = self.prior.config.embedding_dim
        noise = torch.randn((1, width), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        return self.prior(noise.to(self.device, self.dtype), inputs["text_embeds"], inputs["text_hidden_states"],
                          inputs["text_mask"], self.zero_image_embed())

    # --- decoder

    @no_grad
    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        image_embeds = self.image_embedding(references, prompt, entity, seed)
        output = self.decoder(
            image_embeds=image_embeds, negative_image_embeds=self.zero_image_embed(), height=self.height,
            width=self.width, num_inference_steps=self.steps, guidance_scale=self.guidance,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="pil",
        )
        return output.images[0].convert("RGB")


# ------------------------------------------------------------------------------------------- stage 1's cost

#: kandinsky-community/kandinsky-2-2-decoder ``unet/config.json``: Kandinsky 2.1's decoder UNet (diffusers
#: ``scripts/convert_kandinsky_to_diffusers.py`` ``UNET_CONFIG``) conditioned on the image embedding only
#: (``addition_embed_type="image"``, ``encoder_hid_dim_type="image_proj"`` from 1280-d CLIP-G embeddings).
KANDINSKY22_UNET: dict[str, Any] = {
    "in_channels": 4, "out_channels": 8, "sample_size": 64, "layers_per_block": 3,
    "block_out_channels": (384, 768, 1152, 1536), "attention_head_dim": 64, "cross_attention_dim": 768,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "addition_embed_type": "image",
    "addition_embed_type_num_heads": 64, "encoder_hid_dim": 1280, "encoder_hid_dim_type": "image_proj",
    "resnet_time_scale_shift": "scale_shift", "class_embed_type": None, "norm_num_groups": 32,
}
#: kandinsky-2-2-decoder ``movq/config.json`` (diffusers ``convert_kandinsky_to_diffusers.py`` ``MOVQ_CONFIG``).
KANDINSKY22_MOVQ: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "vq_embed_dim": 4, "num_vq_embeddings": 16384,
    "layers_per_block": 2, "block_out_channels": (128, 256, 256, 512),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
    "norm_type": "spatial",
}


def stage1_cost(options: LambdaEclipseOptions, context: MethodContext) -> StageCost:
    """Stage 1's cost per video on FakeTensors (:mod:`costmodel.configs`), as :class:`LambdaEclipse` runs: the
    CLIP-G text tower on the prompt and its vision tower on the reference (the zero-image embedding is computed
    once per run, not per video), one pass of the prior, the Kandinsky 2.2 decoder UNet on the CFG batch per DDPM
    step and one MoVQ decode; the tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context))
    if tiny:
        parts = build_tiny_components()
        text, vision, prior, unet, movq = (builder.adopt(module) for module in (
            parts.encoders.text_encoder, parts.encoders.image_encoder, parts.prior, parts.decoder.unet,
            parts.decoder.movq))
        height = width = TINY_IMAGE_SIZE
        steps = min(options.steps, TINY_DECODER_STEPS)
    else:
        text = builder.build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cm.CLIP_BIGG_TEXT)))
        vision = builder.build(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**cm.CLIP_BIGG_VISION)))
        prior = builder.build(lambda: nets.LambdaEclipsePrior(LambdaPriorConfig()))
        unet = builder.build(lambda: UNet2DConditionModel(**KANDINSKY22_UNET))
        movq = builder.build(lambda: VQModel(**KANDINSKY22_MOVQ))
        height, width, steps = options.height, options.width, options.steps
    length, embed = prior.config.num_embeddings, prior.config.embedding_dim
    dtype = builder.dtype

    def run_prior() -> torch.Tensor:
        vector = torch.randn(1, embed, dtype=dtype)
        return prior(vector, vector, torch.randn(1, length, embed, dtype=dtype), torch.ones(1, length), vector)

    builder.add("CLIP-G text encoder", lambda: text(cm.token_ids(length), attention_mask=torch.ones(1, length)), 1,
                f"{length} tokens")
    size = int(vision.config.image_size)
    builder.add("CLIP-G image encoder", cm.image_call(vision, size), 1, f"the reference at {size}x{size}")
    builder.add("λ-ECLIPSE prior", run_prior, 1, f"one pass over {prior.config.sequence_length} tokens")

    def unet_kwargs(batch: int) -> dict[str, Any]:
        return {"added_cond_kwargs": {"image_embeds": torch.randn(batch, embed, dtype=dtype)}}

    calls = cm.denoiser_calls(DDPMScheduler(**KANDINSKY_DECODER_SCHEDULER), steps)
    cm.sd_stage(builder, unet, movq, steps=calls, cfg=options.guidance > 1.0, height=height, width=width,
                context=None, unet_kwargs=unet_kwargs, decode_kwargs={"force_not_quantize": True})
    return builder.cost("stage 1: λ-ECLIPSE prior + Kandinsky 2.2 decoder" + (" (tiny)" if tiny else ""),
                        notes=f"{steps} DDPM steps, guidance {options.guidance}, {height}x{width}, "
                              f"{cm.dtype_name(dtype)}")


# ------------------------------------------------------------------------------------------- registration


def build_personalizer(options: LambdaEclipseOptions, context: MethodContext) -> LambdaEclipse:
    """Stage 1 from the resolved weight folders, or the random tiny preset."""
    dtype = resolve_torch_dtype(context.dtype, context.device)
    common = {"guidance": options.guidance, "references": options.references, "device": context.device, "dtype": dtype}
    if context.preset == "tiny":
        return LambdaEclipse(build_tiny_components(), steps=min(options.steps, TINY_DECODER_STEPS),
                             height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE, random_weights=True,
                             sources={"model": "tiny (random)"}, **common)
    paths = {key: context.weight_path(key) for key in (PRIOR_KEY, CLIP_KEY, DECODER_KEY)}
    lacking = [key for key, path in paths.items() if path is None]
    if lacking:
        raise RuntimeError(f"{NAME}: weights {', '.join(lacking)} were not resolved (the harness resolves them)")
    prior = nets.load_prior(paths[PRIOR_KEY]).to(dtype=dtype)
    components = LambdaEclipseComponents(load_clip_encoders(paths[CLIP_KEY], options.encoders, dtype), prior,
                                         load_decoder(paths[DECODER_KEY], dtype))
    sources = {"prior": str(options.prior_model or LAMBDA_ECLIPSE_PRIOR), "encoders": options.encoders,
               "clip": str(options.clip_model or ENCODER_SOURCES[options.encoders].repo),
               "decoder": str(options.decoder_model or KANDINSKY_DECODER)}
    return LambdaEclipse(components, steps=options.steps, height=options.height, width=options.width,
                         sources=sources, **common)


register_two_stage(
    NAME,
    description="λ-ECLIPSE (CLIP-space prior + Kandinsky 2.2 decoder) subject image, animated by CogVideoX-5B-I2V",
    options=LambdaEclipseOptions, build_stage1=build_personalizer, stage1_weights=weight_specs, paper_row=PAPER_ROW,
    stage1_cost=stage1_cost, stage1_dtype="fp32",
)
