"""Synthetic scenes of known geometry, rendered with Cycles, and DA3-like predictions of them.

A scene is built from analytic shapes (cylinder, torus, box, sphere, planes), so that its true
surface can be sampled exactly, away from the parts hidden inside other shapes. Cycles renders
colour and planar depth (compositor Depth -> 32-bit EXR) for every camera.

``degrade`` then makes what DA3 would return: an unknown global scale, the world frame of view 0,
a smooth 2-3% relative depth error per view, flying pixels at depth edges with low confidence,
a low-confidence far background, and a little pose noise.

``evaluate`` measures a mesh against the true surface: accuracy, completeness, precision,
recall and F-score at a distance of 1% of the object's size, normal consistency, how much of
the thin parts survives, boundary edges and components. Every measure is computed here from
the mesh's arrays (numpy, and Blender's mathutils KD-tree for nearest neighbours: the tests run
inside bpy anyway), never with the fusion code it grades.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.core.prediction import Prediction
from engine.texture import png_bytes

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# analytic shapes: a Blender mesh, surface samples, their normals and an inside test for each


@dataclass
class Shape:
    name: str
    vertices: np.ndarray
    faces: list
    color: tuple
    sample: callable  # (n, rng) -> (n,3) points on the surface
    inside: callable  # (P,3) -> bool, strictly inside the solid
    checker: bool = False  # a checker texture over the colour (a textured floor or table)
    normal: callable = None  # (P,3) points on the surface -> (P,3) unit normals (outward)
    thin: bool = False  # a thin part (a leg, a slat): what ``Quality.thin_survival`` judges


def cylinder(radius, height, centre=(0.0, 0.0), z0=0.0, segments=96, color=(0.7, 0.1, 0.1)):
    a = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(a) + centre[0], radius * np.sin(a) + centre[1]], axis=1)
    verts = np.concatenate([np.c_[ring, np.full(segments, z0)], np.c_[ring, np.full(segments, z0 + height)]])
    faces = [(i, (i + 1) % segments, segments + (i + 1) % segments, segments + i) for i in range(segments)]
    faces += [tuple(range(segments - 1, -1, -1)), tuple(range(segments, 2 * segments))]
    cx, cy = centre

    def sample(n, rng):
        side = int(n * height / (height + radius / 2))
        t = rng.uniform(0, 2 * np.pi, side)
        pts = [np.c_[radius * np.cos(t) + cx, radius * np.sin(t) + cy, rng.uniform(z0, z0 + height, side)]]
        r, t = radius * np.sqrt(rng.uniform(0, 1, n - side)), rng.uniform(0, 2 * np.pi, n - side)
        pts.append(np.c_[r * np.cos(t) + cx, r * np.sin(t) + cy, np.full(n - side, z0 + height)])
        return np.concatenate(pts)  # the bottom stands on the floor: never seen

    def inside(p):
        within = (p[:, 0] - cx) ** 2 + (p[:, 1] - cy) ** 2 < radius ** 2
        return within & (p[:, 2] > z0) & (p[:, 2] < z0 + height)

    def normal(p):
        radial = np.c_[p[:, 0] - cx, p[:, 1] - cy, np.zeros(len(p))]
        r = np.linalg.norm(radial, axis=1, keepdims=True)
        off_side = np.abs(r[:, 0] - radius)
        top, bottom = np.abs(p[:, 2] - z0 - height), np.abs(p[:, 2] - z0)
        n = radial / np.maximum(r, 1e-12)
        cap = np.minimum(top, bottom) < off_side
        n[cap] = np.c_[np.zeros((cap.sum(), 2)), np.where(top[cap] < bottom[cap], 1.0, -1.0)]
        return n

    return Shape("cylinder", verts, faces, color, sample, inside, normal=normal)


def torus_xz(major, minor, centre, seg=96, minor_seg=32, color=(0.7, 0.1, 0.1)):
    """A ring in the x-z plane (a mug's handle)."""
    c = np.asarray(centre, float)
    u = np.linspace(0, 2 * np.pi, seg, endpoint=False)
    v = np.linspace(0, 2 * np.pi, minor_seg, endpoint=False)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    verts = np.stack([(major + minor * np.cos(vv)) * np.cos(uu), minor * np.sin(vv),
                      (major + minor * np.cos(vv)) * np.sin(uu)], -1).reshape(-1, 3) + c
    def at(i, j):
        return (i % seg) * minor_seg + j % minor_seg

    faces = [(at(i, j), at(i + 1, j), at(i + 1, j + 1), at(i, j + 1))
             for i in range(seg) for j in range(minor_seg)]

    def sample(n, rng):
        # area element is proportional to (major + minor cos v): rejection-sample v
        uu = rng.uniform(0, 2 * np.pi, 3 * n)
        vv = rng.uniform(0, 2 * np.pi, 3 * n)
        keep = rng.uniform(0, major + minor, 3 * n) < major + minor * np.cos(vv)
        uu, vv = uu[keep][:n], vv[keep][:n]
        return np.stack([(major + minor * np.cos(vv)) * np.cos(uu), minor * np.sin(vv),
                         (major + minor * np.cos(vv)) * np.sin(uu)], -1) + c

    def inside(p):
        q = p - c
        return (np.hypot(q[:, 0], q[:, 2]) - major) ** 2 + q[:, 1] ** 2 < minor ** 2

    def normal(p):
        q = p - c
        ring = q * [1, 0, 1]
        ring *= major / np.maximum(np.linalg.norm(ring, axis=1, keepdims=True), 1e-12)
        return unit(q - ring)

    return Shape("handle", verts, faces, color, sample, inside, normal=normal)


def box(low, high, color=(0.2, 0.4, 0.7), inward=False, skip_bottom=True):
    low, high = np.asarray(low, float), np.asarray(high, float)
    verts = np.array([[low[0] if i & 4 == 0 else high[0], low[1] if i & 2 == 0 else high[1],
                       low[2] if i & 1 == 0 else high[2]] for i in range(8)])
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    if inward:
        faces = [f[::-1] for f in faces]
    size = high - low
    areas = np.array([size[1] * size[2]] * 2 + [size[0] * size[2]] * 2 + [size[0] * size[1]] * 2)
    if skip_bottom:
        areas[4] = 0  # face z = low: stands on the floor

    def sample(n, rng):
        face = rng.choice(6, n, p=areas / areas.sum())
        p = rng.uniform(low, high, (n, 3))
        axis, side = face // 2, face % 2
        # faces are ordered -x, +x, -y, +y, -z, +z
        p[np.arange(n), axis] = np.where(side == 0, low[axis], high[axis])
        return p

    def inside(p):
        within = np.all((p > low) & (p < high), axis=1)
        return ~within if inward else within  # a room's solid is outside its walls

    def normal(p):
        off = np.abs(np.stack([p - low, p - high], axis=2)).reshape(len(p), 6)  # -x +x -y +y -z +z
        face = np.argmin(off, axis=1)
        n = np.zeros((len(p), 3))
        n[np.arange(len(p)), face // 2] = np.where(face % 2 == 0, -1.0, 1.0)
        return -n if inward else n

    return Shape("box", verts, faces, color, sample, inside, normal=normal)


def sphere(centre, radius, color=(0.2, 0.7, 0.3), segments=64):
    c = np.asarray(centre, float)
    u = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    v = np.linspace(0, np.pi, segments // 2 + 1)[1:-1]
    verts = [c + [0, 0, radius]]
    for vv in v:
        verts += list(c + radius * np.c_[np.sin(vv) * np.cos(u), np.sin(vv) * np.sin(u),
                                         np.full(segments, np.cos(vv))])
    verts.append(c - [0, 0, radius])
    rows = len(v)
    faces = [(0, 1 + (i + 1) % segments, 1 + i) for i in range(segments)]
    for r in range(rows - 1):
        a, b = 1 + r * segments, 1 + (r + 1) * segments
        faces += [(a + i, a + (i + 1) % segments, b + (i + 1) % segments, b + i) for i in range(segments)]
    last = 1 + (rows - 1) * segments
    faces += [(last + i, last + (i + 1) % segments, len(verts) - 1) for i in range(segments)]

    def sample(n, rng):
        d = rng.normal(size=(n, 3))
        return c + radius * d / np.linalg.norm(d, axis=1, keepdims=True)

    def inside(p):
        return np.linalg.norm(p - c, axis=1) < radius

    return Shape("sphere", np.array(verts), faces, color, sample, inside,
                 normal=lambda p: unit(p - c))


def floor(size=8.0, color=(0.45, 0.45, 0.42), checker=False):
    h = size / 2
    verts = np.array([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], float)
    return Shape("floor", verts, [(0, 1, 2, 3)], color, lambda n, rng: np.zeros((0, 3)),
                 lambda p: p[:, 2] < 0, checker, normal=lambda p: np.tile([0.0, 0.0, 1.0], (len(p), 1)))


def unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def table(top=0.6, half=(1.3, 1.0), thickness=0.06, leg=0.08):
    """A textured table top on four legs, standing at z = 0 (no floor under it)."""
    hx, hy = half
    top_box = box((-hx, -hy, top - thickness), (hx, hy, top), color=(0.55, 0.35, 0.2))
    top_box.checker, top_box.name = True, "table"
    legs = [box((sx * (hx - leg) - leg / 2, sy * (hy - leg) - leg / 2, 0),
                (sx * (hx - leg) + leg / 2, sy * (hy - leg) + leg / 2, top - thickness),
                color=(0.3, 0.2, 0.1)) for sx in (-1, 1) for sy in (-1, 1)]
    return [top_box, *legs]


def parts_shapes(z0=0.0):
    """An object in four separate parts, standing at ``z0``: a pedestal with a head above it,
    and a ring standing on edge with a ball inside it."""
    return [cylinder(0.22, 0.5, z0=z0, color=(0.7, 0.1, 0.1)),
            sphere((0.0, 0.0, z0 + 0.85), 0.2, color=(0.8, 0.7, 0.1)),
            torus_xz(0.3, 0.06, (0.75, 0.0, z0 + 0.37), color=(0.1, 0.3, 0.8)),
            sphere((0.75, 0.0, z0 + 0.37), 0.14, color=(0.2, 0.7, 0.3))]


def checkered_parts_shapes(z0=0.0):
    """``parts_shapes`` painted with a checker pattern: detail finer than the surface's vertices
    for the texture baked from the photos to reproduce."""
    shapes = parts_shapes(z0)
    for shape in shapes:
        shape.checker = True
    return shapes


def thin_shapes(z0=0.0, leg=0.02, slat=0.02):
    """A chair standing at ``z0``: a seat slab (0.6 x 0.6 at 0.5) on four legs of radius ``leg``,
    the back legs running on up to a top rail, with three slats ``slat`` deep between seat and
    rail. Legs, slats and rail are thin (``Shape.thin``): 1.4-2.9% of the chair's size across."""
    h, seat, top, wood = 0.3, z0 + 0.5, z0 + 1.1, (0.55, 0.35, 0.2)
    x = h - leg  # the legs' axes
    legs = [cylinder(leg, (seat if sx > 0 else top) - z0, centre=(sx * x, sy * x), z0=z0,
                     segments=48, color=(0.3, 0.2, 0.1)) for sx in (-1, 1) for sy in (-1, 1)]
    rail = box((-x - slat / 2, -x + leg, top - 0.1), (-x + slat / 2, x - leg, top - 0.02),
               color=wood, skip_bottom=False)
    slats = [box((-x - slat / 2, y - 0.025, seat + 0.04), (-x + slat / 2, y + 0.025, top - 0.1),
                 color=(0.7, 0.55, 0.3), skip_bottom=False) for y in (-0.13, 0.0, 0.13)]
    for s in [*legs, rail, *slats]:
        s.thin = True
    return [box((-h, -h, seat), (h, h, seat + 0.04), color=wood, skip_bottom=False), *legs, rail,
            *slats]



def terrain_height(x, y):
    """The ground's height at (x, y): two hills, a hollow and gentle waves over it."""
    def bump(cx, cy, height, width):
        return height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width ** 2))

    return (bump(1.5, 1.0, 0.9, 1.1) + bump(-2.2, -1.4, 0.6, 0.9) + bump(-0.6, 2.0, -0.4, 0.7)
            + 0.08 * np.sin(1.3 * x) * np.cos(0.9 * y))


def terrain_gradient(x, y, h=1e-4):
    return ((terrain_height(x + h, y) - terrain_height(x - h, y)) / (2 * h),
            (terrain_height(x, y + h) - terrain_height(x, y - h)) / (2 * h))


def ground(half=6.0, cells=120, color=(0.35, 0.45, 0.25)):
    """The terrain as a height field ``half`` either side of the origin, checkered like fields
    seen from the air; sampled on its analytic surface."""
    axis = np.linspace(-half, half, cells + 1)
    gx, gy = np.meshgrid(axis, axis, indexing="ij")
    verts = np.c_[gx.ravel(), gy.ravel(), terrain_height(gx, gy).ravel()]
    at = np.arange(len(verts)).reshape(cells + 1, cells + 1)
    faces = np.stack([at[:-1, :-1], at[1:, :-1], at[1:, 1:], at[:-1, 1:]], axis=-1).reshape(-1, 4)

    def sample(n, rng):  # uniform over the area: rejection on the slope's area element
        x, y = rng.uniform(-half, half, (2, 4 * n))
        fx, fy = terrain_gradient(x, y)
        stretch = np.sqrt(1 + fx ** 2 + fy ** 2)
        keep = rng.uniform(0, stretch.max(), len(x)) < stretch
        x, y = x[keep][:n], y[keep][:n]
        return np.c_[x, y, terrain_height(x, y)]

    def normal(p):
        fx, fy = terrain_gradient(p[:, 0], p[:, 1])
        return unit(np.c_[-fx, -fy, np.ones(len(p))])

    return Shape("ground", verts, [tuple(f) for f in faces.tolist()], color, sample,
                 lambda p: p[:, 2] < terrain_height(p[:, 0], p[:, 1]), True, normal=normal)


def terrain_shapes():
    """A drone's view: the ground, three houses sunk into it where they stand, a water tower
    and two trees."""
    def house(x, y, sx, sy, height):
        base = terrain_height(np.array([x - sx, x + sx, x, x]), np.array([y, y, y - sy, y + sy])).min()
        return box((x - sx, y - sy, base - 0.3), (x + sx, y + sy, base + height), color=(0.75, 0.7, 0.65))

    def tree(x, y, crown):
        base = float(terrain_height(x, y))
        return [cylinder(0.08, 1.0, centre=(x, y), z0=base - 0.1, segments=24, color=(0.35, 0.25, 0.15)),
                sphere((x, y, base + 0.9 + crown * 0.8), crown, color=(0.15, 0.4, 0.15), segments=32)]

    tower_base = float(terrain_height(-1.0, -0.2))
    return [ground(), house(0.8, -1.6, 0.6, 0.4, 0.8), house(-2.4, 1.2, 0.5, 0.7, 0.6),
            house(2.6, 2.3, 0.45, 0.45, 1.1),
            cylinder(0.35, 1.6, centre=(-1.0, -0.2), z0=tower_base - 0.2, color=(0.6, 0.6, 0.7)),
            *tree(1.9, -0.2, 0.45), *tree(-0.3, 1.2, 0.35)]


def drone_cameras(n, altitude=5.0, pitch_deg=55.0):
    """A drone flying two strips across the terrain, out along y = -1.6 and back along
    y = 1.6, looking ahead and down."""
    out = []
    per_strip = max(n // 2, 1)
    for i in range(n):
        strip, k = divmod(i, per_strip)
        heading = 1.0 if strip % 2 == 0 else -1.0
        x = heading * (-3.0 + 6.0 * k / max(per_strip - 1, 1))
        eye = np.array([x, -1.6 if strip % 2 == 0 else 1.6, altitude])
        pitch = math.radians(pitch_deg)
        ahead = np.array([heading * math.cos(pitch), 0.0, -math.sin(pitch)])
        out.append(look_at(eye, eye + ahead))
    return out


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class Scene:
    """Rendered views and the true surface, in Blender's world (Z up)."""

    name: str
    image: np.ndarray  # (N,H,W,3) uint8
    depth: np.ndarray  # (N,H,W) float32 planar depth, 0 where no surface
    K: np.ndarray  # (3,3)
    w2c: np.ndarray  # (N,3,4) OpenCV world-to-camera
    surface: np.ndarray  # (P,3) samples of the true surface that the metrics use
    size: float  # the object's (or room's) bounding-box diagonal
    region: tuple  # (low, high): predicted geometry outside is not judged (the floor, far walls)
    normals: np.ndarray = None  # (P,3) the true surface's unit normal at each of ``surface``
    thin: np.ndarray = None  # (P,) bool: the sample lies on a thin part (``Shape.thin``)


def mug_shapes():
    return [cylinder(0.5, 1.0), torus_xz(0.28, 0.07, (0.55, 0.0, 0.5)), floor()]


def room_shapes():
    return [box((-2, -1.5, 0), (2, 1.5, 2.5), color=(0.8, 0.75, 0.6), inward=True, skip_bottom=False),
            box((0.6, 0.2, 0), (1.4, 0.9, 0.7)), sphere((-0.9, -0.6, 0.35), 0.35),
            cylinder(0.2, 2.5, centre=(-1.2, 0.8), color=(0.6, 0.3, 0.6))]


def ring_cameras(n, target, distance, elevations_deg):
    eyes = []
    for i in range(n):
        a = 2 * np.pi * i / n
        el = math.radians(elevations_deg[i % len(elevations_deg)])
        eyes.append(np.asarray(target) + distance * np.array([math.cos(a) * math.cos(el),
                                                              math.sin(a) * math.cos(el), math.sin(el)]))
    return [look_at(e, target) for e in eyes]


def room_cameras(n):
    """A slow turn in the middle of the room, looking up, level and down at each heading."""
    out = []
    for i in range(n):
        a = 2 * np.pi * (i // 3) / (n // 3)
        eye = np.array([0.6 * math.cos(a), 0.5 * math.sin(a), (1.2, 1.6)[i % 2]])
        pitch = math.radians((25, -15, -50)[i % 3])
        d = np.array([math.cos(a) * math.cos(pitch), math.sin(a) * math.cos(pitch), math.sin(pitch)])
        out.append(look_at(eye, eye + d))
    return out


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """OpenCV world-to-camera (3,4) of a camera at ``eye`` looking at ``target``."""
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    R = np.stack([r, np.cross(f, r), f])
    return np.c_[R, -R @ eye]


def true_surface(shapes, n_per_shape, rng, per_area=None):
    """Samples of the shapes' surface outside every other shape: points, their unit normals and
    whether each lies on a thin shape. ``n_per_shape`` samples on each shape, or with
    ``per_area`` as many per square unit of its mesh."""
    pts, normals, thin = [], [], []
    for s in shapes:
        p = s.sample(n_per_shape if per_area is None else round(per_area * mesh_area(s)), rng)
        hidden = np.zeros(len(p), bool)
        for other in shapes:
            if other is not s:
                hidden |= other.inside(p)
        pts.append(p[~hidden])
        normals.append(s.normal(p[~hidden]))
        thin.append(np.full(len(pts[-1]), s.thin))
    return np.concatenate(pts), np.concatenate(normals), np.concatenate(thin)


def mesh_area(shape: Shape) -> float:
    v = np.asarray(shape.vertices, float)
    tris = np.array([(f[0], f[i], f[i + 1]) for f in shape.faces for i in range(1, len(f) - 1)])
    return float(np.linalg.norm(np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]),
                                axis=1).sum() / 2)


class ObjectScene(NamedTuple):
    """An object (its shapes at height z0, judged) on a support (seen, not judged), the
    object's bounding box (relative to z0), where the cameras look (relative to z0) and how
    densely its true surface is sampled (None: 60000 samples on each shape)."""

    make: Callable
    support: Callable
    z0: float
    low: tuple = (-0.25, -0.25, 0.0)
    high: tuple = (1.11, 0.25, 1.05)
    target: tuple = (0.3, 0.0, 0.5)
    per_area: float | None = None


# Scenes fused whole, in scene mode (every other scene is an object, fused in object mode).
SURROUNDINGS = ("room", "terrain")

OBJECT_SCENES = {
    "parts": ObjectScene(parts_shapes, lambda: [], 0.0),  # nothing under it: no floor in view
    "parts_table": ObjectScene(parts_shapes, table, 0.6),
    "parts_floor": ObjectScene(parts_shapes, lambda: [floor(checker=True)], 0.0),
    "parts_checker": ObjectScene(checkered_parts_shapes, lambda: [], 0.0),
    # a chair with thin legs and slats on nothing; sampled by area, so that its many small
    # parts weigh what their surface does
    "thin": ObjectScene(thin_shapes, lambda: [], 0.0, (-0.3, -0.3, 0.0), (0.3, 0.3, 1.1),
                        (0.0, 0.0, 0.55), 150000),
}


@dataclass
class Layout:
    """What a scene is made of, before rendering."""

    shapes: list  # everything rendered
    judged: list  # the shapes whose surface the metrics judge
    cameras: list  # OpenCV world-to-camera (3,4) each
    fov: float  # horizontal, degrees
    size: float  # the object's (or room's) bounding-box diagonal
    region: tuple  # (low, high): predicted geometry outside is not judged
    per_area: float | None = None  # true samples per square unit; None: 60000 on each shape


def scene_layout(name: str, views=0) -> Layout:
    """The shapes, cameras and judged region of 'mug', 'room', 'terrain' or one of
    ``OBJECT_SCENES``."""
    if name in OBJECT_SCENES:
        obj = OBJECT_SCENES[name]
        parts = obj.make(obj.z0)
        z = np.array([0.0, 0.0, obj.z0])
        cams = ring_cameras(views or 16, z + obj.target, 2.6, (25, 50))
        low, high = z + obj.low, z + obj.high
        region = (low - [0.1, 0.1, -0.08], high + 0.1)  # not the band where it meets its support
        return Layout(parts + obj.support(), parts, cams, 45, float(np.linalg.norm(high - low)), region,
                      obj.per_area)
    if name == "mug":
        shapes = mug_shapes()
        cams = ring_cameras(views or 24, (0.15, 0.0, 0.45), 2.8, (25, 50))
        low, high = np.array([-0.5, -0.5, 0.0]), np.array([0.9, 0.5, 1.0])
        # not the floor, nor the band where the object meets it: nobody sees it, and DA3's floor
        # is as rough as 5-8% of the object's height
        region = (low - [0.1, 0.1, -0.08], high + 0.1)
        return Layout(shapes, shapes[:2], cams, 45, float(np.linalg.norm(high - low)), region)
    if name == "terrain":
        shapes = terrain_shapes()
        low, high = np.array([-4.5, -4.5, -0.6]), np.array([4.5, 4.5, 2.2])  # where the flight looks
        return Layout(shapes, shapes, drone_cameras(views or 16), 60,
                      float(np.linalg.norm(high - low)), (low, high), 2000.0)
    shapes = room_shapes()
    low, high = np.array([-2, -1.5, 0]), np.array([2, 1.5, 2.5])
    return Layout(shapes, shapes, room_cameras(views or 36), 90, float(np.linalg.norm(high - low)),
                  (low - 0.1, high + 0.1))


def render_scene(name: str, width=0, height=0, samples=4, views=0) -> Scene:
    """Render one of the scenes ('mug', 'room', 'terrain' or one of ``OBJECT_SCENES``) with
    Cycles; the caller caches it.

    ``views``: 0 for the scene's own count (24 around the mug, 36 in the room, 16 over the
    terrain and around the other objects); ``width``, ``height``: 0 for 128x96 (192x144 for
    the thin parts of the other objects).
    """
    small = name in ("mug", "room", "terrain")
    width, height = width or (128 if small else 192), height or (96 if small else 144)
    layout = scene_layout(name, views)
    fx = (width / 2) / math.tan(math.radians(layout.fov) / 2)
    K = np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])
    image, depth = cycles_render(layout.shapes, layout.cameras, K, width, height, samples,
                                 lamp=name == "room")
    scene = Scene(name, image, depth, K, np.array(layout.cameras), None, layout.size, layout.region)
    return with_truth(scene, layout)


def with_truth(scene: Scene, layout: Layout | None = None) -> Scene:
    """``scene`` with its true surface samples, normals and thin tags (re)computed from its
    shapes and rendered depth: what two views see. Also brings scenes pickled before normals
    existed up to date without rendering them again."""
    layout = layout or scene_layout(scene.name, len(scene.w2c))
    surface, normals, thin = true_surface(layout.judged, 60000, np.random.default_rng(1),
                                          layout.per_area)
    seen = seen_by(surface, scene.w2c, scene.K, scene.depth) >= 2  # judge only what could be seen
    return dataclasses.replace(scene, surface=surface[seen], normals=normals[seen], thin=thin[seen])


def seen_by(points, w2c, K, depth, tolerance=0.02):
    """How many views see each point (its depth matches the view's depth map)."""
    count = np.zeros(len(points), int)
    h, w = depth.shape[1:]
    for view, d in zip(w2c, depth, strict=True):
        cam = points @ view[:, :3].T + view[:, 3]
        z = np.maximum(cam[:, 2], 1e-9)
        u = np.floor(K[0, 0] * cam[:, 0] / z + K[0, 2]).astype(int)
        v = np.floor(K[1, 1] * cam[:, 1] / z + K[1, 2]).astype(int)
        ok = (cam[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        hit = np.zeros(len(points), bool)
        hit[ok] = np.abs(d[v[ok], u[ok]] - z[ok]) < tolerance * z[ok]
        count += hit
    return count


def cycles_render(shapes, cams, K, width, height, samples, lamp=False):
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    setup_cycles(scene, width, height, samples)
    if lamp:  # a closed room: the sun cannot reach in
        light = bpy.data.objects.new("lamp", bpy.data.lights.new("lamp", "POINT"))
        light.data.energy = 60.0
        light.location = (0.0, 0.0, 2.2)
        scene.collection.objects.link(light)
    for s in shapes:
        add_shape(scene, s)
    cam = add_camera(scene, K, width)
    out = Path(tempfile.mkdtemp(prefix="da3-scene-"))
    files = depth_node_output(scene, out)
    images, depths = [], []
    for w2c in cams:
        cam.matrix_world = blender_camera_matrix(w2c)
        bpy.ops.render.render(write_still=False)
        images.append(read_exr(files["rgb"])[..., :3])
        depths.append(read_exr(files["depth"])[..., 0])
    bpy.ops.wm.read_homefile(use_empty=True)
    depth = np.array(depths, np.float32)
    depth[depth > 1e6] = 0
    return linear_to_srgb8(np.array(images)), depth


def setup_cycles(scene, width, height, samples):
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.device = "CPU"
    scene.cycles.max_bounces = 1  # colour only has to be plausible; bounces cost time
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.view_layers[0].use_pass_z = True
    world = bpy.data.worlds.new("world")
    if world.node_tree is None:  # node-based from the start on 5.0, not on 4.2
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.3, 0.3, 0.35, 1)
    scene.world = world
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.6, 0.2, 0.8)
    scene.collection.objects.link(sun)


def add_shape(scene, shape: Shape):
    import bpy

    mesh = bpy.data.meshes.new(shape.name)
    mesh.from_pydata(shape.vertices.tolist(), [], [list(f) for f in shape.faces])
    mat = bpy.data.materials.new(shape.name)
    mat.diffuse_color = (*shape.color, 1)
    if mat.node_tree is None:  # node-based from the start on 5.0, not on 4.2
        mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*shape.color, 1)
    if shape.checker:
        checker = mat.node_tree.nodes.new("ShaderNodeTexChecker")
        checker.inputs["Color1"].default_value = (*shape.color, 1)
        checker.inputs["Color2"].default_value = (*(0.3 * c for c in shape.color), 1)
        checker.inputs["Scale"].default_value = 12.0
        mat.node_tree.links.new(checker.outputs["Color"], bsdf.inputs["Base Color"])
    mesh.materials.append(mat)
    scene.collection.objects.link(bpy.data.objects.new(shape.name, mesh))


def add_camera(scene, K, width):
    import bpy

    data = bpy.data.cameras.new("cam")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = K[0, 0] * 36.0 / width
    data.clip_start, data.clip_end = 0.01, 1000
    cam = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def blender_camera_matrix(w2c):
    from mathutils import Matrix

    R, t = w2c[:, :3], w2c[:, 3]
    m = np.eye(4)
    m[:3, :3] = R.T @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes -> Blender's
    m[:3, 3] = -R.T @ t
    return Matrix(m.tolist())


def depth_node_output(scene, folder: Path) -> dict[str, Path]:
    """Compositor nodes that write each render's colour and depth as EXR files; returns where.

    Blender 5.0 made the compositor a node group of its own and File Output items named files;
    4.2 has the scene's node tree and file slots, and adds the frame number to the name.
    """
    import bpy

    if bpy.app.version >= (5, 0, 0):
        tree = bpy.data.node_groups.new("depth", "CompositorNodeTree")
        scene.compositing_node_group = tree
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.file_output_items.new("FLOAT", "depth")
        out.file_output_items.new("RGBA", "rgb")
        out.format.media_type = "IMAGE"
        out.directory = str(folder)
        out.file_name = ""
        names = {"depth": "depth.exr", "rgb": "rgb.exr"}
    else:
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.base_path = str(folder)
        out.file_slots.clear()
        out.file_slots.new("depth")
        out.file_slots.new("rgb")
        frame = f"{scene.frame_current:04d}"
        names = {"depth": f"depth{frame}.exr", "rgb": f"rgb{frame}.exr"}
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    layers = tree.nodes.new("CompositorNodeRLayers")
    tree.links.new(layers.outputs["Depth"], out.inputs["depth"])
    tree.links.new(layers.outputs["Image"], out.inputs["rgb"])
    return {key: folder / name for key, name in names.items()}


def read_exr(path: Path) -> np.ndarray:
    import bpy

    img = bpy.data.images.load(str(path))
    w, h = img.size
    buf = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(buf)
    bpy.data.images.remove(img)
    return buf.reshape(h, w, 4)[::-1]  # Blender's rows run bottom-up


def linear_to_srgb8(c):
    c = np.clip(c, 0, 1)
    s = np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.round(s * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# DA3-like predictions


@dataclass
class Degraded:
    prediction: Prediction
    scale: float  # prediction units per scene unit
    to_scene: np.ndarray  # (4,4): prediction world -> scene world


# Harder than the default, like issue 12's held-out scenes: a smooth 2.5% depth error per view,
# 0.5% pixel noise, flying pixels at edges (confidence 1.0-1.5, as always), poses off by 0.5
# degrees and 1% of the scene's size.
HARD = dict(depth_error=0.025, pixel_noise=0.005, pose_deg=0.5, pose_frac=0.01)


def degrade(scene: Scene, seed=0, depth_error=0.025, pose_deg=0.2, pose_frac=0.002,
            scale=0.37, background_conf=None, pixel_noise=0.002) -> Degraded:
    """What DA3 would say about ``scene``; see the module doc.

    ``depth_error``: amplitude of each view's smooth relative depth error; ``pixel_noise``:
    standard deviation of the relative noise per pixel; ``pose_deg``, ``pose_frac``: rotation
    (degrees) and translation (share of the scene's size) noise of every view but the first;
    ``background_conf``: the confidence of every background pixel (DA3 gives its sky 1.0);
    default a little above that, at random. ``HARD`` holds a harder setting.
    """
    rng = np.random.default_rng(seed)
    n, h, w = scene.depth.shape
    R0, t0 = scene.w2c[0, :, :3], scene.w2c[0, :, 3]
    ext, depth, conf = [], [], []
    for i in range(n):
        R = scene.w2c[i, :, :3] @ R0.T
        t = scale * (scene.w2c[i, :, 3] - R @ t0)
        if i:
            R = small_rotation(rng, pose_deg) @ R
            t = t + rng.normal(0, pose_frac * scene.size * scale / math.sqrt(3), 3)
        ext.append(np.c_[R, t])
        d, c = degrade_depth(scene.depth[i] * scale, rng, depth_error, pixel_noise)
        if background_conf is not None:
            c[scene.depth[i] <= 0] = background_conf
        depth.append(d)
        conf.append(c)
    to_scene = np.eye(4)
    to_scene[:3, :3] = R0.T
    to_scene[:3, 3] = -R0.T @ t0
    to_scene[:3, :3] /= scale
    pred = Prediction(depth=np.array(depth, np.float32), intrinsics=np.tile(scene.K, (n, 1, 1)),
                      extrinsics=np.array(ext), conf=np.array(conf, np.float32), image=scene.image)
    return Degraded(pred, scale, to_scene)


def with_true_poses(scene: Scene, degraded: Degraded) -> Degraded:
    """``degraded`` with every view's pose as it truly was, in the prediction's frame (view 0's
    camera, ``degraded.scale``): where a left-out photo was really taken from."""
    R0, t0 = scene.w2c[0, :, :3], scene.w2c[0, :, 3]
    R = scene.w2c[:, :, :3] @ R0.T
    t = degraded.scale * (scene.w2c[:, :, 3] - np.einsum("nij,j->ni", R, t0))
    pred = dataclasses.replace(degraded.prediction, extrinsics=np.concatenate([R, t[:, :, None]], axis=2))
    return dataclasses.replace(degraded, prediction=pred)


def small_rotation(rng, degrees):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(degrees) * rng.normal()
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def smooth_field(rng, h, w, waves=4, max_cycles=1.5):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    field = np.zeros((h, w))
    for _ in range(waves):
        fx, fy = rng.uniform(-max_cycles, max_cycles, 2)
        field += rng.uniform(0.5, 1) * np.cos(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    return field / np.abs(field).max()


def degrade_depth(true, rng, depth_error, pixel_noise=0.002):
    """Relative error field, flying pixels at edges, far unconfident background."""
    h, w = true.shape
    hit = true > 0
    far = true[hit].max() * 3 if hit.any() else 10.0
    depth = np.where(hit, true, far * (1 + 0.1 * smooth_field(rng, h, w)))
    depth *= (1 + depth_error * smooth_field(rng, h, w)) * (1 + rng.normal(0, pixel_noise, (h, w)))
    conf = 6 + 4 * smooth_field(rng, h, w) ** 2 + rng.normal(0, 0.3, (h, w))
    conf[~hit] = rng.uniform(1.0, 1.3, np.count_nonzero(~hit))
    edge = depth_edges(depth, 0.05)
    mix = rng.uniform(0, 1, (h, w))
    blurred = box_blur(depth)
    depth = np.where(edge, mix * depth + (1 - mix) * blurred, depth)
    conf[edge] = rng.uniform(1.0, 1.5, np.count_nonzero(edge))
    return depth.astype(np.float32), np.maximum(conf, 1.0).astype(np.float32)


def depth_edges(depth, tol):
    """Pixels within one pixel of a relative depth jump over ``tol``."""
    jump = np.zeros(depth.shape, bool)
    ratio_x = np.abs(np.diff(depth, axis=1)) / np.minimum(depth[:, 1:], depth[:, :-1])
    ratio_y = np.abs(np.diff(depth, axis=0)) / np.minimum(depth[1:], depth[:-1])
    jump[:, 1:] |= ratio_x > tol
    jump[:, :-1] |= ratio_x > tol
    jump[1:] |= ratio_y > tol
    jump[:-1] |= ratio_y > tol
    return jump


def box_blur(a, r=2):
    p = np.pad(a, r, mode="edge")
    h, w = a.shape
    n = 2 * r + 1
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(n) for dx in range(n)) / n ** 2


# ---------------------------------------------------------------------------------------------
# metrics


@dataclass
class Quality:
    accuracy: float  # mean distance, reconstruction -> truth, relative to the scene size
    completeness: float  # mean distance, truth -> reconstruction, relative
    precision: float
    recall: float
    fscore: float
    boundary_edges: int
    components: int
    faces: int
    normal: float = 0.0  # mean |cos| of mesh face normal vs the true normal (points within tau)
    thin_survival: float | None = None  # recall over the thin parts' samples; None: no thin parts

    def row(self, label):
        thin = "-" if self.thin_survival is None else f"{self.thin_survival:.3f}"
        return (f"{label:<14} {100 * self.accuracy:7.2f}% {100 * self.completeness:7.2f}% "
                f"{self.precision:6.3f} {self.recall:6.3f} {self.fscore:6.3f} {self.normal:6.3f} "
                f"{thin:>6} {self.boundary_edges:8d} {self.components:6d} {self.faces:8d}")


HEADER = (f"{'method':<14} {'acc':>8} {'compl':>8} {'prec':>6} {'recall':>6} {'F@1%':>6} "
          f"{'normal':>6} {'thin':>6} {'boundary':>8} {'parts':>6} {'faces':>8}")


def evaluate(vertices, faces, scene: Scene, to_scene=None, tau=0.01, samples=60000, seed=0) -> Quality:
    """Quality of a mesh (in prediction units unless ``to_scene`` maps it) against the truth.

    Precision and recall count points within ``tau`` of the scene's size of the other surface.
    ``normal``: over the mesh's sample points within that distance of the truth, the mean |cos|
    between the normal of the face each lies on and the true normal at the nearest true sample
    (1: smooth and right, whichever way the faces wind; grain lowers it). ``thin_survival``: the
    recall of the true samples on thin parts alone.
    """
    v = np.asarray(vertices, np.float64)
    faces = np.asarray(faces).reshape(-1, 3)
    if to_scene is not None:
        v = v @ to_scene[:3, :3].T + to_scene[:3, 3]
    pts, tri = sample_faces(v, faces, samples, np.random.default_rng(seed))
    low, high = scene.region
    inside = np.all((pts >= low) & (pts <= high), axis=1)
    pts, tri = pts[inside], tri[inside]
    judged = np.all((scene.surface >= low) & (scene.surface <= high), axis=1)
    truth, true_normals, thin = scene.surface[judged], scene.normals[judged], scene.thin[judged]
    d_pred, nearest = nearest_distances(truth, pts, return_index=True)
    d_true = nearest_distances(pts, truth) if len(pts) else np.full(len(truth), np.inf)
    t = tau * scene.size
    precision = float(np.mean(d_pred < t)) if len(pts) else 0.0
    recall = float(np.mean(d_true < t))
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    cap = 10 * t  # a mean that a few far-off triangles cannot dominate
    close = d_pred < t
    cos = np.abs(np.sum(face_normals(v, faces)[tri[close]] * true_normals[nearest[close]], axis=1))
    return Quality(float(np.mean(np.minimum(d_pred, cap)) / scene.size) if len(pts) else 1.0,
                   float(np.mean(np.minimum(d_true, cap)) / scene.size), precision, recall, f,
                   boundary_edges(faces), count_components(faces, len(v)), len(faces),
                   float(np.mean(cos)) if len(cos) else 0.0,
                   float(np.mean(d_true[thin] < t)) if thin.any() else None)


def sample_mesh(v, faces, n, rng):
    """``n`` points spread evenly over the mesh's area."""
    return sample_faces(v, faces, n, rng)[0]


def sample_faces(v, faces, n, rng):
    """``n`` points spread evenly over the mesh's area, and the face each lies on."""
    if len(faces) == 0:
        return np.zeros((0, 3)), np.zeros(0, int)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = rng.uniform(size=(2, n, 1))
    s = np.sqrt(r1)
    return (1 - s) * a[tri] + s * (1 - r2) * b[tri] + s * r2 * c[tri], tri


def face_normals(v, faces):
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return unit(np.cross(b - a, c - a))


def nearest_distances(reference, queries, return_index=False):
    """Distance from each query to its nearest reference point (mathutils KD-tree), and with
    ``return_index`` that point's index."""
    import bpy  # noqa: F401  (mathutils comes with it)
    from mathutils.kdtree import KDTree

    tree = KDTree(len(reference))
    for i, p in enumerate(reference.tolist()):
        tree.insert(p, i)
    tree.balance()
    found = [tree.find(q) for q in queries.tolist()]
    distances = np.array([f[2] for f in found], float)
    return (distances, np.array([f[1] for f in found], int)) if return_index else distances


def boundary_edges(faces) -> int:
    """Edges that one triangle alone uses: zero on a closed surface."""
    if len(faces) == 0:
        return 0
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    pairs = np.ascontiguousarray(edges, np.int64).view(np.dtype((np.void, 16)))[:, 0]  # one key each
    return int(np.count_nonzero(np.unique(pairs, return_counts=True)[1] == 1))


def count_components(faces, num_vertices: int) -> int:
    """Pieces of the mesh (triangles that share a vertex are one piece): union-find by label
    hooking and pointer jumping over all edges at once."""
    if len(faces) == 0:
        return 0
    a, b = faces.ravel(), np.roll(faces, 1, axis=1).ravel()
    label = np.arange(num_vertices)
    while True:
        la, lb = label[a], label[b]
        if np.array_equal(la, lb):
            return len(np.unique(label[faces[:, 0]]))
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)  # hook each root under the smallest root it touches
        np.minimum.at(label, lb, low)
        while not np.array_equal(label[label], label):  # every vertex straight to its root
            label = label[label]


# ---------------------------------------------------------------------------------------------
# the REMESH baseline: the importer's per-view surfaces, voxel-remeshed by Blender


def remesh_baseline(pred: Prediction, voxel_size: float = 0.0):
    """Vertices (prediction units) and faces of what fusion='REMESH' builds.

    Uses the importer's own filters and triangulation (engine.core.geometry) and Blender's voxel
    remesher with the same settings as builder/surface.py.
    """

    from engine.core import geometry
    from engine.core.options import BuildOptions

    geo = geometry.prepare(pred, BuildOptions(), None)
    voxel = geometry.voxel_size_for(geo, voxel_size * geo.scale if voxel_size else 0.0)
    joined = geometry.surface_input(geo, pred.depth, voxel)
    v, f = voxel_remeshed(joined.vertices, joined.triangles, voxel)
    to_cv = geometry.CV_TO_BLENDER.T / geo.scale  # Blender frame and scale -> prediction's
    return v @ to_cv.T, f, voxel / geo.scale


def voxel_remeshed(vertices: np.ndarray, triangles: np.ndarray, voxel: float):
    """Vertices and triangles of the mesh after Blender's voxel remesher (the settings of
    builder/surface.py)."""
    import bpy

    mesh = bpy.data.meshes.new("remesh")
    mesh.from_pydata(np.asarray(vertices).tolist(), [], np.asarray(triangles).tolist())
    obj = bpy.data.objects.new("remesh", mesh)
    bpy.context.scene.collection.objects.link(obj)
    mesh.remesh_voxel_size = voxel
    mesh.use_remesh_preserve_volume = True
    with bpy.context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
        bpy.ops.object.voxel_remesh()
    mesh = obj.data
    v = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", v)
    mesh.calc_loop_triangles()
    f = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", f)
    bpy.data.objects.remove(obj)
    return v.reshape(-1, 3), f.reshape(-1, 3)


# ---------------------------------------------------------------------------------------------
# pictures of meshes, for a reader


def workbench_render(vertices, faces, views, width, height) -> np.ndarray:
    """Images (N,H,W,3) uint8 of one mesh (scene world, Z up) seen from ``views`` ((w2c, K)
    each, OpenCV world-to-camera (3,4) and intrinsics for ``width``) with Blender's Workbench
    engine: solid, studio light, one neutral grey for every face (no vertex colours), shaded
    smooth as the importer's meshes are (built the same way: no ``sharp_face``). Workbench
    renders in the headless module (through EGL; it prints EGL_BAD_MATCH lines and renders all
    the same)."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    shading = scene.display.shading
    shading.light, shading.color_type = "STUDIO", "SINGLE"
    shading.single_color = (0.7, 0.7, 0.7)
    scene.world = bpy.data.worlds.new("world")
    scene.world.color = (0.02, 0.02, 0.025)  # Workbench's background
    scene.collection.objects.link(bpy.data.objects.new("mesh", mesh_from_arrays("mesh", vertices, faces)))
    cam = add_camera(scene, views[0][1], width)
    scene.render.filepath = str(Path(tempfile.mkdtemp(prefix="da3-workbench-")) / "view.png")
    images = []
    for w2c, K in views:
        cam.data.lens = K[0, 0] * 36.0 / width
        cam.matrix_world = blender_camera_matrix(w2c)
        bpy.ops.render.render(write_still=True)
        images.append(np.round(read_exr(Path(scene.render.filepath))[..., :3] * 255).astype(np.uint8))
    bpy.ops.wm.read_homefile(use_empty=True)
    return np.array(images)


# --- a view left out: how closely a result renders like a photo it never saw ------------------

def without_view(pred: Prediction, j: int) -> Prediction:
    """``pred`` without view ``j`` (which must not be view 0: that one defines the frame)."""
    keep = np.arange(pred.num_views) != j
    return Prediction(depth=pred.depth[keep], intrinsics=pred.intrinsics[keep],
                      extrinsics=pred.extrinsics[keep], conf=pred.conf[keep], image=pred.image[keep])


def camera_in_result(pred: Prediction, j: int, scale: float) -> np.ndarray:
    """View ``j``'s OpenCV world-to-camera (3,4) in the result's frame: view 0's camera turned
    Z-up, times ``scale`` (worked out here from the frame's definition)."""
    cv_to_blender = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    to_result = np.eye(4)
    to_result[:3, :3] = scale * cv_to_blender @ pred.extrinsics[0][:, :3]
    to_result[:3, 3] = scale * cv_to_blender @ pred.extrinsics[0][:, 3]
    w2c = np.eye(4)
    w2c[:3] = pred.extrinsics[j]
    return scale * (w2c @ np.linalg.inv(to_result))[:3]


def workbench_colours(surface, w2c, k, width, height, color_type):
    """(H,W,4) float sRGB of the object ``surface`` alone, as Blender's Workbench engine draws it
    flat-lit: its texture (``color_type`` "TEXTURE") or its vertex colours ("VERTEX")."""
    import bpy

    scene = bpy.context.scene
    for obj in scene.objects:
        obj.hide_render = obj is not surface
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = color_type
    camera = scene.camera = bpy.data.objects.new("held out", bpy.data.cameras.new("held out"))
    scene.collection.objects.link(camera)
    camera.data.sensor_fit, camera.data.sensor_width = "HORIZONTAL", 36.0
    camera.data.lens = k[0, 0] * 36.0 / width
    camera.data.clip_start, camera.data.clip_end = 0.01, 1000
    camera.matrix_world = blender_camera_matrix(w2c)
    scene.render.filepath = str(Path(tempfile.mkdtemp(prefix="da3-texture-")) / "view.png")
    bpy.ops.render.render(write_still=True)
    return read_exr(Path(scene.render.filepath))


def left_out_renders(collection, scene: Scene, degraded: Degraded, j: int) -> dict:
    """The result's surface seen from left-out view ``j``, flat-lit by Workbench, with its
    texture and with its vertex colours: {"TEXTURE": (H,W,4), "VERTEX": (H,W,4)}."""
    surface = next(o for o in collection.objects if o.get("da3_role") == "surface")
    w2c = camera_in_result(degraded.prediction, j, collection["da3_scale"])
    height, width = scene.depth.shape[1:]
    return {kind: workbench_colours(surface, w2c, scene.K, width, height, kind)
            for kind in ("TEXTURE", "VERTEX")}


def photo_error(rendered: np.ndarray, photo: np.ndarray, truth_depth: np.ndarray) -> float:
    """Mean |difference| (0-255) over the object's pixels that the render covers."""
    judged = (truth_depth > 0) & (rendered[..., 3] > 0.99)
    if judged.mean() < 0.05:
        raise ValueError("the render covers almost none of the object: wrong camera?")
    return float(np.abs(rendered[..., :3][judged] * 255 - photo[judged]).mean())


def sharpness(render: np.ndarray, covered: np.ndarray, photo: np.ndarray, depth: np.ndarray) -> float:
    """Mean |horizontal| + |vertical| difference of neighbouring pixels' grey levels in
    ``render`` over the same in ``photo``, where both show the object (away from its outline)."""
    def gradient(image):
        grey = image.astype(np.float64).mean(axis=-1)
        return np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]

    judged = covered & (depth > 0)
    judged = judged[:-1, :-1] & judged[1:, :-1] & judged[:-1, 1:]
    return float(gradient(render)[judged].mean() / max(gradient(photo)[judged].mean(), 1e-9))


def mesh_from_arrays(name: str, vertices: np.ndarray, triangles: np.ndarray):
    """A Blender mesh from numpy arrays (foreach_set; no per-element Python)."""
    import bpy

    triangles = np.ascontiguousarray(triangles, np.int32)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", np.ascontiguousarray(vertices, np.float32).ravel())
    mesh.loops.add(triangles.size)
    mesh.loops.foreach_set("vertex_index", triangles.ravel())
    mesh.polygons.add(len(triangles))
    mesh.polygons.foreach_set("loop_start", np.arange(0, triangles.size, 3, dtype=np.int32))
    mesh.update()
    return mesh


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB image (H,W,3) as a PNG file (no imaging library needed)."""
    Path(path).write_bytes(png_bytes(np.ascontiguousarray(rgb, np.uint8)))
