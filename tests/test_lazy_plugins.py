"""Plugins load lazily, unknown names get "did you mean", and third-party console noise stays out of the progress.

Import checks run in fresh processes: what a module imports is only visible before anything else imported it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from videobench.cli import main
from videobench.cli_common import EXIT_SETUP_ERROR
from videobench.methods import available_methods
from videobench.metrics.registry import metric_families
from videobench.options import did_you_mean
from videobench.plugins import BUILTIN_METHODS, LazyModule, lazy_module

ROOT = Path(__file__).parents[1]
HEAVY = ("diffusers", "transformers", "open_clip", "timm", "peft", "torchvision")


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    return set(_fresh(code).split())


# ----------------------------------------------------------------------------------------------- lazy loading


def test_baselines_package_and_videobench_import_no_model_library():
    assert not _imported_after("import baselines, videobench, videobench.cli") & {"torch", *HEAVY}


def test_getting_any_one_method_imports_no_model_library_and_no_other_method():
    for name, module in BUILTIN_METHODS.items():
        code = (f"import sys; from videobench.methods import get_method; get_method({name!r}); "
                "print(' '.join(sorted(m for m in sys.modules)))")
        loaded = set(_fresh(code).split())
        assert not {m.split(".")[0] for m in loaded} & set(HEAVY), name
        others = {other for other in BUILTIN_METHODS.values() if other != module and other.startswith("baselines.")}
        assert not loaded & others, (name, loaded & others)


def test_the_helper_modules_that_listing_skips_register_nothing():
    """Listing imports a plugin package's modules but its ``*_model`` / ``*_config`` helpers: importing those too
    must add no method, metric or suite (else the skip would hide a plugin)."""
    code = ("import importlib, pkgutil\n"
            "from videobench.methods import available_methods\n"
            "from videobench.metrics.registry import metric_families\n"
            "from videobench.suites.registry import available_suites\n"
            "from videobench.plugins import BUILTIN_PLUGINS, _HELPER_MODULE_SUFFIXES\n"
            "def listed(): return (sorted(available_methods()), sorted(metric_families()), sorted(available_suites()))\n"
            "before = listed(); helpers = []\n"
            "for names in BUILTIN_PLUGINS.values():\n"
            "    for name in names:\n"
            "        module = importlib.import_module(name)\n"
            "        for info in pkgutil.iter_modules(getattr(module, '__path__', [])):\n"
            "            if info.name.endswith(_HELPER_MODULE_SUFFIXES):\n"
            "                importlib.import_module(f'{name}.{info.name}'); helpers.append(info.name)\n"
            "print(len(helpers), listed() == before)")
    count, unchanged = _fresh(code).split()
    assert int(count) > 0 and unchanged == "True"


#: What describing a plugin (``videobench methods``, ``weights``, ``metrics``) must not import: the model libraries
#: and torch under them (seconds of import time for a listing).
MODEL_LIBRARIES = frozenset({"torch", *HEAVY})


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_describing_a_method_imports_no_model_library(name):
    """Its options, presets, paper row and weights (default options, with and without each preset) come from
    torch-free code: torch, diffusers, transformers and open_clip load only when a run builds the method."""
    code = (f"from videobench.methods import MethodContext, get_method; spec = get_method({name!r}); "
            "options = spec.parse_options({}); spec.describe_options(); spec.paper(options); "
            "[spec.weight_specs(options, MethodContext(preset=p)) for p in (None, *spec.presets)]")
    assert not _imported_after(code) & MODEL_LIBRARIES, name


@pytest.mark.parametrize("family", sorted(metric_families()))
def test_describing_a_metric_family_imports_no_model_library(family):
    code = (f"from videobench.metrics.registry import metric_families, parse_metric_options; "
            f"cls = metric_families()[{family!r}]; from videobench.options import describe_options; "
            f"describe_options(cls.Options); cls.weight_specs(parse_metric_options({{}})[{family!r}])")
    assert not _imported_after(code) & MODEL_LIBRARIES, family


@pytest.mark.parametrize("args", [["methods"], ["weights"], ["metrics"], ["suites"], ["weights", "--preset", "tiny"]])
def test_the_listing_commands_import_no_model_library(args):
    code = ("from click.testing import CliRunner; from videobench.cli import main; "
            f"out = CliRunner().invoke(main, {args!r}); assert out.exit_code == 0, out.output")
    assert not _imported_after(code) & MODEL_LIBRARIES, args


def test_listing_uncached_weights_imports_no_hub_download_api(tmp_path):
    """A repository with no folder in the Hugging Face cache is missing without asking huggingface_hub's file
    API (half a second to import); a cached one is still found through it."""
    code = (f"import os, sys; os.environ['HF_HUB_CACHE'] = {str(tmp_path)!r}; "
            "from videobench.weights import WeightSpec, resolve_weights; "
            "spec = WeightSpec(key='k', model='m', file_names=('m.safetensors',), hf_repo='org/model', "
            "hf_files=('m.safetensors',)); r = resolve_weights(spec); "
            "print(r.source, 'huggingface_hub.file_download' in sys.modules)")
    assert _fresh(code) == "missing False"
    snapshot = tmp_path / "models--org--model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "m.safetensors").write_bytes(b"x")
    (tmp_path / "models--org--model" / "refs").mkdir()
    (tmp_path / "models--org--model" / "refs" / "main").write_text("0" * 40)
    assert _fresh(code) == "hf_cache True"


def test_grad_mode_decorators_import_torch_when_called_and_run_under_the_mode():
    out = _fresh("import sys; from videobench.methods import inference_mode, no_grad\n"
                 "@no_grad\ndef grad(x):\n    'doc'\n    import torch; return x, torch.is_grad_enabled()\n"
                 "@inference_mode\ndef infer():\n    import torch; return torch.is_inference_mode_enabled()\n"
                 "before = 'torch' in sys.modules\n"
                 "print(before, grad(3), infer(), grad.__name__, grad.__doc__, __import__('torch').is_grad_enabled())")
    assert out == "False (3, False) True grad doc True"


def test_the_known_clip_hub_repositories_are_open_clips():
    """The table that spares open_clip's import when the default CLIP model is described says what open_clip says."""
    import open_clip

    from videobench.metrics import clip

    assert clip._KNOWN_CLIP_HF_REPOS
    for (model, pretrained), repo in clip._KNOWN_CLIP_HF_REPOS.items():
        assert model in open_clip.list_models()
        hub = open_clip.get_pretrained_cfg(model, pretrained)["hf_hub"]
        assert repo == hub.rstrip("/"), (model, pretrained, hub)
    assert clip.ClipOptions().model in {model for model, _ in clip._KNOWN_CLIP_HF_REPOS}


def test_lazy_module_imports_on_first_attribute_and_then_is_the_module():
    lazy = LazyModule("json")
    assert repr(lazy) == "<lazy module 'json' (not imported yet)>"
    assert lazy.dumps({"a": 1}) == json.dumps({"a": 1})
    assert repr(lazy) == "<lazy module 'json' (imported)>" and lazy.JSONDecodeError is json.JSONDecodeError
    assert "loads" in dir(lazy)
    assert lazy_module("json") is json  # already imported: the module itself, no stand-in
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        getattr(LazyModule("no_such_module_xyz"), "anything")  # noqa: B009 (the access is the test)


def test_lazy_module_defers_the_import_until_used():
    out = _fresh("import sys; from videobench.plugins import lazy_module; m = lazy_module('tomllib'); "
                 "before = 'tomllib' in sys.modules; m.loads('a = 1'); print(before, 'tomllib' in sys.modules)")
    assert out == "False True"


# ----------------------------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize(("names", "choices", "expected"), [
    ("videobroth", ["videobooth", "wan-vace"], " (did you mean 'videobooth'?)"),
    ("zzz", ["videobooth", "wan-vace"], ""),
    (["lorra", "stepz"], ["lora", "steps", "model"], " (did you mean 'lora' for 'lorra', 'steps' for 'stepz'?)"),
    (["lorra", "qqq"], ["lora", "steps"], " (did you mean 'lora' for 'lorra'?)"),
    ("tiny", [], ""),
])
def test_did_you_mean_suggests_the_closest_choice(names, choices, expected):
    assert did_you_mean(names, choices) == expected


@pytest.mark.parametrize(("args", "message"), [
    (["methods", "videobroth"], "error: unknown method 'videobroth' (did you mean 'videobooth'?); available: "),
    (["generate", "--method", "reference-still", "--suite", "smok", "--out", "OUT"],
     "error: unknown suite 'smok' (did you mean 'smoke'?); available: "),
    (["generate", "--method", "customvideox", "--preset", "tinyy", "--out", "OUT"],
     "error: method customvideox: unknown preset 'tinyy' (did you mean 'tiny'?); its presets: tiny"),
    (["generate", "--method", "customvideox", "-o", "lorra=x", "--out", "OUT"],
     "error: method customvideox: unknown option(s) 'lorra' (did you mean 'lora'?); accepted: model, lora, "),
    (["score", "OUT", "--metrics", "clip_tt"], "error: unknown metric(s) 'clip_tt' (did you mean 'clip_t'?); "),
    (["score", "OUT", "-M", "clip.modle=x"],
     "error: metric clip: unknown option(s) 'modle' (did you mean 'model'?); accepted: model, "),
    (["score", "OUT", "-M", "clp.model=x"],
     "error: options for unknown metric family 'clp' (did you mean 'clip'?); families: "),
    (["metrics", "dinoo"], "error: unknown metric family 'dinoo' (did you mean 'dino'?); families: "),
    (["weights", "--metric", "dinoo"], "error: unknown metric family 'dinoo' (did you mean 'dino'?); families: "),
    (["run", "--methods", "videobooht", "--out", "OUT"],
     "error: unknown method(s) videobooht (did you mean 'videobooth'?); available: "),
])
def test_an_unknown_name_is_one_line_with_did_you_mean_and_exit_2(env, args, message):
    out = CliRunner().invoke(main, [str(env / "r") if arg == "OUT" else arg for arg in args])
    assert out.exit_code == EXIT_SETUP_ERROR, out.output
    assert len(out.output.strip().splitlines()) == 1 and out.output.startswith(message), out.output
    assert not (env / "r").exists()


# ----------------------------------------------------------------------------------------------- console noise


class _NoisyGenerator:
    """A generator whose models warn and log the way transformers' and diffusers' do."""

    run_name = "noisy"
    fps = 8
    random_weights = False

    def __init__(self, fail_id: str) -> None:
        self.fail_id = fail_id

    def config(self):
        return {}

    def generate(self, case, seed):
        warnings.warn(f"{case.case_id}: this argument is deprecated", FutureWarning, stacklevel=1)
        warnings.warn(f"{case.case_id}: this argument is deprecated", FutureWarning, stacklevel=1)  # once recorded
        logging.getLogger("noisylib.tokenization").warning("Token indices sequence length is longer than the "
                                                           "specified maximum sequence length (79 > 77)")
        logging.getLogger("noisylib.quiet").info("below WARNING: not captured")
        if case.case_id == self.fail_id:
            raise RuntimeError("boom")
        return np.zeros((2, 16, 16, 3), np.uint8)


@pytest.fixture()
def own_stream_logger():
    """A library logger that prints with its own stderr handler and does not propagate (transformers' default)."""
    logger = logging.getLogger("noisylib")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.propagate = True


def test_library_warnings_and_log_messages_go_into_the_case_diagnostics_not_stderr(env, own_stream_logger, capfd):
    from videobench.generation import run_generation
    from videobench.suites import load_suite

    suite = load_suite("smoke", env / "data")
    cases = list(suite.cases[:2])
    capfd.readouterr()
    summary = run_generation(_NoisyGenerator(fail_id=cases[1].case_id), suite, cases, env / "r", progress=False)
    err = capfd.readouterr().err
    assert "deprecated" not in err and "79 > 77" not in err
    assert own_stream_logger.handlers and not own_stream_logger.propagate  # restored after every case
    records = [json.loads(line) for line in (env / "r" / "noisy" / "cases.jsonl").read_text().splitlines()]
    by_id = {record["case_id"]: record for record in records}
    for case in cases:
        assert by_id[case.case_id]["diagnostics"]["library_messages"] == [
            "WARNING noisylib.tokenization: Token indices sequence length is longer than the specified maximum "
            "sequence length (79 > 77)",
            f"FutureWarning: {case.case_id}: this argument is deprecated",
        ]
    assert list(summary.failed) == [cases[1].case_id] and by_id[cases[1].case_id]["status"] == "failed"
    assert by_id[cases[0].case_id]["status"] == "ok"


def test_capture_keeps_own_messages_on_the_console_and_restores_everything(caplog):
    from videobench.generation import capture_library_messages

    root = logging.getLogger()
    filters_before = [list(handler.filters) for handler in root.handlers]
    with caplog.at_level(logging.INFO), capture_library_messages() as lines:
        logging.getLogger("videobench.generation").warning("our own message")
        logging.getLogger("somelib").error("theirs")
    assert lines == ["ERROR somelib: theirs"]
    assert [r.getMessage() for r in caplog.records] == ["our own message"]
    assert [list(handler.filters) for handler in root.handlers] == filters_before
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        warnings.warn("after the block", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["after the block"]
