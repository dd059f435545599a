"""The views ready to integrate: each pixel's depth and the weights of its votes; and the
geometry between pixels and world points (back-projection, projection).

Each view's depth is first rid of its pixel noise, edges kept (:func:`denoised_depth`). Pixels
under DA3's confidence floor (its exporter's rule, shared with the other modes) cast no surface
vote; the others are weighted by confidence and down-weighted at depth discontinuities and
grazing angles. Every pixel with a depth still votes for the free space in front of it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core import cameras, geometry
from ..core.prediction import Prediction
from ..core.threads import Workers
from .base import TSDFOptions, View

# A surface seen at more than ~87 degrees from its normal (or a depth jump) gets no vote; from
# ~75 degrees on, full weight. Rooms are mostly seen at such angles, and a wall that only
# grazing views saw is better than a hole in it.
GRAZING_COS, FULL_COS = 0.05, 0.25
# Above DA3's confidence floor, a pixel's surface vote ramps from nothing at this percentile of
# the confidence to full weight at the upper one.
RAMP_LOW_PERCENTILE, RAMP_HIGH_PERCENTILE = 5.0, 75.0
# Denoising averages a pixel with the neighbours whose depth lies within this many sigmas of the
# view's own pixel noise (measured: :func:`pixel_noise`) of its own: at DA3-like noise (0.5% of
# the depth) a band of 2%, well under the jump at an object's outline, so edges and thin parts
# keep their own depth; on a smooth depth map next to nothing changes.
DENOISE_SIGMAS = 4.0
# A depth map whose noise measures under this (relative) is smooth already: averaging would move
# it by less than a twentieth of a percent, and is skipped (0.1 s of a 32-view import).
SMOOTH_ENOUGH = 0.0005


def prepare_views(pred: Prediction, options: TSDFOptions, weigh=None) -> list[View]:
    """Per-view depth (denoised: ``options.denoise_radius``), weight and colour; raises
    ValueError when no pixel can vote."""
    if options.denoise_radius:
        pred = replace(pred, depth=denoised_views(pred.depth, options.denoise_radius, options.threads))
    w2c = pred.world_to_camera()
    weights = (weigh or view_weights)(pred, options)

    def view(i: int) -> View:
        depth = np.asarray(pred.depth[i], dtype=np.float32)
        valid = np.isfinite(depth) & (depth > 0)
        weight = weights[i]
        free = np.where(valid, np.maximum(weight, options.free_space_weight), 0).astype(np.float32)
        color = pred.image[i] if pred.image is not None else None
        return View(np.where(valid, depth, 0).astype(np.float32), weight, free, color,
                    pred.intrinsics[i], w2c[i, :3, :3], w2c[i, :3, 3])

    with Workers(options.threads, "da3-fuse") as workers:
        views = workers.map(view, range(pred.num_views))
    if not any(np.any(v.weight > 0) for v in views):
        raise ValueError("no pixel of any view is confident enough to fuse")
    return views


def denoised_views(depth: np.ndarray, radius: int, threads: int = 1) -> np.ndarray:
    """(N,H,W) float32: :func:`denoised_depth` of every view, the views shared among ``threads``."""
    out = np.empty(depth.shape, np.float32)

    def denoise(i: int) -> None:  # each view writes its own slice
        out[i] = denoised_depth(depth[i], radius)

    with Workers(threads, "da3-fuse") as workers:
        workers.map(denoise, range(len(depth)))
    return out


def denoised_depth(depth: np.ndarray, radius: int, band: float | None = None) -> np.ndarray:
    """(H,W) float32 ``depth`` averaged along each row and then down each column with the pairs
    of pixels ``k`` <= ``radius`` either side whose depths both lie within ``band`` (relative;
    default ``DENOISE_SIGMAS`` times the map's :func:`pixel_noise`, and none at all under
    ``SMOOTH_ENOUGH``) of the pixel's (no depth: 0 or not finite, stays as it is and joins no
    average).

    The voxels sample each view at one pixel, so a pixel's noise went into the surface as it
    was: on bench_fusion's chair with the hard errors (0.5% pixel noise; three draws of them),
    F@1% 0.55-0.68 and normal consistency 0.77-0.81; 0.90-0.94 and 0.83-0.87 with this at
    radius 2. Pairs, not single neighbours: a sloping or curved surface keeps its depth where
    one side of the pair runs over an outline or off the image (a one-sided average would pull
    it along the slope); across an outline nothing is mixed, so the legs of a chair keep their
    width.
    """
    out = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(out) & (out > 0)
    out = np.where(valid, out, 0).astype(np.float32)
    if band is None:
        noise = pixel_noise(out, valid)
        if noise < SMOOTH_ENOUGH:
            return np.where(valid, out, depth).astype(np.float32)
        band = DENOISE_SIGMAS * noise
    for axis in (1, 0):  # along the rows, then down the columns
        total, count = out.copy(), valid.astype(np.float32)
        tolerance = np.float32(band) * out
        for k in range(1, radius + 1):
            centre, before, after = (tuple(slice(a, b) if n == axis else slice(None) for n in range(2))
                                     for a, b in ((k, -k), (0, -2 * k), (2 * k, None)))
            here = out[centre]
            alike = (valid[centre] & valid[before] & valid[after]
                     & (np.abs(out[before] - here) < tolerance[centre])
                     & (np.abs(out[after] - here) < tolerance[centre]))
            total[centre] += np.where(alike, out[before] + out[after], 0)
            count[centre] += 2 * alike
        out = np.where(valid, total / np.maximum(count, 1), 0).astype(np.float32)
    return np.where(valid, out, depth).astype(np.float32)


def pixel_noise(depth: np.ndarray, valid: np.ndarray) -> float:
    """The robust sigma of ``depth``'s noise from pixel to pixel, relative to depth: from the
    second differences along the rows (a sloping surface has none; pixel noise of sigma gives
    them sigma * sqrt(6); outlines are too few to move the median), on every fourth row
    (tens of thousands of pixels are plenty for a median). 0 without three pixels of depth in
    a row."""
    depth, valid = depth[::4], valid[::4]
    ok = valid[:, :-2] & valid[:, 1:-1] & valid[:, 2:]
    if not ok.any():
        return 0.0
    second = (depth[:, :-2] - 2 * depth[:, 1:-1] + depth[:, 2:])[ok] / depth[:, 1:-1][ok]
    return float(1.4826 * np.median(np.abs(second)) / np.sqrt(6))


def view_weights(pred: Prediction, options: TSDFOptions) -> np.ndarray:
    """(N,H,W) weight of each pixel's surface vote: confidence ramp x surface angle, 0 below
    DA3's confidence floor, on sky and where there is no depth."""
    confident, _ = geometry.confident_pixels(pred, options.confidence_percentile, options.mask_sky)
    ramp = confidence_ramp(pred.conf)
    out = np.empty(pred.depth.shape, np.float32)

    def weigh(i: int) -> None:  # each view writes its own slice
        depth = np.asarray(pred.depth[i], dtype=np.float32)
        weight = confident[i].astype(np.float32)
        if ramp is not None:
            weight *= confidence_weights(pred.conf[i], *ramp)
        out[i] = weight * surface_angle_weights(depth, pred.intrinsics[i])

    with Workers(options.threads, "da3-fuse") as workers:
        workers.map(weigh, range(pred.num_views))
    return out


def confidence_ramp(conf: np.ndarray | None) -> tuple[float, float] | None:
    """The confidence of every view's pixels at the ramp's two percentiles (None without
    confidence)."""
    if conf is None:
        return None
    low, high = np.percentile(conf, [RAMP_LOW_PERCENTILE, RAMP_HIGH_PERCENTILE])
    return float(low), float(high)


def confidence_weights(conf: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map DA3's confidence (>= 1, unbounded) to [0,1]: from 0 at ``low`` to 1 from ``high``
    (:func:`confidence_ramp`: P5 and P75).

    A ramp on top of the floor (:func:`engine.core.geometry.confident_pixels`), so that views of
    middling confidence still help where nothing better saw the surface.
    """
    ramp = np.clip((conf - low) / max(high - low, 1e-6), 0, 1)
    return np.where(conf >= high, 1, ramp).astype(np.float32)  # flat confidence: all count


def surface_angle_weights(depth: np.ndarray, K: np.ndarray, grazing_cos: float = GRAZING_COS,
                          full_cos: float = FULL_COS) -> np.ndarray:
    """cos(angle between the viewing ray and the surface normal), ramped to [0,1].

    Depth discontinuities look like surfaces seen edge-on (cos ~ 0), so this one weight
    handles both; a 3x3 minimum also silences the pixel next to each jump, where DA3's
    flying pixels sit.
    """
    u, v = cameras.pixel_ray_factors(cameras.lens(K), *depth.shape)
    z = np.asarray(depth, dtype=np.float32)
    x, y, _ = cameras.camera_points(z, u.astype(np.float32)[None, :], v.astype(np.float32)[:, None])
    # central differences across columns (a) and rows (b); the image border has none
    ax, ay, az = (np.zeros_like(z) for _ in range(3))
    bx, by, bz = (np.zeros_like(z) for _ in range(3))
    for d, p in ((ax, x), (ay, y), (az, z)):
        d[:, 1:-1] = p[:, 2:] - p[:, :-2]
    for d, p in ((bx, x), (by, y), (bz, z)):
        d[1:-1] = p[2:] - p[:-2]
    nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx  # normal = a x b
    dot = np.abs(nx * x + ny * y + nz * z)
    length = np.sqrt(nx * nx + ny * ny + nz * nz) * np.sqrt(x * x + y * y + z * z)
    cos = dot / np.maximum(length, np.float32(1e-12))
    weight = np.clip((cos - grazing_cos) / (full_cos - grazing_cos), 0, 1)
    return minimum_filter3(weight).astype(np.float32)


def minimum_filter3(a: np.ndarray) -> np.ndarray:
    """3x3 minimum with the border padded by its own values (no scipy in Blender)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    out = a.copy()
    for dy in range(3):
        for dx in range(3):
            np.minimum(out, p[dy:dy + h, dx:dx + w], out=out)
    return out


def backproject_views(views: list[View], stride: int = 4,
                      min_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """World points of confident pixels, every ``stride``-th row and column, and the index of
    the view each came from."""
    out, view_of = [], []
    for i, view in enumerate(views):
        d = view.depth[::stride, ::stride]
        keep = view.weight[::stride, ::stride] > min_weight
        v, u = np.nonzero(keep)
        fx, fy, cx, cy = cameras.lens(view.K)
        cam = cameras.camera_points(d[v, u].astype(np.float64), cameras.pixel_slope(u * stride, fx, cx),
                                    cameras.pixel_slope(v * stride, fy, cy))
        out.append(cameras.camera_to_world(np.stack(cam, axis=1), view.R, view.t))
        view_of.append(np.full(len(v), i))
    if not out:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(view_of)


def project(points: np.ndarray, view: View):
    """u, v (pixels) and depth of world ``points`` (n,3) in ``view`` (:func:`cameras.project`:
    written out, not a product that OpenBLAS stalls on a busy machine: 1.1 s of a room's fusion
    went here, 0.1 s written out)."""
    return cameras.project(points, view.R, view.t, cameras.lens(view.K))


def sample_view(view: View, points: np.ndarray):
    """Depth (0 outside the image), flat pixel index and camera depth of each point."""
    u, v, z = project(points, view)
    h, w = view.depth.shape
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pix = np.where(inside, np.clip(v, 0, h - 1).astype(np.int64) * w
                   + np.clip(u, 0, w - 1).astype(np.int64), 0)
    return np.where(inside, view.depth.ravel()[pix], 0), pix, z
