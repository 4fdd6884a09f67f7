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
    from videobench.settings import WeightsSettings

    return WeightsSettings(weights_dir=opts.get("weights_dir"), download=bool(opts.get("download"))).weights_config()


# --------------------------------------------------------------------------------------------- launcher


def launcher_options(func):
    """The ``--launcher`` options of ``generate`` and ``score`` (:class:`videobench.settings.LaunchSettings`)."""
    from videobench.launcher import DEFAULT_TIME_MIN, LAUNCHERS

    return _apply(func, [
        click.option("--launcher", type=click.Choice(LAUNCHERS), default=None,
                     help="Run --shards tasks through submitit: a SLURM job array, or local processes (docs/"
                          "distributed.md)."),
        click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --launcher: the number of tasks (task i runs shard i/N)."),
        click.option("--partition", default=None, help="With --launcher slurm: the partition."),
        click.option("--time", "time_min", type=click.IntRange(min=1), default=None,
                     help=f"With --launcher: each task's time limit in minutes (default {DEFAULT_TIME_MIN})."),
        click.option("--gpus", type=click.IntRange(min=0), default=None, help="With --launcher: GPUs per task."),
        click.option("--cpus", type=click.IntRange(min=1), default=None, help="With --launcher: CPUs per task."),
        click.option("--mem", "mem_gb", type=click.FloatRange(min=0), default=None,
                     help="With --launcher: memory per task in GB."),
        click.option("--launcher-config", type=click.Path(path_type=Path), default=None,
                     help="With --launcher: a YAML/JSON mapping of submitit parameters (slurm_account, slurm_qos, "
                          "slurm_setup, ...); the options above win over it."),
        click.option("--log-dir", type=click.Path(path_type=Path), default=None,
                     help="With --launcher: where logs go (default RESULTS/.slurm)."),
        click.option("--wait", is_flag=True, help="With --launcher slurm: wait for the tasks and report them."),
    ])


LAUNCH_KEYS = ("launcher", "shards", "partition", "time_min", "gpus", "cpus", "mem_gb", "launcher_config", "log_dir",
               "wait")


def _launch_settings(opts: dict[str, Any]):
    """Pop the launcher flags out of ``opts``: the :class:`LaunchSettings`, or None without ``--launcher``."""
    from videobench.settings import LaunchSettings

    values = {key: opts.pop(key) for key in LAUNCH_KEYS}
    return LaunchSettings(**values) if values["launcher"] else None


def _settings(cls, **fields: Any):
    """Build a settings object; its own check failing is a setup error (one line, exit 2)."""
    from videobench.errors import VideoBenchError

    try:
        return cls(**fields)
    except VideoBenchError as error:
        _fail(str(error))


def _call(stage: Callable[..., Any], settings: Any) -> Any:
    """Run an API stage; a :class:`~videobench.errors.VideoBenchError` is one ``error:`` line and exit 2."""
    from videobench.errors import VideoBenchError

    try:
        return stage(settings)
    except VideoBenchError as error:
        _fail(str(error))


def _exit(ok: bool) -> None:
    sys.exit(0 if ok else EXIT_CASE_FAILURES)


def _weights_fields(opts: dict[str, Any]) -> dict[str, Any]:
    return {"weights_dir": opts.pop("weights_dir", None), "download": opts.pop("download", False)}


def _case_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """The generation flags as :class:`~videobench.settings.CaseSettings` fields."""
    fields = {key: opts.pop(key) for key in ("suite", "data_root", "limit", "seed", "device", "dtype", "preset",
                                             "frames", "height", "width", "shard", "overwrite")}
    return {**fields, "cases": _split(opts.pop("case_ids")), **_weights_fields(opts)}


def _metric_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """The scoring flags as :class:`~videobench.settings.MetricSettings` fields."""
    try:
        metric_options = _scoped(opts.pop("metric_options"), "-M")
    except ValueError as error:
        _fail(str(error))
    return {"metrics": _split(opts.pop("metrics")), "metric_options": metric_options,
            "score_dtype": opts.pop("score_dtype"), "cache_dir": opts.pop("cache_dir")}


def _scoped_options(items: Sequence[str], config_file: Path | None) -> dict[str, dict[str, Any]]:
    """``-o SCOPE.KEY=VALUE`` on top of a config file mapping scopes (methods, rows) to options."""
    from videobench.options import OptionError, read_config_sections

    try:
        scoped: dict[str, dict[str, Any]] = read_config_sections(config_file) if config_file else {}
        for scope, values in _scoped(items, "-o").items():
            scoped.setdefault(scope, {}).update(values)
    except (OptionError, ValueError) as error:
        _fail(str(error))
    return scoped


# --------------------------------------------------------------------------------------------- generate


def _method_options(raw_items: Sequence[str], config_file: Path | None) -> dict[str, Any]:
    """A method's options: the config file's mapping, then ``-o key=value`` on top."""
    from videobench.options import OptionError, parse_assignments, read_config_file

    try:
        options = read_config_file(config_file) if config_file is not None else {}
        options.update(parse_assignments(raw_items))
    except OptionError as error:
        _fail(str(error))
    return options


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
def generate(method: str, out: Path, method_options: tuple[str, ...], config_file: Path | None,
             random_weights: bool, **opts) -> None:
    """Generate the videos of a suite with one method into RESULTS/<method>/."""
    from videobench import api

    options = _method_options(method_options, config_file)
    settings = _settings(api.GenerateSettings, method=method, out=out, options=options, random_weights=random_weights,
                         launch=_launch_settings(opts), **_case_fields(opts))
    _exit(_call(api.generate, settings).ok)


# --------------------------------------------------------------------------------------------- score


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
    from videobench import api

    settings = _settings(api.ScoreSettings, results=results, device=opts.pop("score_device"),
                         shard=opts.pop("score_shard"), random_weights=random_weights,
                         launch=_launch_settings(opts), **_metric_fields(opts), **_weights_fields(opts))
    _exit(_call(api.score, settings).ok)


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
    from videobench import api

    _call(api.report, api.ReportSettings(results=list(results), out=out_path))


# --------------------------------------------------------------------------------------------- run


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
    from videobench import api

    settings = _settings(api.EvaluateSettings, out=out, methods=_split(methods),
                         method_options=_scoped_options(method_options, config_file), random_weights=random_weights,
                         **_metric_fields(opts), **_case_fields(opts))
    _exit(_call(api.evaluate, settings).ok)


# --------------------------------------------------------------------------------------------- reproduce


@main.command()
@click.argument("table")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder of the plan: OUT/<suite>/ per suite and OUT/<table>.html (not needed with --plan-only).")
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
@click.option("--shard", default=None,
              help="i/n: only this share of every row and of the scoring, no tables (SLURM arrays); a final run "
                   "without --shard writes them. Under torchrun/srun each rank takes its own.")
@launcher_options
@random_weights_option
def reproduce(table: str, out: Path | None, row_options: tuple[str, ...], config_file: Path | None, plan_only: bool,
              random_weights: bool, **opts) -> None:
    """Generate, score and report every row of the paper's Table 1 or Table 2 (table1 | table2).

    Prints the plan first: rows, cases per suite, which weights are present or missing (one message for all, and
    nothing runs while any is missing), and the estimated time per row. Finished videos are skipped, so the same
    command resumes. Under torchrun/accelerate/srun every rank takes its share of every row; --launcher runs
    --shards tasks, then one that writes the tables and the page (docs/distributed.md).
    """
    from videobench import api

    row_options_ = _scoped_options(row_options, config_file)
    fields = {key: opts.pop(key) for key in ("suite", "data_root", "limit", "seed", "device", "dtype", "preset",
                                             "shard")}
    settings = _settings(api.ReproduceSettings, table=table, out=out, row_options=row_options_, plan_only=plan_only,
                         random_weights=random_weights, launch=_launch_settings(opts), **fields,
                         **_metric_fields(opts), **_weights_fields(opts))
    result = _call(api.reproduce, settings)
    if not plan_only:
        _exit(result.ok)


# --------------------------------------------------------------------------------------------- info


def _print_weight_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        colour = "green" if row["found"] != "missing" else "red"
        owner = f"{row['owner']}: " if row["owner"] else ""
        click.secho(f"{owner}{row['model']}  [{row['key']}]  {row['found']}", fg=colour, bold=True)
        for key in ("file", "path", "online", "sha256", "note"):
            if row.get(key):
                click.echo(f"    {key:8s} {row[key]}")


@main.group(invoke_without_command=True)
@click.option("--method", "method_names", multiple=True, help="Only this method (repeatable).")
@click.option("--metric", "metric_families", multiple=True, help="Only this metric family (repeatable).")
@click.option("-o", "--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="Options of the one --method given (which weights a run needs can depend on them).")
@click.option("-M", "--metric-option", "metric_options", multiple=True, metavar="FAMILY.KEY=VALUE")
@click.option("--preset", default=None, help="List what a run with this preset needs (usually nothing).")
@with_weights_options
@click.pass_context
def weights(ctx: click.Context, method_names: tuple[str, ...], metric_families: tuple[str, ...],
            method_options: tuple[str, ...], metric_options: tuple[str, ...], preset: str | None, **opts) -> None:
    """Where each model's weights come from: every metric family and every method (with default options).

    `videobench weights download --for TARGET` fetches them.
    """
    if ctx.invoked_subcommand is not None:
        return
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


@weights.command("download")
@click.option("--for", "target", required=True, metavar="TARGET",
              help="table1, table2, metrics, all, or comma-separated method names (metrics may be one of them).")
@click.option("--dry-run", is_flag=True, help="List each model once (rows, size, gated or not) and the total; "
                                              "download nothing.")
@click.option("--from", "source_dir", type=click.Path(path_type=Path), default=None,
              help="Import the models from a folder copied from a machine with network (a Hugging Face cache, "
                   "torch hub checkpoints, or weights-folder files) instead of downloading.")
@with_weights_options
def weights_download(target: str, dry_run: bool, source_dir: Path | None, **opts) -> None:
    """Fetch every model TARGET needs (through huggingface_hub: HF_HOME, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE).

    Models already present are skipped; each published sha256 is checked. Offline, the first connection error
    stops with one line saying how to proceed (a mirror, or --from DIR).
    """
    from videobench import weight_downloads as wd

    config = _weights_config(opts)
    try:
        needs = wd.collect_needs(target, config)
    except (KeyError, ValueError) as error:
        _fail(_first_line(error))
    if source_dir is not None:
        try:
            for line in wd.import_folder(source_dir, needs, config):
                click.echo(f"imported {line}")
        except wd.WeightsDownloadError as error:
            _fail(str(error))
    missing = [need for need in needs if not need.resolve(config).found]
    click.echo(f"{target}: {len(needs)} model(s), {len(needs) - len(missing)} present, {len(missing)} to fetch")
    if source_dir is not None:
        for need in missing:
            click.secho(f"  still missing: {need.spec.model} (needed by {', '.join(need.owners)})", fg="red")
        sys.exit(0 if not missing else EXIT_CASE_FAILURES)
    listings, failures = [], []
    for need in missing:
        try:
            listings.append(wd.list_remote(need))
        except wd.HubUnreachable as error:
            _fail(str(error))
        except wd.WeightsDownloadError as error:
            failures.append(f"{need.spec.model}: {error}")
    total = 0
    for listing in listings:
        spec = listing.need.spec
        where = spec.explicit or spec.hf_repo if listing.source == "hub" else spec.url
        gated = f"  GATED ({listing.gated}): needs HF_TOKEN and the licence accepted" if listing.gated else ""
        click.echo(f"  {spec.model}  [{where}]  {wd.human_size(listing.size)}{gated}")
        click.echo(f"      needed by: {', '.join(listing.need.owners)}")
        total += listing.size or 0
    unknown = sum(1 for listing in listings if listing.size is None)
    click.echo(f"total to download: {wd.human_size(total)}" + (f" (+{unknown} of unknown size)" if unknown else ""))
    if not dry_run:
        for listing in listings:
            try:
                path = wd.download(listing)
                click.secho(f"  ok {listing.need.spec.model} -> {path}", fg="green")
            except wd.HubUnreachable as error:
                _fail(str(error))
            except wd.WeightsDownloadError as error:
                failures.append(f"{listing.need.spec.model}: {error}")
    for failure in failures:
        click.secho(f"  failed {failure}", fg="red", err=True)
    sys.exit(EXIT_CASE_FAILURES if failures else 0)


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
    from videobench.options import describe_options, did_you_mean

    families = metric_families()
    if family is not None and family not in families:
        _fail(f"unknown metric family {family!r}{did_you_mean(family, families)}; families: {', '.join(families)}")
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
@click.argument("name", required=False)
@data_root_option
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With NAME: write the suite's cases to FILE.jsonl or FILE.csv (case id, prompt, subject, entity, "
                   "reference paths, seed) for another tool to generate from.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --export: the seed written per case.")
def suites(name: str | None, data_root: Path | None, export_path: Path | None, seed: int) -> None:
    """List the suites and their versions, or show one suite (and --export its cases)."""
    from videobench.suites import get_suite, load_suite, suite_specs

    if name is None:
        if export_path is not None:
            _fail("--export needs a suite NAME")
        for key, spec in suite_specs().items():
            try:
                suite = load_suite(key, data_root)
                click.echo(f"{key:12s} {suite.version:16s} {len(suite.cases):5d} cases  {suite.description}")
            except (FileNotFoundError, ValueError) as error:
                click.echo(f"{key:12s} {spec.version:16s} (not available: {str(error).splitlines()[0]})")
        return
    try:
        spec = get_suite(name)
    except KeyError as error:
        _fail(_first_line(error))
    try:
        suite = load_suite(name, data_root)
    except (FileNotFoundError, ValueError) as error:
        click.secho(f"{name} ({spec.version}): {spec.description}", bold=True)
        click.secho(f"  data: missing: {str(error).splitlines()[0]}", fg="red")
        click.echo(f"  fix:  videobench data download {name}" + (f" --data-root {data_root}" if data_root else ""))
        sys.exit(EXIT_SETUP_ERROR)
    from videobench.interchange import export_cases

    subjects = sorted({case.subject for case in suite.cases})
    prompts = sorted({case.prompt_id or case.prompt for case in suite.cases})
    click.secho(f"{name} ({suite.version}): {suite.description}", bold=True)
    click.echo(f"  cases: {len(suite.cases)}   subjects: {len(subjects)}   prompts: {len(prompts)}   "
               f"video: {suite.num_frames} frames, {suite.height}x{suite.width}, {suite.fps} fps")
    click.echo("  data: present" + (f" (verify: videobench data verify {name})" if spec.downloadable else
                                     " (drawn by code)"))
    click.echo(f"  subjects: {', '.join(subjects)}")
    if export_path is not None:
        try:
            path = export_cases(suite, export_path, seed=seed)
        except (ValueError, OSError) as error:
            _fail(str(error))
        click.echo(f"exported {len(suite.cases)} case(s) -> {path}")


@main.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--suite", required=True, help="The suite the videos answer (`videobench suites`).")
@click.option("--method", "label", required=True, help="The method folder's name and the leaderboard row's name.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="RESULTS folder.")
@click.option("--mapping", type=click.Path(path_type=Path), default=None,
              help="A CSV with the columns file,case_id (default: videos are named <case_id>.mp4/.webm/...).")
@data_root_option
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Only the first N cases of the suite.")
@click.option("--cases", "case_ids", default=None, help="Comma-separated case ids.")
@click.option("--seed", type=int, default=None, help="The seed the videos were made with, if any (recorded).")
@click.option("--allow-missing", is_flag=True, help="Record cases without a video as failed instead of refusing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing method folder of the same name.")
def import_videos(folder: Path, suite: str, label: str, out: Path, mapping: Path | None, data_root: Path | None,
                  limit: int | None, case_ids: str | None, seed: int | None, allow_missing: bool,
                  overwrite: bool) -> None:
    """Make RESULTS/<method>/ from a folder of videos generated elsewhere, named by case id.

    Every case must have a video that decodes (else one error lists them and nothing is written); the files are
    copied unchanged. `videobench score` and `report` then treat the folder like any method's (its row says
    imported). Export the cases for your tool with `videobench suites NAME --export cases.jsonl`.
    """
    from videobench import interchange
    from videobench.suites import load_suite

    try:
        loaded = load_suite(suite, data_root)
        cases = loaded.select(_split(case_ids), limit)
        pairs = interchange.read_mapping(mapping) if mapping is not None else None
        result = interchange.import_videos(folder, loaded, label, out, mapping=pairs, cases=cases, seed=seed,
                                           allow_missing=allow_missing, overwrite=overwrite)
    except (KeyError, FileNotFoundError, ValueError, OSError) as error:
        _fail(_first_line(error))
    click.echo(f"{label}: {len(result.imported)} video(s) imported, {len(result.missing)} missing "
               f"-> {result.method_dir}")
    sys.exit(0 if result.ok else EXIT_CASE_FAILURES)


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
