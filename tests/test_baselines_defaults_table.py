"""docs/baselines/README.md's table of inference settings against the baselines' real-size defaults.

Each baseline's defaults are read the way a run gets them: the parsed default options, the stage-2 call
(``CogVideoXI2V.config()`` at 480x720, no preset) and both stages' dtypes on CUDA (built without loading any weights),
and VideoBooth's / Wan-VACE's native geometry and resolved step counts. Every table row that names an option must
give that value, and every option that changes a video must have a row.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from videobench.methods import MethodContext, available_methods, get_method

TABLE = Path(__file__).resolve().parents[1] / "docs" / "baselines" / "README.md"
BASELINE_KINDS = ("two-stage", "video-model")
ALL_TWO_STAGE = "all two-stage"
#: Options that only say where files are, or how a run is split or placed; they change no pixel.
NOT_SETTINGS = {"model", "base_model", "ip_adapter_dir", "adapter", "image_encoder", "vae", "clip_model",
                "decoder_model", "prior_model", "sdxl_model", "aligner", "layers", "mapper", "watermark_module",
                "qformer_tokenizer", "i2v_model", "stage", "offload"}
#: Stage-2 options and the key of the stage-2 call that shows their value.
STAGE2_KEYS = {"i2v_steps": "stage2.num_inference_steps", "i2v_guidance": "stage2.guidance_scale",
               "i2v_dynamic_cfg": "stage2.use_dynamic_cfg", "i2v_dtype": "stage2.dtype"}


def baselines() -> list[str]:
    return sorted(name for name, spec in available_methods().items() if spec.kind in BASELINE_KINDS)


def table_rows() -> list[dict[str, str]]:
    """The rows of the section "The table": method(s), setting, option, default (the first code span)."""
    text = TABLE.read_text(encoding="utf-8")
    section = text.split("## The table", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("method", "---"):
            continue
        option = cells[2].strip("`")
        default = re.match(r"`([^`]*)`", cells[3])
        assert default is not None, f"{TABLE}: no `value` in the default cell of {line!r}"
        rows.append({"methods": cells[0], "setting": cells[1], "option": option, "default": default.group(1)})
    assert rows, f"{TABLE}: no table rows"
    return rows


def row_methods(row: dict[str, str]) -> list[str]:
    if row["methods"] == ALL_TWO_STAGE:
        return [name for name in baselines() if get_method(name).kind == "two-stage"]
    return [name.strip() for name in row["methods"].split(",")]


def real_size_defaults(name: str) -> dict[str, Any]:
    """What a real-size run of ``name`` with default options on CUDA would use (nothing is loaded)."""
    spec = get_method(name)
    options = spec.parse_options({})
    values: dict[str, Any] = dict(vars(options))
    context = MethodContext(device="cuda")
    if spec.kind == "two-stage":
        generator = spec.factory(options, context)
        values["stage1_dtype"] = generator.stage1_context.dtype
        stage2 = generator.stage2.config()
        values.update({f"stage2.{key}": value for key, value in stage2.items()})
        values["stage2.scheduler"] = stage2["scheduler"]["class"]
    elif name == "videobooth":
        from baselines.videobooth import VideoBoothConfig

        config = VideoBoothConfig()
        values.update(steps=values["steps"] or config.steps, num_frames=config.num_frames, height=config.height)
    elif name == "wan-vace":
        from baselines.wan_vace import DEFAULT_STEPS, VARIANTS

        values.update(steps=values["steps"] or DEFAULT_STEPS,
                      num_frames=VARIANTS[values["variant"]].native.num_frames)
    return values


def spelled(value: Any) -> str:
    """A value as the table writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(spelled(item) for item in value)
    return str(value)


def test_the_table_names_every_baseline_and_only_them():
    named = {name for row in table_rows() for name in row_methods(row)}
    assert named == set(baselines())


@pytest.mark.parametrize("name", baselines())
def test_table_defaults_are_the_code_defaults(name):
    values = real_size_defaults(name)
    checked = 0
    for row in table_rows():
        if name not in row_methods(row) or row["option"] == "—":
            continue
        assert row["option"] in values, f"{TABLE}: {name} has no setting {row['option']!r} ({row['setting']})"
        value, cell = values[row["option"]], row["default"]
        if isinstance(value, float):
            assert float(cell) == value, f"{TABLE}: {name} {row['option']}: table {cell}, code {value}"
        else:
            assert cell == spelled(value), f"{TABLE}: {name} {row['option']}: table {cell!r}, code {spelled(value)!r}"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", baselines())
def test_every_setting_of_a_baseline_has_a_row(name):
    listed = {row["option"] for row in table_rows() if name in row_methods(row)}
    options = get_method(name).parse_options({})
    missing = sorted(option for option in vars(options)
                     if option not in NOT_SETTINGS and STAGE2_KEYS.get(option, option) not in listed)
    assert not missing, f"{TABLE}: no row for {name}'s {', '.join(missing)}"


def test_a_changed_default_would_be_caught(monkeypatch):
    """The comparison is live: a stage-2 default other than the table's fails the check."""
    from baselines import two_stage

    monkeypatch.setitem(two_stage.I2V_SCHEDULERS, "dpm", ("CogVideoXDDIMScheduler", {}))
    with pytest.raises(AssertionError, match="stage2.scheduler"):
        test_table_defaults_are_the_code_defaults("reference+i2v")
