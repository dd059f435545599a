"""Pinhole cameras: pixels to rays and points, points to pixels (numpy and the standard library).

The one place that spells out how a view's pixels, its intrinsics ``K`` and its pose meet:

* Axes are OpenCV's (x right, y down, z forward); depth is z, not the distance along the ray.
* A view's pose [R | t] takes world points into its camera frame (DA3's extrinsics are
  world-to-camera).
* Image positions are in pixels, pixel j spanning [j, j + 1): its centre is at j + 0.5, and a
  position u falls on pixel floor(u). DA3's intrinsics follow this: its camera decoder puts the
  principal point at (W/2, H/2) and spreads the field of view over the whole width (fx =
  (W/2) / tan(fov/2)), its ray head samples pixel centres at (j + 0.5) / W. (Its own GLB
  exporter back-projects pixel j at j, half a pixel off.)

Written once for an array namespace ``xp`` (``engine.core.arrays``): numpy, or the torch
device's ``engine.fusion.tsdf_torch.TorchArrays``. Points are three coordinate arrays (x, y, z):
a list, or the rows of a (3, ...) array; the pose transforms of (..., 3) rows say so. The
functions keep the order of operations of the fusion code they replaced: its meshes did not
change by a bit.
"""

from __future__ import annotations

import numpy as np

PIXEL_CENTRE = 0.5  # pixel j spans [j, j + 1)
LENS = ((0, 0), (1, 1), (0, 2), (1, 2))  # where fx, fy, cx, cy sit in K


# --- pixels to rays and points -----------------------------------------------------------------

def lens(K) -> tuple:
    """fx, fy, cx, cy of intrinsics ``K`` (3,3): numbers; of a stack of them (N,3,3): (N,) arrays."""
    return tuple(K[a, b] if K.ndim == 2 else K[..., a, b] for a, b in LENS)


def ray_slope(position, focal, centre):
    """x/z (along the rows: y/z) of the ray through image ``position`` (pixels)."""
    return (position - centre) / focal


def pixel_slope(index, focal, centre, xp=np):
    """x/z (along the rows: y/z) of the ray through the centre of pixel column (row) ``index``,
    computed in float64."""
    return ray_slope(xp.asarray(index, dtype=xp.float64) + PIXEL_CENTRE, focal, centre)


def pixel_ray_factors(lens: tuple, height: int, width: int, xp=np) -> tuple:
    """x/z of the rays through every pixel column (W,) and y/z through every row (H,), float64,
    for ``lens`` = (fx, fy, cx, cy); of N views at once with (N,1) arrays: (N,W) and (N,H). A
    pixel (v, u) at depth d lies at (d * x[u], d * y[v], d) in its camera's frame."""
    fx, fy, cx, cy = lens
    return (pixel_slope(xp.arange(width, dtype=xp.float64), fx, cx, xp),
            pixel_slope(xp.arange(height, dtype=xp.float64), fy, cy, xp))


def camera_points(depth, x_slope, y_slope) -> list:
    """Camera-frame points [x, y, z] at z-depth ``depth`` on the rays of slopes ``x_slope``,
    ``y_slope`` (:func:`pixel_slope`, :func:`pixel_ray_factors`), broadcast against it."""
    return [x_slope * depth, y_slope * depth, depth]


def world_points(depth, x_slope, y_slope, R: np.ndarray, t: np.ndarray, xp=np):
    """(3, ...) world points at z-depth ``depth`` on the rays of slopes ``x_slope``, ``y_slope``
    of a view with pose ``R``, ``t`` (numpy): R^T (depth * ray - t), one world axis at a time,
    in the precision of ``depth`` and the slopes (float32 maps stay float32)."""
    R, centre = R.tolist(), (t @ R).tolist()
    return xp.stack([depth * (x_slope * R[0][k] + y_slope * R[1][k] + R[2][k]) - centre[k]
                     for k in range(3)])


# --- poses ---------------------------------------------------------------------------------------

def transform(R, t, points) -> list:
    """R @ p + t for ``points`` (x, y, z), in their own precision. ``R``, ``t``: a (3,3) and a
    (3,) numpy array (used as Python numbers: float32 points stay float32), or arrays indexed
    ``R[k][j]``, ``t[k]`` that broadcast against the points (a pose per point).

    Written out rather than a (n,3) @ (3,3) product: numpy hands that to OpenBLAS, whose
    threads stall whenever another process holds a core (190k points: 3 ms, 45-70 ms with one
    of two cores busy); the sums take 1 ms either way."""
    if isinstance(R, np.ndarray) and R.ndim == 2:
        R, t = R.tolist(), t.tolist()
    return [points[0] * R[k][0] + points[1] * R[k][1] + points[2] * R[k][2] + t[k]
            for k in range(3)]


def rotated(points: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(…,3) ``points`` turned by ``R`` (R p for each), by ``np.einsum``'s own loops; ``transform``
    does it for points given as x, y, z rows. A ``points @ R.T`` of millions of points goes to
    OpenBLAS, whose threads run at Blender's priority and spin between calls, taking a core from
    an import's other threads (``engine.texture``)."""
    return np.einsum("...j,ij->...i", points, R)


def inverted(matrices: np.ndarray) -> np.ndarray:
    """(...,4,4) inverses of affine ``matrices``: for rigid ones (camera poses; the map into
    Blender's frame) R^T and -R^T t, written out; others (a scaled crop box) by LAPACK. Not
    LAPACK for poses: numpy's ``inv`` of 32 of them took 50 ms, OpenBLAS's threads starting
    and then spinning beside an import's threads (``rotated``)."""
    R, t = matrices[..., :3, :3], matrices[..., :3, 3]
    turned = np.einsum("...ji,...jk->...ik", R, R)
    if not np.allclose(turned, np.eye(3), atol=1e-6) or not np.allclose(matrices[..., 3, :], [0, 0, 0, 1]):
        return np.linalg.inv(matrices)
    out = np.zeros_like(matrices)
    out[..., :3, :3] = np.swapaxes(R, -1, -2)
    out[..., :3, 3] = -np.einsum("...ji,...j->...i", R, t)
    out[..., 3, 3] = 1
    return out


def world_to_camera(points, R, t):
    """(..., 3) world ``points`` in the camera frame of a view with pose ``R`` (3,3), ``t`` (3,):
    R p + t."""
    return points @ R.T + t


def camera_to_world(points, R, t, xp=np):
    """(..., 3) camera-frame ``points`` of a view with pose ``R``, ``t`` in the world:
    R^T (p - t). ``R`` (..., 3, 3) and ``t`` (..., 3) may hold a pose per point."""
    return xp.einsum("...ji,...j->...i", R, points - t)


# --- points to pixels ----------------------------------------------------------------------------

def image_positions(points, lens: tuple) -> tuple:
    """u, v: where camera-frame ``points`` (x, y, z; z not 0) fall in the image, in pixels (on
    pixel floor(u), floor(v)), for ``lens`` = (fx, fy, cx, cy)."""
    x, y, z = points
    fx, fy, cx, cy = lens
    return fx * x / z + cx, fy * y / z + cy


def project(points, R: np.ndarray, t: np.ndarray, lens: tuple, xp=np) -> tuple:
    """u, v and depth z of world ``points`` (n,3) in a view with pose ``R``, ``t`` (numpy) and
    ``lens`` = (fx, fy, cx, cy), in float64 (points on the camera's plane land far out)."""
    x, y, z = transform(R, t, xp.asarray(points, dtype=xp.float64).T)
    u, v = image_positions((x, y, xp.where(xp.abs(z) > 1e-12, z, 1e-12)), lens)
    return u, v, z
