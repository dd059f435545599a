"""Fusing the views into one surface, the way ``options.fusion`` names: ``surface_arrays`` does
the numpy part (on the importer's thread), ``create_surface`` the Blender part, then brings it
down to ``options.max_faces`` with Blender's voxel remesher and Decimate (``fit_face_budget``)
and bakes the photos into a texture on what is left (``texture.add_texture``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import bmesh
import bpy
import numpy as np

from ..engine.core import geometry
from ..engine.core.options import BACKGROUND_THREADS, fusion_settings
from ..engine.core.prediction import PredictionError
from ..engine.fusion.base import FusedMesh, TSDFOptions
from ..engine.fusion.tsdf import fuse_tsdf
from .meshes import mesh_from_arrays
from .texture import add_texture


@dataclass
class Skipped:
    """No surface, and the line that tells the user why."""

    note: str


@dataclass
class Fit:
    """What the face budget needs to know of a new surface (found on the importer's thread).

    ``closed``: no boundary edge, so Blender's voxel remesher keeps its one wall; ``area``: its
    area projected on the three axes' planes, summed, or 0 when unknown: the remesher makes at
    most about ``area / voxel**2`` quads (one per voxel face the surface crosses; 0.95x that
    measured on a fused mug at 19k-170k faces); ``voxel``: the voxel it was fused or remeshed
    at, in the result's units; ``detail``: the finest voxel it was fused at (its first pass,
    when a second, coarser one met the face budget; the remesher never goes finer);
    ``remeshed``: it is already the remesher's output.
    """

    closed: bool
    area: float
    voxel: float
    remeshed: bool = False
    detail: float = 0.0


# The remesher aims this far under the budget: a decimation after it would cost far more time.
REMESH_AIM = 0.9


def remesh_input(build, progress) -> tuple[geometry.GridMesh, float] | Skipped:
    """The per-view surfaces joined into closed slabs, ready for the voxel remesher."""
    voxel = geometry.voxel_size_for(build.geo, build.options.voxel_size)
    joined = geometry.surface_input(build.geo, build.prediction.depth, voxel)
    if len(joined.triangles) == 0:  # e.g. every view edge-on: keep the rest of the result
        return Skipped("no surface: no part of any view faces its camera with neighbouring pixels "
                       "(views edge-on); try fusion='TSDF' or photos that face the surfaces")
    return joined, voxel


def remesh_surface(build, data) -> tuple[bpy.types.Object, Fit]:
    """Voxel-remesh the joined per-view surfaces in place (Blender's remesher, OpenVDB)."""
    joined, voxel = data
    mesh = mesh_from_arrays(f"{build.name} surface", joined.vertices, joined.triangles,
                            joined.colors)
    obj = build.add_object(mesh.name, mesh, "surface")
    voxel_remesh(build.context, obj, voxel)
    mesh = obj.data  # the remesher may hand the object a new mesh
    remove_small_islands(mesh, max(MIN_ISLAND_FACES, int(MIN_ISLAND_SHARE * len(mesh.polygons))))
    mesh.materials.append(build.material)
    obj["da3_voxel_size"] = voxel
    return obj, Fit(closed=True, area=0.0, voxel=voxel, remeshed=True)


def voxel_remesh(context, obj: bpy.types.Object, voxel_size: float) -> None:
    """Remesh ``obj`` in place with ``voxel_size``; colour attributes carry over.

    The input is made of closed slabs (``geometry.surface_input``). Volume preservation is not
    needed for those, but it costs only ~10% and is the path known not to crash on odd input.
    """
    mesh = obj.data
    mesh.remesh_voxel_size = voxel_size
    mesh.use_remesh_preserve_volume = True
    mesh.use_remesh_preserve_attributes = True
    try:
        with context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
            result = bpy.ops.object.voxel_remesh()
    except RuntimeError as exc:  # the operator's own report, e.g. a voxel size it refuses
        raise PredictionError(f"Blender's voxel remesher failed: {_first_line(exc)}") from None
    if result != {"FINISHED"}:
        raise PredictionError(f"Blender's voxel remesher did not run (voxel size {voxel_size:.4g})")


MIN_ISLAND_FACES = 64  # a speck from a few stray pixels remeshes into fewer faces than this
MIN_ISLAND_SHARE = 0.001


def remove_small_islands(mesh: bpy.types.Mesh, min_faces: int) -> int:
    """Delete, in place, the connected parts of ``mesh`` with fewer than ``min_faces`` faces;
    returns how many vertices went. Found with numpy, deleted with bmesh."""
    if not len(mesh.polygons):
        return 0
    edges = _read(mesh.attributes[".edge_verts"].data, "value", 2 * len(mesh.edges)).reshape(-1, 2)
    corners = _read(mesh.attributes[".corner_vert"].data, "value", len(mesh.loops))
    starts = _read(mesh.polygons, "loop_start", len(mesh.polygons))
    doomed = geometry.small_island_vertices(edges, corners[starts], len(mesh.vertices), min_faces)
    if len(doomed):
        bm = bmesh.new()
        bm.from_mesh(mesh)
        bm.verts.ensure_lookup_table()
        bmesh.ops.delete(bm, geom=[bm.verts[i] for i in doomed.tolist()], context="VERTS")
        bm.to_mesh(mesh)
        bm.free()
    return len(doomed)


def _read(collection, attribute: str, count: int) -> np.ndarray:
    values = np.empty(count, dtype=np.int32)
    collection.foreach_get(attribute, values)
    return values


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0].removeprefix("Error: ")


def fused_surface(build, progress) -> tuple[FusedMesh, tuple | None, Fit] | Skipped:
    """One signed-distance volume of every view (``engine.fusion.tsdf``), meshed, in the result's
    frame, with its edges when they were needed here (else Blender finds them) and what the
    face budget needs to know of it.

    Fusion works in the prediction's own frame and units; the mesh is moved into the result's
    frame afterwards. It applies DA3's confidence floor itself (``TSDFOptions``: the
    exporter's rule at a low percentile, then weighs the rest by confidence; a P40 cut costs it
    recall), so ``confidence_percentile`` applies to points, view meshes and REMESH. The worker's
    surface is used when the file holds one made with these settings.
    """
    pred, geo = build.prediction, build.geo
    started = build.started.get("surface")
    fused = (fused_by_worker(pred, build.options, build.crop) or (started and started.result())
             or fuse_here(build, progress))
    if isinstance(fused, Skipped):
        return fused
    if len(fused.faces) == 0:
        return Skipped("no TSDF surface: the views disagree, so no voxel was seen as surface by "
                       "enough of them; try fusion='REMESH', a larger voxel_size, or more overlapping photos")
    fused.colors = None if fused.colors is None else geometry.linear_from_srgb(fused.colors)
    fused.vertices = geometry.points_to_blender(fused.vertices, pred, geo.scale)
    border = fused.stats.get("border_edges")  # counted by the fusion's clean-up, if it ran
    # else from the edges, which Blender then takes as they are; with the count, Blender finds
    # them itself: 0.02-0.03 s of its main thread against 0.09 s of numpy's sorting here
    edges = geometry.triangle_edges(fused.faces) if border is None else None
    fit = Fit(closed=is_closed(edges) if border is None else border == 0,
              area=projected_area(fused.vertices, fused.faces), voxel=fused.voxel_size * geo.scale,
              detail=fused.stats.get("first_pass_voxel", fused.voxel_size) * geo.scale)
    return fused, edges, fit


def tsdf_surface(build, data) -> tuple[bpy.types.Object, Fit]:
    fused, edges, fit = data
    mesh = mesh_from_arrays(f"{build.name} surface", fused.vertices, fused.faces, fused.colors, edges)
    mesh.materials.append(build.material)
    obj = build.add_object(mesh.name, mesh, "surface")
    obj["da3_voxel_size"] = fit.voxel
    obj["da3_fused_in"] = fused.stats.get("fused_in", "blender")
    build.camera_moves = fused.stats.get("camera_moves")  # the texture is baked from these cameras
    agreement = fused.stats.get("consistency")
    if agreement:  # median distance between overlapping views, % of depth: before -> after
        # engine.fusion.consistency made them agree
        obj["da3_views_disagree"] = (f"{100 * agreement['disagreement_before']:.2f}% -> "
                                     f"{100 * agreement['disagreement_after']:.2f}%")
    return obj, fit


def is_closed(edges: tuple[np.ndarray, np.ndarray]) -> bool:
    """No edge of a triangle mesh (``geometry.triangle_edges``) has only one face."""
    unique, corner_edges = edges
    return not np.any(np.bincount(corner_edges.ravel(), minlength=len(unique)) == 1)


def projected_area(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Sum over the triangles of |x|+|y|+|z| of their area vectors: the area of the surface
    as the voxel grid sees it (1x for a wall facing an axis, 1.41x at 45 degrees)."""
    v = vertices.astype(np.float64)
    total = 0.0
    for start in range(0, len(triangles), AREA_CHUNK):  # bounded memory on large meshes
        t = triangles[start:start + AREA_CHUNK]
        a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
        total += float(np.abs(np.cross(b - a, c - a)).sum()) / 2
    return total


AREA_CHUNK = 1 << 20


def fused_by_worker(pred, options, crop) -> FusedMesh | None:
    """The worker's TSDF surface when the file has one made with these very settings."""
    if pred.fused_vertices is None or options.voxel_size or crop is not None:
        return None
    made = json.loads(pred.fused_settings or "{}")
    if any(made.get(key) != value for key, value in fusion_settings(options).items()):
        return None
    return FusedMesh(pred.fused_vertices, pred.fused_faces, pred.fused_colors,
                            voxel_size=float(made.get("voxel_size", 0.0)),
                            truncation=float(made.get("truncation", 0.0)),
                            stats={"fused_in": "worker", "consistency": made.get("consistency"),
                                   "camera_moves": None if made.get("camera_moves") is None
                                   else np.asarray(made["camera_moves"], dtype=np.float64),
                                   "border_edges": made.get("border_edges"),
                                   "first_pass_voxel": float(made.get("first_pass_voxel", 0.0))
                                   or float(made.get("voxel_size", 0.0))})


def fuse_here(build, progress) -> FusedMesh | Skipped:
    """Fuse in Blender's process (numpy, on the importer's thread), the voxel size and crop
    box given in the result's units brought into the prediction's."""
    pred, geo, options = build.prediction, build.geo, build.options
    crop_box = None if build.crop is None else geometry.box_in_prediction_frame(build.crop, pred, geo.scale)
    return fuse_prediction(pred, options, options.voxel_size / geo.scale, crop_box, progress)


def fuse_prediction(pred, options, voxel: float, crop_box, progress) -> FusedMesh | Skipped:
    tsdf_options = TSDFOptions(voxel_size=voxel, **fusion_settings(options),
                               threads=BACKGROUND_THREADS, crop_box=crop_box)
    try:
        return fuse_tsdf(pred, tsdf_options, progress)
    except ValueError as exc:  # no usable pixel, or nothing fits: keep the rest of the result
        return Skipped(f"no TSDF surface: {exc}; try fusion='REMESH', or photos that overlap more")


def start_fusion(pred, options, crop, progress) -> FusedMesh | Skipped | None:
    """The fusion, begun as soon as the file is read, beside the filter (``Part.start``): 0.2 s
    sooner on the import benchmark's 32 views, the fusion being most of an import. None when it
    needs the filter: a voxel size or crop box in the result's units, which the filter's scale
    converts, or a surface the worker made is in the file."""
    if options.voxel_size or crop is not None or fused_by_worker(pred, options, crop):
        return None
    return fuse_prediction(pred, options, 0.0, None, progress)


# options.fusion -> (numpy part, Blender part)
SURFACE_MAKERS = {"TSDF": (fused_surface, tsdf_surface), "REMESH": (remesh_input, remesh_surface)}


def start_surface(pred, options, crop, progress):
    """The surface's work that needs no filtering, started beside it (TSDF: the fusion)."""
    return start_fusion(pred, options, crop, progress) if options.fusion == "TSDF" else None


def surface_arrays(build, progress):
    """The numpy part of the surface (runs on the importer's thread)."""
    return SURFACE_MAKERS[build.options.fusion][0](build, progress)


def create_surface(build, data):
    """The Blender part: the surface object, or the note saying why there is none; then each
    remesh or decimation to the face budget is a step of its own (each blocks the main thread
    for seconds on a million faces)."""
    if isinstance(data, Skipped):
        build.note(data.note)
        return
    obj, fit = SURFACE_MAKERS[build.options.fusion][1](build, data)
    budget = build.options.max_faces
    yield f"bringing the surface to at most {budget:,} faces" if budget else None
    yield from fit_face_budget(build.context, obj, fit, budget)
    if not obj.data.materials:  # an operator may hand the object a new mesh
        obj.data.materials.append(build.material)
    obj["da3_faces"] = len(obj.data.polygons)
    if build.options.texture:
        yield "baking a texture from the photos"
        yield from add_texture(build, obj)


def fit_face_budget(context, obj: bpy.types.Object, fit: Fit, budget: int):
    """Bring ``obj`` to at most ``budget`` faces (0: leave it as it is), in place, colours kept;
    yields after each Blender operation.

    A closed surface goes through the voxel remesher (even quads) at the voxel that lands it
    under the budget, never finer than the one it was made at. An open one (TSDF of a scene:
    walls seen from one side) never does: the remesher turns an open sheet into a closed,
    two-walled shell, doubling every wall. Whatever is still over the budget is decimated.
    """
    if not budget:
        return
    voxel = remesh_voxel(fit, budget, len(obj.data.polygons))
    if voxel:
        voxel_remesh(context, obj, voxel)
        # the remesher leaves specks of a dozen faces where a thin part nearly closes
        remove_small_islands(obj.data, max(MIN_ISLAND_FACES,
                                           int(MIN_ISLAND_SHARE * len(obj.data.polygons))))
        obj["da3_voxel_size"] = voxel
        yield
    mesh = obj.data
    if len(mesh.polygons) > budget:
        # Decimate counts triangles (and re-joins the quads it left whole): a quad is two.
        triangles = len(mesh.loops) - 2 * len(mesh.polygons)
        decimate(context, obj, budget / triangles)
        yield


def remesh_voxel(fit: Fit, budget: int, faces: int) -> float:
    """The voxel the remesher should use for ``budget``, or 0 for no remesh."""
    if not fit.closed:
        return 0.0
    if fit.remeshed:  # quads scale with 1/voxel**2: coarser only when over the budget
        return fit.voxel * math.sqrt(faces / (REMESH_AIM * budget)) if faces > budget else 0.0
    if not fit.area:
        return 0.0
    # finer than a second, coarser pass (options.TRIANGLES_PER_REMESHED_FACE), never finer
    # than the first: no more detail was fused
    return max(fit.detail or fit.voxel, math.sqrt(fit.area / (REMESH_AIM * budget)))


def decimate(context, obj: bpy.types.Object, ratio: float) -> None:
    """Blender's Decimate (collapse) applied in place: ``ratio`` of the triangles are kept."""
    modifier = obj.modifiers.new("DA3 Face Budget", "DECIMATE")
    modifier.decimate_type = "COLLAPSE"
    modifier.ratio = ratio
    try:
        with context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
            result = bpy.ops.object.modifier_apply(modifier=modifier.name)
    except RuntimeError as exc:
        result = {_first_line(exc)}
    if result != {"FINISHED"}:
        if modifier.name in obj.modifiers:
            obj.modifiers.remove(modifier)
        raise PredictionError(f"Blender's Decimate could not bring the surface down to the face "
                              f"budget ({', '.join(result)}); try max_faces=0")
