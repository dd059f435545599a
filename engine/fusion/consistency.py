"""Views that agree before they are fused (numpy only, no bpy).

DA3 estimates each view's depth on its own, without a 3D consistency check: every depth map
carries its own smooth error (a few percent of the depth, bending and tilting the view) and
every pose a small error. Fused as they are, the views stand a little apart: a grainy surface,
doubled walls, holes where they cancel. Here each view's depth is reprojected into the views
that overlap it, and per view a smooth correction of its depth (a scale field interpolated
from 4x4 control points over the image) is fitted so that the views agree: rounds of robust,
confidence-weighted point-to-plane least squares, every view against the others as they stand
(Jacobi, half steps, so that two views never swap places). Cameras are not moved: agreement alone does not
pin them down. Fitting their positions moved them 2.6x further from the truth while the views
agreed better (a view sliding along its axis trades against its depth scale), and turning
them let views of a thin part slide past each other (a chair's legs: 43% of their surface
kept without the fit, 12% with turns alone, 40% with the depth correction alone); in object
mode ``engine.fusion.outlines`` moves them sideways instead, which outlines do pin down. Then every
pixel is checked against the corrected neighbours: one that lies where other views see
through (a flying pixel) and that no view confirms loses its surface vote; the others keep
their weight.

The views' disagreement (median distance between a view's surface and its neighbours',
relative to depth) is reported before and after.

Every step is written once for an array namespace ``xp`` (``engine.core.arrays``): numpy here and in
Blender, ``engine.fusion.tsdf_torch.TorchArrays`` on the worker's GPU. The cameras and the small
per-view decisions (which pixels to sample, which views are neighbours) stay on the host. Points
are looked up in ``views_at_once`` views per step: one on numpy, where each view that confirms
a pixel spares the next views' look-ups, several on a GPU, where a step costs its launches
more than its arithmetic (the answers are the same either way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import cameras
from ..core.arrays import solve_positive_definite, to_numpy
from ..core.threads import Workers

# The depth correction: a multiplier at GRID x GRID control points over the image,
# interpolated bilinearly: local enough that a floor filling most of a view does not decide the
# correction of the object in its middle, smooth enough to be a low-order correction. On the
# scenes with DA3-like errors it leaves the views up to 25% closer than a quadratic over the
# image, with the same F-scores.
GRID = 4
# Samples per view for the fit: plenty for its 16 unknowns.
SAMPLES_PER_VIEW = 1000
NEIGHBOURS = 6
ROUNDS = 8
STEP = 0.5  # Jacobi half steps: both views of a pair move, each half the way
# A reprojected point further than this from the neighbour's surface (relative to depth) is no
# correspondence: occlusion, another surface, or a view that does not overlap there.
MATCH_TOLERANCE = 0.06
# Pixels: confirmed by another view within this many robust sigmas of the residual, and
# contradicted where it lies in front of what this many neighbours see, beyond that band.
CONFIRM_SIGMAS, CONTRADICTIONS = 3.0, 2
MIN_SIGMA = 0.004  # DA3's pixel noise is about half a percent of the depth
# The fit stops early once no view's correction moves by more than this (a quarter of that
# noise): views that agree already (exact depth: steps of 1e-7 to 5e-4) spend one or two
# rounds, not eight; with DA3-like errors every round still moves some view by 0.6-16%
# (bench_fusion's seven scenes, milder and hard errors).
CONVERGED = MIN_SIGMA / 4
# Only pixels at least this sure of themselves steer the fit (a far background of low
# confidence is as inconsistent between views as DA3 is unsure of it).
FIT_WEIGHT = 0.5
# What a correction is expected to be (DA3's smooth depth error is a few percent): a prior
# that keeps what the overlap cannot pin down where it was.
PRIOR_SCALE = 0.05


@dataclass
class Stack:
    """Every view and its depth correction so far (all views share one image size). The
    corrected depth is evaluated where the fit looks (:meth:`depth_at`), and as whole maps
    once the fit is done (:func:`corrected_depth`). The cameras stay numpy arrays on the host
    (their numbers are read one view at a time); the maps and the fit are ``xp`` arrays."""

    K: np.ndarray  # (N,3,3)
    R: np.ndarray  # (N,3,3) world-to-camera rotations
    t: np.ndarray  # (N,3)
    raw: Any  # (N,H,W) float32 depth as DA3 gave it
    weight: Any  # (N,H,W) float32 fusion weights
    scale: Any  # (N,G*G) depth multiplier at the control points; 1 is no change
    rows: Any  # (H,G) weights of the control rows at every pixel row (grid_axis)
    cols: Any  # (W,G) and of the control columns at every pixel column
    xp: Any = np  # the array namespace (engine.core.arrays)
    views_at_once: int = 1  # how many views a look-up step sees points in
    lenses: Any = field(init=False)  # (4,N) fx, fy, cx, cy of every view, for look-ups by element
    poses: Any = field(init=False)  # (3,4,N) [R | t] of every view, for look-ups by element

    def __post_init__(self):
        self.lenses = self.xp.asarray(np.stack(cameras.lens(self.K)))
        poses = np.concatenate([self.R, self.t[:, :, None]], axis=2)
        self.poses = self.xp.asarray(np.ascontiguousarray(poses.transpose(1, 2, 0)))

    @classmethod
    def of(cls, views: list, xp=np, views_at_once: int = 1) -> Stack:
        raw = xp.asarray(np.stack([v.depth for v in views]), dtype=xp.float32)
        _, h, w = raw.shape
        return cls(np.stack([v.K for v in views]).astype(np.float64),
                   np.stack([v.R for v in views]).astype(np.float64),
                   np.stack([v.t for v in views]).astype(np.float64), raw,
                   xp.asarray(np.stack([v.weight for v in views]), dtype=xp.float32),
                   xp.ones((len(views), GRID * GRID)),
                   xp.asarray(grid_axis(np.arange(h), h)), xp.asarray(grid_axis(np.arange(w), w)),
                   xp, views_at_once)

    def lens(self, view, dtype=None) -> tuple:
        """fx, fy, cx, cy of ``view``: plain numbers for one view (they keep float32 arrays in
        float32), else one per element (four numbers gathered, not whole 3x3 matrices), in
        ``dtype`` when given (float32 ones keep float32 points in float32 too)."""
        if np.ndim(view) == 0:
            return tuple(float(c) for c in cameras.lens(self.K[view]))
        lenses = self.lenses if dtype is None else self.xp.asarray(self.lenses, dtype=dtype)
        return tuple(per_view[view] for per_view in lenses)

    def rays(self, view, v, u):
        """(3,n) camera-frame rays (z = 1) through the centres of pixels (``view``, ``v``,
        ``u``)."""
        xp = self.xp
        fx, fy, cx, cy = self.lens(view)
        return xp.stack([cameras.pixel_slope(u, fx, cx, xp), cameras.pixel_slope(v, fy, cy, xp),
                         xp.ones(len(u))])

    def basis(self, v, u):
        """(n, G*G) bilinear weights of the control points at pixels (``v``, ``u``)."""
        return (self.rows[v, :, None] * self.cols[u, None, :]).reshape(len(v), -1)

    def depth_at(self, seen: LookUp):
        """The corrected depth at the pixels ``seen``: the scale field of each view along the
        pixel's row first (N*H,G), then across to its column."""
        xp = self.xp
        along_rows = xp.einsum("hk,nkl->nhl", self.rows, self.scale.reshape(-1, GRID, GRID))
        at_row = along_rows.reshape(-1, GRID)[seen.flat // self.raw.shape[2]]
        return self.raw.reshape(-1)[seen.flat] * xp.einsum("ml,ml->m", at_row, self.cols[seen.u])


@dataclass
class Samples:
    """Sampled pixels of every view, flat: which view, where, and their depth basis (``xp``
    arrays)."""

    view: Any  # (M,) view index
    ray: Any  # (M,3) camera-frame direction with z = 1
    raw: Any  # (M,) raw depth
    basis: Any  # (M,G*G) bilinear weights of the control points at the pixel
    weight: Any  # (M,)
    starts: list  # view i's samples are rows starts[i]:starts[i + 1] (host integers)

    def depth(self, stack: Stack):
        return self.raw * stack.xp.einsum("mk,mk->m", self.basis, stack.scale[self.view])

    def world(self, stack: Stack):
        xp = stack.xp
        return cameras.camera_to_world(self.ray * self.depth(stack)[:, None], xp.asarray(stack.R)[self.view],
                                       xp.asarray(stack.t)[self.view], xp)


@dataclass
class Pairs:
    """Each sample of a view, once per neighbour of that view, sorted by view, with its ray in
    the neighbour's camera frame: at depth d the sample lies at origin + d * direction there
    (the poses stay, so a round's look-ups need no rotation)."""

    sample: Any  # (P,) index into Samples
    other: Any  # (P,) the neighbour
    neighbours: list  # each view's neighbours (numpy), the one that sees most of it first
    origin: Any  # (3,P) the sample's camera centre in the neighbour's frame
    direction: Any  # (3,P) the sample's ray (z = 1 in its own view) in that frame
    view_ends: np.ndarray  # (N+1,) view i's pairs are rows view_ends[i]:view_ends[i + 1]

    def split(self, count: int) -> list[Pairs]:
        """At most ``count`` parts of about as many rows, each of whole views."""
        if count <= 1 or not self.view_ends[-1]:  # one part, or nothing to share (one view)
            return [self]
        targets = self.view_ends[-1] * np.arange(1, count) / count
        cuts = self.view_ends[np.searchsorted(self.view_ends, targets)]
        bounds = np.unique(np.concatenate([[0], cuts, [self.view_ends[-1]]])).tolist()
        return [Pairs(self.sample[a:b], self.other[a:b], self.neighbours, self.origin[:, a:b],
                      self.direction[:, a:b], np.clip(self.view_ends, a, b) - a)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def make_consistent(views: list, region: tuple | None = None, threads: int = 1, seed: int = 0,
                    xp=np, views_at_once: int = 1, confirm: bool = True) -> dict:
    """Correct ``views`` (``engine.fusion.base.View``, changed in place: depth, weight) so that
    they agree where they are fused (``region``: world (low, high) corners); returns the
    report (median and 90th percentile of the disagreement before and after, relative to
    depth; the robust sigma after, never under DA3's noise floor ``MIN_SIGMA``; the share of
    voting pixels another view confirms; and the rounds of the fit it took). ``xp``: the array
    namespace the work is done in (``engine.core.arrays``; the views stay numpy arrays);
    ``views_at_once``: how many views one look-up step sees points in; ``threads``: numpy
    threads every step shares its views (or pairs of views) among (neither changes the
    answers); without ``confirm`` no pixel is silenced (a fit whose weights are put back)."""
    stack = Stack.of(views, xp, views_at_once)
    with Workers(threads, "da3-fuse") as workers:
        samples = sample_views(stack, np.random.default_rng(seed), region, workers)
        pairs = pair_up(stack, samples, pick_neighbours(stack, samples, workers))
        before = disagreement(stack, samples, pairs, workers)
        sigma = before["sigma"]
        rounds = 0
        while rounds < ROUNDS:
            steps, sigma = solve_views(stack, samples, pairs, sigma, workers)
            stack.scale += STEP * steps
            rounds += 1
            if not bool(xp.any(xp.abs(steps) >= CONVERGED)):
                break
        after = disagreement(stack, samples, pairs, workers)
        depth = corrected_depth(stack)
        confirmed = confirm_pixels(stack, depth, pairs, after["sigma"], region, workers) if confirm else None
    depth, weight = to_numpy(depth), to_numpy(stack.weight)
    for i, view in enumerate(views):
        view.depth, view.weight = depth[i], weight[i]
    return {"disagreement_before": before["median"], "disagreement_after": after["median"],
            "disagreement_p90_before": before["p90"], "disagreement_p90_after": after["p90"],
            "sigma_after": after["sigma"], "confirmed_share": confirmed, "rounds": rounds}


# --------------------------------------------------------------------------------------------
# geometry of the stack


def world_map(stack: Stack, i: int, depth):
    """(3,H,W) float32 world points of every pixel of view i at ``depth`` (H,W) (float32:
    millions of pixels, and a millionth of the depth is far below the views' disagreement)."""
    xp = stack.xp
    x, y = cameras.pixel_ray_factors(stack.lens(i), *depth.shape, xp)
    x, y = (xp.asarray(a, dtype=xp.float32) for a in (x, y))
    return cameras.world_points(depth, x[None, :], y[:, None], stack.R[i], stack.t[i], xp)


def in_region(points, region: tuple, xp=np):
    """Which of ``points`` ((3, ...) coordinates) lie inside ``region`` (world (low, high)
    corners)."""
    low, high = region
    inside = xp.ones(tuple(points.shape[1:]), dtype=bool)
    for k in range(3):
        inside &= (points[k] >= low[k]) & (points[k] <= high[k])
    return inside


def grid_axis(x: np.ndarray, size: int) -> np.ndarray:
    """(n, GRID) weights of the control columns (or rows) at pixel positions ``x``: linear
    between the two nearest, the outer ones held flat to the image's border."""
    t = np.clip((np.asarray(x, np.float64) + 0.5) / size * (GRID - 1), 0, GRID - 1 - 1e-9)
    low = np.floor(t).astype(np.int64)
    w = np.zeros((len(t), GRID))
    w[np.arange(len(t)), low] = 1 - (t - low)
    w[np.arange(len(t)), low + 1] = t - low
    return w


def corrected_depth(stack: Stack):
    """(N,H,W) float32 every view's depth as corrected."""
    xp = stack.xp
    depth = xp.copy(stack.raw)
    cols = xp.asarray(stack.cols, dtype=xp.float32)
    for i in np.flatnonzero(to_numpy(xp.any(stack.scale != 1, axis=1))):
        depth[i] *= scale_field(stack.rows, cols, stack.scale[i], xp)
    return depth


def scale_field(rows, cols, scale, xp=np):
    """(H,W) float32 depth multiplier interpolated from the control points ``scale`` (``rows``,
    ``cols``: :func:`grid_axis` of every row and column). A sum of GRID outer products: as
    one (H,G) @ (G,W) product OpenBLAS's threads stalled it to 15 ms on a busy machine."""
    along_rows = xp.asarray(rows @ scale.reshape(GRID, GRID), dtype=xp.float32)
    return sum(along_rows[:, k, None] * cols[None, :, k] for k in range(GRID))


def normals_at(stack: Stack, view, v, u):
    """(3,n) camera-frame unit normals of the raw depth at pixels (``view``, ``v``, ``u``),
    facing the camera: the cross product of central differences along the row and down the
    column (zero on the image's border). Only where the fit looks (50k pixels a round on the
    room): whole maps for its 30 views of 504x378 took 0.4 s to 1 s."""
    xp = stack.xp
    _, h, w = stack.raw.shape
    raw = stack.raw.reshape(-1)
    fx, fy, cx, cy = stack.lens(view)
    # each neighbour's column (row) and its ray slope once; a pixel's point is
    # [x_slope * d, y_slope * d, d]: index 0 the one before, 1 the pixel's own, 2 the one after
    cols = (xp.maximum(u - 1, 0), u, xp.minimum(u + 1, w - 1))
    rows = (xp.maximum(v - 1, 0), v, xp.minimum(v + 1, h - 1))
    x_slope = [cameras.pixel_slope(col, fx, cx, xp) for col in cols]
    y_slope = [cameras.pixel_slope(row, fy, cy, xp) for row in rows]
    row_starts = [(view * h + row) * w for row in rows]

    def point(row: int, col: int) -> list:
        d = xp.asarray(raw[row_starts[row] + cols[col]], dtype=xp.float64)
        return cameras.camera_points(d, x_slope[col], y_slope[row])

    def difference(a: list, b: list, inside) -> list:  # zero on the border
        return [(p - q) * inside for p, q in zip(a, b, strict=True)]

    along = difference(point(1, 2), point(1, 0), (u > 0) & (u < w - 1))
    down = difference(point(2, 1), point(0, 1), (v > 0) & (v < h - 1))
    n = xp.stack([along[1] * down[2] - along[2] * down[1], along[2] * down[0] - along[0] * down[2],
                  along[0] * down[1] - along[1] * down[0]])
    n /= xp.maximum(xp.sqrt(xp.einsum("im,im->m", n, n)), 1e-12)
    centre = xp.stack(point(1, 1))
    return n * -xp.sign(xp.einsum("im,im->m", n, centre) + 1e-30)  # towards the camera


@dataclass
class LookUp:
    """Where camera-frame points fall in their view."""

    u: Any  # pixel column (0 outside the frame)
    v: Any  # pixel row (0 outside the frame)
    z: Any  # the points' depth in the view
    flat: Any  # the pixel's index into (N,H,W) maps, flattened
    inside: Any  # the point is in front of the view and inside its frame


def look_up(stack: Stack, cam, view) -> LookUp:
    """Where ``cam`` (three coordinate arrays of points in the frame of ``view``: an array of
    view indices that broadcasts against them) falls."""
    xp = stack.xp
    z = cam[2]
    _, h, w = stack.raw.shape
    with xp.errstate(divide="ignore", invalid="ignore"):
        u, v = (xp.floor(a) for a in cameras.image_positions(cam, stack.lens(view, z.dtype)))
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u = xp.asarray(xp.where(inside, u, 0), dtype=xp.int64)
    v = xp.asarray(xp.where(inside, v, 0), dtype=xp.int64)
    return LookUp(u, v, z, (view * h + v) * w + u, inside)


@dataclass
class Votes:
    """The depth each pixel votes for a surface at: its ``depth`` where it is ``voting``, none
    (0) elsewhere, read pixel by pixel (a map of it would be made whole, a float per pixel:
    0.23 GB for 300 views of 504x378, faulted in at ~245 MB/s on the 2-core VM)."""

    depth: Any  # (N*H*W,) the views' depth, flattened
    voting: Any  # (N*H*W,) bool: the pixel's weight was above 0 when the votes were taken

    @classmethod
    def of(cls, depth, weight) -> Votes:
        """The votes of ``depth`` (N,H,W) as ``weight`` (N,H,W) stands now (later changes to it
        are not seen)."""
        return cls(depth.reshape(-1), (weight > 0).reshape(-1))

    def at(self, flat, inside, xp=np):
        """The depth voted for at the pixels ``flat`` (indices into (N*H*W,)); 0 where none is,
        or where not ``inside``."""
        return xp.where(inside & self.voting[flat], self.depth[flat], 0)


def seen_depth(stack: Stack, votes: Votes, points, views: np.ndarray):
    """The depth of world ``points`` (three coordinate arrays of n points) in each of ``views``
    (host indices), and the depth each votes for at the pixel they fall on (0 where no pixel
    of the view votes for them): (len(views), n) arrays, in the points' precision."""
    xp = stack.xp
    rows = xp.asarray(np.asarray(views, np.int64)[:, None])
    pose = xp.asarray(stack.poses[:, :, rows], dtype=points.dtype)  # (3,4,g,1): [R | t] of each row
    cam = cameras.transform(pose[:, :3], pose[:, 3], points)
    seen = look_up(stack, cam, rows)
    there = xp.asarray(votes.at(seen.flat, seen.inside, xp), dtype=seen.z.dtype)
    return seen.z, there


def in_groups(views: np.ndarray, size: int) -> list[np.ndarray]:
    """``views`` in runs of ``size`` (the look-up steps of :func:`seen_depth`)."""
    return [views[start:start + size] for start in range(0, len(views), size)]


# --------------------------------------------------------------------------------------------
# samples and neighbours


def sample_views(stack: Stack, rng, region: tuple | None, workers: Workers | None = None) -> Samples:
    """Up to ``SAMPLES_PER_VIEW`` confident pixels of each view inside ``region``, at random
    (the draw is numpy's, on the host, whatever ``xp``: both paths sample the same pixels).
    The ``workers`` find each view's candidates; the draws follow in view order."""
    xp = stack.xp

    def candidates(i: int) -> tuple:
        confident = stack.weight[i] >= FIT_WEIGHT
        if region is not None:
            confident &= in_region(world_map(stack, i, stack.raw[i]), region, xp)
        return xp.nonzero(confident)

    parts = []
    for i, (v, u) in enumerate((workers or Workers(1)).map(candidates, range(len(stack.K)))):
        if len(v) > SAMPLES_PER_VIEW:
            pick = xp.asarray(np.sort(rng.choice(len(v), SAMPLES_PER_VIEW, replace=False)))
            v, u = v[pick], u[pick]
        parts.append((xp.full(len(v), i), v, u))
    view, v, u = (xp.concatenate(a) for a in zip(*parts, strict=True))
    starts = np.concatenate([[0], np.cumsum([len(part[0]) for part in parts])]).tolist()
    return Samples(view, stack.rays(view, v, u).T, xp.asarray(stack.raw[view, v, u], dtype=xp.float64),
                   stack.basis(v, u), xp.asarray(stack.weight[view, v, u], dtype=xp.float64), starts)


def pick_neighbours(stack: Stack, samples: Samples, workers: Workers | None = None) -> list[np.ndarray]:
    """For each view, the views that see most of its surface where it does (both ways: a
    view that sees a sliver of the other is no neighbour), the one that sees most first. The
    ``workers`` take the look-up steps."""
    xp = stack.xp
    n = len(stack.K)
    points = samples.world(stack).T
    votes = Votes.of(stack.raw, stack.weight)
    per_view = xp.maximum(xp.bincount(samples.view, minlength=n), 1)

    def shares(views: np.ndarray) -> list:  # the share of each view's samples each of views sees alike
        z, there = seen_depth(stack, votes, points, views)
        agree = (there > 0) & (xp.abs(z - there) < 2 * MATCH_TOLERANCE * there)
        return [xp.bincount(samples.view, row, minlength=n) / per_view for row in agree]

    columns = (workers or Workers(1)).map(shares, in_groups(np.arange(n), stack.views_at_once))
    share = to_numpy(xp.stack(sum(columns, []), axis=1))  # (N,N): ranked on the host, ties as numpy's
    np.fill_diagonal(share, 0)
    share = np.minimum(share, share.T)
    order = np.argsort(-share, axis=1)[:, :NEIGHBOURS]
    return [row[share[i, row] > 0.05] for i, row in enumerate(order)]


def pair_up(stack: Stack, samples: Samples, neighbours: list) -> Pairs:
    """Every sample of each view with each of the view's ``neighbours`` (:class:`Pairs`)."""
    xp = stack.xp
    owner = np.repeat(np.arange(len(neighbours)), [len(near) for near in neighbours])
    other = np.concatenate([np.zeros(0, np.int64), *neighbours]).astype(np.int64)
    turn, shift = view_to_view(stack, owner, other)
    # each pair of views once per sample of the first (samples are sorted by view)
    per_view = np.bincount(to_numpy(samples.view), minlength=len(neighbours))
    sample, pair = concatenated_ranges((np.cumsum(per_view) - per_view)[owner], per_view[owner])
    # per sample: row 3k + j of ``turn`` is turn[k, j] (rows gathered one by one: a (3,P)
    # result of numpy's a[:, index] is laid out column by column, and slows every round)
    on = xp.asarray(pair)
    turn, shift = (xp.stack([row[on] for row in xp.asarray(np.ascontiguousarray(table.T))])
                   for table in (turn.reshape(-1, 9), shift))
    ray = samples.ray[xp.asarray(sample)]
    # cameras.transform() with a turn per sample, written out as there
    direction = xp.stack([ray[:, 0] * turn[3 * k] + ray[:, 1] * turn[3 * k + 1]
                          + ray[:, 2] * turn[3 * k + 2] for k in range(3)])
    rows = per_view * np.array([len(near) for near in neighbours], dtype=np.int64)
    return Pairs(xp.asarray(sample), xp.asarray(other[pair]), neighbours, shift, direction,
                 np.concatenate([[0], np.cumsum(rows)]))


def view_to_view(stack: Stack, views: np.ndarray, others: np.ndarray):
    """(n,3,3) turns and (n,3) shifts from the camera frame of each of ``views`` to that of the
    matching one of ``others`` (one 3x3 product at a time, on the host)."""
    turn = [stack.R[j] @ stack.R[i].T for i, j in zip(views, others, strict=True)]
    shift = [stack.t[j] - r @ stack.t[i] for r, i, j in zip(turn, views, others, strict=True)]
    return np.reshape(turn, (-1, 3, 3)), np.reshape(shift, (-1, 3))


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray):
    """starts[k] .. starts[k] + lengths[k] - 1 for every k, one after the other, and the k of
    each."""
    run = np.repeat(np.arange(len(lengths)), lengths)
    return starts[run] + np.arange(len(run)) - (np.cumsum(lengths) - lengths)[run], run


@dataclass
class Matches:
    """The pairs whose sample lands on the other view's surface."""

    keep: Any  # (P,) bool
    cam: Any  # (3,K) the matched samples in the other view's camera frame
    u: Any  # (K,) the pixel they fall on
    v: Any
    flat: Any  # (K,) its index into (N,H,W) maps, flattened
    there: Any  # (K,) the other view's depth at that pixel
    rel: Any  # (K,) depth difference relative to depth


def match(stack: Stack, samples: Samples, pairs: Pairs) -> Matches:
    xp = stack.xp
    cam = pairs.origin + samples.depth(stack)[pairs.sample] * pairs.direction
    seen = look_up(stack, cam, pairs.other)
    there = stack.depth_at(seen)
    rel = (seen.z - there) / xp.maximum(there, 1e-12)
    keep = (seen.inside & (there > 0) & (xp.abs(rel) < MATCH_TOLERANCE)
            & (stack.weight.reshape(-1)[seen.flat] >= FIT_WEIGHT))
    return Matches(keep, cam[:, keep], *(a[keep] for a in (seen.u, seen.v, seen.flat, there, rel)))


def disagreement(stack: Stack, samples: Samples, pairs: Pairs, workers: Workers | None = None) -> dict:
    """How far apart overlapping views are: |depth difference| / depth over every matched
    sample of every view pair (the ``workers`` match a share of the pairs each)."""
    xp = stack.xp
    workers = workers or Workers(1)
    a = xp.abs(xp.concatenate(workers.map(lambda part: match(stack, samples, part).rel,
                                          pairs.split(workers.count))))
    if not len(a):
        return {"median": 0.0, "p90": 0.0, "sigma": MIN_SIGMA}
    median = float(xp.median(a))
    return {"median": median, "p90": float(xp.percentile(a, 90)),
            "sigma": max(1.4826 * median, MIN_SIGMA)}


# --------------------------------------------------------------------------------------------
# the fit


def solve_views(stack: Stack, samples: Samples, pairs: Pairs, sigma: float, workers: Workers):
    """(N,G*G) steps of the depth scale field that bring each view closest to its neighbours as
    they stand (zero for a view with no overlap), and the robust sigma of the residuals. Each
    view's step needs only its own pairs: the ``workers`` take a share of the views each."""
    xp = stack.xp
    parts = workers.map(lambda part: view_steps(stack, samples, part, sigma),
                        pairs.split(workers.count))
    steps = parts[0][0]
    for other_steps, _ in parts[1:]:  # zero outside each part's own views
        steps = steps + other_steps
    rel = parts[0][1] if len(parts) == 1 else xp.concatenate([part[1] for part in parts])
    return steps, max(1.4826 * float(xp.median(xp.abs(rel))), MIN_SIGMA) if len(rel) else sigma


def view_steps(stack: Stack, samples: Samples, pairs: Pairs, sigma: float):
    """The steps of the views that own ``pairs`` (zero for the others) and the relative depth
    differences of their matched samples."""
    xp = stack.xp
    m = match(stack, samples, pairs)
    other, idx = pairs.other[m.keep], pairs.sample[m.keep]
    owner = samples.view[idx]
    # point-to-plane, in the other view's camera frame (a rotation changes no dot product)
    normal = normals_at(stack, other, m.v, m.u)
    target = stack.rays(other, m.v, m.u) * m.there
    r = xp.einsum("im,im->m", normal, m.cam - target)
    along = xp.einsum("im,im->m", normal, pairs.direction[:, m.keep])  # d point / d depth
    slope = along * samples.raw[idx]  # d r / d scale = slope * the sample's basis
    depth = samples.depth(stack)[idx]
    w = samples.weight[idx] * stack.weight.reshape(-1)[m.flat] * tukey(r / (sigma * depth), xp)
    steps = xp.zeros((len(stack.K), GRID * GRID))
    # pairs are sorted by view: its rows are ends[i]:ends[i + 1] (one copy to the host)
    ends = to_numpy(xp.searchsorted(owner, xp.arange(len(stack.K) + 1))).tolist()
    solved = [i for i in range(len(stack.K)) if ends[i + 1] - ends[i] >= 12]
    if solved:
        lhs, rhs = normal_equations(stack, samples, idx, slope, r, w, depth, sigma,
                                    [ends[i:i + 2] for i in solved], solved, owner)
        steps[solved] = -solve_positive_definite(lhs, rhs)  # one batch: no syncs
    return steps, m.rel


def normal_equations(stack: Stack, samples: Samples, idx, slope, r, w, depth, sigma: float,
                     spans: list, views: list, owner):
    """(lhs, rhs) of each of ``views``' damped, weighted least squares for its step (lhs @ step
    = -rhs), its rows (matched pairs, at ``spans``: idx their samples, owner their views) with
    the Jacobian slope * the sample's basis, residuals r and weights w. Each view's residuals
    are scaled to world units by its median depth; the prior pulls the correction towards
    none. A sample has a row for each neighbour that sees it, all with its basis: their
    weights are summed per sample first, so each view's products run over its samples, not
    its pairs (and no (rows, 16) Jacobian is gathered)."""
    xp = stack.xp
    noise = xp.ones(len(stack.K))  # views left out (too few rows) have no system to weigh
    noise[views] = sigma * xp.stack([xp.median(depth[a:b]) for a, b in spans])
    q = slope * (w / (noise ** 2)[owner])
    count = len(samples.raw)
    curvature = xp.bincount(idx, q * slope, minlength=count)  # per sample
    pull = xp.bincount(idx, q * r, minlength=count)
    own = [samples.starts[i:i + 2] for i in views]  # each view's samples
    prior = xp.full(GRID * GRID, 1 / PRIOR_SCALE ** 2)
    # einsum's own loops, not a matrix product: numpy hands those to OpenBLAS, whose threads
    # stall such small products on a busy machine (the fit took 2.8-3.5 s instead of 2.0-2.3 s
    # with a bake running beside it on 2 cores; the same steps either way)
    basis = samples.basis
    lhs = xp.stack([xp.einsum("mi,mj->ij", basis[a:b] * curvature[a:b, None], basis[a:b])
                    for a, b in own]) + xp.diag(prior)
    rhs = (xp.stack([xp.einsum("mi,m->i", basis[a:b], pull[a:b]) for a, b in own])
           + prior * (stack.scale[views] - 1))
    return lhs, rhs


def tukey(x, xp=np, c: float = 4.685):
    """Tukey's biweight: residuals beyond ``c`` sigmas (another surface) weigh nothing."""
    return xp.where(xp.abs(x) < c, (1 - (x / c) ** 2) ** 2, 0.0)


# --------------------------------------------------------------------------------------------
# confirmation


def confirm_pixels(stack: Stack, depth, pairs: Pairs, sigma: float,
                   region: tuple | None, workers: Workers | None = None) -> float:
    """Silence, in place, the voting pixels (inside ``region``) that no neighbour confirms
    and that lie where at least ``CONTRADICTIONS`` neighbours see through (a flying pixel, a
    floater), ``depth`` the views' corrected depth. The others keep their weight: one that no
    neighbour could check (out of their frames, hidden from them) or that one neighbour doubts
    (a grazing view) is more often right than wrong; on the room scene with DA3-like errors,
    weighting those down by 0.3 cost 0.04 of recall (unchecked ones as well: 0.13). Returns
    the share of those pixels confirmed. Views are judged on the ``workers``' threads."""
    xp = stack.xp
    votes = Votes.of(depth, stack.weight)  # every view is judged against the same weights

    def confirm(i: int) -> tuple[int, int]:  # view i's pixels: confirmed, voting
        neighbours = pairs.neighbours[i]
        points = world_map(stack, i, depth[i])
        voting = stack.weight[i] > 0
        if region is not None:
            voting &= in_region(points, region, xp)
        v, u = xp.nonzero(voting)
        if not len(v) or not len(neighbours):
            return 0, 0
        pending, through = unconfirmed(stack, votes, points[:, v, u], neighbours, sigma)
        silenced = pending[through >= CONTRADICTIONS]
        stack.weight[i, v[silenced], u[silenced]] = 0  # only view i's weights: none reads them
        return len(v) - len(pending), len(v)

    counts = (workers or Workers(1)).map(confirm, range(len(pairs.neighbours)))
    confirmed_total, voting_total = (sum(c) for c in zip(*counts, strict=True)) if counts else (0, 0)
    return confirmed_total / max(voting_total, 1)


def unconfirmed(stack: Stack, votes: Votes, points, neighbours: np.ndarray, sigma: float):
    """Which of ``points`` ((3,n) world) no neighbour confirms (indices), and how many
    neighbours see through each of them. Once one neighbour confirms a pixel, the others need
    not look (the answer stays the same): the neighbours come best first, and on the room
    (30 views) the first confirms 64% of the voting pixels, the second all but 5%, so a
    quarter of the look-ups are left."""
    xp = stack.xp
    pending = xp.arange(points.shape[1])
    through = xp.zeros(len(pending), dtype=xp.int32)
    for views in in_groups(neighbours, stack.views_at_once):
        z, there = seen_depth(stack, votes, points[:, pending], views)
        tolerance = CONFIRM_SIGMAS * sigma * there
        voting = there > 0
        confirmed = xp.any(voting & (xp.abs(z - there) < tolerance), axis=0)
        for seen_through in voting & (z < there - tolerance):  # a row per view
            through += seen_through
        pending, through = pending[~confirmed], through[~confirmed]
    return pending, through
