"""The one watcher of every run (a reconstruction, a weights download, the installation):
the modal ``da3.watch_job``, ``da3.cancel_reconstruct``, and stopping the runs and the warm
worker when a file is loaded, the extension is disabled or Blender quits.

The operators that start a run hand it to ``da3.watch_job`` (``follow_in_ui``): a
window-manager timer ticks, each tick drains the worker's events within a few milliseconds and
redraws the sidebar when what it shows changed (the panel reads the live run); Esc or the
panel's Cancel button stops it; at the end the result is built on the main thread, one short
step per tick.
"""

import atexit
import time

import bpy
from bpy.app.handlers import persistent

from .. import api, paths, reconstruct

TICK_S = 0.1  # modal timer interval
TICK_BUDGET_S = 0.004  # the most a tick spends draining events
# A redraw of the sidebar composites the whole window: ~70 ms under software OpenGL with the
# worker busy. Twice a second is live enough for a progress bar; a new stage shows at once.
REDRAW_INTERVAL_S = 0.5


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
            self.report({"WARNING"}, CANCELLED.get(run.kind if run else "", "Cancelled"))
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


CANCELLED = {"reconstruct": "Reconstruction cancelled", "download": "Download cancelled",
             "install": "Installation cancelled: nothing of it was kept"}


def nothing_running(operator_class, message: str) -> bool:
    """An operator's poll while one run at a time may run: False, with ``message`` in its
    tooltip, while one does."""
    if reconstruct.current() is not None:
        operator_class.poll_message_set(message)
        return False
    return True


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


CLASSES = (DA3_OT_watch_job, DA3_OT_cancel_reconstruct)


register_classes, unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    register_classes()
    bpy.app.handlers.load_pre.append(stop_on_file_load)
    atexit.register(reconstruct.stop_all)


def unregister():
    reconstruct.stop_all()
    atexit.unregister(reconstruct.stop_all)
    if stop_on_file_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(stop_on_file_load)
    unregister_classes()
