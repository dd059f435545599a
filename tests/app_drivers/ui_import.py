"""File > Import > DA3 Prediction: the file browser opens on the given file and Return imports it.

Args: RESULT.json NPZ.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402

NPZ = steps.ARGS[1]


def script():
    yield 2.0
    yield from steps.close_splash()
    result["menu_has_entry"] = any(getattr(f, "__name__", "") == "menu_import"
                                   for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    with steps.override():
        result["invoke"] = sorted(bpy.ops.da3.import_prediction("INVOKE_DEFAULT", filepath=NPZ))
    yield 2.0
    result["browser_screenshot"] = steps.screenshot("import-browser")
    yield 1.0
    # The file browser is a window of its own; with no window manager, keys go to the window
    # under the mouse. Blender counts window positions from the bottom of the screen.
    main, browser = bpy.context.window_manager.windows[0], bpy.context.window_manager.windows[-1]
    result["browser_window"] = [browser.x, browser.y, browser.width, browser.height]
    steps.xdotool("mousemove", str(browser.x + browser.width // 2),
                  str(main.height - (browser.y + browser.height // 2)))
    yield 0.5
    steps.xdotool("key", "Return")  # the file browser's Import button
    yield from until(lambda: steps.da3_objects(), 30, "the prediction to be imported")
    result["objects"] = steps.da3_objects()
    log(f"imported: {result['objects']}")


steps.run(script)
