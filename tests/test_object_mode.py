"""Object mode never destroys the object.

An object of four separate parts (a pedestal with a head above it, a ring standing on edge
with a ball inside it; tests/scenes.py ``parts_shapes``) photographed from around it, degraded
like DA3: standing on nothing (no floor in view), on a textured table, and on a textured
floor. Every part must be kept and closed; the table or floor is cut when it is there and
nothing is cut when it is not. Closedness is counted here from the faces, not with fusion's
own helpers.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

from engine.fusion.base import TSDFOptions
from engine.fusion.pieces import count_components
from engine.fusion.tsdf import fuse_tsdf

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import scenes  # noqa: E402

RESOLUTION = 128
SCENES = ("parts", "parts_table", "parts_floor")


@functools.cache
def fused_scene(name: str):
    """(name, scene, its DA3-like prediction, the object-mode mesh, its vertices in the scene)."""
    scene = scenes.render_scene(name)
    degraded = scenes.degrade(scene, seed=0)
    mesh = fuse_tsdf(degraded.prediction, TSDFOptions(resolution=RESOLUTION, object_mode=True))
    v = mesh.vertices.astype(np.float64) @ degraded.to_scene[:3, :3].T + degraded.to_scene[:3, 3]
    return name, scene, degraded, mesh, v


@pytest.fixture(scope="session", params=SCENES)
def fused(request):
    return fused_scene(request.param)


def edge_uses(faces: np.ndarray) -> np.ndarray:
    """How many face sides lie on each undirected edge (2 everywhere on a closed surface)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def part_recall(part: scenes.Shape, points: np.ndarray, scene: scenes.Scene, z0: float) -> float:
    """Share of the part's surface that two views see (above where it meets its support) that
    lies within 1% of the object's size of the mesh."""
    truth = part.sample(4000, np.random.default_rng(0))
    truth = truth[truth[:, 2] > z0 + 0.08]
    truth = truth[scenes.seen_by(truth, scene.w2c, scene.K, scene.depth) >= 2]
    return float(np.mean(scenes.nearest_distances(points, truth) < 0.01 * scene.size))


def test_every_part_is_kept(fused):
    name, scene, _, mesh, v = fused
    z0 = scenes.OBJECT_SCENES[name][2]
    points = scenes.sample_mesh(v, mesh.faces, 30000, np.random.default_rng(0))
    recall = [part_recall(part, points, scene, z0) for part in scenes.parts_shapes(z0)]
    assert min(recall) > 0.85, recall  # pedestal, head, ring, ball: none cut away


def test_object_is_accurate(fused):
    """Over the whole object; the space no view sees (under the head, between ball and ring)
    is filled, which is what keeps precision under 1 (0.92-0.93 today)."""
    _, scene, degraded, mesh, _ = fused
    quality = scenes.evaluate(mesh.vertices, mesh.faces, scene, degraded.to_scene)
    assert quality.recall > 0.97, quality
    assert quality.fscore > 0.93, quality


def test_every_kept_part_is_closed(fused):
    _, _, _, mesh, _ = fused
    assert len(mesh.faces) > 0
    assert np.all(edge_uses(mesh.faces) == 2)


def test_no_background_or_specks(fused):
    name, scene, degraded, mesh, v = fused
    points = scenes.sample_mesh(v, mesh.faces, 20000, np.random.default_rng(0))
    low, high = scene.region
    far = np.any((points < low - 0.3) | (points > high + 0.3), axis=1)
    assert np.mean(far) < 0.01
    # pedestal, head, ring and ball: the ball may touch the ring, nothing else is a piece
    assert 2 <= count_components(mesh.faces, len(mesh.vertices)) <= 4


def test_support_is_cut_only_where_there_is_one(fused):
    name, scene, degraded, mesh, v = fused
    z0 = scenes.OBJECT_SCENES[name][2]
    if name == "parts":  # nothing under the object: nothing is cut, its foot stays
        assert mesh.stats["floor"] is None
        assert v[:, 2].min() < z0 + 0.02
        return
    assert mesh.stats["floor"] is not None
    # no slab of table or floor around the object: everything low lies over the object's
    # footprint (its parts seen from above)
    points = scenes.sample_mesh(v, mesh.faces, 20000, np.random.default_rng(0))
    low = points[points[:, 2] < z0 + 0.05] * [1, 1, 0]
    footprint = scene.surface * [1, 1, 0]
    off_object = scenes.nearest_distances(footprint, low) > 0.05 if len(low) else np.zeros(0)
    assert np.count_nonzero(off_object) < 0.01 * len(points)
    assert v[:, 2].min() > z0 - 0.05  # cut at the support, not below it


def test_keep_largest_keeps_one_piece():
    _, _, degraded, mesh, _ = fused_scene("parts_table")
    largest = fuse_tsdf(degraded.prediction, TSDFOptions(
        resolution=RESOLUTION, object_mode=True, keep_largest=True))
    assert count_components(largest.faces, len(largest.vertices)) == 1
    assert len(largest.faces) < len(mesh.faces)


def test_object_mode_on_a_room_says_what_to_do_instead():
    """Cameras inside a room looking out share no object: one line says so, not an empty mesh."""
    from tests.room import room_truth

    with pytest.raises(ValueError, match="turn object mode off"):
        fuse_tsdf(room_truth(12, 96, 128), TSDFOptions(resolution=64, object_mode=True))
