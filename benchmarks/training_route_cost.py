"""What the training route costs at the paper's scale: curation (Appendix A), the condition cache, and training.

The route from OpenVid-1M to a trained reference LoRA (``docs/curation.md``, ``docs/training.md``), costed with the
cost model (:mod:`costmodel.counting`: every model built at its real size on the meta device, its calls run on
FakeTensors; no weights, no GPU):

* **Curation, per clip** (``customvideox data build``): stage 1 (quality) embeds the 25 sampled frames with CLIP
  ViT-L/14 (the aesthetic MLP on top is negligible) and runs RAFT-large (20 updates) on the 24 consecutive pairs at
  a 256-pixel short side; stage 2 (entity) runs Qwen2.5-7B-Instruct on the caption (a prefill of
  ``--llm-prompt-tokens`` and up to 64 generated tokens, each costed as a one-token forward); stage 3 (reference)
  runs Grounding DINO (base) on frame 0 at the processor's 800-pixel short side and SAM ViT-H on it at 1024.
* **Condition cache, per pair** (``customvideox train --cache-dir``): T5-XXL on the 226-token prompt, the
  CogVideoX VAE encoder on the 25-frame 480x720 clip and on the reference image.
* **Training** (section 6.1): 10,000 optimizer steps of batch 1 per GPU with gradient accumulation 2 on 16 GPUs;
  one micro-step's FLOPs and peak memory come from ``benchmarks/estimate.py`` (``reports/estimate_5b.json``, the
  same cost model on the 5B transformer with the rank-128 LoRA, with and without gradient checkpointing).

Seconds are FLOP-proportional at :data:`costmodel.method_cost.EFFECTIVE_TFLOPS_PER_S` (a bf16 DiT's efficiency on an
H100), so they are floors: convolutions, small batches, the LLM's memory-bound decoding, video decoding and IO run
slower. The paper does not give the curation funnel (how many of OpenVid-1M's clips reach each stage), so the
curation rows give the cost per 1,000 clips and the total for ``--clips`` clips entering stage 1 (default: all of
OpenVid-1M) and the 51K kept pairs entering stages 2 and 3 (a lower bound for those stages).

Usage::

    python benchmarks/training_route_cost.py --out reports/training_route_cost.json   # minutes on a CPU
    python benchmarks/training_route_cost.py --report-only reports/training_route_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.configs import CLIP_L_VISION  # noqa: E402
from costmodel.counting import (  # noqa: E402
    GIB,
    FakeStage,
    PiecesCost,
    image_call,
    run_for_real,
    text_call,
    vae_encode_call,
)
from costmodel.method_cost import EFFECTIVE_TFLOPS_PER_S  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Section 5.1 / 6.1: 51K pairs; 10,000 steps of batch 1 per GPU, accumulation 2, on 16 GPUs; 25 frames of 480x720.
PAIRS = 51_000
STEPS, ACCUMULATION, GPUS = 10_000, 2, 16
FRAMES, HEIGHT, WIDTH, TEXT_TOKENS = 25, 480, 720, 226
#: OpenVid-1M's clip count (its dataset card: "over 1 million"); ``--clips`` overrides it.
OPENVID_CLIPS = 1_000_000
#: 1080p sources (stage 1 keeps a short side of at least 1080) as Grounding DINO's processor resizes them
#: (shortest edge 800, longest at most 1333) and as SAM's does (longest edge 1024, padded to 1024x1024).
DETECTOR_SIZE = (750, 1333)
SAM_SIZE = 1024
#: Qwen2.5-7B-Instruct ``config.json``.
QWEN25_7B: dict[str, Any] = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768, "rope_theta": 1e6,
    "tie_word_embeddings": False,
}
#: facebook/sam-vit-huge ``vision_config``.
SAM_VIT_H: dict[str, Any] = {
    "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "mlp_dim": 5120,
    "global_attn_indexes": [7, 15, 23, 31], "image_size": 1024, "patch_size": 16, "output_channels": 256,
}
#: IDEA-Research/grounding-dino-base ``backbone_config`` (Swin-B at 384); the rest is GroundingDinoConfig's default.
SWIN_B_384: dict[str, Any] = {
    "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12, "image_size": 384,
    "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4],
}


def quality_stage(memory: bool) -> PiecesCost:
    """Stage 1 per clip: CLIP ViT-L/14 on the 25 sampled frames, RAFT-large on the 24 consecutive pairs."""
    from torchvision.models.optical_flow import raft_large
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from videobench.metrics.dynamic import NUM_FLOW_UPDATES, raft_final_flow

    stage = FakeStage(torch.float32)  # the curation runs CLIP in fp32 (quality.ClipEmbedder)
    clip = stage.build(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L_VISION)))
    raft = stage.build(lambda: raft_large(weights=None, progress=False))
    stage.add("CLIP ViT-L/14", image_call(clip, 224, FRAMES), 1, f"{FRAMES} frames at 224")
    pairs, size = FRAMES - 1, (256, 456)  # 16:9 at a 256-pixel short side, sides multiple of 8
    stage.add("RAFT-large", lambda: raft_final_flow(raft, torch.randn(pairs, 3, *size), torch.randn(pairs, 3, *size),
                                                    NUM_FLOW_UPDATES), 1,
              f"{pairs} pairs at {size[0]}x{size[1]}, {NUM_FLOW_UPDATES} updates")
    return stage.measure(memory)


def entity_stage(prompt_tokens: int, new_tokens: int, memory: bool) -> PiecesCost:
    """Stage 2 per clip: Qwen2.5-7B-Instruct reads the caption prompt and writes up to ``new_tokens`` tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    stage = FakeStage(torch.bfloat16)
    llm = stage.build(lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN25_7B)))
    stage.add("Qwen2.5-7B prefill", text_call(llm, prompt_tokens, use_cache=False, logits_to_keep=1), 1,
              f"{prompt_tokens} prompt tokens")
    stage.add("Qwen2.5-7B decode", text_call(llm, 1, use_cache=False, logits_to_keep=1), new_tokens,
              "one token (its attention to the context not counted)")
    return stage.measure(memory)


def reference_stage(memory: bool) -> PiecesCost:
    """Stage 3 per clip: Grounding DINO (base) finds the entity in frame 0, SAM ViT-H segments its box.

    Grounding DINO's forward reads tensor values (its text masks and query selection), which FakeTensors do not
    have, so it runs for real on the CPU with random weights (:func:`~costmodel.counting.run_for_real`): its FLOPs
    are counted the same way; its peak is its weights only."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, SamConfig, SamModel, SwinConfig

    height, width = DETECTOR_SIZE
    text = 4  # "[CLS] entity . [SEP]"
    with run_for_real("cpu", warmup=0, repeats=1):
        stage = FakeStage(torch.float32)  # the curation loads both with from_pretrained's default dtype
        detector = stage.build(lambda: GroundingDinoForObjectDetection(GroundingDinoConfig(
            backbone_config=SwinConfig(**SWIN_B_384))))

    def detect() -> Any:
        ids = torch.ones(1, text, dtype=torch.long)
        return detector(pixel_values=torch.randn(1, 3, height, width), input_ids=ids,
                        attention_mask=torch.ones_like(ids), pixel_mask=torch.ones(1, height, width, dtype=torch.long))

    stage.add("Grounding DINO (base)", detect, 1, f"1 frame at {height}x{width}, {text} text tokens (run on CPU)")
    detected = stage.measure()
    stage = FakeStage(torch.float32)
    sam = stage.build(lambda: SamModel(SamConfig(vision_config=SAM_VIT_H)))

    def segment() -> Any:
        return sam(pixel_values=torch.randn(1, 3, SAM_SIZE, SAM_SIZE), input_boxes=torch.rand(1, 1, 4) * SAM_SIZE,
                   multimask_output=True)

    stage.add("SAM ViT-H", segment, 1, f"1 frame at {SAM_SIZE}x{SAM_SIZE}, one box")
    segmented = stage.measure(memory)
    return PiecesCost([*detected.pieces, *segmented.pieces], max(detected.peak_bytes, segmented.peak_bytes))


def condition_cache(memory: bool) -> PiecesCost:
    """One pair's conditions: T5-XXL on the prompt, the VAE encoder on the clip and on the reference image."""
    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5Config, T5EncoderModel

    from customvideox import presets

    stage = FakeStage(torch.bfloat16)
    text = stage.build(lambda: T5EncoderModel(T5Config(**presets.T5_XXL)))
    vae = stage.build(lambda: AutoencoderKLCogVideoX(**presets.COGVIDEOX_5B_VAE))
    stage.add("T5-XXL", text_call(text, TEXT_TOKENS), 1, f"{TEXT_TOKENS} tokens")
    stage.add("VAE encode (clip)", vae_encode_call(vae, (1, 3, FRAMES, HEIGHT, WIDTH)), 1,
              f"{FRAMES}x{HEIGHT}x{WIDTH}")
    stage.add("VAE encode (reference)", vae_encode_call(vae, (1, 3, 1, HEIGHT, WIDTH)), 1, f"1x{HEIGHT}x{WIDTH}")
    return stage.measure(memory)


def per_item(name: str, cost: PiecesCost, items: int, unit: str, gpus: int, rate: float) -> dict[str, Any]:
    """A row: TFLOP and floor seconds per item, GPU-hours for ``items`` and hours on ``gpus`` GPUs, peak GiB."""
    seconds = cost.flops / 1e12 / rate
    return {"name": name, "unit": unit, "items": items, "tflops_per_item": cost.flops / 1e12,
            "seconds_per_item": seconds, "gpu_hours": seconds * items / 3600,
            "hours": seconds * items / 3600 / gpus, "gpus": gpus, "peak_gib": cost.peak_bytes / GIB,
            "parts": [piece.to_dict() for piece in cost.pieces]}


def training_rows(estimates: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    """The paper's training run from the micro-step estimates of ``benchmarks/estimate.py``."""
    rows = []
    for entry in estimates["training"]:
        micro = entry["micro_step_tflops"]
        seconds = ACCUMULATION * micro / rate  # AdamW over 132M parameters is negligible beside it
        checkpointing = "on" if entry["gradient_checkpointing"] else "off"
        rows.append({"name": f"customvideox train (gradient checkpointing {checkpointing})", "unit": "optimizer step",
                     "items": STEPS, "tflops_per_item": ACCUMULATION * micro, "seconds_per_item": seconds,
                     "gpu_hours": seconds * STEPS * GPUS / 3600, "hours": seconds * STEPS / 3600, "gpus": GPUS,
                     "peak_gib": entry["peak_gib"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| step | per | TFLOP per | s per (floor) | count | GPU-hours | wall hours | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        wall = f"{row['hours']:.2f} on {row['gpus']} GPU{'s' if row['gpus'] > 1 else ''}"
        lines.append(f"| {row['name']} | {row['unit']} | {row['tflops_per_item']:.2f} | {row['seconds_per_item']:.3f} "
                     f"| {row['items']:,} | {row['gpu_hours']:,.1f} | {wall} | {row['peak_gib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=OPENVID_CLIPS, help="clips entering curation stage 1")
    parser.add_argument("--pairs", type=int, default=PAIRS, help="clips entering stages 2-3, and cached pairs")
    parser.add_argument("--gpus", type=int, default=GPUS, help="GPUs sharing curation and the cache")
    parser.add_argument("--llm-prompt-tokens", type=int, default=400, help="system prompt + template + caption")
    parser.add_argument("--llm-new-tokens", type=int, default=64, help="EntityExtractor's max_new_tokens")
    parser.add_argument("--tflops-per-s", type=float, default=EFFECTIVE_TFLOPS_PER_S)
    parser.add_argument("--estimates", type=Path, default=REPO / "reports" / "estimate_5b.json",
                        help="benchmarks/estimate.py's output (the training micro-step)")
    parser.add_argument("--no-memory", action="store_true", help="FLOPs only (faster; peaks = weights)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                        help="print the table of a JSON this script wrote, computing nothing")
    args = parser.parse_args(argv)
    if args.report_only is not None:
        result = json.loads(args.report_only.read_text(encoding="utf-8"))
        print(markdown(result["rows"]))
        return result
    memory, rate = not args.no_memory, args.tflops_per_s
    rows = []
    for name, build, items in [
        ("curation stage 1 (quality: CLIP ViT-L/14 + RAFT-large)", lambda: quality_stage(memory), args.clips),
        ("curation stage 2 (entity: Qwen2.5-7B)",
         lambda: entity_stage(args.llm_prompt_tokens, args.llm_new_tokens, memory), args.pairs),
        ("curation stage 3 (reference: Grounding DINO + SAM ViT-H)", lambda: reference_stage(memory), args.pairs),
        ("condition cache (T5-XXL + VAE encoder)", lambda: condition_cache(memory), args.pairs),
    ]:
        started = time.perf_counter()
        rows.append(per_item(name, build(), items, "clip", args.gpus, rate))
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr)
    rows += training_rows(json.loads(args.estimates.read_text(encoding="utf-8")), rate)
    result = {"estimate": True, "torch": torch.__version__, "tflops_per_s": rate, "clips": args.clips,
              "pairs": args.pairs, "steps": STEPS, "accumulation": ACCUMULATION, "rows": rows,
              "markdown": markdown(rows)}
    print(result["markdown"])
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
