"""Run ``da3_reconstruct`` where Blender is only a Python module (``pip install bpy``).

A Blender executable runs the command itself once the extension is installed::

    blender -c da3_reconstruct INPUT -o OUT.blend [options]

Blender as a module has no ``blender`` program, so this script does what Blender does at start-up:
it enables the extension (this source tree, or a built zip given with ``--extension``) from a
temporary local extension repository, then calls the same registered command function with the
remaining arguments and exits with its code::

    python scripts/da3_cli.py [--extension PATH] [--online-mode] INPUT -o OUT.blend [options]

``--online-mode`` allows downloading weights (Blender's own flag; the module starts offline).
The user's Blender preferences are not saved. Set ``DA3_WORKER_PYTHON`` and ``DA3_MODELS_DIR``
to share the worker environment and weights with an installed Blender.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import bpy  # first: it puts Blender's own modules (addon_utils) on the path

EXTENSION_ID = "da3_reconstruct"
REPO_NAME = "da3cli"
SOURCE_TREE = Path(__file__).resolve().parents[1]


def split_runner_arguments(argv: list[str]) -> tuple[Path, bool, list[str]]:
    """Take this runner's own options off the front; the rest belongs to the command."""
    extension, online, rest = SOURCE_TREE, False, list(argv)
    while rest and rest[0] in ("--extension", "--online-mode"):
        option = rest.pop(0)
        if option == "--online-mode":
            online = True
        elif rest:
            extension = Path(rest.pop(0)).resolve()
    return extension, online, rest


def stage_extension(extension: Path, repo_dir: Path) -> None:
    """Put the extension in ``repo_dir/<id>``: a link to a source tree, or an unpacked zip."""
    target = repo_dir / EXTENSION_ID
    if extension.is_file():
        with zipfile.ZipFile(extension) as archive:
            archive.extractall(target)
        return
    try:
        target.symlink_to(extension, target_is_directory=True)
    except OSError:  # no symlinks (Windows without developer mode): copy instead
        shutil.copytree(extension, target, ignore=shutil.ignore_patterns(".git", ".venv", ".worker-env"))


def enable_extension(repo_dir: Path):
    """Enable the extension from a local repository; returns its ``cli`` module."""
    import importlib

    import addon_utils

    bpy.context.preferences.use_preferences_save = False
    bpy.ops.preferences.extension_repo_add(name=REPO_NAME, type="LOCAL", custom_directory=str(repo_dir),
                                           use_custom_directory=True)
    repo = next(r for r in bpy.context.preferences.extensions.repos if Path(r.directory) == repo_dir)
    module = f"bl_ext.{repo.module}.{EXTENSION_ID}"
    if addon_utils.enable(module, default_set=True, handle_error=_raise) is None:
        raise RuntimeError(f"could not enable the extension {module}")
    return importlib.import_module(f"{module}.cli")


def _raise(exc):
    raise exc


def main(argv: list[str]) -> int:
    extension, online, command_argv = split_runner_arguments(argv)
    if not extension.exists():
        print(f"da3_cli: no extension at {extension}", file=sys.stderr)
        return 2
    if online:
        bpy.context.preferences.system.use_online_access = True
    repo_dir = Path(tempfile.mkdtemp(prefix="da3-cli-repo-"))
    try:
        stage_extension(extension, repo_dir)
        cli = enable_extension(repo_dir)
        return cli.main(command_argv)
    finally:
        shutil.rmtree(repo_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
