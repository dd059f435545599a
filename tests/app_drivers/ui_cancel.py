"""Cancel during inference, from the panel's Cancel button and with Esc over the viewport.

Args: RESULT.json VIDEO. For each way: the seconds from the cancel to the panel being idle
again, what objects exist, whether the job folder and the worker process are gone.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

VIDEO = steps.ARGS[1]


def worker_processes() -> list[str]:
    """Worker processes of this Blender still alive (a Linux test machine: /proc is there);
    the warm worker's command line names no file, its environment has this HOME."""
    found, home = [], f"HOME={Path.home()}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "engine.worker" in text and home in environ:
            found.append(text)
    return found


def jobs_left() -> list[str]:
    jobs = steps.extension_module("paths").jobs_dir()
    return sorted(p.name for p in jobs.iterdir())


def cancel_with_button():
    with steps.override("UI"):
        bpy.ops.da3.cancel_reconstruct("INVOKE_DEFAULT")


def cancel_with_esc():
    steps.mouse_over_viewport()
    steps.xdotool("key", "Escape")


def cancel_during_inference(name: str, cancel):
    with steps.override("UI"):
        bpy.ops.da3.reconstruct("INVOKE_DEFAULT")
    yield from until(lambda: steps.stage() == "inference", 120, "inference to start")
    yield 1.0
    pid = steps.current_run().monitor.process.pid
    started = time.perf_counter()
    cancel()
    yield from until(lambda: not steps.running(), 10, "the run to stop")
    stopped_s = time.perf_counter() - started
    yield 0.5
    result[name] = {"stopped_s": stopped_s, "objects": steps.da3_objects(),
                    "collections": [c.name for c in bpy.data.collections],
                    "jobs_left": jobs_left(), "workers_left": worker_processes(),
                    "worker_pid_alive": Path(f"/proc/{pid}").exists(), "error": steps.last_error()}
    log(f"{name}: stopped in {stopped_s:.2f} s; {result[name]}")


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from steps.open_da3_sidebar()
    bpy.context.scene.da3.source = VIDEO
    bpy.context.scene.da3.max_frames = 16
    yield 0.5
    yield from cancel_during_inference("button", cancel_with_button)
    yield from cancel_during_inference("esc", cancel_with_esc)


steps.run(script)
