"""From depth maps to geometry: masks, back-projection, axes, scale and triangulation (numpy only).

Frames: DA3 cameras are OpenCV (x right, y down, z forward) and ``extrinsics`` are world-to-camera.
The result is expressed in view 0's camera frame turned Z-up for Blender,
``(x, y, z)_cv -> (x, z, -y)``, so the first camera sits at the origin looking along +Y with +Z up.

Scale: metric predictions stay in metres. Relative ones are scaled so that the median depth of the
kept pixels is ``RELATIVE_MEDIAN_DEPTH`` (2 m): a room-sized scene that Blender's default clip
distances, grid and voxel sizes suit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import cameras
from .options import BACKGROUND_THREADS, BuildOptions
from .prediction import Prediction, PredictionError
from .threads import Workers

RELATIVE_MEDIAN_DEPTH = 2.0  # metres: what the median depth of a relative prediction becomes
CONF_FLOOR = 1.05  # DA3's exporter: threshold = clamp(P_pct, 1.05, P90)
CONF_CEILING_PERCENTILE = 90.0
# A neighbour whose depth differs by more than this fraction is across a discontinuity. A smooth
# surface changes by under 3% per pixel up to ~85 degrees of incidence at DA3's resolution.
EDGE_TOLERANCE = 0.05

# OpenCV camera axes -> Blender's Z-up world: (x, y, z) -> (x, z, -y).
CV_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# OpenCV camera axes -> Blender camera axes (Blender cameras look down -Z with +Y up).
CV_TO_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0])


@dataclass
class Scene:
    """Everything the Blender side needs, already in Blender's frame and scale."""

    pred: Prediction  # the views, whose pixels :attr:`points` back-projects
    valid: np.ndarray  # (N,H,W) bool, the pixels that survive every filter
    image: np.ndarray | None  # (N,H,W,3) uint8 sRGB, None without images (made linear on use)
    cam_to_world: np.ndarray  # (N,4,4) Blender camera matrices (looking down -Z), scaled
    scale: float  # metres per unit of the prediction's depth
    conf_threshold: float | None

    @property
    def num_points(self) -> int:
        return int(np.count_nonzero(self.valid))

    @cached_property
    def points(self) -> np.ndarray:
        """(N,H,W,3) float32 world positions of every pixel, made when first asked for: what
        meshes the views needs them all, the point cloud only the pixels it keeps
        (:meth:`pixel_points`; 12 bytes a pixel, 0.7 GB for 300 views of 504x378)."""
        return backproject(self.pred, self.scale)

    def pixel_points(self, flat: np.ndarray) -> np.ndarray:
        """(K,3) float32 world positions of the pixels at the sorted ``flat`` indices into
        (N,H,W): :attr:`points`' values, without making every pixel's."""
        return backproject(self.pred, self.scale, flat)


# --- masks -----------------------------------------------------------------------------------

def confidence_threshold(conf: np.ndarray, considered: np.ndarray, percentile: float) -> float:
    """DA3's exporter rule: min(max(1.05, P_pct), P90) of the confidence of ``considered`` pixels."""
    values = conf[considered]  # a copy already: partitioned in place, not copied again
    if values.size == 0:
        return CONF_FLOOR
    low, high = np.percentile(values, [percentile, CONF_CEILING_PERCENTILE], overwrite_input=True)
    return float(min(max(CONF_FLOOR, low), high))


def depth_jumps(a: np.ndarray, b: np.ndarray, tolerance: float = EDGE_TOLERANCE) -> np.ndarray:
    """True where depths ``a`` and ``b`` differ by more than ``tolerance`` of the nearer one."""
    near = np.minimum(a, b)
    return np.abs(a - b) > tolerance * near


def edge_mask(depth: np.ndarray, tolerance: float = EDGE_TOLERANCE) -> np.ndarray:
    """(..., H, W) True at flying pixels: a 4-neighbour's depth jumps by more than ``tolerance``.

    Both sides of a jump go: the interpolated depths DA3 predicts across an occlusion edge lie
    between foreground and background, and neither side of such a pair can be trusted.
    """
    flying = np.zeros(depth.shape, dtype=bool)
    across = depth_jumps(depth[..., :, 1:], depth[..., :, :-1], tolerance)
    flying[..., :, 1:] |= across
    flying[..., :, :-1] |= across
    down = depth_jumps(depth[..., 1:, :], depth[..., :-1, :], tolerance)
    flying[..., 1:, :] |= down
    flying[..., :-1, :] |= down
    return flying


def considered_pixels(pred: Prediction, mask_sky: bool) -> np.ndarray:
    """(N,H,W) pixels with a depth that are not sky: the ones DA3's confidence rule ranks."""
    considered = np.isfinite(pred.depth) & (pred.depth > 0)
    if mask_sky and pred.sky is not None:
        considered &= ~pred.sky
    return considered


def confident_pixels(pred: Prediction, percentile: float,
                     mask_sky: bool) -> tuple[np.ndarray, float | None]:
    """The confidence floor shared by every fusion mode (points, REMESH, TSDF numpy and torch).

    Returns the (N,H,W) pixels with a depth, not sky, and at or above DA3's exporter threshold
    (:func:`confidence_threshold` over the considered pixels), and that threshold (None without
    confidence). Files in DA3's own layout carry no sky mask: their background sits at the
    lowest confidence (1.0), so this floor is what keeps it out of the geometry.
    """
    keep = considered_pixels(pred, mask_sky)
    if pred.conf is None:
        return keep, None
    threshold = confidence_threshold(pred.conf, keep, percentile)
    return keep & (pred.conf >= threshold), threshold


def valid_mask(pred: Prediction, options: BuildOptions) -> tuple[np.ndarray, float | None]:
    """Pixels to keep (depth > 0, not sky, confident, not flying) and the confidence threshold."""
    valid, threshold = confident_pixels(pred, options.confidence_percentile, options.mask_sky)

    def drop_flying(i: int) -> None:  # view by view: temporaries of one view's size, not all views'
        valid[i] &= ~edge_mask(pred.depth[i])

    with Workers(BACKGROUND_THREADS, "da3-read") as workers:
        workers.map(drop_flying, range(pred.num_views))
    return valid, threshold


# --- frames and scale ------------------------------------------------------------------------

def relative_scale(depth: np.ndarray, valid: np.ndarray, is_metric: bool) -> float:
    """Metres per depth unit: 1 for metric output, else what brings the median depth to 2 m."""
    if is_metric:
        return 1.0
    kept = depth[valid]  # a copy already: partitioned in place
    median = float(np.median(kept, overwrite_input=True)) if kept.size else 0.0
    return RELATIVE_MEDIAN_DEPTH / median if median > 0 else 1.0


def cameras_to_view0(world_to_camera: np.ndarray) -> np.ndarray:
    """(N,4,4) camera-to-world matrices re-anchored on view 0 (DA3 may anchor on another view)."""
    return world_to_camera[0] @ cameras.inverted(world_to_camera)


def blender_camera_matrices(cam_to_view0: np.ndarray, scale: float) -> np.ndarray:
    """(N,4,4) Blender camera matrix_world: Z-up world, -Z viewing axis, translation scaled."""
    out = np.tile(np.eye(4), (len(cam_to_view0), 1, 1))
    out[:, :3, :3] = CV_TO_BLENDER @ cam_to_view0[:, :3, :3] @ CV_TO_BLENDER_CAMERA
    out[:, :3, 3] = scale * (cam_to_view0[:, :3, 3] @ CV_TO_BLENDER.T)
    return out


def backproject(pred: Prediction, scale: float, flat: np.ndarray | None = None) -> np.ndarray:
    """(N,H,W,3) float32 positions of every pixel in Blender's world frame, or (K,3) of the
    pixels at the sorted ``flat`` indices into (N,H,W) (the views shared among
    ``BACKGROUND_THREADS`` threads; a pixel's position is the same either way)."""
    poses = pred.world_to_camera() @ cameras.inverted(prediction_to_blender(pred))  # in Blender's frame
    n, h, w = pred.depth.shape
    out = np.empty((n * h * w if flat is None else len(flat), 3), dtype=np.float32)
    bounds = np.arange(n + 1) * (h * w) if flat is None else np.searchsorted(flat, np.arange(n + 1) * (h * w))

    def view(i: int) -> None:  # writes its own rows
        x, y = cameras.pixel_ray_factors(cameras.lens(pred.intrinsics[i]), h, w)
        if flat is None:
            cam = np.stack(cameras.camera_points(pred.depth[i], x[None, :], y[:, None]), axis=-1)
        else:
            row, column = np.divmod(flat[bounds[i]:bounds[i + 1]] - i * h * w, w)
            cam = np.stack(cameras.camera_points(pred.depth[i][row, column], x[column], y[row]), axis=-1)
        out[bounds[i]:bounds[i + 1]] = (scale * cameras.camera_to_world(cam, poses[i, :3, :3],
                                                                        poses[i, :3, 3])).reshape(-1, 3)

    with Workers(BACKGROUND_THREADS, "da3-read") as workers:
        workers.map(view, range(n))
    return out.reshape(n, h, w, 3) if flat is None else out


def prediction_to_blender(pred: Prediction) -> np.ndarray:
    """(4,4) rigid map from the prediction's world frame to Blender's (before scaling):
    view 0's camera frame, turned Z-up. A proper rotation, so triangle winding survives."""
    out = np.eye(4)
    w2c0 = pred.world_to_camera()[0]
    out[:3, :3] = CV_TO_BLENDER @ w2c0[:3, :3]
    out[:3, 3] = CV_TO_BLENDER @ w2c0[:3, 3]
    return out


def points_to_blender(points: np.ndarray, pred: Prediction, scale: float) -> np.ndarray:
    """(…,3) points of the prediction's world frame in Blender's frame and scale (float32)."""
    m = prediction_to_blender(pred)
    return (scale * (cameras.rotated(points, m[:3, :3]) + m[:3, 3])).astype(np.float32)


def points_from_blender(points: np.ndarray, pred: Prediction, scale: float,
                        directions: bool = False) -> np.ndarray:
    """(…,3) points (or, with ``directions``, unit directions) of Blender's frame and scale back
    in the prediction's world frame: the inverse of ``points_to_blender``."""
    m = prediction_to_blender(pred)
    if directions:
        return cameras.rotated(points, m[:3, :3].T).astype(np.float32)
    return cameras.rotated(points / scale - m[:3, 3], m[:3, :3].T).astype(np.float32)


def box_in_prediction_frame(crop, pred: Prediction, scale: float) -> np.ndarray:
    """(2,3) axis-aligned box in the prediction's frame that holds the crop box ``crop``
    = (world_to_local, low, high) given in Blender's frame (a rotated box grows to fit)."""
    world_to_local, low, high = crop
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])], dtype=np.float64)
    local_to_world = cameras.inverted(world_to_local)
    blender = corners @ local_to_world[:3, :3].T + local_to_world[:3, 3]
    to_pred = cameras.inverted(prediction_to_blender(pred))
    points = (blender / scale) @ to_pred[:3, :3].T + to_pred[:3, 3]
    return np.stack([points.min(axis=0), points.max(axis=0)])


def inside_box(points: np.ndarray, world_to_local: np.ndarray, low, high) -> np.ndarray:
    """True for ``points`` (...,3) inside the box [low, high] of a frame given by ``world_to_local``."""
    local = cameras.rotated(points, world_to_local[:3, :3].astype(np.float32)) + world_to_local[:3, 3]
    return np.all((local >= np.asarray(low)) & (local <= np.asarray(high)), axis=-1)


# --- colours ---------------------------------------------------------------------------------

def _srgb_table() -> np.ndarray:
    c = np.arange(256) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear.astype(np.float32)


SRGB_TO_LINEAR = _srgb_table()


def linear_from_srgb(colors: np.ndarray) -> np.ndarray:
    """(…,3) float sRGB-encoded in [0,1] -> (…,4) float32 linear RGBA."""
    c = np.clip(colors, 0.0, 1.0)
    rgba = np.ones(colors.shape[:-1] + (4,), dtype=np.float32)
    rgba[..., :3] = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return rgba


def srgb_from_linear(colors: np.ndarray) -> np.ndarray:
    """(…,3) linear floats -> float32 sRGB-encoded in [0,1] (the inverse of ``linear_from_srgb``)."""
    c = np.clip(colors, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


def linear_colors(image: np.ndarray) -> np.ndarray:
    """(…,3) uint8 sRGB -> (…,4) float32 linear RGBA, what Blender's float colour attributes hold."""
    rgba = np.ones(image.shape[:-1] + (4,), dtype=np.float32)
    rgba[..., :3] = SRGB_TO_LINEAR[image]
    return rgba


# --- the whole preparation -------------------------------------------------------------------

def prepare(pred: Prediction, options: BuildOptions, crop=None) -> Scene:
    """Filter, back-project and scale ``pred``; ``crop`` = (world_to_local, low, high) or None."""
    valid, threshold = valid_mask(pred, options)
    scale = relative_scale(pred.depth, valid, pred.is_metric)
    camera_matrices = blender_camera_matrices(cameras_to_view0(pred.world_to_camera()), scale)
    scene = Scene(pred, valid, pred.image, camera_matrices, scale, threshold)
    if crop is not None:
        valid &= inside_box(scene.points, *crop)
    return scene


# --- triangulation ---------------------------------------------------------------------------

@dataclass
class GridMesh:
    """A depth grid turned into a compact mesh: vertices, triangles and (optionally) quads.

    ``edges`` and the ``*_corner_edges`` (per face corner, the edge to the next corner) come
    straight from the grid's structure, so Blender need not derive the edges from the faces
    (its slowest step of building a mesh); they are None where a mesh was cut or joined.
    """

    vertices: np.ndarray  # (V,3) float32
    triangles: np.ndarray  # (T,3) int32, counter-clockwise seen from the camera in Blender
    colors: np.ndarray | None  # (V,4) float32
    pixel_index: np.ndarray  # (V,) int64 flat index of each vertex's pixel in its view
    edges: np.ndarray | None = None  # (E,2) int32
    corner_edges: np.ndarray | None = None  # (T,3) int32, edge from corner k to corner k+1
    quads: np.ndarray = field(default_factory=lambda: np.empty((0, 4), np.int32))  # (Q,4) int32
    quad_corner_edges: np.ndarray | None = None  # (Q,4) int32


def _kept_cells(valid: np.ndarray, depth: np.ndarray, tolerance: float):
    """Which of the two triangles of each grid cell stay: (lower, upper), each (H-1, W-1) bool.

    Each cell (a b / c d) splits along a-d into lower (a, c, d) and upper (a, d, b); a triangle
    stays when its three pixels are valid and none of its edges has a depth jump.
    """
    a, b, c, d = (valid[:-1, :-1], valid[:-1, 1:], valid[1:, :-1], valid[1:, 1:])
    za, zb, zc, zd = (depth[:-1, :-1], depth[:-1, 1:], depth[1:, :-1], depth[1:, 1:])
    diagonal = a & d & ~depth_jumps(za, zd, tolerance)
    lower = diagonal & c & ~depth_jumps(za, zc, tolerance) & ~depth_jumps(zc, zd, tolerance)
    upper = diagonal & b & ~depth_jumps(za, zb, tolerance) & ~depth_jumps(zb, zd, tolerance)
    return lower, upper


def _cell_corners(shape):
    """Flat pixel indices of the corners a (top left), b, c, d (bottom right) of every cell."""
    h, w = shape[0] + 1, shape[1] + 1
    idx = np.arange(h * w).reshape(h, w)
    return idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]


def _grid_faces(lower: np.ndarray, upper: np.ndarray, quad: np.ndarray):
    """Flat pixel indices of the faces: quads (a, c, d, b), then lower triangles (a, c, d),
    then upper (a, d, b); the winding of all three agrees."""
    a, b, c, d = _cell_corners(lower.shape)
    quads = np.stack([a[quad], c[quad], d[quad], b[quad]], axis=1)
    tris = np.concatenate([np.stack([a[lower], c[lower], d[lower]], axis=1),
                           np.stack([a[upper], d[upper], b[upper]], axis=1)])
    return quads, tris


def _grid_edges(lower: np.ndarray, upper: np.ndarray, quad: np.ndarray):
    """Edges of the faces of ``_grid_faces`` straight from the grid: (E,2) pixel pairs, and per
    face corner the id of the edge to the next corner (triangles (T,3), quads (Q,4)).

    Horizontal edge (i,j)-(i,j+1) tops an upper triangle or quad, or bottoms the face above;
    vertical (i,j)-(i+1,j) is the left of a lower triangle or quad or the right of the face to
    its left; diagonal (i,j)-(i+1,j+1) exists only in a cell holding a lone triangle.
    """
    h, w = lower.shape[0] + 1, lower.shape[1] + 1
    horizontal = np.zeros((h, w - 1), bool)
    horizontal[:-1] |= upper | quad
    horizontal[1:] |= lower | quad
    vertical = np.zeros((h - 1, w), bool)
    vertical[:, :-1] |= lower | quad
    vertical[:, 1:] |= upper | quad
    ids, pairs, start = [], [], 0
    idx = np.arange(h * w).reshape(h, w)
    for exists, first, second in ((horizontal, idx[:, :-1], idx[:, 1:]),
                                  (vertical, idx[:-1], idx[1:]),
                                  (lower | upper, idx[:-1, :-1], idx[1:, 1:])):
        ids.append(np.cumsum(exists).reshape(exists.shape) - 1 + start)
        pairs.append(np.stack([first[exists], second[exists]], axis=1))
        start += int(exists.sum())
    h_id, v_id, d_id = ids
    top, bottom, left, right = h_id[:-1], h_id[1:], v_id[:, :-1], v_id[:, 1:]
    tri_edges = np.concatenate([
        np.stack([left[lower], bottom[lower], d_id[lower]], axis=1),  # a-c, c-d, d-a
        np.stack([d_id[upper], right[upper], top[upper]], axis=1),  # a-d, d-b, b-a
    ])
    quad_edges = np.stack([left[quad], bottom[quad], right[quad], top[quad]], axis=1)
    return np.concatenate(pairs), tri_edges, quad_edges


def triangulate_view(points: np.ndarray, valid: np.ndarray, depth: np.ndarray,
                     image: np.ndarray | None = None, stride: int = 1,
                     tolerance: float = EDGE_TOLERANCE, quads: bool = False) -> GridMesh:
    """Triangulate one view's pixel grid (every ``stride``-th pixel) into a compact mesh.

    With ``quads`` a cell whose two triangles both stay becomes one quad: half the faces and a
    third fewer corners and edges for the same surface.
    """
    h, w = depth.shape
    rows, cols = np.arange(0, h, stride), np.arange(0, w, stride)
    sub = np.ix_(rows, cols)
    lower, upper = _kept_cells(valid[sub], depth[sub], tolerance * stride)
    quad = lower & upper if quads else np.zeros_like(lower)
    lower, upper = lower & ~quad, upper & ~quad
    quad_faces, tris = _grid_faces(lower, upper, quad)
    edges, tri_edges, quad_edges = _grid_edges(lower, upper, quad)
    pixel = (rows[:, None] * w + cols[None, :]).ravel()
    used = np.zeros(pixel.size, dtype=bool)
    used[tris.ravel()] = True
    used[quad_faces.ravel()] = True
    remap = (np.cumsum(used) - 1).astype(np.int32)
    vertices = points.reshape(-1, 3)[pixel[used]]
    color = linear_colors(image.reshape(-1, 3)[pixel[used]]) if image is not None else None
    return GridMesh(np.ascontiguousarray(vertices, dtype=np.float32), remap[tris], color,
                    pixel[used], remap[edges], tri_edges.astype(np.int32), remap[quad_faces],
                    quad_edges.astype(np.int32))


def merge_meshes(meshes: list[GridMesh]) -> GridMesh:
    """One mesh holding all of ``meshes`` (triangle indices shifted), e.g. to fuse the views."""
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    has_color = all(m.colors is not None for m in meshes)
    return GridMesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.triangles + np.int32(o) for m, o in zip(meshes, offsets, strict=True)]),
        np.concatenate([m.colors for m in meshes]) if has_color else None,
        np.concatenate([m.pixel_index for m in meshes]),
    )


# --- sizes -----------------------------------------------------------------------------------

def scene_extent(points: np.ndarray) -> float:
    """Robust size of a point set: the longest side of its 1st-99th percentile box."""
    if len(points) == 0:
        return 0.0
    sample = points[:: max(1, len(points) // 200_000)]
    low, high = np.percentile(sample, [1, 99], axis=0)
    return float(np.max(high - low))


def occupied_voxels(points: np.ndarray, voxel_size: float) -> int:
    """How many cubes of side ``voxel_size`` hold at least one of ``points``."""
    cells = np.floor(points / voxel_size).astype(np.int64)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1
    return int(np.unique((cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]).size)


def auto_voxel_size(points: np.ndarray, max_faces: int = 1_000_000, divisions: int = 256) -> float:
    """Voxel size for the remesher: 1/``divisions`` of the extent, coarser if that gives too many faces.

    A surface crosses about one voxel per voxel^2 of its area and the remeshed shell has two
    walls, so it has about twice as many faces as ``points`` occupy voxels.
    """
    voxel = max(scene_extent(points) / divisions, 1e-4)
    faces = 2 * occupied_voxels(points, voxel) if len(points) else 0
    if faces > max_faces:
        voxel *= float(np.sqrt(faces / max_faces))
    return float(voxel)


def surface_strides(scene: Scene, voxel_size: float, max_vertices: int = 2_000_000) -> list[int]:
    """Pixel step per view for the remesher's input: samples about 2 voxels apart (a flat
    triangle rasterises exactly at any size, finer ones add little the voxels can hold, and the
    remesher's time grows with its input), at most ``max_vertices`` in all. Per view, because
    views of one scene can see it at very different scales (a zoom, a close-up)."""
    by_budget = int(np.ceil(np.sqrt(scene.num_points / max_vertices)))
    return [max(1, by_budget, int(round(2.0 * voxel_size / spacing)) if spacing > 0 else 1)
            for spacing in pixel_spacings(scene)]


def pixel_spacings(scene: Scene) -> np.ndarray:
    """(N,) median distance between horizontally adjacent kept pixels of each view (0: none)."""
    n, h, w = scene.valid.shape
    step = max(1, h // 16)  # a sample of rows is plenty for a median
    rows = np.arange(n)[:, None] * h + np.arange(0, h, step)
    pts = scene.pixel_points((rows.reshape(-1, 1) * w + np.arange(w)).ravel()).reshape(n, -1, w, 3)
    ok = scene.valid[:, ::step]
    gaps = np.linalg.norm(pts[:, :, 1:] - pts[:, :, :-1], axis=-1)
    both = ok[:, :, 1:] & ok[:, :, :-1]
    return np.array([np.median(g[b]) if b.any() else 0.0 for g, b in zip(gaps, both, strict=True)])


def point_radius(scene: Scene, shown: int = 0) -> float:
    """Display radius of the points: a little over half the spacing of neighbouring pixels,
    or of neighbouring shown points when only ``shown`` of the kept pixels are (thinned evenly,
    they lie sqrt(kept / shown) times as far apart)."""
    spacings = pixel_spacings(scene)
    spacing = float(np.median(spacings[spacings > 0])) if np.any(spacings > 0) else 0.0
    if 0 < shown < scene.num_points:
        spacing *= float(np.sqrt(scene.num_points / shown))
    return 0.6 * spacing if spacing > 0 else 0.005


def triangle_edges(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E,2) int32 unique edges of a triangle mesh and (T,3) int32 the edge after each corner,
    so Blender need not derive them (its slowest step of building a mesh)."""
    if len(triangles) == 0:
        return np.zeros((0, 2), np.int32), np.zeros((0, 3), np.int32)
    a = triangles.astype(np.int64)
    ends = np.stack([a, np.roll(a, -1, axis=1)], axis=-1).reshape(-1, 2)  # corner k -> k+1
    # by hand: numpy reduces over an axis of two several times slower
    low, high = np.minimum(ends[:, 0], ends[:, 1]), np.maximum(ends[:, 0], ends[:, 1])
    unique, corner_edge = np.unique(low * (int(a.max()) + 1) + high, return_inverse=True)
    span = int(a.max()) + 1
    edges = np.stack([unique // span, unique % span], axis=1).astype(np.int32)
    return edges, corner_edge.reshape(-1, 3).astype(np.int32)


# --- what the builder asks for ---------------------------------------------------------------

def kept_points(scene: Scene, max_points: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(P,3) positions and (P,4) colours (or None) of every kept pixel of every view, or, over
    ``max_points`` (0: no limit), of that many of them spread evenly: every k-th kept pixel in
    image order, k fractional, so each view and each part of it keeps the same share."""
    keep = kept_pixels(scene.valid, max_points)
    colors = linear_colors(scene.image.reshape(-1, 3)[keep]) if scene.image is not None else None
    return scene.pixel_points(keep), colors


def kept_pixels(valid: np.ndarray, max_points: int = 0) -> np.ndarray:
    """Sorted flat indices into ``valid`` (N,H,W) of its True pixels, or over ``max_points``
    (0: no limit) of every k-th of them, k fractional: the ranks j * kept // max_points. Found
    view by view, so no index of every kept pixel is made (8 bytes each: 0.27 GB for 300 views)."""
    n = len(valid)
    counts = np.count_nonzero(valid.reshape(n, -1), axis=1)
    total = int(counts.sum())
    if not 0 < max_points < total:
        return np.flatnonzero(valid)
    ranks = np.arange(max_points, dtype=np.int64) * total // max_points
    first = np.r_[0, np.cumsum(counts)]  # the rank of each view's first kept pixel
    bounds = np.searchsorted(ranks, first)
    return np.concatenate([np.flatnonzero(valid[i])[ranks[bounds[i]:bounds[i + 1]] - first[i]]
                           + i * valid[i].size for i in range(n)])


def view_meshes(scene: Scene, depth: np.ndarray, stride: int | list[int] = 1,
                quads: bool = False) -> list[GridMesh]:
    """One meshed grid per view (``depth`` is the prediction's, for the discontinuity test);
    ``stride`` for all views or one per view."""
    strides = [stride] * len(depth) if isinstance(stride, int) else stride
    return [triangulate_view(scene.points[i], scene.valid[i], depth[i],
                             None if scene.image is None else scene.image[i], strides[i],
                             quads=quads)
            for i in range(len(depth))]


SLAB_THICKNESS_VOXELS = 1.5


def surface_input(scene: Scene, depth: np.ndarray, voxel_size: float) -> GridMesh:
    """What gets remeshed: every view's grid, thinned to a sample per 2 voxels, cut to what no
    earlier view covers (in 3-voxel cubes), made a closed slab, all joined into one mesh.

    Views of a video overlap many times over and the remesher's time grows with the area it
    rasterises, so dropping covered triangles makes it several times faster (sheets closer than
    a voxel fuse into one anyway). An open sheet remeshes into a shell only half a voxel thick
    that pinches into holes wherever it runs slanted to the voxel grid; a closed slab
    ``SLAB_THICKNESS_VOXELS`` thick, extruded away from its camera, remeshes cleanly with its
    front exactly on the measured surface.
    """
    grids = view_meshes(scene, depth, surface_strides(scene, voxel_size))
    eyes = scene.cam_to_world[:, :3, 3]
    kept = [keep_triangles(m, facing(m, eye)) for m, eye in
            zip(drop_covered_triangles(grids, 3.0 * voxel_size), eyes, strict=True)]
    thickness = SLAB_THICKNESS_VOXELS * voxel_size
    slabs = [solidify(m, eye, thickness) for m, eye in zip(kept, eyes, strict=True)
             if len(m.triangles)]
    if not slabs:  # no two neighbouring pixels survived anywhere
        return GridMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), None,
                        np.zeros(0, np.int64))
    return merge_meshes(slabs)


def drop_covered_triangles(meshes: list[GridMesh], cell: float) -> list[GridMesh]:
    """Each of ``meshes`` cut to the triangles that reach a ``cell``-sized cube no earlier mesh
    reaches. Every cube keeps a triangle: its first mesh keeps those touching it, so the seams
    overlap by a triangle and leave no gap."""
    merged = merge_meshes(meshes)
    view = np.repeat(np.arange(len(meshes)), [len(m.vertices) for m in meshes])
    _, first, inverse = np.unique(cell_keys(merged.vertices, cell), return_index=True,
                                  return_inverse=True)
    owner = view[first][inverse.ravel()]  # per vertex: the first mesh reaching its cube
    triangle_view = view[merged.triangles[:, 0]]
    keep = (owner[merged.triangles] == triangle_view[:, None]).any(axis=1)
    splits = np.cumsum([len(m.triangles) for m in meshes])[:-1]
    return [keep_triangles(m, k) for m, k in zip(meshes, np.split(keep, splits), strict=True)]


MIN_FACING_COSINE = 0.1  # ~84 degrees from the line of sight


def facing(mesh: GridMesh, eye: np.ndarray, min_cosine: float = MIN_FACING_COSINE) -> np.ndarray:
    """True for the triangles of ``mesh`` that face the camera at ``eye`` by more than a grazing
    angle. Edge-on (or zero-area) triangles would extrude into slabs without volume, and
    Blender's voxel remesher crashes on those (seen with a random-weight two-view prediction)."""
    a, b, c = (mesh.vertices[mesh.triangles[:, k]].astype(np.float64) for k in range(3))
    normal = np.cross(b - a, c - a)
    to_eye = eye - (a + b + c) / 3
    lengths = np.linalg.norm(normal, axis=1) * np.linalg.norm(to_eye, axis=1)
    cosine = np.einsum("ij,ij->i", normal, to_eye) / np.maximum(lengths, 1e-30)
    return (cosine > min_cosine) & (lengths > 0)


def solidify(mesh: GridMesh, eye: np.ndarray, thickness: float) -> GridMesh:
    """A closed slab: ``mesh`` (facing the camera at ``eye``), a copy pushed ``thickness`` away
    along the camera's rays with its faces turned around, and walls along the open border."""
    n = len(mesh.vertices)
    rays = mesh.vertices - eye.astype(np.float32)
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12)
    back = mesh.vertices + np.float32(thickness) * rays
    tris = mesh.triangles
    border = border_edges(tris)  # (B,2), directed as in their face
    u, v = border[:, 0], border[:, 1]
    walls = np.concatenate([np.stack([u, u + n, v + n], 1), np.stack([u, v + n, v], 1)])
    faces = np.concatenate([tris, tris[:, ::-1] + n, walls]).astype(np.int32)
    colors = np.concatenate([mesh.colors, mesh.colors]) if mesh.colors is not None else None
    return GridMesh(np.concatenate([mesh.vertices, back]), faces, colors,
                    np.concatenate([mesh.pixel_index, mesh.pixel_index]))


def border_edges(triangles: np.ndarray) -> np.ndarray:
    """(B,2) the edges used by one triangle only, directed as that triangle runs them."""
    directed = triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).astype(np.int64)
    low, high = np.minimum(directed[:, 0], directed[:, 1]), np.maximum(directed[:, 0], directed[:, 1])
    keys = low * (int(triangles.max()) + 1) + high
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return directed[counts[inverse.ravel()] == 1]


def cell_keys(points: np.ndarray, cell: float) -> np.ndarray:
    """One int64 per point naming its cube of side ``cell`` (21 bits per axis, clipped)."""
    limit = 2**20 - 1
    ijk = np.clip(np.floor(points / cell), -limit, limit).astype(np.int64) + limit
    return (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]


def keep_triangles(mesh: GridMesh, keep: np.ndarray) -> GridMesh:
    """``mesh`` with only the triangles where ``keep`` is True, unused vertices removed."""
    triangles = mesh.triangles[keep]
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[triangles.ravel()] = True
    remap = (np.cumsum(used) - 1).astype(np.int32)
    colors = mesh.colors[used] if mesh.colors is not None else None
    return GridMesh(mesh.vertices[used], remap[triangles], colors, mesh.pixel_index[used])


MAX_SURFACE_FACES = 20_000_000  # beyond this a requested voxel size would exhaust memory


def voxel_size_for(scene: Scene, requested: float) -> float:
    """``requested`` when set (refused if absurdly fine for the scene), else ``auto_voxel_size``
    of the kept points (sampled every 2 pixels)."""
    sample = scene.points[:, ::2, ::2][scene.valid[:, ::2, ::2]]
    automatic = auto_voxel_size(sample)
    if requested <= 0:
        return automatic
    # Surface area from the cubes it crosses at the automatic size; two walls of faces.
    area = occupied_voxels(sample, automatic) * automatic**2
    faces = int(2 * area / requested**2)
    if faces > MAX_SURFACE_FACES:
        raise PredictionError(
            f"voxel size {requested:g} is too fine for this scene (about {faces:,} faces); "
            f"use a larger one, or 0 for automatic ({automatic:.3g})")
    return requested


# --- clean-up --------------------------------------------------------------------------------

def island_labels(edges: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) the smallest vertex index of each vertex's connected part (vectorised union-find:
    hook the larger root of every edge under the smaller, then jump pointers until every vertex
    points at its root; again until no edge joins two roots). Also TSDF fusion's connected
    pieces (``engine.fusion.pieces.face_components``)."""
    labels = np.arange(num_vertices)
    a, b = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    while True:
        la, lb = labels[a], labels[b]
        apart = la != lb
        if not apart.any():
            return labels
        if not apart.all():  # an edge within one tree stays so: only the others are looked at
            a, b, la, lb = a[apart], b[apart], la[apart], lb[apart]  # (room: 0.3 s -> 0.17 s)
        np.minimum.at(labels, np.maximum(la, lb), np.minimum(la, lb))
        while True:  # pointer jumping: point every vertex at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def small_island_vertices(edges: np.ndarray, face_first_vertex: np.ndarray, num_vertices: int,
                          min_faces: int) -> np.ndarray:
    """Indices of the vertices of connected parts with fewer than ``min_faces`` faces: the
    specks a stray group of pixels leaves after remeshing."""
    labels = island_labels(edges, num_vertices)
    faces_per_island = np.bincount(labels[face_first_vertex], minlength=num_vertices)
    return np.flatnonzero(faces_per_island[labels] < min_faces)
