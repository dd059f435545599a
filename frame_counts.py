"""How many frames a run will use, shown in the panel before the run; never blocks its draw.

Folders are listed here (cached by modification time). A video's facts come from a background
process in the worker environment (``python -m engine.worker video-info`` or ``keyframes``),
cached per file; a timer redraws the sidebar when one finishes. ``stop()`` ends them all
(``reconstruct.stop_all``: unregister, file loads, exit).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import bpy

from . import paths
from .engine.core.options import RunOptions, window_count
from .engine.core.sources import image_folder, is_image, is_video


def describe(source: str, sampling: str, max_frames: int, fps: float) -> str:
    """What the panel says about the frames a run on ``source`` will use; never blocks.

    Folders are listed (cached by modification time). A video's facts come from a background
    process in the worker environment, cached per file: its frame count and rate for 'count' and
    'fps' (the same windows as ``engine.worker.inputs.sampling_windows``), or its keyframe selection for
    'motion' (``python -m engine.worker keyframes``, in the cache the worker reads too). "" = say nothing.
    """
    path = Path(source).expanduser() if source else None
    if path is None or not path.exists():
        return ""
    if path.is_dir():
        count = _images_in(str(path), path.stat().st_mtime_ns)
        return f"{count} image{'s' * (count != 1)}"
    if not is_video(path):
        return "1 image" if is_image(path) else ""
    run = RunOptions.sampled(sampling, max_frames, fps)
    mode, max_frames, fps = run.sampling, run.max_frames, run.fps
    info = _frame_counts.answer(path, "motion" if mode == "motion" else "info")
    if info is None:
        return "Finding keyframes..." if mode == "motion" else "Counting video frames..."
    if "error" in info:
        return info["error"]
    if mode == "motion":
        return (f"{min(info['count'], max_frames) if max_frames > 0 else info['count']} keyframes "
                f"of {info['frames_analysed']} frames analysed")
    return f"{window_count(info['frames'], info['fps'], max_frames, fps)} of {info['frames']} frames"


_image_counts: dict = {}


def _images_in(folder: str, mtime_ns: int) -> int:
    key = (folder, mtime_ns)
    if key not in _image_counts:
        with os.scandir(image_folder(Path(folder))) as entries:
            _image_counts[key] = sum(1 for e in entries if e.is_file() and is_image(Path(e.name)))
    return _image_counts[key]


class _FrameCounts:
    """Background processes that read videos in the worker environment; answers cached per
    (file, size, modification time, kind). A timer redraws the sidebar when one finishes."""

    def __init__(self):
        self.answers: dict[tuple, dict] = {}
        self.running: dict[tuple, tuple[subprocess.Popen, Path]] = {}

    def answer(self, path: Path, kind: str) -> dict | None:
        """The answer, or None while it is being worked out (started here if need be)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, kind)
        if key in self.answers:
            return self.answers[key]
        if key not in self.running:
            self._start(key, path, kind)
        self.poll()
        return self.answers.get(key)

    def _start(self, key: tuple, path: Path, kind: str) -> None:
        python = paths.worker_python()
        if not python.exists():
            self.answers[key] = {"error": "Frames: counted once the worker environment is installed"}
            return
        if kind == "motion":
            argv = [python, "-m", "engine.worker", "keyframes", str(path),
                    "--cache", str(paths.keyframes_dir())]
        else:
            argv = [python, "-m", "engine.worker", "video-info", str(path)]
        handle, name = tempfile.mkstemp(prefix="frames-", suffix=".json", dir=paths.user_dir("counts"))
        os.close(handle)
        out = Path(name)
        with open(out, "wb") as stdout:
            proc = subprocess.Popen(argv, cwd=paths.EXTENSION_DIR, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=subprocess.DEVNULL)
        self.running[key] = (proc, out)
        if not bpy.app.timers.is_registered(_tick_frame_counts):
            bpy.app.timers.register(_tick_frame_counts, first_interval=0.25)

    def poll(self) -> bool:
        """Collect finished processes; True if any finished."""
        finished = False
        for key, (proc, out) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[key]
            try:
                self.answers[key] = json.loads(out.read_text(encoding="utf-8").splitlines()[-1])
            except (OSError, ValueError, IndexError):
                self.answers[key] = {"error": "Frames: the video could not be read"}
            out.unlink(missing_ok=True)
            finished = True
        return finished

    def stop(self) -> None:
        """Stop every background count and its timer (unregister, exit)."""
        if bpy.app.timers.is_registered(_tick_frame_counts):
            bpy.app.timers.unregister(_tick_frame_counts)
        for proc, out in self.running.values():
            proc.kill()
            proc.wait()
            out.unlink(missing_ok=True)
        self.running.clear()


_frame_counts = _FrameCounts()


def _tick_frame_counts() -> float | None:
    """Timer: redraw the sidebar once a count is in; ends itself when none is running. Only the
    sidebar region: tagging the area would redraw the 3D viewport too."""
    if _frame_counts.poll():
        for window in bpy.context.window_manager.windows:
            for area in window.screen.areas:
                for region in area.regions if area.type == "VIEW_3D" else ():
                    if region.type == "UI":
                        region.tag_redraw()
    return 0.25 if _frame_counts.running else None


def stop() -> None:
    """Stop every background count and its timer."""
    _frame_counts.stop()
