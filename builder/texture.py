"""The surface's colour texture from the photos: the mesh is read on the main thread, unwrapped
and baked on the importer's thread (``engine.texture``), then given its UVs and an image
material on the main thread again. The image is packed into the .blend, so the file carries it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import bpy
import numpy as np

from ..engine.core import geometry
from ..engine.fusion.outlines import moved_extrinsics
from ..engine.texture import Baked, Polygons, bake_texture
from .materials import texture_material
from .meshes import COLOR_ATTRIBUTE

UV_MAP = "UVMap"  # Blender's own default name: exporters and baking pick it up as it is


def add_texture(build, obj: bpy.types.Object):
    """Steps: bake the photos into a texture on ``obj``'s final mesh; yields a Future while the
    threads work. Without images (DA3's mini_npz layout) the surface keeps its vertex colours."""
    pred = build.prediction
    if pred.image is None:
        build.note("no texture: the file holds no images (DA3's mini_npz export); vertex colours kept")
        return
    mesh = obj.data
    if not len(mesh.polygons):
        return
    polygons, colors = read_polygons(mesh), read_point_colors(mesh)
    voxel = obj.get("da3_voxel_size", 0.0) / build.geo.scale
    job = build.background("texture", bake_in_prediction_frame, polygons, build, voxel, colors)
    yield job
    try:
        baked = job.result()
    except MemoryError:  # the surface is done: keep it, with its vertex colours
        build.note("no texture: out of memory; try a smaller texture_size (vertex colours kept)")
        return
    except ValueError as exc:
        build.note(f"no texture: {exc} (vertex colours kept)")
        return
    set_uvs(mesh, baked.uv)
    yield  # the UVs and the image: each is a large allocation inside Blender, a step of its own
    image = packed_image(f"{build.name} texture", baked)
    mesh.materials.clear()
    mesh.materials.append(texture_material(f"{build.name} surface", image))
    # short: the sidebar is narrow
    photos = f", {pred.photo_factor}x photos" if pred.photos is not None else ""
    obj["da3_texture"] = f"{image.size[0]} px, {100 * baked.seen:.0f}% seen{photos}"


def bake_in_prediction_frame(polygons: Polygons, build, voxel: float, colors, progress) -> Baked:
    """``engine.texture.bake_texture`` on the mesh moved back into the prediction's frame, where
    the views' cameras and depth maps are (runs on the importer's thread)."""
    pred = build.prediction
    polygons = dataclasses.replace(polygons, vertices=geometry.points_from_blender(
        polygons.vertices, pred, build.geo.scale))
    if build.camera_moves is not None:  # the cameras the surface was fused with
        pred = dataclasses.replace(pred, extrinsics=moved_extrinsics(pred.extrinsics, build.camera_moves))
    return bake_texture(polygons, pred, voxel, colors, build.options.texture_size, progress)


def read_polygons(mesh: bpy.types.Mesh) -> Polygons:
    """The mesh's vertices and faces as numpy arrays (foreach_get: no per-element Python)."""
    vertices = np.empty(3 * len(mesh.vertices), dtype=np.float32)
    mesh.attributes["position"].data.foreach_get("vector", vertices)
    corner_vert = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corner_vert)
    loop_start = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_start", loop_start)
    loop_total = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", loop_total)
    return Polygons(vertices.reshape(-1, 3), corner_vert, loop_start, loop_total)


def read_point_colors(mesh: bpy.types.Mesh) -> np.ndarray | None:
    """(V,4) linear RGBA of the per-vertex ``COLOR_ATTRIBUTE``, None when it is not per vertex."""
    attribute = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if attribute is None or attribute.domain != "POINT" or attribute.data_type != "FLOAT_COLOR":
        return None
    colors = np.empty(4 * len(mesh.vertices), dtype=np.float32)
    attribute.data.foreach_get("color", colors)
    return colors.reshape(-1, 4)


def set_uvs(mesh: bpy.types.Mesh, uv: np.ndarray) -> None:
    layer = mesh.uv_layers.new(name=UV_MAP)
    layer.uv.foreach_set("vector", np.ascontiguousarray(uv, dtype=np.float32).reshape(-1))
    mesh.uv_layers.active = layer


def packed_image(name: str, baked: Baked) -> bpy.types.Image:
    """An image of the baked PNG, packed into the .blend (loaded from a temporary file, as
    Blender's glTF importer does: packing a loaded file only copies its bytes, where packing a
    generated image would encode it on the main thread, 0.5 s at 2048 px)."""
    handle, path = tempfile.mkstemp(suffix=".png", prefix="da3-texture-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(baked.png)
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
        image.pack()
    finally:
        os.remove(path)
    image.filepath_raw = f"//{bpy.path.clean_name(name)}.png"  # where File > External Data > Unpack puts it
    return image
