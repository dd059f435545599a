"""Keyframes by motion on a synthetic pan: still stretches, a steady pan and one blurred frame."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engine.worker import keyframes
from engine.worker.keyframes import (
    BLURRED,
    BUDGET,
    DUPLICATE,
    FIRST,
    KEPT_REASONS,
    LAST,
    KeyframeOptions,
    select_keyframes,
    select_video_keyframes,
    sharpness,
)

H, W = 120, 160  # diagonal 200 px: the default 5% motion is 10 px
BLURRED_FRAME = 50


def texture(seed: int = 0) -> np.ndarray:
    """A wide grey texture with corners to track: smoothed noise plus rectangles."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (H, 900)).astype(np.float32), (0, 0), 2.0)
    for _ in range(120):
        x, y = rng.integers(0, 880), rng.integers(0, H - 20)
        cv2.rectangle(tex, (int(x), int(y)), (int(x) + 15, int(y) + 12),
                      float(rng.uniform(0, 255)), -1)
    return tex


def pan_offsets() -> np.ndarray:
    """Still for 20 frames, 2 px a frame for 60, still for 20."""
    speed = np.r_[np.zeros(20), np.full(60, 2.0), np.zeros(20)]
    return np.cumsum(speed)


def pan_frames(seed: int = 0) -> list[np.ndarray]:
    tex, rng = texture(seed), np.random.default_rng(seed + 1)
    frames = []
    for i, x in enumerate(pan_offsets()):
        frame = tex[:, int(x): int(x) + W] + rng.normal(0, 2.0, (H, W))  # sensor noise
        if i == BLURRED_FRAME:
            frame = cv2.GaussianBlur(frame, (0, 0), 2.5)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def test_blurred_frame_is_much_less_sharp_than_its_neighbours():
    frames = pan_frames()
    assert sharpness(frames[BLURRED_FRAME]) < 0.3 * sharpness(frames[BLURRED_FRAME - 1])


def test_keyframes_follow_the_motion_and_skip_stills_and_blur():
    sel = select_keyframes(pan_frames())
    assert sel.frames_analysed == 100 and set(sel.reasons) == set(range(100))
    assert sel.kept[0] == 0 and sel.reasons[0] == FIRST
    assert all(sel.reasons[i] == DUPLICATE for i in range(1, 20))  # standing still adds nothing
    assert sel.reasons[BLURRED_FRAME] == BLURRED
    moving = [k for k in sel.kept if 20 < k <= 80]
    gaps = np.diff(moving)
    assert 9 <= len(moving) <= 14  # 120 px of pan at one keyframe per 10 px
    assert np.all(gaps >= 4) and np.all(gaps <= 7)  # one per ~5 frames, a 6th around the blur
    # the still end adds one frame at most: the pan's last few pixels, kept as "last"
    assert [sel.reasons[k] for k in sel.kept if k > 80] in ([], [LAST])
    assert all(sel.reasons[k] in KEPT_REASONS for k in sel.kept)


def test_a_budget_thins_evenly_and_says_so():
    sel = select_keyframes(pan_frames(), KeyframeOptions(max_keyframes=5))
    assert len(sel.kept) == 5 and sel.kept[0] == 0
    assert sel.counts()[BUDGET] >= 5


def test_cancel_stops_the_analysis():
    calls = []
    with pytest.raises(InterruptedError):
        select_keyframes(pan_frames(), cancel=lambda: len(calls) > 30,
                         progress=lambda n: calls.append(n))
    assert len(calls) == 31


@pytest.fixture(scope="module")
def pan_video(tmp_path_factory):
    """The pan written as a 30 fps MJPG video, three frames per analysed frame."""
    path = tmp_path_factory.mktemp("video") / "pan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    assert writer.isOpened()
    for frame in pan_frames():
        for _ in range(3):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_the_panels_count_reuses_the_runs_selection(pan_video, tmp_path, monkeypatch, capsys):
    """The worker's run (``KeyframeOptions()``) and the panel's count (``keyframes VIDEO --cache
    DIR``) share one cached selection: whichever comes second analyses nothing."""
    cache = tmp_path / "cache"
    sel = select_video_keyframes(pan_video, KeyframeOptions(), cache_dir=cache)
    assert sel.frames_analysed == 100  # 300 frames at 30 fps analysed at 10 fps
    assert all(k % 3 == 0 for k in sel.kept) and 10 <= len(sel.kept) <= 16
    assert len(list(cache.glob("keyframes-*.json"))) == 1

    def not_again(*args, **kwargs):
        raise AssertionError("the cached selection should have been used")

    monkeypatch.setattr(keyframes, "select_keyframes", not_again)
    assert keyframes.main([str(pan_video), "--cache", str(cache)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kept"] == sel.kept and out["count"] == len(sel.kept)
    assert select_video_keyframes(pan_video, cache_dir=cache).reasons == sel.reasons
    with pytest.raises(AssertionError):  # other options are another cache entry
        select_video_keyframes(pan_video, KeyframeOptions(min_motion=0.1), cache_dir=cache)


def test_command_line_prints_the_count(pan_video, capsys):
    assert keyframes.main([str(pan_video), "--max", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 4 and len(out["kept"]) == 4


def test_an_unreadable_video_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        select_video_keyframes(bad)
