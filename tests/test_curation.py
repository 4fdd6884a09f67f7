"""The reference-video pair pipeline (paper Appendix A) on synthetic videos made here.

Stage objects are the real classes; their models are cheap deterministic stand-ins built on the real
interfaces: a colour-histogram embedder (768-d, so the real aesthetic MLP runs on it), a frame-difference flow,
and a colour-threshold detector/segmenter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from customvideox.curation import (
    AestheticMLP,
    AestheticPredictor,
    ClipWindow,
    Detector,
    EntityParseError,
    EntityStage,
    FlowMotionScorer,
    ImageEmbedder,
    LLMEntityExtractor,
    OpenClipEmbedder,
    PairDataset,
    QualityConfig,
    QualityFilter,
    ReferenceConfig,
    ReferenceExtractor,
    RuleEntityExtractor,
    Segmenter,
    build_grounded_sam,
    build_messages,
    build_pairs,
    build_quality_filter,
    load_aesthetic_mlp,
    load_captions,
    manifest_path,
    parse_llm_json,
    read_frames,
    read_pairs,
    temporal_consistency,
)
from customvideox.curation.reference import masked_crop, resize_center_crop
from mediaio.video import read_video, write_video
from videobench.weights import MissingWeightsError

H, W = 64, 96  # synthetic clip size; tests use min_short_side=64
N_FRAMES = 76  # ClipWindow() needs 1 + 24 * 3 + 1 = 74
RED = (220, 30, 30)
GREEN = (40, 140, 60)
BLUE = (30, 40, 200)


# ------------------------------------------------------------------------------------------------- synthetic data


def disk_frames(n: int = N_FRAMES, h: int = H, w: int = W, moving: bool = True, background=GREEN,
                cut_at: int | None = None) -> np.ndarray:
    """A red disk (radius h/5) on a plain background, moving right by 1 px per frame when ``moving``.

    ``cut_at``: from that frame on the background turns blue (a scene cut)."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    radius = h // 5
    for t in range(n):
        frames[t] = background if cut_at is None or t < cut_at else BLUE
        cx = w // 4 + (t * w // (2 * n) if moving else 0) + (t if moving else 0) // 4
        frames[t][(yy - h // 2) ** 2 + (xx - cx) ** 2 <= radius ** 2] = RED
    return frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("curation")
    videos = root / "videos"
    write_video(videos / "moving.mp4", disk_frames())
    write_video(videos / "static.mp4", disk_frames(moving=False))
    write_video(videos / "lowres.mp4", disk_frames(n=4, h=32, w=48))
    write_video(videos / "cut.mp4", disk_frames(cut_at=N_FRAMES // 2))
    write_video(videos / "sub" / "crowd.mp4", disk_frames())
    (videos / "broken.mp4").write_bytes(b"not a video")
    rows = [
        {"video": "moving.mp4", "caption": "A red ball rolls across a green lawn."},
        {"video": "static.mp4", "caption": "A red ball lies on a green lawn."},
        {"video": "lowres.mp4", "caption": "A red ball rolls across a green lawn."},
        {"video": "cut.mp4", "caption": "A red ball rolls across a green lawn."},
        {"video": "sub/crowd.mp4", "caption": "A red ball rolls through a crowded market."},
        {"video": "broken.mp4", "caption": "A red ball."},
        {"video": "missing.mp4", "caption": "A red ball."},
    ]
    table = root / "captions.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return videos, table


# ------------------------------------------------------------------------------------------------- stand-in models


class HistogramEmbedder:
    """A deterministic :class:`ImageEmbedder`: per-channel 256-bin colour histograms (3 x 256 = 768 dims)."""

    random_weights = False

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, frames: np.ndarray) -> torch.Tensor:
        self.calls += 1
        hist = [np.stack([np.bincount(f[..., c].ravel(), minlength=256) for c in range(3)]).ravel() for f in frames]
        return torch.nn.functional.normalize(torch.tensor(np.stack(hist), dtype=torch.float32), dim=-1)


def difference_flow(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    """A stand-in flow field: u = mean absolute intensity change (px-like units), v = 0."""
    diff = np.abs(second.astype(np.float32) - first.astype(np.float32)).mean(-1) / 2.0
    return torch.from_numpy(np.stack([diff, np.zeros_like(diff)], 1))


COLOURS = {"red": RED, "green": GREEN, "blue": BLUE}


def colour_mask(image: Image.Image, text: str, tolerance: int = 60) -> np.ndarray:
    colour = next((c for name, c in COLOURS.items() if name in text.lower()), None)
    if colour is None:
        return np.zeros((image.height, image.width), bool)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return np.abs(pixels - np.array(colour)).max(-1) < tolerance


class ColourDetector:
    """A :class:`Detector`: the box of the pixels with the colour named in the text (score 0.9), else nothing."""

    random_weights = False

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: Image.Image, text: str) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        ys, xs = np.nonzero(colour_mask(image, text))
        if len(xs) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32), np.array([0.9], np.float32)


class ColourSegmenter:
    """A :class:`Segmenter`: red pixels inside the box."""

    random_weights = False

    def segment(self, image: Image.Image, box: np.ndarray) -> np.ndarray:
        mask = colour_mask(image, "red")
        x0, y0, x1, y1 = (int(v) for v in box)
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        return mask & inside


class CountingRules(RuleEntityExtractor):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def extract(self, caption: str):
        self.calls += 1
        return super().extract(caption)


def original_format_state_dict(bias: float) -> dict[str, torch.Tensor]:
    """The improved-aesthetic-predictor key layout (``layers.{0,2,4,6,7}``), constant output ``bias``."""
    state = {k: torch.zeros_like(v) for k, v in AestheticMLP().state_dict().items()}
    state["layers.7.bias"] = torch.tensor([bias])
    return state


@pytest.fixture()
def aesthetic_file(tmp_path) -> Path:
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(original_format_state_dict(6.0), path)
    return path


def make_stages(aesthetic_path: Path, min_short_side: int = 64, clip_size=(48, 72)):
    embedder = HistogramEmbedder()
    quality = QualityFilter(embedder, AestheticPredictor(load_aesthetic_mlp(aesthetic_path)),
                            FlowMotionScorer(difference_flow, flow_short_side=64),
                            QualityConfig(min_short_side=min_short_side, min_motion=0.5,
                                          min_temporal_consistency=0.9), ClipWindow())
    extractor = CountingRules()
    detector = ColourDetector()
    reference = ReferenceExtractor(detector, ColourSegmenter(),
                                   ReferenceConfig(height=clip_size[0], width=clip_size[1]), ClipWindow())
    return quality, EntityStage(extractor), reference, (embedder, extractor, detector)


# ------------------------------------------------------------------------------------------------- the pipeline


def test_stand_ins_implement_the_real_interfaces():
    assert isinstance(HistogramEmbedder(), ImageEmbedder)
    assert isinstance(ColourDetector(), Detector)
    assert isinstance(ColourSegmenter(), Segmenter)


def test_build_decides_every_clip_with_the_right_reason_and_resumes(dataset, tmp_path, aesthetic_file):
    videos, table = dataset
    out = tmp_path / "out"
    sources = load_captions(table, videos)
    quality, entity, reference, (embedder, extractor, detector) = make_stages(aesthetic_file)
    summary = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, progress=False)

    q = pd.read_parquet(manifest_path(out, "quality")).set_index("clip_id")
    assert len(q) == 7 and set(q.columns) >= {"video", "caption", "decision", "reason_code", "reason"}
    assert q.loc["static", "reason_code"] == "static" and q.loc["static", "motion"] < 0.5
    assert q.loc["lowres", "reason_code"] == "low_resolution" and "32x48" in q.loc["lowres", "reason"]
    assert q.loc["cut", "reason_code"] == "temporal_consistency" and q.loc["cut", "temporal_consistency"] < 0.9
    assert q.loc["broken", "reason_code"] == "unreadable" and "broken.mp4" in q.loc["broken", "reason"]
    assert q.loc["missing", "reason_code"] == "unreadable" and "missing" in q.loc["missing", "reason"]
    assert q.loc["moving", "decision"] == "keep" and q.loc["moving", "aesthetic"] == pytest.approx(6.0)
    assert q.loc["moving", "motion"] > 0.5

    e = pd.read_parquet(manifest_path(out, "entity")).set_index("clip_id")
    assert sorted(e.index) == ["moving", "sub__crowd"]  # only clips kept by stage 1 reach stage 2
    assert e.loc["sub__crowd", "reason_code"] == "complex_background"
    assert e.loc["moving", "entity"] == "red ball"

    pairs = read_pairs(out)
    assert list(pairs["clip_id"]) == ["moving"] and summary.pairs == 1
    assert pairs.loc[0, "entity"] == "red ball" and not pairs.loc[0, "random_weights"]
    reference_png = np.asarray(Image.open(out / pairs.loc[0, "reference"]).convert("RGB")).astype(int)
    red_pixels = (np.abs(reference_png - np.array(RED)).max(-1) < 60).mean()
    assert red_pixels > 0.5  # the crop holds the disk ...
    corners = reference_png[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all()  # ... on a white background (disk corners lie outside the mask)
    assert not (np.abs(reference_png - np.array(GREEN)).max(-1) < 40).any()  # no lawn left
    clip = read_video(out / pairs.loc[0, "clip"])
    assert clip.frames.shape == (25, 48, 72, 3)

    build = json.loads((out / "build.json").read_text())
    assert build["pairs"] == 1 and build["configs"]["quality"]["min_short_side"] == 64

    # resume: the second run re-decides nothing and never builds a stage
    calls = (embedder.calls, extractor.calls, detector.calls)
    assert calls == (4, 2, 1)
    before = {s: pd.read_parquet(manifest_path(out, s)) for s in ("quality", "entity", "reference")}

    def must_not_build():
        raise AssertionError("a finished stage must not build its models")

    again = build_pairs(sources, out, quality=must_not_build, entity=must_not_build, reference=must_not_build,
                        progress=False)
    assert [s.decided_now for s in again.stages] == [0, 0, 0] and again.pairs == 1
    for stage, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(manifest_path(out, stage)), frame)
    rebuilt = json.loads((out / "build.json").read_text())  # the thresholds that decided the clips stay recorded
    assert rebuilt["configs"] == build["configs"] and rebuilt["random_weights"] == build["random_weights"]

    # --force re-decides one stage only
    forced = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, force=["entity"],
                         progress=False)
    assert [s.decided_now for s in forced.stages] == [0, 2, 0]
    assert (embedder.calls, extractor.calls, detector.calls) == (4, 4, 1)


def test_interrupted_stage_resumes_from_its_manifest(dataset, tmp_path, aesthetic_file):
    videos, table = dataset
    out = tmp_path / "out"
    sources = load_captions(table, videos)
    quality, entity, reference, (embedder, _, _) = make_stages(aesthetic_file)
    original = quality.assess
    seen = []

    def crash_on_third(path):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return original(path)

    quality.assess = crash_on_third
    with pytest.raises(KeyboardInterrupt):
        build_pairs(sources, out, quality=quality, entity=entity, reference=reference, stages=["quality"],
                    flush_every=1, progress=False)
    assert len(pd.read_parquet(manifest_path(out, "quality"))) == 2  # the two decided before the crash
    quality.assess = original
    summary = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, stages=["quality"],
                          progress=False)
    assert summary.stages[0].decided_now == 5


def test_a_failing_clip_is_an_error_row_and_is_retried(dataset, tmp_path, aesthetic_file):
    videos, table = dataset
    out = tmp_path / "out"
    sources = [s for s in load_captions(table, videos) if s.clip_id in {"moving", "static"}]
    quality, entity, reference, _ = make_stages(aesthetic_file)
    original = quality.assess
    quality.assess = lambda path: (_ for _ in ()).throw(RuntimeError("boom")) if "static" in str(path) else original(path)
    summary = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, stages=["quality"],
                          progress=False)
    q = pd.read_parquet(manifest_path(out, "quality")).set_index("clip_id")
    assert summary.errors == 1 and q.loc["static", "decision"] == "error" and "boom" in q.loc["static", "reason"]
    assert q.loc["moving", "decision"] == "keep"
    quality.assess = original
    again = build_pairs(sources, out, quality=quality, entity=entity, reference=reference, stages=["quality"],
                        progress=False)
    assert again.stages[0].decided_now == 1 and again.errors == 0


def test_real_1080p_default_threshold(tmp_path, aesthetic_file):
    """The default 1080p rule on tiny 2-frame clips: 1080x1920 passes resolution, 720x1280 does not."""
    write_video(tmp_path / "hd.mp4", np.full((2, 1080, 1920, 3), 128, np.uint8), crf=40)
    write_video(tmp_path / "sd.mp4", np.full((2, 720, 1280, 3), 128, np.uint8), crf=40)
    quality = QualityFilter(HistogramEmbedder(), AestheticPredictor(load_aesthetic_mlp(aesthetic_file)),
                            FlowMotionScorer(difference_flow))
    assert QualityConfig().min_short_side == 1080
    hd, sd = quality.assess(tmp_path / "hd.mp4"), quality.assess(tmp_path / "sd.mp4")
    assert hd.reason_code == "too_short" and hd.values["height"] == 1080  # past the resolution check
    assert sd.reason_code == "low_resolution" and "short side 720 px < 1080 px" in sd.reason


def test_aesthetic_threshold_drops_with_reason(tmp_path):
    path = tmp_path / "low.pth"
    torch.save(original_format_state_dict(5.0), path)
    write_video(tmp_path / "v.mp4", disk_frames())
    quality = QualityFilter(HistogramEmbedder(), AestheticPredictor(load_aesthetic_mlp(path)),
                            FlowMotionScorer(difference_flow), QualityConfig(min_short_side=64))
    decision = quality.assess(tmp_path / "v.mp4")
    assert decision.reason_code == "aesthetic" and "5.000 < 5.3" in decision.reason


# ------------------------------------------------------------------------------------------------- models


def test_aesthetic_mlp_loads_the_original_key_format_and_matches_a_naive_forward(tmp_path):
    torch.manual_seed(0)
    reference = AestheticMLP()
    state = reference.state_dict()
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert [tuple(state[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)] == [
        (1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    torch.save(state, tmp_path / "head.pth")
    loaded = load_aesthetic_mlp(tmp_path / "head.pth")
    x = torch.nn.functional.normalize(torch.randn(3, 768), dim=-1)
    naive = x
    for i in (0, 2, 4, 6, 7):  # no activations in the original head; dropouts are identity in eval
        naive = naive @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    torch.testing.assert_close(AestheticPredictor(loaded)(x * 7.0), naive.squeeze(-1))  # input is re-normalised
    torch.save({"layers.0.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong.pth"):
        load_aesthetic_mlp(tmp_path / "wrong.pth")


def test_open_clip_embedder_on_a_tiny_random_clip():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=768, vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32,
                                                                image_size=224),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    embedder = OpenClipEmbedder(model, random_weights=True)
    frames = disk_frames(n=3, cut_at=2)
    emb = embedder.embed(frames)
    assert emb.shape == (3, 768) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    low, mean = temporal_consistency(emb)
    assert low < mean <= 1.0
    assert temporal_consistency(emb[[0, 0, 0]])[0] == pytest.approx(1.0, abs=1e-5)


def test_missing_models_name_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build_quality_filter(tmp_path, flow_fn=difference_flow)
    message = str(info.value)
    assert "sac+logos+ava1-l14-linearMSE.pth" in message and "clip_vit_l14_openai.safetensors" in message
    assert str(tmp_path) in message and "--aesthetic-weights" in message
    with pytest.raises(MissingWeightsError) as info:
        build_grounded_sam(tmp_path)
    assert "grounding-dino-base" in str(info.value) and "sam-vit-huge" in str(info.value)
    with pytest.raises(MissingWeightsError, match="--detector .*nowhere does not exist"):
        build_grounded_sam(tmp_path, detector_path=str(tmp_path / "nowhere"), segmenter_path=str(tmp_path))


def test_cli_fails_before_any_work_when_models_are_missing(dataset, tmp_path):
    from click.testing import CliRunner

    from customvideox.cli import main

    videos, table = dataset
    result = CliRunner().invoke(main, ["data", "build", "--videos", str(videos), "--captions", str(table),
                                       "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "w")])
    assert result.exit_code == 2
    for expected in ("sac+logos+ava1-l14-linearMSE.pth", "Qwen2.5-7B-Instruct", "grounding-dino-base", "sam-vit-huge",
                     "raft_large_C_T_V1-22a6c225.pth", "--raft-weights"):  # one message names every missing model
        assert expected in result.output
    assert "missing model weights for 6 model(s)" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_runs_the_entity_stage_on_a_quality_manifest(dataset, tmp_path, aesthetic_file):
    from click.testing import CliRunner

    from customvideox.cli import main

    videos, table = dataset
    out = tmp_path / "out"
    quality, entity, reference, _ = make_stages(aesthetic_file)
    build_pairs(load_captions(table, videos), out, quality=quality, entity=entity, reference=reference,
                stages=["quality"], progress=False)
    args = ["data", "build", "--videos", str(videos), "--captions", str(table), "--out", str(out), "--stages",
            "entity", "--entity-extractor", "rule", "--weights-dir", str(tmp_path / "none"), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "entity     kept      1  dropped: complex_background 1" in result.output
    e = pd.read_parquet(manifest_path(out, "entity")).set_index("clip_id")
    assert e.loc["moving", "entity"] == "red ball" and len(e) == 2


# ------------------------------------------------------------------------------------------------- entity stage


@pytest.mark.parametrize("caption, entity, count, background, code", [
    ("The video features a golden retriever running across a grassy field.", "golden retriever", 1, "simple", ""),
    ("A red sports car drives along a coastal road.", "red sports car", 1, "simple", ""),
    ("In this video, a woman with long hair stands on a beach.", "woman", 1, "simple", ""),
    ("A close-up of a cat sitting on a windowsill.", "cat", 1, "simple", ""),
    ("Two dogs play in the snow.", "dog", 2, "simple", "multiple_entities"),
    ("A man and a woman dance in a studio.", "man", 2, "simple", "multiple_entities"),
    ("A group of people walk down a busy street.", "person", 2, "complex", "multiple_entities"),
    ("A woman walks through a crowded market.", "woman", 1, "complex", "complex_background"),
    ("The sun sets over the ocean.", None, 0, "simple", "no_entity"),
])
def test_rule_entity_extractor_known_answers(caption, entity, count, background, code):
    judgement = RuleEntityExtractor().extract(caption)
    assert (judgement.entity, judgement.entity_count, judgement.background) == (entity, count, background)
    assert EntityStage(RuleEntityExtractor()).assess(caption).reason_code == code


def test_llm_json_parser_accepts_the_asked_form_only():
    good = parse_llm_json('{"main_entity": "Golden  Retriever", "entity_count": 1, "background": "simple"}')
    assert (good.entity, good.entity_count, good.background, good.source) == ("golden retriever", 1, "simple", "llm")
    fenced = parse_llm_json('```json\n{"main_entity": null, "entity_count": 0, "background": "complex"}\n```')
    assert fenced.entity is None and fenced.background == "complex"
    bad = [
        ("Sure! Here it is: {}", "not a JSON object"),
        ('["dog"]', "expected a JSON object"),
        ('{"main_entity": "dog", "entity_count": 1}', "missing \\['background'\\]"),
        ('{"main_entity": "dog", "entity_count": 1, "background": "simple", "x": 1}', "unexpected \\['x'\\]"),
        ('{"main_entity": "dog", "entity_count": true, "background": "simple"}', "entity_count"),
        ('{"main_entity": "dog", "entity_count": -1, "background": "simple"}', "entity_count"),
        ('{"main_entity": "", "entity_count": 1, "background": "simple"}', "main_entity"),
        ('{"main_entity": "dog", "entity_count": 1, "background": "busy"}', "background"),
    ]
    for text, match in bad:
        with pytest.raises(EntityParseError, match=match):
            parse_llm_json(text)


def test_llm_extractor_prompts_and_drops_unparseable_replies():
    prompts = []

    def chat(messages):
        prompts.append(messages)
        return '{"main_entity": "red ball", "entity_count": 1, "background": "simple"}'

    stage = EntityStage(LLMEntityExtractor(chat))
    decision = stage.assess('A red "ball" rolls.')
    assert decision.kept and decision.values["entity"] == "red ball" and decision.values["extractor"] == "llm"
    assert prompts[0] == build_messages('A red "ball" rolls.') and "A red 'ball' rolls." in prompts[0][1]["content"]
    replies = iter(["not json", '{"main_entity": "dog", "entity_count": 2, "background": "simple"}'])
    assert EntityStage(LLMEntityExtractor(lambda m: next(replies))).assess("x").reason_code == "multiple_entities"
    failing = EntityStage(LLMEntityExtractor(lambda m: "no", retries=1)).assess("x")
    assert failing.reason_code == "llm_parse_error" and "not a JSON object" in failing.reason


# ------------------------------------------------------------------------------------------------- helpers


def test_read_frames_decodes_only_the_asked_frames(tmp_path):
    frames = np.zeros((10, 32, 48, 3), np.uint8)
    for t in range(10):
        frames[t] = t * 25
    write_video(tmp_path / "ramp.mp4", frames)
    got = read_frames(tmp_path / "ramp.mp4", [7, 1, 4])
    assert got.shape == (3, 32, 48, 3)
    assert np.abs(got.mean((1, 2, 3)) - np.array([25, 100, 175])).max() < 4


def test_resize_center_crop_and_masked_crop():
    frames = np.zeros((1, 40, 40, 3), np.uint8)
    frames[0, :, 20:] = 255  # right half white
    out = resize_center_crop(frames, 20, 40)  # cover 20x40: scale to 40x40, crop rows 10..30
    assert out.shape == (1, 20, 40, 3) and out[0, :, :18].max() == 0 and out[0, :, 22:].min() == 255
    image = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    crop, crop_mask, box = masked_crop(image, mask, margin=0.0)
    assert box == (3, 2, 8, 6) and crop.shape == (4, 5, 3) and crop_mask.all() and crop.max() == 0
    _, _, grown = masked_crop(image, mask, margin=0.5)
    assert grown == (1, 0, 10, 8)


def test_caption_table_jsonl_and_errors(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"video": "a/b.mp4", "caption": "A cat."}\n')
    sources = load_captions(tmp_path / "c.jsonl", tmp_path)
    assert sources[0].clip_id == "a__b" and sources[0].path == tmp_path / "a/b.mp4"
    (tmp_path / "d.csv").write_text("path,text\nx.mp4,hi\n")
    with pytest.raises(ValueError, match="d.csv.*missing column"):
        load_captions(tmp_path / "d.csv", tmp_path)
    (tmp_path / "e.csv").write_text("video,caption\nx.mp4,a\nx.mkv,b\n")
    with pytest.raises(ValueError, match="rows 2 and 3"):
        load_captions(tmp_path / "e.csv", tmp_path)
    (tmp_path / "empty.csv").write_text("video,caption\n")  # a header only: nothing to curate is an error
    with pytest.raises(ValueError, match="empty.csv.*no rows"):
        load_captions(tmp_path / "empty.csv", tmp_path)


def test_pair_dataset_reads_what_the_build_wrote(dataset, tmp_path, aesthetic_file):
    videos, table = dataset
    out = tmp_path / "out"
    sources = [s for s in load_captions(table, videos) if s.clip_id == "moving"]
    quality, entity, reference, _ = make_stages(aesthetic_file)
    build_pairs(sources, out, quality=quality, entity=entity, reference=reference, progress=False)
    item = PairDataset(out)[0]
    assert len(PairDataset(out)) == 1 and item["entity"] == "red ball" and item["frames"].shape == (25, 48, 72, 3)
    assert item["reference"].mode == "RGB" and item["mask"].size == item["reference"].size


# ------------------------------------------------------------------------------------------------- real adapters


def tiny_grounding_dino(folder: Path) -> None:
    """A random-initialised Grounding DINO + processor (with a 10-word BERT vocabulary), saved like a hub folder."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "ball"]))
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizerFast(vocab_file=str(folder / "vocab.txt")))
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                   window_size=4, out_indices=[1, 2]).to_dict(),
        text_config=BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=32).to_dict(),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_feature_levels=2, encoder_n_points=2,
        decoder_n_points=2, max_text_len=16, use_timm_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def tiny_sam(folder: Path) -> None:
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=1, num_attention_heads=2,
                                      mlp_dim=64, image_size=256, patch_size=16, global_attn_indexes=[0],
                                      window_size=4, num_pos_feats=16).to_dict(),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=256, patch_size=16).to_dict(),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 mlp_dim=64, iou_head_hidden_dim=32).to_dict())
    torch.manual_seed(0)
    SamModel(config).save_pretrained(folder)
    SamProcessor(SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})).save_pretrained(
        folder)


@pytest.mark.slow  # importing Grounding DINO's modeling code takes seconds
def test_grounding_dino_and_sam_load_from_folders_and_run_the_stage(tmp_path):
    """Tiny random transformers models in hub-style folders, through ``build_reference_extractor``."""
    from customvideox.curation import build_reference_extractor

    tiny_grounding_dino(tmp_path / "models" / "grounding-dino-base")
    tiny_sam(tmp_path / "models" / "sam-vit-huge")
    window = ClipWindow(num_frames=3, interval=2)
    stage = build_reference_extractor(tmp_path / "models", config=ReferenceConfig(height=32, width=48, min_box_score=0.0,
                                                                                 min_box_area=0.0, max_box_area=1.0,
                                                                                 min_mask_fill=0.0), window=window)
    image = Image.fromarray(disk_frames(n=1)[0])
    boxes, scores = stage.detector.detect(image, "Red ball")
    assert boxes.shape == (10, 4) and scores.shape == (10,) and (scores >= 0).all() and (scores <= 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and boxes.max() <= W + 1
    mask = stage.segmenter.segment(image, boxes[scores.argmax()])
    assert mask.shape == (H, W) and mask.dtype == bool
    write_video(tmp_path / "v.mp4", disk_frames(n=8))
    decision = stage.assess(tmp_path / "v.mp4", "red ball", tmp_path / "pair")
    assert decision.reason_code in {"", "segmentation_failed"}  # random weights: any mask, but the stage runs
    if decision.kept:
        assert read_video(tmp_path / "pair" / "clip.mp4").frames.shape == (3, 32, 48, 3)


def test_llm_extractor_loads_a_transformers_folder(tmp_path):
    """A tiny random Qwen2 with a word-level chat tokenizer: the real generate path; its babble is a parse drop."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from customvideox.curation import build_entity_stage

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "system", "user", "assistant", "red", "ball"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    stage = build_entity_stage("llm", llm_path=tmp_path / "qwen", dtype="fp32")
    stage.extractor.chat.max_new_tokens = 4
    decision = stage.assess("A red ball rolls.")
    assert decision.reason_code == "llm_parse_error" and decision.values["extractor"] == "llm"
    with pytest.raises(MissingWeightsError, match="Qwen2.5-7B-Instruct"):
        build_entity_stage("llm", tmp_path / "empty")
