"""``customvideox train`` at tiny scale: it learns, touches only the LoRA, resumes exactly,
runs on two processes, and its LoRA loads into the pipeline and the ``videobench generate`` method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from customvideox.config import ReferenceConfig
from customvideox.curation.pairs import pair_dir, write_pairs
from customvideox.lora import LORA_WEIGHT_NAME, reference_lora_state_dict
from customvideox.train import (
    RANDOM_BASE_METADATA_KEY,
    TrainConfig,
    build_training_model,
    list_checkpoints,
    train,
    v_prediction_loss,
)
from customvideox.train_data import (
    CachedPairDataset,
    PairStreamSampler,
    PairTrainDataset,
    TrainDataError,
    collate_pairs,
    read_cache_spec,
    sample_video_latents,
)
from mediaio.video import write_video

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, FRAMES = 64, 96, 9  # 3 latent frames of 8x12 (4x6 tokens each)
COLORS = [(220, 40, 40), (40, 200, 60)]


def make_pairs(out: Path, frames: int = FRAMES) -> Path:
    """Two synthetic pairs: a coloured square sliding over grey, its reference crop on white."""
    rows = []
    for i, color in enumerate(COLORS):
        clip_id = f"clip{i}"
        folder = pair_dir(out, clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        video = np.full((frames, HEIGHT, WIDTH, 3), 90, np.uint8)
        for t in range(frames):
            video[t, 20:44, 8 + 6 * t : 32 + 6 * t] = color
        write_video(folder / "clip.mp4", video, fps=8)
        reference = np.full((32, 32, 3), 255, np.uint8)
        reference[4:28, 4:28] = color
        Image.fromarray(reference).save(folder / "reference.png")
        Image.fromarray(np.where(reference[..., 1] < 255, 255, 0).astype(np.uint8)).save(folder / "mask.png")
        rows.append(dict(clip_id=clip_id, reference=f"pairs/{clip_id}/reference.png",
                         mask=f"pairs/{clip_id}/mask.png", clip=f"pairs/{clip_id}/clip.mp4",
                         caption="a square box sliding across a grey floor", entity="box", num_frames=frames,
                         height=HEIGHT, width=WIDTH, fps=8.0, source_video=f"{clip_id}.mp4", box_score=0.9,
                         random_weights=True))
    write_pairs(out, rows)
    return out


def config(tmp: Path, data: Path, cache: Path | None, **changes) -> TrainConfig:
    options = dict(data=str(data), output_dir=str(tmp), preset="tiny", height=HEIGHT, width=WIDTH,
                   num_frames=FRAMES, cache_dir=str(cache) if cache else None, report_to=None, progress=False,
                   mixed_precision="no", cpu=True, checkpointing_steps=1000, learning_rate=1e-2)
    options.update(changes)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def overfit(pairs, tmp_path_factory):
    """20 steps on the two pairs at a high learning rate; fills the latent cache the other tests reuse."""
    root = tmp_path_factory.mktemp("overfit")
    cfg = config(root / "run", pairs, root / "cache", max_train_steps=20, gradient_accumulation_steps=1,
                 learning_rate=3e-2, timestep_min=300, timestep_max=700, report_to="tensorboard")
    return cfg, train(cfg)


def test_training_lowers_the_loss_and_changes_only_the_lora(overfit):
    cfg, result = overfit
    assert result.global_step == 20 and len(result.losses) == 20 and result.random_weights
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.85 * first, result.losses
    assert all(lr == pytest.approx(3e-2) for lr in result.learning_rates)  # the paper's fixed learning rate

    # the untrained model, rebuilt: same random base (seed), PEFT's LoRA init (B = 0)
    initial = build_training_model(cfg, cfg.reference_config(), False, torch.float32, torch.device("cpu"))
    before, after = dict(initial.transformer.named_parameters()), dict(result.transformer.named_parameters())
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".lora_" in name and ".reference." in name for name in changed)
    # every LoRA gets trained except the last block's reference-query ones (to_q, to_out.0): the reference tokens
    # leaving the last block are discarded, so their gradient is zero
    last = f"transformer_blocks.{len(result.transformer.transformer_blocks) - 1}.attn1."
    dead = {n for n in before if n.startswith(last) and (".to_q." in n or ".to_out.0." in n) and ".lora_" in n}
    assert {n for n in changed if ".lora_B." in n} == {n for n in before if ".lora_B." in n} - dead
    assert result.trainable_parameters == sum(p.numel() for n, p in before.items() if ".lora_" in n)

    # loss on a fixed batch (pair 0, t = 500, fixed noise) before and after
    sample = CachedPairDataset(cfg.cache_dir, read_cache_spec(cfg.cache_dir))[0]
    generator = torch.Generator().manual_seed(123)
    latents = sample_video_latents(sample["video_posterior"][None], initial.vae_scaling_factor, generator)
    noise = torch.randn(latents.shape, generator=generator)

    def fixed_loss(transformer) -> float:
        with torch.no_grad():
            return v_prediction_loss(transformer, initial.scheduler, latents, sample["prompt_embeds"][None],
                                     sample["reference_latents"][None], sample["entity_mask"][None],
                                     torch.tensor([500]), noise, cfg.reference_config()).item()

    assert fixed_loss(result.transformer) < 0.9 * fixed_loss(initial.transformer)
    # logs: tensorboard events under OUTPUT/logs; the final LoRA; the cache holds both pairs
    assert list((Path(cfg.output_dir) / "logs").rglob("events.out.tfevents.*"))
    assert result.lora_path == Path(cfg.output_dir) / LORA_WEIGHT_NAME and result.lora_path.is_file()
    assert sorted(p.name for p in Path(cfg.cache_dir).glob("*.safetensors")) == ["clip0.safetensors",
                                                                                 "clip1.safetensors"]


def test_resume_reaches_the_same_parameters(overfit, pairs, tmp_path, monkeypatch):
    cache = overfit[0].cache_dir
    common = dict(gradient_accumulation_steps=2, checkpointing_steps=1)
    straight = train(config(tmp_path / "straight", pairs, cache, max_train_steps=2, **common))
    first = train(config(tmp_path / "resumed", pairs, cache, max_train_steps=1, **common))
    checkpoint = list_checkpoints(tmp_path / "resumed")[-1]
    assert checkpoint.name == "checkpoint-1"
    files = {p.name for p in checkpoint.iterdir()}
    assert {LORA_WEIGHT_NAME, "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
    assert not any(name.startswith("model") for name in files)  # the frozen base is never written
    # the step counter is JSON: resuming never unpickles (torch.load(weights_only=False)) anything
    assert json.loads((checkpoint / "training_state.json").read_text()) == {"global_step": 1}
    assert not any(name.startswith("custom_checkpoint") for name in files)
    unsafe_loads = []
    real_load = torch.load

    def checked_load(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            unsafe_loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    resumed = train(config(tmp_path / "resumed", pairs, cache, max_train_steps=2, resume="latest", **common))
    assert unsafe_loads == []
    assert (first.start_step, resumed.start_step, resumed.global_step) == (0, 1, 2)
    assert first.losses == straight.losses[:1] and resumed.losses == straight.losses[1:]
    a, b = reference_lora_state_dict(straight.transformer), reference_lora_state_dict(resumed.transformer)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and a run that did not resume from the optimizer state would not reach them
    assert not all(torch.equal(a[k], reference_lora_state_dict(first.transformer)[k]) for k in a)


def test_cached_conditions_equal_online_encoding(overfit, pairs, tmp_path):
    cached = train(config(tmp_path / "cached", pairs, overfit[0].cache_dir, max_train_steps=1,
                          gradient_accumulation_steps=1))
    online = train(config(tmp_path / "online", pairs, None, max_train_steps=1, gradient_accumulation_steps=1))
    assert online.losses == pytest.approx(cached.losses, rel=1e-6)
    a, b = reference_lora_state_dict(cached.transformer), reference_lora_state_dict(online.transformer)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    from customvideox.lora import reference_lora_state_dict
    from customvideox.train import TrainConfig, train

    data, out, cache = sys.argv[1:4]
    result = train(TrainConfig(data=data, output_dir=out, cache_dir=cache, preset="tiny", height=64, width=96,
                               num_frames=9, gradient_accumulation_steps=1, max_train_steps=2, learning_rate=1e-2,
                               report_to=None, progress=False, cpu=True, mixed_precision="no"))
    rank = os.environ["RANK"]
    save_file(reference_lora_state_dict(result.transformer), os.path.join(out, f"rank{rank}.safetensors"),
              metadata={"world_size": os.environ["WORLD_SIZE"], "processes": str(result.transformer is not None)})
""")


@pytest.mark.slow
def test_two_processes_train_one_step_together(overfit, pairs, tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(pairs), str(out), overfit[0].cache_dir]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout + done.stderr
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    with safe_open(str(out / "rank1.safetensors"), framework="pt") as handle:
        assert handle.metadata()["world_size"] == "2"
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert any(v.abs().max() > 0 for k, v in ranks[0].items() if ".lora_B." in k)  # a real update happened
    final = load_file(str(out / LORA_WEIGHT_NAME))
    assert all(torch.equal(final[k], ranks[0][k]) for k in final)


def test_trained_lora_loads_into_pipeline_and_generate_method(overfit):
    from videobench.methods import MethodContext, build_generator

    cfg, result = overfit
    with safe_open(str(result.lora_path), framework="pt") as handle:
        assert handle.metadata()[RANDOM_BASE_METADATA_KEY] == "true"
    generator, _ = build_generator("customvideox", {"lora": str(result.lora_path)}, MethodContext(preset="tiny"))
    pipe = generator.pipeline
    assert pipe.reference_lora_path == str(result.lora_path) and pipe.random_weights
    trained = reference_lora_state_dict(result.transformer)
    loaded = reference_lora_state_dict(pipe.transformer)
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)

    reference = np.full((32, 32, 3), 255, np.uint8)
    reference[4:28, 4:28] = COLORS[0]
    call = dict(reference_image=reference, prompt="a square box sliding across a grey floor", entity="box",
                num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=2, seed=0, output_type="np")
    with_lora = pipe(**call).frames
    for name, parameter in pipe.transformer.named_parameters():  # B = 0: the LoRA has no effect
        if ".lora_B." in name:
            parameter.data.zero_()
    without = pipe(**call).frames
    assert with_lora.shape == without.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(with_lora - without).max() > 1e-4


def test_sampler_is_a_resumable_sharded_stream():
    full = PairStreamSampler(5, rank=1, world_size=2, seed=3)
    stream = [i for _, i in zip(range(12), full)]
    assert [i for _, i in zip(range(7), PairStreamSampler(5, rank=1, world_size=2, seed=3, start=5))] == stream[5:]
    epoch0 = set(full.epoch_indices(0)) | set(PairStreamSampler(5, 0, 2, 3).epoch_indices(0))
    assert epoch0 == set(range(5))  # the ranks together cover every pair each epoch
    assert full.epoch_indices(0) != full.epoch_indices(1)


def test_dataset_tensors_and_bad_inputs(pairs, tmp_path):
    dataset = PairTrainDataset(pairs, 32, 48, FRAMES)
    batch = collate_pairs([dataset[0], dataset[1]])
    assert batch["video"].shape == (2, FRAMES, 3, 32, 48) and batch["reference"].shape == (2, 3, 32, 48)
    assert -1.0 <= float(batch["video"].min()) and float(batch["video"].max()) <= 1.0
    assert batch["entity"] == ["box", "box"]
    with pytest.raises(ValueError, match="8k \\+ 1 frames"):
        config(tmp_path, pairs, None, num_frames=13)
    with pytest.raises(ValueError, match="naive"):
        config(tmp_path, pairs, None, ablation="naive")
    with pytest.raises(Exception, match="clip0.*3 frames, training needs 9"):
        PairTrainDataset(make_pairs(tmp_path / "short", frames=3), HEIGHT, WIDTH, FRAMES)[0]
    # a build that kept nothing, and a pair whose clip is gone: named up front, not hours into a run
    write_pairs(tmp_path / "none", [])
    with pytest.raises(TrainDataError, match="none/pairs.parquet: no pairs"):
        PairTrainDataset(tmp_path / "none", HEIGHT, WIDTH, FRAMES)
    broken = make_pairs(tmp_path / "broken")
    (broken / "pairs" / "clip1" / "clip.mp4").unlink()
    dataset = PairTrainDataset(broken, HEIGHT, WIDTH, FRAMES)
    dataset.check_files([0])  # only the pairs to read are checked (a complete latent cache needs no clip)
    with pytest.raises(TrainDataError, match="1 file.*broken/pairs.parquet are missing: .*clip1/clip.mp4"):
        dataset.check_files()
    with pytest.raises(TrainDataError, match="clip1/clip.mp4"):
        train(config(tmp_path / "run", broken, None))
    assert not (tmp_path / "run").exists()


def test_cli_fails_clearly_before_any_work(pairs, tmp_path):
    from click.testing import CliRunner

    from customvideox.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(pairs), "--output-dir", str(out),
                                       "--model", str(tmp_path / "no-cogvideox")])
    assert result.exit_code == 2
    assert "CogVideoX-5B" in result.output and "no-cogvideox" in result.output and not out.exists()
    result = CliRunner().invoke(main, ["train", "--data", str(pairs), "--output-dir", str(out), "--preset", "tiny",
                                       "--resume", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a checkpoint folder" in result.output
    old = tmp_path / "old" / "checkpoint-1"  # a checkpoint whose step counter is a pickle is never unpickled
    old.mkdir(parents=True)
    (old / LORA_WEIGHT_NAME).write_bytes(b"")
    (old / "custom_checkpoint_0.pkl").write_bytes(b"")
    result = CliRunner().invoke(main, ["train", "--data", str(pairs), "--output-dir", str(old.parent), "--preset",
                                       "tiny", "--resume", "latest"])
    assert result.exit_code == 2 and "checkpoint-1: no training_state.json" in result.output
    # re-running into a run's folder without --resume would overwrite its checkpoints: refused, with the fix
    (out / "checkpoint-3").mkdir(parents=True)
    result = CliRunner().invoke(main, ["train", "--data", str(pairs), "--output-dir", str(out), "--preset", "tiny"])
    assert result.exit_code == 2 and "checkpoint-3" in result.output and "--resume latest" in result.output


def test_cli_interrupt_says_how_to_resume(pairs, tmp_path, monkeypatch):
    """Ctrl-C: training needs ``--resume latest`` (the generic "run the same command again" would start over)."""
    from click.testing import CliRunner

    import customvideox.train
    from customvideox.cli import main

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(customvideox.train, "train", interrupted)
    result = CliRunner().invoke(main, ["train", "--data", str(pairs), "--output-dir", str(tmp_path / "run"),
                                       "--preset", "tiny"])
    assert result.exit_code == 130 and "add --resume latest to continue" in result.output


def test_gradient_checkpointing_and_bf16(overfit, pairs, tmp_path):
    cache = overfit[0].cache_dir
    one = dict(max_train_steps=1, gradient_accumulation_steps=1)
    plain = train(config(tmp_path / "plain", pairs, cache, **one))
    recomputed = train(config(tmp_path / "checkpointing", pairs, cache, gradient_checkpointing=True, **one))
    assert recomputed.transformer.is_gradient_checkpointing
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)
    a, b = reference_lora_state_dict(plain.transformer), reference_lora_state_dict(recomputed.transformer)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    bf16 = train(config(tmp_path / "bf16", pairs, cache, mixed_precision="bf16", **one))
    dtypes = {p.dtype for n, p in bf16.transformer.named_parameters() if ".lora_" not in n}
    assert dtypes == {torch.bfloat16}  # the frozen base in bf16 ...
    assert {p.dtype for _, p in bf16.transformer.named_parameters() if p.requires_grad} == {torch.float32}  # LoRA
    assert bf16.losses[0] == pytest.approx(plain.losses[0], rel=0.05)
    assert load_file(str(bf16.lora_path))[next(iter(a))].dtype == torch.float32


def test_objective_is_the_v_prediction_mse():
    """x_hat = sqrt(a) z_t - sqrt(1 - a) v, weighted by 1 / (1 - a), equals |v - v_target|^2 (known answers)."""
    from diffusers import CogVideoXDDIMScheduler

    from customvideox.presets import COGVIDEOX_5B_SCHEDULER

    scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 3, 4, 6, 8, generator=generator), torch.randn(2, 3, 4, 6, 8, generator=generator)
    timesteps = torch.tensor([10, 990])
    target = scheduler.get_velocity(latents, noise, timesteps)  # v = sqrt(a) eps - sqrt(1 - a) z_0

    def stub(output):
        return lambda **kwargs: (output,)

    args = (latents, None, None, None, timesteps, noise, ReferenceConfig())
    assert v_prediction_loss(stub(target), scheduler, *args).item() == pytest.approx(0.0, abs=1e-8)
    assert v_prediction_loss(stub(target + 0.5), scheduler, *args).item() == pytest.approx(0.25, rel=1e-4)


def test_model_folder_path_and_cache_skip_the_encoders(pairs, tmp_path, monkeypatch):
    """``--model FOLDER`` (CogVideoX's diffusers layout, written here from the tiny preset): the first run fills the
    cache with T5 and the VAE; the next one never loads them."""
    import transformers
    from diffusers import AutoencoderKLCogVideoX

    from customvideox.presets import TINY_TRANSFORMER, build_tiny_pipeline
    from customvideox.transformer import CustomVideoXTransformer3DModel

    folder = tmp_path / "cogvideox"
    pipe = build_tiny_pipeline(seed=0)
    CustomVideoXTransformer3DModel(**TINY_TRANSFORMER).save_pretrained(folder / "transformer")
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(pipe, name).save_pretrained(folder / name)
    (folder / "model_index.json").write_text('{"_class_name": "CogVideoXPipeline"}')

    cache = tmp_path / "cache"
    common = dict(preset=None, model=str(folder), max_train_steps=1, gradient_accumulation_steps=1, lora_rank=4)
    first = train(config(tmp_path / "run1", pairs, cache, **common))
    assert not first.random_weights and first.trainable_parameters == 2 * 4 * 4 * (32 + 32)  # 2 blocks, 4 layers
    assert read_cache_spec(cache).model == str(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("the encoders were loaded although the cache is complete")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    monkeypatch.setattr(AutoencoderKLCogVideoX, "from_pretrained", refuse)
    second = train(config(tmp_path / "run2", pairs, cache, **common))
    assert second.losses == first.losses
    with pytest.raises(ValueError, match="another setting"):
        train(config(tmp_path / "run3", pairs, cache, **{**common, "height": 32}))
