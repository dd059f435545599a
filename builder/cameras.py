"""Cameras with the true intrinsics, the input frames as background images, and the video's
animated camera track."""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.texture import png_bytes

SENSOR_WIDTH_MM = 36.0


def set_intrinsics(camera: bpy.types.Camera, k: np.ndarray, width: int, height: int) -> None:
    """Focal length and principal point of ``k`` (pixels) on a camera rendering ``width`` x ``height``.

    The sensor fits the width, so the focal length is fx * sensor / width and the lens shift is
    the principal point's offset from the centre in units of the width (Blender's shift unit for
    a horizontal fit); image y grows downwards, Blender's shift upwards. Pixels are square, so
    fy is kept only as a custom property (DA3's fx and fy differ by well under a percent).
    """
    camera.sensor_fit = "HORIZONTAL"
    camera.sensor_width = SENSOR_WIDTH_MM
    camera.lens = float(k[0, 0]) * SENSOR_WIDTH_MM / width
    camera.shift_x = (width / 2 - float(k[0, 2])) / width
    camera.shift_y = (float(k[1, 2]) - height / 2) / width
    for key, value in (("fx", k[0, 0]), ("fy", k[1, 1]), ("cx", k[0, 2]), ("cy", k[1, 2])):
        camera[f"da3_{key}"] = float(value)


def frame_pngs(pred) -> list[bytes] | None:
    """Each view's frame as the bytes of a PNG, for its camera's background (None without
    images). numpy and zlib only, which release the GIL: made on the importer's threads (5-12 ms
    a 504x378 frame here, seconds for a 300-frame video)."""
    return None if pred.image is None else [png_bytes(frame) for frame in pred.image]


def frame_image(name: str, png: bytes, width: int, height: int) -> bpy.types.Image:
    """A packed image datablock of a frame's PNG (``frame_pngs``); no file on disk involved.
    Setting float pixels and letting Blender pack them costs ~45 ms a frame."""
    image = bpy.data.images.new(name, width, height)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    return image


def set_background(camera: bpy.types.Camera, image: bpy.types.Image) -> None:
    background = camera.background_images.new()
    background.image = image
    camera.show_background_images = True


def new_camera_data(name: str, k: np.ndarray, width: int, height: int, far: float) -> bpy.types.Camera:
    camera = bpy.data.cameras.new(name)
    set_intrinsics(camera, k, width, height)
    camera.clip_end = max(camera.clip_end, 2.0 * far)
    return camera


CAMERAS_PER_STEP = 16  # a camera, its background image and its object: 2-3 ms each (26-47 ms a step)


def add_view_cameras(build, pngs: list[bytes] | None, far: float):
    """Steps: one camera per view, placed where the view was taken, its frame (``pngs``) as
    background and ``far`` (scene units) within its clip range; ``CAMERAS_PER_STEP`` a step."""
    pred = build.prediction
    for i in range(pred.num_views):
        data = new_camera_data(f"{build.name} view {i}", pred.intrinsics[i], pred.width,
                               pred.height, far)
        if pngs is not None:
            set_background(data, frame_image(f"{build.name} view {i}", pngs[i], pred.width,
                                             pred.height))
        obj = build.add_object(data.name, data, "camera", da3_view_index=i)
        obj.matrix_world = Matrix(build.geo.cam_to_world[i].tolist())
        if (i + 1) % CAMERAS_PER_STEP == 0:
            yield


def add_camera_track(build, far: float) -> bpy.types.Object:
    """A video's camera as one animated object: a keyframe per view on the video's own frame
    (source frame f shows at scene frame f + 1, as a movie clip starting on frame 1 plays it)."""
    pred = build.prediction
    data = new_camera_data(f"{build.name} track", pred.intrinsics[0], pred.width, pred.height, far)
    obj = build.add_object(data.name, data, "camera_track")
    previous = None
    for i, frame in enumerate(pred.frame_indices):
        obj.matrix_world = Matrix(build.geo.cam_to_world[i].tolist())
        if previous is not None:  # no 360-degree flips between keys
            obj.rotation_euler = obj.matrix_world.to_euler("XYZ", previous)
        previous = obj.rotation_euler.copy()
        set_intrinsics(data, pred.intrinsics[i], pred.width, pred.height)
        _key_camera(obj, data, int(frame) + 1)
    return obj


def _key_camera(obj: bpy.types.Object, data: bpy.types.Camera, frame: int) -> None:
    obj.keyframe_insert("location", frame=frame)
    obj.keyframe_insert("rotation_euler", frame=frame)
    for path in ("lens", "shift_x", "shift_y"):
        data.keyframe_insert(path, frame=frame)


def set_render_resolution(scene: bpy.types.Scene, width: int, height: int) -> None:
    """The render frame of the views (the one existing setting an import changes)."""
    scene.render.resolution_x = width
    scene.render.resolution_y = height
