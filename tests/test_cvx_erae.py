"""ERAE's region (Eq. 8): the three normalizations against a naive computation, the region-coverage diagnostic
of a pipeline run against a naive count, and the compiled transformer with the diagnostic on (no graph break)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from customvideox.attention import entity_region_mask, normalize_entity_map, normalize_per_clip
from customvideox.config import ERAE_NORMALIZATIONS, ReferenceConfig
from customvideox.presets import build_tiny_pipeline

FAST = dict(num_frames=9, height=128, width=192, num_inference_steps=2, guidance_scale=6.0, output_type="latent")

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_region(attn: np.ndarray, threshold: float, normalization: str) -> np.ndarray:
    """R_e of Eq. 8 for a (B, F, H, W) map, element by element: the min and max taken over each frame
    ("per-frame"), each sample's clip ("per-clip"), or no rescaling ("probability")."""
    region = np.zeros(attn.shape, dtype=bool)
    for b in range(attn.shape[0]):
        for f in range(attn.shape[1]):
            values = attn[b, f] if normalization == "per-frame" else attn[b]
            low, high = float(values.min()), float(values.max())
            for h in range(attn.shape[2]):
                for w in range(attn.shape[3]):
                    a = float(attn[b, f, h, w])
                    if normalization == "probability":
                        region[b, f, h, w] = a > threshold
                    elif high > low:
                        region[b, f, h, w] = (a - low) / (high - low) > threshold
    return region


# A subject in frame 0; frame 1 without it: near-uniform low attention with small variations; frame 2 exactly flat.
HAND_MADE = torch.tensor([
    [[0.0, 0.5], [1.0, 0.2]],
    [[0.010, 0.011], [0.010, 0.012]],
    [[0.3, 0.3], [0.3, 0.3]],
])[None]
KNOWN = {
    # per frame, frame 1 is stretched to [0, .5, 0, 1]: a region in a frame without the subject
    "per-frame": [[[False, True], [True, True]], [[False, True], [False, True]], [[False, False], [False, False]]],
    # over the clip (min 0, max 1) frame 1 stays under 0.012 and the flat frame 2 at 0.3
    "per-clip": [[[False, True], [True, True]], [[False, False], [False, False]], [[True, True], [True, True]]],
    # raw probabilities against lambda = 0.1
    "probability": [[[False, True], [True, True]], [[False, False], [False, False]], [[True, True], [True, True]]],
}


@pytest.mark.parametrize("normalization", ERAE_NORMALIZATIONS)
def test_each_normalization_on_a_hand_made_map(normalization):
    got = entity_region_mask(HAND_MADE, 0.1, normalization)
    assert got[0].tolist() == KNOWN[normalization]
    assert np.array_equal(got.numpy(), naive_region(HAND_MADE.numpy(), 0.1, normalization))


def test_a_frame_with_uniform_entity_attention_gets_no_region_per_clip_or_as_probability():
    """Frame 1 holds no subject: the entity's attention there is uniform up to 1% noise, at a typical raw
    probability (1 / tokens). Per frame it still gets a region (min-max stretches the noise); per clip and as a
    raw probability it gets none, while the subject's frame keeps its region."""
    g = torch.Generator().manual_seed(0)
    tokens = 8 * 12
    subject = torch.rand(8, 12, generator=g) * 0.02
    subject[2:5, 3:7] = 0.4
    empty = (1 + 0.01 * torch.rand(8, 12, generator=g)) / (10 * tokens)
    attn = torch.stack([subject, empty])[None]
    coverage = {n: entity_region_mask(attn, 0.1, n)[0].float().mean((1, 2)).tolist() for n in ERAE_NORMALIZATIONS}
    assert coverage["per-frame"][1] > 0.3
    assert coverage["per-clip"][1] == 0 and coverage["probability"][1] == 0
    for normalization in ERAE_NORMALIZATIONS:
        assert coverage[normalization][0] == pytest.approx(12 / tokens)  # the subject's 3 x 4 tokens


@pytest.mark.parametrize("normalization", ERAE_NORMALIZATIONS)
def test_normalizations_match_the_naive_computation_on_random_maps(normalization):
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(2, 3, 4, 5, generator=g) ** 3 * 0.3  # skewed, partly above 0.1
    attn[1, 2] = 0.05  # one flat frame
    threshold = 0.1 if normalization != "probability" else 0.02
    got = entity_region_mask(attn, threshold, normalization)
    assert np.array_equal(got.numpy(), naive_region(attn.numpy(), threshold, normalization))
    assert 0 < got.float().mean() < 1


def test_per_clip_normalization_known_values():
    attn = torch.tensor([[[[1.0, 3.0]], [[5.0, 2.0]]], [[[4.0, 4.0]], [[4.0, 4.0]]]])  # (2, F=2, 1, 2)
    assert normalize_per_clip(attn).tolist() == [[[[0.0, 0.5]], [[1.0, 0.25]]], [[[0.0, 0.0]], [[0.0, 0.0]]]]
    assert torch.equal(normalize_entity_map(attn, "probability"), attn)
    with pytest.raises(ValueError, match="erae_normalization='softmax'"):
        normalize_entity_map(attn, "softmax")
    with pytest.raises(ValueError, match="erae_normalization='softmax'"):
        ReferenceConfig(erae_normalization="softmax")


# ----------------------------------------------------------------------------------------- coverage diagnostic


@pytest.fixture(scope="module")
def pipe():
    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def reference():
    return np.random.default_rng(0).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)


def _record_entity_maps(pipe, monkeypatch) -> list[list[torch.Tensor]]:
    """Every transformer call gets an ``entity_maps`` list: per step, per layer, the raw (B, F, H', W') map."""
    steps: list[list[torch.Tensor]] = []
    original = pipe.transformer.forward

    def forward(*args, **kwargs):
        steps.append([])
        return original(*args, entity_maps=steps[-1], **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", forward)
    return steps


@pytest.mark.parametrize("normalization", ERAE_NORMALIZATIONS)
def test_region_coverage_equals_a_naive_count(pipe, reference, monkeypatch, normalization):
    config = pipe.reference_config.replace(erae_normalization=normalization)
    threshold = config.erae_lambda if normalization != "probability" else 0.004  # raw probabilities are small
    config = config.replace(erae_lambda=threshold)
    steps = _record_entity_maps(pipe, monkeypatch)
    out = pipe(reference, "a dog on the beach", entity="dog", seed=0, reference_config=config, **FAST)
    (diagnostics,) = out.diagnostics
    assert len(steps) == FAST["num_inference_steps"] and all(len(layers) == 2 for layers in steps)
    per_step = []
    for layers in steps:  # the conditional half (index 1 of the CFG batch) is the prompt's video
        counts = [naive_region(a.numpy(), threshold, normalization)[1].mean() for a in layers]
        per_step.append(float(np.mean(counts)))
    assert diagnostics["erae_region_coverage_per_step"] == pytest.approx(per_step, abs=1e-6)
    assert diagnostics["erae_region_coverage"] == pytest.approx(np.mean(per_step), abs=1e-6)
    assert diagnostics["erae_normalization"] == normalization
    assert 0 < diagnostics["erae_region_coverage"] < 1


def test_no_coverage_where_erae_did_not_run(pipe, reference):
    missing = pipe(reference, "a cat on the beach", entity="dog", seed=0, **FAST).diagnostics
    assert missing == [{"erae_region_coverage": None, "erae_region_coverage_per_step": None,
                        "erae_normalization": "per-frame"}]
    config = pipe.reference_config.replace(ablation="3d-ra+tab")
    no_erae = pipe(reference, "a dog on the beach", entity="dog", seed=0, reference_config=config, **FAST).diagnostics
    assert no_erae[0]["erae_region_coverage"] is None and no_erae[0]["erae_normalization"] is None
    two = pipe([reference, reference], ["a dog on the beach", "a cat"], entity=["dog", "dog"], seed=0, **FAST)
    assert two.diagnostics[0]["erae_region_coverage"] > 0 and two.diagnostics[1]["erae_region_coverage"] is None


# ----------------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("mode, backend", [("joint", "eager"), ("cached", "aot_eager")])
def test_compiled_forward_with_the_coverage_has_no_graph_break(pipe, mode, backend):
    """``fullgraph=True`` fails on any graph break; with ``aot_eager`` the in-place coverage sum is functionalized
    by AOT autograd (the generator's ``--compile`` path; ``eager`` checks the capture alone, faster)."""
    from customvideox.attention import entity_token_indices

    torch._dynamo.reset()
    model = pipe.transformer
    config = pipe.reference_config.replace(mode=mode)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 8, 12, generator=g)
    text = torch.randn(2, 32, 32, generator=g)
    ref = torch.randn(2, 1, 4, 8, 12, generator=g)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[1, 1:3] = True
    kwargs = dict(reference_latents=ref, reference_config=config, entity_tokens=entity_token_indices(mask),
                  return_dict=False)
    if mode == "cached":
        kwargs["reference_cache"] = model.build_reference_cache(ref[:1], reference_config=config)
    rope = pipe._prepare_rotary_positional_embeddings(64, 96, 3, torch.device("cpu"))
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    results = []
    for run in (model, compiled, compiled):  # the second compiled call reuses the graph with a new coverage tensor
        coverage = torch.zeros(2)
        with torch.no_grad():
            out = run(x, text, torch.tensor([500, 500]), image_rotary_emb=rope, erae_coverage=coverage, **kwargs)[0]
        results.append((out, coverage))
    (eager, eager_cov), (first, first_cov), (second, second_cov) = results
    assert eager_cov[0] == 0 and 0 < eager_cov[1] <= 2  # summed over 2 layers; sample 0 has no entity
    for out, cov in ((first, first_cov), (second, second_cov)):
        torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)
        torch.testing.assert_close(cov, eager_cov, rtol=0, atol=1e-6)
