"""The ``videobench`` command line: a thin click layer over the library functions.

    videobench generate --method NAME --suite SUITE --out RESULTS [-o key=value ...] [--config FILE]
    videobench score RESULTS [--metrics ...] [-M family.key=value ...]
    videobench report RESULTS... [--out FILE]
    videobench run --suite smoke --preset tiny --random-weights --out RESULTS   (all three)
    videobench methods [NAME] | metrics [FAMILY] | suites | weights | data download SUITE | data verify SUITE

The CLI names no method, metric or suite: it reads their registered descriptions (options, weights, presets).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import click

from videobench.cli_common import EXIT_CASE_FAILURES, EXIT_SETUP_ERROR, command_group  # noqa: F401 (re-export)
from videobench.cli_common import fail as _fail
from videobench.launcher import LauncherError, launcher_options, submit_generate, submit_score


def _split(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


def _first_line(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


@command_group
def main() -> None:
    """VideoBench: benchmark zero-shot subject-driven video generation."""


# --------------------------------------------------------------------------------------------- options

data_root_option = click.option(
    "--data-root", type=click.Path(path_type=Path), default=None,
    help="Benchmark data folder (default: $VIDEOBENCH_DATA, else ~/.cache/videobench/data).",
)
weights_options = [
    click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
                 help="Folder with model weights (default: $VIDEOBENCH_WEIGHTS, else ~/.cache/videobench/weights)."),
    click.option("--download", is_flag=True, default=False,
                 help="Fetch missing weights from their hubs (online users; also $VIDEOBENCH_DOWNLOAD=1)."),
]
random_weights_option = click.option(
    "--random-weights", is_flag=True,
    help="Random-initialised models, for smoke runs only (stamped in every output): every metric model when "
         "scoring, even if its weights are present; the parts without weights when generating.",
)


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def generation_options(func):
    return _apply(func, [
        click.option("--suite", default=None, help="A registered suite (`videobench suites`; default: the smoke suite)."),
        data_root_option,
        click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the first N cases."),
        click.option("--cases", "case_ids", default=None, help="Comma-separated case ids."),
        click.option("--seed", type=int, default=0, show_default=True, help="Base seed (every case uses it)."),
        click.option("--device", default="cpu", show_default=True,
                     help="cpu, cuda, cuda:1, ... (under torchrun/srun, cuda is each rank's cuda:LOCAL_RANK)."),
        click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "fp16", "bf16"])),
        click.option("--preset", default=None, help="Model preset, e.g. 'tiny' (random-initialised, for smoke runs)."),
        click.option("--frames", type=click.IntRange(min=1), default=None, help="Frames per video (suite default)."),
        click.option("--height", type=click.IntRange(min=1), default=None, help="Video height (suite default)."),
        click.option("--width", type=click.IntRange(min=1), default=None, help="Video width (suite default)."),
        click.option("--shard", default=None, help="i/n: generate every n-th case starting at i (SLURM arrays, "
                                                   "manual use; under torchrun/srun each rank takes its own)."),
        click.option("--overwrite", is_flag=True, help="Regenerate every case even if a valid video exists."),
        *weights_options,
    ])


def with_weights_options(func):
    return _apply(func, weights_options)


def scoring_options(func, with_device: bool = True):
    return _apply(func, [
        click.option("--metrics", default=None,
                     help="Comma-separated columns or families (default: the default families; `videobench metrics`)."),
        click.option("-M", "--metric-option", "metric_options", multiple=True, metavar="FAMILY.KEY=VALUE",
                     help="A metric family's option, e.g. -M clip.model=ViT-L-14 -M dino.weights=FILE (repeatable)."),
        *([click.option("--device", "score_device", default="cpu", show_default=True)] if with_device else []),
        click.option("--score-dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"])),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                     help="Score cache (default: $VIDEOBENCH_SCORE_CACHE, else ~/.cache/videobench/score_cache)."),
        *([] if not with_device else weights_options),
    ])


def _scoped(items: Sequence[str], what: str) -> dict[str, dict[str, str]]:
    """``["scope.key=value", ...]`` -> ``{scope: {key: value}}`` (the scope is before the first dot)."""
    from videobench.options import parse_assignments

    out: dict[str, dict[str, str]] = {}
    for key, value in parse_assignments(items, what).items():
        scope, dot, name = key.partition(".")
        if not dot or not scope or not name:
            raise ValueError(f"{what} {key}={value}: expected SCOPE.KEY=VALUE")
        out.setdefault(scope, {})[name] = value
    return out


def _weights_config(opts: Mapping[str, Any]):
    from videobench.weights import WeightsConfig

    download = {"download": True} if opts.get("download") else {}  # else $VIDEOBENCH_DOWNLOAD decides
    return WeightsConfig(weights_dir=opts.get("weights_dir"), **download)


# --------------------------------------------------------------------------------------------- generate


def _method_options(raw_items: Sequence[str], config_file: Path | None) -> dict[str, Any]:
    """A method's options: the config file's mapping, then ``-o key=value`` on top."""
    from videobench.options import parse_assignments, read_config_file

    options = read_config_file(config_file) if config_file is not None else {}
    options.update(parse_assignments(raw_items))
    return options


def _generate(method: str, raw_options: Mapping[str, Any], opts: Mapping[str, Any], random_weights: bool,
              preset: str | None, progress: bool = True) -> bool:
    from videobench.devices import check_device
    from videobench.distributed import local_device, resolve_shard
    from videobench.generate import RunConflictError, run_generation
    from videobench.methods import MethodContext, build_generator, get_method
    from videobench.suites import load_suite
    from videobench.sync import SyncError, all_ranks_generated, join_launch
    from videobench.weights import MissingWeightsError

    try:
        opts = {**opts, "shard": resolve_shard(opts["shard"]), "device": local_device(opts["device"])}
        launch = join_launch(opts["out"])  # torchrun/srun: this rank's shard, GPU, heartbeat (docs/distributed.md)
        check_device(opts["device"])  # no CUDA here: one line now, not a driver traceback in the first case
        spec = get_method(method)
        suite = load_suite(opts["suite"], opts["data_root"])
        cases = suite.select(_split(opts["case_ids"]), opts["limit"])
        context = MethodContext(
            device=opts["device"], dtype=opts["dtype"], preset=preset,
            random_weights=random_weights, num_frames=opts["frames"] or suite.num_frames,
            height=opts["height"] or suite.height, width=opts["width"] or suite.width, fps=suite.fps,
            weights_config=_weights_config(opts),
        )
        generator, options = build_generator(spec, raw_options, context)
    except (KeyError, FileNotFoundError, OSError, ValueError, MissingWeightsError, SyncError) as error:
        _fail(_first_line(error))
    if generator.random_weights:
        click.secho(f"note: {generator.run_name} uses RANDOM weights; its outputs are stamped as such", fg="yellow", err=True)
    try:
        summary = run_generation(generator, suite, cases, opts["out"], seed=opts["seed"], shard=opts["shard"],
                                 overwrite=opts["overwrite"], progress=progress and (launch is None or launch.is_main),
                                 metadata=spec.metadata(options))
    except (RunConflictError, ValueError) as error:
        _fail(str(error))
    images = f", {len(summary.images)} image(s) made" if summary.images else ""
    click.echo(
        f"{generator.run_name}: {len(summary.generated)} generated, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed{images} -> {summary.method_dir}"
    )
    for case_id, message in summary.failed.items():
        click.secho(f"  failed {case_id}: {message}", fg="red", err=True)
    if launch is not None:  # several ranks: each waits for all; rank 0's exit status speaks for every rank
        try:
            return all_ranks_generated(opts["out"], summary, [case.case_id for case in cases])
        except SyncError as error:
            _fail(str(error))
    return summary.ok


@main.command()
@click.option("--method", required=True, help="A registered method (see `videobench methods`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="RESULTS folder.")
@click.option("-o", "--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="A method option (`videobench methods NAME` lists them), e.g. -o steps=50 (repeatable).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A YAML or JSON file of method options (-o wins over it).")
@generation_options
@launcher_options
@random_weights_option
def generate(method: str, method_options: tuple[str, ...], config_file: Path | None, random_weights: bool,
             **opts) -> None:
    """Generate the videos of a suite with one method into RESULTS/<method>/."""
    from videobench.options import OptionError

    try:
        raw = _method_options(method_options, config_file)
    except OptionError as error:
        _fail(str(error))
    if opts["launcher"]:
        sys.exit(_launch(submit_generate, method, raw, opts, random_weights))
    ok = _generate(method, raw, opts, random_weights, preset=opts["preset"])
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- score


def _metric_setup(opts: Mapping[str, Any], random_weights: bool) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The ``--metrics`` columns and per-family options, after checking names, device, precision and weight files."""
    from videobench.metrics.preprocess import check_device, check_precision
    from videobench.metrics.registry import (
        expand_columns,
        families_for,
        metric_weight_specs,
        parse_metric_options,
    )
    from videobench.weights import MissingWeightsError, check_weights

    try:
        columns = expand_columns(_split(opts["metrics"]))
        raw = _scoped(opts["metric_options"], "-M")
        parsed = parse_metric_options(raw)
        check_device(opts["score_device"])
        check_precision(opts["score_device"], opts["score_dtype"])
        if not random_weights:
            check_weights(metric_weight_specs(families_for(columns), parsed), _weights_config(opts))
    except (MissingWeightsError, ValueError) as error:
        _fail(str(error))
    return columns, raw


def _score(results: Path, opts: Mapping[str, Any], random_weights: bool, progress: bool = True) -> bool:
    from videobench.distributed import is_main_process, local_device, resolve_shard
    from videobench.metrics import build_metrics
    from videobench.score import ScoreSummary, check_not_method_folder, score_results
    from videobench.scoring.shares import ShareSummary, score_share
    from videobench.sync import SyncError, join_launch
    from videobench.weights import MissingWeightsError

    try:  # torchrun/srun or --shard: this rank's share and GPU (docs/distributed.md)
        shard = resolve_shard(opts.get("score_shard"))
        opts = {**opts, "score_device": local_device(opts["score_device"])}
        if shard is not None:
            join_launch(results)
    except (ValueError, SyncError) as error:
        _fail(str(error))
    columns, metric_options = _metric_setup(opts, random_weights)
    if not results.is_dir():
        _fail(f"{results}: no such results folder")
    try:
        check_not_method_folder(results)  # before loading any model
        metrics = build_metrics(columns, _weights_config(opts), device=opts["score_device"],
                                dtype=opts["score_dtype"], random_weights=random_weights, options=metric_options)
    except (MissingWeightsError, ValueError) as error:  # ValueError: --device / --score-dtype unusable here
        _fail(str(error))
    if random_weights:
        click.secho("note: scoring with RANDOM metric weights; scores.csv and the leaderboard say so", fg="yellow", err=True)
    summary: ScoreSummary | ShareSummary
    try:
        if shard is None:
            summary = score_results(results, metrics, columns=columns, cache_dir=opts.get("cache_dir"),
                                    progress=progress)
        else:  # this share into the cache; under a launcher rank 0 then writes the tables
            summary = score_share(results, metrics, shard, columns=columns, cache_dir=opts.get("cache_dir"),
                                  progress=progress and is_main_process())
    except (ValueError, SyncError) as error:  # not a RESULTS folder: nothing ran; or a rank died
        _fail(str(error))
    click.echo(summary.describe())
    return summary.ok


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@scoring_options
@click.option("--shard", "score_shard", default=None,
              help="i/n: only compute every n-th case's metric values into the cache (SLURM arrays); a final run "
                   "without --shard writes the tables. Under torchrun/srun each rank takes its own.")
@launcher_options
@random_weights_option
def score(results: Path, random_weights: bool, **opts) -> None:
    """Score every method folder of RESULTS: scores.csv per method and RESULTS/leaderboard.csv."""
    if opts["launcher"]:
        sys.exit(_launch(submit_score, results, opts, random_weights))
    sys.exit(0 if _score(results, opts, random_weights) else EXIT_CASE_FAILURES)


def _launch(submit: Callable[..., int], *args: Any) -> int:
    """``--launcher``: submit the command's shards (:mod:`videobench.launcher`); returns the exit status."""
    try:
        return submit(*args)
    except LauncherError as error:
        _fail(str(error))


# --------------------------------------------------------------------------------------------- report


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="HTML file (default: RESULTS/leaderboard.html for one RESULTS folder; required for several).")
def report(results: tuple[Path, ...], out_path: Path | None) -> None:
    """Write the self-contained HTML leaderboard of one or more RESULTS folders.

    Several folders (e.g. results/suite-a results/suite-b, one per suite) merge into one page:
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


def _run_methods(names: list[str] | None) -> list[str]:
    """``--methods``, or every method registered as part of the default run (``default_run=True``)."""
    from videobench.methods import available_methods

    known = available_methods()
    if names is None:
        return [name for name, spec in known.items() if spec.default_run]
    missing = [name for name in names if name not in known]
    if missing:
        _fail(f"unknown method(s) {', '.join(missing)}; available: {', '.join(known)}")
    return names


@main.command()
@click.option("--methods", default=None, help="Comma-separated methods (default: those registered as the default run).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("-o", "--option", "method_options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="A method's option, METHOD.KEY=VALUE (repeatable).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A YAML or JSON file mapping method names to their options.")
@generation_options
@click.option("--metrics", default=None, help="Comma-separated columns or families to score.")
@click.option("-M", "--metric-option", "metric_options", multiple=True, metavar="FAMILY.KEY=VALUE",
              help="A metric family's option (repeatable).")
@click.option("--score-dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Score cache folder.")
@random_weights_option
def run(methods: str | None, out: Path, method_options: tuple[str, ...], config_file: Path | None,
        random_weights: bool, **opts) -> None:
    """Generate, score and report in one go (the README's main command); --device serves both stages.

    --preset applies to the methods that have it; the others (e.g. weight-free reference rows) run as they are.
    """
    from videobench.methods import get_method
    from videobench.options import OptionError, read_config_file

    opts["out"] = out
    opts["score_device"] = opts["device"]
    names = _run_methods(_split(methods))
    try:
        per_method: dict[str, dict[str, Any]] = read_config_file(config_file) if config_file else {}
        for name, values in _scoped(method_options, "-o").items():
            per_method.setdefault(name, {}).update(values)
    except (OptionError, ValueError) as error:
        _fail(str(error))
    unknown = [name for name in per_method if name not in names]
    if unknown:
        _fail(f"options given for method(s) not in this run: {', '.join(unknown)}; run: {', '.join(names)}")
    _metric_setup(opts, random_weights)  # missing metric weights: fail now, not after hours of generation
    ok = True
    for name in names:
        preset = opts["preset"] if opts["preset"] in get_method(name).presets else None
        ok = _generate(name, dict(per_method.get(name) or {}), opts, random_weights, preset=preset) and ok
    ok = _score(out, opts, random_weights) and ok
    from videobench.distributed import is_main_process
    from videobench.report import write_report

    if is_main_process():  # under torchrun/srun rank 0 writes the report
        click.echo(f"report: {write_report(out)}")
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- reproduce


@main.command()
@click.argument("table")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder of the plan: OUT/<suite>/ per suite and OUT/<table>.html.")
@click.option("-o", "--option", "row_options", multiple=True, metavar="ROW.KEY=VALUE",
              help="A row's option: ROW is a row id (METHOD@SETTING for Table 2) or a method name (repeatable).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A YAML or JSON file mapping row ids or method names to options (e.g. each ablation's LoRA).")
@click.option("--plan-only", is_flag=True, help="Print the plan (rows, cases, weights, estimates) and stop.")
@click.option("--suite", default=None, help="Run every row on this suite instead of the published ones (e.g. smoke).")
@data_root_option
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the first N cases of each suite.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "fp16", "bf16"]))
@click.option("--preset", default=None, help="A preset for the methods that have it (tiny: the CPU smoke plan).")
@click.option("--metrics", default=None, help="Comma-separated columns or families to score.")
@click.option("-M", "--metric-option", "metric_options", multiple=True, metavar="FAMILY.KEY=VALUE")
@click.option("--score-dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Score cache folder.")
@with_weights_options
@random_weights_option
def reproduce(table: str, out: Path, row_options: tuple[str, ...], config_file: Path | None, plan_only: bool,
              random_weights: bool, **opts) -> None:
    """Generate, score and report every row of the paper's Table 1 or Table 2 (table1 | table2).

    Prints the plan first: rows, cases per suite, which weights are present or missing (one message for all, and
    nothing runs while any is missing), and the estimated time per row. Finished videos are skipped, so the same
    command resumes.
    """
    from videobench.costs import row_estimator
    from videobench.methods import MethodContext, get_method
    from videobench.options import OptionError, read_config_file
    from videobench.report import write_report
    from videobench.reproduce import describe, plan
    from videobench.weights import MissingWeightsError, check_weights

    try:
        overrides: dict[str, dict[str, Any]] = read_config_file(config_file) if config_file else {}
        for row, values in _scoped(row_options, "-o").items():
            overrides.setdefault(row, {}).update(values)
        context = MethodContext(device=opts["device"], dtype=opts["dtype"], preset=opts["preset"],
                                random_weights=random_weights, weights_config=_weights_config(opts))
        the_plan = plan(table, context, overrides, suite=opts["suite"], data_root=opts["data_root"],
                        limit=opts["limit"], estimate=row_estimator())
    except (OptionError, ValueError) as error:
        _fail(str(error))
    for line in describe(the_plan):
        click.echo(line)
    try:
        check_weights([(row_id, resolved.spec) for row_id, resolved in the_plan.missing_weights],
                      _weights_config(opts))
    except MissingWeightsError as error:
        if not plan_only:
            _fail(str(error))
        click.echo(str(error))
    if the_plan.data_missing and not plan_only:
        _fail(f"data missing for suite(s) {', '.join(the_plan.data_missing)} (see above)")
    if plan_only:
        return
    opts.update(out=None, score_device=opts["device"], case_ids=None, frames=None, height=None, width=None,
                shard=None, overwrite=False)
    _metric_setup(opts, random_weights)  # missing metric weights: fail now, not after the generation
    ok = True
    suites = list(dict.fromkeys(name for row in the_plan.rows for name in row.suites))
    for name in suites:
        run_opts = {**opts, "suite": name, "out": out / name}
        for plan_row in (row for row in the_plan.rows if name in row.suites):
            preset = opts["preset"] if opts["preset"] in get_method(plan_row.method).presets else None
            ok = _generate(plan_row.method, plan_row.options, run_opts, random_weights, preset=preset) and ok
    for name in suites:
        ok = _score(out / name, opts, random_weights) and ok
    click.echo(f"report: {write_report([out / name for name in suites], out / f'{table}.html')}")
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


# --------------------------------------------------------------------------------------------- info


def _print_weight_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        colour = "green" if row["found"] != "missing" else "red"
        owner = f"{row['owner']}: " if row["owner"] else ""
        click.secho(f"{owner}{row['model']}  [{row['key']}]  {row['found']}", fg=colour, bold=True)
        for key in ("file", "path", "online", "sha256", "note"):
            if row.get(key):
                click.echo(f"    {key:8s} {row[key]}")


@main.command()
@click.option("--method", "method_names", multiple=True, help="Only this method (repeatable).")
@click.option("--metric", "metric_families", multiple=True, help="Only this metric family (repeatable).")
@click.option("-o", "--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="Options of the one --method given (which weights a run needs can depend on them).")
@click.option("-M", "--metric-option", "metric_options", multiple=True, metavar="FAMILY.KEY=VALUE")
@click.option("--preset", default=None, help="List what a run with this preset needs (usually nothing).")
@with_weights_options
def weights(method_names: tuple[str, ...], metric_families: tuple[str, ...], method_options: tuple[str, ...],
            metric_options: tuple[str, ...], preset: str | None, **opts) -> None:
    """Where each model's weights come from: every metric family and every method (with default options)."""
    from videobench.methods import MethodContext, available_methods, get_method
    from videobench.metrics.registry import metric_families as registered_families
    from videobench.metrics.registry import metric_weight_specs, parse_metric_options
    from videobench.options import OptionError, parse_assignments
    from videobench.weights import weights_table

    config = _weights_config(opts)
    try:
        if method_options and len(method_names) != 1:
            raise OptionError("-o needs exactly one --method")
        families = list(metric_families) or ([] if method_names else list(registered_families()))
        parsed = parse_metric_options(_scoped(metric_options, "-M"))
        specs: list = list(metric_weight_specs(families, parsed))
        chosen = [get_method(name) for name in method_names] if method_names else (
            [] if metric_families else list(available_methods().values()))
        context = MethodContext(preset=preset, weights_config=config)
        for spec in chosen:
            options = spec.parse_options(parse_assignments(method_options) if method_names else {})
            specs += [(spec.name, weight) for weight in spec.weight_specs(options, context)]
    except (KeyError, ValueError) as error:
        _fail(_first_line(error))
    _print_weight_rows(weights_table(specs, config))


@main.command()
@click.argument("name", required=False)
def methods(name: str | None) -> None:
    """List the registered methods, or describe one: options, presets, paper row, weights."""
    from videobench.methods import MethodContext, available_methods, get_method

    if name is None:
        for spec in available_methods().values():
            paper = spec.paper(spec.parse_options({})).table1_row if _defaults_parse(spec) else None
            click.echo(f"{spec.name:24s} {spec.kind:12s} {spec.description}" + (f" [paper: {paper}]" if paper else ""))
        return
    try:
        spec = get_method(name)
    except KeyError as error:
        _fail(_first_line(error))
    options = spec.parse_options({})
    published = spec.paper(options)
    click.secho(f"{spec.name} ({spec.kind})", bold=True)
    click.echo(f"  {spec.description}")
    click.echo(f"  paper row: {published.table1_row or '-'}   Table 2 setting: {published.table2_setting or '-'}")
    click.echo(f"  presets: {', '.join(spec.presets) or '-'}")
    click.echo("  options (-o KEY=VALUE):" if spec.describe_options() else "  options: none")
    for info in spec.describe_options():
        default = "-" if info.default is None else info.default
        click.echo(f"    {info.name:18s} {info.type:28s} default {default}")
        if info.help:
            click.echo(f"    {'':18s} {info.help}")
    needed = spec.weight_specs(options, MethodContext())
    click.echo("  weights (default options):" if needed else "  weights: none")
    for weight in needed:
        where = f"huggingface.co/{weight.hf_repo}" if weight.hf_repo else (weight.url or weight.option or "")
        click.echo(f"    {weight.key:10s} {weight.model}" + (f" ({where})" if where else ""))


def _defaults_parse(spec) -> bool:
    try:
        spec.parse_options({})
    except ValueError:
        return False
    return True


@main.command()
@click.argument("family", required=False)
def metrics(family: str | None) -> None:
    """List the metric families and their columns, or describe one family's options."""
    from videobench.metrics.registry import metric_families
    from videobench.options import describe_options

    families = metric_families()
    if family is not None and family not in families:
        _fail(f"unknown metric family {family!r}; families: {', '.join(families)}")
    for name, cls in families.items():
        if family is not None and name != family:
            continue
        default = "default" if cls.default else "opt-in (--metrics)"
        columns = ", ".join(f"{c.name} ({c.label})" for c in cls.column_specs)
        click.echo(f"{name:22s} {default:20s} {columns}")
        if family is not None:
            click.echo(f"  {cls.description}")
            for info in describe_options(cls.Options):
                click.echo(f"    -M {name}.{info.name}=...  {info.type}, default {info.default}  {info.help}")


@main.command()
@data_root_option
def suites(data_root: Path | None) -> None:
    """List the suites and their versions."""
    from videobench.suites import load_suite, suite_specs

    for name, spec in suite_specs().items():
        try:
            suite = load_suite(name, data_root)
            click.echo(f"{name:12s} {suite.version:16s} {len(suite.cases):5d} cases  {suite.description}")
        except (FileNotFoundError, ValueError) as error:
            click.echo(f"{name:12s} {spec.version:16s} (not available: {str(error).splitlines()[0]})")


@main.group()
def data() -> None:
    """Download and verify the benchmark images."""


def _downloadable(suite: str):
    from videobench.suites import downloadable_suites, get_suite

    if suite not in downloadable_suites():
        _fail(f"suite {suite!r} has nothing to download; downloadable suites: {', '.join(downloadable_suites())}")
    return get_suite(suite)


@data.command("download")
@click.argument("suite")
@data_root_option
@click.option("--base-url", default=None, help="Mirror base URL replacing https://raw.githubusercontent.com.")
@click.option("--from", "source_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Install from a local folder laid out like the upstream repositories instead of downloading.")
def data_download(suite: str, data_root: Path | None, base_url: str | None, source_dir: Path | None) -> None:
    """Fetch a suite's images from their pinned public sources, verifying sha256."""
    from videobench import data as data_module

    spec = _downloadable(suite)
    try:
        result = data_module.download(spec, data_root, base_urls=base_url, source_dir=source_dir)
    except data_module.DownloadError as error:
        _fail(str(error))
    click.echo(f"{suite}: {len(result.downloaded)} downloaded, {len(result.skipped)} already verified "
               f"-> {result.data_root}")


@data.command("verify")
@click.argument("suite")
@data_root_option
def data_verify(suite: str, data_root: Path | None) -> None:
    """Check that every file of a suite is present with the pinned sha256."""
    from videobench import data as data_module

    result = data_module.verify(data_root, [_downloadable(suite)])
    for line in result.lines():
        click.echo(line)
    sys.exit(0 if result.passed else EXIT_CASE_FAILURES)


if __name__ == "__main__":
    main()
