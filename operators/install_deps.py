"""``da3.install_dependencies``: create the worker's environment from inside Blender.

A thin operator over ``reconstruct.start_install`` (``vendor_install.py --events``, run by
Blender's own interpreter as a child process; Blender's Python itself is never modified). It
asks first (with the download size) and refuses while Blender's online access is off; the
installation is then a run like any other, followed by ``da3.watch_job`` in the UI (progress
in the panel, Esc or Cancel stops it) and to its end in background mode.
"""

import bpy

from .. import paths, reconstruct, vendor_install
from .watch import finished_message, follow_in_ui, nothing_running


class DA3_OT_install_dependencies(bpy.types.Operator):
    """Download and install PyTorch, DA3 and OpenCV into the worker's own environment"""

    bl_idname = "da3.install_dependencies"
    bl_label = "Install dependencies"

    @classmethod
    def poll(cls, _context):
        return nothing_running(cls, "Wait for the running job, or cancel it")

    def invoke(self, context, event):
        if not bpy.app.online_access:
            self.report({"ERROR"}, reconstruct.OFFLINE_INSTALL_MESSAGE)
            return {"CANCELLED"}
        size = vendor_install.download_size_mb("auto")
        return context.window_manager.invoke_confirm(
            self, event, title="Install DA3 dependencies", confirm_text="Install",
            message=f"Download about {size:.0f} MB (PyTorch, DA3, OpenCV) into "
                    f"{paths.worker_env_dir()}?")

    def execute(self, context):
        try:
            run = reconstruct.start_install()
            if not bpy.app.background and context.window is not None:
                follow_in_ui(run)
                return {"FINISHED"}
            reconstruct.follow(run, report=print)
        except reconstruct.ReconstructError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, finished_message(run, None))
        return {"FINISHED"}


CLASSES = (DA3_OT_install_dependencies,)


# Blender's own pair: registered in order, unregistered in reverse
register, unregister = bpy.utils.register_classes_factory(CLASSES)
