"""Where the worker's Python, the models and the temporary job files live.

Environment variables win (render farms and scripts set them), then the add-on preferences,
then the defaults under the extension's per-user directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy

from . import vendor_install

ENV_WORKER_PYTHON = "DA3_WORKER_PYTHON"
ENV_BASE_PYTHON = "DA3_BASE_PYTHON"
ENV_MODELS_DIR = "DA3_MODELS_DIR"
# This extension's folder: the worker environment runs ``python -m engine.worker`` from here.
EXTENSION_DIR = Path(__file__).resolve().parent


def user_dir(*parts: str) -> Path:
    """A folder under this extension's per-user directory, created on demand."""
    root = Path(bpy.utils.extension_path_user(__package__, path="", create=True))
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def preferences():
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def worker_env_dir() -> Path:
    """The worker environment that ``vendor_install`` creates by default."""
    return user_dir() / "worker-env"


def worker_python() -> Path:
    """The interpreter that runs the worker."""
    if os.environ.get(ENV_WORKER_PYTHON):
        return Path(os.environ[ENV_WORKER_PYTHON])
    prefs = preferences()
    if prefs and prefs.worker_python:
        return Path(bpy.path.abspath(prefs.worker_python))
    return vendor_install.env_python(worker_env_dir())


def base_python() -> Path:
    """The interpreter 'Install dependencies' makes the worker environment from: Blender's own
    unless the preferences or DA3_BASE_PYTHON name another (Blender 5.1+ runs Python 3.13+,
    for which PyTorch's CPU builds may be missing from the package index)."""
    if os.environ.get(ENV_BASE_PYTHON):
        return Path(os.environ[ENV_BASE_PYTHON])
    prefs = preferences()
    if prefs and prefs.base_python:
        return Path(bpy.path.abspath(prefs.base_python))
    return Path(sys.executable)


def models_dir() -> Path:
    """Where weights are looked for and downloaded to (one sub-folder per preset)."""
    if os.environ.get(ENV_MODELS_DIR):
        return Path(os.environ[ENV_MODELS_DIR])
    prefs = preferences()
    if prefs and prefs.models_dir:
        return Path(bpy.path.abspath(prefs.models_dir))
    return user_dir("models")


def keyframes_dir() -> Path:
    """Keyframe selections of videos, shared by the panel's count and the worker's run."""
    return user_dir("keyframes")


def jobs_dir() -> Path:
    """Scratch space for job files and predictions; each job removes its own folder."""
    return user_dir("jobs")


def device() -> str:
    prefs = preferences()
    return prefs.device.lower() if prefs else "auto"


def default_model() -> str:
    prefs = preferences()
    return prefs.default_model if prefs else "da3-small"
