"""Cameras moved sideways until an object's outlines agree (``engine.fusion.outlines``): a ball
seen from a ring of cameras whose poses are off, judged against the true poses."""

from __future__ import annotations

import numpy as np
import pytest

from engine.fusion.base import View
from engine.fusion.outlines import align_outlines, without_rigid_motion

RADIUS, RING, HEIGHT, WIDTH, FOCAL = 0.5, 3.0, 120, 160, 220.0


def look_at(eye: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera R, t of a camera at ``eye`` looking at the origin (OpenCV axes)."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ eye


def ball_view(R: np.ndarray, t: np.ndarray) -> View:
    """The z-depth of a ball of ``RADIUS`` at the origin, ray-cast from the true pose."""
    K = np.array([[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    rays = np.stack([(u - K[0, 2]) / FOCAL, (v - K[1, 2]) / FOCAL, np.ones_like(u)], -1)  # z = 1
    world_rays = rays @ R  # R^T ray
    eye = -R.T @ t
    b = world_rays @ eye
    a = np.sum(world_rays ** 2, -1)
    disc = b ** 2 - a * (eye @ eye - RADIUS ** 2)
    depth = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, 0).astype(np.float32)
    weight = (depth > 0).astype(np.float32)
    return View(depth, weight, weight, None, K, R, t)


def ring_of_views(count: int = 12) -> list[View]:
    views = []
    for angle in np.linspace(0, 2 * np.pi, count, endpoint=False):
        eye = np.array([RING * np.cos(angle), RING * np.sin(angle), 0.8 + 0.4 * np.sin(3 * angle)])
        views.append(ball_view(*look_at(eye)))
    return views


def sideways_errors(views: list[View], truth: list[np.ndarray]) -> np.ndarray:
    """(N,3) camera centres less the true ones, across each view (along its axis the depth
    answers), less the rig's common rigid motion (which outlines cannot see)."""
    centres = np.stack([-v.R.T @ v.t for v in views])
    across = np.stack([v.R.T[:, :2] for v in views])
    return without_rigid_motion(centres - np.stack(truth), np.stack(truth), across)


@pytest.mark.parametrize("count", [12, 24])  # 24: each outline against 16 of the others
def test_misplaced_cameras_come_back_to_where_the_outlines_agree(count):
    views = ring_of_views(count)
    truth = [-v.R.T @ v.t for v in views]
    rng = np.random.default_rng(1)
    for view in views[1:]:  # the depth stays as the true camera saw it: the pose is off sideways
        # (along its axis a move trades with the depth's scale, engine.fusion.consistency's part)
        view.t = view.t - np.array([*rng.normal(0, 0.02, 2), 0.0])  # 2 cm: ~1.5 px at the ball
    before = np.linalg.norm(sideways_errors(views, truth), axis=1)
    report = align_outlines(views, (np.full(3, -0.8), np.full(3, 0.8)))
    after = np.linalg.norm(sideways_errors(views, truth), axis=1)
    print(f"sideways error (m): {before.mean():.4f} -> {after.mean():.4f}; {report}")
    assert after.mean() < 0.3 * before.mean(), (before, after)
    assert report["outline_px_after"] < report["outline_px_before"]
    assert 0.5 < report["median_move_px"] < 5


def test_the_moves_are_the_same_for_any_number_of_threads_and_none_without_an_object():
    moved = []
    for threads in (1, 2, 3):
        views = ring_of_views(8)
        for i, view in enumerate(views):
            view.t = view.t + 0.01 * np.array([np.sin(i), np.cos(i), 0.0])
        align_outlines(views, (np.full(3, -0.8), np.full(3, 0.8)), threads=threads)
        moved.append(np.stack([v.t for v in views]))
    assert np.array_equal(moved[0], moved[1]) and np.array_equal(moved[0], moved[2])
    views = ring_of_views(6)
    views[2].depth[:] = 0  # a view that saw nothing of the object: it stays, the others align
    views[2].t = views[2].t + 0.01
    given = views[2].t.copy()
    align_outlines(views, (np.full(3, -0.8), np.full(3, 0.8)))
    assert np.array_equal(views[2].t, given) or np.abs(views[2].t - given).max() < 0.005
    views = ring_of_views(4)
    given = [v.t.copy() for v in views]
    report = align_outlines(views, (np.full(3, 5.0), np.full(3, 6.0)))  # the ball is not there
    assert all(np.array_equal(v.t, t) for v, t in zip(views, given, strict=True))
    assert report["outline_px_before"] is None
