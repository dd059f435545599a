"""What holds up Blender's UI, measured: the longest gap of a 0.05 s timer while Blender idles,
redraws one part of its window twice a second, draws a new object (with the viewport's
anti-aliasing samples and without), or runs numpy work on a thread as an import
does (sorting, small array operations, gathers, loading a prediction file), or on as many
threads as an import runs, at their lowered priority. Used by
benchmarks/bench_ui_gaps.py. Args: RESULT.json NPZ."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import numpy as np  # noqa: E402
import steps  # noqa: E402
from steps import result  # noqa: E402

NPZ = steps.ARGS[1]


def busy(kind, stop):
    """Work like an import's on its threads until ``stop``: one kind of numpy operation."""
    rng = np.random.default_rng(0)
    big = rng.random(4_000_000)
    small = rng.random(2000)
    prediction = steps.extension_module("engine.core.prediction")
    while not stop.is_set():
        if kind == "big":
            np.sort(big)
        elif kind == "small":
            for _ in range(200):
                small = np.sqrt(small * small + 1.0)[::-1].copy()
        elif kind == "load":  # the import's first step
            prediction.load_prediction(NPZ)
        elif kind == "take":
            idx = rng.integers(0, len(big), 4_000_000)
            big.take(idx)


def tag(which):
    """Ask for a redraw of all areas, the status bar, the 3D view's sidebar or its viewport."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if which == "all":
                area.tag_redraw()
            elif which == "statusbar" and area.type == "STATUSBAR":
                area.tag_redraw()
            elif which in ("sidebar", "viewport") and area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == ("UI" if which == "sidebar" else "WINDOW"):
                        region.tag_redraw()


def as_import_thread(kind, stop):
    """``busy`` at the priority an import's threads run at (engine.core.threads)."""
    steps.extension_module("engine.core.threads").lower_thread_priority()
    busy(kind, stop)


def new_object():
    """What an import's each new result object asks of the viewport."""
    mesh = bpy.data.meshes.new("da3 gaps probe")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    bpy.context.scene.collection.objects.link(bpy.data.objects.new(mesh.name, mesh))


def phase(name, kind=None, redraw=False, seconds=6.0, threads=1, like_import=False):
    """``seconds`` of one load (``threads`` threads' work, a redraw every 0.5 s, or
    ``redraw="new object"``: one object added at the start) under the timer; ``like_import``:
    the threads lower their priority as an import's do."""
    stop = threading.Event()
    target = as_import_thread if like_import else busy
    workers = [threading.Thread(target=target, args=(kind, stop), daemon=True)
               for _ in range(threads if kind else 0)]
    meter = steps.TickMeter(label=lambda: name)
    meter.start()
    draws_before = len(steps.viewport_draws)
    for thread in workers:
        thread.start()
    if redraw == "new object":
        new_object()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if redraw == "new object":
            pass
        elif redraw == "status_text":
            bpy.context.workspace.status_text_set(f"DA3 import: step {time.monotonic():.2f}")
        elif redraw:
            tag("all" if redraw is True else redraw)
        yield 0.5
    stop.set()
    for thread in workers:
        thread.join()
    r = meter.stop()
    result[name] = {"longest_ms": round(r["longest_gap_s"] * 1000), "over_0_1": r["gaps_over_0_1_s"],
                    "ticks": r["ticks"], "viewport_draws": len(steps.viewport_draws) - draws_before}
    steps.log(f"{name}: {result[name]}")


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from phase("idle")
    for kind in ("big", "small", "take", "load"):
        yield from phase(f"thread: {kind}", kind)
    # as many as an import runs (every core here), at its threads' priority
    threads = steps.extension_module("engine.core.options").BACKGROUND_THREADS
    for kind in ("small", "take"):
        yield from phase(f"import's {threads}: {kind}", kind, threads=threads, like_import=True)
    yield from phase("status text", redraw="status_text")
    bpy.context.workspace.status_text_set(None)
    yield from steps.open_da3_sidebar()
    for part in ("statusbar", "sidebar", "viewport", "all"):
        yield from phase(f"redraw: {part}", redraw=part)
    # a new object is drawn once per anti-aliasing sample (Preferences > Viewport), each draw
    # a stall here; the same with the samples off, the preference then put back
    system = bpy.context.preferences.system
    samples = system.viewport_aa
    yield from phase(f"new object, AA {samples}", redraw="new object", seconds=3.0)
    system.viewport_aa = "OFF"
    yield 1.0
    try:
        yield from phase("new object, AA OFF", redraw="new object", seconds=3.0)
    finally:
        system.viewport_aa = samples
    result["draw_s"] = result_draw_seconds()


def draw_seconds(iterations: int = 3) -> float:
    """One draw of the 3D viewport, as Blender's own redraw timer measures it."""
    with steps.override():
        started = time.perf_counter()
        bpy.ops.wm.redraw_timer(type="DRAW", iterations=iterations)
    return (time.perf_counter() - started) / iterations


def result_draw_seconds() -> dict:
    """What one viewport draw costs with this file's import in the scene, each kind of object
    alone and all of them (each is drawn once per anti-aliasing sample after a change)."""
    api = steps.extension_module("api")
    options = steps.extension_module("engine.core.options").BuildOptions()
    seconds = {"nothing of it": draw_seconds()}
    objects = list(api.import_prediction(NPZ, options, context=bpy.context).all_objects)
    seconds["all of it"] = draw_seconds()
    for role in sorted({o["da3_role"] for o in objects}):
        for obj in objects:
            obj.hide_viewport = obj["da3_role"] != role
        seconds[f"its {role} alone"] = draw_seconds()
    steps.log(f"one viewport draw: {seconds}")
    return seconds


steps.run(script)
