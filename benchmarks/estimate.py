"""Estimated FLOPs and peak memory of CustomVideoX at the real CogVideoX-5B size, on any machine (no GPU needed).

The companion of ``step_latency.py`` and ``train_step.py`` for machines
without a GPU: the same model, shapes and variants, run on FakeTensors (:mod:`customvideox.fake_tensors`: shapes only, no
weights, no memory, seconds to minutes on a CPU).

* Inference, one CFG step (batch 2, 49 frames at 480x720, bf16): the FLOPs of vanilla CogVideoX and of the four
  CustomVideoX variants (joint / cached, TAB+ERAE off / on), their ratio to vanilla, the FLOPs of the cached mode's
  one-off reference extraction, peak memory, and a *FLOP-proportional* time: ``--vanilla-seconds`` (default 1.85 s,
  vanilla's step as measured on an H100 with ``step_latency.py``) times the FLOP ratio. The FLOP ratio is a lower bound on the time ratio:
  the reference's short attention, the log-sum-exp merge and ERAE's map run below the big matmuls' efficiency.
* Training, one optimizer step at the paper's setting (batch 1, 25 frames at 480x720, gradient accumulation 2,
  the frozen base in bf16, the LoRA (rank 128) in float32 under bf16 autocast, AdamW), with and without gradient
  checkpointing: FLOPs per micro-step (forward + backward, recomputation included), the FLOP-proportional time of an
  optimizer step at the inference step's implied rate (a floor), and the peak memory with its breakdown
  (parameters, gradients, optimizer states, activations, temporaries), against one 80 GB GPU.

Usage::

    python benchmarks/estimate.py --out reports/estimate.json
    python benchmarks/estimate.py --tiny          # the tiny preset's configs (a quick check of the script)

Estimates, not measurements: see :mod:`customvideox.fake_tensors` for what the model cannot see. Measure on a GPU with
``step_latency.py`` and ``train_step.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_latency import (  # noqa: E402
    COGVIDEOX_5B_SCHEDULER,
    COGVIDEOX_5B_TRANSFORMER,
    REAL_SHAPE,
    VARIANTS,
    step_fn,
    step_inputs,
)

from costmodel.counting import count_flops, track_peak_memory  # noqa: E402
from customvideox.config import ReferenceConfig  # noqa: E402
from customvideox.fake_tensors import fake_transformer, fixed_entity_tokens  # noqa: E402
from customvideox.lora import lora_parameters  # noqa: E402
from customvideox.train import v_prediction_loss  # noqa: E402

GIB = 2**30
#: Training clip of section 6.1: 25 frames at 480x720 -> 7 latent frames of 60x90, 226 text tokens.
TRAIN_SHAPE = (7, 60, 90, 226)
#: One GPU's memory the paper's training setting must fit in (an 80 GB A100/H100 exposes about 79.2 GiB to CUDA).
GPU_GIB = 80e9 / GIB


def estimate_inference(transformer_config: dict, shape: tuple, lora: dict, vanilla_seconds: float) -> dict[str, Any]:
    """FLOPs, FLOP-proportional seconds and peak memory of one CFG step per variant (see the module docstring)."""
    mode = FakeTensorMode()
    model = fake_transformer(transformer_config, ReferenceConfig(**lora), mode)
    rows, cache_flops = [], None
    with mode, torch.no_grad():
        inputs = step_inputs(model, shape, torch.device("cpu"), torch.bfloat16)
        for name, config in VARIANTS:
            config = config.replace(**lora) if config is not None else None
            cache = None
            if config is not None and config.mode == "cached":
                cache, cache_flops = count_flops(
                    functools.partial(model.build_reference_cache, inputs["reference"], reference_config=config)
                )
            run = step_fn(model, inputs, config, cache)
            _, flops = count_flops(run)
            tracked = [model] + ([*cache.keys, *cache.values] if cache is not None else [])
            peak = track_peak_memory(run, *tracked)
            rows.append({"variant": name, "tflops": flops / 1e12, "peak_gib": peak["total"] / GIB})
    base = rows[0]["tflops"]
    for row in rows:
        row["vs_vanilla"] = row["tflops"] / base
        row["flop_proportional_s"] = vanilla_seconds * row["vs_vanilla"]
    return {
        "per_step": rows, "reference_cache_build_tflops": cache_flops / 1e12,
        "vanilla_seconds": vanilla_seconds, "implied_tflop_per_s": base / vanilla_seconds,
    }


def estimate_training(transformer_config: dict, shape: tuple, lora: dict, accumulation: int,
                      checkpointing: bool) -> dict[str, Any]:
    """FLOPs per micro-step and the peak memory of an optimizer step (see the module docstring)."""
    from diffusers import CogVideoXDDIMScheduler

    frames, height, width, text_len = shape
    reference_config = ReferenceConfig(**lora)
    fake = FakeTensorMode()
    model = fake_transformer(transformer_config, reference_config, fake, lora_dtype=torch.float32).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    trainable = [p for _, p in lora_parameters(model)]
    with fake, fixed_entity_tokens():  # the loss takes the entity mask, as the trainer does
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)  # its tables become FakeTensors too
        inputs = step_inputs(model, (frames, height, width, text_len), torch.device("cpu"), torch.bfloat16)
        latents, embeds = inputs["latents"][:1], inputs["prompt_embeds"][:1]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2)

        def micro_step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = v_prediction_loss(
                    model, scheduler, latents, embeds, inputs["reference"], inputs["entity"][:1],
                    torch.tensor([500]), torch.randn_like(latents), reference_config, inputs["rotary"],
                )
            (loss / accumulation).backward()

        def last_micro_step() -> None:
            micro_step()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        _, flops = count_flops(micro_step)
        optimizer.zero_grad(set_to_none=True)
        for parameter in trainable:  # AdamW's states exist from the second optimizer step on: create them
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        peak = track_peak_memory([micro_step] * (accumulation - 1) + [last_micro_step], model, optimizer)
    return {
        "gradient_checkpointing": checkpointing, "micro_step_tflops": flops / 1e12,
        "peak_gib": peak["total"] / GIB, "peak_breakdown_gib": {k: v / GIB for k, v in peak.items() if k != "total"},
        "fits_80gb_gpu": peak["total"] / GIB < GPU_GIB,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset's configs (a quick check)")
    parser.add_argument("--vanilla-seconds", type=float, default=1.85,
                        help="measured vanilla s/step that FLOP-proportional times are scaled from (H100, step_latency.py)")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the estimates as JSON here")
    args = parser.parse_args(argv)

    if args.tiny:
        from customvideox.presets import TINY_LORA_RANK, TINY_TRANSFORMER

        transformer_config, rank = dict(TINY_TRANSFORMER), TINY_LORA_RANK
        frames = (TINY_TRANSFORMER["sample_frames"] - 1) // 4 + 1
        grid = (TINY_TRANSFORMER["sample_height"], TINY_TRANSFORMER["sample_width"], 16)
        inference_shape, train_shape = (frames, *grid), (frames, *grid)
    else:
        transformer_config, rank = COGVIDEOX_5B_TRANSFORMER, 128
        inference_shape, train_shape = REAL_SHAPE, TRAIN_SHAPE
    lora = {"lora_rank": rank, "lora_alpha": float(rank)}
    started = time.perf_counter()
    result: dict[str, Any] = {
        "estimate": True, "config": "tiny" if args.tiny else "cogvideox-5b", "torch": torch.__version__,
        "inference_shape": inference_shape, "training_shape": train_shape,
        "inference": estimate_inference(transformer_config, inference_shape, lora, args.vanilla_seconds),
    }
    print(f"inference, one CFG step (batch 2), latent shape {inference_shape}, bf16; FLOP-proportional times "
          f"from vanilla = {args.vanilla_seconds} s/step ({result['inference']['implied_tflop_per_s']:.0f} TFLOP/s)")
    print("| variant | TFLOP | vs vanilla | FLOP-proportional s/step | peak GiB |\n|---|---|---|---|---|")
    for row in result["inference"]["per_step"]:
        print(f"| {row['variant']} | {row['tflops']:.1f} | {row['vs_vanilla']:.3f} | "
              f"{row['flop_proportional_s']:.3f} | {row['peak_gib']:.1f} |")
    print(f"reference cache build (once per video): {result['inference']['reference_cache_build_tflops']:.2f} TFLOP")
    if not args.skip_training:
        result["training"] = [
            estimate_training(transformer_config, train_shape, lora, args.accumulation, checkpointing)
            for checkpointing in (True, False)
        ]
        rate = result["inference"]["implied_tflop_per_s"]
        for row in result["training"]:  # a floor: backward kernels run below the inference step's efficiency
            row["flop_proportional_s_per_optimizer_step"] = args.accumulation * row["micro_step_tflops"] / rate
        print(f"\ntraining, latent shape {train_shape}, batch 1, accumulation {args.accumulation}, bf16 base + "
              "float32 LoRA, AdamW")
        print("| gradient checkpointing | TFLOP per micro-step | FLOP-proportional s per optimizer step | peak GiB | "
              "fits 80 GB | breakdown GiB |")
        print("|---|---|---|---|---|---|")
        for row in result["training"]:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["peak_breakdown_gib"].items() if v >= 0.005)
            print(f"| {'on' if row['gradient_checkpointing'] else 'off'} | {row['micro_step_tflops']:.1f} | "
                  f"{row['flop_proportional_s_per_optimizer_step']:.2f} | {row['peak_gib']:.1f} | {'yes' if row['fits_80gb_gpu'] else 'no'} | {parts} |")
    result["seconds"] = time.perf_counter() - started
    if args.out:
        from mediaio.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
