"""A fused mesh made clean: grain smoothed away without shrinking it, small holes closed
(numpy only, no bpy).

The views' leftover disagreement, a fraction of a voxel, shows on the meshed level set as a
grain a voxel or two wide. Taubin's lambda|mu smoothing is a low-pass filter on the mesh: it
removes that grain and leaves shapes larger than a few voxels, thin parts included, where
they are (plain Laplacian smoothing would shrink them). Open borders stay put.

Taubin's filter keeps what is a few voxels wide, so the views' leftover disagreement at that
scale stays as lumps: a chair leg that each misposed view puts a centimetre elsewhere comes out
knobbly. A bilateral filter of the face normals then takes them out and keeps the edges (Zheng
et al. 2011: each face's normal averaged with its neighbours', weighed by how alike they are, so
that the two sides of a crease never mix), and the vertices are moved so that the faces take the
filtered normals (Sun et al. 2007). Moving along the normals, it neither shrinks nor slides the
surface.

A hole in a surface is a loop of border edges; a loop of a few edges (a pixel or two that no
view saw well) is closed with a fan of triangles wound like its border. Longer loops (a room's
window, the edge of what the cameras saw) are left open.

The array work is written once for an array namespace ``xp`` (``engine.core.arrays``): numpy, or
``engine.fusion.tsdf_torch.TorchArrays`` on the worker's GPU. Walking the border loops is sequential
and short (a room has a few thousand border edges): it stays on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.arrays import to_numpy
from ..core.threads import Workers, spans

SMOOTH_ITERATIONS = 4
UNSEEN_SMOOTH_ITERATIONS = 30  # see engine.fusion.base.TSDFOptions
LAMBDA, MU = 0.5, -0.53  # Taubin's pass band: shapes a few edges wide and larger survive
NORMAL_FILTER_ITERATIONS = 30  # see engine.fusion.base.TSDFOptions
# The normals' weight exp(-|n_i - n_j|^2 / (2 s^2)): at 0.35 a neighbour turned 20 degrees away
# weighs 0.7 as much as one alike, one at 90 degrees (a box's edge) 3e-4, so a clean cube's
# edges stay where they are through every pass (at 0.5 they are bevelled by 0.02 of its size, at
# 0.6 by 0.05). On bench_fusion's chair (hard errors) 0.35 to 0.6 measure within 0.005.
NORMAL_SIGMA = 0.35
# Passes that move the vertices toward the filtered normals: 20 reach within 0.002 of the
# normal consistency of 30 on the chair, for two thirds of the time.
VERTEX_FIT_ITERATIONS = 20
MAX_HOLE_EDGES = 24


def clean_surface(vertices, faces, max_hole_edges: int = MAX_HOLE_EDGES,
                  iterations: int = SMOOTH_ITERATIONS, unseen=None, taut=None,
                  unseen_iterations: int = 0, threads: int = 1,
                  normal_iterations: int = NORMAL_FILTER_ITERATIONS, xp=np
                  ) -> tuple[Any, Any, int, int | None]:
    """:func:`fill_small_holes`, then :func:`taubin_smooth` (the ``unseen`` vertices
    ``unseen_iterations`` passes more, the ``taut`` ones among them drawn taut, on up to
    ``threads`` threads), then :func:`filter_normals` (``normal_iterations`` passes): the
    vertices, the faces, the number of holes closed and of the border edges left (None when
    nothing was done, so the edges were never sorted out). The mesh's edges are sorted out
    once for all of it (0.15 s of the room's 960k triangles), the fans' edges merged in.
    ``xp``: the namespace of the arrays."""
    n = len(vertices)
    if not len(faces):
        return vertices, faces, 0, 0
    if (max_hole_edges < 3 and iterations <= 0 and unseen_iterations <= 0
            and normal_iterations <= 0):
        return vertices, faces, 0, None
    edges = face_edges(faces, n, xp)
    filled, holes = fill_small_holes(faces, n, max_hole_edges, edges)
    if holes:
        edges = edges.merged(face_edges(filled[len(faces):], n, xp))
    border = int((edges.count == 1).sum())
    vertices = taubin_smooth(vertices, filled, iterations, edges, xp, unseen, unseen_iterations,
                             threads, taut)
    return (filter_normals(vertices, filled, normal_iterations, edges, xp, threads),
            filled, holes, border)


@dataclass
class Edges:
    """Every edge of some triangles once, sorted by (low, high) vertex index: how many
    triangles have it, and whether some run it from low to high (``forward``) and some from
    high to low (``backward``; the triangles' winding)."""

    low: Any
    high: Any
    count: Any
    forward: Any
    backward: Any
    bits: int  # a key packs low << bits | high
    xp: Any = np  # the namespace of the arrays

    def keys(self):
        return self.low << self.bits | self.high

    def merged(self, more: Edges) -> Edges:
        """These edges and ``more`` (of other triangles of the same mesh) together."""
        xp = self.xp
        keys, extra = self.keys(), more.keys()
        at = xp.searchsorted(keys, extra)
        known = keys[xp.minimum(at, len(keys) - 1)] == extra  # at the end: larger than any key
        count, forward, backward = xp.copy(self.count), xp.copy(self.forward), xp.copy(self.backward)
        count[at[known]] += more.count[known]
        forward[at[known]] |= more.forward[known]
        backward[at[known]] |= more.backward[known]
        new = ~known
        return Edges(*(xp.insert(mine, at[new], theirs[new]) for mine, theirs in (
            (self.low, more.low), (self.high, more.high), (count, more.count),
            (forward, more.forward), (backward, more.backward))), self.bits, xp)


def face_edges(faces, num_vertices: int, xp=np) -> Edges:
    """The edges of ``faces``.

    One sort of packed keys (low, high, direction bit): np.unique and np.isin cannot carry the
    direction along, and under numpy 2.4 they hash, which on a room's 2.9M edges took 7 s
    (np.unique) and 3.8 s (np.isin) against 0.1 s for the sort."""
    a = xp.asarray(faces, dtype=xp.int64).reshape(-1)
    b = xp.empty_like(a).reshape(-1, 3)  # each corner's next corner, without a fancy index
    b[:, :2], b[:, 2] = faces[:, 1:], faces[:, 0]
    b = b.reshape(-1)
    bits = max(int(num_vertices - 1).bit_length(), 1)
    key = xp.sort(((xp.minimum(a, b) << bits | xp.maximum(a, b)) << 1) | (a < b))
    edge = key >> 1
    first = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), edge[1:] != edge[:-1]]))
    last = xp.concatenate([first[1:], xp.full(1, len(key))]) - 1
    edge = edge[first]
    # within an edge's run the keys are sorted, the direction bit last: a backward one first
    return Edges(edge >> bits, edge & ((1 << bits) - 1), last - first + 1,
                 (key[last] & 1) == 1, (key[first] & 1) == 0, bits, xp)


def taubin_smooth(vertices, faces, iterations: int = SMOOTH_ITERATIONS,
                  edges: Edges | None = None, xp=np, unseen=None, unseen_iterations: int = 0,
                  threads: int = 1, taut=None):
    """Vertices moved by ``iterations`` lambda|mu passes of the umbrella operator (every
    neighbour weighs the same); border vertices stay. ``edges``: :func:`face_edges` of
    ``faces`` when known. Then the ``unseen`` ones ((V,) bool: a surface no view saw, such
    as the underside of a seat, whose grain is the voxels' votes running out, not detail)
    ``unseen_iterations`` passes more, their neighbours held. The ``taut`` ones ((V,) bool,
    unseen too: where an open pocket meets the solid) skip the passes' mu steps, so they are
    drawn taut between what is round them: there the votes ran out in terraces a voxel high
    and a few edges apart, which Taubin's passes keep as shape. The three coordinates never
    mix, so each is smoothed through every pass on its own thread (numpy; ``threads`` at most
    3)."""
    unseen_iterations = unseen_iterations if unseen is not None else 0
    if not len(faces) or (iterations <= 0 and unseen_iterations <= 0):
        return vertices
    n = len(vertices)
    edges = edges if edges is not None else face_edges(faces, n, xp)
    neighbour, bounds = neighbour_lists(edges, n)
    degree = xp.asarray(xp.diff(bounds), dtype=xp.float64)
    free = (degree > 0) & ~border_vertices(edges, n)
    dtype = vertices.dtype if vertices.dtype in (xp.float32, xp.float64) else xp.float64
    # each pass moves a vertex by factor * (step * (sum of its neighbours) - free * itself):
    # nothing for a fixed one (step and free 0), so every vertex goes through the same sums
    step = xp.asarray(free / xp.maximum(degree, 1), dtype=dtype)
    free = xp.asarray(free, dtype=dtype)
    some = (ChosenVertices.of(neighbour, bounds, step, free, xp.nonzero(unseen)[0], taut, xp)
            if unseen_iterations > 0 else None)

    def smooth(column) -> None:
        # neighbours gathered in vertex order and summed per vertex: on a room of 960k
        # triangles 0.55 s with the lists made, against 1.7 s for scatter-adds (np.bincount)
        # in float64 over both ends of every triangle edge
        for factor in (LAMBDA, MU) * iterations:
            total = xp.add.reduceat(xp.take(column, neighbour), bounds)[:-1]
            column += factor * (step * total - free * column)
        if some is not None:
            some.smooth(column, unseen_iterations)

    columns = [xp.array(vertices[:, k], dtype=dtype) for k in range(3)]
    with Workers(min(threads, 3) if xp is np else 1, "da3-smooth") as workers:
        workers.map(smooth, columns)  # each writes only its own column
    return xp.asarray(xp.stack(columns, axis=1), dtype=vertices.dtype)


def filter_normals(vertices, faces, iterations: int = NORMAL_FILTER_ITERATIONS,
                   edges: Edges | None = None, xp=np, threads: int = 1):
    """Vertices moved so that the faces take their normals after ``iterations`` passes of a
    bilateral filter: each face's normal becomes the mean of its own and its three edge
    neighbours', weighed by area and by exp(-|difference|^2 / (2 NORMAL_SIGMA^2)); then
    ``VERTEX_FIT_ITERATIONS`` passes move each vertex by the mean over its faces of the normal
    times its distance to the face's plane through its centroid. Border vertices stay. The
    arithmetic runs in float32 (the same normal consistency as float64 on the chair, in half
    the time); each pass is shared among up to ``threads`` threads by ranges of faces and of
    vertices (numpy), with the same result for any number. ``edges``: :func:`face_edges` of
    ``faces`` when known."""
    if iterations <= 0 or not len(faces):
        return vertices
    edges = edges if edges is not None else face_edges(faces, len(vertices), xp)
    corners = [xp.asarray(faces[:, k], dtype=xp.int64) for k in range(3)]
    x = [xp.array(vertices[:, k], dtype=xp.float32) for k in range(3)]  # moved in place
    normal, area = face_normals(x, corners, xp)
    across = face_neighbours(corners, edges, xp)
    their_area = [xp.take(area, j) for j in across]
    sharpness = 1 / NORMAL_SIGMA ** 2
    tiny = xp.asarray(1e-30, dtype=xp.float32)

    def filter_span(span: slice, normal, filtered) -> None:
        mine = [c[span] for c in normal]
        total = [area[span] * c for c in mine]
        for j, weight_area in zip(across, their_area, strict=True):
            theirs = [xp.take(c, j[span]) for c in normal]
            cos = theirs[0] * mine[0]
            cos += theirs[1] * mine[1]
            cos += theirs[2] * mine[2]
            cos -= 1  # unit normals: |n_i - n_j|^2 / (2 s^2) = (1 - cos) / s^2
            weight = xp.exp(cos * sharpness)
            weight *= weight_area[span]
            for k in range(3):
                theirs[k] *= weight
                total[k] += theirs[k]
        length = xp.maximum(xp.sqrt(sum(c * c for c in total)), tiny)  # 0: faces of no area
        for k in range(3):
            filtered[k][span] = total[k] / length

    with Workers(threads if xp is np else 1, "da3-normals") as workers:
        face_spans = spans(len(faces), workers.count)
        for _ in range(iterations):
            filtered = [xp.empty_like(c) for c in normal]
            workers.map(filter_span, face_spans, [normal] * len(face_spans),
                        [filtered] * len(face_spans))
            normal = filtered
        start = xp.stack(x, axis=1)
        fitted = fitted_vertices(x, corners, normal, edges, xp, workers)
    return vertices + xp.asarray(fitted - start, dtype=vertices.dtype)  # held: not float32'd


def face_normals(x, corners, xp=np):
    """Unit normals ([nx, ny, nz] of (F,)) and areas (F,) of the faces of ``corners`` (three
    (F,) vertex indices) over the coordinates ``x`` ([x, y, z] of (V,)); a face of no area
    gets a zero normal."""
    a = [xp.take(c, corners[0]) for c in x]
    u = [xp.take(c, corners[1]) - o for c, o in zip(x, a, strict=True)]
    w = [xp.take(c, corners[2]) - o for c, o in zip(x, a, strict=True)]
    cross = [u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]]
    double_area = xp.sqrt(sum(c * c for c in cross))
    safe = xp.maximum(double_area, xp.asarray(1e-30, dtype=double_area.dtype))
    return [c / safe for c in cross], double_area / 2


def face_neighbours(corners, edges: Edges, xp=np):
    """For each of a face's three edges (corner k to corner k+1), the face on its other side
    (three (F,) indices): the face itself across a border or an edge more than two faces
    share. An edge's two faces are told apart by the sum of their indices, which needs no
    scatter of one index per edge (whose winner a GPU does not fix)."""
    num = len(corners[0])
    face = xp.arange(num, dtype=xp.int64)
    keys, at = edges.keys(), []
    for k in range(3):
        a, b = corners[k], corners[(k + 1) % 3]
        at.append(xp.searchsorted(keys, xp.minimum(a, b) << edges.bits | xp.maximum(a, b)))
    both = xp.concatenate(at)
    sums = xp.bincount(both, weights=xp.concatenate([face, face, face]), minlength=len(keys))
    shared = edges.count == 2
    return [xp.where(xp.take(shared, e), xp.asarray(xp.take(sums, e), dtype=xp.int64) - face, face)
            for e in at]


def fitted_vertices(x, corners, normal, edges: Edges, xp=np, workers: Workers | None = None):
    """The vertices ([x, y, z] of (V,)) after ``VERTEX_FIT_ITERATIONS`` passes toward the
    faces' ``normal`` (Sun et al. 2007), border vertices held, as a (V,3) array. A vertex sums
    over its corners in one pass over corners sorted by vertex (np.add.reduceat), as
    :func:`taubin_smooth` sums over neighbours; each pass's faces and vertices are shared among
    the ``workers`` by ranges."""
    num = len(corners[0])
    workers = workers or Workers(1)
    order, used, starts, count = corners_by_vertex(corners, len(x[0]), xp)
    move = xp.asarray(~xp.take(border_vertices(edges, len(x[0])), used), dtype=xp.float32)
    move /= xp.asarray(count, dtype=xp.float32)
    corner_normal = [xp.take(c, order % num) for c in normal]
    # each corner's distance below its face's plane through the face's centre, corners by slot
    below = xp.zeros(3 * num, dtype=xp.float32)

    def measure(span: slice) -> None:
        height = [sum(nc[span] * xp.take(c, k[span]) for nc, c in zip(normal, x, strict=True))
                  for k in corners]
        centre = (height[0] + height[1] + height[2]) / 3
        for k in range(3):
            below[k * num + span.start:k * num + span.stop] = centre - height[k]

    def move_vertices(span: slice) -> None:
        first = int(starts[span.start]) if span.start < len(used) else 3 * num
        last = int(starts[span.stop]) if span.stop < len(used) else 3 * num
        theirs = xp.take(below, order[first:last])
        for k in range(3):
            sums = xp.add.reduceat(theirs * corner_normal[k][first:last], starts[span] - first)
            x[k][used[span]] += move[span] * sums

    face_spans, vertex_spans = spans(num, workers.count), spans(len(used), workers.count)
    vertex_spans = [s for s in vertex_spans if s.stop > s.start]  # reduceat needs a bound
    for _ in range(VERTEX_FIT_ITERATIONS):
        workers.map(measure, face_spans)
        workers.map(move_vertices, vertex_spans)
    return xp.stack(x, axis=1)


def corners_by_vertex(corners, num_vertices: int, xp=np):
    """The faces' corners (slot k of face f is k * F + f) sorted by their vertex, the vertices
    that have corners, where each one's run begins, and how long it is: one sort of packed keys,
    as :func:`face_edges` sorts edges."""
    vertex = xp.concatenate(corners)
    corner_bits = max(int(len(vertex) - 1).bit_length(), 1)
    order = xp.sort(vertex << corner_bits | xp.arange(len(vertex), dtype=xp.int64))
    count = xp.bincount(vertex, minlength=num_vertices)
    used = xp.flatnonzero(count > 0)
    starts = xp.take(xp.cumsum(count) - count, used)
    return order & ((1 << corner_bits) - 1), used, starts, xp.take(count, used)


def border_vertices(edges: Edges, num_vertices: int):
    """(V,) bool: the vertices on an edge only one face has."""
    border = edges.xp.zeros(num_vertices, dtype=bool)
    border[edges.low[edges.count == 1]] = border[edges.high[edges.count == 1]] = True
    return border


@dataclass
class ChosenVertices:
    """Some vertices' neighbour lists, one after the other, to smooth those vertices alone
    (a third of an object's vertices cost a third of a pass over all)."""

    index: Any  # (C,) the chosen vertices
    their: Any  # their neighbours, list after list
    starts: Any  # (C,) where each list begins in ``their``
    step: Any  # (C,) as taubin_smooth's, 0 for a vertex without neighbours
    free: Any  # (C,)
    mu: Any  # (C,) each vertex's mu step: MU, or 0 for one drawn taut
    xp: Any = np

    @classmethod
    def of(cls, neighbour, bounds, step, free, chosen, taut=None, xp=np) -> ChosenVertices | None:
        """The ``chosen`` (indices) vertices' lists out of :func:`neighbour_lists`, the
        ``taut`` ((V,) bool or None) of them to be drawn taut; None when they have no
        neighbour."""
        if not len(chosen):
            return None
        counts = bounds[chosen + 1] - bounds[chosen]
        ends = xp.cumsum(counts)
        run = xp.repeat(xp.arange(len(chosen)), counts)
        offset = xp.take(bounds[chosen] - (ends - counts), run)  # list start minus packed start
        their = xp.take(neighbour, offset + xp.arange(len(run)))
        if not len(their):
            return None
        starts = xp.concatenate([xp.zeros(1, dtype=ends.dtype), ends[:-1]])
        nonempty = counts > 0  # reduceat reads past an empty list: such a vertex is fixed anyway
        mu = xp.full(len(chosen), MU, dtype=step.dtype)
        if taut is not None:
            mu = mu * xp.asarray(~xp.take(taut, chosen), dtype=step.dtype)
        return cls(chosen, their, xp.minimum(starts, len(their) - 1),
                   xp.take(step, chosen) * nonempty, xp.take(free, chosen) * nonempty, mu, xp)

    def smooth(self, column, iterations: int) -> None:
        """``iterations`` lambda|mu passes of one coordinate that move only these vertices,
        in place (mu per vertex)."""
        xp = self.xp
        for factor in (LAMBDA, self.mu) * iterations:
            total = xp.add.reduceat(xp.take(column, self.their), self.starts)
            here = xp.take(column, self.index)
            column[self.index] = here + factor * (self.step * total - self.free * here)


def neighbour_lists(edges: Edges, num_vertices: int):
    """Each vertex's neighbours along ``edges``, vertex after vertex, and where each vertex's
    list begins ((V+1,) bounds: vertex i's are bounds[i]:bounds[i+1]). The lists end with one
    entry more, so that np.add.reduceat over every bound stays in range (a vertex with no
    neighbour gets a meaningless sum) and the last vertex's sum ends with its own list."""
    xp = edges.xp
    low, high = edges.low, edges.high
    key = xp.sort(xp.concatenate([edges.keys(), high << edges.bits | low]))
    degree = xp.bincount(low, minlength=num_vertices) + xp.bincount(high, minlength=num_vertices)
    bounds = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(degree)])
    return xp.concatenate([key & ((1 << edges.bits) - 1), xp.zeros(1, dtype=xp.int64)]), bounds


def fill_small_holes(faces, num_vertices: int, max_edges: int = MAX_HOLE_EDGES,
                     edges: Edges | None = None, xp=np) -> tuple[Any, int]:
    """Faces with every border loop of at most ``max_edges`` edges closed by a fan (appended),
    and the number of holes closed. Loops through a vertex with more than one border edge
    (two holes touching, a non-manifold corner) are left alone. ``edges``: :func:`face_edges`
    of ``faces`` when known (its namespace is then the one used)."""
    if max_edges < 3 or not len(faces):  # no loop is that short
        return faces, 0
    edges = edges if edges is not None else face_edges(faces, num_vertices, xp)
    fans = hole_fans(to_numpy(one_way_edges(edges)), num_vertices, max_edges)
    if not fans:
        return faces, 0
    added = edges.xp.asarray(np.concatenate(fans), dtype=faces.dtype)
    return edges.xp.concatenate([faces, added]), len(fans)


def hole_fans(border: np.ndarray, num_vertices: int, max_edges: int) -> list[np.ndarray]:
    """Fans of triangles that close the loops of ``border`` edges ((B,2) directed, as
    :func:`one_way_edges`) of at most ``max_edges`` edges: a walk from vertex to vertex, on the
    host."""
    if not len(border):
        return []
    starts = np.bincount(border[:, 0], minlength=num_vertices)
    border = border[(starts[border[:, 0]] == 1) & (starts[border[:, 1]] == 1)]
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
    return fans


def one_way_edges(edges: Edges):
    """(B,2) the directed edges whose reverse no triangle has (a border, as its triangles wind
    it), as often as triangles have them."""
    xp = edges.xp
    one_way = edges.forward != edges.backward
    low, high, count = edges.low[one_way], edges.high[one_way], edges.count[one_way]
    forward = edges.forward[one_way]
    pairs = xp.stack([xp.where(forward, low, high), xp.where(forward, high, low)], axis=1)
    return xp.repeat(pairs, count, axis=0)
