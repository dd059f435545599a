"""Clean-up of fused meshes (engine.fusion.mesh_cleanup), judged with bmesh and analytic shapes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bpy
import numpy as np
import pytest

from engine.fusion import mesh_cleanup

REPO = Path(__file__).resolve().parents[1]


def sphere(subdivisions=4):
    """Vertices and triangles of a closed unit icosphere."""
    import bmesh  # only once bpy is imported

    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=subdivisions, radius=1.0)
    v = np.array([p.co[:] for p in bm.verts])
    f = np.array([[x.index for x in face.verts] for face in bm.faces])
    bm.free()
    return v, f


def box(cuts=15):
    """Vertices and triangles of a closed cube [-1, 1]^3, each face a grid of (cuts+1)^2 squares."""
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=2.0)
    bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=cuts, use_grid_fill=True)
    bmesh.ops.triangulate(bm, faces=bm.faces[:])
    v = np.array([p.co[:] for p in bm.verts])
    f = np.array([[x.index for x in face.verts] for face in bm.faces])
    bm.free()
    return v, f


def box_normal_consistency(vertices, faces, truth):
    """Mean |cos| between the faces' normals and the cube's true normal where each face lies
    (the axis its centre in ``truth`` is furthest along)."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    axis = np.argmax(np.abs(truth[faces].mean(axis=1)), axis=1)
    return float(np.mean(np.abs(normal[np.arange(len(faces)), axis]) / np.linalg.norm(normal, axis=1)))


def open_and_non_manifold(vertices, faces):
    """Boundary and non-manifold edge counts, as bmesh sees them."""
    import bmesh

    mesh = bpy.data.meshes.new("check")
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    bm = bmesh.new()
    bm.from_mesh(mesh)
    counts = (sum(e.is_boundary for e in bm.edges), sum(not e.is_manifold for e in bm.edges))
    bm.free()
    bpy.data.meshes.remove(mesh)
    return counts


def test_small_holes_are_closed_and_large_ones_left_open():
    v, f = sphere()
    small = np.nonzero(v[f].mean(axis=1)[:, 2] > 0.97)[0]  # a cap of a few triangles
    large = np.nonzero(v[f].mean(axis=1)[:, 2] < -0.5)[0]  # a quarter of the sphere
    holed = np.delete(f, np.concatenate([small, large]), axis=0)
    assert open_and_non_manifold(v, holed)[0] > 0
    filled, closed = mesh_cleanup.fill_small_holes(holed, len(v))
    assert closed == 1
    boundary, non_manifold = open_and_non_manifold(v, filled)
    assert non_manifold == boundary > 24  # only the large hole's rim is left
    cap_only, _ = mesh_cleanup.fill_small_holes(np.delete(f, small, axis=0), len(v))
    assert open_and_non_manifold(v, cap_only) == (0, 0)
    # the fill is wound like its surroundings: the closed mesh's volume is the sphere's
    a, b, c = (v[cap_only[:, k]] for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert abs(volume - 4 / 3 * np.pi) < 0.05


def test_smoothing_removes_grain_without_shrinking():
    v, f = sphere(5)
    rng = np.random.default_rng(0)
    noisy = v * (1 + rng.normal(0, 0.01, (len(v), 1)))
    smooth = mesh_cleanup.taubin_smooth(noisy, f)
    radius_before, radius_after = np.linalg.norm(noisy, axis=1), np.linalg.norm(smooth, axis=1)
    assert radius_after.std() < 0.6 * radius_before.std()  # 4 passes: about half
    assert abs(radius_after.mean() - 1) < 0.002  # Taubin's mu step undoes the shrinking


def test_open_borders_stay_put():
    v, f = sphere()
    half = f[v[f].mean(axis=1)[:, 2] > 0]
    smooth = mesh_cleanup.taubin_smooth(v, half, iterations=10)
    used = np.unique(half)
    rim = used[np.abs(v[used, 2]) < 1e-6]
    assert len(rim) > 10 and np.array_equal(smooth[rim], v[rim])
    assert np.array_equal(mesh_cleanup.taubin_smooth(v, f, iterations=0), v)


def test_unseen_vertices_alone_get_the_extra_passes():
    """The passes for a surface no view saw move those vertices only (the others stay to the
    bit), and take away a third more of their grain than the general four passes (which
    halve it)."""
    v, f = sphere(5)
    rng = np.random.default_rng(0)
    noisy = v * (1 + rng.normal(0, 0.01, (len(v), 1)))
    unseen = v[:, 2] < -0.3  # the underside
    general = mesh_cleanup.taubin_smooth(noisy, f)
    both = mesh_cleanup.taubin_smooth(noisy, f, unseen=unseen, unseen_iterations=30)
    assert np.array_equal(both[~unseen], general[~unseen])
    inner = unseen & (v[:, 2] < -0.5)  # away from the seen vertices that hold its rim
    grain = lambda points: np.linalg.norm(points[inner], axis=1).std()  # noqa: E731
    assert grain(both) < 0.7 * grain(general) and grain(general) < 0.85 * grain(noisy)
    assert abs(np.linalg.norm(both[inner], axis=1).mean() - 1) < 0.01  # no shrinking either
    assert np.array_equal(mesh_cleanup.taubin_smooth(noisy, f, unseen=unseen, unseen_iterations=0), general)


def test_a_taut_underside_loses_its_terraces():
    """Where an open pocket met the solid, the votes ran out in terraces a voxel high, a few
    edges apart. Taubin's passes keep shapes that wide; drawn taut (no mu steps) between the
    seen vertices round it, the patch comes out flat, and the vertices not marked taut move as
    Taubin's passes move them."""
    n = 41
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    index = np.arange(n * n).reshape(n, n)
    a, b = index[:-1, :-1].ravel(), index[1:, :-1].ravel()
    c, d = index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    terraces = 0.025 * (np.floor(x * (n - 1) / 4) % 2)  # a voxel high, 4 edges wide
    inner = (x > 0.1) & (x < 0.9) & (y > 0.1) & (y < 0.9)
    v = np.stack([x, y, np.where(inner, terraces, 0)], axis=-1).reshape(-1, 3)
    unseen = inner.ravel()
    taut = unseen & (v[:, 0] < 0.5)  # the left half drawn taut, the right half as before
    kept = mesh_cleanup.taubin_smooth(v, f, iterations=0, unseen=unseen, unseen_iterations=30)
    drawn = mesh_cleanup.taubin_smooth(v, f, iterations=0, unseen=unseen, unseen_iterations=30, taut=taut)
    core = taut & (v[:, 0] > 0.2) & (v[:, 0] < 0.4) & (v[:, 1] > 0.2) & (v[:, 1] < 0.8)
    relief = lambda points: np.ptp(points[core, 2])  # noqa: E731
    # Taubin's passes keep all of the terraces' height, taut a fifth of it today
    assert relief(kept) > 0.8 * 0.025 and relief(drawn) < 0.3 * 0.025, (relief(kept), relief(drawn))
    right = unseen & (v[:, 0] > 0.7)  # far from the taut half: moved as Taubin's passes move it
    assert np.allclose(drawn[right], kept[right], atol=1e-3)


def test_normal_filter_flattens_a_noisy_box_and_keeps_its_edges():
    """Noise of a sixth of an edge on a cube: Taubin's passes leave it rough (they keep what is
    a few edges wide); the normal filter after them makes the faces flat again and leaves the
    corners where they were, where a smoothing would round them."""
    v, f = box()
    noisy = v + np.random.default_rng(0).normal(0, 0.02, v.shape)
    taubin = mesh_cleanup.taubin_smooth(noisy, f)
    filtered = mesh_cleanup.filter_normals(taubin, f)
    assert box_normal_consistency(taubin, f, v) < 0.99 < 0.998 < box_normal_consistency(filtered, f, v)
    off_surface = lambda x: np.mean(np.abs(np.max(np.abs(x), axis=1) - 1))  # noqa: E731
    assert off_surface(filtered) < 0.5 * off_surface(taubin)
    corners = np.all(np.isclose(np.abs(v), 1), axis=1)
    assert corners.sum() == 8
    assert np.linalg.norm(filtered[corners] - v[corners], axis=1).max() < 0.04
    # a clean box stays as it is: its edges' two sides never mix
    assert np.abs(mesh_cleanup.filter_normals(v, f) - v).max() < 1e-3


def test_normal_filter_holds_borders_and_keeps_a_sphere_round():
    v, f = sphere(5)
    noisy = v * (1 + np.random.default_rng(0).normal(0, 0.01, (len(v), 1)))
    opened = f[v[f].mean(axis=1)[:, 2] < 0.5]  # a cap cut off: its rim is a border
    filtered = mesh_cleanup.filter_normals(noisy, opened)
    rim = np.zeros(len(v), bool)
    rim[mesh_cleanup.one_way_edges(mesh_cleanup.face_edges(opened, len(v))).ravel()] = True
    assert rim.sum() > 20 and np.array_equal(filtered[rim], noisy[rim])
    kept = np.unique(opened)
    radius = np.linalg.norm(filtered[kept], axis=1)
    assert abs(radius.mean() - 1) < 1e-3  # it moves along the normals: no shrinking
    assert radius.std() < 0.5 * np.linalg.norm(noisy[kept], axis=1).std()


@pytest.mark.parametrize("threads", [2, 3])
def test_smoothing_on_threads_moves_every_vertex_alike(threads):
    """Each coordinate is smoothed on its own thread, the normals filtered by ranges: the
    result is one thread's, to the bit."""
    v, f = sphere(5)
    noisy = v * (1 + np.random.default_rng(0).normal(0, 0.01, (len(v), 1)))
    unseen = v[:, 2] < -0.3
    alone = mesh_cleanup.taubin_smooth(noisy, f, unseen=unseen, unseen_iterations=30)
    threaded = mesh_cleanup.taubin_smooth(noisy, f, unseen=unseen, unseen_iterations=30,
                                          threads=threads)
    assert not np.array_equal(alone, noisy) and np.array_equal(threaded, alone)
    # the normal filter shares its passes by ranges of faces and of vertices
    alone = mesh_cleanup.filter_normals(noisy, f)
    threaded = mesh_cleanup.filter_normals(noisy, f, threads=threads)
    assert not np.array_equal(alone, noisy) and np.array_equal(threaded, alone)


def test_holes_closed_first_and_smoothed_later_give_the_same_mesh():
    """The fusion's probe closes the holes to count its faces and smooths only the mesh it
    keeps (engine.fusion.tsdf.Rough): the two calls give one call's mesh, to the bit."""
    v, f = sphere(5)
    noisy = v * (1 + np.random.default_rng(0).normal(0, 0.01, (len(v), 1)))
    holed = np.delete(f, np.nonzero(v[f].mean(axis=1)[:, 2] > 0.99)[0], axis=0)
    unseen = v[:, 2] < -0.3
    taut = v[:, 2] < -0.8
    once = mesh_cleanup.clean_surface(noisy, holed, 24, 4, unseen, taut, 30, 2, 10)
    v1, f1, holes, border = mesh_cleanup.clean_surface(noisy, holed, 24, 0, unseen, taut, 0, 2, 0)
    assert holes == 1 and np.array_equal(v1, noisy) and len(f1) > len(holed)
    v2, f2, more, border2 = mesh_cleanup.clean_surface(v1, f1, 0, 4, unseen, taut, 30, 2, 10)
    assert more == 0 and np.array_equal(f2, f1) and np.array_equal(f2, once[1])
    assert np.array_equal(v2, once[0]) and not np.array_equal(v2, noisy)
    assert border == border2 == once[3] == 0


def test_torch_path_cleans_alike(worker_python, tmp_path):
    """clean_surface on torch (the worker's GPU path) closes the same holes and moves the
    vertices as numpy does (to float32 noise: the normal filter's last passes run in float32
    and sum in another order on torch), in a subprocess of the worker's Python."""
    v, f = sphere()
    noisy = v * (1 + np.random.default_rng(0).normal(0, 0.01, (len(v), 1)))
    centres = v[f].mean(axis=1)
    holes = (centres[:, 2] > 0.97) | (centres[:, 0] > 0.97) | (centres[:, 2] < -0.5)
    # the lower part as if no view saw it: it gets the passes of the unseen surface too, half
    # of it drawn taut (torch_stages.py)
    np.savez(tmp_path / "mesh.npz", v=noisy, f=f[~holes], unseen=v[:, 2] < -0.2)
    done = subprocess.run([str(worker_python), str(REPO / "tests" / "torch_stages.py"), "clean",
                           str(tmp_path / "mesh.npz"), str(tmp_path / "out.npz"), "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "out.npz")
    assert got["holes"].tolist() == [2, 2]  # the two caps, not the large hole
    assert np.array_equal(got["f_torch"], got["f_numpy"])
    np.testing.assert_allclose(got["v_torch"], got["v_numpy"], rtol=0, atol=2e-6)
    boundary, non_manifold = open_and_non_manifold(got["v_torch"], got["f_torch"])
    assert non_manifold == boundary > 24  # only the large hole's rim is left
    assert got["border"].tolist() == [boundary, boundary]  # and both paths say so
    assert not np.allclose(got["v_torch"], noisy)  # and it was smoothed
