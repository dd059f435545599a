"""The votes: the blocks of the sparse volume to allocate, every view's votes into them, and
the voxel values that meshing reads.

Every view votes, per voxel, for a truncated signed distance to the surface it sees: the
depth map's value minus the voxel's depth, clamped to [-1, 1] truncation units. Voxels that a
view sees *through* (far in front of its surface) receive a +1 vote, which is what carves away
floaters that other views place there.

The volume is sparse: space is cut into blocks of 8^3 voxels and only blocks near observed
surfaces are allocated (plus, in object mode, the blocks inside the object). Every block,
allocated or not, also gets one coarse vote at its centre, so that meshing knows whether the
space next to an allocated block is free, solid or unknown.
"""

from __future__ import annotations

import numpy as np

from ..core import cameras
from ..core.threads import Workers
from .base import BLOCK, BLOCK_VOXELS, BYTES_PER_VOXEL, Grid, Progress, TSDFOptions, View, Volume
from .pockets import (
    CELLS_PER_BLOCK,
    FREE,
    POCKET_CELL,
    SOLID,
    UNSEEN,
    Pockets,
    dilate,
    per_block,
    pocket_voxels,
)
from .views import project, sample_view

# --------------------------------------------------------------------------------------------
# coarse votes and allocation


def all_block_coords(grid: Grid) -> np.ndarray:
    b = grid.blocks
    return np.stack(np.meshgrid(np.arange(b[0]), np.arange(b[1]), np.arange(b[2]),
                                indexing="ij"), axis=-1).reshape(-1, 3)


def integrate_coarse(grid: Grid, views: list[View]) -> tuple[np.ndarray, np.ndarray]:
    """One vote per block at its centre, truncated at the block's half diagonal + truncation."""
    return votes_at(grid.block_centres(all_block_coords(grid)), views,
                    grid.truncation + 0.87 * grid.block_extent)


def votes_at(points: np.ndarray, views: list[View], trunc: float) -> tuple[np.ndarray, np.ndarray]:
    """Every view's vote at each of ``points``: summed weighted tsdf and weight."""
    tsdf = np.zeros(len(points), np.float32)
    weight = np.zeros(len(points), np.float32)
    for view in views:
        d, pix, z = sample_view(view, points)
        sdf = d - z
        w = vote_weights(view, pix, sdf, trunc)
        tsdf += w * np.clip(sdf / trunc, -1, 1)
        weight += w
    return tsdf, weight


def pocket_cell_states(grid: Grid, views: list[View], options: TSDFOptions) -> np.ndarray:
    """Object mode: 3-D UNSEEN, SOLID or FREE of the cells of ``POCKET_CELL``^3 voxels that
    ``engine.fusion.pockets`` tells pockets apart on, from one vote at each cell's centre."""
    shape = tuple(int(n) * CELLS_PER_BLOCK for n in grid.blocks)
    cells = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    centres = grid.origin + (cells * POCKET_CELL + (POCKET_CELL - 1) / 2) * grid.voxel_size
    tsdf, weight = votes_at(centres, views, grid.truncation + 0.87 * POCKET_CELL * grid.voxel_size)
    observed = weight >= options.solid_weight
    forced = outside_region(grid, centres) | beyond_crop_box(grid, centres)
    # any vote for solid stops a walk: a wall that few views saw still encloses what is behind it
    states = np.where(forced | (observed & (tsdf >= 0)), FREE, np.where(tsdf < 0, SOLID, UNSEEN))
    return states.astype(np.int8).reshape(shape)


def vote_weights(view: View, pix: np.ndarray, sdf: np.ndarray, trunc: float) -> np.ndarray:
    """Surface weight within the truncation band, free-space weight in front of it, none
    behind it (occluded space says nothing) or where the pixel has no depth."""
    in_band = np.where(sdf > -trunc, view.weight.ravel()[pix], 0)
    w = np.where(sdf >= trunc, view.free_weight.ravel()[pix], in_band)
    return np.where(np.isfinite(sdf) & (view.depth.ravel()[pix] > 0), w, 0).astype(np.float32)


def coarse_values(grid: Grid, tsdf: np.ndarray, weight: np.ndarray, options: TSDFOptions,
                  pockets: Pockets | None = None) -> np.ndarray:
    """Per-block value for meshing next to unallocated blocks: +-1, or NaN for unknown (scene
    mode). Object mode: unseen blocks are solid, those wholly in an open pocket free."""
    observed = weight >= (options.solid_weight if grid.object_mode else options.min_weight)
    values = np.full(len(tsdf), np.nan, np.float32)
    values[observed] = np.where(tsdf[observed] >= 0, 1.0, -1.0)
    centres = grid.block_centres(all_block_coords(grid))
    beyond = beyond_crop_box(grid, centres)
    if grid.object_mode:
        values[~observed] = -1.0  # nobody could see in: inside the object, unless a pocket
        values[outside_region(grid, centres) | beyond] = 1.0
        if pockets is not None:
            values[~observed & per_block(pockets.opened).all(axis=1)] = 1.0
    else:
        values[beyond] = np.nan
    return values


def beyond_crop_box(grid: Grid, points: np.ndarray) -> np.ndarray:
    """Points outside the crop box (none without one)."""
    if grid.crop_box is None:
        return np.zeros(len(points), bool)
    return np.any((points < grid.crop_box[0]) | (points > grid.crop_box[1]), axis=1)


def outside_region(grid: Grid, points: np.ndarray) -> np.ndarray:
    """Object mode: points below the floor cut count as free space."""
    if grid.floor is None:
        return np.zeros(len(points), bool)
    height = points @ grid.floor[:3] + grid.floor[3]
    return height < grid.floor_cut


def allocate_blocks(grid: Grid, views: list[View], coarse: np.ndarray, options: TSDFOptions,
                    pockets: Pockets | None = None) -> np.ndarray:
    """Sorted keys of the blocks within truncation of an observed surface point (the views'
    blocks found on ``options.threads`` threads).

    Object mode also allocates the solid blocks that touch free ones, so that the cut at the
    floor and any surface the points missed are meshed at full resolution; deeper solid blocks
    keep their coarse value.
    """
    marked = np.zeros(int(np.prod(grid.blocks)), bool)
    band = (-grid.truncation, 0.0, grid.truncation)
    with Workers(options.threads, "da3-fuse") as workers:
        keys = workers.map(lambda view: surface_block_keys(grid, view, band), views)
    for view_keys in keys:
        marked[view_keys] = True
    if grid.object_mode:
        solid = (coarse < 0).reshape(tuple(grid.blocks))
        free = np.pad(~solid, 1, constant_values=True)  # beyond the grid is free: a cut object
        marked |= (solid & dilate(free)[1:-1, 1:-1, 1:-1]).ravel()  # must be meshed there
        if pockets is not None:  # and a pocket's voxels where it meets the object
            marked |= per_block(pockets.opened | pockets.walls).any(axis=1) & (coarse < 0)
    keys = np.flatnonzero(marked)
    needed = len(keys) * BLOCK_VOXELS * BYTES_PER_VOXEL / 2**20
    if needed > options.memory_mb:
        raise ValueError(f"the fused volume needs {needed:.0f} MB, over the {options.memory_mb:.0f} "
                         "MB budget: raise the voxel size")
    return keys


def allocation_stride(grid: Grid, view: View) -> int:
    """Pixel step whose footprint at the nearest voting depth is a third of a block."""
    voting = view.depth[view.weight > 0]
    if voting.size == 0:
        return 1
    footprint = float(np.percentile(voting, 1)) / max(view.K[0, 0], view.K[1, 1])
    return int(max(1, min(8, grid.block_extent / (3 * footprint))))


def surface_block_keys(grid: Grid, view: View, offsets: tuple[float, ...]) -> np.ndarray:
    """Keys of the blocks holding each voting pixel's point moved each of ``offsets`` along its
    ray (a key may repeat).

    Pixels are taken every few rows and columns, as long as neighbouring samples stay under a
    third of a block apart: no block a surface crosses is skipped, at a fraction of the cost.
    """
    stride = allocation_stride(grid, view)
    weight = np.zeros_like(view.weight)
    weight[::stride, ::stride] = view.weight[::stride, ::stride]
    v, u = np.nonzero(weight > 0)
    z = view.depth[v, u].astype(np.float64)
    fx, fy, cx, cy = cameras.lens(view.K)
    rays = np.stack(cameras.camera_points(np.ones(len(u)), cameras.pixel_slope(u, fx, cx),
                                          cameras.pixel_slope(v, fy, cy)), axis=1)
    length = np.linalg.norm(rays, axis=1)
    keys = []
    for offset in offsets:
        cam = rays * (z + offset / length)[:, None]
        world = cameras.camera_to_world(cam, view.R, view.t)
        coords = np.floor((world - grid.origin) / grid.voxel_size + 0.5).astype(np.int64) // BLOCK
        inside = np.all((coords >= 0) & (coords < grid.blocks), axis=1)
        keys.append(grid.block_keys(coords[inside]))
    return np.concatenate(keys)


# --------------------------------------------------------------------------------------------
# fine integration (the hot loop; engine.fusion.tsdf_torch has the same on a torch device)


def local_offsets() -> np.ndarray:
    """(512,3) voxel offsets inside a block, in the flat order x*64 + y*8 + z."""
    r = np.arange(BLOCK)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


def integrate_views(grid: Grid, keys: np.ndarray, views: list[View], options: TSDFOptions,
                    progress: Progress) -> Volume:
    """Accumulate every view's votes into the allocated blocks (each view's blocks shared
    among ``options.threads`` threads)."""
    volume = empty_volume(grid, keys)
    with Workers(options.threads, "da3-fuse") as workers:
        for i, view in enumerate(views):
            integrate_view(grid, volume, view, options.chunk_voxels, workers)
            progress((i + 1) / len(views), f"fused view {i + 1} of {len(views)}")
    return volume


def empty_volume(grid: Grid, keys: np.ndarray) -> Volume:
    m = len(keys)
    return Volume(keys, grid.block_coords(keys), np.zeros((m, BLOCK_VOXELS), np.float32),
                  np.zeros((m, BLOCK_VOXELS), np.float32),
                  np.zeros((m, BLOCK_VOXELS, 3), np.float32),
                  np.zeros((m, BLOCK_VOXELS), np.float32))


def visible_blocks(grid: Grid, coords: np.ndarray, view: View) -> np.ndarray:
    """Indices of blocks that may touch the view's image (centre test widened by the radius)."""
    centres = grid.block_centres(coords)
    u, v, z = project(centres, view)
    radius = 0.87 * grid.block_extent
    h, w = view.depth.shape
    margin = radius * max(view.K[0, 0], view.K[1, 1]) / np.maximum(z - radius, 1e-9)
    near = z > -radius
    behind = z - radius <= 0  # straddles the camera plane: keep, the voxels decide
    inside = (u > -margin) & (u < w + margin) & (v > -margin) & (v < h + margin)
    return np.flatnonzero(near & (inside | behind))


def integrate_view(grid: Grid, volume: Volume, view: View, chunk_voxels: int,
                   workers: Workers | None = None) -> None:
    """Projective TSDF update of the visible blocks, ``chunk_voxels`` voxels at a time; the
    chunks are whole blocks, so the ``workers`` never write the same voxel."""
    workers = workers or Workers(1)
    sel = visible_blocks(grid, volume.coords, view)
    # camera axes; no ``@``: see cameras.rotated
    local = cameras.rotated(local_offsets() * grid.voxel_size, view.R).astype(np.float32).T
    maps = padded_maps(view)
    # CHUNKS_PER_THREAD chunks or more per thread: some chunks of a view hold more of its
    # surface than others, and the threads even out the work
    step = max(1, min(chunk_voxels // BLOCK_VOXELS, -(-len(sel) // (CHUNKS_PER_THREAD * workers.count))))

    def update(start: int) -> None:
        blocks = chunk_blocks(sel[start:start + step])
        base = (cameras.rotated(grid.origin + volume.coords[blocks] * BLOCK * grid.voxel_size, view.R)
                + view.t).astype(np.float32).T
        cam = [base[a, :, None] + local[a] for a in range(3)]  # x, y, z (c,512)
        update_chunk(volume, blocks, cam, view, maps, grid.truncation)

    workers.map(update, range(0, len(sel), step))


CHUNKS_PER_THREAD = 4
# A chunk whose blocks span at most this many times their number is updated as one run of
# consecutive blocks, in place, the unseen ones between included (their voxels fall outside
# the view's image and get no vote): gathering and scattering the blocks of a chunk took a
# third of its update. A view's blocks are mostly consecutive on a walk through a scene; in a
# room seen a part at a time they are scattered, and are gathered as before.
RUN_SPAN = 1.1


def chunk_blocks(chunk: np.ndarray) -> slice | np.ndarray:
    """The blocks to update for ``chunk`` (sorted block indices): a slice over their span when
    it is short enough (``RUN_SPAN``), else the indices themselves."""
    span = int(chunk[-1]) - int(chunk[0]) + 1
    return slice(int(chunk[0]), int(chunk[-1]) + 1) if span <= RUN_SPAN * len(chunk) else chunk


def padded_maps(view: View) -> dict:
    """Flat depth and weights with one extra pixel of nothing (index H*W) for voxels that fall
    outside the image, so the update needs no masking."""
    maps = {k: np.append(getattr(view, k).ravel(), np.float32(0))
            for k in ("depth", "weight", "free_weight")}
    if view.color is not None:
        maps["color"] = np.append(view.color.reshape(-1, 3), np.zeros((1, 3), np.uint8), axis=0)
    return maps


def update_chunk(volume: Volume, blocks: slice | np.ndarray, cam: np.ndarray, view: View,
                 maps: dict, trunc: float) -> None:
    """Votes of one view for whole blocks at once (dense rows beat scattered voxels).

    The projection is ``engine.core.cameras.image_positions`` with the division taken once
    (x and y share it), in float32 like the voxels; tsdf_torch's mirrors it."""
    h, w = view.depth.shape
    x, y, z = cam
    inv = 1 / np.maximum(z, np.float32(1e-9))
    u = np.float32(view.K[0, 0]) * x * inv + np.float32(view.K[0, 2])
    v = np.float32(view.K[1, 1]) * y * inv + np.float32(view.K[1, 2])
    ok = (z > 1e-9) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    # truncation is the floor here: only non-negative coordinates are kept; voxels behind the
    # camera project to inf, whose cast is garbage that ``ok`` throws away
    with np.errstate(invalid="ignore"):
        pix = np.where(ok, v.astype(np.int32) * w + u.astype(np.int32), h * w)
    sdf = maps["depth"][pix] - z
    wt = np.where(sdf >= trunc, maps["free_weight"][pix],
                  np.where(sdf > -trunc, maps["weight"][pix], np.float32(0)))
    volume.tsdf[blocks] += wt * np.minimum(sdf / np.float32(trunc), np.float32(1))
    volume.weight[blocks] += wt
    if "color" in maps:
        # colour from the voxels within the band, on whole rows like the votes: picking those
        # voxels out (np.nonzero, then scattered updates) took twice as long as all the votes
        wn = np.where(np.abs(sdf) < trunc, wt, np.float32(0))
        colour = maps["color"].take(pix, axis=0).astype(np.float32)
        colour *= wn[..., None]
        volume.color[blocks] += colour
        volume.color_weight[blocks] += wn


# --------------------------------------------------------------------------------------------
# from votes to values


def voxel_values(grid: Grid, volume: Volume, options: TSDFOptions,
                 pockets: Pockets | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(M,512) signed values in [-1,1], NaN where unknown (scene mode); and the voxels an open
    pocket reached ((M,512) bool; None without one).

    Object mode: too little evidence means nobody could see in, so solid, unless an open pocket
    reaches it (``pockets``); below the floor cut and on the grid's outer layer is free, which
    closes the object at the floor and box faces.
    """
    observed = volume.weight >= (options.solid_weight if grid.object_mode else options.min_weight)
    values = volume.tsdf / np.maximum(volume.weight, np.float32(1e-12))
    if not grid.object_mode:
        values[~observed | outside_box(grid, volume.coords)] = np.nan
        return values, None
    values[~observed] = -1.0
    reached = None
    if pockets is not None and pockets.opened.any():
        # a voxel with any vote for solid stops a pocket: a thin leg few views saw stays
        reached = pocket_voxels(pockets, volume.keys, ~observed & (volume.tsdf >= 0))
        values[reached] = 1.0
    values[forced_free(grid, volume.coords)] = 1.0
    return values, reached


def outside_box(grid: Grid, coords: np.ndarray) -> np.ndarray:
    """(M,512) voxels outside the crop box (none without one); the grid is whole blocks, so it
    reaches past the box."""
    out = np.zeros((len(coords), BLOCK_VOXELS), bool)
    if grid.crop_box is None:
        return out
    local = local_offsets()
    for axis in range(3):
        x = grid.origin[axis] + grid.voxel_size * (coords[:, axis, None] * BLOCK + local[None, :, axis])
        out |= (x < grid.crop_box[0, axis]) | (x > grid.crop_box[1, axis])
    return out


def forced_free(grid: Grid, coords: np.ndarray) -> np.ndarray:
    """(M,512) object mode: voxels below the floor cut or on the grid's outer layer.

    Computed per block plus per voxel offset, so no (M,512,3) array of positions is made.
    """
    local = local_offsets()
    last = grid.blocks * BLOCK - 1
    free = outside_box(grid, coords)
    for axis in range(3):
        idx_block = coords[:, axis, None] * BLOCK
        free |= (idx_block + local[None, :, axis] == 0) | (idx_block + local[None, :, axis] == last[axis])
    if grid.floor is not None:
        n = grid.floor[:3]
        per_block = grid.origin @ n + grid.floor[3] + grid.voxel_size * BLOCK * (coords @ n)
        per_voxel = grid.voxel_size * (local @ n)
        free |= (per_block[:, None] + per_voxel[None, :]) < grid.floor_cut
    return free
