"""fusion='TSDF' through the importer: the fused surface lands in Blender closed, coloured and
on the true surface (scene rendered with Cycles, degraded like DA3: see tests/scenes.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.core import geometry
from engine.core.options import BuildOptions
from engine.core.prediction import save_prediction

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
    """Through the face budget: Blender's voxel remesher, so still one closed skin."""
    scene, degraded = mug
    options = BuildOptions(fusion="TSDF", object_mode=True, output_points=False,
                           output_cameras=False, max_faces=20_000)
    collection = addon.api.import_prediction(degraded.prediction, options, name="mug")
    surface = surface_of(collection)
    verts, _, _ = mesh_arrays(surface.data)
    assert 1000 < len(surface.data.polygons) <= 20_000
    assert surface["da3_faces"] == len(surface.data.polygons)
    assert boundary_and_non_manifold_edges(surface.data) == (0, 0), "the fused object must be closed"
    assert_coloured(surface.data)
    assert surface.data.materials[0] is not None
    assert not surface.data.copy().validate(verbose=False), "Blender found something to fix"

    import mathutils.kdtree
    tree = mathutils.kdtree.KDTree(len(scene.surface))
    for i, p in enumerate(scene.surface):
        tree.insert(p, i)
    tree.balance()
    world = to_scene_frame(verts, degraded, collection["da3_scale"])
    sample = world[:: max(1, len(world) // 3000)]
    distances = np.array([tree.find(p)[2] for p in sample])
    assert np.median(distances) < 0.01 * scene.size


def boundary_and_non_manifold_edges(mesh) -> tuple[int, int]:
    """Counted by bmesh, independently of the engine's own closedness checks."""
    import bmesh

    bm = bmesh.new()
    bm.from_mesh(mesh)
    try:
        return (sum(e.is_boundary for e in bm.edges),
                sum(not e.is_manifold and not e.is_boundary for e in bm.edges))
    finally:
        bm.free()


def colors_of(mesh) -> np.ndarray:
    attribute = mesh.color_attributes["Col"]
    assert (attribute.domain, attribute.data_type) == ("POINT", "FLOAT_COLOR")
    colors = np.empty(4 * len(mesh.vertices), np.float32)
    attribute.data.foreach_get("color", colors)
    return colors.reshape(-1, 4)


def assert_coloured(mesh):
    """The images' colours came through: in range, opaque, not one flat colour."""
    colors = colors_of(mesh)
    assert mesh.color_attributes.active_color_name == "Col"
    assert np.all((colors >= 0) & (colors <= 1)) and np.allclose(colors[:, 3], 1)
    assert colors[:, :3].std(axis=0).max() > 0.02


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
        fusion="TSDF", output_points=False, output_cameras=False, max_faces=0), name="full")
    verts, _, _ = mesh_arrays(surface_of(full).data)
    low, high = np.percentile(verts, 5, axis=0), np.percentile(verts, 95, axis=0)
    box = bpy.data.objects.new("crop", None)
    bpy.context.scene.collection.objects.link(box)
    box.empty_display_size = 1.0
    box.location = (low + high) / 2
    box.scale = (high - low) / 4  # half the object's extent on every axis
    cropped = addon.api.import_prediction(degraded.prediction, BuildOptions(
        fusion="TSDF", output_points=False, output_cameras=False, crop_object="crop",
        max_faces=0), name="cropped")
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
    assert 0 < surface_of(collection)["da3_faces"] <= BuildOptions().max_faces
    assert sum(o.get("da3_role") == "camera" for o in collection.objects) == 24


def with_worker_fusion(pred, options: BuildOptions):
    """The prediction as the worker writes it after fusing (engine.worker.process.fuse)."""
    import copy

    from engine.core.options import fusion_settings
    from engine.fusion.base import TSDFOptions
    from engine.fusion.tsdf import fuse_tsdf
    from engine.worker.process import fusion_record

    settings = fusion_settings(options)
    mesh = fuse_tsdf(pred, TSDFOptions(**settings))
    out = copy.copy(pred)
    out.fused_vertices, out.fused_faces, out.fused_colors = mesh.vertices, mesh.faces, mesh.colors
    out.fused_settings = fusion_record(settings, mesh)
    return out, mesh


def test_the_importer_reuses_the_workers_fusion_when_settings_match(addon, blender, mug,
                                                                      tmp_path):
    options = BuildOptions(object_mode=True, output_points=False, output_cameras=False,
                           max_faces=0)
    pred, mesh = with_worker_fusion(mug[1].prediction, options)
    # object mode moved the cameras until the outlines agreed: the texture needs those moves
    assert np.array(json.loads(pred.fused_settings)["camera_moves"]).shape == (pred.num_views, 3)
    path = save_prediction(pred, tmp_path / "fused.npz")
    reused = surface_of(addon.api.import_prediction(path, options, name="reused"))
    assert reused["da3_fused_in"] == "worker"
    assert len(reused.data.polygons) == len(mesh.faces), "max_faces=0 leaves the surface as fused"
    assert reused["da3_faces"] == len(mesh.faces)
    assert_edges_as_blender_derives(reused.data)
    assert reused["da3_voxel_size"] > 0
    # Other settings than the worker's: fused again here, never a mismatched surface.
    other = BuildOptions(object_mode=False, output_points=False, output_cameras=False,
                         max_faces=0)
    again = surface_of(addon.api.import_prediction(path, other, name="again"))
    assert again["da3_fused_in"] == "blender"


def test_the_fusion_starts_beside_the_filter_and_fuses_alike(addon, monkeypatch):
    """The fusion needs nothing of the filter (no voxel size or crop box in the result's units):
    it begins as soon as the file is read, and its surface is the one a fusion begun after the
    filter makes."""
    from synthetic_scenes import make_prediction

    pred, _ = make_prediction(n_views=4, width=96, height=72, focal=90.0)
    options = BuildOptions(fusion="TSDF", output_points=False, output_cameras=False, texture=False)
    surface, geometry_module, result = addon.builder.surface, addon.engine.core.geometry, addon.builder.result
    fusing, filtered_alone = threading.Event(), []
    fuse, prepare = surface.fuse_tsdf, geometry_module.prepare

    def fuse_and_say_so(*args, **kwargs):
        fusing.set()
        return fuse(*args, **kwargs)

    def filter_once_the_fusion_runs(*args, **kwargs):  # never, if the fusion waits for the filter
        filtered_alone.append(not fusing.wait(timeout=20))
        return prepare(*args, **kwargs)

    monkeypatch.setattr(surface, "fuse_tsdf", fuse_and_say_so)
    monkeypatch.setattr(geometry_module, "prepare", filter_once_the_fusion_runs)
    early = surface_of(addon.api.import_prediction(pred, options, name="early"))
    assert filtered_alone == [False], "the fusion had not begun when the filter ended"
    late_parts = tuple(dataclasses.replace(part, start=None) for part in result._PARTS)
    monkeypatch.setattr(result, "_PARTS", late_parts)
    late = surface_of(addon.api.import_prediction(pred, options, name="late"))
    assert len(early.data.vertices) > 100
    assert np.array_equal(mesh_arrays(early.data)[0], mesh_arrays(late.data)[0])


# --- the face budget (max_faces) on small synthetic predictions --------------------------------

def polygon_area(mesh) -> float:
    areas = np.empty(len(mesh.polygons), np.float32)
    mesh.polygons.foreach_get("area", areas)
    return float(areas.sum())


def assert_plane_and_box_colours(mesh):
    colors = colors_of(mesh)
    red = (colors[:, 0] > 0.3) & (colors[:, 1] < 0.1)
    green = (colors[:, 1] > 0.2) & (colors[:, 0] < 0.1)
    assert red.mean() > 0.02 and green.mean() > 0.3


def test_an_open_surface_keeps_to_the_budget_never_remeshed(addon):
    """A scene's TSDF surface is open (walls seen from one side): it is fused again with
    coarser voxels (then decimated if still over), never voxel-remeshed, which would wrap each
    wall into a two-walled shell of twice the area."""
    from synthetic_scenes import make_prediction

    pred, _ = make_prediction(n_views=3, width=96, height=72, focal=90.0)
    options = {"fusion": "TSDF", "output_points": False, "output_cameras": False}
    whole = surface_of(addon.api.import_prediction(pred, BuildOptions(**options, max_faces=0)))
    budget = len(whole.data.polygons) // 20
    fitted = surface_of(addon.api.import_prediction(pred, BuildOptions(**options, max_faces=budget)))
    assert budget // 4 < len(fitted.data.polygons) <= budget
    assert fitted["da3_faces"] == len(fitted.data.polygons)
    boundary, _ = boundary_and_non_manifold_edges(fitted.data)
    assert boundary > 0, "still open"
    assert boundary_and_non_manifold_edges(whole.data)[0] > 0
    # 20x coarser loses a rim along the borders (0.79-0.81 of the area, fused at a 4.6-4.7x
    # coarser voxel); a doubled wall would be twice the area
    assert 0.75 < polygon_area(fitted.data) / polygon_area(whole.data) < 1.1
    assert_plane_and_box_colours(fitted.data)


def test_the_operator_keeps_a_remeshed_surface_to_the_budget(blender, tmp_path):
    """fusion='REMESH' is remeshed again, coarser, when its first remesh is over the budget."""
    from synthetic_scenes import make_prediction

    pred, _ = make_prediction(n_views=3, width=96, height=72, focal=90.0)
    path = save_prediction(pred, tmp_path / "walls.npz")
    assert blender.ops.da3.import_prediction(filepath=str(path), fusion="REMESH", max_faces=2000,
                                             output_points=False, output_cameras=False,
                                             texture=False) == {"FINISHED"}
    surface = surface_of(blender.data.collections["walls"])
    assert 1000 < len(surface.data.polygons) <= 2000
    assert boundary_and_non_manifold_edges(surface.data) == (0, 0)
    assert_plane_and_box_colours(surface.data)
    assert surface.data.materials[0].node_tree.nodes.get("Attribute").attribute_name == "Col"


def test_a_negative_face_budget_is_refused_in_one_line(addon):
    from importlib import import_module

    with pytest.raises(ValueError, match="max_faces must be 0 .no limit. or a number of faces"):
        BuildOptions(max_faces=-1)
    cli = import_module(f"{addon.__name__}.cli")
    args = cli.make_parser().parse_args(["photos", "-o", "out.blend", "--max-faces", "-1"])
    with pytest.raises(ValueError, match="max_faces"):
        cli.request_from(args)
    args = cli.make_parser().parse_args(["photos", "-o", "out.blend", "--max-faces", "5000"])
    assert cli.request_from(args).options.max_faces == 5000


def test_decimating_quads_keeps_to_the_budget(addon, blender):
    """Decimate counts triangles: a quad surface (the remesher's) over the budget still lands
    under it, coloured."""
    from importlib import import_module

    import bmesh

    surface = import_module(f"{addon.__name__}.builder.surface")
    meshes = import_module(f"{addon.__name__}.builder.meshes")
    mesh = blender.data.meshes.new("ball")
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=64, v_segments=32, radius=1.0)
    bm.to_mesh(mesh)
    bm.free()
    co = np.empty(3 * len(mesh.vertices), np.float32)
    mesh.vertices.foreach_get("co", co)
    meshes.set_colors(mesh, np.c_[(co.reshape(-1, 3) + 1) / 2, np.ones(len(mesh.vertices))],
                      len(mesh.vertices))
    obj = blender.data.objects.new("ball", mesh)
    assert len(mesh.polygons) == 2048 and max(p.loop_total for p in mesh.polygons) == 4
    open_fit = surface.Fit(closed=False, area=0.0, voxel=0.0)
    assert list(surface.fit_face_budget(blender.context, obj, open_fit, 0)) == []
    assert len(obj.data.polygons) == 2048, "max_faces=0 leaves it as it is"
    list(surface.fit_face_budget(blender.context, obj, open_fit, 500))
    assert 250 < len(obj.data.polygons) <= 500
    assert_coloured(obj.data)
