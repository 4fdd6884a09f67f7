"""``videobench reproduce``: the plan of Table 1 / Table 2 from the published tables and the registry, and the whole
plan on CPU with the tiny presets on the smoke suite (the CI check of the reproduce plan)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import invoke
from tests.test_report import read_tables
from videobench.cli import EXIT_SETUP_ERROR
from videobench.methods import MethodContext
from videobench.reproduction import plan


def test_table1_plan_has_every_published_row_and_the_reference_rows(env):
    table = plan("table1", MethodContext(), suite="smoke")
    labels = {row.paper_label for row in table.rows}
    assert labels == {"BLIP-Diffusion", "IP-Adapter", "λ-Eclipse", "SSR-Encoder", "MS-Diffusion", "VideoBooth",
                      "CustomVideoX", "reference row"}
    assert table.unreproducible == []
    assert {row.row_id for row in table.rows if row.paper_label == "reference row"} == {"reference-still",
                                                                                       "reference-pan"}
    assert all(row.cases == {"smoke": 4} for row in table.rows)
    # without weights every model row misses something, the reference rows nothing
    missing = {row.row_id for row in table.rows if row.missing_weights}
    assert missing == {row.row_id for row in table.rows} - {"reference-still", "reference-pan"}
    published = plan("table1", MethodContext())
    assert {suite for row in published.rows for suite in row.suites} == {"dreambench", "videobench"}


def test_table2_rows_and_options_by_row_or_method(env):
    table = plan("table2", MethodContext(preset="tiny"), suite="smoke",
                 overrides={"customvideox": {"steps": "2"}, "customvideox@3D-RA": {"steps": "3"}})
    options = {row.row_id: row.options for row in table.rows}
    assert options == {
        "customvideox@naive": {"ablation": "naive", "steps": "2"},
        "customvideox@3D-RA": {"ablation": "3d-ra", "steps": "3"},  # the row's own id wins over the method's
        "customvideox@+TAB": {"ablation": "3d-ra+tab", "steps": "2"},
        "customvideox@+ERAE": {"ablation": "3d-ra+tab+erae", "steps": "2"},
    }
    assert all(not row.weights for row in table.rows)  # the tiny preset needs none
    # cost models cost the real sizes: a preset's rows get no (misleading) real-size estimate
    assert all(row.hours() is None and row.estimate_source == "not estimated for the tiny preset"
               for row in table.rows)
    with pytest.raises(ValueError, match="'ip-adapter\\+i2v', which are not rows of table2"):
        plan("table2", MethodContext(), overrides={"ip-adapter+i2v": {"scale": "1"}})
    with pytest.raises(ValueError, match="row customvideox@naive: method customvideox: unknown option"):
        plan("table2", MethodContext(), overrides={"customvideox@naive": {"speed": "max"}})
    with pytest.raises(ValueError, match="unknown table 'table3'"):
        plan("table3", MethodContext())


def test_plan_only_prints_rows_and_every_missing_weight_in_one_message(env):
    out = invoke("reproduce", "table1", "--out", str(env / "r"), "--suite", "smoke", "--plan-only")
    assert out.exit_code == 0, out.output
    assert "table1: 9 row(s)" in out.output and "ip-adapter+i2v" in out.output and "smoke 4" in out.output
    assert out.output.count("missing model weights for") == 1 and "CogVideoX-5B-I2V" in out.output
    assert not (env / "r").exists()
    refused = invoke("reproduce", "table1", "--out", str(env / "r"), "--suite", "smoke")
    assert refused.exit_code == EXIT_SETUP_ERROR and not (env / "r").exists()  # nothing runs while weights lack


def test_published_plan_without_data_counts_the_declared_cases_and_estimates_from_the_cost_cache(env, monkeypatch):
    from costmodel.method_cost import MethodCost, StageCost

    def cost(method: str, seconds: float) -> dict:
        return MethodCost(method, [StageCost("all", 1.0, 1.0, seconds)]).to_dict()

    cache = {"methods": {"customvideox": cost("customvideox", 100.0),
                         "customvideox[ablation=naive]": cost("customvideox", 40.0)}}
    (env / "costs.json").write_text(json.dumps(cache))
    monkeypatch.setenv("VIDEOBENCH_COST_ESTIMATES", str(env / "costs.json"))
    out = invoke("reproduce", "table2", "--out", str(env / "r"), "--plan-only")
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines() if line.startswith("  customvideox@")}
    assert all("videobench 530 (data missing)" in line for line in lines.values())
    # the row's own cached cost: 530 x 40 s; a row whose options are not cached: the defaults' 530 x 100 s
    assert "est. 5.9 h on 1 GPU, 0.74 h on 8 (cost model," in lines["customvideox@naive"]
    assert "est. 14.7 h on 1 GPU, 1.84 h on 8 (cost model of the default options" in lines["customvideox@3D-RA"]
    assert "total: 50.1 h on 1 GPU, 6.3 h on 8 GPUs" in out.output
    refused = invoke("reproduce", "table2", "--out", str(env / "r"))
    assert refused.exit_code == EXIT_SETUP_ERROR and not (env / "r").exists()


def test_table2_whole_plan_on_cpu_with_the_tiny_preset(env):
    out_dir = env / "r"
    args = ("reproduce", "table2", "--out", str(out_dir), "--suite", "smoke", "--preset", "tiny",
            "--random-weights", "--limit", "2", "--metrics", "clip_t,t_cons", "-o", "customvideox.steps=2")
    out = invoke(*args)
    assert out.exit_code == 0, out.output
    folders = sorted(p.name for p in (out_dir / "smoke").iterdir() if p.is_dir())
    assert folders == ["customvideox-tiny", "customvideox-tiny-3d-ra", "customvideox-tiny-3d-ra+tab",
                       "customvideox-tiny-naive"]
    run = json.loads((out_dir / "smoke" / "customvideox-tiny-naive" / "run.json").read_text())
    assert run["table2_setting"] == "naive" and run["options"]["steps"] == 2
    page = (out_dir / "table2.html").read_text()
    assert "<title>Table 2 reproduced: ablations of CustomVideoX</title>" in page
    tables = read_tables(page)
    labels = [label for label, _, _ in tables["paper-table2"]]
    for setting, folder in (("naive", "customvideox-tiny-naive"), ("3D-RA", "customvideox-tiny-3d-ra"),
                            ("+TAB", "customvideox-tiny-3d-ra+tab"), ("+ERAE", "customvideox-tiny")):
        assert labels[labels.index(setting) + 1] == f"ours: {folder}"
    again = invoke(*args)  # resumes: nothing is generated twice
    assert again.exit_code == 0 and again.output.count("0 generated, 2 already done") == 4


@pytest.mark.slow
def test_table1_whole_plan_on_cpu_with_the_tiny_presets(env):
    out_dir = env / "r"
    out = invoke("reproduce", "table1", "--out", str(out_dir), "--suite", "smoke", "--preset", "tiny",
                 "--random-weights", "--limit", "1", "--metrics", "clip_i,dino_i")
    assert out.exit_code == 0, out.output
    page = (out_dir / "table1.html").read_text()
    assert "<title>Table 1 reproduced: zero-shot customized video generation</title>" in page
    tables = read_tables(page)
    labels = [label for label, _, _ in tables["paper-table1"]]
    for published in ("BLIP-Diffusion + CogVideoX-5B-I2V", "IP-Adapter + CogVideoX-5B-I2V", "VideoBooth",
                      "CustomVideoX", "MS-Diffusion + CogVideoX-5B-I2V", "SSR-Encoder + CogVideoX-5B-I2V",
                      "λ-Eclipse + CogVideoX-5B-I2V"):
        assert labels[labels.index(published) + 1].startswith("ours: "), published
    # the two-stage rows kept their stage-1 image
    assert (out_dir / "smoke" / "ip-adapter+i2v-tiny" / "images").is_dir()


def test_the_published_tables_have_one_reader():
    from videobench.published import in_published_order, published_caption, published_frame, published_rows

    assert [row["setting"] for row in published_rows("table2")] == ["naive", "3D-RA", "+TAB", "+ERAE"]
    frame = published_frame("table1")
    assert len(frame) == len(published_rows("table1")) == 14 and frame["clip_t"].dtype.kind == "f"
    assert published_caption("table1")["title"]
    assert list(in_published_order("table1", {"Other": 0, "CustomVideoX": 1, "BLIP-Diffusion": 2})) == [
        "BLIP-Diffusion", "CustomVideoX", "Other"]
    with pytest.raises(ValueError, match=r"^unknown published table 'table3'; choose table1 or table2$"):
        published_rows("table3")


def test_plan_lists_each_missing_model_once_with_the_metric_models(env):
    out = invoke("reproduce", "table1", "--plan-only")
    assert out.exit_code == 0, out.output
    i2v = [line for line in out.output.splitlines() if line.startswith("  - CogVideoX-5B-I2V")]
    two_stage = ["blip-diffusion+i2v", "ip-adapter+i2v", "lambda-eclipse+i2v", "ssr-encoder+i2v", "ms-diffusion+i2v"]
    assert len(i2v) == 1 and all(row in i2v[0] for row in two_stage)
    for family in ("clip", "dino", "dynamic"):
        assert f"[metric {family}: model]" in out.output
    assert "videobench weights download --for table1 --dry-run" in out.output
    with_random = invoke("reproduce", "table1", "--plan-only", "--random-weights")
    assert "[metric clip" not in with_random.output  # random metric models need no files


def test_rows_run_longest_first_by_the_cost_model_estimate():
    from videobench.reproduction import PlanRow, run_order

    def row(row_id: str, seconds: float | None, cases: int = 10) -> PlanRow:
        return PlanRow(row_id, "m", row_id, {}, ("s",), cases={"s": cases}, seconds_per_video=seconds)

    rows = [row("a", 5.0), row("b", None), row("c", 90.0), row("d", 5.0), row("e", 1.0, cases=1000)]
    assert [r.row_id for r in run_order(rows)] == ["e", "c", "a", "d", "b"]  # 1000 s, 900 s, 50 s, 50 s, unknown
