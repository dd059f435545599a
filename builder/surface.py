"""Fusing the views into one surface. ``SURFACE_BUILDERS`` maps ``options.fusion`` to a builder;
a new fusion mode (e.g. TSDF) is one more function ``(build) -> Object`` and one more entry.
"""
# ruff: noqa: TID252  (an extension loads as bl_ext.<repo>.<id>: imports must be relative)

from __future__ import annotations

import bpy

from ..engine import geometry
from ..engine.prediction import PredictionError
from .meshes import mesh_from_arrays


def remesh_surface(build) -> bpy.types.Object:
    """Join the per-view surfaces and voxel-remesh them in place (Blender's remesher, OpenVDB)."""
    voxel = geometry.voxel_size_for(build.geo, build.options.voxel_size)
    joined = geometry.surface_input(build.geo, build.prediction.depth, voxel)
    if len(joined.triangles) == 0:
        raise PredictionError("no surface to fuse: too few neighbouring pixels survive the filters")
    mesh = mesh_from_arrays(f"{build.name} surface", joined.vertices, joined.triangles,
                            joined.colors)
    obj = build.add_object(mesh.name, mesh, "surface")
    voxel_remesh(build.context, obj, voxel)
    mesh = obj.data  # the remesher may hand the object a new mesh
    mesh.materials.append(build.material)
    obj["da3_voxel_size"] = voxel
    return obj


def voxel_remesh(context, obj: bpy.types.Object, voxel_size: float) -> None:
    """Remesh ``obj`` in place with ``voxel_size``; colour attributes carry over.

    The input is made of closed slabs (``geometry.surface_input``), so the remesher needs no
    volume preservation (which only rescues open sheets, as a shell that pinches into holes).
    """
    mesh = obj.data
    mesh.remesh_voxel_size = voxel_size
    mesh.use_remesh_preserve_volume = False
    mesh.use_remesh_preserve_attributes = True
    try:
        with context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
            result = bpy.ops.object.voxel_remesh()
    except RuntimeError as exc:  # the operator's own report, e.g. a voxel size it refuses
        raise PredictionError(f"Blender's voxel remesher failed: {_first_line(exc)}") from None
    if result != {"FINISHED"}:
        raise PredictionError(f"Blender's voxel remesher did not run (voxel size {voxel_size:.4g})")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0].removeprefix("Error: ")


SURFACE_BUILDERS = {"REMESH": remesh_surface}


def build_surface(build) -> bpy.types.Object:
    """The fused surface, made the way ``build.options.fusion`` names."""
    return SURFACE_BUILDERS[build.options.fusion](build)
