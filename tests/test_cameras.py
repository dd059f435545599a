"""engine.core.cameras on its own: back-projection and projection undo each other, and one
pixel worked out by hand pins the conventions (pixel centres at j + 0.5, poses world-to-camera)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core import cameras

K = np.array([[100.0, 0.0, 32.0], [0.0, 78.0, 24.0], [0.0, 0.0, 1.0]])
# world-to-camera: the camera's x is the world's -y, its y the world's x
TURN = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
SHIFT = np.array([1.0, 2.0, 3.0])


def random_pose(rng) -> tuple[np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q)), rng.normal(size=3)


def test_one_pixel_worked_out_by_hand():
    # pixel (row 4, column 10) at depth 2: its centre (10.5, 4.5) is (10.5 - 32) / 100 and
    # (4.5 - 24) / 78 of the depth off the axis: camera (-0.43, -0.5, 2); world = TURN^T (p - t)
    x, y = cameras.pixel_ray_factors(cameras.lens(K), 48, 64)
    cam = cameras.camera_points(2.0, x[10], y[4])
    np.testing.assert_allclose(cam, [-0.43, -0.5, 2.0], rtol=1e-12)
    world = cameras.camera_to_world(np.array(cam), TURN, SHIFT)
    np.testing.assert_allclose(world, [-2.5, 1.43, -1.0], rtol=1e-12)
    np.testing.assert_allclose(cameras.world_to_camera(world, TURN, SHIFT), cam, rtol=1e-12)
    u, v, z = cameras.project(world[None], TURN, SHIFT, cameras.lens(K))
    np.testing.assert_allclose([u[0], v[0], z[0]], [10.5, 4.5, 2.0], rtol=1e-12)


def test_projecting_back_projected_pixels_lands_on_their_centres():
    rng = np.random.default_rng(0)
    R, t = random_pose(rng)
    h, w = 48, 64
    depth = rng.uniform(0.5, 9.0, (h, w))
    x, y = cameras.pixel_ray_factors(cameras.lens(K), h, w)
    cam = np.stack(cameras.camera_points(depth, x[None, :], y[:, None]), axis=-1)
    world = cameras.camera_to_world(cam, R, t).reshape(-1, 3)
    u, v, z = cameras.project(world, R, t, cameras.lens(K))
    rows, cols = np.mgrid[:h, :w]
    np.testing.assert_allclose(u, cols.ravel() + 0.5, atol=1e-9)
    np.testing.assert_allclose(v, rows.ravel() + 0.5, atol=1e-9)
    np.testing.assert_allclose(z, depth.ravel(), rtol=1e-12)
    assert np.array_equal(np.floor(u), cols.ravel()) and np.array_equal(np.floor(v), rows.ravel())
    # the float32 map of the same pixels, one world axis at a time
    fast = cameras.world_points(depth.astype(np.float32), x[None, :].astype(np.float32),
                                y[:, None].astype(np.float32), R, t)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast.reshape(3, -1).T, world, atol=1e-5)


def test_a_principal_point_in_the_middle_makes_the_rays_symmetric():
    # DA3's cx = W/2 is the middle of pixels [0, W): column j and column W-1-j mirror each other
    x, y = cameras.pixel_ray_factors((100.0, 100.0, 32.0, 24.0), 48, 64)
    np.testing.assert_allclose(x, -x[::-1], atol=1e-15)
    np.testing.assert_allclose(y, -y[::-1], atol=1e-15)
    assert x[31] == pytest.approx(-0.005) and x[32] == pytest.approx(0.005)


def test_image_positions_of_a_continuous_position_undo_its_ray():
    u = np.array([0.0, 3.25, 63.99])
    ray = cameras.ray_slope(u, 100.0, 32.0)
    positions = cameras.image_positions((ray * 4.0, np.zeros(3), np.full(3, 4.0)),
                                        (100.0, 90.0, 32.0, 24.0))
    np.testing.assert_allclose(positions[0], u, atol=1e-12)


def test_many_views_at_once_match_one_at_a_time():
    rng = np.random.default_rng(1)
    Ks = np.stack([K, K * [[1.1], [0.9], [1.0]]])
    fx, fy, cx, cy = (c[:, None] for c in cameras.lens(Ks))
    xs, ys = cameras.pixel_ray_factors((fx, fy, cx, cy), 5, 7)
    assert xs.shape == (2, 7) and ys.shape == (2, 5)
    for i in range(2):
        x, y = cameras.pixel_ray_factors(cameras.lens(Ks[i]), 5, 7)
        assert np.array_equal(xs[i], x) and np.array_equal(ys[i], y)
    poses = [random_pose(rng) for _ in range(4)]
    Rs, ts = np.stack([p[0] for p in poses]), np.stack([p[1] for p in poses])
    points = rng.normal(size=(4, 3))
    each = np.stack([cameras.camera_to_world(p, R, t) for p, (R, t) in zip(points, poses, strict=True)])
    np.testing.assert_allclose(cameras.camera_to_world(points, Rs, ts), each, rtol=1e-12)
    per_point = cameras.transform(np.moveaxis(Rs, 0, -1), ts.T, points.T)
    np.testing.assert_allclose(np.stack(per_point, axis=1),
                               np.stack([cameras.world_to_camera(p, R, t)
                                         for p, (R, t) in zip(points, poses, strict=True)]),
                               rtol=1e-12, atol=1e-15)


def test_inverted_poses_match_lapack_and_scaled_boxes_still_invert():
    """Rigid poses are inverted by transposing (no LAPACK: its threads spin beside an
    import's); a scaled box (a crop object) falls back to the general inverse."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 3, 3)))
    q *= np.sign(np.linalg.det(q))[:, None, None]  # proper rotations
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3, :3], poses[:, :3, 3] = q, rng.normal(size=(5, 3))
    np.testing.assert_allclose(cameras.inverted(poses), np.linalg.inv(poses), atol=1e-12)
    box = np.diag([2.0, 0.5, 3.0, 1.0])
    box[:3, 3] = (1, 2, 3)
    np.testing.assert_allclose(cameras.inverted(box) @ box, np.eye(4), atol=1e-12)
