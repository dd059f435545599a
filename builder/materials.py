"""The material that shows the input colours, and the Geometry Nodes group that shows points."""

from __future__ import annotations

import bpy

from .compat import node_tree_of
from .meshes import COLOR_ATTRIBUTE


def color_material(name: str) -> bpy.types.Material:
    """A material whose base colour is the ``COLOR_ATTRIBUTE`` of what it is on (mesh or points).

    The Attribute node reads the attribute by name on meshes and point clouds alike, so the
    points, the view meshes and the surface share one material.
    """
    material = bpy.data.materials.new(name)
    tree = node_tree_of(material)
    nodes, links = tree.nodes, tree.links
    shader = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    shader.inputs["Roughness"].default_value = 1.0  # a photo's colours already hold the lighting
    attribute = nodes.new("ShaderNodeAttribute")
    attribute.attribute_name = COLOR_ATTRIBUTE
    attribute.location = (shader.location.x - 250, shader.location.y)
    links.new(attribute.outputs["Color"], shader.inputs["Base Color"])
    return material


def texture_material(name: str, image: bpy.types.Image) -> bpy.types.Material:
    """A material whose base colour is ``image`` on the mesh's active UV map."""
    material = bpy.data.materials.new(name)
    tree = node_tree_of(material)
    shader = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    shader.inputs["Roughness"].default_value = 1.0  # a photo's colours already hold the lighting
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (shader.location.x - 320, shader.location.y)
    tree.links.new(texture.outputs["Color"], shader.inputs["Base Color"])
    return material


def points_node_group(name: str, radius: float, material: bpy.types.Material) -> bpy.types.NodeTree:
    """Geometry Nodes: mesh vertices -> points of ``radius`` with ``material`` (renderable)."""
    group = bpy.data.node_groups.new(name, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.inputs["Radius"].default_value = radius
    set_material = nodes.new("GeometryNodeSetMaterial")
    set_material.inputs["Material"].default_value = material
    links.new(group_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(set_material.outputs["Geometry"], group_out.inputs["Geometry"])
    for x, node in enumerate((group_in, to_points, set_material, group_out)):
        node.location = (200 * x, 0)
    return group
