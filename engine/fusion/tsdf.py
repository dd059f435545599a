"""Multi-view TSDF fusion of a DA3 prediction into one coloured mesh (numpy only, no bpy):
:func:`fuse_tsdf` runs the stages of ``engine.fusion`` (the package's doc names where each
lives) on one grid, at the voxel that a cheap probe at twice the voxel says lands the mesh
under its face budget (and once more, coarser, when it is still over).

Object mode isolates an object photographed from all around: the grid is cropped to the
region all views look at (or a given box); a floor or table is cut only when a supported plane
lies under the object (the dominant plane facing the cameras, seen by many views, with almost
nothing below it and something on it), treated as free space up to a small margin above it;
space that no view could see is treated as solid, except open pockets of it such as the space
under a chair's seat (``engine.fusion.pockets``). Every piece that lies where the views look
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
from dataclasses import dataclass, replace

import numpy as np

from ..core.prediction import Prediction
from .base import BLOCK, BLOCK_VOXELS, BYTES_PER_VOXEL, FusedMesh, Grid, Progress, TSDFOptions, View
from .consistency import make_consistent
from .grid import looked_at, measured_truncation, plan_grid
from .integrate import (
    allocate_blocks,
    coarse_values,
    integrate_coarse,
    integrate_views,
    pocket_cell_states,
    voxel_values,
)
from .mesh_cleanup import clean_surface
from .outlines import align_outlines
from .pieces import clean_mesh, face_components, pocket_wall_vertices, unseen_vertices, vertex_colors
from .pockets import find_pockets
from .tets import mesh_volume
from .views import prepare_views, view_weights

# A second, coarser pass aims this far under the face budget (the count is not exact).
BUDGET_AIM = 0.9


@dataclass(frozen=True)
class Stages:
    """The array-heavy stages of :func:`fuse_tsdf`, swappable as one set: numpy here,
    ``engine.fusion.tsdf_torch.torch_stages`` on a torch device. Each takes and returns numpy arrays,
    so planning and allocation stay shared and the two paths give the same mesh."""

    weigh: Callable  # (pred, options) -> (N,H,W) float32 surface-vote weights
    make_consistent: Callable  # (views, region, threads, confirm=True) -> report; corrects depth, weight
    integrate: Callable  # (grid, keys, views, options, progress) -> Volume
    extract: Callable  # (grid, keys, values, coarse, views | None, threads) -> vertices, faces
    components: Callable  # (faces, num_vertices) -> face labels 0..k-1
    # (vertices, faces, max_hole_edges, iterations, unseen, taut, unseen_iterations, threads,
    #  normal_iterations)
    # -> v, f, holes, border edges (None: not counted)
    clean_surface: Callable


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
    agreement = moves = None
    if options.consistent_views:
        agreement, moves = agree_views(views, grid, options, stages, report)
        clock.lap("consistency")
        # planned again on the corrected views: a floor found before would sit where the
        # floor was, and cut too little of it where the correction moved it
        grid = plan_grid(views, options)
        clock.lap("replan")
    grid = fit_truncation(grid, agreement, options)
    planned = grid.voxel_size  # the finest detail asked for: the importer remeshes down to it
    mesh, voxel, probed = probe(views, grid, options, stages, report, clock)

    def after_probe(fraction: float, message: str) -> None:
        report(PROBE_SHARE + (1 - PROBE_SHARE) * fraction, message)

    if mesh is None:
        mesh = fuse_on_grid(views, coarser(grid, voxel, options) if voxel > planned else grid,
                            options, stages, after_probe, clock)
    if options.max_faces and len(mesh.faces) > options.max_faces:
        # the probe's estimate was short (faces go with the area over the voxel's square): one
        # more pass, coarser, lands under the budget
        voxel = mesh.voxel_size * math.sqrt(len(mesh.faces) / (BUDGET_AIM * options.max_faces))
        report(PROBE_SHARE, f"{len(mesh.faces)} triangles: fusing again with {voxel:.3g} voxels")
        mesh = fuse_on_grid(views, coarser(grid, voxel, options), options, stages, after_probe,
                            clock, first_pass_faces=len(mesh.faces))
    mesh.stats["consistency"] = agreement
    mesh.stats["camera_moves"] = moves  # the texture is baked from the cameras the surface was fused with
    mesh.stats["first_pass_voxel"] = planned
    mesh.stats["probe_faces"] = probed
    return mesh


def agree_views(views: list, grid, options: TSDFOptions, stages: Stages,
                report: Progress | None = None) -> tuple[dict, np.ndarray | None]:
    """The views' depth corrected so that they agree (``engine.fusion.consistency``); in object
    mode, each cycle of ``options.outline_cycles`` first corrects their depth, then moves their
    cameras until the object's outlines agree (``engine.fusion.outlines``: the depth must be
    right for that, or a view's depth error reads as a pose error), and puts the depth back as
    it was: the correction was fitted to the old cameras, and is fitted again to the new ones.
    Returns the consistency report (with the outlines' report when they were aligned) and how
    far each view's camera centre moved ((N,3), world; None when none did). ``report`` hears
    of each fit before it starts (a cancelled import stops there)."""
    report = report or (lambda fraction, message: None)
    cycles = options.outline_cycles if grid.object_mode else 0
    given = [view.t for view in views]
    outlines = None
    for cycle in range(cycles):
        report(0.0, f"moving the cameras until the outlines agree ({cycle + 1} of {cycles})")
        depth = [(view.depth, view.weight) for view in views]  # make_consistent replaces them
        stages.make_consistent(views, grid.box, options.threads, confirm=False)
        moved = align_outlines(views, grid.box, options.threads)
        outlines = outlines or moved  # the first cycle's "before"
        outlines["outline_px_after"] = moved["outline_px_after"]
        for view, (d, w) in zip(views, depth, strict=True):
            view.depth, view.weight = d, w
    report(0.0, "making the views agree")
    agreement = stages.make_consistent(views, grid.box, options.threads)
    if not outlines:
        return agreement, None
    agreement["outlines"] = outlines
    return agreement, np.stack([view.R.T @ (t - view.t) for view, t in zip(views, given, strict=True)])


# The probe: the whole fusion at PROBE_SCALE times the voxel, whose faces times PROBE_SCALE**2
# foretell the planned pass's (0.79-1.0 of them on the import benchmark's walk and the Cycles
# scenes of bench_fusion, with and without hard errors: finer voxels also mesh more of the
# noise) at 17-26% of its cost. The planned pass was over the 300 k budget on every one of those
# scenes (0.36-1.67 M faces), and then cost a second, coarser pass: the probe and one pass at
# the voxel it points to took 3.1-8.5 s on those 12 Cycles scenes instead of 6.1-16.8 s (F-scores
# within 0.005, normal consistency within 0.012), landing at 0.90-0.97 of the budget instead
# of 0.75-0.93 (the coarser pass was extrapolated from the finest).
PROBE_SCALE = 2.0
PROBE_SHARE = 0.05  # of the progress bar
PROBE_FITS = 0.9  # a probe with this share of the aim or more (and within the budget) is the mesh


def probe(views: list[View], grid: Grid, options: TSDFOptions, stages: Stages, report: Progress,
          clock: _Clock) -> tuple[FusedMesh | None, float, int]:
    """The voxel that lands the mesh at ``BUDGET_AIM`` of ``options.max_faces`` (never finer than
    ``grid``'s), from a probe at ``PROBE_SCALE`` times its voxel; the probe's mesh when it already
    fits the budget that closely; and its face count (0: no probe). No budget, no probe."""
    if not options.max_faces:
        return None, grid.voxel_size, 0
    voxel = grid.voxel_size * PROBE_SCALE
    try:
        # counted before its surface is smoothed: smoothing moves vertices, never adds a face
        rough = rough_on_grid(views, coarser(grid, voxel, options), options, stages,
                              lambda f, m: report(PROBE_SHARE * f, "sizing the surface to the face budget"),
                              clock)
    except ValueError:  # nothing closed at that size (object mode): the planned pass decides
        return None, grid.voxel_size, 0
    faces = len(rough.faces)
    aim = BUDGET_AIM * options.max_faces
    if faces * PROBE_SCALE ** 2 <= aim:
        return None, grid.voxel_size, faces
    if PROBE_FITS * aim <= faces <= options.max_faces:
        return rough.smoothed(clock), voxel, faces
    return None, voxel * math.sqrt(faces / aim), faces


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
    return rough_on_grid(views, grid, options, stages, report, clock, smooth=True,
                         **extra_stats).smoothed(clock)


def rough_on_grid(views: list[View], grid: Grid, options: TSDFOptions, stages: Stages,
                  report: Progress, clock: _Clock, smooth: bool = False, **extra_stats) -> Rough:
    """Allocate, integrate and mesh the views on ``grid``, keep the pieces that belong and close
    the small holes; smooth the surface too with ``smooth`` (else :meth:`Rough.smoothed` does,
    when the mesh is wanted: the probe only counts its faces)."""
    coarse_tsdf, coarse_weight = integrate_coarse(grid, views)
    pockets = find_pockets(pocket_cell_states(grid, views, options)) if grid.object_mode else None
    coarse = coarse_values(grid, coarse_tsdf, coarse_weight, options, pockets)
    keys = allocate_blocks(grid, views, coarse, options, pockets)
    clock.lap("allocate")
    report(0.05, f"{len(keys)} blocks of {BLOCK}^3 voxels")
    volume = stages.integrate(grid, keys, views, options,
                              lambda f, m: report(0.05 + 0.75 * f, m))
    clock.lap("integrate")
    values, reached = voxel_values(grid, volume, options, pockets)
    report(0.85, "meshing")
    vertices, faces = stages.extract(grid, volume.keys, values, coarse,
                                     None if grid.object_mode else views, options.threads)
    clock.lap("mesh")
    colors = vertex_colors(grid, volume, vertices)
    unseen = taut = None
    if grid.object_mode and options.unseen_smooth_iterations > 0:
        unseen = unseen_vertices(grid, volume, vertices, options.solid_weight)
        taut = pocket_wall_vertices(grid, volume, vertices, reached)
    region = (lambda points: looked_at(points, views, options.crop_box)) if grid.object_mode else None
    meshed = len(faces)
    vertices, faces, (colors, unseen, taut) = clean_mesh(vertices, faces, (colors, unseen, taut),
                                                         options, stages.components, region)
    if grid.object_mode and meshed and not len(faces):
        raise ValueError("object mode found no closed part where most views look (photos that "
                         "circle one object); for a scene, turn object mode off")
    clock.lap("pieces")
    rough = Rough(vertices, faces, colors, unseen, taut, grid, options, stages, holes=0)
    rough.clean(fill=True, smooth=smooth)
    clock.lap("clean")
    report(1.0, f"{len(rough.faces)} triangles")
    rough.stats = dict(blocks=len(keys), voxels=len(keys) * BLOCK_VOXELS,
                       volume_mb=len(keys) * BLOCK_VOXELS * BYTES_PER_VOXEL / 2**20,
                       grid_shape=tuple(int(b) * BLOCK for b in grid.blocks),
                       floor=None if grid.floor is None else grid.floor.tolist(),
                       origin=grid.origin.tolist(), holes_closed=rough.holes,
                       timings=clock.laps, **extra_stats)  # JSON-ready for the worker
    return rough


@dataclass
class Rough:
    """A fused mesh whose faces are final (pieces kept, small holes closed) and whose surface
    may still need its clean-up's smoothing (``stages.clean_surface``)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None
    unseen: np.ndarray | None  # object mode: the vertices no view saw, smoothed more
    taut: np.ndarray | None  # and those of them drawn taut
    grid: Grid
    options: TSDFOptions
    stages: Stages
    holes: int  # small holes closed
    border: int | None = None  # border edges left (None: not counted)
    is_smooth: bool = False
    stats: dict | None = None

    def clean(self, fill: bool, smooth: bool) -> None:
        """``stages.clean_surface`` filling the small holes, smoothing, or both (one call: the
        mesh's edges are sorted out once)."""
        o = self.options
        self.vertices, self.faces, closed, border = self.stages.clean_surface(
            self.vertices, self.faces, o.max_hole_edges if fill else 0,
            o.smooth_iterations if smooth else 0, self.unseen, self.taut,
            o.unseen_smooth_iterations if smooth else 0, o.threads,
            o.normal_filter_iterations if smooth else 0)
        self.holes += closed
        self.border = self.border if border is None else border  # None: nothing was done
        self.is_smooth = self.is_smooth or smooth

    def smoothed(self, clock: _Clock) -> FusedMesh:
        """The mesh, its surface smoothed."""
        if not self.is_smooth:
            self.clean(fill=False, smooth=True)
            clock.lap("clean")
        return FusedMesh(self.vertices.astype(np.float32), self.faces.astype(np.int32), self.colors,
                         self.grid.voxel_size, self.grid.truncation,
                         {**self.stats, "border_edges": self.border})


class _Clock:
    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


NUMPY_STAGES = Stages(weigh=view_weights, make_consistent=make_consistent,
                      integrate=integrate_views, extract=mesh_volume, components=face_components,
                      clean_surface=clean_surface)
