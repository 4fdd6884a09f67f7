"""The generation runner: results layout, resume, failure recording, shards, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mediaio.video import read_video
from videobench.cases import Case
from videobench.generation import RunConflictError, parse_shard, run_generation
from videobench.results import read_cases_jsonl, read_run_json
from videobench.suites import Suite


class ColourGenerator:
    """Frames whose colour depends on the case and the seed; fails on cases named in ``fail``."""

    run_name = "colour"
    fps = 8
    random_weights = False

    def __init__(self, fail: set[str] | None = None, steps: int = 1):
        self.fail = fail or set()
        self.steps = steps
        self.calls: list[str] = []

    def config(self):
        return {"steps": self.steps}

    def generate(self, case: Case, seed: int) -> np.ndarray:
        self.calls.append(case.case_id)
        if case.case_id in self.fail:
            raise RuntimeError(f"boom in {case.case_id}")
        rng = np.random.default_rng([seed, sum(map(ord, case.case_id))])
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        return np.broadcast_to(colour, (3, 32, 48, 3)).copy()


def make_suite(n: int = 4) -> Suite:
    cases = tuple(
        Case(f"s{i}-p0", "toy", f"s{i}", f"a thing number {i} dancing", "thing", (f"/refs/{i}.png",))
        for i in range(n)
    )
    return Suite("toy", "toy-v1", "a test suite", cases, num_frames=3, height=32, width=48)


def test_layout_and_records(tmp_path):
    suite = make_suite()
    summary = run_generation(ColourGenerator(), suite, suite.cases, tmp_path, seed=3, progress=False)
    method_dir = tmp_path / "colour"
    assert summary.ok and summary.generated == [c.case_id for c in suite.cases]
    run = read_run_json(method_dir / "run.json")
    assert run["suite"] == "toy" and run["suite_version"] == "toy-v1" and run["seed"] == 3
    assert run["config"] == {"steps": 1} and run["random_weights"] is False
    assert run["packages"]["numpy"] == np.__version__
    lines = read_cases_jsonl(method_dir / "cases.jsonl")
    assert [line.record["case_id"] for line in lines] == [c.case_id for c in suite.cases]
    first = lines[0].record
    assert first["video"] == "videos/s0-p0.mp4" and first["status"] == "ok" and first["seed"] == 3
    assert first["references"] == ["/refs/0.png"] and first["entity"] == "thing"
    video = read_video(method_dir / first["video"])
    assert video.frames.shape == (3, 32, 48, 3) and video.fps == 8
    assert not list(method_dir.rglob("*.part")), "temporary files left behind"


def test_failure_is_recorded_and_others_run(tmp_path):
    suite = make_suite()
    summary = run_generation(ColourGenerator(fail={"s1-p0"}), suite, suite.cases, tmp_path, progress=False)
    assert list(summary.failed) == ["s1-p0"] and "boom in s1-p0" in summary.failed["s1-p0"]
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(tmp_path / "colour" / "cases.jsonl")}
    assert records["s1-p0"]["status"] == "failed" and "RuntimeError: boom in s1-p0" == records["s1-p0"]["error"]
    assert all(records[c]["status"] == "ok" for c in ("s0-p0", "s2-p0", "s3-p0"))
    assert not (tmp_path / "colour" / "videos" / "s1-p0.mp4").exists()


def test_resume_skips_valid_videos_and_redoes_broken_ones(tmp_path):
    suite = make_suite()
    run_generation(ColourGenerator(fail={"s1-p0"}), suite, suite.cases, tmp_path, progress=False)
    # Damage one good video: truncate it.
    broken = tmp_path / "colour" / "videos" / "s2-p0.mp4"
    broken.write_bytes(broken.read_bytes()[:100])
    generator = ColourGenerator()
    summary = run_generation(generator, suite, suite.cases, tmp_path, progress=False)
    assert sorted(generator.calls) == ["s1-p0", "s2-p0"]
    assert sorted(summary.skipped) == ["s0-p0", "s3-p0"] and summary.ok
    records = [line.record for line in read_cases_jsonl(tmp_path / "colour" / "cases.jsonl")]
    assert all(r["status"] == "ok" and "error" not in r for r in records)


def test_same_seed_same_video_other_seed_differs(tmp_path):
    suite = make_suite(1)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path / "a", seed=5, progress=False)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path / "b", seed=5, progress=False)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path / "c", seed=6, progress=False)
    a, b, c = (read_video(tmp_path / x / "colour/videos/s0-p0.mp4").frames for x in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_config_change_refuses_to_mix(tmp_path):
    suite = make_suite(2)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path, progress=False)
    with pytest.raises(RunConflictError, match="another configuration"):
        run_generation(ColourGenerator(steps=2), suite, suite.cases, tmp_path, progress=False)
    other_suite = Suite("other", "v1", "", suite.cases)
    with pytest.raises(RunConflictError, match="holds suite toy"):
        run_generation(ColourGenerator(), other_suite, suite.cases, tmp_path, progress=False)
    generator = ColourGenerator(steps=2)
    run_generation(generator, suite, suite.cases, tmp_path, overwrite=True, progress=False)
    assert len(generator.calls) == 2


def test_shards_cover_the_suite_once_and_merge(tmp_path):
    suite = make_suite(5)
    seen = []
    for index in range(2):
        generator = ColourGenerator()
        run_generation(generator, suite, suite.cases, tmp_path, shard=f"{index}/2", progress=False)
        seen += generator.calls
    assert sorted(seen) == sorted(c.case_id for c in suite.cases)
    records = [line.record["case_id"] for line in read_cases_jsonl(tmp_path / "colour" / "cases.jsonl")]
    assert records == [c.case_id for c in suite.cases]


@pytest.mark.parametrize("bad", ["1", "2/2", "-1/3", "a/b", "0/0"])
def test_parse_shard_rejects(bad):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(bad)


def test_malformed_cases_line_is_regenerated(tmp_path):
    suite = make_suite(2)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path, progress=False)
    path = tmp_path / "colour" / "cases.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n")
    generator = ColourGenerator()
    run_generation(generator, suite, suite.cases, tmp_path, progress=False)
    assert generator.calls == ["s1-p0"]
    assert [json.loads(line)["case_id"] for line in path.read_text().splitlines()] == ["s0-p0", "s1-p0"]


def test_bad_frames_are_a_case_failure(tmp_path):
    class Bad(ColourGenerator):
        def generate(self, case, seed):
            return np.zeros((3, 32, 48), dtype=np.uint8)

    suite = make_suite(1)
    summary = run_generation(Bad(), suite, suite.cases, tmp_path, progress=False)
    assert "expected (T, H, W, 3)" in summary.failed["s0-p0"]


# ------------------------------------------------------------------------------ image-first generators
class TwoPhase:
    """An ImageFirstGenerator: a coloured image per case, then frames that hold it; counts every call."""

    run_name = "twophase"
    fps = 8
    random_weights = False

    def __init__(self, phases=("image", "video"), fail_image: set[str] | None = None):
        self.phases = phases
        self.fail_image = fail_image or set()
        self.images: list[str] = []
        self.videos: list[str] = []
        self.ended = 0

    def config(self):
        return {"two": "phase"}  # the phases are not part of the identity

    def generate_image(self, case, seed):
        from PIL import Image

        self.images.append(case.case_id)
        if case.case_id in self.fail_image:
            raise RuntimeError(f"stage 1 broke on {case.case_id}")
        return Image.new("RGB", (48, 32), (10 * len(self.images), 100, seed))

    def end_image_phase(self):
        self.ended += 1

    def generate(self, case, seed, image):
        self.videos.append(case.case_id)
        return np.repeat(np.asarray(image)[None], 3, axis=0)


def test_image_first_generator_makes_every_image_then_every_video(tmp_path):
    from videobench.methods import ImageFirstGenerator

    suite = make_suite(3)
    generator = TwoPhase(fail_image={"s1-p0"})
    assert isinstance(generator, ImageFirstGenerator)
    summary = run_generation(generator, suite, suite.cases, tmp_path, progress=False)
    assert generator.images == ["s0-p0", "s1-p0", "s2-p0"] and generator.ended == 1
    assert generator.videos == ["s0-p0", "s2-p0"]  # the case whose image failed is not animated
    assert summary.images == ["s0-p0", "s2-p0"] and list(summary.failed) == ["s1-p0"]
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(tmp_path / "twophase" / "cases.jsonl")}
    assert records["s0-p0"]["image"] == "images/s0-p0.png" and records["s0-p0"]["status"] == "ok"
    assert "stage 1 broke" in records["s1-p0"]["error"]
    video = read_video(tmp_path / "twophase" / "videos" / "s0-p0.mp4").frames
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "twophase" / "images" / "s0-p0.png"))
    assert np.abs(video[0].astype(int) - image.astype(int)).mean() < 3  # the video holds the kept image


def test_image_and_video_phases_as_separate_runs_redo_nothing(tmp_path):
    suite = make_suite(2)
    first = TwoPhase(phases=("image",))
    summary = run_generation(first, suite, suite.cases, tmp_path, progress=False)
    assert first.images == ["s0-p0", "s1-p0"] and first.videos == [] and summary.generated == []
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(tmp_path / "twophase" / "cases.jsonl")}
    assert {r["status"] for r in records.values()} == {"pending"} and records["s0-p0"]["image"] == "images/s0-p0.png"
    second = TwoPhase(phases=("video",))
    summary = run_generation(second, suite, suite.cases, tmp_path, progress=False)
    assert second.images == [] and second.videos == ["s0-p0", "s1-p0"] and summary.ok
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(tmp_path / "twophase" / "cases.jsonl")}
    assert {r["status"] for r in records.values()} == {"ok"} and records["s1-p0"]["image"] == "images/s1-p0.png"
    # both phases again: everything is done, nothing is made twice
    third = TwoPhase()
    summary = run_generation(third, suite, suite.cases, tmp_path, progress=False)
    assert third.images == [] and third.videos == [] and summary.skipped == ["s0-p0", "s1-p0"]


def test_video_phase_without_images_fails_each_case_clearly(tmp_path):
    suite = make_suite(1)
    summary = run_generation(TwoPhase(phases=("video",)), suite, suite.cases, tmp_path, progress=False)
    assert "no intermediate image" in summary.failed["s0-p0"] and "run the image phase first" in summary.failed["s0-p0"]


def test_generation_output_diagnostics_and_image_are_recorded(tmp_path):
    from PIL import Image

    from videobench.methods import GenerationOutput

    class WithExtras(ColourGenerator):
        def generate(self, case, seed):
            frames = super().generate(case, seed)
            return GenerationOutput(frames, image=Image.new("RGB", (8, 8)), diagnostics={"coverage": 0.25})

    suite = make_suite(1)
    run_generation(WithExtras(), suite, suite.cases, tmp_path, progress=False)
    record = read_cases_jsonl(tmp_path / "colour" / "cases.jsonl")[0].record
    assert record["diagnostics"] == {"coverage": 0.25} and record["image"] == "images/s0-p0.png"
    assert (tmp_path / "colour" / "images" / "s0-p0.png").is_file()


def test_stale_temporary_files_of_a_killed_run_are_swept(tmp_path):
    import os
    import time

    suite = make_suite(1)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path, progress=False)
    folder = tmp_path / "colour"
    old = time.time() - 3600
    stale = [folder / "videos" / ".s0-p0.mp4.ab12cd34.mp4.part", folder / "videos" / ".s0-p0.mp4.ab12cd34.mp4",
             folder / ".cases.jsonl.zz99yy88.jsonl.part", folder / ".run.json.q1w2e3r4.json"]
    for path in stale:
        path.write_bytes(b"half a video")
        os.utime(path, (old, old))
    fresh = folder / "videos" / ".s1-p0.mp4.aaaabbbb.mp4.part"  # another node may be writing it right now
    fresh.write_bytes(b"in progress")
    held = folder / "videos" / ".s2-p0.mp4.ccccdddd.mp4"  # old, but a live process holds it open
    held.write_bytes(b"being written")
    os.utime(held, (old, old))
    user_file = folder / "videos" / ".hidden-note"  # not a temporary file of ours
    user_file.write_text("keep me")
    os.utime(user_file, (old, old))
    with open(held, "rb"):
        summary = run_generation(ColourGenerator(), suite, suite.cases, tmp_path, progress=False)
    assert sorted(summary.swept) == sorted(str(path) for path in stale)
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and held.exists() and user_file.exists()


def test_each_video_is_recorded_with_its_sha256_and_seed(tmp_path):
    suite = make_suite(2)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path, seed=4, progress=False)
    method_dir = tmp_path / "colour"
    for line in read_cases_jsonl(method_dir / "cases.jsonl"):
        video = method_dir / line.record["video"]
        assert line.record["video_sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
        assert line.record["seed"] == 4


def test_resume_makes_again_a_video_the_run_did_not_write(tmp_path):
    """A video copied in from another run (other bytes than recorded) and a record whose seed is not the run's
    are reported and generated again, not skipped."""
    suite = make_suite(3)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path / "a", seed=1, progress=False)
    run_generation(ColourGenerator(), suite, suite.cases, tmp_path / "b", seed=2, progress=False)
    mine, other = tmp_path / "a" / "colour", tmp_path / "b" / "colour"
    (mine / "videos" / "s0-p0.mp4").write_bytes((other / "videos" / "s0-p0.mp4").read_bytes())
    records = [line.record for line in read_cases_jsonl(mine / "cases.jsonl")]
    records[1]["seed"] = 7
    with open(mine / "cases.jsonl", "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)

    generator = ColourGenerator()
    summary = run_generation(generator, suite, suite.cases, tmp_path / "a", seed=1, progress=False)
    assert sorted(generator.calls) == ["s0-p0", "s1-p0"] and summary.skipped == ["s2-p0"]
    assert "not the one this run wrote" in summary.replaced["s0-p0"]
    assert summary.replaced["s1-p0"] == "case seed 7 differs from the run's seed 1 (run.json): not made by this run"
    fresh = tmp_path / "c"
    run_generation(ColourGenerator(), suite, suite.cases[:1], fresh, seed=1, progress=False)
    assert (mine / "videos" / "s0-p0.mp4").read_bytes() == (fresh / "colour" / "videos" / "s0-p0.mp4").read_bytes()
    assert all(line.record["seed"] == 1 for line in read_cases_jsonl(mine / "cases.jsonl"))
