"""After meshing: the vertices' colours from the volume, and the connected pieces that stay
(with the mesh topology they are counted by)."""

from __future__ import annotations

import numpy as np

from ..core.geometry import island_labels
from .base import BLOCK, Grid, TSDFOptions, Volume

# Object mode: a piece is kept when at least this share of its area lies where the views look,
# and it is no speck (at least this share of the largest piece's faces).
LOOKED_AT_AREA, SPECK_SHARE = 0.5, 0.01


def vertex_colors(grid: Grid, volume: Volume, vertices: np.ndarray) -> np.ndarray | None:
    """Colour of the nearest allocated voxel that some view saw near its surface."""
    if not np.any(volume.color_weight > 0) or len(vertices) == 0:
        return None
    pos, flat, found = voxel_rows(grid, volume, np.floor((vertices - grid.origin) / grid.voxel_size
                                                          + 0.5).astype(np.int64))
    weight = np.where(found, volume.color_weight[pos, flat], 0)
    rgb = volume.color[pos, flat] / np.maximum(weight, 1e-12)[:, None]
    rgb[weight <= 0] = 0.5  # never seen near its surface: neutral grey
    return (rgb / 255.0).astype(np.float32)


def unseen_vertices(grid: Grid, volume: Volume, vertices: np.ndarray, solid_weight: float) -> np.ndarray:
    """(V,) object mode: vertices between voxels of which one at least had too little evidence
    to count as observed (``solid_weight``): a surface no view saw, which meshing placed where
    the votes behind a seen one ran out or an open pocket began (the underside of a seat)."""
    return beside_voxels(grid, volume, vertices, volume.weight < solid_weight, unallocated=True)


def pocket_wall_vertices(grid: Grid, volume: Volume, vertices: np.ndarray,
                         reached: np.ndarray | None) -> np.ndarray | None:
    """(V,) object mode: vertices beside a voxel that an open pocket reached (``reached``,
    (M,512) bool, or None for no pocket): where the pocket meets the solid (a seat's
    underside)."""
    if reached is None:
        return None
    return beside_voxels(grid, volume, vertices, reached, unallocated=False)


def beside_voxels(grid: Grid, volume: Volume, vertices: np.ndarray, voxels: np.ndarray,
                  unallocated: bool) -> np.ndarray:
    """(V,) vertices of which one at least of the 8 voxels around is among ``voxels`` ((M,512)
    bool), a voxel in a block not allocated counting as ``unallocated``."""
    corner = np.floor((vertices - grid.origin) / grid.voxel_size).astype(np.int64)
    beside = np.zeros(len(vertices), bool)
    for offset in np.ndindex(2, 2, 2):
        pos, flat, found = voxel_rows(grid, volume, corner + offset)
        beside |= np.where(found, voxels[pos, flat], unallocated)
    return beside


def voxel_rows(grid: Grid, volume: Volume, index: np.ndarray):
    """Where the voxels at grid ``index`` (n,3) sit in ``volume``: block row, place in the
    block, and whether their block is allocated (indices off the grid are clamped to it)."""
    index = np.clip(index, 0, grid.blocks * BLOCK - 1)
    keys = grid.block_keys(index // BLOCK)
    pos = np.clip(np.searchsorted(volume.keys, keys), 0, len(volume.keys) - 1)
    local = index % BLOCK
    return pos, local[:, 0] * BLOCK * BLOCK + local[:, 1] * BLOCK + local[:, 2], volume.keys[pos] == keys


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, per_vertex: tuple,
               options: TSDFOptions, components=None, looked_at_points=None):
    """Drop the connected pieces :func:`kept_pieces` rejects, then unused vertices: the
    vertices, the faces and each of ``per_vertex`` (arrays or None) of the vertices kept."""
    if len(faces):
        labels = (components or face_components)(faces, len(vertices))
        keep = kept_pieces(vertices, faces, labels, options, looked_at_points)
        faces = faces[keep[labels]]
    used = np.zeros(len(vertices), bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces], tuple(None if a is None else a[used] for a in per_vertex)


def kept_pieces(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray,
                options: TSDFOptions, looked_at_points=None) -> np.ndarray:
    """(k,) bool: which pieces stay.

    ``keep_largest``: the largest piece alone. Otherwise pieces of ``min_component_faces``
    or more (smaller ones are floaters). Object mode keeps every part the cameras look at (an
    object is often several: a head above a pedestal, a ball inside a ring) and drops specks
    (under ``SPECK_SHARE`` of the largest piece), inside-out pieces (bubbles left inside a
    solid: their volume is negative) and pieces mostly outside the region the views look at
    (``looked_at_points(points) -> bool``).
    """
    sizes = np.bincount(labels)
    if options.keep_largest:
        return np.arange(len(sizes)) == sizes.argmax()
    keep = sizes >= options.min_component_faces
    if not options.object_mode:
        return keep
    keep &= sizes >= SPECK_SHARE * sizes.max()
    keep &= piece_volumes(vertices, faces, labels, len(sizes)) > 0
    if looked_at_points is not None:
        keep &= looked_at_share(vertices, faces, labels, len(sizes), looked_at_points) >= LOOKED_AT_AREA
    return keep


def piece_volumes(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray,
                  count: int) -> np.ndarray:
    """Signed volume enclosed by each piece (positive when its normals point outwards)."""
    v = vertices.astype(np.float64) - vertices.mean(axis=0)
    a, b, c = (v[faces[:, i]] for i in range(3))
    return np.bincount(labels, np.einsum("ij,ij->i", a, np.cross(b, c)) / 6, minlength=count)


def looked_at_share(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, count: int,
                    looked_at_points, samples: int = 200_000) -> np.ndarray:
    """Share of each piece's area whose face centres ``looked_at_points`` accepts (every few
    faces of a large mesh: enough for pieces of ``min_component_faces``)."""
    step = max(1, len(faces) // samples)
    f, lab = faces[::step], labels[::step]
    v = vertices.astype(np.float64)
    a, b, c = (v[f[:, i]] for i in range(3))
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    inside = looked_at_points((a + b + c) / 3)
    total = np.bincount(lab, area, minlength=count)
    return np.bincount(lab, area * inside, minlength=count) / np.maximum(total, 1e-300)


# --------------------------------------------------------------------------------------------
# mesh topology (also what the tests measure)


def face_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Component label (0..k-1) of every face."""
    sides = np.concatenate([faces[:, :2], faces[:, 1:]])  # sides 0-1 and 1-2 join a face's corners
    roots = island_labels(sides, num_vertices)[faces[:, 0]]
    return np.unique(roots, return_inverse=True)[1]


def count_components(faces: np.ndarray, num_vertices: int) -> int:
    return 0 if len(faces) == 0 else int(face_components(faces, num_vertices).max() + 1)


def edge_face_counts(faces: np.ndarray) -> np.ndarray:
    """How many faces share each undirected edge."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1).astype(np.int64)
    return np.unique(edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1], return_counts=True)[1]
