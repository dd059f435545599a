"""The dependency levels of docs/architecture.md, kept true.

Each engine level is imported in a fresh interpreter in which the levels above it, Blender's
modules and (below the worker) torch and OpenCV cannot be imported at all: an arrow that runs
the wrong way fails here with the name of the module that drew it. The Blender side is read
with ``ast`` (it needs bpy to import): it never reaches into the worker, and the panels never
import the operators.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLENDER = ("bpy", "bmesh", "mathutils")
HEAVY = ("torch", "cv2", "depth_anything_3")

# level -> (its modules, what it must not import)
LEVELS = {
    "core": ("engine.core", ("engine.fusion", "engine.texture", "engine.host", "engine.worker",
                             *HEAVY, *BLENDER)),
    "fusion": ("engine.fusion", ("engine.texture", "engine.host", "engine.worker", *HEAVY, *BLENDER)),
    "texture": ("engine.texture", ("engine.fusion", "engine.host", "engine.worker", *HEAVY, *BLENDER)),
    "host": ("engine.host", ("engine.fusion", "engine.texture", "engine.worker", "numpy", *HEAVY,
                             *BLENDER)),
    # The worker imports torch, DA3 and OpenCV inside its functions, so that a bad install is
    # one error event, not an import failure before the protocol runs.
    "worker": ("engine.worker", ("engine.host", "torch", "depth_anything_3", *BLENDER)),
}


def engine_modules(package: str) -> list[str]:
    path = REPO / Path(*package.split("."))
    if path.with_suffix(".py").is_file():
        return [package]
    return sorted(f"{package}." + ".".join(p.relative_to(path).with_suffix("").parts)
                  for p in path.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


IMPORT_BLOCKED = textwrap.dedent("""
    import importlib, sys
    blocked = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ImportError(f"{{name}} imported at level {level!r}")
            return None

    sys.meta_path.insert(0, Blocker())
    for module in {modules!r}:
        importlib.import_module(module)
    print(len({modules!r}))
""")


@pytest.mark.parametrize("level", LEVELS)
def test_each_engine_level_imports_with_the_levels_above_it_blocked(level):
    package, blocked = LEVELS[level]
    modules = engine_modules(package)
    assert modules, f"no modules found for {package}"
    code = IMPORT_BLOCKED.format(blocked=blocked, modules=modules, level=level)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]
    assert proc.stdout.strip() == str(len(modules))


def imported_names(path: Path) -> set[str]:
    """Every module a Blender-side file imports, as dotted names from the repository root."""
    package = path.relative_to(REPO).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


BLENDER_SIDE = [p for p in REPO.glob("*.py") if p.name != "vendor_install.py"] + \
    [p for folder in ("builder", "operators", "panels") for p in (REPO / folder).glob("*.py")]


@pytest.mark.parametrize("path", BLENDER_SIDE, ids=lambda p: str(p.relative_to(REPO)))
def test_blender_side_never_imports_the_worker(path):
    reached = {n for n in imported_names(path)
               if n.startswith(("engine.worker", "engine.fusion.tsdf_torch")) or n in HEAVY}
    assert not reached, f"{path.relative_to(REPO)} imports worker-only code: {sorted(reached)}"


# engine/fusion's modules in the order of docs/architecture.md: each imports only those before it
FUSION_ORDER = ("mesh_cleanup", "consistency", "outlines", "base", "views", "floor", "grid", "pockets",
                "integrate", "tets", "pieces", "tsdf", "tsdf_torch")


def test_fusion_stages_import_one_way():
    folder = REPO / "engine" / "fusion"
    assert sorted(FUSION_ORDER) == sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    for rank, name in enumerate(FUSION_ORDER):
        reached = {n.split(".")[2] for n in imported_names(folder / f"{name}.py")
                   if n.startswith("engine.fusion.")}
        later = reached & set(FUSION_ORDER[rank:])
        assert not later, f"engine/fusion/{name}.py imports {sorted(later)}, at or after it in the order"


def test_panels_never_import_operators():
    for path in (REPO / "panels").glob("*.py"):
        reached = {n for n in imported_names(path) if n.startswith("operators")}
        assert not reached, f"{path.relative_to(REPO)} imports {sorted(reached)}"


def test_the_check_sees_a_wrong_arrow(tmp_path):
    """The blocker itself works: core importing the worker fails (so a pass above means something)."""
    code = IMPORT_BLOCKED.format(blocked=("engine.worker",), modules=["engine.worker.process"],
                                 level="core")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "imported at level 'core'" in proc.stderr
