"""Data parallelism inside one process for CPU inference: persistent threads that each run PyTorch with one
intra-op thread, fed independent pieces of a batch (RAFT's frames and pairs).

PyTorch parallelises every operator over its intra-op threads (OpenMP): on a CPU with two cores each convolution,
matrix product and elementwise pass is split in two and joined again, and both cores touch every tensor. The joins
cost little for a large operator and much for the many medium ones of RAFT's refinement (about 40 operators per
update on tensors of a few megabytes). Running independent pieces instead, one per thread with one intra-op thread
each, needs no joins and keeps a piece's tensors in one core's caches: RAFT on 16 pairs at 256x320 went from
17.2-20.8 s to 15.7-16.8 s on the 2-core machine (``benchmarks/score_throughput.py``'s docstring has the table).

PyTorch's thread count is per thread (OpenMP's ``nthreads-var``, MKL's local setting), but ``torch.set_num_threads``
also sets the default that threads created later start from: :class:`SingleThreadWorkers` sets one thread in each
worker, then puts the caller's count back as that default, so threads created afterwards (a decoding thread) and
the caller keep theirs. Grad and inference mode are per thread as well: each piece runs under the caller's.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from videobench.plugins import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

T = TypeVar("T")


class SingleThreadWorkers:
    """``count`` daemon threads, each running PyTorch with one intra-op thread, that call the functions given to
    :meth:`map` (first come, first served) and stay for the next call."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker, got {count}")
        self.count = count
        self._tasks: queue.Queue[tuple[Callable[[], Any], _Result]] = queue.Queue()
        self._local = threading.local()  # .is_worker: map() from inside a worker runs inline (no deadlock)
        self._pid = os.getpid()
        caller_threads = torch.get_num_threads()
        ready = threading.Barrier(count + 1)
        for index in range(count):
            threading.Thread(target=self._serve, args=(ready,), name=f"videobench-torch-worker-{index}",
                             daemon=True).start()
        ready.wait()  # every worker has set its own count: the default goes back to the caller's
        torch.set_num_threads(caller_threads)

    def _serve(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # PyTorch's lazy per-thread setup first, so that it cannot undo the next line
        torch.set_num_threads(1)
        self._local.is_worker = True
        ready.wait()
        while True:
            function, result = self._tasks.get()
            result.run(function)

    def map(self, functions: Sequence[Callable[[], T]]) -> list[T]:
        """The functions' results, in order. Each runs on a worker under the caller's grad and inference mode; the
        first exception raised is raised here once all have finished (none is left running on shared state)."""
        if getattr(self._local, "is_worker", False) or len(functions) <= 1:
            return [function() for function in functions]
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        results = [_Result(inference, grad) for _ in functions]
        for function, result in zip(functions, results):
            self._tasks.put((function, result))
        for result in results:
            result.done.wait()
        for result in results:
            if result.error is not None:
                raise result.error
        return [result.value for result in results]


class _Result:
    """One function's outcome, filled in by the worker that ran it."""

    def __init__(self, inference: bool, grad: bool) -> None:
        self.inference, self.grad = inference, grad
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self, function: Callable[[], Any]) -> None:
        try:
            with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
                self.value = function()
        except BaseException as error:  # handed to the caller
            self.error = error
        finally:
            self.done.set()


_POOLS: dict[int, SingleThreadWorkers] = {}
_POOLS_LOCK = threading.Lock()


def single_thread_workers(count: int) -> SingleThreadWorkers:
    """The process's pool of ``count`` workers, started on first use (and again in a forked child, which inherits
    the pool but not its threads)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(count)
        if pool is None or pool._pid != os.getpid():
            pool = _POOLS[count] = SingleThreadWorkers(count)
        return pool


def workers_for(device: torch.device | str, requested: int = 0) -> SingleThreadWorkers | None:
    """The workers for a model on ``device``: ``requested`` of them (0: one per intra-op thread of the caller) on
    CPU outside autocast, None (run in the caller's thread, every operator parallel) on other devices, under CPU
    autocast (a per-thread state the workers would not share) or when that makes a single worker."""
    if torch.device(device).type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    count = requested or torch.get_num_threads()
    return single_thread_workers(count) if count > 1 else None


def run_all(functions: Sequence[Callable[[], T]], workers: SingleThreadWorkers | None = None) -> list[T]:
    """``[f() for f in functions]``, on ``workers`` when given."""
    if workers is None:
        return [function() for function in functions]
    return workers.map(functions)


def map_pieces(function: Callable[[torch.Tensor], T], batch: torch.Tensor,
               workers: SingleThreadWorkers | None = None) -> list[T]:
    """``function`` of each even piece of ``batch`` along its first axis, one piece per worker (without workers:
    of the whole batch), in order."""
    count = 1 if workers is None else workers.count
    return run_all([functools.partial(function, batch[part]) for part in even_slices(len(batch), count)], workers)


def even_slices(length: int, parts: int) -> list[slice]:
    """``range(length)`` cut into ``min(parts, length)`` consecutive slices whose lengths differ by at most one,
    longer ones first."""
    parts = max(1, min(parts, length))
    size, extra = divmod(length, parts)
    bounds = [0]
    for index in range(parts):
        bounds.append(bounds[-1] + size + (index < extra))
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
