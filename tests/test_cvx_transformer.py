"""CustomVideoXTransformer3DModel on a tiny CogVideoX config: equivalence, LoRA routing, Eq. 5, modes, ablations."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from safetensors import safe_open

from customvideox.attention import ReferenceBias, project_qkv
from customvideox.config import ReferenceConfig
from customvideox.lora import count_lora_parameters, mark_only_reference_lora_trainable
from customvideox.positions import reference_rotary_pos_embed, video_rotary_pos_embed
from customvideox.transformer import (
    CustomVideoXTransformer3DModel,
    modulate_clean,
    reference_block_forward,
    reference_self_block_forward,
)

TINY = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
    text_embed_dim=12, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
    max_text_seq_length=7, use_rotary_positional_embeddings=True,
)
FRAMES, LAT_H, LAT_W, TEXT = 3, 6, 8, 7
RANK = 4


def _randomize_lora(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = CogVideoXTransformer3DModel(**TINY).eval()
    model = CustomVideoXTransformer3DModel(**TINY).eval()
    model.load_state_dict(base.state_dict())
    model.add_reference_lora(ReferenceConfig(lora_rank=RANK, lora_alpha=RANK))
    _randomize_lora(model)
    return base, model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, FRAMES, 4, LAT_H, LAT_W, generator=g)
    text = torch.randn(2, TEXT, 12, generator=g)
    ref = torch.randn(1, 1, 4, LAT_H, LAT_W, generator=g)
    entity = torch.zeros(2, TEXT, dtype=torch.bool)
    entity[0, 2:4] = True  # sample 1 has no entity word: ERAE off for it
    rope = video_rotary_pos_embed(TINY, FRAMES, LAT_H, LAT_W)
    return dict(x=x, text=text, ref=ref, entity=entity, rope=rope, t=torch.tensor([500, 500]))


def _run(model, inp, config=None, t=None, **kw):
    with torch.no_grad():
        return model(
            inp["x"], inp["text"], inp["t"] if t is None else t, image_rotary_emb=inp["rope"],
            reference_config=config, return_dict=False, **kw,
        )[0]


def _ref(model, inp, config, t=None, **kw):
    return _run(model, inp, config, t, reference_latents=inp["ref"], entity_token_mask=inp["entity"], **kw)


def _cfg(**kw) -> ReferenceConfig:
    return ReferenceConfig(lora_rank=RANK, lora_alpha=RANK, **kw)


# ------------------------------------------------------------------------------- base equivalence


def test_no_reference_equals_base_exactly_even_with_a_trained_lora(models, inputs):
    base, model = models
    with torch.no_grad():
        for rope in (inputs["rope"], None):
            want = base(inputs["x"], inputs["text"], inputs["t"], image_rotary_emb=rope).sample
            got = model(inputs["x"], inputs["text"], inputs["t"], image_rotary_emb=rope).sample
            assert torch.equal(got, want)
    assert count_lora_parameters(model) > 0


def test_from_pretrained_on_a_cogvideox_transformer_folder(tmp_path, models, inputs):
    base, _ = models
    base.save_pretrained(tmp_path / "transformer")
    loaded = CustomVideoXTransformer3DModel.from_pretrained(tmp_path / "transformer").eval()
    assert isinstance(loaded, CogVideoXTransformer3DModel)
    with torch.no_grad():
        want = base(inputs["x"], inputs["text"], inputs["t"], image_rotary_emb=inputs["rope"]).sample
        got = loaded(inputs["x"], inputs["text"], inputs["t"], image_rotary_emb=inputs["rope"]).sample
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------- LoRA routing


def test_lora_changes_reference_tokens_only(models, inputs):
    _, model = models
    block = model.transformer_blocks[0]
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 24, 32, generator=g)
    text = torch.randn(2, TEXT, 32, generator=g)
    ref = torch.randn(2, 12, 32, generator=g)
    temb = torch.randn(2, 8, generator=g)
    temb0 = torch.randn(2, 8, generator=g)
    rope = video_rotary_pos_embed(TINY, 2, LAT_H, LAT_W)
    ref_rope = reference_rotary_pos_embed(TINY, LAT_H, LAT_W)
    saved = {n: p.detach().clone() for n, p in block.named_parameters() if "lora_B" in n}

    def run():
        with torch.no_grad():
            plain = block(hidden, text, temb, image_rotary_emb=rope)
            ref_out = reference_self_block_forward(block, ref, temb0, ref_rope)
        return plain, ref_out

    plain_on, ref_on = run()
    with torch.no_grad():
        for n, p in block.named_parameters():
            if "lora_B" in n:
                p.zero_()
    try:
        plain_off, ref_off = run()
    finally:
        with torch.no_grad():
            for n, p in block.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    assert torch.equal(plain_on[0], plain_off[0]) and torch.equal(plain_on[1], plain_off[1])
    for on, off in zip(ref_on, ref_off):  # reference states, keys, values all move with the LoRA
        assert (on - off).abs().max() > 1e-3
    # text/video projections are the base weights, reference projections the LoRA'd ones
    x = torch.cat([text, hidden], 1)
    q_base = project_qkv(block.attn1, x, use_lora=False)[0]
    q_lora = project_qkv(block.attn1, x, use_lora=True)[0]
    direct = block.attn1.to_q.base_layer(x).view(2, -1, 2, 16).transpose(1, 2)
    assert torch.equal(q_base, block.attn1.norm_q(direct))
    assert (q_base - q_lora).abs().max() > 1e-3


def test_reference_modulation_uses_timestep_zero(models, inputs):
    _, model = models
    cache = model.build_reference_cache(inputs["ref"], reference_config=_cfg(mode="cached"))
    block = model.transformer_blocks[0]
    with torch.no_grad():
        temb0 = model.time_embedding(model.time_proj(torch.zeros(1)))
        tokens = model.patch_embed.proj(inputs["ref"][:, 0]).flatten(2).transpose(1, 2)
        norm, _ = modulate_clean(block.norm1, tokens, temb0)
        k = project_qkv(block.attn1, norm, use_lora=True, rotary=reference_rotary_pos_embed(TINY, LAT_H, LAT_W))[1]
    assert (cache.keys[0] - k).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------ Eq. 5


def test_reference_rope_shift_values_against_get_3d_rotary_pos_embed():
    head = TINY["attention_head_dim"]
    grid_h, grid_w = LAT_H // 2, LAT_W // 2  # the base grid: integer positions 0..n-1
    n = grid_h * grid_w
    video = get_3d_rotary_pos_embed(head, ((0, 0), (grid_h, grid_w)), (grid_h, grid_w), 4)
    assert all(torch.equal(a, b) for a, b in zip(video, video_rotary_pos_embed(TINY, 4, LAT_H, LAT_W)))
    # delta = 0: the first video frame
    cos, sin = reference_rotary_pos_embed(TINY, LAT_H, LAT_W, (0, 0, 0))
    assert torch.allclose(cos, video[0][:n], atol=1e-6) and torch.allclose(sin, video[1][:n], atol=1e-6)
    # temporal shift 2: frame 2 of the video table
    cos, sin = reference_rotary_pos_embed(TINY, LAT_H, LAT_W, (2, 0, 0))
    assert torch.allclose(cos, video[0][2 * n : 3 * n], atol=1e-6) and torch.allclose(sin, video[1][2 * n : 3 * n], atol=1e-6)
    # spatial shift (1, 2): cell (h, w) takes cell (h + 1, w + 2) of a larger integer grid
    big_h, big_w = grid_h + 1, grid_w + 2
    big = get_3d_rotary_pos_embed(head, ((0, 0), (big_h, big_w)), (big_h, big_w), 1)
    rows = torch.tensor([(h + 1) * big_w + (w + 2) for h in range(grid_h) for w in range(grid_w)])
    cos, sin = reference_rotary_pos_embed(TINY, LAT_H, LAT_W, (0, 1, 2))
    assert torch.allclose(cos, big[0][rows], atol=1e-6) and torch.allclose(sin, big[1][rows], atol=1e-6)
    # default delta = (-1, 0, 0): frame "-1": cos(-a) = cos(a), sin(-a) = -sin(a) on the temporal dims
    cos, sin = reference_rotary_pos_embed(TINY, LAT_H, LAT_W)
    dim_t = head // 4
    assert ReferenceConfig().rope_shift == (-1.0, 0.0, 0.0)
    assert torch.allclose(cos[:, :dim_t], video[0][n : 2 * n, :dim_t], atol=1e-6)
    assert torch.allclose(sin[:, :dim_t], -video[1][n : 2 * n, :dim_t], atol=1e-6)
    assert torch.allclose(sin[:, dim_t:], video[1][:n, dim_t:], atol=1e-6)


# ------------------------------------------------------------------------- fused vs naive, modes


@pytest.mark.parametrize("ablation", ["3d-ra", "3d-ra+tab", "3d-ra+tab+erae"])
@pytest.mark.parametrize("mode", ["joint", "cached"])
def test_model_fused_path_matches_dense_attention(models, inputs, ablation, mode):
    _, model = models
    config = _cfg(ablation=ablation, mode=mode)
    fused = _ref(model, inputs, config)
    naive = _ref(model, inputs, config.replace(attention_backend="naive"))
    assert fused.shape == inputs["x"].shape
    assert (fused - naive).abs().max() < 1e-5


def test_cached_equals_joint_with_restricted_attention_and_differs_from_joint(models, inputs):
    _, model = models
    cached_cfg = _cfg(mode="cached")
    cache = model.build_reference_cache(inputs["ref"], inputs["text"], reference_config=cached_cfg)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (1, 2, 12, 16)
    for t in (torch.tensor([900, 900]), torch.tensor([100, 100])):  # one cache, reused at every step
        with_cache = _ref(model, inputs, cached_cfg, t=t, reference_cache=cache)
        fresh = _ref(model, inputs, cached_cfg, t=t)
        recomputed = _ref(model, inputs, _cfg(mode="joint", reference_scope="self"), t=t)
        assert torch.equal(with_cache, fresh)
        assert (with_cache - recomputed).abs().max() < 1e-5
        joint = _ref(model, inputs, _cfg(mode="joint"), t=t)
        assert (joint - with_cache).abs().max() > 1e-3
    with pytest.raises(ValueError, match="reference_scope='self'"):
        ReferenceConfig(mode="cached", reference_scope="all")


def test_tab_and_erae_change_the_output_and_erae_is_per_sample(models, inputs):
    _, model = models
    plain = _ref(model, inputs, _cfg(ablation="3d-ra"))
    tab = _ref(model, inputs, _cfg(ablation="3d-ra+tab"))
    maps: list = []
    full = _ref(model, inputs, _cfg(ablation="3d-ra+tab+erae"), entity_maps=maps)
    assert (plain - tab).abs().max() > 1e-4
    assert len(maps) == 2 and maps[0].shape == (2, FRAMES, LAT_H // 2, LAT_W // 2)
    assert maps[0][1].abs().max() == 0  # no entity tokens: empty map, ERAE off
    assert (full[0] - tab[0]).abs().max() > 1e-5  # sample 0 has a region
    assert (full[1] - tab[1]).abs().max() < 1e-6  # sample 1: identical to TAB only
    # TAB at t = T/2 is a small positive bias, at t = 0 it suppresses the reference
    no_entity = dict(inputs, entity=torch.zeros_like(inputs["entity"]))
    assert (_ref(model, no_entity, _cfg(), t=torch.tensor([500, 500])) - tab).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["joint", "cached"])
def test_precomputed_entity_tokens_equal_the_mask(models, inputs, mode):
    """``entity_tokens`` (gathered once per video) and ``entity_token_mask`` (gathered per call) agree exactly."""
    from customvideox.attention import entity_token_indices

    _, model = models
    config = _cfg(mode=mode)
    from_mask = _ref(model, inputs, config)
    tokens = entity_token_indices(inputs["entity"])
    precomputed = _run(model, inputs, config, None, reference_latents=inputs["ref"], entity_tokens=tokens)
    assert torch.equal(from_mask, precomputed)
    with pytest.raises(ValueError, match=r"entity_tokens: index \(2, 2\) and valid \(2,\)"):
        _run(model, inputs, config, None, reference_latents=inputs["ref"], entity_tokens=(tokens[0], tokens[1][:, 0]))


def test_minus_infinity_bias_equals_removing_the_reference_in_a_block(models):
    _, model = models
    block = model.transformer_blocks[1]
    g = torch.Generator().manual_seed(11)
    hidden, text, ref = torch.randn(2, 24, 32, generator=g), torch.randn(2, TEXT, 32, generator=g), torch.randn(2, 12, 32, generator=g)
    temb, temb0 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    rope, ref_rope = video_rotary_pos_embed(TINY, 2, LAT_H, LAT_W), reference_rotary_pos_embed(TINY, LAT_H, LAT_W)
    bias = ReferenceBias(tab=torch.full((2,), -math.inf), video_grid=(2, 3, 4))
    with torch.no_grad():
        h, e, r = reference_block_forward(block, hidden, text, ref, temb, temb0, rope, ref_rope, None, bias, "all", "fused")
        h0, e0 = block(hidden, text, temb, image_rotary_emb=rope)
        h_open, _, _ = reference_block_forward(block, hidden, text, ref, temb, temb0, rope, ref_rope, None, None, "all", "fused")
    assert (h - h0).abs().max() < 1e-5 and (e - e0).abs().max() < 1e-5
    assert (h_open - h0).abs().max() > 1e-3
    assert r is not None and torch.isfinite(r).all()


# ------------------------------------------------------------------------------------------- naive


def test_naive_ablation_is_an_extra_input_frame_without_lora(models, inputs):
    base, model = models
    got = _run(model, inputs, _cfg(ablation="naive"), reference_latents=inputs["ref"])
    frames = torch.cat([inputs["ref"].repeat(2, 1, 1, 1, 1), inputs["x"]], dim=1)
    with torch.no_grad():
        want = base(frames, inputs["text"], inputs["t"], image_rotary_emb=video_rotary_pos_embed(TINY, FRAMES + 1, LAT_H, LAT_W)).sample
    assert got.shape == inputs["x"].shape
    assert torch.equal(got, want[:, 1:])


def test_bad_reference_shape_names_the_problem(models, inputs):
    _, model = models
    with pytest.raises(ValueError, match="must match the video latent"):
        _run(model, inputs, _cfg(), reference_latents=torch.zeros(1, 1, 4, LAT_H, LAT_W + 2))


# --------------------------------------------------------------------------------------- training


def test_gradients_reach_only_the_lora_and_match_the_inference_path(inputs):
    torch.manual_seed(0)
    model = CustomVideoXTransformer3DModel(**TINY)
    model.add_reference_lora(_cfg())
    trainable = mark_only_reference_lora_trainable(model)
    assert trainable == count_lora_parameters(model) == 2 * 4 * 2 * 32 * RANK
    with torch.no_grad():  # lora_B = 0 at init: the zero-init LoRA must still receive a gradient
        no_grad_out = _ref(model, inputs, _cfg())
    out = model(inputs["x"], inputs["text"], inputs["t"], image_rotary_emb=inputs["rope"],
                reference_latents=inputs["ref"], entity_token_mask=inputs["entity"], reference_config=_cfg()).sample
    assert (out - no_grad_out).abs().max() < 1e-5  # differentiable route == LSE-merge route
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


# ------------------------------------------------------------------------------------- save / load


def test_lora_save_load_round_trip(tmp_path, models, inputs):
    base, model = models
    path = model.save_reference_lora(str(tmp_path / "ref_lora"))
    assert path.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in keys
    assert len(keys) == 2 * 4 * 2 and "lora_adapter_metadata" in meta

    fresh = CustomVideoXTransformer3DModel(**TINY).eval()
    fresh.load_state_dict(base.state_dict())
    config = fresh.load_reference_lora(str(path))
    assert config.lora_rank == RANK
    for cfg in (_cfg(), _cfg(mode="cached")):
        assert torch.equal(_ref(fresh, inputs, cfg), _ref(model, inputs, cfg))

    # diffusers can read the same file (same key convention)
    plain = CogVideoXTransformer3DModel(**TINY)
    plain.load_lora_adapter(str(path), prefix="transformer", adapter_name="reference")
    want = model.transformer_blocks[0].attn1.to_k.lora_A["reference"].weight
    assert torch.equal(plain.transformer_blocks[0].attn1.to_k.lora_A["reference"].weight, want)

    # a file without our metadata (e.g. written by another tool): rank and targets come from the tensors
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(path)), str(bare))
    other = CustomVideoXTransformer3DModel(**TINY).eval()
    other.load_state_dict(base.state_dict())
    bare_config = other.load_reference_lora(str(bare))
    assert (bare_config.lora_rank, bare_config.lora_alpha) == (RANK, RANK)
    assert set(bare_config.lora_targets) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert torch.equal(_ref(other, inputs, _cfg()), _ref(model, inputs, _cfg()))

    wrong = CustomVideoXTransformer3DModel(**TINY)
    wrong.add_reference_lora(_cfg().replace(lora_rank=2, lora_alpha=2))
    with pytest.raises(ValueError, match="does not fit"):
        wrong.load_reference_lora(str(path))
    with pytest.raises(FileNotFoundError, match="reference LoRA not found"):
        fresh.load_reference_lora(str(tmp_path / "missing.safetensors"))


def test_reference_config_validation_and_round_trip():
    config = ReferenceConfig(ablation="3d-ra+tab", mode="cached", rope_shift=(0, 0, 45), lora_rank=16)
    assert ReferenceConfig.from_dict(config.to_dict()) == config
    assert (config.uses_tab, config.uses_erae, config.scope) == (True, False, "self")
    assert ReferenceConfig().uses_erae and ReferenceConfig().scope == "all"
    assert not ReferenceConfig(ablation="naive").uses_reference_branch
    with pytest.raises(ValueError, match="ablation"):
        ReferenceConfig(ablation="full")
    with pytest.raises(ValueError, match="lora_targets"):
        ReferenceConfig(lora_targets=("ff.net.0.proj",))
    with pytest.raises(ValueError, match="rope_shift"):
        ReferenceConfig(rope_shift=(1, 2))


# ------------------------------------------------------------------------------ parameter count, 5B


COGVIDEOX_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    use_rotary_positional_embeddings=True,
)


def test_trainable_parameters_at_the_real_5b_config_on_meta():
    with torch.device("meta"):
        model = CustomVideoXTransformer3DModel(**COGVIDEOX_5B)
        base = sum(p.numel() for p in model.parameters())
        lora = model.add_reference_lora(ReferenceConfig())
    assert next(model.parameters()).is_meta
    # 42 blocks x 4 projections x (3072 x 128 + 128 x 3072)
    assert lora == 42 * 4 * 2 * 3072 * 128 == 132_120_576  # the paper's 132.12M
    assert base == 5_570_283_072
    assert lora / base == pytest.approx(0.0237, abs=1e-4)  # the paper's "2.3%"
