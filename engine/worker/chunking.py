"""Long jobs in chunks: how many views fit, which views each chunk holds, and the driver.

DA3 attends across all views of a forward pass, so memory grows with the number of views (at least
linearly, quadratically where attention materialises its matrix). DA3's own estimate is about ten
times off, so the chunk size comes from two measured probe forwards, not from a constant.

The driver runs chunk after chunk through a ``run_chunk(indices)`` callable (the real network in the
worker, a fake in the tests), hands each result to the aligner as it arrives, halves the chunk size
on an out-of-memory error instead of failing the job, reports progress with an ETA and checks for
cancellation between and inside chunks. torch is imported only inside the probing helpers.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.prediction import Prediction
from .align import ChunkAlignment, ChunkMerger

DEFAULT_SAFETY = 0.8  # use at most this share of the free memory: fragmentation, activations' peaks
MIN_CHUNK = 2  # below this a chunk has no view of its own beyond the overlap

CancelCheck = Callable[[], bool]
Progress = Callable[[int, int, "float | None"], None]  # (views done, views in all, ETA seconds)


class Cancelled(InterruptedError):
    """The user cancelled; the worker reports it as the 'cancelled' error kind."""


# --- how many views fit ------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryModel:
    """Extra peak bytes of a forward of ``k`` views: per_view * k + per_view_squared * k^2."""

    per_view: float
    per_view_squared: float = 0.0

    def bytes_for(self, views: int) -> float:
        return self.per_view * views + self.per_view_squared * views * views

    def largest_chunk(self, free_bytes: float, safety: float = DEFAULT_SAFETY) -> int:
        """The most views whose forward needs no more than ``safety * free_bytes``."""
        budget = safety * free_bytes
        a, b = self.per_view_squared, self.per_view
        # the root of a k^2 + b k = budget in the form that stays exact when a is tiny
        root = b + np.sqrt(b * b + 4 * a * budget)
        k = 2 * budget / root if root > 0 else np.inf
        return int(min(np.floor(k * (1 + 1e-9)), 1_000_000))  # 7.9999999 views fit 8


def fit_memory_model(probes: Sequence[tuple[int, float]]) -> MemoryModel:
    """Fit the memory model to measured probes ``[(views, extra peak bytes), ...]``.

    The bytes are the peak of a forward minus what was allocated before it (weights, caches), so
    zero views cost zero: one probe gives a line through the origin, two fix the quadratic
    exactly, more are fitted by least squares. A negative quadratic term (measurement noise) is
    not trusted: the steeper of the probes' lines is used instead, which never underestimates.
    """
    if not probes:
        raise ValueError("at least one memory probe is needed")
    k = np.array([p[0] for p in probes], dtype=np.float64)
    m = np.array([p[1] for p in probes], dtype=np.float64)
    if np.any(k <= 0) or np.any(m < 0):
        raise ValueError(f"memory probes need views > 0 and bytes >= 0, got {list(probes)}")
    steepest = MemoryModel(float(np.max(m / k)))
    if len(np.unique(k)) < 2:
        return steepest
    (b, a), *_ = np.linalg.lstsq(np.stack([k, k * k], axis=1), m, rcond=None)
    if a < 0 or b < 0:
        return steepest
    return MemoryModel(float(b), float(a))


def largest_chunk_size(probes: Sequence[tuple[int, float]], free_bytes: float, *,
                       safety: float = DEFAULT_SAFETY, min_views: int = MIN_CHUNK,
                       max_views: int | None = None) -> int:
    """The largest chunk (views per forward) that fits ``free_bytes`` with a safety margin.

    Parameters
    ----------
    probes : measured ``(views, extra peak bytes)`` of probe forwards, e.g. with 2 and 4 views.
    free_bytes : device memory free for activations (after the weights are loaded).
    safety : share of ``free_bytes`` to plan for.
    min_views, max_views : bounds of the answer (``max_views`` e.g. the job's view count).

    Returns
    -------
    int : at least ``min_views`` (the OOM retry takes over if even that does not fit).
    """
    size = fit_memory_model(probes).largest_chunk(free_bytes, safety)
    if max_views is not None:
        size = min(size, max_views)
    return max(min_views, size)


# --- which views each chunk holds --------------------------------------------------------------

def next_chunk(covered: int, num_views: int, size: int, overlap: int) -> tuple[int, int]:
    """[begin, end) of the chunk after views [0, covered) are done.

    It starts ``overlap`` views back (a smaller chunk keeps at least half its views new) and the
    last chunk reaches back as far as its size allows: more shared views, a better fit, no
    sliver of a chunk at the end.
    """
    if covered == 0:
        return 0, min(size, num_views)
    shared = max(1, min(overlap, size // 2))
    end = min(covered - shared + size, num_views)
    return max(0, min(covered - shared, end - size)), end


# --- the driver --------------------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of numpy, torch (CUDA, MPS) and the CPU allocator."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "failed to allocate", "can't allocate memory"))


class EtaClock:
    """Seconds left, from the pace of the latest chunks (the first one pays the warm-up)."""

    def __init__(self, window: int = 3):
        self.window = window
        self.laps: list[tuple[float, int]] = []  # (seconds, new views) per chunk

    def lap(self, seconds: float, new_views: int) -> None:
        self.laps.append((seconds, new_views))

    def eta(self, views_left: int) -> float | None:
        recent = self.laps[1:][-self.window:] or self.laps[-1:]
        seconds, views = sum(s for s, _ in recent), sum(v for _, v in recent)
        return seconds / views * views_left if views else None


@dataclass
class ChunkRun:
    """What the driver did: the chunks that ran and the retries it needed."""

    chunks: list[tuple[int, int]]
    retries: list[tuple[int, int, str]]  # (failed size, new size, error) for each OOM retry
    seconds: float


def run_chunks(num_views: int, run_chunk: Callable[[np.ndarray], object],
               on_chunk: Callable[[np.ndarray, object], None], *, chunk_size: int, overlap: int,
               min_chunk: int = MIN_CHUNK, cancel: CancelCheck | None = None,
               progress: Progress | None = None,
               on_retry: Callable[[int, int, BaseException], None] | None = None,
               is_oom: Callable[[BaseException], bool] = is_out_of_memory) -> ChunkRun:
    """Run ``run_chunk`` over overlapping chunks of ``num_views`` views and hand each result on.

    Parameters
    ----------
    run_chunk : ``run_chunk(indices) -> chunk`` predicts the views ``indices`` (a Prediction, a
        mapping or an object with depth/conf/intrinsics/extrinsics/...; never None). After an
        out-of-memory error the driver collects garbage and empties torch's CUDA cache itself.
    on_chunk : ``on_chunk(indices, chunk)``, e.g. ``merger.add``; called before the next chunk runs,
        so only one chunk's output is alive at a time.
    chunk_size, overlap : the plan; an out-of-memory error halves ``chunk_size`` for this and every
        later chunk (the overlap shrinks to at most half of it); below ``min_chunk`` the error stands.
    cancel : checked before and after each chunk (and passed on by the caller's ``on_chunk``);
        True raises ``Cancelled``.
    progress : ``progress(views done, views in all, ETA seconds or None)`` after every chunk.
    on_retry : ``on_retry(failed size, new size, error)``, e.g. to emit a warning event.
    """
    start, clock = time.perf_counter(), EtaClock()
    size, covered = max(min_chunk, chunk_size), 0
    chunks, retries = [], []
    _report(progress, 0, num_views, None)
    while covered < num_views:
        _stop_if(cancel)
        begin, end = next_chunk(covered, num_views, size, overlap)
        indices = np.arange(begin, end)
        lap = time.perf_counter()
        chunk = None
        try:
            chunk = run_chunk(indices)
        except Exception as exc:  # only out-of-memory is retried; anything else propagates
            if not is_oom(exc) or size // 2 < min_chunk:
                raise
            retries.append((size, size // 2, f"{type(exc).__name__}: {exc}"[:200]))
            if on_retry is not None:
                on_retry(size, size // 2, exc)
        if chunk is None:
            _release_memory()  # outside the except: the traceback no longer holds the tensors
            size //= 2
            continue
        _stop_if(cancel)
        try:
            on_chunk(indices, chunk)
        except InterruptedError as exc:
            raise Cancelled("cancelled") from exc
        del chunk
        clock.lap(time.perf_counter() - lap, end - covered)
        covered = end
        chunks.append((begin, end))
        _report(progress, covered, num_views, clock.eta(num_views - covered))
    return ChunkRun(chunks, retries, time.perf_counter() - start)


def _release_memory() -> None:
    """Free what a failed chunk left: its tensors (collected) and torch's cached CUDA blocks."""
    gc.collect()
    torch = sys.modules.get("torch")  # only if the runner uses it; never imported here
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stop_if(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def _report(progress: Progress | None, done: int, total: int, eta: float | None) -> None:
    if progress is not None:
        progress(done, total, eta)


def predict_in_chunks(num_views: int, run_chunk: Callable[[np.ndarray], object], *,
                      chunk_size: int, overlap: int, cancel: CancelCheck | None = None,
                      progress: Progress | None = None,
                      on_retry: Callable[[int, int, BaseException], None] | None = None,
                      on_aligned: Callable[[ChunkAlignment], None] | None = None,
                      min_chunk: int = MIN_CHUNK,
                      is_oom: Callable[[BaseException], bool] = is_out_of_memory
                      ) -> tuple[Prediction, list[ChunkAlignment], ChunkRun]:
    """Predict ``num_views`` views in overlapping chunks and merge them into one prediction.

    The merged prediction is in the first chunk's frame and scale, as if from one pass; its
    metadata (model, source_paths, frame_indices, image when run_chunk gives none) is the
    caller's to fill.
    ``on_aligned(report)`` sees how each chunk was placed (e.g. to log its ghosting).
    ``is_oom`` decides which errors of ``run_chunk`` are out-of-memory (retried smaller).
    """
    merger = ChunkMerger(num_views)

    def place(indices, chunk):
        report = merger.add(indices, chunk, cancel=cancel)
        if on_aligned is not None:
            on_aligned(report)

    run = run_chunks(num_views, run_chunk, place, chunk_size=chunk_size, overlap=overlap,
                     min_chunk=min_chunk, cancel=cancel, progress=progress, on_retry=on_retry,
                     is_oom=is_oom)
    return merger.result(), merger.reports, run


# --- measuring on the device (torch only here) -------------------------------------------------

def allocated_bytes(device: str) -> int:
    """What is allocated now: torch's CUDA allocator, or the process's resident size (CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return _rss_bytes()


def probe_peak_bytes(forward: Callable[[int], object], views: int, device: str,
                     baseline: int | None = None) -> int:
    """Peak memory of ``forward(views)`` on ``device`` above ``baseline`` (default: now).

    CUDA: the allocator's own peak counter (exact). CPU and others: the process's resident size,
    sampled every few milliseconds during the call (an estimate, good to tens of MB). Pass the
    same ``baseline`` (``allocated_bytes`` before the first probe) to every probe: on the CPU
    memory freed by one probe stays in the process and the next probe reuses it unseen.
    """
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated() if baseline is None else baseline
        torch.cuda.reset_peak_memory_stats()
        forward(views)
        torch.cuda.synchronize()
        return max(0, int(torch.cuda.max_memory_allocated() - base))
    return _rss_peak_during(lambda: forward(views), baseline)


def free_device_bytes(device: str) -> int:
    """Memory a forward may still use on ``device``: free CUDA memory plus torch's idle cache, or
    the system's available memory for the CPU."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    return _available_system_bytes()


def measure_chunk_size(forward: Callable[[int], object], device: str, *,
                       probe_views: tuple[int, ...] = (2, 8), safety: float = DEFAULT_SAFETY,
                       max_views: int | None = None,
                       baseline: int | None = None) -> tuple[int, MemoryModel, list]:
    """Probe forwards, fit the memory model and return the largest chunk that fits.

    ``forward(k)`` runs the network on ``k`` views (real frames, at the job's resolution).
    Probes far apart (2 and 8 views) keep measurement noise out of the quadratic term: with 2
    and 4 on a CPU, 20 MB of noise in the resident size halved the chunk size.
    ``baseline``: ``allocated_bytes`` before the probes (default: now); a caller that keeps the
    probes for later chunk sizes (``fitting_chunk_size``) passes the one it keeps.
    Returns the chunk size, the fitted model and the probes ``[(views, bytes), ...]``.
    """
    baseline = allocated_bytes(device) if baseline is None else baseline
    probes = [(k, probe_peak_bytes(forward, k, device, baseline)) for k in probe_views]
    size = fitting_chunk_size(probes, baseline, device, safety=safety, max_views=max_views)
    return size, fit_memory_model(probes), probes


def fitting_chunk_size(probes: Sequence[tuple[int, float]], baseline: int, device: str, *,
                       safety: float = DEFAULT_SAFETY, max_views: int | None = None) -> int:
    """The largest chunk that fits the memory free now, by probes measured above ``baseline``
    (earlier, for the same network and view size: a serving worker probes once)."""
    free = free_device_bytes(device)
    if not str(device).startswith("cuda"):
        free += max(0, _rss_bytes() - baseline)  # memory the probes took and the process keeps
    return largest_chunk_size(probes, free, safety=safety, max_views=max_views)


def _rss_bytes() -> int:
    """The worker's resident memory (psutil: the same call on Windows, macOS and Linux)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _rss_peak_during(call: Callable[[], object], baseline: int | None = None,
                     interval: float = 0.005) -> int:
    base = _rss_bytes() if baseline is None else baseline
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak[0], _rss_bytes()) - base)


def _available_system_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
