"""engine.core.threads: numpy work shared among threads at the priority of their creator."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.core import threads


def own_nice(_=None) -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's per-thread nice")
def test_workers_run_below_the_ui_when_the_thread_that_made_them_does():
    """An import's thread lowers itself (builder.result's pool); the threads its fusion and
    bake start must not climb back to the UI's priority."""
    def import_thread():
        threads.lower_thread_priority()
        with threads.Workers(3) as workers:
            return own_nice(), workers.map(own_nice, range(6))

    with ThreadPoolExecutor(1) as pool:
        creator, workers = pool.submit(import_thread).result()
    assert creator == threads.IMPORT_THREAD_NICE > own_nice()
    assert set(workers) == {creator}


def fails_at_three(i: int) -> int:
    if i == 3:
        raise ValueError("piece 3 failed")
    return i


def test_map_keeps_the_order_and_raises_an_error_of_any_piece():
    """A cancelled import raises in whichever thread checks first: it must reach the caller."""
    with threads.Workers(2) as workers:
        assert workers.map(lambda a, b: a * b, range(5), range(5)) == [0, 1, 4, 9, 16]
        with pytest.raises(ValueError, match="piece 3"):
            workers.map(fails_at_three, range(6))


def test_one_worker_runs_in_the_calling_thread():
    caller = threading.get_ident()
    with threads.Workers(1) as workers:
        assert workers.map(lambda _: threading.get_ident(), range(3)) == [caller] * 3


@pytest.mark.parametrize("count", [1, 2])
def test_submitted_work_hands_back_its_result_or_its_error(count):
    """The bake scores views this way while it unwraps: a failure (a cancelled import) must
    come out of ``result()``, on one thread as on several."""
    caller = threading.get_ident()
    with threads.Workers(count) as workers:
        done = workers.submit(lambda a, b: (a * b, threading.get_ident()), 6, 7)
        failed = workers.submit(fails_at_three, 3)
        product, ran_on = done.result()
        assert product == 42 and (ran_on == caller) == (count == 1)
        with pytest.raises(ValueError, match="piece 3"):
            failed.result()
