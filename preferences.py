"""Machine-wide settings: the worker environment, the compute device and the models folder."""

import bpy
from bpy.props import EnumProperty, StringProperty

from . import paths, vendor_install
from .engine.core.presets import DEFAULT_MODEL
from .properties import DEVICE_ITEMS, MODEL_ITEMS


class DA3Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    worker_python: StringProperty(
        name="Worker Python",
        description="Python interpreter that runs DA3; empty uses the environment that "
        "'Install dependencies' creates",
        subtype="FILE_PATH",
    )
    base_python: StringProperty(
        name="Install With",
        description="Python 3.11 or newer that 'Install dependencies' makes the worker "
        "environment from; empty uses Blender's own (on Blender 5.1+, Python 3.13+, PyTorch's "
        "index may offer only large CUDA builds)",
        subtype="FILE_PATH",
    )
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="AUTO")
    models_dir: StringProperty(
        name="Models Folder",
        description="Folder with one sub-folder of weights per model; empty uses the "
        "extension's user folder",
        subtype="DIR_PATH",
    )
    default_model: EnumProperty(name="Default Model", items=MODEL_ITEMS, default=DEFAULT_MODEL)

    def draw(self, _context):
        layout = self.layout
        status = vendor_install.env_status(paths.worker_python())
        box = layout.box()
        box.label(text=f"Worker environment: {status.summary}",
                  icon="CHECKMARK" if status.ok else "ERROR")
        box.label(text=str(paths.worker_python()))
        if not status.ok:
            box.operator("da3.install_dependencies", icon="IMPORT")
        layout.prop(self, "worker_python")
        layout.prop(self, "base_python")
        layout.prop(self, "device")
        layout.prop(self, "models_dir")
        layout.label(text=f"Models: {paths.models_dir()}")
        layout.prop(self, "default_model")


CLASSES = (DA3Preferences,)


# Blender's own pair: registered in order, unregistered in reverse
register, unregister = bpy.utils.register_classes_factory(CLASSES)
