"""File > Import > DA3 Prediction: the file browser opens on the given file and Return imports it,
while our own timer measures how long the UI is blocked; then Esc during a second import of it
leaves nothing behind. Between the two, the DA3 sidebar draws the result's surface face count.

Args: RESULT.json NPZ.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

NPZ = steps.ARGS[1]
NAME = os.path.splitext(os.path.basename(NPZ))[0]


def imported() -> bool:
    """The result is linked to the scene when the import is complete."""
    return NAME in bpy.context.scene.collection.children


def open_browser_and_confirm(label: str):
    """Invoke the operator as the menu does; Return in the browser's window (keys go to the
    window under the mouse; Blender counts window positions from the bottom of the screen)."""
    with steps.override():
        result[f"invoke_{label}"] = sorted(bpy.ops.da3.import_prediction("INVOKE_DEFAULT",
                                                                         filepath=NPZ))
    yield 2.0
    main, browser = bpy.context.window_manager.windows[0], bpy.context.window_manager.windows[-1]
    steps.xdotool("mousemove", str(browser.x + browser.width // 2),
                  str(main.height - (browser.y + browser.height // 2)))
    yield 0.5


def timed_steps(durations: list):
    """Record how long each step of the real StagedImport holds Blender's main thread
    ((seconds, of them on the CPU, what it was doing)): the part of a UI gap that is our own
    work, the rest being Blender's (its redraws). A step much longer than its CPU time waited
    for the machine, not for our code. Returns what puts the method back."""
    staged_import = steps.extension_module("builder.result").StagedImport
    original = staged_import.step

    def step(self, wait=False):
        label, began, cpu = self.label, time.perf_counter(), time.thread_time()
        try:
            return original(self, wait)
        finally:
            durations.append((time.perf_counter() - began, time.thread_time() - cpu, label))

    staged_import.step = step
    return lambda: setattr(staged_import, "step", original)


def find_import(found: list) -> bool:
    import gc

    found.extend(o for o in gc.get_objects() if type(o).__name__ == "StagedImport")
    return bool(found)


class RecordingLayout:
    """A real UILayout that also keeps the text of every label drawn through it."""

    def __init__(self, layout, labels: list):
        self._layout, self._labels = layout, labels

    def box(self):
        return RecordingLayout(self._layout.box(), self._labels)

    def label(self, **kwargs):
        self._labels.append(kwargs.get("text", ""))
        return self._layout.label(**kwargs)

    def __getattr__(self, name):
        return getattr(self._layout, name)


def panel_result_labels():
    """Open the DA3 sidebar and let Blender draw it: the labels its result summary drew."""
    panels = steps.extension_module("panels.main")
    labels: list = []
    original = panels.draw_result
    panels.draw_result = lambda layout, collection: original(RecordingLayout(layout, labels), collection)
    try:
        yield from steps.open_da3_sidebar()
        steps.sidebar().tag_redraw()
        yield from until(lambda: any(t.startswith("Surface:") for t in labels), 20,
                         "the sidebar to draw the surface's face count")
    finally:
        panels.draw_result = original
    result["panel_labels"] = sorted(set(labels))
    result["surface_faces"] = [o.get("da3_faces") for o in bpy.data.objects
                               if o.get("da3_role") == "surface"]
    result["panel_screenshot"] = steps.screenshot("import-panel")
    log(f"the panel drew {result['panel_labels']}")


def script():
    yield 2.0
    yield from steps.close_splash()
    result["menu_has_entry"] = any(getattr(f, "__name__", "") == "menu_import"
                                   for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    # the same timer while Blender only idles: what this machine's scheduling alone costs
    idle = steps.TickMeter(label=lambda: "idle")
    idle.start()
    yield 8.0
    result["ui_idle"] = idle.stop()
    yield from open_browser_and_confirm("first")
    result["browser_screenshot"] = steps.screenshot("import-browser")
    yield 1.0
    staged = []  # the import in progress, found once it exists: what the UI waits on
    meter = steps.TickMeter(label=lambda: staged[0].label if staged else "before the import")
    durations: list = []
    untimed = timed_steps(durations)
    meter.start()
    started = time.perf_counter()
    steps.xdotool("key", "Return")  # the file browser's Import button
    yield from until(lambda: find_import(staged), 10, "the import to start", interval=0.02)
    yield from until(imported, 120, "the prediction to be imported", interval=0.05)
    result["import_s"] = time.perf_counter() - started
    result["ui"] = meter.stop()
    untimed()
    longest, cpu, label = max(durations)
    result["our_steps"] = {"steps": len(durations), "longest_s": longest, "its_cpu_s": cpu,
                           "longest_label": label, "longest_cpu_s": max(d[1] for d in durations),
                           "over_0_1_s": sum(d[0] > 0.1 for d in durations),
                           "over_0_05_s": [(round(wall * 1000), round(used * 1000), what, i)
                                           for i, (wall, used, what) in enumerate(durations)
                                           if wall > 0.05]}
    result["objects"] = steps.da3_objects()
    result["point_counts"] = [len(o.data.vertices) for o in bpy.data.objects if o.get("da3_role") == "points"]
    log(f"imported in {result['import_s']:.1f} s, longest UI gap "
        f"{result['ui']['longest_gap_s'] * 1000:.0f} ms: {result['objects']}")
    # the result's first draws: once per anti-aliasing sample, each slow in software OpenGL
    after = steps.TickMeter(label=lambda: "after the import")
    after.start()
    yield 3.0
    result["ui_after"] = after.stop()
    yield from panel_result_labels()
    # a second import of the same file, cancelled with Esc while it is fusing
    bpy.data.batch_remove([bpy.data.collections[NAME], *bpy.data.objects])
    before = {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "meshes", "collections")}
    yield from open_browser_and_confirm("second")
    steps.xdotool("key", "Return")
    yield 1.0
    steps.xdotool("mousemove", "400", "400")  # back over the main window, which gets the Esc
    steps.xdotool("key", "Escape")
    yield 3.0
    result["after_escape"] = {kind: len(getattr(bpy.data, kind)) for kind in before}
    result["before_second"] = before
    result["imported_after_escape"] = imported()


steps.run(script)
