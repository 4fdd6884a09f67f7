"""Weight resolution (explicit file > weights folder > HF / torch hub caches), the missing-weights message, loading."""

from __future__ import annotations

import hashlib
import pickle

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from videobench.metrics import build_metrics, families_for
from videobench.metrics.clip import ClipMetric, ClipOptions, clip_file_stem
from videobench.metrics.dino import DinoMetric
from videobench.metrics.dynamic import DynamicDegreeMetric, DynamicOptions
from videobench.metrics.registry import metric_weight_specs, parse_metric_options
from videobench.weights import (
    MissingWeightsError,
    WeightsConfig,
    WeightsLoadError,
    WeightSpec,
    check_weights,
    load_state_dict,
    resolve_weights,
    weights_table,
)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No real cache or environment leaks into these tests."""
    monkeypatch.delenv("VIDEOBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("VIDEOBENCH_DOWNLOAD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    # torch.hub.set_dir pins the folder for the rest of the process (TORCH_HOME is then ignored): undo it exactly,
    # so that later tests that choose the folder through TORCH_HOME get it.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))


def _tiny_state(path, value=1.0):
    tensors = {"a.weight": torch.full((2, 2), value)}
    if str(path).endswith(".safetensors"):
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def _spec(cls, options=None):
    (spec,) = cls.weight_specs(options or cls.Options())
    return spec


def test_expected_file_names():
    assert _spec(ClipMetric).file_names[0] == "clip_vit_b32_openai.safetensors"
    assert _spec(ClipMetric).hf_repo == "timm/vit_base_patch32_clip_224.openai"
    assert "dino_deitsmall16_pretrain.pth" in _spec(DinoMetric).file_names
    assert _spec(DinoMetric).hf_repo == "timm/vit_small_patch16_224.dino"
    assert _spec(DynamicDegreeMetric).file_names[:2] == ("raft_large_C_T_V1-22a6c225.pth", "raft-things.pth")
    assert clip_file_stem("ViT-L-14", "openai") == "clip_vit_l_14_openai"
    assert _spec(ClipMetric, ClipOptions(model="ViT-L-14")).file_names[0] == "clip_vit_l_14_openai.safetensors"
    with pytest.raises(ValueError, match="unknown metric famil"):
        parse_metric_options({"lpips": {}})


def test_resolution_order(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    _tiny_state(folder / "raft-things.pth")
    explicit = _tiny_state(tmp_path / "mine.pth")
    raft = _spec(DynamicDegreeMetric)
    # weights folder from the environment by default
    monkeypatch.setenv("VIDEOBENCH_WEIGHTS", str(folder))
    resolved = resolve_weights(raft, WeightsConfig())
    assert (resolved.source, resolved.path) == ("weights_dir", folder / "raft-things.pth")
    # the preferred name wins inside the folder
    _tiny_state(folder / "raft_large_C_T_V1-22a6c225.pth")
    assert resolve_weights(raft, WeightsConfig()).path.name == "raft_large_C_T_V1-22a6c225.pth"
    # an explicit file wins over the folder
    resolved = resolve_weights(_spec(DynamicDegreeMetric, DynamicOptions(weights=explicit)), WeightsConfig())
    assert (resolved.source, resolved.path) == ("explicit", explicit)
    # an explicit file that does not exist is missing (never silently replaced by another file)
    resolved = resolve_weights(_spec(DynamicDegreeMetric, DynamicOptions(weights=tmp_path / "nope.pth")))
    assert resolved.source == "missing" and "nope.pth does not exist" in resolved.note
    assert "-M dynamic.weights=FILE" in resolved.note


def _hf_snapshot(root, repo: str, files: dict[str, bytes | None]):
    """A Hugging Face cache entry laid out as hf_hub_download / snapshot_download leave it."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            _tiny_state(snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    return snapshot


def test_hf_and_torch_hub_caches(tmp_path):
    _hf_snapshot(tmp_path / "hf", "timm/vit_small_patch16_224.dino", {"model.safetensors": None})
    resolved = resolve_weights(_spec(DinoMetric), WeightsConfig(weights_dir=tmp_path / "empty"))
    assert resolved.source == "hf_cache" and resolved.path.name == "model.safetensors"
    # torchvision's download location for RAFT
    hub_file = tmp_path / "torch_hub" / "checkpoints" / "raft_large_C_T_V1-22a6c225.pth"
    hub_file.parent.mkdir(parents=True)
    _tiny_state(hub_file)
    resolved = resolve_weights(_spec(DynamicDegreeMetric), WeightsConfig(weights_dir=tmp_path / "empty"))
    assert (resolved.source, resolved.path) == ("torch_hub_cache", hub_file)


def test_folder_specs_check_their_layout_and_hub_ids(tmp_path):
    spec = WeightSpec(key="base", model="A pipeline", folder=True, file_names=("pipe",), hf_repo="org/pipe",
                      layout=("model_index.json", "unet/"), option="-o model=FOLDER")
    config = WeightsConfig(weights_dir=tmp_path / "weights")
    (tmp_path / "weights" / "pipe" / "unet").mkdir(parents=True)
    resolved = resolve_weights(spec, config)
    assert resolved.source == "missing" and "lacks model_index.json" in resolved.note
    (tmp_path / "weights" / "pipe" / "model_index.json").write_text("{}")
    assert resolve_weights(spec, config).source == "weights_dir"
    # a snapshot in the HF cache, found by the spec's repo or by a hub id given as the explicit value
    snapshot = _hf_snapshot(tmp_path / "hf", "other/pipe", {"model_index.json": b"{}", "unet/config.json": b"{}"})
    resolved = resolve_weights(spec.with_explicit("other/pipe"), config)
    assert (resolved.source, resolved.path) == ("hf_cache", snapshot)
    missing = resolve_weights(spec.with_explicit("absent/pipe"), config)
    assert missing.source == "missing" and "absent/pipe is not in the Hugging Face cache" in missing.note


def test_check_weights_lists_every_missing_model(tmp_path):
    folder = tmp_path / "weights"
    parsed = parse_metric_options({"dynamic": {"weights": str(tmp_path / "missing-raft.pth")}})
    with pytest.raises(MissingWeightsError) as info:
        check_weights(metric_weight_specs(["clip", "dino", "dynamic"], parsed), WeightsConfig(weights_dir=folder))
    message = str(info.value)
    assert len(info.value.missing) == 3
    for expected in ("clip_vit_b32_openai.safetensors", "dino_deitsmall16_pretrain.pth", "missing-raft.pth",
                     str(folder), "-M clip.weights=FILE", "-M dino.weights=FILE", "-M dynamic.weights=FILE",
                     "VIDEOBENCH_WEIGHTS", "--random-weights", "[clip: model]", "[dynamic: model]"):
        assert expected in message
    # only what is missing is listed
    folder.mkdir()
    _tiny_state(folder / "dino_deitsmall16_pretrain.pth")
    defaults = parse_metric_options({})
    with pytest.raises(MissingWeightsError) as info:
        check_weights(metric_weight_specs(["dino", "clip"], defaults), WeightsConfig(weights_dir=folder))
    assert [r.spec.model for r in info.value.missing] == [_spec(ClipMetric).model]
    found = check_weights(metric_weight_specs(["dino"], defaults), WeightsConfig(weights_dir=folder))
    assert found["dino:model"].path == folder / "dino_deitsmall16_pretrain.pth"


def test_build_metrics_fails_before_building_any_model(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build_metrics(["clip_t", "dino_i", "dynamic"], WeightsConfig(weights_dir=tmp_path))
    assert len(info.value.missing) == 3
    assert families_for(["dynamic", "t_cons", "clip_i"]) == ["clip", "dynamic"]
    with pytest.raises(ValueError, match="unknown metric column"):
        families_for(["fvd"])


def test_weights_table(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    path = _tiny_state(folder / "dino_vits16.safetensors")
    specs = metric_weight_specs(["clip", "dino", "dynamic"], parse_metric_options({}))
    rows = {row["owner"]: row for row in weights_table(specs, WeightsConfig(weights_dir=folder))}
    assert set(rows) == {"clip", "dino", "dynamic"}
    assert rows["dino"]["found"] == "weights_dir" and rows["dino"]["file"] == "dino_vits16.safetensors"
    assert rows["dino"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rows["clip"]["found"] == "missing" and rows["clip"]["sha256"] == ""
    assert {"model", "file", "found", "path", "sha256"} <= set(rows["clip"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_state_dict_is_safe_and_unwraps(tmp_path):
    assert torch.equal(load_state_dict(_tiny_state(tmp_path / "a.safetensors"))["a.weight"], torch.ones(2, 2))
    torch.save({"state_dict": {"x": torch.zeros(3)}, "epoch": 3}, tmp_path / "wrapped.pth")
    assert list(load_state_dict(tmp_path / "wrapped.pth")) == ["x"]
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(WeightsLoadError, match="evil.pth.*weights_only=True"):
        load_state_dict(evil)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsLoadError, match="junk.safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
