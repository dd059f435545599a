"""A colour texture for the final surface, baked from the photos (numpy only).

Blender's process runs this on the importer's thread once the surface has its final shape
(after the voxel remesher and the face budget), so the texture fits the mesh the user keeps:

1. ``unwrap``: a UV atlas. Each polygon goes to the axis direction it faces most (normals
   smoothed over neighbours first, so depth noise does not shatter the groups); connected
   polygons of one direction form a chart, projected flat along that axis (at most 1.7x
   stretch, at 55 degrees) and packed on shelves with a gutter around it.
2. ``rasterize``: which texel centre lies in which triangle, and where.
3. ``blend_views``: each texel's surface point is projected into every view that faces it;
   a view counts only where its own depth map sees that point (occlusion test), weighted by how
   frontal, how close (pixels per surface area) and how confident it is. Points no view sees
   keep the fused vertex colours.
4. ``fill_gutters``: texels between charts take their neighbours' colour, so filtering and
   mipmaps never bleed black into the surface.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .core.geometry import island_labels, srgb_from_linear
from .core.prediction import Prediction

# Automatic texture size: OVERSAMPLING texels (along each side) per pixel the best photo has of
# the surface, at the median surface point, within these bounds. Baking resamples the photos
# and rendering resamples the texture: at one texel per pixel the two would blur it visibly.
OVERSAMPLING = 2
MIN_SIZE, MAX_SIZE = 512, 2048  # 4096 and above on request: they take 4x and 16x as long
SIZE_SAMPLES = 20_000  # surface points whose best view sets the automatic size
PADDING = 2  # texels of gutter on each side of a chart: bilinear filtering and two mip levels
NORMAL_SMOOTHING = 3  # rounds of averaging polygon normals with their neighbours before grouping
# A view whose ray meets the surface at more than ~84 degrees sees it smeared over a pixel.
MIN_COSINE = 0.1
# A view sees a surface point when its depth there is this close (fraction of depth, plus a
# voxel of the surface): the views still disagree by ~0.6 % after engine.consistency, and the
# remeshed surface lies up to a voxel off the fused one.
DEPTH_TOLERANCE = 0.02
# Weights are raised to this power before blending: the best-placed views dominate, so small
# pose errors blur less than in a plain average.
SHARPNESS = 2.0

Progress = Callable[[float, str], None]


@dataclass
class Polygons:
    """A polygon mesh as Blender stores it: ``corner_vert`` (L,) lists every face corner's vertex,
    face ``p`` owns corners ``loop_start[p]`` to ``loop_start[p] + loop_total[p]``."""

    vertices: np.ndarray  # (V,3)
    corner_vert: np.ndarray  # (L,)
    loop_start: np.ndarray  # (P,)
    loop_total: np.ndarray  # (P,)

    @classmethod
    def from_triangles(cls, vertices: np.ndarray, triangles: np.ndarray) -> Polygons:
        count = len(triangles)
        return cls(vertices, triangles.reshape(-1), 3 * np.arange(count), np.full(count, 3))

    def corner_polygon(self) -> np.ndarray:
        """(L,) the polygon each corner belongs to."""
        return np.repeat(np.arange(len(self.loop_start)), self.loop_total)

    def next_corner(self) -> np.ndarray:
        """(L,) the corner after each one around its polygon."""
        nxt = np.arange(1, len(self.corner_vert) + 1)
        last = self.loop_start + self.loop_total - 1
        nxt[last] = self.loop_start
        return nxt

    def fan_triangles(self) -> np.ndarray:
        """(T,3) corner indices of each polygon cut into a fan from its first corner."""
        fans = self.loop_total - 2
        polygon = np.repeat(np.arange(len(fans)), fans)
        step = np.arange(len(polygon)) - np.repeat(np.cumsum(fans) - fans, fans)
        first = self.loop_start[polygon]
        return np.stack([first, first + step + 1, first + step + 2], axis=1)


@dataclass
class Baked:
    uv: np.ndarray  # (L,2) float32, per face corner, in [0,1]
    png: bytes  # the texture, sRGB
    seen: float  # share of the surface's texels that some view saw


def bake_texture(mesh: Polygons, pred: Prediction, voxel: float, colors: np.ndarray | None = None,
                 size: int = 0, progress: Progress | None = None) -> Baked:
    """UV-unwrap ``mesh`` (in the prediction's world frame) and bake the views of ``pred`` into
    a ``size`` x ``size`` texture (0: as sharp as the photos, ``automatic_size``).

    ``voxel``: the surface's voxel (how far it may lie from the views' depth); ``colors`` (V,4)
    linear RGBA vertex colours fill what no view sees.
    """
    report = progress or (lambda fraction, message: None)
    size = size or automatic_size(mesh, pred, voxel)
    uv = unwrap(mesh, size)
    report(0.1, "unwrapping")
    corners = mesh.fan_triangles()
    texels, triangle, bary = rasterize(uv[corners] * size, size)
    order = np.argsort(triangle, kind="stable")  # each triangle's texels together
    texels, triangle, bary = texels[order], triangle[order], bary[order]
    vertices = mesh.vertices.astype(np.float32)
    corner_vertex = mesh.corner_vert[corners]  # (T,3)
    triangles = vertices[corner_vertex]  # (T,3,3)
    texels_of = Texels(triangle, np.einsum("kc,kcx->kx", bary, triangles[triangle]),
                       triangle_normals(triangles), triangles.mean(axis=1), corner_vertex,
                       np.searchsorted(triangle, np.arange(len(corners) + 1)))
    rgb, seen = blend_views(texels_of, vertices, pred, voxel,
                            lambda f: report(0.1 + 0.8 * f, "baking"))
    if colors is not None:
        fallback = np.einsum("kc,kcx->kx", bary, colors[mesh.corner_vert[corners[triangle]], :3])
        rgb[~seen] = srgb_from_linear(fallback[~seen])
    image = np.zeros((size * size, 3), dtype=np.float32)
    image[texels] = rgb
    covered = np.zeros(size * size, dtype=bool)
    covered[texels] = True
    image = fill_gutters(image.reshape(size, size, 3), covered.reshape(size, size), PADDING + 1)
    report(0.95, "writing the texture")
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Baked(uv.astype(np.float32), png_bytes(pixels[::-1]),  # PNG rows run top-down
                 seen=float(seen.mean()) if len(seen) else 0.0)


def automatic_size(mesh: Polygons, pred: Prediction, voxel: float) -> int:
    """The power of two whose atlas gives the surface ``OVERSAMPLING`` texels per pixel its best
    view has of it, at the median of sampled surface points (``MIN_SIZE`` to ``MAX_SIZE``):
    finer would only enlarge the photos' blur."""
    normals = polygon_normals(mesh)
    area = np.linalg.norm(normals, axis=1)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(area), min(SIZE_SAMPLES, len(area)), p=area / area.sum(), replace=True)
    corners = mesh.loop_start[chosen]  # a polygon's first corner stands for it
    points = mesh.vertices[mesh.corner_vert[corners]].astype(np.float32)
    unit = (normals[chosen] / area[chosen, None]).astype(np.float32)
    best = np.zeros(len(chosen))
    w2c = pred.world_to_camera()
    for i in range(pred.num_views):
        index, pixels_per_area = seen_by_view(points, unit, pred, i, w2c[i], voxel)[:2]
        np.maximum.at(best, index, pixels_per_area)
    if not best.any():
        return MIN_SIZE
    pixels = area.sum() * float(np.median(best[best > 0]))
    texels = OVERSAMPLING ** 2 * pixels / PACKING_FILL
    size = 2 ** int(np.ceil(np.log2(max(np.sqrt(texels), 1))))
    return int(np.clip(size, MIN_SIZE, MAX_SIZE))


# --- 1. the UV atlas -----------------------------------------------------------------------------

def unwrap(mesh: Polygons, size: int, padding: int = PADDING) -> np.ndarray:
    """(L,2) UVs in [0,1] per face corner: charts of connected polygons facing one axis
    direction, each projected along its axis, packed at one common texel density."""
    pairs = polygon_pairs(mesh)
    normals = smoothed_normals(pairs, polygon_normals(mesh), NORMAL_SMOOTHING)
    direction, chart = charts(pairs, normals)
    axis = direction // 2
    corner_polygon = mesh.corner_polygon()
    kept_axes = np.array([[1, 2], [2, 0], [0, 1]])[axis[corner_polygon]]  # the two other axes
    flat = np.take_along_axis(mesh.vertices[mesh.corner_vert], kept_axes, axis=1)
    corner_chart = chart[corner_polygon]
    low = np.full((chart.max() + 1, 2), np.inf)
    high = np.full((chart.max() + 1, 2), -np.inf)
    np.minimum.at(low, corner_chart, flat)
    np.maximum.at(high, corner_chart, flat)
    density, offsets = pack_charts(high - low, size, padding)
    texel = (flat - low[corner_chart]) * density + offsets[corner_chart] + padding
    return texel / size


def polygon_normals(mesh: Polygons) -> np.ndarray:
    """(P,3) area-weighted normals (Newell's method: exact for any planar polygon)."""
    a = mesh.vertices[mesh.corner_vert].astype(np.float64)
    b = a[mesh.next_corner()]
    cross = np.cross(a, b)
    polygon = mesh.corner_polygon()
    return np.stack([np.bincount(polygon, cross[:, k], len(mesh.loop_start)) for k in range(3)],
                    axis=1) / 2


def polygon_pairs(mesh: Polygons) -> np.ndarray:
    """(Q,2) the polygons on either side of each edge that has exactly two."""
    a, b = mesh.corner_vert, mesh.corner_vert[mesh.next_corner()]
    key = np.minimum(a, b).astype(np.int64) * (len(mesh.vertices) + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    key, polygon = key[order], mesh.corner_polygon()[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, len(key)])
    two = starts[counts == 2]
    return np.stack([polygon[two], polygon[two + 1]], axis=1)


def smoothed_normals(pairs: np.ndarray, normals: np.ndarray, rounds: int) -> np.ndarray:
    """Unit normals averaged ``rounds`` times with the neighbours across each edge (``pairs``)."""
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
    for _ in range(rounds):
        summed = n.copy()
        for k in range(3):
            summed[:, k] += np.bincount(pairs[:, 0], n[pairs[:, 1], k], len(n))
            summed[:, k] += np.bincount(pairs[:, 1], n[pairs[:, 0], k], len(n))
        n = summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-30)
    return n


# Directions: +x, -x, +y, -y, +z, -z (direction // 2 is the axis).
DIRECTIONS = np.repeat(np.eye(3), 2, axis=0) * np.tile([1.0, -1.0], 3)[:, None]
# A chart of fewer polygons is merged into a neighbouring one: noise near 45 degrees otherwise
# cuts thousands of specks that waste a third of the atlas on their gutters.
MIN_CHART_POLYGONS = 64
MERGE_ROUNDS = 6
# A polygon joins a neighbour's chart only if it faces that chart's direction at least this
# much (its projection must not fold over).
MERGE_COSINE = 0.3


def charts(pairs: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) direction and chart index (0..) of each polygon: connected polygons facing one
    axis direction most, with small charts merged into a neighbouring chart they also face."""
    direction = np.argmax(normals @ DIRECTIONS.T, axis=1)
    for _ in range(MERGE_ROUNDS):
        chart = connected(pairs, direction)
        size = np.bincount(chart)[chart]
        # each small chart's polygon may take the direction of its largest neighbouring chart
        p, q = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
        wanted = (size[p] < MIN_CHART_POLYGONS) & (size[q] > size[p])
        wanted &= np.einsum("kx,kx->k", normals[p], DIRECTIONS[direction[q]]) > MERGE_COSINE
        p, q = p[wanted], q[wanted]
        if not len(p):
            break
        order = np.lexsort((-size[q], p))  # per polygon, its largest neighbouring chart first
        first = np.r_[True, p[order][1:] != p[order][:-1]]
        direction[p[order][first]] = direction[q[order][first]]
    return direction, connected(pairs, direction)


def connected(pairs: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(P,) index (0..) of the connected set of same-direction polygons each one is in."""
    same = pairs[direction[pairs[:, 0]] == direction[pairs[:, 1]]]
    roots = island_labels(same, len(direction))
    return np.unique(roots, return_inverse=True)[1].reshape(-1)


PACKING_FILL = 0.85  # the share of the atlas the charts' boxes are sized to cover at first


def pack_charts(extents: np.ndarray, size: int, padding: int) -> tuple[float, np.ndarray]:
    """Texels per unit and (C,2) texel offsets placing every chart's box, with ``padding`` on
    each side, on shelves inside a ``size`` x ``size`` atlas (tallest charts first)."""
    density = density_for(extents, PACKING_FILL * size * size, padding)
    order = np.argsort(-extents[:, 1], kind="stable")
    for _ in range(40):
        boxes = chart_boxes(extents, density, padding)
        offsets = shelf_pack(boxes, order, size)
        if offsets is not None:
            return density, offsets
        density *= 0.97
    raise ValueError("the surface has too many separate pieces for one texture; "
                     "use a larger texture_size or vertex colours")


def chart_boxes(extents: np.ndarray, density: float, padding: int) -> np.ndarray:
    """(C,2) texels each chart's box takes at ``density``, its gutter included."""
    return np.ceil(extents * density).astype(np.int64) + 1 + 2 * padding


def density_for(extents: np.ndarray, area: float, padding: int) -> float:
    """The texels per unit at which the charts' boxes, gutters included, cover ``area`` texels
    (bisection: the gutters of many small charts take a large share)."""
    low, high = 0.0, 1.0
    while chart_boxes(extents, high, padding).prod(axis=1).sum() < area:
        high *= 2
    for _ in range(40):
        middle = (low + high) / 2
        fits = chart_boxes(extents, middle, padding).prod(axis=1).sum() < area
        low, high = (middle, high) if fits else (low, middle)
    return low


def shelf_pack(boxes: np.ndarray, order: np.ndarray, size: int) -> np.ndarray | None:
    """(C,2) lower-left corners of ``boxes`` (C,2 texels) placed left to right on rows as tall
    as their first box, in ``order``; None when they do not fit in ``size`` x ``size``."""
    offsets = np.zeros_like(boxes)
    x = y = row = 0
    for c in order.tolist():
        w, h = int(boxes[c, 0]), int(boxes[c, 1])
        if x + w > size:
            x, y, row = 0, y + row, 0
        if w > size or y + h > size:
            return None
        offsets[c] = (x, y)
        x, row = x + w, max(row, h)
    return offsets


# --- 2. texels -> triangles ----------------------------------------------------------------------

RASTER_CHUNK = 1 << 21  # candidate texels tested at once


def rasterize(triangles: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centre lies in a triangle of ``triangles`` (T,3,2, in texels).

    Returns the flat texel indices (K,), the triangle of each (K,) and its barycentric
    coordinates (K,3). Triangles are grouped by the size of their bounding box so that each
    group tests one square of candidates per triangle.
    """
    low = np.floor(triangles.min(axis=1)).astype(np.int64)
    extent = (np.floor(triangles.max(axis=1)).astype(np.int64) - low + 1).max(axis=1)
    found = []
    side = 1
    remaining = np.ones(len(triangles), dtype=bool)
    while remaining.any():
        group = np.flatnonzero(remaining & (extent <= side))
        remaining[group] = False
        per_chunk = max(1, RASTER_CHUNK // (side * side))
        for start in range(0, len(group), per_chunk):
            chosen = group[start:start + per_chunk]
            found.append(_texels_inside(triangles[chosen], low[chosen], side, chosen, size))
        side *= 2
    texels, triangle, bary = (np.concatenate(parts) for parts in zip(*found, strict=True))
    texels, first = np.unique(texels, return_index=True)  # a texel on a shared edge: one triangle
    return texels, triangle[first], bary[first]


def _texels_inside(tri: np.ndarray, low: np.ndarray, side: int, index: np.ndarray, size: int):
    offsets = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="xy"), -1).reshape(-1, 2)
    cells = low[:, None, :] + offsets[None]  # (n, side², 2)
    centre = cells + 0.5
    a, b, c = tri[:, 0, None], tri[:, 1, None], tri[:, 2, None]
    v0, v1, v2 = b - a, c - a, centre - a
    det = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    safe = np.where(np.abs(det) > 1e-12, det, 1.0)
    w1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / safe
    w2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / safe
    w0 = 1 - w1 - w2
    inside = ((np.abs(det) > 1e-12) & (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
              & (cells[..., 0] >= 0) & (cells[..., 1] >= 0)
              & (cells[..., 0] < size) & (cells[..., 1] < size))
    row, col = np.nonzero(inside)
    texels = cells[row, col, 1] * size + cells[row, col, 0]
    bary = np.stack([w0[row, col], w1[row, col], w2[row, col]], axis=1)
    return texels, index[row], np.clip(bary, 0, 1).astype(np.float32)


def triangle_normals(positions: np.ndarray) -> np.ndarray:
    """(K,3) unit normals of triangles given as (K,3,3) corner positions."""
    n = np.cross(positions[:, 1] - positions[:, 0], positions[:, 2] - positions[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


# --- 3. the views -> texel colours ---------------------------------------------------------------

@dataclass
class Texels:
    """The texels inside the surface, sorted by the triangle each lies in, with its surface
    point; and the triangles' normals, centres, vertices and first texels."""

    triangle: np.ndarray  # (K,) sorted
    points: np.ndarray  # (K,3)
    triangle_normals: np.ndarray  # (T,3)
    triangle_centres: np.ndarray  # (T,3)
    triangle_vertices: np.ndarray  # (T,3) vertex indices
    first: np.ndarray  # (T+1,) triangle t's texels are first[t]:first[t + 1]

    def of_triangles(self, chosen: np.ndarray) -> np.ndarray:
        """Indices of the texels of the ``chosen`` triangles (without touching the others)."""
        starts, counts = self.first[chosen], np.diff(self.first)[chosen]
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
        return offsets + np.arange(len(offsets))


def blend_views(texels: Texels, vertices: np.ndarray, pred: Prediction, voxel: float,
                progress: Callable[[float], None]) -> tuple[np.ndarray, np.ndarray]:
    """(K,3) sRGB colour in [0,1] of each texel, from the views that see it, and (K,) whether
    any did. Each view only looks at the texels of the triangles it is among the best views of."""
    total = np.zeros((len(texels.points), 3), dtype=np.float32)
    weights = np.zeros(len(texels.points), dtype=np.float32)
    w2c = pred.world_to_camera()
    best = best_views(texels, vertices, pred, w2c, voxel)
    for i in range(pred.num_views):
        chosen = texels.of_triangles(np.flatnonzero((best == i).any(axis=1)))
        index, colour, weight = view_colours(texels.points[chosen],
                                             texels.triangle_normals[texels.triangle[chosen]],
                                             pred, i, w2c[i], voxel)
        index = chosen[index]
        weight = weight ** SHARPNESS
        total[index] += colour * weight[:, None]
        weights[index] += weight
        progress((i + 1) / pred.num_views)
    seen = weights > 0
    total[seen] /= weights[seen, None]
    return total, seen


# Views blended per triangle: with weights squared the best few carry nearly all of a texel's
# colour; more only cost time (each view is a projection of every texel it is chosen for).
VIEWS_PER_TRIANGLE = 4


def best_views(texels: Texels, vertices: np.ndarray, pred: Prediction, w2c: np.ndarray,
               voxel: float) -> np.ndarray:
    """(T, VIEWS_PER_TRIANGLE) the views most likely to see each triangle best: facing it,
    overlapping it, its centre where their depth puts the surface, most pixels on it. A view
    whose depth test fails at the centre only stands in when there are not enough others (part
    of a large triangle may still be in view); -1 for none."""
    scores = np.zeros((pred.num_views, len(texels.triangle_normals)), dtype=np.float32)
    for i in range(pred.num_views):
        scores[i, facing_triangles(texels, vertices, pred, i, w2c[i])] = STAND_IN
        index, pixels_per_area = seen_by_view(texels.triangle_centres, texels.triangle_normals,
                                              pred, i, w2c[i], voxel)[:2]
        scores[i, index] = np.maximum(pixels_per_area, 2 * STAND_IN)
    count = min(VIEWS_PER_TRIANGLE, pred.num_views)
    best = np.argsort(-scores, axis=0)[:count].T  # (T, count)
    return np.where(np.take_along_axis(scores.T, best, axis=1) > 0, best, -1)


STAND_IN = 1e-6


def facing_triangles(texels: Texels, vertices: np.ndarray, pred: Prediction, i: int,
                     w2c: np.ndarray) -> np.ndarray:
    """(T,) the triangles that face view ``i`` at their centre and whose projection overlaps its
    image (or that reach behind the camera): a cheap test that spares most texels the exact one."""
    rotation, shift = w2c[:3, :3].astype(np.float32), w2c[:3, 3].astype(np.float32)
    to_camera = -rotation.T @ shift - texels.triangle_centres
    facing = np.einsum("tx,tx->t", texels.triangle_normals, to_camera) > 0
    camera = vertices @ rotation.T + shift
    k = pred.intrinsics[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * camera[:, 0] / camera[:, 2] + k[0, 2]
        v = k[1, 1] * camera[:, 1] / camera[:, 2] + k[1, 2]
    corners = texels.triangle_vertices
    overlaps = facing.copy()
    for coordinate, limit in ((u, pred.width), (v, pred.height)):
        a, b, c = (coordinate[corners[:, j]] for j in range(3))
        overlaps &= (np.maximum(np.maximum(a, b), c) >= 0) & (np.minimum(np.minimum(a, b), c) < limit)
    behind = (camera[:, 2] <= 0)[corners].any(axis=1)
    return overlaps | (facing & behind)


def view_colours(points, normals, pred: Prediction, i: int, w2c: np.ndarray, voxel: float):
    """The points view ``i`` sees: their indices, sRGB colours (n,3) and weights (n,)."""
    index, pixels_per_area, u, v, row, col = seen_by_view(points, normals, pred, i, w2c, voxel)
    confidence = 1.0 if pred.conf is None else pred.conf[i, row, col]
    weight = (confidence * pixels_per_area).astype(np.float32)
    return index, sample_bilinear(pred.image[i], u - 0.5, v - 0.5), weight


def seen_by_view(points, normals, pred: Prediction, i: int, w2c: np.ndarray, voxel: float):
    """The points (K,3) with unit ``normals`` that view ``i`` sees (facing it, inside its image,
    where its own depth map puts the surface): their indices, the view's pixels per unit of
    their surface area (frontal and near views resolve the most detail), and where they fall:
    pixel coordinates u, v and the pixel's row and column. (All tests first, one selection
    after: each selection copies every array.)"""
    rotation, shift = w2c[:3, :3].astype(np.float32), w2c[:3, 3].astype(np.float32)
    camera = points @ rotation.T + shift
    z = camera[:, 2]
    distance = np.sqrt(np.einsum("kx,kx->k", camera, camera))
    # the camera sits at the origin of its own frame: the way to it is -camera
    cosine = -np.einsum("kx,kx->k", normals @ rotation.T, camera) / np.maximum(distance, 1e-30)
    k = pred.intrinsics[i].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * camera[:, 0] / z + k[0, 2]
        v = k[1, 1] * camera[:, 1] / z + k[1, 2]
    seen = (cosine > MIN_COSINE) & (z > 0) & (u >= 0) & (v >= 0) & (u < pred.width) & (v < pred.height)
    row = np.where(seen, v, 0).astype(np.int64)
    col = np.where(seen, u, 0).astype(np.int64)
    depth = pred.depth[i, row, col]
    seen &= np.abs(depth - z) <= DEPTH_TOLERANCE * z + voxel
    if pred.sky is not None:
        seen &= ~pred.sky[i, row, col]
    index = np.flatnonzero(seen)
    z = z[index]
    pixels_per_area = cosine[index] * k[0, 0] * k[1, 1] / (z * z)
    return index, pixels_per_area, u[index], v[index], row[index], col[index]


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,3) float colours in [0,1] of ``image`` (H,W,3 uint8) at pixel coordinates x, y."""
    h, w = image.shape[:2]
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat = image.reshape(-1, 3).astype(np.float32) * np.float32(1 / 255)
    corner = y0 * w + x0
    top = flat[corner] * (1 - fx) + flat[corner + 1] * fx
    bottom = flat[corner + w] * (1 - fx) + flat[corner + w + 1] * fx
    return top * (1 - fy) + bottom * fy


# --- 4. gutters and the file -------------------------------------------------------------------

def fill_gutters(image: np.ndarray, known: np.ndarray, rounds: int) -> np.ndarray:
    """Texels outside every chart take the mean of their known 4-neighbours, ``rounds`` times
    outward, so a texture filtered across a chart's edge shows the chart's own colours.
    ``image`` is 0 where not ``known``."""
    image, known = image.copy(), known.copy()
    for _ in range(rounds):
        total = np.zeros_like(image)
        count = np.zeros(known.shape, dtype=np.float32)
        for axis in (0, 1):
            for shift in (1, -1):
                total += np.roll(image, shift, axis=axis)
                count += np.roll(known, shift, axis=axis)
        grow = ~known & (count > 0)
        image[grow] = total[grow] / count[grow, None]
        known |= grow
    return image


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (H,W,3 uint8, first row on top). Blender's Python has no image
    library; zlib does the work and releases the GIL, so the UI runs on meanwhile."""
    height, width = rgb.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

