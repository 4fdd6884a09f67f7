"""``videobench generate --method videobooth``: VideoBooth, the video-model row of the paper's Table 1.

VideoBooth (Jiang et al., CVPR 2024, "VideoBooth: Diffusion-based Video Generation with Image Prompts"; code
github.com/Vchitect/VideoBooth, weights huggingface.co/yumingj/VideoBooth_models) is a text-to-video model on
Stable Diffusion 1.4's UNet (:mod:`baselines.videobooth_model`) that takes an image prompt: a subject segmented
onto white. Its inference (``sample_scripts/sample.py`` with ``configs/panda.yaml``) is reproduced here:

* the prompt is lowercased and the subject word replaced by the placeholder ``sdksd``; the placeholder's token
  embeddings are replaced by the 5 *coarse visual embeddings* the mapper makes from CLIP ViT-L/14 image features
  (last hidden state and layers 4, 8, 12, 16) of the image prompt (224x224, CLIP-normalised);
* the image prompt (256x256) is VAE-encoded (``sd-vae-ft-ema``, a posterior sample x 0.18215), noised to each
  step's timestep and run through the UNet's exemplar branch, whose features enter frame 0 of the sparse-causal
  attention (*fine visual embeddings*, attention injection);
* sampling: ADM's DDPM ancestral sampler (1000 linear betas 1e-4..0.02, "fixed large" variance, no clipping)
  respaced to 250 steps, classifier-free guidance 4 against the literal prompt ``"None"`` (the unconditional pass
  has no exemplar branch), guidance on latent channels 0-2 only (upstream's DiT-derived ``[:, :3]`` split;
  ``-o cfg_channels=all`` guides all 4);
* 16 frames of 256x256 at 8 fps: VideoBooth's native size. The suite's frames/height/width are *not* applied
  (the model was trained only at this size); run.json's config records ``native_size: true`` and the size.

The case's first reference image is the image prompt. VideoBooth expects the subject segmented (Grounded-SAM
upstream) and cropped to its box on white; no segmentation model is part of this suite, so a reference with an
alpha channel is cropped to its opaque box and put on white (exactly upstream's preprocessing), and a plain photo
is used whole (the subject with its background), padded to a square with white as upstream pads its crops.

``--preset tiny`` builds a random-initialised VideoBooth of the same structure (4 frames of 128x128, 4 steps).
Every deviation from upstream is listed in docs/baselines/videobooth.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from baselines.videobooth_config import UNetConfig
from costmodel.method_cost import MethodCost
from mediaio.images import load_reference_image
from toytokenizers import clip as toy_clip
from toytokenizers.corpus import corpus_words
from videobench.cases import Case
from videobench.methods import GenerationOutput, MethodContext, gpu_dtype, no_grad, register_method, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import (
    WeightsLoadError,
    WeightSpec,
    describe_load_error,
    load_into,
    load_state_dict,
    strip_prefixes,
)

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")
nets = lazy_module("baselines.videobooth_model")  # the networks: built by a run, not to list the method

logger = logging.getLogger(__name__)

VIDEOBOOTH_REPO = "yumingj/VideoBooth_models"
SD14_REPO = "CompVis/stable-diffusion-v1-4"
CLIP_REPO = "openai/clip-vit-large-patch14"
VAE_REPO = "stabilityai/sd-vae-ft-ema"
#: CLIP's image normalisation (``sample.py`` ``normalize_exemplar``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The diffusers layout of SD 1.4's UNet file, in the order they are tried.
SD_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                   "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
CfgChannels = Literal["upstream", "all"]
ExemplarFrames = Literal["all", "first"]

CONVERSION_RECIPE = (
    "Convert it once, where you trust the file, into a safetensors of its tensors and pass that instead:\n"
    "  python -c \"import torch; from safetensors.torch import save_file; "
    "c = torch.load('{name}', map_location='cpu', weights_only=False); "
    "save_file({{k: v.contiguous() for k, v in c['{key}'].items()}}, '{stem}.safetensors')\"\n"
    "(docs/baselines/videobooth.md, 'Checkpoints')"
)


@dataclass(frozen=True)
class VideoBoothConfig:
    """Inference settings of ``sample.py`` (defaults) or of the tiny preset."""

    num_frames: int = 16
    height: int = 256
    width: int = 256
    fps: int = 8
    clip_image_size: int = 224
    #: CLIP vision hidden states fed to the mapper besides the last hidden state (``image_features[2][i]``).
    image_feature_layers: tuple[int, ...] = (4, 8, 12, 16)
    mapper_hidden_dim: int = 1024
    vae_scaling_factor: float = 0.18215
    placeholder: str = "sdksd"
    steps: int = 250
    guidance: float = 4.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @property
    def num_image_tokens(self) -> int:
        return len(self.image_feature_layers) + 1


@dataclass
class VideoBoothResult:
    frames: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ sampling


def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The timesteps ADM's ``space_timesteps(T, str(steps))`` keeps (one section), in sampling order.

    ``steps`` evenly strided positions ``round(i * (T - 1) / (steps - 1))`` (Python's rounding), so 250 of 1000
    gives 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96, 100, ...,
    999 (the stride is 4.012).
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    stride = (num_train_timesteps - 1) / (steps - 1) if steps > 1 else 1.0
    taken, position = set(), 0.0
    for _ in range(steps):
        taken.add(round(position))
        position += stride
    return sorted(taken, reverse=True)


def make_scheduler(config: VideoBoothConfig, steps: int):
    """diffusers' DDPM with ADM's settings (``diffusion/__init__.py`` ``create_diffusion``) and its respacing.

    With custom timesteps DDPM's ``beta_t = 1 - abar_t / abar_prev`` over the kept steps is ADM's respaced beta,
    and ``fixed_large`` samples with variance ``beta_t`` as ADM's ``FIXED_LARGE``; the mean is the same posterior.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                              beta_end=config.beta_end, beta_schedule="linear", variance_type="fixed_large",
                              clip_sample=False, prediction_type="epsilon")
    scheduler.set_timesteps(timesteps=respaced_timesteps(config.num_train_timesteps, steps))
    return scheduler


def guided_noise(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: CfgChannels) -> torch.Tensor:
    """Classifier-free guidance. ``upstream``: as ``forward_with_cfg_with_exemplar``, on latent channels 0-2 only
    (channel 3 keeps the conditional prediction); ``all``: every channel."""
    guided = uncond + scale * (cond - uncond)
    if channels == "upstream":
        return torch.cat([guided[:, :3], cond[:, 3:]], dim=1)
    if channels != "all":
        raise ValueError(f"cfg_channels {channels!r}: upstream or all")
    return guided


# ------------------------------------------------------------------------------------------------ image prompt


def load_image_prompt(path: str | Path) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """The reference as RGB on white, and the box of its opaque pixels when the file has an alpha channel (a
    segmented subject: upstream crops to the segmentation box), else None (the whole image)."""
    image = load_reference_image(path)
    with Image.open(path) as raw:
        has_alpha = raw.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in raw.info
        box = raw.convert("RGBA").getchannel("A").getbbox() if has_alpha else None
    return image, box


def square_on_white(image: Image.Image, box: Sequence[float] | None = None) -> torch.Tensor:
    """``load_data_pair``: crop to ``box`` (x1, y1, x2, y2, truncated to int), pad to a square with white
    (the shorter side padded, ``diff // 2`` before). Returns ``(3, S, S)`` uint8."""
    import torchvision.transforms.functional as TF  # imported here: registering the method needs no torchvision

    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    if box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
        pixels = pixels[:, y1:y2, x1:x2]
    height, width = pixels.shape[1:]
    if height != width:
        diff = abs(width - height)
        before, after = diff // 2, diff - diff // 2
        padding = [0, before, 0, after] if height < width else [before, 0, after, 0]  # left, top, right, bottom
        pixels = TF.pad(pixels, padding, fill=255)
    return pixels.contiguous()


def resize_uint8(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision 0.15's ``Resize`` on a uint8 tensor (upstream): bilinear, no antialiasing, rounded to uint8."""
    import torchvision.transforms.functional as TF

    return TF.resize(pixels, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


def image_prompt_tensors(image: Image.Image, box: Sequence[float] | None, config: VideoBoothConfig,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CLIP pixels (1, 3, S, S) normalised, VAE pixels (1, 3, H, W) in [-1, 1])`` of the image prompt."""
    import torchvision.transforms.functional as TF

    square = square_on_white(image, box)
    clip = resize_uint8(square, config.clip_image_size, config.clip_image_size).float() / 255.0
    clip = TF.normalize(clip, CLIP_MEAN, CLIP_STD)
    vae = resize_uint8(square, config.height, config.width).float() / 127.5 - 1.0
    return clip[None], vae[None]


def placeholder_prompt(prompt: str, entity: str, placeholder: str) -> tuple[str, bool]:
    """``sample.py``: the prompt lowercased with every occurrence of the (lowercased) entity replaced."""
    text, word = prompt.lower(), entity.lower()
    if not word or word not in text:
        return text, False
    return text.replace(word, placeholder), True


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [-1, 1] -> ``(F, H, W, 3)`` uint8 as upstream (``(x/2+1/2)*255 + 0.5``, clamp, floor)."""
    video = ((video.float() * 0.5 + 0.5) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return video.permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------------------------ the pipeline


class VideoBoothPipeline:
    """Tokenizer, CLIP text and image encoders, mapper, video UNet and VAE with VideoBooth's inference."""

    def __init__(self, tokenizer, text_encoder, image_encoder, mapper: nets.VideoBoothMapper,
                 unet: nets.VideoBoothUNet3D, vae, config: VideoBoothConfig) -> None:
        self.tokenizer, self.text_encoder, self.image_encoder = tokenizer, text_encoder, image_encoder
        self.mapper, self.unet, self.vae, self.config = mapper, unet, vae, config
        for module in self.modules():
            module.eval().requires_grad_(False)

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.image_encoder, self.mapper, self.unet, self.vae]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VideoBoothPipeline:
        for module in self.modules():
            module.to(device=device)
            if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
                module.to(dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def placeholder_ids(self) -> list[int]:
        return list(self.tokenizer(self.config.placeholder, add_special_tokens=False)["input_ids"])

    def tokenize(self, text: str) -> torch.Tensor:
        return self.tokenizer([text], padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids

    @no_grad
    def encode_image_prompt(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """The coarse visual embeddings ``(B, 5, D_text)``: the mapper over CLIP's last hidden state and the
        hidden states after the configured layers (``image_features[0]``, ``image_features[2][4]``, ...)."""
        output = self.image_encoder(clip_pixels.to(self.device, self.image_encoder.dtype), output_hidden_states=True)
        features = [output.last_hidden_state] + [output.hidden_states[i] for i in self.config.image_feature_layers]
        return self.mapper([feature.to(self.mapper_dtype) for feature in features])

    @property
    def mapper_dtype(self) -> torch.dtype:
        return next(self.mapper.parameters()).dtype

    @no_grad
    def encode_text(self, text: str, injected: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """CLIP text states ``(1, L, D)``; with ``injected`` the placeholder's token embeddings are replaced
        (:func:`~baselines.videobooth_model.inject_word_embeddings`) before the position embeddings are added."""
        ids = self.tokenize(text).to(self.device)
        info: dict[str, Any] = {}
        handle = None
        if injected is not None:
            placeholder = self.placeholder_ids()
            info = {"placeholder_tokens": len(placeholder),
                    "placeholder_positions": torch.nonzero(ids[0] == placeholder[0]).flatten().tolist()}

            def splice(module, inputs, output):
                return nets.inject_word_embeddings(output, ids, placeholder, injected.to(output.dtype))

            handle = self.text_encoder.get_input_embeddings().register_forward_hook(splice)
        try:
            states = self.text_encoder(ids).last_hidden_state
        finally:
            if handle is not None:
                handle.remove()
        return states, info

    @no_grad
    def __call__(self, image: Image.Image, prompt: str, entity: str, seed: int, box: Sequence[float] | None = None,
                 steps: int | None = None, guidance: float | None = None, negative_prompt: str = "None",
                 injection_scale: float = 1.0, cfg_channels: CfgChannels = "upstream",
                 exemplar_frames: ExemplarFrames = "all") -> VideoBoothResult:
        """One video ``(F, H, W, 3)`` uint8 of ``prompt`` with the subject of ``image`` standing for ``entity``.

        The noise comes from a CPU generator seeded with ``seed`` in upstream's order: the initial latents, the
        VAE posterior sample of the image prompt, then per step the exemplar's noise and the DDPM step's noise.

        ``exemplar_frames="all"`` is upstream's exemplar branch (``sample_scripts/sample.py``: the image prompt's
        latent ``x[:, :, :1].repeat(1, 1, 16, 1, 1)``; ``diffusion/gaussian_diffusion.py`` ``p_sample``:
        ``q_sample(exemplar_latent_ori, t, noise=th.randn_like(exemplar_latent_ori))`` at every step), so every
        frame of the branch carries its own noise and the branch's temporal attention and frame-pooled GroupNorm
        mix them before frame 0's features are injected. ``"first"`` runs the branch on one noised frame.
        """
        config = self.config
        steps = int(steps or config.steps)
        guidance = float(config.guidance if guidance is None else guidance)
        device, dtype = self.device, self.dtype
        generator = torch.Generator("cpu").manual_seed(int(seed))
        latent_shape = (1, self.unet.config.in_channels, config.num_frames, config.height // self.vae_factor,
                        config.width // self.vae_factor)
        latents = torch.randn(latent_shape, generator=generator).to(device, dtype)

        clip_pixels, vae_pixels = image_prompt_tensors(image, box, config)
        injected = self.encode_image_prompt(clip_pixels)
        text, found = placeholder_prompt(prompt, entity, config.placeholder)
        if not found:
            logger.warning("videobooth: the entity %r is not in the prompt %r; no coarse embeddings", entity, prompt)
        cond, info = self.encode_text(text, injected)
        uncond, _ = self.encode_text(negative_prompt)
        cond, uncond = cond.to(dtype), uncond.to(dtype)

        posterior = self.vae.encode(vae_pixels.to(device, self.vae.dtype)).latent_dist
        exemplar = (posterior.sample(generator=generator) * config.vae_scaling_factor).to(dtype)[:, :, None]
        if exemplar_frames == "all":
            exemplar = exemplar.repeat(1, 1, config.num_frames, 1, 1)
        elif exemplar_frames != "first":
            raise ValueError(f"exemplar_frames {exemplar_frames!r}: all or first")

        scheduler = make_scheduler(config, steps)
        for t in scheduler.timesteps:
            noise = torch.randn(exemplar.shape, generator=generator).to(device, dtype)
            exemplar_t = scheduler.add_noise(exemplar, noise, t.reshape(1))
            if injection_scale != 0:
                eps_cond = self.unet(latents, t, cond, exemplar_t, t, uncond, injection_scale)
            else:
                eps_cond = self.unet(latents, t, cond)
            eps_uncond = self.unet(latents, t, uncond)
            eps = guided_noise(eps_cond, eps_uncond, guidance, cfg_channels)
            latents = scheduler.step(eps, t, latents, generator=generator).prev_sample

        frames = latents[0].transpose(0, 1) / config.vae_scaling_factor
        video = torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample for chunk in frames.split(8)])
        diagnostics = {"entity_in_prompt": found, "image_tokens": int(injected.shape[1]), **info}
        return VideoBoothResult(frames_to_uint8(video), diagnostics)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------------------ checkpoints


def load_training_checkpoint(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The ``key`` dict (``ema``, ``ema_unet``) of an upstream ``torch.save`` checkpoint, or a flat safetensors of it.

    Only ``torch.load(weights_only=True)`` and safetensors are used; a file that needs full unpickling is refused
    with a conversion recipe.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_state_dict(path)
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsLoadError(
            f"{path}: torch.load(weights_only=True) cannot read it ({describe_load_error(error)}); this project never "
            "unpickles arbitrary objects. " + CONVERSION_RECIPE.format(name=path.name, key=key, stem=path.stem)
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
        checkpoint = checkpoint[key]
    elif not (isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor)
                                                                  for v in checkpoint.values())):
        found = ", ".join(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsLoadError(f"{path}: expected a checkpoint with a {key!r} state dict, found {found}")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsLoadError(f"{path}: the {key!r} entry holds no tensors")
    return tensors


def sd_unet_folder(base: str | Path) -> Path:
    """SD 1.4's ``unet/`` folder inside the model folder ``base`` (or ``base`` itself when it is that folder)."""
    base = Path(base)
    for folder in (base / "unet", base):
        if (folder / "config.json").is_file():
            return folder
    raise WeightsLoadError(f"{base}: no unet/config.json (expected Stable Diffusion v1.4 in the diffusers layout)")


def load_sd_unet(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """``(config, state dict, weights file)`` of a diffusers ``UNet2DConditionModel`` folder."""
    config = json.loads((folder / "config.json").read_text())
    for name in SD_UNET_WEIGHTS:
        if (folder / name).is_file():
            return config, load_state_dict(folder / name), folder / name
    raise WeightsLoadError(f"{folder}: none of {', '.join(SD_UNET_WEIGHTS)}")


@dataclass
class LoadedVideoBooth:
    unet: nets.VideoBoothUNet3D
    mapper: nets.VideoBoothMapper
    report: nets.AssembledUNet


def _watermark_channels(video_state: dict[str, torch.Tensor]) -> tuple[int, ...] | None:
    """The watermark branch's widths as the checkpoint holds them (upstream hard-codes 320, 640, 640)."""
    channels, i = [], 0
    while f"watermark_down_blocks.{i}.resnets.0.conv1.weight" in video_state:
        channels.append(int(video_state[f"watermark_down_blocks.{i}.resnets.0.conv1.weight"].shape[0]))
        i += 1
    return tuple(channels) or None


def load_videobooth(base: str | Path | None, watermark: str | Path, mapper: str | Path, image_dim: int,
                    text_dim: int, num_image_tokens: int = 5, unet_config: UNetConfig | None = None,
                    ) -> LoadedVideoBooth:
    """The video UNet and the mapper from the official files (see :func:`assemble_unet_state_dict`).

    ``base``: SD 1.4 (its ``unet/``), or None when ``watermark`` holds the whole UNet; ``watermark``:
    ``watermark_remove_module.pt``; ``mapper``: ``mapper.pt``; ``image_dim``/``text_dim``: CLIP's widths. The
    UNet's architecture is SD's ``unet/config.json`` inflated as upstream does (without ``base``: ``unet_config``,
    default SD 1.4's); the watermark branch's widths and the mapper's hidden width (upstream's constants
    320-640-640 and 1024) are read off the checkpoints' shapes, so small test checkpoints load through this code.
    """
    if base is not None:
        folder = sd_unet_folder(base)
        sd_config, base_state, base_file = load_sd_unet(folder)
        config = UNetConfig.from_sd_unet_config(sd_config, str(folder / "config.json"))
    else:
        base_state, base_file, config = None, None, unet_config or UNetConfig()
    video_state = strip_prefixes(load_training_checkpoint(watermark, "ema_unet"), ("module.",))
    mapper_raw = strip_prefixes(load_training_checkpoint(mapper, "ema"), ("module.",))
    watermark_channels = _watermark_channels(video_state)
    if watermark_channels is not None:
        config = dataclasses.replace(config, watermark_block_out_channels=watermark_channels)
    hidden = mapper_raw.get("mapping_0.0.weight")
    if hidden is None:
        raise WeightsLoadError(f"{mapper}: no mapping_0.0.weight (not a VideoBooth mapper checkpoint)")
    try:
        with torch.device("meta"):
            unet = nets.VideoBoothUNet3D(config)
            mapper_module = nets.VideoBoothMapper(image_dim, text_dim, int(hidden.shape[0]), num_image_tokens)
    except ValueError as error:
        raise WeightsLoadError(f"{watermark}: {error}") from error
    mapper_state, attention = nets.split_mapper_state_dict(mapper_raw, unet, str(mapper))
    report = nets.assemble_unet_state_dict(nets.expected_shapes(unet), base_state, video_state, attention,
                                      str(base_file) if base_file else None, str(watermark))
    if report.ignored_video_keys:
        logger.info("videobooth: %d key(s) of %s are not part of the UNet and are ignored (upstream loads it with "
                    "strict=False), e.g. %s", len(report.ignored_video_keys), watermark,
                    ", ".join(report.ignored_video_keys[:3]))
    load_into(unet, report.state_dict, " + ".join(str(p) for p in (base_file, watermark, mapper) if p), assign=True)
    load_into(mapper_module, mapper_state, mapper, assign=True)
    return LoadedVideoBooth(unet, mapper_module, report)


def load_pipeline(clip: str | Path, vae: str | Path, base: str | Path | None, watermark: str | Path | None,
                  mapper: str | Path | None, config: VideoBoothConfig | None = None, seed: int = 0,
                  ) -> tuple[VideoBoothPipeline, nets.AssembledUNet | None]:
    """The pipeline from official folders/files (``base`` may be None: see :func:`load_videobooth`); without
    ``watermark``/``mapper`` the UNet and the mapper are random-initialised at full size (``--random-weights``)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    config = config or VideoBoothConfig()
    tokenizer = CLIPTokenizer.from_pretrained(str(clip))
    text_encoder = CLIPTextModel.from_pretrained(str(clip))
    image_encoder = CLIPVisionModel.from_pretrained(str(clip))
    autoencoder = AutoencoderKL.from_pretrained(str(vae))
    image_dim, text_dim = image_encoder.config.hidden_size, text_encoder.config.hidden_size
    report = None
    if watermark is not None and mapper is not None:
        loaded = load_videobooth(base, watermark, mapper, image_dim, text_dim, config.num_image_tokens)
        unet, mapper_module, report = loaded.unet, loaded.mapper, loaded.report
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = nets.VideoBoothUNet3D(UNetConfig())
            mapper_module = nets.VideoBoothMapper(image_dim, text_dim, config.mapper_hidden_dim,
                                                  config.num_image_tokens)
    return VideoBoothPipeline(tokenizer, text_encoder, image_encoder, mapper_module, unet, autoencoder, config), report


# ------------------------------------------------------------------------------------------------ tiny preset

#: The tiny preset: 4 frames of 128x128 (16x16 latents; 128 px is the scorer's smallest side), CLIP images of 32x32,
#: 4 DDPM steps.
TINY_CONFIG = VideoBoothConfig(num_frames=4, height=128, width=128, clip_image_size=32, image_feature_layers=(1, 2, 3, 4),
                               mapper_hidden_dim=32, steps=4)
TINY_UNET = UNetConfig(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                       up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, attention_heads=2,
                       cross_attention_dim=32, norm_num_groups=4, watermark_block_out_channels=(16, 32, 32))
TINY_TEXT_LENGTH = 32
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,  # noqa: C408
                 max_position_embeddings=TINY_TEXT_LENGTH)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,  # noqa: C408
                   image_size=32, patch_size=8)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,  # noqa: C408
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=64)


def build_tiny_tokenizer(model_max_length: int = TINY_TEXT_LENGTH, placeholder: str = "sdksd"):
    """An offline :class:`~transformers.CLIPTokenizer` (byte-level BPE, ``</w>`` word ends, CLIP's specials last).

    Its vocabulary: every byte (in byte order), alone and as a word end, and whole-word merges for the words of
    :data:`toytokenizers.corpus.TINY_CORPUS` plus ``sdk``/``sd</w>`` so that the placeholder ``sdksd`` is two
    tokens, as a multi-token placeholder (the real CLIP tokenizer also splits it).
    """
    assert placeholder.isascii()
    table = toy_clip.byte_unicode_table()
    return toy_clip.tiny_clip_tokenizer(model_max_length, [table[byte] for byte in range(256)], corpus_words(),
                                        merge_rule="prefix", extra_merges=[("s", "d"), ("sd", "k"), ("s", "d</w>")])


def build_tiny_pipeline(seed: int = 0) -> VideoBoothPipeline:
    """A random-initialised VideoBooth with the real structure at toy sizes (see the module docstring)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **TINY_TEXT))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
        mapper = nets.VideoBoothMapper(TINY_VISION["hidden_size"], TINY_TEXT["hidden_size"],
                                       TINY_CONFIG.mapper_hidden_dim, TINY_CONFIG.num_image_tokens)
        unet = nets.VideoBoothUNet3D(TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
    return VideoBoothPipeline(tokenizer, text_encoder, image_encoder, mapper, unet, vae, TINY_CONFIG)


# ------------------------------------------------------------------------------------------------ the method


@dataclass(frozen=True)
class VideoBoothOptions:
    """The options of the ``videobooth`` method (defaults: upstream's ``sample.py``)."""

    steps: int | None = option(None, "DDPM steps, respaced from 1000 (default 250 as upstream; tiny preset: 4)",
                               minimum=1, maximum=1000)
    guidance: float = option(4.0, "classifier-free guidance scale (upstream: 4.0)", minimum=0.0)
    negative_prompt: str = option("None", "the unconditional prompt (upstream: the literal word None)")
    injection_scale: float = option(
        1.0, "fine visual embeddings: 1 = upstream's attention injection (frame 0's values replaced), 0 = none "
             "(coarse embeddings only), between: values blended", minimum=0.0, maximum=1.0)
    cfg_channels: CfgChannels = option(  # noqa: RUF009  (option() is a dataclasses.field)
        "upstream", "latent channels that get guidance: upstream (0-2, channel 3 conditional, as sample.py) or all")
    exemplar_frames: ExemplarFrames = option(  # noqa: RUF009  (option() is a dataclasses.field)
        "all", "the exemplar branch's frames: all (upstream: the image prompt's latent repeated to every frame, each "
               "frame noised independently at every step) or first (one frame noised once per step, the port's earlier default)")
    base_model: str | None = option(None, f"Stable Diffusion v1.4 folder or hub id, for its unet/ (default "
                                          f"{SD14_REPO} from the HF cache)")
    mapper: Path | None = option(None, f"mapper.pt (default: {VIDEOBOOTH_REPO} from the HF cache)")  # noqa: RUF009
    watermark_module: Path | None = option(  # noqa: RUF009
        None, f"watermark_remove_module.pt, the video UNet (default: {VIDEOBOOTH_REPO} from the HF cache)")
    sd_base: bool = option(True, "load Stable Diffusion 1.4's unet/ under the video UNet first, as upstream; false "
                                 "skips it (only when watermark_remove_module.pt holds every UNet tensor)")
    clip_model: str | None = option(None, f"CLIP ViT-L/14 folder or hub id (default {CLIP_REPO})")
    vae: str | None = option(None, f"VAE folder or hub id (default {VAE_REPO})")


def videobooth_weights(options: VideoBoothOptions, context: MethodContext) -> list[WeightSpec]:
    """CLIP ViT-L/14, the EMA VAE, SD 1.4's UNet, and VideoBooth's two files (none for the tiny preset; with
    ``--random-weights`` only CLIP and the VAE)."""
    if context.preset is not None:
        return []
    specs = [
        WeightSpec(key="clip", model="CLIP ViT-L/14 (tokenizer, text and image encoders)", folder=True,
                   file_names=("clip-vit-large-patch14",), layout=("config.json", "tokenizer_config.json"),
                   hf_repo=CLIP_REPO, hf_files=("*.json", "*.txt", "model.safetensors"), explicit=options.clip_model,
                   option="-o clip_model=FOLDER|HUB_ID"),
        WeightSpec(key="vae", model="Stable Diffusion VAE ft-EMA", folder=True, file_names=("sd-vae-ft-ema",),
                   layout=("config.json",), hf_repo=VAE_REPO,
                   hf_files=("config.json", "diffusion_pytorch_model.safetensors"), explicit=options.vae,
                   option="-o vae=FOLDER|HUB_ID"),
    ]
    if context.random_weights:
        return specs
    if options.sd_base:
        specs.append(WeightSpec(
            key="base", model="Stable Diffusion v1.4 (its UNet: VideoBooth's 2D weights)", folder=True,
            file_names=("stable-diffusion-v1-4",), layout=("unet/config.json",), hf_repo=SD14_REPO,
            hf_files=("unet/config.json", "unet/diffusion_pytorch_model.safetensors"), explicit=options.base_model,
            option="-o base_model=FOLDER|HUB_ID"))
    return specs + [
        WeightSpec(key="mapper", model="VideoBooth mapper (coarse embeddings, injection projections)",
                   file_names=("VideoBooth_models/mapper.pt", "videobooth_mapper.pt"), hf_repo=VIDEOBOOTH_REPO,
                   hf_files=("mapper.pt",), explicit=options.mapper, option="-o mapper=FILE",
                   formats="mapper.pt (torch.load weights_only) or a safetensors of its 'ema' dict"),
        WeightSpec(key="watermark", model="VideoBooth video UNet (watermark_remove_module.pt)",
                   file_names=("VideoBooth_models/watermark_remove_module.pt", "videobooth_watermark_remove_module.pt"),
                   hf_repo=VIDEOBOOTH_REPO, hf_files=("watermark_remove_module.pt",),
                   explicit=options.watermark_module, option="-o watermark_module=FILE",
                   formats="watermark_remove_module.pt (torch.load weights_only) or a safetensors of its 'ema_unet'"),
    ]


def _dtype(context: MethodContext) -> torch.dtype:
    """``auto`` is VideoBooth's own float32 (upstream samples in fp32 with TF32); fp16/bf16 when asked."""
    return torch.float32 if context.dtype == "auto" else resolve_torch_dtype(context.dtype, context.device)


@dataclass
class VideoBoothGenerator:
    """A loaded :class:`VideoBoothPipeline` with the run's sampling settings."""

    pipeline: VideoBoothPipeline
    run_name: str
    settings: dict[str, Any]
    call: dict[str, Any]
    random_weights: bool
    fps: int = 8

    def config(self) -> dict[str, Any]:
        return {**self.settings, **self.call, "random_weights": self.random_weights}

    def generate(self, case: Case, seed: int) -> GenerationOutput:
        if not case.references:
            raise ValueError(f"case {case.case_id}: no reference image")
        image, box = load_image_prompt(case.references[0])
        result = self.pipeline(image, case.prompt, case.entity, seed, box=box, **self.call)
        return GenerationOutput(result.frames, diagnostics={**result.diagnostics, "subject_box": box is not None})


def cost(options: VideoBoothOptions, context: MethodContext) -> MethodCost:
    """The cost per video on FakeTensors (:mod:`costmodel.configs`), as :class:`VideoBoothPipeline` runs: CLIP's
    vision tower + the mapper on the image prompt, CLIP's text tower on the prompt and the unconditional prompt, one
    VAE encode of the image prompt, per DDPM step the UNet on the conditional pass (with the exemplar branch) and on
    the unconditional one (batch 1 each), and the VAE decode in chunks of 8 frames; fp32 (upstream) unless
    ``--dtype`` says otherwise. The tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context, auto="float32"))
    if tiny:
        pipeline = build_tiny_pipeline()
        text, vision, mapper, unet, vae = (builder.adopt(module) for module in pipeline.modules())
        config = pipeline.config
    else:
        config = VideoBoothConfig()
        text = builder.build(lambda: CLIPTextModel(CLIPTextConfig(**cm.CLIP_L_TEXT)))
        vision = builder.build(lambda: CLIPVisionModel(CLIPVisionConfig(**cm.CLIP_L_VISION)))
        mapper = builder.build(lambda: nets.VideoBoothMapper(cm.CLIP_L_VISION["hidden_size"],
                                                             cm.CLIP_L_TEXT["hidden_size"], config.mapper_hidden_dim,
                                                             config.num_image_tokens))
        unet = builder.build(lambda: nets.VideoBoothUNet3D(UNetConfig()))
        vae = builder.build(lambda: AutoencoderKL(**{**cm.SD_VAE, "sample_size": config.height}))  # sd-vae-ft-ema
    dtype, steps = builder.dtype, int(options.steps or config.steps)
    if tiny:
        steps = min(steps, TINY_CONFIG.steps)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    grid = (config.height // factor, config.width // factor)
    length, width = text.config.max_position_embeddings, text.config.hidden_size
    channels = unet.config.in_channels

    def image_prompt() -> torch.Tensor:
        size = config.clip_image_size
        output = vision(torch.randn(1, 3, size, size, dtype=dtype), output_hidden_states=True)
        return mapper([output.last_hidden_state] + [output.hidden_states[i] for i in config.image_feature_layers])

    def conditional_step() -> torch.Tensor:
        latents = torch.randn(1, channels, config.num_frames, *grid, dtype=dtype)
        frames = config.num_frames if options.exemplar_frames == "all" else 1
        exemplar = torch.randn(1, channels, frames, *grid, dtype=dtype)
        states = torch.randn(1, length, width, dtype=dtype)
        if options.injection_scale == 0:
            return unet(latents, torch.tensor(500), states)
        return unet(latents, torch.tensor(500), states, exemplar, torch.tensor(500), states, options.injection_scale)

    def unconditional_step() -> torch.Tensor:
        return unet(torch.randn(1, channels, config.num_frames, *grid, dtype=dtype), torch.tensor(500),
                    torch.randn(1, length, width, dtype=dtype))

    calls = len(make_scheduler(config, steps).timesteps)
    chunks = -(-config.num_frames // 8)
    builder.add("image prompt (CLIP vision + mapper)", image_prompt, 1, f"{config.clip_image_size} px")
    builder.add("text encoder", cm.text_call(text, length), 2, f"{length} tokens; prompt and unconditional prompt")
    builder.add("VAE encode (image prompt)", cm.vae_encode_call(vae, (1, 3, config.height, config.width)), 1,
                f"{config.height}x{config.width}")
    builder.add("UNet step, conditional + exemplar branch", conditional_step, calls,
                f"batch 1, {config.num_frames}x{grid[0]}x{grid[1]} latents")
    builder.add("UNet step, unconditional", unconditional_step, calls, "batch 1")
    builder.add("VAE decode (8 frames)", cm.vae_decode_call(vae, (min(8, config.num_frames), vae.config.latent_channels,
                                                                  *grid)), chunks, f"{chunks} chunk(s) of 8 frames")
    stage = builder.cost("VideoBooth" + (" (tiny)" if tiny else ""),
                         notes=f"{steps} DDPM steps, guidance {options.guidance}, {config.num_frames}x{config.height}x"
                               f"{config.width} (native), {cm.dtype_name(dtype)}")
    return MethodCost("videobooth", [stage], setting={"preset": context.preset, "steps": steps,
                                                      "guidance": options.guidance, "dtype": cm.dtype_name(dtype)})


@register_method(
    "videobooth",
    description="VideoBooth (CVPR 2024): SD-1.4 video UNet with image-prompt coarse (mapper) and fine (attention "
                "injection) embeddings; native 16 frames of 256x256 at 8 fps (the suite's size is not applied)",
    kind="video-model", options=VideoBoothOptions, paper_row="VideoBooth", weights=videobooth_weights,
    presets=("tiny",), cost=cost,
)
def build_videobooth(options: VideoBoothOptions, context: MethodContext) -> VideoBoothGenerator:
    """Build the VideoBooth generator (the harness resolved the weights before this call)."""
    dtype = _dtype(context)
    report = None
    if context.preset == "tiny":
        pipeline, models, random = build_tiny_pipeline(), {"model": "tiny"}, True
    else:
        paths = {key: context.weight_path(key) for key in ("clip", "vae", "base", "mapper", "watermark")}
        random = context.random_weights
        if not random and (paths["mapper"] is None or paths["watermark"] is None):
            raise RuntimeError("VideoBooth's files were not resolved (the harness resolves them before building)")
        pipeline, report = load_pipeline(paths["clip"], paths["vae"], paths["base"], paths["watermark"],
                                         paths["mapper"])
        models = {key: str(path) if path else None for key, path in paths.items()}
    pipeline.to(context.device, dtype)
    config = pipeline.config
    call = {"steps": int(options.steps or config.steps), "guidance": options.guidance,
            "negative_prompt": options.negative_prompt, "injection_scale": options.injection_scale,
            "cfg_channels": options.cfg_channels, "exemplar_frames": options.exemplar_frames}
    settings = {
        "method": "videobooth", "preset": context.preset, **models, "dtype": str(dtype).removeprefix("torch."),
        "native_size": True, "num_frames": config.num_frames, "height": config.height, "width": config.width,
        "fps": config.fps,
        "suite_geometry_not_applied": {"num_frames": context.num_frames, "height": context.height,
                                       "width": context.width, "fps": context.fps},
        "sampler": f"DDPM ancestral (ADM), linear betas {config.beta_start}..{config.beta_end}, fixed-large "
                   f"variance, {config.num_train_timesteps} steps respaced",
        "placeholder": config.placeholder, "image_prompt": "first reference; alpha box if any, else whole image; "
                                                           "padded to a square with white",
    }
    if report is not None:
        settings["ignored_watermark_module_keys"] = len(report.ignored_video_keys)
    run_name = "videobooth" + ("-" + context.preset if context.preset else "-random" if random else "")
    return VideoBoothGenerator(pipeline=pipeline, run_name=run_name, settings=settings, call=call,
                               random_weights=random, fps=config.fps)
