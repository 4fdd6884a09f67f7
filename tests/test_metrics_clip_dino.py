"""CLIP-T / CLIP-I / T.Cons and DINO-I: known answers, equivalence with direct computations, weight loading."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from unittest import mock

import numpy as np
import open_clip
import pytest
import timm
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import save_file

from mediaio.hashing import file_sha256
from videobench.metrics import MetricInput, build_metrics
from videobench.metrics.base import Metric
from videobench.metrics.clip import ClipMetric, build_clip_model
from videobench.metrics.dino import DINO_ARCH, DinoMetric, build_dino_model
from videobench.metrics.preprocess import (
    CLIP_PREPROCESS,
    DINO_PREPROCESS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    image_to_tensor,
    preprocess,
)
from videobench.weights import WeightsConfig, WeightsLoadError

TINY_CLIP = "videobench-test-tiny-clip"
TINY_DINO = {"depth": 1, "embed_dim": 48, "num_heads": 2}
PROMPT = "a red cube rolling on a wooden table"


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    """Register a tiny open_clip architecture (same code path as ViT-B-32-quickgelu, small widths)."""
    folder = tmp_path_factory.mktemp("clip_cfg")
    config = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def _video(num_frames=4, height=96, width=144, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    frames = [np.clip(base * rng.uniform(0.3, 1.0, 3) + rng.integers(0, 60, (height, width, 3)), 0, 255)
              for _ in range(num_frames)]
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def clip_metric() -> ClipMetric:
    metric = ClipMetric.create({"model": TINY_CLIP, "batch_size": 3, "cpu_workers": 1}, random_weights=True, seed=3)
    assert isinstance(metric, Metric) and metric.random_weights
    return metric


@pytest.fixture(scope="module")
def dino_metric() -> DinoMetric:
    return DinoMetric.create({"model_kwargs": TINY_DINO, "batch_size": 3, "cpu_workers": 1}, random_weights=True,
                             seed=3)


# --- preprocessing ------------------------------------------------------------------------------------------
def test_batched_preprocess_matches_pil_pipelines():
    image = Image.fromarray(_video(1, 480, 720)[0])
    pil_clip = open_clip.image_transform(224, is_train=False, mean=CLIP_PREPROCESS.mean, std=CLIP_PREPROCESS.std)
    pil_dino = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for pil, cfg in ((pil_clip, CLIP_PREPROCESS), (pil_dino, DINO_PREPROCESS)):
        expected = pil(image)
        ours = preprocess(image_to_tensor(image), cfg)[0]
        assert ours.shape == expected.shape == (3, 224, 224)
        difference = (ours - expected).abs()
        # at most one or two uint8 levels on a few pixels, after dividing by std (~0.27): < 0.04
        assert difference.max() < 0.04 and difference.mean() < 1e-3


def test_preprocess_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.zeros(1, 3, 8, 8), CLIP_PREPROCESS)


# --- CLIP -----------------------------------------------------------------------------------------------------
def test_identical_frames_give_t_cons_one(clip_metric):
    frames = np.repeat(_video(1), 5, axis=0)
    out = clip_metric.score(MetricInput(frames, 8.0, [], PROMPT), ("t_cons",))
    assert out["t_cons"] == pytest.approx(1.0, abs=1e-6)
    assert "clip_i" not in out and out["num_frames"] == 5


def test_frame_equal_to_reference_gives_one(clip_metric, dino_metric):
    frame = _video(1)
    sample = MetricInput(frame, 8.0, [Image.fromarray(frame[0])], PROMPT)
    assert clip_metric.score(sample, ("clip_i",))["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert dino_metric.score(sample)["dino_i"] == pytest.approx(1.0, abs=1e-5)
    other = MetricInput(_video(2, seed=5), 8.0, [Image.fromarray(frame[0])], PROMPT)
    assert clip_metric.score(other, ("clip_i",))["clip_i"] < 0.9999
    assert dino_metric.score(other)["dino_i"] < 0.9999


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_clip_scores_equal_direct_open_clip_computation(clip_metric):
    frames = _video(5)
    references = [Image.fromarray(_video(1, 120, 90, seed=s)[0]) for s in (7, 8)]
    out = clip_metric.score(MetricInput(frames, 8.0, references, PROMPT))
    model, tokenizer = clip_metric.model, open_clip.get_tokenizer(TINY_CLIP)
    with torch.no_grad():
        # the same tensors, one frame at a time, straight through open_clip's encoders
        images = [_unit(model.encode_image(preprocess(image_to_tensor(Image.fromarray(f)), CLIP_PREPROCESS)))[0]
                  for f in frames]
        refs = [_unit(model.encode_image(preprocess(image_to_tensor(r), CLIP_PREPROCESS)))[0] for r in references]
        text = _unit(model.encode_text(tokenizer([PROMPT])))[0]
        # open_clip's own PIL preprocessing gives nearly the same number
        pil = open_clip.image_transform(224, is_train=False, mean=CLIP_PREPROCESS.mean, std=CLIP_PREPROCESS.std)
        pil_images = _unit(model.encode_image(torch.stack([pil(Image.fromarray(f)) for f in frames])))
    clip_t = np.mean([float(i @ text) for i in images])
    clip_i = np.mean([float(r @ i) for r in refs for i in images])
    t_cons = np.mean([float(a @ b) for a, b in zip(images[:-1], images[1:])])
    assert out["clip_t"] == pytest.approx(clip_t, abs=1e-5)
    assert out["clip_i"] == pytest.approx(clip_i, abs=1e-5)
    assert out["t_cons"] == pytest.approx(t_cons, abs=1e-5)
    assert out["clip_t"] == pytest.approx(float((pil_images @ text).mean()), abs=2e-3)
    assert out["num_references"] == 2 and out["num_frames"] == 5


def test_clip_bad_input(clip_metric):
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_metric.score(MetricInput(_video(1), 8.0, [], PROMPT), ("t_cons",))
    with pytest.raises(ValueError, match="reference"):
        clip_metric.score(MetricInput(_video(2), 8.0, [], PROMPT), ("clip_i",))
    with pytest.raises(ValueError, match="dino_i"):
        clip_metric.score(MetricInput(_video(2), 8.0, [], PROMPT), ("dino_i",))


def test_clip_loads_saved_weights_and_stamps_config(tmp_path, clip_metric):
    reference = build_clip_model(TINY_CLIP, seed=11)
    folder = tmp_path / "weights"
    folder.mkdir()
    stem = "clip_videobench_test_tiny_clip_openai"  # clip_<model>_<pretrained>
    for suffix in (".safetensors", ".bin"):
        path = folder / f"{stem}{suffix}"
        state = {k: v.contiguous() for k, v in reference.state_dict().items()}
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
        metric = ClipMetric.create({"model": TINY_CLIP}, weights=WeightsConfig(weights_dir=folder))
        for name, tensor in reference.state_dict().items():
            assert torch.equal(metric.model.state_dict()[name], tensor), name
        config = metric.config()
        assert not metric.random_weights and config["weights_sha256"] == file_sha256(path)
        assert config["model"] == f"open_clip:{TINY_CLIP}" and config["preprocess"]["resize"] == 224
        path.unlink()
    assert clip_metric.config()["weights_sha256"] == "random(seed=3)"
    (folder / f"{stem}.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsLoadError, match=stem):
        ClipMetric.create({"model": TINY_CLIP}, weights=WeightsConfig(weights_dir=folder))


# --- DINO -----------------------------------------------------------------------------------------------------
def _original_dino_keys(depth: int) -> set[str]:
    """The parameter names of facebookresearch/dino ``vit_small`` (``dino_deitsmall16_pretrain.pth``)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
    return keys


def test_original_dino_checkpoint_loads_as_is(tmp_path):
    source = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)  # the real ViT-S/16 architecture
    state = source.state_dict()
    assert set(state) == _original_dino_keys(12)  # DINO's key format is timm's: nothing to rename
    original = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(dict(state), original)
    safetensors = tmp_path / "dino_vits16.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    # a full DINO training checkpoint: teacher weights behind "module."/"backbone." plus a projection head
    full = tmp_path / "checkpoint.pth"
    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(4, 384)
    torch.save({"teacher": teacher, "epoch": 100}, full)
    for path in (original, safetensors, full):
        loaded = build_dino_model(path, seed=99)
        for name, tensor in state.items():
            assert torch.equal(loaded.state_dict()[name], tensor), (path.name, name)
    config = DinoMetric.create({"weights": str(original)}).config()
    assert config["weights_sha256"] == file_sha256(original) and config["model"] == f"timm:{DINO_ARCH}"
    torch.save({"blocks.0.norm1.weight": torch.ones(384)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsLoadError, match="partial.pth"):
        build_dino_model(tmp_path / "partial.pth")


def test_dino_i_equals_direct_pairwise_mean(dino_metric):
    frames = _video(3)
    references = [Image.fromarray(_video(1, 150, 100, seed=s)[0]) for s in (1, 2)]
    out = dino_metric.score(MetricInput(frames, 8.0, references, PROMPT))
    pil = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        feats = _unit(dino_metric.model(torch.stack([pil(Image.fromarray(f)) for f in frames])))
        refs = _unit(dino_metric.model(torch.stack([pil(r) for r in references])))
    assert out["dino_i"] == pytest.approx(float((refs @ feats.T).mean()), abs=2e-3)
    assert out["num_frames"] == 3 and out["num_references"] == 2
    assert dino_metric.config()["model_kwargs"] == TINY_DINO


def test_build_metrics_builds_each_family_once():
    options = {"clip": {"model": TINY_CLIP}, "dino": {"model_kwargs": TINY_DINO}}
    metrics = build_metrics(["t_cons", "clip_t", "clip_i", "dino_i"], random_weights=True, options=options)
    assert [m.family for m in metrics] == ["clip", "dino"]
    assert all(m.random_weights for m in metrics)
    with pytest.raises(ValueError, match="CUDA"):
        build_metrics(["dino_i"], random_weights=True, dtype="bf16", options=options)


# --- preprocessing follows the model's own configuration -----------------------------------------------------
@pytest.mark.parametrize("name, pretrained, expected", [
    ("ViT-B-32-quickgelu", "openai", dict(resize=224, crop=224, resize_mode="shortest", mean=CLIP_PREPROCESS.mean)),
    ("ViT-L-14-336", "openai", dict(resize=336, crop=336, resize_mode="shortest", mean=CLIP_PREPROCESS.mean)),
    ("ViT-B-16-SigLIP", "webli", dict(resize=224, crop=None, resize_mode="squash", mean=(0.5, 0.5, 0.5))),
])
def test_clip_preprocessing_comes_from_the_chosen_model(name, pretrained, expected):
    """`-M clip.model=...` with another family is preprocessed as open_clip preprocesses that model."""
    model = open_clip.create_model(name, pretrained=None, device="meta")  # shapes only, no memory
    cfg = Preprocess.from_open_clip(model, name, pretrained)
    assert {key: getattr(cfg, key) for key in expected} == expected
    assert cfg == CLIP_PREPROCESS or name != "ViT-B-32-quickgelu"  # the default is the DreamBooth/VBench transform
    # and it equals open_clip's own PIL transform for that model on a non-square image
    image = Image.fromarray(_video(1, 150, 260, seed=4)[0])
    pil = open_clip.image_transform(model.visual.image_size, is_train=False,
                                    **{k: v for k, v in open_clip.get_pretrained_cfg(name, pretrained).items()
                                       if k in ("mean", "std", "interpolation", "resize_mode")})
    ours = preprocess(image_to_tensor(image), cfg)[0]
    assert ours.shape == pil(image).shape and (ours - pil(image)).abs().mean() < 0.02


def test_dino_preprocessing_is_timms_with_dreambooths_crop():
    model = build_dino_model(**TINY_DINO)
    assert Preprocess.from_timm(model, crop_pct=0.875) == DINO_PREPROCESS  # Resize 256, CenterCrop 224, ImageNet
    assert Preprocess.from_timm(model).resize == 248  # timm's own crop_pct 0.9 would differ


# --- subject consistency (VBench, opt-in) ------------------------------------------------------------------------
def test_subject_consistency_known_answers():
    from videobench.metrics.subject_consistency import subject_consistency

    e = torch.eye(3)
    # frames: a, a, a -> every cosine 1
    assert subject_consistency(e[[0, 0, 0]]) == pytest.approx(1.0)
    # a, b, a: t=1: prev 0, first 0 -> 0; t=2: prev 0 (b.a), first 1 -> 0.5; mean 0.25
    assert subject_consistency(e[[0, 1, 0]]) == pytest.approx(0.25)
    # negative cosines are clipped at 0 (VBench's max(0, .))
    assert subject_consistency(torch.stack([e[0], -e[0]])) == pytest.approx(0.0)
    half = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0]]), dim=-1)
    assert subject_consistency(half) == pytest.approx(2 ** -0.5)
    with pytest.raises(ValueError, match="T >= 2"):
        subject_consistency(e[:1])


def test_subject_consistency_metric_end_to_end():
    from videobench.metrics.subject_consistency import SubjectConsistencyMetric

    metric = SubjectConsistencyMetric.create({"model_kwargs": TINY_DINO}, random_weights=True)
    still = np.repeat(_video(1, 96, 144)[:1], 4, axis=0)
    seen = []
    hook = metric.model.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    try:
        assert metric.score(MetricInput(still, 8.0, [], PROMPT))["subject_consistency"] == pytest.approx(1.0, abs=1e-5)
    finally:
        hook.remove()
    assert seen == [1]  # the still clip's one distinct frame
    moving = _video(4, 96, 144)
    value = metric.score(MetricInput(moving, 8.0, [], PROMPT))["subject_consistency"]
    with torch.no_grad():  # the same by hand: short side to 224 (bilinear, no antialias), no crop, ImageNet
        frames = torch.from_numpy(moving).permute(0, 3, 1, 2).float() / 255
        resized = torch.nn.functional.interpolate(frames, size=(224, 336), mode="bilinear", align_corners=False)
        features = _unit(metric.model(T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(resized)))
    from videobench.metrics.subject_consistency import subject_consistency

    assert value == pytest.approx(subject_consistency(features), abs=2e-3)
    assert metric.config()["model"] == "timm:vit_base_patch16_224.dino" and not SubjectConsistencyMetric.default


@contextlib.contextmanager
def _counting_encoder(metric) -> Iterator[list[int]]:
    """Within the block the metric's image encoder records each call's batch size in the yielded list."""
    encoder = metric.encode_images
    calls: list[int] = []

    def counting(images):
        calls.append(len(images))
        return encoder(images)

    with mock.patch.object(metric, "encode_images", counting):
        yield calls


@pytest.mark.parametrize("family", ["clip", "dino"])
def test_embeddings_of_seen_images_are_looked_up_not_recomputed(family, clip_metric, dino_metric):
    """The same reference (and the same clip) in another case reuses its embedding: same values, no encoder call;
    new bytes are encoded."""
    metric = {"clip": clip_metric, "dino": dino_metric}[family]
    metric._memo.clear()
    reference = [Image.fromarray(_video(1, 150, 100, seed=4)[0])]
    sample = MetricInput(_video(3, seed=5), 8.0, reference, PROMPT)
    with _counting_encoder(metric) as calls:
        first = metric.score(sample)
        assert sum(calls) == 4  # 3 frames + 1 reference
        again = metric.score(MetricInput(sample.frames.copy(), 8.0, [reference[0].copy()], "another prompt"))
        assert sum(calls) == 4
        other = metric.score(MetricInput(_video(3, seed=6), 8.0, reference, PROMPT))
        assert sum(calls) == 7  # new frames only
    column = "clip_i" if family == "clip" else "dino_i"
    assert again[column] == first[column] and other[column] != first[column]


def test_distinct_images_known_answer():
    from videobench.metrics.preprocess import distinct_images

    a, b, c = (torch.full((1, 3, 4, 5), v, dtype=torch.uint8) for v in (1, 2, 3))
    firsts, inverse = distinct_images(torch.cat([a, b, a, c, b]))
    assert firsts == [0, 1, 3] and inverse == [0, 1, 0, 2, 1]
    assert distinct_images(torch.cat([a, b, c])) == ([0, 1, 2], [0, 1, 2])


@pytest.mark.parametrize("family", ["clip", "dino"])
def test_repeated_frames_are_encoded_once(family, clip_metric, dino_metric):
    """A still clip (and a clip with a frozen frame) encodes each distinct frame once; every frame's embedding
    equals the one computed with the frame on its own (batch-size summation order: within 1e-6)."""
    metric = {"clip": clip_metric, "dino": dino_metric}[family]
    metric._memo.clear()
    video = _video(3, seed=8)
    frames = torch.from_numpy(video[[0, 1, 1, 1, 2, 0]]).permute(0, 3, 1, 2)
    with _counting_encoder(metric) as calls:
        got = metric.embed_frames(frames)
    assert calls == [3]
    alone = torch.cat([_embed_alone(metric, torch.from_numpy(video[i : i + 1]).permute(0, 3, 1, 2)) for i in range(3)])
    assert torch.allclose(got, alone[[0, 1, 1, 1, 2, 0]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["clip", "dino"])
def test_cpu_workers_encode_even_pieces_of_a_batch(family, clip_metric, dino_metric):
    """With two CPU workers a batch of 3 frames is encoded as pieces of 2 and 1 frames on the workers; the
    embeddings are the one-thread ones up to the batch size's summation order (within 1e-6), and every column
    of the score is too."""
    metric = {"clip": clip_metric, "dino": dino_metric}[family]
    frames = torch.from_numpy(_video(3, seed=12)).permute(0, 3, 1, 2)
    sample = MetricInput(_video(3, seed=12), 8.0, [Image.fromarray(_video(1, seed=13)[0])], PROMPT)
    metric._memo.clear()
    with _counting_encoder(metric) as calls:
        alone = metric.embed_frames(frames)
    single = metric.score(sample)
    assert calls == [3]
    metric.cpu_workers = 2
    try:
        metric._memo.clear()
        with _counting_encoder(metric) as calls:
            pieces = metric.embed_frames(frames)
        metric._memo.clear()
        workers = metric.score(sample)
    finally:
        metric.cpu_workers = 1
    assert sorted(calls) == [1, 2]
    assert torch.allclose(pieces, alone, atol=1e-6, rtol=0)
    assert workers.keys() == single.keys() and all(workers[k] == pytest.approx(single[k], abs=1e-6) for k in single)


def _embed_alone(metric, image: torch.Tensor) -> torch.Tensor:
    from videobench.metrics.preprocess import embed_images

    encoder = metric.model.encode_image if metric.family == "clip" else metric.model
    return embed_images(encoder, image, metric.preprocess, batch_size=1, device="cpu", dtype="fp32")


@pytest.mark.parametrize("family", ["clip", "dino"])
def test_references_of_different_sizes_are_encoded_in_one_batch(family, clip_metric, dino_metric):
    """A case's references (any sizes) are resized and cropped one by one and encoded in one batch; each one's
    embedding equals the one computed on its own (batch-size summation order: within 1e-6). The same references
    in another order are another batch."""
    metric = {"clip": clip_metric, "dino": dino_metric}[family]
    metric._memo.clear()
    references = [Image.fromarray(_video(1, h, w, seed=s)[0]) for s, (h, w) in enumerate([(150, 100), (90, 160),
                                                                                           (224, 224)])]
    with _counting_encoder(metric) as calls:
        got = metric.embed_references(references)
        assert calls == [3]
        assert torch.equal(metric.embed_references([r.copy() for r in references]), got) and calls == [3]
        metric.embed_references(references[::-1])
        assert calls == [3, 3]
    alone = torch.cat([_embed_alone(metric, image_to_tensor(r)) for r in references])
    assert got.shape == alone.shape and torch.allclose(got, alone, atol=1e-6, rtol=0)


def test_text_prefix_encoding_equals_open_clips_encode_text(clip_metric):
    """The causal text tower's pooled token sees nothing after it: encoding only the tokens up to it gives
    open_clip's ``encode_text`` (fp32 rounding of shorter matrix products); other poolings fall back to it."""
    from videobench.metrics.clip import encode_text_prefix

    model, tokenizer = clip_metric.model, open_clip.get_tokenizer(TINY_CLIP)
    tokens = tokenizer([PROMPT, "a dog", "a cat sitting on a red chair in a sunny garden next to a tree"])
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = encode_text_prefix(model, tokens)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
        with mock.patch.object(model, "text_pool_type", "last"):
            assert torch.equal(encode_text_prefix(model, tokens), model.encode_text(tokens))
    calls = []
    with mock.patch.object(model.transformer, "forward", lambda x, attn_mask=None: calls.append(x.shape) or x):
        encode_text_prefix(model, tokens[:1])
    assert calls[0][1] == int(tokens[0].argmax()) + 1 < tokens.shape[1]  # the prompt's tokens, no padding


@pytest.mark.parametrize("family", ["clip", "dino"])
def test_class_token_only_last_block_equals_the_full_forward(family, clip_metric, dino_metric):
    """The last block computed for the class token only gives the model's own embedding (open_clip encode_image,
    timm forward) to fp32 rounding, with fewer FLOPs; a model it does not know runs its own forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from videobench.metrics.class_token import open_clip_class_token, timm_class_token

    metric = {"clip": clip_metric, "dino": dino_metric}[family]
    full = metric.model.encode_image if family == "clip" else metric.model
    short = open_clip_class_token if family == "clip" else timm_class_token
    torch.manual_seed(0)
    images = torch.randn(3, 3, 224, 224)
    counts = []
    with torch.no_grad():
        for encode in (full, lambda x: short(metric.model, x)):
            with FlopCounterMode(display=False) as counter:
                out = encode(images)
            counts.append((out, counter.get_total_flops()))
    (expected, full_flops), (got, short_flops) = counts
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    assert short_flops < full_flops
    # another architecture (here: a wrapper) falls back to its own forward
    wrapper = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 224 * 224, 4))
    fallback = wrapper if family == "dino" else mock.Mock(encode_image=wrapper, visual=wrapper)
    with torch.no_grad():
        assert torch.equal(short(fallback, images), wrapper(images))
    name = "encode_image" if family == "clip" else "forward"
    metric.model.train()  # training mode (dropout, patch dropout) is not what the short path computes
    try:
        with torch.no_grad(), mock.patch.object(metric.model, name, wraps=getattr(metric.model, name)) as spy:
            short(metric.model, images)
        assert spy.call_count == 1
    finally:
        metric.model.eval()
