"""CustomVideoXPipeline on the tiny preset: end to end, reference encoding, entity tokens, LoRA round trip."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import CogVideoXPipeline

from customvideox.pipeline import (
    CustomVideoXPipeline,
    _entity_mask_from_ids,
    entity_token_mask,
    prepare_reference_image,
)
from customvideox.presets import TINY_CALL_DEFAULTS, build_tiny_pipeline, randomize_reference_lora
from toytokenizers.t5 import build_tiny_tokenizer

FAST = dict(num_frames=9, height=128, width=192, num_inference_steps=2, guidance_scale=6.0, output_type="latent")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe() -> CustomVideoXPipeline:
    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def reference() -> PIL.Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)  # portrait, not 2:3
    return PIL.Image.fromarray(pixels)


def _spy_transformer(pipe, monkeypatch) -> list[dict]:
    """Record the keyword arguments of every transformer call."""
    calls: list[dict] = []
    original = pipe.transformer.forward

    def forward(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", forward)
    return calls


# ----------------------------------------------------------------------------------------- end to end


def test_tiny_pipeline_end_to_end_shape_dtype_and_seeds(pipe, reference):
    video = pipe(reference, "a dog on the beach", entity="dog", seed=0, **dict(TINY_CALL_DEFAULTS, output_type="np"))
    assert video.frames.shape == (1, 9, 128, 192, 3)
    assert video.frames.dtype == np.float32
    assert 0.0 <= video.frames.min() and video.frames.max() <= 1.0 and video.frames.std() > 0
    assert video.random_weights is True
    assert video.entity_found == [True]
    latents = dict(TINY_CALL_DEFAULTS, output_type="latent")  # determinism on the sampler's output
    first = pipe(reference, "a dog on the beach", entity="dog", seed=0, **latents).frames
    again = pipe(reference, "a dog on the beach", entity="dog", generator=torch.Generator().manual_seed(0), **latents)
    other = pipe(reference, "a dog on the beach", entity="dog", seed=1, **latents).frames
    torch.testing.assert_close(first, again.frames, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3


def test_without_reference_the_loop_equals_diffusers_cogvideox(pipe):
    """No reference: our sampling loop reproduces diffusers' CogVideoXPipeline bit for bit (plain and dynamic CFG)."""
    base = CogVideoXPipeline(**pipe.components)
    base.set_progress_bar_config(disable=True)
    for dynamic in (False, True):
        ours = pipe(None, "a cat in the snow", seed=3, use_dynamic_cfg=dynamic, **FAST).frames
        theirs = base("a cat in the snow", generator=torch.Generator().manual_seed(3), use_dynamic_cfg=dynamic,
                      max_sequence_length=pipe.transformer.config.max_text_seq_length, **FAST).frames
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_the_reference_changes_the_video(pipe, reference):
    flipped = reference.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    with_ref = pipe(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    other_ref = pipe(flipped, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    no_ref = pipe(None, "a dog on the beach", seed=0, **FAST).frames
    assert (with_ref - other_ref).abs().max() > 1e-4
    assert (with_ref - no_ref).abs().max() > 1e-4


def test_cfg_gives_the_reference_to_both_halves_and_erae_to_the_conditional_only(pipe, reference, monkeypatch):
    calls = _spy_transformer(pipe, monkeypatch)
    pipe(reference, "a dog on the beach", entity="dog", seed=0, **FAST)
    assert len(calls) == FAST["num_inference_steps"]
    ref = calls[0]["reference_latents"]
    assert ref.shape == (2, 1, 4, 16, 24)
    torch.testing.assert_close(ref[0], ref[1], rtol=0, atol=0)
    index, valid = calls[0]["entity_tokens"]  # gathered once per call: the same tensors at every step
    assert all(call["entity_tokens"][0] is index for call in calls)
    assert index.shape == valid.shape == (2, 1)
    assert not valid[0].any() and valid[1].all() and index[1].tolist() == [1]  # "dog" is T5 token 1


@pytest.mark.parametrize("mode", ["joint", "cached"])
def test_reference_modes(pipe, reference, monkeypatch, mode):
    """cached: the reference features are built once before the loop and reused; joint: never built."""
    config = pipe.reference_config.replace(mode=mode)
    built: list[int] = []
    original = pipe.transformer.build_reference_cache

    def build(*args, **kwargs):
        built.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "build_reference_cache", build)
    calls = _spy_transformer(pipe, monkeypatch)
    out = pipe(reference, "a dog on the beach", entity="dog", seed=0, reference_config=config, **FAST).frames
    assert torch.isfinite(out).all()
    caches = [call.get("reference_cache") for call in calls]
    if mode == "cached":
        assert len(built) == 1 and all(cache is caches[0] and cache is not None for cache in caches)
    else:
        assert not built and all(cache is None for cache in caches)
    assert all(call["reference_config"].mode == mode for call in calls)


def test_cached_mode_honours_the_lora_scale(pipe, reference):
    """attention_kwargs={"scale": s} scales the reference LoRA in cached mode too (the LoRA acts only while the
    cache is built): cached equals joint with reference scope "self" (which recomputes the cache) at that scale."""
    kwargs = dict(seed=0, attention_kwargs={"scale": 0.25}, **FAST)
    cached = pipe.reference_config.replace(mode="cached")
    joint_self = pipe.reference_config.replace(mode="joint", reference_scope="self")
    got = pipe(reference, "a dog on the beach", entity="dog", reference_config=cached, **kwargs).frames
    expected = pipe(reference, "a dog on the beach", entity="dog", reference_config=joint_self, **kwargs).frames
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    full = pipe(reference, "a dog on the beach", entity="dog", reference_config=cached, **FAST, seed=0).frames
    assert (full - got).abs().max() > 1e-4  # the scale matters


@pytest.mark.parametrize("num_frames", [5, 8, 13])
def test_frame_counts_the_vae_cannot_decode_exactly_are_refused(pipe, num_frames):
    with pytest.raises(ValueError, match=rf"num_frames={num_frames}: .* 8k \+ 1 \(1, 9, 17, 25"):
        pipe(None, "a dog", num_frames=num_frames, height=128, width=192, num_inference_steps=1, output_type="latent")


# ----------------------------------------------------------------------------------------- reference image


def test_reference_keeps_aspect_and_is_padded_white():
    red = PIL.Image.new("RGB", (50, 100), (255, 0, 0))  # W=50, H=100 -> fits as 64x128 in 128x192
    pixels = prepare_reference_image(red, 128, 192)
    assert pixels.shape == (3, 128, 192)
    white = torch.ones(3)
    red_value = torch.tensor([1.0, -1.0, -1.0])
    torch.testing.assert_close(pixels[:, :, :64].mean(dim=(1, 2)), white)
    torch.testing.assert_close(pixels[:, :, 128:].mean(dim=(1, 2)), white)
    torch.testing.assert_close(pixels[:, :, 64:128].mean(dim=(1, 2)), red_value)


def test_reference_inputs_in_all_formats_agree():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    from_pil = prepare_reference_image(PIL.Image.fromarray(array), 128, 192)
    from_np = prepare_reference_image(array, 128, 192)
    from_float = prepare_reference_image(array.astype(np.float32) / 255.0, 128, 192)
    from_tensor = prepare_reference_image(torch.from_numpy(array).permute(2, 0, 1), 128, 192)
    for other in (from_np, from_float, from_tensor):
        torch.testing.assert_close(other, from_pil, rtol=0, atol=0)
    rgba = PIL.Image.fromarray(np.dstack([array, np.zeros((40, 60), np.uint8)]), "RGBA")  # fully transparent
    torch.testing.assert_close(prepare_reference_image(rgba, 128, 192), torch.ones(3, 128, 192))
    with pytest.raises(ValueError, match="reference array"):
        prepare_reference_image(np.zeros((4, 4, 2), np.uint8), 128, 192)


def test_reference_goes_through_the_video_vae_to_one_latent_frame(pipe, reference):
    latents = pipe.encode_reference(reference, 128, 192)
    assert latents.shape == (1, 1, pipe.vae.config.latent_channels, 16, 24)
    pixels = prepare_reference_image(reference, 128, 192)[None, :, None]  # (1, 3, 1, H, W)
    with torch.no_grad():
        expected = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected.permute(0, 2, 1, 3, 4), rtol=0, atol=0)
    two = pipe.encode_reference([reference, reference.rotate(90, expand=True)], 128, 192)
    assert two.shape[0] == 2 and (two[0] - two[1]).abs().max() > 0


# ----------------------------------------------------------------------------------------- entity tokens


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(32)


def _entity_tokens(tokenizer, prompt: str, entity: str | None) -> list[str]:
    mask, _ = entity_token_mask(tokenizer, [prompt], [entity], 32)
    ids = tokenizer(prompt, padding="max_length", max_length=32, truncation=True).input_ids
    return [tokenizer.convert_ids_to_tokens(i) for i, hit in zip(ids, mask[0].tolist()) if hit]


@pytest.mark.parametrize(
    "prompt, entity, expected",
    [
        ("a dog on the beach", "dog", ["▁dog"]),
        ("A Dog runs, and two dogs sleep.", "dog", ["▁Dog", "▁dogs"]),  # case and plural, every occurrence
        ("a teddy bear in the snow", "teddy bear", ["▁teddy", "▁bear"]),
        ("a zebra in the jungle", "zebra", ["▁z", "e", "b", "r", "a"]),  # out of vocabulary: its pieces
        ("a hotdog on a table", "dog", []),  # not a whole word
    ],
)
def test_entity_token_positions(tokenizer, prompt, entity, expected):
    assert _entity_tokens(tokenizer, prompt, entity) == expected


def test_entity_positions_index_the_text_encoder_sequence(tokenizer):
    mask, found = entity_token_mask(tokenizer, ["a dog on the beach", "the red backpack"], ["dog", "backpack"], 32)
    assert found == [True, True]
    assert mask.shape == (2, 32)
    assert torch.nonzero(mask).tolist() == [[0, 1], [1, 2]]


def test_missing_or_truncated_entity_is_reported_not_found(tokenizer):
    long_prompt = "a " + "very " * 40 + "dog"
    mask, found = entity_token_mask(tokenizer, ["a cat on the beach", long_prompt, "a dog"], ["dog", "dog", None], 32)
    assert found == [False, False, False]
    assert not mask.any()


def test_fallback_without_offsets_matches_offsets(tokenizer):
    ids = tokenizer("a teddy bear in the snow", padding="max_length", max_length=32, truncation=True).input_ids
    fallback = _entity_mask_from_ids(tokenizer, ids, "teddy bear")
    mask, _ = entity_token_mask(tokenizer, ["a teddy bear in the snow"], ["teddy bear"], 32)
    assert fallback == mask[0].tolist()


def test_prompt_without_its_entity_warns_and_turns_erae_off(pipe, reference, monkeypatch, caplog):
    calls = _spy_transformer(pipe, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="customvideox.pipeline"):
        out = pipe(reference, "a cat on the beach", entity="dog", seed=0, **FAST)
    assert out.entity_found == [False]
    assert "entity 'dog' not found" in caplog.text and "ERAE is off" in caplog.text
    assert all(call["entity_tokens"] is None for call in calls)
    assert calls[0]["reference_latents"] is not None  # the rest of the method still runs


# ----------------------------------------------------------------------------------------- LoRA


def test_reference_lora_save_load_round_trip(pipe, reference, tmp_path):
    trained = build_tiny_pipeline(seed=0)
    trained.set_progress_bar_config(disable=True)
    assert randomize_reference_lora(trained.transformer, torch.Generator().manual_seed(123)) > 0
    path = tmp_path / "reference_lora.safetensors"
    trained.save_reference_lora(path)
    expected = trained(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames

    fresh = build_tiny_pipeline(seed=0)
    fresh.set_progress_bar_config(disable=True)
    before = fresh(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    assert (before - expected).abs().max() > 1e-4  # the LoRA matters
    fresh.load_reference_lora(path)
    after = fresh(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert fresh.reference_lora_path == str(path)
    assert fresh.random_weights  # the tiny base model is still random


def test_loading_a_lora_of_another_rank_replaces_the_placeholder_adapter(reference, tmp_path):
    """The LoRA's shape comes from the file: a pipeline whose adapter was never loaded (here the preset's rank-8
    random one; from_pretrained without lora adds an untrained rank-128 one) takes a rank-4 file."""
    from customvideox.config import ReferenceConfig
    from customvideox.lora import count_lora_parameters

    source = build_tiny_pipeline(seed=0, reference_config=ReferenceConfig(lora_rank=4, lora_alpha=4.0))
    source.set_progress_bar_config(disable=True)
    path = source.save_reference_lora(tmp_path / "rank4.safetensors")
    target = build_tiny_pipeline(seed=0)  # same base weights, rank-8 LoRA
    target.set_progress_bar_config(disable=True)
    target.load_reference_lora(path)
    assert target.reference_config.lora_rank == 4 and target.reference_lora_path == str(path)
    assert count_lora_parameters(target.transformer) == count_lora_parameters(source.transformer)
    expected = source(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    got = target(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fit"):  # a loaded (trained) adapter is never replaced silently
        target.load_reference_lora(build_tiny_pipeline(seed=0).save_reference_lora(tmp_path / "rank8.safetensors"))


# ----------------------------------------------------------------------------------------- from_pretrained


def test_from_pretrained_on_a_cogvideox_folder_with_a_lora(pipe, reference, tmp_path):
    """The real loading path on a saved (tiny) CogVideoX folder: plain diffusers transformer -> ours, + LoRA file."""
    from diffusers import CogVideoXTransformer3DModel

    from customvideox.presets import TINY_TRANSFORMER
    from customvideox.transformer import CustomVideoXTransformer3DModel

    base = CogVideoXPipeline(**{**pipe.components, "transformer": CogVideoXTransformer3DModel(**TINY_TRANSFORMER)})
    base.set_progress_bar_config(disable=True)
    base.save_pretrained(tmp_path / "CogVideoX-5b")
    lora = pipe.save_reference_lora(tmp_path / "lora.safetensors")

    loaded = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", lora=lora)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.transformer, CustomVideoXTransformer3DModel)
    assert loaded.random_weights is False and loaded.reference_config.lora_rank == pipe.reference_config.lora_rank
    ours = {k: v for k, v in loaded.transformer.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in pipe.transformer.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    without = loaded(None, "a dog on the beach", seed=0, **FAST).frames  # no reference: the base model
    expected = base("a dog on the beach", generator=torch.Generator().manual_seed(0),
                    max_sequence_length=loaded.transformer.config.max_text_seq_length, **FAST).frames
    torch.testing.assert_close(without, expected, rtol=0, atol=0)
    assert torch.isfinite(loaded(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames).all()

    untrained = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b")
    assert untrained.random_weights is True  # the reference LoRA was never loaded


def test_save_pretrained_then_from_pretrained_restores_the_pipeline(pipe, reference, tmp_path):
    """A folder written by ``save_pretrained`` loads back (model_index.json naming our transformer class, the
    offline tokenizer, the scheduler): plain CogVideoX weights in ``transformer/``, the LoRA next to them,
    the random-weights stamp kept, and the same video."""
    from diffusers import CogVideoXTransformer3DModel
    from safetensors import safe_open

    from customvideox.transformer import CustomVideoXTransformer3DModel

    pipe.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    plain = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "saved" / "transformer")
    assert keys == set(plain.state_dict())  # a plain CogVideoX checkpoint

    loaded = CustomVideoXPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.transformer, CustomVideoXTransformer3DModel)
    assert loaded.random_weights is True  # the tiny preset's stamp survives the round trip
    assert loaded.reference_config.lora_rank == pipe.reference_config.lora_rank
    expected = pipe(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    got = loaded(reference, "a dog on the beach", entity="dog", seed=0, **FAST).frames
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
