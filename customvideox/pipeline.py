"""``CustomVideoXPipeline``: CogVideoX-5B text-to-video with a reference image (Algorithm 1 of the paper).

The pipeline subclasses diffusers' :class:`~diffusers.CogVideoXPipeline` and reuses its prompt encoding,
latent preparation, rotary embeddings, VAE decoding, CPU offload, VAE tiling/slicing and progress bar.
What it adds (paper section 4, Algorithm 1):

1. **Reference encoding.** The reference image (RGB) is resized to fit inside the video frame with its
   aspect ratio kept, centred and padded with white (``reference_background``) to ``height x width``,
   and encoded by the *same* 3D causal VAE as the video: one image is one latent frame,
   ``z_r = scaling_factor * E(x_ref).mode()`` of shape ``(B, 1, C, h, w)`` (the posterior mean, so the
   reference is deterministic).
2. **Reference features once** (Algorithm 1, line 3). In ``cached`` mode the transformer's per-layer
   reference keys/values are built once before the loop and reused at every step; in ``joint`` mode the
   reference tokens go through every block at every step (Eq. 4 literally). The mode comes from
   :class:`~customvideox.config.ReferenceConfig`.
3. **Entity tokens** for ERAE (Eq. 8): the entity word's positions in the T5 tokenization of the prompt
   (:func:`entity_token_mask`). A prompt that does not contain its entity gets a warning and ERAE off
   for that prompt (the rest of the method still runs); no entity at all turns ERAE off silently.
4. **Classifier-free guidance.** The batch is ``[unconditional, conditional]`` as in CogVideoX. The
   reference latent is given to *both* halves, so guidance amplifies the text only and never pushes
   the video away from the subject; ERAE is off in the unconditional half (the negative prompt has no
   entity tokens).
5. **Sampling.** DDIM (:class:`~diffusers.CogVideoXDDIMScheduler`, as in the paper, 50 steps, guidance 6),
   optional dynamic CFG.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline
from diffusers.pipelines.cogvideo.pipeline_cogvideox import retrieve_timesteps
from diffusers.utils import BaseOutput

from customvideox.attention import entity_token_indices
from customvideox.config import (
    REFERENCE_ADAPTER_NAME,
    ReferenceConfig,
    explicit_overrides,
    legacy_overrides,
    resolve_reference_config,
)
from customvideox.lora import LORA_WEIGHT_NAME, has_reference_lora, lora_file_path
from customvideox.transformer import CustomVideoXTransformer3DModel
from mediaio.images import fit_to_canvas, to_rgb8

logger = logging.getLogger(__name__)

try:  # diffusers renamed `torch_dtype` to `dtype` (the old name still works, with a FutureWarning)
    from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

    _DTYPE_KWARG = "dtype"
except ImportError:
    _DTYPE_KWARG = "torch_dtype"

#: The hub id of the base model (paper section 6.1).
COGVIDEOX_5B = "THUDM/CogVideoX-5b"

ReferenceImage = PIL.Image.Image | np.ndarray | torch.Tensor


class CustomVideoXPipelineOutput(BaseOutput):
    """Output of :class:`CustomVideoXPipeline`.

    Args:
        frames: ``(B, T, H, W, 3)`` float array in [0, 1] (``output_type="np"``), a ``(B, T, 3, H, W)``
            tensor (``"pt"``), lists of PIL images (``"pil"``) or latents (``"latent"``).
        random_weights: True when any component of the pipeline is random-initialised (tiny preset, or a
            reference LoRA that was never loaded); every output says so.
        entity_found: per prompt, whether the entity's tokens were found (False: ERAE was off for it).
        diagnostics: per prompt (video), a dict of measurements of the run (:func:`erae_diagnostics`):
            ``erae_region_coverage``, the fraction of video tokens inside ERAE's region ``R_e`` (Eq. 8) averaged
            over layers and denoising steps (None where ERAE did not run), ``erae_region_coverage_per_step`` (the
            per-step means over layers) and ``erae_normalization``.
    """

    frames: Any
    random_weights: bool = False
    entity_found: list[bool] | None = None
    diagnostics: list[dict[str, Any]] | None = None


def erae_diagnostics(
    coverage_sums: Sequence[torch.Tensor], num_layers: int, found: Sequence[bool], config: ReferenceConfig
) -> list[dict[str, Any]]:
    """Per prompt, ERAE's region coverage (Eq. 8) of one generation, read from the device once.

    Args:
        coverage_sums: per denoising step, the transformer's ``erae_coverage`` tensor: per sample of the model
            batch (``[unconditional, conditional]`` under CFG, the prompts last), the sum over layers of the
            fraction of video tokens inside ``R_e``.
        num_layers: the transformer's block count (ERAE runs in every block).
        found: per prompt, whether its entity tokens were found (ERAE ran for it).

    Returns one dict per prompt: ``erae_region_coverage`` (mean over layers and steps; None when ERAE did not
    run for the prompt), ``erae_region_coverage_per_step`` (list, mean over layers) and ``erae_normalization``.
    """
    per_step = None
    if coverage_sums:
        per_step = (torch.stack(list(coverage_sums)).float().cpu() / num_layers)[:, -len(found):]
    diagnostics = []
    for index, ran in enumerate(found):
        steps = per_step[:, index].tolist() if per_step is not None and ran else None
        diagnostics.append({
            "erae_region_coverage": sum(steps) / len(steps) if steps else None,
            "erae_region_coverage_per_step": steps,
            "erae_normalization": config.erae_normalization if config.uses_erae else None,
        })
    return diagnostics


# ----------------------------------------------------------------------------------------- entity tokens


def _entity_pattern(entity: str) -> re.Pattern[str]:
    """The entity as a whole word (or words), case-insensitive, optionally plural (``dog`` matches ``dogs``)."""
    words = [re.escape(word) for word in entity.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?:s|es)?(?!\w)", re.IGNORECASE)


def _entity_mask_from_ids(tokenizer, ids: list[int], entity: str) -> list[bool]:
    """Fallback for tokenizers without offsets: match the entity's own token ids as a sub-sequence."""
    mask = [False] * len(ids)
    for text in (entity, " " + entity, entity.lower(), " " + entity.lower()):
        needle = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(needle) + 1) if needle else ():
            if ids[start : start + len(needle)] == needle:
                mask[start : start + len(needle)] = [True] * len(needle)
    return mask


def entity_token_mask(
    tokenizer, prompts: Sequence[str], entities: Sequence[str | None], max_length: int
) -> tuple[torch.Tensor, list[bool]]:
    """Positions of each prompt's entity word in its T5 tokenization (the ERAE text tokens of Eq. 8).

    The prompt is tokenized exactly as the text encoder sees it (``max_length`` tokens, truncated,
    ``</s>`` appended, padded). Every occurrence of the entity (whole word(s), case-insensitive, plural
    ``s``/``es`` allowed) is located in the text, and a token is an entity token when its character span
    (the fast tokenizer's offset mapping) overlaps an occurrence. Tokenizers without offsets fall back
    to matching the entity's own token ids.

    Returns:
        ``(mask, found)``: a ``(B, max_length)`` bool tensor and, per prompt, whether any entity token
        was found. An entity that is ``None``/empty, absent from the prompt or truncated away gives an
        all-False row and ``found=False``.
    """
    if len(prompts) != len(entities):
        raise ValueError(f"{len(prompts)} prompt(s) but {len(entities)} entit(y/ies)")
    mask = torch.zeros(len(prompts), max_length, dtype=torch.bool)
    found: list[bool] = []
    for row, (prompt, entity) in enumerate(zip(prompts, entities)):
        if not entity or not entity.strip():
            found.append(False)
            continue
        encoding = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                             add_special_tokens=True, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
        ids = list(encoding.input_ids)
        if "offset_mapping" in encoding:
            spans = [m.span() for m in _entity_pattern(entity.strip()).finditer(prompt)]
            special = set(tokenizer.all_special_ids)
            hits = [
                token_id not in special and end > start and any(start < b and end > a for a, b in spans)
                for token_id, (start, end) in zip(ids, encoding.offset_mapping)
            ]
        else:
            hits = _entity_mask_from_ids(tokenizer, ids, entity.strip())
        mask[row] = torch.tensor(hits[:max_length], dtype=torch.bool)
        found.append(bool(mask[row].any()))
    return mask, found


# ----------------------------------------------------------------------------------------- reference image


def _to_pil_rgb(image: ReferenceImage) -> PIL.Image.Image:
    """A reference image as an 8-bit RGB PIL image.

    Accepted: PIL images (any mode; alpha composited over white), ``(H, W[, C])`` numpy arrays (uint8 in
    [0, 255] or float in [0, 1]), ``(C, H, W)`` tensors (uint8 in [0, 255] or float in [0, 1]); one or
    four channels are made RGB (alpha over white).
    """
    if isinstance(image, PIL.Image.Image):
        return to_rgb8(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"reference tensor must be (C, H, W), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"reference array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return to_rgb8(PIL.Image.fromarray(array))


def prepare_reference_image(
    image: ReferenceImage, height: int, width: int, background: tuple[int, int, int] = (255, 255, 255)
) -> torch.Tensor:
    """Fit ``image`` inside ``height x width`` keeping its aspect ratio, centre it on a ``background`` canvas.

    Returns a ``(3, height, width)`` float tensor in [-1, 1] (the VAE's input range).
    """
    canvas = fit_to_canvas(_to_pil_rgb(image), height, width, PIL.Image.Resampling.LANCZOS, background)
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32).copy()).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


# ----------------------------------------------------------------------------------------- the pipeline


def _overrides_argument(
    config: ReferenceConfig | None, overrides: Mapping[str, Any] | None, with_lora_shape: bool
) -> dict[str, Any]:
    """``from_pretrained``'s explicit settings: ``reference_overrides``, or the older full ``reference_config``
    read as overrides (:func:`~customvideox.config.legacy_overrides`)."""
    if config is not None and overrides is not None:
        raise ValueError("give reference_overrides (the explicitly set keys) or reference_config, not both")
    if config is not None:
        return legacy_overrides(config, with_lora_shape)
    return explicit_overrides(overrides)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def video_geometry_problems(
    height: Any, width: Any, num_frames: Any, spatial: int = 8, temporal: int = 4, patch: int = 2
) -> list[str]:
    """What is wrong with a requested video size (empty when nothing is), one message per value.

    Rules: ``height`` and ``width`` are positive multiples of ``spatial * patch`` pixels (CogVideoX: the VAE
    downsamples 8x and the transformer patches 2x2 latent pixels, so 16 px: at least one token per side);
    ``num_frames`` is ``2 * temporal * k + 1`` (CogVideoX: 8k + 1 = 1, 9, 17, ...): the VAE compresses time 4x
    (``4k + 1`` frames) and decodes ``n`` latent frames to ``4(n - 1) + 1`` frames only when ``n`` is odd (its
    temporal upsampling keeps the first frame of odd-length inputs).
    """
    problems = []
    multiple = spatial * patch
    for name, value in (("height", height), ("width", width)):
        if not _is_positive_int(value) or value % multiple:
            problems.append(
                f"{name}={value!r}: must be a positive multiple of {multiple} px (the VAE downsamples {spatial}x and "
                f"the transformer's patches are {patch}x{patch} latent pixels; minimum {multiple})"
            )
    step = 2 * temporal
    if not _is_positive_int(num_frames) or (num_frames - 1) % step:
        valid = ", ".join(str(step * k + 1) for k in range(7))
        problems.append(
            f"num_frames={num_frames!r}: the CogVideoX VAE gives exactly that many frames only for "
            f"num_frames = {step}k + 1 ({valid}, ...)"
        )
    return problems


def _onload(module: torch.nn.Module) -> None:
    """Under ``enable_model_cpu_offload`` run the offload hook as a forward would (a non-forward call such
    as ``build_reference_cache`` would otherwise find the module's weights on the CPU)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)



class CustomVideoXPipeline(CogVideoXPipeline):
    r"""Zero-shot subject-driven text-to-video generation with CustomVideoX on CogVideoX (Algorithm 1).

    Components are CogVideoX's (T5 tokenizer and encoder, the 3D causal VAE, a DDIM scheduler) with the
    transformer replaced by :class:`~customvideox.transformer.CustomVideoXTransformer3DModel` carrying the
    reference LoRA.

    Attributes:
        reference_config: the ablation/mode/TAB/ERAE/RoPE-shift settings used by :meth:`__call__`
            (overridable per call).
        random_weights: True when any component is random-initialised or the reference LoRA was never
            loaded; stamped on every output.
    """

    def __init__(
        self, tokenizer, text_encoder, vae, transformer: CustomVideoXTransformer3DModel, scheduler,
        random_weights: bool = False,
    ):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                         scheduler=scheduler)
        # ``random_weights`` is read back from ``model_index.json`` of a folder written by save_pretrained.
        self.random_base_weights = bool(random_weights)
        self.reference_lora_path: str | None = None

    @property
    def reference_config(self) -> ReferenceConfig:
        """The resolved settings :meth:`__call__` uses: the transformer's :attr:`reference_config` (one object, so
        the pipeline and the transformer never disagree). After :meth:`load_reference_lora` these are the LoRA
        file's settings with the caller's explicit overrides; record ``reference_config.to_dict()`` with a run."""
        return self.transformer.reference_config

    @reference_config.setter
    def reference_config(self, config: ReferenceConfig) -> None:
        self.transformer.reference_config = config

    @property
    def random_weights(self) -> bool:
        """True when the base model is random-initialised or a reference branch runs without a loaded LoRA."""
        untrained_lora = self.reference_config.uses_reference_branch and self.reference_lora_path is None
        return self.random_base_weights or untrained_lora

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike = COGVIDEOX_5B,
        lora: str | os.PathLike | None = None,
        reference_config: ReferenceConfig | None = None,
        reference_overrides: Mapping[str, Any] | None = None,
        **kwargs,
    ) -> "CustomVideoXPipeline":
        """Load CogVideoX-5B (a folder or a hub id) with the transformer as ``CustomVideoXTransformer3DModel``.

        The folder layout is diffusers' (``model_index.json``, ``transformer/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/``, ``scheduler/``). With ``lora`` (or a folder written by
        :meth:`save_pretrained`, which holds its LoRA) the reference LoRA and its recorded settings are loaded
        (:meth:`load_reference_lora`): every setting is the file's unless ``reference_overrides`` sets it. Without a
        LoRA file the settings are the paper defaults with ``reference_overrides``, and the LoRA is added with
        that shape and PEFT's initialisation (B = 0: the reference branch equals the base weights, untrained);
        :attr:`random_weights` says so. Other keyword arguments (``torch_dtype``, ``cache_dir``,
        ``local_files_only``, ...) go to diffusers.

        Args:
            reference_overrides: only the settings the user set explicitly (``{"mode": "joint"}``; None values
                count as unset); keys are :class:`ReferenceConfig` fields, ``rope_shift`` may be ``"F,H,W"``.
            reference_config: the older API, kept working: a full config whose fields that differ from the paper
                defaults count as explicit overrides (the LoRA shape still comes from the file). Give one of the two.
        """
        saved_lora = Path(pretrained_model_name_or_path) / "transformer" / LORA_WEIGHT_NAME  # from save_pretrained
        if lora is None and saved_lora.is_file():
            lora = saved_lora
        overrides = _overrides_argument(reference_config, reference_overrides, with_lora_shape=lora is None)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        if dtype is not None:  # diffusers >= 0.36 calls it `dtype`, older versions `torch_dtype`
            kwargs[_DTYPE_KWARG] = dtype
        if kwargs.get("transformer") is None:
            passthrough = {k: kwargs[k] for k in (_DTYPE_KWARG, "cache_dir", "local_files_only", "revision",
                                                   "token", "variant") if k in kwargs}
            kwargs["transformer"] = CustomVideoXTransformer3DModel.from_pretrained(
                pretrained_model_name_or_path, subfolder="transformer", **passthrough
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if lora is not None:
            pipe.load_reference_lora(lora, overrides=overrides)
        else:
            pipe.reference_config = resolve_reference_config(None, overrides)[0]
            pipe.transformer.add_reference_lora(pipe.reference_config)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained``: the transformer folder holds the plain CogVideoX weights and the
        reference LoRA (``transformer/pytorch_lora_weights.safetensors``, loaded back by :meth:`from_pretrained`);
        ``model_index.json`` records :attr:`random_weights`, so a reloaded random pipeline stays stamped."""
        self.register_to_config(random_weights=self.random_weights)
        super().save_pretrained(save_directory, *args, **kwargs)

    def load_reference_lora(
        self, path: str | os.PathLike, overrides: Mapping[str, Any] | ReferenceConfig | None = None
    ) -> ReferenceConfig:
        """Load the reference LoRA and its training settings from a safetensors file (or a folder with
        ``pytorch_lora_weights.safetensors``).

        Every setting (ablation, mode, RoPE shift of Eq. 5, TAB/ERAE constants of Eq. 6-8, ERAE normalization,
        ...) is the file's unless ``overrides`` (a mapping of only the explicitly set keys) sets it; an override
        that contradicts the file is logged once. Settings the pipeline had before (a preset's, or
        :meth:`from_pretrained`'s defaults) are replaced: pass them as ``overrides`` to keep them. The LoRA's
        shape (rank, alpha, targets) always comes from the file; the adapter is injected if the transformer has
        none yet, and a file that does not fit an existing adapter raises a ValueError naming it. An adapter
        that was never loaded from a file (the untrained one of :meth:`from_pretrained` without ``lora``, or the
        tiny preset's random one) is a placeholder: it is replaced, whatever its shape.

        Returns the resolved :attr:`reference_config` (also the transformer's).
        """
        file = lora_file_path(path)
        if not file.is_file():
            raise FileNotFoundError(f"reference LoRA not found: {file}")
        if self.reference_lora_path is None and has_reference_lora(self.transformer):
            self.transformer.delete_adapters(REFERENCE_ADAPTER_NAME)
        self.transformer.load_reference_lora(str(path), overrides)  # sets the transformer's reference_config
        self.reference_lora_path = str(path)
        return self.reference_config

    def save_reference_lora(self, path: str | os.PathLike) -> str:
        """Save the transformer's reference LoRA as one safetensors file (atomically); returns its path."""
        return str(self.transformer.save_reference_lora(str(path), self.reference_config))

    # ------------------------------------------------------------------------------------------ inputs

    @torch.no_grad()
    def encode_reference(
        self,
        images: ReferenceImage | Sequence[ReferenceImage],
        height: int,
        width: int,
        device: torch.device | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> torch.Tensor:
        """Reference image(s) -> ``z_r``, ``(B, 1, C, height // 8, width // 8)`` scaled VAE latents.

        Each image goes through the same 3D causal VAE as the video as a one-frame clip, giving one
        latent frame (paper section 4.1), scaled by the VAE scaling factor like the video latents.
        """
        if isinstance(images, PIL.Image.Image) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim <= 3):
            images = [images]  # one image; a 4-D array/tensor or a list is a batch
        device = device or self._execution_device
        pixels = torch.stack([prepare_reference_image(image, height, width, background) for image in images])
        pixels = pixels.unsqueeze(2).to(device=device, dtype=self.vae.dtype)  # (B, 3, 1, H, W)
        latents = self.vae.encode(pixels).latent_dist.mode() * self.vae_scaling_factor_image
        return latents.permute(0, 2, 1, 3, 4)  # (B, 1, C, h, w)

    def _reference_inputs(
        self,
        reference_latents: torch.Tensor,
        prompts: list[str],
        entities: list[str | None],
        max_sequence_length: int,
        do_cfg: bool,
        config: ReferenceConfig,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[bool]]:
        """The reference latents and entity mask laid out like the ``[uncond, cond]`` batch."""
        found = [False] * len(prompts)
        entity_mask = None
        if config.uses_erae:
            entity_mask, found = entity_token_mask(self.tokenizer, prompts, entities, max_sequence_length)
            for prompt, entity, ok in zip(prompts, entities, found):
                if entity and not ok:
                    logger.warning(
                        "entity %r not found in the tokenized prompt %r: ERAE is off for this prompt", entity, prompt
                    )
            entity_mask = entity_mask.to(device) if any(found) else None
        if do_cfg:
            reference_latents = torch.cat([reference_latents, reference_latents])
            if entity_mask is not None:
                entity_mask = torch.cat([torch.zeros_like(entity_mask), entity_mask])
        return reference_latents, entity_mask, found

    def _cache_context(self):
        """diffusers' cache-hook context of the CFG batch (first-block cache etc.), where supported."""
        context = getattr(self.transformer, "cache_context", None)
        return context("cond_uncond") if context is not None else contextlib.nullcontext()

    def check_video_geometry(self, height: Any, width: Any, num_frames: Any) -> None:
        """Refuse a video size this model cannot produce exactly (:func:`video_geometry_problems`), with one
        ValueError naming every bad value and its rule."""
        problems = video_geometry_problems(
            height, width, num_frames, self.vae_scale_factor_spatial, self.vae_scale_factor_temporal,
            self.transformer.config.patch_size,
        )
        if problems:
            raise ValueError("; ".join(problems))

    # ------------------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        reference_image: ReferenceImage | Sequence[ReferenceImage] | None = None,
        prompt: str | list[str] | None = None,
        entity: str | list[str | None] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 6.0,
        use_dynamic_cfg: bool = False,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        reference_latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int | None = None,
        reference_config: ReferenceConfig | None = None,
        reference_background: tuple[int, int, int] = (255, 255, 255),
    ) -> CustomVideoXPipelineOutput | tuple:
        """Generate videos of the reference subject following ``prompt``.

        Args:
            reference_image: one reference per prompt (PIL / ``(H, W, 3)`` array / ``(3, H, W)`` tensor; see
                :func:`prepare_reference_image`). ``None`` (with no ``reference_latents``) runs the base
                CogVideoX model.
            prompt: text prompt(s), the entity word included.
            entity: the entity word of each prompt (ERAE); ``None`` turns ERAE off.
            negative_prompt: the unconditional prompt(s) for CFG (default empty).
            height, width, num_frames: default to the transformer config (480, 720, 49 for CogVideoX-5B).
            num_inference_steps, guidance_scale, use_dynamic_cfg, eta: DDIM sampling (paper: 50 steps, 6).
            generator, seed: the noise source; ``seed`` builds a CPU ``torch.Generator`` (same seed, same
                video, on any device).
            reference_latents: precomputed ``z_r`` ``(B, 1, C, h, w)`` instead of ``reference_image``.
            output_type: ``"np"``, ``"pt"``, ``"pil"`` or ``"latent"``.
            reference_config: overrides :attr:`reference_config` for this call (ablation, mode, ...).
            reference_background: the padding colour around the fitted reference image.
        """
        config = reference_config or self.reference_config
        model = self.transformer.config
        height = model.sample_height * self.vae_scale_factor_spatial if height is None else height
        width = model.sample_width * self.vae_scale_factor_spatial if width is None else width
        num_frames = model.sample_frames if num_frames is None else num_frames
        max_sequence_length = max_sequence_length or model.max_text_seq_length
        self.check_video_geometry(height, width, num_frames)
        self.check_inputs(prompt, height, width, negative_prompt, None)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        entities = [entity] * len(prompts) if entity is None or isinstance(entity, str) else list(entity)
        if len(entities) != len(prompts):
            raise ValueError(f"{len(prompts)} prompt(s) but {len(entities)} entit(y/ies)")
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        do_cfg = guidance_scale > 1.0

        # 1. text (T5) and reference (VAE) conditions
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts, negative_prompt, do_cfg, max_sequence_length=max_sequence_length, device=device
        )
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
        if reference_latents is None and reference_image is not None:
            reference_latents = self.encode_reference(reference_image, height, width, device, reference_background)
        entity_mask, found = None, [False] * len(prompts)
        if reference_latents is not None:
            if reference_latents.shape[0] != len(prompts):
                raise ValueError(f"{reference_latents.shape[0]} reference(s) for {len(prompts)} prompt(s)")
            reference_latents = reference_latents.to(device=device, dtype=prompt_embeds.dtype)
            reference_latents, entity_mask, found = self._reference_inputs(
                reference_latents, prompts, entities, max_sequence_length, do_cfg, config, device
            )

        # 2. timesteps, noise, rotary embeddings
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            len(prompts), self.transformer.config.in_channels, num_frames, height, width,
            prompt_embeds.dtype, device, generator, latents,
        )
        image_rotary_emb = (
            self._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
            if self.transformer.config.use_rotary_positional_embeddings
            else None
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        # the entity tokens once per call, not per step (no host sync in the loop, no graph break when compiled)
        entity_tokens = entity_token_indices(entity_mask) if entity_mask is not None else None
        reference = dict(reference_latents=reference_latents, entity_tokens=entity_tokens, reference_config=config)

        # 3. Algorithm 1, line 3: reference features once, before the loop (cached mode). The cached
        #    reference attends only to itself, so one cache per reference serves both CFG halves.
        if reference_latents is not None and config.uses_reference_branch and config.mode == "cached":
            unique = reference_latents[: len(prompts)]
            _onload(self.transformer)
            lora_scale = (attention_kwargs or {}).get("scale", 1.0)  # the LoRA acts only in the cache here
            reference["reference_cache"] = self.transformer.build_reference_cache(
                unique, reference_config=config, lora_scale=lora_scale
            )

        # 4. Algorithm 1, lines 4-8: denoising with reference attention, TAB and ERAE
        track_erae = entity_tokens is not None and config.uses_reference_branch
        coverage_sums: list[torch.Tensor] = []
        old_pred_original_sample = None
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                if track_erae:  # summed over layers on the device; read back once, after the loop
                    reference["erae_coverage"] = torch.zeros(model_input.shape[0], device=device)
                    coverage_sums.append(reference["erae_coverage"])
                with self._cache_context():
                    noise_pred = self.transformer(
                        hidden_states=model_input,
                        encoder_hidden_states=prompt_embeds,
                        timestep=t.expand(model_input.shape[0]),
                        image_rotary_emb=image_rotary_emb,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                        **(reference if reference_latents is not None else {}),
                    )[0].float()
                if use_dynamic_cfg:  # CogVideoX's cosine schedule of the guidance weight
                    self._guidance_scale = 1 + guidance_scale * (
                        (1 - math.cos(math.pi * ((num_inference_steps - t.item()) / num_inference_steps) ** 5.0)) / 2
                    )
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + self.guidance_scale * (cond - uncond)
                if isinstance(self.scheduler, CogVideoXDPMScheduler):
                    latents, old_pred_original_sample = self.scheduler.step(
                        noise_pred, old_pred_original_sample, t, timesteps[i - 1] if i > 0 else None, latents,
                        **extra_step_kwargs, return_dict=False,
                    )
                else:
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                latents = latents.to(prompt_embeds.dtype)
                progress_bar.update()
        self._current_timestep = None

        # 5. decode
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(video=self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        diagnostics = erae_diagnostics(coverage_sums, len(self.transformer.transformer_blocks), found, config)
        return CustomVideoXPipelineOutput(
            frames=video, random_weights=self.random_weights, entity_found=found, diagnostics=diagnostics
        )

