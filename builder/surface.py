"""Fusing the views into one surface. ``SURFACE_BUILDERS`` maps ``options.fusion`` to a builder:
a function ``(build) -> Object | None`` (None: nothing to fuse, noted on the collection).
"""

from __future__ import annotations

import json

import bmesh
import bpy
import numpy as np

from ..engine import fusion, geometry
from ..engine.prediction import PredictionError
from .meshes import mesh_from_arrays


def remesh_surface(build) -> bpy.types.Object | None:
    """Join the per-view surfaces and voxel-remesh them in place (Blender's remesher, OpenVDB)."""
    voxel = geometry.voxel_size_for(build.geo, build.options.voxel_size)
    joined = geometry.surface_input(build.geo, build.prediction.depth, voxel)
    if len(joined.triangles) == 0:  # e.g. every view edge-on: keep the rest of the result
        build.note("no surface: no part of any view faces its camera with neighbouring pixels "
                   "(views edge-on); try fusion='TSDF' or photos that face the surfaces")
        return None
    mesh = mesh_from_arrays(f"{build.name} surface", joined.vertices, joined.triangles,
                            joined.colors)
    obj = build.add_object(mesh.name, mesh, "surface")
    voxel_remesh(build.context, obj, voxel)
    mesh = obj.data  # the remesher may hand the object a new mesh
    remove_small_islands(mesh, max(MIN_ISLAND_FACES, int(MIN_ISLAND_SHARE * len(mesh.polygons))))
    mesh.materials.append(build.material)
    obj["da3_voxel_size"] = voxel
    return obj


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


def tsdf_surface(build) -> bpy.types.Object | None:
    """Fuse every view into one signed-distance volume (``engine.fusion``) and mesh it.

    Fusion works in the prediction's own frame and units; the mesh is moved into the result's
    frame afterwards. It weighs pixels by confidence itself (a hard percentile cut costs it
    recall), so ``confidence_percentile`` applies to points and view meshes only.
    """
    pred, geo = build.prediction, build.geo
    fused = fused_by_worker(build)
    if fused is None:
        fused = fuse_here(build)
    if fused is None or len(fused.faces) == 0:
        if fused is not None:
            build.note("no TSDF surface: the views disagree, so no voxel was seen as surface by "
                       "enough of them; try fusion='REMESH', a larger voxel_size, or more overlapping photos")
        return None
    colors = None if fused.colors is None else geometry.linear_from_srgb(fused.colors)
    vertices = geometry.points_to_blender(fused.vertices, pred, geo.scale)
    mesh = mesh_from_arrays(f"{build.name} surface", vertices, fused.faces, colors)
    mesh.materials.append(build.material)
    obj = build.add_object(mesh.name, mesh, "surface")
    obj["da3_voxel_size"] = fused.voxel_size * geo.scale
    obj["da3_fused_in"] = fused.stats.get("fused_in", "blender")
    return obj


def fused_by_worker(build) -> fusion.FusedMesh | None:
    """The worker's TSDF surface when the file has one made with these very settings."""
    pred, options = build.prediction, build.options
    if pred.fused_vertices is None or options.voxel_size or build.crop is not None:
        return None
    made = json.loads(pred.fused_settings or "{}")
    wanted = {"object_mode": options.object_mode, "mask_sky": options.mask_sky}
    if any(made.get(key) != value for key, value in wanted.items()):
        return None
    return fusion.FusedMesh(pred.fused_vertices, pred.fused_faces, pred.fused_colors,
                            voxel_size=float(made.get("voxel_size", 0.0)),
                            truncation=float(made.get("truncation", 0.0)),
                            stats={"fused_in": "worker"})


def fuse_here(build) -> fusion.FusedMesh | None:
    """Fuse in Blender's process (numpy); None, noted on the collection, if nothing fuses."""
    pred, geo, options = build.prediction, build.geo, build.options
    tsdf_options = fusion.TSDFOptions(
        voxel_size=options.voxel_size / geo.scale, mask_sky=options.mask_sky,
        object_mode=options.object_mode,
        crop_box=None if build.crop is None else geometry.box_in_prediction_frame(
            build.crop, pred, geo.scale))
    try:
        with _window_progress(build.context) as progress:
            return fusion.fuse_tsdf(pred, tsdf_options, progress)
    except ValueError as exc:  # no usable pixel, or nothing fits: keep the rest of the result
        build.note(f"no TSDF surface: {exc}; try fusion='REMESH', or photos that overlap more")
        return None


class _window_progress:
    """Blender's progress cursor while fusing (a no-op in background mode)."""

    def __init__(self, context):
        self.wm = context.window_manager

    def __enter__(self):
        self.wm.progress_begin(0.0, 1.0)
        return lambda fraction, _message: self.wm.progress_update(fraction)

    def __exit__(self, *exc):
        self.wm.progress_end()


SURFACE_BUILDERS = {"TSDF": tsdf_surface, "REMESH": remesh_surface}


def build_surface(build) -> bpy.types.Object | None:
    """The fused surface, made the way ``build.options.fusion`` names."""
    return SURFACE_BUILDERS[build.options.fusion](build)
