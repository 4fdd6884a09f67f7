"""``videobench weights download`` against a Hub stand-in on 127.0.0.1 (tests/fake_hub.py): download, resume after
a kill, sha256 mismatch refused, gated repositories explained, offline in one line, ``--from DIR``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fake_hub import FakeHub, closed_port, sha256
from videobench import weight_downloads as wd
from videobench.cli import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, main
from videobench.weights import WeightsConfig, WeightSpec, resolve_weights

REPO = Path(__file__).resolve().parents[1]
FOLDER_SPEC = WeightSpec(key="base", model="tiny pipeline", folder=True, hf_repo="org/tiny-pipeline",
                         hf_files=("model_index.json", "unet/*"), layout=("model_index.json", "unet/"))
FILE_SPEC = WeightSpec(key="adapter", model="tiny adapter", hf_repo="org/tiny-adapter",
                       hf_files=("adapter.safetensors", "adapter.bin"))


def _payload(name: str, size: int) -> bytes:
    return (name.encode() * (size // len(name) + 1))[:size]


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """The stand-in with two repositories, and every cache of this process pointed into tmp_path."""
    from huggingface_hub import constants

    with FakeHub() as server:
        server.state.repos["org/tiny-pipeline"] = {
            "model_index.json": b'{"_class_name": "Tiny"}', "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.safetensors": _payload("unet", 300_000), "README.md": b"# not needed",
        }
        server.state.repos["org/tiny-adapter"] = {"adapter.bin": _payload("adapter", 50_000)}
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import: another test may have set it
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setenv("VIDEOBENCH_WEIGHTS", str(tmp_path / "weights"))
        yield server


def test_a_folder_and_a_file_are_fetched_and_then_found_offline(hub):
    folder = wd.list_remote(wd.Need(FOLDER_SPEC))
    assert sorted(f.path for f in folder.files) == ["model_index.json", "unet/config.json",
                                                    "unet/diffusion_pytorch_model.safetensors"]
    assert folder.size == 23 + 2 + 300_000 and folder.gated is None
    unet = next(f for f in folder.files if f.path.endswith("safetensors"))
    assert unet.sha256 == sha256(hub.state.repos["org/tiny-pipeline"][unet.path])
    path = wd.download(folder, progress=False)
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == hub.state.repos[
        "org/tiny-pipeline"]["unet/diffusion_pytorch_model.safetensors"]
    assert not (path / "README.md").exists()  # only what the model needs

    adapter = wd.list_remote(wd.Need(FILE_SPEC))
    assert [f.path for f in adapter.files] == ["adapter.bin"]  # the first candidate the repository has
    wd.download(adapter, progress=False)
    for spec in (FOLDER_SPEC, FILE_SPEC):
        resolved = resolve_weights(spec, WeightsConfig(download=False))
        assert resolved.source == "hf_cache", resolved


def test_gated_repository_is_explained_and_a_token_opens_it(hub, monkeypatch):
    hub.state.gated.add("org/tiny-adapter")
    listing = wd.list_remote(wd.Need(FILE_SPEC))
    assert listing.gated == "manual"
    with pytest.raises(wd.WeightsDownloadError, match=r"org/tiny-adapter is gated: accept its licence at "
                                                      r"http://127\.0\.0\.1:\d+/org/tiny-adapter .* HF_TOKEN"):
        wd.download(listing, progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert wd.download(listing, token="hf_test_token", progress=False).is_file()


def test_a_sha256_mismatch_is_refused_and_nothing_stays_in_the_cache(hub):
    hub.state.corrupt.add(("org/tiny-adapter", "adapter.bin"))
    listing = wd.list_remote(wd.Need(FILE_SPEC))
    with pytest.raises(wd.WeightsDownloadError, match="adapter.bin: sha256 mismatch .* the file was removed"):
        wd.download(listing, progress=False)
    assert resolve_weights(FILE_SPEC, WeightsConfig(download=False)).source == "missing"
    hub.state.corrupt.clear()
    assert wd.download(listing, progress=False).read_bytes() == hub.state.repos["org/tiny-adapter"]["adapter.bin"]


def test_a_download_killed_midway_resumes_where_it_stopped(hub, tmp_path):
    path = "unet/diffusion_pytorch_model.safetensors"
    hub.state.stall[path] = 120_000
    script = textwrap.dedent(f"""
        from huggingface_hub import constants
        constants.HF_HUB_CACHE = {str(tmp_path / 'hf' / 'hub')!r}
        from videobench import weight_downloads as wd
        from tests.test_weight_downloads import FOLDER_SPEC
        wd.download(wd.list_remote(wd.Need(FOLDER_SPEC)), progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, start_new_session=True)
    try:
        assert hub.state.stalled.wait(timeout=120), "the transfer never started"
        time.sleep(0.5)  # the client writes what it received
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    partial = list((tmp_path / "hf" / "hub").rglob("*.part"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size <= 120_000
    kept = partial[0].stat().st_size
    del hub.state.stall[path]
    hub.state.release.set()
    folder = wd.download(wd.list_remote(wd.Need(FOLDER_SPEC)), progress=False)
    assert (folder / path).read_bytes() == hub.state.repos["org/tiny-pipeline"][path]
    ranges = [header for method, url, header in hub.state.requests if method == "GET" and url.endswith(path)]
    assert ranges[-1] == f"bytes={kept}-"


def test_a_direct_url_resumes_a_part_file_and_checks_the_hash_prefix(hub, tmp_path):
    data = _payload("raft", 80_000)
    hub.state.urls["ckpt/raft-1234abcd.pth"] = data
    spec = WeightSpec(key="raft", model="tiny raft", url=f"{hub.url}/files/ckpt/raft-1234abcd.pth",
                      url_hash_prefix=sha256(data)[:8])
    listing = wd.list_remote(wd.Need(spec))
    assert listing.source == "url" and listing.size == 80_000
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "raft-1234abcd.pth.part").write_bytes(data[:30_000])
    assert wd.download(listing, progress=False).read_bytes() == data
    assert hub.state.requests[-1][2] == "bytes=30000-"
    assert not (checkpoints / "raft-1234abcd.pth.part").exists()

    wrong = WeightSpec(key="raft", model="tiny raft", url=f"{hub.url}/files/ckpt/raft-1234abcd.pth",
                       url_hash_prefix="00000000")
    (checkpoints / "raft-1234abcd.pth").unlink()
    with pytest.raises(wd.WeightsDownloadError, match="does not start with the published prefix 00000000"):
        wd.download(wd.list_remote(wd.Need(wrong)), progress=False)
    assert list(checkpoints.iterdir()) == []


def test_offline_stops_at_the_first_connection_error_with_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(wd.HubUnreachable) as error:
        wd.list_remote(wd.Need(FOLDER_SPEC))
    message = str(error.value)
    assert "\n" not in message and "cannot reach http://127.0.0.1:" in message
    assert "HF_ENDPOINT" in message and "--from DIR" in message
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(wd.HubUnreachable, match="HF_HUB_OFFLINE is set"):
        wd.list_remote(wd.Need(FOLDER_SPEC))


def test_from_dir_imports_a_cache_copied_from_another_machine(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    wd.download(wd.list_remote(wd.Need(FOLDER_SPEC)), progress=False)  # the machine with network
    copied = tmp_path / "usb"
    (tmp_path / "hf").rename(copied)  # DIR/hub/models--org--tiny-pipeline
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "offline" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    needs = [wd.Need(FOLDER_SPEC, ["row"])]
    assert resolve_weights(FOLDER_SPEC, WeightsConfig(download=False)).source == "missing"
    lines = wd.import_folder(copied, needs, WeightsConfig())
    assert len(lines) == 1 and "tiny pipeline" in lines[0]
    assert resolve_weights(FOLDER_SPEC, WeightsConfig(download=False)).source == "hf_cache"
    assert wd.import_folder(copied, needs, WeightsConfig()) == []  # nothing left to import


def test_collect_needs_lists_each_model_once_with_its_rows():
    needs = wd.collect_needs("ip-adapter+i2v,reference+i2v,metrics")
    i2v = [need for need in needs if need.spec.hf_repo == "THUDM/CogVideoX-5b-I2V"]
    assert len(i2v) == 1 and i2v[0].owners == ["ip-adapter+i2v", "reference+i2v"]
    assert {owner for need in needs for owner in need.owners if owner.startswith("metric ")} >= {
        "metric clip", "metric dino", "metric dynamic"}
    with pytest.raises(ValueError, match="unknown method\\(s\\) no-such"):
        wd.collect_needs("no-such")


def test_the_cli_dry_run_then_download_and_the_failures(hub, monkeypatch):
    hub.state.repos["org/tiny-pipeline"]["model_index.json"] = b"{}"
    runner = CliRunner()
    monkeypatch.setattr(wd, "collect_needs", lambda target, config=None: [
        wd.Need(FOLDER_SPEC, ["row A"]), wd.Need(FILE_SPEC, ["row A", "row B"])])
    hub.state.gated.add("org/tiny-adapter")
    dry = runner.invoke(main, ["weights", "download", "--for", "table1", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "2 model(s), 0 present, 2 to fetch" in dry.output
    assert "tiny adapter  [org/tiny-adapter]  50.0 KB  GATED (manual)" in dry.output
    assert "needed by: row A, row B" in dry.output and "total to download: 350.0 KB" in dry.output
    assert not (Path(os.environ["TORCH_HOME"]).parent / "hf").exists()  # a dry run writes nothing

    real = runner.invoke(main, ["weights", "download", "--for", "table1"])
    assert real.exit_code == EXIT_CASE_FAILURES
    assert "ok tiny pipeline" in real.output and "failed tiny adapter" in real.output
    hub.state.gated.clear()
    again = runner.invoke(main, ["weights", "download", "--for", "table1"])
    assert again.exit_code == 0 and "1 present, 1 to fetch" in again.output

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(wd, "collect_needs", lambda target, config=None: [wd.Need(
        WeightSpec(key="x", model="other", hf_repo="org/other", hf_files=("x.bin",)), ["row"])])
    offline = runner.invoke(main, ["weights", "download", "--for", "table1"])
    assert offline.exit_code == EXIT_SETUP_ERROR and offline.output.count("cannot reach") == 1
