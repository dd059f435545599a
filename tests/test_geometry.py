"""engine.core.geometry on its own (numpy only): masks, frames, scale, triangulation, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_scenes import blender_to_world, distance_to_scene, make_prediction

from engine.core import geometry as g
from engine.core.options import BuildOptions
from engine.fusion.pieces import face_components

# --- masks ---------------------------------------------------------------------------------------

def test_confidence_threshold_follows_da3s_exporter():
    conf = np.arange(1, 101, dtype=np.float32)  # P40 = 40.6, P90 = 90.1
    everything = np.ones_like(conf, bool)
    assert g.confidence_threshold(conf, everything, 40) == pytest.approx(np.percentile(conf, 40))
    assert g.confidence_threshold(conf, everything, 99) == pytest.approx(np.percentile(conf, 90))
    low = np.full(100, 1.01, np.float32)
    low[-20:] = 2.0  # P40 = 1.01 < 1.05 <= P90 = 2
    assert g.confidence_threshold(low, everything, 40) == pytest.approx(1.05)


def test_confidence_threshold_ignores_sky():
    conf = np.concatenate([np.full(50, 1.0), np.linspace(2, 3, 50)]).astype(np.float32)
    not_sky = np.arange(100) >= 50
    assert g.confidence_threshold(conf, not_sky, 0) == pytest.approx(2.0)


def test_edge_mask_marks_both_sides_of_a_jump_only():
    depth = np.full((6, 8), 2.0, np.float32)
    depth[:, 4:] = 4.0
    flying = g.edge_mask(depth)
    assert flying[:, 3].all() and flying[:, 4].all()
    assert not flying[:, [0, 1, 2, 5, 6, 7]].any()


def test_a_steep_smooth_plane_is_not_an_edge():
    pred, _ = make_prediction(n_views=1, width=120, height=90, with_box=False)
    assert not g.edge_mask(pred.depth).any()


def test_valid_mask_combines_depth_sky_confidence_and_edges():
    pred, _ = make_prediction(n_views=1, with_box=False)
    pred.sky = np.zeros(pred.depth.shape, bool)
    pred.sky[0, :5] = True
    pred.conf[0, -5:] = 1.0
    pred.depth[0, 10, 10] = 0.0
    valid, threshold = g.valid_mask(pred, BuildOptions())
    assert threshold == pytest.approx(3.0)
    assert not valid[0, :5].any() and not valid[0, -5:].any() and not valid[0, 10, 10]
    assert valid[0, 20, 20]
    kept_sky, _ = g.valid_mask(pred, BuildOptions(mask_sky=False))
    assert kept_sky[0, 2, 20]


# --- frames and scale ----------------------------------------------------------------------------

def test_view0_is_the_blender_frame_z_up():
    pred, _ = make_prediction(n_views=2)
    cams = g.blender_camera_matrices(g.cameras_to_view0(pred.world_to_camera()), 1.0)
    assert np.allclose(cams[0], [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def test_backprojection_lands_on_the_surfaces_from_every_view():
    pred, _ = make_prediction(n_views=4, depth_scale=0.4)
    geo = g.prepare(pred, BuildOptions())
    points, _ = g.kept_points(geo)
    world = blender_to_world(points, pred.extrinsics, geo.scale, 0.4)
    assert distance_to_scene(world).max() < 1e-4


def test_the_point_budget_keeps_an_even_share_of_every_view():
    pred, _ = make_prediction(n_views=4, width=96, height=72)
    geo = g.prepare(pred, BuildOptions())
    every, every_colour = g.kept_points(geo)
    budget = len(every) // 3
    points, colors = g.kept_points(geo, budget)
    assert len(points) == len(colors) == budget
    # which view and which image row each kept point came from, told by its position alone
    rows = {tuple(p): (i, y) for i, y, x in np.argwhere(geo.valid) for p in [geo.points[i, y, x]]}
    picked = np.array([rows[tuple(p)] for p in points])
    kept = np.argwhere(geo.valid)[:, :2]
    for i in range(4):  # each view keeps its share, and so does each half of its image
        assert np.sum(picked[:, 0] == i) == pytest.approx(np.sum(kept[:, 0] == i) / 3, abs=2)
        top = (picked[:, 0] == i) & (picked[:, 1] < 36)
        assert np.sum(top) == pytest.approx(np.sum((kept[:, 0] == i) & (kept[:, 1] < 36)) / 3, abs=2)
    # a colour goes with its point, and a budget over the count keeps everything
    first = {tuple(p): c for p, c in zip(every, every_colour, strict=True)}
    assert all(np.array_equal(first[tuple(p)], c) for p, c in zip(points, colors, strict=True))
    assert np.array_equal(g.kept_points(geo, len(every))[0], every)
    # thinned to a third, neighbouring points lie sqrt(3) times as far apart
    assert g.point_radius(geo, budget) == pytest.approx(g.point_radius(geo) * np.sqrt(len(every) / budget))


def test_kept_pixels_found_view_by_view_are_every_kth_of_all():
    valid = np.random.default_rng(1).random((7, 30, 40)) < 0.6
    every = np.flatnonzero(valid)
    for budget in (1, 999, len(every) - 1):
        assert np.array_equal(g.kept_pixels(valid, budget), every[np.arange(budget) * len(every) // budget])
    for budget in (0, len(every), len(every) + 5):
        assert np.array_equal(g.kept_pixels(valid, budget), every)


def test_camera_centres_match_the_poses():
    pred, poses = make_prediction(n_views=3, depth_scale=0.4)
    geo = g.prepare(pred, BuildOptions())
    centres = blender_to_world(geo.cam_to_world[:, :3, 3], pred.extrinsics, geo.scale, 0.4)
    assert np.allclose(centres, poses[:, :3, 3], atol=1e-6)


def test_relative_scale_brings_the_median_depth_to_two_metres():
    depth = np.array([1.0, 2.0, 4.0, 8.0, 9.0])
    assert g.relative_scale(depth, depth > 0, False) * 4.0 == pytest.approx(g.RELATIVE_MEDIAN_DEPTH)
    assert g.relative_scale(depth, depth > 0, True) == 1.0


def test_inside_box_uses_the_boxs_own_frame():
    world_to_local = np.diag([2.0, 2.0, 2.0, 1.0])  # a box scaled by 0.5
    pts = np.array([[0.4, 0.0, 0.0], [0.6, 0.0, 0.0]], np.float32)
    assert g.inside_box(pts, world_to_local, [-1] * 3, [1] * 3).tolist() == [True, False]


def test_colours_are_linearised_from_srgb():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    assert np.allclose(g.linear_colors(rgb)[0, 0], [0.0, 0.2158605, 1.0, 1.0], atol=1e-6)


# --- triangulation -------------------------------------------------------------------------------

def test_a_full_grid_becomes_two_triangles_per_cell():
    depth = np.full((4, 5), 2.0, np.float32)
    pts = np.random.default_rng(0).random((4, 5, 3), dtype=np.float32)
    mesh = g.triangulate_view(pts, np.ones((4, 5), bool), depth)
    assert mesh.triangles.shape == (2 * 3 * 4, 3) and len(mesh.vertices) == 20
    assert mesh.triangles.dtype == np.int32 and mesh.vertices.flags.c_contiguous


def test_triangles_skip_invalid_pixels_and_compact_the_vertices():
    depth = np.full((3, 3), 2.0, np.float32)
    valid = np.ones((3, 3), bool)
    valid[1, 1] = False  # the centre pixel touches every cell
    pts = np.zeros((3, 3, 3), np.float32)
    mesh = g.triangulate_view(pts, valid, depth)
    # Cells split along the diagonal through the centre lose both triangles, the others one.
    assert len(mesh.triangles) == 2
    assert 4 not in mesh.pixel_index
    assert mesh.triangles.max() < len(mesh.vertices)


def test_triangles_never_cross_a_depth_discontinuity():
    depth = np.full((5, 6), 2.0, np.float32)
    depth[:, 3:] = 3.0
    mesh = g.triangulate_view(np.zeros((5, 6, 3), np.float32), np.ones((5, 6), bool), depth)
    cols = mesh.pixel_index[mesh.triangles] % 6
    assert np.all((cols.max(axis=1) <= 2) | (cols.min(axis=1) >= 3))


def test_faces_face_the_camera():
    pred, _ = make_prediction(n_views=1)
    geo = g.prepare(pred, BuildOptions())
    (mesh,) = g.view_meshes(geo, pred.depth, quads=True)
    for faces in (mesh.triangles, mesh.quads):
        a, b, c = (mesh.vertices[faces[:, k]] for k in range(3))
        normals = np.cross(b - a, c - a)
        towards_camera = -a  # view 0 sits at the origin
        assert len(faces) and np.all(np.einsum("ij,ij->i", normals, towards_camera) > 0)


def test_stride_thins_the_grid():
    depth = np.full((9, 9), 2.0, np.float32)
    mesh = g.triangulate_view(np.zeros((9, 9, 3), np.float32), np.ones((9, 9), bool), depth, stride=2)
    assert len(mesh.vertices) == 25 and len(mesh.triangles) == 32


def test_merge_shifts_indices():
    depth = np.full((2, 2), 1.0, np.float32)
    one = g.triangulate_view(np.zeros((2, 2, 3), np.float32), np.ones((2, 2), bool), depth)
    merged = g.merge_meshes([one, one])
    assert len(merged.vertices) == 8 and merged.triangles[2:].min() == 4


# --- sizes ---------------------------------------------------------------------------------------

def test_auto_voxel_size_is_a_256th_of_the_extent_for_a_small_scene():
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 60), [0.0]), -1)
    assert g.auto_voxel_size(grid.reshape(-1, 3)) == pytest.approx(1 / 256)


def test_auto_voxel_size_grows_to_bound_the_face_count():
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 600), np.linspace(0, 1, 600), [0.0]), -1)
    pts = grid.reshape(-1, 3)
    voxel = g.auto_voxel_size(pts, max_faces=20_000)
    assert voxel > 1 / 256
    assert 2 * g.occupied_voxels(pts, voxel) < 30_000


def test_surface_input_is_thinned_to_the_voxel():
    pred, _ = make_prediction(n_views=2, width=120, height=90)
    geo = g.prepare(pred, BuildOptions())
    fine = g.surface_input(geo, pred.depth, voxel_size=1e-4)
    coarse = g.surface_input(geo, pred.depth, voxel_size=0.5)
    assert len(coarse.vertices) < len(fine.vertices) / 3


@pytest.mark.parametrize("quads", [False, True])
def test_grid_edges_are_exactly_the_faces_edges(quads):
    pred, _ = make_prediction(n_views=1, width=40, height=30)
    pred.depth[0, 5:9, 5:12] = 0.0  # a hole, besides the box outline
    geo = g.prepare(pred, BuildOptions())
    (mesh,) = g.view_meshes(geo, pred.depth, quads=quads)
    assert (len(mesh.quads) > 0) == quads
    from_faces = set()
    for faces, corner in ((mesh.triangles, mesh.corner_edges), (mesh.quads, mesh.quad_corner_edges)):
        k_max = faces.shape[1]
        for k in range(k_max):  # the edge after corner k joins corner k and corner k+1
            pair = np.sort(faces[:, [k, (k + 1) % k_max]], axis=1)
            assert np.array_equal(np.sort(mesh.edges[corner[:, k]], axis=1), pair)
            from_faces |= set(map(tuple, pair.tolist()))
    listed = [tuple(sorted(e)) for e in mesh.edges.tolist()]
    assert len(listed) == len(set(listed)) and set(listed) == from_faces


def test_full_cells_become_quads():
    depth = np.full((4, 5), 2.0, np.float32)
    mesh = g.triangulate_view(np.zeros((4, 5, 3), np.float32), np.ones((4, 5), bool), depth,
                              quads=True)
    assert mesh.quads.shape == (12, 4) and len(mesh.triangles) == 0
    assert len(mesh.edges) == 4 * 4 + 3 * 5  # horizontal + vertical, no diagonals


def test_solidify_makes_a_closed_outward_slab():
    pred, _ = make_prediction(n_views=1, width=40, height=30)
    geo = g.prepare(pred, BuildOptions())
    (mesh,) = g.view_meshes(geo, pred.depth)
    slab = g.solidify(mesh, geo.cam_to_world[0, :3, 3], 0.05)
    tris = slab.triangles
    directed = tris[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    # Closed and consistently wound: every directed edge appears once, its reverse once.
    assert len(g.border_edges(tris)) == 0
    assert len({tuple(e) for e in directed.tolist()}) == len(directed)
    a, b, c = (slab.vertices[tris[:, k]].astype(np.float64) for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert volume > 0  # normals point outwards
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)[: len(mesh.triangles)].sum()
    assert volume == pytest.approx(area * 0.05, rel=0.1)


def test_surface_input_keeps_each_place_once():
    pred, _ = make_prediction(n_views=4, width=60, height=45)
    geo = g.prepare(pred, BuildOptions())
    grids = g.view_meshes(geo, pred.depth)
    kept = g.drop_covered_triangles(grids, 0.1)
    assert len(kept[0].triangles) == len(grids[0].triangles)  # the first view keeps everything
    later = sum(len(m.triangles) for m in kept[1:])
    assert later < 0.5 * sum(len(m.triangles) for m in grids[1:])


def test_islands_are_found_and_small_ones_picked():
    # Two squares of two triangles each and a lone triangle: three parts.
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2],
                      [4, 5], [5, 6], [6, 7], [7, 4], [4, 6],
                      [8, 9], [9, 10], [10, 8]])
    labels = g.island_labels(edges, 11)
    assert labels.tolist() == [0] * 4 + [4] * 4 + [8] * 3
    first_vertex = np.array([0, 0, 4, 4, 8])
    assert g.small_island_vertices(edges, first_vertex, 11, 2).tolist() == [8, 9, 10]


def test_island_labels_on_a_long_chain_converge():
    n = 5000
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], 1)[::-1]
    assert np.all(g.island_labels(edges, n) == 0)


def searched_labels(edges: np.ndarray, n: int) -> np.ndarray:
    """The smallest vertex of each vertex's part, by a plain search from each vertex in turn."""
    neighbours = [[] for _ in range(n)]
    for a, b in edges.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    labels = [-1] * n
    for start in range(n):
        if labels[start] >= 0:
            continue
        labels[start], stack = start, [start]
        while stack:
            for w in neighbours[stack.pop()]:
                if labels[w] < 0:
                    labels[w] = start
                    stack.append(w)
    return np.array(labels)


@pytest.mark.parametrize("edges", [100, 290, 2000])
def test_island_labels_match_a_plain_search(edges):
    """The one union-find (texture charts, fusion's pieces) on sparse and dense random graphs."""
    pairs = np.random.default_rng(edges).integers(0, 300, (edges, 2))
    assert np.array_equal(g.island_labels(pairs, 300), searched_labels(pairs, 300))


def test_fusion_pieces_are_the_islands_of_the_faces():
    faces = np.random.default_rng(0).integers(0, 500, (200, 3))
    sides = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    roots = searched_labels(sides, 500)[faces[:, 0]]
    assert np.array_equal(face_components(faces, 500), np.unique(roots, return_inverse=True)[1])


def test_surface_input_of_isolated_pixels_is_empty():
    pred, _ = make_prediction(n_views=1, width=20, height=16, with_box=False)
    pred.depth[0, ::2, :] = 0.0  # every other row missing: no cell has valid corners
    geo = g.prepare(pred, BuildOptions())
    assert len(g.surface_input(geo, pred.depth, 0.05).triangles) == 0


def test_facing_drops_edge_on_triangles():
    vertices = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1],  # faces a camera at the origin
                         [0, 1, 0], [0, 2, 0], [0, 1, 1]], np.float32)  # contains the line of sight
    mesh = g.GridMesh(vertices, np.array([[0, 1, 2], [3, 4, 5]], np.int32), None, np.arange(6))
    assert g.facing(mesh, np.zeros(3)).tolist() == [True, False]
