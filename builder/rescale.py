"""Rescaling a result after the fact: ``da3.set_scale`` measures a known distance and scales the
whole collection about the world origin (view 0's camera), so every part stays aligned."""

from __future__ import annotations

import bmesh
import bpy
from mathutils import Vector

from .compat import action_fcurves

SCALE_KEY = "da3_scale"


def result_collection_of(obj: bpy.types.Object) -> bpy.types.Collection | None:
    """The DA3 result collection ``obj`` belongs to (the one with a recorded scale), if any."""
    return next((c for c in obj.users_collection if SCALE_KEY in c), None)


def selected_vertex_span(obj: bpy.types.Object) -> float:
    """World distance between the two selected vertices of ``obj`` in edit mode (or one edge)."""
    mesh = bmesh.from_edit_mesh(obj.data)
    selected = [v.co for v in mesh.verts if v.select]
    if len(selected) != 2:
        raise ValueError(f"select exactly two vertices or one edge (found {len(selected)} "
                         "selected vertices)")
    a, b = (obj.matrix_world @ Vector(co) for co in selected)
    return (a - b).length


def object_span(objects) -> float:
    """World distance between the origins of exactly two objects."""
    if len(objects) != 2:
        raise ValueError(f"select exactly two objects (found {len(objects)}), or two vertices "
                         "in edit mode")
    a, b = (o.matrix_world.translation for o in objects)
    return (a - b).length


def rescale_collection(collection: bpy.types.Collection, factor: float) -> None:
    """Scale every object of ``collection`` about the origin by ``factor``; cameras only move
    (their intrinsics do not depend on scale) and animated camera tracks have their path scaled."""
    for obj in list(collection.all_objects):  # a live iterator dies if its cache is rebuilt
        if obj.parent is None:
            obj.location = obj.location * factor
        if obj.type != "CAMERA":
            obj.scale = obj.scale * factor
        _scale_animated_location(obj, factor)
    collection[SCALE_KEY] = float(collection[SCALE_KEY]) * factor


def _scale_animated_location(obj: bpy.types.Object, factor: float) -> None:
    """Multiply the keys (and handles) of ``obj``'s animated location by ``factor``."""
    for curve in _location_curves(obj):
        for key in curve.keyframe_points:
            for attr in ("co", "handle_left", "handle_right"):
                point = getattr(key, attr)
                point[1] *= factor
        curve.update()


def _location_curves(obj: bpy.types.Object) -> list:
    return [c for c in action_fcurves(obj) if c.data_path == "location"]
