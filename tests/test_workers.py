"""The single-threaded CPU workers (:mod:`videobench.metrics.workers`): order, errors, thread counts, modes."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from videobench.metrics.workers import SingleThreadWorkers, even_slices, run_all, single_thread_workers, workers_for


@pytest.fixture(scope="module")
def workers() -> SingleThreadWorkers:
    return single_thread_workers(2)


def test_even_slices_known_answers():
    assert even_slices(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert even_slices(4, 2) == [slice(0, 2), slice(2, 4)]
    assert even_slices(2, 5) == [slice(0, 1), slice(1, 2)]  # never an empty piece
    assert even_slices(5, 1) == [slice(0, 5)]
    assert even_slices(0, 3) == [slice(0, 0)]


def test_results_come_back_in_order_whoever_finishes_first(workers):
    def late(value: int, delay: float):
        return lambda: time.sleep(delay) or value

    assert workers.map([late(0, 0.2), late(1, 0.0), late(2, 0.1), late(3, 0.0)]) == [0, 1, 2, 3]
    assert run_all([lambda: 5, lambda: 6]) == [5, 6]


def test_each_worker_runs_one_intra_op_thread_and_the_caller_keeps_its_count(workers):
    caller = torch.get_num_threads()
    names = workers.map([lambda: (threading.current_thread().name, torch.get_num_threads()) for _ in range(4)])
    assert {count for _, count in names} == {1}
    assert all(name.startswith("videobench-torch-worker-") for name, _ in names)
    assert torch.get_num_threads() == caller
    seen = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a thread created afterwards
    later.start()
    later.join()
    assert seen == [caller]


def test_the_first_error_is_raised_after_every_piece_finished(workers):
    finished = []

    def slow():
        time.sleep(0.2)
        finished.append("slow")
        return 1

    def broken():
        raise ValueError("piece 1 is broken")

    with pytest.raises(ValueError, match="piece 1 is broken"):
        workers.map([slow, broken, slow])
    assert finished == ["slow", "slow"]
    assert workers.map([lambda: 2, lambda: 3]) == [2, 3]  # the workers survive an error


def test_pieces_run_under_the_callers_grad_and_inference_mode(workers):
    x = torch.ones(3, requires_grad=True)
    with torch.inference_mode():
        modes = workers.map([lambda: (torch.is_inference_mode_enabled(), torch.is_grad_enabled())] * 2)
    assert modes == [(True, False)] * 2
    with torch.no_grad():
        assert workers.map([lambda: torch.is_grad_enabled()] * 2) == [False, False]
    outputs = workers.map([lambda: (x * 2).sum(), lambda: (x * 3).sum()])
    assert all(out.requires_grad for out in outputs)
    assert workers.map([lambda: torch.is_inference_mode_enabled()] * 2) == [False, False]


def test_a_map_inside_a_worker_runs_inline(workers):
    inner = workers.map([lambda: workers.map([lambda: threading.current_thread().name] * 2)] * 2)
    assert all(len(set(names)) == 1 for names in inner)  # each outer piece ran its inner pieces itself


def test_workers_for_picks_the_cpu_outside_autocast():
    assert workers_for("cpu", 1) is None  # one worker: the caller's thread, every operator parallel
    assert workers_for("cuda:0", 2) is None and workers_for("meta", 3) is None
    assert workers_for("cpu", 3) is single_thread_workers(3)
    assert workers_for(torch.device("cpu"), 0) is (None if torch.get_num_threads() == 1
                                                   else single_thread_workers(torch.get_num_threads()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert workers_for("cpu", 2) is None
    with pytest.raises(ValueError, match="at least one worker"):
        SingleThreadWorkers(0)
