"""Importing predictions into real Blender: geometry where it belongs, cameras that reproject,
clean failures, and the operator matching the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_scenes import (
    BOX_HIGH,
    BOX_LOW,
    PLANE_Z,
    blender_to_world,
    distance_to_scene,
    make_prediction,
)

from engine.core.options import BuildOptions
from engine.core.prediction import save_prediction

ROLES = {"points", "view_mesh", "surface", "camera", "camera_track"}
TRACKED = ("collections", "objects", "meshes", "materials", "cameras", "images", "node_groups",
           "actions")


def vertices_of(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3) @ np.array(obj.matrix_world)[:3, :3].T + np.array(obj.matrix_world)[:3, 3]


def by_role(collection, role):
    return [o for o in collection.all_objects if o.get("da3_role") == role]


def counts(bpy):
    return {kind: len(getattr(bpy.data, kind)) for kind in TRACKED}


@pytest.fixture
def everything():
    return BuildOptions(output_points=True, output_view_meshes=True, output_surface=True,
                        output_cameras=True)


# --- geometry lands where it should ------------------------------------------------------------

def test_points_land_on_the_true_surface(addon, everything):
    pred, _ = make_prediction(depth_scale=0.37)
    coll = addon.api.import_prediction(pred, everything, name="synthetic")
    (points,) = by_role(coll, "points")
    world = blender_to_world(vertices_of(points), pred.extrinsics, coll["da3_scale"], 0.37)
    assert len(world) > 0.8 * pred.depth.size
    assert distance_to_scene(world).max() < 1e-4


def test_relative_scale_puts_the_median_depth_at_two_metres(addon):
    pred, _ = make_prediction(n_views=1, depth_scale=7.0)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    assert not coll["da3_is_metric"]
    (points,) = by_role(coll, "points")
    forward = vertices_of(points)[:, 1]  # view 0 looks along +Y
    assert np.median(forward) == pytest.approx(2.0, rel=0.02)


def test_metric_predictions_stay_in_metres(addon):
    pred, _ = make_prediction(metric=True)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    assert coll["da3_is_metric"] and coll["da3_scale"] == 1.0
    (points,) = by_role(coll, "points")
    world = blender_to_world(vertices_of(points), pred.extrinsics, 1.0)
    assert distance_to_scene(world).max() < 1e-4


def test_the_first_camera_stands_upright_at_the_origin(addon):
    pred, _ = make_prediction()
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False, output_points=False))
    cam = next(o for o in by_role(coll, "camera") if o["da3_view_index"] == 0)
    m = np.array(cam.matrix_world)
    assert np.allclose(m[:3, 3], 0, atol=1e-6)
    assert np.allclose(m[:3, 1], [0, 0, 1], atol=1e-6)  # camera up is +Z
    assert np.allclose(-m[:3, 2], [0, 1, 0], atol=1e-6)  # looking along +Y


def test_cameras_reproject_known_points_to_their_pixels(blender, addon):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    pred, poses = make_prediction(n_views=3, width=80, height=60, depth_scale=0.5)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False, output_points=False))
    scene = blender.context.scene
    assert (scene.render.resolution_x, scene.render.resolution_y) == (80, 60)
    known = np.array([[*BOX_LOW[:2], BOX_LOW[2]], [BOX_HIGH[0], BOX_LOW[1], BOX_LOW[2]],
                      [0.5, -0.3, BOX_LOW[2]], [2.0, 1.5, PLANE_Z]])
    to_blender = _world_to_blender(pred.extrinsics, coll["da3_scale"], 0.5)
    for cam in by_role(coll, "camera"):
        i = cam["da3_view_index"]
        expected = _project(pred.intrinsics[i], np.linalg.inv(poses[i]), known)
        for point, (u, v) in zip(to_blender(known), expected, strict=True):
            ndc = world_to_camera_view(scene, cam, Vector(point.tolist()))
            assert ndc.x * 80 == pytest.approx(u, abs=1e-3)
            assert (1 - ndc.y) * 60 == pytest.approx(v, abs=1e-3)


def _project(k, w2c, points):
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    pix = cam @ k.T
    return pix[:, :2] / pix[:, 2:]


def _world_to_blender(extrinsics, scale, depth_scale):
    cv_to_blender = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    w2c0 = np.eye(4)
    w2c0[:3] = extrinsics[0]
    return lambda pts: scale * ((pts * depth_scale) @ w2c0[:3, :3].T + w2c0[:3, 3]) @ cv_to_blender.T


def test_view_meshes_never_bridge_the_box_outline(addon):
    pred, _ = make_prediction(n_views=2, depth_scale=1.0)
    coll = addon.api.import_prediction(pred, BuildOptions(output_view_meshes=True,
                                                          output_surface=False))
    meshes = by_role(coll, "view_mesh")
    assert sorted(o["da3_view_index"] for o in meshes) == [0, 1]
    for obj in meshes:
        verts = blender_to_world(vertices_of(obj), pred.extrinsics, coll["da3_scale"])
        centroids = face_centres(obj.data, verts)
        assert len(centroids) > 500
        # A triangle across the outline has its centre in mid-air, a metre from any surface.
        assert distance_to_scene(centroids).max() < 0.05


def face_centres(mesh, verts):
    """Centre of every face of ``mesh`` (triangles and quads alike) over ``verts``."""
    corners = np.empty(len(mesh.loops), np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corners)
    starts = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_start", starts)
    sizes = np.diff(np.append(starts, len(corners)))
    return np.add.reduceat(verts[corners], starts, axis=0) / sizes[:, None]


def test_remeshed_surface_exists_and_keeps_colours(addon):
    """Vertex colours, and the material that shows them when no texture is asked for."""
    pred, _ = make_prediction(n_views=3, width=96, height=72, focal=90.0)
    coll = addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", output_points=False,
                                                          output_cameras=False, texture=False))
    (surface,) = by_role(coll, "surface")
    mesh = surface.data
    assert len(mesh.polygons) > 1000 and surface["da3_voxel_size"] > 0
    colors = np.empty(len(mesh.vertices) * 4, np.float32)
    mesh.color_attributes["Col"].data.foreach_get("color", colors)
    colors = colors.reshape(-1, 4)
    red = (colors[:, 0] > 0.3) & (colors[:, 1] < 0.1)
    green = (colors[:, 1] > 0.2) & (colors[:, 0] < 0.1)
    assert red.mean() > 0.05 and green.mean() > 0.3
    assert mesh.materials[0].node_tree.nodes.get("Attribute").attribute_name == "Col"


def test_remeshed_surface_lies_on_the_scene_and_has_no_holes(blender, addon):
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    pred, _ = make_prediction(n_views=3, width=120, height=90, focal=100.0, with_box=False)
    coll = addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", output_points=False,
                                                          output_cameras=False))
    (surface,) = by_role(coll, "surface")
    voxel, scale = surface["da3_voxel_size"], coll["da3_scale"]
    world = blender_to_world(vertices_of(surface), pred.extrinsics, scale)
    distance = distance_to_scene(world, with_box=False) * scale  # in scene units
    assert np.median(distance) < voxel and distance.max() < 2.5 * voxel
    # Rays from view 0 through the middle of its image all meet the surface: no pinholes.
    tree = BVHTree.FromObject(surface, blender.context.evaluated_depsgraph_get())
    misses = 0
    for x in np.linspace(-0.4, 0.4, 25):
        for z in np.linspace(-0.3, 0.3, 19):
            location, *_ = tree.ray_cast(Vector((0, 0, 0)), Vector((x, 1.0, z)).normalized())
            misses += location is None
    assert misses == 0


def test_specks_of_stray_pixels_leave_no_islands(blender, addon):
    pred, _ = make_prediction(n_views=1, width=120, height=90, focal=100.0, with_box=False)
    pred.depth[0, 10:16, 10:16] *= 0.5  # a few pixels floating in mid-air
    coll = addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", output_points=False,
                                                          output_cameras=False))
    import bmesh

    bm = bmesh.new()
    bm.from_mesh(by_role(coll, "surface")[0].data)
    seen, parts = set(), 0
    for face in bm.faces:  # count connected parts
        if face.index in seen:
            continue
        parts += 1
        stack = [face]
        while stack:
            f = stack.pop()
            if f.index in seen:
                continue
            seen.add(f.index)
            stack.extend(g for e in f.edges for g in e.link_faces if g.index not in seen)
    bm.free()
    assert parts == 1


def test_a_requested_voxel_size_is_used_and_an_absurd_one_refused(blender, addon):
    pred, _ = make_prediction(n_views=2)
    coll = addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", output_points=False,
                                                          voxel_size=0.05))
    assert by_role(coll, "surface")[0]["da3_voxel_size"] == pytest.approx(0.05)
    before = counts(blender)
    with pytest.raises(ValueError, match="too fine"):
        addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", voxel_size=1e-6))
    assert counts(blender) == before


def test_points_render_as_coloured_points(blender, addon):
    pred, _ = make_prediction(n_views=1)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    (points,) = by_role(coll, "points")
    count, names, material, radius = rendered_points(blender, points)
    assert count == len(points.data.vertices) > 0
    assert {"Col", "radius"} <= names
    assert material == points.data.materials[0]
    assert 0 < radius[0] < 0.05


def test_the_point_budget_thins_the_rendered_points(blender, addon):
    pred, _ = make_prediction(n_views=2)
    every = addon.api.import_prediction(pred, BuildOptions(output_surface=False, max_points=0))
    thinned = addon.api.import_prediction(pred, BuildOptions(output_surface=False, max_points=2000))
    (all_points,), (points,) = by_role(every, "points"), by_role(thinned, "points")
    assert len(all_points.data.vertices) > 4000
    count, _, _, radius = rendered_points(blender, points)
    assert count == len(points.data.vertices) == 2000
    # the thinned points are some of all of them, and drawn larger to cover the gaps
    mine = {tuple(np.round(p, 5)) for p in vertices_of(all_points)}
    assert all(tuple(np.round(p, 5)) in mine for p in vertices_of(points))
    full_radius = rendered_points(blender, all_points)[3][0]
    ratio = np.sqrt(len(all_points.data.vertices) / 2000)
    assert radius[0] == pytest.approx(full_radius * ratio, rel=1e-4)


def rendered_points(blender, obj):
    """(count, attribute names, material, radii) of the point cloud the renderer gets from
    ``obj``: Object.evaluated_geometry on 4.3+, the depsgraph's instances on 4.2."""
    depsgraph = blender.context.evaluated_depsgraph_get()

    def facts(cloud):
        radius = np.empty(len(cloud.points), np.float32)
        cloud.attributes["radius"].data.foreach_get("value", radius)
        return (len(cloud.points), {a.name for a in cloud.attributes}, cloud.materials[0].original,
                radius)

    evaluated = obj.evaluated_get(depsgraph)
    if hasattr(evaluated, "evaluated_geometry"):
        geometry = evaluated.evaluated_geometry()  # keep it alive while reading
        return facts(geometry.pointcloud)
    for instance in depsgraph.object_instances:
        if instance.object.original == obj and instance.object.type == "POINTCLOUD":
            return facts(instance.object.data)
    raise AssertionError("no point cloud is rendered")


def test_points_render_in_cycles_with_the_input_colours(blender, addon, tmp_path):
    pred, _ = make_prediction(n_views=1, width=64, height=48)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    scene = blender.context.scene
    scene.camera = by_role(coll, "camera")[0]
    addon.cli.light_evenly(scene)  # the same white world on 4.2 (colour) and 5.0 (nodes)
    scene.render.engine, scene.cycles.samples = "CYCLES", 4
    scene.render.filepath = str(tmp_path / "render.png")
    blender.ops.render.render(write_still=True)
    image = blender.data.images.load(scene.render.filepath)
    pixels = np.array(image.pixels[:]).reshape(48, 64, 4)[::-1]  # top row first
    centre, corner = pixels[24, 32], pixels[3, 3]  # the red box, the green wall
    # Under white light the AgX view transform desaturates: the right channel leads, twice over.
    assert centre[0] > 2 * max(centre[1], centre[2]) and corner[1] > 2 * max(corner[0], corner[2])


def test_every_object_has_a_role_and_one_collection_holds_them(blender, addon, everything):
    before = {c.name for c in blender.data.collections}
    pred, _ = make_prediction(n_views=3)
    coll = addon.api.import_prediction(pred, everything, name="tagged")
    assert {c.name for c in blender.data.collections} - before == {"tagged"}
    assert coll.name in blender.context.scene.collection.children
    roles = [o["da3_role"] for o in coll.all_objects]
    assert set(roles) <= ROLES
    assert roles.count("camera") == 3 and roles.count("points") == 1 and roles.count("surface") == 1
    assert sorted(o["da3_view_index"] for o in by_role(coll, "camera")) == [0, 1, 2]


def test_cameras_carry_the_frame_as_a_packed_background(addon):
    pred, _ = make_prediction(n_views=2)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    for cam in by_role(coll, "camera"):
        background = cam.data.background_images[0]
        assert background.image.packed_file is not None
        assert tuple(background.image.size) == (pred.width, pred.height)
        pixels = np.array(background.image.pixels[:]).reshape(pred.height, pred.width, 4)
        top_row = pred.image[cam["da3_view_index"], 0]  # Blender stores the bottom row first
        assert np.allclose(pixels[-1, :, :3] * 255, top_row, atol=1)


def test_the_result_survives_saving_and_reopening(blender, addon, tmp_path):
    pred, _ = make_prediction(n_views=2)
    addon.api.import_prediction(pred, BuildOptions(output_view_meshes=True), name="saved")
    path = str(tmp_path / "scene.blend")
    blender.ops.wm.save_as_mainfile(filepath=path)
    blender.ops.wm.open_mainfile(filepath=path)
    coll = blender.data.collections["saved"]
    assert {o["da3_role"] for o in coll.all_objects} == {"points", "view_mesh", "surface", "camera"}
    cam = next(o for o in by_role(coll, "camera") if o["da3_view_index"] == 1)
    pixels = np.array(cam.data.background_images[0].image.pixels[:]).reshape(pred.height,
                                                                              pred.width, 4)
    assert np.allclose(pixels[::-1, :, :3] * 255, pred.image[1], atol=1)


def test_a_video_gets_an_animated_camera_track(blender, addon):
    pred, _ = make_prediction(n_views=4, video=True)
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    (track,) = by_role(coll, "camera_track")
    scene = blender.context.scene
    for i, frame in enumerate(pred.frame_indices):
        scene.frame_set(int(frame) + 1)
        view = next(o for o in by_role(coll, "camera") if o["da3_view_index"] == i)
        assert np.allclose(np.array(track.matrix_world), np.array(view.matrix_world), atol=1e-4)


def test_crop_object_keeps_only_what_is_inside(blender, addon):
    pred, _ = make_prediction(n_views=1)
    crop = blender.data.objects.new("crop", None)  # an empty: its bounds are the unit cube
    blender.context.scene.collection.objects.link(crop)
    crop.location, crop.scale = (0.0, 1.1, 0.0), (0.2, 0.2, 0.2)  # around the box front
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False,
                                                          crop_object="crop"))
    verts = vertices_of(by_role(coll, "points")[0])
    assert len(verts) > 0
    assert np.all(np.abs(verts - [0.0, 1.1, 0.0]) <= 0.2 + 1e-5)
    assert tuple(crop.location) == pytest.approx((0.0, 1.1, 0.0))


def test_sky_pixels_are_left_out(addon):
    pred, _ = make_prediction(n_views=1, depth_scale=1.0)
    pred.sky = np.zeros(pred.depth.shape, bool)
    pred.sky[:, : pred.height // 2] = True
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    kept = len(by_role(coll, "points")[0].data.vertices)
    assert kept < 0.55 * pred.depth.size


def test_low_confidence_is_dropped_like_da3s_exporter(addon):
    pred, _ = make_prediction(n_views=1)
    pred.conf[:, :, : pred.width // 2] = 1.0  # below DA3's floor of 1.05
    coll = addon.api.import_prediction(pred, BuildOptions(output_surface=False))
    assert coll["da3_conf_threshold"] == pytest.approx(1.05)
    assert len(by_role(coll, "points")[0].data.vertices) < 0.55 * pred.depth.size


# --- files and the operator ---------------------------------------------------------------------

def test_operator_reads_a_file_like_the_api(blender, addon, tmp_path):
    pred, _ = make_prediction(n_views=2)
    path = save_prediction(pred, tmp_path / "room.npz")
    assert blender.ops.da3.import_prediction(filepath=str(path), output_surface=False) == {"FINISHED"}
    by_operator = blender.data.collections["room"]
    by_api = addon.api.import_prediction(path, BuildOptions(output_surface=False), name="api")
    a, b = (vertices_of(by_role(c, "points")[0]) for c in (by_operator, by_api))
    assert np.array_equal(a, b)


def test_official_mini_npz_without_images_imports(blender, tmp_path):
    pred, _ = make_prediction(n_views=2)
    path = tmp_path / "mini.npz"
    np.savez_compressed(path, depth=pred.depth, conf=pred.conf, extrinsics=pred.extrinsics,
                        intrinsics=pred.intrinsics)
    assert blender.ops.da3.import_prediction(filepath=str(path)) == {"FINISHED"}
    coll = blender.data.collections["mini"]
    assert {o["da3_role"] for o in coll.all_objects} == {"points", "surface", "camera"}
    assert all(not o.data.background_images for o in by_role(coll, "camera"))


def test_a_monocular_prediction_imports(blender, tmp_path):
    """da3metric/da3mono output: one view, depth + sky, no confidence, no extrinsics."""
    pred, _ = make_prediction(n_views=1)
    sky = np.zeros(pred.depth.shape, bool)
    sky[:, :5] = True
    path = tmp_path / "mono.npz"
    np.savez(path, depth=pred.depth, intrinsics=pred.intrinsics, image=pred.image, sky=sky,
             is_metric=np.array(True))
    assert blender.ops.da3.import_prediction(filepath=str(path)) == {"FINISHED"}
    coll = blender.data.collections["mono"]
    assert coll["da3_is_metric"] and coll["da3_scale"] == 1.0
    assert len(by_role(coll, "points")[0].data.vertices) < pred.depth.size - 5 * pred.width


DATA = Path(__file__).parent / "data"


def test_random_weight_views_seen_edge_on_import_without_crashing(blender):
    """A real two-view prediction of da3-small with random weights: fy = 2.1e7, so the views
    see their pixels almost edge-on. Slabs of those had no volume and crashed Blender's
    remesher; now edge-on triangles stay out of the remesh input."""
    path = DATA / "random_weights_two_views.npz"
    assert blender.ops.da3.import_prediction(filepath=str(path)) == {"FINISHED"}
    coll = blender.data.collections["random_weights_two_views"]
    roles = {o["da3_role"] for o in coll.all_objects}
    assert roles >= {"points", "camera"} and ("surface" in roles or "da3_notes" in coll)


@pytest.mark.parametrize("fusion", ["TSDF", "REMESH"])
def test_a_scene_seen_only_edge_on_keeps_points_and_cameras_without_a_surface(blender, addon,
                                                                            fusion):
    pred, _ = make_prediction(n_views=1, with_box=False)
    pred.intrinsics[:, 1, 1] = 1e9  # no vertical field of view: all rays in one plane
    coll = addon.api.import_prediction(pred, BuildOptions(fusion=fusion))
    assert {o["da3_role"] for o in coll.all_objects} == {"points", "camera"}
    assert coll["da3_notes"].startswith("no TSDF surface" if fusion == "TSDF" else "no surface")


def test_import_is_in_the_file_import_menu(blender, addon):
    draw_funcs = blender.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    assert addon.operators.import_prediction.menu_import in draw_funcs


def test_operator_is_undoable(blender, addon, tmp_path):
    op = addon.operators.import_prediction.DA3_OT_import_prediction
    assert {"REGISTER", "UNDO"} <= op.bl_options
    path = save_prediction(make_prediction(n_views=2)[0], tmp_path / "undo.npz")
    blender.ops.ed.undo_push(message="before import")
    before, resolution = counts(blender), resolution_of(blender)
    blender.ops.da3.import_prediction("EXEC_DEFAULT", True, filepath=str(path))
    assert counts(blender) != before
    blender.ops.ed.undo()
    assert counts(blender) == before
    assert "undo" not in blender.data.collections
    assert resolution_of(blender) == resolution


# --- failures leave nothing behind ----------------------------------------------------------------

def _bad_files(tmp_path):
    pred, _ = make_prediction(n_views=2)
    good = dict(depth=pred.depth, conf=pred.conf, extrinsics=pred.extrinsics,
                intrinsics=pred.intrinsics, image=pred.image)
    nan, negative, no_focal = pred.depth.copy(), pred.depth.copy(), pred.intrinsics.copy()
    nan[0, 3, 3], negative[1, 2, 2], no_focal[1, 0, 0] = np.nan, -1.0, 0.0
    cases = {
        "missing_keys": {k: v for k, v in good.items() if k != "intrinsics"},
        "shape_mismatch": {**good, "conf": pred.conf[:, :-1]},
        "nan_depth": {**good, "depth": nan},
        "inf_depth": {**good, "depth": np.where(nan != nan, np.inf, nan)},
        "negative_depth": {**good, "depth": negative},
        "zero_views": {**good, "depth": pred.depth[:0], "intrinsics": pred.intrinsics[:0],
                       "extrinsics": pred.extrinsics[:0], "conf": pred.conf[:0],
                       "image": pred.image[:0]},
        "zero_focal": {**good, "intrinsics": no_focal},
    }
    paths = {}
    for name, arrays in cases.items():
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], **arrays)
    paths["not_an_npz"] = tmp_path / "not_an_npz.npz"
    paths["not_an_npz"].write_text("this is not a zip archive")
    paths["missing_file"] = tmp_path / "nowhere.npz"
    return paths


BAD = ("missing_keys", "shape_mismatch", "nan_depth", "inf_depth", "negative_depth", "zero_views",
       "zero_focal", "not_an_npz", "missing_file")


@pytest.mark.parametrize("case", BAD)
def test_bad_files_fail_in_one_line_and_leave_nothing(blender, tmp_path, case):
    path = _bad_files(tmp_path)[case]
    before = counts(blender)
    with pytest.raises(RuntimeError) as err:
        blender.ops.da3.import_prediction(filepath=str(path))
    message = str(err.value).strip()
    assert message.startswith("Error:") and "\n" not in message and "Traceback" not in message
    assert counts(blender) == before


def test_a_failure_mid_build_removes_what_was_made(blender, addon, everything, monkeypatch):
    pred, _ = make_prediction(n_views=2)
    before = counts(blender)
    resolution = resolution_of(blender)

    def explode(build, data):
        raise addon.engine.core.prediction.PredictionError("simulated failure after the cameras")
        yield

    result = addon.builder.result
    boom = result.Part("output_cameras", "boom", "failing", None, explode)
    monkeypatch.setattr(result, "_PARTS", result._PARTS + (boom,))
    with pytest.raises(ValueError, match="simulated"):
        addon.api.import_prediction(pred, everything)
    assert counts(blender) == before
    assert resolution_of(blender) == resolution


def test_stepping_without_waiting_builds_the_same_result(blender, addon, everything, tmp_path):
    """The UI's way: steps that never wait for the threads, until done."""
    pred, _ = make_prediction(n_views=3)
    path = save_prediction(pred, tmp_path / "stepped.npz")
    staged = addon.api.start_import(path, everything)
    steps = 0
    while not staged.step():
        steps += 1
    stepped = {o["da3_role"] for o in staged.collection.all_objects}
    blocking = addon.api.import_prediction(path, everything, name="blocking")
    assert stepped == {o["da3_role"] for o in blocking.all_objects}
    assert steps > len(stepped)  # Blender's work came in several steps
    assert staged.collection.name == "stepped"


def test_a_long_videos_cameras_come_a_few_per_step(blender, addon):
    """A 300-frame video's 300 cameras were made in one step of the main thread (1.5 s of PNG
    encoding there): now the frames are encoded on the threads and the cameras come at most
    CAMERAS_PER_STEP a step, each still with its own frame."""
    per_step = addon.builder.cameras.CAMERAS_PER_STEP
    pred, _ = make_prediction(n_views=2 * per_step + 5, width=32, height=24, video=True)
    staged = addon.api.start_import(pred, BuildOptions(output_points=False, output_surface=False),
                                    name="long video")
    made = [0]
    while not staged.step(wait=True):
        made.append(len(by_role(staged.collection, "camera")) if staged.collection else 0)
    cameras = by_role(staged.collection, "camera")
    assert len(cameras) == pred.num_views
    assert max(np.diff(made)) <= per_step and len(set(made)) > 3  # several steps made them
    for cam in cameras[::7]:
        image = cam.data.background_images[0].image
        pixels = np.array(image.pixels[:]).reshape(pred.height, pred.width, 4)
        assert np.allclose(pixels[::-1, :, :3] * 255, pred.image[cam["da3_view_index"]], atol=1)


def test_cancel_mid_import_leaves_nothing(blender, addon, everything):
    pred, _ = make_prediction(n_views=3)
    before = counts(blender)
    staged = addon.api.start_import(pred, everything)
    while staged.collection is None or not len(staged.collection.all_objects):
        assert not staged.step()
    staged.cancel()
    assert counts(blender) == before


def test_a_finished_import_is_never_undone_by_a_late_cancel(blender, addon, everything):
    pred, _ = make_prediction(n_views=2)
    staged = addon.api.start_import(pred, everything, name="kept")
    collection = staged.run()
    staged.cancel()  # e.g. Esc arriving in the same tick as the last step
    assert "kept" in blender.data.collections and len(collection.all_objects) > 0


def test_nothing_survives_the_filters_is_an_error(blender, addon):
    pred, _ = make_prediction(n_views=1)
    far_away = blender.data.objects.new("far away", None)
    blender.context.scene.collection.objects.link(far_away)
    far_away.location = (100.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no pixel survives"):
        addon.api.import_prediction(pred, BuildOptions(crop_object="far away"))
    assert "DA3 Prediction" not in blender.data.collections


def resolution_of(bpy):
    render = bpy.context.scene.render
    return render.resolution_x, render.resolution_y


def test_meshes_built_from_arrays_are_valid(addon):
    pred, _ = make_prediction(n_views=2)
    coll = addon.api.import_prediction(pred, BuildOptions(output_view_meshes=True))
    for obj in by_role(coll, "view_mesh") + by_role(coll, "surface") + by_role(coll, "points"):
        assert obj.data.validate() is False, f"{obj.name} needed fixing"
