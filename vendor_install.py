"""Create the worker's isolated Python environment (a venv with torch and Depth Anything 3).

Two ways in:

* script: ``python vendor_install.py --target DIR [--torch cpu|cuda|auto] [--events]``
  (Blender's bundled Python or any Python 3.11+);
* module: ``install(target, torch="auto", progress=None)`` from the add-on's button, and the
  cheap ``env_status(python)`` the preferences panel calls on every redraw.

DIR becomes a virtual environment with pinned packages. A marker file (``da3_env.json``) is
written only after a self-test inside the new environment passed, so an environment without
a marker, with other pins, or with files missing is never trusted: ``install`` recreates it.

Only the standard library is imported here: this module is imported inside Blender.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

MIN_PYTHON = (3, 11)
TORCH_VERSION = "2.13.0"
# The worker needs only these. depth-anything-3's own metadata also asks for torchvision,
# xformers, open3d, pycolmap, moviepy, gradio... (its exporters and app), hence --no-deps.
PACKAGES = (
    "numpy==2.4.6",  # 2.x works at run time although DA3's metadata says numpy<2
    "omegaconf==2.4.0",
    "addict==2.4.0",
    "einops==0.8.2",
    "safetensors==0.8.0",
    "huggingface_hub==2.4.0",
    "opencv-python-headless==5.0.0.93",
    "pillow==13.0.0",
    "psutil==7.2.2",  # process and system memory on Windows, macOS and Linux (chunk sizing)
    "scipy==1.17.1",  # evo's pose code needs it (giant and nested presets)
)
# evo is imported when the giant/nested networks are built; its own dependencies
# (matplotlib, pandas, rosbags, ...) are only needed by its plotting and file tools.
NO_DEPS_PACKAGES = ("depth-anything-3==0.1.1", "evo==1.38.1")

TORCH_INDEXES = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu130",
}
TORCH_INDEX_ENV = "DA3_TORCH_INDEX_URL"
PROBE_TIMEOUT_S = 3.0

MARKER_NAME = "da3_env.json"
# Written before anything else, so a half-built environment is recognised as ours (and
# repaired) instead of being mistaken for a user's own interpreter.
STAMP_NAME = ".da3-managed"
LOCK_NAME = ".da3-install.lock"
MARKER_FORMAT = 1

# Rough download sizes in MB (wheels, not installed size) for the confirmation dialog.
TORCH_DOWNLOAD_MB = {"cpu": 200, "mps": 80, "cuda": 3000}
OTHER_DOWNLOAD_MB = 140

STAGES = ("check", "venv", "torch", "packages", "da3", "selftest")


class InstallError(Exception):
    """An installation problem, described in one line for the user."""


@dataclass
class EnvStatus:
    ok: bool
    summary: str


@dataclass(frozen=True)
class PipStep:
    stage: str
    message: str
    requirements: tuple[str, ...]
    no_deps: bool = False
    index_url: str | None = None  # None: pip's configured indexes


# --------------------------------------------------------------------------- status (fast)

def env_python(target: Path) -> Path:
    """The interpreter of the environment in ``target``."""
    target = Path(target)
    if sys.platform == "win32":
        return target / "Scripts" / "python.exe"
    return target / "bin" / "python"


def env_dir_of(python: Path) -> Path:
    """The environment folder holding ``python`` (``DIR/bin/python`` or ``DIR\\Scripts\\python.exe``)."""
    return Path(python).parent.parent


def read_marker(target: Path) -> dict | None:
    try:
        marker = json.loads((Path(target) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_managed(target: Path) -> bool:
    target = Path(target)
    return (target / STAMP_NAME).exists() or (target / MARKER_NAME).exists()


def missing_files(target: Path, marker: dict) -> list[str]:
    """Files the self-test saw (module sources, torch's native library) that are gone now.

    A few stat calls: cheap enough for every redraw of the preferences panel, and it catches
    a package deleted or half-removed after the install.
    """
    return [rel for rel in marker.get("files", []) if not (Path(target) / rel).exists()]


def env_status(python: Path) -> EnvStatus:
    """What the preferences panel shows. Reads files only (no subprocess): it must be fast.

    An interpreter outside an environment made here (a user's own Python) is reported as
    usable but unchecked.
    """
    python = Path(python)
    target = env_dir_of(python)
    if not is_managed(target):
        if python.is_file():
            return EnvStatus(True, "custom interpreter (not checked)")
        return EnvStatus(False, "not installed")
    reason = marker_problem(target)
    if reason:
        return EnvStatus(False, f"{reason}: reinstall")
    return EnvStatus(True, status_line(read_marker(target)))


def status_line(marker: dict) -> str:
    """Short enough for one label in the preferences panel."""
    versions = marker.get("versions", {})
    return (f"ready: torch {versions.get('torch', '?')}, depth-anything-3 "
            f"{versions.get('depth-anything-3', '?')}, device {marker.get('device', '?')}, "
            f"{marker.get('size_mb', '?')} MB")


def marker_problem(target: Path) -> str | None:
    """Why the environment in ``target`` cannot be trusted, judged from files alone."""
    marker = read_marker(target)
    if not env_python(target).is_file():
        return "interpreter missing"
    if marker is None:
        return "incomplete install (no marker)"
    if marker.get("format") != MARKER_FORMAT or "torch_variant" not in marker:
        return "unknown marker format"
    if marker.get("pins_hash") != pins_hash(marker["torch_variant"]):
        return "out of date (pinned versions changed)"
    missing = missing_files(target, marker)
    if missing:
        return f"broken ({missing[0]} is missing)"
    return None


# --------------------------------------------------------------------------- what to install

def torch_requirement(variant: str) -> str:
    # The CPU index serves '+cpu' builds; pinning the local label means a missing CPU index
    # fails clearly instead of silently pulling multi-GB CUDA wheels from the default index.
    if variant == "cpu":
        return f"torch=={TORCH_VERSION}+cpu"
    return f"torch=={TORCH_VERSION}"


def install_steps(variant: str) -> tuple[PipStep, ...]:
    """The pip runs, in order, for a torch build variant ('cpu', 'cuda' or 'mps')."""
    torch_req = torch_requirement(variant)
    index = None if sys.platform == "darwin" else TORCH_INDEXES.get(variant)
    return (
        PipStep("torch", f"Installing {torch_req} ({variant} build)", (torch_req,), index_url=index),
        PipStep("packages", "Installing numpy, OpenCV, safetensors, ...", PACKAGES),
        PipStep("da3", "Installing depth-anything-3 and evo (without their extras)",
                NO_DEPS_PACKAGES, no_deps=True),
    )


def pins_hash(variant: str) -> str:
    """Identifies what an environment should hold; a change means the marker is stale."""
    steps = [(s.requirements, s.no_deps) for s in install_steps(variant)]
    text = json.dumps({"variant": variant, "steps": steps, "format": MARKER_FORMAT})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nvidia_gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def resolve_variant(requested: str) -> str:
    """'auto', 'cpu' or 'cuda' -> the torch build to install: 'cuda', 'mps' or 'cpu'.

    Apple silicon has one wheel (the default one) for both the CPU and MPS, so 'cpu' and
    'auto' both mean 'mps' there; which device runs is the worker's choice.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise InstallError(f"--torch must be auto, cpu or cuda, not '{requested}'")
    if sys.platform == "darwin":
        if requested == "cuda":
            raise InstallError("CUDA builds of torch do not exist for macOS; use --torch auto")
        return "mps"
    if requested == "auto":
        return "cuda" if nvidia_gpu_present() else "cpu"
    return requested


def download_size_mb(torch_variant: str) -> int:
    """Rough download size for the confirmation dialog ('auto' is resolved first)."""
    variant = torch_variant if torch_variant in TORCH_DOWNLOAD_MB else resolve_variant(torch_variant)
    return TORCH_DOWNLOAD_MB[variant] + OTHER_DOWNLOAD_MB


# --------------------------------------------------------------------------- install

class Progress:
    """Sends stage/progress events to the caller's callback (or nowhere)."""

    def __init__(self, callback=None, total: int = len(STAGES)):
        self.callback = callback
        self.total = total
        self.done = 0

    def stage(self, stage: str, message: str, detail: bool = False) -> None:
        event = {"event": "stage", "stage": stage, "message": message}
        if detail:
            event["detail"] = True  # a line of pip's, also in its own output
        self._send(event)

    def advance(self, to: int | None = None) -> None:
        self.done = self.total if to is None else to
        self._send({"event": "progress", "done": self.done, "total": self.total})

    def _send(self, event: dict) -> None:
        if self.callback:
            self.callback(event)


def install(target, torch: str = "auto", progress=None, *, force: bool = False,
            torch_index: str | None = None, python: str | os.PathLike | None = None) -> str:
    """Create (or check) the worker environment in ``target``; returns a one-line summary.

    Parameters
    ----------
    target : path-like
        The environment folder. It must be new, empty, or made by this installer: a folder
        with other content is refused rather than wiped.
    torch : {"auto", "cpu", "cuda"}
        Which torch build; 'auto' picks CUDA when ``nvidia-smi`` sees a GPU.
    progress : callable, optional
        Called with event dicts: ``{"event": "stage", "stage", "message"}`` and
        ``{"event": "progress", "done", "total"}``.
    force : bool
        Recreate even when the environment is current.
    torch_index : str, optional
        Index URL for torch; default ``$DA3_TORCH_INDEX_URL``, else PyTorch's index.
    python : path, optional
        The interpreter the environment is made from (3.11 or newer); default the one running
        this. Blender 5.1+ runs Python 3.13+, for which PyTorch's package index may only hold
        large CUDA builds: a separate Python 3.11 or 3.12 avoids that.

    Raises
    ------
    InstallError
        With one line for the user. No marker is written, so the add-on never uses a
        failed environment.
    """
    started = time.monotonic()
    report = Progress(progress)
    base = BasePython.check(Path(python) if python else Path(sys.executable))
    check_platform()
    variant = resolve_variant(torch)
    target = Path(target).expanduser().absolute()
    check_target_usable(target)
    make_folder(target)
    with install_lock(target, report):
        report.stage("check", f"Checking the environment in {target} (torch: {variant} build)")
        report.advance(1)
        reason = "forced" if force else why_not_current(target, variant, base)
        if reason is None:
            report.advance()
            return summary_line(read_marker(target), time.monotonic() - started, reused=True)
        try:
            build_environment(target, variant, reason, report, torch_index, base)
            marker = finish(target, variant, started, report, base)
        except KeyboardInterrupt:  # cancelled: what was built is neither usable nor kept
            discard_unfinished(target)
            raise
    return marker["summary"]


def discard_unfinished(target: Path) -> None:
    """Remove a half-built environment, the stamp last, so the folder reads as "not installed"
    again (the lock stays: it is held until we return)."""
    with contextlib.suppress(InstallError, OSError):
        clear_folder(target)
        (target / STAMP_NAME).unlink(missing_ok=True)


def build_environment(target: Path, variant: str, reason: str, report: Progress,
                      torch_index: str | None, base: BasePython) -> None:
    if reason != "new environment":
        report.stage("venv", f"Recreating the environment ({reason})")
    clear_folder(target)
    write_file(target / STAMP_NAME, "made by DA3 Reconstruct's vendor_install.py\n")
    create_venv(target, report, base)
    report.advance(2)
    python = env_python(target)
    for number, step in enumerate(install_steps(variant), start=3):
        if step.stage == "torch":
            step = with_torch_index(step, torch_index, report)
        run_pip(python, step, report)
        report.advance(number)


def finish(target: Path, variant: str, started: float, report: Progress, base: BasePython) -> dict:
    report.stage("selftest", "Testing the environment (imports, builds da3-small)")
    info = run_self_test(env_python(target))
    marker = {
        "format": MARKER_FORMAT,
        "pins_hash": pins_hash(variant),
        "torch_variant": variant,
        "python": base.version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "size_mb": folder_size_mb(target),
        "install_s": round(time.monotonic() - started, 1),
    }
    marker["summary"] = summary_line(marker, marker["install_s"], reused=False)
    write_marker(target, marker)
    report.advance()
    return marker


@dataclass
class BasePython:
    """The interpreter the environment is made from, and its version."""

    path: Path
    version: str

    @classmethod
    def check(cls, path: Path) -> BasePython:
        """Its version, asked of it; InstallError when it does not run or is too old."""
        if Path(path) == Path(sys.executable):
            version = sys.version_info[:3]
        else:
            try:
                answer = subprocess.run([str(path), "-I", "-c", "import sys; print(*sys.version_info[:3])"],
                                        capture_output=True, text=True, timeout=60)
                version = tuple(int(v) for v in answer.stdout.split())
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                raise InstallError(f"cannot run the Python {path} to create the environment: {exc}") from None
            if answer.returncode != 0 or len(version) != 3:
                raise InstallError(f"cannot run the Python {path} to create the environment")
        text = ".".join(map(str, version))
        if version[:2] < MIN_PYTHON:
            raise InstallError(
                f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed to create the DA3 "
                f"environment; {path} is Python {text}")
        return cls(Path(path), text)


def check_platform() -> None:
    if sys.platform == "darwin" and platform.machine() != "arm64":
        raise InstallError(f"torch {TORCH_VERSION} has no builds for Intel Macs; "
                           "an Apple silicon Mac is needed")


def check_target_usable(target: Path) -> None:
    """Refuse a folder that holds something else: repairing means deleting its content."""
    if not target.exists():
        return
    if not target.is_dir():
        raise InstallError(f"cannot create the environment: {target} is a file")
    if Path(sys.prefix).resolve() == target.resolve():
        raise InstallError(f"run the installer with a Python from outside {target}, "
                           "which it may have to rebuild")
    if is_managed(target):
        return
    others = [p.name for p in target.iterdir() if p.name != LOCK_NAME]
    if others:
        raise InstallError(f"{target} is not empty and was not made by this installer; "
                           "choose a new or empty folder")


def make_folder(target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / LOCK_NAME).touch()
    except OSError as exc:
        raise InstallError(f"cannot write to {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def install_lock(target: Path, report: Progress):
    """One installer per folder (the add-on's button and `make` may race); waits its turn.

    The lock file lives inside the folder and survives its clean-up, so it stays one inode.
    """
    with open(target / LOCK_NAME, "a+b") as handle:
        handle.seek(0)  # Windows locks bytes from the current position: all must agree
        waited = False
        while not try_lock(handle):
            if not waited:
                report.stage("check", f"Waiting for another installation into {target}")
                waited = True
            time.sleep(1.0)
        yield


def try_lock(handle) -> bool:
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def why_not_current(target: Path, variant: str, base: BasePython) -> str | None:
    """None when the environment is verified and current, else why it must be (re)built."""
    if not is_managed(target):
        return "new environment"
    marker = read_marker(target)
    if marker and marker.get("torch_variant") != variant:
        return f"torch build changes from {marker.get('torch_variant')} to {variant}"
    if marker and marker.get("python") != base.version:
        return f"Python changes from {marker.get('python')} to {base.version}"
    problem = marker_problem(target)
    if problem:
        return problem
    installed = installed_versions(env_python(target), marker["versions"])
    if installed is None:
        return "the interpreter does not run"
    if installed != marker["versions"]:
        changed = sorted(k for k in marker["versions"] if installed.get(k) != marker["versions"][k])
        return f"packages changed since the install ({', '.join(changed)})"
    return None


VERSIONS_SCRIPT = """
import importlib.metadata as md, json, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in sys.argv[1:]}))
"""


def installed_versions(python: Path, names) -> dict | None:
    """Installed versions by distribution name; None when the interpreter cannot run."""
    try:
        result = subprocess.run([str(python), "-I", "-c", VERSIONS_SCRIPT, *names],
                                capture_output=True, text=True, timeout=60)
        return json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def clear_folder(target: Path) -> None:
    """Empty ``target`` but for the lock (held while we rebuild) and the stamp.

    The marker goes first and the stamp stays, so an interrupted clean-up leaves a folder
    that is still recognised as ours and repaired next time, never trusted.
    """
    children = sorted(target.iterdir(), key=lambda child: child.name != MARKER_NAME)
    for child in children:
        if child.name in (LOCK_NAME, STAMP_NAME):
            continue
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise InstallError(f"cannot remove the old environment in {target}: "
                               f"{exc.strerror or exc} (is the worker still running?)") from None


def create_venv(target: Path, report: Progress, base: BasePython) -> None:
    report.stage("venv", f"Creating a virtual environment with Python {base.version} ({base.path})")
    # -I: Blender (or a shell) may set PYTHONPATH/PYTHONHOME for its own interpreter.
    result = run_streaming([str(base.path), "-I", "-m", "venv", str(target)], report, "venv")
    if result.returncode != 0 or not env_python(target).is_file():
        raise InstallError(f"could not create a virtual environment with {base.path}: "
                           f"{last_meaningful_line(result.tail)}")


def with_torch_index(step: PipStep, override: str | None, report: Progress) -> PipStep:
    """Pick torch's index: the user's, else PyTorch's when reachable, else pip's own config.

    Probing first saves pip's slow retries when PyTorch's server cannot be reached (offline
    mirrors, firewalls); pip's configured indexes or find-links may still hold the wheel.
    """
    override = override or os.environ.get(TORCH_INDEX_ENV) or None
    if override:
        if not url_reachable(override):
            raise InstallError(f"the torch index {override} cannot be reached")
        return PipStep(step.stage, step.message, step.requirements, step.no_deps, override)
    if step.index_url and not url_reachable(step.index_url):
        host = urllib.parse.urlsplit(step.index_url).hostname
        report.stage("torch", f"note: {host} is unreachable; looking for torch in pip's configured indexes")
        return PipStep(step.stage, step.message, step.requirements, step.no_deps, None)
    return step


def url_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` (file URLs: exists).

    The connection runs in a thread because name resolution has no timeout of its own.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        from urllib.request import url2pathname  # only here: slow to import inside Blender

        return Path(url2pathname(parts.path)).exists()
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return True  # let pip judge what it understands
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome = []

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def run_pip(python: Path, step: PipStep, report: Progress) -> None:
    report.stage(step.stage, step.message)
    command = [str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", "--progress-bar", "off"]
    if step.no_deps:
        command.append("--no-deps")
    if step.index_url:
        command += ["--index-url", step.index_url]
    result = run_streaming(command + list(step.requirements), report, step.stage)
    if result.returncode != 0:
        raise InstallError(pip_failure_line(", ".join(step.requirements), result.tail))


PIP_DETAIL_PREFIXES = ("Collecting ", "Downloading ", "Installing collected packages")
NETWORK_HINTS = ("NewConnectionError", "Temporary failure in name resolution",
                 "Network is unreachable", "Max retries exceeded", "Name or service not known")


def pip_failure_line(what: str, tail) -> str:
    # Offline, pip's own last words ("no matching distribution") hide the real cause.
    if any(hint in line for line in tail for hint in NETWORK_HINTS):
        return f"pip could not reach the package index to install {what} (no network?)"
    errors = [line.strip()[len("ERROR:"):].strip() for line in tail if line.startswith("ERROR:")]
    detail = errors[0] if errors else last_meaningful_line(tail)
    return f"pip could not install {what}: {shorten(detail)}"


def last_meaningful_line(tail) -> str:
    lines = [line.strip() for line in tail if line.strip()]
    return shorten(lines[-1]) if lines else "no output"


def shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class StreamResult:
    returncode: int
    tail: list


def run_streaming(command: list, report: Progress, stage: str) -> StreamResult:
    """Run a command, copying its output to stderr line by line; keeps the last lines.

    Our stdout carries the events in ``--events`` mode, so child output goes to stderr. The
    child is killed if we are interrupted (the add-on cancels by terminating us).
    """
    tail = collections.deque(maxlen=60)
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                                 errors="replace")
    except OSError as exc:
        return StreamResult(1, [f"cannot run {command[0]}: {exc.strerror or exc}"])
    try:
        for line in child.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
            if line.startswith(PIP_DETAIL_PREFIXES):
                report.stage(stage, shorten(line.strip(), 120), detail=True)
        return StreamResult(child.wait(), list(tail))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


SELF_TEST_SCRIPT = r"""
import importlib.metadata as md, json, os, sys, time
started = time.perf_counter()
import cv2, numpy, PIL, psutil, safetensors, scipy, torch
import addict, einops, huggingface_hub, omegaconf
import evo.core.trajectory  # the giant and nested presets import it when built
from depth_anything_3 import cfg, registry
net = cfg.create_object(cfg.load_config(registry.MODEL_REGISTRY["da3-small"])).eval()
with torch.inference_mode():
    depth = net(torch.zeros(1, 1, 3, 28, 28), export_feat_layers=[])["depth"]
if tuple(depth.shape) != (1, 1, 28, 28) or not bool(torch.isfinite(depth).all()):
    raise SystemExit(f"da3-small gave a bad depth map: shape {tuple(depth.shape)}")
if torch.cuda.is_available():
    device, device_name = "cuda", torch.cuda.get_device_name(0)
elif torch.backends.mps.is_available():
    device, device_name = "mps", "Apple GPU"
else:
    device, device_name = "cpu", ""
modules = (cv2, numpy, PIL, safetensors, scipy, torch, torch._C, addict, einops,
           huggingface_hub, omegaconf, evo, cfg, registry)
files = sorted({os.path.relpath(m.__file__, sys.prefix) for m in modules if getattr(m, "__file__", None)})
result = {
    "versions": {name: md.version(name) for name in sys.argv[1:]},
    "torch_cuda": torch.version.cuda,
    "device": device,
    "device_name": device_name,
    "files": [f.replace(os.sep, "/") for f in files],
    "selftest_s": round(time.perf_counter() - started, 2),
}
print("DA3_SELFTEST " + json.dumps(result))
"""


def distribution_names() -> list[str]:
    names = ["torch"]
    for requirement in PACKAGES + NO_DEPS_PACKAGES:
        names.append(requirement.split("==")[0])
    return names


def run_self_test(python: Path) -> dict:
    """Import everything the worker uses and run da3-small once, in the new environment."""
    command = [str(python), "-I", "-W", "ignore", "-c", SELF_TEST_SCRIPT, *distribution_names()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                                errors="replace", timeout=600)
    except subprocess.TimeoutExpired:
        raise InstallError("the self-test in the new environment took over 10 minutes") from None
    sys.stderr.write(result.stderr)
    for line in result.stdout.splitlines():
        if line.startswith("DA3_SELFTEST "):
            return json.loads(line[len("DA3_SELFTEST "):])
    output = (result.stdout + result.stderr).splitlines()
    raise InstallError(f"the new environment failed its self-test: {last_meaningful_line(output)}")


def folder_size_mb(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return round(total / 2**20)


def write_marker(target: Path, marker: dict) -> None:
    """Atomically, so a crash never leaves a half-written marker that looks valid."""
    temporary = target / (MARKER_NAME + ".tmp")
    write_file(temporary, json.dumps(marker, indent=1))
    os.replace(temporary, target / MARKER_NAME)


def write_file(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:  # a full disk, most likely
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None


def summary_line(marker: dict, seconds: float, reused: bool) -> str:
    versions = marker["versions"]
    device = marker["device"]
    if marker.get("device_name"):
        device += f" ({marker['device_name']})"
    state = f"already installed, checked in {seconds:.1f} s" if reused else f"installed in {seconds:.0f} s"
    return (f"DA3 environment ready ({state}): torch {versions['torch']}, "
            f"depth-anything-3 {versions['depth-anything-3']}, numpy {versions['numpy']}, "
            f"opencv {versions['opencv-python-headless']}; device {device}; {marker['size_mb']} MB")


# --------------------------------------------------------------------------- script

def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Create the DA3 worker's Python environment.")
    parser.add_argument("--target", required=True, help="environment folder (created or repaired)")
    parser.add_argument("--torch", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch build; auto = CUDA when nvidia-smi sees a GPU (default)")
    parser.add_argument("--torch-index", default=None,
                        help=f"index URL for torch (default: ${TORCH_INDEX_ENV} or PyTorch's)")
    parser.add_argument("--python", default=None, metavar="PYTHON",
                        help="interpreter to make the environment from, 3.11+ (default: this one)")
    parser.add_argument("--force", action="store_true", help="recreate even if it is current")
    parser.add_argument("--events", action="store_true",
                        help="print JSON-lines events on stdout (pip's output goes to stderr)")
    return parser.parse_args(argv)


def print_event(event: dict) -> None:
    print(json.dumps(event), flush=True)


def print_human(event: dict) -> None:
    if event["event"] == "stage" and not event.get("detail"):
        print(f"- {event['message']}", flush=True)


def stop_on_sigterm(_signum, _frame):
    raise KeyboardInterrupt


def stop_on_cancel_line(stdin) -> None:
    """``--events``: the add-on asks a run to stop with a ``cancel`` line on its stdin (as it
    asks the worker) before it terminates it; stop at once instead of after its grace period."""
    for line in stdin:
        if line.strip() == "cancel":
            signal.raise_signal(signal.SIGTERM if hasattr(signal, "SIGTERM") else signal.SIGINT)
            return


def main(argv=None) -> int:
    args = parse_args(argv)
    emit = print_event if args.events else print_human
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    if args.events:
        threading.Thread(target=stop_on_cancel_line, args=(sys.stdin,), daemon=True).start()
    try:
        summary = install(args.target, args.torch, emit, force=args.force,
                          torch_index=args.torch_index, python=args.python)
    except InstallError as exc:
        return fail(args.events, "dependency", str(exc))
    except KeyboardInterrupt:
        return fail(args.events, "cancelled", "installation cancelled", code=130)
    except Exception as exc:  # a bug here must still reach the add-on as one error event
        import traceback

        traceback.print_exc()
        return fail(args.events, "internal", f"{type(exc).__name__}: {exc}")
    if args.events:
        print_event({"event": "done", "summary": summary})
    else:
        print(summary, flush=True)
    return 0


def fail(events: bool, kind: str, message: str, code: int = 1) -> int:
    if events:
        print_event({"event": "error", "kind": kind, "message": message})
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
