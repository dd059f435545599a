"""The panel's Reconstruct button on a video, then undo, then a second run on a photo folder,
Set Real Scale, and File > New.

Args: RESULT.json VIDEO PHOTO_FOLDER. Measures the longest gap between ticks of our own 0.05 s
timer while the worker runs (the UI's responsiveness) and records what the panel showed, which
worker process ran each run and whether it had the model loaded already, and whether File > New
ended the warm worker.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

VIDEO, PHOTOS = steps.ARGS[1], steps.ARGS[2]


def press_reconstruct():
    """What a click on the panel's button does: the operator, invoked in the sidebar."""
    with steps.override("UI"):
        return bpy.ops.da3.reconstruct("INVOKE_DEFAULT")


def watch_run(name: str):
    """Follow a run from the button press to its end; record progress, gaps and the time."""
    yield from steps.settle()
    meter = steps.TickMeter(label=steps.stage)
    meter.start()
    started = time.perf_counter()
    log(f"{name}: press Reconstruct -> {press_reconstruct()}")
    yield from until(steps.running, 10, "the job to start")
    followed = steps.current_run()
    seen, shot = [], False
    while steps.running():
        run = steps.current_run()
        line = (run.status_line(), round(run.progress(), 2))
        if not seen or seen[-1] != line:
            seen.append(line)
        if not shot and steps.stage() == "inference":
            result[f"{name}_progress_screenshot"] = steps.screenshot(f"panel-progress-{name}")
            shot = True
        if time.perf_counter() - started > 300:
            raise TimeoutError("the run took over 5 minutes")
        yield 0.25
    yield 0.5  # the tick after the result was built
    ui = meter.stop()
    # A gap is labelled by what the run was doing when the UI got its next tick: "building"
    # ones fall while the result is built in steps after the worker finished (the last step
    # links it to the scene, so Blender's first draw of it lands there too), "idle" ones after.
    gaps = ui["longest_gap_by_label_s"]
    ui["longest_gap_while_worker_runs_s"] = max(
        (gap for label, gap in gaps.items() if label not in ("building", "idle")), default=0.0)
    ui["building_s"] = gaps.get("building", 0.0)
    ui["after_s"] = gaps.get("idle", 0.0)
    result[name] = {"seconds": time.perf_counter() - started, "ui": ui,
                    "progress_seen": seen, "error": steps.last_error(),
                    "objects": steps.da3_objects(),
                    "collections": [c.name for c in bpy.data.collections],
                    "worker_pid": followed.monitor.process.pid,
                    "model_reused": (followed.state.final or {}).get("model_reused"),
                    "timings": (followed.state.final or {}).get("timings"),
                    "photo_factor": (followed.state.final or {}).get("photo_factor")}
    log(f"{name}: {result[name]['seconds']:.1f} s, longest UI gap while the worker ran "
        f"{ui['longest_gap_while_worker_runs_s'] * 1000:.0f} ms, building {ui['building_s']:.2f} s, "
        f"{len(result[name]['objects'])} objects")


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from steps.open_da3_sidebar()
    result["idle_screenshot"] = steps.screenshot("panel-idle")
    settings = bpy.context.scene.da3
    settings.source = VIDEO
    settings.max_frames = 8
    yield 1.0
    yield from watch_run("video")

    # Undo (Ctrl+Z over the viewport) takes the whole result away.
    steps.mouse_over_viewport()
    steps.xdotool("key", "ctrl+z")
    yield 1.5
    result["after_undo"] = steps.da3_objects()
    log(f"after undo: {result['after_undo']}")

    settings = bpy.context.scene.da3  # undo reloaded the scene: the old reference is stale
    settings.source = PHOTOS
    yield 1.0
    yield from watch_run("photos")
    result["final_screenshot"] = steps.screenshot("panel-done")
    yield from set_real_scale()
    yield from new_file()


def new_file():
    """File > New: the warm worker (idle since the photo run) ends with the file."""
    pid = result["photos"]["worker_pid"]
    result["worker_alive_before_new_file"] = Path(f"/proc/{pid}").exists()
    with steps.override():
        bpy.ops.wm.read_homefile(app_template="")
    yield 1.0
    result["worker_alive_after_new_file"] = Path(f"/proc/{pid}").exists()
    log(f"File > New: warm worker {pid} alive before {result['worker_alive_before_new_file']}, "
        f"after {result['worker_alive_after_new_file']}")


def set_real_scale():
    """Select two cameras of the result, open the object context menu (the entry is there), then
    Set Real Scale: its dialog, OK with Return, and the result is rescaled."""
    collection = bpy.data.collections["scene"]
    cameras = sorted((o for o in collection.objects if o.get("da3_role") == "camera"),
                     key=lambda o: o["da3_view_index"])[:2]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in cameras)
    bpy.context.view_layer.objects.active = cameras[0]
    before = (float(collection["da3_scale"]), (cameras[0].location - cameras[1].location).length)
    steps.mouse_over_viewport()
    menu = bpy.types.VIEW3D_MT_object_context_menu
    result["context_menu_entries"] = [getattr(f, "__name__", "") for f in menu._dyn_ui_initialize()]
    with steps.override():
        bpy.ops.wm.call_menu(name=menu.__name__)
    yield 1.0
    result["context_menu_screenshot"] = steps.screenshot("set-scale-menu")
    yield 1.0
    steps.xdotool("key", "Escape")
    yield 0.5
    with steps.override():
        result["set_scale"] = sorted(bpy.ops.da3.set_scale("INVOKE_DEFAULT"))
    yield 1.0
    steps.xdotool("key", "Return")  # the dialog's OK with its default distance, 1 m
    yield 1.5
    collection = bpy.data.collections["scene"]
    cameras = sorted((o for o in collection.objects if o.get("da3_role") == "camera"),
                     key=lambda o: o["da3_view_index"])[:2]
    result["scale_before"] = before
    result["scale_after"] = (float(collection["da3_scale"]),
                             (cameras[0].location - cameras[1].location).length)
    log(f"set real scale: {before} -> {result['scale_after']}")


steps.run(script)
