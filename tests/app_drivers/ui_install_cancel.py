"""Cancel the dependency installer from the panel, then install again to the end.

Args: RESULT.json. Blender runs with --online-mode (the installer asks for online access); the
environment is made from DA3_BASE_PYTHON into the extension's own folder, as in ui_install.py.

Three installs, each started as a user does (the panel's button, Return in its confirmation):
the first is stopped with Esc, a real key press over the 3D viewport; the second, which starts
from what the first left, with the panel's Cancel button; the third runs to its end. A cancel
comes once the installer is really at work: it has reported progress and pip runs under it.
For each cancel the driver keeps every process it saw under the installer (from /proc, with
its start time, so a reused PID is not taken for it), which of them still run after the panel
went idle, what the panel drew then, what Blender reported and the environment's status.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

PIP_STAGES = ("torch", "packages", "da3")  # the installer's stages in which pip runs


# -- processes, from /proc ---------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state, start time in clock ticks) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def process_tree(root: int) -> list[dict]:
    """``root`` and every process below it, as they are now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        stat = proc_stat(pid)
        if stat is not None:
            found.append({"pid": pid, "start": stat[2], "cmd": command_line(pid)})
            todo.extend(children.get(pid, ()))
    return found


def still_there(seen: dict) -> str:
    """'' when a process seen earlier has ended; else its state ('Z' for an unreaped zombie)."""
    stat = proc_stat(seen["pid"])
    return stat[1] if stat is not None and stat[2] == seen["start"] else ""


class Installer:
    """The running installer as the panel's run holds it, and every process seen under it."""

    def __init__(self, runs):
        self.runs, self.seen = runs, {}

    def current(self):
        run = self.runs.current()
        return run if run is not None and run.kind == "install" else None

    def look(self) -> list[dict]:
        """The processes under the installer now (all of them are kept in ``seen``)."""
        run = self.current()
        if run is None or run.monitor.process is None:
            return []
        now = process_tree(run.monitor.process.pid)
        for proc in now:
            self.seen.setdefault((proc["pid"], proc["start"]), proc)
        return now

    def at_work(self) -> bool:
        """Alive and in a pip stage (announced after its first progress events), with pip
        running under it."""
        now = self.look()
        run = self.current()
        if run is None or run.monitor.process.poll() is not None:
            return False
        return run.state.stage in PIP_STAGES and any(" -m pip " in proc["cmd"] for proc in now)

    def left(self) -> list[dict]:
        """The processes seen that have not ended, with their state."""
        return [{**proc, "state": state} for proc in self.seen.values() if (state := still_there(proc))]


# -- what the user sees ---------------------------------------------------------------------------

class RecordingLayout:
    """A real UILayout that also keeps what is drawn through it: labels, progress texts and
    operator buttons, in every box, row and column below it."""

    def __init__(self, layout, drawn: list):
        self._layout, self._drawn = layout, drawn

    def _nested(self, name):
        def make(*args, **kwargs):
            return RecordingLayout(getattr(self._layout, name)(*args, **kwargs), self._drawn)
        return make

    def __getattr__(self, name):
        if name in ("box", "row", "column", "split"):
            return self._nested(name)
        return getattr(self._layout, name)

    def __setattr__(self, name, value):  # enabled, alert, scale_y...: the real layout's
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._layout, name, value)

    def label(self, **kwargs):
        self._drawn.append(("label", kwargs.get("text", "")))
        return self._layout.label(**kwargs)

    def progress(self, **kwargs):
        self._drawn.append(("progress", kwargs.get("text", "")))
        return self._layout.progress(**kwargs)

    def operator(self, idname, **kwargs):
        self._drawn.append(("operator", idname))
        return self._layout.operator(idname, **kwargs)


def panel_drawn():
    """Let Blender draw the DA3 panel once more; yields, then returns what it drew."""
    panels = steps.extension_module("panels.main")
    draws: list = []
    original = panels.draw_main

    def recorded(layout, context):
        draws.append([])
        original(RecordingLayout(layout, draws[-1]), context)

    panels.draw_main = recorded
    try:
        steps.sidebar().tag_redraw()
        yield from until(lambda: draws, 20, "the sidebar to draw the DA3 panel")
    finally:
        panels.draw_main = original
    steps.sidebar().tag_redraw()  # what stays on screen: drawn by the panel's own function
    return draws[0]


def reports() -> list[str]:
    """The reports Blender showed (in its status bar) since the last call: the Info editor's
    lines, copied and then deleted as its Copy and Delete commands do. The timeline shows the
    Info editor meanwhile."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "DOPESHEET_EDITOR")
    before = area.ui_type
    area.ui_type = "INFO"
    try:
        region = next(r for r in area.regions if r.type == "WINDOW")
        with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=region):
            bpy.ops.info.select_all(action="SELECT")
            bpy.ops.info.report_copy()
            bpy.ops.info.report_delete()
        return [line for line in bpy.context.window_manager.clipboard.splitlines() if line.strip()]
    finally:
        area.ui_type = before


# -- the steps ----------------------------------------------------------------------------------

def start_install(installer: Installer, name: str):
    """The panel's Install dependencies button, then Return on the confirmation's Install."""
    panels = steps.extension_module("panels.main")
    drawn = yield from panel_drawn()
    result[name] = {"status_before": panels.worker_status().summary,
                    "install_offered": ("operator", "da3.install_dependencies") in drawn}
    with steps.override("UI"):
        result[name]["click"] = sorted(bpy.ops.da3.install_dependencies("INVOKE_DEFAULT"))
    yield 1.0
    steps.xdotool("key", "Return")
    yield from until(lambda: installer.current() is not None, 20, "the installer to start")
    result[name]["installer_pid"] = installer.current().monitor.process.pid


def cancel_install(name: str, cancel):
    """Install until pip runs under the installer, ``cancel`` it, and keep what was left."""
    runs = steps.extension_module("reconstruct")
    panels = steps.extension_module("panels.main")
    installer = Installer(runs)
    yield from start_install(installer, name)
    yield from until(installer.at_work, 300, "the installer to run pip", interval=0.2)
    entry = result[name]
    state = installer.current().state
    entry.update(stage=state.stage, message=state.message, progress=[state.done, state.total])
    entry["while_running"] = yield from panel_drawn()
    entry["running_screenshot"] = steps.screenshot(f"install-cancel-{name}-running")
    installer.look()
    run = installer.current()
    started = time.perf_counter()
    cancel()
    while installer.current() is not None:  # hang guard: the monitor escalates to SIGKILL at 6 s
        installer.look()  # a process started in the meantime is one to check too
        if time.perf_counter() - started > 60:
            raise TimeoutError("the installer was still running 60 s after the cancel")
        yield 0.1
    entry["stopped_s"] = time.perf_counter() - started
    entry["final_event"] = run.state.final
    entry["installer_exit_code"] = run.monitor.process.returncode
    entry["installer_stderr_tail"] = run.monitor.stderr_text()
    # What ended should be gone by now; a hang guard for the kernel's bookkeeping only.
    yield from until_or_timeout(lambda: not installer.left(), 10)
    entry["seen"] = list(installer.seen.values())
    entry["left"] = installer.left()
    entry["status_after"] = panels.worker_status().summary
    entry["status_after_ok"] = panels.worker_status().ok
    entry["job_error"] = steps.last_error()
    yield 1.0
    entry["after"] = yield from panel_drawn()
    entry["reports"] = reports()
    entry["after_screenshot"] = steps.screenshot(f"install-cancel-{name}-after")
    target = steps.extension_module("paths").worker_env_dir()
    entry["target_left"] = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    log(f"{name}: stopped in {entry['stopped_s']:.1f} s at {entry['stage']} "
        f"({len(entry['seen'])} processes seen, {len(entry['left'])} left); "
        f"status '{entry['status_after']}'; reports {entry['reports']}")


def until_or_timeout(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        yield 0.1


def cancel_with_esc():
    steps.mouse_over_viewport()
    steps.xdotool("key", "Escape")


def cancel_with_button():
    with steps.override("UI"):
        bpy.ops.da3.cancel_reconstruct("INVOKE_DEFAULT")


def install_to_the_end():
    runs = steps.extension_module("reconstruct")
    panels = steps.extension_module("panels.main")
    installer = Installer(runs)
    yield from start_install(installer, "again")
    started = time.perf_counter()
    while installer.current() is not None:
        if time.perf_counter() - started > 900:
            raise TimeoutError("the installation took over 15 minutes")
        yield 0.5
    entry = result["again"]
    entry["install_s"] = time.perf_counter() - started
    entry["status_after"] = panels.worker_status().summary
    entry["status_after_ok"] = panels.worker_status().ok
    entry["job_error"] = steps.last_error()
    yield 1.0
    entry["reports"] = reports()
    log(f"installed again in {entry['install_s']:.0f} s: {entry['status_after']}")


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from steps.open_da3_sidebar()
    result["reports_at_start"] = reports()
    yield from cancel_install("esc", cancel_with_esc)
    yield from cancel_install("button", cancel_with_button)
    yield from install_to_the_end()


steps.run(script)
