"""``--launcher slurm|local``: run ``videobench generate``/``score`` as ``--shards N`` tasks through submitit.

``slurm`` submits one SLURM job array (task ``i`` runs shard ``i/N``; ``--partition``, ``--time``, ``--gpus``,
``--cpus``, ``--mem`` or any submitit parameter from ``--launcher-config FILE``), prints the job ids and returns;
``--wait`` waits for the tasks and reports each. ``local`` runs the tasks as processes of this machine through
submitit's LocalExecutor and always waits (what the tests use). Logs and submitit's pickles go under
``RESULTS/.slurm/<job id>/`` (or ``--log-dir``).

``score`` adds one writer task after the shares (SLURM: ``--dependency=afterany:<array>``): the shares fill the
shared score cache, the writer writes scores.csv and leaderboard.csv (and computes whatever a share left).

Inside a task the command runs as ``videobench generate ... --shard i/N`` would: the same resume, atomic writes
and cases.jsonl merge, so a task that SLURM requeues or that you resubmit redoes nothing that is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)

LAUNCHERS = ("slurm", "local")
#: The job time limit (minutes) when neither --time nor the config file sets one (submitit's own is 5).
DEFAULT_TIME_MIN = 24 * 60
#: The options below, as they arrive in the command's keyword arguments (stripped before a task runs).
OPTION_KEYS = ("launcher", "shards", "partition", "time_min", "gpus", "cpus", "mem_gb", "launcher_config",
               "log_dir", "wait")
LOG_DIR = ".slurm"


def launcher_options(func: Callable) -> Callable:
    """The ``--launcher`` options of ``generate`` and ``score``."""
    options = [
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


class LauncherError(ValueError):
    """The launcher options cannot be used (bad config file, unknown submitit parameter, no sbatch)."""


@dataclass
class Submission:
    """What was submitted: the tasks (label, submitit job) and where their logs are."""

    launcher: str
    log_dir: Path
    jobs: list[tuple[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ parameters


def executor_parameters(opts: Mapping[str, Any], name: str) -> dict[str, Any]:
    """submitit parameters: the ``--launcher-config`` file's, then the command line's on top."""
    from videobench.options import OptionError, read_config_file

    params: dict[str, Any] = {}
    if opts.get("launcher_config") is not None:
        try:
            params = dict(read_config_file(opts["launcher_config"]))
        except OptionError as error:
            raise LauncherError(str(error)) from None
    given = {"slurm_partition": opts.get("partition"), "timeout_min": opts.get("time_min"),
             "gpus_per_node": opts.get("gpus"), "cpus_per_task": opts.get("cpus"), "mem_gb": opts.get("mem_gb")}
    params.update({key: value for key, value in given.items() if value is not None})
    params.setdefault("timeout_min", DEFAULT_TIME_MIN)
    params.setdefault("name", name)
    params.update(nodes=1, tasks_per_node=1)  # one process per shard: the task's shard comes from --shard
    return params


def _executor(launcher: str, log_dir: Path, params: Mapping[str, Any]):
    """A submitit executor writing under ``log_dir/<job id>``."""
    import submitit

    folder = log_dir / "%j"
    if launcher == "local":
        local = submitit.LocalExecutor(folder)
        local.update_parameters(**{k: v for k, v in params.items() if not k.startswith("slurm_")})
        return local
    try:
        executor = submitit.AutoExecutor(folder, cluster="slurm")
    except RuntimeError as error:  # no srun on this machine
        raise LauncherError(f"--launcher slurm: {error}") from None
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError) as error:  # submitit's way of refusing a parameter
        raise LauncherError(f"--launcher-config / options: {error}") from None
    return executor


def _submit(executor, fn: Callable, argument_lists: Sequence[tuple], array: bool) -> list[Any]:
    """One job per argument tuple, as one SLURM job array when ``array`` (else one submission each)."""
    try:
        if not array:
            return [executor.submit(fn, *arguments) for arguments in argument_lists]
        executor.update_parameters(slurm_array_parallelism=len(argument_lists))
        with executor.batch():
            jobs = [executor.submit(fn, *arguments) for arguments in argument_lists]
        return jobs
    except FileNotFoundError as error:
        raise LauncherError(f"cannot submit to SLURM: {error} (is this a SLURM login node?)") from None


# ------------------------------------------------------------------------------------------------ tasks


def _task_opts(opts: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """The command's options for one task: no launcher options, ``changes`` on top."""
    return {**{key: value for key, value in opts.items() if key not in OPTION_KEYS}, **changes}


def _exit_status(run: Callable[[], bool]) -> dict[str, Any]:
    """Run one CLI stage inside a task; its ``sys.exit`` (a setup error) becomes a result, not a lost job."""
    try:
        ok = run()
    except SystemExit as stop:
        return {"ok": False, "exit": stop.code}
    return {"ok": bool(ok), "exit": 0 if ok else 1}


def generate_task(method: str, raw_options: dict[str, Any], opts: dict[str, Any], random_weights: bool
                  ) -> dict[str, Any]:
    """A task: ``videobench generate`` of one shard (``opts["shard"]``)."""
    from videobench import cli

    return {"shard": opts["shard"], **_exit_status(lambda: cli._generate(
        method, raw_options, opts, random_weights, preset=opts["preset"], progress=False))}


def score_task(results: Path, opts: dict[str, Any], random_weights: bool) -> dict[str, Any]:
    """A task: the metric values of one share (``opts["score_shard"]``), or the tables when it is ``None``."""
    from videobench import cli

    return {"shard": opts.get("score_shard") or "writer",
            **_exit_status(lambda: cli._score(results, opts, random_weights, progress=False))}


# ------------------------------------------------------------------------------------------------ submit


def _check(opts: Mapping[str, Any], shard_key: str) -> None:
    if opts.get(shard_key):
        raise LauncherError("--shard and --launcher do not go together: the launcher gives each task its shard "
                            "(--shards N)")


def _report(submission: Submission, wait: bool) -> int:
    """Print the job ids and logs; when waiting, each task's outcome. Returns the exit status."""
    click.echo(f"{submission.launcher}: {len(submission.jobs)} task(s) submitted; logs under {submission.log_dir}")
    for label, job in submission.jobs:
        click.echo(f"  {label}: job {job.job_id}  log {job.paths.stdout}")
    if not wait:
        click.echo("not waiting: follow them with squeue; run the same command again to resume what failed")
        return 0
    return _wait(submission)


def _wait(submission: Submission) -> int:
    failed = 0
    for label, job in submission.jobs:
        try:
            result = job.result()
        except Exception as error:  # noqa: BLE001 - submitit raises its own errors for a crashed task
            failed += 1
            click.secho(f"  {label}: job {job.job_id} crashed ({type(error).__name__}); see {job.paths.stderr}",
                        fg="red", err=True)
            continue
        state = "ok" if result.get("ok") else f"FAILED (exit {result.get('exit')})"
        failed += 0 if result.get("ok") else 1
        click.echo(f"  {label}: job {job.job_id} {state}")
    return 0 if not failed else 1


def submit_generate(method: str, raw_options: dict[str, Any], opts: dict[str, Any], random_weights: bool) -> int:
    """Submit ``--shards`` generation tasks; returns the exit status."""
    _check(opts, "shard")
    launcher, shards = opts["launcher"], opts["shards"]
    log_dir = Path(opts.get("log_dir") or Path(opts["out"]) / LOG_DIR)
    executor = _executor(launcher, log_dir, executor_parameters(opts, f"videobench-generate-{method}"))
    arguments = [(method, raw_options, _task_opts(opts, shard=f"{i}/{shards}"), random_weights)
                 for i in range(shards)]
    jobs = _submit(executor, generate_task, arguments, array=launcher == "slurm")
    submission = Submission(launcher, log_dir, [(f"shard {i}/{shards}", job) for i, job in enumerate(jobs)])
    return _report(submission, wait=opts.get("wait") or launcher == "local")


def submit_score(results: Path, opts: dict[str, Any], random_weights: bool) -> int:
    """Submit ``--shards`` share tasks and one writer task after them; returns the writer's exit status."""
    _check(opts, "score_shard")
    launcher, shards = opts["launcher"], opts["shards"]
    log_dir = Path(opts.get("log_dir") or Path(results) / LOG_DIR)
    params = executor_parameters(opts, "videobench-score")
    executor = _executor(launcher, log_dir, params)
    submission = Submission(launcher, log_dir)
    if shards > 1:
        arguments = [(results, _task_opts(opts, score_shard=f"{i}/{shards}"), random_weights) for i in range(shards)]
        jobs = _submit(executor, score_task, arguments, array=launcher == "slurm")
        shares = [(f"share {i}/{shards}", job) for i, job in enumerate(jobs)]
        if launcher == "local":  # the writer starts once the shares are done
            _report(Submission(launcher, log_dir, shares), wait=True)
        else:
            submission.jobs += shares
            array_id = str(jobs[0].job_id).split("_")[0]
            executor = _executor(launcher, log_dir, {**params, "slurm_dependency": f"afterany:{array_id}"})
    writer = _submit(executor, score_task, [(results, _task_opts(opts, score_shard=None), random_weights)],
                     array=False)[0]
    submission.jobs.append(("writer of scores.csv and leaderboard.csv", writer))
    return _report(submission, wait=opts.get("wait") or launcher == "local")
