"""Independent pieces of numpy work on threads (numpy lets go of Python's lock in its array
operations, so two threads on two cores run nearly twice as fast).

Callers split work so that no two pieces write the same memory: the fusion's integration
splits a view's blocks, the bake a view's texels.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Workers:
    """Runs ``map`` on ``count`` threads; with one, in the calling thread.

    The threads are made by the thread that creates this, so on Linux they inherit its
    priority (an import's threads run below Blender's UI, ``builder.result``)."""

    def __init__(self, count: int, name: str = "da3-numpy"):
        self.count = max(1, int(count))
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix=name) if self.count > 1 else None

    def map(self, fn: Callable, *iterables) -> list:
        """``list(map(fn, *iterables))``, the calls shared among the threads; the first error
        raised in any call is raised here."""
        return list(self._pool.map(fn, *iterables) if self._pool else map(fn, *iterables))

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
