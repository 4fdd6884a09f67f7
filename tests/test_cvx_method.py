"""The ``customvideox`` method for ``videobench generate``: run names, generation, weights errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import customvideox.base_model as customvideox_weights
from customvideox.base_model import MODEL_LAYOUT, check_model_folder, locate_base_model
from customvideox.method import build_customvideox, frames_to_uint8, run_name_for
from mediaio.images import ImageError
from videobench.cases import Case
from videobench.methods import Generator, MethodContext, build_generator, get_method
from videobench.options import OptionError
from videobench.weights import MissingWeightsError, WeightsConfig

GEOMETRY = dict(num_frames=9, height=128, width=128)  # narrower than the smoke suite's 128x192: faster


def build(preset: str | None = "tiny", random_weights: bool = False, weights_dir: Path | None = None, **options):
    """The harness's path: options validated, weights resolved, factory called."""
    context = MethodContext(preset=preset, random_weights=random_weights, **GEOMETRY,
                            weights_config=WeightsConfig(weights_dir=weights_dir or "/nonexistent-weights"))
    generator, _ = build_generator("customvideox", options, context)
    return generator


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("refs") / "subject.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(80, 120, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_generator():
    return build(steps=4)


def _case(reference: Path | str, prompt: str = "a dog on the beach", entity: str = "dog") -> Case:
    return Case(case_id="dog-beach", suite="smoke", subject="dog", prompt=prompt, entity=entity,
                references=(str(reference),))


def test_registered_with_its_metadata():
    spec = get_method("customvideox")
    assert spec.factory is build_customvideox and spec.kind == "ours" and spec.presets == ("tiny",)
    assert spec.paper(spec.parse_options({})).table1_row == "CustomVideoX"
    naive = spec.parse_options({"ablation": "naive"})
    assert spec.paper(naive).table1_row is None and spec.paper(naive).table2_setting == "naive"
    assert spec.metadata(naive)["options"]["ablation"] == "naive"


def test_tiny_generator_contract_and_determinism(tiny_generator, reference_path):
    assert isinstance(tiny_generator, Generator)
    assert tiny_generator.run_name == "customvideox-tiny"
    assert tiny_generator.fps == 8 and tiny_generator.random_weights is True
    config = tiny_generator.config()
    assert json.loads(json.dumps(config)) == config
    assert config["random_weights"] is True and config["reference_config"]["ablation"] == "3d-ra+tab+erae"
    assert config["num_inference_steps"] == 4 and config["num_frames"] == 9
    case = _case(reference_path)
    first = tiny_generator.generate(case, seed=7).frames
    assert first.shape == (9, 128, 128, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, tiny_generator.generate(case, seed=7).frames)
    assert np.abs(first.astype(int) - tiny_generator.generate(case, seed=8).frames.astype(int)).max() > 0


@pytest.mark.parametrize("mode", ["joint", "cached"])
def test_compiled_generator_matches_eager(tiny_generator, reference_path, mode):
    """``compile``: the transformer runs through torch.compile (graph capture and AOT autograd with the
    ``aot_eager`` backend, which needs no C++ toolchain) and gives eager's video."""
    eager = build(steps=2, mode=mode)
    compiled = build(steps=2, mode=mode, compile="true", compile_backend="aot_eager")
    assert compiled.config()["compile"] == "aot_eager" and eager.config()["compile"] is None
    assert compiled.pipeline.transformer._compiled_call_impl is not None
    case = _case(reference_path)
    a, b = eager.generate(case, seed=3).frames, compiled.generate(case, seed=3).frames
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 rounding of float-equal frames


def test_missing_reference_image_names_the_file(tiny_generator, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png"):
        tiny_generator.generate(_case(missing), seed=0)
    with pytest.raises(ValueError, match="no reference image"):
        tiny_generator.generate(Case("c", "smoke", "dog", "a dog", "dog", ()), seed=0)


@pytest.mark.parametrize(
    "ablation, mode, expected",
    [
        (None, None, "customvideox-tiny"),
        ("3d-ra+tab+erae", None, "customvideox-tiny"),
        ("naive", None, "customvideox-tiny-naive"),
        ("3d-ra", None, "customvideox-tiny-3d-ra"),
        ("3d-ra+tab", "cached", "customvideox-tiny-3d-ra+tab-cached"),
    ],
)
def test_factory_run_name_per_ablation(ablation, mode, expected):
    options = {key: value for key, value in (("ablation", ablation), ("mode", mode)) if value}
    generator = build(**options)
    assert generator.run_name == expected
    assert generator.pipeline.reference_config.ablation == (ablation or "3d-ra+tab+erae")
    assert generator.resolved_options.mode == (mode or "joint") == generator.pipeline.reference_config.mode


def test_run_names_of_the_real_model():
    assert run_name_for(None, "3d-ra+tab+erae", "joint", random_lora=False) == "customvideox"
    assert run_name_for(None, "naive", "joint", random_lora=False) == "customvideox-naive"
    assert run_name_for(None, "3d-ra+tab", "joint", random_lora=False) == "customvideox-3d-ra+tab"
    assert run_name_for(None, "3d-ra+tab+erae", "joint", random_lora=True) == "customvideox-random"


@pytest.mark.parametrize("options, message", [
    ({"ablation": "full"}, "method customvideox: option ablation='full': choose one of naive, 3d-ra, 3d-ra+tab, "
                           "3d-ra+tab+erae"),
    ({"mode": "fast"}, "option mode='fast': choose one of joint, cached"),
    ({"steps": "many"}, "option steps='many': expected an integer"),
    ({"steps": "0"}, "option steps='0': must be >= 1"),
    ({"rope_shift": "1,2"}, "option rope_shift=1.0,2.0: give 3 numbers"),
    ({"speed": "max"}, "unknown option(s) 'speed'; accepted: model, lora, ablation"),
    ({"compile": "true", "compile_backend": "nonsense"}, "compile_backend='nonsense'"),
])
def test_bad_options_fail_before_any_work(options, message):
    with pytest.raises(ValueError) as info:
        build(**options)
    assert message in str(info.value)


def test_unknown_preset_is_refused():
    with pytest.raises(OptionError, match="unknown preset 'huge'; its presets: tiny"):
        build(preset="huge")


# ----------------------------------------------------------------------------------------- missing weights


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fake_model_folder(root: Path) -> Path:
    folder = root / "CogVideoX-5b"
    for entry in MODEL_LAYOUT:
        if entry.endswith("/"):
            (folder / entry).mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return folder


def test_no_model_and_empty_cache_names_model_layout_and_hub_id(empty_hf_cache, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build(preset=None, weights_dir=tmp_path / "weights")
    message = str(info.value)
    for expected in ("CogVideoX-5B", "THUDM/CogVideoX-5b", "model_index.json", "transformer/", "vae/",
                     "text_encoder/", "tokenizer/", "scheduler/", str(tmp_path / "weights"), "-o model=",
                     "--preset tiny"):
        assert expected in message
    assert "no weights are published" in message  # both missing pieces in one message
    with pytest.raises(MissingWeightsError) as info:
        build(preset=None, ablation="naive")  # naive needs no LoRA: only the model is missing
    assert "THUDM/CogVideoX-5b" in str(info.value) and "LoRA" not in str(info.value)


def test_incomplete_model_folder_lists_what_lacks(tmp_path):
    folder = tmp_path / "cvx"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"lacks vae/, text_encoder/, tokenizer/, scheduler/"):
        build(preset=None, model=str(folder), ablation="naive")
    with pytest.raises(customvideox_weights.MissingWeightsError, match="does not exist"):
        locate_base_model(tmp_path / "absent")  # customvideox's own loader (training, scripts)
    assert check_model_folder(_fake_model_folder(tmp_path)) == tmp_path / "CogVideoX-5b"


def test_full_method_without_lora_fails_clearly(tmp_path):
    folder = _fake_model_folder(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        build(preset=None, model=str(folder))
    message = str(info.value)
    assert "no weights are published" in message and "model_index.json" not in message
    assert "customvideox train" in message and "-o lora=" in message and "--random-weights" in message


def test_missing_lora_file_is_named(tmp_path):
    folder = _fake_model_folder(tmp_path)
    with pytest.raises(MissingWeightsError, match=r"-o lora=FILE.safetensors .*absent\.safetensors does not exist"):
        build(preset=None, model=str(folder), lora=str(tmp_path / "absent.safetensors"))
    with pytest.raises(MissingWeightsError, match="absent.safetensors"):
        build(lora=str(tmp_path / "absent.safetensors"))


def test_frames_to_uint8_rounds_and_clips():
    frames = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 7, 1).repeat(3, -1)
    assert frames_to_uint8(frames)[0, 0, :, 0].tolist() == [0, 0, 0, 2, 128, 255, 255]


def test_generate_run_records_failures_resumes_and_is_deterministic(tiny_generator, reference_path, tmp_path):
    """The runner with the tiny CustomVideoX: a bad reference fails its case only; a rerun skips what is done."""
    from mediaio.video import read_video
    from videobench.generation import run_generation
    from videobench.results import read_cases_jsonl
    from videobench.suites import Suite

    good = _case(reference_path)
    bad = Case("dog-missing", "smoke", "dog", "a dog in the snow", "dog", (str(tmp_path / "missing.png"),))
    suite = Suite("smoke", "v1", "test", (good, bad), num_frames=9, height=128, width=128)
    first = run_generation(tiny_generator, suite, list(suite.cases), tmp_path / "a", seed=3,
                           progress=False)
    assert first.generated == ["dog-beach"] and list(first.failed) == ["dog-missing"]
    assert "missing.png" in first.failed["dog-missing"]
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(first.method_dir / "cases.jsonl")}
    assert records["dog-beach"]["status"] == "ok" and records["dog-missing"]["status"] == "failed"
    run = json.loads((first.method_dir / "run.json").read_text())
    assert run["run_name"] == "customvideox-tiny" and run["config"]["random_weights"] is True

    again = run_generation(tiny_generator, suite, list(suite.cases), tmp_path / "a", seed=3,
                           progress=False)
    assert again.skipped == ["dog-beach"] and list(again.failed) == ["dog-missing"]
    video = read_video(first.method_dir / "videos" / "dog-beach.mp4")
    assert video.frames.shape == (9, 128, 128, 3) and video.fps == 8
    # The file holds the seed's video, up to H.264 loss (large on random-weight noise textures): it is much
    # closer to a regeneration with the same seed than to one with another seed.
    same = np.abs(video.frames.astype(int) - tiny_generator.generate(good, seed=3).frames.astype(int)).mean()
    other = np.abs(video.frames.astype(int) - tiny_generator.generate(good, seed=4).frames.astype(int)).mean()
    assert same < 0.6 * other, (same, other)


def test_factory_loads_a_cogvideox_folder_and_a_lora(tiny_generator, reference_path, tmp_path):
    """The non-preset path end to end, on a (tiny) CogVideoX folder saved by diffusers and a LoRA file."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from customvideox.presets import TINY_TRANSFORMER

    pipe = tiny_generator.pipeline
    plain = CogVideoXPipeline(**{**pipe.components, "transformer": CogVideoXTransformer3DModel(**TINY_TRANSFORMER)})
    plain.save_pretrained(tmp_path / "CogVideoX-5b")
    lora = pipe.save_reference_lora(tmp_path / "lora.safetensors")
    common = dict(preset=None, model=str(tmp_path / "CogVideoX-5b"), steps=2)

    generator = build(lora=lora, ablation="3d-ra", **common)
    assert generator.run_name == "customvideox-3d-ra" and generator.random_weights is False
    assert generator.config()["lora"] == lora and generator.pipeline.reference_config.ablation == "3d-ra"
    frames = generator.generate(_case(reference_path), seed=0).frames
    assert frames.shape == (9, 128, 128, 3) and frames.dtype == np.uint8

    untrained = build(random_weights=True, **common)
    assert untrained.run_name == "customvideox-random" and untrained.random_weights is True


def test_a_folder_saved_with_its_lora_needs_no_lora_flag(tiny_generator, reference_path, tmp_path):
    """`save_pretrained` puts the LoRA beside the transformer; `--model FOLDER` alone then finds it."""
    from customvideox.pipeline import CustomVideoXPipeline

    pipe = tiny_generator.pipeline
    folder = tmp_path / "cvx"
    pipe.save_pretrained(folder)
    common = dict(preset=None, model=str(folder), steps=2)
    generator = build(**common)
    assert generator.config()["lora"].endswith("transformer/pytorch_lora_weights.safetensors")
    direct = build(lora=generator.config()["lora"], **common)
    case = _case(reference_path)
    assert np.array_equal(generator.generate(case, seed=1).frames, direct.generate(case, seed=1).frames)
    with pytest.raises(MissingWeightsError, match="no weights are published"):
        (folder / "transformer" / "pytorch_lora_weights.safetensors").unlink()
        build(**common)
    assert isinstance(CustomVideoXPipeline.from_pretrained(folder), CustomVideoXPipeline)


def test_a_lora_file_settings_reach_run_json_unless_overridden(tmp_path, reference_path, caplog):
    """At the method level, the LoRA's mode, ablation, shift and ERAE settings are the run's settings."""
    from customvideox.presets import build_tiny_pipeline
    from videobench.generation import run_generation
    from videobench.suites import Suite

    trained = build_tiny_pipeline(reference_overrides={"mode": "cached", "ablation": "3d-ra+tab",
                                                       "rope_shift": (0, 0, 12), "erae_lambda": 0.2})
    lora = trained.save_reference_lora(tmp_path / "lora.safetensors")
    generator = build(lora=lora, steps=1)
    resolved = generator.resolved_options
    assert (resolved.mode, resolved.ablation, resolved.rope_shift, resolved.erae_lambda) == (
        "cached", "3d-ra+tab", (0.0, 0.0, 12.0), 0.2)
    assert generator.run_name == "customvideox-tiny-3d-ra+tab-cached"
    spec = get_method("customvideox")
    metadata = spec.metadata(resolved)
    assert metadata["table2_setting"] == "+TAB" and metadata["paper_row"] is None
    assert metadata["options"]["mode"] == "cached" and metadata["options"]["rope_shift"] == [0.0, 0.0, 12.0]
    # an explicit option that contradicts the file wins, with one warning naming the key
    caplog.clear()
    with caplog.at_level("WARNING"):
        overridden = build(lora=lora, steps=1, mode="joint")
    assert overridden.resolved_options.mode == "joint" and overridden.resolved_options.ablation == "3d-ra+tab"
    assert sum("mode" in record.getMessage() for record in caplog.records) == 1
    # run.json records the resolved values
    suite = Suite("smoke", "v1", "test", (_case(reference_path),), num_frames=9, height=128, width=128)
    summary = run_generation(generator, suite, list(suite.cases), tmp_path / "out", progress=False, metadata=metadata)
    run = json.loads((summary.method_dir / "run.json").read_text())
    assert run["options"]["ablation"] == "3d-ra+tab" and run["table2_setting"] == "+TAB"
    assert run["config"]["reference_config"]["mode"] == "cached"


def test_erae_region_coverage_is_recorded_per_case(tiny_generator, reference_path, tmp_path):
    from videobench.generation import run_generation
    from videobench.results import read_cases_jsonl
    from videobench.suites import Suite

    cases = (_case(reference_path), _case(reference_path, prompt="a cat on a sofa", entity="dog"))
    cases = (cases[0], Case("cat-sofa", "smoke", "cat", "a cat on a sofa", "dog", (str(reference_path),)))
    suite = Suite("smoke", "v1", "test", cases, num_frames=9, height=128, width=128)
    summary = run_generation(tiny_generator, suite, list(suite.cases), tmp_path, progress=False)
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(summary.method_dir / "cases.jsonl")}
    found = records["dog-beach"]["diagnostics"]
    assert 0.0 < found["erae_region_coverage"] <= 1.0 and found["erae_normalization"] == "per-frame"
    assert len(found["erae_region_coverage_per_step"]) == 4  # one value per denoising step
    # the entity is not in the prompt: ERAE did not run, so no coverage is claimed
    assert "erae_region_coverage" not in records["cat-sofa"].get("diagnostics", {})
