"""Object mode: the floor or table under the object, found so that it can be cut.

Only a supported plane is cut: the dominant plane facing the cameras, seen by many views, with
almost nothing below it and something on it, reaching beyond what stands on it on every side.
"""

from __future__ import annotations

import math

import numpy as np

from .base import View

# A floor or table is cut only when at least this share of the views see it and at least this
# share of the points stand above it.
FLOOR_VIEWS, FLOOR_OBJECT_SHARE = 0.5, 0.05
# ... and reaches beyond the object on every side: each quarter around it holds this share of
# the plane's points further out than most of the object.
SURROUND_SHARE = 0.02


def find_floor(points: np.ndarray, view_of: np.ndarray, views: list[View],
               iterations: int = 1500, seed: int = 0) -> np.ndarray | None:
    """The supported plane under the object: the dominant plane whose normal is within 35
    degrees of the cameras' mean up vector.

    The plane must have almost no point below it, something above it, and be seen by many
    views (``view_of``: each point's view). Returns the plane (4,), normal up, and how far its
    points stray from it (DA3's floor is not flat: a few % of depth); (None, 0) when no such
    plane holds 15% of the points (nothing under the object): then nothing is cut.
    """
    if len(points) < 50:
        return None, 0.0
    up = np.mean([view.R.T @ np.array([0.0, -1.0, 0.0]) for view in views], axis=0)
    if np.linalg.norm(up) < 0.3:  # cameras of mixed orientation: no notion of up
        return None, 0.0
    up /= np.linalg.norm(up)
    rng = np.random.default_rng(seed)
    tol = 0.02 * float(np.max(np.ptp(points, axis=0)))
    picked = rng.choice(len(points), min(len(points), 20000), replace=False)
    sample, sample_view_of = points[picked], view_of[picked]
    tri = sample[rng.integers(0, len(sample), (iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-12
    normals, tri = normals[ok] / norms[ok, None], tri[ok]
    normals *= np.sign(normals @ up)[:, None]
    ok = normals @ up > math.cos(math.radians(35))
    if not np.any(ok):
        return None, 0.0
    normals, tri = normals[ok], tri[ok]
    offsets = -np.sum(normals * tri[:, 0], axis=1)
    # 300 hypotheses missed the floor of some degraded scenes; scoring 1500 in batches keeps
    # the (points x hypotheses) table small
    support = np.concatenate([floor_support(sample, normals[i:i + 200], offsets[i:i + 200], tol)
                              for i in range(0, len(normals), 200)])
    best = int(np.argmax(support))
    if support[best] < 0.15 * len(sample):
        return None, 0.0
    inliers = np.abs(sample @ normals[best] + offsets[best]) < tol
    plane = refine_plane(sample[inliers], normals[best])
    height = sample @ plane[:3] + plane[3]
    if not supports_object(height, sample_view_of[inliers], len(views), tol):
        return None, 0.0
    if not surrounds(sample, height, plane, tol):
        return None, 0.0
    residual = np.abs(height)
    return plane, float(np.median(residual[residual < tol]))


def supports_object(height: np.ndarray, inlier_views: np.ndarray, num_views: int,
                    tol: float) -> bool:
    """A plane is a floor or table to cut only if many views see it (a plane in a few
    views is a side of the object, or background) and something stands on it."""
    seen_by = len(np.unique(inlier_views)) / num_views
    return seen_by >= FLOOR_VIEWS and np.mean(height > tol) >= FLOOR_OBJECT_SHARE


def surrounds(points: np.ndarray, height: np.ndarray, plane: np.ndarray, tol: float) -> bool:
    """A floor or table reaches out beyond what stands on it on every side; a chair's seat,
    with its back standing on one edge, does not (nor does any plane part of the object).

    In the plane, around the centre of what stands above it: each quarter must hold some of
    the plane's points further out than most of what stands there.
    """
    normal = plane[:3]
    a = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    flat = np.stack([points @ a, points @ b], axis=1)
    above, on = height > tol, np.abs(height) < tol
    centre = np.median(flat[above], axis=0)
    reach = float(np.percentile(np.linalg.norm(flat[above] - centre, axis=1), 75))
    offset = flat[on] - centre
    beyond = np.linalg.norm(offset, axis=1) > reach
    quarter = (np.floor((np.arctan2(offset[:, 1], offset[:, 0]) + np.pi) / (np.pi / 2)) % 4).astype(int)
    counts = np.bincount(quarter[beyond], minlength=4)
    return bool(np.all(counts >= SURROUND_SHARE * np.count_nonzero(on)))


def floor_support(sample: np.ndarray, normals: np.ndarray, offsets: np.ndarray,
                  tol: float) -> np.ndarray:
    """Inliers of each plane hypothesis; 0 for a plane with more than 5% of points under it
    (a floor has almost nothing under it: this rejects the top of a box or a table)."""
    height = sample @ normals.T + offsets
    below = np.mean(height < -tol, axis=0)
    return np.where(below < 0.05, np.count_nonzero(np.abs(height) < tol, axis=0), 0)


def refine_plane(points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Least-squares plane through the inliers, normal kept on the same side."""
    centre = points.mean(axis=0)
    n = np.linalg.svd(points - centre, full_matrices=False)[2][2]
    n = n if n @ normal > 0 else -n
    return np.append(n, -n @ centre)
