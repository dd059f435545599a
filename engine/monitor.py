"""Run a background process that speaks JSON lines, without ever blocking its owner.

``JobMonitor`` starts the worker (``python -m engine.worker JOB.json``) for one job, reads its
events on a reader thread into a queue and hands them out through ``poll()``, which never
blocks unless asked to. The modal operator's timer tick, the blocking background path and the
tests all drive the same object. ``ProcessMonitor`` is the part that knows nothing about jobs;
the dependency installer reuses it for ``vendor_install.py --events``.

Guarantees:
- every run ends with exactly one final event, ``done`` or ``error`` (a crash, an exit without
  ``done``, garbage on stdout and a cancel all become ``error`` events; never a hang);
- ``cancel()`` writes ``cancel`` to the worker's stdin, then sends SIGTERM after a grace period,
  then kills it (the whole process group on POSIX);
- ``close()`` stops the process if it still runs and removes the job folder.
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

from .protocol import CANCEL_LINE, Job, decode

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
        self.state = MonitorState()
        self.process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._threads: list[threading.Thread] = []
        self._stdout_closed = False
        self._cancel_requested = False
        self._escalations: list[tuple[float, str]] = []  # (monotonic deadline, "term"|"kill")
        self._stage_started = time.monotonic()
        self._exited_at: float | None = None

    # -- starting ---------------------------------------------------------------------------

    def start_process(self, argv: list[str], cwd: str | os.PathLike, env: dict | None = None) -> None:
        if self.process is not None:
            raise RuntimeError("this monitor already started a process")
        self.process = subprocess.Popen(
            [str(a) for a in argv], cwd=str(cwd), env=child_environment(env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            **_new_process_group())
        _lower_priority(self.process)
        self._stage_started = time.monotonic()
        self._spawn_reader(self.process.stdout, self._read_events)
        self._spawn_reader(self.process.stderr, self._read_stderr)

    def _spawn_reader(self, stream, target) -> None:
        thread = threading.Thread(target=target, args=(stream,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_events(self, stream) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    self._events.put(decode(line))
        finally:
            self._events.put(_EOF)

    def _read_stderr(self, stream) -> None:
        for raw in stream:
            self._stderr_tail.append(raw.decode("utf-8", errors="replace").rstrip())

    # -- reading ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process lives or its final output has not been read yet."""
        if self.process is None:
            return False
        return self.process.poll() is None or not self._stdout_closed

    @property
    def finished(self) -> bool:
        """The final event came and the process is gone: nothing more will happen."""
        return self.state.final is not None and not self.running

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
        if kind == "error" and self.process is not None and self.process.poll() is None:
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
        if done <= 0 or total <= done:
            return None
        return (time.monotonic() - self._stage_started) / done * (total - done)

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

    def _request_stop(self) -> None:
        if self._escalations:
            return
        self._send_line(CANCEL_LINE)
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

    def close(self) -> None:
        """Stop the process if it still runs and release its pipes."""
        if self.process is None:
            return
        if self.process.poll() is None or not self._stdout_closed:
            self.cancel(wait=True)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        for thread in self._threads:
            thread.join(timeout=1.0)


class JobMonitor(ProcessMonitor):
    """The worker for one job. The job's folder (where ``job.output`` goes) belongs to it."""

    def __init__(self, grace_s: float = GRACE_S):
        super().__init__(grace_s)
        self.job: Job | None = None
        self.job_dir: Path | None = None

    def start(self, job: Job, python: str | os.PathLike, cwd: str | os.PathLike,
              env: dict | None = None) -> None:
        """Write ``job`` next to its output and start ``python -m engine.worker JOB.json``."""
        self.job = job
        self.job_dir = Path(job.output).parent
        self.job_dir.mkdir(parents=True, exist_ok=True)
        job_file = job.save(self.job_dir / "job.json")
        self.start_process([python, "-m", "engine.worker", job_file], cwd, env)

    @property
    def result(self) -> Path | None:
        """The prediction file, once the worker reported ``done``."""
        if not self.state.succeeded:
            return None
        return Path(self.state.final.get("result") or self.job.output)

    def close(self) -> None:
        """Stop the worker if it still runs and remove the job folder."""
        super().close()
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
