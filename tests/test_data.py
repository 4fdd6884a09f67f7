"""videobench.data: data root, downloader (against a local HTTP mirror of ../shared/datasets), verify, path safety."""

from __future__ import annotations

import copy
import functools
import http.server
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fake_hub import closed_port
from videobench import data
from videobench.data import DataError, DataFile, DownloadError, MissingDataError
from videobench.suites import dreambench, get_suite, load_suite, videobench

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(
    not (SHARED / "dreambench" / "dataset").is_dir() or not (SHARED / "videobench" / "objects").is_dir(),
    reason=f"the dataset copies are not at {SHARED} (../shared/datasets relative to the repository root)",
)
SHA = "0" * 64
COMMIT = "1" * 40


# ------------------------------------------------------------------------------------------ a local mirror


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror; counts requests per path; ``faults[path]`` is a list of HTTP codes to answer first."""

    def __init__(self, *args, state, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server API)
        with self.state["lock"]:
            self.state["hits"][self.path] += 1
            queued = self.state["faults"].get(self.path)
            code = queued.pop(0) if queued else None
        if code is not None:
            self.send_error(code)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class Mirror:
    """A raw.githubusercontent.com-style mirror (``<repo>/<commit>/<path>``) on 127.0.0.1."""

    def __init__(self, root: Path):
        self.root = root
        self.state = {"hits": Counter(), "faults": {}, "lock": threading.Lock()}
        handler = functools.partial(_Handler, directory=str(root), state=self.state)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def path_of(self, item: DataFile) -> Path:
        return self.root / item.repo / item.commit / item.source_path

    def url_path(self, item: DataFile) -> str:
        return "/" + "/".join((item.repo, item.commit, item.source_path))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _all_files() -> list[DataFile]:
    return get_suite("dreambench").data_files() + get_suite("videobench").data_files()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    if not (SHARED / "dreambench" / "dataset").is_dir():
        pytest.skip(f"the dataset copies are not at {SHARED}")
    root = data.build_mirror(_all_files(), SHARED, tmp_path_factory.mktemp("mirror"), symlink=True)
    served = Mirror(root)
    yield served
    served.close()


@pytest.fixture(scope="module")
def full_root(mirror, tmp_path_factory):
    """A data root filled over HTTP with both suites (videobench first, then dreambench resumes over it)."""
    root = tmp_path_factory.mktemp("data")
    first = data.download(get_suite("videobench"), root, base_urls=mirror.url, progress=False, backoff=0)
    second = data.download(get_suite("dreambench"), root, base_urls=mirror.url, progress=False, backoff=0)
    return root, first, second


# ------------------------------------------------------------------------------------------------ data root


def test_resolve_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    assert data.resolve_data_root() == (tmp_path / "xdg" / "videobench" / "data").resolve()
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "env"))
    assert data.resolve_data_root() == (tmp_path / "env").resolve()
    assert data.resolve_data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_data_root() == (tmp_path / "home" / ".cache" / "videobench" / "data").resolve()


# --------------------------------------------------------------------------------------------- path safety


@pytest.mark.parametrize("bad", ["../evil.jpg", "dreambench/../../evil.jpg", "/etc/passwd", "C:/x.png",
                                 "dreambench\\..\\x", "a//b", "./a", ""])
def test_spec_paths_cannot_escape(bad):
    with pytest.raises(DataError, match="path|absolute|escape"):
        DataFile(path=bad, sha256=SHA, size=1, repo="o/r", commit=COMMIT, source_path="x", mirror_path="x")
    with pytest.raises(DataError):
        DataFile(path="ok/x", sha256=SHA, size=1, repo="o/r", commit=COMMIT, source_path=bad, mirror_path="x")


def test_tampered_specs_are_rejected():
    vb = copy.deepcopy(videobench.load_spec())
    obj = next(s for s in vb["subjects"] if s["source"] == "objects")
    obj["images"][0]["path"] = "videobench/../../../home/evil.png"
    with pytest.raises(DataError, match="escape"):
        videobench.parse_spec(vb)
    db = copy.deepcopy(dreambench.load_spec())
    db["subjects"][0]["images"][0]["path"] = "/tmp/evil.jpg"
    with pytest.raises(DataError, match="absolute"):
        dreambench.parse_spec(db)
    db = copy.deepcopy(dreambench.load_spec())
    db["attribution_files"][0]["sha256"] = "not-a-hash"
    with pytest.raises(DataError, match="sha256"):
        dreambench.parse_spec(db)


def test_every_spec_path_stays_inside_root(tmp_path):
    for item in _all_files():
        target = data.join_inside(tmp_path, item.path)
        assert tmp_path in target.parents and target.resolve().is_relative_to(tmp_path.resolve())


# ------------------------------------------------------------------------------------------------ manifest


@needs_shared
def test_manifest_checksums_match_the_shared_copies():
    files = _all_files()
    assert len({f.path for f in files}) == 158 + 2 + 22
    for item in files:
        local = SHARED / item.mirror_path
        assert local.stat().st_size == item.size, item.path
    # full hashes are checked by the download test; here a known answer from objects.json
    biplane = next(f for f in files if f.path == "videobench/objects/biplane/00.png")
    assert biplane.sha256 == "c73e98112eb603b4ba635b8965cad7807d0588f083811bc2faa0c7ab9668a65a"
    assert biplane.url() == ("https://raw.githubusercontent.com/microsoft/TRELLIS/"
                             "6b0d64751ad54d9c32d7b05fec482eb29178f56f/assets/example_image/typical_vehicle_biplane.png")
    dog = next(f for f in files if f.path == "dreambench/dog2/00.jpg")
    assert dog.url() == ("https://raw.githubusercontent.com/google/dreambooth/"
                         "e9b8c013ef2e30ab3d5d9018808513e9093e3bc4/dataset/dog2/00.jpg")


# ------------------------------------------------------------------------------------------------ download


@needs_shared
def test_full_download_verify_and_load(full_root):
    root, first, second = full_root
    n_vb = len(get_suite("videobench").data_files())
    assert len(first.downloaded) == n_vb and not first.skipped and not first.failed
    # dreambench resumes over the files videobench already fetched
    shared = {f.path for f in get_suite("dreambench").data_files()} & {f.path for f in get_suite("videobench").data_files()}
    assert len(shared) == 160 - 5 - 6 and set(second.skipped) == shared  # all but dog6 (5) and shiny_sneaker (6)
    assert len(second.downloaded) + len(second.skipped) == 160
    report = data.verify(root, [get_suite("dreambench"), get_suite("videobench")])
    assert report.passed and report.checked == 182 and report.lines()[-1].startswith("OK")
    for name in ("dreambench/LICENSE.txt", "dreambench/references_and_licenses.txt", "videobench/LICENSES.txt"):
        assert (root / name).stat().st_size > 1000
    assert "Creative Commons Attribution 4.0" in (root / "dreambench/LICENSE.txt").read_text()
    assert not list(root.rglob("*.part")) and not list(root.rglob(".*"))

    db = load_suite("dreambench", root)
    vb = load_suite("videobench", root)
    assert len(db.cases) == 750 and len(vb.cases) == 530
    for case in db.cases + vb.cases:
        assert case.references and all(Path(p).is_file() and Path(p).is_relative_to(root) for p in case.references)
    assert len(next(c for c in db.cases if c.subject == "backpack").references) == 6
    assert vb.select(["biplane-p035"])[0].references == (str(root / "videobench/objects/biplane/00.png"),)


@needs_shared
def test_verify_reports_damage_and_download_repairs_only_it(full_root, mirror):
    root, _, _ = full_root
    corrupt, gone = root / "dreambench/dog2/01.jpg", root / "videobench/objects/cake/00.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    gone.unlink()
    report = data.verify(root, [get_suite("videobench")])
    assert not report.passed
    assert report.missing == ["videobench/objects/cake/00.jpg"]
    assert [c.path for c in report.corrupt] == ["dreambench/dog2/01.jpg"]
    assert any(line.startswith("corrupt: dreambench/dog2/01.jpg") for line in report.lines())
    assert "videobench data download videobench" in report.lines()[-1]
    before = sum(mirror.state["hits"].values())
    again = data.download(get_suite("videobench"), root, base_urls=mirror.url, progress=False, backoff=0)
    assert sorted(again.downloaded) == ["dreambench/dog2/01.jpg", "videobench/objects/cake/00.jpg"]
    assert sum(mirror.state["hits"].values()) - before == 2  # resume: verified files are not fetched again
    assert data.verify(root, [get_suite("dreambench"), get_suite("videobench")]).passed


@needs_shared
def test_checksum_mismatch_leaves_nothing_and_resume_finishes(mirror, tmp_path):
    root = tmp_path / "root"
    biplane = next(f for f in get_suite("videobench").data_files() if f.path.endswith("biplane/00.png"))
    served = mirror.path_of(biplane)
    target = served.resolve()
    served.unlink()
    served.write_bytes(b"\x89PNG not really the biplane")
    try:
        with pytest.raises(DownloadError) as err:
            data.download(get_suite("videobench"), root, base_urls=mirror.url, progress=False,
                          subjects=["biplane", "horse"], backoff=0)
        message = str(err.value)
        assert "videobench/objects/biplane/00.png: sha256 mismatch" in message
        assert biplane.sha256 in message and "resume" in message
        assert list(err.value.failures) == ["videobench/objects/biplane/00.png"]
        assert not (root / "videobench/objects/biplane").exists() or not any(
            (root / "videobench/objects/biplane").iterdir())  # no half-written or temp file
        assert data.file_sha256(root / "videobench/objects/horse/00.png") == next(
            f.sha256 for f in get_suite("videobench").data_files(["horse"]) if "horse" in f.path)
    finally:
        served.unlink()
        served.symlink_to(target)
    hits = mirror.state["hits"]
    horse_url = "/" + "/".join(("VAST-AI-Research/TripoSR", "d26e33181947bbbc4c6fc0f5734e1ec6c080956e",
                                "examples/horse.png"))
    horse_hits = hits[horse_url]
    report = data.download(get_suite("videobench"), root, base_urls=mirror.url, progress=False,
                           subjects=["biplane", "horse"], backoff=0)
    assert report.downloaded == ["videobench/objects/biplane/00.png"]
    assert "videobench/objects/horse/00.png" in report.skipped
    assert hits[horse_url] == horse_hits


@needs_shared
def test_transient_errors_are_retried_and_404_is_reported(mirror, tmp_path):
    fox = next(f for f in get_suite("videobench").data_files(["fox"]) if "fox" in f.path)
    path = mirror.url_path(fox)
    mirror.state["faults"][path] = [503, 500]
    before = mirror.state["hits"][path]
    report = data.download(get_suite("videobench"), tmp_path, base_urls={"*": mirror.url}, progress=False,
                           subjects=["fox"], backoff=0, retries=3)
    assert "videobench/objects/fox/00.jpg" in report.downloaded
    assert mirror.state["hits"][path] - before == 3

    mirror.state["faults"][path] = [404]
    with pytest.raises(DownloadError, match=r"videobench/objects/fox/00.jpg: HTTP 404 for http://127\.0\.0\.1"):
        data.download(get_suite("videobench"), tmp_path / "other", base_urls=mirror.url, progress=False,
                      subjects=["fox"], backoff=0)

    mirror.state["faults"][path] = [503, 503]
    with pytest.raises(DownloadError, match="failed after 2 attempt"):
        data.download(get_suite("videobench"), tmp_path / "third", base_urls=mirror.url, progress=False,
                      subjects=["fox"], backoff=0, retries=2)


@needs_shared
def test_install_from_local_copy(tmp_path):
    report = data.download(get_suite("videobench"), tmp_path, progress=False, source_dir=SHARED, subjects=["tortoise", "cat"])
    assert "videobench/objects/tortoise/00.png" in report.downloaded
    assert sum(p.startswith("dreambench/cat/") for p in report.downloaded) == 5
    with pytest.raises(DownloadError, match="not found in local source folder"):
        data.download(get_suite("videobench"), tmp_path / "x", progress=False, source_dir=tmp_path / "empty",
                      subjects=["fox"])
    with pytest.raises(KeyError, match="no subject"):
        get_suite("videobench").data_files(["unicorn"])


def test_missing_data_names_files_and_command(tmp_path):
    for suite, count in (("dreambench", 158), ("videobench", 147 + 22)):
        with pytest.raises(MissingDataError) as err:
            load_suite(suite, tmp_path)
        assert f"{count} reference image(s) missing" in str(err.value)
        assert "dreambench/backpack/00.jpg" in str(err.value)
        assert f"videobench data download {suite} --data-root {tmp_path.resolve()}" in str(err.value)


def test_an_unreachable_source_stops_at_the_first_connection_error(tmp_path):
    """Offline: one line that says what to do, not one error per file after retries."""
    suite = get_suite("dreambench")
    files = suite.data_files()
    assert len(files) > 100
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        data.download(suite, tmp_path, base_urls=f"http://127.0.0.1:{closed_port()}", progress=False,
                      retries=3, backoff=1.0)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert message.count("\n") == 0 and "cannot reach 127.0.0.1:" in message
    assert "videobench data download dreambench --from DIR" in message and "--base-url" in message
    assert elapsed < 10  # no back-off sleeps: a refused connection is not retried
    assert not any(path.is_file() for path in tmp_path.rglob("*"))
