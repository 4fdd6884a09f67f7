"""``ip-adapter+i2v``: IP-Adapter (Ye et al., 2023, arXiv:2308.06721), then CogVideoX-5B-I2V (Table 1, "IP-Adapter").

Stage 1 is the official IP-Adapter checkpoints of ``h94/IP-Adapter`` run through diffusers' own integration
(:meth:`diffusers.loaders.IPAdapterMixin.load_ip_adapter`, ``set_ip_adapter_scale`` and the ``ip_adapter_image``
argument of ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``). The sampling follows the upstream demos
of tencent-ailab/IP-Adapter (``ip_adapter_multimodal_prompts_demo.ipynb``, ``ip_adapter/ip_adapter.py``
``IPAdapter.generate``): text + image prompt, the prompt prefixed with ``"best quality, high quality, "``, the
negative prompt ``"monochrome, lowres, bad anatomy, worst quality, low quality"``, DDIM for SD 1.5.

Variants (``-o variant=``), all from ``h94/IP-Adapter``:

============= ================================================ ====================================== =========
variant       adapter                                          image encoder                          base model
============= ================================================ ====================================== =========
``sd15``      ``models/ip-adapter_sd15``                       ``models/image_encoder`` (ViT-H/14)    SD 1.5
``sd15-plus`` ``models/ip-adapter-plus_sd15`` (Resampler)      ``models/image_encoder`` (ViT-H/14)    SD 1.5
``sdxl``      ``sdxl_models/ip-adapter_sdxl``                  ``sdxl_models/image_encoder`` (bigG)   SDXL 1.0
``sdxl-plus`` ``sdxl_models/ip-adapter-plus_sdxl_vit-h``       ``models/image_encoder`` (ViT-H/14)    SDXL 1.0
============= ================================================ ====================================== =========

(each adapter as ``.safetensors`` or the original ``.bin``). The paper does not say which variant it ran; the
default is ``sd15``, IP-Adapter's main release. The checkpoint is checked against the UNet and the image encoder
before diffusers loads it, so a wrong or incomplete file fails with one message naming it
(:func:`check_adapter_checkpoint`).

Reference images: IP-Adapter is conditioned on one image (4 tokens; 16 for Plus). ``-o references=first``
(default) uses the case's first reference, as the upstream demos do; ``all`` hands diffusers 0.42 the list of
references for the one adapter, which CONCATENATES their tokens (``MultiIPAdapterImageProjection`` keeps a
``num_images`` axis and the IP attention attends over all ``num_images x tokens`` keys at once: no averaging);
``mean`` averages the image-encoder outputs of all references into one image prompt (as third-party
multi-image ports do).

The ``tiny`` preset builds a random SD-1.5- or SDXL-shaped pipeline (64x64 images) and a random adapter in the
official key layout, writes the adapter to a temporary ``.safetensors`` file and loads it through the same
:func:`load_adapter` as the real weights.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from baselines.two_stage import TinyPresetModel, TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from toytokenizers import clip as toy_clip
from videobench.methods import MethodContext, gpu_dtype, inference_mode, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightsLoadError, WeightSpec, describe_load_error

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")

logger = logging.getLogger(__name__)

IP_ADAPTER_REPO = "h94/IP-Adapter"
#: The folder name of a local copy of ``h94/IP-Adapter`` in the weights folder.
IP_ADAPTER_FOLDER_NAME = "IP-Adapter"
BASE_KEY, ADAPTER_KEY, ENCODER_KEY, VAE_KEY = "base", "ip_adapter", "image_encoder", "vae"

#: ``IPAdapter.generate`` of tencent-ailab/IP-Adapter (``ip_adapter/ip_adapter.py``).
UPSTREAM_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
#: The multimodal-prompt demos prefix the text prompt with this (``"best quality, high quality, wearing a hat ..."``).
UPSTREAM_PROMPT_PREFIX = "best quality, high quality, "

#: Folders of the base models (diffusers layout) and the files a ``--download`` fetches from them.
BASE_MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
               "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
_SD_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
_SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler")
_HF_COMPONENT_FILES = {
    "text_encoder": ("config.json", "model.safetensors"),
    "text_encoder_2": ("config.json", "model.safetensors"),
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "tokenizer": ("*",), "tokenizer_2": ("*",), "scheduler": ("*",),
}
ENCODER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

#: The Resampler depth of IP-Adapter Plus (``ip_adapter.py`` ``IPAdapterPlus.init_proj``); diffusers fixes it too.
PLUS_DEPTH = 4
#: The Resampler's head size and feed-forward ratio (upstream ``Resampler(dim_head=64, ff_mult=4)``).
PLUS_HEAD_DIM, PLUS_FF_MULT = 64, 4
#: Image tokens of the plain adapter (``ImageProjModel(clip_extra_context_tokens=4)``).
PLAIN_TOKENS = 4


@dataclass(frozen=True)
class Variant:
    """One published IP-Adapter checkpoint and the upstream demo's sampling settings for it."""

    name: str
    family: Literal["sd15", "sdxl"]
    adapter: str  # path in h94/IP-Adapter without the extension
    image_encoder: str  # folder in h94/IP-Adapter
    encoder_name: str
    plus: bool
    scale: float
    steps: int
    guidance: float
    size: int
    scheduler: Literal["ddim", "base"]

    @property
    def adapter_files(self) -> tuple[str, str]:
        return f"{self.adapter}.safetensors", f"{self.adapter}.bin"


_VIT_H = "OpenCLIP ViT-H/14"
_VIT_BIGG = "OpenCLIP ViT-bigG/14"
# Scale: README "Best Practice": "For multimodal prompts [image + text, as every case here] ... In most cases,
# setting scale=0.5 can get good results" (``generate()``'s own default, 1.0, is for the image prompt alone).
# Steps and guidance, SD 1.5: ``ip_adapter/ip_adapter.py`` ``IPAdapter.generate(num_inference_steps=30,
# guidance_scale=7.5)`` with the demos' DDIM scheduler. SDXL: ``IPAdapterXL.generate(num_inference_steps=30)`` and
# the pipeline's own scheduler and guidance (5.0), as ip_adapter_sdxl_demo. The SD 1.5 setting used before (scale
# 0.6, 50 steps) stays reachable with ``-o scale=0.6 -o steps=50``.
VARIANTS: dict[str, Variant] = {
    "sd15": Variant("sd15", "sd15", "models/ip-adapter_sd15", "models/image_encoder", _VIT_H, False,
                    0.5, 30, 7.5, 512, "ddim"),
    "sd15-plus": Variant("sd15-plus", "sd15", "models/ip-adapter-plus_sd15", "models/image_encoder", _VIT_H, True,
                         0.5, 30, 7.5, 512, "ddim"),
    "sdxl": Variant("sdxl", "sdxl", "sdxl_models/ip-adapter_sdxl", "sdxl_models/image_encoder", _VIT_BIGG, False,
                    0.5, 30, 5.0, 1024, "base"),
    "sdxl-plus": Variant("sdxl-plus", "sdxl", "sdxl_models/ip-adapter-plus_sdxl_vit-h", "models/image_encoder", _VIT_H,
                         True, 0.5, 30, 5.0, 1024, "base"),
}


@dataclass(frozen=True)
class IPAdapterOptions(TwoStageOptions):
    """Options of ``ip-adapter+i2v``. Settings left unset take the variant's upstream value when parsed, so that
    run.json records the values actually used."""

    variant: Literal["sd15", "sd15-plus", "sdxl", "sdxl-plus"] = option(
        "sd15", "IP-Adapter checkpoint: sd15, sd15-plus (Resampler), sdxl (ViT-bigG), sdxl-plus (ViT-H)")
    base_model: str | None = option(
        None, "base model, a diffusers folder or hub id (default stable-diffusion-v1-5/stable-diffusion-v1-5 for "
              "sd15*, stabilityai/stable-diffusion-xl-base-1.0 for sdxl*)")
    ip_adapter_dir: str | None = option(
        None, "a folder laid out like h94/IP-Adapter (models/..., sdxl_models/...) holding the adapter and encoder")
    adapter: str | None = option(None, "the adapter checkpoint file (.safetensors or .bin); overrides ip_adapter_dir")
    image_encoder: str | None = option(
        None, "the image encoder folder (config.json + model.safetensors); overrides ip_adapter_dir")
    vae: str | None = option(
        None, "a diffusers AutoencoderKL folder or hub id replacing the base model's VAE "
              "(the upstream SD 1.5 demos use stabilityai/sd-vae-ft-mse)")
    scale: float | None = option(
        None, "IP-Adapter scale (default 0.5: upstream README's advice for multimodal prompts)", minimum=0.0)
    steps: int | None = option(None, "stage-1 denoising steps (default 30: upstream generate())", minimum=1)
    guidance: float | None = option(
        None, "stage-1 classifier-free guidance (default: 7.5 for SD 1.5, 5.0 for SDXL)", minimum=0.0)
    height: int | None = option(None, "stage-1 image height, a multiple of 8 (default 512 / 1024)", minimum=8)
    width: int | None = option(None, "stage-1 image width, a multiple of 8 (default 512 / 1024)", minimum=8)
    scheduler: Literal["ddim", "base"] | None = option(
        None, "ddim (the upstream demos' DDIM) or base (the base model's scheduler); default ddim SD 1.5, base SDXL")
    negative_prompt: str = option(UPSTREAM_NEGATIVE_PROMPT, "stage-1 negative prompt (upstream default)")
    prompt_prefix: str = option(UPSTREAM_PROMPT_PREFIX, "text put before the case prompt (upstream demos)")
    text_prompt: bool = option(
        True, "pass the case prompt with the image prompt (false: image prompt only, with the prefix as text)")
    references: Literal["first", "all", "mean"] = option(
        "first", "which references condition: first, all (tokens concatenated), mean (averaged embeddings)")

    def __post_init__(self) -> None:
        variant = VARIANTS[self.variant]
        defaults = {"scale": variant.scale, "steps": variant.steps, "guidance": variant.guidance,
                    "height": variant.size, "width": variant.size, "scheduler": variant.scheduler}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("height", "width"):
            if getattr(self, name) % 8:
                raise ValueError(f"option {name}={getattr(self, name)}: must be a multiple of 8")


# ------------------------------------------------------------------------------------------------ weights


def _base_components(family: str) -> tuple[str, ...]:
    return _SDXL_COMPONENTS if family == "sdxl" else _SD_COMPONENTS


def base_weight_spec(options: IPAdapterOptions) -> WeightSpec:
    """The base text-to-image model: a diffusers folder (SD 1.5 or SDXL 1.0)."""
    family = VARIANTS[options.variant].family
    repo = BASE_MODELS[family]
    components = _base_components(family)
    patterns = ("model_index.json",) + tuple(f"{c}/{f}" for c in components for f in _HF_COMPONENT_FILES[c])
    return WeightSpec(
        key=BASE_KEY, model=f"{'Stable Diffusion XL 1.0' if family == 'sdxl' else 'Stable Diffusion 1.5'} (diffusers)",
        folder=True, file_names=(repo.split("/")[-1],), layout=("model_index.json",) + tuple(f"{c}/" for c in components),
        hf_repo=repo, hf_files=patterns, explicit=options.base_model, option="-o base_model=FOLDER|HUB_ID",
    )


def adapter_weight_spec(options: IPAdapterOptions) -> WeightSpec:
    """The adapter checkpoint, ``.safetensors`` (flat ``image_proj.*`` / ``ip_adapter.*``) or the original ``.bin``."""
    variant = VARIANTS[options.variant]
    files = variant.adapter_files
    explicit = options.adapter
    if explicit is None and options.ip_adapter_dir:
        folder = Path(options.ip_adapter_dir).expanduser()
        explicit = str(next((folder / f for f in files if (folder / f).is_file()), folder / files[0]))
    names = tuple(f"{IP_ADAPTER_FOLDER_NAME}/{f}" for f in files) + tuple(Path(f).name for f in files)
    return WeightSpec(
        key=ADAPTER_KEY, model=f"IP-Adapter {variant.name} ({Path(variant.adapter).name})", file_names=names,
        hf_repo=IP_ADAPTER_REPO, hf_files=files, explicit=explicit,
        option="-o adapter=FILE or -o ip_adapter_dir=FOLDER",
        formats="safetensors, or the official .bin read with torch.load(weights_only=True)",
    )


def image_encoder_weight_spec(options: IPAdapterOptions) -> WeightSpec:
    """The CLIP image encoder (transformers ``CLIPVisionModelWithProjection`` folder).

    Without ``-o image_encoder`` the spec resolves to the ROOT of an ``h94/IP-Adapter`` copy (the weights folder's
    ``IP-Adapter/``, ``-o ip_adapter_dir`` or the HF cache) and its layout names the encoder's ``config.json``
    inside it, so a copy without the encoder is reported missing before anything loads.
    """
    variant = VARIANTS[options.variant]
    model = f"IP-Adapter image encoder ({variant.encoder_name}, {IP_ADAPTER_REPO} {variant.image_encoder})"
    if options.image_encoder:
        return WeightSpec(key=ENCODER_KEY, model=model, folder=True, layout=("config.json",),
                          explicit=options.image_encoder, option="-o image_encoder=FOLDER")
    return WeightSpec(
        key=ENCODER_KEY, model=model, folder=True, file_names=(IP_ADAPTER_FOLDER_NAME,),
        layout=(f"{variant.image_encoder}/config.json",), hf_repo=IP_ADAPTER_REPO,
        hf_files=(f"{variant.image_encoder}/config.json", f"{variant.image_encoder}/model.safetensors"),
        explicit=options.ip_adapter_dir, option="-o ip_adapter_dir=FOLDER or -o image_encoder=FOLDER",
    )


def vae_weight_spec(options: IPAdapterOptions) -> WeightSpec:
    return WeightSpec(key=VAE_KEY, model="VAE replacing the base model's (diffusers AutoencoderKL)", folder=True,
                      layout=("config.json",), hf_files=("config.json", "diffusion_pytorch_model.safetensors"),
                      explicit=options.vae, option="-o vae=FOLDER|HUB_ID")


def ip_adapter_weights(options: IPAdapterOptions, context: MethodContext) -> list[WeightSpec]:
    """Stage 1's files: base model, adapter, image encoder (and the replacement VAE when ``-o vae`` is set)."""
    specs = [base_weight_spec(options), adapter_weight_spec(options), image_encoder_weight_spec(options)]
    return specs + ([vae_weight_spec(options)] if options.vae else [])


def image_encoder_folder(options: IPAdapterOptions, resolved: Path) -> Path:
    """The encoder folder itself from the resolved spec path (the h94 root unless ``-o image_encoder``)."""
    return resolved if options.image_encoder else resolved / VARIANTS[options.variant].image_encoder


# ------------------------------------------------------------------------------------- checkpoint layout


def cross_attention_layers(unet) -> list[tuple[int, str, tuple[int, int]]]:
    """``(index, processor name, (hidden size, cross-attention dim))`` of every cross-attention of ``unet``.

    ``index`` is the processor's position in ``unet.attn_processors``: upstream trains the adapter as
    ``torch.nn.ModuleList(unet.attn_processors.values())``, so its keys are ``{index}.to_k_ip.weight`` for the
    cross-attentions (``attn2``; self-attentions hold no weights), i.e. 1, 3, 5, ... in a Stable Diffusion UNet.
    The attentions inside a loaded Plus adapter's Resampler (``encoder_hid_proj.*``) are not UNet layers.
    """
    names = [name for name in unet.attn_processors if not name.startswith("encoder_hid_proj.")]
    layers = []
    for index, name in enumerate(names):
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden, cross = attention.to_k.weight.shape
        layers.append((index, name, (int(hidden), int(cross))))
    return layers


def expected_adapter_shapes(
    unet, image_embed_dim: int, image_hidden_dim: int, plus: bool, *, queries: int = 16, dim: int = 768,
    inner: int = 768,
) -> dict[str, dict[str, tuple[int, ...]]]:
    """The official key layout of an IP-Adapter checkpoint for ``unet`` and an image encoder, with shapes.

    ``image_proj`` follows ``ImageProjModel`` (plain: ``proj`` to ``4 x cross_attention_dim``, ``norm``) or the
    ``Resampler`` (plus: ``latents (1, queries, dim)``, ``proj_in``, ``proj_out``, ``norm_out`` and
    :data:`PLUS_DEPTH` layers of ``PerceiverAttention`` (``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``,
    no biases, ``inner`` = heads x 64) and ``FeedForward`` (``LayerNorm``, ``Linear``, GELU, ``Linear``)) of
    tencent-ailab/IP-Adapter ``ip_adapter/ip_adapter.py`` and ``resampler.py``. ``ip_adapter`` holds
    ``to_k_ip`` / ``to_v_ip`` (``hidden x cross_attention_dim``) per cross-attention.
    """
    cross = int(unet.config.cross_attention_dim)
    ip_adapter: dict[str, tuple[int, ...]] = {}
    for index, _, (hidden, cross_dim) in cross_attention_layers(unet):
        ip_adapter[f"{index}.to_k_ip.weight"] = (hidden, cross_dim)
        ip_adapter[f"{index}.to_v_ip.weight"] = (hidden, cross_dim)
    if not plus:
        image_proj = {"proj.weight": (PLAIN_TOKENS * cross, image_embed_dim), "proj.bias": (PLAIN_TOKENS * cross,),
                      "norm.weight": (cross,), "norm.bias": (cross,)}
        return {"image_proj": image_proj, "ip_adapter": ip_adapter}
    ff = PLUS_FF_MULT * dim
    image_proj = {"latents": (1, queries, dim), "proj_in.weight": (dim, image_hidden_dim), "proj_in.bias": (dim,),
                  "proj_out.weight": (cross, dim), "proj_out.bias": (cross,), "norm_out.weight": (cross,),
                  "norm_out.bias": (cross,)}
    for layer in range(PLUS_DEPTH):
        attn, mlp = f"layers.{layer}.0.", f"layers.{layer}.1."
        image_proj.update({
            attn + "norm1.weight": (dim,), attn + "norm1.bias": (dim,),
            attn + "norm2.weight": (dim,), attn + "norm2.bias": (dim,),
            attn + "to_q.weight": (inner, dim), attn + "to_kv.weight": (2 * inner, dim), attn + "to_out.weight": (dim, inner),
            mlp + "0.weight": (dim,), mlp + "0.bias": (dim,), mlp + "1.weight": (ff, dim), mlp + "3.weight": (dim, ff),
        })
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def read_adapter_shapes(path: str | Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{"image_proj": {key: shape}, "ip_adapter": {key: shape}}`` of an adapter file, without loading the tensors
    of a ``.safetensors`` (header only); a ``.bin`` is read with ``torch.load(weights_only=True, mmap=True)``.

    Raises:
        WeightsLoadError: naming ``path``, when it is unreadable or not in the official layout.
    """
    path = Path(path)
    groups: dict[str, dict[str, tuple[int, ...]]] = {"image_proj": {}, "ip_adapter": {}}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    group, _, name = key.partition(".")
                    if group not in groups or not name:
                        raise WeightsLoadError(f"{path}: unexpected key {key!r}: an IP-Adapter .safetensors holds "
                                               "only image_proj.* and ip_adapter.* tensors")
                    groups[group][name] = tuple(handle.get_slice(key).get_shape())
        else:
            try:
                checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
                checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(checkpoint, Mapping) or not {"image_proj", "ip_adapter"} <= set(checkpoint):
                found = ", ".join(map(str, list(checkpoint)[:4])) if isinstance(checkpoint, Mapping) else type(
                    checkpoint).__name__
                raise WeightsLoadError(
                    f"{path}: not an IP-Adapter checkpoint: expected {{'image_proj': {{...}}, 'ip_adapter': {{...}}}}, "
                    f"found {found} (a training checkpoint converts with the recipe in tencent-ailab/IP-Adapter's "
                    "README: keys 'image_proj_model.*' -> image_proj, 'adapter_modules.*' -> ip_adapter)")
            for group, shapes in groups.items():
                for key, value in checkpoint[group].items():
                    if not isinstance(value, torch.Tensor):
                        raise WeightsLoadError(f"{path}: {group}.{key} is not a tensor")
                    shapes[key] = tuple(value.shape)
    except WeightsLoadError:
        raise
    except Exception as error:
        raise WeightsLoadError(f"{path}: cannot read an IP-Adapter checkpoint with safetensors / "
                               f"torch.load(weights_only=True) ({describe_load_error(error)})") from error
    return groups


def _plus_sizes(image_proj: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Resampler sizes read from a Plus checkpoint (queries, width, attention width), as diffusers infers them."""
    latents = image_proj.get("latents", (1, 16, 768))
    inner = image_proj.get("layers.0.0.to_q.weight", (768,))[0]
    return {"queries": int(latents[1]), "dim": int(latents[-1]), "inner": int(inner)}


def check_adapter_checkpoint(path: str | Path, unet, image_encoder_config, plus: bool) -> None:
    """Check that the adapter file at ``path`` fits ``unet`` and the image encoder, key by key and shape by shape.

    diffusers' loader infers the projection's sizes from the file and (with ``low_cpu_mem_usage``) leaves missing
    tensors uninitialised; this check makes every mismatch one :class:`WeightsLoadError` naming the file.
    """
    path = Path(path)
    found = read_adapter_shapes(path)
    file_plus = "latents" in found["image_proj"]
    if "proj.weight" in found["image_proj"] and plus:
        raise WeightsLoadError(f"{path}: a plain IP-Adapter checkpoint (image_proj.proj), but the variant expects "
                               "IP-Adapter Plus (a Resampler): choose -o variant=sd15 or sdxl")
    if file_plus and not plus:
        raise WeightsLoadError(f"{path}: an IP-Adapter Plus checkpoint (image_proj.latents), but the variant expects "
                               "the plain adapter: choose -o variant=sd15-plus or sdxl-plus")
    expected = expected_adapter_shapes(
        unet, int(image_encoder_config.projection_dim), int(image_encoder_config.hidden_size), plus,
        **(_plus_sizes(found["image_proj"]) if plus else {}))
    problems = []
    for group in ("image_proj", "ip_adapter"):
        missing = sorted(set(expected[group]) - set(found[group]))
        unexpected = sorted(set(found[group]) - set(expected[group]))
        wrong = [f"{group}.{key} {found[group][key]} (expected {shape})" for key, shape in expected[group].items()
                 if key in found[group] and tuple(found[group][key]) != shape]
        if missing:
            problems.append(f"{len(missing)} missing {group} key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected {group} key(s) (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:3])}")
    if plus and expected["image_proj"]["layers.0.0.to_q.weight"][0] % PLUS_HEAD_DIM:
        problems.append(f"Resampler attention width {expected['image_proj']['layers.0.0.to_q.weight'][0]} is not a "
                        f"multiple of the head size {PLUS_HEAD_DIM}")
    if problems:
        raise WeightsLoadError(
            f"{path}: does not fit this UNet ({len(expected['ip_adapter']) // 2} cross-attention layers, "
            f"cross_attention_dim {unet.config.cross_attention_dim}) and image encoder (projection "
            f"{image_encoder_config.projection_dim}, hidden {image_encoder_config.hidden_size}): " + "; ".join(problems))


def load_adapter(pipe, path: str | Path, plus: bool) -> None:
    """Load the adapter file into ``pipe`` with diffusers' ``load_ip_adapter`` (from its folder, offline).

    The pipeline already holds its image encoder and feature extractor (``image_encoder_folder=None``: diffusers
    must not look for one next to the adapter or on the hub). ``low_cpu_mem_usage=False`` makes diffusers'
    own loads strict (``load_state_dict(strict=True)``) after :func:`check_adapter_checkpoint`.
    """
    path = Path(path)
    if getattr(pipe, "image_encoder", None) is None:
        raise RuntimeError("load_adapter: the pipeline has no image encoder (load it before the adapter)")
    check_adapter_checkpoint(path, pipe.unet, pipe.image_encoder.config, plus)
    try:
        pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None,
                             local_files_only=True, low_cpu_mem_usage=False)
    except Exception as error:
        raise WeightsLoadError(f"{path}: diffusers' load_ip_adapter failed ({describe_load_error(error)})") from error


def save_adapter(state_dict: Mapping[str, Mapping[str, torch.Tensor]], path: str | Path) -> Path:
    """Write an adapter in the official format: flat ``image_proj.*`` / ``ip_adapter.*`` for ``.safetensors``,
    the nested ``{"image_proj": {...}, "ip_adapter": {...}}`` of ``torch.save`` otherwise (README's recipe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{group}.{key}": value.contiguous() for group in ("image_proj", "ip_adapter")
                for key, value in state_dict[group].items()}
        save_file(flat, str(path))
    else:
        torch.save({group: dict(state_dict[group]) for group in ("image_proj", "ip_adapter")}, str(path))
    return path


# ----------------------------------------------------------------------------------------------- models


def upstream_ddim_scheduler():
    """The DDIM scheduler of the upstream SD 1.5 demos (``ip_adapter_demo.ipynb`` and the multimodal demo)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def clip_image_processor(image_size: int = 224):
    """``CLIPImageProcessor()`` of the upstream code: shortest side to ``image_size`` (bicubic), centre crop,
    OpenAI CLIP mean/std. transformers 5's PIL backend, which resizes as the transformers 4 processor did."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def load_image_encoder(folder: Path, dtype: torch.dtype):
    """The ``CLIPVisionModelWithProjection`` of ``folder`` (local files only)."""
    from transformers import CLIPVisionModelWithProjection

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ENCODER_WEIGHT_FILES):
        raise WeightsLoadError(f"{folder}: no image encoder weights ({' or '.join(ENCODER_WEIGHT_FILES)})")
    try:
        return CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=dtype, local_files_only=True).eval()
    except Exception as error:
        raise WeightsLoadError(f"{folder}: cannot load the image encoder ({describe_load_error(error)})") from error


def _required(context: MethodContext, key: str) -> Path:
    path = context.weight_path(key)
    if path is None:
        raise RuntimeError(f"ip-adapter: weight {key!r} was not resolved (the harness resolves it before building)")
    return path


def load_pipeline(options: IPAdapterOptions, context: MethodContext, dtype: torch.dtype):
    """The base pipeline from its diffusers folder with the image encoder, the upstream scheduler and the adapter."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline

    variant = VARIANTS[options.variant]
    encoder = load_image_encoder(image_encoder_folder(options, _required(context, ENCODER_KEY)), dtype)
    kwargs: dict[str, Any] = {"image_encoder": encoder, "feature_extractor": clip_image_processor(
        encoder.config.image_size), "dtype": dtype, "local_files_only": True}
    if options.vae:
        kwargs["vae"] = AutoencoderKL.from_pretrained(str(_required(context, VAE_KEY)), dtype=dtype,
                                                      local_files_only=True)
    if variant.family == "sdxl":
        pipeline_class = StableDiffusionXLPipeline
        kwargs["add_watermarker"] = False  # as the upstream SDXL demos
    else:
        pipeline_class = StableDiffusionPipeline
        kwargs.update(safety_checker=None, requires_safety_checker=False)  # as the upstream SD 1.5 demos
    base = _required(context, BASE_KEY)
    try:
        pipe = pipeline_class.from_pretrained(str(base), **kwargs)
    except Exception as error:
        raise WeightsLoadError(f"{base}: cannot load the {variant.family} base model ({describe_load_error(error)})"
                               ) from error
    if options.scheduler == "ddim":
        pipe.scheduler = upstream_ddim_scheduler()
    load_adapter(pipe, _required(context, ADAPTER_KEY), variant.plus)
    return pipe


# -------------------------------------------------------------------------------------------- tiny preset

TINY_SIZE = 64
TINY_STEPS = 4
TINY_TEXT_LENGTH = 77
#: A tiny CLIP vision tower: 32x32 inputs, 4 patches a side.
TINY_ENCODER: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                                "num_hidden_layers": 2, "image_size": 32, "patch_size": 8, "projection_dim": 24}
TINY_TEXT: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                             "num_hidden_layers": 2, "max_position_embeddings": TINY_TEXT_LENGTH}
#: Attention only at the lower UNet level (cheap on CPU); the SDXL-shaped UNet has two transformer layers there.
TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "sample_size": TINY_SIZE // 4, "in_channels": 4,
    "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (16, 32, 32), "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1, "norm_num_groups": 8, "sample_size": TINY_SIZE,
}
#: The tiny Plus adapter's Resampler: 8 queries of width 32, one 64-wide head.
TINY_PLUS: dict[str, int] = {"queries": 8, "dim": 32, "inner": PLUS_HEAD_DIM}


def build_tiny_clip_tokenizer(model_max_length: int = TINY_TEXT_LENGTH):
    """An offline ``CLIPTokenizer`` over the 256 byte-level symbols (alone and word-final), without merges.

    CLIP's normaliser, pre-tokeniser, ``</w>`` word ends and ``<|startoftext|>`` / ``<|endoftext|>`` framing (ids 0
    and 1), so any text tokenises (one token per byte) with ids that are the same on every machine.
    """
    return toy_clip.tiny_clip_tokenizer(model_max_length, sorted(toy_clip.byte_unicode_table().values()),
                                        specials_first=True)


def build_tiny_pipeline(family: str = "sd15", seed: int = 0):
    """A random SD-1.5-shaped (``sd15``) or SDXL-shaped (``sdxl``: two text encoders, ``text_time`` conditioning)
    pipeline at toy size, with a tiny ``CLIPVisionModelWithProjection`` and its processor; no adapter yet."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = build_tiny_clip_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                 projection_dim=32, **TINY_TEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ENCODER)).eval()
        vae = AutoencoderKL(**TINY_VAE).eval()
        text_encoder = CLIPTextModel(text_config).eval()
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(text_config).eval()
            unet = UNet2DConditionModel(
                **TINY_UNET, cross_attention_dim=2 * TINY_TEXT["hidden_size"], attention_head_dim=(4, 8),
                transformer_layers_per_block=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
            ).eval()
        else:
            unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=TINY_TEXT["hidden_size"],
                                        attention_head_dim=8).eval()
    common: dict[str, Any] = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
                              "scheduler": upstream_ddim_scheduler(), "image_encoder": image_encoder,
                              "feature_extractor": clip_image_processor(TINY_ENCODER["image_size"])}
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler

        common["scheduler"] = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                     beta_schedule="scaled_linear", steps_offset=1)
        return StableDiffusionXLPipeline(text_encoder_2=text_encoder_2, tokenizer_2=build_tiny_clip_tokenizer(),
                                         add_watermarker=False, **common)
    return StableDiffusionPipeline(safety_checker=None, requires_safety_checker=False, **common)


def random_adapter_state_dict(unet, image_encoder_config, plus: bool, seed: int = 0, std: float = 1.0,
                              ) -> dict[str, dict[str, torch.Tensor]]:
    """A random adapter for ``unet`` in the official nested layout (LayerNorm gains 1 + N(0, std), the rest
    N(0, std); a large ``std`` so that the tiny image encoder's small differences between images show)."""
    shapes = expected_adapter_shapes(unet, int(image_encoder_config.projection_dim),
                                     int(image_encoder_config.hidden_size), plus, **(TINY_PLUS if plus else {}))
    generator = torch.Generator("cpu").manual_seed(seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group, keys in shapes.items():
        out[group] = {}
        for key, shape in keys.items():
            tensor = torch.randn(shape, generator=generator) * std
            if ("norm" in key and key.endswith("weight")) or key.endswith(".1.0.weight"):  # LayerNorm gains
                tensor = tensor + 1.0
            out[group][key] = tensor
    return out


def build_tiny_ip_adapter_pipeline(variant: str = "sd15", seed: int = 0):
    """The tiny preset: :func:`build_tiny_pipeline` with a random adapter loaded through :func:`load_adapter`."""
    spec = VARIANTS[variant]
    pipe = build_tiny_pipeline(spec.family, seed)
    state = random_adapter_state_dict(pipe.unet, pipe.image_encoder.config, spec.plus, seed=seed + 1)
    with tempfile.TemporaryDirectory(prefix="tiny-ip-adapter-") as folder:
        load_adapter(pipe, save_adapter(state, Path(folder) / f"{Path(spec.adapter).name}.safetensors"), spec.plus)
    return pipe


# ------------------------------------------------------------------------------------------- stage 1


def image_prompt(pipe, references: Sequence[Image.Image], mode: str, guidance: float) -> dict[str, Any]:
    """The pipeline's image-prompt arguments for ``references`` (see the module docstring for the modes)."""
    if not references:
        raise ValueError("IP-Adapter needs at least one reference image")
    if mode == "first":
        return {"ip_adapter_image": references[0]}
    if mode == "all":
        return {"ip_adapter_image": [list(references)]}  # one adapter, several images
    if mode == "mean":
        do_cfg = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None  # the pipelines' own rule
        embeds = pipe.prepare_ip_adapter_image_embeds([list(references)], None, pipe._execution_device, 1, do_cfg)
        return {"ip_adapter_image_embeds": [embed.mean(dim=1, keepdim=True) for embed in embeds]}
    raise ValueError(f"references mode {mode!r}: first, all or mean")


class IPAdapterPersonalizer(TinyPresetModel):
    """Stage 1: IP-Adapter on SD 1.5 / SDXL (or the tiny preset), loaded on first use."""

    def __init__(self, options: IPAdapterOptions, context: MethodContext) -> None:
        self.options, self.context = options, context
        self.variant = VARIANTS[options.variant]
        self.tiny = context.preset == "tiny"
        self.dtype = resolve_torch_dtype(context.dtype, context.device)
        self.height, self.width = (TINY_SIZE, TINY_SIZE) if self.tiny else (options.height, options.width)
        self.steps = min(options.steps, TINY_STEPS) if self.tiny else options.steps

    def config(self) -> dict[str, Any]:
        options = self.options
        return {
            "model": "tiny" if self.tiny else f"IP-Adapter {self.variant.name}",
            "base_model": "tiny" if self.tiny else str(options.base_model or BASE_MODELS[self.variant.family]),
            "adapter": Path(self.variant.adapter).name, "image_encoder": self.variant.encoder_name,
            "pipeline": "diffusers." + ("StableDiffusionXLPipeline" if self.variant.family == "sdxl"
                                        else "StableDiffusionPipeline") + ".load_ip_adapter",
            "scale": options.scale, "num_inference_steps": self.steps, "guidance_scale": options.guidance,
            "height": self.height, "width": self.width, "scheduler": options.scheduler, "vae": options.vae,
            "negative_prompt": options.negative_prompt, "prompt_prefix": options.prompt_prefix,
            "text_prompt": options.text_prompt, "references": options.references,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @functools.cached_property
    def pipeline(self):
        """The pipeline, loaded on first use (once per run)."""
        return self._load()

    def _load(self):
        if self.tiny:
            pipe = build_tiny_ip_adapter_pipeline(self.options.variant)
            if self.dtype != torch.float32:
                pipe = pipe.to(dtype=self.dtype)
        else:
            pipe = load_pipeline(self.options, self.context, self.dtype)
        pipe.set_ip_adapter_scale(self.options.scale)
        pipe = pipe.to(self.context.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def text(self, prompt: str) -> str:
        """The text prompt: the prefix and the case prompt, or the prefix alone (upstream's generic prompt)."""
        if self.options.text_prompt:
            return self.options.prompt_prefix + prompt
        return self.options.prompt_prefix.strip().rstrip(",").strip()

    @inference_mode
    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        pipe = self.pipeline
        output = pipe(
            prompt=self.text(prompt), negative_prompt=self.options.negative_prompt or None,
            height=self.height, width=self.width, num_inference_steps=self.steps,
            guidance_scale=self.options.guidance, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pil", **image_prompt(pipe, references, self.options.references, self.options.guidance),
        )
        return output.images[0].convert("RGB")


# ------------------------------------------------------------------------------------------- stage 1's cost

#: The Plus Resampler's sizes per base family (upstream ``IPAdapterPlus.init_proj``: width = SD 1.5's
#: cross_attention_dim 768, 12 heads of 64; ``IPAdapterPlusXL.init_proj``: width 1280, 20 heads of 64; 16 queries).
PLUS_SIZES = {"sd15": {"queries": 16, "dim": 768, "inner": 768}, "sdxl": {"queries": 16, "dim": 1280, "inner": 1280}}


def stage1_cost(options: IPAdapterOptions, context: MethodContext) -> StageCost:
    """Stage 1's cost per video on FakeTensors (:mod:`costmodel.configs`): the variant's base UNet with the
    adapter installed by diffusers (``_load_ip_adapter_weights`` from meta tensors in the official key layout), its
    text encoder(s) on the prompt and the negative prompt, the CLIP image encoder (twice for Plus: the image and
    the zero image), ``steps`` UNet calls on the CFG batch, one VAE decode; the tiny preset's components with
    ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from baselines.ms_diffusion import SDXL_SCHEDULER
    from baselines.ssr_encoder import SD15_SCHEDULER
    from costmodel import configs as cm

    variant = VARIANTS[options.variant]
    sdxl, tiny = variant.family == "sdxl", context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context))
    plus_sizes = TINY_PLUS if tiny else PLUS_SIZES[variant.family]

    def with_adapter(unet, encoder_config):
        """``unet`` with the adapter installed as diffusers' load_ip_adapter does (placeholder tensors in the
        official key layout: on the meta device, or random on the GPU for a timing run)."""
        shapes = expected_adapter_shapes(unet, int(encoder_config.projection_dim), int(encoder_config.hidden_size),
                                         variant.plus, **(plus_sizes if variant.plus else {}))
        state = {group: {key: torch.empty(shape) for key, shape in keys.items()} for group, keys in shapes.items()}
        unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
        for processor in unet.attn_processors.values():
            if hasattr(processor, "scale"):
                processor.scale = [options.scale]  # set_ip_adapter_scale
        return unet

    if tiny:
        pipe = build_tiny_pipeline(variant.family)
        unet = builder.adopt(with_adapter(pipe.unet, pipe.image_encoder.config))
        vae, encoder = builder.adopt(pipe.vae), builder.adopt(pipe.image_encoder)
        texts = [builder.adopt(pipe.text_encoder)] + ([builder.adopt(pipe.text_encoder_2)] if sdxl else [])
        height = width = TINY_SIZE
        steps = min(options.steps, TINY_STEPS)
    else:
        vision = CLIPVisionConfig(**(cm.CLIP_BIGG_VISION if variant.encoder_name == _VIT_BIGG else cm.CLIP_H_VISION))
        unet = builder.build(lambda: with_adapter(UNet2DConditionModel(**(cm.SDXL_UNET if sdxl else cm.SD15_UNET)),
                                                  vision))
        vae = builder.build(lambda: AutoencoderKL(**(cm.SDXL_VAE if sdxl else cm.SD_VAE)))
        encoder = builder.build(lambda: CLIPVisionModelWithProjection(vision))
        texts = [builder.build(lambda: CLIPTextModel(CLIPTextConfig(**cm.CLIP_L_TEXT)))]
        if sdxl:
            texts.append(builder.build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cm.CLIP_BIGG_TEXT))))
        height, width, steps = options.height, options.width, options.steps

    cfg = options.guidance > 1.0
    size, patch = int(encoder.config.image_size), int(encoder.config.patch_size)
    length = texts[0].config.max_position_embeddings
    for index, text in enumerate(texts):
        builder.add(f"text encoder {index + 1}", cm.text_call(text, length, output_hidden_states=sdxl),
                    2 if cfg else 1, f"{length} tokens; prompt and negative prompt")
    builder.add("image encoder", cm.image_call(encoder, size, output_hidden_states=variant.plus),
                2 if variant.plus else 1, f"{variant.encoder_name}, {size}x{size}" + (
                    "; the image and the zero image" if variant.plus else ""))
    embed = ((1, (size // patch) ** 2 + 1, int(encoder.config.hidden_size)) if variant.plus
             else (1, int(encoder.config.projection_dim)))

    def unet_kwargs(batch: int) -> dict[str, Any]:
        added: dict[str, Any] = {"image_embeds": [torch.randn(batch, *embed, dtype=builder.dtype)]}
        if sdxl:
            added.update(text_embeds=torch.randn(batch, int(texts[-1].config.projection_dim), dtype=builder.dtype),
                         time_ids=torch.randn(batch, 6, dtype=builder.dtype))
        return {"added_cond_kwargs": added}

    if options.scheduler == "ddim":
        scheduler = upstream_ddim_scheduler()
    else:  # the base model's own: SDXL's Euler, SD 1.5's PNDM
        scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER) if sdxl else PNDMScheduler(**SD15_SCHEDULER)
    cm.sd_stage(builder, unet, vae, steps=cm.denoiser_calls(scheduler, steps), cfg=cfg, height=height, width=width,
                context=(length, int(unet.config.cross_attention_dim)), unet_kwargs=unet_kwargs)
    return builder.cost(f"stage 1: IP-Adapter {variant.name}" + (" (tiny)" if tiny else ""),
                        notes=f"{steps} {options.scheduler} steps, guidance {options.guidance}, {height}x{width}, "
                              f"{cm.dtype_name(builder.dtype)}")


def _build(options: IPAdapterOptions, context: MethodContext) -> IPAdapterPersonalizer:
    return IPAdapterPersonalizer(options, context)


register_two_stage(
    "ip-adapter+i2v",
    description="IP-Adapter (h94/IP-Adapter via diffusers' load_ip_adapter, SD 1.5 by default) makes the subject "
                "image, CogVideoX-5B-I2V animates it",
    options=IPAdapterOptions, build_stage1=_build, stage1_weights=ip_adapter_weights, paper_row="IP-Adapter",
    stage1_cost=stage1_cost, stage1_dtype="fp16",
)
