"""The DA3 worker: ``python -m engine.worker JOB.json`` or ``--serve`` (the worker environment's
Python).

Reads the job (``protocol.Job``), decodes and preprocesses the frames in a thread while the
model loads (a video's frames by windows, or its keyframes by motion: ``job.run.sampling``), runs the
network once for all views, and writes one prediction file (``prediction.PredictionWriter``: the
image while the network runs, the rest after it).

Views that do not fit one pass run in overlapping chunks (``engine.worker.chunking``), each placed into
view 0's frame and scale by a robust Sim(3) fit (``engine.worker.align``): ``job.run.chunk_size`` views per
pass, or as many as two probe forwards say fit (only above ``CHUNK_PROBE_ABOVE`` views); an
out-of-memory error in the one pass continues in chunks of half the views, with a warning.

Progress goes out as ``protocol.encode`` lines on the real stdout; everything else any library
prints lands on stderr (file descriptor 1 itself is pointed at stderr, so even C-level prints
cannot corrupt the protocol).

Serving (``--serve``, what Blender runs): one process runs job after job, each given as one
``protocol.job_line`` on stdin and answered with the same events, ending with its final one. The
network stays loaded between jobs (with the memory probes measured for it), so a second job
with the same preset, weights file and device skips the load; a job with another model frees the
old one first. It exits on an ``exit`` line, at the end of stdin (the parent is gone), after
``idle_seconds()`` without a job, after a cancel, and after an error that is not the job's own
(``protocol.serving_continues``): a fresh process is the clean state.

Cancel: a line ``cancel`` on stdin, SIGTERM or SIGINT. The main thread stops at the next step;
if it is stuck in a forward pass, a watchdog removes the partial output, reports and ends the
process after ``CANCEL_GRACE_S`` (ending the process is what frees GPU memory).

Exit status: 0 done, 1 error (an ``error`` event says which), 3 cancelled.

Output: DA3's npz keys (image, depth, conf, extrinsics, intrinsics) plus the extras of
``prediction.py``. Monocular presets (``preset.multi_view`` False) take one image: they get
pinhole intrinsics with a horizontal field of view of ``job.extra["fov_deg"]`` (default 60
degrees, ``preprocess.DEFAULT_FOV_X_DEG``), identity extrinsics and no conf (as DA3 writes
none); da3metric-large's depth is converted to metres with that focal length.
The ``done`` event also carries ``timings`` (seconds per step), ``peak_gpu_mib`` and
``model_reused`` (the network was already loaded: no ``load_model`` step).
"""

from __future__ import annotations

import gc
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..core.protocol import seconds_left

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 3
CANCEL_GRACE_S = 1.0  # then the watchdog ends the process; the contract is 2 s
PROGRESS_INTERVAL_S = 0.2  # at most this often per stage, besides the last step
# A serving worker with no job for this long exits and frees its memory (GPU memory included):
# long enough for the next run of a session, short enough not to hold a GPU for nothing.
IDLE_EXIT_S = 300.0
ENV_IDLE_S = "DA3_WORKER_IDLE_S"  # overrides IDLE_EXIT_S (tests shorten it)
# A finished job's memory is collected once no next job has come for this long, so a job sent
# straight after another does not wait for the collection.
RELEASE_AFTER_S = 1.0


class WorkerError(Exception):
    """A failure with a protocol error kind and one line for the user."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Cancelled(Exception):
    pass


# --------------------------------------------------------------------------- events

class Emitter:
    """Writes protocol lines; after a job's final one (done/error) nothing else goes out until
    ``begin`` starts the next job. ``finished``: no job is waiting for its final event."""

    def __init__(self, stream, finished: bool = False):
        self.stream = stream
        self.lock = threading.RLock()
        self.finished = finished
        self.last_final: dict = {}
        self._last_progress: dict[str, float] = {}

    def begin(self) -> None:
        with self.lock:
            self.finished, self.last_final = False, {}
            self._last_progress.clear()

    def send(self, event: str, **fields) -> None:
        from ..core.protocol import encode

        with self.lock:
            if self.finished:
                return
            try:
                self.stream.write(encode(event, **fields) + "\n")
                self.stream.flush()
            except (OSError, ValueError) as exc:  # the parent is gone: nobody to report to
                print(f"cannot write event {event}: {exc}", file=sys.stderr)

    def final(self, event: str, **fields) -> bool:
        with self.lock:
            if self.finished:
                return False
            self.send(event, **fields)
            self.finished, self.last_final = True, {"event": event, **fields}
            return True

    def stage(self, stage: str, message: str) -> None:
        self.send("stage", stage=stage, message=message)

    def progress(self, stage: str, done: int, total: int, eta_s: float | None = None) -> None:
        now = time.monotonic()
        if done < total and now - self._last_progress.get(stage, 0.0) < PROGRESS_INTERVAL_S:
            return
        self._last_progress[stage] = now
        self.send("progress", stage=stage, done=int(done), total=int(total), eta_s=eta_s)

    def error(self, kind: str, message: str, tb: str = "") -> bool:
        return self.final("error", kind=kind, message=one_line(message), traceback=tb)


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- cancellation

@dataclass
class Cleanup:
    """Files this run may leave half-written."""

    paths: list[Path] = field(default_factory=list)

    def run(self) -> None:
        for path in self.paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                print(f"could not remove partial output {path}: {exc}", file=sys.stderr)


class CancelToken:
    def __init__(self, emitter: Emitter, cleanup: Cleanup):
        self.event = threading.Event()
        self.emitter = emitter
        self.cleanup = cleanup

    def __call__(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Cancelled()

    def request(self, reason: str) -> None:
        if self.event.is_set():
            return
        print(f"cancel requested ({reason})", file=sys.stderr)
        self.event.set()
        threading.Thread(target=self._watchdog, name="cancel-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """End the process if the main thread has not stopped by itself in time."""
        time.sleep(CANCEL_GRACE_S)
        with self.emitter.lock:
            if self.emitter.finished:
                return
            self.cleanup.run()
            self.emitter.error("cancelled", "cancelled by the user")
            os._exit(EXIT_CANCELLED)


def listen(cancel: CancelToken, on_line=None) -> None:
    """stdin 'cancel' lines and SIGTERM/SIGINT -> cancel.request, from daemon threads.

    Serving (``on_line`` given): every other stdin line goes to ``on_line``, the end of stdin
    (the parent is gone) cancels too, and ``on_line(None)`` follows a cancel to wake the idle
    loop. One-shot, the end of stdin (no parent pipe) just ends the reader.
    """
    from ..core.protocol import CANCEL_LINE

    def stop(reason: str) -> None:
        cancel.request(reason)
        if on_line is not None:
            on_line(None)

    def read_stdin():
        for line in sys.stdin:
            text = line.strip()
            if text == CANCEL_LINE:
                stop("stdin")
            elif text and on_line is not None:
                on_line(text)
        if on_line is not None:
            stop("stdin closed")

    wanted = {signal.SIGTERM, signal.SIGINT}
    posix = hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait")
    if posix:
        # Blocked before any other thread starts (they inherit the mask; one that did not
        # would die of SIGTERM's default action); a plain handler would only run once a
        # forward pass returns to Python.
        signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    if sys.stdin is not None:
        threading.Thread(target=read_stdin, name="stdin-reader", daemon=True).start()
    if posix:

        def wait_signals():
            while True:
                stop(signal.Signals(signal.sigwait(wanted)).name)

        threading.Thread(target=wait_signals, name="signal-waiter", daemon=True).start()
    else:  # Windows: SIGTERM ends the process anyway; Ctrl+C reaches this handler
        for signum in wanted:
            signal.signal(signum, lambda s, f: stop(signal.Signals(s).name))


# --------------------------------------------------------------------------- the loaded model

@dataclass
class LoadedModel:
    """A network ready to run."""

    key: tuple
    net: object
    device: object
    dtype: object


class ModelCache:
    """At most one loaded network, kept between the jobs of a serving worker, and what was
    measured for it."""

    def __init__(self):
        self.loaded: LoadedModel | None = None
        # (height, width) of the views -> (memory probes, the allocation they were measured above)
        self.probes: dict = {}

    def get(self, key: tuple) -> LoadedModel | None:
        return self.loaded if self.loaded is not None and self.loaded.key == key else None

    def clear(self) -> None:
        """Free the network and the GPU memory it held, before another one is loaded."""
        if self.loaded is None:
            return
        self.loaded, self.probes = None, {}
        release_memory()


def release_memory() -> None:
    """Collect what a job or a model left, hand torch's cached GPU blocks back and the C heap's
    free pages to the system: an idle worker then holds only its weights, and Blender (Cycles,
    the viewport) gets the rest."""
    gc.collect()
    if "torch" in sys.modules:
        from .model import free_device_memory

        free_device_memory()
    trim_host_heap()


def trim_host_heap() -> None:
    """Give the pages of freed arrays back to the system. glibc keeps them for reuse: a warm
    worker idled at 0.6-0.9 GB after da3-small's 3-64 view CPU jobs, 0.40-0.43 GB after
    ``malloc_trim``. Other C libraries (musl) and systems have no such call: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def model_key(folder: Path, preset, device) -> tuple:
    """What makes a loaded network reusable: the preset, the weights file (a replaced file has
    another size or time, and is loaded again) and the device."""
    from ..core.presets import WEIGHTS_FILE

    weights = folder / WEIGHTS_FILE
    stat = weights.stat()
    return preset.name, str(weights.resolve()), stat.st_size, stat.st_mtime_ns, str(device)


# --------------------------------------------------------------------------- the job

@dataclass
class JobInProgress:
    """One job in this worker: what it asks, how it reports, what it has made so far."""

    job: object
    preset: object
    emitter: Emitter
    cancel: CancelToken
    cache: ModelCache = field(default_factory=ModelCache)
    timings: dict = field(default_factory=dict)
    frames_future: object = None
    writer: object = None  # prediction.PredictionWriter of the output's temporary file
    image: object = None  # Futures (``start_writing``): the stored image, made in a thread...
    image_written: object = None  # ...and written there as the file's first part
    peak_gpu_mib: float | None = None
    model: LoadedModel | None = None
    model_reused: bool = False
    # Set when the job fails before its frames are needed: the reader stops at its next frame
    # (the process-wide cancel would end a serving worker).
    abandoned: threading.Event = field(default_factory=threading.Event)

    def stopped(self) -> bool:
        """Whether the frame reader should stop: cancelled, or the job has failed."""
        return self.cancel() or self.abandoned.is_set()

    def check_frames(self, wait: bool = False) -> None:
        """Raise now if reading the frames has already failed (or, with ``wait``, once it has)."""
        future = self.frames_future
        if future is not None and (wait or future.done()) and future.exception() is not None:
            frames_or_error(future, self)
        self.cancel.check()


def load_job(path: str):
    from ..core.presets import get_preset
    from ..core.protocol import Job

    try:
        job = Job.load(path)
        preset = get_preset(job.run.model)
    except FileNotFoundError:
        raise WorkerError("bad_input", f"job file '{path}' not found") from None
    except (ValueError, TypeError) as exc:
        raise WorkerError("bad_input", f"bad job file: {exc}") from None
    return job, preset


def check_output_folder(output: Path) -> None:
    """Fail before any work when the prediction could not be written at the end."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkerError("bad_input", f"cannot create the output folder '{output.parent}': "
                          f"{exc.strerror or exc}") from None
    if output.is_dir() or not os.access(output.parent, os.W_OK):
        raise WorkerError("bad_input", f"cannot write the prediction to '{output}'")


def find_sources(run: JobInProgress):
    from .inputs import InputError, collect_sources, count_views

    job = run.job
    try:
        sources = collect_sources(job.sources)
    except InputError as exc:
        raise WorkerError("bad_input", str(exc)) from None
    for path in sources.ignored:
        print(f"ignored (not an image): {path}", file=sys.stderr)
    views = count_views(sources, job.run.max_frames, job.run.fps)
    if not run.preset.multi_view and (views is None or views > 1):
        raise_mono_error(run.preset, views)
    return sources


def raise_mono_error(preset, views: int | None) -> None:
    from ..core.presets import PRESETS

    multi = next(p.name for p in PRESETS.values() if p.multi_view and p.commercial_use)
    count = f"{views} images" if views else "a video"
    raise WorkerError("bad_input", f"{preset.name} sees one image at a time but got {count}; "
                      f"choose a multi-view model such as {multi}, or a single image")


def read_frames_job(run: JobInProgress, sources):
    """Decode + resize every frame (runs in a thread while the model loads)."""
    from .inputs import expected_views, read_frames
    from .preprocess import network_image_and_photo, resize_for_network

    job, emitter = run.job, run.emitter
    start = time.monotonic()
    what = "images" if not sources.is_video else (
        "the video's keyframes" if job.run.sampling == "motion" else "the video")
    emitter.stage("reading_frames", f"reading {what}")

    def progress(done, total):

        emitter.progress("reading_frames", done, total, seconds_left(done, total, time.monotonic() - start))

    def transform(rgb):
        if not job.photos:
            return resize_for_network(rgb, job.run.process_res)
        return network_image_and_photo(rgb, job.run.process_res, views)

    # how many frames share the photos' pixel budget (``make_batch`` keeps it with the count)
    views = expected_views(sources, job.run.max_frames, job.run.fps, job.run.sampling)
    found = read_frames(sources, job.run.max_frames, job.run.fps, progress, run.stopped,
                        transform=transform,
                        sampling=job.run.sampling, keyframe_cache=job.keyframe_cache)
    run.timings["read_frames"] = round(time.monotonic() - start, 3)
    return found


def frames_or_error(future, run: JobInProgress):
    from .inputs import InputError, skipped_warning

    try:
        found = future.result()
    except InputError as exc:
        raise WorkerError("bad_input", str(exc)) from None
    run.cancel.check()
    if found.skipped:
        run.emitter.send("warning", message=skipped_warning(found.skipped))
    if not run.preset.multi_view and len(found.frames) > 1:
        raise_mono_error(run.preset, len(found.frames))
    return found


def weights_folder(run: JobInProgress) -> Path:
    from ..core.presets import WeightsError, has_weights, hub_url, missing_message, resolve_folder
    from .weights import download

    job, preset, emitter = run.job, run.preset, run.emitter
    folder = resolve_folder(job.run.weights, job.models_dir, preset)
    if has_weights(folder):
        return folder
    if job.run.weights or not job.allow_download:
        raise WeightsError(missing_message(folder, preset))
    run.check_frames(wait=True)  # bad inputs must not cost a download
    emitter.stage("downloading_weights",
                  f"downloading {preset.name} ({preset.download_mb} MiB) from {hub_url(preset)}")
    start = time.monotonic()

    def progress(done, total):

        run.cancel.check()
        emitter.progress("downloading_weights", done, total,
                         seconds_left(done, total, time.monotonic() - start))

    try:
        download(preset, folder, progress)
    except (Cancelled, ImportError):
        raise
    except Exception as exc:  # the hub client raises many types; all mean "not downloaded"
        raise WeightsError(f"could not download {preset.name} from {hub_url(preset)} "
                           f"({type(exc).__name__}: {one_line(exc, 160)}); check the connection "
                           f"or put {preset.name}'s files in '{folder}'") from exc
    return folder


def load_model(run: JobInProgress) -> LoadedModel:
    """The job's network: the one already loaded when it is the same, else a fresh load."""
    from .model import pick_device

    folder = weights_folder(run)
    run.check_frames()
    try:
        device = pick_device(run.job.run.device or "auto")
    except RuntimeError as exc:
        raise WorkerError("dependency", str(exc)) from None
    key = model_key(folder, run.preset, device)
    run.model = run.cache.get(key)
    run.model_reused = run.model is not None
    if run.model is None:
        run.cache.clear()  # the old network's memory is free before the new one loads
        run.model = run.cache.loaded = load_network_on(run, folder, device, key)
    run.check_frames()
    return run.model


def load_network_on(run: JobInProgress, folder: Path, device, key: tuple) -> LoadedModel:
    from .model import autocast_dtype, skip_ray_branch
    from .weights import load_network

    run.emitter.stage("loading_model", f"loading {run.preset.name} on {device.type}")
    start = time.monotonic()
    net = load_network(folder, run.preset, device)
    skip_ray_branch(net)
    net = net.to(device)  # a no-op unless the network has tensors outside the file
    run.timings["load_model"] = round(time.monotonic() - start, 3)
    return LoadedModel(key, net, device, autocast_dtype(device))


def infer(run: JobInProgress, net, device, dtype, batch):
    """All views in one pass (multi-view presets) or one at a time (monocular presets)."""
    from .model import concat_views, forward, to_views
    from .preprocess import DEFAULT_FOV_X_DEG

    n = batch.rgb.shape[0]
    h, w = batch.size
    run.emitter.stage("inference", f"{n} view(s) at {w}x{h} on {device.type}")
    metric_raw = run.preset.metric and not run.preset.multi_view
    fov = float(run.job.extra.get("fov_deg") or DEFAULT_FOV_X_DEG)
    start = time.monotonic()

    def step_done(done, total):  # inside the forward pass, between blocks
        run.cancel.check()
        run.emitter.progress("inference", done, total, seconds_left(done, total, time.monotonic() - start))

    try:
        if run.preset.multi_view:
            views = infer_multi_view(run, net, device, dtype, batch, step_done, fov)
        else:
            run.emitter.progress("inference", 0, n)
            parts = []
            for i in range(n):
                run.cancel.check()
                parts.append(to_views(forward(net, batch.rgb[i:i + 1], device, dtype),
                                      metric_raw, fov))
                run.emitter.progress("inference", i + 1, n, seconds_left(i + 1, n, time.monotonic() - start))
            views = concat_views(parts)
    except Exception as exc:
        raise_if_out_of_memory(exc, device, n, w, h)
        raise
    run.timings["inference"] = round(time.monotonic() - start, 3)
    run.peak_gpu_mib = peak_gpu_mib(device)
    return views


def infer_multi_view(run: JobInProgress, net, device, dtype, batch, step_done, fov: float):
    """One pass when the views fit (measured above ``CHUNK_PROBE_ABOVE`` views), else chunks
    aligned by Sim(3); an out-of-memory error in the one pass turns into chunks."""
    from .chunking import is_out_of_memory
    from .model import forward, reporting_steps, to_views

    n = batch.rgb.shape[0]
    size = chunk_size_for(run, net, device, dtype, batch)
    if size >= n:
        try:
            with reporting_steps(net, step_done) as steps:
                run.emitter.progress("inference", 0, steps.total)
                return to_views(forward(net, batch.rgb, device, dtype), False, fov)
        except Exception as exc:
            if not is_out_of_memory(exc) or n // 2 < MIN_CHUNK:
                raise
            size = n // 2
        free_after_oom(run, n, size)
    return infer_in_chunks(run, net, device, dtype, batch, size, fov)


CHUNK_PROBE_ABOVE = 16  # up to this many views run as one pass without measuring memory
MIN_CHUNK = 2
PROBE_OOM_CHUNK = 4  # when even the memory probes run out of memory (smaller on a further OOM)


def chunk_size_for(run: JobInProgress, net, device, dtype, batch) -> int:
    """The job's chunk size, or the views that fit as measured by two probe forwards."""
    from .chunking import fitting_chunk_size

    n = batch.rgb.shape[0]
    if run.job.run.chunk_size > 0:
        return max(MIN_CHUNK, run.job.run.chunk_size)
    if n <= CHUNK_PROBE_ABOVE:
        return n
    start = time.monotonic()
    measured = run.cache.probes.get(batch.size)
    if measured is None:
        size, probes = probe_memory(run, net, device, dtype, batch)
    else:  # an earlier job probed this network at this view size: only the free memory is new
        probes, size = measured[0], fitting_chunk_size(*measured, str(device), max_views=n)
    run.timings["probe_memory"] = round(time.monotonic() - start, 3)
    kept = "" if measured is None else " (kept from an earlier job)"
    print(f"memory probes {probes}{kept}: {size} of {n} views per pass", file=sys.stderr)
    return size


def probe_memory(run: JobInProgress, net, device, dtype, batch) -> tuple[int, list | None]:
    """(views per pass, probes) from two probe forwards; kept for the loaded model's next jobs."""
    from .chunking import allocated_bytes, is_out_of_memory, measure_chunk_size
    from .model import forward, free_device_memory, reporting_steps

    baseline = allocated_bytes(str(device))
    try:
        with reporting_steps(net, lambda done, total: run.cancel.check()):
            size, _, probes = measure_chunk_size(
                lambda k: forward(net, batch.rgb[:k], device, dtype), str(device),
                max_views=batch.rgb.shape[0], baseline=baseline)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        size, probes = PROBE_OOM_CHUNK, None
    if probes is None:  # outside the except block: the traceback no longer holds the tensors
        free_device_memory()
    else:
        run.cache.probes[batch.size] = (probes, baseline)
    return size, probes


def free_after_oom(run: JobInProgress, n: int, size: int) -> None:
    import gc

    from .model import free_device_memory

    gc.collect()  # outside the except block: the traceback no longer holds the tensors
    free_device_memory()
    run.emitter.send("warning", message=f"out of memory with {n} views in one pass; "
                     f"continuing in chunks of {size}")


def infer_in_chunks(run: JobInProgress, net, device, dtype, batch, size: int, fov: float):
    """Overlapping chunks, each in its own frame, merged into view 0's frame and scale."""
    from .align import AlignmentError
    from .chunking import Cancelled as ChunkCancelled
    from .chunking import is_out_of_memory, predict_in_chunks
    from .model import Views, forward, reporting_steps, to_views

    n, emitter = batch.rgb.shape[0], run.emitter
    overlap = run.job.run.chunk_overlap or max(1, size // 2)
    covered, metric, eta_at = [0], [False], [None, 0.0]  # eta_at: (ETA, when it was given)

    def run_chunk(indices):
        new = indices[-1] + 1 - covered[0]  # views this chunk adds

        def step_done(done, total):  # inside the chunk's forward pass
            run.cancel.check()
            eta_s, at = eta_at
            left = None if eta_s is None else round(max(0.0, eta_s - (time.monotonic() - at)), 1)
            emitter.progress("inference", covered[0] + new * done // (total + 1), n, left)

        with reporting_steps(net, step_done):
            views = to_views(forward(net, batch.rgb[indices], device, dtype), False, fov)
        metric[0] = views.is_metric
        return views

    def progress(done, total, eta_s):
        covered[0], eta_at[:] = done, [eta_s, time.monotonic()]
        emitter.progress("inference", done, total, None if eta_s is None else round(eta_s, 1))

    emitter.stage("inference", f"{n} views in chunks of {size} (overlap {overlap})")
    try:
        merged, reports, chunks = predict_in_chunks(
            n, run_chunk, chunk_size=size, overlap=overlap, cancel=run.cancel, progress=progress,
            on_retry=lambda a, b, e: emitter.send(
                "warning", message=f"out of memory with {a} views per chunk; continuing with {b}"),
            on_aligned=lambda r: r.doubt() and emitter.send("warning", message=r.doubt()),
            is_oom=is_out_of_memory)
    except ChunkCancelled:
        raise Cancelled() from None
    except AlignmentError as exc:
        raise WorkerError("bad_input", str(exc)) from None
    print(f"chunks {chunks.chunks}, retries {chunks.retries}, alignment "
          f"{[(r.views, round(r.residual, 4), round(r.ghosting, 4)) for r in reports]}",
          file=sys.stderr)
    return Views(merged.depth, merged.intrinsics, merged.extrinsics, merged.conf, merged.sky,
                 metric[0])


def reset_peak_gpu(device) -> None:
    """Each job reports its own peak (a serving worker's counter spans every job otherwise)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def raise_if_out_of_memory(exc: BaseException, device, n: int, w: int, h: int) -> None:
    from .chunking import is_out_of_memory
    from .model import free_device_memory

    if not is_out_of_memory(exc):
        return
    free_device_memory()
    raise WorkerError("out_of_memory", f"out of memory on {device.type} with {n} views at {w}x{h}: "
                      "use fewer frames, a lower processing resolution or a smaller model") from exc


def assemble(run: JobInProgress, views, frames, photos=None):
    """The prediction, with the stored image ``start_writing`` made and the texture's
    ``photos``."""
    import numpy as np

    from ..core.prediction import Prediction
    from .model import identity_extrinsics

    n = views.depth.shape[0]
    extrinsics = views.extrinsics if views.extrinsics is not None else identity_extrinsics(n)
    return Prediction(
        depth=views.depth, intrinsics=views.intrinsics, extrinsics=extrinsics, conf=views.conf,
        image=run.image.result(), sky=views.sky, is_metric=views.is_metric,
        source_paths=[f.source for f in frames],
        frame_indices=np.array([f.index for f in frames], dtype=np.int64),
        model=run.preset.name, process_res=int(run.job.run.process_res), photos=photos)


def fuse(run: JobInProgress, pred) -> None:
    """Fuse the views into one TSDF surface here (torch on the GPU when there is one) and keep
    it in the prediction, so Blender only builds the mesh. A scene with nothing to fuse is a
    warning: the importer still builds points and cameras."""
    from ..fusion.base import TSDFOptions
    from ..fusion.tsdf_torch import fuse_tsdf

    settings = dict(run.job.tsdf)  # engine.core.options.fusion_settings
    run.emitter.stage("fusing", "fusing the views into one surface")
    start = time.monotonic()

    def progress(fraction, _message):
        run.cancel.check()
        run.emitter.progress("fusing", round(100 * fraction), 100)

    try:
        # every core: the worker is a process of its own, below Blender's priority
        mesh = fuse_tsdf(pred, TSDFOptions(**settings, threads=os.cpu_count() or 1), progress)
    except ValueError as exc:
        run.emitter.send("warning", message=f"no fused surface: {one_line(str(exc))}")
        return
    pred.fused_vertices, pred.fused_faces, pred.fused_colors = mesh.vertices, mesh.faces, mesh.colors
    pred.fused_settings = fusion_record(settings, mesh)
    run.timings["fuse"] = round(time.monotonic() - start, 3)


def fusion_record(settings: dict, mesh) -> str:
    """The JSON a fused surface is stored with (``Prediction.fused_settings``): what it was
    asked (``settings``), what it measured, and the camera moves its texture needs
    (``builder.surface.fused_by_worker`` reads it)."""
    moves = mesh.stats.get("camera_moves")
    return json.dumps({**settings, "voxel_size": mesh.voxel_size, "truncation": mesh.truncation,
                       "device": mesh.stats.get("device", "numpy"),
                       "first_pass_voxel": mesh.stats["first_pass_voxel"],
                       "border_edges": mesh.stats["border_edges"],
                       "consistency": mesh.stats["consistency"],
                       "camera_moves": None if moves is None else moves.tolist()})


def start_writing(run: JobInProgress, batch, pool: ThreadPoolExecutor) -> None:
    """Make the stored image and write it into the output's temporary file in ``pool`` while the
    network runs, so that ``write`` has only the network's arrays left; the partial file goes if
    the job fails."""
    from ..core.prediction import PredictionWriter
    from .preprocess import stored_images

    output = Path(run.job.output)
    run.writer = PredictionWriter(output.with_name(output.name + ".tmp.npz"))
    run.cancel.cleanup.paths += [run.writer.path, run.writer.partial]
    run.image = pool.submit(stored_images, batch.rgb)
    run.image_written = pool.submit(lambda: run.writer.begin(image=run.image.result()))


def write(run: JobInProgress, pred) -> Path:
    """Finish the file ``start_writing`` began, then move it in place and report done as one
    step."""
    from ..core.prediction import PredictionError

    output = Path(run.job.output)
    run.emitter.stage("writing", f"writing {output.name}")
    start = time.monotonic()
    try:
        run.image_written.result()
        tmp = run.writer.finish(pred)
    except PredictionError as exc:
        raise WorkerError("internal", f"the network's output is unusable: {exc}") from None
    except OSError as exc:
        raise WorkerError("bad_input", f"cannot write '{output}': {exc.strerror or exc}") from None
    run.timings["write"] = round(time.monotonic() - start, 3)
    with run.emitter.lock:
        run.cancel.check()
        os.replace(tmp, output)
        run.emitter.final("done", result=str(output), views=pred.num_views,
                          seconds=round(time.monotonic() - run.timings["_start"], 3),
                          timings={k: v for k, v in run.timings.items() if not k.startswith("_")},
                          peak_gpu_mib=run.peak_gpu_mib, model_reused=run.model_reused,
                          photo_factor=pred.photo_factor)
    return output


def run_job(job_path: str, emitter: Emitter, cancel: CancelToken, cache: ModelCache) -> None:
    from .preprocess import make_batch

    start = time.monotonic()
    emitter.stage("starting", f"job {Path(job_path).name}")
    job, preset = load_job(job_path)
    run = JobInProgress(job, preset, emitter, cancel, cache, {"_start": start})
    check_output_folder(Path(job.output))
    sources = find_sources(run)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames") as pool:
        run.frames_future = pool.submit(read_frames_job, run, sources)
        try:
            model = load_model(run)
        except BaseException:
            run.abandoned.set()  # stops the reader at its next frame; it is not needed any more
            raise
        found = frames_or_error(run.frames_future, run)
    with timed(run, "make_batch"):  # stacking uint8 views: the device normalises them
        batch = make_batch([f.rgb for f in found.frames], photos=[f.photo for f in found.frames])
    cancel.check()
    predict_and_write(run, model, batch, found.frames)


def predict_and_write(run: JobInProgress, model: LoadedModel, batch, frames) -> None:
    """The network, the prediction and its file, whose image is written while the network runs
    (on failure the pool waits for that write, so the partial file can be removed)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writing") as pool:
        start_writing(run, batch, pool)
        reset_peak_gpu(model.device)
        views = infer(run, model.net, model.device, model.dtype, batch)
        run.cancel.check()
        with timed(run, "assemble"):
            pred = assemble(run, views, frames, batch.photos)
        if run.job.tsdf:
            fuse(run, pred)
        write(run, pred)


class timed:
    """``with timed(run, step):`` records the step's seconds in the done event's timings (the
    warm worker's remaining cost over the forward pass is made of such steps)."""

    def __init__(self, run: JobInProgress, step: str):
        self.run, self.step = run, step

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        self.run.timings[self.step] = round(time.monotonic() - self.start, 3)
        return False


# --------------------------------------------------------------------------- main

def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for any failure."""
    from ..core.presets import WeightsError

    if isinstance(exc, WorkerError):
        return exc.kind, str(exc)
    if isinstance(exc, WeightsError):
        return exc.kind, str(exc)
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        return "dependency", (f"the worker environment lacks '{name}' ({exc}); reinstall it "
                              "from the add-on preferences")
    if isinstance(exc, MemoryError):
        return "out_of_memory", ("out of memory: use fewer frames, a lower processing resolution "
                                 "or a smaller model")
    return "internal", f"internal error: {type(exc).__name__}: {exc}"


def redirect_stdout():
    """Keep the real stdout for the protocol; everything else printed goes to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1, newline="\n")


def idle_seconds() -> float:
    return float(os.environ.get(ENV_IDLE_S) or IDLE_EXIT_S)


def serve(emitter: Emitter, cancel: CancelToken, cleanup: Cleanup) -> int:
    """Run the jobs named on stdin one after another, the model kept loaded, until told to stop
    (see the module's docstring); returns the exit status."""
    from ..core.protocol import EXIT_LINE, job_path_from_line, serving_continues

    lines: queue.Queue = queue.Queue()
    listen(cancel, lines.put)
    cache, idle_s, after_job = ModelCache(), idle_seconds(), False
    while True:
        line = next_line(lines, idle_s, after_job)
        if cancel():
            return EXIT_CANCELLED
        if line is None or line == EXIT_LINE:
            return EXIT_OK
        code = run_one(job_path_from_line(line), emitter, cancel, cleanup, cache)
        if not serving_continues(emitter.last_final):
            return code
        after_job = True


def next_line(lines: queue.Queue, idle_s: float, after_job: bool) -> str | None:
    """The next stdin line (None: stop), or ``exit`` after ``idle_s`` without one. After a job,
    its memory is released first if no line comes within ``RELEASE_AFTER_S``."""
    from ..core.protocol import EXIT_LINE

    if after_job:
        try:
            return lines.get(timeout=RELEASE_AFTER_S)
        except queue.Empty:
            release_memory()
    try:
        return lines.get(timeout=idle_s)
    except queue.Empty:
        print(f"no job for {idle_s:g} s: exiting", file=sys.stderr)
        return EXIT_LINE


def run_one(job_path: str, emitter: Emitter, cancel: CancelToken, cleanup: Cleanup,
            cache: ModelCache) -> int:
    """One job, ending with exactly one final event; returns the exit status it stands for."""
    emitter.begin()
    cleanup.paths.clear()
    try:
        run_job(job_path, emitter, cancel, cache)
        return EXIT_OK
    except Cancelled:
        with emitter.lock:
            cleanup.run()
            emitter.error("cancelled", "cancelled by the user")
        return EXIT_CANCELLED
    except Exception as exc:  # every failure becomes one error event; the traceback goes along
        cleanup.run()
        kind, message = classify(exc)
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        emitter.error(kind, message, tb)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serving = argv == ["--serve"]
    emitter = Emitter(redirect_stdout(), finished=serving)  # serving: no job until one comes
    cleanup = Cleanup()
    cancel = CancelToken(emitter, cleanup)
    if serving:
        return serve(emitter, cancel, cleanup)
    listen(cancel)
    if len(argv) != 1:
        emitter.error("bad_input", "usage: python -m engine.worker JOB.json | --serve | download | "
                                   "save-random | video-info | keyframes")
        return EXIT_ERROR
    return run_one(argv[0], emitter, cancel, cleanup, ModelCache())


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: after a cancel, torch's clean-up and the wait
    for a frame reader still decoding took most of a second, and a cancel must end within 2 s.
    Every event is written and flushed, and partial files are gone, before this."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
