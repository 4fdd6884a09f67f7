"""Per-step latency of vanilla CogVideoX-5B and CustomVideoX, peak memory, and one 50-step video end to end.

Random weights (no download), the real CogVideoX-5B transformer config, bf16, batch 2
(classifier-free guidance), 49 frames at 480x720 (13 latent frames of 60x90, 17,550 video tokens + 226 text
tokens; the reference adds one latent frame: 1,350 tokens). All variants run in one process on one model:

* ``vanilla``: diffusers' ``CogVideoXTransformer3DModel.forward`` with its own attention processor, before the
  reference LoRA is injected;
* ``joint`` / ``cached``, each with TAB+ERAE off (``3d-ra``) and on (``3d-ra+tab+erae``); the cached mode's
  one-off reference extraction (:meth:`build_reference_cache`) is timed separately.

Then one video end to end with the fastest CustomVideoX mode (``--e2e-mode``): reference VAE encode, cache
build, ``--e2e-steps`` DDIM steps with CFG, VAE decode (tiling on by default, as the CogVideoX demo does).
Prompt embeddings are random tensors (the T5 encoder is not part of the timing).

Usage (on a GPU)::

    python benchmarks/step_latency.py --device cuda --steps 5 --warmup 2 --out reports/step_latency.json

``--tiny`` runs the same code on the tiny preset's configs (CPU is fine) as a smoke test; its timings (and the
target checks) mean nothing. ``--allow-cpu --shape 3,4,6,16`` runs the real 5B config (bf16, 11 GB of RAM) on a
small latent shape on the CPU: a check of the real-config code path, not a timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0  # noqa: E402

from customvideox import attention  # noqa: E402
from customvideox.attention import lse_backend_status  # noqa: E402
from customvideox.config import ReferenceConfig  # noqa: E402
from customvideox.fake_tensors import cfg_step_inputs as step_inputs  # noqa: E402
from customvideox.lora import has_reference_lora  # noqa: E402
from customvideox.presets import (  # noqa: E402, F401  (the real configs, re-exported for the other scripts)
    COGVIDEOX_5B_SCHEDULER,
    COGVIDEOX_5B_TRANSFORMER,
    COGVIDEOX_5B_VAE,
)
from customvideox.transformer import CustomVideoXTransformer3DModel  # noqa: E402

#: (latent frames, latent height, latent width, text tokens) of 49 frames at 480x720.
REAL_SHAPE = (13, 60, 90, 226)

#: Latency targets (meaningful at the real config on an H100/H200): step time over vanilla's, ...
JOINT_MAX_RATIO = 1.12
CACHED_MAX_RATIO = 1.05
#: ... TAB+ERAE's step time over the same mode without them, and one 50-step video end to end (seconds).
TAB_ERAE_MAX_RATIO = 1.03
VIDEO_MAX_SECONDS = 90.0
#: The variant whose steps make the end-to-end video (the full method in cached mode).
FULL_CACHED = "cached, TAB+ERAE on"

VARIANTS: list[tuple[str, ReferenceConfig | None]] = [
    ("vanilla", None),
    ("joint, TAB+ERAE off", ReferenceConfig(ablation="3d-ra", mode="joint")),
    ("joint, TAB+ERAE on", ReferenceConfig(ablation="3d-ra+tab+erae", mode="joint")),
    ("cached, TAB+ERAE off", ReferenceConfig(ablation="3d-ra", mode="cached")),
    ("cached, TAB+ERAE on", ReferenceConfig(ablation="3d-ra+tab+erae", mode="cached")),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_call(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> dict[str, float | None]:
    """Median and mean wall time of ``fn`` over ``steps`` runs after ``warmup`` runs, plus peak memory."""
    _reset_peak(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "peak_gib": _peak_gib(device)}


def construct(cls: type, config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-initialise ``cls(**config)`` directly on ``device`` in ``dtype`` (no fp32 copy of 5B weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def build(device: torch.device, dtype: torch.dtype, tiny: bool = False,
          shape: tuple[int, int, int, int] | None = None):
    """Random-weight transformer (diffusers' attention processor, no LoRA yet), the VAE config, the LoRA settings
    and the inputs of one CFG step: the 5B config at ``shape`` (default :data:`REAL_SHAPE`), or the tiny preset."""
    if tiny:
        from customvideox.presets import TINY_LORA_RANK, TINY_TEXT_LENGTH, TINY_TRANSFORMER, TINY_VAE

        transformer_cfg, vae_cfg = dict(TINY_TRANSFORMER), dict(TINY_VAE)
        frames = (TINY_TRANSFORMER["sample_frames"] - 1) // 4 + 1
        shape = (frames, TINY_TRANSFORMER["sample_height"], TINY_TRANSFORMER["sample_width"], TINY_TEXT_LENGTH)
        reference_config = dict(lora_rank=TINY_LORA_RANK, lora_alpha=float(TINY_LORA_RANK))
    else:
        transformer_cfg, vae_cfg, reference_config = COGVIDEOX_5B_TRANSFORMER, COGVIDEOX_5B_VAE, {}
        shape = shape or REAL_SHAPE
    torch.manual_seed(0)
    model = construct(CustomVideoXTransformer3DModel, transformer_cfg, device, dtype)
    model.set_attn_processor(CogVideoXAttnProcessor2_0())  # vanilla runs diffusers' own processor
    inputs = step_inputs(model, shape, device, dtype)
    return model, vae_cfg, reference_config, inputs


def step_fn(model: CustomVideoXTransformer3DModel, inputs: dict, config: ReferenceConfig | None, cache=None,
            through_call: bool = False):
    """One CFG step of ``config`` (``None``: vanilla CogVideoX).

    Vanilla runs ``CogVideoXTransformer3DModel.forward`` with whatever processor is set (diffusers' own before the
    LoRA is injected), unless ``through_call``: then ``model(...)`` without a reference (what ``model.compile()``
    compiles; CustomVideoX's processor, identical to diffusers' CogVideoX attention).
    """
    if config is None:
        forward = model if through_call else functools.partial(CogVideoXTransformer3DModel.forward, model)

        def run():
            return forward(
                inputs["latents"], inputs["prompt_embeds"], inputs["timestep"],
                image_rotary_emb=inputs["rotary"], return_dict=False,
            )[0]

        return run

    def run():
        return model(
            inputs["latents"], inputs["prompt_embeds"], inputs["timestep"], image_rotary_emb=inputs["rotary"],
            reference_latents=inputs["reference"], entity_tokens=inputs["entity_tokens"], reference_cache=cache,
            reference_config=config, return_dict=False,
        )[0]

    return run


def variant_config(name: str, lora_cfg: dict) -> ReferenceConfig | None:
    """The :class:`ReferenceConfig` of the :data:`VARIANTS` row ``name`` with the LoRA settings (``None``: vanilla)."""
    config = dict(VARIANTS)[name]
    return config.replace(**lora_cfg) if config is not None else None


def ensure_reference_lora(model: CustomVideoXTransformer3DModel, lora_cfg: dict) -> None:
    """Inject the reference LoRA unless it is there (peft gives the LoRA the base layers' dtype)."""
    if not has_reference_lora(model):
        model.add_reference_lora(ReferenceConfig(**lora_cfg))


def time_variant(model: CustomVideoXTransformer3DModel, inputs: dict, name: str, lora_cfg: dict, warmup: int,
                 steps: int) -> dict[str, Any]:
    """One row of the per-step table: the :data:`VARIANTS` row ``name`` (its reference cache built first, untimed).

    Vanilla runs diffusers' own attention processor only while the LoRA is not injected (see :func:`build`).
    """
    config = variant_config(name, lora_cfg)
    if config is not None:
        ensure_reference_lora(model, lora_cfg)
    cache = None
    if config is not None and config.mode == "cached":
        cache = model.build_reference_cache(inputs["reference"], reference_config=config)
    timing = time_call(step_fn(model, inputs, config, cache), warmup, steps, inputs["latents"].device)
    return {"variant": name, **timing}


def variant_rows(model: CustomVideoXTransformer3DModel, inputs: dict, lora_cfg: dict, warmup: int,
                 steps: int) -> Iterator[dict[str, Any]]:
    """Time every :data:`VARIANTS` row in order, one at a time: vanilla first, before the LoRA is injected."""
    for name, _ in VARIANTS:
        yield time_variant(model, inputs, name, lora_cfg, warmup, steps)


def time_reference_cache(model: CustomVideoXTransformer3DModel, inputs: dict, config: ReferenceConfig,
                         warmup: int = 1, steps: int = 3) -> dict[str, float | None]:
    """Seconds of the cached mode's one-off reference extraction (:meth:`build_reference_cache`)."""
    build_cache = functools.partial(model.build_reference_cache, inputs["reference"], reference_config=config)
    return time_call(build_cache, warmup, steps, inputs["latents"].device)


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``vs_vanilla`` (and ``vs_compiled_vanilla`` to compiled rows) to the per-step rows, in place."""
    base = next(row["median_s"] for row in rows if row["variant"] == "vanilla")
    compiled_base = next((row["median_s"] for row in rows if row["variant"] == "vanilla, compiled"), None)
    for row in rows:
        row["vs_vanilla"] = row["median_s"] / base
        if compiled_base and row["variant"].endswith(", compiled"):
            row["vs_compiled_vanilla"] = row["median_s"] / compiled_base
    return rows


def step_targets(by_name: dict[str, float]) -> dict[str, bool]:
    """The per-step targets from the median seconds of the :data:`VARIANTS` rows."""
    base = by_name["vanilla"]
    return {
        f"joint <= {JOINT_MAX_RATIO}x vanilla": max(by_name[f"joint, TAB+ERAE {s}"] for s in ("off", "on")) / base
        <= JOINT_MAX_RATIO,
        f"cached <= {CACHED_MAX_RATIO}x vanilla": max(by_name[f"cached, TAB+ERAE {s}"] for s in ("off", "on")) / base
        <= CACHED_MAX_RATIO,
        f"TAB+ERAE adds <= {round(100 * (TAB_ERAE_MAX_RATIO - 1))}%": all(
            by_name[f"{m}, TAB+ERAE on"] <= TAB_ERAE_MAX_RATIO * by_name[f"{m}, TAB+ERAE off"]
            for m in ("joint", "cached")
        ),
    }


def targets_meaningful(inputs: dict, tiny: bool) -> bool:
    """Whether the timings can be held against the targets: the 5B config at :data:`REAL_SHAPE` on a GPU."""
    frames, height, width, text_len = REAL_SHAPE
    real = tuple(inputs["latents"].shape[1:]) == (frames, COGVIDEOX_5B_TRANSFORMER["in_channels"], height, width)
    real = real and inputs["prompt_embeds"].shape[1] == text_len
    return inputs["latents"].device.type == "cuda" and not tiny and real


#: Rows timed again after ``model.compile()`` (``--compile``): the baseline and the two full-method modes.
COMPILED_VARIANTS = ["vanilla", FULL_CACHED, "joint, TAB+ERAE on"]


def compile_transformer(model: CustomVideoXTransformer3DModel, backend: str = "inductor",
                        mode: str | None = None) -> None:
    """Compile the transformer in place (``nn.Module.compile``, static shapes); it stays compiled afterwards."""
    model.compile(backend=backend, mode=mode, dynamic=False)


def time_compiled_variant(model: CustomVideoXTransformer3DModel, inputs: dict, name: str, lora_cfg: dict,
                          warmup: int, steps: int) -> dict[str, Any]:
    """One compiled row: ``name``'s first call compiles (a recompilation per reference config), untimed but reported
    as ``first_call_s``; then ``steps`` timed calls after ``warmup``.

    The compiled vanilla row calls the model without a reference: CustomVideoX's processor then computes exactly
    diffusers' CogVideoX attention (tested bit-identical), so both sides of the ratio are compiled alike.
    """
    config = variant_config(name, lora_cfg)
    cache = None
    if config is not None and config.mode == "cached":
        cache = model.build_reference_cache(inputs["reference"], reference_config=config)
    run = step_fn(model, inputs, config, cache, through_call=True)
    compile_start = time.perf_counter()
    run()
    _sync(inputs["latents"].device)
    compile_s = time.perf_counter() - compile_start
    timing = time_call(run, warmup, steps, inputs["latents"].device)
    return {"variant": f"{name}, compiled", **timing, "first_call_s": compile_s}


def compiled_rows(model: CustomVideoXTransformer3DModel, inputs: dict, lora_cfg: dict, args) -> list[dict]:
    """Compile the transformer in place (it stays compiled for the end-to-end video) and time
    :data:`COMPILED_VARIANTS` (see :func:`time_compiled_variant`)."""
    compile_transformer(model, args.compile_backend, args.compile_mode)
    return [time_compiled_variant(model, inputs, name, lora_cfg, args.warmup, args.steps) for name in COMPILED_VARIANTS]


def encode_reference(vae: AutoencoderKLCogVideoX, pixels: tuple[int, int], generator: torch.Generator,
                     device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A random reference image of ``pixels`` = (height, width) through the VAE encoder (untiled): its scaled latent
    ``(1, 1, C, h, w)``."""
    height, width = pixels
    image = torch.rand(1, 3, 1, height, width, generator=generator, device=device, dtype=dtype) * 2 - 1
    latent = vae.encode(image).latent_dist.sample(generator)
    return latent.permute(0, 2, 1, 3, 4) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKLCogVideoX, latents: torch.Tensor, tiling: bool = True) -> torch.Tensor:
    """Scaled ``(B, F, C, h, w)`` latents -> ``(B, 3, 4(F-1)+1, 8h, 8w)`` frames; ``tiling``: the CogVideoX demo's
    memory settings (VAE tiling and slicing, switched on for good)."""
    if tiling:
        vae.enable_tiling()
        vae.enable_slicing()
    return vae.decode(latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample


@torch.no_grad()
def generate_video(
    model, vae, scheduler, inputs: dict, config: ReferenceConfig, steps: int, guidance: float, device, dtype,
    tiling: bool = True,
) -> dict[str, float]:
    """One CFG video: encode the reference, extract it once (cached mode), denoise, decode. Returns timings."""
    _sync(device)
    start = time.perf_counter()
    g = torch.Generator(device).manual_seed(2)
    reference = encode_reference(vae, inputs["pixels"], g, device, dtype)
    cache = model.build_reference_cache(reference, reference_config=config) if config.mode == "cached" else None
    _sync(device)
    t_reference = time.perf_counter() - start

    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(inputs["latents"][:1].shape, generator=g, device=device, dtype=dtype)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        pred = model(
            model_input, inputs["prompt_embeds"], t.expand(2), image_rotary_emb=inputs["rotary"],
            reference_latents=reference, entity_tokens=inputs["entity_tokens"], reference_cache=cache,
            reference_config=config, return_dict=False,
        )[0].float()
        uncond, cond = pred.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0].to(dtype)
    _sync(device)
    t_denoise = time.perf_counter() - start - t_reference

    frames = decode_latents(vae, latents, tiling)  # the reference image was encoded untiled
    _sync(device)
    total = time.perf_counter() - start
    assert frames.shape[2] == (latents.shape[1] - 1) * 4 + 1
    decode = total - t_reference - t_denoise
    return {"reference_s": t_reference, "denoise_s": t_denoise, "decode_s": decode, "total_s": total}


def _latent_shape(text: str) -> tuple[int, int, int, int]:
    """``"13,60,90,226"`` -> (latent frames, latent height, latent width, text tokens); height/width even."""
    try:
        frames, height, width, text = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants four integers F,H,W,L, got {text!r}") from None
    if min(frames, height, width, text) < 1 or height % 2 or width % 2 or frames % 2 == 0:
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: positive sizes, an odd latent frame count (8k+1 video frames) and even latent "
            "height/width (patch 2)"
        )
    return frames, height, width, text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=5, help="timed transformer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--e2e-steps", type=int, default=50, help="DDIM steps of the end-to-end video (0: skip)")
    parser.add_argument("--e2e-mode", default="cached", choices=["cached", "joint"])
    parser.add_argument("--no-vae-tiling", action="store_true", help="decode without VAE tiling/slicing")
    parser.add_argument("--tiny", action="store_true", help="tiny preset configs (CPU smoke run)")
    parser.add_argument("--compile", action="store_true",
                        help="also time vanilla and the full method compiled (the e2e video then runs compiled)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: a CPU check)")
    parser.add_argument(
        "--shape", type=_latent_shape, default=None,
        help="latent frames,height,width,text tokens of the real-config run (default 13,60,90,226: 49x480x720)",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run the real config on the CPU (use a small --shape)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type != "cuda" and not (args.tiny or args.allow_cpu):
        parser.error("the real-config benchmark needs a CUDA device; use --tiny (or --allow-cpu --shape) on a CPU")
    dtype = getattr(torch, args.dtype)
    model, vae_cfg, lora_cfg, inputs = build(device, dtype, args.tiny, args.shape)

    with torch.no_grad():
        rows = list(variant_rows(model, inputs, lora_cfg, args.warmup, args.steps))
        cache_timing = time_reference_cache(model, inputs, variant_config("cached, TAB+ERAE off", lora_cfg))
        if args.compile:
            rows += compiled_rows(model, inputs, lora_cfg, args)
    with_ratios(rows)
    targets = step_targets({row["variant"]: row["median_s"] for row in rows})

    e2e = None
    if args.e2e_steps > 0:
        vae = construct(AutoencoderKLCogVideoX, vae_cfg, device, dtype)
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)
        config = ReferenceConfig(mode=args.e2e_mode, **lora_cfg)
        _reset_peak(device)
        tiling = not (args.no_vae_tiling or args.tiny)  # the tiny VAE is smaller than one tile
        e2e = generate_video(model, vae, scheduler, inputs, config, args.e2e_steps, 6.0, device, dtype, tiling)
        e2e.update(mode=args.e2e_mode, steps=args.e2e_steps, peak_gib=_peak_gib(device), compiled=args.compile)
        if args.e2e_steps == 50:
            targets[f"50-step video < {VIDEO_MAX_SECONDS:g} s"] = e2e["total_s"] < VIDEO_MAX_SECONDS

    _, frames, _, height, width = inputs["latents"].shape
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": device_name, "dtype": args.dtype, "tiny": args.tiny, "batch": 2,
        "shape": dict(zip(
            ("latent_frames", "latent_height", "latent_width", "text_tokens"),
            (frames, height, width, inputs["prompt_embeds"].shape[1]),
        )),
        "targets_meaningful": targets_meaningful(inputs, args.tiny),
        "steps": args.steps, "warmup": args.warmup, "per_step": rows, "reference_cache_build": cache_timing,
        "end_to_end": e2e, "targets": targets, "random_weights": True, "torch": torch.__version__,
        "lse_kernels": lse_backend_status(),
        "compiled_merge": attention.COMPILE_MERGE_ON_CUDA and device.type == "cuda",
    }
    print(f"device: {device_name}, {args.dtype}, batch 2 (CFG), shape {result['shape']}, random weights")
    print("| variant | s/step (median) | vs vanilla | vs compiled vanilla | peak GiB |\n|---|---|---|---|---|")
    for row in rows:
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        versus_compiled = f"{row['vs_compiled_vanilla']:.3f}" if "vs_compiled_vanilla" in row else "-"
        print(f"| {row['variant']} | {row['median_s']:.4f} | {row['vs_vanilla']:.3f} | {versus_compiled} | {peak} |")
    print(f"fused LSE kernels checked: {result['lse_kernels'] or 'none (CPU)'}")
    if cache_timing:
        print(f"reference cache build (once per video): {cache_timing['median_s']:.4f} s")
    if e2e:
        print(
            f"end to end ({e2e['mode']}, {e2e['steps']} steps, CFG, VAE decode): {e2e['total_s']:.2f} s "
            f"(reference {e2e['reference_s']:.2f} s, denoise {e2e['denoise_s']:.2f} s, decode {e2e['decode_s']:.2f} s)"
        )
    if not result["targets_meaningful"]:
        print("(not the real shape on a GPU: the target checks below mean nothing)")
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))
    if args.out:
        from mediaio.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
