"""Meshing: marching tetrahedra over the voxel values.

Each cube is split into six tetrahedra along its main diagonal (the Kuhn split): every
tetrahedron is cut by at most two triangles, no ambiguity tables are needed, and neighbouring
cubes agree on their shared faces, so a closed level set gives a closed, manifold mesh.
Triangles are wound so that normals point to positive distance (free space). In scene mode only
the cubes that some view saw from the front are meshed (:func:`seen_from_front`).
"""

from __future__ import annotations

import numpy as np

from ..core.threads import Workers
from .base import BLOCK, BLOCK_VOXELS, Grid, View
from .views import sample_view

# Kuhn split of the unit cube: one tetrahedron per axis order, all sharing the main diagonal.
# Corner c of the cube is at offset (c >> 2 & 1, c >> 1 & 1, c & 1).
KUHN_TETS = np.array([[0, 4, 6, 7], [0, 4, 5, 7], [0, 2, 6, 7],
                      [0, 2, 3, 7], [0, 1, 5, 7], [0, 1, 3, 7]])
TET_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
CORNER_OFFSETS = np.array([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(8)])


def tet_case_table() -> np.ndarray:
    """(16, 2, 3) tet-edge indices of up to two triangles per sign case (-1: none).

    Bit i of the case is set when corner i is negative; see wound_case_table for the winding.
    """
    edge_of = {tuple(e): i for i, e in enumerate(TET_EDGES.tolist())}

    def edge(a, b):
        return edge_of[(min(a, b), max(a, b))]

    table = -np.ones((16, 2, 3), np.int64)
    for case in range(1, 15):
        neg = [i for i in range(4) if case >> i & 1]
        pos = [i for i in range(4) if not case >> i & 1]
        lone, others = (neg[0], pos) if len(neg) == 1 else (pos[0], neg) if len(pos) == 1 else (None, None)
        if lone is not None:
            table[case, 0] = [edge(lone, o) for o in others]
        else:
            (a, b), (c, d) = neg, pos
            table[case, 0] = [edge(a, c), edge(a, d), edge(b, d)]
            table[case, 1] = [edge(a, c), edge(b, d), edge(b, c)]
    return table


def wound_case_table() -> np.ndarray:
    """(6, 16, 2, 3): the case table wound, for each Kuhn tetrahedron, so that every triangle's
    normal points from the negative corners to the positive ones.

    A plane cut of a tetrahedron keeps its orientation wherever its corners slide along their
    edges, so the winding is fixed by the case alone: evaluated once here at mid-edges.
    """
    table = np.repeat(tet_case_table()[None], 6, axis=0)
    for k, tet in enumerate(KUHN_TETS):
        corners = CORNER_OFFSETS[tet].astype(float)
        for case in range(1, 15):
            negative = np.array([case >> i & 1 for i in range(4)], bool)
            uphill = corners[~negative].mean(axis=0) - corners[negative].mean(axis=0)
            for slot in range(2):
                edges = table[k, case, slot]
                if edges[0] < 0:
                    continue
                mid = corners[TET_EDGES[edges]].mean(axis=1)  # (3,3) mid-edge points
                if np.cross(mid[1] - mid[0], mid[2] - mid[0]) @ uphill < 0:
                    table[k, case, slot] = edges[::-1]
    return table


TET_CASES = wound_case_table()
# per tetrahedron, case, triangle and corner: the cube corners at the ends of the cut edge
CASE_ENDS = np.where(TET_CASES[..., None] >= 0,
                     KUHN_TETS[np.arange(6)[:, None, None, None, None],
                               TET_EDGES[np.maximum(TET_CASES, 0)]], -1)  # (6,16,2,3,2)
# per pair of cube corners: the edge's lower end (offsets) and its direction bits
EDGE_LOWER = np.minimum(CORNER_OFFSETS[:, None], CORNER_OFFSETS[None, :])  # (8,8,3)
EDGE_DIRECTION = np.abs(CORNER_OFFSETS[None, :] - CORNER_OFFSETS[:, None]) @ np.array([4, 2, 1])


def cube_case_table() -> tuple[np.ndarray, np.ndarray]:
    """The triangles of a cube by its sign code (bit c set: corner c negative): for each code,
    rows of CASE_ENDS (the cube corners at the ends of each triangle's cut edges, (3,2)), in
    the order of its tetrahedra and their triangles; and where each code's rows start (257,).
    One look-up per cube instead of gathering every tetrahedron's (2,3,2) ends and searching
    them for triangles (the room's marching: 0.77 s -> 0.56 s)."""
    rows, starts = [], [0]
    for code in range(256):
        for k, tet in enumerate(KUHN_TETS):
            case = sum((code >> int(c) & 1) << i for i, c in enumerate(tet))
            rows.extend(ends for ends in CASE_ENDS[k, case] if ends[0, 0] >= 0)
        starts.append(len(rows))
    return np.array(rows).reshape(-1, 3, 2), np.array(starts)


CUBE_ENDS, CUBE_STARTS = cube_case_table()
CORNER_SIGNS = 2 * CORNER_OFFSETS.astype(np.float64) - 1  # values @ signs: their gradient


def mesh_volume(grid: Grid, keys: np.ndarray, values: np.ndarray, coarse: np.ndarray,
                views: list[View] | None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Marching tetrahedra on ``threads`` threads; with ``views`` (scene mode) only cubes some
    view saw from the front (:func:`seen_from_front`)."""
    front = None if views is None else (
        lambda points, normals: seen_from_front(points, normals, views, grid.truncation))
    with Workers(threads, "da3-fuse") as workers:
        return extract_surface(grid, keys, values, coarse, front, workers=workers)


def seen_from_front(centres: np.ndarray, normals: np.ndarray, views: list[View],
                    trunc: float) -> np.ndarray:
    """Surface pieces that some view saw from their front side, near where it saw a surface.

    Where views disagree on the depth of a wall by more than the truncation, the views that
    put it too far vote 'free' behind the others' band and a second, inside-out sheet appears
    behind the wall. No camera ever faced such a sheet: this test removes it (per cube, before
    meshing: eight times fewer tests than per triangle).
    """
    seen = np.zeros(len(centres), bool)
    pending = np.arange(len(centres))  # once a view saw a piece, the others need not look
    for view in views:
        here = centres[pending]
        d, pix, z = sample_view(view, here)
        near = (d > 0) & (np.abs(d - z) < 1.5 * trunc) & (view.weight.ravel()[pix] > 0)
        eye = -view.R.T @ view.t
        front = near & (np.einsum("ij,ij->i", normals[pending], eye - here) > 0)
        seen[pending[front]] = True
        pending = pending[~front]
    return seen


def extract_surface(grid: Grid, keys: np.ndarray, values: np.ndarray, coarse: np.ndarray,
                    cube_filter=None, chunk_blocks: int = 2048, workers: Workers | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Marching tetrahedra over the allocated blocks (and the cubes that border them).

    ``cube_filter(centres, normals) -> bool mask`` may veto sign-changing cubes (world centres,
    normals along the value gradient). Returns world vertices (V,3) and faces (F,3) wound
    towards positive values. The chunks of ``chunk_blocks`` blocks are marched on the
    ``workers``' threads, at least one chunk each: the triangles come in the blocks' order
    however the blocks are cut, so the mesh is the same for any number of threads.
    """
    workers = workers or Workers(1)
    mesh_keys = meshing_blocks(grid, keys)
    step = max(1, min(chunk_blocks, -(-len(mesh_keys) // workers.count)))

    def march(start: int):
        chunk = mesh_keys[start:start + step]
        return march_blocks(grid, chunk, padded_blocks(grid, keys, values, coarse, chunk), cube_filter)

    corners = workers.map(march, range(0, len(mesh_keys), step))
    if not corners or sum(len(c[0]) for c in corners) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    edge, along, from_upper = (np.concatenate(c) for c in zip(*corners, strict=True))
    unique, first, inverse = np.unique(edge, return_index=True, return_inverse=True)
    vertices = grid.origin + edge_points(grid, unique, along[first], from_upper[first]) * grid.voxel_size
    return vertices, drop_degenerate(inverse.reshape(-1, 3))


def meshing_blocks(grid: Grid, keys: np.ndarray) -> np.ndarray:
    """Allocated blocks plus their neighbours on the negative side: a cube belongs to the
    block of its lowest corner, so those neighbours own the cubes that reach into ours."""
    coords = grid.block_coords(keys)
    shifted = [coords - CORNER_OFFSETS[c] for c in range(8)]
    coords = np.concatenate(shifted)
    coords = coords[np.all(coords >= 0, axis=1)]
    return np.unique(grid.block_keys(coords))


def padded_blocks(grid: Grid, keys: np.ndarray, values: np.ndarray, coarse: np.ndarray,
                  chunk: np.ndarray) -> np.ndarray:
    """(m, 9, 9, 9) values of each block plus one layer from its +x/+y/+z neighbours."""
    coords = grid.block_coords(chunk)
    out = np.empty((len(chunk), BLOCK + 1, BLOCK + 1, BLOCK + 1), np.float32)
    for c in range(8):
        off = CORNER_OFFSETS[c]
        src = block_values(grid, keys, values, coarse, coords + off)
        sx, sy, sz = (slice(0, BLOCK) if o == 0 else slice(0, 1) for o in off)
        dx, dy, dz = (slice(0, BLOCK) if o == 0 else slice(BLOCK, BLOCK + 1) for o in off)
        out[:, dx, dy, dz] = src[:, sx, sy, sz]
    return out


def block_values(grid: Grid, keys: np.ndarray, values: np.ndarray, coarse: np.ndarray,
                 coords: np.ndarray) -> np.ndarray:
    """(m,8,8,8) voxel values of blocks at ``coords``: fine if allocated, else the coarse vote;
    outside the grid, free in object mode and unknown otherwise."""
    in_grid = np.all((coords >= 0) & (coords < grid.blocks), axis=1)
    out = np.full((len(coords), BLOCK_VOXELS), 1.0 if grid.object_mode else np.nan, np.float32)
    k = grid.block_keys(np.where(in_grid[:, None], coords, 0))
    pos = np.clip(np.searchsorted(keys, k), 0, max(len(keys) - 1, 0))
    fine = in_grid & (keys[pos] == k) if len(keys) else np.zeros(len(k), bool)
    out[fine] = values[pos[fine]]
    coarse_only = in_grid & ~fine
    out[coarse_only] = coarse[k[coarse_only], None]
    return out.reshape(-1, BLOCK, BLOCK, BLOCK)


def march_blocks(grid: Grid, chunk: np.ndarray, padded: np.ndarray, cube_filter=None):
    """Triangles of the cubes of these blocks whose corners change sign, three corners after
    another: see :func:`march_tets`."""
    corners = [padded[:, o[0]:o[0] + BLOCK, o[1]:o[1] + BLOCK, o[2]:o[2] + BLOCK]
               for o in CORNER_OFFSETS]  # 8 views of (m,8,8,8)
    lo, hi = corners[0].copy(), corners[0].copy()
    for c in corners[1:]:  # pairwise: a reduction over a length-8 axis is slow in numpy
        np.minimum(lo, c, out=lo)
        np.maximum(hi, c, out=hi)
    b, x, y, z = np.nonzero((lo < 0) & (hi >= 0))  # NaN propagates and compares false: skipped
    if len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
    cube_values = np.stack([padded[b, x + o[0], y + o[1], z + o[2]] for o in CORNER_OFFSETS], 1)
    cube_origin = grid.block_coords(chunk)[b] * BLOCK + np.stack([x, y, z], axis=1)
    if cube_filter is not None:
        centres = grid.origin + (cube_origin + 0.5) * grid.voxel_size
        keep = cube_filter(centres, np.einsum("nc,ck->nk", cube_values, CORNER_SIGNS))
        cube_origin, cube_values = cube_origin[keep], cube_values[keep]
    return march_tets(grid, cube_origin, cube_values)


def march_tets(grid: Grid, cube_origin: np.ndarray, cube_values: np.ndarray):
    """Per triangle corner (three for each triangle): the grid edge it lies on
    (:func:`edge_keys`), how far along it from the cube corner it was cut from, and whether
    that corner is the edge's upper end. :func:`edge_points` makes the points, once per edge
    (each is shared by about six triangles): the room's marching took 0.56 s with a point at
    every corner, 0.15 s without."""
    code = np.packbits(cube_values < 0, axis=1, bitorder="little")[:, 0]
    count = CUBE_STARTS[1:][code] - CUBE_STARTS[:-1][code]  # triangles per cube
    cube = np.repeat(np.arange(len(code)), count)
    row = CUBE_STARTS[code][cube] + np.arange(len(cube)) - (np.cumsum(count) - count)[cube]
    a, b = np.moveaxis(CUBE_ENDS[row], -1, 0)  # cube corners at each edge's ends (T,3)
    values = cube_values.ravel()
    va, vb = values[cube[:, None] * 8 + a], values[cube[:, None] * 8 + b]
    # Kuhn edges join a corner to one with more offset bits set: the upper end, a larger index
    return edge_keys(grid, cube_origin, cube, a, b).ravel(), (va / (va - vb)).ravel(), (a > b).ravel()


def edge_keys(grid: Grid, cube_origin: np.ndarray, cube: np.ndarray, a: np.ndarray,
              b: np.ndarray) -> np.ndarray:
    """One integer per grid edge (of cube ``cube`` from corner ``a`` to ``b``): lower end's
    voxel index * 8 + the edge's direction bits.

    Kuhn edges always join a corner to one with component-wise larger offsets, so the lower
    end and the direction name the edge uniquely whichever cube it came from.
    """
    n = grid.blocks * BLOCK + 1
    strides = np.array([n[1] * n[2], n[2], 1], np.int64)
    corner = cube_origin[:, 0] * strides[0] + cube_origin[:, 1] * strides[1] + cube_origin[:, 2]
    edge = (EDGE_LOWER @ strides) * 8 + EDGE_DIRECTION  # (8,8) per pair of corners
    return corner[cube][:, None] * 8 + edge[a, b]


def edge_points(grid: Grid, keys: np.ndarray, along: np.ndarray,
                from_upper: np.ndarray) -> np.ndarray:
    """(n,3) points in voxel units on the grid edges ``keys``, ``along`` of the way from the
    lower end (from the upper one where ``from_upper``): what marching each cube would give,
    number for number, made once per edge instead of at each of its triangles' corners."""
    n = grid.blocks * BLOCK + 1
    voxel = keys >> 3
    lower = np.stack([voxel // (n[1] * n[2]), voxel // n[2] % n[1], voxel % n[2]], axis=1)
    direction = (keys[:, None] >> np.array([2, 1, 0])) & 1
    start = (lower + direction * from_upper[:, None]).astype(np.float64)
    return start + along[:, None] * (direction * np.where(from_upper, -1.0, 1.0)[:, None])


def drop_degenerate(faces: np.ndarray) -> np.ndarray:
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return faces[ok]
