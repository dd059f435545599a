"""Views moved sideways until the object's outlines agree (numpy only, no bpy).

Every pose DA3 estimates is off by a little (a fraction of a degree, about a percent of the
scene), which moves what a view sees sideways by a few pixels. On a broad surface the depth
correction of ``engine.fusion.consistency`` hides it (a view's depth bends to meet its
neighbours), but a thin part (a chair's leg) is seen somewhere else by every view, and the
fusion keeps a lumpy fraction of it. Sideways is what point-to-plane agreement on broad
surfaces cannot pin down (a view slides along a seat freely), and what an object's outline
pins down best: every point of an object falls inside its outline in every view. So here, in
object mode, each view's camera is moved in its own image plane (two numbers a view: along its
axis the move trades with its depth scale, which the consistency fit owns) until as few points
of the other views as can be fall outside its outline, and as few of its own outside theirs.
That is rounds of robust Gauss-Newton steps, every view against the others as they stand
(Jacobi, half steps, as in the consistency fit), with the rig's own rigid motion taken out after
each (``without_rigid_motion``): moving or turning every view alike changes nothing between them,
and would move the surface away from the points and cameras that keep DA3's poses.

Measured on bench_fusion's chair under the hard errors (scenes.HARD: 0.5 degrees, 1% of the
scene), three error draws: its legs and slats kept 0.78 / 0.94 / 0.65 -> 0.95 / 0.98 / 0.99,
F@1% 0.924 / 0.939 / 0.899 -> 0.961 / 0.966 / 0.980; with exact depth and those poses 0.60 ->
0.99 of them. A view's outline is its pixels whose depth lands inside the fused region; a
distance map outside it, capped at ``CAP`` pixels, gives each point its distance and the
direction that shortens it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import cameras
from ..core.threads import Workers, spans
from .consistency import in_region

OUTLINE_CYCLES = 2  # see engine.fusion.base.TSDFOptions
POINTS_PER_VIEW = 1000  # samples of each view's object; plenty for two unknowns a view
ROUNDS = 6  # 10 measured alike (the chair, three error draws: F@1% within 0.008)
STEP = 0.5  # Jacobi half steps: both views of a pair move, each half the way
CAP = 12  # pixels: a point further outside an outline than this is another error (a flying pixel)
PARTNERS = 16  # views held against each outline (30 views: 16 of the 29 others)
HUBER = 3.0  # pixels: residuals beyond weigh less, so a few far points do not steer a view


def align_outlines(views: list, region: tuple, threads: int = 1, seed: int = 0) -> dict:
    """Move each of ``views`` (``engine.fusion.base.View``; ``t`` changed in place) in its
    image plane so that the object's outlines agree, ``region`` the fused (low, high) world
    box that holds the object. Returns the mean distance (pixels) of the points that fell
    outside an outline before and after, and the median move (pixels at the object)."""
    rng = np.random.default_rng(seed)
    masks = [object_pixels(view, region) for view in views]
    outlines = [Outline.of(mask) for mask in masks]
    points = [sample_points(view, mask, rng) for view, mask in zip(views, masks, strict=True)]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(points)])
    points = np.concatenate(points)
    across = np.stack([view.R.T[:, :2] for view in views])  # world directions of image x, y
    shift = np.zeros((len(views), 3))  # world move of each view's points (its camera's centre)
    centres = np.stack([-view.R.T @ view.t for view in views])
    before = after = None
    with Workers(threads, "da3-fuse") as workers:
        for _ in range(ROUNDS if len(points) else 0):
            lhs, rhs, after = normal_equations(views, outlines, points + shift[owner], owner,
                                               shift, across, workers)
            before = after if before is None else before
            lhs += np.eye(2) * (1e-6 * np.trace(lhs, axis1=1, axis2=2) + 1e-12)[:, None, None]
            steps = np.einsum("nij,nj->ni", across, -np.linalg.solve(lhs, rhs[..., None])[..., 0])
            shift = without_rigid_motion(shift + STEP * steps, centres, across)
    moves = []
    for view, move in zip(views, shift, strict=True):
        view.t = moved_extrinsics(np.c_[view.R, view.t], move)[:, 3]
        moves.append(pixels_at_object(view, move, region))
    # "after": as the last round found them (one more look would cost a round)
    return {"outline_px_before": before, "outline_px_after": after,
            "median_move_px": float(np.median(moves)) if moves else 0.0}


def moved_extrinsics(extrinsics: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """World-to-camera ``extrinsics`` ((...,3,4) or (...,4,4)) of cameras whose centres moved by
    ``moves`` ((...,3), world): what each view sees moves with it, t' = t - R move."""
    out = np.array(extrinsics, dtype=np.float64)
    out[..., :3, 3] -= np.einsum("...ij,...j->...i", out[..., :3, :3], moves)
    return out


def without_rigid_motion(shift: np.ndarray, centres: np.ndarray, across: np.ndarray) -> np.ndarray:
    """``shift`` (N,3) less the small rigid motion of the whole rig that comes closest to it
    (translation, and turn about the cameras' mean centre), each view's rest kept in its
    image plane (``across``: (N,3,2) world directions of image x, y). Outlines cannot see the
    whole rig move, and the views around an object would drift round it together otherwise
    (moving every view sideways along a ring turns the ring)."""
    arm = centres - centres.mean(axis=0)
    rig = np.zeros((len(shift), 3, 6))  # d shift / d (translation, turn): t + turn x arm
    rig[:, :, :3] = np.eye(3)
    rig[:, :, 3:] = -np.array([[[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]] for a in arm])
    motion = np.linalg.lstsq(rig.reshape(-1, 6), shift.reshape(-1), rcond=None)[0]
    rest = shift - rig @ motion
    return np.einsum("nij,nkj,nk->ni", across, across, rest)


@dataclass
class Outline:
    """A view's distance map outside its object's outline, over the object's bounding box
    grown by ``CAP`` pixels (further out, every pixel is further than ``CAP`` from it)."""

    distance: np.ndarray  # (h,w) float32, 0 inside
    slope: tuple  # d distance / d row, / d column
    top: int
    left: int

    @classmethod
    def of(cls, mask: np.ndarray) -> Outline:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):  # the object is out of this view: no point falls near its outline
            nothing = np.zeros((0, 0), np.float32)
            return cls(nothing, (nothing, nothing), 0, 0)
        top, left = max(rows[0] - CAP, 0), max(cols[0] - CAP, 0)
        crop = mask[top:rows[-1] + CAP + 1, left:cols[-1] + CAP + 1]
        distance = outside_distance(crop)
        slope = np.gradient(distance) if min(crop.shape) > 1 else (distance * 0, distance * 0)
        return cls(distance, slope, int(top), int(left))


def object_pixels(view, region: tuple) -> np.ndarray:
    """(H,W) bool: the pixels of ``view`` whose depth lands inside ``region``: its outline of the
    object (the background lies beyond the region, however confident DA3 was of it)."""
    x, y = cameras.pixel_ray_factors(cameras.lens(view.K), *view.depth.shape)
    world = cameras.world_points(view.depth, x[None, :], y[:, None], view.R, view.t)
    return (view.depth > 0) & in_region(world, region)


def outside_distance(mask: np.ndarray) -> np.ndarray:
    """(H,W) float32 distance (pixels) from each pixel to the nearest one of ``mask``, 0 inside,
    capped at ``CAP + 1``: the distance along its row, then the least over the rows within
    ``CAP`` of sqrt(row distance^2 + rows apart^2) (exact up to the cap)."""
    h, w = mask.shape
    column = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    far = np.float32(CAP + 1)
    left = np.maximum.accumulate(np.where(mask, column, -far), axis=1)
    right = np.minimum.accumulate(np.where(mask, column, w + far)[:, ::-1], axis=1)[:, ::-1]
    along = np.minimum(np.minimum(column - left, right - column), far) ** 2
    squared = along.copy()
    for k in range(1, min(CAP, h - 1) + 1):
        np.minimum(squared[k:], along[:-k] + k * k, out=squared[k:])
        np.minimum(squared[:-k], along[k:] + k * k, out=squared[:-k])
    return np.sqrt(np.minimum(squared, far * far))


def sample_points(view, mask: np.ndarray, rng) -> np.ndarray:
    """(n,3) world points of up to ``POINTS_PER_VIEW`` pixels of ``mask``, drawn at random."""
    v, u = np.nonzero(mask)
    if len(v) > POINTS_PER_VIEW:
        pick = rng.choice(len(v), POINTS_PER_VIEW, replace=False)
        v, u = v[pick], u[pick]
    fx, fy, cx, cy = cameras.lens(view.K)
    depth = view.depth[v, u].astype(np.float64)
    ray = cameras.camera_points(depth, cameras.pixel_slope(u, fx, cx), cameras.pixel_slope(v, fy, cy))
    return cameras.camera_to_world(np.stack(ray, axis=1), view.R, view.t)


def normal_equations(views, outlines, points, owner, shift, across, workers: Workers):
    """(N,2,2) and (N,2): each view's Gauss-Newton system for its move (image x, y), from every
    point that falls outside another view's outline; and the mean distance of those points.
    A point of view k outside view j's outline counts for both: moving k moves the point,
    moving j moves the outline. The ``workers`` take a share of the views j each."""
    count = len(views)

    def system(j: int) -> tuple:
        lhs, rhs = np.zeros((count, 2, 2)), np.zeros((count, 2))
        others = np.isin(owner, partners(j, count))
        r, source, world_slope = outside_of(views[j], outlines[j], points[others] - shift[j],
                                            owner[others])
        weight = 1.0 / np.maximum(1.0, r / HUBER)
        mine = np.einsum("pm,pmc->pc", world_slope, across[source])  # moving the point's view
        theirs = -world_slope @ across[j]  # moving view j
        for a in range(2):
            rhs[:, a] += np.bincount(source, weight * r * mine[:, a], minlength=count)
            rhs[j, a] += np.dot(weight * r, theirs[:, a])
            for b in range(2):
                lhs[:, a, b] += np.bincount(source, weight * mine[:, a] * mine[:, b], minlength=count)
                lhs[j, a, b] += np.dot(weight * theirs[:, a], theirs[:, b])
        return lhs, rhs, float(r.sum()), len(r)

    # summed in the views' order, whichever thread made each: the same moves for any count
    parts = [part for chunk in workers.map(lambda span: [system(j) for j in range(span.start, span.stop)],
                                           spans(count, workers.count)) for part in chunk]
    lhs, rhs, total, n = (sum(column) for column in zip(*parts, strict=True))
    return lhs, rhs, total / max(n, 1)


def partners(j: int, count: int) -> np.ndarray:
    """The views whose points are held against view j's outline: every other one, or
    ``PARTNERS`` of them spread evenly round the sequence (a video's frames in order, a
    photo set in any): each round's work grows with the views, not with their square."""
    if count - 1 <= PARTNERS:
        return np.delete(np.arange(count), j)
    offsets = np.unique(np.round(np.linspace(1, count - 1, PARTNERS)).astype(np.int64))
    return (j + offsets) % count


def outside_of(view, outline: Outline, points, source):
    """The points (world, (n,3)) that fall outside ``view``'s ``outline`` by under ``CAP``
    pixels: their distances, their views (``source``), and d distance / d world position
    ((n,3))."""
    cam = cameras.transform(view.R, view.t, points.T)
    fx, fy, cx, cy = cameras.lens(view.K)
    h, w = outline.distance.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = cameras.image_positions(cam, (fx, fy, cx - outline.left, cy - outline.top))
    seen = (cam[2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    col, row = u[seen].astype(np.int64), v[seen].astype(np.int64)
    r = outline.distance[row, col]
    out = (r > 0) & (r < CAP)
    col, row, r = col[out], row[out], r[out]
    x, y, z = (c[seen][out] for c in cam)
    d_row, d_col = outline.slope[0][row, col], outline.slope[1][row, col]
    # d distance / d camera-frame point, through the projection, then into the world frame
    d_cam = np.stack([d_col * fx / z, d_row * fy / z, -(d_col * fx * x + d_row * fy * y) / z ** 2], 1)
    return r.astype(np.float64), source[seen][out], d_cam @ view.R


def pixels_at_object(view, move: np.ndarray, region: tuple) -> float:
    """How far (pixels) moving ``view``'s points by ``move`` (world) moves them in its image,
    at the distance of the region's centre."""
    centre = cameras.transform(view.R, view.t, (np.asarray(region[0]) + np.asarray(region[1])) / 2)
    across = view.R @ move
    focal = np.asarray(cameras.lens(view.K)[:2], dtype=np.float64)
    return float(np.hypot(*(focal * across[:2])) / max(abs(centre[2]), 1e-12))
