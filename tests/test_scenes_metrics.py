"""The benchmark's measures (tests/scenes.py ``evaluate``) against answers known by hand.

Meshes are built from the analytic shapes in numpy and judged against samples of the same
shapes' true surface, so no Cycles render is needed. Boundary edges and pieces are also
checked against bmesh, a second implementation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import scenes  # noqa: E402


def triangles(shapes) -> tuple[np.ndarray, np.ndarray]:
    """One triangle mesh of the shapes' own meshes (polygons fanned into triangles)."""
    verts, tris, offset = [], [], 0
    for s in shapes:
        verts.append(np.asarray(s.vertices, float))
        tris += [(offset + f[0], offset + f[i], offset + f[i + 1])
                 for f in s.faces for i in range(1, len(f) - 1)]
        offset += len(s.vertices)
    return np.concatenate(verts), np.array(tris, np.int64)


def truth_scene(shapes, per_area=20000, layout=None) -> scenes.Scene:
    """A scene with no views: only the true surface of ``shapes`` (every sample judged)."""
    surface, normals, thin = scenes.true_surface(shapes, 0, np.random.default_rng(1), per_area)
    if layout is None:
        low, high = surface.min(axis=0), surface.max(axis=0)
        size, region = float(np.linalg.norm(high - low)), (low - 0.1, high + 0.1)
    else:
        size, region = layout.size, layout.region
    return scenes.Scene("truth", None, None, None, None, surface, size, region, normals, thin)


@pytest.fixture(scope="module")
def ball():
    shape = scenes.sphere((0.0, 0.0, 0.0), 0.5)
    return shape, truth_scene([shape])


def quality(v, f, scene):
    return scenes.evaluate(v, f, scene, samples=20000)


def test_true_normals_point_out_of_every_shape():
    shapes = [*scenes.thin_shapes(), *scenes.parts_shapes(), *scenes.room_shapes(), *scenes.mug_shapes()]
    rng = np.random.default_rng(0)
    for s in shapes:
        p = s.sample(500, rng)
        n = s.normal(p)
        assert np.allclose(np.linalg.norm(n, axis=1), 1), s.name
        assert not s.inside(p + 1e-4 * n).any() and s.inside(p - 1e-4 * n).all(), s.name


def test_perfect_mesh_scores_one(ball):
    shape, scene = ball
    q = quality(*triangles([shape]), scene)
    assert q.fscore > 0.99 and q.normal > 0.99, q
    assert q.boundary_edges == 0 and q.components == 1, q
    assert q.thin_survival is None  # no thin parts in a ball


def test_noisy_vertices_lower_normal_consistency(ball):
    shape, scene = ball
    v, f = triangles([shape])
    noisy = v + np.random.default_rng(0).normal(0, 0.006, v.shape)  # well within tau (0.017)
    perfect, grainy = quality(v, f, scene), quality(noisy, f, scene)
    assert grainy.fscore > 0.95, grainy  # still close to the surface everywhere ...
    assert grainy.normal < perfect.normal - 0.03, (grainy, perfect)  # ... but grainy


def test_flipped_faces_count_the_same(ball):
    shape, scene = ball
    v, f = triangles([shape])
    assert quality(v, f[:, ::-1], scene).normal == pytest.approx(quality(v, f, scene).normal, abs=1e-4)


def test_open_mesh_reports_its_boundary(ball):
    shape, scene = ball
    v, f = triangles([shape])
    top = np.any(f == 0, axis=1)  # the fan of 64 triangles around the north pole
    assert top.sum() == 64
    q = quality(v, f[~top], scene)
    assert q.boundary_edges == 64 == bmesh_boundary_edges(v, f[~top])
    assert q.components == 1


def test_separate_meshes_are_separate_pieces():
    a, b = scenes.sphere((0, 0, 0), 0.5), scenes.sphere((2, 0, 0), 0.3)
    v, f = triangles([a, b])
    q = quality(v, f, truth_scene([a, b]))
    assert q.components == 2 == bmesh_pieces(v, f)
    assert q.boundary_edges == 0 and q.fscore > 0.99


def test_pieces_and_boundary_match_bmesh_on_ragged_meshes():
    """Random triangles of a grid: many pieces, holes, pieces that touch at a corner."""
    rng = np.random.default_rng(3)
    n = 30
    idx = np.arange(n * n).reshape(n, n)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    f = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    f = f[rng.uniform(size=len(f)) < 0.3]
    v = np.c_[np.mgrid[0:n, 0:n].reshape(2, -1).T, np.zeros(n * n)].astype(float)
    assert scenes.count_components(f, len(v)) == bmesh_pieces(v, f) > 5
    assert scenes.boundary_edges(f) == bmesh_boundary_edges(v, f)


def test_thin_survival_drops_without_the_thin_parts():
    shapes = scenes.thin_shapes()
    scene = truth_scene(shapes, 30000, scenes.scene_layout("thin"))
    assert 0.2 < scene.thin.mean() < 0.8
    whole = quality(*triangles(shapes), scene)
    seat_only = quality(*triangles([s for s in shapes if not s.thin]), scene)
    assert whole.thin_survival > 0.99 and whole.fscore > 0.99, whole
    assert seat_only.thin_survival < 0.2, seat_only
    assert seat_only.recall > seat_only.thin_survival  # the seat itself is still there


def test_pixel_noise_is_a_parameter():
    depth = np.full((2, 16, 16), 2.0, np.float32)
    w2c = np.array([scenes.look_at(np.array([0.0, -2.0, 0.0]), (0, 0, 0))] * 2)
    scene = scenes.Scene("flat", np.zeros((2, 16, 16, 3), np.uint8), depth, np.eye(3), w2c,
                         np.zeros((0, 3)), 1.0, (np.zeros(3), np.ones(3)))
    exact = scenes.degrade(scene, depth_error=0, pose_deg=0, pose_frac=0, scale=1.0, pixel_noise=0)
    assert np.allclose(exact.prediction.depth, 2.0)
    noisy = scenes.degrade(scene, depth_error=0, pose_deg=0, pose_frac=0, scale=1.0, pixel_noise=0.005)
    assert 0.003 < np.std(noisy.prediction.depth / 2.0) < 0.007
    hard = scenes.degrade(scene, **scenes.HARD)  # every key is one of degrade's
    assert hard.prediction.depth.shape == depth.shape


def bmesh_mesh(v, f):
    import bmesh
    import bpy  # noqa: F401  (bmesh comes with it)

    bm = bmesh.new()
    verts = [bm.verts.new(p) for p in v.tolist()]
    for tri in f.tolist():
        bm.faces.new([verts[i] for i in tri])
    bm.faces.index_update()
    return bm


def bmesh_boundary_edges(v, f) -> int:
    bm = bmesh_mesh(v, f)
    count = sum(e.is_boundary for e in bm.edges)
    bm.free()
    return count


def bmesh_pieces(v, f) -> int:
    """Flood fill over faces that share a vertex."""
    bm = bmesh_mesh(v, f)
    seen, pieces = set(), 0
    for start in bm.faces:
        if start.index in seen:
            continue
        pieces += 1
        stack = [start]
        seen.add(start.index)
        while stack:
            for vert in stack.pop().verts:
                for face in vert.link_faces:
                    if face.index not in seen:
                        seen.add(face.index)
                        stack.append(face)
    bm.free()
    return pieces
