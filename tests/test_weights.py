"""Weight resolution (explicit file > weights folder > HF / torch hub caches), the missing-weights message, loading."""

from __future__ import annotations

import hashlib
import pickle

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from videobench.metrics import build_metrics, families_for
from videobench.weights import (
    MissingWeightsError,
    WeightsConfig,
    WeightsLoadError,
    check_weights,
    clip_file_stem,
    load_state_dict,
    resolve_weights,
    weight_spec,
    weights_table,
)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No real cache or environment leaks into these tests."""
    monkeypatch.delenv("VIDEOBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("VIDEOBENCH_DOWNLOAD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    yield
    torch.hub.set_dir(old_hub)


def _tiny_state(path, value=1.0):
    tensors = {"a.weight": torch.full((2, 2), value)}
    if str(path).endswith(".safetensors"):
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def test_expected_file_names():
    config = WeightsConfig()
    assert weight_spec("clip", config).file_names[0] == "clip_vit_b32_openai.safetensors"
    assert weight_spec("clip", config).hf_repo == "timm/vit_base_patch32_clip_224.openai"
    assert "dino_deitsmall16_pretrain.pth" in weight_spec("dino", config).file_names
    assert weight_spec("dino", config).hf_repo == "timm/vit_small_patch16_224.dino"
    assert weight_spec("dynamic", config).file_names[:2] == ("raft_large_C_T_V1-22a6c225.pth", "raft-things.pth")
    assert clip_file_stem("ViT-L-14", "openai") == "clip_vit_l_14_openai"
    with pytest.raises(ValueError, match="unknown metric family"):
        weight_spec("lpips", config)


def test_resolution_order(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    _tiny_state(folder / "raft-things.pth")
    explicit = _tiny_state(tmp_path / "mine.pth")
    # weights folder from the environment by default
    monkeypatch.setenv("VIDEOBENCH_WEIGHTS", str(folder))
    resolved = resolve_weights("dynamic", WeightsConfig())
    assert (resolved.source, resolved.path) == ("weights_dir", folder / "raft-things.pth")
    # the preferred name wins inside the folder
    _tiny_state(folder / "raft_large_C_T_V1-22a6c225.pth")
    assert resolve_weights("dynamic", WeightsConfig()).path.name == "raft_large_C_T_V1-22a6c225.pth"
    # an explicit file wins over the folder
    resolved = resolve_weights("dynamic", WeightsConfig(raft_weights=explicit))
    assert (resolved.source, resolved.path) == ("explicit", explicit)
    # an explicit file that does not exist is missing (never silently replaced by another file)
    resolved = resolve_weights("dynamic", WeightsConfig(raft_weights=tmp_path / "nope.pth"))
    assert resolved.source == "missing" and "nope.pth does not exist" in resolved.note


def test_hf_and_torch_hub_caches(tmp_path):
    # a Hugging Face cache laid out as hf_hub_download leaves it
    repo = tmp_path / "hf" / "models--timm--vit_small_patch16_224.dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    _tiny_state(snapshot / "model.safetensors")
    resolved = resolve_weights("dino", WeightsConfig(weights_dir=tmp_path / "empty"))
    assert resolved.source == "hf_cache" and resolved.path.name == "model.safetensors"
    # torchvision's download location for RAFT
    hub_file = tmp_path / "torch_hub" / "checkpoints" / "raft_large_C_T_V1-22a6c225.pth"
    hub_file.parent.mkdir(parents=True)
    _tiny_state(hub_file)
    resolved = resolve_weights("dynamic", WeightsConfig(weights_dir=tmp_path / "empty"))
    assert (resolved.source, resolved.path) == ("torch_hub_cache", hub_file)


def test_check_weights_lists_every_missing_model(tmp_path):
    folder = tmp_path / "weights"
    config = WeightsConfig(weights_dir=folder, raft_weights=tmp_path / "missing-raft.pth")
    with pytest.raises(MissingWeightsError) as info:
        check_weights(["clip", "dino", "dynamic"], config)
    message = str(info.value)
    assert len(info.value.missing) == 3
    for expected in ("clip_vit_b32_openai.safetensors", "dino_deitsmall16_pretrain.pth", "raft-things.pth",
                     str(folder), "--clip-weights", "--dino-weights", "--raft-weights", "missing-raft.pth",
                     "VIDEOBENCH_WEIGHTS", "--random-weights"):
        assert expected in message
    # only what is missing is listed
    folder.mkdir()
    _tiny_state(folder / "dino_deitsmall16_pretrain.pth")
    with pytest.raises(MissingWeightsError) as info:
        check_weights(["dino", "clip"], WeightsConfig(weights_dir=folder))
    assert [r.spec.family for r in info.value.missing] == ["clip"]
    assert check_weights(["dino"], WeightsConfig(weights_dir=folder)) is None


def test_build_metrics_fails_before_building_any_model(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build_metrics(["clip_t", "dino_i", "dynamic"], WeightsConfig(weights_dir=tmp_path))
    assert {r.spec.family for r in info.value.missing} == {"clip", "dino", "dynamic"}
    assert families_for(["dynamic", "t_cons", "clip_i"]) == ["clip", "dynamic"]
    with pytest.raises(ValueError, match="unknown metric column"):
        families_for(["fvd"])


def test_weights_table(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    path = _tiny_state(folder / "dino_vits16.safetensors")
    rows = {row["family"]: row for row in weights_table(WeightsConfig(weights_dir=folder))}
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
