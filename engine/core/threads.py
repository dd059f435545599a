"""Independent pieces of numpy work on threads (numpy lets go of Python's lock in its array
operations, so two threads on two cores run nearly twice as fast), and the priority an
import's threads run at.

Callers split work so that no two pieces write the same memory: the fusion's integration
splits a view's blocks, the bake a view's texels.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

# An import's threads run this much below Blender's main thread (Linux's nice), as the worker
# process does (engine.host.monitor).
IMPORT_THREAD_NICE = 10
_BELOW_NORMAL = -1  # Windows' THREAD_PRIORITY_BELOW_NORMAL


def lower_thread_priority() -> None:
    """Run the calling thread below Blender's main thread: on few cores the UI (and software
    OpenGL's drawing threads) would otherwise wait for numpy work. Linux renices one thread
    by its id (threads it starts inherit that); Windows has a thread priority; macOS: as is."""
    try:
        if sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IMPORT_THREAD_NICE)
        elif sys.platform == "win32":
            _set_windows_priority(_BELOW_NORMAL)
    except OSError:
        pass  # not allowed: only the UI is slower


def _windows_priority() -> int | None:
    """The calling thread's priority on Windows (None elsewhere): unlike Linux's nice, a new
    thread does not inherit it."""
    if sys.platform != "win32":
        return None
    import ctypes

    kernel32 = ctypes.windll.kernel32
    return kernel32.GetThreadPriority(kernel32.GetCurrentThread())


def _set_windows_priority(priority: int | None) -> None:
    if priority is None or sys.platform != "win32":
        return
    import ctypes

    kernel32 = ctypes.windll.kernel32
    kernel32.SetThreadPriority(kernel32.GetCurrentThread(), priority)


class Workers:
    """Runs ``map`` on ``count`` threads; with one, in the calling thread.

    The threads run at the priority of the thread that creates this (an import's threads run
    below Blender's UI, ``builder.result``): Linux's threads inherit it, Windows' are given it."""

    def __init__(self, count: int, name: str = "da3-numpy"):
        self.count = max(1, int(count))
        self._pool = (ThreadPoolExecutor(self.count, thread_name_prefix=name,
                                         initializer=_set_windows_priority,
                                         initargs=(_windows_priority(),))
                      if self.count > 1 else None)

    def map(self, fn: Callable, *iterables) -> list:
        """``list(map(fn, *iterables))``, the calls shared among the threads; the first error
        raised in any call is raised here."""
        return list(self._pool.map(fn, *iterables) if self._pool else map(fn, *iterables))

    def submit(self, fn: Callable, *args) -> Future:
        """``fn(*args)`` on a thread, its result or error in the Future (with one thread, run
        here and now)."""
        if self._pool:
            return self._pool.submit(fn, *args)
        done = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # handed over like the pool's: raised by result()
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spans(total: int, count: int) -> list[slice]:
    """``total`` items in ``count`` slices as even as can be."""
    bounds = [total * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
