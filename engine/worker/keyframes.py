"""Keyframes of a video by motion, not by the clock (numpy + OpenCV).

A fixed frame rate wastes views on a camera standing still and starves a fast pan. Here a frame is
kept once the image has moved enough since the last kept one: the median optical flow of corner
features (Lucas-Kanade) relative to the image diagonal. Motion-blurred frames (their variance of
the Laplacian well below their neighbours') and near-duplicates are dropped; every decision comes
with a reason that the worker can log and the panel can show.

Everything runs on small grey copies (``analysis_size`` long side) of at most ``analysis_fps``
frames per second, so counting the keyframes of a video before a run is cheap, and the answer is
cached on disk keyed by the file's path, size, modification time and the options.
cv2 is imported inside the functions: importing this module needs numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# reasons, as logged and shown
FIRST, MOTION, LOST, GAP, LAST = "first", "motion", "tracking lost", "max gap", "last"
BLURRED, DUPLICATE, SMALL, BUDGET = "blurred", "duplicate", "too little motion", "over budget"
KEPT_REASONS = (FIRST, MOTION, LOST, GAP, LAST)


@dataclass(frozen=True)
class KeyframeOptions:
    """What makes a keyframe. Motion is the median flow since the last keyframe / image diagonal."""

    min_motion: float = 0.05  # keep a frame once the image moved this much (5% of the diagonal)
    duplicate_motion: float = 0.003  # below this a frame adds nothing at all
    max_gap: int = 0  # keep at least every max_gap-th analysed frame (0: no limit)
    blur_ratio: float = 0.6  # blurred: sharpness below this share of the neighbours' median
    blur_window: int = 9  # analysed frames the blur test compares with (centred)
    min_tracked: float = 0.3  # fewer features tracked than this share: the view changed entirely
    max_keyframes: int = 0  # thin evenly to at most this many (0: no limit)
    analysis_size: int = 256  # long side of the grey copies
    analysis_fps: float = 10.0  # videos: analyse at most this many frames per second


@dataclass
class KeyframeSelection:
    kept: list[int]  # frame indices, ascending
    reasons: dict[int, str] = field(default_factory=dict)  # every analysed frame -> why
    frames_analysed: int = 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason in self.reasons.values():
            out[reason] = out.get(reason, 0) + 1
        return out


# --- measures ----------------------------------------------------------------------------------

def analysis_gray(frame: np.ndarray, size: int) -> np.ndarray:
    """A small grey copy (long side ``size``) of an RGB/BGR or grey uint8 frame."""
    import cv2

    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    scale = size / max(gray.shape)
    if scale < 1:
        dsize = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, dsize, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for blur."""
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


class MotionTracker:
    """Corner features of the last keyframe, followed into later frames with pyramidal LK."""

    def __init__(self, max_features: int = 300):
        self.max_features = max_features
        self.key: np.ndarray | None = None
        self.points: np.ndarray | None = None

    def set_key(self, gray: np.ndarray) -> None:
        import cv2

        self.key = gray
        min_distance = max(3, min(gray.shape) // 40)
        self.points = cv2.goodFeaturesToTrack(gray, self.max_features, 0.01, min_distance)

    def motion(self, gray: np.ndarray) -> tuple[float, float]:
        """(median flow / diagonal, share of features tracked) from the keyframe to ``gray``.

        A keyframe without features (a blank wall) falls back to the mean grey-level change,
        which still tells a duplicate from a changed view.
        """
        import cv2

        diagonal = float(np.hypot(*gray.shape))
        if self.points is None or len(self.points) < 8:
            change = float(np.mean(cv2.absdiff(self.key, gray))) / 255.0
            return change, 1.0
        moved, status, _ = cv2.calcOpticalFlowPyrLK(self.key, gray, self.points, None,
                                                    winSize=(21, 21), maxLevel=3)
        ok = status.ravel() == 1
        if not ok.any():
            return np.inf, 0.0
        flow = np.linalg.norm((moved - self.points).reshape(-1, 2)[ok], axis=1)
        return float(np.median(flow)) / diagonal, float(ok.mean())


# --- selection ---------------------------------------------------------------------------------

class _Selector:
    """The decisions, frame by frame, with the blur test looking half a window ahead."""

    def __init__(self, options: KeyframeOptions):
        self.o = options
        self.tracker = MotionTracker()
        self.result = KeyframeSelection([])
        self.last_kept: int | None = None  # position among analysed frames
        self.position = 0  # position of the frame being decided
        self.pending_last: tuple[int, float] | None = None  # (index, motion) of a dropped tail

    def decide(self, index: int, gray: np.ndarray, blurred: bool) -> None:
        o = self.o
        if blurred:
            return self._drop(index, BLURRED)
        if self.last_kept is None:
            return self._keep(index, gray, FIRST)
        motion, tracked = self.tracker.motion(gray)
        gap = self.position - self.last_kept
        if tracked < o.min_tracked:
            self._keep(index, gray, LOST)
        elif motion >= o.min_motion:
            self._keep(index, gray, MOTION)
        elif o.max_gap and gap >= o.max_gap and motion >= o.duplicate_motion:
            self._keep(index, gray, GAP)
        else:
            self._drop(index, DUPLICATE if motion < o.duplicate_motion else SMALL)
            if motion >= o.min_motion / 2:
                self.pending_last = (index, motion)

    def _keep(self, index, gray, reason) -> None:
        self.result.kept.append(index)
        self.result.reasons[index] = reason
        self.tracker.set_key(gray)
        self.last_kept = self.position
        self.pending_last = None

    def _drop(self, index, reason) -> None:
        self.result.reasons[index] = reason

    def finish(self) -> KeyframeSelection:
        """The end of the video counts if the camera moved half a step since the last keyframe."""
        if self.pending_last is not None:
            index = self.pending_last[0]
            self.result.kept.append(index)
            self.result.reasons[index] = LAST
        thin_to_budget(self.result, self.o.max_keyframes)
        return self.result


def thin_to_budget(selection: KeyframeSelection, budget: int) -> None:
    """Keep at most ``budget`` keyframes, evenly spread over the kept ones (first and last stay)."""
    if budget <= 0 or len(selection.kept) <= budget:
        return
    picks = set(np.round(np.linspace(0, len(selection.kept) - 1, budget)).astype(int).tolist())
    for k, index in enumerate(selection.kept):
        if k not in picks:
            selection.reasons[index] = BUDGET
    selection.kept = [index for k, index in enumerate(selection.kept) if k in picks]


def select_keyframes(frames: Iterable, options: KeyframeOptions | None = None,
                     cancel: Callable[[], bool] | None = None,
                     progress: Callable[[int], None] | None = None) -> KeyframeSelection:
    """Pick keyframes from a stream of frames.

    Parameters
    ----------
    frames : frames (H,W,3 BGR/RGB or H,W grey uint8), or ``(index, frame)`` pairs when the stream
        skips frames (a video analysed at a lower rate). Only ``blur_window / 2`` frames are held.
    options : the thresholds; defaults suit hand-held and drone video.
    cancel : checked every frame; True raises ``InterruptedError``.
    progress : ``progress(frames analysed)`` every frame.

    Returns
    -------
    KeyframeSelection : kept indices and a reason for every analysed frame.
    """
    o = options or KeyframeOptions()
    selector = _Selector(o)
    half = max(0, o.blur_window // 2)
    sharp: list[float] = []  # one float per analysed frame: cheap even for long videos
    pending: deque = deque()  # (position, index, grey) waiting for half a window of look-ahead
    for position, (index, frame) in enumerate(_indexed(frames)):
        if cancel is not None and cancel():
            raise InterruptedError("cancelled")
        gray = analysis_gray(frame, o.analysis_size)
        sharp.append(sharpness(gray))
        pending.append((position, index, gray))
        while pending and pending[0][0] + half <= position:
            _decide(selector, *pending.popleft(), sharp, half)
        selector.result.frames_analysed = position + 1
        if progress is not None:
            progress(position + 1)
    while pending:
        _decide(selector, *pending.popleft(), sharp, half)
    return selector.finish()


def _indexed(frames: Iterable) -> Iterator[tuple[int, np.ndarray]]:
    for i, item in enumerate(frames):
        yield item if isinstance(item, tuple) else (i, item)


def _decide(selector: _Selector, position: int, index: int, gray: np.ndarray,
            sharp: list[float], half: int) -> None:
    """Blurred means: much less sharp than the median of the frames around it."""
    neighbours = float(np.median(sharp[max(0, position - half): position + half + 1]))
    selector.position = position
    selector.decide(index, gray, sharp[position] < selector.o.blur_ratio * neighbours)


# --- videos ------------------------------------------------------------------------------------

def video_frames(path: str | os.PathLike, analysis_fps: float = 10.0
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, BGR frame)`` of a video, at most ``analysis_fps`` frames per second.

    Skipped frames are only grabbed (no colour conversion), which is most of the decoding cost
    that can be avoided.
    """
    import cv2

    from .inputs import open_video

    cap = open_video(Path(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        stride = max(1, round(fps / analysis_fps)) if fps > 0 and analysis_fps > 0 else 1
        index = 0
        while cap.grab():
            if index % stride == 0:
                ok, frame = cap.retrieve()
                if ok:
                    yield index, frame
            index += 1
    finally:
        cap.release()


def select_video_keyframes(path: str | os.PathLike, options: KeyframeOptions | None = None, *,
                           cache_dir: str | os.PathLike | None = None,
                           cancel: Callable[[], bool] | None = None,
                           progress: Callable[[int], None] | None = None) -> KeyframeSelection:
    """Keyframes of the video at ``path``; read from / written to ``cache_dir`` when given."""
    o = options or KeyframeOptions()
    cached = _cache_file(path, o, cache_dir)
    if cached is not None and cached.is_file():
        data = json.loads(cached.read_text(encoding="utf-8"))
        return KeyframeSelection(data["kept"], {int(k): v for k, v in data["reasons"].items()},
                                 data["frames_analysed"])
    selection = select_keyframes(video_frames(path, o.analysis_fps), o, cancel, progress)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".partial")
        tmp.write_text(json.dumps(asdict(selection)), encoding="utf-8")
        os.replace(tmp, cached)
    return selection


def _cache_file(path, options: KeyframeOptions, cache_dir) -> Path | None:
    if cache_dir is None:
        return None
    stat = Path(path).stat()
    key = json.dumps([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns,
                      asdict(options)], sort_keys=True)
    return Path(cache_dir) / f"keyframes-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.worker keyframes VIDEO [--cache DIR] [--max N]``: prints the selection as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.worker keyframes")
    parser.add_argument("video")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--max", type=int, default=0, help="at most this many keyframes")
    parser.add_argument("--min-motion", type=float, default=KeyframeOptions.min_motion)
    args = parser.parse_args(argv)
    options = KeyframeOptions(min_motion=args.min_motion, max_keyframes=args.max)
    sel = select_video_keyframes(args.video, options, cache_dir=args.cache)
    print(json.dumps({"count": len(sel.kept), "kept": sel.kept, "reasons": sel.counts(),
                      "frames_analysed": sel.frames_analysed}))
    return 0
