"""VBench's subject consistency: its float resize, DINO's patching and position-embedding interpolation, its overall
weighting, checked against naive references written from VBench's and DINO's descriptions on non-square frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.numerics import UNIT_ROUNDOFF, chain_tolerance
from videobench.leaderboard import aggregate
from videobench.metrics import MetricInput
from videobench.metrics.dino_vit import interpolate_pos_encoding
from videobench.metrics.preprocess import IMAGENET_MEAN, IMAGENET_STD
from videobench.metrics.subject_consistency import (
    SubjectConsistencyMetric,
    vbench_dino_transform,
    vbench_overall,
)

TINY_DINO = {"depth": 1, "embed_dim": 48, "num_heads": 2}


def _frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: a horizontal ramp with per-frame colour and noise (no two frames alike)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    frames = [np.clip(base * rng.uniform(0.3, 1.0, 3) + rng.integers(0, 60, (height, width, 3)), 0, 255)
              for _ in range(num_frames)]
    return np.stack(frames).astype(np.uint8)


def _cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with PyTorch's ``a = -0.75``."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def _resample_axis(grid: np.ndarray, axis: int, out: int, scale: float, kernel: str) -> np.ndarray:
    """Resample ``grid`` along ``axis`` to ``out`` samples whose source position is ``(i + 0.5) / scale - 0.5``
    (half-pixel centres, no antialiasing), with indices clamped at the border."""
    grid = np.moveaxis(grid, axis, 0)
    size = grid.shape[0]
    rows = []
    for i in range(out):
        src = (i + 0.5) / scale - 0.5
        if kernel == "linear":
            src = max(src, 0.0)  # PyTorch's linear modes clamp negative positions to 0
            lo = int(math.floor(src))
            frac = src - lo
            taps = {min(lo, size - 1): 1 - frac}
            taps[min(lo + 1, size - 1)] = taps.get(min(lo + 1, size - 1), 0.0) + frac
        else:
            lo = int(math.floor(src))
            taps = {}
            for k in range(lo - 1, lo + 3):
                index = min(max(k, 0), size - 1)
                taps[index] = taps.get(index, 0.0) + _cubic(src - k)
        rows.append(sum(weight * grid[index] for index, weight in taps.items()))
    return np.moveaxis(np.stack(rows), 0, axis)


def naive_pos_encoding(pos_embed: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """DINO's ``interpolate_pos_encoding`` from its description: the square grid stretched by ``(n + 0.1) / side``
    per axis (bicubic), in float64."""
    side = int(math.isqrt(pos_embed.shape[0] - 1))
    grid = pos_embed[1:].reshape(side, side, -1)
    grid = _resample_axis(grid, 0, rows, (rows + 0.1) / side, "cubic")
    grid = _resample_axis(grid, 1, cols, (cols + 0.1) / side, "cubic")
    return np.concatenate([pos_embed[:1], grid.reshape(rows * cols, -1)])


def naive_dino_transform(frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """VBench's ``dino_transform(224)`` of one float frame ``(H, W, 3)``: short side 224, long side
    ``int(224 * long / short)``, bilinear without antialiasing, /255, ImageNet mean/std; float64, ``(3, h, w)``."""
    height, width = frame.shape[:2]
    if height <= width:
        size = (224, int(224 * width / height))
    else:
        size = (int(224 * height / width), 224)
    image = frame.astype(np.float64)
    image = _resample_axis(image, 0, size[0], size[0] / height, "linear")
    image = _resample_axis(image, 1, size[1], size[1] / width, "linear")
    image = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return image.transpose(2, 0, 1), size


@pytest.mark.numerics
@pytest.mark.parametrize("shape", [(30, 40), (36, 64), (48, 32)])  # 4:3, 16:9 and a portrait 2:3
def test_float_resize_as_vbench(shape):
    frames = _frames(2, *shape)
    got = vbench_dino_transform(torch.from_numpy(frames).permute(0, 3, 1, 2))
    expected, size = naive_dino_transform(frames[0])
    assert tuple(got.shape[-2:]) == size
    assert size == {(30, 40): (224, 298), (36, 64): (224, 398), (48, 32): (336, 224)}[shape]
    # fp32: the source position (i + 0.5) * in / out - 0.5 carries ~ max(in) u of error, so each weight does; two
    # taps of values <= 255, then / 255 / std.
    bound = (2 * max(shape) + 4) * UNIT_ROUNDOFF / min(IMAGENET_STD)
    np.testing.assert_allclose(got[0].double().numpy(), expected, rtol=0, atol=bound)
    # the 8-bit resize (rounded to integers after interpolating) is not what VBench computes
    from torchvision.transforms import functional as TF

    uint8 = TF.resize(torch.from_numpy(frames[:1]).permute(0, 3, 1, 2), [224], antialias=False).float()
    assert (uint8[0] / 255 - torch.from_numpy(expected).float() * torch.tensor(IMAGENET_STD)[:, None, None]
            - torch.tensor(IMAGENET_MEAN)[:, None, None]).abs().max() > 1e-4


@pytest.mark.numerics
@pytest.mark.parametrize(("height", "width"), [(224, 298), (224, 398), (336, 224), (224, 224), (240, 240)])
def test_pos_encoding_as_dino(height, width):
    generator = torch.Generator().manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 8, generator=generator)
    got = interpolate_pos_encoding(pos_embed, height, width, 16)
    rows, cols = height // 16, width // 16
    assert got.shape == (1, 1 + rows * cols, 8)
    if (rows, cols) == (14, 14) and height == width:
        assert got is pos_embed  # DINO keeps the table as it is
        return
    expected = naive_pos_encoding(pos_embed[0].double().numpy(), rows, cols)
    # 16 taps per output, kernel weights from a position with ~ 14 u error: a few dozen u of the largest entry
    bound = 64 * UNIT_ROUNDOFF * float(pos_embed.abs().max())
    np.testing.assert_allclose(got[0].double().numpy(), expected, rtol=0, atol=bound)
    if (rows, cols) != (14, 14):  # the (n + 0.1) / 14 scale samples elsewhere than an exact-grid resize
        exact = torch.nn.functional.interpolate(pos_embed[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2),
                                                size=(rows, cols), mode="bicubic")
        assert (exact.permute(0, 2, 3, 1).reshape(1, -1, 8) - got[:, 1:]).abs().max() > 1e-3


def test_dino_patching_drops_the_pixels_past_the_last_patch():
    metric = SubjectConsistencyMetric.create({"model_kwargs": TINY_DINO}, random_weights=True)
    images = torch.randn(2, 3, 224, 298, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(metric.model(images), metric.model(images[..., :288].contiguous()))
        assert not torch.equal(metric.model(images), metric.model(images[..., :272].contiguous()))


def naive_vbench_score(metric: SubjectConsistencyMetric, frames: np.ndarray) -> float:
    """VBench's ``subject_consistency`` loop for one video, frame by frame, with the naive transform and position
    table and the ViT's own blocks."""
    vit = metric.model.vit
    weight = vit.patch_embed.proj.weight.double()
    bias = vit.patch_embed.proj.bias.double()
    video_sim, former, first = 0.0, None, None
    for index, frame in enumerate(frames):
        image, (height, width) = naive_dino_transform(frame)
        rows, cols = height // 16, width // 16
        patches = torch.from_numpy(image[:, :rows * 16, :cols * 16]).reshape(3, rows, 16, cols, 16)
        patches = patches.permute(1, 3, 0, 2, 4).reshape(rows * cols, -1)
        tokens = patches @ weight.reshape(len(weight), -1).T + bias
        table = torch.from_numpy(naive_pos_encoding(vit.pos_embed[0].double().detach().numpy(), rows, cols))
        tokens = torch.cat([vit.cls_token[0].double(), tokens]) + table
        with torch.no_grad():
            features = vit.norm(vit.blocks(tokens[None].float()))[:, 0]
        features = torch.nn.functional.normalize(features, dim=-1, p=2)
        if index == 0:
            first = features
        else:
            previous = max(0.0, torch.nn.functional.cosine_similarity(former, features).item())
            to_first = max(0.0, torch.nn.functional.cosine_similarity(first, features).item())
            video_sim += (previous + to_first) / 2
        former = features
    return video_sim / (len(frames) - 1)


@pytest.mark.numerics
@pytest.mark.parametrize("shape", [(30, 40), (36, 64), (48, 32), (40, 60)])  # 4:3, 16:9, portrait, 3:2
def test_metric_equals_vbench_on_non_square_videos(shape):
    metric = SubjectConsistencyMetric.create({"model_kwargs": TINY_DINO, "batch_size": 2}, random_weights=True)
    frames = _frames(5, *shape, seed=sum(shape))
    got = metric.score(MetricInput(frames, 8.0, [], "a dog"))
    expected = naive_vbench_score(metric, frames)
    # float32 through the patch projection (sums of 3 * 16 * 16 products) and one block (q, k, v, q.k, weights.v,
    # proj, fc1, fc2: sums of at most 4 * 48); cosines of unit vectors are at most 1 in size.
    bound = chain_tolerance(1, 3 * 16 * 16) + chain_tolerance(8, 4 * 48)
    assert got["subject_consistency"] == pytest.approx(expected, abs=bound)
    assert got["subject_consistency_vbench"] == got["subject_consistency"] and got["sc_num_pairs"] == 4.0


def test_vbench_overall_weights_videos_by_their_frame_pairs():
    assert vbench_overall([1.0, 0.5], [1, 3]) == pytest.approx(0.625)  # (1 * 1 + 0.5 * 3) / 4
    with pytest.raises(ValueError, match="one positive pair count"):
        vbench_overall([1.0], [0])
    scores = pd.DataFrame({"method": ["m", "m"], "suite": ["s", "s"], "error": ["", ""],
                           "subject_consistency": [1.0, 0.5], "subject_consistency_vbench": [1.0, 0.5],
                           "sc_num_pairs": [1.0, 3.0]})
    row = aggregate(scores, by=["method", "suite"],
                    columns=["subject_consistency", "subject_consistency_vbench"], n_resamples=200).iloc[0]
    assert row["subject_consistency"] == pytest.approx(75.0)  # the mean over videos
    assert row["subject_consistency_vbench"] == pytest.approx(62.5)  # VBench's sim / cnt
    assert row["subject_consistency_vbench_ci_low"] <= 62.5 <= row["subject_consistency_vbench_ci_high"]
