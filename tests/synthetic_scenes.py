"""Predictions of known geometry: depth maps of a plane and a box, ray-cast with numpy.

The world is OpenCV-like and deliberately NOT view 0's camera frame, so the import has to
re-anchor on view 0. The ground plane is z = PLANE_Z (a wall facing the cameras); the box sits in
front of it, so every view sees a depth discontinuity along the box's outline.
"""

from __future__ import annotations

import numpy as np

from engine.core.prediction import Prediction

PLANE_Z = 6.0
BOX_LOW = np.array([-1.0, -1.0, 3.0])
BOX_HIGH = np.array([1.0, 1.0, 4.0])
PLANE_RGB = (40, 160, 60)
BOX_RGB = (200, 30, 30)


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """Focal ``focal`` px, principal point off-centre (so lens shift is exercised)."""
    return np.array([[focal, 0, width / 2 + 6.0], [0, focal, height / 2 - 4.0], [0, 0, 1]])


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """(4,4) OpenCV camera-to-world: z towards ``target``, y down (opposite ``up``)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, -np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def default_poses(n: int) -> np.ndarray:
    """``n`` cameras on an arc in front of the scene, all looking at its centre."""
    angles = np.linspace(-0.35, 0.35, n) if n > 1 else [0.0]
    eyes = [(4.0 * np.sin(a), 0.3, 4.0 * (1 - np.cos(a)) - 0.5) for a in angles]
    return np.stack([look_at(e, (0.0, 0.0, 4.5)) for e in eyes])


def ray_cast(c2w: np.ndarray, k: np.ndarray, width: int, height: int, with_box=True):
    """Z-depth (H,W) and surface id (H,W: 0 plane, 1 box, -1 nothing) seen by one camera."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # z = 1
    rays = rays_cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = (PLANE_Z - origin[2]) / rays[..., 2]
    t_plane = np.where(t_plane > 0, t_plane, np.inf)
    t_box = _ray_box(origin, rays) if with_box else np.full(t_plane.shape, np.inf)
    t = np.minimum(t_plane, t_box)
    surface = np.where(np.isinf(t), -1, np.where(t_box < t_plane, 1, 0))
    return np.where(np.isinf(t), 0.0, t).astype(np.float32), surface


def _ray_box(origin, rays):
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (BOX_LOW - origin) / rays
        t2 = (BOX_HIGH - origin) / rays
    near = np.nanmax(np.minimum(t1, t2), axis=-1)
    far = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((far >= near) & (near > 0), near, np.inf)


def make_prediction(n_views=3, width=64, height=48, focal=60.0, with_box=True, depth_scale=1.0,
                    images=True, video=False, metric=False) -> tuple[Prediction, np.ndarray]:
    """A prediction of the scene and the (N,4,4) camera-to-world poses it was made from.

    ``depth_scale`` multiplies depths and translations, like a relative model's unknown scale.
    """
    poses = default_poses(n_views)
    k = intrinsics(width, height, focal)
    depth, surface = zip(*(ray_cast(p, k, width, height, with_box) for p in poses), strict=True)
    depth, surface = np.stack(depth) * np.float32(depth_scale), np.stack(surface)
    scaled = poses.copy()
    scaled[:, :3, 3] *= depth_scale
    extrinsics = np.linalg.inv(scaled)[:, :3, :4]
    image = np.zeros(depth.shape + (3,), np.uint8)
    image[surface == 0], image[surface == 1] = PLANE_RGB, BOX_RGB
    pred = Prediction(depth=depth.astype(np.float32), intrinsics=np.tile(k, (n_views, 1, 1)),
                      extrinsics=extrinsics, conf=np.full(depth.shape, 3.0, np.float32),
                      image=image if images else None, is_metric=metric,
                      frame_indices=np.arange(n_views) * 5 if video else None)
    return pred, poses


def distance_to_scene(world: np.ndarray, with_box=True) -> np.ndarray:
    """Distance of OpenCV-world points (P,3) to the nearest surface (plane or box)."""
    d_plane = np.abs(world[:, 2] - PLANE_Z)
    if not with_box:
        return d_plane
    centre, half = (BOX_LOW + BOX_HIGH) / 2, (BOX_HIGH - BOX_LOW) / 2
    q = np.abs(world - centre) - half
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    inside = np.minimum(q.max(axis=1), 0)
    return np.minimum(d_plane, np.abs(outside + inside))


def blender_to_world(points: np.ndarray, pred_extrinsics: np.ndarray, scale: float,
                     depth_scale: float = 1.0) -> np.ndarray:
    """Undo the import's frame change: Blender points -> the synthetic OpenCV world."""
    cv_to_blender = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    view0 = points / scale @ cv_to_blender  # (M^T p) for each row
    w2c0 = np.eye(4)
    w2c0[:3] = pred_extrinsics[0]
    c2w0 = np.linalg.inv(w2c0)
    world_scaled = view0 @ c2w0[:3, :3].T + c2w0[:3, 3]
    return world_scaled / depth_scale
