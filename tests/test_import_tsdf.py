"""fusion='TSDF' through the importer: the fused surface lands in Blender closed, coloured and
on the true surface (scene rendered with Cycles, degraded like DA3: see tests/scenes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engine import geometry
from engine.options import BuildOptions
from engine.prediction import save_prediction

sys.path.insert(0, str(Path(__file__).parent))
import scenes  # noqa: E402


@pytest.fixture(scope="module")
def mug():
    scene = scenes.render_scene("mug")
    return scene, scenes.degrade(scene, seed=3)


def surface_of(collection):
    return next(o for o in collection.objects if o.get("da3_role") == "surface")


def mesh_arrays(mesh):
    verts = np.empty(3 * len(mesh.vertices), np.float32)
    mesh.vertices.foreach_get("co", verts)
    edges = np.empty(2 * len(mesh.edges), np.int32)
    mesh.edges.foreach_get("vertices", edges)
    loop_edges = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("edge_index", loop_edges)
    return verts.reshape(-1, 3), edges.reshape(-1, 2), np.bincount(loop_edges, minlength=len(mesh.edges))


def to_scene_frame(points, degraded, scale):
    """Blender-frame result points -> the rendered scene's frame (undo our frame and scale)."""
    pred = degraded.prediction
    to_pred = np.linalg.inv(geometry.prediction_to_blender(pred))
    p = (points / scale) @ to_pred[:3, :3].T + to_pred[:3, 3]
    return p @ degraded.to_scene[:3, :3].T + degraded.to_scene[:3, 3]


def test_object_mode_import_is_closed_coloured_and_on_the_surface(addon, blender, mug):
    scene, degraded = mug
    options = BuildOptions(fusion="TSDF", object_mode=True, output_points=False,
                           output_cameras=False)
    collection = addon.api.import_prediction(degraded.prediction, options, name="mug")
    surface = surface_of(collection)
    verts, _, faces_per_edge = mesh_arrays(surface.data)
    assert len(surface.data.polygons) > 1000
    assert np.all(faces_per_edge == 2), "the fused object must be closed"
    assert surface.data.color_attributes, "vertex colours from the images"
    assert surface.data.materials[0] is not None
    assert not surface.data.copy().validate(verbose=False), "Blender found something to fix"
    assert_edges_as_blender_derives(surface.data)

    import mathutils.kdtree
    tree = mathutils.kdtree.KDTree(len(scene.surface))
    for i, p in enumerate(scene.surface):
        tree.insert(p, i)
    tree.balance()
    world = to_scene_frame(verts, degraded, collection["da3_scale"])
    sample = world[:: max(1, len(world) // 3000)]
    distances = np.array([tree.find(p)[2] for p in sample])
    assert np.median(distances) < 0.01 * scene.size


def assert_edges_as_blender_derives(mesh):
    """The surface's edges (computed in numpy off the main thread) are exactly those Blender
    derives itself from the same faces."""
    import bpy

    n = len(mesh.loops)
    corners = np.empty(n, np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corners)
    co = np.empty(3 * len(mesh.vertices), np.float32)
    mesh.vertices.foreach_get("co", co)
    derived = bpy.data.meshes.new("derived")
    derived.from_pydata(co.reshape(-1, 3).tolist(), [], corners.reshape(-1, 3).tolist())
    derived.update(calc_edges=True)

    def edge_set(m):
        e = np.empty(2 * len(m.edges), np.int32)
        m.edges.foreach_get("vertices", e)
        return np.unique(np.sort(e.reshape(-1, 2), axis=1), axis=0)

    assert np.array_equal(edge_set(mesh), edge_set(derived))


def test_crop_object_bounds_the_fused_surface(addon, blender, mug):
    _, degraded = mug
    bpy = blender
    # A first import tells where the object is; crop to a box around its lower half.
    full = addon.api.import_prediction(degraded.prediction, BuildOptions(
        fusion="TSDF", output_points=False, output_cameras=False), name="full")
    verts, _, _ = mesh_arrays(surface_of(full).data)
    low, high = np.percentile(verts, 5, axis=0), np.percentile(verts, 95, axis=0)
    box = bpy.data.objects.new("crop", None)
    bpy.context.scene.collection.objects.link(box)
    box.empty_display_size = 1.0
    box.location = (low + high) / 2
    box.scale = (high - low) / 4  # half the object's extent on every axis
    cropped = addon.api.import_prediction(degraded.prediction, BuildOptions(
        fusion="TSDF", output_points=False, output_cameras=False, crop_object="crop"),
        name="cropped")
    surface = surface_of(cropped)
    kept, _, _ = mesh_arrays(surface.data)
    voxel = surface["da3_voxel_size"]
    inner_low = np.array(box.location) - np.array(box.scale) - 2 * voxel
    inner_high = np.array(box.location) + np.array(box.scale) + 2 * voxel
    assert len(kept) > 0
    assert np.all((kept >= inner_low) & (kept <= inner_high))


def test_the_operator_fuses_with_tsdf_by_default(blender, mug, tmp_path):
    assert BuildOptions().fusion == "TSDF"
    path = save_prediction(mug[1].prediction, tmp_path / "mug.npz")
    assert blender.ops.da3.import_prediction(filepath=str(path)) == {"FINISHED"}
    collection = blender.data.collections["mug"]
    assert surface_of(collection).get("da3_voxel_size", 0) > 0
    assert sum(o.get("da3_role") == "camera" for o in collection.objects) == 24


def with_worker_fusion(pred, **settings):
    """The prediction as the worker writes it after fusing (engine.worker.fuse)."""
    import copy
    import json

    from engine import fusion

    mesh = fusion.fuse_tsdf(pred, fusion.TSDFOptions(**settings))
    out = copy.copy(pred)
    out.fused_vertices, out.fused_faces, out.fused_colors = mesh.vertices, mesh.faces, mesh.colors
    out.fused_settings = json.dumps({**settings, "voxel_size": mesh.voxel_size,
                                     "truncation": mesh.truncation, "device": "numpy"})
    return out, mesh


def test_the_importer_reuses_the_workers_fusion_when_settings_match(addon, blender, mug,
                                                                      tmp_path):
    pred, mesh = with_worker_fusion(mug[1].prediction, object_mode=True, mask_sky=True)
    path = save_prediction(pred, tmp_path / "fused.npz")
    options = BuildOptions(object_mode=True, output_points=False, output_cameras=False)
    reused = surface_of(addon.api.import_prediction(path, options, name="reused"))
    assert reused["da3_fused_in"] == "worker"
    assert len(reused.data.polygons) == len(mesh.faces)
    assert reused["da3_voxel_size"] > 0
    # Other settings than the worker's: fused again here, never a mismatched surface.
    other = BuildOptions(object_mode=False, output_points=False, output_cameras=False)
    again = surface_of(addon.api.import_prediction(path, other, name="again"))
    assert again["da3_fused_in"] == "blender"
