"""``customvideox train``: the reference LoRA, trained with accelerate (paper section 6.1).

What is trained: the reference LoRA only (rank 128 on ``to_q``/``to_k``/``to_v``/``to_out.0`` of every block, the
``"reference"`` peft adapter of :class:`~customvideox.transformer.CustomVideoXTransformer3DModel`); CogVideoX-5B,
its T5 encoder and its VAE stay frozen. The reference branch runs exactly as at inference (3D Reference Attention,
TAB, ERAE, as set by :class:`~customvideox.config.ReferenceConfig`).

Objective: CogVideoX's v-prediction loss in the form of diffusers' CogVideoX LoRA example
(``examples/cogvideo/train_cogvideox_lora.py``). With ``z_0`` the clip's latent, ``eps ~ N(0, I)``,
``t ~ U{0..T-1}`` and ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` (``scheduler.add_noise``), the model's output
``v`` is turned into a clean-latent prediction ``x_hat = sqrt(a_t) z_t - sqrt(1 - a_t) v``
(``scheduler.get_velocity(v, z_t, t)``) and

    loss = mean( (x_hat - z_0)^2 / (1 - a_t) ),

which equals the v-prediction MSE ``|v - v_target|^2`` (``v_target = sqrt(a_t) eps - sqrt(1 - a_t) z_0``).

Defaults are the paper's (section 6.1): AdamW, a fixed learning rate of 1e-5, weight decay 1e-2, batch 1 per GPU,
gradient accumulation 2, 10,000 steps, 25 frames at 480x720 (on 16 GPUs: an effective batch of 32).

Everything distributed goes through :class:`accelerate.Accelerator` (``accelerate launch`` or ``torchrun``, one or
many GPUs or nodes; DDP or DeepSpeed ZeRO-2 from ``configs/accelerate``; FSDP is refused, see
:func:`_check_distributed_type`): ``prepare``, ``accumulate``,
``clip_grad_norm_``, ``save_state`` / ``load_state``. A checkpoint ``OUTPUT/checkpoint-<step>`` holds the LoRA as
diffusers-style safetensors (``pytorch_lora_weights.safetensors``; a save hook keeps accelerate from writing the
frozen 5B weights) plus the optimizer, LR scheduler and every process's RNG state. Data order and diffusion noise
are pure functions of ``(seed, rank, micro-step)`` (:class:`~customvideox.train_data.PairStreamSampler`,
:func:`step_generator`), so ``resume="latest"`` continues exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mediaio.atomic import atomic_path, atomic_write_json

from .config import ABLATIONS, ERAE_NORMALIZATIONS, MODES, ReferenceConfig, parse_rope_shift
from .lora import LORA_WEIGHT_NAME, lora_parameters, mark_only_reference_lora_trainable

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "training_summary.json"
#: The optimizer-step counter inside every checkpoint (JSON: never unpickled on resume).
PROGRESS_FILE = "training_state.json"
#: safetensors metadata key stamped on LoRAs trained on a random-initialised base model (the tiny preset).
RANDOM_BASE_METADATA_KEY = "customvideox_random_base_weights"
PRESETS = ("tiny",)
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything ``customvideox train`` needs (the CLI maps one option to one field).

    Attributes:
        data: the pair dataset folder written by ``customvideox data build`` (holds ``pairs.parquet``).
        output_dir: checkpoints, the final LoRA, logs and ``train_config.json``.
        model: CogVideoX-5B, a diffusers folder or a hub id (default: ``THUDM/CogVideoX-5b`` from the HF cache).
        preset: ``"tiny"``: the random-initialised tiny model (smoke runs and tests); excludes ``model``.
        cache_dir: precomputed VAE posteriors, reference latents, T5 embeddings and entity masks; filled on the
            first run (each process its share), read afterwards; the T5 encoder and the VAE are then never loaded.
        ablation, mode: the Table 2 row and reference mode trained (the LoRA serves 3D-RA rows only).
        rope_shift: delta of Eq. 5, ``(dt, dh, dw)`` in RoPE grid units (or ``"F,H,W"``); default ``(-1, 0, 0)``.
        erae_normalization: how ERAE's entity map is scaled before the threshold of Eq. 8 (``"per-frame"``,
            ``"per-clip"`` or ``"probability"``; see :class:`~customvideox.config.ReferenceConfig`).
            These settings are recorded in the LoRA file and used by default when it is loaded for generation.
        lora_rank, lora_alpha: the LoRA shape (paper: rank 128; alpha defaults to the rank; the tiny preset's
            defaults are :data:`~customvideox.presets.TINY_LORA_RANK`).
        height, width, num_frames: the training clip (section 6.1: 480x720, 25 frames).
        learning_rate, weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW (1e-5, 1e-2).
        lr_scheduler, lr_warmup_steps: diffusers' ``get_scheduler`` name (paper: ``"constant"``) and warmup.
        train_batch_size: per process (1); gradient_accumulation_steps: 2; max_train_steps: optimizer steps (10,000).
        max_grad_norm: gradient clipping (diffusers' example: 1.0; ``0`` disables).
        timestep_min, timestep_max: the training timesteps are uniform on ``[timestep_min, timestep_max)``
            (default all ``T = 1000``).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"``; ``None`` lets ``accelerate launch``'s config decide.
            Under bf16/fp16 the frozen weights are cast to that dtype and the LoRA stays float32.
        gradient_checkpointing: recompute each block in the backward pass.
        vae_tiling: tiled VAE encoding (real model only; the CogVideoX example's ``--enable_tiling``).
        seed: base weights of the tiny preset, LoRA init, data order and diffusion noise.
        checkpointing_steps, checkpoints_total_limit: save every N optimizer steps; keep the newest K.
        resume: ``None``, ``"latest"`` (the newest checkpoint in ``output_dir``; none: start fresh) or a path.
        report_to: ``"tensorboard"`` (``output_dir/logs``) or ``None``.
        dataloader_num_workers, progress, cpu: DataLoader workers, the tqdm bar, force CPU (gloo for many processes).
    """

    data: str
    output_dir: str
    model: str | None = None
    preset: str | None = None
    cache_dir: str | None = None
    ablation: str = "3d-ra+tab+erae"
    mode: str = "joint"
    rope_shift: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    erae_normalization: str = "per-frame"
    lora_rank: int | None = None
    lora_alpha: float | None = None
    height: int = 480
    width: int = 720
    num_frames: int = 25
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 2
    max_train_steps: int = 10_000
    max_grad_norm: float = 1.0
    timestep_min: int = 0
    timestep_max: int | None = None
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    vae_tiling: bool = True
    seed: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume: str | None = None
    report_to: str | None = "tensorboard"
    dataloader_num_workers: int = 0
    progress: bool = True
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: the training presets are {PRESETS}")
        if self.preset is not None and self.model is not None:
            raise ValueError("give either a model (--model) or a preset (--preset), not both")
        if self.ablation not in ABLATIONS or self.ablation == "naive":
            raise ValueError(
                f"ablation={self.ablation!r}: the reference LoRA is trained for the 3D-RA rows "
                f"{[a for a in ABLATIONS if a != 'naive']} (the 'naive' baseline has no LoRA)"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {MODES}")
        self.rope_shift = parse_rope_shift(self.rope_shift)
        if self.erae_normalization not in ERAE_NORMALIZATIONS:
            raise ValueError(f"erae_normalization={self.erae_normalization!r}; expected one of {ERAE_NORMALIZATIONS}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; expected one of {MIXED_PRECISION}")
        if (self.num_frames - 1) % 4 or ((self.num_frames - 1) // 4 + 1) % 2 == 0:
            raise ValueError(
                f"num_frames={self.num_frames}: CogVideoX's VAE needs 8k + 1 frames (an odd number of latent "
                "frames), e.g. 9, 17, 25 (the paper), 49"
            )
        if self.height % 16 or self.width % 16:
            raise ValueError(
                f"height and width must be multiples of 16 (VAE 8x, patch 2), got {self.height}x{self.width}"
            )
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.report_to not in (None, "tensorboard"):
            raise ValueError(f"report_to={self.report_to!r}; expected 'tensorboard' or None")

    def reference_config(self) -> ReferenceConfig:
        from .presets import TINY_LORA_RANK

        rank = self.lora_rank or (TINY_LORA_RANK if self.preset == "tiny" else 128)
        return ReferenceConfig(ablation=self.ablation, mode=self.mode, rope_shift=self.rope_shift,
                               erae_normalization=self.erae_normalization, lora_rank=rank,
                               lora_alpha=float(self.lora_alpha if self.lora_alpha is not None else rank))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a :func:`train` call did.

    Attributes:
        global_step: optimizer steps done in total (resumed steps included).
        start_step: the step the run started from (``> 0`` after a resume).
        losses: the mean loss of each optimizer step this run did (averaged over micro-batches and processes).
        learning_rates: the learning rate of each of those steps.
        lora_path: the final LoRA file (``OUTPUT/pytorch_lora_weights.safetensors``).
        checkpoints: the checkpoint folders written by this run.
        trainable_parameters: LoRA parameter count; total_parameters: the transformer's.
        random_weights: True for the tiny preset (the base model is random).
        seconds: wall time of the training loop.
        transformer: the trained transformer (unwrapped from accelerate), LoRA included, on this process.
    """

    global_step: int
    start_step: int
    losses: list[float]
    learning_rates: list[float]
    lora_path: Path | None
    checkpoints: list[Path]
    trainable_parameters: int
    total_parameters: int
    random_weights: bool
    seconds: float
    transformer: Any = None


# ----------------------------------------------------------------------------------------- the objective


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """A CPU generator for one micro-step of one process: its timesteps, noise and latent sample.

    A pure function of ``(seed, rank, micro_step)`` so a resumed run draws what an uninterrupted one would.
    """
    state = np.random.SeedSequence([seed, rank, micro_step]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_timesteps(batch_size: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """``t ~ U{low .. high-1}`` per sample (diffusers' example: ``torch.randint(0, T, (B,))``)."""
    return torch.randint(low, high, (batch_size,), generator=generator, dtype=torch.long)


def v_prediction_loss(
    transformer: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    reference_latents: torch.Tensor,
    entity_mask: torch.Tensor | None,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    reference_config: ReferenceConfig,
    image_rotary_emb: Any = None,
) -> torch.Tensor:
    """CogVideoX's v-prediction loss with the reference branch (see the module docstring).

    Args:
        transformer: the (possibly accelerate-wrapped) :class:`CustomVideoXTransformer3DModel`.
        scheduler: a CogVideoX DDIM/DPM scheduler (``add_noise``, ``get_velocity``, ``alphas_cumprod``).
        latents: clean video latents ``z_0``, ``(B, F, C, h, w)``, scaled.
        prompt_embeds: ``(B, L, D)``; reference_latents: ``(B, 1, C, h, w)``; entity_mask: ``(B, L)`` bool.
        timesteps: ``(B,)`` long; noise: like ``latents``.
    """
    device = latents.device
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    output = transformer(
        hidden_states=noisy,
        encoder_hidden_states=prompt_embeds,
        timestep=timesteps,
        image_rotary_emb=image_rotary_emb,
        reference_latents=reference_latents,
        entity_token_mask=entity_mask,
        reference_config=reference_config,
        return_dict=False,
    )[0]
    prediction = scheduler.get_velocity(output.float(), noisy.float(), timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device)[timesteps]
    weights = (1.0 / (1.0 - alphas_cumprod)).float().view(-1, *([1] * (latents.dim() - 1)))
    per_sample = (weights * (prediction - latents.float()) ** 2).reshape(latents.shape[0], -1).mean(dim=1)
    return per_sample.mean()


# ----------------------------------------------------------------------------------------- model loading


@dataclass
class TrainingModel:
    """The frozen components and the transformer (LoRA injected) for training."""

    transformer: Any
    scheduler: Any
    encoder: Any | None  # ConditionEncoder; None when the latent cache is complete
    vae_scaling_factor: float
    max_sequence_length: int
    model_name: str
    random_weights: bool


def build_training_model(config: TrainConfig, reference_config: ReferenceConfig, need_encoders: bool,
                         weight_dtype: torch.dtype, device: torch.device) -> TrainingModel:
    """Load (or for ``preset="tiny"`` build) CogVideoX with the reference LoRA, frozen except the LoRA.

    The LoRA starts as PEFT initialises it (A random, B zero: the reference branch starts as the base weights).

    Raises:
        customvideox.base_model.MissingWeightsError: CogVideoX-5B is not where ``config.model`` says.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler
    from transformers import AutoTokenizer, T5EncoderModel

    from .pipeline import CustomVideoXPipeline
    from .train_data import ConditionEncoder
    from .transformer import CustomVideoXTransformer3DModel

    if config.preset == "tiny":
        from .presets import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed=config.seed, reference_config=reference_config)
        for name, parameter in pipe.transformer.named_parameters():  # undo the preset's random LoRA B
            if ".lora_B." in name:
                torch.nn.init.zeros_(parameter.data)
        tokenizer, text_encoder, vae = pipe.tokenizer, pipe.text_encoder, pipe.vae
        transformer, scheduler, model_name, random_weights = pipe.transformer, pipe.scheduler, "tiny", True
    else:
        from .base_model import locate_base_model

        folder = locate_base_model(config.model)
        model_name = str(config.model or folder)
        transformer = CustomVideoXTransformer3DModel.from_pretrained(folder, subfolder="transformer",
                                                                     torch_dtype=weight_dtype)
        transformer.add_reference_lora(reference_config)
        scheduler = CogVideoXDDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        tokenizer = text_encoder = vae = None
        if need_encoders:
            tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
            text_encoder = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=weight_dtype)
            vae = AutoencoderKLCogVideoX.from_pretrained(folder, subfolder="vae", torch_dtype=weight_dtype)
            if config.vae_tiling:
                vae.enable_tiling()
            vae.enable_slicing()
        else:
            vae_config = AutoencoderKLCogVideoX.load_config(folder, subfolder="vae")
        random_weights = False
        pipe = None
    transformer.reference_config = reference_config
    mark_only_reference_lora_trainable(transformer)
    transformer.to(device=device)
    for parameter in transformer.parameters():  # frozen base in weight_dtype, LoRA in float32
        parameter.data = parameter.data.to(torch.float32 if parameter.requires_grad else weight_dtype)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()

    encoder = None
    if need_encoders:
        text_encoder.requires_grad_(False).eval().to(device=device, dtype=weight_dtype)
        vae.requires_grad_(False).eval().to(device=device, dtype=weight_dtype)
        pipe = pipe or CustomVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                            transformer=transformer, scheduler=scheduler)
        encoder = ConditionEncoder(pipe, transformer.config.max_text_seq_length)
        scaling = float(vae.config.scaling_factor)
    elif pipe is not None:
        scaling = float(pipe.vae.config.scaling_factor)
    else:
        scaling = float(vae_config["scaling_factor"])
    return TrainingModel(transformer, scheduler, encoder, scaling, transformer.config.max_text_seq_length,
                         model_name, random_weights)


# ----------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``checkpoint-<step>``) in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: ``None``, ``"latest"`` (``None`` when there is none yet) or a path.

    Raises:
        FileNotFoundError: a path (or the newest checkpoint) that is not a checkpoint folder of this trainer.
    """
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return None
        path = checkpoints[-1]
    else:
        path = Path(resume)
    if not (path / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(f"--resume {path}: not a checkpoint folder (no {LORA_WEIGHT_NAME} in it)")
    if not (path / PROGRESS_FILE).is_file():  # earlier checkpoints pickled the counter; never unpickled here
        raise FileNotFoundError(f"--resume {path}: no {PROGRESS_FILE} (a checkpoint of an older trainer; its step "
                                "counter is a pickle, which is not loaded)")
    return path


class TrainingProgress:
    """The optimizer-step counter, saved as JSON in every checkpoint (:data:`PROGRESS_FILE`).

    Not ``accelerator.register_for_checkpointing``: accelerate reloads such objects with
    ``torch.load(weights_only=False)``, i.e. unpickles arbitrary code from the checkpoint folder.
    """

    def __init__(self) -> None:
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step = int(state["global_step"])

    def save(self, checkpoint: Path) -> None:
        atomic_write_json(Path(checkpoint) / PROGRESS_FILE, self.state_dict())

    def load(self, checkpoint: Path) -> None:
        self.load_state_dict(json.loads((Path(checkpoint) / PROGRESS_FILE).read_text()))


def _register_lora_hooks(accelerator: Any, reference_config: ReferenceConfig) -> None:
    """Checkpoints keep the LoRA only (as safetensors), never the frozen base weights (diffusers' LoRA hooks)."""
    from .lora import load_reference_lora, save_reference_lora

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                save_reference_lora(accelerator.unwrap_model(model), Path(output_dir) / LORA_WEIGHT_NAME,
                                    reference_config)
                if weights:
                    weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            model = accelerator.unwrap_model(models.pop())
            load_reference_lora(model, Path(input_dir) / LORA_WEIGHT_NAME, reference_config)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator: Any, output_dir: Path, progress: TrainingProgress, limit: int | None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>.partial``, renamed when every process is done."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{progress.global_step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.save(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if limit is not None:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _stamp_random_base(file: Path) -> None:
    """Add ``customvideox_random_base_weights=true`` to a LoRA file's metadata (the base model was random)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata[RANDOM_BASE_METADATA_KEY] = "true"
    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# ----------------------------------------------------------------------------------------- training


def _tracker_config(config: TrainConfig) -> dict[str, Any]:
    """TensorBoard's hparams take scalars and strings only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()}


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def _batch_conditions(batch: dict[str, Any], model: TrainingModel, device: torch.device) -> dict[str, torch.Tensor]:
    from .train_data import CACHE_TENSORS

    if "video_posterior" in batch:  # from the cache
        return {k: batch[k].to(device) for k in CACHE_TENSORS}
    return model.encoder.encode(batch, device)


def _check_distributed_type(accelerator: Any, config: TrainConfig) -> None:
    """Refuse FSDP (see the error) before the model is loaded; give DeepSpeed the per-GPU batch size.

    DDP is tested (two CPU processes over gloo); the DeepSpeed ZeRO-2 path follows accelerate's documented use
    (``optimizer.step`` / ``zero_grad`` become no-ops inside the engine) but is not exercised by the tests.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        _release_accelerator_state()
        raise ValueError(
            "FSDP is not supported by customvideox train: FSDP gathers a wrapped block's weights in that block's "
            "forward, but the reference branch runs each CogVideoXBlock's norms, attention and feed-forward "
            "directly (customvideox.transformer.reference_block_forward), so sharded blocks would compute with "
            "shards. Only the LoRA is trained (132M parameters at rank 128); use DDP "
            "(configs/accelerate/multi_gpu.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml)."
        )
    if accelerator.state.deepspeed_plugin is not None:  # the dataloader is not prepared: tell DeepSpeed the batch
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size


def _release_accelerator_state() -> None:
    """Forget this run's accelerate settings (mixed precision, accumulation) so a later :func:`train` call in the
    same process may use others; the distributed state (process group) stays."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def train(config: TrainConfig) -> TrainResult:
    """Train the reference LoRA (see the module docstring); call it under ``accelerate launch`` for many processes.

    Raises:
        customvideox.base_model.MissingWeightsError: before any work, when CogVideoX-5B is missing.
        FileNotFoundError: the pair dataset or the ``resume`` checkpoint is missing.
        customvideox.train_data.TrainDataError: a pair or the cache cannot be used (names it).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .pipeline import COGVIDEOX_5B
    from .positions import video_rotary_pos_embed
    from .train_data import (
        CachedPairDataset,
        CacheSpec,
        PairStreamSampler,
        PairTrainDataset,
        collate_pairs,
        missing_cache_indices,
        precompute_cache,
        sample_video_latents,
        write_cache_index,
    )

    output_dir = Path(config.output_dir)
    reference_config = config.reference_config()
    if config.preset is None:  # the clear missing-weights error comes before anything is loaded or launched
        from .base_model import locate_base_model

        locate_base_model(config.model)
    pairs = PairTrainDataset(config.data, config.height, config.width, config.num_frames)
    # the pairs still to be read from disk (with a complete latent cache: none) must all be there
    pairs.check_files(None if config.cache_dir is None else missing_cache_indices(pairs, config.cache_dir))
    resume_from = resolve_resume(config.resume, output_dir)
    if config.resume is None and list_checkpoints(output_dir):  # a fresh run would overwrite them one by one
        raise ValueError(f"{output_dir} already holds checkpoints (newest: {list_checkpoints(output_dir)[-1].name}): "
                         "pass --resume latest to continue that run, or choose another --output-dir")

    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=config.cpu,
        # cached mode: the last block's reference-query LoRAs (to_q, to_out.0) feed only reference tokens that
        # nothing reads, so autograd never reaches them and DDP must not wait for them (in joint mode they get
        # zero gradients through the shared feed-forward)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=reference_config.mode == "cached")],
    )
    _check_distributed_type(accelerator, config)
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes

    # conditions: the latent cache (filled by every process, its share) or online encoders
    cache_spec = None
    need_encoders = True
    if config.cache_dir is not None:
        cache_spec = CacheSpec(model=config.preset or str(config.model or COGVIDEOX_5B), height=config.height,
                               width=config.width, num_frames=config.num_frames, max_sequence_length=-1,
                               random_weights=config.preset is not None)
        need_encoders = bool(missing_cache_indices(pairs, config.cache_dir))
    model = build_training_model(config, reference_config, need_encoders, weight_dtype, accelerator.device)
    transformer = model.transformer
    if cache_spec is not None:
        cache_spec = dataclasses.replace(cache_spec, max_sequence_length=model.max_sequence_length)
        if need_encoders:
            todo = missing_cache_indices(pairs, config.cache_dir)[rank::world]
            precompute_cache(pairs, model.encoder, config.cache_dir, cache_spec, todo, accelerator.device,
                             progress=config.progress and accelerator.is_local_main_process)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_cache_index(config.cache_dir, cache_spec, [pairs.clip_id(i) for i in range(len(pairs))])
            accelerator.wait_for_everyone()
        dataset = CachedPairDataset(config.cache_dir, cache_spec, [pairs.clip_id(i) for i in range(len(pairs))])
    else:
        dataset = pairs

    trainable = [p for _, p in lora_parameters(transformer)]
    num_trainable = sum(p.numel() for p in trainable)
    num_total = sum(p.numel() for p in transformer.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.weight_decay, eps=config.adam_epsilon)
    # accelerate steps a prepared scheduler once per process per optimizer step (diffusers' example scales alike)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * world,
                                 num_training_steps=config.max_train_steps * world)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    progress_state = TrainingProgress()
    _register_lora_hooks(accelerator, reference_config)

    if resume_from is not None:
        accelerator.print(f"resuming from {resume_from}")
        accelerator.load_state(str(resume_from))
        progress_state.load(resume_from)
    elif config.resume == "latest":
        accelerator.print(f"no checkpoint in {output_dir} yet: starting a new run")
    start_step = progress_state.global_step
    if accelerator.is_main_process:
        atomic_write_json(output_dir / TRAIN_CONFIG_FILE, {**config.to_dict(), "reference_config":
                                                           reference_config.to_dict()})
    if config.report_to and accelerator.is_main_process:
        accelerator.init_trackers("customvideox-train", config=_tracker_config(config))

    batch = config.train_batch_size
    sampler = PairStreamSampler(len(dataset), rank, world, config.seed,
                                start=start_step * config.gradient_accumulation_steps * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate_pairs,
                        num_workers=config.dataloader_num_workers, drop_last=False)
    unwrapped = accelerator.unwrap_model(transformer)
    t_max = config.timestep_max or model.scheduler.config.num_train_timesteps
    rotary_cache: dict[tuple[int, int, int], Any] = {}

    accelerator.print(
        f"training the reference LoRA: {num_trainable:,} trainable of {num_total:,} transformer parameters "
        f"({100 * num_trainable / num_total:.2f}%), {len(dataset)} pairs, {world} process(es) x batch {batch} x "
        f"accumulation {config.gradient_accumulation_steps}, steps {start_step} -> {config.max_train_steps}"
    )
    losses: list[float] = []
    learning_rates: list[float] = []
    checkpoints: list[Path] = []
    bar = tqdm(total=config.max_train_steps, initial=start_step, desc="train", disable=not (
        config.progress and accelerator.is_local_main_process))
    micro_step = start_step * config.gradient_accumulation_steps
    step_losses: list[torch.Tensor] = []
    started = time.perf_counter()
    data = iter(loader)
    while progress_state.global_step < config.max_train_steps:
        sample = next(data)
        generator = step_generator(config.seed, rank, micro_step)
        with accelerator.accumulate(transformer):
            conditions = _batch_conditions(sample, model, accelerator.device)
            latents = sample_video_latents(conditions["video_posterior"], model.vae_scaling_factor, generator)
            latents = latents.to(accelerator.device, weight_dtype)
            frames, height, width = latents.shape[1], latents.shape[3], latents.shape[4]
            if (frames, height, width) not in rotary_cache and unwrapped.config.use_rotary_positional_embeddings:
                rotary_cache[(frames, height, width)] = video_rotary_pos_embed(
                    unwrapped.config, frames, height, width, device=accelerator.device)
            timesteps = sample_timesteps(latents.shape[0], config.timestep_min, t_max, generator)
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            with accelerator.autocast():
                loss = v_prediction_loss(
                    transformer, model.scheduler, latents, conditions["prompt_embeds"].to(weight_dtype),
                    conditions["reference_latents"].to(weight_dtype), conditions["entity_mask"], timesteps, noise,
                    reference_config, rotary_cache.get((frames, height, width)),
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        step_losses.append(loss.detach().float())
        if not accelerator.sync_gradients:
            continue
        progress_state.global_step += 1
        step_loss = accelerator.reduce(torch.stack(step_losses).mean(), reduction="mean").item()
        step_losses = []
        lr = lr_scheduler.get_last_lr()[0]
        losses.append(step_loss)
        learning_rates.append(lr)
        accelerator.log({"loss": step_loss, "lr": lr}, step=progress_state.global_step)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        step = progress_state.global_step
        if step % config.checkpointing_steps == 0 or step == config.max_train_steps:
            checkpoints.append(
                _save_checkpoint(accelerator, output_dir, progress_state, config.checkpoints_total_limit))
    bar.close()
    seconds = time.perf_counter() - started

    lora_path = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from .lora import save_reference_lora

        lora_path = save_reference_lora(unwrapped, output_dir / LORA_WEIGHT_NAME, reference_config)
        if model.random_weights:
            _stamp_random_base(lora_path)
        atomic_write_json(output_dir / SUMMARY_FILE, {
            "lora": str(lora_path), "global_step": progress_state.global_step, "start_step": start_step,
            "model": model.model_name, "random_weights": model.random_weights, "processes": world,
            "trainable_parameters": num_trainable, "total_parameters": num_total, "seconds": seconds,
            "final_loss": losses[-1] if losses else None,
        })
        if model.random_weights:
            logger.warning("the base model is the random tiny preset: this LoRA is a smoke-test artefact")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    _release_accelerator_state()
    return TrainResult(progress_state.global_step, start_step, losses, learning_rates,
                       lora_path if lora_path is not None else output_dir / LORA_WEIGHT_NAME, checkpoints,
                       num_trainable, num_total, model.random_weights, seconds, unwrapped)
