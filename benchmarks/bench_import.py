"""How fast a prediction becomes a Blender scene, stage by stage, against the slower ways.

    .venv/bin/python benchmarks/bench_import.py [--views 32 --width 504 --height 378]

The input is a synthetic prediction of the default size (32 views of 504x378: a wall and a box
ray-cast from a moving camera, so every view has real discontinuities), saved like DA3 saves it.
Printed: seconds and vertices/s per stage (read, filter, triangulate, build, remesh, cameras)
and the whole import with default options, blocking and stepped as the UI steps it (its
longest step: the longest the UI waits for our Blender work); the mesh build against per-element
bmesh and ``from_pydata`` on the same triangles; the glTF import of a GLB holding exactly our
kept points (written with numpy); and last, ``--repeat`` times each, alternating, our whole
import with default options against the manual route (DA3's own ``export_to_glb``, run in the
worker environment when trimesh is importable there, see --da3-python; Blender's glTF import of
its file; Geometry Nodes volume meshing), with the ratio of their medians.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix="da3-bench-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)  # a run leaves no scratch behind
for var in ("HOME", "XDG_CACHE_HOME", "BLENDER_USER_RESOURCES"):  # bpy writes there on import
    os.environ.setdefault(var, str(TMP / var.lower()))
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import bpy  # noqa: E402
import numpy as np  # noqa: E402


def load_extension():
    """The extension as a package (its API needs no registration)."""
    spec = importlib.util.spec_from_file_location(
        "da3_reconstruct", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["da3_reconstruct"] = package
    spec.loader.exec_module(package)
    import da3_reconstruct.api as api

    return package, api


class Report:
    def __init__(self):
        self.rows = []

    def add(self, stage: str, seconds: float, vertices: int | None = None, note: str = ""):
        rate = f"{vertices / seconds / 1e6:8.2f} M/s" if vertices and seconds > 0 else " " * 12
        self.rows.append(f"{stage:<34} {seconds:8.3f} s  {rate}  {note}")
        print(self.rows[-1], flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --- our stages ------------------------------------------------------------------------------

def bench_stages(pkg, path, report: Report):
    from da3_reconstruct.builder.meshes import grid_mesh, mesh_from_arrays
    from da3_reconstruct.engine.core import geometry
    from da3_reconstruct.engine.core.options import BuildOptions
    from da3_reconstruct.engine.core.prediction import load_prediction

    pred, t = timed(load_prediction, path)
    report.add("read (np.load + validate)", t, pred.depth.size)
    geo, t = timed(geometry.prepare, pred, BuildOptions())
    report.add("filter (masks, scale)", t, pred.depth.size, f"{geo.num_points:,} pixels kept")
    (points, colors), t = timed(geometry.kept_points, geo, BuildOptions().max_points)
    report.add("kept points (back-projected)", t, len(points), "the point budget's share")
    _, t = timed(lambda: geo.points)
    report.add("back-project every pixel", t, pred.depth.size, "for the view meshes")
    grids, t = timed(geometry.view_meshes, geo, pred.depth, quads=True)
    verts = sum(len(g.vertices) for g in grids)
    quads, tris = sum(len(g.quads) for g in grids), sum(len(g.triangles) for g in grids)
    report.add("triangulate (all views)", t, verts, f"{quads:,} quads + {tris:,} triangles")
    _, t = timed(mesh_from_arrays, "bench points", points, colors=colors)
    report.add("build points mesh (+colours)", t, len(points))
    start = time.perf_counter()
    for i, g in enumerate(grids):
        grid_mesh(f"bench view {i}", g)
    report.add("build view meshes (+colours)", time.perf_counter() - start, verts,
               f"{len(grids)} meshes")
    return pred, geo, grids


def bench_remesh(api, pkg, pred, report: Report):
    from da3_reconstruct.engine.core.options import BuildOptions

    timings = {}
    options = BuildOptions(output_points=False, output_cameras=False)
    coll = api.import_prediction(pred, options, name="bench surface", timings=timings)
    surface = next(o for o in coll.all_objects if o["da3_role"] == "surface")
    report.add("surface: fusion + Blender mesh", timings["surface"], None,
               f"voxel {surface['da3_voxel_size']:.4f}, {len(surface.data.polygons):,} faces")


def bench_whole_import(api, path, report: Report):
    """The whole import from the file: default options, and points + cameras only (what the
    GLB route gives, so the like-for-like comparison)."""
    from da3_reconstruct.engine.core.options import BuildOptions

    for label, options in (("whole import, default options", BuildOptions()),
                           ("whole import, default, no texture", BuildOptions(texture=False)),
                           ("whole import, points + cameras", BuildOptions(output_surface=False))):
        timings = {}
        coll, t = timed(api.import_prediction, path, options, name=label, timings=timings)
        points = next(o for o in coll.all_objects if o["da3_role"] == "points")
        report.add(label, t, len(points.data.vertices),
                   ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    return points


def bench_stepped_import(api, path, report: Report, tick: float = 0.02):
    """The import as the UI runs it: ``start_import``, then one ``step()`` per timer tick
    (``tick``, the operator's interval) that never waits for the threads. Each step is the
    Blender work that holds the UI; printed: the longest and what it was doing, against the
    0.1 s the UI may block."""
    from da3_reconstruct.engine.core.options import BuildOptions

    staged = api.start_import(path, BuildOptions(), name="stepped import")
    steps, start = [], time.perf_counter()
    while True:
        label = staged.label
        began = time.perf_counter()
        done = staged.step()
        steps.append((time.perf_counter() - began, label))
        if done:
            break
        time.sleep(tick)
    longest, label = max(steps)
    over = sum(seconds > 0.1 for seconds, _ in steps)
    report.add("stepped import (the UI's way)", time.perf_counter() - start, None,
               f"{len(steps)} steps, longest {1000 * longest:.0f} ms ({label}), {over} over 0.1 s")


# --- baselines -------------------------------------------------------------------------------

def bench_baselines(pkg, grids, report: Report, repeats: int = 3):
    """ours vs from_pydata vs per-element bmesh building the same view meshes (the same quads
    and triangles, geometry only;
    best of ``repeats``: the machine is shared and the minimum is the least disturbed run)."""
    import bmesh
    from da3_reconstruct.builder.meshes import grid_mesh

    n = sum(len(g.vertices) for g in grids)
    bare = [type(g)(g.vertices, g.triangles, None, g.pixel_index, g.edges, g.corner_edges,
                    g.quads, g.quad_corner_edges) for g in grids]
    ours = best_of(repeats, lambda: [grid_mesh("ours", g) for g in bare])
    report.add(f"ours (foreach_set), {len(grids)} views", ours, n, "no colours, like the others")
    lists, to_list = timed(lambda: [(g.vertices.tolist(), g.quads.tolist() + g.triangles.tolist())
                                    for g in grids])
    pydata = best_of(repeats, lambda: [_pydata_build(v, t) for v, t in lists])
    report.add("from_pydata (lists given)", pydata, n, f"ours x{pydata / ours:.1f} faster")
    report.add("from_pydata + .tolist()", pydata + to_list, n,
               f"ours x{(pydata + to_list) / ours:.1f} faster")
    per_element = best_of(repeats, lambda: [_bmesh_build(bmesh, v, t) for v, t in lists])
    report.add("bmesh per element", per_element, n, f"ours x{per_element / ours:.1f} faster")


def best_of(repeats: int, build) -> float:
    """Fastest of ``repeats`` runs of ``build``; the meshes it makes are removed after each."""
    times = []
    for _ in range(repeats):
        before = set(bpy.data.meshes)
        times.append(timed(build)[1])
        bpy.data.batch_remove([m for m in bpy.data.meshes if m not in before])
    return min(times)


def _pydata_build(vlist, tlist):
    mesh = bpy.data.meshes.new("pydata")
    mesh.from_pydata(vlist, [], tlist)
    mesh.update()


def _bmesh_build(bmesh, vlist, flist):
    bm = bmesh.new()
    new_vert = bm.verts.new
    made = [new_vert(co) for co in vlist]
    new_face = bm.faces.new
    for face in flist:
        new_face([made[i] for i in face])
    mesh = bpy.data.meshes.new("bmesh")
    bm.to_mesh(mesh)
    bm.free()


# --- the GLB route ---------------------------------------------------------------------------

DA3_EXPORT = r"""
import sys, time, types, importlib
import numpy as np
sys.path.insert(0, sys.argv[3]) if len(sys.argv) > 3 else None
import depth_anything_3.utils as u
# Load the GLB exporter alone: the export package's __init__ pulls in gsplat/moviepy/pycolmap.
pkg = types.ModuleType("depth_anything_3.utils.export"); pkg.__path__ = [u.__path__[0] + "/export"]
sys.modules["depth_anything_3.utils.export"] = pkg
vis = types.ModuleType("depth_anything_3.utils.export.depth_vis"); vis.export_to_depth_vis = None
sys.modules["depth_anything_3.utils.export.depth_vis"] = vis
glb = importlib.import_module("depth_anything_3.utils.export.glb")
from depth_anything_3.specs import Prediction
start = time.perf_counter()
d = np.load(sys.argv[1])
p = Prediction(depth=d["depth"], is_metric=0, conf=d["conf"], extrinsics=d["extrinsics"],
               intrinsics=d["intrinsics"], processed_images=d["image"])
out = glb.export_to_glb(p, sys.argv[2], export_depth_vis=False)
print(time.perf_counter() - start)
"""


def bench_routes(args, api, path, report: Report) -> None:
    """Our whole import with default options against the manual route, ``args.repeat`` times
    each, alternating (a busy machine then slows both alike); printed: every run and the
    medians' ratio. Each run's objects are removed after it, so every run starts alike."""
    from da3_reconstruct.engine.core.options import BuildOptions

    if not args.da3_python or not Path(args.da3_python).exists():
        print("  (the manual route skipped: no --da3-python)")
        return
    ours, manual = [], []
    for run in range(args.repeat):
        with new_data_removed():
            _, t = timed(api.import_prediction, path, BuildOptions(), name=f"route run {run + 1}")
        ours.append(t)
        report.add(f"ours, default options (run {run + 1})", t)
        with new_data_removed():
            steps = manual_route(args, path)
        if steps is None:
            return
        manual.append(sum(seconds for _, seconds, _ in steps))
        for label, seconds, note in steps:
            report.add(f"  {label}", seconds, None, note)
        report.add(f"manual route (run {run + 1})", manual[-1])
    ratios = " / ".join(f"{a / b:.2f}" for a, b in zip(ours, manual, strict=True))
    report.add(f"ours, median of {len(ours)}", float(np.median(ours)), None,
               f"{np.median(ours) / np.median(manual):.2f} x the manual route's median "
               f"{np.median(manual):.2f} s (each run: {ratios} x)")


def manual_route(args, path) -> list[tuple[str, float, str]] | None:
    """The manual route this extension replaces, step by step: DA3's own exporter in its own
    environment, Blender's glTF importer on its file, then Geometry Nodes volume meshing of the
    imported points (Points to Volume -> Volume to Mesh, voxel = longest side / 256 like our
    fused surface). (label, seconds, note) per step; None when DA3's exporter cannot run."""
    cmd = [args.da3_python, "-c", DA3_EXPORT, str(path), str(TMP / "da3glb"), args.da3_path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  (DA3's exporter failed: {done.stderr.strip().splitlines()[-1]}; it needs trimesh: "
              "see --da3-path)")
        return None
    export = float(done.stdout.strip().splitlines()[-1])
    before = set(bpy.data.objects)
    _, load = timed(bpy.ops.import_scene.gltf, filepath=str(TMP / "da3glb" / "scene.glb"))
    cloud = max((o for o in set(bpy.data.objects) - before if o.type == "MESH"),
                key=lambda o: len(o.data.vertices))
    points = len(cloud.data.vertices)
    faces, mesh = timed(volume_mesh, cloud, 256)
    return [("DA3 export_to_glb (1M-point cap)", export, ""),
            ("+ Blender glTF import of it", load, f"{points:,} points + camera wireframes"),
            ("+ Geometry Nodes volume meshing", mesh, f"{faces:,} faces")]


@contextmanager
def new_data_removed():
    """Whatever objects, collections, meshes, images, materials and node groups the block adds
    are removed after it."""
    kinds = ("objects", "collections", "meshes", "images", "materials", "node_groups", "cameras")
    before = {kind: set(getattr(bpy.data, kind)) for kind in kinds}
    try:
        yield
    finally:
        for kind in kinds:
            added = [item for item in getattr(bpy.data, kind) if item not in before[kind]]
            if added:
                bpy.data.batch_remove(added)


def volume_mesh(obj, resolution: int) -> int:
    """Points to Volume -> Volume to Mesh on ``obj``'s vertices, applied in place; faces made."""
    size = max(obj.dimensions) / resolution
    tree = bpy.data.node_groups.new("volume meshing", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes = [tree.nodes.new(kind) for kind in ("NodeGroupInput", "GeometryNodeMeshToPoints",
                                               "GeometryNodePointsToVolume",
                                               "GeometryNodeVolumeToMesh", "NodeGroupOutput")]
    for a, b in zip(nodes, nodes[1:], strict=False):
        tree.links.new(a.outputs[0], b.inputs[0])
    to_volume, to_mesh = nodes[2], nodes[3]
    for node in (to_volume, to_mesh):
        node.inputs["Resolution Mode"].default_value = "Size"
        node.inputs["Voxel Size"].default_value = size
    to_volume.inputs["Radius"].default_value = 1.5 * size
    modifier = obj.modifiers.new("volume", "NODES")
    modifier.node_group = tree
    with bpy.context.temp_override(object=obj, active_object=obj):
        bpy.ops.object.modifier_apply(modifier=modifier.name)
    return len(obj.data.polygons)


def bench_gltf_of_our_points(points_obj, report: Report):
    """glTF import of a GLB holding exactly our kept points and colours (a POINTS primitive)."""
    mesh = points_obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    col = np.empty(len(mesh.vertices) * 4, np.float32)
    mesh.color_attributes["Col"].data.foreach_get("color", col)
    glb = TMP / "points.glb"
    _, write = timed(write_point_glb, glb, co.reshape(-1, 3), col.reshape(-1, 4))
    _, t = timed(bpy.ops.import_scene.gltf, filepath=str(glb))
    report.add("glTF import, same points as ours", t, len(mesh.vertices),
               f"(+{write:.2f} s to write the GLB)")


def write_point_glb(path: Path, positions: np.ndarray, colors: np.ndarray) -> None:
    """A binary glTF with one POINTS primitive: float positions, normalised uint8 RGBA colours."""
    rgba = np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
    blob = positions.astype("<f4").tobytes() + rgba.tobytes()
    gltf = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": 0}]}],
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": positions.nbytes},
                        {"buffer": 0, "byteOffset": positions.nbytes, "byteLength": rgba.nbytes}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3",
             "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
            {"bufferView": 1, "componentType": 5121, "normalized": True, "count": len(rgba),
             "type": "VEC4"}],
    }
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    blob += b"\0" * (-len(blob) % 4)
    chunks = (struct.pack("<II", len(text), 0x4E4F534A) + text
              + struct.pack("<II", len(blob), 0x004E4942) + blob)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks)


# --- main ------------------------------------------------------------------------------------

def synthetic_file(views: int, width: int, height: int) -> Path:
    from synthetic_scenes import make_prediction

    from engine.core.prediction import save_prediction

    pred, _ = make_prediction(n_views=views, width=width, height=height, focal=0.8 * width,
                              depth_scale=0.6, video=True)
    # DA3's confidence varies smoothly over an image; give it such a spread (1..5).
    v, u = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    phase = np.arange(views)[:, None, None] * 0.7
    pred.conf = (3.0 + 2.0 * np.sin(6 * u + phase) * np.cos(5 * v - phase)).astype(np.float32)
    return save_prediction(pred, TMP / "bench.npz", compress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--width", type=int, default=504)
    parser.add_argument("--height", type=int, default=378)
    parser.add_argument("--baseline-views", type=int, default=4,
                        help="views used for the bmesh / from_pydata comparison")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of our import and of the manual route, alternating, for the comparison")
    parser.add_argument("--da3-python", default=str(REPO / ".worker-env" / "bin" / "python"),
                        help="a Python with depth_anything_3 (and trimesh) for DA3's GLB export")
    parser.add_argument("--da3-path", default=str(REPO / ".cache" / "bench-site"),
                        help="extra sys.path entry there, for trimesh (`pip install --no-deps "
                             "--target .cache/bench-site trimesh`)")
    args = parser.parse_args()

    import addon_utils

    addon_utils.enable("io_scene_gltf2")
    bpy.ops.wm.read_homefile(use_empty=True)
    pkg, api = load_extension()
    path = synthetic_file(args.views, args.width, args.height)
    print(f"{args.views} views of {args.width}x{args.height} "
          f"({args.views * args.width * args.height:,} pixels), {path.stat().st_size / 2**20:.0f} MiB")
    report = Report()
    pred, _, grids = bench_stages(pkg, path, report)
    bench_remesh(api, pkg, pred, report)
    bench_baselines(pkg, grids[: args.baseline_views], report)
    points = bench_whole_import(api, path, report)
    bench_stepped_import(api, path, report)
    bench_gltf_of_our_points(points, report)
    bench_routes(args, api, path, report)


if __name__ == "__main__":
    main()
