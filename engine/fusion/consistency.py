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
kept without the fit, 12% with turns alone, 40% with the depth correction alone). Then every
pixel is checked against the corrected neighbours: one that lies where other views see
through (a flying pixel) and that no view confirms loses its surface vote; the others keep
their weight.

The views' disagreement (median distance between a view's surface and its neighbours',
relative to depth) is reported before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
# Only pixels at least this sure of themselves steer the fit (a far background of low
# confidence is as inconsistent between views as DA3 is unsure of it).
FIT_WEIGHT = 0.5
# What a correction is expected to be (DA3's smooth depth error is a few percent): a prior
# that keeps what the overlap cannot pin down where it was.
PRIOR_SCALE = 0.05
LENS = ((0, 0), (1, 1), (0, 2), (1, 2))  # where fx, fy, cx, cy stand in K


@dataclass
class Stack:
    """Every view and its depth correction so far (all views share one image size). The
    corrected depth is evaluated where the fit looks (:meth:`depth_at`), and as whole maps
    once the fit is done (:func:`corrected_depth`)."""

    K: np.ndarray  # (N,3,3)
    R: np.ndarray  # (N,3,3) world-to-camera rotations
    t: np.ndarray  # (N,3)
    raw: np.ndarray  # (N,H,W) float32 depth as DA3 gave it
    weight: np.ndarray  # (N,H,W) float32 fusion weights
    scale: np.ndarray  # (N,G*G) depth multiplier at the control points; 1 is no change
    rows: np.ndarray  # (H,G) weights of the control rows at every pixel row (grid_axis)
    cols: np.ndarray  # (W,G) and of the control columns at every pixel column

    @classmethod
    def of(cls, views: list) -> Stack:
        raw = np.stack([v.depth for v in views]).astype(np.float32)
        _, h, w = raw.shape
        return cls(np.stack([v.K for v in views]).astype(np.float64),
                   np.stack([v.R for v in views]).astype(np.float64),
                   np.stack([v.t for v in views]).astype(np.float64), raw,
                   np.stack([v.weight for v in views]).astype(np.float32),
                   np.ones((len(views), GRID * GRID)),
                   grid_axis(np.arange(h), h), grid_axis(np.arange(w), w))

    def lens(self, view: np.ndarray | int) -> tuple:
        """fx, fy, cx, cy of ``view``: plain numbers for one view (they keep float32 arrays in
        float32), else one per element (four numbers gathered, not whole 3x3 matrices)."""
        if np.ndim(view) == 0:
            return tuple(float(self.K[view, a, b]) for a, b in LENS)
        return tuple(self.K[:, a, b][view] for a, b in LENS)

    def rays(self, view: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(3,n) camera-frame rays (z = 1) through the centres of pixels (``view``, ``v``,
        ``u``)."""
        fx, fy, cx, cy = self.lens(view)
        return np.stack([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, np.ones(len(u))])

    def basis(self, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(n, G*G) bilinear weights of the control points at pixels (``v``, ``u``)."""
        return (self.rows[v, :, None] * self.cols[u, None, :]).reshape(len(v), -1)

    def depth_at(self, seen: LookUp) -> np.ndarray:
        """The corrected depth at the pixels ``seen``: the scale field of each view along the
        pixel's row first (N*H,G), then across to its column."""
        along_rows = np.einsum("hk,nkl->nhl", self.rows, self.scale.reshape(-1, GRID, GRID))
        at_row = along_rows.reshape(-1, GRID)[seen.flat // self.raw.shape[2]]
        return self.raw.reshape(-1)[seen.flat] * np.einsum("ml,ml->m", at_row, self.cols[seen.u])


@dataclass
class Samples:
    """Sampled pixels of every view, flat: which view, where, and their depth basis."""

    view: np.ndarray  # (M,) view index
    ray: np.ndarray  # (M,3) camera-frame direction with z = 1
    raw: np.ndarray  # (M,) raw depth
    basis: np.ndarray  # (M,G*G) bilinear weights of the control points at the pixel
    weight: np.ndarray  # (M,)

    def depth(self, stack: Stack) -> np.ndarray:
        return self.raw * np.einsum("mk,mk->m", self.basis, stack.scale[self.view])

    def world(self, stack: Stack) -> np.ndarray:
        return to_world(stack, self.view, self.ray * self.depth(stack)[:, None])


@dataclass
class Pairs:
    """Each sample of a view, once per neighbour of that view, sorted by view, with its ray in
    the neighbour's camera frame: at depth d the sample lies at origin + d * direction there
    (the poses stay, so a round's look-ups need no rotation)."""

    sample: np.ndarray  # (P,) index into Samples
    other: np.ndarray  # (P,) the neighbour
    neighbours: list  # each view's neighbours, the one that sees most of it first
    origin: np.ndarray  # (3,P) the sample's camera centre in the neighbour's frame
    direction: np.ndarray  # (3,P) the sample's ray (z = 1 in its own view) in that frame


def make_consistent(views: list, region: tuple | None = None, seed: int = 0) -> dict:
    """Correct ``views`` (``engine.fusion.View``, changed in place: depth, weight) so that
    they agree where they are fused (``region``: world (low, high) corners); returns the
    report (median and 90th percentile of the disagreement before and after, relative to
    depth, and the share of voting pixels another view confirms)."""
    stack = Stack.of(views)
    samples = sample_views(stack, np.random.default_rng(seed), region)
    pairs = pair_up(stack, samples, pick_neighbours(stack, samples))
    before = disagreement(stack, samples, pairs)
    sigma = before["sigma"]
    for _ in range(ROUNDS):
        steps, sigma = solve_views(stack, samples, pairs, sigma)
        stack.scale += STEP * steps
    after = disagreement(stack, samples, pairs)
    depth = corrected_depth(stack)
    confirmed = confirm_pixels(stack, depth, pairs, after["sigma"], region)
    for i, view in enumerate(views):
        view.depth, view.weight = depth[i], stack.weight[i]
    return {"disagreement_before": before["median"], "disagreement_after": after["median"],
            "disagreement_p90_before": before["p90"], "disagreement_p90_after": after["p90"],
            "confirmed_share": confirmed}


# --------------------------------------------------------------------------------------------
# geometry of the stack


def to_world(stack: Stack, view: np.ndarray, cam: np.ndarray) -> np.ndarray:
    return np.einsum("mji,mj->mi", stack.R[view], cam - stack.t[view])


def transform(R: np.ndarray, t: np.ndarray, points) -> list[np.ndarray]:
    """R @ p + t for ``points`` given as three coordinate arrays, in their own precision.

    Written out rather than a (n,3) @ (3,3) product: numpy hands that to OpenBLAS, whose
    threads stall whenever another process holds a core (190k points: 3 ms, 45-70 ms with one
    of two cores busy); the sums take 1 ms either way."""
    R, t = R.tolist(), t.tolist()
    return [points[0] * R[k][0] + points[1] * R[k][1] + points[2] * R[k][2] + t[k]
            for k in range(3)]


def world_map(stack: Stack, i: int, depth: np.ndarray) -> np.ndarray:
    """(3,H,W) float32 world points of every pixel of view i at ``depth`` (H,W) (float32:
    millions of pixels, and a millionth of the depth is far below the views' disagreement)."""
    h, w = depth.shape
    fx, fy, cx, cy = stack.lens(i)
    x = ((np.arange(w) + 0.5 - cx) / fx).astype(np.float32)[None, :]
    y = ((np.arange(h) + 0.5 - cy) / fy).astype(np.float32)[:, None]
    # the camera frame to the world: R^T (depth * ray - t), one world axis at a time
    R, centre = stack.R[i].tolist(), (stack.t[i] @ stack.R[i]).tolist()
    return np.stack([depth * (x * R[0][k] + y * R[1][k] + R[2][k]) - centre[k] for k in range(3)])


def in_region(points: np.ndarray, region: tuple) -> np.ndarray:
    """Which of ``points`` ((3, ...) coordinates) lie inside ``region`` (world (low, high)
    corners)."""
    low, high = region
    inside = np.ones(points.shape[1:], bool)
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


def corrected_depth(stack: Stack) -> np.ndarray:
    """(N,H,W) float32 every view's depth as corrected."""
    depth = stack.raw.copy()
    cols = stack.cols.astype(np.float32)
    for i in np.nonzero(np.any(stack.scale != 1, axis=1))[0]:
        depth[i] *= scale_field(stack.rows, cols, stack.scale[i])
    return depth


def scale_field(rows: np.ndarray, cols: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(H,W) float32 depth multiplier interpolated from the control points ``scale`` (``rows``,
    ``cols``: :func:`grid_axis` of every row and column). A sum of GRID outer products: as
    one (H,G) @ (G,W) product OpenBLAS's threads stalled it to 15 ms on a busy machine."""
    along_rows = (rows @ scale.reshape(GRID, GRID)).astype(np.float32)
    return sum(np.multiply.outer(along_rows[:, k], cols[:, k]) for k in range(GRID))


def normals_at(stack: Stack, view: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(3,n) camera-frame unit normals of the raw depth at pixels (``view``, ``v``, ``u``),
    facing the camera: the cross product of central differences along the row and down the
    column (zero on the image's border). Only where the fit looks (50k pixels a round on the
    room): whole maps for its 30 views of 504x378 took 0.4 s to 1 s."""
    _, h, w = stack.raw.shape
    raw = stack.raw.reshape(-1)
    fx, fy, cx, cy = stack.lens(view)

    def point(row, col):
        d = raw[(view * h + row) * w + col].astype(np.float64)
        return np.stack([(col + 0.5 - cx) / fx * d, (row + 0.5 - cy) / fy * d, d])

    along = (point(v, np.minimum(u + 1, w - 1)) - point(v, np.maximum(u - 1, 0))) * ((u > 0) & (u < w - 1))
    down = (point(np.minimum(v + 1, h - 1), u) - point(np.maximum(v - 1, 0), u)) * ((v > 0) & (v < h - 1))
    n = np.stack([along[1] * down[2] - along[2] * down[1], along[2] * down[0] - along[0] * down[2],
                  along[0] * down[1] - along[1] * down[0]])
    n /= np.maximum(np.sqrt(np.einsum("im,im->m", n, n)), 1e-12)
    return n * -np.sign(np.einsum("im,im->m", n, point(v, u)) + 1e-30)  # towards the camera


@dataclass
class LookUp:
    """Where camera-frame points fall in their view."""

    u: np.ndarray  # pixel column (0 outside the frame)
    v: np.ndarray  # pixel row (0 outside the frame)
    z: np.ndarray  # the points' depth in the view
    flat: np.ndarray  # the pixel's index into (N,H,W) maps, flattened
    inside: np.ndarray  # the point is in front of the view and inside its frame


def look_up(stack: Stack, cam, view: np.ndarray | int) -> LookUp:
    """Where ``cam`` (three coordinate arrays of points in the frame of ``view``: one view, or
    one per point) falls."""
    fx, fy, cx, cy = stack.lens(view)
    z = cam[2]
    _, h, w = stack.raw.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.floor(fx * cam[0] / z + cx)
        v = np.floor(fy * cam[1] / z + cy)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u = np.where(inside, u, 0).astype(np.int64)
    v = np.where(inside, v, 0).astype(np.int64)
    return LookUp(u, v, z, (np.asarray(view, np.int64) * h + v) * w + u, inside)


def voting_depth(depth: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(N,H,W) ``depth`` where a pixel votes for a surface, 0 elsewhere."""
    return np.where(weight > 0, depth, np.float32(0))


def seen_depth(stack: Stack, votes: np.ndarray, points, j: int):
    """The depth of world ``points`` (three coordinate arrays) in view j, and the depth view j
    votes for at the pixel they fall on (``votes``: :func:`voting_depth`; 0 where no pixel of
    j votes for them)."""
    seen = look_up(stack, transform(stack.R[j], stack.t[j], points), j)
    there = np.where(seen.inside, votes.reshape(-1)[seen.flat], 0).astype(seen.z.dtype, copy=False)
    return seen.z, there


# --------------------------------------------------------------------------------------------
# samples and neighbours


def sample_views(stack: Stack, rng, region: tuple | None) -> Samples:
    """Up to ``SAMPLES_PER_VIEW`` confident pixels of each view inside ``region``, at random."""
    parts = []
    for i in range(len(stack.K)):
        confident = stack.weight[i] >= FIT_WEIGHT
        if region is not None:
            confident &= in_region(world_map(stack, i, stack.raw[i]), region)
        v, u = np.nonzero(confident)
        if len(v) > SAMPLES_PER_VIEW:
            pick = np.sort(rng.choice(len(v), SAMPLES_PER_VIEW, replace=False))
            v, u = v[pick], u[pick]
        parts.append((np.full(len(v), i), v, u))
    view, v, u = (np.concatenate(a) for a in zip(*parts, strict=True))
    return Samples(view, stack.rays(view, v, u).T, stack.raw[view, v, u].astype(np.float64),
                   stack.basis(v, u), stack.weight[view, v, u].astype(np.float64))


def pick_neighbours(stack: Stack, samples: Samples) -> list[np.ndarray]:
    """For each view, the views that see most of its surface where it does (both ways: a
    view that sees a sliver of the other is no neighbour), the one that sees most first."""
    n = len(stack.K)
    share = np.zeros((n, n))
    points = samples.world(stack).T
    votes = voting_depth(stack.raw, stack.weight)
    per_view = np.maximum(np.bincount(samples.view, minlength=n), 1)
    for j in range(n):
        z, there = seen_depth(stack, votes, points, j)
        agree = (there > 0) & (np.abs(z - there) < 2 * MATCH_TOLERANCE * there)
        share[:, j] = np.bincount(samples.view, agree, minlength=n) / per_view
    np.fill_diagonal(share, 0)
    share = np.minimum(share, share.T)
    order = np.argsort(-share, axis=1)[:, :NEIGHBOURS]
    return [row[share[i, row] > 0.05] for i, row in enumerate(order)]


def pair_up(stack: Stack, samples: Samples, neighbours: list) -> Pairs:
    sample, other, origin, direction = [], [], [], []
    for i, near in enumerate(neighbours):
        mine = np.nonzero(samples.view == i)[0]
        for j in near:
            turn = stack.R[j] @ stack.R[i].T  # from view i's camera frame to view j's
            sample.append(mine)
            other.append(np.full(len(mine), j))
            origin.append(np.repeat((stack.t[j] - turn @ stack.t[i])[:, None], len(mine), axis=1))
            direction.append(np.stack(transform(turn, np.zeros(3), samples.ray[mine].T)))
    return Pairs(*(np.concatenate(a) if a else np.zeros(0, np.int64) for a in (sample, other)),
                 neighbours,
                 *(np.concatenate(a, axis=1) if a else np.zeros((3, 0)) for a in (origin, direction)))


@dataclass
class Matches:
    """The pairs whose sample lands on the other view's surface."""

    keep: np.ndarray  # (P,) bool
    cam: np.ndarray  # (3,K) the matched samples in the other view's camera frame
    u: np.ndarray  # (K,) the pixel they fall on
    v: np.ndarray
    flat: np.ndarray  # (K,) its index into (N,H,W) maps, flattened
    there: np.ndarray  # (K,) the other view's depth at that pixel
    rel: np.ndarray  # (K,) depth difference relative to depth


def match(stack: Stack, samples: Samples, pairs: Pairs) -> Matches:
    cam = pairs.origin + samples.depth(stack)[pairs.sample] * pairs.direction
    seen = look_up(stack, cam, pairs.other)
    there = stack.depth_at(seen)
    rel = (seen.z - there) / np.maximum(there, 1e-12)
    keep = (seen.inside & (there > 0) & (np.abs(rel) < MATCH_TOLERANCE)
            & (stack.weight.reshape(-1)[seen.flat] >= FIT_WEIGHT))
    return Matches(keep, cam[:, keep], *(a[keep] for a in (seen.u, seen.v, seen.flat, there, rel)))


def disagreement(stack: Stack, samples: Samples, pairs: Pairs) -> dict:
    """How far apart overlapping views are: |depth difference| / depth over every matched
    sample of every view pair."""
    a = np.abs(match(stack, samples, pairs).rel)
    if not len(a):
        return {"median": 0.0, "p90": 0.0, "sigma": MIN_SIGMA}
    median = float(np.median(a))
    return {"median": median, "p90": float(np.percentile(a, 90)),
            "sigma": max(1.4826 * median, MIN_SIGMA)}


# --------------------------------------------------------------------------------------------
# the fit


def solve_views(stack: Stack, samples: Samples, pairs: Pairs, sigma: float):
    """(N,G*G) steps of the depth scale field that bring each view closest to its neighbours as
    they stand (zero for a view with no overlap), and the robust sigma of the residuals."""
    m = match(stack, samples, pairs)
    other, idx = pairs.other[m.keep], pairs.sample[m.keep]
    owner = samples.view[idx]
    # point-to-plane, in the other view's camera frame (a rotation changes no dot product)
    normal = normals_at(stack, other, m.v, m.u)
    target = stack.rays(other, m.v, m.u) * m.there
    r = np.einsum("im,im->m", normal, m.cam - target)
    along = np.einsum("im,im->m", normal, pairs.direction[:, m.keep])  # d point / d depth
    J = (along * samples.raw[idx])[:, None] * samples.basis[idx]
    depth = samples.raw[idx] * np.einsum("mk,mk->m", samples.basis[idx], stack.scale[owner])
    w = samples.weight[idx] * stack.weight.reshape(-1)[m.flat] * tukey(r / (sigma * depth))
    steps = np.zeros((len(stack.K), GRID * GRID))
    ends = np.searchsorted(owner, np.arange(len(stack.K) + 1))  # pairs are sorted by view
    prior = np.full(GRID * GRID, 1 / PRIOR_SCALE ** 2)
    for i in range(len(stack.K)):
        a, b = ends[i], ends[i + 1]
        if b - a < 12:
            continue
        noise = sigma * float(np.median(depth[a:b]))  # residuals in world units
        Jw = J[a:b] * (w[a:b] / noise ** 2)[:, None]
        current = stack.scale[i] - 1
        steps[i] = -np.linalg.solve(Jw.T @ J[a:b] + np.diag(prior), Jw.T @ r[a:b] + prior * current)
    new_sigma = max(1.4826 * float(np.median(np.abs(m.rel))), MIN_SIGMA) if len(m.rel) else sigma
    return steps, new_sigma


def tukey(x: np.ndarray, c: float = 4.685) -> np.ndarray:
    """Tukey's biweight: residuals beyond ``c`` sigmas (another surface) weigh nothing."""
    return np.where(np.abs(x) < c, (1 - (x / c) ** 2) ** 2, 0.0)


# --------------------------------------------------------------------------------------------
# confirmation


def confirm_pixels(stack: Stack, depth: np.ndarray, pairs: Pairs, sigma: float,
                   region: tuple | None) -> float:
    """Silence, in place, the voting pixels (inside ``region``) that no neighbour confirms
    and that lie where at least ``CONTRADICTIONS`` neighbours see through (a flying pixel, a
    floater), ``depth`` the views' corrected depth. The others keep their weight: one that no
    neighbour could check (out of their frames, hidden from them) or that one neighbour doubts
    (a grazing view) is more often right than wrong; on the room scene with DA3-like errors,
    weighting those down by 0.3 cost 0.04 of recall (unchecked ones as well: 0.13). Returns
    the share of those pixels confirmed."""
    votes = voting_depth(depth, stack.weight)  # every view is judged against the same weights
    confirmed_total = voting_total = 0
    for i, neighbours in enumerate(pairs.neighbours):
        points = world_map(stack, i, depth[i])
        voting = stack.weight[i] > 0
        if region is not None:
            voting &= in_region(points, region)
        v, u = np.nonzero(voting)
        if not len(v) or not len(neighbours):
            continue
        pending, through = unconfirmed(stack, votes, points[:, v, u], neighbours, sigma)
        silenced = pending[through >= CONTRADICTIONS]
        stack.weight[i, v[silenced], u[silenced]] = 0
        confirmed_total += len(v) - len(pending)
        voting_total += len(v)
    return confirmed_total / max(voting_total, 1)


def unconfirmed(stack: Stack, votes: np.ndarray, points: np.ndarray, neighbours: np.ndarray,
                sigma: float):
    """Which of ``points`` ((3,n) world) no neighbour confirms (indices), and how many
    neighbours see through each of them. Once one neighbour confirms a pixel, the others need
    not look (the answer stays the same): the neighbours come best first, and on the room
    (30 views) the first confirms 64% of the voting pixels, the second all but 5%, so a
    quarter of the look-ups are left."""
    pending = np.arange(points.shape[1])
    through = np.zeros(len(pending), np.int32)
    for j in neighbours:
        z, there = seen_depth(stack, votes, points[:, pending], int(j))
        tolerance = CONFIRM_SIGMAS * sigma * there
        voting = there > 0
        confirmed = voting & (np.abs(z - there) < tolerance)
        through += voting & (z < there - tolerance)
        pending, through = pending[~confirmed], through[~confirmed]
    return pending, through
