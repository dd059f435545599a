"""Drag and drop: videos and images dropped on the 3D Viewport open the reconstruct dialog.

The extensions are the ones the worker reads (OpenCV) and Blender users commonly drop. Left out:
HEIC/HEIF (OpenCV cannot decode them) and formats rarely dropped on purpose (.ppm, .jp2, ...):
a file handler also competes with Blender's own drop actions, so it claims only what it is for.
"""

import bpy
from bpy.props import CollectionProperty, StringProperty

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class DA3_OT_reconstruct_drop(bpy.types.Operator):
    """Reconstruct the dropped images or video with DA3"""

    bl_idname = "da3.reconstruct_drop"
    bl_label = "Reconstruct with DA3"
    bl_options = {"INTERNAL"}

    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, _context, _event):
        names = [f.name for f in self.files if f.name]
        if not names:
            self.report({"ERROR"}, "nothing was dropped")
            return {"CANCELLED"}
        return bpy.ops.da3.reconstruct("INVOKE_DEFAULT", **dialog_arguments(self.directory, names))

    def execute(self, context):
        return self.invoke(context, None)


def dialog_arguments(directory: str, names: list[str]) -> dict:
    """The reconstruct operator's arguments for the dropped files: one file becomes the source,
    several become its file list (a single video among them wins: the worker takes one video)."""
    videos = [n for n in names if n.lower().endswith(VIDEO_EXTENSIONS)]
    if videos:
        names = videos[:1]
    if len(names) == 1:
        return {"source": bpy.path.abspath(directory.rstrip("/\\") + "/" + names[0])}
    return {"directory": directory, "files": [{"name": n} for n in names]}


class DA3_FH_reconstruct(bpy.types.FileHandler):
    bl_idname = "DA3_FH_reconstruct"
    bl_label = "DA3 Reconstruct"
    bl_import_operator = DA3_OT_reconstruct_drop.bl_idname
    bl_file_extensions = ";".join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)

    @classmethod
    def poll_drop(cls, context):
        return context.area is not None and context.area.type == "VIEW_3D"


CLASSES = (DA3_OT_reconstruct_drop, DA3_FH_reconstruct)


# Blender's own pair: registered in order, unregistered in reverse
register, unregister = bpy.utils.register_classes_factory(CLASSES)
