"""Most Blender users run Windows or macOS: no Linux-only module, call or path in what ships,
except inside the few helpers that branch on the platform themselves."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

POSIX_ONLY_MODULES = {"resource", "fcntl", "termios", "pwd", "grp"}
POSIX_ONLY_CALLS = {"sysconf", "setpriority", "getpriority", "nice", "fork", "killpg", "getpgid", "setsid"}
LINUX_PATHS = ("/proc", "/sys/", "/dev/shm")
# (file, function) pairs that choose a portable branch before touching anything above.
GUARDED_HELPERS = {
    ("vendor_install.py", "try_lock"),  # msvcrt on Windows, fcntl elsewhere
    ("engine/host/monitor.py", "_lower_priority"),  # Windows lowers it through the creation flags
    ("engine/host/monitor.py", "_signal"),  # process groups on POSIX; Windows terminates the process
    ("engine/core/threads.py", "lower_thread_priority"),  # one thread's nice on Linux only
}
NOT_SHIPPED = ("tests/", "benchmarks/", "scripts/", ".venv", ".worker-env", ".cache", "out/", "dist/")


def shipped_sources() -> list[Path]:
    return [p for p in REPO.rglob("*.py")
            if not p.relative_to(REPO).as_posix().startswith(NOT_SHIPPED)]


def linux_only_uses(path: Path, relative: str = "") -> list[str]:
    """'file:line what' for every Linux-only use outside a guarded helper."""
    relative = relative or path.relative_to(REPO).as_posix()
    found = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        what = None
        if isinstance(node, ast.Import):
            what = next((a.name for a in node.names if a.name.split(".")[0] in POSIX_ONLY_MODULES), None)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_ONLY_MODULES:
            what = node.module
        elif isinstance(node, ast.Attribute) and node.attr in POSIX_ONLY_CALLS and \
                isinstance(node.value, ast.Name) and node.value.id == "os":
            what = f"os.{node.attr}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith(LINUX_PATHS):
            what = repr(node.value)
        if what and (relative, function) not in GUARDED_HELPERS:
            found.append(f"{relative}:{node.lineno} {what} (in {function or 'module level'})")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return found


def test_nothing_linux_only_ships_outside_a_guarded_helper():
    sources = shipped_sources()
    assert len(sources) > 30 and any(p.name == "chunking.py" for p in sources)
    uses = [use for path in sources for use in linux_only_uses(path)]
    assert uses == []


def test_the_check_finds_what_it_looks_for(tmp_path):
    """The checker itself: each kind of use is caught, at module level and in a plain function."""
    sample = tmp_path / "sample.py"
    sample.write_text("import resource\nimport os\n\ndef f():\n    with open('/proc/meminfo') as h:\n"
                      "        return os.sysconf('SC_PAGE_SIZE'), h\n", encoding="utf-8")
    uses = linux_only_uses(sample, "engine/sample.py")
    assert [u.split(" ")[1] for u in uses] == ["resource", "'/proc/meminfo'", "os.sysconf"]
    guarded = tmp_path / "guarded.py"
    guarded.write_text("def try_lock(handle):\n    import fcntl\n    return fcntl\n", encoding="utf-8")
    assert linux_only_uses(guarded, "vendor_install.py") == []
    assert len(linux_only_uses(guarded, "engine/sample.py")) == 1
