"""The Python API for a whole run: images or a video -> the DA3 worker -> objects in Blender.

    from bl_ext.<repo>.da3_reconstruct import reconstruct
    run = reconstruct.RunOptions(model="da3-small")
    collection = reconstruct.run(reconstruct.Request(["/photos/statue"], run))

``start()`` writes the job into its own folder under ``paths.jobs_dir()`` and hands it to the
session's warm worker (``paths.worker_python() -m engine.worker --serve``, cwd = this
extension's folder, under an ``engine.host.monitor.JobMonitor``; started by the first run). The
caller then drives the returned ``Run``: ``tick()`` from a modal timer (the UI) or ``run()`` in a
loop (background mode, the command line, scripts). When the worker is done, ``Run.build()``
imports the prediction with ``api.start_import``: its numpy work on threads, its Blender work
in short steps on the calling (main) thread (``Run.build`` steps it to the end).
``Run.close()`` stops the job if it still runs and removes the job folder, whatever happened.
One run at a time.

The warm worker keeps the model loaded between runs, so the next run with the same model skips
the process start and the load. It exits after a cancel (the next run starts a fresh one), after
``engine.worker.process.IDLE_EXIT_S`` without a job, and when Blender stops it: ``stop_all()`` on
unregister, on loading a file and at exit (and when Blender dies, its stdin closes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import bpy

from . import frame_counts, paths, vendor_install
from .engine.core import presets
from .engine.core.options import BuildOptions, RunOptions, fusion_settings
from .engine.core.presets import get_preset
from .engine.core.protocol import Job
from .engine.core.sources import result_name
from .engine.host.monitor import JobMonitor, MonitorState, ProcessMonitor

# How much of the whole run each worker stage covers, for one overall progress bar.
# In the worker's order: frames are read before the weights are fetched and the model loaded.
STAGE_SPANS = {
    "starting": (0.0, 0.02),
    "reading_frames": (0.02, 0.12),
    "downloading_weights": (0.12, 0.35),
    "loading_model": (0.35, 0.45),
    "inference": (0.45, 0.82),
    "fusing": (0.82, 0.92),
    "writing": (0.92, 0.95),
    "building": (0.95, 1.0),
}
STAGE_LABELS = {
    "starting": "Starting",
    "downloading_weights": "Downloading weights",
    "loading_model": "Loading model",
    "reading_frames": "Reading frames",
    "inference": "Estimating depth",
    "fusing": "Fusing views",
    "writing": "Writing result",
    "building": "Building in Blender",
}


class ReconstructError(Exception):
    """A run that failed; the message is one line for the user."""


class ReconstructCancelled(ReconstructError):
    """A run that the user cancelled."""


@dataclass
class Request:
    """What to reconstruct (``sources``), how the model sees it (``run``) and how the result is
    built (``options``); the operator, the panel and the command line each make one."""

    sources: list[str]  # a folder, image files, or one video file
    run: RunOptions = field(default_factory=RunOptions)
    options: BuildOptions = field(default_factory=BuildOptions)
    name: str = ""  # the result's collection; "" = after the source

    def collection_name(self) -> str:
        return self.name or result_name(self.sources)


class Run:
    """One running job: its monitor and what to build when the worker is done.

    A weights download (``start_download``) and the worker environment's installation
    (``start_install``) are Runs too, with nothing to build: one thing at a time runs, the
    panel shows each the same way and one modal operator (``da3.watch_job``) follows them all.
    """

    def __init__(self, request: Request, monitor: ProcessMonitor, kind: str = "reconstruct"):
        self.request = request
        self.monitor = monitor
        self.kind = kind
        self.building = False

    @property
    def state(self) -> MonitorState:
        return self.monitor.state

    @property
    def finished(self) -> bool:
        return self.monitor.finished

    def tick(self, timeout: float = 0.0, budget_s: float | None = 0.005) -> list[dict]:
        """Drain the worker's events (never blocks longer than ``timeout`` + ``budget_s``)."""
        return self.monitor.poll(timeout=timeout, budget_s=budget_s)

    def progress(self) -> float:
        """Overall progress 0..1 across the stages."""
        if self.kind == "install":  # the installer's own stages, already one fraction
            return self.state.fraction
        if self.building:
            return STAGE_SPANS["building"][0]
        low, high = STAGE_SPANS.get(self.state.stage, (0.0, 0.0))
        return low + (high - low) * self.state.fraction

    def counts(self) -> tuple[int, int, str]:
        """(done, total, unit) of the current stage; downloads count MiB, not bytes."""
        state = self.state
        if state.stage == "downloading_weights":
            return state.done // 2**20, state.total // 2**20, " MiB"
        return state.done, state.total, ""

    def status_line(self) -> str:
        """'Estimating depth 3/8, about 12 s left' and the like."""
        state = self.state
        if self.kind == "install":
            return state.message or state.stage or "Starting"
        stage = "building" if self.building else state.stage
        text = STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize() or "Starting")
        if state.total > 0 and not self.building:
            done, total, unit = self.counts()
            text += f" {done}/{total}{unit}"
        unfinished = state.total <= 0 or state.done < state.total
        if state.eta_s is not None and state.eta_s >= 0.5 and unfinished and not self.building:
            text += f", about {format_seconds(state.eta_s)} left"
        return text

    def cancel(self, wait: bool = False) -> None:
        self.monitor.cancel(wait=wait)

    def build(self, context=None) -> bpy.types.Collection:
        """Import the worker's result, blocking; raises ReconstructError when there is none."""
        staged = self.start_build(context)
        if staged is None:
            return None
        try:
            return staged.run()
        except ValueError as exc:
            raise ReconstructError(str(exc)) from exc
        finally:
            self.building = False

    def start_build(self, context=None):
        """The import of the worker's result as an ``api.start_import`` (step it from the main
        thread until done), or None for a download; raises ReconstructError when the worker has
        no result."""
        state = self.state
        if not state.succeeded:
            if state.final and state.final.get("kind") == "cancelled":
                raise ReconstructCancelled("reconstruction cancelled")
            if self.kind == "install":
                raise ReconstructError("Installing the dependencies failed: "
                                       + (state.error or "the installation was stopped"))
            raise ReconstructError(state.error or "the worker has not finished")
        if self.kind != "reconstruct":  # a download or an installation: nothing to build
            return None
        from .api import start_import

        self.building = True
        try:
            return start_import(self.monitor.result, self.request.options, context=context,
                                name=self.request.collection_name())
        except ValueError as exc:
            self.building = False
            raise ReconstructError(str(exc)) from exc

    def close(self) -> None:
        """Stop the job if it still runs and remove the job folder (the warm worker stays)."""
        global _current, _environment_generation
        if self.kind == "install":
            self.monitor.close()
            _environment_generation += 1  # whatever happened, the environment is checked again
        else:
            self.monitor.end_run()
        if _current is self:
            _current = None


_current: Run | None = None
_worker: JobMonitor | None = None  # the session's warm worker, kept between runs
_environment_generation = 0  # bumped after every installation: cached environment checks are redone


def current() -> Run | None:
    """The run in progress, if any."""
    return _current


def environment_generation() -> int:
    """Changes whenever an installation ended, so the panel checks the environment again."""
    return _environment_generation


def start(request: Request) -> Run:
    """Check the request, write the job and start the worker; raises ReconstructError."""
    global _current
    if _current is not None:
        raise ReconstructError("a reconstruction is already running; cancel it or wait")
    job = make_job(request)
    try:
        monitor = warm_worker()
        monitor.submit(job)
    except OSError as exc:
        shutil.rmtree(Path(job.output).parent, ignore_errors=True)
        stop_worker()
        raise ReconstructError(f"could not start the worker ({paths.worker_python()}): {exc}") from exc
    _current = Run(request, monitor)
    return _current


def warm_worker() -> JobMonitor:
    """The session's serving worker, started now if there is none for the current worker
    Python (the preferences may have changed it since)."""
    global _worker
    python = paths.worker_python()
    if _worker is None or not _worker.serves(python, paths.EXTENSION_DIR):
        stop_worker()
        monitor = JobMonitor()
        monitor.serve(python, paths.EXTENSION_DIR)
        _worker = monitor
    return _worker


def stop_worker() -> None:
    """End the warm worker (its memory, GPU memory included, is free once this returns)."""
    global _worker
    if _worker is not None:
        worker, _worker = _worker, None
        worker.close()


def start_download(model: str) -> Run:
    """Fetch ``model``'s weights into the models folder with the worker environment's Python."""
    global _current
    if _current is not None:
        raise ReconstructError("a reconstruction or download is already running; cancel it or wait")
    request = Request([], RunOptions(model=model))
    message = _check_settings(request) or _check_environment(request)
    if message:
        raise ReconstructError(message)
    if not bpy.app.online_access:
        raise ReconstructError("online access is off: allow it in Preferences > System > Network")
    monitor = ProcessMonitor()
    argv = [paths.worker_python(), "-m", "engine.worker", "download", model, weights_folder(request)]
    try:
        monitor.start_process(argv, paths.EXTENSION_DIR)
    except OSError as exc:
        raise ReconstructError(f"could not start the download ({paths.worker_python()}): {exc}") from exc
    _current = Run(request, monitor, kind="download")
    return _current


def start_install(torch: str = "auto") -> Run:
    """Create the worker environment: ``vendor_install.py --events``, run by Blender's own
    Python (never modified itself), makes it from ``paths.base_python()``; a Run with nothing
    to build, followed like any other."""
    global _current
    if _current is not None:
        raise ReconstructError("a reconstruction, download or installation is already running")
    if not bpy.app.online_access:
        raise ReconstructError(OFFLINE_INSTALL_MESSAGE)
    monitor = ProcessMonitor()
    argv = [sys.executable, str(paths.EXTENSION_DIR / "vendor_install.py"), "--events",
            "--target", str(paths.worker_env_dir()), "--torch", torch,
            "--python", str(paths.base_python())]
    try:
        monitor.start_process(argv, paths.EXTENSION_DIR)
    except OSError as exc:
        raise ReconstructError(f"could not start the installer: {exc}") from exc
    _current = Run(Request([]), monitor, kind="install")
    return _current


OFFLINE_INSTALL_MESSAGE = ("Online access is off: allow it in Preferences > System > Network to "
                           "install the dependencies, or run vendor_install.py yourself (see the README)")


def run(request: Request, *, context=None, report: Callable[[str], None] | None = print,
        should_cancel: Callable[[], bool] | None = None) -> bpy.types.Collection:
    """Reconstruct to completion, blocking; ``report`` receives one line per change of progress.

    ``should_cancel`` is asked between events; when it says yes the worker is stopped and
    ReconstructCancelled raised. Nothing is left behind on failure, cancel or Ctrl-C.
    """
    return follow(start(request), context=context, report=report, should_cancel=should_cancel)


def follow(job: Run, *, context=None, report: Callable[[str], None] | None = print,
           should_cancel: Callable[[], bool] | None = None):
    """Drive a started run to its end, blocking (background mode, scripts), and build its
    result; the run is closed whatever happens."""
    reporter = _Reporter(report)
    try:
        while not job.finished:
            job.tick(timeout=0.1, budget_s=None)
            if should_cancel is not None and should_cancel():
                job.cancel(wait=False)
            reporter.show(job)
        if job.state.succeeded and job.kind == "reconstruct":
            reporter.say(STAGE_LABELS["building"])
        return job.build(context)
    finally:
        job.close()


class _Reporter:
    """Progress lines for a terminal: every new stage, and within a stage at most once a second."""

    def __init__(self, report: Callable[[str], None] | None, interval_s: float = 1.0):
        self.report, self.interval_s = report, interval_s
        self.line, self.stage, self.at = "", None, 0.0

    def show(self, job: Run) -> None:
        line, stage, now = job.status_line(), job.state.stage, time.monotonic()
        finished_stage = job.state.total > 0 and job.state.done >= job.state.total
        due = stage != self.stage or finished_stage or now - self.at >= self.interval_s
        if line != self.line and due:
            self.say(line)
            self.line, self.stage, self.at = line, stage, now

    def say(self, line: str) -> None:
        if self.report is not None:
            self.report(f"DA3: {line}")


def stop_all() -> None:
    """Stop the running job and the warm worker, and remove their files (unregister, file
    loads, exit)."""
    if _current is not None:
        _current.close()
    stop_worker()
    frame_counts.stop()


# -- the job ---------------------------------------------------------------------------------

def make_job(request: Request) -> Job:
    """A Job for ``request`` in a new folder under ``paths.jobs_dir()``; ReconstructError if
    the request cannot run (no source, unknown model, no worker environment, no weights)."""
    check_request(request)
    job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=paths.jobs_dir()))
    return Job(
        sources=[str(Path(s).expanduser()) for s in request.sources],
        output=str(job_dir / "prediction.npz"),
        run=settled_run(request),
        models_dir=str(paths.models_dir()),
        allow_download=bool(bpy.app.online_access),
        keyframe_cache=str(paths.keyframes_dir()),
        tsdf=worker_fusion(request.options),
        photos=request.options.output_surface and request.options.texture,
    )


def worker_fusion(options: BuildOptions) -> dict:
    """What the worker should fuse, or {} to leave it to the importer.

    The worker fuses (on the GPU when there is one, and always off Blender's main thread) when
    the settings are its own: automatic voxel size and no crop object (a Blender object the
    worker cannot see). The importer reuses the result only when the settings match.
    """
    if options.fusion != "TSDF" or not options.output_surface or options.voxel_size or \
            options.crop_object:
        return {}
    return fusion_settings(options)


def check_request(request: Request) -> None:
    for check in (_check_sources, _check_settings, _check_environment, _check_weights):
        message = check(request)
        if message:
            raise ReconstructError(message)


def _check_sources(request: Request) -> str:
    if not request.sources or not any(str(s).strip() for s in request.sources):
        return "no source given: choose a folder of images, image files or a video file"
    for source in request.sources:
        if not Path(source).expanduser().exists():
            return f"source not found: {source}"
    return ""


def settled_run(request: Request) -> RunOptions:
    """The request's run settings with the preferences' device where it names none."""
    return replace(request.run, device=request.run.device or paths.device())


def _check_settings(request: Request) -> str:
    return settled_run(request).problem()


def _check_environment(_request: Request) -> str:
    python = paths.worker_python()
    status = vendor_install.env_status(python)
    if status.ok:
        return ""
    return (f"the worker environment is {status.summary} ({python}): click 'Install dependencies' "
            f"in the DA3 panel, or set {paths.ENV_WORKER_PYTHON} to a Python with DA3")


def _check_weights(request: Request) -> str:
    """Missing weights are an error before starting only when they cannot be downloaded."""
    folder = weights_folder(request)
    if presets.has_weights(folder):
        return ""
    preset = get_preset(request.run.model)
    if request.run.weights:
        return f"no {presets.WEIGHTS_FILE} in the weights folder '{folder}'"
    if not bpy.app.online_access:
        return (presets.missing_message(folder, preset)
                + " (Preferences > System > Network)")
    return ""


def weights_folder(request: Request) -> Path:
    preset = get_preset(request.run.model)
    return presets.resolve_folder(request.run.weights, str(paths.models_dir()), preset)


def weights_present(model: str, weights: str = "") -> bool:
    """Whether ``model``'s weights are on disk (in ``weights`` or the models folder)."""
    try:
        return presets.has_weights(weights_folder(Request([], RunOptions(model=model, weights=weights))))
    except (ValueError, presets.WeightsError):
        return False


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
