"""The Python API of DA3 Reconstruct: what the operators, the reconstruct pipeline and scripts call.

    from bl_ext.<repo>.da3_reconstruct import api
    from bl_ext.<repo>.da3_reconstruct.engine.core.options import BuildOptions
    collection = api.import_prediction("scene.npz", BuildOptions(output_view_meshes=True))
"""

from __future__ import annotations

import os

import bpy
import numpy as np

from .builder.rescale import SCALE_KEY, rescale_collection
from .builder.result import StagedImport
from .engine.core.options import BuildOptions
from .engine.core.prediction import Prediction, PredictionError


def import_prediction(filepath: str | os.PathLike | Prediction, options: BuildOptions | None = None,
                      *, context=None, name: str | None = None,
                      timings: dict | None = None) -> bpy.types.Collection:
    """Build a DA3 prediction into ONE new collection of the current scene and return it.

    Parameters
    ----------
    filepath
        A DA3 ``npz`` / ``mini_npz`` export (or our worker's file), or an in-memory ``Prediction``.
    options
        What to build and how to filter (``BuildOptions()`` when None).
    context
        The context whose scene receives the result (``bpy.context`` when None).
    name
        Name of the collection (and prefix of everything in it); the file's stem by default.
    timings
        When given, receives the seconds spent per stage ("read", "filter", "points", ...).

    The result is in view 0's camera frame turned Z-up (first camera at the origin, looking
    along +Y). Metric predictions are in metres. Relative ones are scaled so the median depth
    of the kept pixels is 2 m (``engine.core.geometry.RELATIVE_MEDIAN_DEPTH``); the factor applied
    (metres per depth unit) is the collection's ``da3_scale`` and ``da3_is_metric`` says which
    case it was; ``bpy.ops.da3.set_scale`` fixes the scale from a known distance later.
    Every object has ``da3_role`` ("points", "view_mesh", "surface", "camera" with
    ``da3_view_index``, or "camera_track" for a video). The scene's render resolution becomes
    the views' size when cameras are built; nothing else that existed is changed.

    Raises
    ------
    PredictionError
        (a ValueError) with a one-line message when the file or the options cannot be used.
        Nothing created before the failure is left behind.
    """
    return start_import(filepath, options, context=context, name=name, timings=timings).run()


def start_import(source: str | os.PathLike | Prediction, options: BuildOptions | None = None,
                 *, context=None, name: str | None = None,
                 timings: dict | None = None) -> StagedImport:
    """:func:`import_prediction` in steps, for a caller that keeps Blender's UI running.

    Reading, filtering and fusing start at once on threads (numpy only); call ``step()`` from
    the main thread (a modal operator's timer) until it returns True, then ``collection`` is
    the result. ``label`` and ``fraction`` say where it is; ``cancel()`` removes what was made.
    A step raises ``PredictionError`` like :func:`import_prediction` (after cleaning up).
    """
    context = context or bpy.context
    options = options or BuildOptions()
    crop = crop_box(context, options.crop_object)
    return StagedImport(context, source, options, name, crop, timings)


def result_warning(collection: bpy.types.Collection) -> str:
    """One line on what the result lacks that was asked for (and why, and what to try); ""
    when everything asked for was built."""
    return collection.get("da3_notes", "")


def set_scale(collection: bpy.types.Collection, measured: float, real: float) -> float:
    """Rescale a result so that a distance measured as ``measured`` becomes ``real``.

    Returns the factor applied; the collection's ``da3_scale`` is multiplied by it.
    """
    if SCALE_KEY not in collection:
        raise ValueError(f"'{collection.name}' is not a DA3 result (it has no {SCALE_KEY})")
    if measured <= 0 or real <= 0:
        raise ValueError("both the measured and the real distance must be above zero")
    factor = real / measured
    rescale_collection(collection, factor)
    return factor


def crop_box(context, name: str):
    """(world_to_local, low, high) of the object called ``name``'s bounds; None for no name."""
    if not name:
        return None
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise PredictionError(f"crop object '{name}' does not exist")
    context.view_layer.update()  # a script may just have moved it: refresh matrix_world
    world_to_local = np.array(obj.matrix_world.inverted_safe())
    if obj.type == "EMPTY":  # an empty has no bounds of its own: use the cube it draws
        size = obj.empty_display_size
        return world_to_local, np.full(3, -size), np.full(3, size)
    corners = np.array([tuple(c) for c in obj.bound_box])
    return world_to_local, corners.min(axis=0), corners.max(axis=0)
