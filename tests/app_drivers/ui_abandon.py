"""Leave a run behind mid-inference: File > New, or quit Blender.

Args: RESULT.json VIDEO MODE, MODE being "new-file" or "quit". The test checks from outside,
after Blender has exited, that no worker process and no job folder is left.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

VIDEO, MODE = steps.ARGS[1], steps.ARGS[2]


def script():
    yield 2.0
    yield from steps.close_splash()
    bpy.context.scene.da3.source = VIDEO
    bpy.context.scene.da3.max_frames = 16
    with steps.override("UI"):
        bpy.ops.da3.reconstruct("INVOKE_DEFAULT")
    yield from until(lambda: steps.stage() == "inference", 120, "inference to start")
    result["worker_pid"] = steps.current_run().monitor.process.pid
    result["jobs_dir"] = str(steps.extension_module("paths").jobs_dir())
    steps.save()
    if MODE == "quit":
        log("quitting mid-run")
        bpy.ops.wm.quit_blender()
        yield 30.0  # never reached: Blender exits
        return
    with steps.override():
        bpy.ops.wm.read_homefile(app_template="")
    yield 2.0
    result["running_after_new_file"] = steps.running()
    result["objects"] = steps.da3_objects()
    log(f"after File > New: running={result['running_after_new_file']}")


steps.run(script)
