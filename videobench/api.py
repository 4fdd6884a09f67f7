"""The Python API of VideoBench: what ``videobench generate / score / report / run / reproduce`` do, as functions.

Like lm-evaluation-harness's ``simple_evaluate``, one call runs a stage with typed settings
(:mod:`videobench.settings`) and returns what it did::

    from videobench.api import GenerateSettings, ScoreSettings, generate, score

    generate(GenerateSettings(method="customvideox", preset="tiny", random_weights=True, out="results/nb"))
    result = score(ScoreSettings(results="results/nb", random_weights=True, metrics=["clip_t", "t_cons"]))
    result.scores  # a pandas DataFrame: one row per (method, case)

The command line (:mod:`videobench.cli`) parses flags into these settings, calls these functions, prints and
exits; the launcher's tasks (:mod:`videobench.launcher`) call them too. Errors that mean "nothing could run" raise a
:class:`~videobench.errors.VideoBenchError` (the CLI's exit status 2); a case that fails is recorded in the result
(``ok`` is false: the CLI's exit status 1) and in the files, and the other cases go on.

The functions print what the commands print (a summary line per stage, notes, one line per failed case) through a
:class:`Console`; ``Console(quiet=True)`` silences them, ``progress=False`` the progress bars.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from videobench.errors import (
    DataMissingError,
    LaunchError,
    ResultsFolderError,
    SettingsError,
    VideoBenchError,
    WeightsMissingError,
)
from videobench.settings import (
    EvaluateSettings,
    GenerateSettings,
    LaunchSettings,
    MetricSettings,
    ReportSettings,
    ReproduceSettings,
    ScoreSettings,
)

if TYPE_CHECKING:
    import pandas as pd

    from videobench.reproduction import Plan
    from videobench.scoring.runner import ScoreSummary
    from videobench.scoring.shares import ShareSummary

__all__ = [
    "Console", "DataMissingError", "EvaluateResult", "EvaluateSettings", "GenerateResult", "GenerateSettings",
    "LaunchError", "LaunchSettings", "ReportSettings", "ReproduceResult", "ReproduceSettings", "ResultsFolderError",
    "ScoreResult", "ScoreSettings", "SettingsError", "VideoBenchError", "WeightsMissingError", "evaluate",
    "generate", "report", "reproduce", "score",
]


class Console:
    """Where the lines of a stage go: outcomes to stdout, notes (yellow) and failed cases (red) to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def echo(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def note(self, message: str) -> None:
        if not self.quiet:
            click.secho(message, fg="yellow", err=True)

    def failure(self, message: str) -> None:
        if not self.quiet:
            click.secho(message, fg="red", err=True)


# --------------------------------------------------------------------------------------------- results


@dataclass
class GenerateResult:
    """What :func:`generate` did for one method (this process's shard; under a launch, ``ok`` covers every rank)."""

    method: str
    run_name: str | None  # the method folder's name (None when the shards ran as launcher tasks)
    method_dir: Path | None
    generated: list[str] = field(default_factory=list)  # case ids generated now
    skipped: list[str] = field(default_factory=list)  # case ids already done
    failed: dict[str, str] = field(default_factory=dict)  # case id -> error
    images: list[str] = field(default_factory=list)  # case ids whose stage-1 image was made now
    ok: bool = True

    @property
    def paths(self) -> list[Path]:
        """The files this call wrote: run.json, cases.jsonl and each generated video (and stage-1 image)."""
        from videobench.results import CASES_FILE, RUN_FILE, image_relpath, video_relpath

        if self.method_dir is None:
            return []
        return ([self.method_dir / RUN_FILE, self.method_dir / CASES_FILE]
                + [self.method_dir / video_relpath(case_id) for case_id in self.generated]
                + [self.method_dir / image_relpath(case_id) for case_id in self.images])


@dataclass
class ScoreResult:
    """What :func:`score` did: the tables written (by this process) and the scores as DataFrames.

    ``scores`` has one row per (method, case), the ``method`` column first, read back from each ``scores.csv``;
    ``leaderboard`` is ``leaderboard.csv``. Both are ``None`` when this process wrote no table (a share of a
    sharded run other than the writer).
    """

    results_dir: Path
    ok: bool
    summary: Any  # videobench.scoring.runner.ScoreSummary, or videobench.scoring.shares.ShareSummary for a share
    scores: pd.DataFrame | None = None
    leaderboard: pd.DataFrame | None = None
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # method -> case id -> error
    errors: list[str] = field(default_factory=list)  # problems of the folder itself (stray files, no method)

    @property
    def paths(self) -> list[Path]:
        """scores.csv of every method and leaderboard.csv (empty when this process wrote no table)."""
        summary = self.summary
        if summary is None or not hasattr(summary, "methods"):
            return []
        return [method.scores_csv for method in summary.methods] + (
            [summary.leaderboard_csv] if summary.leaderboard_csv is not None else [])


@dataclass
class EvaluateResult:
    """What :func:`evaluate` did: each method's generation, the scoring and the report page."""

    generated: list[GenerateResult]
    scored: ScoreResult
    report: Path | None  # None on the ranks other than 0 of a launch
    ok: bool

    @property
    def scores(self) -> pd.DataFrame | None:
        return self.scored.scores

    @property
    def leaderboard(self) -> pd.DataFrame | None:
        return self.scored.leaderboard


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did: the plan, and unless ``plan_only`` each row's generation, each suite's scoring
    and the page."""

    plan: Plan
    generated: list[GenerateResult] = field(default_factory=list)
    scored: dict[str, ScoreResult] = field(default_factory=dict)  # suite -> its scoring
    report: Path | None = None
    ok: bool = True


# --------------------------------------------------------------------------------------------- errors


def _message(error: BaseException) -> str:
    """The one line of a library error (a KeyError's ``str`` would add quotes)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


@contextlib.contextmanager
def _nothing_runs(default: type[VideoBenchError], *kinds: type[BaseException]) -> Iterator[None]:
    """Raise the library errors ``kinds`` as ``default``; missing weights, bad options and rank failures always
    as their own :class:`~videobench.errors.VideoBenchError`, whatever step raised them."""
    from videobench.options import OptionError
    from videobench.sync import SyncError
    from videobench.weights import MissingWeightsError

    try:
        yield
    except VideoBenchError:
        raise
    except MissingWeightsError as error:
        raise WeightsMissingError(_message(error)) from error
    except SyncError as error:
        raise LaunchError(_message(error)) from error
    except (KeyError, OptionError) as error:
        raise SettingsError(_message(error)) from error
    except kinds as error:
        raise default(_message(error)) from error


def _split_method_options(raw: Mapping[str, Any], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-method options of a run that covers ``names``; options for another method are refused."""
    unknown = [name for name in raw if name not in names]
    if unknown:
        raise SettingsError(f"options given for method(s) not in this run: {', '.join(unknown)}; run: "
                            f"{', '.join(names)}")
    return {name: dict(raw.get(name) or {}) for name in names}


# --------------------------------------------------------------------------------------------- generate


def generate(settings: GenerateSettings, *, progress: bool = True, console: Console | None = None) -> GenerateResult:
    """Generate the videos of a suite with one method into ``settings.out/<run name>/`` (``videobench generate``).

    Resumes (a case with a valid video is skipped), shards (``settings.shard`` or the rank of a torchrun/srun
    launch), and with ``settings.launch`` submits the shards as launcher tasks instead.

    Raises:
        VideoBenchError: nothing could run (unknown method/suite/case, bad option, missing data or weights,
            unusable device or RESULTS folder, a rank that disagrees or died).
    """
    console = console or Console()
    if settings.launch is not None:
        return _launch_generate(settings, console)
    from videobench.devices import check_device
    from videobench.distributed import local_device, resolve_shard
    from videobench.methods import MethodContext, build_generator, get_method
    from videobench.suites import load_suite
    from videobench.sync import all_ranks_generated, join_launch

    with _nothing_runs(SettingsError, ValueError):  # torchrun/srun: this rank's shard and GPU
        shard = resolve_shard(settings.shard)
        device = local_device(settings.device)
    with _nothing_runs(LaunchError):
        launch = join_launch(settings.out)  # the heartbeat starts before any work (docs/distributed.md)
    with _nothing_runs(SettingsError, ValueError):
        check_device(device)  # no CUDA here: one line now, not a driver traceback in the first case
        spec = get_method(settings.method)
    try:
        suite = load_suite(settings.suite, settings.data_root)
    except FileNotFoundError as error:  # the suite's images are not installed: the message says how to get them
        raise DataMissingError(_message(error)) from error
    except (KeyError, ValueError, OSError) as error:
        raise SettingsError(_message(error)) from error
    with _nothing_runs(SettingsError, ValueError, OSError):
        cases = suite.select(list(settings.cases) if settings.cases else None, settings.limit)
        context = MethodContext(
            device=device, dtype=settings.dtype, preset=settings.preset, random_weights=settings.random_weights,
            num_frames=settings.frames or suite.num_frames, height=settings.height or suite.height,
            width=settings.width or suite.width, fps=suite.fps, weights_config=settings.weights_config(),
        )
    with _nothing_runs(WeightsMissingError, ValueError, OSError):  # a weight file that cannot be read
        generator, options = build_generator(spec, settings.options, context)
    if generator.random_weights:
        console.note(f"note: {generator.run_name} uses RANDOM weights; its outputs are stamped as such")
    from videobench.generation import RunConflictError, run_generation  # here: tests replace it in its module

    with _nothing_runs(ResultsFolderError, RunConflictError, ValueError):
        summary = run_generation(generator, suite, cases, settings.out, seed=settings.seed, shard=shard,
                                 overwrite=settings.overwrite, progress=progress and (launch is None or launch.is_main),
                                 metadata=spec.metadata(options))
    images = f", {len(summary.images)} image(s) made" if summary.images else ""
    console.echo(f"{generator.run_name}: {len(summary.generated)} generated, {len(summary.skipped)} already done, "
                 f"{len(summary.failed)} failed{images} -> {summary.method_dir}")
    for case_id, message in summary.failed.items():
        console.failure(f"  failed {case_id}: {message}")
    ok = summary.ok
    if launch is not None:  # several ranks: each waits for all; rank 0's outcome speaks for every rank
        with _nothing_runs(LaunchError):
            ok = all_ranks_generated(settings.out, summary, [case.case_id for case in cases])
    return GenerateResult(spec.name, generator.run_name, summary.method_dir, summary.generated, summary.skipped,
                          summary.failed, summary.images, ok)


def _task(stage: Any, settings: Any, shard: str | None) -> dict[str, Any]:
    """One launcher task: ``stage`` (:func:`generate`, :func:`score` or :func:`reproduce`) on one shard."""
    label = shard or "writer"
    try:
        result = stage(replace(settings, shard=shard, launch=None), progress=False)
    except VideoBenchError as error:  # in the task's log, as the command would print it
        click.secho(f"error: {error}", fg="red", err=True)
        return {"shard": label, "ok": False, "exit": 2}
    return {"shard": label, "ok": bool(result.ok), "exit": 0 if result.ok else 1}


def _launch_generate(settings: GenerateSettings, console: Console) -> GenerateResult:
    from videobench.launcher import LauncherError, submit_shards

    if settings.shard:
        raise SettingsError("--shard and --launcher do not go together: the launcher gives each task its shard "
                            "(--shards N)")
    assert settings.launch is not None
    with _nothing_runs(LaunchError, LauncherError):
        status = submit_shards(settings.launch, Path(settings.out), f"videobench-generate-{settings.method}",
                               functools.partial(_task, generate, settings), console=console)
    return GenerateResult(settings.method, None, None, ok=status == 0)


# --------------------------------------------------------------------------------------------- score


def _metric_setup(settings: MetricSettings, device: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The columns to compute and the parsed per-family options, after checking names, device, precision and
    (unless random weights) that every weight file is present: before any model loads or any video is made."""
    from videobench.metrics.preprocess import check_device, check_precision
    from videobench.metrics.registry import expand_columns, families_for, metric_weight_specs, parse_metric_options
    from videobench.weights import check_weights

    with _nothing_runs(SettingsError, ValueError):
        columns = expand_columns(list(settings.metrics) if settings.metrics else None)
        raw = {family: dict(values) for family, values in settings.metric_options.items()}
        parsed = parse_metric_options(raw)
        check_device(device)
        check_precision(device, settings.score_dtype)
        if not settings.random_weights:
            check_weights(metric_weight_specs(families_for(columns), parsed), settings.weights_config())
    return columns, raw


def _metric_weight_needs(settings: MetricSettings) -> list[tuple[str, Any]]:
    """``(family, WeightSpec)`` for every metric model the settings' columns need (names checked)."""
    from videobench.metrics.registry import expand_columns, families_for, metric_weight_specs, parse_metric_options

    with _nothing_runs(SettingsError, ValueError):
        columns = expand_columns(list(settings.metrics) if settings.metrics else None)
        parsed = parse_metric_options({family: dict(values) for family, values in settings.metric_options.items()})
        return [(f"metric {family}", spec) for family, spec in metric_weight_specs(families_for(columns), parsed)]


def score(settings: ScoreSettings, *, progress: bool = True, console: Console | None = None) -> ScoreResult:
    """Score every method folder of ``settings.results``: scores.csv per method and leaderboard.csv
    (``videobench score``).

    With ``settings.shard`` (or under torchrun/srun) this process computes its share of the values into the score
    cache; under a launch rank 0 then writes the tables. With ``settings.launch`` the shares and one writer run
    as launcher tasks.

    Raises:
        VideoBenchError: nothing could run (unknown metric, bad option, missing weights, unusable device, not a
            RESULTS folder, a rank that died).
    """
    console = console or Console()
    results = Path(settings.results)
    if settings.launch is not None:
        return _launch_score(settings, results, console)
    from videobench.distributed import is_main_process, local_device, resolve_shard
    from videobench.metrics import build_metrics
    from videobench.scoring.runner import check_not_method_folder, score_results
    from videobench.scoring.shares import score_share
    from videobench.sync import join_launch

    with _nothing_runs(SettingsError, ValueError):  # torchrun/srun or --shard: this rank's share and GPU
        shard = resolve_shard(settings.shard)
        device = local_device(settings.device)
        if shard is not None:
            join_launch(results)
    columns, metric_options = _metric_setup(settings, device)
    if not results.is_dir():
        raise ResultsFolderError(f"{results}: no such results folder")
    with _nothing_runs(ResultsFolderError, ValueError):
        check_not_method_folder(results)  # before loading any model
    with _nothing_runs(WeightsMissingError, ValueError, OSError):  # also an unusable --device / --score-dtype
        metrics = build_metrics(columns, settings.weights_config(), device=device, dtype=settings.score_dtype,
                                random_weights=settings.random_weights, options=metric_options)
    if settings.random_weights:
        console.note("note: scoring with RANDOM metric weights; scores.csv and the leaderboard say so")
    with _nothing_runs(ResultsFolderError, ValueError):  # not a RESULTS folder: nothing ran (a dead rank: LaunchError)
        if shard is None:
            summary: ScoreSummary | ShareSummary = score_results(results, metrics, columns=columns,
                                                                 cache_dir=settings.cache_dir, progress=progress)
        else:  # this share into the cache; under a launcher rank 0 then writes the tables
            summary = score_share(results, metrics, shard, columns=columns, cache_dir=settings.cache_dir,
                                  progress=progress and is_main_process())
    console.echo(summary.describe())
    return _score_result(results, summary)


def _score_result(results: Path, summary: Any) -> ScoreResult:
    """The result of a scoring: the tables it wrote read back as DataFrames."""
    import pandas as pd

    from videobench.scoring.runner import read_scores

    if not hasattr(summary, "methods"):  # a share: no table written here
        return ScoreResult(results, summary.ok, summary)
    frames = [read_scores(method.scores_csv).assign(method=method.method) for method in summary.methods
              if method.scores_csv.is_file()]
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(scores):
        scores = scores[["method", *[column for column in scores.columns if column != "method"]]]
    leaderboard = (pd.read_csv(summary.leaderboard_csv) if summary.leaderboard_csv is not None
                   and summary.leaderboard_csv.is_file() else None)
    failures: dict[str, dict[str, str]] = {}
    if "error" in scores:
        for row in scores[scores["error"] != ""].itertuples():
            failures.setdefault(str(row.method), {})[str(row.case_id)] = str(row.error)
    return ScoreResult(results, summary.ok, summary, scores, leaderboard, failures, list(summary.global_errors))


def _launch_score(settings: ScoreSettings, results: Path, console: Console) -> ScoreResult:
    from videobench.launcher import LauncherError, submit_shares

    if settings.shard:
        raise SettingsError("--shard and --launcher do not go together: the launcher gives each task its shard "
                            "(--shards N)")
    assert settings.launch is not None
    with _nothing_runs(LaunchError, LauncherError):
        status = submit_shares(settings.launch, results, "videobench-score",
                               functools.partial(_task, score, settings), console=console)
    return ScoreResult(results, status == 0, None)


# --------------------------------------------------------------------------------------------- report


def report(settings: ReportSettings, *, progress: bool = True, console: Console | None = None) -> Path:
    """Write the self-contained HTML page of one or more RESULTS folders; return its path (``videobench report``).

    Raises:
        ResultsFolderError: a folder is missing or not scored, or several folders and no ``out``.
    """
    from videobench.reporting import ReportInputError, write_report

    with _nothing_runs(ResultsFolderError, FileNotFoundError, ReportInputError):
        results = settings.results
        path = write_report(results if isinstance(results, (str, os.PathLike)) else list(results),
                            settings.out, progress=progress)
    (console or Console()).echo(f"report: {path}")
    return path


# --------------------------------------------------------------------------------------------- evaluate


def _default_run(names: Sequence[str] | None) -> list[str]:
    """``names``, or every method registered as part of the default run (``default_run=True``)."""
    from videobench.methods import available_methods
    from videobench.options import did_you_mean

    known = available_methods()
    if names is None:
        return [name for name, spec in known.items() if spec.default_run]
    missing = [name for name in names if name not in known]
    if missing:
        raise SettingsError(f"unknown method(s) {', '.join(missing)}{did_you_mean(missing, known)}; "
                            f"available: {', '.join(known)}")
    return list(names)


def evaluate(settings: EvaluateSettings, *, progress: bool = True, console: Console | None = None) -> EvaluateResult:
    """Generate with each method, score and report into ``settings.out`` (``videobench run``).

    The metric weights are checked before anything is generated. ``ok`` is false when any case failed.
    """
    from videobench.distributed import is_main_process
    from videobench.methods import get_method

    console = console or Console()
    names = _default_run(settings.methods)
    options = _split_method_options(settings.method_options, names)
    _metric_setup(settings, settings.device)  # missing metric weights: fail now, not after hours of generation
    generated = []
    for name in names:
        preset = settings.preset if settings.preset in get_method(name).presets else None
        generated.append(generate(_generate_settings(settings, name, options[name], settings.out, preset=preset),
                                  progress=progress, console=console))
    scored = score(_score_settings(settings, settings.out), progress=progress, console=console)
    page = None
    if is_main_process():  # under torchrun/srun rank 0 writes the report
        page = report(ReportSettings(results=settings.out), progress=progress, console=console)
    ok = all(result.ok for result in generated) and scored.ok
    return EvaluateResult(generated, scored, page, ok)


def _generate_settings(settings: EvaluateSettings | ReproduceSettings, method: str, options: Mapping[str, Any],
                       out: str | os.PathLike, **changes: Any) -> GenerateSettings:
    """The generation of one method within a run or a reproduction (its generic settings shared)."""
    shared = {key: getattr(settings, key) for key in (
        "weights_dir", "download", "random_weights", "suite", "data_root", "limit", "seed", "device", "dtype",
        "preset", "shard")}
    if isinstance(settings, EvaluateSettings):
        shared.update({key: getattr(settings, key) for key in ("cases", "frames", "height", "width", "overwrite")})
    return GenerateSettings(**{**shared, **changes}, method=method, out=out, options=dict(options))


def _score_settings(settings: MetricSettings, results: str | os.PathLike, shard: str | None = None) -> ScoreSettings:
    """The scoring within a run or a reproduction (``device`` serves both stages)."""
    return ScoreSettings(results=results, metrics=settings.metrics, metric_options=settings.metric_options,
                         score_dtype=settings.score_dtype, cache_dir=settings.cache_dir,
                         weights_dir=settings.weights_dir, download=settings.download,
                         random_weights=settings.random_weights, device=getattr(settings, "device", "cpu"),
                         shard=shard)


# --------------------------------------------------------------------------------------------- reproduce


def reproduce(settings: ReproduceSettings, *, progress: bool = True, console: Console | None = None
              ) -> ReproduceResult:
    """Plan, generate, score and report every row of the paper's Table 1 or Table 2 (``videobench reproduce``).

    Prints the plan first (rows, cases per suite, weights present or missing, estimated time per row); raises
    :class:`~videobench.errors.WeightsMissingError` listing every missing model before anything runs (with
    ``plan_only`` the message is printed and the plan returned). Each row is generated on each of its suites into
    ``out/<suite>/`` (resuming), each suite scored, and ``out/<table>.html`` written beside the paper's numbers.
    """
    from costmodel.estimates import row_estimator
    from videobench.methods import MethodContext
    from videobench.reproduction import describe, missing_models, plan
    from videobench.weights import MissingWeightsError, check_weights

    console = console or Console()
    with _nothing_runs(SettingsError, ValueError):
        context = MethodContext(device=settings.device, dtype=settings.dtype, preset=settings.preset,
                                random_weights=settings.random_weights, weights_config=settings.weights_config())
        overrides = {row: dict(values) for row, values in settings.row_options.items()}
        the_plan = plan(settings.table, context, overrides, suite=settings.suite, data_root=settings.data_root,
                        limit=settings.limit, estimate=row_estimator())
    from videobench.distributed import is_main_process

    main = is_main_process()  # under torchrun/srun rank 0 prints the plan and writes the page
    for line in describe(the_plan) if main else ():
        console.echo(line)
    if settings.out is None and not settings.plan_only:
        raise SettingsError("--out is needed to run the plan (only --plan-only runs without it)")
    needed = [(row_id, resolved.spec) for row_id, resolved in the_plan.missing_weights]
    if not settings.random_weights:  # the metric models that score the table, listed with the rows' models
        needed += _metric_weight_needs(settings)
    try:
        check_weights(missing_models(needed, settings.weights_config()), settings.weights_config(),
                      hint=f"sizes and gated models: videobench weights download --for {settings.table} --dry-run; "
                           f"fetch them all: videobench weights download --for {settings.table}")
    except MissingWeightsError as error:
        if not settings.plan_only:
            raise WeightsMissingError(str(error)) from error
        if main:
            console.echo(str(error))
    if the_plan.data_missing and not settings.plan_only:
        raise DataMissingError(f"data missing for suite(s) {', '.join(the_plan.data_missing)} (see above)")
    if settings.plan_only or settings.out is None:  # out is None only with plan_only (checked above)
        return ReproduceResult(the_plan)
    if settings.launch is not None:
        return _launch_reproduce(settings, the_plan, Path(settings.out), console)
    return _run_plan(settings, the_plan, Path(settings.out), progress, console)


def _run_plan(settings: ReproduceSettings, the_plan: Plan, out: Path, progress: bool, console: Console
              ) -> ReproduceResult:
    """Generate every row on each of its suites, score each suite folder, write the page.

    Under torchrun/srun every rank takes its share of every row and of every suite's scoring (rank 0 writes the
    tables and the page); with ``settings.shard`` this process does that share and writes no table or page. Rows
    run longest first by the cost model's estimate (:func:`videobench.reproduction.run_order`).
    """
    from videobench.distributed import is_main_process
    from videobench.methods import get_method
    from videobench.reporting import write_report
    from videobench.reproduction import run_order

    _metric_setup(settings, settings.device)  # missing metric weights: fail now, not after the generation
    result = ReproduceResult(the_plan)
    suites = list(dict.fromkeys(name for row in the_plan.rows for name in row.suites))
    for name in suites:
        for row in (row for row in run_order(the_plan.rows) if name in row.suites):
            preset = settings.preset if settings.preset in get_method(row.method).presets else None
            result.generated.append(generate(
                _generate_settings(settings, row.method, row.options, out / name, suite=name, preset=preset),
                progress=progress, console=console))
    for name in suites:
        result.scored[name] = score(_score_settings(settings, out / name, shard=settings.shard), progress=progress,
                                    console=console)
    if settings.shard is None and is_main_process():
        with _nothing_runs(ResultsFolderError, FileNotFoundError, ValueError):
            result.report = write_report([out / name for name in suites], out / f"{the_plan.table}.html",
                                         title=_TITLES.get(the_plan.table))
        console.echo(f"report: {result.report}")
    result.ok = all(run.ok for run in result.generated) and all(run.ok for run in result.scored.values())
    return result


#: The page of each published table, titled for what it reproduces.
_TITLES = {"table1": "Table 1 reproduced: zero-shot customized video generation",
           "table2": "Table 2 reproduced: ablations of CustomVideoX"}


def _launch_reproduce(settings: ReproduceSettings, the_plan: Plan, out: Path, console: Console) -> ReproduceResult:
    """``launch.shards`` tasks each run their share of every row and of the scoring; one writer task after them
    resumes the whole plan (nothing left to generate), writes the tables from the score cache and the page."""
    from videobench.launcher import LauncherError, submit_shares

    if settings.shard:
        raise SettingsError("--shard and --launcher do not go together: the launcher gives each task its shard "
                            "(--shards N)")
    assert settings.launch is not None
    _metric_setup(settings, settings.device)
    with _nothing_runs(LaunchError, LauncherError):
        status = submit_shares(settings.launch, out, f"videobench-reproduce-{the_plan.table}",
                               functools.partial(_task, reproduce, settings), console=console)
    return ReproduceResult(the_plan, ok=status == 0)
