"""``da3.reconstruct``, ``da3.download_weights``, ``da3.cancel_reconstruct`` and the modal
``da3.watch_job``: thin operators over ``reconstruct.py``.

From the UI (invoke) the operator starts the job and hands it to ``da3.watch_job``: a
window-manager timer ticks, each tick drains the worker's events within a few milliseconds and
redraws the sidebar when what it shows changed (the panel reads the live run); Esc or the
panel's Cancel button stops it; at the end the result is built on the main thread. Called from
a script (execute), and always in background mode, the same job runs to completion before the
call returns.
"""

import atexit
import time
from pathlib import Path

import bpy
from bpy.app.handlers import persistent
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    StringProperty,
)

from .. import api, paths, reconstruct
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

TICK_S = 0.1  # modal timer interval
TICK_BUDGET_S = 0.004  # the most a tick spends draining events
# A redraw of the sidebar composites the whole window: ~70 ms under software OpenGL with the
# worker busy. Twice a second is live enough for a progress bar; a new stage shows at once.
REDRAW_INTERVAL_S = 0.5

# A run may override the machine's device, or leave it to the preferences.
RUN_DEVICE_ITEMS = (
    ("PREFERENCES", "Preferences", "The device chosen in the extension's preferences"),
    *DEVICE_ITEMS,
)
# Settings the panel keeps on scene.da3 that a UI invocation starts from.
_FROM_SETTINGS = ("source", *RunSettingProps.__annotations__, *BuildOptions.names())


class DA3_OT_watch_job(bpy.types.Operator):
    """Follow the running job: a timer ticks it, Esc cancels, the result is built at the end.

    The reconstruct and download operators start the job and hand it to this modal operator
    (a modal handler started from their execute() would be 'modal from exec', which Blender
    only tolerates), so every UI path (panel button, file browser, drop dialog) works the same.
    """

    bl_idname = "da3.watch_job"
    bl_label = "Reconstruct"
    bl_options = {"INTERNAL", "UNDO"}

    def invoke(self, context, _event):
        run = reconstruct.current()
        if run is None:
            return {"CANCELLED"}
        end_job(context.window_manager.da3_job, "")
        self._shown, self._shown_at, self._staged = None, 0.0, None
        self.show(context, run)
        self._timer = context.window_manager.event_timer_add(TICK_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = reconstruct.current()
        if run is None:  # stopped from outside (unregister, file load)
            return self.finish(context, None)
        if event.type == "ESC" and event.value == "PRESS":
            if self._staged is not None:  # building: stop and remove what was made
                self._staged.cancel()
                return self.finish(context, run, reconstruct.ReconstructCancelled("cancelled"))
            run.cancel(wait=False)
            return {"RUNNING_MODAL"}
        # Any timer's tick will do (bpy.types.Event does not say which timer fired); a tick
        # costs a few milliseconds at most, and only a change of what the panel shows redraws.
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        run.tick(budget_s=TICK_BUDGET_S)
        self.show(context, run)
        if not run.finished:
            return {"PASS_THROUGH"}
        return self.build_step(context, run)

    def build_step(self, context, run):
        """The result is built one short step per tick (``api.start_import``), the numpy work on
        threads, so the UI keeps running until it is complete."""
        try:
            if self._staged is None:
                self._staged = run.start_build(context)
                if self._staged is None:  # a download: nothing to build
                    return self.finish(context, run)
                self.show(context, run)
                return {"PASS_THROUGH"}
            if not self._staged.step():
                return {"PASS_THROUGH"}
        except (reconstruct.ReconstructError, ValueError) as exc:
            return self.finish(context, run, exc)
        return self.finish(context, run)

    def show(self, context, run) -> None:
        """Redraw the sidebar when what it shows changed: a new stage at once, progress within
        the stage at most every REDRAW_INTERVAL_S."""
        shown = (run.state.stage, run.building, run.status_line())
        now = time.monotonic()
        if shown == self._shown:
            return
        if self._shown is not None and shown[:2] == self._shown[:2] and \
                now - self._shown_at < REDRAW_INTERVAL_S:
            return
        self._shown, self._shown_at = shown, now
        redraw_sidebars(context)

    def finish(self, context, run, failure: Exception | None = None):
        """Report how the run ended (``failure``: why it did not) and release it."""
        context.window_manager.event_timer_remove(self._timer)
        job = context.window_manager.da3_job
        try:
            if run is None:
                raise reconstruct.ReconstructCancelled("stopped")
            if failure is not None:
                raise failure
            report_result(self, run, self._staged.collection if self._staged else None)
        except reconstruct.ReconstructCancelled:
            end_job(job, "")
            self.report({"WARNING"}, "Cancelled")
            return {"CANCELLED"}
        except (reconstruct.ReconstructError, ValueError) as exc:
            end_job(job, str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            if run is not None:
                run.building = False
                run.close()
            redraw_sidebars(context)
        end_job(job, "")
        return {"FINISHED"}

    def cancel(self, context):
        """Blender ends the modal operator (file load, quit): stop the worker too."""
        context.window_manager.event_timer_remove(self._timer)
        if self._staged is not None:  # the file is being replaced or Blender quits: data stays
            self._staged.stop_threads()
        reconstruct.stop_all()
        end_job(context.window_manager.da3_job, "")


def finished_message(run, collection) -> str:
    if collection is not None:
        return f"Reconstructed '{collection.name}' ({len(collection.all_objects)} objects)"
    if run.kind == "install":
        return f"Dependencies installed in {paths.worker_env_dir()}"
    return f"Downloaded the {run.request.run.model} weights"


def report_result(op, run, collection) -> None:
    """What was built, and on its own line what was asked for but could not be built."""
    op.report({"INFO"}, finished_message(run, collection))
    warning = "" if collection is None else api.result_warning(collection)
    if warning:
        op.report({"WARNING"}, warning)


def follow_in_ui(run) -> None:
    """Hand a started run to the modal watcher; a run nobody follows is stopped at once."""
    try:
        result = bpy.ops.da3.watch_job("INVOKE_DEFAULT")
    except RuntimeError as exc:
        run.close()
        raise reconstruct.ReconstructError(f"could not follow the job in this window: {exc}") from exc
    if "RUNNING_MODAL" not in result:
        run.close()
        raise reconstruct.ReconstructError("could not follow the job in this window")


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
        if reconstruct.current() is not None:
            cls.poll_message_set("A reconstruction is already running")
            return False
        return True

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


class DA3_OT_cancel_reconstruct(bpy.types.Operator):
    """Stop the running reconstruction; nothing of it is kept"""

    bl_idname = "da3.cancel_reconstruct"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, _context):
        return reconstruct.current() is not None

    def execute(self, _context):
        reconstruct.current().cancel(wait=False)
        return {"FINISHED"}


class DA3_OT_download_weights(bpy.types.Operator):
    """Download the model's weights into the models folder (needs online access)"""

    bl_idname = "da3.download_weights"
    bl_label = "Download weights"

    model: EnumProperty(name="Model", items=MODEL_ITEMS, default=DEFAULT_MODEL)
    use_modal: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, _context):
        if reconstruct.current() is not None:
            cls.poll_message_set("A reconstruction or download is already running")
            return False
        return True

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


def end_job(job, error: str) -> None:
    if job.error != error:
        job.error = error


def redraw_sidebars(context) -> None:
    """Redraw the 3D views' sidebars only: tagging a whole area redraws its viewport too,
    which under software OpenGL costs a large share of every tick."""
    screen = context.screen
    for area in screen.areas if screen else ():
        if area.type == "VIEW_3D":
            for region in area.regions:
                if region.type == "UI":
                    region.tag_redraw()


@persistent
def stop_on_file_load(_dummy) -> None:
    reconstruct.stop_all()


CLASSES = (DA3_OT_watch_job, DA3_OT_reconstruct, DA3_OT_cancel_reconstruct, DA3_OT_download_weights)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_pre.append(stop_on_file_load)
    atexit.register(reconstruct.stop_all)


def unregister():
    reconstruct.stop_all()
    atexit.unregister(reconstruct.stop_all)
    if stop_on_file_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(stop_on_file_load)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
