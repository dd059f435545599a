"""The model panel's 'Download now' with the model hub out of reach: the download runs in the
worker environment, and its failure comes back as one line in the panel, no traceback.

Args: RESULT.json. Blender runs with --online-mode and an empty models folder.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import bpy  # noqa: E402
import steps  # noqa: E402
from steps import log, result, until  # noqa: E402


def script():
    yield 2.0
    yield from steps.close_splash()
    yield from steps.open_da3_sidebar()
    with steps.override("UI"):
        result["click"] = sorted(bpy.ops.da3.download_weights("INVOKE_DEFAULT", model="da3-small"))
    yield from until(lambda: not steps.running(), 120, "the download to end")
    yield 0.5
    result["error"] = steps.last_error()
    result["screenshot"] = steps.screenshot("download-failed")
    log(f"download ended: {result['error']}")


steps.run(script)
