"""Seconds per training step and peak memory of ``customvideox train`` at the real CogVideoX-5B size.

Random weights (no download), CogVideoX-5B's transformer config, the reference LoRA (rank 128, the paper's), 25 frames
at 480x720 (7 latent frames of 60x90: 9,450 video tokens, 226 text tokens, 1,350 reference tokens), batch 1, bf16
autocast with the frozen base in bf16 and the LoRA in float32, gradient checkpointing on (``--no-checkpointing`` to
compare). One *micro-step* is what one GPU does per batch (forward + backward of :func:`v_prediction_loss`, the
training objective); an *optimizer step* is ``--accumulation`` (2, the paper's) micro-steps plus AdamW. Conditions
(latents, T5 embeddings, reference latent) are random tensors, as with the precomputed cache, so the VAE and T5 are
not part of the timing.

It also prints the trainable (LoRA) parameter count of the 5B config, counted on the meta device (no memory).

Usage (on a GPU)::

    python benchmarks/train_step.py --steps 5 --warmup 2 --out reports/train_step.json

``--tiny`` runs the same code on the tiny preset's transformer on the CPU (a smoke test of the script);
``--allow-cpu --frames 5 --height 32 --width 48 --text-tokens 16`` runs the real 5B config on a tiny clip on the CPU
(about 14 GB of RAM: a check of the real-config code path, not a timing). ``benchmarks/estimate.py`` estimates the
5B step's peak memory without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_latency import COGVIDEOX_5B_SCHEDULER, COGVIDEOX_5B_TRANSFORMER  # noqa: E402

from customvideox.config import ReferenceConfig  # noqa: E402
from customvideox.lora import lora_parameters, mark_only_reference_lora_trainable  # noqa: E402
from customvideox.positions import video_rotary_pos_embed  # noqa: E402
from customvideox.train import v_prediction_loss  # noqa: E402
from customvideox.transformer import CustomVideoXTransformer3DModel  # noqa: E402

#: The paper's reference LoRA rank (section 6.1); the training clip: 25 frames at 480x720.
LORA_RANK = 128
#: ``--tiny``'s clip (frames, height, width): the tiny preset's 9 frames of 128x192.
TINY_VIDEO = (9, 128, 192)


def count_parameters(transformer_config: dict[str, Any], reference_config: ReferenceConfig) -> dict[str, int]:
    """Base and LoRA parameter counts, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = CustomVideoXTransformer3DModel(**transformer_config)
        base = sum(p.numel() for p in model.parameters())
        lora = model.add_reference_lora(reference_config)
    return {"base_parameters": base, "lora_parameters": lora}


def make_reference_lora_trainable(model: CustomVideoXTransformer3DModel,
                                  checkpointing: bool) -> list[torch.nn.Parameter]:
    """Freeze the base (it keeps its dtype), train the reference LoRA in float32, optionally with gradient
    checkpointing; the model goes to train mode. Returns the trainable parameters."""
    mark_only_reference_lora_trainable(model)
    trainable = [parameter for _, parameter in lora_parameters(model)]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    return trainable


@contextlib.contextmanager
def reference_lora_training(model: CustomVideoXTransformer3DModel,
                            checkpointing: bool = True) -> Iterator[list[torch.nn.Parameter]]:
    """:func:`make_reference_lora_trainable` for the block, on a model already in use for inference (the 5B base is
    shared, not rebuilt); afterwards the LoRA is back in its dtype (the optimizer's updates kept), gradients are
    dropped, and ``requires_grad``, checkpointing and train/eval mode are as before."""
    lora_dtypes = {name: parameter.dtype for name, parameter in lora_parameters(model)}
    requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    was_training, was_checkpointing = model.training, model.gradient_checkpointing
    trainable = make_reference_lora_trainable(model, checkpointing)
    try:
        yield trainable
    finally:
        for name, parameter in lora_parameters(model):
            parameter.grad = None
            parameter.data = parameter.data.to(lora_dtypes[name])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad[name])
        if not was_checkpointing:
            model.disable_gradient_checkpointing()
        model.train(was_training)


def build(transformer_config: dict[str, Any], reference_config: ReferenceConfig, device: torch.device,
          dtype: torch.dtype, checkpointing: bool) -> CustomVideoXTransformer3DModel:
    """Random-initialise the base directly on ``device`` in ``dtype``, inject the LoRA and make it trainable."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random-initialise the 5B base directly in bf16
    try:
        with device:
            model = CustomVideoXTransformer3DModel(**transformer_config)
    finally:
        torch.set_default_dtype(previous)
    model.add_reference_lora(reference_config)
    make_reference_lora_trainable(model, checkpointing)
    return model


def training_inputs(model_config: Any, frames: int, height: int, width: int, text_tokens: int | None,
                    device: torch.device, dtype: torch.dtype, generator: torch.Generator) -> dict[str, Any]:
    """Random conditions of one batch-1 clip of ``frames`` x ``height`` x ``width`` (as the precomputed cache holds
    them): latents, T5 embeddings, the reference latent, an entity mask and the rotary tables."""
    latent_frames = (frames - 1) // 4 + 1
    channels, h, w = model_config.in_channels, height // 8, width // 8
    text_len = text_tokens or model_config.max_text_seq_length

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    entity_mask = torch.zeros(1, text_len, dtype=torch.bool, device=device)
    entity_mask[0, 3:5] = True
    return dict(
        latents=tensor(1, latent_frames, channels, h, w),
        prompt_embeds=tensor(1, text_len, model_config.text_embed_dim),
        reference=tensor(1, 1, channels, h, w),
        entity_mask=entity_mask,
        rotary=video_rotary_pos_embed(model_config, latent_frames, h, w, device=device),
    )


def optimizer_step_fn(model: CustomVideoXTransformer3DModel, trainable: list[torch.nn.Parameter],
                      inputs: dict[str, Any], reference_config: ReferenceConfig, accumulation: int,
                      dtype: torch.dtype, generator: torch.Generator) -> Callable[[], float]:
    """One optimizer step as a function: ``accumulation`` micro-steps (forward + backward of
    :func:`v_prediction_loss` under ``dtype`` autocast), gradient clipping, AdamW. It returns the mean loss."""
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2)
    latents = inputs["latents"]
    device = latents.device

    def optimizer_step() -> float:
        losses = []
        for _ in range(accumulation):
            timesteps = torch.randint(0, 1000, (1,), generator=generator)
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = v_prediction_loss(model, scheduler, latents, inputs["prompt_embeds"], inputs["reference"],
                                         inputs["entity_mask"], timesteps, noise, reference_config, inputs["rotary"])
            (loss / accumulation).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses)

    return optimizer_step


def time_optimizer_steps(optimizer_step: Callable[[], float], warmup: int, steps: int,
                         device: torch.device) -> dict[str, Any]:
    """Median seconds of ``steps`` optimizer steps after ``warmup`` untimed ones, the last loss, and the peak memory
    of the timed steps (CUDA; ``None`` elsewhere)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        optimizer_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], None
    for _ in range(steps):
        started = time.perf_counter()
        loss = optimizer_step()
        sync()
        times.append(time.perf_counter() - started)
    return {
        "seconds_per_optimizer_step": sorted(times)[len(times) // 2], "timed_steps": len(times), "last_loss": loss,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="The tiny preset's transformer on the CPU (smoke test).")
    parser.add_argument("--device", default=None)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--steps", type=int, default=5, help="Timed optimizer steps.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed optimizer steps first.")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--mode", choices=["joint", "cached"], default="joint")
    parser.add_argument("--text-tokens", type=int, default=None, help="Prompt length (default: the config's 226).")
    parser.add_argument("--allow-cpu", action="store_true", help="Run the 5B config on the CPU (use a tiny clip).")
    parser.add_argument("--out", type=Path, default=None, help="Write the numbers as JSON here.")
    args = parser.parse_args()

    if args.tiny:
        from customvideox.presets import TINY_LORA_RANK, TINY_TRANSFORMER

        transformer_config, rank = dict(TINY_TRANSFORMER), TINY_LORA_RANK
        device = torch.device(args.device or "cpu")
        frames, height, width = TINY_VIDEO
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    else:
        transformer_config, rank = dict(COGVIDEOX_5B_TRANSFORMER), LORA_RANK
        device = torch.device(args.device or ("cpu" if args.allow_cpu else "cuda"))
        if device.type != "cuda" and not args.allow_cpu:
            sys.exit("the 5B benchmark needs a CUDA GPU (use --tiny, or --allow-cpu with a tiny clip, on a CPU)")
        frames, height, width = args.frames, args.height, args.width
        dtype = torch.bfloat16
    reference_config = ReferenceConfig(mode=args.mode, lora_rank=rank, lora_alpha=float(rank))
    counts = count_parameters(transformer_config, reference_config)
    print(f"parameters: base {counts['base_parameters']:,}, reference LoRA {counts['lora_parameters']:,} "
          f"({100 * counts['lora_parameters'] / counts['base_parameters']:.2f}% of the base)")

    model = build(transformer_config, reference_config, device, dtype, not args.no_checkpointing)
    trainable = [p for _, p in lora_parameters(model)]
    generator = torch.Generator().manual_seed(0)
    inputs = training_inputs(model.config, frames, height, width, args.text_tokens, device, dtype, generator)
    step = optimizer_step_fn(model, trainable, inputs, reference_config, args.accumulation, dtype, generator)
    timing = time_optimizer_steps(step, args.warmup, args.steps, device)
    per_step = timing["seconds_per_optimizer_step"]
    result = {
        **counts, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": "tiny" if args.tiny else "cogvideox-5b", "frames": frames, "height": height, "width": width,
        "latent_shape": list(inputs["latents"].shape), "mode": args.mode,
        "gradient_checkpointing": not args.no_checkpointing, "dtype": str(dtype), "accumulation": args.accumulation,
        "seconds_per_optimizer_step": per_step, "seconds_per_micro_step": per_step / args.accumulation,
        "timed_steps": timing["timed_steps"], "last_loss": timing["last_loss"],
        "peak_memory_gib": timing["peak_memory_gib"],
        # the paper: 10,000 optimizer steps, batch 1 per GPU, accumulation 2, 16 GPUs (data parallel: same
        # per-GPU step time, 16x the samples)
        "hours_for_10k_steps": per_step * 10_000 / 3600,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from mediaio.atomic import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
