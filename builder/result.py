"""One prediction -> one new collection holding points, view meshes, surface and cameras."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import bpy

from ..engine import geometry
from ..engine.options import BuildOptions
from ..engine.prediction import Prediction, PredictionError
from .cameras import add_camera_track, add_view_cameras, set_render_resolution
from .materials import color_material, points_node_group
from .meshes import grid_mesh, mesh_from_arrays
from .surface import build_surface


@dataclass
class Build:
    """What the parts of one import share: inputs, prepared geometry and the new collection."""

    context: bpy.types.Context
    prediction: Prediction
    options: BuildOptions
    name: str
    geo: geometry.Scene
    collection: bpy.types.Collection
    material: bpy.types.Material
    crop: tuple | None = None  # (world_to_local, low, high) of the crop object, Blender frame

    @cached_property
    def far(self) -> float:
        """The farthest kept depth, in scene units (for the cameras' clip distance)."""
        return float(self.prediction.depth[self.geo.valid].max()) * self.geo.scale

    def note(self, line: str) -> None:
        """Record something the user should know (a part left out) on the collection."""
        notes = self.collection.get("da3_notes", "")
        self.collection["da3_notes"] = f"{notes}; {line}" if notes else line

    def add_object(self, name: str, data, role: str, **props) -> bpy.types.Object:
        """A new object in the result collection, tagged with its ``da3_role``."""
        obj = bpy.data.objects.new(name, data)
        self.collection.objects.link(obj)
        obj["da3_role"] = role
        for key, value in props.items():
            obj[key] = value
        return obj


def build_result(context, pred: Prediction, options: BuildOptions, name: str, crop=None,
                 timings: dict | None = None) -> bpy.types.Collection:
    """Build ``pred`` into a new collection linked to the scene; ``timings`` gets seconds per stage."""
    timings = {} if timings is None else timings
    with _timed(timings, "filter"):
        geo = geometry.prepare(pred, options, crop)
    if geo.num_points == 0:
        raise PredictionError("no pixel survives the filters (confidence, sky, edges, crop): "
                              "lower the confidence percentile or check the crop object")
    build = Build(context, pred, options, name, geo, _new_collection(context, name, pred, geo),
                  color_material(name), crop)
    for wanted, part, stage in _PARTS:
        if getattr(options, wanted):
            with _timed(timings, stage):
                part(build)
    return build.collection


def _new_collection(context, name: str, pred: Prediction, geo: geometry.Scene):
    collection = bpy.data.collections.new(name)
    context.scene.collection.children.link(collection)
    collection["da3_scale"] = geo.scale
    collection["da3_is_metric"] = bool(pred.is_metric)
    collection["da3_model"] = pred.model
    if geo.conf_threshold is not None:
        collection["da3_conf_threshold"] = geo.conf_threshold
    return collection


def add_points(build: Build) -> bpy.types.Object:
    """Every kept pixel as a coloured, renderable point (vertices shown through Geometry Nodes)."""
    points, colors = geometry.kept_points(build.geo)
    mesh = mesh_from_arrays(f"{build.name} points", points, colors=colors)
    mesh.materials.append(build.material)
    obj = build.add_object(mesh.name, mesh, "points")
    group = points_node_group(mesh.name, geometry.point_radius(build.geo), build.material)
    obj.modifiers.new("DA3 Points", "NODES").node_group = group
    return obj


def add_view_meshes(build: Build) -> list[bpy.types.Object]:
    """One triangulated surface per view, never bridging an edge or a dropped pixel."""
    objects = []
    grids = geometry.view_meshes(build.geo, build.prediction.depth, quads=True)
    for i, grid in enumerate(grids):
        if len(grid.triangles) + len(grid.quads) == 0:
            continue
        mesh = grid_mesh(f"{build.name} view {i} mesh", grid)
        mesh.materials.append(build.material)
        objects.append(build.add_object(mesh.name, mesh, "view_mesh", da3_view_index=i))
    if not objects:
        build.note("no view meshes: no view has neighbouring pixels left after the filters; "
                   "try a lower confidence_percentile")
    return objects


def add_cameras(build: Build) -> None:
    pred = build.prediction
    set_render_resolution(build.context.scene, pred.width, pred.height)
    add_view_cameras(build)
    if pred.is_video and pred.num_views > 1:
        add_camera_track(build)


# (option that asks for it, builder, timing stage)
_PARTS = (
    ("output_points", add_points, "points"),
    ("output_view_meshes", add_view_meshes, "view_meshes"),
    ("output_surface", build_surface, "surface"),
    ("output_cameras", add_cameras, "cameras"),
)


class _timed:
    """``with _timed(timings, stage):`` adds the seconds spent inside to ``timings[stage]``."""

    def __init__(self, timings: dict, stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + elapsed
        return False

