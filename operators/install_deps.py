"""``da3.install_dependencies``: create the worker's environment from inside Blender.

Runs ``vendor_install.py --events --target <worker env> --torch auto --python <base>`` with
Blender's own interpreter as a child process (Blender's Python itself is never modified; the
environment is made from ``paths.base_python()``) and reads its
JSON-lines events with the same monitor as the worker. Asks first (with the download size),
refuses while Blender's online access is off.
"""

import sys
from pathlib import Path

import bpy

from .. import paths, vendor_install
from ..engine.monitor import MonitorState, ProcessMonitor
from .reconstruct import redraw_sidebars

EXTENSION_DIR = Path(__file__).resolve().parents[1]
TICK_S = 0.2
OFFLINE_MESSAGE = ("Online access is off: allow it in Preferences > System > Network to install "
                   "the dependencies, or run vendor_install.py yourself (see the README)")

_install: ProcessMonitor | None = None
_generation = 0  # bumped after every install, so cached environment checks are redone


def running() -> bool:
    return _install is not None


def current_state() -> MonitorState:
    return _install.state if _install is not None else MonitorState()


def generation() -> int:
    return _generation


def install_command(target: Path, torch: str = "auto") -> list[str]:
    """vendor_install.py, run by Blender's Python, making the environment from the base Python."""
    return [sys.executable, str(EXTENSION_DIR / "vendor_install.py"), "--events",
            "--target", str(target), "--torch", torch, "--python", str(paths.base_python())]


def start_install() -> ProcessMonitor:
    global _install
    monitor = ProcessMonitor()
    monitor.start_process(install_command(paths.worker_env_dir()), EXTENSION_DIR)
    _install = monitor
    return monitor


def finish_install() -> str:
    """Close the installer; returns the one-line failure, or "" on success."""
    global _install, _generation
    monitor, _install = _install, None
    _generation += 1
    if monitor is None:
        return "the installation was stopped"
    monitor.close()
    if monitor.state.succeeded:
        return ""
    return monitor.state.error or "the installation failed"


class DA3_OT_install_dependencies(bpy.types.Operator):
    """Download and install PyTorch, DA3 and OpenCV into the worker's own environment"""

    bl_idname = "da3.install_dependencies"
    bl_label = "Install dependencies"

    @classmethod
    def poll(cls, _context):
        if running():
            cls.poll_message_set("The installation is already running")
            return False
        return True

    def invoke(self, context, event):
        if not bpy.app.online_access:
            self.report({"ERROR"}, OFFLINE_MESSAGE)
            return {"CANCELLED"}
        size = vendor_install.download_size_mb("auto")
        return context.window_manager.invoke_confirm(
            self, event, title="Install DA3 dependencies", confirm_text="Install",
            message=f"Download about {size:.0f} MB (PyTorch, DA3, OpenCV) into "
                    f"{paths.worker_env_dir()}?")

    def execute(self, context):
        if not bpy.app.online_access:
            self.report({"ERROR"}, OFFLINE_MESSAGE)
            return {"CANCELLED"}
        try:
            start_install()
        except OSError as exc:
            self.report({"ERROR"}, f"could not start the installer: {exc}")
            return {"CANCELLED"}
        if bpy.app.background or context.window is None:
            return self.wait_blocking()
        self._timer = context.window_manager.event_timer_add(TICK_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def wait_blocking(self):
        last = ""
        while _install is not None and not _install.finished:
            _install.poll(timeout=0.2)
            line = _install.state.message or _install.state.stage
            if line and line != last:
                print(f"DA3 install: {line}")
                last = line
        return self.report_result(finish_install())

    def modal(self, context, event):
        if event.type != "TIMER":  # an Event does not say which timer fired: any tick will do
            return {"PASS_THROUGH"}
        if _install is not None and _install.poll(budget_s=0.004):
            redraw_sidebars(context)
        if _install is not None and not _install.finished:
            return {"PASS_THROUGH"}
        redraw_sidebars(context)
        context.window_manager.event_timer_remove(self._timer)
        return self.report_result(finish_install())

    def cancel(self, context):
        context.window_manager.event_timer_remove(self._timer)
        stop()

    def report_result(self, error: str):
        if error:
            self.report({"ERROR"}, f"Installing the dependencies failed: {error}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Dependencies installed in {paths.worker_env_dir()}")
        return {"FINISHED"}


def stop() -> None:
    """Stop a running installation (unregister, modal cancel)."""
    global _install
    if _install is not None:
        _install.close()
        _install = None


CLASSES = (DA3_OT_install_dependencies,)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    stop()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
