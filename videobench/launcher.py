"""``--launcher slurm|local``: run ``videobench generate``/``score`` as ``--shards N`` tasks through submitit.

``slurm`` submits one SLURM job array (task ``i`` runs shard ``i/N``; ``--partition``, ``--time``, ``--gpus``,
``--cpus``, ``--mem`` or any submitit parameter from ``--launcher-config FILE``), prints the job ids and returns;
``--wait`` waits for the tasks and reports each. ``local`` runs the tasks as processes of this machine through
submitit's LocalExecutor and always waits (what the tests use). Logs and submitit's pickles go under
``RESULTS/.slurm/<job id>/`` (or ``--log-dir``).

``score`` adds one writer task after the shares (SLURM: ``--dependency=afterany:<array>``): the shares fill the
shared score cache, the writer writes scores.csv and leaderboard.csv (and computes whatever a share left).

Inside a task the command runs as ``videobench generate ... --shard i/N`` would: the same resume, atomic writes
and cases.jsonl merge, so a task that SLURM requeues or that you resubmit redoes nothing that is done. A task is a
function of :mod:`videobench.api` bound to its settings, handed in by the caller: this module imports neither the
API nor the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from videobench.errors import LaunchError
from videobench.settings import LAUNCHERS, LaunchSettings

logger = logging.getLogger(__name__)

__all__ = ["LAUNCHERS", "LaunchSettings", "LauncherError", "submit_shards", "submit_shares"]

#: The job time limit (minutes) when neither --time nor the config file sets one (submitit's own is 5).
DEFAULT_TIME_MIN = 24 * 60
LOG_DIR = ".slurm"


class Echo(Protocol):
    """Where the submission's lines go (:class:`videobench.api.Console`)."""

    def echo(self, message: str) -> None: ...

    def failure(self, message: str) -> None: ...


class LauncherError(LaunchError, ValueError):
    """The launcher options cannot be used (bad config file, unknown submitit parameter, no sbatch)."""


@dataclass
class Submission:
    """What was submitted: the tasks (label, submitit job) and where their logs are."""

    launcher: str
    log_dir: Path
    jobs: list[tuple[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ parameters


def executor_parameters(launch: LaunchSettings, name: str) -> dict[str, Any]:
    """submitit parameters: the ``--launcher-config`` file's, then the command line's on top."""
    from videobench.options import OptionError, read_config_file

    params: dict[str, Any] = {}
    if launch.launcher_config is not None:
        try:
            params = dict(read_config_file(Path(launch.launcher_config)))
        except OptionError as error:
            raise LauncherError(str(error)) from None
    given = {"slurm_partition": launch.partition, "timeout_min": launch.time_min, "gpus_per_node": launch.gpus,
             "cpus_per_task": launch.cpus, "mem_gb": launch.mem_gb}
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


# ------------------------------------------------------------------------------------------------ submit

#: A task: called in the job with its shard (``"i/N"``, or ``None`` for the writer of the tables); returns
#: ``{"shard": label, "ok": bool, "exit": status}`` (:func:`videobench.api._task`).
Task = Callable[[str | None], Mapping[str, Any]]


def _report(submission: Submission, wait: bool, console: Echo) -> int:
    """Print the job ids and logs; when waiting, each task's outcome. Returns the exit status."""
    console.echo(f"{submission.launcher}: {len(submission.jobs)} task(s) submitted; logs under {submission.log_dir}")
    for label, job in submission.jobs:
        console.echo(f"  {label}: job {job.job_id}  log {job.paths.stdout}")
    if not wait:
        console.echo("not waiting: follow them with squeue; run the same command again to resume what failed")
        return 0
    return _wait(submission, console)


def _wait(submission: Submission, console: Echo) -> int:
    failed = 0
    for label, job in submission.jobs:
        try:
            result = job.result()
        except Exception as error:  # noqa: BLE001 - submitit raises its own errors for a crashed task
            failed += 1
            console.failure(f"  {label}: job {job.job_id} crashed ({type(error).__name__}); see {job.paths.stderr}")
            continue
        state = "ok" if result.get("ok") else f"FAILED (exit {result.get('exit')})"
        failed += 0 if result.get("ok") else 1
        console.echo(f"  {label}: job {job.job_id} {state}")
    return 0 if not failed else 1


def submit_shards(launch: LaunchSettings, out: Path, name: str, task: Task, console: Echo) -> int:
    """Run ``task`` on shards ``0/N`` .. ``N-1/N`` as ``launch.shards`` tasks; returns the exit status."""
    shards = launch.shards
    log_dir = Path(launch.log_dir or out / LOG_DIR)
    executor = _executor(launch.launcher, log_dir, executor_parameters(launch, name))
    jobs = _submit(executor, task, [(f"{i}/{shards}",) for i in range(shards)], array=launch.launcher == "slurm")
    submission = Submission(launch.launcher, log_dir, [(f"shard {i}/{shards}", job) for i, job in enumerate(jobs)])
    return _report(submission, launch.wait or launch.launcher == "local", console)


def submit_shares(launch: LaunchSettings, results: Path, name: str, task: Task, console: Echo) -> int:
    """Run ``task`` on ``launch.shards`` shares, then once as the writer (shard ``None``) after them; returns the
    writer's exit status (SLURM: the writer depends on the share array, ``afterany``)."""
    launcher, shards = launch.launcher, launch.shards
    log_dir = Path(launch.log_dir or results / LOG_DIR)
    params = executor_parameters(launch, name)
    executor = _executor(launcher, log_dir, params)
    submission = Submission(launcher, log_dir)
    if shards > 1:
        jobs = _submit(executor, task, [(f"{i}/{shards}",) for i in range(shards)], array=launcher == "slurm")
        shares = [(f"share {i}/{shards}", job) for i, job in enumerate(jobs)]
        if launcher == "local":  # the writer starts once the shares are done
            _report(Submission(launcher, log_dir, shares), True, console)
        else:
            submission.jobs += shares
            array_id = str(jobs[0].job_id).split("_")[0]
            executor = _executor(launcher, log_dir, {**params, "slurm_dependency": f"afterany:{array_id}"})
    writer = _submit(executor, task, [(None,)], array=False)[0]
    submission.jobs.append(("writer of scores.csv and leaderboard.csv", writer))
    return _report(submission, launch.wait or launcher == "local", console)
