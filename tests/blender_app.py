"""Real Blender applications for the tests: Debian's Blender 4.3.2 and 5.2.2 in chroots made by
``make blender-apps`` (scripts/provision_blender.sh), or any executable named by ``BLENDER``.

The bpy module has no event loop: what a user clicks, drops or cancels only runs here. Each test
gets its own HOME with the extension installed from the built zip by Blender's own
``blender -c extension install-file``, as a user installs it. The worker runs from this
machine's worker environment (``DA3_WORKER_PYTHON``, as on a render farm).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROOTS = Path(os.environ.get("DA3_BLENDER_CHROOTS") or REPO / ".cache" / "blender")
SUITES = ("trixie", "sid")  # Blender 4.3.2 (Python 3.13) and 5.2.2 LTS (Python 3.14)
DRIVERS = REPO / "tests" / "app_drivers"
ARTEFACTS = REPO / "out" / "real-blender"  # screenshots CI keeps
SCREEN = "1600x900x24"
# What Blender prints for a Python error in a modal handler, a timer or a draw function: it
# carries on, so the tests read its output.
PYTHON_ERROR = re.compile(r"^Traceback \(most recent call last\)|^Error: Python: ", re.M)


FIGURES: list[str] = []  # measured lines, printed at the end of the run (conftest)
(ARTEFACTS / "figures.txt").unlink(missing_ok=True)  # this run's figures only


def report(line: str) -> None:
    """A figure worth seeing in CI's log: printed in pytest's summary and kept as an artefact."""
    FIGURES.append(line)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTEFACTS / "figures.txt", "a", encoding="utf-8") as out:
        out.write(line + "\n")


@dataclass
class BlenderApp:
    """One Blender executable and how to start it (inside its chroot, or directly)."""

    label: str  # "4.3.2"
    prefix: list[str] = field(default_factory=list)  # the chroot runner, or nothing
    executable: str = "blender"

    @property
    def id(self) -> str:
        return f"blender-{self.label}"

    def argv(self, args: list[str], ui: bool = False) -> list[str]:
        command = [self.executable, *args]
        if ui:
            command = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", *command]
        return [*self.prefix, *command]

    def run(self, args: list[str], env: dict, ui: bool = False, timeout: float = 600,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(args, ui), env=env, cwd=cwd, capture_output=True,
                                text=True, encoding="utf-8", errors="replace", timeout=timeout)
        result.output = result.stdout + result.stderr
        return result


def chroot_app(suite: str) -> BlenderApp | None:
    root = CHROOTS / suite
    ready = root / ".da3-ready"
    if not ready.is_file():
        return None
    label = ready.read_text().split()[1] if len(ready.read_text().split()) > 1 else suite
    binds = [REPO, Path("/tmp"), python_home(worker_python())]
    # For the install test: this machine's local torch wheel, and its certificates (a proxy's
    # own authority may be among them, as on company networks).
    binds += [p for p in (Path("/opt/wheels"), Path("/etc/ssl/certs")) if p.is_dir()]
    prefix = [str(REPO / "scripts" / "blender_chroot.sh"), str(root)]
    for bind in dict.fromkeys(str(b) for b in binds):
        prefix += ["--bind", bind]
    return BlenderApp(label, [*prefix, "--"])


def local_app(executable: str) -> BlenderApp:
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Blender (\d+\.\d+\.\d+)", version)
    return BlenderApp(match.group(1) if match else Path(executable).name, [], executable)


def find_apps() -> tuple[list[BlenderApp], str]:
    """The Blender applications to test, and when there is none, one line saying why."""
    if os.environ.get("BLENDER"):
        return [local_app(os.environ["BLENDER"])], ""
    apps = [app for app in map(chroot_app, SUITES) if app is not None]
    if apps:
        return apps, ""
    return [], ("no real Blender: run 'make blender-apps' (root; Debian's Blender 4.3 and 5.2 in "
                f"chroots under {CHROOTS}) or set BLENDER=/path/to/blender")


def worker_python() -> Path:
    return Path(os.environ.get("DA3_WORKER_PYTHON") or REPO / ".worker-env" / "bin" / "python")


def python_home(python: Path) -> Path:
    """The installation a venv's interpreter links to (it must be visible inside a chroot)."""
    real = python.resolve()
    return real.parents[1]


def base_env(home: Path, **extra: str) -> dict:
    """A clean environment for Blender: its own HOME, the worker, the test weights."""
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "DA3_WORKER_PYTHON": str(worker_python()),
        "DA3_MODELS_DIR": str(REPO / ".cache" / "test-weights"),
        "DA3_TEST_ARTEFACTS": str(ARTEFACTS),
    }
    if os.environ.get("BLENDER"):  # a local Blender keeps this machine's own PATH and display
        env["PATH"] = os.environ.get("PATH", env["PATH"])
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    env.update(extra)
    return env


def build_zip(app: BlenderApp, out_dir: Path, env: dict) -> Path:
    """The extension zip, built by this Blender's own ``extension build``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = app.run(["-b", "--factory-startup", "-c", "extension", "build", "--source-dir",
                      str(REPO), "--output-dir", str(out_dir)], env)
    zips = list(out_dir.glob("*.zip"))
    assert result.returncode == 0 and zips, result.output
    return zips[0]


def install_extension(app: BlenderApp, zip_path: Path, home: Path) -> None:
    """Install and enable the zip for a user whose HOME is ``home``, as a user does."""
    home.mkdir(parents=True, exist_ok=True)
    result = app.run(["-b", "-c", "extension", "install-file", "-r", "user_default", "-e",
                      str(zip_path)], base_env(home))
    assert result.returncode == 0 and "Installed" in result.output, result.output


def fresh_home(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, symlinks=True)
    return target


def run_driver(app: BlenderApp, driver: str, home: Path, result_file: Path, *args: str,
               ui: bool = True, timeout: float = 600, env: dict | None = None,
               blender_args: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Run ``tests/app_drivers/<driver>`` in Blender (under Xvfb for the UI); returns what it
    wrote to ``result_file`` and everything Blender printed."""
    argv = [*blender_args] if ui else ["-b", *blender_args]
    argv += ["--python-exit-code", "3", "--python", str(DRIVERS / driver), "--",
             str(result_file), *args]
    started = time.monotonic()
    result = app.run(argv, env or base_env(home), ui=ui, timeout=timeout)
    output = result.output + f"\n[exit code {result.returncode} after {time.monotonic() - started:.1f} s]"
    data = json.loads(result_file.read_text()) if result_file.exists() else {}
    return data, output


def python_errors(output: str) -> list[str]:
    """Blender's reports of Python errors in what it printed (tracebacks keep it running)."""
    lines = output.splitlines()
    found = []
    for number, line in enumerate(lines):
        if PYTHON_ERROR.match(line):
            found.append("\n".join(lines[number:number + 25]))
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (a test's own folder): in their
    command line, or for a Python process (the extension's children) in its environment, since
    the warm worker's command line names no file but it inherits its Blender's HOME. (Xvfb has
    that HOME too, and xvfb-run may still be ending it as Blender exits.)"""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        joined = b" ".join(args).decode("utf-8", "replace")
        python = Path(args[0].decode("utf-8", "replace")).name.startswith("python")
        if (text in joined or (python and text in environ)) and "pytest" not in joined:
            found.append(joined)
    return found


def still_running(pid: int, start_ticks: int) -> bool:
    """Whether the process ``pid`` that started at ``start_ticks`` (field 22 of /proc/PID/stat)
    still runs: a PID used again by a newer process does not count, nor does a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19]) == start_ticks and fields[0] != "Z"
