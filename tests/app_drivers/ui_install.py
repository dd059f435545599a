"""Install dependencies from the panel into a fresh extension folder, then reconstruct with it.

Args: RESULT.json VIDEO. Blender runs with --online-mode (the installer asks for online
access); the environment is made from DA3_BASE_PYTHON. The confirmation dialog is answered
with the Return key.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

VIDEO = steps.ARGS[1]


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from steps.open_da3_sidebar()
    runs = steps.extension_module("reconstruct")

    def installing():
        run = runs.current()
        return run is not None and run.kind == "install"
    panels = steps.extension_module("panels.main")
    result["status_before"] = panels.worker_status().summary
    result["offered_screenshot"] = steps.screenshot("install-offered")
    yield 1.0
    with steps.override("UI"):
        result["click"] = sorted(bpy.ops.da3.install_dependencies("INVOKE_DEFAULT"))
    yield 1.0
    steps.xdotool("key", "Return")  # the confirmation's Install button
    yield from until(installing, 20, "the installer to start")
    started, messages, shot = time.perf_counter(), [], False
    while installing():
        state = runs.current().state
        line = state.message or state.stage
        if line and (not messages or messages[-1] != line):
            messages.append(line)
        if not shot and state.stage in ("torch", "packages"):
            result["progress_screenshot"] = steps.screenshot("install-progress")
            shot = True
        if time.perf_counter() - started > 900:
            raise TimeoutError("the installation took over 15 minutes")
        yield 0.5
    result["install_s"] = time.perf_counter() - started
    result["messages"] = messages
    result["status_after"] = panels.worker_status().summary
    result["worker_ready"] = panels.worker_status().ok
    log(f"installed in {result['install_s']:.0f} s: {result['status_after']}")
    yield 1.0
    result["ready_screenshot"] = steps.screenshot("install-done")

    bpy.context.scene.da3.source = VIDEO
    bpy.context.scene.da3.max_frames = 4
    with steps.override("UI"):
        bpy.ops.da3.reconstruct("INVOKE_DEFAULT")
    yield from until(steps.running, 10, "the run to start")
    yield from until(lambda: not steps.running(), 300, "the run to finish")
    result["objects"] = steps.da3_objects()
    result["run_error"] = steps.last_error()
    log(f"reconstructed with the new environment: {len(result['objects'])} objects")


steps.run(script)
