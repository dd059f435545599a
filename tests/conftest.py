"""Shared fixtures: real Blender (the bpy module) with the extension enabled, and the worker.

Blender's user files go to a temporary folder, set up before bpy is imported (importing bpy
writes to the user's home otherwise). The extension is loaded the way Blender loads any
extension: from a local extension repository, as ``bl_ext.<repo>.da3_reconstruct``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
TMP_ROOT = Path(tempfile.mkdtemp(prefix="da3-tests-"))

for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                 ("BLENDER_USER_RESOURCES", "blender-user")):
    os.environ[var] = str(TMP_ROOT / sub)
    (TMP_ROOT / sub).mkdir(parents=True, exist_ok=True)
# The model hub is never reachable from tests, whatever the machine.
os.environ["HF_HUB_OFFLINE"] = "1"

# ``engine`` is importable on its own, as the worker imports it.
sys.path.insert(0, str(REPO))

EXTENSION_ID = "da3_reconstruct"
TEST_REPO_DIR = TMP_ROOT / "da3tests"  # its name becomes the repository's module name


def worker_python_path() -> Path:
    return Path(os.environ.get("DA3_WORKER_PYTHON") or REPO / ".worker-env" / "bin" / "python")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TMP_ROOT, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """What the real-Blender tests measured (they report figures; they do not time-assert)."""
    figures = sys.modules.get("blender_app")
    if figures is not None and figures.FIGURES:
        terminalreporter.section("measured in real Blender")
        for line in figures.FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return TMP_ROOT


@pytest.fixture(scope="session")
def addon_module():
    """Enable the extension from a local repository; yields its module name."""
    import addon_utils
    import bpy

    TEST_REPO_DIR.mkdir(exist_ok=True)
    link = TEST_REPO_DIR / EXTENSION_ID
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    bpy.ops.preferences.extension_repo_add(
        name="da3tests", type="LOCAL", custom_directory=str(TEST_REPO_DIR),
        use_custom_directory=True)
    repo = next(r for r in bpy.context.preferences.extensions.repos
                if Path(r.directory) == TEST_REPO_DIR)
    name = f"bl_ext.{repo.module}.{EXTENSION_ID}"
    if addon_utils.enable(name, default_set=True, handle_error=_raise) is None:
        raise RuntimeError(f"could not enable {name}")
    yield name
    addon_utils.disable(name, default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


@pytest.fixture
def blender(addon_module):
    """bpy with the extension enabled and an empty scene, reset before each test."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    yield bpy
    bpy.ops.wm.read_homefile(use_empty=True)


@pytest.fixture
def addon(blender, addon_module):
    """The extension's package, imported as Blender imported it (for its Python API)."""
    return sys.modules[addon_module]


@pytest.fixture(scope="session")
def worker_python() -> Path:
    """The worker environment's interpreter, made by vendor_install (see the Makefile)."""
    python = worker_python_path()
    if not python.exists():
        pytest.fail(f"no worker environment at {python}: run 'make test' (it creates one with "
                    "vendor_install.py), or set DA3_WORKER_PYTHON")
    return python


@pytest.fixture(scope="session")
def da3_reference(worker_python) -> Path:
    """A folder with what DA3's own pipeline needs beyond the worker (torchvision, imageio):
    DA3_TORCHVISION_PATH, else .cache/da3-reference, installed there now if it is missing
    (the Makefile's `reference` target does the same)."""
    folder = Path(os.environ.get("DA3_TORCHVISION_PATH") or REPO / ".cache" / "da3-reference")
    if not (folder / ".installed").exists():
        done = subprocess.run([str(worker_python), "-m", "pip", "install", "-q", "--no-deps",
                               "--target", str(folder), "-r", str(REPO / "requirements-reference.txt")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"could not install DA3's reference packages into {folder}: "
                        f"{(done.stderr.strip().splitlines() or [''])[-1]}")
        (folder / ".installed").touch()
    return folder


@pytest.fixture(scope="session")
def small_weights(worker_python) -> Path:
    """Random-initialised da3-small weights saved in the model-hub layout by our own saver.

    The model hub is out of reach here; the real loader reads these exactly as it reads
    downloaded weights. Cached under .cache/ between local runs.
    """
    folder = CACHE / "test-weights" / "da3-small"
    if not (folder / "model.safetensors").exists():
        subprocess.run([str(worker_python), "-m", "engine.worker", "save-random",
                        "--model", "da3-small", "--out", str(folder)],
                       cwd=REPO, check=True)
    return folder
