"""CUDA-only checks: the fused attention kernels, half-precision metrics and the tiny pipeline on a GPU.

Skipped on machines without CUDA (CI has none); run them on a GPU with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_lse_and_biased_merge_match_dense_math(dtype):
    from customvideox.attention import (
        attention_with_lse,
        attention_with_lse_math,
        naive_reference_attention,
        reference_attention,
    )

    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", generator=gen, dtype=dtype) for _ in range(3))
    k_ref, v_ref = (torch.randn(2, 4, 90, 64, device="cuda", generator=gen, dtype=dtype) for _ in range(2))
    out, lse = attention_with_lse(q, k, v)
    out_ref, lse_ref = attention_with_lse_math(q.float(), k.float(), v.float())
    assert (out.float() - out_ref).abs().max() < 2e-2
    assert (lse.float() - lse_ref).abs().max() < 1e-2
    bias = torch.rand(2, 300, device="cuda", generator=gen) - 0.5
    with torch.no_grad():
        fused = reference_attention(q, k, v, k_ref, v_ref, bias)
    dense = naive_reference_attention(q, k, v, k_ref, v_ref, bias)
    assert (fused.float() - dense).abs().max() < 2e-2


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_metrics_stay_within_0_1_points(tmp_path, dtype):
    from PIL import Image

    from videobench.metrics import build_metrics
    from videobench.metrics.base import MetricInput
    from videobench.weights import WeightsConfig

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 16, 24, 3), dtype=np.uint8)
    frames = np.repeat(np.kron(base, np.ones((1, 16, 16, 1), dtype=np.uint8)), 9, axis=0)
    frames[4:] = np.roll(frames[4:], 8, axis=2)
    sample = MetricInput(frames, 8.0, [Image.fromarray(frames[0])], "a colourful mosaic sliding sideways", "mosaic")
    columns = ["clip_t", "clip_i", "dino_i", "t_cons"]
    full = build_metrics(columns, WeightsConfig(), device="cuda", dtype="fp32", random_weights=True)
    half = build_metrics(columns, WeightsConfig(), device="cuda", dtype=dtype, random_weights=True)
    for a, b in zip(full, half):
        wanted = tuple(c for c in a.columns if c in columns)
        sa, sb = a.score(sample, wanted), b.score(sample, wanted)
        for column in wanted:
            assert abs(sa[column] - sb[column]) * 100 <= 0.1, (column, sa[column], sb[column])


def test_tiny_pipeline_on_cuda_is_deterministic():
    from customvideox.presets import TINY_CALL_DEFAULTS, build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0, device="cuda")
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    call = {**TINY_CALL_DEFAULTS, "num_inference_steps": 2, "output_type": "np"}
    a = pipe(reference_image=image, prompt="a block spinning", entity="block", seed=3, **call).frames
    b = pipe(reference_image=image, prompt="a block spinning", entity="block", seed=3, **call).frames
    assert np.array_equal(np.asarray(a), np.asarray(b))
