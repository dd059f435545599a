"""Sources -> RGB frames: folders, image files and videos, as real-world files come.

Runs in the worker (and in plain tests) with numpy + OpenCV only.

* Paths are read with ``np.fromfile`` + ``cv2.imdecode``: ``cv2.imread`` fails on non-ASCII
  paths on Windows. ``IMREAD_COLOR`` applies the EXIF orientation, turns grayscale into RGB,
  drops alpha (as DA3's own ``PIL.convert("RGB")`` does), scales 16-bit PNGs to 8 bits and
  decodes CMYK JPEGs (checked with OpenCV 4.11 and 5.0).
* A folder is read in natural order (``frame2`` before ``frame10``); files whose extension is
  not an image's are ignored; images that fail to decode are skipped and reported once.
* A video is split into equal sampling windows (``max_frames`` of them, or as many as ``fps``
  asks for) and the sharpest frame of each window (variance of the Laplacian on a small grey
  copy) is kept, so motion-blurred frames lose to clean ones; or (sampling "motion") the
  keyframes of ``engine.worker.keyframes``: enough parallax between kept frames, no blur, no duplicates.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..core.options import MAX_FRAMES, window_count
from ..core.sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, image_folder

# Images decoded at once: enough to keep the cores busy; each holds one full-size image.
READ_THREADS = min(8, os.cpu_count() or 1)
SHARPNESS_SIZE = 256  # long side of the grey copy that sharpness is measured on
MAX_CANDIDATES_PER_WINDOW = 12  # frames scored per sampling window; the rest are only grabbed

Progress = Callable[[int, int], None]
# A frame as decoded -> the image kept, or (image, a larger copy for the texture)
Transform = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray | None]"]
IsCancelled = Callable[[], bool]


class InputError(ValueError):
    """Sources that give no usable frame; the message is one line for the user."""


@dataclass
class Frame:
    rgb: np.ndarray  # (H,W,3) uint8
    source: str  # the file it came from
    index: int = -1  # frame number in a video, -1 for a still image
    photo: np.ndarray | None = None  # a larger copy for the texture, when the transform made one

    @classmethod
    def made(cls, transformed, source: str, index: int = -1) -> Frame:
        """The frame from what a reader's transform returned: an image, or (image, photo)."""
        if isinstance(transformed, tuple):
            return cls(transformed[0], source, index, transformed[1])
        return cls(transformed, source, index)


@dataclass
class Sources:
    """What the job's sources are, before anything is decoded."""

    images: list[Path] = field(default_factory=list)
    video: Path | None = None
    ignored: list[Path] = field(default_factory=list)  # folder entries that are not images

    @property
    def is_video(self) -> bool:
        return self.video is not None


@dataclass
class FrameSet:
    frames: list[Frame]
    skipped: list[str]  # files that could not be decoded


# --------------------------------------------------------------------------- discovery

def natural_key(path: str | Path) -> list:
    """Sort key that orders numbers by value: frame2 < frame10; case-insensitive."""
    name = str(path)
    return [int(part) if part.isdigit() else part.casefold()
            for part in re.split(r"(\d+)", name)]


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def collect_sources(sources: list[str]) -> Sources:
    """Classify the job's sources; InputError for missing paths or a video mixed with others."""
    if not sources:
        raise InputError("no input given: choose a folder, image files or a video")
    paths = [Path(s).expanduser() for s in sources]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"input not found: {_short_list(missing)}")
    videos = [p for p in paths if p.is_file() and is_video_path(p)]
    if videos:
        if len(paths) > 1:
            raise InputError("a video must be the only input; got "
                             f"{len(videos)} video(s) and {len(paths) - len(videos)} other input(s)")
        return Sources(video=videos[0])
    found = Sources()
    for path in paths:
        if path.is_dir():
            _add_folder(found, path)
        else:
            found.images.append(path)
    if not found.images:
        raise InputError(f"no image files in {_short_list([str(p) for p in paths])}")
    return found


def _add_folder(found: Sources, folder: Path) -> None:
    entries = sorted((p for p in image_folder(folder).iterdir() if p.is_file()), key=natural_key)
    for entry in entries:
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.images.append(entry)
        else:
            found.ignored.append(entry)


def _short_list(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def count_views(sources: Sources, max_frames: int, fps: float) -> int | None:
    """How many views the sources will give at most (None: unknown until the video is read)."""
    if not sources.is_video:
        return len(sources.images)
    if max_frames > 0 and fps <= 0:
        return max_frames
    return None


def expected_views(sources: Sources, max_frames: int, fps: float, sampling: str) -> int:
    """How many views the sources will give, before they are decoded: ``count_views``, else
    the video's sampling windows, else (keyframes by motion) the most the run may keep."""
    known = count_views(sources, max_frames, fps)
    if known:
        return known
    if sampling != "motion":
        total, video_fps = video_length(sources.video)
        if total > 0:  # else the container does not say
            return max(1, window_count(total, video_fps, max_frames, fps))
    return max_frames or int(MAX_FRAMES.max)


# --------------------------------------------------------------------------- images

def read_image(path: str | Path) -> np.ndarray | None:
    """RGB uint8 (H,W,3) with EXIF orientation applied, or None if it cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or min(bgr.shape[:2]) < 2:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_images(paths: list[Path], progress: Progress | None = None,
                cancelled: IsCancelled | None = None,
                transform: Transform | None = None) -> FrameSet:
    """Decode each image (``transform`` shrinks it at once so huge files do not pile up),
    ``READ_THREADS`` at a time (OpenCV releases the GIL while it decodes and resizes); the frames
    keep the order of ``paths``."""

    def load(path: Path) -> np.ndarray | None:
        rgb = read_image(path)
        return transform(rgb) if rgb is not None and transform is not None else rgb

    frames, skipped = [], []
    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="decode")
    try:
        decoded = [pool.submit(load, path) for path in paths]
        for i, (path, future) in enumerate(zip(paths, decoded, strict=True)):
            if cancelled is not None and cancelled():
                break
            rgb = future.result()
            if rgb is None:
                skipped.append(str(path))
            else:
                frames.append(Frame.made(rgb, str(path)))
            if progress is not None:
                progress(i + 1, len(paths))
    finally:
        pool.shutdown(cancel_futures=True)  # after a cancel or an error: only those under way finish
    return FrameSet(frames, skipped)


# --------------------------------------------------------------------------- video

def sharpness(rgb_or_bgr: np.ndarray) -> float:
    """Variance of the Laplacian on a small grey copy: higher is sharper."""
    grey = cv2.cvtColor(rgb_or_bgr, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    scale = SHARPNESS_SIZE / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def sampling_windows(total: int, video_fps: float, max_frames: int, fps: float) -> list[range]:
    """Split frames [0, total) into equal windows, one kept frame each.

    ``fps`` > 0 asks for that many frames per second of video (capped by ``max_frames`` when
    it is also set); otherwise ``max_frames`` frames; both 0 keeps every frame.
    """
    count = window_count(total, video_fps, max_frames, fps)
    if count == 0:
        return []
    edges = [round(i * total / count) for i in range(count + 1)]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _candidates(window: range) -> set[int]:
    """At most MAX_CANDIDATES_PER_WINDOW evenly spread frames of a window to score."""
    if len(window) <= MAX_CANDIDATES_PER_WINDOW:
        return set(window)
    step = len(window) / MAX_CANDIDATES_PER_WINDOW
    return {window.start + int(i * step) for i in range(MAX_CANDIDATES_PER_WINDOW)}


def _openable_path(path: Path) -> str:
    """A path OpenCV's video backends can open: on Windows they take ANSI paths only, so a
    non-ASCII path goes through its 8.3 short form (when the volume has short names)."""
    text = str(path)
    if os.name != "nt" or text.isascii():
        return text
    import ctypes

    buffer = ctypes.create_unicode_buffer(32768)
    length = ctypes.windll.kernel32.GetShortPathNameW(text, buffer, len(buffer))
    return buffer.value if 0 < length < len(buffer) and buffer.value.isascii() else text


def open_video(path: Path) -> cv2.VideoCapture:
    """The one way videos are opened, everywhere (non-ASCII paths on Windows included)."""
    cap = cv2.VideoCapture(_openable_path(path))
    if not cap.isOpened():
        raise InputError(f"cannot open the video '{path.name}' (unsupported codec or damaged file)")
    return cap


def _count_frames(path: Path) -> int:
    """Count by decoding: some containers report no or a wrong frame count."""
    cap = open_video(path)
    try:
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def _iter_frames(cap: cv2.VideoCapture, wanted: set[int], stop: int,
                 cancelled: IsCancelled | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR) for the wanted frames below ``stop``; the others are only grabbed."""
    for index in range(stop):
        if (cancelled is not None and cancelled()) or not cap.grab():
            return
        if index in wanted:
            ok, bgr = cap.retrieve()
            if ok and bgr is not None:
                yield index, bgr


def video_length(path: Path) -> tuple[int, float]:
    """(frame count, frames per second) as the container states them (0 where it does not)."""
    cap = open_video(path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()


def read_video(path: Path, max_frames: int, fps: float, progress: Progress | None = None,
               cancelled: IsCancelled | None = None,
               transform: Transform | None = None) -> FrameSet:
    """The sharpest frame of each sampling window, as RGB, in time order."""
    total, video_fps = video_length(path)
    if total <= 0:
        total = _count_frames(path)
    windows = sampling_windows(total, video_fps, max_frames, fps)
    if not windows:
        raise InputError(f"the video '{path.name}' has no readable frame")
    frames = _pick_sharpest(path, windows, progress, cancelled, transform)
    return FrameSet(frames, [])


def _pick_sharpest(path: Path, windows: list[range], progress: Progress | None,
                   cancelled: IsCancelled | None,
                   transform: Transform | None) -> list[Frame]:
    """One pass over the video; a window's winner is converted (and shrunk) as soon as the
    window ends, so at most one full-size frame per window is held, and only while open."""
    window_of, last_of = {}, {}
    for w, window in enumerate(windows):
        candidates = _candidates(window)
        window_of.update(dict.fromkeys(candidates, w))
        last_of[w] = max(candidates)
    best: dict[int, tuple[float, int, np.ndarray]] = {}
    frames: list[Frame] = []

    def finish(w: int) -> None:
        _, index, bgr = best.pop(w)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames.append(Frame.made(transform(rgb) if transform else rgb, str(path), index))

    cap = open_video(path)
    try:
        for index, bgr in _iter_frames(cap, set(window_of), windows[-1].stop, cancelled):
            w = window_of[index]
            score = sharpness(bgr)
            if w not in best or score > best[w][0]:
                best[w] = (score, index, bgr)
            if index == last_of[w]:
                finish(w)
                if progress is not None:
                    progress(w + 1, len(windows))
    finally:
        cap.release()
    for w in sorted(best):  # windows cut short by the end of the stream
        finish(w)
    return frames


def read_video_keyframes(path: Path, max_frames: int, progress: Progress | None = None,
                         cancelled: IsCancelled | None = None,
                         transform: Transform | None = None,
                         cache_dir: str | None = None) -> FrameSet:
    """Keyframes by motion (``engine.worker.keyframes``, at most ``max_frames``), then a second pass
    that decodes only those. The selection is cached in ``cache_dir`` (shared with the panel's
    count, so a counted video is not analysed twice)."""
    from .keyframes import KeyframeOptions, select_video_keyframes, thin_to_budget

    options = KeyframeOptions()  # no budget here: one cached selection serves every max_frames
    analysed = _analysed_frames(path, options.analysis_fps)
    try:
        selection = select_video_keyframes(
            path, options, cache_dir=cache_dir or None, cancel=cancelled,
            progress=None if progress is None else lambda k: progress(min(k, analysed), analysed))
    except InterruptedError:
        return FrameSet([], [])
    thin_to_budget(selection, max_frames)
    if not selection.kept:
        raise InputError(f"the video '{path.name}' has no readable frame")
    cap = open_video(path)
    try:
        frames = [Frame.made(transform(rgb) if transform else rgb, str(path), index)
                  for index, rgb in ((i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) for i, bgr in
                                     _iter_frames(cap, set(selection.kept),
                                                  selection.kept[-1] + 1, cancelled))]
    finally:
        cap.release()
    if progress is not None:
        progress(analysed, analysed)
    return FrameSet(frames, [])


def _analysed_frames(path: Path, analysis_fps: float) -> int:
    """About how many frames the keyframe analysis looks at (for its progress)."""
    total, video_fps = video_length(path)
    stride = max(1, round(video_fps / analysis_fps)) if video_fps > 0 and analysis_fps > 0 else 1
    return max(1, math.ceil(total / stride))


# --------------------------------------------------------------------------- everything

def read_frames(sources: Sources, max_frames: int = 0, fps: float = 0.0,
                progress: Progress | None = None, cancelled: IsCancelled | None = None,
                transform: Transform | None = None,
                sampling: str = "count", keyframe_cache: str | None = None) -> FrameSet:
    """Decode the sources; InputError when not a single frame can be used.

    Videos: ``sampling`` "motion" keeps keyframes by parallax (at most ``max_frames``); any other
    value the sharpest frame of each window that ``max_frames`` / ``fps`` set.
    """
    if sources.is_video and sampling == "motion":
        found = read_video_keyframes(sources.video, max_frames, progress, cancelled, transform,
                                     keyframe_cache)
    elif sources.is_video:
        found = read_video(sources.video, max_frames, fps, progress, cancelled, transform)
    else:
        found = read_images(sources.images, progress, cancelled, transform)
    if not found.frames and not (cancelled is not None and cancelled()):
        raise InputError(_nothing_usable(sources, found))
    return found


def _nothing_usable(sources: Sources, found: FrameSet) -> str:
    if sources.is_video:
        return f"no frame could be decoded from the video '{sources.video.name}'"
    return (f"none of the {len(found.skipped)} image file(s) could be read "
            f"({_short_list([os.path.basename(s) for s in found.skipped])})")


def skipped_warning(skipped: list[str]) -> str:
    """One warning line for all the files that were skipped."""
    names = [os.path.basename(s) for s in skipped]
    return f"skipped {len(skipped)} unreadable file(s): {_short_list(names, limit=10)}"


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.worker video-info VIDEO``: the video's frame count and rate as one JSON line
    (the panel's frame count, worked out in the worker environment, which has OpenCV)."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.worker video-info VIDEO", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        frames, fps = video_length(path)
        print(json.dumps({"frames": frames if frames > 0 else _count_frames(path), "fps": fps}))
    except InputError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    return 0
