"""A LoRA file's training settings at inference: resolve_reference_config, loading with and without overrides,
the RoPE shift as a training option, and the round trip of every ReferenceConfig field through the metadata."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from customvideox.config import (
    ReferenceConfig,
    legacy_overrides,
    parse_rope_shift,
    resolve_reference_config,
)
from customvideox.lora import read_reference_settings, resolve_file_config
from customvideox.pipeline import CustomVideoXPipeline
from customvideox.presets import build_tiny_pipeline, tiny_reference_config

FAST = dict(num_frames=9, height=128, width=192, num_inference_steps=2, guidance_scale=6.0, output_type="latent")
PROMPT = dict(prompt="a dog on the beach", entity="dog", seed=0)
#: The settings a LoRA was "trained" with: every one differs from the default.
TRAINED = dict(mode="cached", rope_shift=(0.0, 1.0, 12.0), ablation="3d-ra+tab", tab_gamma=4.0, tab_eps=0.3)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------- the pure function


def test_without_file_or_overrides_the_paper_defaults():
    config, conflicts = resolve_reference_config(None, None)
    assert config == ReferenceConfig() and conflicts == []
    config, conflicts = resolve_reference_config(None, {"mode": "cached", "erae_lambda": None, "rope_shift": "0,0,45"})
    assert config == ReferenceConfig(mode="cached", rope_shift=(0.0, 0.0, 45.0)) and conflicts == []


def test_the_file_wins_for_every_key_left_unset():
    recorded = ReferenceConfig(erae_normalization="per-clip", erae_lambda=0.3, lora_rank=8, lora_alpha=8.0,
                               **TRAINED).to_dict()
    config, conflicts = resolve_reference_config(recorded, {"ablation": None})  # None: not set
    assert config.to_dict() == recorded and conflicts == []
    # a file that records only its shape (another tool wrote it): the rest is the paper default
    config, _ = resolve_reference_config({"lora_rank": 4, "lora_alpha": 4, "lora_targets": ["to_q", "to_v"]}, {})
    assert config == ReferenceConfig(lora_rank=4, lora_alpha=4.0, lora_targets=("to_q", "to_v"))


def test_a_contradicting_override_wins_and_is_reported_with_file_key_and_both_values():
    recorded = ReferenceConfig(**TRAINED).to_dict()
    config, conflicts = resolve_reference_config(recorded, {"mode": "joint", "tab_gamma": 4, "rope_shift": [0, 1, 12]},
                                                 source="ref.safetensors")
    assert config.mode == "joint" and config.rope_shift == (0.0, 1.0, 12.0) and config.ablation == "3d-ra+tab"
    # equal values in another spelling (int vs float, list vs tuple) are no conflict
    assert conflicts == ["ref.safetensors: mode='cached' in the file, overridden by mode='joint'"]
    _, conflicts = resolve_reference_config(recorded, {"rope_shift": "-1,0,0"}, source="ref.safetensors")
    assert conflicts == [
        "ref.safetensors: rope_shift=(0.0, 1.0, 12.0) in the file, overridden by rope_shift=(-1.0, 0.0, 0.0)"
    ]
    # a key the file does not record is no conflict either
    _, conflicts = resolve_reference_config({"lora_rank": 4}, {"mode": "cached"})
    assert conflicts == []


def test_lora_shape_always_comes_from_the_file_and_backend_never_does():
    recorded = ReferenceConfig(lora_rank=8, lora_alpha=8.0, attention_backend="naive").to_dict()
    with pytest.raises(ValueError, match=r"f\.safetensors: lora_rank=8 in the file, 16 requested; .*tensors"):
        resolve_reference_config(recorded, {"lora_rank": 16}, source="f.safetensors")
    config, conflicts = resolve_reference_config(recorded, {"lora_rank": 8})
    assert config.lora_rank == 8 and conflicts == []
    assert config.attention_backend == "fused"  # an implementation choice, not a training setting
    assert resolve_reference_config(recorded, {"attention_backend": "naive"})[0].attention_backend == "naive"


def test_bad_overrides_are_named():
    with pytest.raises(ValueError, match=r"unknown reference settings \['moed'\]"):
        resolve_reference_config(None, {"moed": "joint"})
    with pytest.raises(ValueError, match="f with overrides .*: .*mode='cached' needs reference_scope='self'"):
        resolve_reference_config(ReferenceConfig(mode="cached").to_dict(), {"reference_scope": "all"}, source="f")
    with pytest.raises(ValueError, match="rope_shift='1,2': expected three numbers"):
        resolve_reference_config(None, {"rope_shift": "1,2"})


def test_parse_rope_shift_and_legacy_full_configs():
    assert parse_rope_shift("-1, 0,45") == (-1.0, 0.0, 45.0) == parse_rope_shift([-1, 0, 45])
    with pytest.raises(ValueError, match="three numbers"):
        parse_rope_shift("a,b,c")
    legacy = ReferenceConfig(ablation="3d-ra", lora_rank=8, lora_alpha=8.0)
    assert legacy_overrides(legacy, with_lora_shape=False) == {"ablation": "3d-ra"}
    assert legacy_overrides(legacy, with_lora_shape=True) == {"ablation": "3d-ra", "lora_rank": 8, "lora_alpha": 8.0}
    assert legacy_overrides(ReferenceConfig(), with_lora_shape=True) == {}


# ----------------------------------------------------------------------------------------- loading a LoRA file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pipeline built with non-default settings (mode cached, a spatial RoPE shift, 3d-ra+tab, TAB constants),
    its LoRA file and its output."""
    pipe = build_tiny_pipeline(seed=0, reference_overrides=TRAINED)
    pipe.set_progress_bar_config(disable=True)
    path = pipe.save_reference_lora(tmp_path_factory.mktemp("lora") / "trained.safetensors")
    reference = np.random.default_rng(0).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)
    return pipe, path, reference, pipe(reference, **PROMPT, **FAST).frames


def _fresh() -> CustomVideoXPipeline:
    pipe = build_tiny_pipeline(seed=0)  # the default settings: joint, (-1, 0, 0), full method
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_default_load_takes_every_setting_from_the_file(trained, caplog):
    source, path, reference, expected = trained
    fresh = _fresh()
    before = fresh(reference, **PROMPT, **FAST).frames
    assert (before - expected).abs().max() > 1e-4  # the settings matter (same weights)
    with caplog.at_level(logging.WARNING):
        config = fresh.load_reference_lora(path)
    assert _warnings(caplog) == []
    assert config == source.reference_config == fresh.reference_config == fresh.transformer.reference_config
    assert (config.mode, config.rope_shift, config.ablation, config.tab_gamma) == ("cached", (0.0, 1.0, 12.0),
                                                                                     "3d-ra+tab", 4.0)
    torch.testing.assert_close(fresh(reference, **PROMPT, **FAST).frames, expected, rtol=0, atol=0)


def test_a_contradicting_override_wins_with_exactly_one_warning(trained, caplog):
    source, path, reference, _ = trained
    fresh = _fresh()
    with caplog.at_level(logging.WARNING):
        config = fresh.load_reference_lora(path, overrides={"mode": "joint", "ablation": None})
    assert config == source.reference_config.replace(mode="joint") == fresh.transformer.reference_config
    (message,) = _warnings(caplog)
    assert str(path) in message and "mode='cached' in the file" in message and "overridden by mode='joint'" in message
    expected = source(reference, **PROMPT, **FAST, reference_config=config).frames  # built directly with it
    torch.testing.assert_close(fresh(reference, **PROMPT, **FAST).frames, expected, rtol=0, atol=0)


def test_an_override_equal_to_the_file_is_silent(trained, caplog):
    _, path, _, _ = trained
    with caplog.at_level(logging.WARNING):
        config = _fresh().load_reference_lora(path, overrides={"mode": "cached", "rope_shift": "0,1,12"})
    assert _warnings(caplog) == [] and config.mode == "cached"


def test_from_pretrained_honours_the_file_and_the_overrides(trained, tmp_path, caplog):
    from customvideox.lora import LORA_WEIGHT_NAME

    source, path, reference, expected = trained
    source.save_pretrained(tmp_path / "CogVideoX-5b")  # plain CogVideoX weights in transformer/ ...
    (tmp_path / "CogVideoX-5b" / "transformer" / LORA_WEIGHT_NAME).unlink()  # ... and no LoRA
    with caplog.at_level(logging.WARNING):
        loaded = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", lora=path)
        legacy = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", lora=path,
                                                      reference_config=ReferenceConfig())  # defaults count as unset
    assert _warnings(caplog) == []
    assert loaded.reference_config == legacy.reference_config == source.reference_config
    loaded.set_progress_bar_config(disable=True)
    # cached mode after a save_pretrained/from_pretrained round trip differs by float rounding (~3e-6, also on main
    # without any settings change); the settings themselves are compared exactly above
    torch.testing.assert_close(loaded(reference, **PROMPT, **FAST).frames, expected, rtol=0, atol=1e-5)

    with caplog.at_level(logging.WARNING):
        overridden = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", lora=path,
                                                          reference_overrides={"ablation": "3d-ra"})
    assert overridden.reference_config == source.reference_config.replace(ablation="3d-ra")
    assert len(_warnings(caplog)) == 1 and "ablation='3d-ra+tab' in the file" in _warnings(caplog)[0]
    untrained = CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", reference_overrides={"mode": "cached"})
    assert untrained.reference_config == ReferenceConfig(mode="cached") and untrained.random_weights
    with pytest.raises(ValueError, match="not both"):
        CustomVideoXPipeline.from_pretrained(tmp_path / "CogVideoX-5b", reference_config=ReferenceConfig(),
                                             reference_overrides={})


@pytest.mark.parametrize("normalization", ["per-frame", "per-clip", "probability"])
def test_every_setting_round_trips_through_the_lora_metadata(tmp_path, normalization):
    from customvideox.presets import TINY_TRANSFORMER
    from customvideox.transformer import CustomVideoXTransformer3DModel

    config = tiny_reference_config({**TRAINED, "erae_normalization": normalization, "erae_lambda": 0.25,
                                    "erae_b1": 0.5, "num_train_timesteps": 500, "reference_scope": "self"})
    model = CustomVideoXTransformer3DModel(**TINY_TRANSFORMER)
    model.add_reference_lora(config)
    path = model.save_reference_lora(str(tmp_path / "lora.safetensors"))
    assert read_reference_settings(path) == config.to_dict()
    assert resolve_file_config(path) == config
    other = CustomVideoXTransformer3DModel(**TINY_TRANSFORMER)
    assert other.load_reference_lora(str(path)) == config == other.reference_config


def test_training_records_the_rope_shift_and_erae_normalization(tmp_path):
    from customvideox.train import TrainConfig

    cfg = TrainConfig(data="d", output_dir=str(tmp_path), preset="tiny", rope_shift="0,0,45",
                      erae_normalization="per-clip", mode="cached")
    assert cfg.reference_config() == tiny_reference_config(
        {"rope_shift": (0, 0, 45), "erae_normalization": "per-clip", "mode": "cached"})
    assert TrainConfig(data="d", output_dir="o").reference_config().rope_shift == (-1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="rope_shift='1,2'"):
        TrainConfig(data="d", output_dir="o", rope_shift="1,2")
    with pytest.raises(ValueError, match="erae_normalization='global'"):
        TrainConfig(data="d", output_dir="o", erae_normalization="global")


def test_train_cli_passes_the_rope_shift(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import customvideox.train
    from customvideox.cli import main

    seen = {}

    def fake_train(config):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(customvideox.train, "train", fake_train)
    args = ["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--preset", "tiny"]
    result = CliRunner().invoke(main, args + ["--rope-shift", "-1,0,45", "--erae-normalization", "probability"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["config"].rope_shift == (-1.0, 0.0, 45.0) and seen["config"].erae_normalization == "probability"
    result = CliRunner().invoke(main, args + ["--rope-shift", "1,2"])
    assert result.exit_code == 2 and "rope_shift='1,2': expected three numbers" in result.output
