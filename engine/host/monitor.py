"""Run a background process that speaks JSON lines, without ever blocking its owner.

``JobMonitor`` runs the worker's jobs: one per process (``start``: ``python -m engine.worker
JOB.json``), or job after job in one serving process that keeps the model loaded (``serve``:
``python -m engine.worker --serve``, then ``submit`` per job; Blender's session keeps one). It
reads the events on a reader thread into a queue and hands them out through ``poll()``, which
never blocks unless asked to. The modal operator's timer tick, the blocking background path and
the tests all drive the same object. ``ProcessMonitor`` is the part that knows nothing about
jobs; the dependency installer and the weights download use it for one-shot commands.

Guarantees:
- every job ends with exactly one final event, ``done`` or ``error`` (a crash, an exit without
  ``done``, garbage on stdout and a cancel all become ``error`` events; never a hang);
- ``cancel()`` writes ``cancel`` to the worker's stdin, then sends SIGTERM after a grace period,
  then kills it (the whole process group on POSIX): a cancelled job ends its process, serving
  or not, and the next job starts a fresh one;
- a serving process found gone when a job is submitted (it crashed, or exited idle), or that
  ends before it took the job up, is replaced by a fresh one without the job noticing;
- ``end_run()`` stops the job if it still runs and removes its folder; a serving process stays;
- ``close()`` stops the process (an idle serving one with ``exit``) and removes the job folder.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.protocol import (
    CANCEL_LINE,
    EXIT_LINE,
    Job,
    decode,
    job_line,
    seconds_left,
    serving_continues,
)

GRACE_S = 3.0  # between the cancel line and SIGTERM, and between SIGTERM and SIGKILL
_EOF = object()
# Environment variables that would make the worker import another Python's packages.
_FOREIGN_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")


@dataclass
class MonitorState:
    """What the owner shows: the latest stage, counts, ETA, and the outcome once known."""

    stage: str = ""
    message: str = ""
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    final: dict | None = None  # the ``done`` or ``error`` event, once it came
    warnings: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def succeeded(self) -> bool:
        return bool(self.final) and self.final.get("event") == "done"

    @property
    def error(self) -> str:
        if self.final and self.final.get("event") == "error":
            return str(self.final.get("message", "the worker failed"))
        return ""


class ProcessMonitor:
    """One child process whose stdout is JSON-lines events (see ``protocol.decode``)."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.process: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self._new_run()

    def _new_run(self) -> None:
        """Forget the last run's outcome (a serving process runs one job after another)."""
        self.state = MonitorState()
        self._cancel_requested = False
        self._escalations: list[tuple[float, str]] = []  # (monotonic deadline, "term"|"kill")
        self._stage_started = time.monotonic()

    # -- starting ---------------------------------------------------------------------------

    def start_process(self, argv: list[str], cwd: str | os.PathLike, env: dict | None = None) -> None:
        if self.process is not None:
            raise RuntimeError("this monitor already started a process")
        self._launch(argv, cwd, env)

    def _launch(self, argv: list[str], cwd: str | os.PathLike, env: dict | None) -> None:
        """Start the process with fresh pipes and readers (a replaced one's readers keep theirs)."""
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stdout_closed = False
        self._exited_at: float | None = None
        self.process = subprocess.Popen(
            [str(a) for a in argv], cwd=str(cwd), env=child_environment(env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            **_new_process_group())
        _lower_priority(self.process)
        self._stage_started = time.monotonic()
        self._spawn_reader(_read_events, self.process.stdout, self._events)
        self._spawn_reader(_read_stderr, self.process.stderr, self._stderr_tail)

    def _spawn_reader(self, target, stream, into) -> None:
        thread = threading.Thread(target=target, args=(stream, into), daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- reading ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process lives or its final output has not been read yet."""
        if self.process is None:
            return False
        return self.process.poll() is None or not self._stdout_closed

    @property
    def finished(self) -> bool:
        """The final event came and nothing more will happen to this run: the process is gone,
        or it stays for the next run (a serving worker)."""
        return self.state.final is not None and (not self.running or self._stays())

    def _stays(self) -> bool:
        """Whether the process outlives the run that just ended."""
        return False

    def poll(self, timeout: float = 0.0, budget_s: float | None = None) -> list[dict]:
        """The events that arrived since the last call; waits up to ``timeout`` for the first.

        ``budget_s`` bounds the time spent draining (a UI tick); the rest waits for the next call.
        """
        events = []
        stop_at = None if budget_s is None else time.perf_counter() + budget_s
        item = self._next(timeout)
        while item is not None:
            if item is _EOF:
                self._stdout_closed = True
            else:
                events.extend(self._accept(item))
            if stop_at is not None and time.perf_counter() > stop_at:
                break
            item = self._next(0.0)
        self._escalate()
        self._forget_orphaned_pipe()
        events.extend(self._check_exit())
        return events

    def _forget_orphaned_pipe(self) -> None:
        """A grandchild that outlives the process may hold stdout open: stop waiting for it."""
        if self.process is None or self._stdout_closed or self.process.poll() is None:
            return
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        elif time.monotonic() - self._exited_at > self.grace_s:
            self._signal(_SIGKILL)
            self._stdout_closed = True

    def _next(self, timeout: float):
        try:
            if timeout > 0 and not self._stdout_closed:
                return self._events.get(timeout=timeout)
            if timeout > 0:  # output over, process not yet gone: wait without spinning
                time.sleep(min(timeout, 0.05))
            return self._events.get_nowait()
        except queue.Empty:
            return None

    def _accept(self, event: dict) -> list[dict]:
        """Apply one event to the state; events after the final one are dropped."""
        if self.state.final is not None:
            return []
        kind = event.get("event")
        if kind == "error" and self._cancel_requested:
            event = {**event, "kind": "cancelled", "message": "cancelled"}
        self._apply(kind, event)
        alive = self.process is not None and self.process.poll() is None
        if kind == "error" and alive and not self._stays():
            self._request_stop()  # garbage or a fatal error: the process is of no more use
        return [event]

    def _apply(self, kind: str, event: dict) -> None:
        state = self.state
        if kind == "stage":
            state.stage, state.message = event.get("stage", ""), event.get("message", "")
            state.done, state.total, state.eta_s = 0, 0, None
            self._stage_started = time.monotonic()
        elif kind == "progress":
            state.stage = event.get("stage") or state.stage
            state.done, state.total = int(event.get("done", 0)), int(event.get("total", 0))
            state.eta_s = event.get("eta_s")
            if state.eta_s is None:
                state.eta_s = self._estimated_eta()
        elif kind == "warning":
            state.warnings.append(str(event.get("message", "")))
        elif kind in ("done", "error"):
            state.final = event

    def _estimated_eta(self) -> float | None:
        done, total = self.state.done, self.state.total
        if total <= done:
            return None
        return seconds_left(done, total, time.monotonic() - self._stage_started)

    def _check_exit(self) -> list[dict]:
        """After the process ended and its output was read: an error event if none was final."""
        if self.process is None or self.running or self.state.final is not None:
            return []
        event = {"event": "error", "kind": "internal", "traceback": self.stderr_text(),
                 "message": self._exit_message(self.process.returncode)}
        if self._cancel_requested:
            event.update(kind="cancelled", message="cancelled")
        self.state.final = event
        return [event]

    def _exit_message(self, code: int) -> str:
        last = next((line for line in reversed(self._stderr_tail) if line.strip()), "")
        detail = f": {last.strip()[:300]}" if last else ""
        if code == 0:
            return f"the worker exited without a result{detail}"
        return f"the worker stopped unexpectedly (exit code {code}){detail}"

    def stderr_text(self) -> str:
        return "\n".join(self._stderr_tail)

    # -- stopping ---------------------------------------------------------------------------

    def cancel(self, wait: bool = True, timeout: float | None = None) -> None:
        """Ask the process to stop: the cancel line, then SIGTERM, then SIGKILL.

        With ``wait`` this returns once the process is gone (at most about two grace periods,
        or ``timeout``); without, later ``poll()`` calls carry the escalation on.
        """
        self._cancel_requested = True
        if self.process is not None and self.process.poll() is None:
            self._request_stop()
        if wait:
            self.wait(timeout)

    def _request_stop(self, line: str = CANCEL_LINE) -> None:
        if self._escalations:
            return
        self._send_line(line)
        now = time.monotonic()
        self._escalations = [(now + self.grace_s, "term"), (now + 2 * self.grace_s, "kill")]

    def _send_line(self, line: str) -> None:
        try:
            self.process.stdin.write((line + "\n").encode())
            self.process.stdin.flush()
        except (OSError, ValueError):
            return  # the process already closed its stdin or exited: SIGTERM follows anyway

    def _escalate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        now = time.monotonic()
        while self._escalations and self._escalations[0][0] <= now:
            _, action = self._escalations.pop(0)
            self._signal(signal.SIGTERM if action == "term" else _SIGKILL)

    def _signal(self, sig) -> None:
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            elif sig == _SIGKILL:
                self.process.kill()
            else:
                self.process.terminate()
        except ProcessLookupError:
            return  # it exited between the check and the signal

    def wait(self, timeout: float | None = None) -> bool:
        """Poll until the final event came and the process is gone; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.poll(timeout=0.05)
        return True

    def _shut_down(self, line: str) -> None:
        """Ask the process to leave with ``line``, then SIGTERM, then SIGKILL; returns once it
        is gone (at once for an idle serving worker told ``exit``)."""
        self._request_stop(line)
        while self.process.poll() is None:
            try:
                self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                self._escalate()

    def end_run(self) -> None:
        """Done with this run: stop it if it still runs, and let go of what it holds."""
        self.close()

    def close(self) -> None:
        """Stop the process if it still runs and release its pipes."""
        if self.process is None:
            return
        if self.process.poll() is None or not self._stdout_closed:
            self.cancel(wait=True)
        self._release_pipes()

    def _release_pipes(self) -> None:
        """Close the pipes of a process that has ended (its readers finish at the end of its
        output first)."""
        try:
            self.process.stdin.close()
        except OSError:
            pass  # a line it never read: the process is gone, nothing to tell it any more
        for thread in self._threads:
            thread.join(timeout=1.0)
        self._threads = []
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _serve_argv(python: str | os.PathLike) -> list[str]:
    return [str(python), "-m", "engine.worker", "--serve"]


def _read_events(stream, events: queue.Queue) -> None:
    try:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                events.put(decode(line))
    finally:
        events.put(_EOF)


def _read_stderr(stream, tail: collections.deque) -> None:
    for raw in stream:
        tail.append(raw.decode("utf-8", errors="replace").rstrip())


class JobMonitor(ProcessMonitor):
    """The worker's jobs, one per process or job after job in a serving one (see the module's
    docstring). The current job's folder (where ``job.output`` goes) belongs to it."""

    def __init__(self, grace_s: float = GRACE_S):
        super().__init__(grace_s)
        self.job: Job | None = None
        self.job_dir: Path | None = None
        self.serving = False
        self._command: tuple | None = None  # (argv, cwd, env) of the serving process
        self._job_file: Path | None = None
        self._heard = False  # the process has sent an event for the current job
        self._replaced = False  # the current job was sent again to a fresh process

    def start(self, job: Job, python: str | os.PathLike, cwd: str | os.PathLike,
              env: dict | None = None) -> None:
        """Write ``job`` next to its output and start ``python -m engine.worker JOB.json``."""
        self._begin(job)
        self.start_process([python, "-m", "engine.worker", self._job_file], cwd, env)

    def serve(self, python: str | os.PathLike, cwd: str | os.PathLike, env: dict | None = None) -> None:
        """Start ``python -m engine.worker --serve``, which ``submit`` then gives jobs."""
        self.serving = True
        self._command = (_serve_argv(python), str(cwd), env)
        self.start_process(*self._command)

    def serves(self, python: str | os.PathLike, cwd: str | os.PathLike) -> bool:
        """Whether this is a serving worker of ``python`` in ``cwd`` (the one to reuse)."""
        return self.serving and self._command[:2] == (_serve_argv(python), str(cwd))

    @property
    def idle(self) -> bool:
        """A serving worker with no job in progress."""
        return self.serving and (self.job is None or self.finished)

    def submit(self, job: Job) -> None:
        """Write ``job`` next to its output and hand it to the serving worker; a fresh process
        replaces one that is gone (it crashed, was killed or exited idle since the last job)."""
        if not self.idle:
            raise RuntimeError("the worker is not serving, or busy with another job")
        if self.process.poll() is not None:
            self._replace_process()
        self._begin(job)
        self._send_line(job_line(self._job_file))

    def _begin(self, job: Job) -> None:
        self._new_run()
        self.job, self.job_dir = job, Path(job.output).parent
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self._job_file = job.save(self.job_dir / "job.json")
        self._heard = self._replaced = False

    def _replace_process(self) -> None:
        self._release_pipes()
        self._launch(*self._command)

    def _accept(self, event: dict) -> list[dict]:
        self._heard = True
        return super()._accept(event)

    def _stays(self) -> bool:
        """A serving worker stays after ``done`` and after the job's own errors."""
        final = self.state.final or {}
        return self.serving and not self._cancel_requested and serving_continues(final)

    def _lost_before_taken(self) -> bool:
        """The serving process ended before it took the job up: it exited idle, or died, just
        as the job was sent (a process that said anything about the job failed at it)."""
        return self.serving and not self.running and self.state.final is None \
            and not self._heard and not self._cancel_requested

    def _check_exit(self) -> list[dict]:
        """A job lost before it was taken up goes to a fresh process, once."""
        if self._lost_before_taken() and not self._replaced:
            self._replaced = True
            try:
                self._replace_process()
            except OSError as exc:
                self.state.final = {"event": "error", "kind": "internal", "traceback": "",
                                    "message": f"could not start the worker again: {exc}"}
                return [self.state.final]
            self._send_line(job_line(self._job_file))
            return []
        return super()._check_exit()

    @property
    def result(self) -> Path | None:
        """The prediction file, once the worker reported ``done``."""
        if not self.state.succeeded:
            return None
        return Path(self.state.final.get("result") or self.job.output)

    def end_run(self) -> None:
        """Done with the current job: stop it if it has not finished (its process ends with it)
        and remove its folder. A serving process stays for the next job."""
        if not self.serving:
            self.close()
            return
        if not self.finished:
            self.cancel(wait=True)
        self._remove_job_dir()

    def close(self) -> None:
        """Stop the worker (the job first, if it still runs) and remove the job folder. An idle
        serving worker is told ``exit``; its GPU memory is free once this returns."""
        if self.process is not None and self.idle:
            if self.process.poll() is None:
                self._shut_down(EXIT_LINE)
            self._release_pipes()
        else:
            super().close()
        self._remove_job_dir()

    def _remove_job_dir(self) -> None:
        if self.job_dir is not None and self.job_dir.exists():
            shutil.rmtree(self.job_dir)


def child_environment(extra: dict | None = None) -> dict:
    """This process's environment without another Python's paths, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


# Background work runs below Blender's priority, so the UI and the display server get the CPU
# they need while the model keeps every core busy (2 cores, software OpenGL: a sidebar redraw
# took up to 0.3 s with the worker at normal priority).
BACKGROUND_NICE = 10


def _new_process_group() -> dict:
    """Popen arguments that put the child in its own group (signals reach its children too)
    at a lower priority.

    A process group, not a new session: Linux shares the CPU between sessions (autogroups)
    before it looks at priorities, so a worker in its own session would take half the CPU from
    Blender's UI however low its priority.
    """
    if os.name == "posix":
        return {"process_group": 0}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS}


def _lower_priority(process: subprocess.Popen) -> None:
    """POSIX: renice the child at once, before it starts threads (they inherit it). Windows
    did it through the creation flags."""
    if os.name != "posix":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, BACKGROUND_NICE)
    except OSError:
        pass  # already gone, or not allowed: only the UI is slower


# Windows has no process groups for signals: there terminate() and kill() end the worker only.
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)
