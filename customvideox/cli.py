"""The ``customvideox`` command line: a thin click layer over the library.

    customvideox data build --videos DIR --captions TABLE --out OUT     (the pair data of Appendix A)
    customvideox train --data OUT --output-dir RUN [--preset tiny | --model COGVIDEOX]   (the reference LoRA)

Each command is one function registered on :data:`main` (or one of its groups), so adding ``train`` is one more
``@main.command()``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import click

from customvideox.config import ERAE_NORMALIZATIONS, parse_rope_shift
from videobench.cli_common import EXIT_CASE_FAILURES as EXIT_FAILURES  # some clip had an ``error`` row
from videobench.cli_common import EXIT_INTERRUPTED, EXIT_SETUP_ERROR, command_group  # noqa: F401 (re-export)
from videobench.cli_common import fail as _fail


@command_group
def main() -> None:
    """CustomVideoX: zero-shot customized video generation on CogVideoX-5B (data curation, training)."""


@main.group()
def data() -> None:
    """Training data: reference-video pairs (paper section 5.1, Appendix A)."""


@data.command("build")
@click.option("--videos", "videos_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the videos named in the caption table.")
@click.option("--captions", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Caption table: CSV/TSV/JSONL/parquet with columns video, caption (OpenVid-1M's CSV works as is).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--video-column", default="video", show_default=True)
@click.option("--caption-column", default="caption", show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N clips of the table.")
@click.option("--stages", default="quality,entity,reference", show_default=True,
              help="Comma-separated stages to run (the others' manifests are read as they are).")
@click.option("--force", multiple=True, type=click.Choice(["quality", "entity", "reference", "all"]),
              help="Re-decide a stage from scratch instead of resuming (repeatable).")
# models
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
              help="Models folder (default: $VIDEOBENCH_WEIGHTS, else ~/.cache/videobench/weights).")
@click.option("--clip-weights", default=None, help="CLIP ViT-L/14 open_clip state dict (stage 1).")
@click.option("--clip-model", default="ViT-L-14-quickgelu", show_default=True, help="open_clip model name.")
@click.option("--aesthetic-weights", default=None, help="sac+logos+ava1-l14-linearMSE.pth (stage 1).")
@click.option("--raft-weights", default=None, help="RAFT-large weights (stage 1 motion score).")
@click.option("--entity-extractor", type=click.Choice(["llm", "rule"]), default="llm", show_default=True,
              help="Qwen2.5-Instruct (the paper) or the deterministic offline rules.")
@click.option("--llm", default=None, help="Qwen2.5-Instruct folder (stage 2).")
@click.option("--detector", default=None, help="Grounding DINO folder (stage 3).")
@click.option("--segmenter", default=None, help="SAM folder (stage 3).")
@click.option("--random-weights", is_flag=True,
              help="Random-initialised CLIP, aesthetic head and RAFT (smoke runs only; stamped in every manifest).")
@click.option("--device", default="cpu", show_default=True)
# thresholds
@click.option("--min-short-side", type=int, default=1080, show_default=True, help="Resolution: 1080p.")
@click.option("--min-aesthetic", type=float, default=5.3, show_default=True)
@click.option("--min-motion", type=float, default=0.5, show_default=True,
              help="Mean RAFT flow magnitude (px at short side 256) between sampled frames.")
@click.option("--min-temporal-consistency", type=float, default=0.85, show_default=True,
              help="Lowest CLIP cosine of consecutive sampled frames.")
@click.option("--min-box-score", type=float, default=0.35, show_default=True, help="Grounding DINO box score.")
# the target clip (section 6.1)
@click.option("--num-frames", type=int, default=25, show_default=True)
@click.option("--interval", type=int, default=3, show_default=True)
@click.option("--height", type=int, default=480, show_default=True)
@click.option("--width", type=int, default=720, show_default=True)
@click.option("--no-progress", is_flag=True)
def data_build(videos_dir: Path, captions: Path, out: Path, video_column: str, caption_column: str,
               limit: int | None, stages: str, force: tuple[str, ...], weights_dir: Path | None,
               clip_weights: str | None, clip_model: str, aesthetic_weights: str | None, raft_weights: str | None,
               entity_extractor: str, llm: str | None, detector: str | None, segmenter: str | None,
               random_weights: bool, device: str, min_short_side: int, min_aesthetic: float, min_motion: float,
               min_temporal_consistency: float, min_box_score: float, num_frames: int, interval: int, height: int,
               width: int, no_progress: bool) -> None:
    """Build reference-video pairs: quality filter -> entity extraction -> Grounded-SAM reference (resumable)."""
    from customvideox.curation import (
        AESTHETIC,
        CLIP_L14,
        GROUNDING_DINO,
        QWEN,
        SAM,
        ClipWindow,
        QualityConfig,
        ReferenceConfig,
        build_entity_stage,
        build_pairs,
        build_quality_filter,
        build_reference_extractor,
        check_models,
        load_captions,
    )
    from customvideox.curation.models import merge_missing
    from customvideox.curation.pairs import CaptionTableError
    from customvideox.curation.quality import raft_weight_spec
    from videobench.weights import MissingWeightsError, WeightsConfig, check_weights

    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    try:
        sources = load_captions(captions, videos_dir, video_column, caption_column)
    except CaptionTableError as error:
        _fail(str(error))
    if limit is not None:
        sources = sources[:limit]
    window = ClipWindow(num_frames=num_frames, interval=interval)
    quality_config = QualityConfig(min_short_side=min_short_side, min_aesthetic=min_aesthetic, min_motion=min_motion,
                                   min_temporal_consistency=min_temporal_consistency)
    reference_config = ReferenceConfig(height=height, width=width, min_box_score=min_box_score)
    # every model is checked before any work, so a missing one never stops a build half-way
    wanted = []
    if "quality" in chosen and not random_weights:
        wanted += [(CLIP_L14, clip_weights), (AESTHETIC, aesthetic_weights)]
    if "entity" in chosen and entity_extractor == "llm":
        wanted.append((QWEN, llm))
    if "reference" in chosen:
        wanted += [(GROUNDING_DINO, detector), (SAM, segmenter)]
    problems: list[MissingWeightsError] = []
    try:
        check_models(wanted, weights_dir)
    except MissingWeightsError as error:
        problems.append(error)
    if "quality" in chosen and not random_weights:
        try:
            check_weights([raft_weight_spec(raft_weights)], WeightsConfig(weights_dir=weights_dir))
        except MissingWeightsError as error:
            problems.append(error)
    if problems:
        _fail(str(merge_missing(problems)))

    def quality():
        return build_quality_filter(weights_dir, clip_weights=clip_weights, aesthetic_weights=aesthetic_weights,
                                    raft_weights=raft_weights, clip_model=clip_model, config=quality_config,
                                    window=window, device=device, random_weights=random_weights)

    def entity():
        return build_entity_stage(entity_extractor, weights_dir, llm_path=llm, device=device)

    def reference():
        return build_reference_extractor(weights_dir, detector_path=detector, segmenter_path=segmenter,
                                         config=reference_config, window=window, device=device)

    run_info = {"command": "customvideox data build", "videos": str(videos_dir), "captions": str(captions),
                "entity_extractor": entity_extractor, "window": asdict(window)}
    try:
        summary = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, force=force,
                              stages=chosen, progress=not no_progress, run_info=run_info)
    except (ValueError, MissingWeightsError) as error:
        _fail(str(error))
    for stage in summary.stages:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(stage.dropped.items())) or "none"
        click.echo(f"{stage.stage:<10} kept {stage.kept:>6}  dropped: {dropped}  errors {stage.errors}  "
                   f"(decided now {stage.decided_now}, {stage.seconds:.1f} s)")
    click.echo(f"{summary.pairs} pairs -> {Path(out) / 'pairs.parquet'}")
    if random_weights:
        click.secho("random-initialised models: these decisions are meaningless (smoke run)", fg="yellow", err=True)
    logging.getLogger(__name__).debug(json.dumps(summary.as_dict()))
    if summary.errors:
        sys.exit(EXIT_FAILURES)


def _rope_shift_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float, float]:
    try:
        return parse_rope_shift(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@main.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Pair dataset folder from `customvideox data build` (holds pairs.parquet).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints, the final LoRA (pytorch_lora_weights.safetensors), logs.")
@click.option("--model", default=None,
              help="CogVideoX-5B: a diffusers folder or a hub id (default: THUDM/CogVideoX-5b from the HF cache).")
@click.option("--preset", type=click.Choice(["tiny"]), default=None,
              help="The random-initialised tiny model (smoke runs; the LoRA is stamped as trained on random weights).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Precomputed VAE latents + T5 embeddings: filled on the first run, then T5 and the VAE are skipped.")
@click.option("--resume", default=None, help='Checkpoint folder, or "latest" (the newest in --output-dir).')
@click.option("--ablation", type=click.Choice(["3d-ra", "3d-ra+tab", "3d-ra+tab+erae"]), default="3d-ra+tab+erae",
              show_default=True, help="Table 2 row the LoRA is trained for (TAB/ERAE active as at inference).")
@click.option("--mode", type=click.Choice(["joint", "cached"]), default="joint", show_default=True)
@click.option("--rope-shift", default="-1,0,0", show_default=True, callback=_rope_shift_option,
              help="Eq. 5's position shift delta of the reference tokens: temporal,height,width in RoPE grid units.")
@click.option("--erae-normalization", type=click.Choice(ERAE_NORMALIZATIONS),
              default="per-frame", show_default=True,
              help="How ERAE's entity attention map is scaled before its threshold (docs/customvideox.md).")
@click.option("--lora-rank", type=int, default=None, help="LoRA rank (default 128; tiny preset: 8).")
@click.option("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank).")
@click.option("--height", type=int, default=480, show_default=True)
@click.option("--width", type=int, default=720, show_default=True)
@click.option("--num-frames", type=int, default=25, show_default=True)
@click.option("--learning-rate", type=float, default=1e-5, show_default=True)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--lr-scheduler", default="constant", show_default=True, help="diffusers get_scheduler name.")
@click.option("--lr-warmup-steps", type=int, default=0, show_default=True)
@click.option("--batch-size", "train_batch_size", type=int, default=1, show_default=True, help="Per process.")
@click.option("--gradient-accumulation-steps", type=int, default=2, show_default=True)
@click.option("--max-train-steps", type=int, default=10_000, show_default=True, help="Optimizer steps.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="0 disables clipping.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default=None,
              help="Default: what `accelerate launch` / its config says (else no).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True)
@click.option("--vae-tiling/--no-vae-tiling", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpointing-steps", type=int, default=500, show_default=True)
@click.option("--checkpoints-total-limit", type=int, default=None, help="Keep only the newest N checkpoints.")
@click.option("--report-to", type=click.Choice(["tensorboard", "none"]), default="tensorboard", show_default=True)
@click.option("--num-workers", "dataloader_num_workers", type=int, default=0, show_default=True)
@click.option("--cpu", is_flag=True, help="Train on the CPU (gloo across processes).")
@click.option("--no-progress", is_flag=True)
def train_command(data: Path, output_dir: Path, model: str | None, preset: str | None, cache_dir: Path | None,
                  resume: str | None, report_to: str, no_progress: bool, **options) -> None:
    """Train the reference LoRA (paper section 6.1); run it under `accelerate launch` for several GPUs/nodes."""
    from customvideox.base_model import MissingWeightsError
    from customvideox.train import TrainConfig, train
    from customvideox.train_data import TrainDataError

    try:
        config = TrainConfig(data=str(data), output_dir=str(output_dir), model=model, preset=preset,
                             cache_dir=str(cache_dir) if cache_dir else None, resume=resume,
                             report_to=None if report_to == "none" else report_to, progress=not no_progress, **options)
        result = train(config)
    except (MissingWeightsError, FileNotFoundError, TrainDataError, ValueError) as error:
        _fail(str(error))
    except KeyboardInterrupt:  # unlike the other commands, the same command again would start over
        click.secho(f"interrupted: the checkpoints in {output_dir} are kept; add --resume latest to continue",
                    err=True)
        sys.exit(EXIT_INTERRUPTED)
    if result.lora_path is not None and result.lora_path.is_file():
        click.echo(f"step {result.global_step}: reference LoRA -> {result.lora_path}")
    if result.random_weights:
        click.secho("random-initialised base model (tiny preset): the LoRA is a smoke-test artefact", fg="yellow",
                    err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
