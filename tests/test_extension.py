"""The extension as Blender sees it: manifest, built zip, install, register/unregister."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

# isort: off
import bpy  # addon_utils needs bpy imported first
import addon_utils
# isort: on

BLENDER_EXT = Path(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli",
                   "blender_ext.py")
OUR_OPERATORS = ("import_prediction", "reconstruct", "set_scale", "install_dependencies")


def blender_ext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BLENDER_EXT), *args], cwd=REPO,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "da3_reconstruct.zip"
    result = blender_ext("build", "--source-dir", str(REPO), "--output-filepath", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def test_addon_disabled(addon_module):
    """The zip installs the same classes as the test copy: only one may be enabled at a time."""
    addon_utils.disable(addon_module, default_set=True)
    yield
    assert addon_utils.enable(addon_module, default_set=True) is not None


def our_leftovers() -> list[str]:
    """Anything of ours still registered in Blender: classes, properties, handlers, timers."""
    left = [name for name in dir(bpy.types) if "DA3" in name.upper()]
    left += [f"Scene.{p}" for p in ("da3",) if hasattr(bpy.types.Scene, p)]
    left += [f"WindowManager.{p}" for p in ("da3_job",) if hasattr(bpy.types.WindowManager, p)]
    for handler_list in (getattr(bpy.app.handlers, n) for n in dir(bpy.app.handlers)):
        if isinstance(handler_list, list):
            left += [h.__module__ for h in handler_list if "da3_reconstruct" in h.__module__]
    left += [op for op in OUR_OPERATORS if hasattr(bpy.ops.da3, op) and _op_registered(op)]
    return left


def _op_registered(op: str) -> bool:
    try:
        getattr(bpy.ops.da3, op).get_rna_type()
        return True
    except KeyError:
        return False


def test_manifest_passes_blenders_validator():
    result = blender_ext("validate", str(REPO))
    assert result.returncode == 0, result.stdout + result.stderr


def test_built_zip_holds_the_extension_and_nothing_of_development(built_zip):
    names = set(zipfile.ZipFile(built_zip).namelist())
    for needed in ("blender_manifest.toml", "__init__.py", "vendor_install.py",
                   "engine/core/prediction.py", "engine/worker/__main__.py", "operators/__init__.py",
                   "panels/__init__.py"):
        assert needed in names
    for dev_only in ("tests/", ".venv/", ".worker-env/", ".cache/", "benchmarks/", ".git/", ".whl/"):
        assert not any(n.startswith(dev_only) for n in names), dev_only
    assert not any(n.endswith(".pyc") for n in names)


def test_zip_installs_enables_and_uninstalls_cleanly(built_zip, test_addon_disabled):
    assert our_leftovers() == []
    user_default = next(r for r in bpy.context.preferences.extensions.repos
                        if r.module == "user_default")
    installed = Path(user_default.directory) / "da3_reconstruct"
    module = "bl_ext.user_default.da3_reconstruct"
    result = bpy.ops.extensions.package_install_files(
        filepath=str(built_zip), repo="user_default", enable_on_install=True)
    try:
        assert result == {"FINISHED"}
        assert addon_utils.check(module) == (True, True)
        assert (installed / "blender_manifest.toml").is_file()
        assert all(_op_registered(op) for op in OUR_OPERATORS)
        assert hasattr(bpy.types.Scene, "da3")
    finally:
        addon_utils.disable(module, default_set=True)
        assert our_leftovers() == []
        repo_index = list(bpy.context.preferences.extensions.repos).index(user_default)
        bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="da3_reconstruct")
    assert not installed.exists()
    assert our_leftovers() == []


def test_register_unregister_register_again(addon_module):
    addon_utils.disable(addon_module, default_set=True)
    try:
        assert our_leftovers() == []
    finally:
        assert addon_utils.enable(addon_module, default_set=True) is not None
    assert all(_op_registered(op) for op in OUR_OPERATORS)
    assert bpy.context.scene.da3.model == "da3-small"


def test_engine_imports_where_bpy_and_torch_are_absent():
    # A plain interpreter with bpy blocked: every engine module must import, and none may
    # pull in torch (that would put torch into Blender's process through the importer).
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('bpy', 'bmesh', 'mathutils'): sys.modules[name] = None\n"
        "import engine\n"
        "mods = [m.name for m in pkgutil.iter_modules(engine.__path__)]\n"
        "for m in mods: importlib.import_module('engine.' + m)\n"
        "assert 'torch' not in sys.modules, 'an engine module imported torch at import time'\n"
        "print(len(mods))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 4


def test_extension_runs_without_the_worker_only_packages(tmp_path):
    # Blender's own Python has numpy but no OpenCV, torch or safetensors: enabling the extension
    # and importing a prediction must not need them (they belong to the worker environment).
    code = f"""
import os, sys
for name in ('cv2', 'torch', 'safetensors', 'PIL', 'depth_anything_3'):
    sys.modules[name] = None
os.environ['BLENDER_USER_RESOURCES'] = {str(tmp_path / 'user')!r}
import bpy, addon_utils
repo = {str(tmp_path / 'repo')!r}
os.makedirs(repo)
os.symlink({str(REPO)!r}, os.path.join(repo, 'da3_reconstruct'))
bpy.ops.preferences.extension_repo_add(name='plain', type='LOCAL', custom_directory=repo,
                                       use_custom_directory=True)
module = next(r.module for r in bpy.context.preferences.extensions.repos if r.directory == repo)
def fail(exc): raise exc
assert addon_utils.enable(f'bl_ext.{{module}}.da3_reconstruct', handle_error=fail)
ext = sys.modules[f'bl_ext.{{module}}.da3_reconstruct']
import numpy as np
P = sys.modules[ext.__name__ + '.engine.core.prediction'].Prediction
depth = np.full((1, 6, 8), 2.0, np.float32)
K = np.array([[[8.0, 0, 4], [0, 8.0, 3], [0, 0, 1]]])
ext.api.import_prediction(P(depth=depth, intrinsics=K), name='plain')
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
