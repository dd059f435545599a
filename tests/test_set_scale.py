"""``da3.set_scale``: a known distance rescales the whole result; cameras keep their intrinsics."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_scenes import make_prediction

from engine.core.options import BuildOptions


def imported(addon, **kwargs):
    pred, _ = make_prediction(n_views=3, **kwargs)
    return addon.api.import_prediction(pred, BuildOptions(output_surface=False,
                                                          output_view_meshes=True))


def role(collection, name):
    return [o for o in collection.all_objects if o.get("da3_role") == name]


def select_only(bpy, objects, active):
    bpy.context.view_layer.update()  # new objects join the view layer on its next update
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in objects)
    bpy.context.view_layer.objects.active = active


def distance(a, b):
    return (a.matrix_world.translation - b.matrix_world.translation).length


def test_two_objects_set_the_scale(blender, addon):
    coll = imported(addon)
    cams = sorted(role(coll, "camera"), key=lambda o: o["da3_view_index"])
    lens = [c.data.lens for c in cams]
    scale_before, measured = coll["da3_scale"], distance(cams[0], cams[2])
    select_only(blender, cams[::2], cams[0])
    assert blender.ops.da3.set_scale(distance=3.0) == {"FINISHED"}
    blender.context.view_layer.update()
    factor = 3.0 / measured
    assert distance(cams[0], cams[2]) == pytest.approx(3.0, rel=1e-5)
    assert coll["da3_scale"] == pytest.approx(scale_before * factor)
    assert [c.data.lens for c in cams] == lens
    assert all(tuple(c.scale) == pytest.approx((1.0, 1.0, 1.0)) for c in cams)
    (points,) = role(coll, "points")
    assert tuple(points.scale) == pytest.approx((factor,) * 3)


def test_geometry_and_cameras_stay_aligned(blender, addon):
    """A point of the cloud still projects to the same pixel after rescaling."""
    from bpy_extras.object_utils import world_to_camera_view

    coll = imported(addon)
    (points,) = role(coll, "points")
    cam = role(coll, "camera")[1]
    vertex = points.data.vertices[len(points.data.vertices) // 2].co
    scene = blender.context.scene
    before = world_to_camera_view(scene, cam, points.matrix_world @ vertex)
    select_only(blender, role(coll, "camera")[:2], cam)
    blender.ops.da3.set_scale(distance=10.0)
    blender.context.view_layer.update()
    after = world_to_camera_view(scene, cam, points.matrix_world @ vertex)
    assert np.allclose(before[:2], after[:2], atol=1e-5)  # z is the depth: it scales


def test_two_vertices_in_edit_mode_set_the_scale(blender, addon):
    coll = imported(addon)
    (points,) = role(coll, "points")
    mesh = points.data
    for v in mesh.vertices:
        v.select = False
    mesh.vertices[0].select = mesh.vertices[500].select = True
    select_only(blender, [points], points)
    blender.ops.object.mode_set(mode="EDIT")
    assert blender.ops.da3.set_scale(distance=0.25) == {"FINISHED"}
    blender.ops.object.mode_set(mode="OBJECT")
    blender.context.view_layer.update()
    a, b = (points.matrix_world @ mesh.vertices[i].co for i in (0, 500))
    assert (a - b).length == pytest.approx(0.25, rel=1e-5)


def test_a_video_camera_track_is_rescaled_too(blender, addon):
    coll = imported(addon, video=True)
    (track,) = role(coll, "camera_track")
    cams = sorted(role(coll, "camera"), key=lambda o: o["da3_view_index"])
    select_only(blender, cams[:2], cams[0])
    blender.ops.da3.set_scale(distance=5.0)
    scene = blender.context.scene
    scene.frame_set(6)  # view 1 is source frame 5
    assert np.allclose(track.matrix_world.translation, cams[1].matrix_world.translation, atol=1e-5)


def test_a_selection_outside_any_result_is_refused(blender, addon):
    imported(addon)
    a, b = (blender.data.objects.new(n, None) for n in ("a", "b"))
    for obj in (a, b):
        blender.context.scene.collection.objects.link(obj)
    b.location = (1.0, 0.0, 0.0)
    select_only(blender, [a, b], a)
    with pytest.raises(RuntimeError, match="not part of a DA3 result"):
        blender.ops.da3.set_scale(distance=2.0)


def test_a_wrong_selection_is_refused_in_one_line(blender, addon):
    coll = imported(addon)
    select_only(blender, role(coll, "camera")[:1], role(coll, "camera")[0])
    with pytest.raises(RuntimeError, match="select exactly two objects"):
        blender.ops.da3.set_scale(distance=2.0)
