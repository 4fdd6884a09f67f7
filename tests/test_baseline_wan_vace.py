"""``wan-vace``: registration, options, geometry rules, the tiny preset, and loading a diffusers folder offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from baselines import wan_vace
from baselines.wan_vace import (
    TINY_GEOMETRY,
    VARIANTS,
    WAN_NEGATIVE_PROMPT_EN,
    WAN_NEGATIVE_PROMPT_ZH,
    WAN_VACE_LAYOUT,
    VideoGeometry,
    build_tiny_pipeline,
    build_wan_vace,
    check_model_folder,
    identify_variant,
    resolve_geometry,
    round_num_frames,
    round_to_multiple,
    unsupported_size,
)
from videobench.cases import Case
from videobench.methods import Generator, MethodContext, get_method
from videobench.methods import build_generator as build_method
from videobench.options import OptionError
from videobench.weights import MissingWeightsError, WeightsConfig, WeightsLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

#: A small suite geometry (the tests run in suite mode: fewer pixels than the preset's native 9x128x192).
SMALL = {"num_frames": 5, "height": 32, "width": 48, "fps": 8}
FAST = {"geometry": "suite", "steps": 2}
FOLDER_NAME = VARIANTS["1.3b"].folder_name


def build(options: dict | None = None, preset: str | None = "tiny", weights_dir: Path | str = "/nonexistent-weights",
          **context):
    """The harness's path: options validated, weights resolved, factory called."""
    context = MethodContext(preset=preset, weights_config=WeightsConfig(weights_dir=weights_dir),
                            **{**SMALL, **context})
    generator, _ = build_method(get_method("wan-vace"), options or {}, context)
    return generator


def _image(path: Path, seed: int, size=(72, 56)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("refs")
    return [_image(folder / f"ref{i}.png", seed=i) for i in range(2)]


def _case(*refs: Path, prompt: str = "a dog running on the beach") -> Case:
    return Case(case_id="dog-beach", suite="smoke", subject="dog", prompt=prompt, entity="dog",
                references=tuple(str(ref) for ref in refs))


@pytest.fixture(scope="module")
def tiny():
    return build(FAST)


@pytest.fixture(scope="module")
def tiny_video(tiny, references) -> np.ndarray:
    """The tiny preset's video of the first reference, seed 0 (shared by several tests)."""
    return tiny.generate(_case(references[0]), seed=0).frames


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    """The tiny pipeline saved with ``save_pretrained``: the official diffusers folder layout at toy size."""
    folder = tmp_path_factory.mktemp("weights") / FOLDER_NAME
    build_tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / FOLDER_NAME
    shutil.copytree(folder, target)
    return target


# ------------------------------------------------------------------------------------------------ registration


def test_registered_with_its_metadata():
    spec = get_method("wan-vace")
    assert spec.factory is build_wan_vace and spec.kind == "video-model" and spec.presets == ("tiny",)
    options = spec.parse_options({})
    assert spec.paper(options).table1_row is None and not spec.default_run
    metadata = spec.metadata(options)
    assert metadata["kind"] == "video-model" and metadata["options"]["variant"] == "1.3b"
    assert {info.name for info in spec.describe_options()} >= {
        "variant", "model", "steps", "guidance", "flow_shift", "negative_prompt", "conditioning_scale",
        "references", "geometry", "offload"}


def test_defaults_are_the_official_settings():
    options = get_method("wan-vace").parse_options({})
    assert (options.guidance, options.flow_shift, options.conditioning_scale) == (5.0, 16.0, 1.0)
    assert options.steps is None and wan_vace.DEFAULT_STEPS == 50
    assert options.resolved_negative_prompt() == WAN_NEGATIVE_PROMPT_ZH
    assert VARIANTS["1.3b"].native == VideoGeometry(81, 480, 832, 16)
    assert VARIANTS["14b"].native == VideoGeometry(81, 720, 1280, 16)


@pytest.mark.parametrize(("value", "expected"), [("wan", WAN_NEGATIVE_PROMPT_ZH), ("WAN-en", WAN_NEGATIVE_PROMPT_EN),
                                                 ("", ""), ("blurry, static", "blurry, static")])
def test_negative_prompt_aliases(value, expected):
    assert get_method("wan-vace").parse_options({"negative_prompt": value}).resolved_negative_prompt() == expected


def test_weight_specs_per_variant():
    spec = get_method("wan-vace")
    for name, repo in (("1.3b", "Wan-AI/Wan2.1-VACE-1.3B-diffusers"), ("14b", "Wan-AI/Wan2.1-VACE-14B-diffusers")):
        (weights,) = spec.weight_specs(spec.parse_options({"variant": name}), MethodContext())
        assert weights.folder and weights.hf_repo == repo and weights.file_names == (repo.split("/")[1],)
        assert weights.layout == WAN_VACE_LAYOUT and weights.key == f"wan-vace-{name}" and weights.explicit is None
    (weights,) = spec.weight_specs(spec.parse_options({"model": "/data/vace"}), MethodContext())
    assert weights.explicit == "/data/vace"
    assert spec.weight_specs(spec.parse_options({}), MethodContext(preset="tiny")) == []
    with pytest.raises(OptionError, match="--preset tiny"):
        spec.weight_specs(spec.parse_options({}), MethodContext(random_weights=True))


def test_missing_folder_is_reported_with_where_it_goes(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"Wan2\.1-VACE-14B-diffusers") as error:
        build({"variant": "14b"}, preset=None, weights_dir=tmp_path)
    assert "huggingface.co/Wan-AI/Wan2.1-VACE-14B-diffusers" in str(error.value)


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize(("frames", "expected"), [(81, 81), (49, 49), (50, 49), (51, 53), (52, 53), (2, 1), (1, 1),
                                                  (0, 1), (16, 17)])
def test_frames_round_to_4k_plus_1(frames, expected):
    assert round_num_frames(frames) == expected and (round_num_frames(frames) - 1) % 4 == 0


@pytest.mark.parametrize(("side", "expected"), [(480, 480), (720, 720), (832, 832), (470, 464), (472, 480),
                                                (200, 208), (8, 16), (1, 16)])
def test_sides_round_to_multiples_of_16(side, expected):
    assert round_to_multiple(side) == expected


def test_native_geometry_ignores_the_suite_and_suite_geometry_rounds_it():
    native = VARIANTS["1.3b"].native
    suite = MethodContext(num_frames=50, height=470, width=721, fps=8)
    assert resolve_geometry("native", native, suite) == native
    assert resolve_geometry("suite", native, suite) == VideoGeometry(49, 464, 720, 8)
    assert resolve_geometry("suite", native, MethodContext(num_frames=None, height=None, width=None)) == \
        VideoGeometry(81, 480, 832, 8)
    with pytest.raises(ValueError, match="native or suite"):
        resolve_geometry("paper", native, suite)


def test_resolved_geometry_and_fps_are_recorded(tiny):
    assert tiny.fps == 8 and tiny.run_name == "wan-vace-tiny-suite"
    assert tiny.config()["geometry"] == {"mode": "suite", "num_frames": 5, "height": 32, "width": 48, "fps": 8,
                                         "suite": {"num_frames": 5, "height": 32, "width": 48, "fps": 8}}
    native = build({"steps": 1})
    assert native.run_name == "wan-vace-tiny" and native.fps == TINY_GEOMETRY.fps
    assert native.config()["geometry"] == {"mode": "native", **TINY_GEOMETRY.to_dict()}
    rounded = build(FAST, num_frames=6, height=40, width=50)
    assert rounded.config()["geometry"]["num_frames"] == 5 and (rounded.geometry.height, rounded.geometry.width) == \
        (48, 48)


# ------------------------------------------------------------------------------------------------ tiny preset


def test_tiny_preset_is_a_generator_with_its_settings(tiny):
    assert isinstance(tiny, Generator) and tiny.random_weights
    config = tiny.config()
    assert config["pipeline"] == "diffusers.WanVACEPipeline" and config["model"] == "tiny"
    assert config["scheduler"] == {"class": "UniPCMultistepScheduler", "flow_shift": 16.0,
                                   "prediction_type": "flow_prediction", "use_flow_sigmas": True}
    assert tiny.pipeline.scheduler.config.flow_shift == 16.0
    assert config["negative_prompt"] == WAN_NEGATIVE_PROMPT_ZH and config["guidance_scale"] == 5.0
    assert config["num_inference_steps"] == 2 and config["conditioning_scale"] == 1.0
    json.dumps(config)


def test_video_shape_and_determinism(tiny, tiny_video, references):
    assert tiny_video.shape == (5, 32, 48, 3) and tiny_video.dtype == np.uint8
    again = tiny.generate(_case(references[0]), seed=0).frames
    np.testing.assert_array_equal(again, tiny_video)
    other_seed = tiny.generate(_case(references[0]), seed=1).frames
    assert np.abs(other_seed.astype(int) - tiny_video.astype(int)).mean() > 0.5


def _latents(generator, reference: Path, seed: int = 0) -> torch.Tensor:
    """The denoised latents (reference frame first) of the generator's pipeline for ``reference``, ``seed``."""
    geometry = generator.geometry
    return generator.pipeline(
        prompt="a dog running on the beach", reference_images=[PIL.Image.open(reference).convert("RGB")],
        num_frames=geometry.num_frames, height=geometry.height, width=geometry.width,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **generator.call_kwargs).frames


def test_the_reference_conditions_the_video(tiny, tiny_video, references):
    """Another reference image (same prompt, same seed) gives another video: the reference really conditions it.

    A random toy model passes little of the reference into the video frames (a trained one copies the subject), so
    the denoised latents are compared too: deterministic CPU runs repeat bit for bit, any difference is the
    reference's.
    """
    other = tiny.generate(_case(references[1]), seed=0).frames
    assert not np.array_equal(other, tiny_video)
    first, again, second = (_latents(tiny, ref) for ref in (references[0], references[0], references[1]))
    assert torch.equal(first, again) and first.shape == (1, 16, 1 + 2, 4, 6)
    assert (first - second)[:, :, 0].abs().mean() > 1e-3  # the reference frame
    assert (first - second)[:, :, 1:].abs().mean() > 1e-5  # the video frames, through attention


def test_the_reference_is_fitted_on_white_and_encoded_as_a_leading_frame(tiny, tmp_path, monkeypatch):
    """Known answer for the conditioning the transformer receives: the reference fitted inside the frame and padded
    with white (official ``prepare_source``), VAE-encoded and normalised, as a first latent frame with mask 0; the
    video frames are the encoded empty video with mask 1."""
    pipe = tiny.pipeline
    reference = tmp_path / "tall.png"
    PIL.Image.new("RGB", (24, 32), (255, 0, 0)).save(reference)  # 24 wide, 32 high on a 48x32 frame
    canvases, controls = [], []
    original = pipe.prepare_video_latents

    def prepare_video_latents(video, mask, refs, *args, **kwargs):
        canvases.append(refs)
        return original(video, mask, refs, *args, **kwargs)

    monkeypatch.setattr(pipe, "prepare_video_latents", prepare_video_latents)
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: controls.append(kwargs["control_hidden_states"].clone()), with_kwargs=True)
    try:
        tiny.generate(_case(reference), seed=0)
    finally:
        hook.remove()
    (((canvas,),),) = canvases  # one call, one video, one reference
    assert canvas.shape == (3, 32, 48)
    white, red = torch.ones(3, 32, 12), torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 32, 24)
    torch.testing.assert_close(canvas[:, :, :12], white)
    torch.testing.assert_close(canvas[:, :, 36:], white)
    torch.testing.assert_close(canvas[:, :, 12:36], red)

    control = controls[0]
    assert control.shape == (1, 96, 3, 4, 6) and all(torch.equal(c, control) for c in controls)
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean)[None, :, None, None, None]
    std = torch.tensor(config.latents_std)[None, :, None, None, None]
    with torch.no_grad():
        expected_reference = (pipe.vae.encode(canvas[None, :, None]).latent_dist.mode() - mean) / std
        expected_video = (pipe.vae.encode(torch.zeros(1, 3, 5, 32, 48)).latent_dist.mode() - mean) / std
    torch.testing.assert_close(control[:, :16, :1], expected_reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(control[:, 16:32, :1], torch.zeros_like(control[:, 16:32, :1]))
    torch.testing.assert_close(control[:, :16, 1:], expected_video, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(control[:, 16:32, 1:], expected_video, atol=1e-5, rtol=1e-4)
    assert torch.all(control[:, 32:, 0] == 0) and torch.all(control[:, 32:, 1:] == 1)


def test_the_pipeline_receives_the_reference_unchanged_and_the_run_settings(tiny, references, monkeypatch):
    calls = []

    def fake_pipeline(**kwargs):
        calls.append(kwargs)
        return type("Out", (), {"frames": np.full((1, 5, 32, 48, 3), 0.5, dtype=np.float32)})()

    monkeypatch.setattr(tiny, "pipeline", fake_pipeline)
    output = tiny.generate(_case(*references), seed=3)
    assert output.frames.shape == (5, 32, 48, 3) and int(output.frames[0, 0, 0, 0]) == 128
    (call,) = calls
    (image,) = call["reference_images"]  # references=1: the first image only
    np.testing.assert_array_equal(np.asarray(image), np.asarray(PIL.Image.open(references[0]).convert("RGB")))
    assert call["prompt"] == "a dog running on the beach" and call["negative_prompt"] == WAN_NEGATIVE_PROMPT_ZH
    assert (call["num_frames"], call["height"], call["width"]) == (5, 32, 48)
    assert call["generator"].initial_seed() == 3 and call["output_type"] == "np"
    assert call["max_sequence_length"] == wan_vace.TINY_TEXT_LENGTH and output.diagnostics == {"num_references": 1}


def test_all_references_when_asked(references, monkeypatch):
    generator = build({**FAST, "references": 0, "negative_prompt": ""})
    seen = []
    monkeypatch.setattr(generator, "pipeline", lambda **kw: seen.append(kw) or type(
        "Out", (), {"frames": np.zeros((1, 5, 32, 48, 3), dtype=np.float32)})())
    assert generator.generate(_case(*references), seed=0).diagnostics == {"num_references": 2}
    assert len(seen[0]["reference_images"]) == 2 and seen[0]["negative_prompt"] is None


def test_a_case_without_reference_fails_clearly(tiny):
    with pytest.raises(ValueError, match="no reference image"):
        tiny.generate(_case(), seed=0)


# ------------------------------------------------------------------------------------------------ loading a folder


def test_saved_folder_has_the_official_layout(saved_folder):
    for entry in WAN_VACE_LAYOUT:
        assert (saved_folder / entry.rstrip("/")).exists(), entry
    index = json.loads((saved_folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanVACEPipeline"
    assert index["transformer"] == ["diffusers", "WanVACETransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"] and index["text_encoder"][1] == "UMT5EncoderModel"
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]


def _same_tensors(loaded: torch.nn.Module, reference: torch.nn.Module) -> int:
    """Assert every parameter and buffer of ``loaded`` equals ``reference``'s; return how many were compared."""
    ours, theirs = loaded.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert not value.is_meta, key
        assert torch.equal(value, theirs[key]), key
    return len(ours)


@pytest.mark.parametrize("route", ["explicit", "weights_dir"])
def test_loads_a_saved_folder_offline_every_tensor_in_place(saved_folder, route, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    options = {"flow_shift": "7", "steps": "2"}
    if route == "explicit":
        generator = build({**options, "model": str(saved_folder)}, preset=None)
    else:
        generator = build(options, preset=None, weights_dir=saved_folder.parent)
    reference = build_tiny_pipeline(seed=0)
    pipe = generator.pipeline
    counts = {name: _same_tensors(getattr(pipe, name), getattr(reference, name))
              for name in ("transformer", "vae", "text_encoder")}
    assert all(count > 10 for count in counts.values())
    assert pipe.vae.dtype == torch.float32
    prompt = "a dog running on the beach"
    assert pipe.tokenizer(prompt).input_ids == reference.tokenizer(prompt).input_ids
    assert pipe.scheduler.config.flow_shift == 7.0
    for key in ("prediction_type", "use_flow_sigmas", "num_train_timesteps", "solver_order", "solver_type"):
        assert pipe.scheduler.config[key] == reference.scheduler.config[key]
    assert not generator.random_weights and generator.run_name == "wan-vace-1.3b"
    config = generator.config()
    assert config["identified_variant"] is None and config["architecture"]["num_layers"] == 4
    assert config["model"] == (str(saved_folder) if route == "explicit" else "Wan-AI/Wan2.1-VACE-1.3B-diffusers")
    assert config["model_path"] == str(saved_folder) and config["geometry"]["num_frames"] == 81


def test_loaded_folder_generates_what_the_preset_generates(saved_folder, tiny_video, references):
    """Same weights, same settings, same seed: the folder loaded from disk reproduces the in-memory preset."""
    generator = build({**FAST, "model": str(saved_folder)}, preset=None)
    assert generator.config()["max_sequence_length"] == wan_vace.TEXT_LENGTH
    generator.call_kwargs["max_sequence_length"] = wan_vace.TINY_TEXT_LENGTH  # the preset's text length
    np.testing.assert_array_equal(generator.generate(_case(references[0]), seed=0).frames, tiny_video)


@pytest.mark.parametrize(("component", "file", "key"), [
    ("transformer", "diffusion_pytorch_model.safetensors", "vace_blocks.1.proj_out.weight"),
    ("vae", "diffusion_pytorch_model.safetensors", "decoder.conv_out.weight"),
    ("text_encoder", "model.safetensors", "encoder.block.1.layer.1.DenseReluDense.wo.weight"),
])
def test_a_missing_tensor_is_an_error_naming_the_folder(saved_folder, tmp_path, component, file, key):
    folder = _copy(saved_folder, tmp_path)
    tensors = load_file(folder / component / file)
    del tensors[key]
    save_file(tensors, folder / component / file, metadata={"format": "pt"})
    with pytest.raises(WeightsLoadError, match=rf"{component}: .*missing tensor.*{key}"):
        build({"model": str(folder)}, preset=None)


def test_a_misshapen_tensor_is_an_error(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["proj_out.weight"] = torch.zeros(3, 3)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(WeightsLoadError, match=r"transformer: cannot load .*proj_out\.weight"):
        build({"model": str(folder)}, preset=None)


def test_a_layout_gap_is_reported_before_loading(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(MissingWeightsError, match="lacks vae"):
        build({"model": str(folder)}, preset=None)


def test_another_pipeline_folder_is_refused(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanPipeline"}))
    with pytest.raises(WeightsLoadError, match="not a WanVACEPipeline"):
        build({"model": str(folder)}, preset=None)


def test_the_other_size_is_refused_before_any_tensor_loads(saved_folder, tmp_path):
    folder = _copy(saved_folder, tmp_path)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(VARIANTS["14b"].signature)
    config_path.write_text(json.dumps(config))
    assert identify_variant(config) == "14b"
    assert check_model_folder(folder, "14b")["num_layers"] == 40
    with pytest.raises(WeightsLoadError, match="holds Wan2.1-VACE-14B but -o variant=1.3b"):
        build({"model": str(folder)}, preset=None)


def test_variant_signatures_match_the_published_architectures():
    """The signatures build the 1.3B / 14B transformers of diffusers' conversion script (on the meta device)."""
    from diffusers import WanVACETransformer3DModel

    counts = {}
    for name, heads in (("1.3b", 12), ("14b", 40)):
        signature = VARIANTS[name].signature
        with torch.device("meta"):
            model = WanVACETransformer3DModel(num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                                              out_channels=16, text_dim=4096, num_layers=signature["num_layers"],
                                              ffn_dim=signature["ffn_dim"], vace_layers=signature["vace_layers"],
                                              vace_in_channels=96)
        counts[name] = sum(p.numel() for p in model.parameters())
        assert identify_variant(dict(model.config)) == name
    assert 1.5e9 < counts["1.3b"] < 2.5e9 and 14e9 < counts["14b"] < 19e9


def test_sizes_outside_the_official_ones_are_warned_about():
    """Wan2.1 ``wan/configs/__init__.py`` SUPPORTED_SIZES: vace-1.3B 480*832 / 832*480; vace-14B also 720p."""
    small, large = VARIANTS["1.3b"], VARIANTS["14b"]
    suite = VideoGeometry(num_frames=49, height=480, width=720, fps=8)
    warning = unsupported_size(small, suite)
    assert warning == ("Wan2.1-VACE-1.3B at 480x720: outside the sizes the official code supports (480x832, 832x480); "
                       "the model was not trained for it and its numbers are not upstream's")
    assert unsupported_size(small, small.native) is None and unsupported_size(large, large.native) is None
    assert unsupported_size(large, VideoGeometry(num_frames=81, height=480, width=832, fps=16)) is None
    assert unsupported_size(small, VideoGeometry(num_frames=81, height=720, width=1280, fps=16)) is not None
