"""Dynamic degree: VBench's rule on synthetic flow fields, RAFT weight conversion, batched RAFT equivalence."""

from __future__ import annotations

import re
from unittest import mock

import numpy as np
import pytest
import torch
from torchvision.models.optical_flow import raft_large

from mediaio.hashing import file_sha256
from videobench.metrics import MetricInput, build_metrics
from videobench.metrics.dynamic import (
    DYNAMIC_RULES,
    DynamicDegreeMetric,
    build_raft_model,
    convert_original_raft_state_dict,
    dynamic_count_needed,
    dynamic_threshold,
    flow_pair_score,
    flow_pair_scores,
    is_dynamic,
    kept_frame_indices,
    pad_for_raft,
    raft_consecutive_flows,
    raft_final_flow,
)
from videobench.metrics.raft import channels_last_encoders, fused_update
from videobench.metrics.workers import single_thread_workers
from videobench.scoring.compute import metric_config_hash
from videobench.weights import WeightsConfig


# --- the rule -------------------------------------------------------------------------------------------------
def _vbench_check_move(scores, count, height, width, fps=8.0, fps_scaled=False):
    """VBench's set_params + check_move, transcribed literally as the reference.

    v0.1.5 (vbench/dynamic_degree.py lines 59-61, 84-93): ``thres = 6.0*(scale/256.0)``; with ``fps_scaled``, the
    unreleased commit 11abda9 (2024-07-03): ``factor = max(1.0, 8.0/fps)``, ``thres = factor*6.0*(scale/256.0)``.
    """
    factor = max(1.0, 8.0 / fps) if fps_scaled else 1.0
    thres, count_num = factor * 6.0 * (min(height, width) / 256.0), round(4 * (count / 16.0))
    hits = 0
    for score in scores:
        if score > thres:
            hits += 1
        if hits >= count_num:
            return True
    return False


def _vbench_get_score(flow: np.ndarray) -> float:
    rad = np.sqrt(np.square(flow[0]) + np.square(flow[1]))
    h, w = rad.shape
    return float(np.mean(abs(np.sort(-rad.flatten()))[: int(h * w * 0.05)]))


def test_flow_pair_score_known_answers():
    flow = torch.zeros(2, 128, 128)
    k = int(0.05 * 128 * 128)  # 819
    flow[0].view(-1)[:k] = 3.0
    flow[1].view(-1)[:k] = 4.0  # magnitude 5 on exactly the top 5%
    assert flow_pair_score(flow) == pytest.approx(5.0)
    flow[:, -1, -1] = torch.tensor([30.0, 40.0])  # one more, larger pixel: the smallest 5 drops out
    assert flow_pair_score(flow) == pytest.approx((50.0 + 5.0 * (k - 1)) / k)
    # 10 x 15 = 150 pixels: int(7.5) = 7 largest magnitudes
    small = torch.zeros(2, 10, 15)
    small[0].view(-1)[:8] = torch.arange(1.0, 9.0)
    assert flow_pair_score(small) == pytest.approx(np.mean(np.arange(2.0, 9.0)))
    rng = np.random.default_rng(0)
    fields = rng.normal(0, 4, (3, 2, 136, 200)).astype(np.float32)
    batched = flow_pair_scores(torch.from_numpy(fields))
    for field, value in zip(fields, batched):
        assert float(value) == pytest.approx(_vbench_get_score(field), rel=1e-5)
    with pytest.raises(ValueError):
        flow_pair_score(torch.zeros(2, 3, 3))


def test_threshold_and_count():
    assert dynamic_threshold(480, 720) == pytest.approx(11.25)  # 6 * 480 / 256, the unpadded short side
    assert dynamic_threshold(720, 480) == pytest.approx(11.25)
    assert dynamic_threshold(480, 720, fps=4.0) == pytest.approx(11.25)  # VBench v0.1.5: no fps in the threshold
    assert dynamic_threshold(480, 720, fps=4.0, rule="vbench-2024-fps-scaled") == pytest.approx(22.5)
    assert dynamic_threshold(480, 720, fps=24.0) == pytest.approx(11.25)
    assert dynamic_threshold(480, 720, fps=24.0, rule="vbench-2024-fps-scaled") == pytest.approx(11.25)
    # round(4 n / 16) with half-to-even rounding
    assert [dynamic_count_needed(n) for n in (1, 2, 6, 10, 14, 16, 49)] == [0, 0, 2, 2, 4, 4, 12]


@pytest.mark.parametrize(
    ("num_frames", "over", "expected"),
    [
        (49, 11, False), (49, 12, True),  # 12.25 -> 12 pairs needed
        (6, 1, False), (6, 2, True),  # 1.5 -> 2 (half to even)
        (10, 2, True), (10, 1, False),  # 2.5 -> 2 (half to even)
        (14, 3, False), (14, 4, True),  # 3.5 -> 4
        (2, 0, True),  # 0.5 -> 0: any single pair is dynamic
    ],
)
def test_is_dynamic_counts(num_frames, over, expected):
    threshold = dynamic_threshold(480, 720)
    scores = [threshold + 0.01] * over + [threshold] * (num_frames - 1 - over)  # == threshold does not count
    assert is_dynamic(scores, num_frames, 480, 720) is expected
    assert _vbench_check_move(scores, num_frames, 480, 720) is expected


def test_is_dynamic_edge_cases_match_vbench():
    assert is_dynamic([], 1, 480, 720) is False  # no pair: never dynamic
    assert is_dynamic([0.0], 2, 480, 720, fps=4.0) is True  # needed 0 pairs
    assert is_dynamic([22.4] * 4, 5, 480, 720, fps=4.0) is True  # 22.4 > 11.25
    assert is_dynamic([22.4] * 4, 5, 480, 720, fps=4.0, rule="vbench-2024-fps-scaled") is False  # 22.4 < 22.5
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        h, w, fps = int(rng.integers(128, 800)), int(rng.integers(128, 800)), float(rng.choice([4, 6, 8, 16, 24]))
        scores = list(rng.uniform(0, 3 * dynamic_threshold(h, w), n - 1))
        assert is_dynamic(scores, n, h, w, fps) is _vbench_check_move(scores, n, h, w, fps)
        assert is_dynamic(scores, n, h, w, fps, "vbench-2024-fps-scaled") is _vbench_check_move(
            scores, n, h, w, fps, fps_scaled=True)


def test_under_8_fps_the_rules_differ_known_answers():
    # 6 fps, 240x320 (VBench's low-resolution size): 6 * 240 / 256 = 5.625; x 8/6 = 7.5 under the 2024 variant
    assert dynamic_threshold(240, 320, fps=6.0) == 5.625
    assert dynamic_threshold(240, 320, fps=6.0, rule="vbench-2024-fps-scaled") == pytest.approx(7.5)
    # 6 fps keeps every frame (round(6/8) = 1): 16 frames, 15 pairs, round(4*16/16) = 4 pairs needed
    assert kept_frame_indices(16, 6.0) == list(range(16)) and dynamic_count_needed(16) == 4
    between = [6.5] * 4 + [1.0] * 11  # 4 pairs between the thresholds
    assert is_dynamic(between, 16, 240, 320, fps=6.0) is True
    assert is_dynamic(between, 16, 240, 320, fps=6.0, rule="vbench-2024-fps-scaled") is False
    assert _vbench_check_move(between, 16, 240, 320, 6.0) is True
    assert _vbench_check_move(between, 16, 240, 320, 6.0, fps_scaled=True) is False
    above = [7.6] * 4 + [1.0] * 11  # above both: dynamic under both
    assert is_dynamic(above, 16, 240, 320, 6.0) and is_dynamic(above, 16, 240, 320, 6.0, "vbench-2024-fps-scaled")
    for fps in (8.0, 12.0, 24.0):  # at 8 fps and above the rules agree
        assert dynamic_threshold(240, 320, fps) == dynamic_threshold(240, 320, fps, "vbench-2024-fps-scaled")


def test_unknown_rule_is_refused_with_the_accepted_names():
    assert DYNAMIC_RULES == ("vbench", "vbench-2024-fps-scaled")
    message = "unknown dynamic degree rule 'vbench-2023'; expected one of vbench, vbench-2024-fps-scaled"
    with pytest.raises(ValueError, match=re.escape(message)):
        dynamic_threshold(240, 320, 6.0, rule="vbench-2023")
    with pytest.raises(ValueError, match=re.escape(message)):
        DynamicDegreeMetric(torch.nn.Identity(), random_weights=True, rule="vbench-2023")
    with pytest.raises(ValueError, match=re.escape("metric dynamic: option rule='vbench-2023': choose one of vbench, "
                                                   "vbench-2024-fps-scaled")):
        DynamicDegreeMetric.create({"rule": "vbench-2023"}, random_weights=True)


def test_kept_frames():
    assert kept_frame_indices(5, 8.0) == [0, 1, 2, 3, 4]
    assert kept_frame_indices(10, 24.0) == [0, 3, 6, 9]
    assert kept_frame_indices(5, 12.0) == [0, 2, 4]  # round(1.5) = 2
    assert kept_frame_indices(5, 20.0) == [0, 2, 4]  # round(2.5) = 2
    assert kept_frame_indices(3, 4.0) == [0, 1, 2]


def _vbench_input_padder(height: int, width: int) -> list[int]:
    """RAFT's ``InputPadder(dims, mode='sintel')._pad`` (VBench third_party/RAFT/core/utils_core/utils.py)."""
    pad_ht = (((height // 8) + 1) * 8 - height) % 8
    pad_wd = (((width // 8) + 1) * 8 - width) % 8
    return [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2]


def test_padding_equals_raft_input_padder_from_128_px():
    for height, width in [(128, 128), (130, 197), (240, 320), (257, 263), (480, 720), (481, 721)]:
        images = torch.rand(1, 3, height, width)
        expected = torch.nn.functional.pad(images, _vbench_input_padder(height, width), mode="replicate")
        assert torch.equal(pad_for_raft(images), expected)


def test_padding():
    images = torch.arange(100 * 130, dtype=torch.float32).view(1, 1, 100, 130)
    padded = pad_for_raft(images)
    assert padded.shape[-2:] == (128, 136)  # at least 128, multiple of 8
    assert torch.equal(padded[..., 14:114, 3:133], images)  # centred
    assert torch.equal(padded[..., 0, 3:133], images[..., 0, :])  # replicated edge
    same = torch.zeros(2, 3, 480, 720)
    assert pad_for_raft(same) is same


# --- RAFT weights -----------------------------------------------------------------------------------------
def _to_original_key(key: str) -> list[str]:
    """torchvision raft_large name -> name(s) in princeton-vl's raft-things.pth (the inverse of the converter)."""
    rules = [
        (r"^feature_encoder\.", "fnet."), (r"^context_encoder\.", "cnet."),
        (r"^(fnet|cnet)\.convnormrelu\.0\.", r"\1.conv1."), (r"^(fnet|cnet)\.convnormrelu\.1\.", r"\1.norm1."),
        (r"^(fnet|cnet)\.conv\.", r"\1.conv2."),
        (r"\.convnormrelu([12])\.0\.", r".conv\1."), (r"\.convnormrelu([12])\.1\.", r".norm\1."),
        (r"motion_encoder\.convcorr([12])\.0\.", r"encoder.convc\1."),
        (r"motion_encoder\.convflow([12])\.0\.", r"encoder.convf\1."),
        (r"motion_encoder\.conv\.0\.", "encoder.conv."),
        (r"recurrent_block\.convgru([12])\.conv([zrq])\.", r"gru.conv\2\1."),
        (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."), (r"^mask_predictor\.conv\.", "update_block.mask.2."),
    ]
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    keys = ["module." + key]
    if ".downsample.1." in key:  # norm3 is registered twice in the original ResidualBlock
        keys.append("module." + key.replace(".downsample.1.", ".norm3."))
    return keys


@pytest.fixture(scope="module")
def raft() -> torch.nn.Module:
    return build_raft_model(seed=5)


def _pair(size=128, shift=3):
    rng = np.random.default_rng(2)
    base = torch.from_numpy(rng.uniform(-1, 1, (1, 3, size, size + 2 * shift)).astype(np.float32))
    base = torch.nn.functional.avg_pool2d(base, 5, 1, 2)  # some texture for the correlation
    return base[..., shift:-shift], base[..., : -2 * shift]


def test_original_raft_checkpoint_converts_and_round_trips(tmp_path, raft):
    state = raft.state_dict()
    original = {new: value for key, value in state.items() for new in _to_original_key(key)}
    assert "module.fnet.conv1.weight" in original and "module.update_block.gru.convz1.weight" in original
    assert "module.cnet.layer2.0.norm3.running_mean" in original and "module.update_block.mask.2.bias" in original
    converted = convert_original_raft_state_dict(original)
    assert set(converted) == set(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)
    # loads from a .pth file in the original format (torch.load(weights_only=True)) and gives the same flow
    path = tmp_path / "raft-things.pth"
    torch.save(original, path)
    loaded = build_raft_model(path)
    image1, image2 = _pair()
    with torch.no_grad():
        assert torch.equal(raft_final_flow(loaded, image1, image2, 1), raft_final_flow(raft, image1, image2, 1))
    # the torchvision format (C_T_V1) loads too, through the weights folder
    torch.save(state, tmp_path / "raft_large_C_T_V1-22a6c225.pth")
    metric = DynamicDegreeMetric.create(weights=WeightsConfig(weights_dir=tmp_path))
    assert metric.config()["weights_sha256"] == file_sha256(tmp_path / "raft_large_C_T_V1-22a6c225.pth")
    assert all(torch.equal(metric.model.state_dict()[k], state[k]) for k in state)


def test_final_flow_equals_torchvision_forward(raft):
    image1, image2 = _pair()
    with torch.no_grad():
        expected = raft(image1, image2, num_flow_updates=2)[-1]
        assert torch.allclose(raft_final_flow(raft, image1, image2, 2), expected, atol=1e-5)


def test_fused_update_equals_torchvision_update_block_and_follows_new_weights():
    """One update of :class:`FusedUpdate` (context share precomputed, convolutions split by input) equals
    torchvision's ``UpdateBlock``: the same sums in another order (fp32 over 384 * 5 terms per output: well
    under 1e-5 on the tanh/sigmoid-bounded hidden state); new weights rebuild the fused copy."""
    model = build_raft_model(seed=7)
    torch.manual_seed(0)
    hidden, context = torch.tanh(torch.randn(2, 128, 16, 16)), torch.relu(torch.randn(2, 128, 16, 16))
    corr, flow = torch.randn(2, 324, 16, 16), torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        for _ in range(2):
            update = fused_update(model)
            expected_hidden, expected_delta = model.update_block(hidden, context, corr, flow)
            got_hidden, got_delta = update(hidden, update.context_terms(context), corr, flow)
            assert torch.allclose(got_hidden, expected_hidden, atol=1e-5, rtol=0)
            assert torch.allclose(got_delta, expected_delta, atol=1e-4, rtol=1e-5)
            model.load_state_dict(build_raft_model(seed=8).state_dict())
    assert fused_update(model) is fused_update(model)  # built once per set of weights


def test_consecutive_flows_equal_the_flows_of_each_pair(raft):
    torch.manual_seed(1)
    frames = torch.rand(4, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        shared = raft_consecutive_flows(raft, frames, 2)
        for i in range(3):
            assert torch.allclose(shared[i : i + 1], raft_final_flow(raft, frames[i : i + 1], frames[i + 1 : i + 2], 2),
                                  atol=1e-5)


def test_metric_batches_pairs_like_one_pair_at_a_time(raft):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 120, 128, 3), dtype=np.uint8)  # 120 px: padded to 128
    batched = DynamicDegreeMetric(raft, random_weights=True, pair_batch_size=2, num_flow_updates=1)
    single = DynamicDegreeMetric(raft, random_weights=True, pair_batch_size=1, num_flow_updates=1)
    kept = torch.from_numpy(frames).permute(0, 3, 1, 2)
    scores = single.pair_scores(kept)
    out = batched.score(MetricInput(frames, 8.0, [], ""))
    assert out["dd_max_pair_score"] == pytest.approx(float(scores.max()), rel=1e-4)
    scores = scores.tolist()
    assert out["dd_num_frames"] == 3 and out["dd_num_pairs"] == 2 and out["dd_count_needed"] == 1
    assert out["dd_threshold"] == pytest.approx(6.0 * 120 / 256)
    assert out["dd_pairs_over_threshold"] == sum(s > out["dd_threshold"] for s in scores)
    assert out["dynamic"] == float(is_dynamic(scores, 3, 120, 128))
    assert batched.config()["num_flow_updates"] == 1 and batched.config()["weights_sha256"] == "random(seed=0)"


def test_metric_rule_is_in_the_config_and_the_cache_key(raft):
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    default = DynamicDegreeMetric(raft, random_weights=True, num_flow_updates=1)
    scaled = DynamicDegreeMetric(raft, random_weights=True, num_flow_updates=1, rule="vbench-2024-fps-scaled")
    assert default.rule == "vbench" and default.config()["rule"] == "vbench"
    assert "VBench v0.1.5" in default.config()["rule_definition"]
    assert scaled.config()["rule"] == "vbench-2024-fps-scaled"
    assert metric_config_hash(default) != metric_config_hash(scaled)
    low, high = default.score(MetricInput(frames, 4.0, [], "")), scaled.score(MetricInput(frames, 4.0, [], ""))
    assert low["dd_threshold"] == 6.0 * 128 / 256 and high["dd_threshold"] == 2 * low["dd_threshold"]
    assert low["dd_max_pair_score"] == high["dd_max_pair_score"]  # same flow, only the threshold differs
    # from_weights and build_metrics take the rule too
    built = build_metrics(["dynamic"], random_weights=True, options={"dynamic": {"rule": "vbench-2024-fps-scaled"}})
    assert built[0].rule == "vbench-2024-fps-scaled"
    assert build_metrics(["dynamic"], random_weights=True)[0].rule == "vbench"
    # the option's accepted values are exactly the rules the module knows
    import typing

    from videobench.metrics.dynamic import DYNAMIC_RULES, DynamicOptions

    assert typing.get_args(typing.get_type_hints(DynamicOptions)["rule"]) == DYNAMIC_RULES


def test_metric_full_flow_updates_and_frame_sampling(raft):
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    metric = DynamicDegreeMetric(raft, random_weights=True)  # 20 flow updates, as VBench
    out = metric.score(MetricInput(frames, 24.0, [], ""))  # 24 fps: frames 0 and 3 are kept
    assert (out["dd_num_frames"], out["dd_num_pairs"], out["dd_count_needed"]) == (2, 1, 0)
    assert out["dynamic"] == 1.0  # round(4 * 2 / 16) = 0 pairs needed
    assert metric.config()["num_flow_updates"] == 20 and out["dd_max_pair_score"] > 0
    with pytest.raises(ValueError, match="at least 2 frames"):
        metric.score(MetricInput(frames[:1], 8.0, [], ""))


def test_random_raft_is_reproducible():
    a, b = raft_large(weights=None), build_raft_model(seed=0)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_raft_model(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(b.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("cpu_workers", [1, 2])
def test_repeated_pairs_run_through_raft_once(raft, cpu_workers):
    """Frames A A A B A A: the pairs (A, A), (A, B), (B, A) run once each (the two frames through each encoder
    once, one frame per call on the CPU path), and every pair's score is that pair's own RAFT flow's
    (raft_final_flow, one pair at a time)."""
    rng = np.random.default_rng(11)
    distinct = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    kept = torch.from_numpy(distinct[[0, 0, 0, 1, 0, 0]]).permute(0, 3, 1, 2)
    metric = DynamicDegreeMetric(raft, random_weights=True, num_flow_updates=2, cpu_workers=cpu_workers)
    assert metric.winograd_tile > 0  # CPU, fp32: the CPU path
    encoded: dict[str, list[int]] = {"feature": [], "context": []}
    hooks = [encoder.register_forward_hook(lambda module, args, out, name=name: encoded[name].append(len(args[0])))
             for name, encoder in zip(encoded, channels_last_encoders(raft, metric.winograd_tile))]
    try:
        scores = metric.pair_scores(kept)
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded == {"feature": [1, 1], "context": [1, 1]}
    images = pad_for_raft(kept.float() / 127.5 - 1.0)
    with torch.no_grad():
        expected = [flow_pair_score(raft_final_flow(raft, images[i : i + 1], images[i + 1 : i + 2], 2)[0])
                    for i in range(5)]
    assert scores.tolist() == pytest.approx(expected, rel=1e-5)
    assert scores[0] == scores[1] == scores[4]


def test_correlation_pyramid_equals_torchvisions_build_pyramid(raft):
    """The pyramid built without storing it on the model (threads share it) is CorrBlock.build_pyramid's, exactly;
    feature maps too small for the levels are refused as torchvision refuses them."""
    from videobench.metrics.raft import correlation_pyramid

    generator = torch.Generator().manual_seed(4)
    fmap1, fmap2 = (torch.randn(2, 256, 16, 24, generator=generator) for _ in range(2))
    block = raft.corr_block
    block.build_pyramid(fmap1, fmap2)
    ours = correlation_pyramid(fmap1, fmap2, block.num_levels)
    assert len(ours) == len(block.corr_pyramid) == 4
    assert all(torch.equal(a, b) for a, b in zip(ours, block.corr_pyramid))
    with pytest.raises(ValueError, match="too small for 4 correlation levels"):
        correlation_pyramid(fmap1[..., :8, :], fmap2[..., :8, :], 4)
    with pytest.raises(ValueError, match="different shapes"):
        correlation_pyramid(fmap1, fmap2[:1], 4)


@pytest.mark.parametrize("winograd_tile", [0, 4])
def test_channels_last_encoders_compute_torchvisions_encoders(raft, winograd_tile):
    """The CPU encoders (batch norms folded into the convolutions, instance norms per sample, channels-last, with
    ``winograd_tile`` every stride-1 3x3 convolution a Winograd one) give the encoders' outputs up to float
    rounding, with batch norm statistics that are not the identity, in a batch and frame by frame; a new state dict
    rebuilds them."""
    import copy

    from videobench.metrics.raft import SampleInstanceNorm
    from videobench.metrics.winograd import WinogradConv2d

    model = copy.deepcopy(raft)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for norm in model.context_encoder.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):  # trained-like statistics and affine parameters
                norm.running_mean.normal_(0, 0.5, generator=generator)
                norm.running_var.uniform_(0.5, 2.0, generator=generator)
                norm.weight.uniform_(0.5, 1.5, generator=generator)
                norm.bias.normal_(0, 0.2, generator=generator)
    images = torch.rand(3, 3, 128, 160, generator=generator) * 2 - 1
    feature, context = channels_last_encoders(model, winograd_tile)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in context.modules())
    assert any(isinstance(m, SampleInstanceNorm) for m in feature.modules())
    for encoder in (feature, context):  # layer1: 4 x 64, layer2: 3 x 96, layer3: 3 x 128 channels (stride 1)
        shapes = sorted((m.in_channels, m.out_channels) for m in encoder.modules() if isinstance(m, WinogradConv2d))
        assert shapes == ([] if winograd_tile == 0 else [(64, 64)] * 4 + [(96, 96)] * 3 + [(128, 128)] * 3)
    with torch.inference_mode():
        for ours, theirs in ((feature, model.feature_encoder), (context, model.context_encoder)):
            expected = theirs(images)
            for got in (ours(images), torch.cat([ours(image[None]) for image in images])):
                assert got.is_contiguous(memory_format=torch.channels_last)
                assert torch.allclose(got, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))
        assert channels_last_encoders(model, winograd_tile)[1] is context  # kept on the model
        model.context_encoder.load_state_dict(raft.context_encoder.state_dict())
        rebuilt = channels_last_encoders(model, winograd_tile)[1]
        assert rebuilt is not context
        expected = raft.context_encoder(images)
        assert torch.allclose(rebuilt(images), expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("affine", [False, True])
def test_sample_instance_norm_equals_instance_norm(affine):
    from videobench.metrics.raft import SampleInstanceNorm

    norm = torch.nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_()
    x = torch.randn(4, 6, 9, 11, generator=torch.Generator().manual_seed(1)) * 3 + 1
    expected = norm(x)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = SampleInstanceNorm(norm)(x.contiguous(memory_format=layout))
        assert got.is_contiguous(memory_format=layout)
        assert torch.allclose(got, expected, rtol=0, atol=1e-5)


def test_patch_lookup_equals_torchvisions_index_pyramid(raft):
    """The gathered-patch lookup samples what CorrBlock.index_pyramid samples, in its channel order: centroids
    inside, at exact integers, on the last pixel, just outside (partly padding) and far outside (all padding)."""
    from videobench.metrics.raft import PatchLookup

    torch.manual_seed(4)
    fmap1, fmap2 = torch.randn(2, 256, 16, 24), torch.randn(2, 256, 16, 24)
    raft.corr_block.build_pyramid(fmap1, fmap2)
    coords = torch.rand(2, 2, 16, 24) * torch.tensor([60.0, 50.0]).view(1, 2, 1, 1) - 18.0
    coords[1] = coords[1].round()  # exact integers: zero fractions, the patch's last row and column unused
    special = [(23.0, 15.0), (0.0, 0.0), (-4.5, 3.25), (-5.0, 7.0), (27.75, -4.0), (28.0, 19.0), (-200.0, 300.0)]
    for k, (x, y) in enumerate(special):
        coords[0, :, 0, k] = torch.tensor([x, y])
    expected = raft.corr_block.index_pyramid(centroids_coords=coords)
    got = PatchLookup(raft.corr_block.corr_pyramid, raft.corr_block.radius)(coords)
    assert got.shape == expected.shape == (2, 324, 16, 24)
    last = PatchLookup(raft.corr_block.corr_pyramid, raft.corr_block.radius)(coords, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, got)
    # grid_sample maps each sample to [-1, 1] and back (about 6e-8 x 60 px of error in the point), the blends
    # round at 6e-8 relative: the difference is at most ~1e-5 x the largest entry
    scale = float(expected.abs().max())
    assert torch.allclose(got, expected, atol=1e-5 * scale, rtol=0)
    assert torch.equal(got[0, :, 0, 6], torch.zeros(324))  # far outside every level: only padding
    window = expected[0, :81, 0, 1].view(9, 9)  # centroid (0, 0) at level 0: x offset rows, y offset columns
    volume = raft.corr_block.corr_pyramid[0][1, 0]  # the volume of pixel (0, 1) of the first pair
    assert torch.allclose(window[4:, 4:], volume[:5, :5].T, atol=1e-6 * scale, rtol=0)
    assert torch.allclose(got[0, :81, 0, 1].view(9, 9)[4:, 4:], volume[:5, :5].T, atol=1e-6 * scale, rtol=0)


def test_winograd_refinement_gives_the_direct_flows(raft):
    """RAFT with the refinement's large convolutions as Winograd ones (channels-last) against direct convolutions:
    the same flows up to fp32 rounding (a few 1e-6 of each convolution's output, through 4 updates), and the
    converted block follows new weights like the direct one."""
    from videobench.metrics.dynamic import raft_pair_flows
    from videobench.metrics.winograd import WinogradConv2d

    torch.manual_seed(6)
    frames = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 128, 136) * 2 - 1, 5, 1, 2)
    with torch.no_grad():
        direct = raft_pair_flows(raft, frames, [(0, 1), (1, 2)], 4, winograd_tile=0)
        winograd = raft_pair_flows(raft, frames, [(0, 1), (1, 2)], 4, winograd_tile=4)
    assert (winograd - direct).abs().max() <= 1e-4 * direct.abs().max()
    scores_direct, scores_winograd = flow_pair_scores(direct), flow_pair_scores(winograd)
    assert scores_winograd.tolist() == pytest.approx(scores_direct.tolist(), rel=1e-4)
    with mock.patch("videobench.metrics.dynamic.REFINE_POSITIONS", 1), torch.no_grad():  # one pair per chunk
        chunked = raft_pair_flows(raft, frames, [(0, 1), (1, 2)], 4, winograd_tile=4)
    assert torch.allclose(chunked, winograd, rtol=0, atol=1e-5 * float(winograd.abs().max()))
    with torch.no_grad():  # direct convolutions on two workers: each encoder's batch in two pieces
        direct_workers = raft_pair_flows(raft, frames, [(0, 1), (1, 2)], 4, winograd_tile=0,
                                         workers=single_thread_workers(2))
    assert torch.allclose(direct_workers, direct, rtol=0, atol=1e-5 * float(direct.abs().max()))
    update = fused_update(raft, 4)
    converted = [m for m in update.modules() if isinstance(m, WinogradConv2d)]
    # motion encoder 256->192, 128->64 and 256->126, flow head 128->256, three GRU parts (1x5 or 5x1) per GRU
    assert sorted((m.in_channels, m.out_channels, m.kernel_size) for m in converted) == sorted(
        [(256, 192, (3, 3)), (128, 64, (3, 3)), (256, 126, (3, 3)), (128, 256, (3, 3))]
        + [(128, out, kernel) for kernel in ((1, 5), (5, 1)) for out in (384, 256, 128)])
    assert fused_update(raft, 4) is update and fused_update(raft, 0) is not update
    model = build_raft_model(seed=9)
    before = fused_update(model, 4)
    model.load_state_dict(build_raft_model(seed=10).state_dict())
    assert fused_update(model, 4) is not before


def test_metric_convolutions_option(raft):
    """``convolutions``: auto is Winograd on CPU in fp32; direct and winograd give the same pair scores to
    rounding; the choice is in the config; an unknown name is refused with the accepted ones."""
    rng = np.random.default_rng(8)
    kept = torch.from_numpy(rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    metrics = {name: DynamicDegreeMetric(raft, random_weights=True, num_flow_updates=2, convolutions=name)
               for name in ("auto", "direct", "winograd")}
    assert [metrics[name].winograd_tile for name in ("auto", "direct", "winograd")] == [4, 0, 4]
    assert metrics["direct"].config()["convolutions"] == "direct"
    assert metric_config_hash(metrics["direct"]) != metric_config_hash(metrics["winograd"])
    direct, winograd = (metrics[name].pair_scores(kept).tolist() for name in ("direct", "winograd"))
    assert winograd == pytest.approx(direct, rel=1e-4)
    assert build_metrics(["dynamic"], random_weights=True,
                         options={"dynamic": {"convolutions": "direct"}})[0].winograd_tile == 0
    with pytest.raises(ValueError, match=r"unknown convolutions 'fft'.*'auto', 'direct', 'winograd'"):
        DynamicDegreeMetric(raft, random_weights=True, convolutions="fft")
