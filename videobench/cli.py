"""The ``videobench`` command line: a thin click layer over the library functions.

    videobench generate --method NAME --suite SUITE --out RESULTS
    videobench score RESULTS
    videobench report RESULTS... [--out FILE]
    videobench run --suite smoke --preset tiny --random-weights --out RESULTS   (all three)
    videobench weights | data download SUITE | data verify SUITE | suites | methods
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from videobench.cli_common import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, command_group  # noqa: F401 (re-export)
from videobench.cli_common import fail as _fail


def _split(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


@command_group
def main() -> None:
    """VideoBench: benchmark zero-shot subject-driven video generation (CustomVideoX and baselines)."""


# --------------------------------------------------------------------------------------------- options

data_root_option = click.option(
    "--data-root", type=click.Path(path_type=Path), default=None,
    help="Benchmark data folder (default: $VIDEOBENCH_DATA, else ~/.cache/videobench/data).",
)


def generation_options(func):
    options = [
        click.option("--suite", default="smoke", show_default=True, help="smoke, dreambench or videobench."),
        data_root_option,
        click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the first N cases."),
        click.option("--cases", "case_ids", default=None, help="Comma-separated case ids."),
        click.option("--seed", type=int, default=0, show_default=True, help="Base seed (every case uses it)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ..."),
        click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "fp16", "bf16"])),
        click.option("--preset", default=None, help="Model preset, e.g. 'tiny' (random-initialised, for smoke runs)."),
        click.option("--model", default=None, help="CogVideoX-5B folder or hub id (model methods)."),
        click.option("--lora", default=None, help="Reference LoRA safetensors (CustomVideoX)."),
        click.option("--ablation", default=None, help="CustomVideoX ablation: naive, 3d-ra, 3d-ra+tab, 3d-ra+tab+erae."),
        click.option("--mode", default=None, type=click.Choice(["joint", "cached"]), help="CustomVideoX reference mode."),
        click.option("--steps", type=int, default=None, help="Denoising steps (method default otherwise)."),
        click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale."),
        click.option("--compile", "compile_model", is_flag=True, default=None,
                     help="torch.compile the denoiser (CustomVideoX; pays off on GPUs, the first case compiles)."),
        click.option("--frames", type=int, default=None, help="Frames per video (suite default otherwise)."),
        click.option("--height", type=int, default=None),
        click.option("--width", type=int, default=None),
        click.option("--shard", default=None, help="i/n: generate every n-th case starting at i (multi-GPU/node)."),
        click.option("--overwrite", is_flag=True, help="Regenerate every case even if a valid video exists."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def scoring_options(func, with_device: bool = True):
    options = [
        click.option("--metrics", default=None, help="Comma-separated subset of clip_t,clip_i,dino_i,t_cons,dynamic."),
        *([click.option("--device", "score_device", default="cpu", show_default=True)] if with_device else []),
        click.option("--score-dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"])),
        click.option("--clip-model", default="ViT-B-32-quickgelu", show_default=True, help="open_clip architecture."),
        click.option("--clip-weights", type=click.Path(path_type=Path), default=None),
        click.option("--dino-weights", type=click.Path(path_type=Path), default=None),
        click.option("--raft-weights", type=click.Path(path_type=Path), default=None),
        click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder with the metric weights (default: $VIDEOBENCH_WEIGHTS)."),
        click.option("--download", is_flag=True, default=False,
                     help="Fetch missing metric weights from their hubs (online users; also $VIDEOBENCH_DOWNLOAD=1)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


random_weights_option = click.option(
    "--random-weights", is_flag=True,
    help="Random-initialised models, for smoke runs only (stamped in every output): every metric model when "
         "scoring, even if its weights are present; the parts without weights when generating.",
)

# --------------------------------------------------------------------------------------------- generate


def _generate(method: str, opts: dict, random_weights: bool, progress: bool = True) -> bool:
    from videobench.generate import RunConflictError, run_generation
    from videobench.methods import MethodConfig, build_generator
    from videobench.metrics.preprocess import check_device
    from videobench.suites import load_suite

    try:
        check_device(opts["device"])  # no CUDA here: one line now, not a driver traceback in the first case
        suite = load_suite(opts["suite"], opts["data_root"])
        cases = suite.select(_split(opts["case_ids"]), opts["limit"])
    except KeyError as error:  # str(KeyError) would quote the message
        _fail(str(error.args[0]))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    extra = {key: opts[key] for key in ("mode", "steps", "guidance") if opts.get(key) is not None}
    if opts.get("compile_model"):
        extra["compile"] = True
    config = MethodConfig(
        device=opts["device"], dtype=opts["dtype"], preset=opts["preset"], model=opts["model"], lora=opts["lora"],
        ablation=opts["ablation"], random_weights=random_weights,
        num_frames=opts["frames"] or suite.num_frames, height=opts["height"] or suite.height,
        width=opts["width"] or suite.width, fps=suite.fps, extra=extra,
    )
    try:
        generator = build_generator(method, config)
    except KeyError as error:
        _fail(str(error.args[0]))
    except (FileNotFoundError, OSError, ValueError) as error:  # missing weights and friends: before any work
        _fail(str(error))
    if generator.random_weights:
        click.secho(f"note: {generator.run_name} uses RANDOM weights; its outputs are stamped as such", fg="yellow", err=True)
    try:
        summary = run_generation(method, generator, suite, cases, opts["out"], seed=opts["seed"],
                                 shard=opts["shard"], overwrite=opts["overwrite"], progress=progress)
    except (RunConflictError, ValueError) as error:
        _fail(str(error))
    click.echo(
        f"{generator.run_name}: {len(summary.generated)} generated, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed -> {summary.method_dir}"
    )
    for case_id, message in summary.failed.items():
        click.secho(f"  failed {case_id}: {message}", fg="red", err=True)
    return summary.ok


@main.command()
@click.option("--method", required=True, help="A registered method (see `videobench methods`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="RESULTS folder.")
@generation_options
@random_weights_option
def generate(method: str, random_weights: bool, **opts) -> None:
    """Generate the videos of a suite with one method into RESULTS/<method>/."""
    ok = _generate(method, opts, random_weights)
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- score


def _weights_config(opts: dict):
    from videobench.weights import WeightsConfig

    # --download adds to $VIDEOBENCH_DOWNLOAD (WeightsConfig's default); without the flag the variable decides.
    download = {"download": True} if opts.get("download") else {}
    return WeightsConfig(
        clip_weights=opts["clip_weights"], dino_weights=opts["dino_weights"], raft_weights=opts["raft_weights"],
        weights_dir=opts["weights_dir"], clip_model=opts["clip_model"], **download,
    )


def _scoring_columns(opts: dict, random_weights: bool) -> list[str]:
    """The ``--metrics`` columns, after checking names, device, precision and weight files (exit 2 otherwise)."""
    from videobench.metrics import families_for
    from videobench.metrics.base import METRIC_COLUMNS
    from videobench.metrics.preprocess import check_device, check_precision
    from videobench.weights import MissingWeightsError, check_weights

    columns = _split(opts["metrics"]) or list(METRIC_COLUMNS)
    unknown = [c for c in columns if c not in METRIC_COLUMNS]
    if unknown:
        _fail(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_COLUMNS)}")
    try:
        check_device(opts["score_device"])
        check_precision(opts["score_device"], opts["score_dtype"])
        if not random_weights:
            check_weights(families_for(columns), _weights_config(opts))
    except (MissingWeightsError, ValueError) as error:
        _fail(str(error))
    return columns


def _score(results: Path, opts: dict, random_weights: bool, progress: bool = True) -> bool:
    from videobench.metrics import build_metrics
    from videobench.score import check_not_method_folder, score_results
    from videobench.weights import MissingWeightsError

    columns = _scoring_columns(opts, random_weights)
    if not results.is_dir():
        _fail(f"{results}: no such results folder")
    try:
        check_not_method_folder(results)  # before loading any model
    except ValueError as error:
        _fail(str(error))
    try:
        metrics = build_metrics(columns, _weights_config(opts), device=opts["score_device"],
                                dtype=opts["score_dtype"], random_weights=random_weights)
    except (MissingWeightsError, ValueError) as error:  # ValueError: --device / --score-dtype unusable here
        _fail(str(error))
    if random_weights:
        click.secho("note: scoring with RANDOM metric weights; scores.csv and the leaderboard say so", fg="yellow", err=True)
    try:
        summary = score_results(results, metrics, columns=columns, progress=progress)
    except ValueError as error:  # not a RESULTS folder: nothing ran
        _fail(str(error))
    click.echo(summary.describe() if hasattr(summary, "describe") else str(summary))
    return summary.ok


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@scoring_options
@random_weights_option
def score(results: Path, random_weights: bool, **opts) -> None:
    """Score every method folder of RESULTS: scores.csv per method and RESULTS/leaderboard.csv."""
    sys.exit(0 if _score(results, opts, random_weights) else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- report


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="HTML file (default: RESULTS/leaderboard.html for one RESULTS folder; required for several).")
def report(results: tuple[Path, ...], out_path: Path | None) -> None:
    """Write the self-contained HTML leaderboard of one or more RESULTS folders.

    Several folders (e.g. results/dreambench results/videobench, one per suite) merge into one page:
    a method folder name found in several of them is one row with each suite's columns (Table 1). A
    folder without leaderboard.csv whose subfolders are RESULTS folders stands for those subfolders.
    """
    from videobench.report import ReportInputError, write_report

    try:
        path = write_report(list(results), out_path)
    except (FileNotFoundError, ReportInputError) as error:
        _fail(str(error))
    click.echo(f"report: {path}")


# --------------------------------------------------------------------------------------------- run


@main.command()
@click.option("--methods", default="reference-still,reference-pan,customvideox", show_default=True,
              help="Comma-separated methods to generate.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@generation_options
@functools.partial(scoring_options, with_device=False)
@random_weights_option
def run(methods: str, out: Path, random_weights: bool, **opts) -> None:
    """Generate, score and report in one go (the README's main command); --device serves both stages."""
    from videobench.methods import available_methods

    opts["out"] = out
    opts["score_device"] = opts["device"]
    names = _split(methods) or []
    known = available_methods()
    missing = [name for name in names if name not in known]
    if missing:
        _fail(f"unknown method(s) {', '.join(missing)}; available: {', '.join(known)}")
    _scoring_columns(opts, random_weights)  # missing metric weights: fail now, not after hours of generation
    ok = True
    for name in names:
        ok = _generate(name, opts, random_weights) and ok
    ok = _score(out, opts, random_weights) and ok
    from videobench.report import write_report

    click.echo(f"report: {write_report(out)}")
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- info


@main.command()
@scoring_options
def weights(**opts) -> None:
    """Where each metric model's weights come from (model, file, found where, sha256)."""
    from videobench.weights import weights_table

    for row in weights_table(_weights_config(opts)):
        colour = "green" if row.get("found") not in (None, "missing") else "red"
        click.secho(f"{row.get('model')}  [{row.get('family')}]  {row.get('found')}", fg=colour, bold=True)
        for key, value in row.items():
            if key not in ("model", "family", "found"):
                click.echo(f"    {key:8s} {value if value is not None else '-'}")


@main.command()
def methods() -> None:
    """List the registered methods."""
    from videobench.methods import available_methods

    for spec in available_methods().values():
        click.echo(f"{spec.name:20s} {spec.description}")


@main.command()
@data_root_option
def suites(data_root: Path | None) -> None:
    """List the suites and their versions."""
    from videobench.suites import available_suites, load_suite

    for name in available_suites():
        try:
            suite = load_suite(name, data_root)
            click.echo(f"{name:12s} {suite.version:16s} {len(suite.cases):5d} cases  {suite.description}")
        except (FileNotFoundError, ValueError) as error:
            click.echo(f"{name:12s} (not available: {str(error).splitlines()[0]})")


@main.group()
def data() -> None:
    """Download and verify the benchmark images."""


@data.command("download")
@click.argument("suite", type=click.Choice(["dreambench", "videobench"]))
@data_root_option
@click.option("--base-url", default=None, help="Mirror base URL replacing https://raw.githubusercontent.com.")
@click.option("--from", "source_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Install from a local folder laid out like the upstream repositories instead of downloading.")
def data_download(suite: str, data_root: Path | None, base_url: str | None, source_dir: Path | None) -> None:
    """Fetch a suite's images from their pinned public sources, verifying sha256."""
    from videobench import data as data_module

    try:
        result = data_module.download(suite, data_root, base_urls=base_url, source_dir=source_dir)
    except data_module.DownloadError as error:
        _fail(str(error))
    click.echo(f"{suite}: {len(result.downloaded)} downloaded, {len(result.skipped)} already verified "
               f"-> {result.data_root}")


@data.command("verify")
@click.argument("suite", type=click.Choice(["dreambench", "videobench"]))
@data_root_option
def data_verify(suite: str, data_root: Path | None) -> None:
    """Check that every file of a suite is present with the pinned sha256."""
    from videobench import data as data_module

    result = data_module.verify(data_root, suite)
    for line in result.lines():
        click.echo(line)
    sys.exit(0 if result.passed else EXIT_CASE_FAILURES)


if __name__ == "__main__":
    main()
