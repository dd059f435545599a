"""``da3.import_prediction``: File > Import > DA3 Prediction (.npz); a thin wrapper over ``api``."""

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from .. import api
from ..engine.prediction import PredictionError
from ..properties import BuildOptionProps, build_options


class DA3_OT_import_prediction(BuildOptionProps, bpy.types.Operator, ImportHelper):
    """Build a DA3 prediction (.npz, DA3's npz or mini_npz export) into a new collection"""

    bl_idname = "da3.import_prediction"
    bl_label = "Import DA3 Prediction"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})

    def execute(self, context):
        try:
            options = build_options(self)
            collection = api.import_prediction(self.filepath, options, context=context)
        except (PredictionError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported '{collection.name}' ({len(collection.all_objects)} objects)")
        if api.result_warning(collection):
            self.report({"WARNING"}, api.result_warning(collection))
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(DA3_OT_import_prediction.bl_idname, text="DA3 Prediction (.npz)")


CLASSES = (DA3_OT_import_prediction,)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
