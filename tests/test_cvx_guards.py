"""Guards: a dense attention larger than the free memory is refused before allocating; video sizes the model
cannot produce are refused with the value and the rule."""

from __future__ import annotations

import math

import pytest
import torch

from customvideox import attention as A
from customvideox.attention import (
    AttentionMemoryError,
    check_dense_attention_memory,
    dense_attention_bytes,
    naive_reference_attention,
)
from customvideox.pipeline import video_geometry_problems
from customvideox.presets import build_tiny_pipeline

#: CogVideoX-5B, joint mode, 49 frames at 480x720 with CFG: 226 text + 13 x 30 x 45 video + 30 x 45 reference tokens.
TOKENS_5B = 226 + 13 * 30 * 45 + 30 * 45
pytestmark = pytest.mark.usefixtures("one_thread")


def _huge(*shape: int) -> torch.Tensor:
    """A tensor of ``shape`` that allocates one element (a broadcast view)."""
    return torch.zeros((1,) * len(shape)).expand(*shape)


def test_bytes_of_the_dense_matrices():
    assert dense_attention_bytes(2, 48, TOKENS_5B, TOKENS_5B, copies=1) == 2 * 48 * 19126 * 19126 * 4  # ~140 GB
    assert dense_attention_bytes(1, 1, 3, 5, torch.bfloat16, copies=2) == 60


def test_the_naive_backend_at_5b_size_is_refused_before_allocating():
    q = _huge(2, 48, TOKENS_5B, 64)
    k_main, k_ref = _huge(2, 48, TOKENS_5B - 1350, 64), _huge(2, 48, 1350, 64)
    with pytest.raises(AttentionMemoryError) as error:  # 281 GB of logits: would not fit this machine
        naive_reference_attention(q, k_main, k_main, k_ref, k_ref)
    message = str(error.value)
    assert "\n" not in message and "attention_backend='naive'" in message and "attention_backend='fused'" in message
    assert "batch 2 x heads 48 x queries 19126 x keys 19126" in message and "needs 280.9 GB" in message
    assert "GB available on cpu" in message


def test_the_limit_is_the_available_memory(monkeypatch):
    needed = dense_attention_bytes(2, 3, 37, 64)
    monkeypatch.setattr(A, "available_memory", lambda device: needed - 1)
    with pytest.raises(AttentionMemoryError, match="needs 0.0 GB, 0.0 GB available"):
        check_dense_attention_memory(2, 3, 37, 64, "cpu")
    monkeypatch.setattr(A, "available_memory", lambda device: needed)
    check_dense_attention_memory(2, 3, 37, 64, "cpu")
    monkeypatch.setattr(A, "available_memory", lambda device: None)  # a device whose free memory is unknown
    check_dense_attention_memory(2, 3, 37, 64, "meta")


def test_a_small_naive_attention_runs_and_matches_the_softmax():
    g = torch.Generator().manual_seed(0)
    q, k_main, v_main, k_ref, v_ref = (torch.randn(2, 3, n, 16, generator=g) for n in (37, 53, 53, 11, 11))
    bias = torch.randn(2, 37, generator=g)
    got = naive_reference_attention(q, k_main, v_main, k_ref, v_ref, bias)
    scores = torch.cat([q @ k_main.transpose(-1, -2), q @ k_ref.transpose(-1, -2) + bias[:, None, :, None]
                        * math.sqrt(16)], -1) / math.sqrt(16)
    want = torch.softmax(scores, -1) @ torch.cat([v_main, v_ref], -2)
    assert (got - want).abs().max() < 1e-5


def test_the_transformer_with_the_naive_backend_is_refused_when_memory_is_short(monkeypatch):
    pipe = build_tiny_pipeline(seed=0)
    config = pipe.reference_config.replace(attention_backend="naive")
    x, ref = torch.randn(2, 3, 4, 8, 12), torch.randn(1, 1, 4, 8, 12)
    text = torch.randn(2, 32, 32)
    monkeypatch.setattr(A, "available_memory", lambda device: 1000)
    with torch.no_grad(), pytest.raises(AttentionMemoryError, match="queries 128 x keys 128"):  # 32 + 72 + 24
        pipe.transformer(x, text, torch.tensor([500, 500]), reference_latents=ref, reference_config=config)
    monkeypatch.undo()
    with torch.no_grad():
        out = pipe.transformer(x, text, torch.tensor([500, 500]), reference_latents=ref, reference_config=config)
    assert out.sample.shape == x.shape


# ----------------------------------------------------------------------------------------- video geometry


def test_geometry_rules():
    assert video_geometry_problems(480, 720, 49) == [] and video_geometry_problems(16, 16, 1) == []
    (problem,) = video_geometry_problems(24, 720, 49)
    assert problem.startswith("height=24: must be a positive multiple of 16 px") and "minimum 16" in problem
    assert [p.split(":")[0] for p in video_geometry_problems(8, 8, 0)] == ["height=8", "width=8", "num_frames=0"]
    assert [p.split(":")[0] for p in video_geometry_problems(-16, 16.0, True)] == [
        "height=-16", "width=16.0", "num_frames=True"]
    for frames in (5, 8, 13, 25.0):
        (problem,) = video_geometry_problems(480, 720, frames)
        assert problem.startswith(f"num_frames={frames!r}: ") and "8k + 1 (1, 9, 17, 25" in problem


@pytest.fixture(scope="module")
def pipe():
    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_8x8_pixels_fails_with_one_error_naming_values_and_rule(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(ValueError) as error:
        pipe(None, "a dog", height=8, width=8, num_frames=9, num_inference_steps=1, output_type="latent")
    message = str(error.value)
    assert message.startswith("height=8: must be a positive multiple of 16 px") and "; width=8: " in message
    with pytest.raises(ValueError, match="num_frames=0: "):  # 0 is not "unset"
        pipe(None, "a dog", height=128, width=192, num_frames=0, num_inference_steps=1, output_type="latent")


def test_the_smallest_size_runs(pipe):
    out = pipe(None, "a dog", height=16, width=16, num_frames=9, num_inference_steps=1, output_type="np").frames
    assert out.shape == (1, 9, 16, 16, 3)
