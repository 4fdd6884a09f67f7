"""customvideox.fake_tensors: FLOPs and peak memory on FakeTensors, checked against closed forms and real-tensor runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from costmodel.counting import count_flops, fake_module, track_peak_memory
from customvideox.config import ReferenceConfig
from customvideox.fake_tensors import fake_transformer, fixed_entity_tokens
from customvideox.positions import video_rotary_pos_embed

TINY = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
    text_embed_dim=12, num_layers=3, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
    max_text_seq_length=7, use_rotary_positional_embeddings=True,
)
FRAMES, LAT_H, LAT_W, TEXT, BATCH = 3, 6, 8, 7, 2
HEADS, HEAD_DIM, LAYERS = 2, 16, 3
REF_TOKENS = (LAT_H // 2) * (LAT_W // 2)
VIDEO_TOKENS = FRAMES * REF_TOKENS
LORA = dict(lora_rank=4, lora_alpha=4.0)


def _inputs(model, entity_tokens: int = 2):
    g = torch.Generator().manual_seed(0)
    entity = torch.zeros(BATCH, TEXT, dtype=torch.bool)
    entity[:, 2 : 2 + entity_tokens] = True
    dtype = model.proj_out.weight.dtype
    return dict(
        hidden_states=torch.randn(BATCH, FRAMES, 4, LAT_H, LAT_W, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(BATCH, TEXT, 12, generator=g).to(dtype),
        timestep=torch.full((BATCH,), 500),
        image_rotary_emb=video_rotary_pos_embed(model.config, FRAMES, LAT_H, LAT_W, device="cpu"),
        reference_latents=torch.randn(1, 1, 4, LAT_H, LAT_W, generator=g).to(dtype),
        entity_token_mask=entity,
        return_dict=False,
    )


def _variant_flops(ablation: str | None, mode: str = "cached") -> int:
    fake = FakeTensorMode()
    model = fake_transformer(TINY, ReferenceConfig(**LORA), fake, base_dtype=torch.float32)
    with fake, torch.no_grad(), fixed_entity_tokens(num_tokens=2, first=2):
        inputs = _inputs(model)
        if ablation is None:
            inputs = {k: v for k, v in inputs.items() if k not in ("reference_latents", "entity_token_mask")}
            return count_flops(lambda: model(**inputs))[1]
        config = ReferenceConfig(ablation=ablation, mode=mode, **LORA)
        cache = model.build_reference_cache(inputs["reference_latents"], reference_config=config)
        return count_flops(lambda: model(**inputs, reference_cache=cache, reference_config=config))[1]


def test_cached_reference_costs_exactly_the_extra_attention_keys(one_thread):
    """Cached 3D-RA = vanilla + every text/video query attending to the reference keys (4 B H Nq Nr d a layer)."""
    vanilla = _variant_flops(None)
    cached = _variant_flops("3d-ra")
    queries = TEXT + VIDEO_TOKENS
    assert cached - vanilla == LAYERS * 4 * BATCH * HEADS * queries * REF_TOKENS * HEAD_DIM


def test_erae_costs_exactly_its_entity_score_matmul(one_thread):
    """TAB+ERAE on the cached path: two fused calls (same FLOPs as one) + q_video . k_entity (Eq. 8's A_e)."""
    plain = _variant_flops("3d-ra")
    full = _variant_flops("3d-ra+tab+erae")
    entity_tokens = 2
    assert full - plain == LAYERS * 2 * BATCH * HEADS * VIDEO_TOKENS * entity_tokens * HEAD_DIM


def test_fake_and_real_runs_count_the_same_flops(one_thread):
    from customvideox.transformer import CustomVideoXTransformer3DModel

    torch.manual_seed(0)
    real = CustomVideoXTransformer3DModel(**TINY).eval()
    real.add_reference_lora(ReferenceConfig(**LORA))
    config = ReferenceConfig(mode="joint", **LORA)
    with torch.no_grad():
        real_flops = count_flops(lambda: real(**_inputs(real), reference_config=config))[1]
    fake = FakeTensorMode()
    model = fake_transformer(TINY, ReferenceConfig(**LORA), fake, base_dtype=torch.float32)
    with fake, torch.no_grad(), fixed_entity_tokens(num_tokens=2, first=2):
        fake_flops = count_flops(lambda: model(**_inputs(model), reference_config=config))[1]
    assert fake_flops == real_flops > 0


def _frozen_then_trainable() -> torch.nn.Sequential:
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16))
    net[0].requires_grad_(False)
    return net


def _train_step(net: torch.nn.Module, x: torch.Tensor):
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1)

    def step():
        net(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return optimizer, step


def test_peak_memory_on_fake_tensors_equals_the_real_run():
    """The same frozen+trainable training step, tracked on real tensors and on FakeTensors: same peak and parts."""
    torch.manual_seed(0)
    real = _frozen_then_trainable()
    x = torch.randn(8, 64)
    optimizer, step = _train_step(real, x)
    real_peak = track_peak_memory([step, step], real, optimizer)

    fake = FakeTensorMode()
    with torch.device("meta"):
        meta = _frozen_then_trainable()
    fake_module(meta, fake)
    with fake:
        optimizer, step = _train_step(meta, torch.randn(8, 64))
        fake_peak = track_peak_memory([step, step], meta, optimizer)
    assert fake_peak == real_peak
    trainable_bytes = (32 * 16 + 16) * 4
    assert real_peak["param"] == (64 * 32 + 32 + 32 * 16 + 16) * 4
    assert real_peak["opt"] >= 2 * trainable_bytes  # AdamW's two moments (+ step counters and its temporaries)
    assert real_peak["total"] >= real_peak["param"] + real_peak["opt"] + trainable_bytes  # gradients at the peak


def test_fake_module_refuses_materialized_weights_and_keeps_shapes():
    with pytest.raises(ValueError, match=r"meta device; 'weight' is on cpu"):
        fake_module(torch.nn.Linear(3, 2), FakeTensorMode())
    with torch.device("meta"):
        net = torch.nn.BatchNorm1d(5)
    fake_module(net, FakeTensorMode())
    assert isinstance(net.weight, FakeTensor) and net.weight.requires_grad and net.weight.device.type == "cpu"
    assert isinstance(net.running_mean, FakeTensor) and tuple(net.running_mean.shape) == (5,)


def test_fixed_entity_tokens_is_undone_on_exit():
    import customvideox.transformer as transformer
    from customvideox.attention import entity_token_indices

    with fixed_entity_tokens(num_tokens=3, first=1):
        index, valid = transformer.entity_token_indices(torch.zeros(2, 9, dtype=torch.bool))
        assert index.tolist() == [[1, 2, 3], [1, 2, 3]] and bool(valid.all())
    assert transformer.entity_token_indices is entity_token_indices
    assert entity_token_indices(torch.zeros(2, 9, dtype=torch.bool)) is None


def _load_estimate_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "estimate.py"
    spec = importlib.util.spec_from_file_location("estimate_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_estimate_script_tiny_run(tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on sys.path
    estimate = _load_estimate_script()
    out = tmp_path / "estimate.json"
    result = estimate.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["config"] == "tiny"
    rows = {row["variant"]: row for row in result["inference"]["per_step"]}
    assert rows["vanilla"]["vs_vanilla"] == 1.0
    assert 1.0 < rows["cached, TAB+ERAE off"]["vs_vanilla"] < rows["joint, TAB+ERAE off"]["vs_vanilla"]
    assert rows["cached, TAB+ERAE on"]["tflops"] > rows["cached, TAB+ERAE off"]["tflops"]
    with_ckpt, without = result["training"]
    assert with_ckpt["gradient_checkpointing"] and not without["gradient_checkpointing"]
    assert with_ckpt["micro_step_tflops"] > without["micro_step_tflops"]  # recomputation costs a forward
    assert with_ckpt["peak_breakdown_gib"]["opt"] > 0
