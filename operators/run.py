"""``da3.reconstruct`` and ``da3.download_weights``: thin operators that start a run
(``reconstruct.start`` / ``start_download``).

From the UI (invoke) they hand the run to ``da3.watch_job`` (operators/watch.py), so the UI keeps
running; called from a script (execute), and always in background mode, the same run goes to
completion before the call returns.
"""

from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    StringProperty,
)

from .. import reconstruct
from ..engine.core.options import BuildOptions
from ..engine.core.presets import DEFAULT_MODEL
from ..properties import (
    DEVICE_ITEMS,
    MODEL_ITEMS,
    BuildOptionProps,
    RunSettingProps,
    build_options,
    run_options,
)
from .watch import finished_message, follow_in_ui, nothing_running, report_result

# A run may override the machine's device, or leave it to the preferences.
RUN_DEVICE_ITEMS = (
    ("PREFERENCES", "Preferences", "The device chosen in the extension's preferences"),
    *DEVICE_ITEMS,
)
# Settings the panel keeps on scene.da3 that a UI invocation starts from.
_FROM_SETTINGS = ("source", *RunSettingProps.__annotations__, *BuildOptions.names())


class DA3_OT_reconstruct(BuildOptionProps, RunSettingProps, bpy.types.Operator):
    """Reconstruct a 3D scene from a folder of images, image files or a video with DA3"""

    bl_idname = "da3.reconstruct"
    bl_label = "Reconstruct from Images"
    # No UNDO here: from the UI this only starts the job, and an undo step pushed then redrew the
    # whole window (the 3D viewport included) as the worker started. da3.watch_job pushes the
    # step once the result is built; a blocking call pushes its own.

    source: StringProperty(name="Source", subtype="FILE_PATH", options={"SKIP_SAVE"},
                           description="A folder of images, an image or a video file")
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_movie: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    device: EnumProperty(name="Device", items=RUN_DEVICE_ITEMS, default="PREFERENCES")
    browse: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"},
                         description="Always open the file browser first")
    use_modal: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"},
                            description="Run in the background of the UI (set by invoke)")

    @classmethod
    def poll(cls, _context):
        return nothing_running(cls, "A reconstruction is already running")

    def invoke(self, context, _event):
        self.use_modal = True
        given = self.properties.is_property_set("source", ghost=False) or len(self.files) > 0
        fill_unset_from(self, context.scene.da3)
        if self.browse or not self.sources():
            self.source = ""  # the file browser's choice (files or directory) decides
            context.window_manager.fileselect_add(self)
            return {"RUNNING_MODAL"}
        if given:  # dropped files: let the user check the settings first
            return context.window_manager.invoke_props_dialog(self, width=420)
        return self.execute(context)

    def draw(self, context):
        from ..panels.main import draw_run_settings

        draw_run_settings(self.layout, self, context)

    def execute(self, context):
        try:
            request = self.request()
            if self.use_modal and not bpy.app.background and context.window is not None:
                remember_source(context, self.sources())
                return self.start_modal(context, request)
            return self.run_blocking(context, request)
        except reconstruct.ReconstructCancelled:
            self.report({"WARNING"}, "Reconstruction cancelled")
            return {"CANCELLED"}
        except (reconstruct.ReconstructError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}

    # -- what to run --------------------------------------------------------------------------

    def sources(self) -> list[str]:
        """The chosen files (several from the file browser), else the directory or the source."""
        directory = bpy.path.abspath(self.directory) if self.directory else ""
        names = [f.name for f in self.files if f.name]
        if names:
            return [str(Path(directory) / name) for name in names]
        if directory:
            return [directory]
        return [bpy.path.abspath(self.source)] if self.source else []

    def request(self) -> reconstruct.Request:
        device = "" if self.device == "PREFERENCES" else self.device.lower()
        return reconstruct.Request(self.sources(), run_options(self, device), build_options(self))

    # -- background mode and scripts: block until done --------------------------------------

    def run_blocking(self, context, request):
        report_result(self, None, reconstruct.run(request, context=context, report=print))
        if not bpy.app.background:
            bpy.ops.ed.undo_push(message=self.bl_label)
        return {"FINISHED"}

    def start_modal(self, _context, request):
        follow_in_ui(reconstruct.start(request))
        return {"FINISHED"}


class DA3_OT_download_weights(bpy.types.Operator):
    """Download the model's weights into the models folder (needs online access)"""

    bl_idname = "da3.download_weights"
    bl_label = "Download weights"

    model: EnumProperty(name="Model", items=MODEL_ITEMS, default=DEFAULT_MODEL)
    use_modal: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, _context):
        return nothing_running(cls, "A reconstruction or download is already running")

    def invoke(self, context, _event):
        self.use_modal = True
        if not self.properties.is_property_set("model", ghost=False):
            self.model = context.scene.da3.model
        return self.execute(context)

    def execute(self, context):
        try:
            run = reconstruct.start_download(self.model)
        except reconstruct.ReconstructError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if self.use_modal and not bpy.app.background and context.window is not None:
            follow_in_ui(run)
            return {"FINISHED"}
        try:
            run.monitor.wait()
            run.build()
        except reconstruct.ReconstructError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            run.close()
        self.report({"INFO"}, finished_message(run, None))
        return {"FINISHED"}


# -- helpers -----------------------------------------------------------------------------------

def fill_unset_from(op, settings) -> None:
    """Start from the panel's settings wherever the caller did not set a property.

    ``ghost=False``: a value Blender remembered from the last run does not count as set, so the
    panel's current settings win over it.
    """
    for name in _FROM_SETTINGS:
        if not op.properties.is_property_set(name, ghost=False) and hasattr(settings, name):
            setattr(op, name, getattr(settings, name))


def remember_source(context, sources: list[str]) -> None:
    """Keep the source in the panel; written only when it changed, since each write to a scene
    property redraws the whole window (the 3D viewport included)."""
    settings = getattr(context.scene, "da3", None)
    if settings is not None and len(sources) == 1 and settings.source != sources[0]:
        settings.source = sources[0]


CLASSES = (DA3_OT_reconstruct, DA3_OT_download_weights)


# Blender's own pair: registered in order, unregistered in reverse
register, unregister = bpy.utils.register_classes_factory(CLASSES)
