"""Per-step latency of vanilla CogVideoX-5B and CustomVideoX, peak memory, and one 50-step video end to end.

Issue 3, section 6. Random weights (no download), the real CogVideoX-5B transformer config, bf16, batch 2
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
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0  # noqa: E402

from customvideox import attention  # noqa: E402
from customvideox.attention import lse_backend_status  # noqa: E402
from customvideox.config import ReferenceConfig  # noqa: E402
from customvideox.positions import video_rotary_pos_embed  # noqa: E402
from customvideox.transformer import CustomVideoXTransformer3DModel  # noqa: E402

#: CogVideoX-5B ``transformer/config.json``.
COGVIDEOX_5B_TRANSFORMER: dict[str, Any] = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    max_text_seq_length=226, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
#: CogVideoX-5B ``vae/config.json`` differs from ``AutoencoderKLCogVideoX``'s defaults only in the scaling factor.
COGVIDEOX_5B_VAE: dict[str, Any] = dict(scaling_factor=0.7)
#: CogVideoX-5B ``scheduler/scheduler_config.json`` (DDIM, v-prediction, zero terminal SNR).
COGVIDEOX_5B_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing",
)
#: (latent frames, latent height, latent width, text tokens) of 49 frames at 480x720.
REAL_SHAPE = (13, 60, 90, 226)

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


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """Random-weight transformer, VAE, scheduler and the inputs of one CFG step."""
    if args.tiny:
        from customvideox.presets import TINY_TRANSFORMER, TINY_VAE, TINY_TEXT_LENGTH

        transformer_cfg, vae_cfg = dict(TINY_TRANSFORMER), dict(TINY_VAE)
        frames = (TINY_TRANSFORMER["sample_frames"] - 1) // 4 + 1
        shape = (frames, TINY_TRANSFORMER["sample_height"], TINY_TRANSFORMER["sample_width"], TINY_TEXT_LENGTH)
        reference_config = dict(lora_rank=8, lora_alpha=8.0)
    else:
        transformer_cfg, vae_cfg, reference_config = COGVIDEOX_5B_TRANSFORMER, COGVIDEOX_5B_VAE, {}
        shape = args.shape or REAL_SHAPE
    torch.manual_seed(0)
    model = construct(CustomVideoXTransformer3DModel, transformer_cfg, device, dtype)
    model.set_attn_processor(CogVideoXAttnProcessor2_0())  # vanilla runs diffusers' own processor
    inputs = step_inputs(model, shape, device, dtype)
    return model, vae_cfg, reference_config, inputs


def step_inputs(model: CogVideoXTransformer3DModel, shape: tuple[int, int, int, int], device: torch.device,
                dtype: torch.dtype) -> dict[str, Any]:
    """The inputs of one CFG step (batch 2) at latent ``shape`` = (frames, height, width, text tokens), seeded."""
    frames, height, width, text_len = shape
    g = torch.Generator(device).manual_seed(1)
    channels, text_dim = model.config.in_channels, model.config.text_embed_dim
    entity = torch.zeros(2, text_len, dtype=torch.bool, device=device)
    entity[:, 3:5] = True  # a two-token entity word in both CFG halves
    # ... and its indices, gathered once per video as the pipeline does (no host sync or graph break per step)
    entity_tokens = (torch.arange(3, 5, device=device).expand(2, 2), torch.ones(2, 2, dtype=torch.bool, device=device))
    return dict(
        latents=torch.randn(2, frames, channels, height, width, generator=g, device=device, dtype=dtype),
        prompt_embeds=torch.randn(2, text_len, text_dim, generator=g, device=device, dtype=dtype),
        timestep=torch.full((2,), 500, device=device, dtype=torch.long),
        rotary=video_rotary_pos_embed(model.config, frames, height, width, device=device),
        reference=torch.randn(1, 1, channels, height, width, generator=g, device=device, dtype=dtype),
        entity=entity,
        entity_tokens=entity_tokens,
        pixels=(height * 8, width * 8),
    )


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


#: Rows timed again after ``model.compile()`` (``--compile``): the baseline and the two full-method modes.
COMPILED_VARIANTS = ["vanilla", "cached, TAB+ERAE on", "joint, TAB+ERAE on"]


def compiled_rows(model: CustomVideoXTransformer3DModel, inputs: dict, lora_cfg: dict, args) -> list[dict]:
    """Compile the transformer in place (``nn.Module.compile``; it stays compiled for the end-to-end video) and time
    :data:`COMPILED_VARIANTS`; each variant's first call compiles (a recompilation per reference config), untimed.

    The compiled vanilla row calls the model without a reference: CustomVideoX's processor then computes exactly
    diffusers' CogVideoX attention (tested bit-identical), so both sides of the ratio are compiled alike.
    """
    model.compile(backend=args.compile_backend, mode=args.compile_mode, dynamic=False)
    configs = dict(VARIANTS)
    rows = []
    for name in COMPILED_VARIANTS:
        config = configs[name].replace(**lora_cfg) if configs[name] is not None else None
        cache = None
        if config is not None and config.mode == "cached":
            cache = model.build_reference_cache(inputs["reference"], reference_config=config)
        run = step_fn(model, inputs, config, cache, through_call=True)
        compile_start = time.perf_counter()
        run()
        _sync(inputs["latents"].device)
        compile_s = time.perf_counter() - compile_start
        timing = time_call(run, args.warmup, args.steps, inputs["latents"].device)
        rows.append({"variant": f"{name}, compiled", **timing, "first_call_s": compile_s})
    return rows


@torch.no_grad()
def generate_video(
    model, vae, scheduler, inputs: dict, config: ReferenceConfig, steps: int, guidance: float, device, dtype,
    tiling: bool = True,
) -> dict[str, float]:
    """One CFG video: encode the reference, extract it once (cached mode), denoise, decode. Returns timings."""
    _sync(device)
    start = time.perf_counter()
    height, width = inputs["pixels"]
    g = torch.Generator(device).manual_seed(2)
    image = torch.rand(1, 3, 1, height, width, generator=g, device=device, dtype=dtype) * 2 - 1
    reference = vae.encode(image).latent_dist.sample(g).permute(0, 2, 1, 3, 4) * vae.config.scaling_factor
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

    if tiling:  # the CogVideoX demo's memory settings; the reference image was encoded untiled
        vae.enable_tiling()
        vae.enable_slicing()
    frames = vae.decode(latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample
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
    model, vae_cfg, lora_cfg, inputs = build(args, device, dtype)

    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        vanilla = time_call(step_fn(model, inputs, None), args.warmup, args.steps, device)
        rows.append({"variant": "vanilla", **vanilla})
        model.add_reference_lora(ReferenceConfig(**lora_cfg))  # peft gives the LoRA the base layers' dtype
        cache_timing = None
        for name, config in VARIANTS[1:]:
            config = config.replace(**lora_cfg)
            cache = None
            if config.mode == "cached":
                build_cache = lambda: model.build_reference_cache(inputs["reference"], reference_config=config)
                cache_timing = cache_timing or time_call(build_cache, 1, 3, device)
                cache = build_cache()
            timing = time_call(step_fn(model, inputs, config, cache), args.warmup, args.steps, device)
            rows.append({"variant": name, **timing})
            del cache
        if args.compile:
            rows += compiled_rows(model, inputs, lora_cfg, args)
    base = rows[0]["median_s"]
    compiled_base = next((row["median_s"] for row in rows if row["variant"] == "vanilla, compiled"), None)
    for row in rows:
        row["vs_vanilla"] = row["median_s"] / base
        if compiled_base and row["variant"].endswith(", compiled"):
            row["vs_compiled_vanilla"] = row["median_s"] / compiled_base
    by_name = {row["variant"]: row["median_s"] for row in rows}
    targets = {  # issue 3, section 6 (meaningful at the real config on an H100)
        "joint <= 1.12x vanilla": max(by_name[f"joint, TAB+ERAE {s}"] for s in ("off", "on")) / base <= 1.12,
        "cached <= 1.05x vanilla": max(by_name[f"cached, TAB+ERAE {s}"] for s in ("off", "on")) / base <= 1.05,
        "TAB+ERAE adds <= 3%": all(
            by_name[f"{m}, TAB+ERAE on"] <= 1.03 * by_name[f"{m}, TAB+ERAE off"] for m in ("joint", "cached")
        ),
    }

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
            targets["50-step video < 90 s"] = e2e["total_s"] < 90.0

    _, frames, _, height, width = inputs["latents"].shape
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": device_name, "dtype": args.dtype, "tiny": args.tiny, "batch": 2,
        "shape": dict(zip(
            ("latent_frames", "latent_height", "latent_width", "text_tokens"),
            (frames, height, width, inputs["prompt_embeds"].shape[1]),
        )),
        "targets_meaningful": device.type == "cuda" and not args.tiny and tuple(inputs["latents"].shape[1:]) == (
            REAL_SHAPE[0], COGVIDEOX_5B_TRANSFORMER["in_channels"], *REAL_SHAPE[1:3]
        ) and inputs["prompt_embeds"].shape[1] == REAL_SHAPE[3],
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
