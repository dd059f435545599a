"""Cameras with the true intrinsics, the input frames as background images, and the video's
animated camera track."""

from __future__ import annotations

import struct
import zlib

import bpy
import numpy as np
from mathutils import Matrix

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


def image_from_rgb(name: str, rgb: np.ndarray) -> bpy.types.Image:
    """A packed image datablock holding ``rgb`` (H,W,3 uint8); no file on disk involved.

    The PNG is encoded here (zlib level 1: ~5 ms a frame) and packed as the image's file:
    setting float pixels and letting Blender pack them costs ~45 ms a frame.
    """
    height, width = rgb.shape[:2]
    image = bpy.data.images.new(name, width, height)
    png = encode_png(rgb)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    return image


def encode_png(rgb: np.ndarray) -> bytes:
    """``rgb`` (H,W,3 uint8) as the bytes of an 8-bit RGB PNG file."""
    height, width = rgb.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0: none
    rows[:, 1:] = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def set_background(camera: bpy.types.Camera, image: bpy.types.Image) -> None:
    background = camera.background_images.new()
    background.image = image
    camera.show_background_images = True


def new_camera_data(name: str, k: np.ndarray, width: int, height: int, far: float) -> bpy.types.Camera:
    camera = bpy.data.cameras.new(name)
    set_intrinsics(camera, k, width, height)
    camera.clip_end = max(camera.clip_end, 2.0 * far)
    return camera


def add_view_cameras(build) -> list[bpy.types.Object]:
    """One camera per view, placed where the view was taken, its frame as background."""
    pred, cameras = build.prediction, []
    for i in range(pred.num_views):
        data = new_camera_data(f"{build.name} view {i}", pred.intrinsics[i], pred.width,
                               pred.height, build.far)
        if pred.image is not None:
            set_background(data, image_from_rgb(f"{build.name} view {i}", pred.image[i]))
        obj = build.add_object(data.name, data, "camera", da3_view_index=i)
        obj.matrix_world = Matrix(build.geo.cam_to_world[i].tolist())
        cameras.append(obj)
    return cameras


def add_camera_track(build) -> bpy.types.Object:
    """A video's camera as one animated object: a keyframe per view on the video's own frame
    (source frame f shows at scene frame f + 1, as a movie clip starting on frame 1 plays it)."""
    pred = build.prediction
    data = new_camera_data(f"{build.name} track", pred.intrinsics[0], pred.width, pred.height,
                           build.far)
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
