"""Fusing the views into one surface. ``SURFACE_BUILDERS`` maps ``options.fusion`` to a builder;
a new fusion mode (e.g. TSDF) is one more function ``(build) -> Object`` and one more entry.
"""

from __future__ import annotations

import bmesh
import bpy
import numpy as np

from ..engine import geometry
from ..engine.prediction import PredictionError
from .meshes import mesh_from_arrays


def remesh_surface(build) -> bpy.types.Object | None:
    """Join the per-view surfaces and voxel-remesh them in place (Blender's remesher, OpenVDB)."""
    voxel = geometry.voxel_size_for(build.geo, build.options.voxel_size)
    joined = geometry.surface_input(build.geo, build.prediction.depth, voxel)
    if len(joined.triangles) == 0:  # e.g. every view edge-on: keep the rest of the result
        build.note("no surface: no part of any view faces its camera with neighbouring pixels")
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


SURFACE_BUILDERS = {"REMESH": remesh_surface}


def build_surface(build) -> bpy.types.Object | None:
    """The fused surface, made the way ``build.options.fusion`` names."""
    return SURFACE_BUILDERS[build.options.fusion](build)
