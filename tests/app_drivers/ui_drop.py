"""Drop a video onto the 3D viewport: the file handler's dialog opens with the source filled in
and OK (the Return key) runs the reconstruction.

Args: RESULT.json VIDEO. Blender answers a drop by invoking the file handler's import operator
with the dropped folder and file names, in the area under the mouse; so does this driver, with
the mouse over the viewport. The dialog is drawn by Blender: what it showed is read from its
draw function, and a screenshot is kept.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

VIDEO = Path(steps.ARGS[1])
drawn_sources = []


def watch_the_dialog():
    """Record the source the dialog shows each time Blender draws it."""
    panels = steps.extension_module("panels.main")
    draw = panels.draw_run_settings

    def recording_draw(layout, op, context):
        drawn_sources.append(op.source)
        return draw(layout, op, context)

    panels.draw_run_settings = recording_draw


def script():
    yield 2.0
    yield from steps.close_splash()
    watch_the_dialog()
    bpy.context.scene.da3.max_frames = 6
    steps.mouse_over_viewport()
    yield 0.5
    with steps.override():
        handler = bpy.types.FileHandler.bl_rna_get_subclass_py("DA3_FH_reconstruct")
        operator = handler.bl_import_operator.split(".")
        answer = getattr(getattr(bpy.ops, operator[0]), operator[1])(
            "INVOKE_DEFAULT", directory=str(VIDEO.parent) + "/", files=[{"name": VIDEO.name}])
    log(f"drop -> {answer}")
    yield from until(lambda: drawn_sources, 10, "the dialog to be drawn")
    result["dialog_source"] = drawn_sources[-1]
    yield 1.0  # drawn is not yet on screen
    result["dialog_screenshot"] = steps.screenshot("drop-dialog")
    yield 1.0
    result["running_before_ok"] = steps.running()
    steps.xdotool("key", "Return")
    yield from until(steps.running, 10, "the run to start after OK")
    started = time.perf_counter()
    yield from until(lambda: not steps.running(), 300, "the run to finish")
    result["seconds"] = time.perf_counter() - started
    result["objects"] = steps.da3_objects()
    result["error"] = steps.last_error()
    log(f"dropped run: {result['seconds']:.1f} s, {len(result['objects'])} objects")


steps.run(script)
