"""What the UI drivers share: run a script of steps from Blender's own timer, as a user would
act between redraws, and write what was seen to a JSON file for the test.

A driver is ``blender --python DRIVER -- RESULT.json [args]``. Its steps are a generator: it
yields the seconds to wait before it goes on; ``until`` waits for a condition. Everything runs
on Blender's main thread in its event loop, so operators invoked here get real events, real
timers and real modal handlers.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import bpy

ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
RESULT_FILE = Path(ARGS[0]) if ARGS else None
ARTEFACTS = Path(os.environ.get("DA3_TEST_ARTEFACTS", "/tmp"))
result: dict = {"blender": bpy.app.version_string, "log": []}


def log(line: str) -> None:
    print(f"DRIVER: {line}", flush=True)
    result["log"].append(line)


def save() -> None:
    if RESULT_FILE is not None:
        RESULT_FILE.write_text(json.dumps(result, indent=1))


def run(steps) -> None:
    """Run the generator ``steps`` from a timer; quit Blender when it ends or fails."""
    generator = steps()

    def tick():
        try:
            wait = next(generator)
        except StopIteration:
            result["ok"] = True
            return finish()
        except Exception:
            result["ok"] = False
            result["driver_error"] = traceback.format_exc()
            print(result["driver_error"], flush=True)
            return finish()
        return max(0.0, float(wait or 0.0))

    bpy.app.timers.register(tick, first_interval=1.0, persistent=True)


def finish():
    for shot in _screenshots:
        shot.wait(timeout=60)
    save()
    bpy.app.timers.register(lambda: bpy.ops.wm.quit_blender() and None, first_interval=0.2)
    return None


def until(condition, timeout: float, what: str, interval: float = 0.1):
    """Yield until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        yield interval


def view3d():
    """(window, area, region) of the first 3D viewport's main region."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "WINDOW")
    return window, area, region


def sidebar():
    """The 3D viewport's sidebar region (N-panel)."""
    _window, area, _region = view3d()
    return next(r for r in area.regions if r.type == "UI")


def override(region_type: str = "WINDOW"):
    """The context a click in the 3D viewport (or its sidebar) gives an operator."""
    window, area, _region = view3d()
    region = next(r for r in area.regions if r.type == region_type)
    return bpy.context.temp_override(window=window, screen=window.screen, area=area, region=region)


def open_da3_sidebar():
    """Show the sidebar on the DA3 tab, as a user does with N and a click on the tab."""
    _window, area, _region = view3d()
    area.spaces.active.show_region_ui = True
    yield 0.5
    try:
        sidebar().active_panel_category = "DA3"
    except (AttributeError, TypeError):  # read-only in some versions: click the tab instead
        pass
    area.tag_redraw()
    yield 0.5


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=20)


def close_splash():
    """The splash screen is open at start; a click on the viewport closes it."""
    _window, area, _region = view3d()
    window_height = bpy.context.window_manager.windows[0].height
    x, y = area.x + area.width // 3, window_height - (area.y + area.height // 3)
    xdotool("mousemove", str(x), str(y), "click", "1")
    yield 0.5


def mouse_over_viewport():
    """Keys go to the area under the mouse."""
    _window, area, _region = view3d()
    window_height = bpy.context.window_manager.windows[0].height
    xdotool("mousemove", str(area.x + area.width // 3), str(window_height - (area.y + area.height // 2)))


_screenshots: list = []


def screenshot(name: str) -> str:
    """The whole virtual screen (Blender's own screenshot is black under Xvfb's software GL).

    ImageMagick runs beside Blender, not waited for here, so taking it never blocks the UI
    that is being measured; ``finish`` waits for every screenshot.
    """
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}-{bpy.app.version_string.split()[0]}.png"
    _screenshots.append(subprocess.Popen(["import", "-window", "root", str(path)]))
    log(f"screenshot {path}")
    return str(path)


# when the 3D viewport drew (perf_counter): a new object makes Blender draw it again and again
# (8 times with the default 8 anti-aliasing samples), each a long stall under software OpenGL
viewport_draws: list[float] = [0.0]


def _note_viewport_draw():
    viewport_draws.append(time.perf_counter())


bpy.types.SpaceView3D.draw_handler_add(_note_viewport_draw, (), "WINDOW", "POST_PIXEL")


def settle(quiet_s: float = 2.0, timeout: float = 30.0):
    """Wait until the 3D viewport has not redrawn for ``quiet_s``: after an undo or a new result,
    Blender keeps redrawing it for seconds under software OpenGL, and those stalls are Blender's,
    not the run's being measured next."""
    started = time.perf_counter()
    yield from until(lambda: time.perf_counter() - viewport_draws[-1] > quiet_s, timeout,
                     "the viewport to stop redrawing")
    log(f"viewport settled after {time.perf_counter() - started:.1f} s")


class TickMeter:
    """Our own 0.05 s timer: the longest gap between its ticks is how long the UI was blocked."""

    def __init__(self, interval: float = 0.05, label=lambda: ""):
        self.interval, self.label, self.active = interval, label, False
        self.stamps, self.labels = [], []

    def _tick(self):
        if not self.active:
            return None
        self.stamps.append(time.perf_counter())
        self.labels.append(self.label())
        return self.interval

    def start(self) -> None:
        self.active, self.stamps, self.labels = True, [time.perf_counter()], [self.label()]
        bpy.app.timers.register(self._tick, first_interval=self.interval, persistent=True)

    def stop(self) -> dict:
        """Gaps between ticks, overall and per label (what the app was doing when it resumed),
        and how many of those over 0.1 s held a draw of the 3D viewport."""
        self.active = False
        spans = list(zip(self.stamps, self.stamps[1:], strict=False))
        gaps = [b - a for a, b in spans]
        per_label: dict = {}
        for gap, label in zip(gaps, self.labels[1:], strict=False):
            per_label[label] = max(per_label.get(label, 0.0), gap)
        long = [(a, b) for a, b in spans if b - a > 0.1]
        redrawn = sum(bisect.bisect_right(viewport_draws, b) > bisect.bisect_right(viewport_draws, a)
                      for a, b in long)
        return {"ticks": len(gaps), "seconds": self.stamps[-1] - self.stamps[0] if gaps else 0.0,
                "longest_gap_s": max(gaps, default=0.0), "gaps_over_0_1_s": len(long),
                "gaps_over_0_1_s_with_a_viewport_draw": redrawn, "longest_gap_by_label_s": per_label}


def extension_module(name: str = ""):
    """A module of the extension as Blender loaded it (bl_ext.<repo>.da3_reconstruct...)."""
    import importlib

    package = next(n for n in sys.modules if n.startswith("bl_ext.") and n.endswith(".da3_reconstruct"))
    return importlib.import_module(f"{package}.{name}" if name else package)


def current_run():
    """The run the panel shows (None when idle)."""
    return extension_module("reconstruct").current()


def running() -> bool:
    return current_run() is not None


def stage() -> str:
    run = current_run()
    return "idle" if run is None else ("building" if run.building else run.state.stage)


def last_error() -> str:
    return bpy.context.window_manager.da3_job.error


def da3_objects() -> list[str]:
    return sorted(o.name for o in bpy.data.objects if "da3_role" in o)
