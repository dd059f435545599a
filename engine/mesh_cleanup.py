"""A fused mesh made clean: grain smoothed away without shrinking it, small holes closed
(numpy only, no bpy).

The views' leftover disagreement, a fraction of a voxel, shows on the meshed level set as a
grain a voxel or two wide. Taubin's lambda|mu smoothing is a low-pass filter on the mesh: it
removes that grain and leaves shapes larger than a few voxels, thin parts included, where
they are (plain Laplacian smoothing would shrink them). Open borders stay put.

A hole in a surface is a loop of border edges; a loop of a few edges (a pixel or two that no
view saw well) is closed with a fan of triangles wound like its border. Longer loops (a room's
window, the edge of what the cameras saw) are left open.
"""

from __future__ import annotations

import numpy as np

SMOOTH_ITERATIONS = 4
LAMBDA, MU = 0.5, -0.53  # Taubin's pass band: shapes a few edges wide and larger survive
MAX_HOLE_EDGES = 24


def border_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) bool: on an edge that only one triangle has."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e.sort(axis=1)
    keys, counts = np.unique(e[:, 0].astype(np.int64) * num_vertices + e[:, 1], return_counts=True)
    once = keys[counts == 1]
    on = np.zeros(num_vertices, bool)
    on[once // num_vertices] = True
    on[once % num_vertices] = True
    return on


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray,
                  iterations: int = SMOOTH_ITERATIONS) -> np.ndarray:
    """Vertices moved by ``iterations`` lambda|mu passes of the umbrella operator; border
    vertices stay."""
    if not len(faces) or iterations <= 0:
        return vertices
    n = len(vertices)
    # every triangle's edges, one way: an inner edge comes twice (once from each side), so
    # each neighbour weighs the same
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    degree = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
    free = (degree > 0) & ~border_vertices(faces, n)
    inverse = 1.0 / np.maximum(degree, 1)
    v = vertices.astype(np.float64)
    for factor in (LAMBDA, MU) * iterations:
        pull = np.empty_like(v)
        for k in range(3):
            total = np.bincount(a, v[b, k], minlength=n) + np.bincount(b, v[a, k], minlength=n)
            pull[:, k] = total * inverse - v[:, k]
        v[free] += factor * pull[free]
    return v.astype(vertices.dtype)


def fill_small_holes(faces: np.ndarray, num_vertices: int,
                     max_edges: int = MAX_HOLE_EDGES) -> tuple[np.ndarray, int]:
    """Faces with every border loop of at most ``max_edges`` edges closed by a fan, and the
    number of holes closed. Loops through a vertex with more than one border edge (two holes
    touching, a non-manifold corner) are left alone."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    key = directed[:, 0] * num_vertices + directed[:, 1]
    reverse = directed[:, 1] * num_vertices + directed[:, 0]
    border = directed[~np.isin(key, reverse)]  # no triangle on the other side
    if not len(border):
        return faces, 0
    starts, counts = np.unique(border[:, 0], return_counts=True)
    simple = np.isin(border[:, 0], starts[counts == 1]) & np.isin(border[:, 1], starts[counts == 1])
    border = border[simple]
    # the loop runs the border edges backwards (they follow the triangles' winding, the fill
    # must wind the other way): from each vertex, the border edge that ends there
    step = np.full(num_vertices, -1, np.int64)
    step[border[:, 1]] = border[:, 0]
    seen = np.zeros(num_vertices, bool)
    fans = []
    for start in border[:, 1]:
        if seen[start]:
            continue
        loop = [start]
        seen[start] = True
        nxt = step[start]
        while nxt >= 0 and nxt != start and not seen[nxt] and len(loop) <= max_edges:
            loop.append(nxt)
            seen[nxt] = True
            nxt = step[nxt]
        if nxt == start and 3 <= len(loop) <= max_edges:
            ring = np.array(loop)
            fans.append(np.stack([np.full(len(ring) - 2, ring[0]), ring[1:-1], ring[2:]], axis=1))
    if not fans:
        return faces, 0
    return np.concatenate([faces, np.concatenate(fans).astype(faces.dtype)]), len(fans)
