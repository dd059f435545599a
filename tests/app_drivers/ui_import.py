"""File > Import > DA3 Prediction: the file browser opens on the given file and Return imports it,
while our own timer measures how long the UI is blocked; then Esc during a second import of it
leaves nothing behind.

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


def find_import(found: list) -> bool:
    import gc

    found.extend(o for o in gc.get_objects() if type(o).__name__ == "StagedImport")
    return bool(found)


def script():
    yield 2.0
    yield from steps.close_splash()
    result["menu_has_entry"] = any(getattr(f, "__name__", "") == "menu_import"
                                   for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    yield from open_browser_and_confirm("first")
    result["browser_screenshot"] = steps.screenshot("import-browser")
    yield 1.0
    staged = []  # the import in progress, found once it exists: what the UI waits on
    meter = steps.TickMeter(label=lambda: staged[0].label if staged else "before the import")
    meter.start()
    started = time.perf_counter()
    steps.xdotool("key", "Return")  # the file browser's Import button
    yield from until(lambda: find_import(staged), 10, "the import to start", interval=0.02)
    yield from until(imported, 120, "the prediction to be imported", interval=0.05)
    result["import_s"] = time.perf_counter() - started
    result["ui"] = meter.stop()
    result["objects"] = steps.da3_objects()
    log(f"imported in {result['import_s']:.1f} s, longest UI gap "
        f"{result['ui']['longest_gap_s'] * 1000:.0f} ms: {result['objects']}")
    yield 3.0  # the first draws of 3.6M points under software OpenGL take a while
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
