"""Bad input closed: each is one error line naming the option or file, exit 2, and nothing written."""

from __future__ import annotations

import os

import pytest

from tests.test_cli import invoke
from videobench.cli_common import EXIT_SETUP_ERROR
from videobench.options import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    OptionError,
    parse_options,
    read_config_file,
    read_config_sections,
)

GENERATE = ("generate", "--method", "customvideox", "--preset", "tiny", "--suite", "smoke", "--random-weights")


def _one_error_line(out, *fragments: str, only: bool = True) -> None:
    """Exit 2 with one short ``error:`` line (the only output unless ``only=False``: notes and progress)."""
    assert out.exit_code == EXIT_SETUP_ERROR, out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 600 and out.output.endswith(errors[0] + "\n"), out.output
    if only:
        assert out.output.count("\n") == 1, out.output
    for fragment in fragments:
        assert fragment in errors[0], out.output


# ----------------------------------------------------------------------------------------------- config files


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" in YAML: each level lists the previous one ten times (10**levels leaves)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{','.join(f'*a{level - 1}' for _ in range(10))}]")
    lines.append(f"steps: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_without_expanding_it(env):
    bomb = env / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert bomb.stat().st_size < 1000
    with pytest.raises(OptionError, match=rf"--config .*bomb.yaml: more than {MAX_CONFIG_NODES} values"):
        read_config_file(bomb)
    out = invoke(*GENERATE, "--out", str(env / "r"), "--config", str(bomb))
    _one_error_line(out, f"--config {bomb}: more than {MAX_CONFIG_NODES} values")
    assert not (env / "r").exists()


def test_config_must_be_a_small_regular_utf8_file(env):
    fifo = env / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(OptionError, match=r"pipe.yaml: not a regular file"):
        read_config_file(fifo)
    with pytest.raises(OptionError, match=r"--config /dev/zero: not a regular file"):
        read_config_file("/dev/zero")
    with pytest.raises(OptionError, match=r"folder: not a regular file"):
        (env / "folder").mkdir()
        read_config_file(env / "folder")
    big = env / "big.json"
    big.write_text('{"steps": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(OptionError, match=rf"big.json: {big.stat().st_size} bytes; config files are limited to"):
        read_config_file(big)
    latin = env / "latin.yaml"
    latin.write_bytes("prompt: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(OptionError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 at offset 11\)"):
        read_config_file(latin)
    out = invoke(*GENERATE, "--out", str(env / "r"), "--config", "/dev/zero")
    _one_error_line(out, "--config /dev/zero: not a regular file")
    assert not (env / "r").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("customvideox: 5\n", "section 'customvideox' must be a mapping of option names to values, got int"),
    ("customvideox: [1, 2]\n", "section 'customvideox' must be a mapping of option names to values, got list"),
    ("customvideox:\n  1: 2\n", "section 'customvideox': option names must be text, got 1"),
])
def test_config_sections_of_the_wrong_type(env, text, message):
    config = env / "sections.yaml"
    config.write_text(text)
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_config_sections(config)
    out = invoke("run", "--methods", "customvideox", "--preset", "tiny", "--suite", "smoke", "--random-weights",
                 "--out", str(env / "r"), "--config", str(config))
    _one_error_line(out, f"--config {config}: {message}")
    assert not (env / "r").exists()


def test_empty_section_is_no_options(env):
    config = env / "sections.yaml"
    config.write_text("customvideox:\nreference-still: {}\n")
    assert read_config_sections(config) == {"customvideox": {}, "reference-still": {}}


def test_echoed_values_are_bounded(env):
    from videobench.methods import get_method

    spec = get_method("customvideox")
    with pytest.raises(OptionError) as caught:
        spec.parse_options({"mode": "x" * 100_000})
    assert len(str(caught.value)) < 300 and "option mode='xxxx" in str(caught.value)
    with pytest.raises(OptionError) as caught:
        spec.parse_options({"y" * 100_000: 1})
    assert len(str(caught.value)) < 400 and "unknown option(s) 'yyy" in str(caught.value)


# ---------------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"), float("inf")])
def test_nan_and_inf_are_refused_in_numeric_options(value):
    from videobench.methods import get_method

    with pytest.raises(OptionError, match=r"method customvideox: option guidance=.*: expected a finite number "
                                          r"\(not NaN or infinity\) \(float or none\)"):
        get_method("customvideox").parse_options({"guidance": value})


def test_nonfinite_only_where_a_field_declares_it():
    from dataclasses import dataclass

    from videobench.options import option

    @dataclass(frozen=True)
    class Options:
        limit: float = option(1.0, "a limit; inf: none", nonfinite=True)
        sizes: tuple[float, ...] = option((1.0,), "sizes")

    assert parse_options(Options, {"limit": "inf"}, "test").limit == float("inf")
    with pytest.raises(OptionError, match=r"test: option sizes='1,nan': expected a finite number"):
        parse_options(Options, {"sizes": "1,nan"}, "test")


@pytest.mark.parametrize(("suffix", "text"), [(".yaml", "guidance: .nan\n"), (".json", '{"guidance": NaN}'),
                                               (".yaml", "guidance: -.inf\n"), (".json", '{"guidance": Infinity}')])
def test_nan_from_config_files(env, suffix, text):
    config = env / f"nan{suffix}"
    config.write_text(text)
    out = invoke(*GENERATE, "--out", str(env / "r"), "--config", str(config))
    _one_error_line(out, "method customvideox: option guidance=", "expected a finite number")
    assert not (env / "r").exists()


def test_nan_in_o_and_metric_options(env):
    out = invoke(*GENERATE, "--out", str(env / "r"), "-o", "guidance=nan")
    _one_error_line(out, "method customvideox: option guidance='nan': expected a finite number")
    assert not (env / "r").exists()
    (env / "r").mkdir()
    out = invoke("score", str(env / "r"), "--random-weights", "--metrics", "dino_i", "-M", "dino.crop_pct=nan")
    _one_error_line(out, "metric dino: option crop_pct='nan': expected a finite number")
    assert list((env / "r").iterdir()) == []


# ------------------------------------------------------------------------------------------------- disk full


T_CONS = ("--random-weights", "--metrics", "t_cons", "-M", "clip.model=ViT-S-32")


def _disk_full_at(monkeypatch, name: str) -> list[str]:
    """Make the atomic rename onto any file called ``name`` fail as a full disk does; returns the paths tried."""
    import errno

    import mediaio.atomic

    tried: list[str] = []
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == name or (name == "*.json" and str(dst).endswith(".json")):
            tried.append(str(dst))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(mediaio.atomic.os, "replace", replace)
    return tried


def _no_temp_files(folder) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith((".part", ".json",
                                                                                           ".csv", ".html"))]


def test_disk_full_while_writing_run_json(env, monkeypatch):
    tried = _disk_full_at(monkeypatch, "run.json")
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--limit", "1",
                 "--out", str(env / "r"))
    _one_error_line(out, f"error: no space left on device: {tried[0]}")
    assert not (env / "r" / "reference-still" / "run.json").exists()
    _no_temp_files(env / "r")


def test_disk_full_while_writing_scores_report_and_cache(env, monkeypatch):
    results = env / "r"
    assert invoke("generate", "--method", "reference-still", "--suite", "smoke", "--limit", "1",
                  "--out", str(results)).exit_code == 0
    monkeypatch.setenv("VIDEOBENCH_SCORE_CACHE", str(env / "cache"))
    with monkeypatch.context() as patch:
        tried = _disk_full_at(patch, "*.json")
        out = invoke("score", str(results), *T_CONS)
        _one_error_line(out, f"error: no space left on device: {tried[0]}", only=False)
        assert str(env / "cache") in tried[0] and not (results / "reference-still" / "scores.csv").exists()
    with monkeypatch.context() as patch:
        tried = _disk_full_at(patch, "scores.csv")
        out = invoke("score", str(results), *T_CONS)
        _one_error_line(out, f"error: no space left on device: {results / 'reference-still' / 'scores.csv'}",
                        only=False)
        assert not (results / "reference-still" / "scores.csv").exists()
    assert invoke("score", str(results), *T_CONS).exit_code == 0
    with monkeypatch.context() as patch:
        _disk_full_at(patch, "leaderboard.html")
        out = invoke("report", str(results))
        _one_error_line(out, f"error: no space left on device: {results / 'leaderboard.html'}", only=False)
        assert not (results / "leaderboard.html").exists()
    _no_temp_files(results)


# ------------------------------------------------------------------------------------------- plugins, names


@pytest.fixture
def scratch_registry(monkeypatch):
    """Methods registered by a test live in a copy of the registry that is dropped afterwards."""
    from videobench import methods

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    return methods


def _register_escaper(methods, run_name: str, option_type=int) -> None:
    import dataclasses

    import numpy as np

    from videobench.options import option

    Options = dataclasses.make_dataclass(  # noqa: N806 - a class
        "EscaperOptions", [("values", option_type, option(None if option_type is not int else 1, "values"))],
        frozen=True)

    class Escaper:
        fps, random_weights = 8, False

        def __init__(self) -> None:
            self.run_name = run_name

        def config(self):
            return {}

        def generate(self, case, seed):
            return np.zeros((2, 16, 16, 3), dtype=np.uint8)

    methods.register_method("escaper", description="writes where its run_name says", kind="video-model",
                            options=Options)(lambda options, context: Escaper())


@pytest.mark.parametrize("run_name", ["../../escaped-run", "..", "a/b", ".hidden", "x\x00y", ""])
def test_run_names_are_one_folder_below_out(env, scratch_registry, run_name):
    _register_escaper(scratch_registry, run_name)
    out = invoke("generate", "--method", "escaper", "--suite", "smoke", "--limit", "1", "--out",
                 str(env / "a" / "b" / "r"))
    _one_error_line(out, "method escaper: run_name")
    assert not (env / "a").exists() and not (env / "escaped-run").exists()


def test_method_names_are_checked_at_registration(scratch_registry):
    with pytest.raises(ValueError, match=r"method name '\.\./x': must be one folder name"):
        scratch_registry.register_method("../x", description="", kind="video-model")


def test_a_plugin_option_typed_list_is_one_error(env, scratch_registry):
    _register_escaper(scratch_registry, "fine", option_type=list)
    out = invoke("generate", "--method", "escaper", "--suite", "smoke", "--limit", "1", "--out", str(env / "r"),
                 "-o", "values=1,2")
    _one_error_line(out, "method escaper: option values='1,2': the plugin declares this option as list, which "
                         "cannot be set")
    assert not (env / "r").exists()


def test_a_plugin_that_fails_to_import(env, monkeypatch):
    from importlib import metadata

    from videobench import plugins

    broken = metadata.EntryPoint(name="broken", value="no_such_plugin_module_xyz", group=plugins.METHODS_GROUP)
    real = metadata.entry_points

    def entry_points(**selection):
        if selection.get("group") == plugins.METHODS_GROUP and selection.get("name") == "broken":
            return [broken]
        return real(**selection)

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    monkeypatch.setattr(plugins, "_LOADED", set())
    out = invoke("generate", "--method", "broken", "--suite", "smoke", "--out", str(env / "r"))
    _one_error_line(out, "plugin 'broken' (videobench.methods): no_such_plugin_module_xyz failed to import "
                         "(ModuleNotFoundError: No module named 'no_such_plugin_module_xyz')")
    assert not (env / "r").exists()


# ------------------------------------------------------------------------------------------ metric options


@pytest.mark.parametrize(("option", "message"), [
    ("clip.model=../../x", "metric clip: model '../../x' is not an open_clip architecture"),
    ('dino.model_kwargs={"foo": 1}', "metric dino: model_kwargs: unknown key 'foo'; accepted: img_size"),
    ('dino.model_kwargs={"depth": "x"}', "metric dino: model_kwargs: depth='x': expected a positive integer"),
    ('dino.model_kwargs={"num_classes": 5}', "metric dino: model_kwargs: unknown key 'num_classes'"),
    ('dino.model_kwargs={"embed_dim": 50, "num_heads": 3}', "embed_dim=50 does not split into num_heads=3"),
    ('subject_consistency.model_kwargs={"mlp_ratio": NaN}', "model_kwargs: mlp_ratio=nan: expected a finite"),
    ("dino.model_kwargs=[1]", "metric dino: option model_kwargs='[1]': expected a mapping"),
])
def test_metric_options_that_used_to_raise_inside_the_libraries(env, option, message):
    (env / "r").mkdir()
    out = invoke("score", str(env / "r"), "--random-weights", "--metrics", "clip_t,dino_i,subject_consistency",
                 "-M", option)
    _one_error_line(out, message)
    assert list((env / "r").iterdir()) == []


# ------------------------------------------------------------------------------------------- empty folders


def test_score_and_report_of_an_empty_folder_write_nothing(env):
    empty = env / "empty"
    empty.mkdir()
    out = invoke("score", str(empty), *T_CONS)
    _one_error_line(out, f"{empty}: no method folder (a folder holding cases.jsonl) to score", only=False)
    assert out.output.count("no method folder") == 1
    out = invoke("report", str(empty))
    _one_error_line(out, f"{empty / 'leaderboard.csv'}: no leaderboard")
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize(("cell", "column"), [("inf", "clip_t"), ("abc", "clip_t"), ("-inf", "dino_i_ci_low"),
                                              ("abc", "n_cases"), ("x" * 500, "t_cons")])
def test_leaderboard_cells_that_are_not_finite_numbers(env, cell, column):
    import pandas as pd

    from videobench.reporting.load import ReportInputError, check_board_numbers

    results = env / "r"
    results.mkdir()
    row = {"method": "m", "suite": "smoke", "clip_t": "50.0", "dino_i_ci_low": "", "t_cons": "99.0", "n_cases": "4"}
    good = pd.DataFrame([row])
    check_board_numbers(good, results / "leaderboard.csv")  # empty cells are allowed
    pd.DataFrame([{**row, column: cell}]).to_csv(results / "leaderboard.csv", index=False)
    with pytest.raises(ReportInputError):
        check_board_numbers(pd.read_csv(results / "leaderboard.csv"), results / "leaderboard.csv")
    out = invoke("report", str(results))
    _one_error_line(out, f"{results / 'leaderboard.csv'}: method 'm', column {column}: '{cell[:37]}",
                    "is not a finite number")
    assert sorted(p.name for p in results.iterdir()) == ["leaderboard.csv"]


# ---------------------------------------------------------------------------------------------- LoRA files


def _lora_file(path, metadata: dict[str, str]):
    import torch
    from safetensors.torch import save_file

    tensors = {f"transformer.transformer_blocks.0.attn1.{name}.lora_{part}.weight": torch.zeros(4, 4)
               for name in ("to_q", "to_k") for part in "AB"}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_lora_files_cut_short_or_with_bad_metadata(env):
    from customvideox.lora import LORA_METADATA_KEY, REFERENCE_CONFIG_METADATA_KEY, read_reference_settings

    good = _lora_file(env / "good.safetensors", {LORA_METADATA_KEY: '{"transformer.lora_alpha": 8}'})
    assert read_reference_settings(good)["lora_alpha"] == 8
    data = good.read_bytes()
    for cut in (len(data) // 2, 5):  # in the tensors, in the header
        half = env / f"cut{cut}.safetensors"
        half.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{half}: not a readable safetensors file \("):
            read_reference_settings(half)
    not_json = _lora_file(env / "notjson.safetensors", {REFERENCE_CONFIG_METADATA_KEY: "{rank: 4"})
    with pytest.raises(ValueError, match=rf"{not_json}: metadata 'customvideox_reference_config' is not JSON "
                                         r"\(Expecting property name"):
        read_reference_settings(not_json)
    listed = _lora_file(env / "listed.safetensors", {LORA_METADATA_KEY: "[4]"})
    with pytest.raises(ValueError, match=rf"{listed}: metadata 'lora_adapter_metadata' is not a JSON object"):
        read_reference_settings(listed)

    half = env / f"cut{len(data) // 2}.safetensors"
    for bad, message in ((half, "not a readable safetensors file"), (not_json, "is not JSON")):
        out = invoke(*GENERATE, "--out", str(env / "r"), "-o", f"lora={bad}")
        _one_error_line(out, str(bad), message, only=False)
        assert not (env / "r").exists()


# ------------------------------------------------------------------------------------ options a preset ignores


@pytest.mark.parametrize(("method", "option", "shown"), [
    ("ip-adapter+i2v", "adapter", "ip_adapter="), ("ip-adapter+i2v", "ip_adapter_dir", "image_encoder="),
    ("ip-adapter+i2v", "i2v_model", "i2v="), ("ssr-encoder+i2v", "i2v_model", "i2v="),
])
def test_weight_paths_that_a_preset_would_ignore_are_refused(env, method, option, shown):
    truncated = env / "truncated.safetensors"
    truncated.write_bytes(b"\x00" * 10)
    out = invoke("generate", "--method", method, "--preset", "tiny", "--suite", "smoke", "--random-weights",
                 "--limit", "1", "--out", str(env / "r"), "-o", f"{option}={truncated}")
    _one_error_line(out, f"method {method}: --preset tiny builds random components and reads no weight file, so it "
                         f"would ignore the weights given as ", f"{shown}{truncated}")
    assert not (env / "r").exists()
