"""Object mode: which of the space no view could see is inside the object, and which is an open
pocket beside it, decided on cells of half a block from one coarse vote at each.

Object mode closes the object with the space no view could see into: behind a ball's front, it
is the ball. But cameras that look down on a chair never see under its seat either, and made
solid that space hung below the seat as a skirt, down to where the views' rays passed under it
(bench_fusion's chair with exact depth and poses: 37% of the fused area, F@1% 0.70; 0.99 with
the pockets opened). Unseen space is opened where

- at least ``OPEN_DIRECTIONS`` of the six axis directions from a cell, passing over unseen
  cells, first meet seen free space (or leave the grid) rather than the band of solid votes
  behind an observed surface: under the seat only "up" meets the seat;
- and its pocket (the 6-connected unseen cells) holds no enclosed inside: the unseen inside of a
  ball is one pocket with the unseen space under it, whose lower cells alone pass, and opened
  they would cut the ball flat (the four parts of bench_fusion stood at F@1% 0.964 then, 0.996
  before anything was opened). A pocket where more than a few cells have at most one way out
  (the ball's middle: only "down") stays solid.

Space below a floor cut or outside a crop box is :data:`FREE` to the walks, like seen free space.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core.geometry import island_labels
from .base import BLOCK, BLOCK_VOXELS

UNSEEN, SOLID, FREE = -1, 0, 1  # a cell's state from its coarse vote
# Pockets are told apart on cells of half a block: on whole blocks (8 voxels), a ball 3 blocks
# across had no inside to keep, and the cut took its underside.
POCKET_CELL = BLOCK // 2
CELLS_PER_BLOCK = BLOCK // POCKET_CELL
OPEN_DIRECTIONS = 4
# A pocket with this share of cells from which at most ENCLOSED_DIRECTIONS run out holds the
# inside of something: the unseen space under a chair's seat had 0-1% such cells on the
# Cycles chair (milder and hard errors), the inside of a ball with the space under it 16-74%.
ENCLOSED_DIRECTIONS, ENCLOSED_SHARE = 1, 0.05


class Pockets(NamedTuple):
    """The open pockets of a grid of cells: the cells opened, and the cells around them that the
    pockets may reach into voxel by voxel (:func:`pocket_walls`)."""

    opened: np.ndarray  # 3-D bool, the grid's cells
    walls: np.ndarray  # 3-D bool


def find_pockets(states: np.ndarray) -> Pockets:
    """The open pockets among the UNSEEN cells of ``states`` (3-D: UNSEEN, SOLID or FREE)."""
    opened = open_pockets(states)
    return Pockets(opened, pocket_walls(states == UNSEEN, opened))


def open_pockets(states: np.ndarray) -> np.ndarray:
    """3-D bool shaped like ``states`` (UNSEEN, SOLID or FREE cells): the unseen cells that are
    open (:func:`open_directions`) in pockets with under ``ENCLOSED_SHARE`` of enclosed cells."""
    unseen = states == UNSEEN
    directions = open_directions(states)
    pocket = island_labels(neighbour_pairs(unseen), unseen.size).reshape(unseen.shape)
    enclosed = unseen & (directions <= ENCLOSED_DIRECTIONS)
    share = (np.bincount(pocket[enclosed], minlength=unseen.size)
             / np.maximum(np.bincount(pocket[unseen], minlength=unseen.size), 1))
    return unseen & (directions >= OPEN_DIRECTIONS) & (share[pocket] < ENCLOSED_SHARE)


def open_directions(states: np.ndarray) -> np.ndarray:
    """int8 shaped like ``states``: of the six axis directions from each cell, how many, passing
    over UNSEEN cells, first meet a FREE cell or leave the grid."""
    opens = np.zeros(states.shape, np.int8)
    for axis in range(3):
        along, counted = np.moveaxis(states, axis, 0), np.moveaxis(opens, axis, 0)
        for order in (range(len(along)), range(len(along) - 1, -1, -1)):
            met = np.full(along.shape[1:], FREE, np.int8)  # off the grid is free
            for i in order:  # what a walk from cell i meets first, built walking the other way
                counted[i] += met == FREE
                met = np.where(along[i] == UNSEEN, met, along[i])
    return opens


def neighbour_pairs(mask: np.ndarray) -> np.ndarray:
    """(k,2) flat indices of the face-adjacent pairs of cells that are both in ``mask``."""
    index = np.arange(mask.size).reshape(mask.shape)
    pairs = []
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        both = mask[lo] & mask[hi]
        pairs.append(np.stack([index[lo][both], index[hi][both]], axis=1))
    return np.concatenate(pairs)


def pocket_walls(unseen: np.ndarray, opened: np.ndarray) -> np.ndarray:
    """3-D bool: the cells that an open pocket may reach into, voxel by voxel
    (:func:`pocket_voxels`), so that it begins where the band behind an observed surface ends,
    not at the cells' faces (a seat's underside comes out flat): the cells touching an opened
    cell, but not those that also touch the enclosed inside of an object (a ball's unseen
    underside where a pocket meets it; opened, its voxels would dish the ball)."""
    at_pocket = dilate(opened)
    inside = unseen & ~at_pocket
    return at_pocket & ~(dilate(inside) & ~opened)


def pocket_voxels(pockets: Pockets, keys: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """(len(keys),512) bool: the ``unseen`` voxels of the allocated blocks at ``keys`` that the
    open pockets reach, face to face over unseen voxels, from their opened cells in blocks that
    hold no surface, through opened and wall cells. The band of a leg stops it: the leg's unseen
    core stays solid, even in an opened cell (opening every unseen voxel there emptied the legs
    of a chair at coarse voxels). Each group of touching pocket blocks floods in its own box:
    one box round pockets scattered over the grid took 2.4 s at 320 voxels across."""
    opened, walls = pockets
    blocks = tuple(n // CELLS_PER_BLOCK for n in opened.shape)
    out = np.zeros((len(keys), BLOCK_VOXELS), bool)
    touched = per_block(opened | walls).any(axis=1).reshape(blocks)
    if not touched.any():
        return out
    row_of = np.full(blocks, -1, np.int64)
    row_of.ravel()[keys] = np.arange(len(keys))
    group = island_labels(neighbour_pairs(touched), touched.size).reshape(blocks)[touched]
    corners = np.argwhere(touched)
    first, which = np.unique(group, return_inverse=True)
    low = np.full((len(first), 3), np.iinfo(np.int64).max)
    high = np.zeros((len(first), 3), np.int64)
    np.minimum.at(low, which, corners)
    np.maximum.at(high, which, corners + 1)
    for lo, hi in zip(low, high, strict=True):
        flood_box(pockets, row_of, unseen, tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), out)
    return out


def flood_box(pockets: Pockets, row_of: np.ndarray, unseen: np.ndarray, box: tuple, out: np.ndarray):
    """:func:`pocket_voxels` within ``box`` (slices of the grid's blocks), into ``out``."""
    opened, walls = pockets
    cell_box = tuple(slice(b.start * CELLS_PER_BLOCK, b.stop * CELLS_PER_BLOCK) for b in box)
    rows = row_of[box]
    allocated = rows >= 0
    unseen_box = np.zeros((*rows.shape, BLOCK_VOXELS), bool)
    unseen_box[allocated] = unseen[rows[allocated]]
    reach = upsample(opened[cell_box], POCKET_CELL) & ~upsample(allocated, BLOCK)
    passable = reach | (to_dense(unseen_box) & upsample((opened | walls)[cell_box], POCKET_CELL))
    while True:
        grown = grow(reach) & passable
        if np.array_equal(grown, reach):
            break
        reach = grown
    out[rows[allocated]] |= from_dense(reach)[allocated]


def per_block(cells: np.ndarray) -> np.ndarray:
    """(blocks, CELLS_PER_BLOCK^3) the cells of each block, blocks in the grid's key order."""
    c = CELLS_PER_BLOCK
    x, y, z = (n // c for n in cells.shape)
    return cells.reshape(x, c, y, c, z, c).transpose(0, 2, 4, 1, 3, 5).reshape(x * y * z, c ** 3)


def upsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """Each cell of a 3-D array as ``factor``^3 cells."""
    return mask.repeat(factor, axis=0).repeat(factor, axis=1).repeat(factor, axis=2)


def to_dense(per_block: np.ndarray) -> np.ndarray:
    """(X,Y,Z,512) per-block voxels (flat x*64 + y*8 + z) to one (8X,8Y,8Z) array."""
    x, y, z = per_block.shape[:3]
    return per_block.reshape(x, y, z, BLOCK, BLOCK, BLOCK).transpose(0, 3, 1, 4, 2, 5).reshape(
        x * BLOCK, y * BLOCK, z * BLOCK)


def from_dense(dense: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_dense`."""
    x, y, z = (n // BLOCK for n in dense.shape)
    return dense.reshape(x, BLOCK, y, BLOCK, z, BLOCK).transpose(0, 2, 4, 1, 3, 5).reshape(
        x, y, z, BLOCK_VOXELS)


def grow(mask: np.ndarray) -> np.ndarray:
    """3-D dilation by one cell, 6-neighbourhood."""
    out = mask.copy()
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        out[lo] |= mask[hi]
        out[hi] |= mask[lo]
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    """3-D dilation by one cell, 26-neighbourhood."""
    out = mask.copy()
    for axis in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out
