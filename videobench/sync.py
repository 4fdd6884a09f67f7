"""A barrier between the ranks of one launch that tells a slow rank from a dead one.

Every rank writes small keys on a shared *board*:

- ``alive/<rank>``: the rank's clock, rewritten every few seconds by a daemon thread (the heartbeat);
- ``gone/<rank>``: written when the process exits (normally or by an exception) while a barrier may wait for it;
- ``arrive/<n>-<name>/<rank>`` and ``left/<n>-<name>/<rank>``: the two phases of the n-th barrier.

A rank waiting at a barrier waits as long as the missing ranks are alive (a resumed run can leave one rank hours of
work more than another) and stops with :class:`SyncError` naming the rank as soon as one exited, stopped beating for
``stale_after`` seconds (SIGKILL, out-of-memory killer, a lost node) or never beat at all; ``timeout`` bounds the
whole wait (a hung but living rank). Rank 0 also waits for every rank to have *left* a barrier, so that it never
tears the board down under a rank still reading it.

Two boards, chosen by :func:`rank_sync` (docs/distributed.md says why):

- the c10d TCP store that ``torchrun``/``accelerate launch`` set up (``MASTER_ADDR``/``MASTER_PORT``): new for each
  launch, so no key of an earlier, killed launch can release a barrier; no files, no process group (a method
  remains free to start its own NCCL group);
- files under ``<root>/.videobench-sync/<launch id>/`` on the shared RESULTS folder, for ``srun`` (the id is the
  SLURM job and step, unique to the launch) or any launcher given ``VIDEOBENCH_SYNC_ID``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import click

from mediaio.atomic import atomic_write_text
from videobench.distributed import Launch, launch_from_environment
from videobench.generation import GenerationSummary, selection_outcome

logger = logging.getLogger(__name__)

#: A value unique to one launch, shared by its ranks: use the file board with this id.
SYNC_ID_ENV = "VIDEOBENCH_SYNC_ID"
#: Seconds without a heartbeat after which a rank counts as dead (default 300).
STALE_ENV = "VIDEOBENCH_SYNC_STALE"
#: Seconds one barrier waits at most, even for living ranks (default 86400).
TIMEOUT_ENV = "VIDEOBENCH_SYNC_TIMEOUT"
SYNC_DIR = ".videobench-sync"
DEFAULT_STALE_S = 300.0
DEFAULT_TIMEOUT_S = 86400.0


class SyncError(RuntimeError):
    """A barrier cannot complete: a rank exited, died or did not come in time."""


class Board(Protocol):
    """Keys and string values that every rank of the launch sees."""

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str) -> str | None: ...

    #: Where the board lives, for messages (the store's address, the folder).
    where: str


class StoreBoard:
    """The c10d TCP store of a ``torchrun``/``accelerate`` launch (``env://`` rendezvous, no process group)."""

    def __init__(self, launch: Launch, environ: Mapping[str, str], connect_timeout_s: float = 300.0):
        import torch.distributed as dist

        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=connect_timeout_s)))
        attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._store = dist.PrefixStore(f"videobench/attempt_{attempt}/", store)
        self._lock = threading.Lock()  # the heartbeat thread and the waiting thread share one client
        self.where = f"the torchrun store at {environ.get('MASTER_ADDR')}:{environ.get('MASTER_PORT')}"

    def set(self, key: str, value: str) -> None:
        with self._lock, self._lost():
            self._store.set(key, value)

    def get(self, key: str) -> str | None:
        with self._lock, self._lost():
            if not self._store.check([key]):
                return None
            return self._store.get(key).decode()

    @contextlib.contextmanager
    def _lost(self) -> Iterator[None]:
        """A store that went away (its torchrun agent was killed) is a SyncError, not a traceback."""
        try:
            yield
        except RuntimeError as error:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
            raise SyncError(f"lost {self.where} ({type(error).__name__}: {error}); was torchrun stopped?") from None


class FileBoard:
    """One small file per key in a folder that every rank sees (shared storage)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.where = str(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key.replace("/", "__")

    def set(self, key: str, value: str) -> None:
        atomic_write_text(self._path(key), value)

    def get(self, key: str) -> str | None:
        try:
            return self._path(key).read_text(encoding="utf-8")
        except OSError:
            return None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SyncError(f"{name}={value!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise SyncError(f"{name}={value!r}: expected a positive number of seconds")
    return seconds


class RankSync:
    """Barriers between the ranks of one launch over a :class:`Board`, with a heartbeat thread."""

    def __init__(self, board: Board, launch: Launch, stale_after: float = DEFAULT_STALE_S,
                 timeout: float = DEFAULT_TIMEOUT_S, poll: float = 0.2):
        self.board, self.launch = board, launch
        self.stale_after, self.timeout, self.poll = stale_after, timeout, poll
        self._count = 0
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._heartbeat, name="videobench-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ---------------------------------------------------------------------------------------- liveness
    def _beat(self) -> None:
        self.board.set(f"alive/{self.launch.rank}", repr(time.time()))

    def _heartbeat(self) -> None:
        interval = min(30.0, max(0.1, self.stale_after / 10))
        while not self._stop.wait(interval):
            try:
                self._beat()
            except Exception as error:  # noqa: BLE001 - the board may be gone at the very end of a launch
                logger.debug("heartbeat of rank %d failed: %s", self.launch.rank, error)

    def close(self) -> None:
        """Stop the heartbeat and tell the other ranks that this one is gone (idempotent; runs at exit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.board.set(f"gone/{self.launch.rank}", repr(time.time()))
        except Exception as error:  # noqa: BLE001 - rank 0's store may already be closed
            logger.debug("rank %d could not say it is gone: %s", self.launch.rank, error)

    def _check_alive(self, rank: int, what: str, waited: float) -> None:
        """Raise SyncError when ``rank`` cannot come any more (gone, stale or never started)."""
        if self.board.get(f"gone/{rank}") is not None:
            raise SyncError(f"rank {rank} exited before {what}; see its log (this rank gives up instead of "
                            "waiting forever)")
        beat = self.board.get(f"alive/{rank}")
        if beat is None:
            if waited > self.stale_after:
                raise SyncError(f"rank {rank} never started: no heartbeat on {self.board.where} within "
                                f"{self.stale_after:.0f} s while waiting for {what}")
            return
        silent = time.time() - float(beat)
        if silent > self.stale_after:
            raise SyncError(f"rank {rank} stopped beating {silent:.0f} s ago (killed, crashed or its node lost?) "
                            f"while this rank waited for {what}")

    # ---------------------------------------------------------------------------------------- barrier
    def _wait_all(self, phase: str, tag: str, what: str) -> None:
        start = time.monotonic()
        missing = list(range(self.launch.world_size))
        last_check = 0.0
        while True:
            missing = [rank for rank in missing if self.board.get(f"{phase}/{tag}/{rank}") is None]
            if not missing:
                return
            waited = time.monotonic() - start
            if waited > self.timeout:
                raise SyncError(f"waited {waited:.0f} s for rank(s) {', '.join(map(str, missing))} to reach "
                                f"{what}; they are alive but not there (hung?). {TIMEOUT_ENV} sets this limit")
            if waited - last_check >= min(5.0, self.stale_after / 4):
                last_check = waited
                for rank in missing:
                    self._check_alive(rank, what, waited)
            time.sleep(self.poll)

    def barrier(self, name: str) -> None:
        """Return once every rank called ``barrier`` (the n-th call of each rank meets the n-th of the others).

        Raises SyncError as soon as a missing rank exited or died, or after ``timeout`` seconds.
        """
        self._count += 1
        tag = f"{self._count}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
        what = f"the barrier '{name}'"
        logger.info("rank %d/%d waits for every rank at %s", self.launch.rank, self.launch.world_size, what)
        self.board.set(f"arrive/{tag}/{self.launch.rank}", "1")
        self._wait_all("arrive", tag, what)
        self.board.set(f"left/{tag}/{self.launch.rank}", "1")
        if self.launch.is_main:
            self._wait_all("left", tag, what)


_SYNCS: dict[str, RankSync] = {}


def _board(launch: Launch, root: Path, environ: Mapping[str, str]) -> Board:
    """The board of this launch (see the module docstring); raises SyncError when there is none."""
    sync_id = environ.get(SYNC_ID_ENV, "").strip()
    if sync_id:
        return FileBoard(root / SYNC_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "_", sync_id))
    if launch.launcher == "torchrun" and environ.get("MASTER_ADDR") and environ.get("MASTER_PORT"):
        try:
            return StoreBoard(launch, environ)
        except RuntimeError as error:  # torch's DistNetworkError: no store at MASTER_ADDR:MASTER_PORT
            raise SyncError(f"rank {launch.rank}: cannot reach the torchrun store at {environ.get('MASTER_ADDR')}:"
                            f"{environ.get('MASTER_PORT')} ({error})") from None
    job = environ.get("SLURM_JOB_ID", "").strip()
    step = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID", "")).strip()
    if launch.launcher == "srun" and job and step:
        return FileBoard(root / SYNC_DIR / f"slurm-{job}.{step}")
    raise SyncError(f"rank {launch.rank} of {launch.world_size}: no way to meet the other ranks (no MASTER_ADDR/"
                    f"MASTER_PORT, no SLURM job step); set {SYNC_ID_ENV} to a value unique to this launch")


def rank_sync(root: str | os.PathLike, environ: Mapping[str, str] | None = None) -> RankSync | None:
    """The barrier of this process's launch, or ``None`` when it runs alone; one per launch and process.

    ``root`` is the shared RESULTS folder (where a file board lives).
    """
    environ = os.environ if environ is None else environ
    launch = launch_from_environment(environ)
    if launch is None:
        return None
    key = f"{launch.launcher}:{launch.rank}/{launch.world_size}:{environ.get(SYNC_ID_ENV, '')}"
    if key not in _SYNCS:
        _SYNCS[key] = RankSync(_board(launch, Path(root), environ), launch,
                               stale_after=_seconds(environ, STALE_ENV, DEFAULT_STALE_S),
                               timeout=_seconds(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    return _SYNCS[key]


def join_launch(root: str | os.PathLike) -> Launch | None:
    """This process's launch with its heartbeat started, or ``None`` when it runs alone.

    Call it first thing in a command: a rank that works without beating would be taken for dead by the ranks
    already waiting at a barrier. Raises SyncError when the launch has no board (see :func:`rank_sync`).
    """
    sync = rank_sync(root)
    return None if sync is None else sync.launch


def wait_for_all_ranks(root: str | os.PathLike, name: str) -> Launch | None:
    """A barrier of every rank of this launch (nothing when the process runs alone); returns the launch."""
    sync = rank_sync(root)
    if sync is None:
        return None
    sync.barrier(name)
    return sync.launch


def all_ranks_generated(out: str | os.PathLike, own: GenerationSummary, case_ids: Sequence[str]) -> bool:
    """After this rank's share of a generation: wait for every rank, then let rank 0 report on all the cases.

    Each rank prints which cases it generated; rank 0 prints the outcome of every case of ``case_ids`` from the
    merged cases.jsonl and returns whether all are ok. The other ranks return True, so that a case failure on
    one rank never makes torchrun stop the ranks still working (it ends every rank when one exits non-zero).
    """
    launch = launch_from_environment()
    if launch is None:
        return own.ok
    generated = ", ".join(own.generated) or "nothing"
    click.echo(f"rank {launch.rank}/{launch.world_size} ({own.method_dir.name}): generated {generated}")
    wait_for_all_ranks(out, f"generate {own.method_dir.name}")
    if not launch.is_main:
        return True
    ok, failed, missing = selection_outcome(own.method_dir, case_ids)
    click.echo(f"all {launch.world_size} ranks: {len(ok)} of {len(case_ids)} case(s) ok, {len(failed)} failed, "
               f"{len(missing)} missing -> {own.method_dir}")
    for case_id, message in failed.items():
        click.secho(f"  failed {case_id}: {message}", fg="red", err=True)
    if missing:
        click.secho(f"  missing: {', '.join(missing)} (run the same command again to resume)", fg="red", err=True)
    return not failed and not missing
