"""vendor_install: the worker environment it makes works, is reused, and is never trusted when broken.

Real subprocesses and real files. One test pays for a full install into a temporary folder
(the repair path); the others use the environment the Makefile made, or fail before pip.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vendor_install as vi

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "vendor_install.py"
PYTHON_310 = Path("/root/.pyenv/versions/3.10.13/bin/python")
NOT_WANTED = ("torchvision", "xformers", "open3d", "pycolmap", "moviepy", "gradio")


def run_script(*args, python=sys.executable, env=None, timeout=1200):
    return subprocess.run([str(python), str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def events_of(result) -> list[dict]:
    """Every stdout line in --events mode must be one JSON object."""
    return [json.loads(line) for line in result.stdout.splitlines()]


def pip_env(**extra) -> dict:
    """The environment for a real install: pip's cache of the real user saves re-downloads.

    conftest moves HOME and XDG_CACHE_HOME to a temporary folder (for Blender's sake).
    """
    env = dict(os.environ, **extra)
    real_cache = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "pip"
    if real_cache.is_dir():
        env["PIP_CACHE_DIR"] = str(real_cache)
    return env


def cli_variant(marker: dict) -> str:
    """The --torch value that asks for the build an environment already holds."""
    return {"mps": "auto"}.get(marker["torch_variant"], marker["torch_variant"])


@pytest.fixture(scope="module")
def managed_env(worker_python) -> Path:
    target = vi.env_dir_of(worker_python)
    if not vi.is_managed(target):
        pytest.skip(f"{worker_python} is a custom interpreter, not made by vendor_install")
    return target


# ---------------------------------------------------------------- the environment the Makefile made

def test_worker_env_passes_its_self_test_and_holds_only_what_the_worker_needs(managed_env):
    python = vi.env_python(managed_env)
    status = vi.env_status(python)
    assert status.ok, status.summary
    info = vi.run_self_test(python)
    assert info["device"] in ("cuda", "mps", "cpu")
    assert info["versions"]["torch"].startswith(vi.TORCH_VERSION)
    assert info["versions"] == vi.read_marker(managed_env)["versions"]
    for requirement in vi.PACKAGES + vi.NO_DEPS_PACKAGES:
        name, version = requirement.split("==")
        assert info["versions"][name] == version, name
    installed = vi.installed_versions(python, NOT_WANTED)
    assert installed == dict.fromkeys(NOT_WANTED), installed


def test_second_run_is_a_no_op(managed_env):
    """It only checks: no stage but "check" runs and no file of the environment changes."""
    marker_before = vi.read_marker(managed_env)
    watched = [managed_env / vi.MARKER_NAME, managed_env / "pyvenv.cfg",
               managed_env / marker_before["files"][0]]
    mtimes = [p.stat().st_mtime_ns for p in watched]
    started = time.monotonic()
    result = run_script("--target", managed_env, "--torch", cli_variant(marker_before), "--events")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    events = events_of(result)
    assert events[-1]["event"] == "done"
    assert "already installed" in events[-1]["summary"]
    assert {e["stage"] for e in events if e["event"] == "stage"} == {"check"}
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    assert vi.read_marker(managed_env) == marker_before
    print(f"no-op rerun: {seconds:.2f} s")  # nothing was installed: the stages say so


def test_install_function_on_a_current_env_returns_at_once(managed_env):
    marker = vi.read_marker(managed_env)
    events = []
    summary = vi.install(managed_env, torch=cli_variant(marker), progress=events.append)
    assert summary.startswith("DA3 environment ready (already installed")
    assert events[-1] == {"event": "progress", "done": len(vi.STAGES), "total": len(vi.STAGES)}
    assert vi.read_marker(managed_env) == marker


def test_a_second_installer_waits_for_the_first(managed_env):
    """The add-on's button and `make worker` may run at once: one waits, then finds it current."""
    import fcntl

    marker = vi.read_marker(managed_env)
    with open(managed_env / vi.LOCK_NAME, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        waiting = subprocess.Popen([sys.executable, str(SCRIPT), "--target", str(managed_env),
                                    "--torch", cli_variant(marker), "--events"],
                                   stdout=subprocess.PIPE, text=True)
        first = json.loads(waiting.stdout.readline())
        assert first["message"].startswith("Waiting for another installation")
        time.sleep(1.5)
        assert waiting.poll() is None
    rest, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0
    assert "already installed" in json.loads(rest.splitlines()[-1])["summary"]


# ---------------------------------------------------------------- one full install: broken -> repaired

def test_broken_env_is_reported_then_repaired_by_a_rerun(tmp_path):
    target = tmp_path / "env"
    python = vi.env_python(target)
    env = pip_env()
    started = time.monotonic()
    first = run_script("--target", target, "--torch", "cpu", "--events", env=env)
    print(f"install from scratch: {time.monotonic() - started:.0f} s")
    assert first.returncode == 0, first.stderr[-3000:]
    events = events_of(first)
    assert_event_stream_is_well_formed(events)
    assert vi.env_status(python).ok

    einops = target / next(f for f in vi.read_marker(target)["files"] if "/einops/" in f)
    shutil.rmtree(einops.parent)
    status = vi.env_status(python)
    assert not status.ok and "einops" in status.summary, status.summary

    second = run_script("--target", target, "--torch", "cpu", "--events", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    messages = [e["message"] for e in events_of(second) if e["event"] == "stage"]
    assert any("Recreating" in m and "einops" in m for m in messages), messages
    assert vi.env_status(python).ok
    check = subprocess.run([str(python), "-c", "import einops"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def assert_event_stream_is_well_formed(events):
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "error" not in kinds
    stages = [e["stage"] for e in events if e["event"] == "stage" and not e.get("detail")]
    assert [s for s in vi.STAGES if s in stages] == list(vi.STAGES)
    progress = [(e["done"], e["total"]) for e in events if e["event"] == "progress"]
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert progress[-1] == (len(vi.STAGES), len(vi.STAGES))


# ---------------------------------------------------------------- failures: one line, no marker

def test_unsupported_python_fails_in_one_line_and_touches_nothing(tmp_path):
    if not PYTHON_310.exists():
        pytest.skip("no Python 3.10 on this machine")
    target = tmp_path / "env"
    plain = run_script("--target", target, python=PYTHON_310)
    assert plain.returncode != 0
    lines = (plain.stdout + plain.stderr).strip().splitlines()
    assert len(lines) == 1 and "3.11 or newer" in lines[0], lines
    events = run_script("--target", target, "--events", python=PYTHON_310)
    assert events.returncode != 0
    assert events_of(events) == [{"event": "error", "kind": "dependency", "message": lines[0][7:]}]
    assert not target.exists()


def test_no_network_gives_one_line_and_leaves_an_incomplete_env(tmp_path):
    target = tmp_path / "env"
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    # Offline, as pip sees it: its only index refuses connections and no local wheels.
    offline = pip_env(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
                      PIP_FIND_LINKS=str(empty), PIP_RETRIES="1")
    result = run_script("--target", target, "--torch", "cpu", "--events", env=offline)
    assert result.returncode == 1
    error = events_of(result)[-1]
    assert error["event"] == "error" and error["kind"] == "dependency"
    assert error["message"] == ("pip could not reach the package index to install "
                                f"{vi.torch_requirement('cpu')} (no network?)")
    assert "\n" not in error["message"]
    assert not (target / vi.MARKER_NAME).exists()
    status = vi.env_status(vi.env_python(target))
    assert not status.ok and "incomplete" in status.summary


@pytest.mark.parametrize("how", ["cancel line", "sigterm"])
def test_a_cancel_kills_pip_and_leaves_nothing_behind(tmp_path, how):
    """The add-on cancels a background install with a ``cancel`` line on its stdin, then
    SIGTERM after a grace period; either stops it at once and removes what it had built."""
    target = tmp_path / "env"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--target", str(target), "--torch", "cpu",
                                "--events"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=pip_env())
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1].get("stage") == "torch" and events[-1].get("detail"):
            break  # pip is running
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        process.stdin.write("cancel\n")
        process.stdin.flush()
    rest, _ = process.communicate(timeout=60)
    events += [json.loads(line) for line in rest.splitlines()]
    assert process.returncode == 130
    assert events[-1] == {"event": "error", "kind": "cancelled", "message": "installation cancelled"}
    assert processes_mentioning(str(target)) == []
    assert sorted(p.name for p in target.iterdir()) == [vi.LOCK_NAME]
    assert vi.env_status(vi.env_python(target)) == vi.EnvStatus(False, "not installed")


def processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # it ended while we looked
    return found


def test_unwritable_target_fails_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_script("--target", blocker / "env", "--torch", "cpu")
    assert result.returncode == 1
    assert result.stdout.strip() == ""
    assert result.stderr.strip().startswith("error: cannot write to")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_folder_with_other_content_is_refused_not_wiped(tmp_path):
    keep = tmp_path / "my-notes.txt"
    keep.write_text("precious")
    with pytest.raises(vi.InstallError, match="not made by this installer"):
        vi.install(tmp_path, torch="cpu")
    assert keep.read_text() == "precious"
    assert not (tmp_path / vi.MARKER_NAME).exists()


def test_function_reports_bad_torch_choice_as_install_error(tmp_path):
    with pytest.raises(vi.InstallError, match="auto, cpu or cuda"):
        vi.install(tmp_path / "env", torch="rocm")
    assert not (tmp_path / "env").exists()


# ---------------------------------------------------------------- env_status: files only, fast

def fake_env(root: Path, *, stamp=True, interpreter=True, marker: dict | None = None) -> Path:
    """A managed environment's files without packages: enough for env_status, which reads files."""
    python = vi.env_python(root)
    if interpreter:
        python.parent.mkdir(parents=True)
        python.symlink_to(sys.executable)
    root.mkdir(exist_ok=True)
    if stamp:
        (root / vi.STAMP_NAME).write_text("")
    if marker is not None:
        vi.write_marker(root, marker)
    return python


def ready_marker(**changes) -> dict:
    marker = {"format": vi.MARKER_FORMAT, "pins_hash": vi.pins_hash("cpu"), "torch_variant": "cpu",
              "files": ["bin/python"], "device": "cpu", "size_mb": 1234,
              "versions": {"torch": "2.13.0+cpu", "depth-anything-3": "0.1.1"}}
    return {**marker, **changes}


def test_env_status_missing(tmp_path):
    assert vi.env_status(vi.env_python(tmp_path / "nothing")) == vi.EnvStatus(False, "not installed")


def test_env_status_custom_interpreter_is_usable_but_unchecked():
    assert vi.env_status(Path(sys.executable)) == vi.EnvStatus(True, "custom interpreter (not checked)")


def test_env_status_ready(tmp_path):
    python = fake_env(tmp_path / "env", marker=ready_marker())
    assert vi.env_status(python) == vi.EnvStatus(
        True, "ready: torch 2.13.0+cpu, depth-anything-3 0.1.1, device cpu, 1234 MB")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, "incomplete install (no marker)"),  # half-built, or marker removed
    ({"marker": ready_marker(pins_hash="0" * 16)}, "out of date (pinned versions changed)"),
    ({"marker": ready_marker(files=["lib/gone.py"])}, "broken (lib/gone.py is missing)"),
    ({"interpreter": False, "marker": ready_marker()}, "interpreter missing"),
    ({"stamp": False, "interpreter": False, "marker": ready_marker()}, "interpreter missing"),
])
def test_env_status_never_trusts_a_half_or_broken_env(tmp_path, kwargs, expected):
    python = fake_env(tmp_path / "env", **kwargs)
    assert vi.env_status(python) == vi.EnvStatus(False, f"{expected}: reinstall")


def test_env_status_never_runs_the_interpreter(tmp_path):
    """The panel asks on every redraw: the answer must come from files, never from starting
    the environment's Python (which takes a second)."""
    root = tmp_path / "env"
    python = fake_env(root, interpreter=False, marker=ready_marker())
    sentinel = tmp_path / "ran"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\ntouch '{sentinel}'\nexec '{sys.executable}' \"$@\"\n")
    python.chmod(0o755)
    assert vi.env_status(python).ok
    assert not sentinel.exists()


def test_download_size_is_rough_but_ordered():
    assert vi.download_size_mb("cuda") > vi.download_size_mb("cpu") > vi.download_size_mb("mps") > 0
    assert vi.download_size_mb("auto") in {vi.download_size_mb(v) for v in ("cuda", "cpu", "mps")}
