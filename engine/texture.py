"""A colour texture for the final surface, baked from the photos (numpy only).

Blender's process runs this on the importer's thread once the surface has its final shape
(after the voxel remesher and the face budget), so the texture fits the mesh the user keeps:

1. ``Charts``: a UV atlas. Each polygon goes to the axis direction it faces most (normals
   smoothed over neighbours first, so depth noise does not shatter the groups); connected
   polygons of one direction form a chart, projected flat along that axis (at most 1.7x
   stretch, at 55 degrees) and packed on shelves with a gutter around it, the atlas as large
   as the photos' detail asks (``automatic_size``).
2. ``rasterize``: which texel centre lies in which triangle, and where.
3. ``blend_views``: each texel's surface point is projected into every view that faces it;
   a view counts only where its own depth map sees that point (occlusion test), weighted by how
   frontal, how close (pixels per surface area) and how confident it is. Points no view sees
   keep the fused vertex colours.
4. ``fill_gutters``: texels between charts take their neighbours' colour, so filtering and
   mipmaps never bleed black into the surface.

No step multiplies large arrays with ``@``: numpy hands such products to OpenBLAS, whose own
threads run at Blender's priority, not the import's lowered one, and spin between calls, so
they took a whole core from the bake's second thread (the bake and the fusion ran no faster on
two threads than on one). Products of points with a pose are written out
(``cameras.transform``) or ``np.einsum`` (its own loops).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .core import cameras
from .core.geometry import island_labels, srgb_from_linear
from .core.options import BACKGROUND_THREADS
from .core.prediction import Prediction
from .core.threads import Workers

# Automatic texture size: OVERSAMPLING texels (along each side) per pixel the best photo has of
# the surface, at the median surface point, within these bounds. Baking resamples the photos
# and rendering resamples the texture: at one texel per pixel the two would blur it visibly.
OVERSAMPLING = 2
MIN_SIZE, MAX_SIZE = 512, 2048  # 4096 and above on request: they take 4x and 16x as long
# The automatic size is a multiple of this, not a power of two: rounding up to the next power
# gave 1-4x the texels asked for (a 32-view file wanted 1108 and got 2048: 3.4x the bake's
# work). Blender, glTF and GPUs take any size; 128 keeps block compression and mipmaps even.
SIZE_STEP = 128
SIZE_SAMPLES = 20_000  # triangles whose best view sets the automatic size
PADDING = 2  # texels of gutter on each side of a chart: bilinear filtering and two mip levels
NORMAL_SMOOTHING = 3  # rounds of averaging polygon normals with their neighbours before grouping
# A view whose ray meets the surface at more than ~84 degrees sees it smeared over a pixel.
MIN_COSINE = 0.1
# A view sees a surface point when its depth there is this close (fraction of depth, plus a
# voxel of the surface): the views still disagree by ~0.6 % after engine.fusion.consistency, and the
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
    corners = mesh.fan_triangles()
    triangles = Triangles.of_mesh(mesh.vertices.astype(np.float32), mesh.corner_vert[corners])
    with Workers(BACKGROUND_THREADS, "da3-bake") as workers:
        # the views' scores need no UVs: the threads work them out while this one unwraps
        best = BestViews(triangles, pred, voxel, workers)
        atlas = Charts.of_mesh(mesh, corners)
        size = size or automatic_size(atlas, triangles, best, pred)
        uv = atlas.packed(size)
        report(0.1, "unwrapping")
        texels, triangle, bary = rasterize(uv[corners] * size, size, workers)
        rgb, seen = blend_views(Texels.of_raster(triangles, triangle, bary), triangles, best.result(),
                                pred, voxel, lambda f: report(0.1 + 0.8 * f, "baking"), workers)
    if colors is not None:
        unseen = np.flatnonzero(~seen)
        fallback = colors[mesh.corner_vert[corners[triangle[unseen]]], :3]  # (n,3 corners,3)
        rgb[unseen] = srgb_from_linear(np.einsum("kc,kcx->kx", bary[unseen], fallback))
    report(0.95, "writing the texture")
    return Baked(uv.astype(np.float32), atlas_png(size, texels, rgb),
                 seen=float(seen.mean()) if len(seen) else 0.0)


def atlas_png(size: int, texels: np.ndarray, rgb: np.ndarray) -> bytes:
    """The PNG of a ``size`` x ``size`` atlas whose ``texels`` (flat indices, v up) have the
    colours ``rgb`` (K,3 sRGB in [0,1]), its gutters filled."""
    image = np.zeros((size * size, 3), dtype=np.float32)
    image[texels] = rgb
    covered = np.zeros(size * size, dtype=bool)
    covered[texels] = True
    image = fill_gutters(image.reshape(size, size, 3), covered.reshape(size, size), PADDING + 1)
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return png_bytes(pixels[::-1])  # PNG rows run top-down


def automatic_size(atlas: Charts, triangles: Triangles, views: BestViews, pred: Prediction) -> int:
    """The smallest multiple of ``SIZE_STEP`` whose atlas holds the mesh's charts (``atlas``) at
    ``OVERSAMPLING`` texels (per side) per pixel its best view has of the surface, at the
    median of ``SIZE_SAMPLES`` triangles drawn by area (``MIN_SIZE`` to ``MAX_SIZE``): finer
    would only enlarge the photos' blur. The views' scores (``views``) hold those pixels."""
    rng = np.random.default_rng(0)
    area = triangles.areas.astype(np.float64)
    chosen = rng.choice(len(area), min(SIZE_SAMPLES, len(area)), p=area / area.sum(), replace=True)
    sharpest = views.sharpest(chosen)
    if not sharpest.any():
        return MIN_SIZE
    # pixels (per unit of length) of the photos the texture is sampled from: k times the
    # depth map's per side
    pixels = np.sqrt(float(np.median(sharpest[sharpest > 0]))) * pred.photo_factor
    side = atlas.atlas_side(OVERSAMPLING * pixels)
    size = SIZE_STEP * int(np.ceil(side / SIZE_STEP))
    return int(np.clip(size, MIN_SIZE, MAX_SIZE))


# --- 1. the UV atlas -----------------------------------------------------------------------------

@dataclass
class Charts:
    """A mesh cut into charts of connected polygons facing one axis direction, each projected
    flat along its axis; :meth:`packed` gives the UVs at one common texel density."""

    flat: np.ndarray  # (L,2) each corner projected along its chart's axis (the mesh's units)
    corner_chart: np.ndarray  # (L,) the chart of each corner
    low: np.ndarray  # (C,2) float64 each chart's lowest flat coordinates
    high: np.ndarray  # (C,2) and highest

    @classmethod
    def of_mesh(cls, mesh: Polygons, fans: np.ndarray | None = None) -> Charts:
        """The charts of ``mesh`` (``fans``: its :meth:`Polygons.fan_triangles`, if at hand)."""
        pairs, normals = polygon_pairs(mesh), polygon_normals(mesh, fans)
        direction, chart = charts(pairs, smoothed_normals(pairs, normals, NORMAL_SMOOTHING))
        axis = direction // 2
        corner_polygon = mesh.corner_polygon()
        kept_axes = np.array([[1, 2], [2, 0], [0, 1]])[axis[corner_polygon]]  # the two other axes
        flat = np.take_along_axis(mesh.vertices[mesh.corner_vert], kept_axes, axis=1)
        return cls(flat, chart[corner_polygon], *chart_bounds(flat, mesh.loop_start, chart))

    def atlas_side(self, density: float, padding: int = PADDING) -> float:
        """The side of the square atlas that holds the charts at ``density`` texels per unit,
        their gutters included, packed as ``pack_charts`` packs them."""
        return float(np.sqrt(chart_boxes(self.high - self.low, density, padding).prod(axis=1).sum()
                             / PACKING_FILL))

    def packed(self, size: int, padding: int = PADDING) -> np.ndarray:
        """(L,2) UVs in [0,1] per corner: the charts packed into a ``size`` x ``size`` atlas
        at one common texel density."""
        density, offsets = pack_charts(self.high - self.low, size, padding)
        texel = (self.flat - self.low[self.corner_chart]) * density + offsets[self.corner_chart] + padding
        return texel / size


def chart_bounds(flat: np.ndarray, loop_start: np.ndarray, chart: np.ndarray):
    """(C,2) float64 lowest and highest of the corners' ``flat`` (L,2) coordinates per chart
    (``chart``: (P,) each polygon's, its corners from ``loop_start``)."""
    low, high = np.minimum.reduceat(flat, loop_start), np.maximum.reduceat(flat, loop_start)
    order = np.argsort(chart, kind="stable")
    starts = np.searchsorted(chart[order], np.arange(chart.max() + 1))
    return (np.minimum.reduceat(low[order], starts).astype(np.float64),
            np.maximum.reduceat(high[order], starts).astype(np.float64))


def polygon_normals(mesh: Polygons, fans: np.ndarray | None = None) -> np.ndarray:
    """(P,3) float32 area-weighted normals: the sum over each polygon's fan triangles (``fans``:
    :meth:`Polygons.fan_triangles`, computed when not given), exact for any planar polygon.
    From edge vectors, so float32 loses nothing to the vertices' distance from the origin (a
    product of positions, as Newell's method takes, needed float64 and 2.6x the corners' memory)."""
    fans = mesh.fan_triangles() if fans is None else fans
    points = mesh.vertices.astype(np.float32, copy=False)
    a, b, c = (points[mesh.corner_vert[fans[:, k]]] for k in range(3))
    u, v = (b - a).T, (c - a).T
    cross = np.stack([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]],
                     axis=1)
    if len(fans) == len(mesh.loop_start):  # all triangles (fans run in polygon order): one each
        return cross / np.float32(2)
    polygon = np.repeat(np.arange(len(mesh.loop_start)), mesh.loop_total - 2)
    return np.stack([np.bincount(polygon, cross[:, k], len(mesh.loop_start)) for k in range(3)],
                    axis=1).astype(np.float32) / np.float32(2)


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
    direction = np.argmax(np.einsum("px,dx->pd", normals, DIRECTIONS), axis=1)
    neighbours = np.r_[pairs, pairs[:, ::-1]]
    chart = connected(pairs, direction)
    for _ in range(MERGE_ROUNDS):
        size = np.bincount(chart)[chart]
        # each small chart's polygon may take the direction of its largest neighbouring chart
        p, q = neighbours[(size[neighbours[:, 0]] < MIN_CHART_POLYGONS)
                          & (size[neighbours[:, 1]] > size[neighbours[:, 0]])].T
        facing = np.einsum("kx,kx->k", normals[p], DIRECTIONS[direction[q]]) > MERGE_COSINE
        p, q = p[facing], q[facing]
        if not len(p):
            break
        order = np.lexsort((-size[q], p))  # per polygon, its largest neighbouring chart first
        first = np.r_[True, p[order][1:] != p[order][:-1]]
        direction[p[order][first]] = direction[q[order][first]]
        # only polygons of small charts turned: the others' charts are still connected
        chart = connected(pairs, direction, np.where(size >= MIN_CHART_POLYGONS, chart, -1))
    return direction, chart


def connected(pairs: np.ndarray, direction: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """(P,) index (0..) of the connected set of same-direction polygons each one is in, in the
    order of their first polygons. ``known`` (P,): a set of polygons known to be connected that
    each is in (-1: none); the search then takes each set as one node."""
    node = np.arange(len(direction))
    if known is not None:
        node = np.where(known >= 0, known, known.max() + 1 + node)
    same = pairs[direction[pairs[:, 0]] == direction[pairs[:, 1]]]
    edges = node[same]
    edges = edges[edges[:, 0] != edges[:, 1]]
    label = island_labels(edges, node.max() + 1)[node]
    first, inverse = np.unique(label, return_index=True, return_inverse=True)[1:]
    return np.argsort(np.argsort(first))[inverse.reshape(-1)]


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

RASTER_CHUNK = 1 << 21  # texels of the triangles' bounding boxes handled at once


def rasterize(triangles: np.ndarray, size: int, workers: Workers | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centre lies in a triangle of ``triangles`` (T,3,2, in texels).

    Returns the flat texel indices (K,), the triangle of each (K,), in the triangles' order,
    and its barycentric coordinates (K,3). Each texel row a triangle crosses is scanned only
    where the triangle lies along it; a texel on an edge two triangles share goes to the first.
    Runs of triangles are scanned on the ``workers``' threads, at least one run each.
    """
    workers = workers or Workers(1)
    # by hand: numpy reduces over an axis of three several times slower
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    low, high = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    first_row = np.floor(low[:, 1]).clip(0, size).astype(np.int64)
    rows = np.maximum(np.floor(high[:, 1]).clip(-1, size - 1) - first_row + 1, 0).astype(np.int64)
    boxes = np.cumsum(rows * (np.floor(high[:, 0]) - np.floor(low[:, 0]) + 1))
    total = int(boxes[-1]) if len(boxes) else 0
    chunk = max(1, min(RASTER_CHUNK, -(-total // workers.count)))
    cuts = np.searchsorted(boxes, np.arange(chunk, total, chunk))

    def scan(start: int, stop: int):
        return _texels_inside(triangles[start:stop], first_row[start:stop], rows[start:stop], start, size)

    found = workers.map(scan, np.r_[0, cuts], np.r_[cuts, len(triangles)])
    texels, triangle, bary = (np.concatenate(parts) for parts in zip(*found, strict=True))
    shared = np.flatnonzero(np.bincount(texels, minlength=size * size)[texels] > 1)
    keep = np.ones(len(texels), dtype=bool)
    keep[shared] = False
    keep[shared[np.unique(texels[shared], return_index=True)[1]]] = True
    return texels[keep], triangle[keep], bary[keep]


def _texels_inside(tri: np.ndarray, first_row: np.ndarray, rows: np.ndarray, first: int, size: int):
    """Texels (flat), triangles (``first`` + index) and barycentric coordinates of the texel
    centres inside ``tri`` (n,3,2), whose rows start at ``first_row`` (n,), ``rows`` (n,) each."""
    row = np.repeat(first_row, rows) + _ramps(rows)
    low, high = _row_spans(tri, rows, row + 0.5)
    first_col = np.ceil(low - 0.5 - 1e-3).clip(0, size).astype(np.int64)
    count = np.maximum(np.floor(high - 0.5 + 1e-3).clip(-1, size - 1) - first_col + 1, 0).astype(np.int64)
    # barycentric coordinates relative to corner a: w = slope * (x - a_x) + offset(y - a_y)
    a, v0, v1 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    valid = np.abs(det) > 1e-12
    safe = np.where(valid, det, 1.0)
    count *= np.repeat(valid, rows)
    dy = row + 0.5 - np.repeat(a[:, 1], rows)
    triangle = np.repeat(np.arange(len(tri)), rows)
    per_row = (np.repeat(value, rows) for value in (a[:, 0], v1[:, 1] / safe, -v0[:, 1] / safe))
    ax, slope1, slope2 = (np.repeat(value, count) for value in per_row)
    offset1 = np.repeat(np.repeat(-v1[:, 0] / safe, rows) * dy, count)
    offset2 = np.repeat(np.repeat(v0[:, 0] / safe, rows) * dy, count)
    col = np.repeat(first_col, count) + _ramps(count)
    dx = col + 0.5 - ax
    w1 = slope1 * dx + offset1
    w2 = slope2 * dx + offset2
    w0 = 1 - w1 - w2
    inside = np.flatnonzero((w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6))
    bary = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
    texels = np.repeat(row * size, count)[inside] + col[inside]
    return texels, first + np.repeat(triangle, count)[inside], np.clip(bary, 0, 1).astype(np.float32)


def _ramps(counts: np.ndarray) -> np.ndarray:
    """0, 1, .., counts[0] - 1, 0, 1, .., counts[1] - 1, ..."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _row_spans(tri: np.ndarray, rows: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the lines at heights ``y`` (R,: ``rows`` (n,) per triangle) meet the triangles
    ``tri`` (n,3,2): the lowest and highest x (a line that misses its triangle is moved to its
    nearest corner). With the corners sorted by height, one side runs from the lowest corner to
    the highest, the other from the lowest to the middle one and on to the highest."""
    (x0, y0), (x1, y1), (x2, y2) = (corner.T for corner in _by_height(tri))
    slopes = [dx / np.where(dy > 0, dy, 1) * (dy > 0)
              for dx, dy in ((x2 - x0, y2 - y0), (x1 - x0, y1 - y0), (x2 - x1, y2 - y1))]
    across, lower, upper = (np.repeat(slope, rows) for slope in slopes)
    x0, y0, x1, y1 = (np.repeat(value, rows) for value in (x0, y0, x1, y1))
    y = np.clip(y, y0, np.repeat(y2, rows))
    far = x0 + (y - y0) * across
    near = np.where(y < y1, x0 + (y - y0) * lower, x1 + (y - y1) * upper)
    return np.minimum(far, near), np.maximum(far, near)


def _by_height(tri: np.ndarray) -> list[np.ndarray]:
    """The corners of ``tri`` (n,3,2), lowest first: three (n,2) arrays (a sorting network, where
    argsort would sort every row of three alone)."""
    corners = [tri[:, 0], tri[:, 1], tri[:, 2]]
    for i, j in ((0, 1), (1, 2), (0, 1)):
        low, high = corners[i], corners[j]
        swap = (high[:, 1] < low[:, 1])[:, None]
        corners[i], corners[j] = np.where(swap, high, low), np.where(swap, low, high)
    return corners


# --- 3. the views -> texel colours ---------------------------------------------------------------

@dataclass
class Triangles:
    """The surface's triangles as the views see them: unit normals, areas, centres, planes, and
    the vertices at their corners."""

    normals: np.ndarray  # (T,3) unit
    areas: np.ndarray  # (T,)
    centres: np.ndarray  # (T,3)
    planes: np.ndarray  # (T,) normal . centre: normal . (eye - point) = normal . eye - plane
    corners: np.ndarray  # (T,3,3) corner positions
    corner_vertices: np.ndarray  # (3,T) vertex indices: row j holds every triangle's corner j
    rows: np.ndarray  # (3,V) the vertices, a row per coordinate (cameras.transform runs on rows)

    @classmethod
    def of_mesh(cls, vertices: np.ndarray, triangle_vertices: np.ndarray) -> Triangles:
        """Triangles of ``vertices`` (V,3) with the vertex indices ``triangle_vertices`` (T,3)."""
        corners = vertices[triangle_vertices]
        # summed by hand: numpy reduces over an axis of three 2.5x slower
        centres = (corners[:, 0] + corners[:, 1] + corners[:, 2]) / np.float32(3)
        cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        twice_area = np.linalg.norm(cross, axis=1)
        normals = cross / np.maximum(twice_area, 1e-30)[:, None]
        return cls(normals, twice_area / 2, centres, np.einsum("tx,tx->t", normals, centres), corners,
                   np.ascontiguousarray(triangle_vertices.T), np.ascontiguousarray(vertices.T))

    def heights(self, eye: np.ndarray, chosen=slice(None)) -> np.ndarray:
        """How far ``eye`` (3,) lies in front of the plane of each (``chosen``) triangle."""
        return np.einsum("tx,x->t", self.normals[chosen], eye) - self.planes[chosen]


@dataclass
class Texels:
    """The texels inside the surface, sorted by the triangle each lies in, with its surface
    point."""

    triangle: np.ndarray  # (K,) sorted
    points: np.ndarray  # (K,3)
    first: np.ndarray  # (T+1,) triangle t's texels are first[t]:first[t + 1]

    @classmethod
    def of_raster(cls, triangles: Triangles, triangle: np.ndarray, bary: np.ndarray) -> Texels:
        """The texels ``rasterize`` found (``triangle`` sorted) on ``triangles``."""
        points = np.einsum("kc,kcx->kx", bary, triangles.corners[triangle])
        return cls(triangle, points, np.searchsorted(triangle, np.arange(len(triangles.planes) + 1)))

    def of_triangles(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the texels of the ``chosen`` triangles (without touching the others),
        and how many each triangle has."""
        starts, counts = self.first[chosen], np.diff(self.first)[chosen]
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
        return offsets + np.arange(len(offsets)), counts


def blend_views(texels: Texels, triangles: Triangles, best: np.ndarray, pred: Prediction,
                voxel: float, progress: Callable[[float], None], workers: Workers | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(K,3) sRGB colour in [0,1] of each texel, from the ``best`` (T,n) views of its triangle
    that see it, and (K,) whether any did. Each of the ``workers`` blends every view, in order,
    into its own run of triangles: none writes where another does, and a texel sums its views
    in the same order on any number of threads."""
    workers = workers or Workers(1)
    total = np.zeros((3, len(texels.points)), dtype=np.float32)  # a row per channel
    weights = np.zeros(len(texels.points), dtype=np.float32)
    w2c = pred.world_to_camera()
    eyes = camera_centres(w2c)
    per_view = triangles_per_view(best, pred.num_views)

    def blend_run(low: int, high: int) -> None:
        for i, chosen_triangles in enumerate(per_view):
            mine = chosen_triangles[slice(*np.searchsorted(chosen_triangles, [low, high]))]
            chosen, counts = texels.of_triangles(mine)
            heights = np.repeat(triangles.heights(eyes[i], mine), counts)
            index, colour, weight = view_colours(texels.points.take(chosen, axis=0), heights,
                                                 pred, i, w2c[i], voxel)
            index = chosen[index]
            weight **= SHARPNESS
            colour *= weight
            for row, values in zip(total, colour, strict=True):  # take and put: faster than +=
                row[index] = row.take(index) + values
            weights[index] = weights.take(index) + weight
            if low == 0:  # the first run speaks for all
                progress((i + 1) / pred.num_views)

    # runs of whole triangles with about as many texels each
    cuts = texels.triangle[len(texels.triangle) * np.arange(1, workers.count) // workers.count]
    bounds = np.r_[0, cuts, len(triangles.planes)] if len(texels.triangle) else np.array([0, 0])
    workers.map(blend_run, bounds[:-1], bounds[1:])
    seen = weights > 0
    np.divide(total, weights, out=total, where=seen)
    return total.T, seen


def triangles_per_view(best: np.ndarray, views: int) -> list[np.ndarray]:
    """For each view, the triangles (in order) whose ``best`` (T,n) views include it."""
    flat = best.reshape(-1).astype(np.int16)  # a stable sort of 16-bit integers is a radix sort
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(views + 1))
    return [order[bounds[i]:bounds[i + 1]] // best.shape[1] for i in range(views)]


def camera_centres(w2c: np.ndarray) -> np.ndarray:
    """(N,3) float32 the cameras' positions in the world (w2c: (N,4,4) or (N,3,4))."""
    rotation, shift = w2c[:, :3, :3], w2c[:, :3, 3]
    return -np.einsum("nji,nj->ni", rotation, shift).astype(np.float32)


# Views blended per triangle: with weights squared the best few carry nearly all of a texel's
# colour; more only cost time (each view is a projection of every texel it is chosen for).
VIEWS_PER_TRIANGLE = 4


class BestViews:
    """The views most likely to see each triangle best: facing it, overlapping it, its centre
    where their depth puts the surface, most pixels on it. Each view is scored on one of the
    ``workers``' threads (each writes its own row) while the caller goes on; :meth:`result`
    waits for them."""

    def __init__(self, triangles: Triangles, pred: Prediction, voxel: float, workers: Workers):
        self.triangles, self.pred, self.voxel, self.workers = triangles, pred, voxel, workers
        self.w2c = pred.world_to_camera()
        self.scores = np.zeros((pred.num_views, len(triangles.planes)), dtype=np.float32)
        self._scored = [workers.submit(self._score, i, eye)
                        for i, eye in enumerate(camera_centres(self.w2c))]

    def _score(self, i: int, eye: np.ndarray) -> None:
        heights = self.triangles.heights(eye)
        facing = facing_triangles(self.triangles, heights, self.pred, i, self.w2c[i])
        self.scores[i, facing] = STAND_IN
        # seen at its centre implies facing and overlapping: the others need no exact test
        index, pixels_per_area = seen_by_view(self.triangles.centres[facing], heights[facing],
                                              self.pred, i, self.w2c[i], self.voxel)[:2]
        self.scores[i, facing[index]] = np.maximum(pixels_per_area, 2 * STAND_IN)

    def sharpest(self, chosen: np.ndarray) -> np.ndarray:
        """The most pixels per unit of area any view has of each ``chosen`` triangle's centre,
        0 where none sees it."""
        self._wait()
        most = self.scores[:, chosen].max(axis=0)
        return np.where(most > STAND_IN, most, 0)

    def result(self) -> np.ndarray:
        """(T, VIEWS_PER_TRIANGLE) each triangle's best views, in no order (blend_views sums
        them); a view whose depth test fails at the centre only stands in when there are not
        enough others (part of a large triangle may still be in view); -1 for none."""
        self._wait()
        count = min(VIEWS_PER_TRIANGLE, self.pred.num_views)

        def best_of(start: int) -> np.ndarray:
            scores = self.scores[:, start:start + PICK_CHUNK]
            best = np.argpartition(-scores, count - 1, axis=0)[:count]  # not a whole sort
            return np.where(np.take_along_axis(scores, best, axis=0) > 0, best, -1).T

        # each triangle's views are partitioned on their own, so the chunks give what one
        # partition of the whole would (0.1-0.2 s on one thread for 280 k triangles)
        chunks = self.workers.map(best_of, range(0, self.scores.shape[1], PICK_CHUNK))
        return np.concatenate(chunks) if chunks else np.zeros((0, count), np.int64)

    def _wait(self) -> None:
        for scored in self._scored:
            scored.result()  # raises what the thread raised


STAND_IN = 1e-6
PICK_CHUNK = 16384  # triangles whose best views one step of BestViews.result picks


def facing_triangles(triangles: Triangles, heights: np.ndarray, pred: Prediction, i: int,
                     w2c: np.ndarray) -> np.ndarray:
    """Indices of the triangles that face view ``i`` at their centre (``heights``: (T,) how far
    the camera is in front of each triangle's plane) and whose projection overlaps its image
    (or that reach behind the camera): a cheap test that spares most texels the exact one."""
    facing = np.flatnonzero(heights > 0)
    rotation, shift = w2c[:3, :3].astype(np.float32), w2c[:3, 3].astype(np.float32)
    camera = cameras.transform(rotation, shift, triangles.rows)  # no BLAS
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = cameras.image_positions(camera, cameras.lens(pred.intrinsics[i]))
    # one bit per side of the image a vertex lies beyond, and one for behind the camera: a
    # triangle misses the image when all its corners lie beyond one side
    side = ((u < 0) | (u >= pred.width) << 1 | (v < 0) << 2 | (v >= pred.height) << 3
            | (camera[2] <= 0) << 4).astype(np.uint8)
    a, b, c = (side.take(corner.take(facing)) for corner in triangles.corner_vertices)
    return facing[((a & b & c) == 0) | ((a | b | c) >= 16)]


def view_colours(points, heights, pred: Prediction, i: int, w2c: np.ndarray, voxel: float):
    """The points view ``i`` sees: their indices, sRGB colours (3,n: a row per channel) and
    weights (n,)."""
    index, pixels_per_area, u, v, pixel = seen_by_view(points, heights, pred, i, w2c, voxel)
    confidence = 1.0 if pred.conf is None else pred.conf[i].reshape(-1).take(pixel)
    weight = (confidence * pixels_per_area).astype(np.float32)
    return index, sample_photo(pred, i, u, v), weight


def sample_photo(pred: Prediction, i: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(3,n) colours of view ``i`` at image positions ``u``, ``v`` (the depth map's pixels,
    pixel j's centre at j + 0.5), from its full-size photo when the file has one (k times the
    size over the same field of view: positions scale by k), else from ``image``."""
    if pred.photos is None:
        return sample_bilinear(pred.image[i], u - 0.5, v - 0.5)
    k = np.float32(pred.photo_factor)
    return sample_bilinear(pred.photos[i], u * k - 0.5, v * k - 0.5)


def seen_by_view(points, heights, pred: Prediction, i: int, w2c: np.ndarray, voxel: float):
    """The points (K,3) that view ``i`` sees (facing it, inside its image, where its own depth
    map puts the surface); ``heights`` (K,): how far its camera lies in front of the surface's
    plane at each point. Returns their indices, the view's pixels per unit of their surface
    area (frontal and near views resolve the most detail), and where they fall: pixel
    coordinates u, v and the flat index of the pixel. (All tests first, one selection after:
    each selection copies every array.)"""
    rotation, shift = w2c[:3, :3].astype(np.float32), w2c[:3, 3].astype(np.float32)
    # written out on contiguous rows (faster than columns), no BLAS (see the module's notes)
    x, y, z = cameras.transform(rotation, shift, np.ascontiguousarray(points.T))
    cosine = heights / np.maximum(np.sqrt(x * x + y * y + z * z), 1e-30)
    lens = cameras.lens(pred.intrinsics[i].astype(np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = cameras.image_positions((x, y, z), lens)
    seen = (cosine > MIN_COSINE) & (z > 0) & (u >= 0) & (v >= 0) & (u < pred.width) & (v < pred.height)
    pixel = np.where(seen, v, 0).astype(np.int32) * pred.width + np.where(seen, u, 0).astype(np.int32)
    depth = pred.depth[i].reshape(-1).take(pixel)
    seen &= np.abs(depth - z) <= DEPTH_TOLERANCE * z + voxel
    if pred.sky is not None:
        seen &= ~pred.sky[i].reshape(-1).take(pixel)
    index = np.flatnonzero(seen)
    z = z[index]
    pixels_per_area = cosine[index] * lens[0] * lens[1] / (z * z)
    return index, pixels_per_area, u[index], v[index], pixel[index]


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(3,n) float colours in [0,1], a row per channel, of ``image`` (H,W,3 uint8) at pixel
    coordinates x, y."""
    h, w = image.shape[:2]
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = x - x0, y - y0
    corner = y0 * w + x0
    colours = np.empty((3, len(x)), dtype=np.float32)
    # (3,H*W) uint8: a full-size photo is 10 MP, whose float copy would cost more than the
    # gathers; the gathered values are made float
    planes = np.ascontiguousarray(image.reshape(-1, 3).T)
    for plane, out in zip(planes, colours, strict=True):  # gathers of single values: the fastest
        top, bottom = (plane.take(at).astype(np.float32) for at in (corner, corner + w))
        top += (plane.take(corner + 1) - top) * fx
        bottom += (plane.take(corner + w + 1) - bottom) * fx
        np.add(top, (bottom - top) * fy, out=out)
    colours *= np.float32(1 / 255)
    return colours


# --- 4. gutters and the file -------------------------------------------------------------------

def fill_gutters(image: np.ndarray, known: np.ndarray, rounds: int) -> np.ndarray:
    """Texels outside every chart take the mean of their known 4-neighbours, ``rounds`` times
    outward, so a texture filtered across a chart's edge shows the chart's own colours.
    ``image`` (H,W,3) is 0 where not ``known`` (H,W). Only the ring around the known texels is
    visited each round."""
    image, known = image.copy(), known.copy()
    height, width = known.shape
    flat, filled = image.reshape(-1, 3), known.reshape(-1)
    for _ in range(rounds):
        ring = np.zeros_like(known)
        ring[1:] |= known[:-1]
        ring[:-1] |= known[1:]
        ring[:, 1:] |= known[:, :-1]
        ring[:, :-1] |= known[:, 1:]
        at = np.flatnonzero(ring & ~known)
        row, col = np.divmod(at, width)
        total = np.zeros((len(at), 3), dtype=image.dtype)
        count = np.zeros(len(at), dtype=image.dtype)
        for inside, step in ((row > 0, -width), (row < height - 1, width), (col > 0, -1),
                             (col < width - 1, 1)):
            neighbour = np.where(inside, at + step, at)  # at itself: unknown, 0
            total += flat[neighbour]
            count += filled[neighbour]
        flat[at] = total / count[:, None]
        filled[at] = True
    return image


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (H,W,3 uint8, first row on top). Blender's Python has no image
    library; zlib does the work and releases the GIL, so the UI runs on meanwhile."""
    height, width = rgb.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    # level 1: photos hardly compress; level 6 took twice as long for a file 0-8 % smaller
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

