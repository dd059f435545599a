"""The analytic room of the alignment tests and benchmarks: numpy only, no pytest.

A room (8 x 3 x 8 units) with two pillars, ray-cast exactly from cameras on a circle, so a
benchmark can make a full-resolution prediction of known shape without Blender.
"""

from __future__ import annotations

import numpy as np

from engine.core.prediction import Prediction

ROOM_LOW, ROOM_HIGH = np.array([-4.0, -1.5, -4.0]), np.array([4.0, 1.5, 4.0])
PILLARS = [(np.array([-0.6, -1.5, -0.6]), np.array([0.6, 1.5, 0.6])),
           (np.array([2.6, -0.5, 2.6]), np.array([3.4, 1.5, 3.4]))]
SCENE_SIZE = float(np.max(ROOM_HIGH - ROOM_LOW))



def look_extrinsics(centre: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """World-to-camera (3,4) of a camera at ``centre`` looking along ``forward``, y (down) ~ +y."""
    f = forward / np.linalg.norm(forward)
    x = np.cross([0.0, 1.0, 0.0], f)
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    rot = np.stack([x, y, f])
    return np.concatenate([rot, (-rot @ centre)[:, None]], axis=1)


def circle_path(n: int, laps: float = 1.0, radius: float = 2.0) -> np.ndarray:
    """(n,3,4) cameras on a circle, looking outwards and ahead, bobbing a little in height."""
    out = []
    for a in np.linspace(0, 2 * np.pi * laps, n, endpoint=False):
        centre = np.array([radius * np.cos(a), 0.3 * np.sin(3 * a), radius * np.sin(a)])
        look = np.array([np.cos(a + 0.9), 0.15, np.sin(a + 0.9)])
        out.append(look_extrinsics(centre, look))
    return np.array(out)


def intrinsics_for(h: int, w: int, fov_deg: float = 70.0) -> np.ndarray:
    f = 0.5 * w / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def ray_cast(extrinsics: np.ndarray, k: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H,W) z-depth of the room and pillars seen by one camera."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    rot = extrinsics[:, :3]
    d = rays_cam.reshape(-1, 3) @ rot  # world directions with unit z in the camera
    c = -rot.T @ extrinsics[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        wall = np.where(d > 0, ROOM_HIGH, ROOM_LOW)
        t = np.nanmin(np.where(d != 0, (wall - c) / d, np.inf), axis=1)
        for low, high in PILLARS:
            t1, t2 = (low - c) / d, (high - c) / d
            near = np.nanmax(np.minimum(t1, t2), axis=1)
            far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (far >= near) & (near > 0)
            t = np.where(hit & (near < t), near, t)
    return t.reshape(h, w)


def room_truth(n: int, h: int = 48, w: int = 64, laps: float = 1.0) -> Prediction:
    ext = circle_path(n, laps)
    k = intrinsics_for(h, w)
    depth = np.stack([ray_cast(e, k, h, w) for e in ext]).astype(np.float32)
    return Prediction(depth=depth, intrinsics=np.tile(k, (n, 1, 1)), extrinsics=ext,
                      conf=np.full(depth.shape, 2.0, np.float32))
