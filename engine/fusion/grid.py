"""Where to fuse: the region, voxel size and truncation band (in object mode, the region all
views look at and the floor under it), within the memory budget."""

from __future__ import annotations

import numpy as np

from .base import BLOCK, BYTES_PER_VOXEL, Grid, TSDFOptions, View
from .floor import find_floor
from .views import backproject_views, project

# Once the views agree (engine.fusion.consistency), the truncation band spans this many robust sigmas
# of their remaining disagreement.
TRUNCATION_SIGMAS = 4.0
# Object mode: the object is what at least this share of the views hold in their image.
LOOKED_AT_VIEWS = 0.8


def plan_grid(views: list[View], options: TSDFOptions) -> Grid:
    """Choose the fused region, voxel size and truncation (and the floor in object mode)."""
    points, view_of = backproject_views(views)
    if len(points) < 10:
        raise ValueError("too few confident pixels to fuse")
    floor, spread = None, 0.0
    if options.object_mode:
        low, high, floor, spread = object_region(points, view_of, views, options.crop_box)
    elif options.crop_box is not None:
        low, high = options.crop_box
    else:
        low, high = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
    size = float(np.max(high - low))
    voxel = options.voxel_size or size / options.resolution
    depth = (object_distance(views, (low + high) / 2) if options.object_mode else
             float(np.median(np.concatenate([v.depth[v.weight > 0.5] for v in views]))))
    trunc = options.truncation or max(options.truncation_voxels * voxel,
                                      options.truncation_depth * depth)
    pad = 0 if options.crop_box is not None else trunc + 2 * voxel
    low, high = low - pad, high + pad
    voxel = fit_memory_budget(voxel, low, high, options)
    blocks = np.maximum(np.ceil((high - low) / (voxel * BLOCK)).astype(np.int64), 1)
    cut = max(2 * voxel, spread)
    return Grid(np.asarray(low, dtype=np.float64), float(voxel), float(trunc), blocks,
                options.object_mode, floor, cut, options.crop_box, depth)


def measured_truncation(grid: Grid, agreement: dict, options: TSDFOptions) -> float:
    """A band as wide as the views' measured disagreement allows, once they agree (a narrow
    band keeps thin parts and edges; one narrower than the disagreement tears the surface),
    never wider than the guess made without the measure. The sigma has DA3's noise floor under
    it: views made smooth (``engine.fusion.views.denoised_depth``) agree more closely than their
    depth is true, and in object mode the band also decides how far behind a seen surface an
    unseen one lies (a seat's underside, that cameras above never see: with exact depth the
    band narrowed to 4 voxels made the chair's seat half as thick, F@1% 0.84 against 0.997)."""
    noise = TRUNCATION_SIGMAS * agreement["sigma_after"] * grid.depth
    return float(min(grid.truncation, max(options.truncation_voxels * grid.voxel_size, noise)))


def object_distance(views: list[View], centre: np.ndarray) -> float:
    """Median depth of the object's centre in the views: the depth its error scales with (the
    confident pixels' median may be the background's, far behind it)."""
    return float(np.median([(view.R @ centre + view.t)[2] for view in views]))


def fit_memory_budget(voxel: float, low: np.ndarray, high: np.ndarray,
                      options: TSDFOptions) -> float:
    """Grow the voxel until a conservative estimate of the allocated blocks fits the budget.

    Surfaces occupy about (6 faces of the region's box x 2 layers of blocks) in scenes, the
    whole box in object mode; the real allocation is checked again in allocate_blocks.
    """
    budget = options.memory_mb * 2**20 / BYTES_PER_VOXEL
    while True:
        n = np.ceil((high - low) / voxel)
        estimate = np.prod(n) if options.object_mode else 2 * BLOCK * (n[0] * n[1] + n[1] * n[2]
                                                                       + n[0] * n[2])
        if estimate <= budget:
            return voxel
        voxel *= 1.25


def object_region(points: np.ndarray, view_of: np.ndarray, views: list[View],
                  crop_box: np.ndarray | None):
    """Box around what every view looks at, above the floor (when there is one).

    ``view_of``: the view each point came from. Returns (low, high, floor plane or None, floor
    roughness: how far its points stray).
    """
    inside = looked_at(points, views, crop_box)
    if np.count_nonzero(inside) < 10:
        inside = np.ones(len(points), bool)
    region = points[inside]
    floor, spread = find_floor(region, view_of[inside], views)
    above = region
    if floor is not None:
        above = region[region @ floor[:3] + floor[3] > spread]
    if len(above) < 10:
        above = region
    low, high = np.percentile(above, 0.5, axis=0), np.percentile(above, 99.5, axis=0)
    pad = 0.05 * (high - low).max()
    low, high = low - pad, high + pad
    if crop_box is not None:
        low, high = np.maximum(low, crop_box[0]), np.minimum(high, crop_box[1])
    return low, high, floor, spread


def looked_at(points: np.ndarray, views: list[View], crop_box: np.ndarray | None) -> np.ndarray:
    """Object mode: points in the region all views look at (in ``LOOKED_AT_VIEWS`` of their
    images), or inside the given box."""
    if crop_box is not None:
        return np.all((points >= crop_box[0]) & (points <= crop_box[1]), axis=1)
    return seen_by_fraction(points, views) >= LOOKED_AT_VIEWS


def seen_by_fraction(points: np.ndarray, views: list[View]) -> np.ndarray:
    """Fraction of the views whose image (not necessarily whose surface) holds each point."""
    count = np.zeros(len(points))
    for view in views:
        u, v, z = project(points, view)
        h, w = view.depth.shape
        count += (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return count / len(views)
