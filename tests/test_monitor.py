"""JobMonitor on its own (no Blender): events, cancel, crashes, cleanup, and ticks that drain a
flood of events a little at a time. What a tick and a cancel take is the figure of
``benchmarks/bench_monitor.py``: nothing here asserts a time.

Most tests start a stand-in worker: a tiny ``engine/worker.py`` in a temporary folder whose
behaviour the job's ``extra`` picks, run by this interpreter. One test runs the real worker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.core.options import RunOptions
from engine.core.protocol import Job
from engine.host.monitor import JobMonitor, ProcessMonitor

FAKE_WORKER = textwrap.dedent('''
    import json, signal, sys, threading, time

    job = json.load(open(sys.argv[1]))
    mode = job["extra"]["mode"]
    cancelled = threading.Event()

    def emit(event, **fields):
        print(json.dumps({"event": event, **fields}), flush=True)

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "cancel":
                cancelled.set()

    if mode == "deaf":  # ignores the cancel line and SIGTERM: only SIGKILL ends it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        threading.Thread(target=watch_stdin, daemon=True).start()

    emit("stage", stage="starting", message="hello")
    if mode == "exit3":
        print("Traceback: something broke badly", file=sys.stderr)
        sys.exit(3)
    if mode == "garbage":
        print("this is not json", flush=True)
        time.sleep(30)
    if mode == "silent_exit":
        sys.exit(0)
    if mode == "quiet":  # says nothing more until it is cancelled
        cancelled.wait(60)
        emit("error", kind="cancelled", message="cancelled", traceback="")
        sys.exit(1)
    if mode == "flood":
        for i in range(int(job["extra"]["n"])):
            emit("progress", stage="inference", done=i + 1, total=int(job["extra"]["n"]), eta_s=None)
    if mode in ("slow", "deaf"):
        for i in range(600):
            if cancelled.is_set():
                emit("error", kind="cancelled", message="cancelled", traceback="")
                sys.exit(1)
            emit("progress", stage="inference", done=i, total=600, eta_s=60.0)
            time.sleep(0.05)
    if mode == "fail":
        emit("error", kind="bad_input", message="no images in /nowhere", traceback="")
        sys.exit(1)
    open(job["output"], "wb").write(b"npz")
    emit("done", result=job["output"], views=2, seconds=0.1)
''')


def write_fake_worker(root: Path) -> Path:
    """``root`` with a stand-in ``engine.worker`` module in it."""
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "worker.py").write_text(FAKE_WORKER)
    return root


@pytest.fixture
def fake_cwd(tmp_path) -> Path:
    """A folder with a stand-in ``engine.worker`` module."""
    return write_fake_worker(tmp_path / "fake")


def start(fake_cwd, tmp_path, mode, grace_s=1.0, **extra) -> JobMonitor:
    job_dir = tmp_path / "jobs" / "job-1"
    job = Job(sources=["x"], output=str(job_dir / "prediction.npz"), extra={"mode": mode, **extra})
    monitor = JobMonitor(grace_s=grace_s)
    monitor.start(job, sys.executable, fake_cwd)
    return monitor


def collect(monitor, timeout=60.0) -> list[dict]:
    """Every event to the end of the run; the timeout only guards against a hang."""
    events, deadline = [], time.monotonic() + timeout
    while not monitor.finished:
        assert time.monotonic() < deadline, "the monitor did not finish"
        events += monitor.poll(timeout=0.05)
    return events


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_success_reports_stages_and_result(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "ok")
    events = collect(monitor)
    assert [e["event"] for e in events] == ["stage", "done"]
    assert monitor.state.succeeded and monitor.state.error == ""
    assert monitor.result.read_bytes() == b"npz"
    job_file = json.loads((monitor.job_dir / "job.json").read_text())
    assert job_file["extra"] == {"mode": "ok"}
    monitor.close()
    assert not monitor.job_dir.exists()


def test_poll_returns_nothing_while_the_worker_is_silent(fake_cwd, tmp_path):
    """poll() without a timeout does not wait for the worker's next line."""
    monitor = start(fake_cwd, tmp_path, "quiet")
    assert [e["event"] for e in monitor.poll(timeout=30)] == ["stage"]
    answers = []
    poller = threading.Thread(target=lambda: answers.append(monitor.poll()), daemon=True)
    poller.start()
    poller.join(timeout=30)  # a hang guard, not a timing claim
    assert answers == [[]], "poll waited for a worker that says nothing"
    assert not monitor.finished and monitor.process.poll() is None
    monitor.close()
    assert not alive(monitor.process.pid)


def test_worker_error_is_the_final_event(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "fail")
    events = collect(monitor)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "bad_input"
    assert monitor.state.error == "no images in /nowhere"
    assert sum(e["event"] in ("done", "error") for e in events) == 1
    monitor.close()


def test_crash_becomes_an_error_with_the_exit_code(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "exit3")
    events = collect(monitor)
    assert events[-1]["event"] == "error"
    assert "exit code 3" in monitor.state.error
    assert "something broke badly" in monitor.state.error
    assert "\n" not in monitor.state.error
    monitor.close()


def test_exit_without_result_is_an_error(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "silent_exit")
    collect(monitor)
    assert "without a result" in monitor.state.error


def test_garbage_on_stdout_is_an_error_and_stops_the_worker(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "garbage", grace_s=0.5)
    events = collect(monitor)
    assert events[-1]["kind"] == "internal"
    assert "this is not json" in monitor.state.error
    assert not alive(monitor.process.pid)
    monitor.close()


def test_a_python_that_is_not_there_raises_on_start(tmp_path):
    job = Job(sources=["x"], output=str(tmp_path / "j" / "p.npz"))
    with pytest.raises(OSError):
        JobMonitor().start(job, tmp_path / "no-python", tmp_path)


@pytest.mark.parametrize("mode", ["slow", "deaf"])
def test_cancel_stops_the_worker_and_cleans_up(fake_cwd, tmp_path, mode):
    monitor = start(fake_cwd, tmp_path, mode, grace_s=0.5)
    while monitor.state.done < 2:
        assert not monitor.finished, monitor.state.final
        monitor.poll(timeout=0.05)
    monitor.cancel(wait=True)
    assert monitor.finished and monitor.state.final["kind"] == "cancelled"
    assert not alive(monitor.process.pid)
    monitor.close()
    assert not monitor.job_dir.exists()


def test_cancel_without_waiting_escalates_through_poll(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "deaf", grace_s=0.3)
    monitor.poll(timeout=0.5)
    monitor.cancel(wait=False)
    collect(monitor)
    assert monitor.state.final["kind"] == "cancelled"
    assert monitor.process.returncode != 0
    monitor.close()


def test_close_while_running_kills_and_removes_the_job(fake_cwd, tmp_path):
    monitor = start(fake_cwd, tmp_path, "deaf", grace_s=0.3)
    monitor.poll(timeout=0.5)
    monitor.close()
    assert not alive(monitor.process.pid)
    assert not monitor.job_dir.exists()


def test_a_spent_budget_takes_one_event_and_leaves_the_flood_to_later_ticks(fake_cwd, tmp_path):
    """A modal timer tick drains only what its budget allows (``budget_s``; at least one event,
    so a run always moves on) and leaves the rest queued for the next tick: nothing is lost or
    reordered. With the whole flood waiting, a spent budget takes exactly one event a tick."""
    monitor = start(fake_cwd, tmp_path, "flood", grace_s=60, n=2000)  # the pipe outlives it
    assert monitor.process.wait(timeout=30) == 0  # the whole flood has been written
    ticks = []
    while not monitor.finished:
        assert len(ticks) < 3000, "the monitor did not finish"
        ticks.append(monitor.poll(timeout=30, budget_s=0.0))  # timeout: only a hang guard
    assert max(len(tick) for tick in ticks) == 1
    events = [e for tick in ticks for e in tick]
    assert [e["event"] for e in events] == ["stage"] + ["progress"] * 2000 + ["done"]
    assert [e["done"] for e in events[1:-1]] == list(range(1, 2001))
    assert monitor.state.succeeded and monitor.state.done == 2000
    monitor.close()


def test_process_monitor_runs_any_json_lines_command(tmp_path):
    script = tmp_path / "events.py"
    script.write_text('print(\'{"event": "stage", "stage": "pip", "message": "installing"}\')\n'
                      'print(\'{"event": "done", "result": "", "views": 0, "seconds": 0}\')\n')
    monitor = ProcessMonitor()
    monitor.start_process([sys.executable, script], tmp_path)
    events = collect(monitor)
    assert [e["event"] for e in events] == ["stage", "done"]
    assert monitor.state.message == "installing"
    monitor.close()


def test_real_worker_reports_a_bad_input_as_one_line(worker_python, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    job = Job(sources=[str(tmp_path / "missing-folder")], output=str(tmp_path / "job" / "p.npz"),
              models_dir=str(tmp_path / "models"), run=RunOptions(device="cpu"))
    monitor = JobMonitor()
    monitor.start(job, worker_python, repo)
    collect(monitor, timeout=120)
    print("worker said:", monitor.state.error)
    assert monitor.state.final["event"] == "error"
    assert monitor.state.error and "\n" not in monitor.state.error
    monitor.close()
    assert not (tmp_path / "job").exists()


# -- the warm worker: one serving process of the real worker, job after job ---------------------

@pytest.fixture
def warm(worker_python, small_weights, tmp_path):
    """start(env) -> a serving JobMonitor; job(name) -> a tiny job on the test weights."""
    from tests import media

    repo = Path(__file__).resolve().parents[1]
    images = [media.write(tmp_path / "images" / f"v{i}.png", media.scene(seed=i)) for i in range(2)]
    monitors = []

    def start(env=None) -> JobMonitor:
        monitors.append(JobMonitor(grace_s=1.0))
        monitors[-1].serve(worker_python, repo, env)
        return monitors[-1]

    def job(name: str, process_res: int = 56) -> Job:
        return Job(sources=[str(p) for p in images], output=str(tmp_path / "jobs" / name / "p.npz"),
                   run=RunOptions(weights=str(small_weights), device="cpu", process_res=process_res))

    yield start, job
    for monitor in monitors:
        monitor.close()


def run_job(monitor: JobMonitor, job: Job) -> tuple[int, dict]:
    """Submit, follow to the end, let go of the job; (the pid that answered, the final event)."""
    monitor.submit(job)
    collect(monitor, timeout=120)
    pid, final = monitor.process.pid, monitor.state.final
    assert final["event"] == "done", final
    assert monitor.result.exists()
    monitor.end_run()
    assert not monitor.job_dir.exists()
    return pid, final


def test_a_warm_worker_runs_the_next_job_in_the_same_process(warm):
    start, job = warm
    monitor = start()
    first_pid, first = run_job(monitor, job("one"))
    assert alive(first_pid), "the worker stays between jobs"
    second_pid, second = run_job(monitor, job("two"))
    assert second_pid == first_pid
    assert first["model_reused"] is False and second["model_reused"] is True
    monitor.close()
    assert not alive(first_pid)


def test_a_worker_killed_between_jobs_is_replaced_by_a_fresh_one(warm):
    start, job = warm
    monitor = start()
    first_pid, _ = run_job(monitor, job("one"))
    os.kill(first_pid, signal.SIGKILL)
    monitor.process.wait(timeout=10)
    second_pid, second = run_job(monitor, job("two"))
    assert second_pid != first_pid and second["model_reused"] is False


def test_a_worker_lost_just_as_the_job_is_sent_is_replaced(warm):
    """It dies (or exits idle) with the job line unread: the job goes to a fresh process."""
    start, job = warm
    monitor = start()
    first_pid, _ = run_job(monitor, job("one"))
    os.kill(first_pid, signal.SIGSTOP)  # alive when the job is sent, never reads it
    monitor.submit(job("two"))
    os.kill(first_pid, signal.SIGKILL)
    collect(monitor, timeout=120)
    assert monitor.state.final["event"] == "done", monitor.state.final
    assert monitor.process.pid != first_pid


def test_an_idle_worker_exits_by_itself_and_the_next_job_starts_one(warm):
    start, job = warm
    monitor = start({"DA3_WORKER_IDLE_S": "1"})
    first_pid, _ = run_job(monitor, job("one"))
    assert monitor.process.wait(timeout=60) == 0
    second_pid, second = run_job(monitor, job("two"))
    assert second_pid != first_pid and second["model_reused"] is False


def test_a_cancel_ends_the_warm_worker_and_the_next_job_starts_one(warm, tmp_path):
    from tests import media

    start, job = warm
    monitor = start()
    many = [media.write(tmp_path / "many" / f"v{i}.png", media.scene(seed=i)) for i in range(6)]
    slow = job("slow", process_res=504)  # six views at 504x378: seconds of forward pass
    slow.sources = [str(p) for p in many]
    monitor.submit(slow)
    while monitor.state.stage != "inference":  # one event a tick: every stage is seen
        assert not monitor.finished, monitor.state.final
        monitor.poll(timeout=0.05, budget_s=0.0)
    cancelled_pid = monitor.process.pid
    monitor.cancel(wait=True)
    assert monitor.state.final["kind"] == "cancelled" and not alive(cancelled_pid)
    monitor.end_run()
    assert not (tmp_path / "jobs" / "slow").exists()
    next_pid, _ = run_job(monitor, job("next"))
    assert next_pid != cancelled_pid
