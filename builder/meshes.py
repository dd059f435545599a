"""Meshes straight from numpy: ``add`` the elements, ``foreach_set`` the arrays, ``update``."""

from __future__ import annotations

import bpy
import numpy as np

COLOR_ATTRIBUTE = "Col"  # the colour attribute every DA3 mesh carries; the materials read it
NEUTRAL_GREY = (0.5, 0.5, 0.5, 1.0)  # colour of files without images (mini_npz)


def mesh_from_arrays(name: str, vertices: np.ndarray, triangles: np.ndarray | None = None,
                     colors: np.ndarray | None = None, edges: np.ndarray | None = None,
                     corner_edges: np.ndarray | None = None) -> bpy.types.Mesh:
    """A mesh with ``vertices`` (V,3), optional ``triangles`` (T,3) and per-vertex ``colors`` (V,4).

    With ``edges`` (E,2) and ``corner_edges`` (T,3) given, ``update`` has no edges left to derive
    (it does so only for a mesh that has faces but no edges), which halves the build time.
    """
    mesh = bpy.data.meshes.new(name)
    set_vertices(mesh, vertices)
    if triangles is not None and len(triangles):
        set_triangles(mesh, triangles)
        if edges is not None and corner_edges is not None:
            set_edges(mesh, edges, corner_edges)
    set_colors(mesh, colors, len(vertices))
    mesh.update()
    return mesh


def grid_mesh(name: str, grid) -> bpy.types.Mesh:
    """A mesh from an ``engine.geometry.GridMesh``."""
    return mesh_from_arrays(name, grid.vertices, grid.triangles, grid.colors, grid.edges,
                            grid.corner_edges)


def set_vertices(mesh: bpy.types.Mesh, vertices: np.ndarray) -> None:
    mesh.vertices.add(len(vertices))
    mesh.attributes["position"].data.foreach_set("vector", _flat(vertices, np.float32))


def set_triangles(mesh: bpy.types.Mesh, triangles: np.ndarray) -> None:
    count = len(triangles)
    mesh.loops.add(3 * count)
    mesh.polygons.add(count)
    mesh.attributes[".corner_vert"].data.foreach_set("value", _flat(triangles, np.int32))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * count, 3, dtype=np.int32))


def set_edges(mesh: bpy.types.Mesh, edges: np.ndarray, corner_edges: np.ndarray) -> None:
    mesh.edges.add(len(edges))
    mesh.attributes[".edge_verts"].data.foreach_set("value", _flat(edges, np.int32))
    mesh.attributes[".corner_edge"].data.foreach_set("value", _flat(corner_edges, np.int32))


def set_colors(mesh: bpy.types.Mesh, colors: np.ndarray | None, count: int) -> None:
    """Per-vertex linear RGBA in ``COLOR_ATTRIBUTE`` (grey when there is no image to colour from)."""
    if colors is None:
        colors = np.broadcast_to(np.array(NEUTRAL_GREY, dtype=np.float32), (count, 4))
    attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attribute.data.foreach_set("color", _flat(colors, np.float32))
    # Look the attribute up again: references taken before another attribute was added go stale.
    mesh.color_attributes.active_color = mesh.color_attributes[COLOR_ATTRIBUTE]
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index


def _flat(array: np.ndarray, dtype) -> np.ndarray:
    """A contiguous 1-D array of exactly ``dtype``: what foreach_set copies without conversion."""
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)
