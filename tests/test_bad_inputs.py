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
    assert len(errors) == 1 and len(errors[0]) < 400 and out.output.endswith(errors[0] + "\n"), out.output
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
