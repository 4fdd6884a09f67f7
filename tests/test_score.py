"""``score_results`` end to end on a RESULTS folder built here, with small fake metrics of known answers.

The fakes implement the Metric protocol on mean colours, so every expected number can be worked out by
hand: a red still video scored against a red reference has CLIP-I 1 and T.Cons 1; a video alternating
red and blue frames has CLIP-I 0.5 (half the frames match), T.Cons 0 and is dynamic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mediaio.video import write_video
from videobench import results as layout
from videobench.leaderboard import aggregate, bootstrap_ci
from videobench.metrics.base import Metric, MetricInput
from videobench.scoring.compute import select_columns
from videobench.scoring.runner import read_scores, score_results

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
H, W = 128, 160


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _mean_colours(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64).mean(axis=(1, 2)) + 1e-3


class FakeClip:
    """clip_t = len(prompt) / 1000; clip_i = mean cos(mean colour of frame, of reference); t_cons likewise."""

    family = "clip"
    columns = ("clip_t", "clip_i", "t_cons")

    def __init__(self, random_weights: bool = False, version: int = 1, fail_after: int | None = None):
        self.random_weights = random_weights
        self.version = version
        self.calls = 0
        self.fail_after = fail_after

    def config(self):
        return {"model": "mean-colour", "version": self.version}

    def score(self, sample: MetricInput, columns=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a user pressing Ctrl-C mid-run
        self.calls += 1
        frames = _mean_colours(sample.frames)
        refs = [np.asarray(ref, dtype=np.float64).mean(axis=(0, 1)) + 1e-3 for ref in sample.references]
        values = {
            "clip_t": len(sample.prompt) / 1000,
            "clip_i": float(np.mean([_cos(f, r) for f in frames for r in refs])),
            "t_cons": float(np.mean([_cos(a, b) for a, b in zip(frames[:-1], frames[1:])])),
        }
        return {key: values[key] for key in (columns or self.columns)}


class FakeDino:
    """dino_i = width of the first reference / 1000 (checks the references reached the metric)."""

    family = "dino"
    columns = ("dino_i",)
    random_weights = False

    def __init__(self):
        self.calls = 0

    def config(self):
        return {"model": "ref-width"}

    def score(self, sample, columns=None):
        self.calls += 1
        assert all(ref.mode == "RGB" for ref in sample.references)
        return {"dino_i": sample.references[0].size[0] / 1000}


class FakeDynamic:
    """dynamic = 1 when consecutive mean colours differ by more than 10 grey levels; pair count as diagnostic."""

    family = "dynamic"
    columns = ("dynamic",)
    random_weights = False

    def __init__(self):
        self.calls = 0

    def config(self):
        return {"model": "colour-jump"}

    def score(self, sample, columns=None):
        self.calls += 1
        jumps = np.abs(np.diff(_mean_colours(sample.frames), axis=0)).max(axis=1)
        return {"dynamic": int((jumps > 10).any()), "dd_pairs": len(jumps)}


class Exploding(FakeDynamic):
    def score(self, sample, columns=None):
        raise RuntimeError("boom")


def fake_metrics(**clip_kwargs):
    return [FakeClip(**clip_kwargs), FakeDino(), FakeDynamic()]


def solid(colours, h=H, w=W) -> np.ndarray:
    return np.stack([np.full((h, w, 3), colour, dtype=np.uint8) for colour in colours])


#: run.json fields of the method kinds the tests use (what ``videobench generate`` records from the registry).
REFERENCE_RUN = {"kind": "reference"}


def add_method(results: Path, name: str, cases: list[dict], suite: str = "smoke", raw_lines=(), run_json=True,
               run_info: dict | None = None):
    """Write RESULTS/<name>/ with run.json and cases.jsonl; each case dict may carry ``frames``."""
    folder = results / name
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    if run_json:
        layout.write_run_json(folder / "run.json", {"method": name, "suite": suite, "suite_version": "v-test",
                                                    **(run_info or {})})
    records = []
    for case in cases:
        case = dict(case)
        frames = case.pop("frames", None)
        record = {
            "case_id": case["case_id"], "subject": "ball", "prompt": "a red ball", "entity": "ball",
            "video": f"videos/{case['case_id']}.mp4", "seed": 0, "status": "ok", **case,
        }
        if frames is not None:
            write_video(folder / record["video"], frames, fps=8)
        records.append(record)
    with open(folder / "cases.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        for line in raw_lines:
            handle.write(line + "\n")
    return folder


@pytest.fixture()
def refs(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    Image.new("RGB", (200, 150), RED).save(folder / "red.png")
    rgba = np.zeros((150, 210, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    Image.fromarray(rgba, "RGBA").save(folder / "red_rgba.png")
    Image.new("CMYK", (220, 150), (0, 255, 255, 0)).save(folder / "red_cmyk.jpg", quality=95)
    Image.fromarray(np.full((150, 230), 65535, dtype=np.uint16)).save(folder / "white16.png")
    return folder


def build_results(tmp_path: Path, refs: Path) -> Path:
    """Two methods: ``alpha`` (2 good cases, a failed one, a corrupt video, a malformed line) and
    ``reference-still`` (a calibration method, 2 good cases)."""
    results = tmp_path / "RESULTS"
    add_method(results, "alpha", [
        {"case_id": "still", "frames": solid([RED] * 4), "references": [str(refs / "red.png")], "subject": "ball"},
        {"case_id": "flash", "frames": solid([RED, BLUE] * 2), "references": [str(refs / "red_rgba.png")],
         "subject": "cube", "prompt": "a <b>cube</b> flashing"},
        {"case_id": "gen-failed", "references": [str(refs / "red.png")], "status": "failed", "error": "CUDA OOM"},
        {"case_id": "corrupt", "references": [str(refs / "red.png")]},
    ], raw_lines=['{"case_id": "broken", "subject": '])
    (results / "alpha" / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + bytes(500))
    add_method(results, "reference-still", [
        {"case_id": "still", "frames": solid([RED] * 3), "references": [str(refs / "red_cmyk.jpg")]},
        {"case_id": "white", "frames": solid([(255, 255, 255)] * 3), "references": [str(refs / "white16.png")]},
    ], run_info=REFERENCE_RUN)
    return results


def run(results, metrics=None, **kwargs):
    lines: list[str] = []
    summary = score_results(results, metrics or fake_metrics(), progress=False, log=lines.append, **kwargs)
    return summary, lines


# ---------------------------------------------------------------------------------- known answers
def test_scores_and_leaderboard_known_answers(tmp_path, refs):
    results = build_results(tmp_path, refs)
    metrics = fake_metrics()
    summary, lines = run(results, metrics)

    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert list(scores.index) == ["still", "flash", "gen-failed", "corrupt", "line-5"]
    assert list(read_scores(results / "alpha" / "scores.csv").columns[:13]) == [
        "case_id", "suite", "subject", "clip_t", "clip_i", "dino_i", "t_cons", "dynamic",
        "num_frames", "fps", "height", "width", "error",
    ]
    still, flash = scores.loc["still"], scores.loc["flash"]
    assert still["clip_t"] == pytest.approx(0.010)
    assert still["clip_i"] == pytest.approx(1.0, abs=1e-3)
    assert still["t_cons"] == pytest.approx(1.0, abs=1e-6)
    assert still["dino_i"] == pytest.approx(0.200)
    assert still["dynamic"] == 0
    assert (still["num_frames"], still["fps"], still["height"], still["width"]) == (4, 8, H, W)
    assert flash["clip_t"] == pytest.approx(len("a <b>cube</b> flashing") / 1000)
    assert flash["clip_i"] == pytest.approx(0.5, abs=0.02)  # RGBA red reference composited as red
    assert flash["t_cons"] == pytest.approx(0.0, abs=0.03)
    assert flash["dino_i"] == pytest.approx(0.210)
    assert flash["dynamic"] == 1 and flash["dd_pairs"] == 3
    assert still["error"] == "" and flash["error"] == ""
    assert len(still["video_sha256"]) == 64 and still["random_weights"] == 0

    # every failure: one line naming the case and the file, in the log and in scores.csv
    assert "gen-failed" in scores.loc["gen-failed", "error"] and "CUDA OOM" in scores.loc["gen-failed", "error"]
    assert "corrupt.mp4" in scores.loc["corrupt", "error"] and "alpha case corrupt" in scores.loc["corrupt", "error"]
    assert "cases.jsonl:5" in scores.loc["line-5", "error"] and "malformed JSON" in scores.loc["line-5", "error"]
    assert np.isnan(scores.loc["corrupt", "clip_i"])
    for case_id in ("gen-failed", "corrupt", "line-5"):
        assert sum(case_id in line for line in lines) == 1, lines
    assert summary.failed and summary.exit_code == 1 and summary.n_failed == 3 and summary.n_scored == 4

    board = pd.read_csv(results / "leaderboard.csv").set_index("method")
    alpha = board.loc["alpha"]
    assert alpha["suite"] == "smoke" and alpha["suite_version"] == "v-test" and alpha["reference"] == 0
    assert (alpha["n_cases"], alpha["n_scored"], alpha["n_failed"]) == (5, 2, 3)
    assert alpha["clip_i"] == pytest.approx(100 * (still["clip_i"] + flash["clip_i"]) / 2, abs=1e-3)
    assert alpha["clip_i"] == pytest.approx(75.0, abs=1.0)
    assert alpha["dino_i"] == pytest.approx(20.5, abs=1e-3)
    assert alpha["dynamic"] == pytest.approx(50.0)  # D.D: percent of dynamic videos
    assert alpha["clip_i_ci_low"] <= alpha["clip_i"] <= alpha["clip_i_ci_high"]
    assert alpha["dynamic_ci_low"] == 0.0 and alpha["dynamic_ci_high"] == 100.0
    ref = board.loc["reference-still"]
    assert ref["reference"] == 1 and ref["n_scored"] == 2 and ref["n_failed"] == 0
    assert ref["clip_i"] == pytest.approx(100.0, abs=0.2)  # CMYK red and 16-bit white refs convert correctly
    assert ref["dino_i"] == pytest.approx(22.5)
    assert ref["t_cons"] == pytest.approx(100.0) and ref["t_cons_ci_low"] == ref["t_cons_ci_high"]
    assert ref["dynamic"] == 0.0 and ref["random_weights"] == 0


def test_cache_second_run_computes_nothing_and_changes_recompute(tmp_path, refs):
    results = build_results(tmp_path, refs)
    first, _ = run(results)
    before = (results / "alpha" / "scores.csv").read_text()
    metrics = fake_metrics()
    second, _ = run(results, metrics)
    assert [m.calls for m in metrics] == [0, 0, 0] and second.metric_calls == 0
    assert second.cache_hits == first.metric_calls == 12
    assert (results / "alpha" / "scores.csv").read_text() == before

    # a changed video and a changed prompt: only those cases are recomputed
    write_video(results / "alpha" / "videos" / "still.mp4", solid([GREEN] * 4))
    lines = (results / "reference-still" / "cases.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["prompt"] = "a white wall, longer prompt"
    (results / "reference-still" / "cases.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    metrics = fake_metrics()
    third, _ = run(results, metrics)
    assert [m.calls for m in metrics] == [2, 2, 2]
    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert scores.loc["still", "clip_i"] == pytest.approx(0.0, abs=0.02)  # green vs red reference

    # a new metric config (another model) is a cache miss for that metric only
    metrics = fake_metrics(version=2)
    run(results, metrics)
    assert [m.calls for m in metrics] == [4, 0, 0]


class ClipReadingPrompt(FakeClip):
    inputs = ("prompt", "references")


class DinoReadingReferences(FakeDino):
    inputs = ("references",)


class DynamicReadingTheVideoOnly(FakeDynamic):
    inputs = ()


def test_a_family_is_cached_on_the_inputs_it_reads(tmp_path, refs):
    """A family declaring ``inputs`` is keyed on the video and those inputs only: one clip scored against three
    prompts runs RAFT-like and reference-only families once, and a changed prompt or reference recomputes only
    the families that read it."""
    results = tmp_path / "RESULTS"
    flash = solid([RED, BLUE] * 2)
    add_method(results, "alpha", [
        {"case_id": f"p{i}", "frames": flash, "references": [str(refs / "red.png")], "prompt": prompt}
        for i, prompt in enumerate(["a cube", "a cube flashing", "a red and blue cube"])
    ])
    metrics = [ClipReadingPrompt(), DinoReadingReferences(), DynamicReadingTheVideoOnly()]
    summary, _ = run(results, metrics)
    assert [m.calls for m in metrics] == [3, 1, 1]  # the clip family reads the prompt; the others do not
    assert (summary.metric_calls, summary.cache_hits) == (5, 4)
    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert list(scores["clip_t"]) == pytest.approx([len("a cube") / 1000, len("a cube flashing") / 1000,
                                                   len("a red and blue cube") / 1000])
    assert set(scores["dino_i"]) == {0.2} and set(scores["dynamic"]) == {1} and set(scores["dd_pairs"]) == {3}

    # a new prompt: only the clip family runs; another reference: clip and dino run, dynamic is reused
    lines = [json.loads(line) for line in (results / "alpha" / "cases.jsonl").read_text().splitlines()]
    lines[0]["prompt"] = "a flashing cube"
    lines[1]["references"] = [str(refs / "red_cmyk.jpg")]
    (results / "alpha" / "cases.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = [ClipReadingPrompt(), DinoReadingReferences(), DynamicReadingTheVideoOnly()]
    run(results, metrics)
    assert [m.calls for m in metrics] == [2, 1, 0]
    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert scores.loc["p1", "dino_i"] == pytest.approx(0.22) and scores.loc["p0", "dino_i"] == pytest.approx(0.2)

    # families without ``inputs`` are keyed on all of them (third-party plugins keep the safe default)
    metrics = fake_metrics()
    run(results, metrics, cache_dir=tmp_path / "fresh-cache")
    assert [m.calls for m in metrics] == [3, 3, 3]


def test_resume_after_interruption(tmp_path, refs):
    results = build_results(tmp_path, refs)
    with pytest.raises(KeyboardInterrupt):
        run(results, fake_metrics(fail_after=3))
    assert not (results / "leaderboard.csv").exists()
    assert not list(results.rglob("*.part"))  # nothing half-written
    metrics = fake_metrics()
    summary, _ = run(results, metrics)
    assert metrics[0].calls == 1  # 4 scorable videos, 3 done before the interruption
    assert metrics[1].calls == 1 and metrics[2].calls == 1
    board = pd.read_csv(results / "leaderboard.csv").set_index("method")
    assert board.loc["alpha", "n_scored"] == 2 and board.loc["reference-still", "n_scored"] == 2


def test_metrics_subset_carries_other_columns(tmp_path, refs):
    results = build_results(tmp_path, refs)
    run(results)
    full = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    dino = FakeDino()
    summary, _ = run(results, [dino], columns=["dino_i"])
    assert dino.calls == 0  # cached
    subset = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    pd.testing.assert_series_equal(subset["clip_i"], full["clip_i"])
    # on a fresh folder, only the selected columns exist
    fresh = build_results(tmp_path / "fresh", refs)
    dino = FakeDino()
    run(fresh, [*fake_metrics()], columns=["dino"])
    scores = read_scores(fresh / "alpha" / "scores.csv").set_index("case_id")
    assert scores.loc["still", "dino_i"] == pytest.approx(0.2) and np.isnan(scores.loc["still", "clip_t"])


def test_metrics_subset_keeps_diagnostics_and_never_carries_stale_scores(tmp_path, refs):
    results = build_results(tmp_path, refs)
    run(results)
    full = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert full.loc["flash", "dd_pairs"] == 3
    run(results, [FakeDino()], columns=["dino_i"])
    subset = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    # the dynamic metric's diagnostic stays with its carried-over score
    assert subset.loc["flash", "dynamic"] == 1 and subset.loc["flash", "dd_pairs"] == 3

    # A corrected reference image (same video): the carried CLIP-I would be stale, so it is not carried.
    cases = results / "alpha" / "cases.jsonl"
    lines = cases.read_text().splitlines()
    record = json.loads(lines[0])
    assert record["case_id"] == "still"
    Image.new("RGB", (200, 150), BLUE).save(refs / "blue.png")
    record["references"] = [str(refs / "blue.png")]
    cases.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    run(results, [FakeDino()], columns=["dino_i"])
    fixed = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert np.isnan(fixed.loc["still", "clip_i"])
    assert fixed.loc["flash", "clip_i"] == pytest.approx(full.loc["flash", "clip_i"])  # untouched case still carried
    # ...and the leaderboard's CLIP-I mean now covers 1 of 2 scored cases: a warning says so.
    _, lines = run(results, [FakeDino()], columns=["dino_i"])
    assert any("alpha: clip_i is missing for 1 of 2 scored case(s) (still)" in line for line in lines)
    assert not any("dino_i is missing" in line for line in lines)


def test_select_columns():
    clip, dino, dyn = fake_metrics()
    plan = select_columns([clip, dino, dyn], ["dynamic", "clip_t"])
    assert [(m.family, cols) for m, cols in plan] == [("clip", ("clip_t",)), ("dynamic", ("dynamic",))]
    assert [cols for _, cols in select_columns([clip], ["clip"])] == [("clip_t", "clip_i", "t_cons")]
    with pytest.raises(ValueError, match="unknown metric"):
        select_columns([clip], ["clip_x"])
    with pytest.raises(ValueError, match="no metric was built for dino_i"):
        select_columns([clip], ["dino_i"])
    with pytest.raises(TypeError, match="Metric protocol"):
        select_columns([object()])
    assert all(isinstance(m, Metric) for m in (clip, dino, dyn))


def test_random_weights_are_stamped(tmp_path, refs):
    results = build_results(tmp_path, refs)
    run(results, fake_metrics(random_weights=True))
    assert set(read_scores(results / "alpha" / "scores.csv")["random_weights"]) == {1}
    assert set(pd.read_csv(results / "leaderboard.csv")["random_weights"]) == {1}


# ------------------------------------------------------------------------------------ bad input
def test_each_bad_input_gets_one_line_naming_case_and_file(tmp_path, refs):
    results = tmp_path / "RESULTS"
    good = solid([RED] * 3)
    folder = add_method(results, "bad", [
        {"case_id": "ok", "frames": good, "references": [str(refs / "red.png")]},
        {"case_id": "empty", "references": [str(refs / "red.png")]},
        {"case_id": "truncated", "references": [str(refs / "red.png")]},
        {"case_id": "oneframe", "frames": solid([RED]), "references": [str(refs / "red.png")]},
        {"case_id": "tiny", "frames": solid([RED] * 3, h=64, w=96), "references": [str(refs / "red.png")]},
        {"case_id": "noref", "frames": good, "references": [str(refs / "gone.png")]},
        {"case_id": "badref", "frames": good, "references": [str(refs / "garbage.png")]},
        {"case_id": "escape", "references": [str(refs / "red.png")], "video": "../../outside.mp4"},
        {"case_id": "novideo", "references": [str(refs / "red.png")]},
        {"case_id": "relref", "frames": good, "references": ["../../refs/red.png"]},
        {"case_id": "explode", "frames": good, "references": [str(refs / "red.png")]},
    ], raw_lines=['[1, 2]', '{"case_id": "nofields"}', "", "{not json"])
    (folder / "videos" / "empty.mp4").write_bytes(b"")
    data = (folder / "videos" / "ok.mp4").read_bytes()
    (folder / "videos" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (refs / "garbage.png").write_bytes(b"GIF89a" + bytes(40))
    (results / "stray.txt").write_text("notes")
    (results / "junk").mkdir()
    (results / "orphan" / "videos").mkdir(parents=True)  # a method folder that lost its cases.jsonl
    (folder / "videos" / "unlisted.mp4").write_bytes(b"x")
    write_video(tmp_path / "outside.mp4", good)

    class Picky(FakeDynamic):
        def score(self, sample, columns=None):
            if sample.frames.shape[0] == 3 and sample.prompt == "explode":
                raise RuntimeError("flow diverged")
            return super().score(sample, columns)

    for_explode = json.loads((folder / "cases.jsonl").read_text().splitlines()[10])
    assert for_explode["case_id"] == "explode"
    text = (folder / "cases.jsonl").read_text().replace(
        '"case_id": "explode", "subject": "ball", "prompt": "a red ball"',
        '"case_id": "explode", "subject": "ball", "prompt": "explode"')
    (folder / "cases.jsonl").write_text(text)

    summary, lines = run(results, [FakeClip(), FakeDino(), Picky()])
    scores = read_scores(folder / "scores.csv").set_index("case_id")
    expected = {
        "empty": "empty.mp4: video file is empty",
        "truncated": "truncated.mp4",
        "oneframe": "oneframe.mp4: 1 decodable frame(s), at least 2 needed",
        "tiny": "tiny.mp4: frames are 64x96 px",
        "noref": "gone.png is missing",
        "badref": "garbage.png",
        "escape": "escapes",
        "novideo": "novideo.mp4: video file is missing",
        "explode": "dynamic metric failed on",
        "line-12": "cases.jsonl:12: expected a JSON object",
        "nofields": "cases.jsonl:13: missing field(s)",
        "line-15": "cases.jsonl:15: malformed JSON",
    }
    for case_id, fragment in expected.items():
        assert fragment in scores.loc[case_id, "error"], (case_id, scores.loc[case_id, "error"])
        assert f"case {case_id}" in scores.loc[case_id, "error"]
        assert sum(f"case {case_id}:" in line for line in lines) == 1, (case_id, lines)
    assert scores.loc["ok", "error"] == "" and scores.loc["ok", "clip_i"] == pytest.approx(1.0, abs=1e-3)
    assert scores.loc["relref", "error"] == ""  # relative reference resolved against the method folder
    assert summary.n_scored == 2 and summary.n_failed == len(expected) and summary.exit_code == 1
    assert any("stray.txt" in w for w in summary.warnings) and any("junk" in w for w in summary.warnings)
    assert any("unlisted.mp4" in w for w in summary.warnings)
    assert not any("stray.txt" in e for e in summary.errors)
    assert [e for e in summary.errors if "orphan" in e] == [f"{results / 'orphan'}: looks like a method folder "
                                                             "but has no cases.jsonl; not scored"]


def test_missing_results_and_empty_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_results(tmp_path / "nope", fake_metrics(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no method folder \(a folder holding cases.jsonl\) to score"):
        run(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # no header-only leaderboard.csv


# ------------------------------------------------------------------------------------ bootstrap
def _naive_bootstrap(values, n_resamples=1000, seed=0, confidence=0.95):
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        sample = [values[i] for i in rng.integers(0, len(values), size=len(values))]
        means.append(sum(sample) / len(sample))
    means.sort()
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def test_bootstrap_matches_naive_loop_and_edge_cases():
    values = list(np.random.default_rng(3).normal(30.0, 5.0, size=57))
    low, high = bootstrap_ci(values, seed=7)
    naive = _naive_bootstrap(values, seed=7)
    assert (low, high) == pytest.approx(naive, abs=1e-9)
    assert low < np.mean(values) < high
    # ~ the normal-theory interval mean +- 1.96 sd / sqrt(n)
    half = 1.96 * np.std(values) / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci([0.3] * 10) == (0.3, 0.3)
    assert bootstrap_ci([5.0]) == (5.0, 5.0)
    assert all(np.isnan(bootstrap_ci([])))
    assert bootstrap_ci([1.0, float("nan"), 1.0]) == (1.0, 1.0)
    assert bootstrap_ci(values, seed=7) == (low, high)  # deterministic


def test_aggregate_excludes_failed_rows():
    frame = pd.DataFrame({
        "method": ["m"] * 4, "subject": ["a", "a", "b", "b"],
        "clip_t": [0.2, 0.4, 0.9, np.nan], "dynamic": [1, 0, 1, np.nan],
        "error": ["", "", "", "case x: broken"], "random_weights": [0, 0, 1, 0],
    })
    table = aggregate(frame, by=["method"], columns=("clip_t", "dynamic"))
    row = table.iloc[0]
    assert row["clip_t"] == pytest.approx(50.0) and row["dynamic"] == pytest.approx(100 * 2 / 3)
    assert (row["n_cases"], row["n_scored"], row["n_failed"], row["random_weights"]) == (4, 3, 1, 1)
    by_subject = aggregate(frame, by=["method", "subject"], columns=("clip_t",)).set_index("subject")
    assert by_subject.loc["a", "clip_t"] == pytest.approx(30.0) and by_subject.loc["b", "n_scored"] == 1


def test_duplicate_case_lines_and_summary_text(tmp_path, refs):
    results = tmp_path / "RESULTS"
    folder = add_method(results, "dup", [
        {"case_id": "a", "frames": solid([RED] * 3), "references": [str(refs / "red.png")], "status": "failed",
         "error": "first try"},
    ], run_json=False)
    record = json.loads((folder / "cases.jsonl").read_text())
    record.update(status="ok", suite="smoke")  # a resumed run appended the successful retry
    with open(folder / "cases.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    summary, lines = run(results)
    scores = read_scores(folder / "scores.csv")
    assert list(scores["case_id"]) == ["a"] and scores.loc[0, "error"] == "" and scores.loc[0, "suite"] == "smoke"
    assert any("superseded by line 2" in w for w in summary.warnings)
    assert any("run.json is missing" in w for w in summary.warnings)
    assert summary.ok and summary.exit_code == 0
    text = summary.describe()
    assert "dup: 1 case(s), 1 scored, 0 failed" in text and "leaderboard:" in text and "FAILED" not in text


def test_reference_images_kept_in_the_method_folder_are_not_stray(tmp_path, refs):
    """A foreign tool may keep each case's reference beside its videos (a path relative to the method folder)."""
    results = tmp_path / "RESULTS"
    folder = add_method(results, "tool", [
        {"case_id": "c1", "frames": solid([RED] * 3), "references": ["refs/red.png"]},
        {"case_id": "c2", "frames": solid([RED] * 3), "references": 5},  # malformed: an error, not a crash
    ])
    (folder / "refs").mkdir()
    (folder / "refs" / "red.png").write_bytes((refs / "red.png").read_bytes())
    (folder / "notes.txt").write_text("really stray")
    summary, lines = run(results)
    assert summary.methods[0].n_scored == 1 and "tool case c2: no reference images listed" in summary.errors[0]
    assert any("notes.txt: stray file" in line for line in lines)
    assert not any("refs" in line and "stray" in line for line in lines)


def test_a_null_or_empty_video_path_is_named_as_such(tmp_path, refs):
    results = tmp_path / "RESULTS"
    add_method(results, "tool", [
        {"case_id": "c1", "frames": solid([RED] * 3), "references": [str(refs / "red.png")]},
        {"case_id": "c2", "references": [str(refs / "red.png")], "video": None},
        {"case_id": "c3", "references": [str(refs / "red.png")], "video": ""},
    ])
    summary, _ = run(results)
    assert summary.methods[0].n_scored == 1
    # not "tool/None: video file is missing", nor the method folder itself taken for the video
    assert summary.errors[0].startswith("tool case c2: no video path (video: None) in ")
    assert summary.errors[1].startswith("tool case c3: no video path (video: '') in ")


def test_metrics_subset_never_mixes_two_configurations_of_one_model(tmp_path, refs):
    """`--metrics clip_t` with another CLIP model must not keep the old model's CLIP-I / T.Cons next to it."""
    results = build_results(tmp_path, refs)
    run(results)
    first = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert first.loc["flash", "clip_i"] == pytest.approx(0.5, abs=0.02)
    # Same configuration, subset: the other CLIP columns are carried over (nothing recomputed needlessly).
    run(results, fake_metrics(), columns=["clip_t"])
    same = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert same.loc["flash", "clip_i"] == first.loc["flash", "clip_i"]
    # Another configuration of the CLIP family: its other columns are dropped, DINO / D.D (not run) are kept.
    run(results, fake_metrics(version=2), columns=["clip_t"])
    other = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert pd.isna(other.loc["flash", "clip_i"]) and pd.isna(other.loc["flash", "t_cons"])
    assert not pd.isna(other.loc["flash", "clip_t"])
    assert other.loc["flash", "dino_i"] == first.loc["flash", "dino_i"] and other.loc["flash", "dynamic"] == 1
    assert other.loc["flash", "dino_config_sha256"] == first.loc["flash", "dino_config_sha256"]
    assert other.loc["flash", "clip_config_sha256"] != first.loc["flash", "clip_config_sha256"]


# ------------------------------------------------------------------------------- trust and bad input
def test_a_score_cache_shipped_inside_results_is_never_read(tmp_path, refs):
    """The cache lives outside RESULTS: a forged `.score_cache` in a folder someone hands you changes nothing."""
    results = build_results(tmp_path, refs)
    cache = tmp_path / "cache"
    honest, _ = run(results, cache_dir=cache)
    clip_i = read_scores(results / "alpha" / "scores.csv").set_index("case_id").loc["still", "clip_i"]
    # forge: copy the honest cache into RESULTS with clip_i = 0.999 everywhere, delete the scores
    forged_root = results / ".score_cache"
    for entry in cache.rglob("*.json"):
        value = json.loads(entry.read_text())
        if "clip_i" in value.get("values", {}):
            value["values"]["clip_i"] = 0.999
        target = forged_root / entry.relative_to(cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    (results / "alpha" / "scores.csv").unlink()
    again, _ = run(results)  # the default cache: VIDEOBENCH_SCORE_CACHE, never RESULTS/.score_cache
    assert again.metric_calls == honest.metric_calls and again.cache_hits == 0
    assert read_scores(results / "alpha" / "scores.csv").set_index("case_id").loc["still", "clip_i"] == clip_i != 0.999
    assert not any("stray" in warning and ".score_cache" in warning for warning in again.warnings)


def test_a_reference_that_is_not_a_regular_file_fails_its_case_only(tmp_path, refs):
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    results = tmp_path / "RESULTS"
    add_method(results, "alpha", [
        {"case_id": "fifo", "frames": solid([RED] * 3), "references": [str(fifo)]},
        {"case_id": "device", "frames": solid([RED] * 3), "references": ["/dev/zero"]},
        {"case_id": "good", "frames": solid([RED] * 3), "references": [str(refs / "red.png")]},
    ])
    summary, lines = run(results)  # must return: hashing a FIFO or /dev/zero would never end
    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert "not a regular file" in scores.loc["fifo", "error"] and "fifo.png" in scores.loc["fifo", "error"]
    assert "/dev/zero" in scores.loc["device", "error"] and scores.loc["good", "error"] == ""
    assert summary.n_failed == 2 and summary.n_scored == 1


def test_a_lone_surrogate_in_cases_jsonl_is_one_line_error(tmp_path, refs):
    results = tmp_path / "RESULTS"
    add_method(results, "alpha", [
        {"case_id": "good", "frames": solid([RED] * 3), "references": [str(refs / "red.png")]},
    ], raw_lines=['{"case_id": "bad", "subject": "x\\udcff", "prompt": "p", "entity": "e", "references": [], '
                  '"video": "videos/bad.mp4", "status": "ok"}'])
    summary, lines = run(results)
    scores = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert "cases.jsonl:2" in scores.loc["line-2", "error"] and "lone surrogate" in scores.loc["line-2", "error"]
    assert scores.loc["good", "error"] == "" and summary.n_scored == 1
    from videobench.reporting import write_report

    html = write_report(results, progress=False).read_text(encoding="utf-8")  # the report does not crash
    assert "lone surrogate" in html


def test_a_video_the_run_did_not_write_is_a_case_error(tmp_path, refs):
    """cases.jsonl records each video's sha256 and seed: a video copied in from another run, or a case whose
    seed is not run.json's, is one error naming the case and the file; the other cases are scored."""
    import hashlib

    results = tmp_path / "RESULTS"
    red = [str(refs / "red.png")]
    folder = add_method(results, "alpha", [
        {"case_id": "mine", "frames": solid([RED] * 3), "references": red},
        {"case_id": "copied", "frames": solid([RED] * 3), "references": red},
        {"case_id": "reseeded", "frames": solid([RED] * 3), "references": red, "seed": 9},
    ], run_info={"seed": 0})
    records = [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]
    for record in records:
        record["video_sha256"] = hashlib.sha256((folder / record["video"]).read_bytes()).hexdigest()
    (folder / "cases.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    write_video(folder / "videos" / "copied.mp4", solid([BLUE] * 3), fps=8)  # another run's video

    summary, lines = run(results)
    scores = read_scores(folder / "scores.csv").set_index("case_id")
    assert scores.loc["mine", "error"] == ""
    copied = scores.loc["copied", "error"]
    assert copied.startswith(f"alpha case copied: {folder.resolve() / 'videos' / 'copied.mp4'}: the video is not the "
                             "one this run wrote (sha256 ")
    assert scores.loc["reseeded", "error"] == (
        f"alpha case reseeded: {folder.resolve() / 'videos' / 'reseeded.mp4'}: case seed 9 differs from the run's "
        "seed 0 (run.json): not made by this run; generate it again (videobench generate resumes it)")
    assert summary.exit_code == 1 and summary.n_scored == 1
    assert sum("copied" in line for line in lines) == 1


def test_a_changed_metric_option_recomputes_only_that_family(tmp_path, refs):
    """Real metrics built from options (random weights, a one-block DINO, one RAFT update): ``-M
    dynamic.rule=...`` the second time recomputes the dynamic degree of each case and no DINO-I."""
    from videobench.metrics import build_metrics
    from videobench.weights import WeightsConfig

    results = build_results(tmp_path, refs)
    tiny = {"dino": {"model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}}, "dynamic": {"num_flow_updates": 1}}

    def counted(options):
        metrics = build_metrics(("dino_i", "dynamic"), WeightsConfig(), random_weights=True, options=options)
        calls = {metric.family: 0 for metric in metrics}
        for metric in metrics:
            def score(sample, columns=None, metric=metric, score=metric.score):
                calls[metric.family] += 1
                return score(sample, columns)
            metric.score = score
        return metrics, calls

    metrics, calls = counted(tiny)
    first, _ = run(results, metrics, cache_dir=tmp_path / "cache")
    assert calls == {"dino": 4, "dynamic": 4}  # the 4 good cases
    before = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    metrics, calls = counted({**tiny, "dynamic": {**tiny["dynamic"], "rule": "vbench-2024-fps-scaled"}})
    run(results, metrics, cache_dir=tmp_path / "cache")
    assert calls == {"dino": 0, "dynamic": 4}
    after = read_scores(results / "alpha" / "scores.csv").set_index("case_id")
    assert after.loc["flash", "dino_i"] == before.loc["flash", "dino_i"]
    assert after.loc["flash", "dynamic_config_sha256"] != before.loc["flash", "dynamic_config_sha256"]
