"""Render the bundled sample clip ``samples/courtyard.mp4`` with Cycles in Blender (bpy).

A small textured scene (brick walls, a chequered floor, a few objects with procedural textures)
filmed by a camera that walks an arc around it: the kind of clip a user shoots with a phone,
small enough to ship (~2 s, 320x240, H.264). Run with the dev environment:

    .venv/bin/python scripts/make_sample.py [--out samples/courtyard.mp4] [--frames 48]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import bpy

REPO = Path(__file__).resolve().parents[1]


def clear_scene() -> bpy.types.Scene:
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def material(name: str, build) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    shader = nodes["Principled BSDF"]
    shader.inputs["Roughness"].default_value = 0.8
    build(nodes, links, shader)
    return mat


def brick(nodes, links, shader):
    tex = nodes.new("ShaderNodeTexBrick")
    tex.inputs["Scale"].default_value = 6.0
    tex.inputs["Color1"].default_value = (0.55, 0.18, 0.10, 1)
    tex.inputs["Color2"].default_value = (0.42, 0.25, 0.16, 1)
    tex.inputs["Mortar"].default_value = (0.8, 0.78, 0.72, 1)
    links.new(tex.outputs["Color"], shader.inputs["Base Color"])


def checker(nodes, links, shader):
    tex = nodes.new("ShaderNodeTexChecker")
    tex.inputs["Scale"].default_value = 12.0
    tex.inputs["Color1"].default_value = (0.85, 0.85, 0.8, 1)
    tex.inputs["Color2"].default_value = (0.15, 0.17, 0.2, 1)
    links.new(tex.outputs["Color"], shader.inputs["Base Color"])


def noisy(color):
    def build(nodes, links, shader):
        tex = nodes.new("ShaderNodeTexNoise")
        tex.inputs["Scale"].default_value = 8.0
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].color = (*(c * 0.3 for c in color), 1)
        ramp.color_ramp.elements[1].color = (*color, 1)
        links.new(tex.outputs["Fac"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], shader.inputs["Base Color"])
    return build


def add(primitive, mat, **kwargs) -> bpy.types.Object:
    primitive(**kwargs)
    obj = bpy.context.active_object
    obj.data.materials.append(mat)
    return obj


def build_scene(scene: bpy.types.Scene) -> None:
    walls = material("Brick", brick)
    add(bpy.ops.mesh.primitive_plane_add, material("Floor", checker), size=8)
    add(bpy.ops.mesh.primitive_plane_add, walls, size=8, location=(0, 4, 2), rotation=(math.pi / 2, 0, 0))
    add(bpy.ops.mesh.primitive_plane_add, walls, size=8, location=(-4, 0, 2),
        rotation=(math.pi / 2, 0, math.pi / 2))
    add(bpy.ops.mesh.primitive_cube_add, material("Crate", noisy((0.8, 0.6, 0.3))), size=1.2,
        location=(-1.0, 1.2, 0.6), rotation=(0, 0, 0.4))
    add(bpy.ops.mesh.primitive_uv_sphere_add, material("Ball", noisy((0.2, 0.45, 0.8))), radius=0.6,
        location=(1.0, 0.6, 0.6))
    add(bpy.ops.mesh.primitive_cylinder_add, material("Column", noisy((0.7, 0.7, 0.65))), radius=0.35,
        depth=2.4, location=(0.2, 2.4, 1.2))
    bpy.ops.object.light_add(type="SUN", rotation=(0.8, 0.2, 0.6))
    bpy.context.active_object.data.energy = 3.0
    scene.world = bpy.data.worlds.new("Sky")
    scene.world.color = (0.35, 0.4, 0.5)


def animate_camera(scene: bpy.types.Scene, frames: int) -> None:
    """A walk along an arc, always looking at the middle of the courtyard."""
    target = bpy.data.objects.new("Target", None)
    target.location = (0.0, 1.2, 0.7)
    scene.collection.objects.link(target)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.lens = 24
    scene.collection.objects.link(camera)
    scene.camera = camera
    track = camera.constraints.new("TRACK_TO")
    track.target = target
    for frame in range(1, frames + 1):
        angle = math.radians(-70 + 50 * (frame - 1) / max(frames - 1, 1))
        camera.location = (5.2 * math.cos(angle), 1.2 + 5.2 * math.sin(angle), 1.6)
        camera.keyframe_insert("location", frame=frame)


def configure_render(scene: bpy.types.Scene, out: Path, frames: int, samples: int) -> None:
    scene.frame_start, scene.frame_end = 1, frames
    scene.render.fps = 24
    scene.render.resolution_x, scene.render.resolution_y = 320, 240
    scene.render.resolution_percentage = 100
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = True
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0 separates images from videos
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = "MPEG4"
    scene.render.ffmpeg.codec = "H264"
    scene.render.ffmpeg.constant_rate_factor = "MEDIUM"
    scene.render.filepath = str(out)
    scene.render.use_file_extension = False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "samples" / "courtyard.mp4")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scene = clear_scene()
    build_scene(scene)
    animate_camera(scene, args.frames)
    configure_render(scene, args.out.resolve(), args.frames, args.samples)
    bpy.ops.render.render(animation=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
