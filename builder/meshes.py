"""Meshes straight from numpy: ``add`` the elements, ``foreach_set`` the arrays, ``update``."""

from __future__ import annotations

import bpy
import numpy as np

COLOR_ATTRIBUTE = "Col"  # the colour attribute every DA3 mesh carries; the materials read it
NEUTRAL_GREY = (0.5, 0.5, 0.5, 1.0)  # colour of files without images (mini_npz)


def mesh_from_arrays(name: str, vertices: np.ndarray, triangles: np.ndarray | None = None,
                     colors: np.ndarray | None = None, edges=None) -> bpy.types.Mesh:
    """A mesh with ``vertices`` (V,3), optional ``triangles`` (T,3) and per-vertex ``colors``
    (V,4); ``edges`` = ``engine.core.geometry.triangle_edges(triangles)`` when already known (then
    Blender derives nothing)."""
    mesh = bpy.data.meshes.new(name)
    set_vertices(mesh, vertices)
    if triangles is not None and len(triangles):
        set_faces(mesh, [triangles])
        if edges is not None:
            set_edges(mesh, edges[0], [edges[1]])
    set_colors(mesh, colors, len(vertices))
    mesh.update()
    return mesh


def grid_mesh(name: str, grid) -> bpy.types.Mesh:
    """A mesh from an ``engine.core.geometry.GridMesh``: its quads, then its triangles.

    The grid's own edges go in too, so ``update`` has none left to derive (it only does so for
    a mesh with faces but no edges): that was two thirds of the build time.
    """
    mesh = bpy.data.meshes.new(name)
    set_vertices(mesh, grid.vertices)
    faces = [f for f in (grid.quads, grid.triangles) if len(f)]
    if faces:
        set_faces(mesh, faces)
        if grid.edges is not None:
            corner_edges = [e for e, f in ((grid.quad_corner_edges, grid.quads),
                                           (grid.corner_edges, grid.triangles)) if len(f)]
            set_edges(mesh, grid.edges, corner_edges)
    set_colors(mesh, grid.colors, len(grid.vertices))
    mesh.update()
    return mesh


def set_vertices(mesh: bpy.types.Mesh, vertices: np.ndarray) -> None:
    mesh.vertices.add(len(vertices))
    mesh.attributes["position"].data.foreach_set("vector", flat(vertices, np.float32))


def set_faces(mesh: bpy.types.Mesh, faces: list[np.ndarray]) -> None:
    """Faces from (F,k) vertex-index arrays, one array per face size, in that order."""
    sizes = [f.shape[1] for f in faces]
    counts = [len(f) for f in faces]
    mesh.loops.add(sum(k * n for k, n in zip(sizes, counts, strict=True)))
    mesh.polygons.add(sum(counts))
    corners = np.concatenate([flat(f, np.int32) for f in faces])
    mesh.attributes[".corner_vert"].data.foreach_set("value", corners)
    face_sizes = np.repeat(np.array(sizes, dtype=np.int32), counts)
    loop_start = np.zeros(len(face_sizes), dtype=np.int32)
    np.cumsum(face_sizes[:-1], out=loop_start[1:])
    mesh.polygons.foreach_set("loop_start", loop_start)


def set_edges(mesh: bpy.types.Mesh, edges: np.ndarray, corner_edges: list[np.ndarray]) -> None:
    """Edges (E,2) and, in the faces' order, the edge after each face corner."""
    mesh.edges.add(len(edges))
    mesh.attributes[".edge_verts"].data.foreach_set("value", flat(edges, np.int32))
    corner = np.concatenate([flat(e, np.int32) for e in corner_edges])
    mesh.attributes[".corner_edge"].data.foreach_set("value", corner)


def add_color_attribute(mesh: bpy.types.Mesh) -> None:
    """The per-vertex ``COLOR_ATTRIBUTE``, not yet filled. Alone, as a step of its own for a
    large point cloud: Blender 4.3 took 42-92 ms to make one of a million points (5.2: 1-8 ms;
    ``blender -b`` on a 2-core VM)."""
    mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")


def set_colors(mesh: bpy.types.Mesh, colors: np.ndarray | None, count: int) -> None:
    """Per-vertex linear RGBA in ``COLOR_ATTRIBUTE`` (grey when there is no image to colour
    from), which is added first unless :func:`add_color_attribute` did."""
    if colors is None:
        colors = np.broadcast_to(np.array(NEUTRAL_GREY, dtype=np.float32), (count, 4))
    if COLOR_ATTRIBUTE not in mesh.color_attributes:
        add_color_attribute(mesh)
    # Looked up by name: references taken before another attribute was added go stale.
    attribute = mesh.color_attributes[COLOR_ATTRIBUTE]
    attribute.data.foreach_set("color", flat(colors, np.float32))
    mesh.color_attributes.active_color = mesh.color_attributes[COLOR_ATTRIBUTE]
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index


def flat(array: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A contiguous 1-D array of exactly ``dtype``: what foreach_set copies without conversion."""
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)
