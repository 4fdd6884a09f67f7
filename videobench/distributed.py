"""Which share of the work this process does when a launcher started several of them, and on which device.

``torchrun`` and ``accelerate launch`` set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in every process they start;
``srun`` sets ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (``SLURM_NTASKS``) and ``SLURM_LOCALID`` in every task of a
job step. ``videobench generate`` and ``videobench score`` read them here, so that rank ``r`` of ``n`` takes the
shard ``r/n`` without a ``--shard`` option, and ``--device cuda`` becomes the rank's own GPU. Nothing else in the
package reads these variables.

Rules (docs/distributed.md):

- torchrun's variables win over SLURM's (``srun torchrun ...`` starts several workers per SLURM task);
- SLURM's count only inside a job step (``SLURM_STEP_ID`` set): an ``sbatch`` script itself has ``SLURM_PROCID=0``
  and ``SLURM_NTASKS=N`` although it is one process;
- a world of one process is no launch at all;
- an explicit ``--shard i/n`` wins when there is no launch (a SLURM array task, a manual run), and must agree with
  the launch when there is one: every rank gets the same command line, so any other ``--shard`` would make every
  rank generate the same cases and leave the others to nobody.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes of one launch."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" (also accelerate launch) or "srun"

    @property
    def shard(self) -> str:
        """The ``--shard`` value of this rank: ``"rank/world_size"``."""
        return f"{self.rank}/{self.world_size}"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes what summarises every rank's work."""
        return self.rank == 0


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` set in ``environ``, as an int (``None`` when none is set)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def launch_from_environment(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, or ``None`` when it runs alone (no launcher, or a world of one).

    Raises ``ValueError`` for inconsistent variables (a rank outside ``0..world_size-1``).
    """
    environ = os.environ if environ is None else environ
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    launcher = "torchrun"
    local = _int(environ, "LOCAL_RANK")
    if rank is None or world is None:
        rank, world, launcher = None, None, "srun"
        if environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID", "")).strip():
            rank = _int(environ, "SLURM_PROCID")
            world = _int(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
            local = _int(environ, "SLURM_LOCALID")
    if rank is None or world is None or world <= 1:
        return None
    if not 0 <= rank < world:
        raise ValueError(f"{launcher} set rank {rank} with world size {world}: need 0 <= rank < world size")
    return Launch(rank=rank, world_size=world, local_rank=local if local is not None else 0, launcher=launcher)


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world_size)`` of the launch this process belongs to, or ``None`` when it runs alone."""
    launch = launch_from_environment(environ)
    return None if launch is None else (launch.rank, launch.world_size)


def resolve_shard(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The ``i/n`` shard this process works on: ``--shard`` if given, else the launch's rank, else ``None``.

    Raises ``ValueError`` when ``--shard`` is given under a launch of several ranks and differs from the rank's
    own shard (every rank would do the same share and nobody the rest).
    """
    from videobench.generation import parse_shard

    launch = launch_from_environment(environ)
    if explicit:
        index, count = parse_shard(explicit)
        if launch is not None and (index, count) != (launch.rank, launch.world_size):
            raise ValueError(
                f"--shard {explicit} disagrees with {launch.launcher}, which started this process as rank "
                f"{launch.rank} of {launch.world_size}: every rank would take shard {explicit}. Drop --shard "
                f"(each rank then takes its own), or launch a single process per shard"
            )
        return f"{index}/{count}"
    return None if launch is None else launch.shard


def local_device(device: str, environ: Mapping[str, str] | None = None) -> str:
    """``device`` for this rank: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` under a launch of several ranks.

    The index wraps around the visible GPUs (``srun --gpus-per-task=1`` shows each task one GPU, ``cuda:0``).
    An explicit ``cuda:N``, ``cpu`` or any other device is kept as it is.
    """
    if device != "cuda":
        return device
    launch = launch_from_environment(environ)
    if launch is None:
        return device
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{launch.local_rank % visible if visible else launch.local_rank}"


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """True unless this process is a rank other than 0 of a launch."""
    launch = launch_from_environment(environ)
    return launch is None or launch.is_main
