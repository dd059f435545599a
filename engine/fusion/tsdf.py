"""Multi-view TSDF fusion of a DA3 prediction into one coloured mesh (numpy only, no bpy).

Every view votes, per voxel, for a truncated signed distance to the surface it sees: the
depth map's value minus the voxel's depth, clamped to [-1, 1] truncation units. Pixels under
DA3's confidence floor (its exporter's rule, shared with the other modes) cast no surface vote;
the others are weighted by confidence and down-weighted at depth discontinuities and grazing angles.
Voxels that a view sees *through* (far in front of its surface) receive a +1 vote, which is
what carves away floaters that other views place there.

The volume is sparse: space is cut into blocks of 8^3 voxels and only blocks near observed
surfaces are allocated (plus, in object mode, the blocks inside the object). Every block,
allocated or not, also gets one coarse vote at its centre, so that meshing knows whether the
space next to an allocated block is free, solid or unknown.

Meshing is marching tetrahedra on the Kuhn split of each cube (six tetrahedra along the main
diagonal): every tetrahedron is cut by at most two triangles, no ambiguity tables are needed,
and neighbouring cubes agree on their shared faces, so a closed level set gives a closed,
manifold mesh. Triangles are wound so that normals point to positive distance (free space).

Object mode isolates an object photographed from all around: the grid is cropped to the
region all views look at (or a given box); a floor or table is cut only when a supported plane
lies under the object (the dominant plane facing the cameras, seen by many views, with almost
nothing below it and something on it), treated as free space up to a small margin above it;
space that no view could see is treated as solid. Every piece that lies where the views look
is kept (an object may be several parts), specks and inside-out bubbles are dropped: every
kept part is closed.

``engine.fusion.tsdf_torch`` runs the array-heavy stages (:class:`Stages`: pixel weights, the views'
consistency, integration, meshing, connected pieces, the surface clean-up) on a torch device;
planning and allocation are shared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..core import geometry
from ..core.prediction import Prediction
from .consistency import make_consistent, transform
from .mesh_cleanup import MAX_HOLE_EDGES, SMOOTH_ITERATIONS, clean_surface

BLOCK = 8  # voxels per block side
BLOCK_VOXELS = BLOCK ** 3
# bytes per allocated voxel: tsdf sum, weight, colour sum (3), colour weight (float32 each)
BYTES_PER_VOXEL = 24
Progress = Callable[[float, str], None]
# A surface seen at more than ~87 degrees from its normal (or a depth jump) gets no vote; from
# ~75 degrees on, full weight. Rooms are mostly seen at such angles, and a wall that only
# grazing views saw is better than a hole in it.
GRAZING_COS, FULL_COS = 0.05, 0.25
# Above DA3's confidence floor, a pixel's surface vote ramps from nothing at this percentile of
# the confidence to full weight at the upper one.
RAMP_LOW_PERCENTILE, RAMP_HIGH_PERCENTILE = 5.0, 75.0
# A second, coarser pass aims this far under the face budget (the count is not exact).
BUDGET_AIM = 0.9
# Once the views agree (engine.fusion.consistency), the truncation band spans this many robust sigmas
# of their remaining disagreement.
TRUNCATION_SIGMAS = 4.0
# Object mode: the object is what at least this share of the views hold in their image.
LOOKED_AT_VIEWS = 0.8
# A floor or table is cut only when at least this share of the views see it and at least this
# share of the points stand above it.
FLOOR_VIEWS, FLOOR_OBJECT_SHARE = 0.5, 0.05
# ... and reaches beyond the object on every side: each quarter around it holds this share of
# the plane's points further out than most of the object.
SURROUND_SHARE = 0.02
# Object mode: a piece is kept when at least this share of its area lies where the views look,
# and it is no speck (at least this share of the largest piece's faces).
LOOKED_AT_AREA, SPECK_SHARE = 0.5, 0.01


@dataclass
class TSDFOptions:
    """What the fusion can be told; every default is automatic from the scene.

    voxel_size: 0 chooses the longest side of the fused region / ``resolution``.
    truncation: 0 chooses ``truncation_voxels`` voxels, or ``truncation_depth`` times the
        median depth (object mode: the object's distance) when that is more: DA3's depth
        error is relative (2-3% of the depth), and a band narrower than the disagreement
        between views tears the surface.
    confidence_percentile: DA3's exporter rule, the one definition that points and REMESH
        use (``geometry.confident_pixels``): pixels under clamp(1.05, P_pct, P90) of the
        confidence cast no surface vote; those above are weighed by confidence. They still
        carve free space in front of them: a ray that reached the far background, or a flying
        pixel between two surfaces, passed through empty space either way. The default is
        lower than the exporter's P40 because the votes of many views are averaged: P40
        costs the room scene 5 points of F-score in holes (0.92 against 0.98), while the
        floor of 1.05 alone drops DA3's background (confidence 1.0).
    object_mode: isolate one object photographed from around it (see the module doc).
    consistent_views: correct each view's smooth depth error and pose so that the views
        agree, and silence pixels that other views see through (``engine.fusion.consistency``).
    max_faces: 0 for no limit, else the surface is fused again with coarser voxels when it
        has more triangles than this.
    smooth_iterations: Taubin lambda|mu passes over the mesh (0: none), and
    max_hole_edges: border loops up to this many edges are closed (0: none); see
        ``engine.fusion.mesh_cleanup``.
    crop_box: (2,3) world min/max corners; restricts fusion to this box (object mode closes
        the surface at its faces).
    free_space_weight: every pixel with a depth, however unconfident (background, flying
        pixels), says at least that the space in front of it is empty, with this weight.
    min_weight: a voxel needs this much evidence (one confident view = 1) to count as
        observed; less leaves it unknown, so the surface has a hole there (scene mode; object
        mode uses ``solid_weight``). Near zero on purpose: DA3's confidence floor already
        decides which pixels vote, and one unknown voxel takes out the 8 cubes around it. At
        0.15, places 1-3 views saw at middling confidence got square holes: the room's floor
        around the box and its top, 5930 boundary edges, F 0.980 (a view left out: 6328,
        0.967); at 0.01, 4216 and 0.982 (4736, 0.978), precision 0.978 -> 0.971 as more of
        the weakly seen ceiling stays. 0.05 down to 1e-6 measure alike.
    solid_weight: object mode: a voxel with less evidence than this counts as solid (no
        view could see into it; a stray vote through the object must not open a bubble).
    keep_largest: keep only the largest connected piece (off by default: object mode keeps
        every piece the views look at, see :func:`kept_pieces`).
    min_component_faces: otherwise, pieces with fewer triangles are dropped as floaters.
    memory_mb: budget for the voxel blocks; the voxel size grows until they fit.
    """

    voxel_size: float = 0.0
    resolution: int = 256
    truncation: float = 0.0
    truncation_voxels: float = 4.0
    truncation_depth: float = 0.03
    confidence_percentile: float = 5.0
    mask_sky: bool = True
    object_mode: bool = False
    consistent_views: bool = True
    max_faces: int = 0
    smooth_iterations: int = SMOOTH_ITERATIONS
    max_hole_edges: int = MAX_HOLE_EDGES
    crop_box: np.ndarray | None = None
    min_weight: float = 0.01
    solid_weight: float = 1.5
    free_space_weight: float = 0.25
    keep_largest: bool = False
    min_component_faces: int = 200
    memory_mb: float = 1024.0
    chunk_voxels: int = 1 << 20

    def __post_init__(self):
        if self.voxel_size < 0 or self.truncation < 0:
            raise ValueError("voxel_size and truncation must be 0 (automatic) or positive")
        if self.max_faces < 0:
            raise ValueError("max_faces must be 0 (no limit) or positive")
        if self.resolution < 16:
            raise ValueError("resolution must be at least 16 voxels")
        if not 0 <= self.confidence_percentile <= 100:
            raise ValueError("confidence_percentile must be between 0 and 100")
        if self.crop_box is not None:
            box = np.asarray(self.crop_box, dtype=np.float64).reshape(2, 3)
            if np.any(box[1] <= box[0]):
                raise ValueError("crop_box must be [min corner, max corner] with min < max")
            self.crop_box = box


@dataclass
class FusedMesh:
    """The fused surface, in the prediction's world frame (OpenCV axes, DA3's units).

    vertices (V,3) float32; faces (F,3) int32, counter-clockwise seen from outside (normals
    point into free space); colors (V,3) float32 sRGB-encoded (as the images) in [0,1] or None;
    ``stats`` holds the voxel size, truncation, counts, memory and timings of each stage.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None
    voxel_size: float
    truncation: float
    stats: dict = field(default_factory=dict)


@dataclass
class View:
    """One view, ready to integrate: depth 0 where there is no vote."""

    depth: np.ndarray  # (H,W) float32, 0 where the pixel says nothing
    weight: np.ndarray  # (H,W) float32 in [0,1]: weight of its surface vote
    free_weight: np.ndarray  # (H,W) float32: weight of its vote for free space in front
    color: np.ndarray | None  # (H,W,3) uint8
    K: np.ndarray  # (3,3) float64
    R: np.ndarray  # (3,3) world-to-camera rotation
    t: np.ndarray  # (3,)


@dataclass
class Grid:
    """Where the voxels are: voxel (i,j,k) has its centre at origin + (i,j,k) * voxel_size."""

    origin: np.ndarray  # (3,) float64
    voxel_size: float
    truncation: float
    blocks: np.ndarray  # (3,) int, number of blocks along each axis
    object_mode: bool = False
    floor: np.ndarray | None = None  # (4,) plane n.p + d = 0, n up; below + floor_cut is free
    floor_cut: float = 0.0  # how far above the plane the object starts
    crop_box: np.ndarray | None = None  # (2,3): nothing outside it is surface
    depth: float = 0.0  # how far the cameras typically are from what they fuse

    @property
    def block_extent(self) -> float:
        return BLOCK * self.voxel_size

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """World corners (low, high) of the grid."""
        return self.origin, self.origin + self.blocks * self.block_extent

    def block_centres(self, coords: np.ndarray) -> np.ndarray:
        return self.origin + (coords * BLOCK + (BLOCK - 1) / 2) * self.voxel_size

    def block_keys(self, coords: np.ndarray) -> np.ndarray:
        b = self.blocks
        return (coords[:, 0].astype(np.int64) * b[1] + coords[:, 1]) * b[2] + coords[:, 2]

    def block_coords(self, keys: np.ndarray) -> np.ndarray:
        b = self.blocks
        return np.stack([keys // (b[1] * b[2]), keys // b[2] % b[1], keys % b[2]], axis=1)


@dataclass
class Volume:
    """The allocated blocks, sorted by key, and their accumulated votes (M, 512)."""

    keys: np.ndarray
    coords: np.ndarray
    tsdf: np.ndarray
    weight: np.ndarray
    color: np.ndarray  # (M, 512, 3) weighted sums
    color_weight: np.ndarray


# --------------------------------------------------------------------------------------------
# public entry point


@dataclass(frozen=True)
class Stages:
    """The array-heavy stages of :func:`fuse_tsdf`, swappable as one set: numpy here,
    ``engine.fusion.tsdf_torch.torch_stages`` on a torch device. Each takes and returns numpy arrays,
    so planning and allocation stay shared and the two paths give the same mesh."""

    weigh: Callable  # (pred, options) -> (N,H,W) float32 surface-vote weights
    make_consistent: Callable  # (views, region) -> report; corrects the views' depth, weight
    integrate: Callable  # (grid, keys, views, options, progress) -> Volume
    extract: Callable  # (grid, keys, values, coarse, views | None) -> vertices, faces
    components: Callable  # (faces, num_vertices) -> face labels 0..k-1
    clean_surface: Callable  # (vertices, faces, max_hole_edges, iterations) -> v, f, holes


def fuse_tsdf(pred: Prediction, options: TSDFOptions | None = None,
              progress: Progress | None = None, stages: Stages | None = None) -> FusedMesh:
    """Fuse every view of ``pred`` into one mesh.

    Parameters
    ----------
    pred : Prediction
        Depth (z-depth), intrinsics and world-to-camera extrinsics of every view; ``conf``,
        ``sky`` and ``image`` are used when present.
    options : TSDFOptions, optional
        Voxel size, truncation, object mode, crop box, memory budget; automatic by default.
    progress : callable(fraction, message), optional
        Called between steps with a fraction in [0, 1].
    stages : Stages, optional
        The array-heavy stages (default :data:`NUMPY_STAGES`; ``engine.fusion.tsdf_torch`` passes
        its GPU versions).

    Returns
    -------
    FusedMesh
        Vertices and faces in the prediction's world frame, vertex colours, and stats.

    Raises
    ------
    ValueError
        When no view has a usable pixel, or the scene cannot fit the memory budget.
    """
    options = options or TSDFOptions()
    report = progress or (lambda fraction, message: None)
    stages = stages or NUMPY_STAGES
    clock = _Clock()
    views = prepare_views(pred, options, stages.weigh)
    clock.lap("weigh")
    grid = plan_grid(views, options)
    clock.lap("plan")
    agreement = None
    if options.consistent_views:
        agreement = stages.make_consistent(views, grid.box)
        clock.lap("consistency")
        # planned again on the corrected views: a floor found before would sit where the
        # floor was, and cut too little of it where the correction moved it
        grid = plan_grid(views, options)
        clock.lap("replan")
    mesh = fuse_on_grid(views, fit_truncation(grid, agreement, options), options, stages,
                        report, clock)
    first_pass_voxel = mesh.voxel_size  # the finest detail fused: the importer remeshes down to it
    if options.max_faces and len(mesh.faces) > options.max_faces:
        # faces go with the area over the voxel's square: one more pass, coarser, lands
        # under the budget (cheaper than the first: a quarter of the voxels per halving)
        voxel = mesh.voxel_size * math.sqrt(len(mesh.faces) / (BUDGET_AIM * options.max_faces))
        report(0.0, f"{len(mesh.faces)} triangles: fusing again with {voxel:.3g} voxels")
        mesh = fuse_on_grid(views, coarser(grid, voxel, options), options, stages, report, clock,
                            first_pass_faces=len(mesh.faces))
    mesh.stats["consistency"] = agreement
    mesh.stats["first_pass_voxel"] = first_pass_voxel
    return mesh


def coarser(grid: Grid, voxel: float, options: TSDFOptions) -> Grid:
    """The same region, floor and band with bigger voxels (the band at least
    ``truncation_voxels`` of them)."""
    low, high = grid.box
    blocks = np.maximum(np.ceil((high - low) / (voxel * BLOCK)).astype(np.int64), 1)
    return replace(grid, voxel_size=float(voxel), blocks=blocks,
                   truncation=max(grid.truncation, options.truncation_voxels * voxel))


def fit_truncation(grid: Grid, agreement: dict | None, options: TSDFOptions) -> Grid:
    """The grid, with its band narrowed to what the views' measured disagreement allows."""
    if agreement is not None and not options.truncation:
        grid.truncation = measured_truncation(grid, agreement, options)
    return grid


def fuse_on_grid(views: list[View], grid: Grid, options: TSDFOptions, stages: Stages,
                 report: Progress, clock: _Clock, **extra_stats) -> FusedMesh:
    """Allocate, integrate, mesh and clean the views on ``grid``."""
    coarse_tsdf, coarse_weight = integrate_coarse(grid, views)
    coarse = coarse_values(grid, coarse_tsdf, coarse_weight, options)
    keys = allocate_blocks(grid, views, coarse, options)
    clock.lap("allocate")
    report(0.05, f"{len(keys)} blocks of {BLOCK}^3 voxels")
    volume = stages.integrate(grid, keys, views, options,
                              lambda f, m: report(0.05 + 0.75 * f, m))
    clock.lap("integrate")
    values = voxel_values(grid, volume, options)
    report(0.85, "meshing")
    vertices, faces = stages.extract(grid, volume.keys, values, coarse,
                                     None if grid.object_mode else views)
    clock.lap("mesh")
    colors = vertex_colors(grid, volume, vertices)
    region = (lambda points: looked_at(points, views, options.crop_box)) if grid.object_mode else None
    meshed = len(faces)
    vertices, faces, colors = clean_mesh(vertices, faces, colors, options, stages.components, region)
    if grid.object_mode and meshed and not len(faces):
        raise ValueError("object mode found no closed part where most views look (photos that "
                         "circle one object); for a scene, turn object mode off")
    clock.lap("pieces")
    vertices, faces, holes = stages.clean_surface(vertices, faces, options.max_hole_edges,
                                                  options.smooth_iterations)
    clock.lap("clean")
    report(1.0, f"{len(faces)} triangles")
    stats = dict(blocks=len(keys), voxels=len(keys) * BLOCK_VOXELS,
                 volume_mb=len(keys) * BLOCK_VOXELS * BYTES_PER_VOXEL / 2**20,
                 grid_shape=tuple(int(b) * BLOCK for b in grid.blocks),
                 floor=None if grid.floor is None else grid.floor.tolist(),
                 origin=grid.origin.tolist(), holes_closed=holes,
                 timings=clock.laps, **extra_stats)  # JSON-ready for the worker
    return FusedMesh(vertices.astype(np.float32), faces.astype(np.int32), colors,
                     grid.voxel_size, grid.truncation, stats)


class _Clock:
    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


# --------------------------------------------------------------------------------------------
# views: per-pixel weights


def prepare_views(pred: Prediction, options: TSDFOptions, weigh=None) -> list[View]:
    """Per-view depth, weight and colour; raises ValueError when no pixel can vote."""
    w2c = pred.world_to_camera()
    weights = (weigh or view_weights)(pred, options)
    views = []
    for i in range(pred.num_views):
        depth = np.asarray(pred.depth[i], dtype=np.float32)
        valid = np.isfinite(depth) & (depth > 0)
        weight = weights[i]
        free = np.where(valid, np.maximum(weight, options.free_space_weight), 0).astype(np.float32)
        color = pred.image[i] if pred.image is not None else None
        views.append(View(np.where(valid, depth, 0).astype(np.float32), weight, free, color,
                          pred.intrinsics[i], w2c[i, :3, :3], w2c[i, :3, 3]))
    if not any(np.any(v.weight > 0) for v in views):
        raise ValueError("no pixel of any view is confident enough to fuse")
    return views


def view_weights(pred: Prediction, options: TSDFOptions) -> np.ndarray:
    """(N,H,W) weight of each pixel's surface vote: confidence ramp x surface angle, 0 below
    DA3's confidence floor, on sky and where there is no depth."""
    confident, _ = geometry.confident_pixels(pred, options.confidence_percentile, options.mask_sky)
    conf_weight = confidence_weights(pred.conf)
    out = np.empty(pred.depth.shape, np.float32)
    for i in range(pred.num_views):
        depth = np.asarray(pred.depth[i], dtype=np.float32)
        weight = confident[i].astype(np.float32)
        if conf_weight is not None:
            weight *= conf_weight[i]
        out[i] = weight * surface_angle_weights(depth, pred.intrinsics[i])
    return out


def confidence_weights(conf: np.ndarray | None) -> np.ndarray | None:
    """Map DA3's confidence (>= 1, unbounded) to [0,1]: from 0 at P5 to 1 from P75.

    A ramp on top of the floor (:func:`engine.core.geometry.confident_pixels`), so that views of
    middling confidence still help where nothing better saw the surface.
    """
    if conf is None:
        return None
    low, high = (float(p) for p in np.percentile(conf, [RAMP_LOW_PERCENTILE, RAMP_HIGH_PERCENTILE]))
    ramp = np.clip((conf - low) / max(high - low, 1e-6), 0, 1)
    return np.where(conf >= high, 1, ramp).astype(np.float32)  # flat confidence: all count


def surface_angle_weights(depth: np.ndarray, K: np.ndarray, grazing_cos: float = GRAZING_COS,
                          full_cos: float = FULL_COS) -> np.ndarray:
    """cos(angle between the viewing ray and the surface normal), ramped to [0,1].

    Depth discontinuities look like surfaces seen edge-on (cos ~ 0), so this one weight
    handles both; a 3x3 minimum also silences the pixel next to each jump, where DA3's
    flying pixels sit.
    """
    h, w = depth.shape
    u = ((np.arange(w) + 0.5 - K[0, 2]) / K[0, 0]).astype(np.float32)[None, :]
    v = ((np.arange(h) + 0.5 - K[1, 2]) / K[1, 1]).astype(np.float32)[:, None]
    z = np.asarray(depth, dtype=np.float32)
    x, y = u * z, v * z
    # central differences across columns (a) and rows (b); the image border has none
    ax, ay, az = (np.zeros_like(z) for _ in range(3))
    bx, by, bz = (np.zeros_like(z) for _ in range(3))
    for d, p in ((ax, x), (ay, y), (az, z)):
        d[:, 1:-1] = p[:, 2:] - p[:, :-2]
    for d, p in ((bx, x), (by, y), (bz, z)):
        d[1:-1] = p[2:] - p[:-2]
    nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx  # normal = a x b
    dot = np.abs(nx * x + ny * y + nz * z)
    length = np.sqrt(nx * nx + ny * ny + nz * nz) * np.sqrt(x * x + y * y + z * z)
    cos = dot / np.maximum(length, np.float32(1e-12))
    weight = np.clip((cos - grazing_cos) / (full_cos - grazing_cos), 0, 1)
    return minimum_filter3(weight).astype(np.float32)


def minimum_filter3(a: np.ndarray) -> np.ndarray:
    """3x3 minimum with the border padded by its own values (no scipy in Blender)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    out = a.copy()
    for dy in range(3):
        for dx in range(3):
            np.minimum(out, p[dy:dy + h, dx:dx + w], out=out)
    return out


def backproject_views(views: list[View], stride: int = 4,
                      min_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """World points of confident pixels, every ``stride``-th row and column, and the index of
    the view each came from."""
    out, view_of = [], []
    for i, view in enumerate(views):
        d = view.depth[::stride, ::stride]
        keep = view.weight[::stride, ::stride] > min_weight
        v, u = np.nonzero(keep)
        z = d[v, u].astype(np.float64)
        x = ((u * stride + 0.5) - view.K[0, 2]) / view.K[0, 0] * z
        y = ((v * stride + 0.5) - view.K[1, 2]) / view.K[1, 1] * z
        cam = np.stack([x, y, z], axis=1)
        out.append((cam - view.t) @ view.R)
        view_of.append(np.full(len(z), i))
    if not out:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(view_of)


# --------------------------------------------------------------------------------------------
# the grid: region, voxel size, truncation, floor


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
    never wider than the guess made without the measure."""
    noise = TRUNCATION_SIGMAS * 1.4826 * agreement["disagreement_after"] * grid.depth
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


def project(points: np.ndarray, view: View):
    # not points @ R.T: OpenBLAS's threads stall that product on a busy machine (see
    # engine.fusion.consistency.transform): 1.1 s of a room's fusion went here, 0.1 s written out
    x, y, z = transform(view.R, view.t, np.asarray(points, np.float64).T)
    safe = np.where(np.abs(z) > 1e-12, z, 1e-12)
    return view.K[0, 0] * x / safe + view.K[0, 2], view.K[1, 1] * y / safe + view.K[1, 2], z


def find_floor(points: np.ndarray, view_of: np.ndarray, views: list[View],
               iterations: int = 1500, seed: int = 0) -> np.ndarray | None:
    """The supported plane under the object: the dominant plane whose normal is within 35
    degrees of the cameras' mean up vector.

    The plane must have almost no point below it, something above it, and be seen by many
    views (``view_of``: each point's view). Returns the plane (4,), normal up, and how far its
    points stray from it (DA3's floor is not flat: a few % of depth); (None, 0) when no such
    plane holds 15% of the points (nothing under the object): then nothing is cut.
    """
    if len(points) < 50:
        return None, 0.0
    up = np.mean([view.R.T @ np.array([0.0, -1.0, 0.0]) for view in views], axis=0)
    if np.linalg.norm(up) < 0.3:  # cameras of mixed orientation: no notion of up
        return None, 0.0
    up /= np.linalg.norm(up)
    rng = np.random.default_rng(seed)
    tol = 0.02 * float(np.max(np.ptp(points, axis=0)))
    picked = rng.choice(len(points), min(len(points), 20000), replace=False)
    sample, sample_view_of = points[picked], view_of[picked]
    tri = sample[rng.integers(0, len(sample), (iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-12
    normals, tri = normals[ok] / norms[ok, None], tri[ok]
    normals *= np.sign(normals @ up)[:, None]
    ok = normals @ up > math.cos(math.radians(35))
    if not np.any(ok):
        return None, 0.0
    normals, tri = normals[ok], tri[ok]
    offsets = -np.sum(normals * tri[:, 0], axis=1)
    # 300 hypotheses missed the floor of some degraded scenes; scoring 1500 in batches keeps
    # the (points x hypotheses) table small
    support = np.concatenate([floor_support(sample, normals[i:i + 200], offsets[i:i + 200], tol)
                              for i in range(0, len(normals), 200)])
    best = int(np.argmax(support))
    if support[best] < 0.15 * len(sample):
        return None, 0.0
    inliers = np.abs(sample @ normals[best] + offsets[best]) < tol
    plane = refine_plane(sample[inliers], normals[best])
    height = sample @ plane[:3] + plane[3]
    if not supports_object(height, sample_view_of[inliers], len(views), tol):
        return None, 0.0
    if not surrounds(sample, height, plane, tol):
        return None, 0.0
    residual = np.abs(height)
    return plane, float(np.median(residual[residual < tol]))


def supports_object(height: np.ndarray, inlier_views: np.ndarray, num_views: int,
                    tol: float) -> bool:
    """A plane is a floor or table to cut only if many views see it (a plane in a few
    views is a side of the object, or background) and something stands on it."""
    seen_by = len(np.unique(inlier_views)) / num_views
    return seen_by >= FLOOR_VIEWS and np.mean(height > tol) >= FLOOR_OBJECT_SHARE


def surrounds(points: np.ndarray, height: np.ndarray, plane: np.ndarray, tol: float) -> bool:
    """A floor or table reaches out beyond what stands on it on every side; a chair's seat,
    with its back standing on one edge, does not (nor does any plane part of the object).

    In the plane, around the centre of what stands above it: each quarter must hold some of
    the plane's points further out than most of what stands there.
    """
    normal = plane[:3]
    a = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    flat = np.stack([points @ a, points @ b], axis=1)
    above, on = height > tol, np.abs(height) < tol
    centre = np.median(flat[above], axis=0)
    reach = float(np.percentile(np.linalg.norm(flat[above] - centre, axis=1), 75))
    offset = flat[on] - centre
    beyond = np.linalg.norm(offset, axis=1) > reach
    quarter = (np.floor((np.arctan2(offset[:, 1], offset[:, 0]) + np.pi) / (np.pi / 2)) % 4).astype(int)
    counts = np.bincount(quarter[beyond], minlength=4)
    return bool(np.all(counts >= SURROUND_SHARE * np.count_nonzero(on)))


def floor_support(sample: np.ndarray, normals: np.ndarray, offsets: np.ndarray,
                  tol: float) -> np.ndarray:
    """Inliers of each plane hypothesis; 0 for a plane with more than 5% of points under it
    (a floor has almost nothing under it: this rejects the top of a box or a table)."""
    height = sample @ normals.T + offsets
    below = np.mean(height < -tol, axis=0)
    return np.where(below < 0.05, np.count_nonzero(np.abs(height) < tol, axis=0), 0)


def refine_plane(points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Least-squares plane through the inliers, normal kept on the same side."""
    centre = points.mean(axis=0)
    n = np.linalg.svd(points - centre, full_matrices=False)[2][2]
    n = n if n @ normal > 0 else -n
    return np.append(n, -n @ centre)


# --------------------------------------------------------------------------------------------
# coarse votes and allocation


def all_block_coords(grid: Grid) -> np.ndarray:
    b = grid.blocks
    return np.stack(np.meshgrid(np.arange(b[0]), np.arange(b[1]), np.arange(b[2]),
                                indexing="ij"), axis=-1).reshape(-1, 3)


def integrate_coarse(grid: Grid, views: list[View]) -> tuple[np.ndarray, np.ndarray]:
    """One vote per block at its centre, truncated at the block's half diagonal + truncation."""
    centres = grid.block_centres(all_block_coords(grid))
    trunc = grid.truncation + 0.87 * grid.block_extent
    tsdf = np.zeros(len(centres), np.float32)
    weight = np.zeros(len(centres), np.float32)
    for view in views:
        d, pix, z = sample_view(view, centres)
        sdf = d - z
        w = vote_weights(view, pix, sdf, trunc)
        tsdf += w * np.clip(sdf / trunc, -1, 1)
        weight += w
    return tsdf, weight


def vote_weights(view: View, pix: np.ndarray, sdf: np.ndarray, trunc: float) -> np.ndarray:
    """Surface weight within the truncation band, free-space weight in front of it, none
    behind it (occluded space says nothing) or where the pixel has no depth."""
    in_band = np.where(sdf > -trunc, view.weight.ravel()[pix], 0)
    w = np.where(sdf >= trunc, view.free_weight.ravel()[pix], in_band)
    return np.where(np.isfinite(sdf) & (view.depth.ravel()[pix] > 0), w, 0).astype(np.float32)


def sample_view(view: View, points: np.ndarray):
    """Depth (0 outside the image), flat pixel index and camera depth of each point."""
    u, v, z = project(points, view)
    h, w = view.depth.shape
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pix = np.where(inside, np.clip(v, 0, h - 1).astype(np.int64) * w
                   + np.clip(u, 0, w - 1).astype(np.int64), 0)
    return np.where(inside, view.depth.ravel()[pix], 0), pix, z


def coarse_values(grid: Grid, tsdf: np.ndarray, weight: np.ndarray,
                  options: TSDFOptions) -> np.ndarray:
    """Per-block value for meshing next to unallocated blocks: +-1, or NaN for unknown."""
    observed = weight >= (options.solid_weight if grid.object_mode else options.min_weight)
    values = np.full(len(tsdf), np.nan, np.float32)
    values[observed] = np.where(tsdf[observed] >= 0, 1.0, -1.0)
    centres = grid.block_centres(all_block_coords(grid))
    beyond = np.zeros(len(values), bool)
    if grid.crop_box is not None:
        beyond = np.any((centres < grid.crop_box[0]) | (centres > grid.crop_box[1]), axis=1)
    if grid.object_mode:
        values[~observed] = -1.0  # nobody could see in: inside the object
        values[outside_region(grid, centres) | beyond] = 1.0
    else:
        values[beyond] = np.nan
    return values


def outside_region(grid: Grid, points: np.ndarray) -> np.ndarray:
    """Object mode: points below the floor cut count as free space."""
    if grid.floor is None:
        return np.zeros(len(points), bool)
    height = points @ grid.floor[:3] + grid.floor[3]
    return height < grid.floor_cut


def allocate_blocks(grid: Grid, views: list[View], coarse: np.ndarray,
                    options: TSDFOptions) -> np.ndarray:
    """Sorted keys of the blocks within truncation of an observed surface point.

    Object mode also allocates the solid blocks that touch free ones, so that the cut at the
    floor and any surface the points missed are meshed at full resolution; deeper solid blocks
    keep their coarse value.
    """
    marked = np.zeros(int(np.prod(grid.blocks)), bool)
    for view in views:
        marked[surface_block_keys(grid, view, (-grid.truncation, 0.0, grid.truncation))] = True
    if grid.object_mode:
        solid = (coarse < 0).reshape(tuple(grid.blocks))
        free = np.pad(~solid, 1, constant_values=True)  # beyond the grid is free: a cut object
        marked |= (solid & dilate(free)[1:-1, 1:-1, 1:-1]).ravel()  # must be meshed there
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
    rays = np.stack([(u + 0.5 - view.K[0, 2]) / view.K[0, 0],
                     (v + 0.5 - view.K[1, 2]) / view.K[1, 1], np.ones(len(u))], axis=1)
    length = np.linalg.norm(rays, axis=1)
    keys = []
    for offset in offsets:
        cam = rays * (z + offset / length)[:, None]
        world = (cam - view.t) @ view.R
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
    """Accumulate every view's votes into the allocated blocks."""
    volume = empty_volume(grid, keys)
    for i, view in enumerate(views):
        integrate_view(grid, volume, view, options.chunk_voxels)
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


def integrate_view(grid: Grid, volume: Volume, view: View, chunk_voxels: int) -> None:
    """Projective TSDF update of the visible blocks, ``chunk_voxels`` voxels at a time."""
    sel = visible_blocks(grid, volume.coords, view)
    local = ((local_offsets() * grid.voxel_size) @ view.R.T).astype(np.float32).T  # camera axes
    base = ((grid.origin + volume.coords[sel] * BLOCK * grid.voxel_size) @ view.R.T
            + view.t).astype(np.float32).T
    maps = padded_maps(view)
    step = max(1, chunk_voxels // BLOCK_VOXELS)
    for start in range(0, len(sel), step):
        cam = [base[a, start:start + step, None] + local[a] for a in range(3)]  # x, y, z (c,512)
        update_chunk(volume, sel[start:start + step], cam, view, maps, grid.truncation)


def padded_maps(view: View) -> dict:
    """Flat depth and weights with one extra pixel of nothing (index H*W) for voxels that fall
    outside the image, so the update needs no masking."""
    maps = {k: np.append(getattr(view, k).ravel(), np.float32(0))
            for k in ("depth", "weight", "free_weight")}
    if view.color is not None:
        maps["color"] = np.append(view.color.reshape(-1, 3), np.zeros((1, 3), np.uint8), axis=0)
    return maps


def update_chunk(volume: Volume, blocks: np.ndarray, cam: np.ndarray, view: View, maps: dict,
                 trunc: float) -> None:
    """Votes of one view for whole blocks at once (dense rows beat scattered voxels)."""
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
        b, j = np.nonzero((wt > 0) & (np.abs(sdf) < trunc))
        rows, wn = blocks[b], wt[b, j]
        volume.color[rows, j] += wn[:, None] * maps["color"][pix[b, j]]
        volume.color_weight[rows, j] += wn


# --------------------------------------------------------------------------------------------
# from votes to values


def voxel_values(grid: Grid, volume: Volume, options: TSDFOptions) -> np.ndarray:
    """(M,512) signed values in [-1,1]; NaN where unknown (scene mode).

    Object mode: too little evidence means nobody could see in, so solid; below the floor cut
    and on the grid's outer layer is free, which closes the object at the floor and box faces.
    """
    observed = volume.weight >= (options.solid_weight if grid.object_mode else options.min_weight)
    values = volume.tsdf / np.maximum(volume.weight, np.float32(1e-12))
    if not grid.object_mode:
        values[~observed | outside_box(grid, volume.coords)] = np.nan
        return values
    values[~observed] = -1.0
    values[forced_free(grid, volume.coords)] = 1.0
    return values


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


# --------------------------------------------------------------------------------------------
# meshing: marching tetrahedra

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
                views: list[View] | None) -> tuple[np.ndarray, np.ndarray]:
    """Marching tetrahedra; with ``views`` (scene mode) only cubes some view saw from the front
    (:func:`seen_from_front`)."""
    front = None if views is None else (
        lambda points, normals: seen_from_front(points, normals, views, grid.truncation))
    return extract_surface(grid, keys, values, coarse, front)


def extract_surface(grid: Grid, keys: np.ndarray, values: np.ndarray, coarse: np.ndarray,
                    cube_filter=None, chunk_blocks: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Marching tetrahedra over the allocated blocks (and the cubes that border them).

    ``cube_filter(centres, normals) -> bool mask`` may veto sign-changing cubes (world centres,
    normals along the value gradient). Returns world vertices (V,3) and faces (F,3) wound
    towards positive values.
    """
    mesh_keys = meshing_blocks(grid, keys)
    corners = [march_blocks(grid, mesh_keys[start:start + chunk_blocks],
                            padded_blocks(grid, keys, values, coarse,
                                          mesh_keys[start:start + chunk_blocks]), cube_filter)
               for start in range(0, len(mesh_keys), chunk_blocks)]
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


# --------------------------------------------------------------------------------------------
# colours and clean-up


def vertex_colors(grid: Grid, volume: Volume, vertices: np.ndarray) -> np.ndarray | None:
    """Colour of the nearest allocated voxel that some view saw near its surface."""
    if not np.any(volume.color_weight > 0) or len(vertices) == 0:
        return None
    idx = np.floor((vertices - grid.origin) / grid.voxel_size + 0.5).astype(np.int64)
    idx = np.clip(idx, 0, grid.blocks * BLOCK - 1)
    keys = grid.block_keys(idx // BLOCK)
    pos = np.clip(np.searchsorted(volume.keys, keys), 0, len(volume.keys) - 1)
    found = volume.keys[pos] == keys
    local = idx % BLOCK
    flat = local[:, 0] * BLOCK * BLOCK + local[:, 1] * BLOCK + local[:, 2]
    weight = np.where(found, volume.color_weight[pos, flat], 0)
    rgb = volume.color[pos, flat] / np.maximum(weight, 1e-12)[:, None]
    rgb[weight <= 0] = 0.5  # never seen near its surface: neutral grey
    return (rgb / 255.0).astype(np.float32)


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


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None,
               options: TSDFOptions, components=None, looked_at_points=None):
    """Drop the connected pieces :func:`kept_pieces` rejects, then unused vertices."""
    if len(faces):
        labels = (components or face_components)(faces, len(vertices))
        keep = kept_pieces(vertices, faces, labels, options, looked_at_points)
        faces = faces[keep[labels]]
    used = np.zeros(len(vertices), bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    colors = colors[used] if colors is not None else None
    return vertices[used], remap[faces], colors


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


def vertex_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Connected-component label of every vertex (vectorised union-find with pointer jumping)."""
    parent = np.arange(num_vertices)
    a = np.concatenate([faces[:, 0], faces[:, 1]])
    b = np.concatenate([faces[:, 1], faces[:, 2]])
    while True:
        pa, pb = parent[a], parent[b]
        apart = pa != pb
        if not apart.any():
            break
        if not apart.all():  # an edge within one tree stays so: only the others are looked at
            a, b, pa, pb = a[apart], b[apart], pa[apart], pb[apart]  # (room: 0.3 s -> 0.17 s)
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def face_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Component label (0..k-1) of every face."""
    roots = vertex_components(faces, num_vertices)[faces[:, 0]]
    return np.unique(roots, return_inverse=True)[1]


def count_components(faces: np.ndarray, num_vertices: int) -> int:
    return 0 if len(faces) == 0 else int(face_components(faces, num_vertices).max() + 1)


def edge_face_counts(faces: np.ndarray) -> np.ndarray:
    """How many faces share each undirected edge."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1).astype(np.int64)
    return np.unique(edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1], return_counts=True)[1]


def boundary_edges(faces: np.ndarray) -> int:
    """Edges used by one face only: zero for a closed surface."""
    return int(np.count_nonzero(edge_face_counts(faces) == 1)) if len(faces) else 0


NUMPY_STAGES = Stages(weigh=view_weights, make_consistent=make_consistent,
                      integrate=integrate_views, extract=mesh_volume, components=face_components,
                      clean_surface=clean_surface)
