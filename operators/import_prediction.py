"""``da3.import_prediction``: File > Import > DA3 Prediction (.npz); a thin wrapper over ``api``.

From the file browser it imports in steps (``api.start_import``) from a modal timer, so Blender
stays responsive while the file is read and the views are fused; Esc cancels. Called from a
script or in background mode it imports at once, like ``api.import_prediction``.
"""

import time

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from .. import api
from ..engine.core.prediction import PredictionError
from ..properties import BuildOptionProps, build_options

STEP_INTERVAL_S = 0.02  # one piece of Blender work per tick; the numpy work runs on threads
STATUS_INTERVAL_S = 0.5


class DA3_OT_import_prediction(BuildOptionProps, bpy.types.Operator, ImportHelper):
    """Build a DA3 prediction (.npz, DA3's npz or mini_npz export) into a new collection"""

    bl_idname = "da3.import_prediction"
    bl_label = "Import DA3 Prediction"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    stepwise: BoolProperty(options={"HIDDEN", "SKIP_SAVE"})  # set when a user opened the browser

    def invoke(self, context, event):
        self.stepwise = True
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        try:
            options = build_options(self)
            if not self.stepwise or bpy.app.background:
                return self.finished(api.import_prediction(self.filepath, options, context=context))
            self._staged = api.start_import(self.filepath, options, context=context)
        except (PredictionError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(STEP_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        self._shown, self._shown_at = "", 0.0
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            self._staged.cancel()
            self.stop(context)
            self.report({"INFO"}, "Import cancelled")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            done = self._staged.step()
        except (PredictionError, ValueError) as exc:
            self.stop(context)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if done:
            self.stop(context)
            return self.finished(self._staged.collection)
        self.show_status(context)
        return {"RUNNING_MODAL"}

    def show_status(self, context) -> None:
        """The step in the status bar: each change redraws the window (slow in software
        OpenGL), so only when the step changes or, for the fusion's percentage, twice a second."""
        text = f"DA3 import: {self._staged.label} - Esc to cancel"
        if self._staged.fraction:
            text += f" ({round(100 * self._staged.fraction)}%)"
        now = time.monotonic()
        if text.split(" (")[0] != self._shown.split(" (")[0] or now - self._shown_at > STATUS_INTERVAL_S:
            if text != self._shown:
                context.workspace.status_text_set(text)
            self._shown, self._shown_at = text, now

    def stop(self, context) -> None:
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)

    def finished(self, collection):
        self.report({"INFO"}, f"Imported '{collection.name}' ({len(collection.all_objects)} objects)")
        if api.result_warning(collection):
            self.report({"WARNING"}, api.result_warning(collection))
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(DA3_OT_import_prediction.bl_idname, text="DA3 Prediction (.npz)")


CLASSES = (DA3_OT_import_prediction,)


register_classes, unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    register_classes()
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    unregister_classes()
