"""Videos made elsewhere: ``videobench suites NAME --export`` and ``videobench import`` (videobench.interchange)."""

from __future__ import annotations

import csv
import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from mediaio.video import write_video
from videobench.cli import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, main
from videobench.interchange import EXPORT_FIELDS, IMPORTED_KIND, ImportFolderError, export_cases, import_videos
from videobench.suites import load_suite


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture()
def smoke(env):
    return load_suite("smoke", env / "data")


@pytest.fixture()
def tool_folder(tmp_path, smoke):
    """A folder as another tool leaves it: one video per case, named by case id, frames that depend on the case."""
    import numpy as np

    folder = tmp_path / "made-elsewhere"
    folder.mkdir()
    for index, case in enumerate(smoke.cases):
        frames = np.zeros((6, 128, 160, 3), dtype=np.uint8)
        frames[:, :, :, index % 3] = np.linspace(40, 220, 6, dtype=np.uint8)[:, None, None]
        write_video(folder / f"{case.case_id}.mp4", frames, fps=12)
    return folder


def test_export_jsonl_and_csv_carry_every_case(tmp_path, smoke):
    rows = [json.loads(line) for line in export_cases(smoke, tmp_path / "c.jsonl", seed=7).read_text().splitlines()]
    assert [row["case_id"] for row in rows] == [case.case_id for case in smoke.cases]
    assert list(rows[0]) == list(EXPORT_FIELDS)
    first = smoke.cases[0]
    assert rows[0]["prompt"] == first.prompt and rows[0]["entity"] == first.entity and rows[0]["seed"] == 7
    assert rows[0]["references"] == list(first.references)

    with open(export_cases(smoke, tmp_path / "c.csv"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["case_id"] for row in table] == [case.case_id for case in smoke.cases]
    assert table[0]["references"].split(";") == list(first.references)
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        export_cases(smoke, tmp_path / "c.txt")


def test_import_score_report_like_any_method(env, tool_folder):
    results = env / "results"
    out = invoke("import", str(tool_folder), "--suite", "smoke", "--method", "my-model", "--out", str(results))
    assert out.exit_code == 0, out.output
    assert "4 video(s) imported, 0 missing" in out.output
    method_dir = results / "my-model"
    info = json.loads((method_dir / "run.json").read_text())
    assert info["kind"] == IMPORTED_KIND and info["method"] == "my-model" and info["suite"] == "smoke"
    assert info["fps"] == 12 and info["random_weights"] is False
    for case_file in tool_folder.iterdir():  # copied byte for byte, never re-encoded
        assert (method_dir / "videos" / case_file.name).read_bytes() == case_file.read_bytes()

    scored = invoke("score", str(results), "--random-weights", "--metrics", "clip")
    assert scored.exit_code == 0, scored.output
    board = pd.read_csv(results / "leaderboard.csv")
    assert board.loc[0, "method"] == "my-model" and board.loc[0, "kind"] == IMPORTED_KIND
    assert board.loc[0, "n_scored"] == 4
    assert invoke("report", str(results)).exit_code == 0
    assert "my-model" in (results / "leaderboard.html").read_text()


def test_import_with_a_mapping_file(env, tmp_path, smoke, tool_folder):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    mapping = tmp_path / "map.csv"
    lines = ["file,case_id"]
    for index, case in enumerate(smoke.cases):
        shutil.copyfile(tool_folder / f"{case.case_id}.mp4", renamed / f"sample_{index:03d}.mp4")
        lines.append(f"sample_{index:03d}.mp4,{case.case_id}")
    mapping.write_text("\n".join(lines) + "\n")
    out = invoke("import", str(renamed), "--suite", "smoke", "--method", "mapped", "--out", str(tmp_path / "r"),
                 "--mapping", str(mapping))
    assert out.exit_code == 0, out.output
    records = [json.loads(line) for line in (tmp_path / "r" / "mapped" / "cases.jsonl").read_text().splitlines()]
    assert [(r["case_id"], r["source"], r["status"]) for r in records] == [
        (case.case_id, f"sample_{i:03d}.mp4", "ok") for i, case in enumerate(smoke.cases)]


def test_missing_and_undecodable_videos_are_named_and_nothing_is_written(tmp_path, smoke, tool_folder):
    out = tmp_path / "results"
    missing = smoke.cases[1].case_id
    (tool_folder / f"{missing}.mp4").unlink()
    with pytest.raises(ImportFolderError, match=rf"1 of 4 case\(s\) have no video: {missing}"):
        import_videos(tool_folder, smoke, "m", out)
    assert not out.exists()

    broken = smoke.cases[2].case_id
    (tool_folder / f"{broken}.mp4").write_bytes(b"not a video")
    with pytest.raises(ImportFolderError, match=rf"1 video\(s\) cannot be used: {broken}: .*{broken}\.mp4"):
        import_videos(tool_folder, smoke, "m", out, allow_missing=True)
    assert not out.exists()

    (tool_folder / f"{broken}.mp4").unlink()
    result = import_videos(tool_folder, smoke, "m", out, allow_missing=True, seed=3)
    assert result.imported == [smoke.cases[0].case_id, smoke.cases[3].case_id] and not result.ok
    records = {json.loads(line)["case_id"]: json.loads(line) for line in (out / "m" / "cases.jsonl").open()}
    assert records[missing]["status"] == "failed" and "no video" in records[missing]["error"]
    assert records[smoke.cases[0].case_id]["seed"] == 3


def test_import_refuses_a_taken_label_and_a_path_as_label(tmp_path, smoke, tool_folder):
    out = tmp_path / "results"
    import_videos(tool_folder, smoke, "m", out)
    with pytest.raises(ImportFolderError, match="exists; choose another --method label or --overwrite"):
        import_videos(tool_folder, smoke, "m", out)
    assert import_videos(tool_folder, smoke, "m", out, overwrite=True).ok
    for label in ("../escaped", ".hidden", "a/b"):
        with pytest.raises(ImportFolderError, match="plain name"):
            import_videos(tool_folder, smoke, label, out)
    assert sorted(path.name for path in out.iterdir()) == ["m"] and not (tmp_path / "escaped").exists()


def test_cli_exit_codes(env, tool_folder):
    results = env / "results"
    (tool_folder / next(tool_folder.iterdir()).name).unlink()
    refused = invoke("import", str(tool_folder), "--suite", "smoke", "--method", "m", "--out", str(results))
    assert refused.exit_code == EXIT_SETUP_ERROR and "have no video" in refused.output
    partial = invoke("import", str(tool_folder), "--suite", "smoke", "--method", "m", "--out", str(results),
                     "--allow-missing")
    assert partial.exit_code == EXIT_CASE_FAILURES and "3 video(s) imported, 1 missing" in partial.output


def test_suites_show_and_export_through_the_cli(env, tmp_path):
    shown = invoke("suites", "smoke")
    assert shown.exit_code == 0 and "cases: 4" in shown.output and "subjects: blue_square" in shown.output
    exported = invoke("suites", "smoke", "--export", str(tmp_path / "cases.jsonl"), "--seed", "5")
    assert exported.exit_code == 0 and len((tmp_path / "cases.jsonl").read_text().splitlines()) == 4
    missing = invoke("suites", "dreambench", "--data-root", str(tmp_path / "empty"))
    assert missing.exit_code == EXIT_SETUP_ERROR
    assert f"videobench data download dreambench --data-root {tmp_path / 'empty'}" in missing.output
    assert invoke("suites", "--export", str(tmp_path / "x.jsonl")).exit_code == EXIT_SETUP_ERROR
