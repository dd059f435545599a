"""TSDF fusion against the REMESH route: quality on scenes of known geometry, speed and memory.

    .venv/bin/python benchmarks/bench_fusion.py [--views 30 --width 504 --height 378
                                                 --resolution 256 --scenes mug room terrain --hard]
    .venv/bin/python benchmarks/bench_fusion.py --stages --scenes parts --renders /tmp/renders

Each scene is rendered with Cycles (tests/scenes.py; cached under .cache/bench-fusion/) and
degraded like a DA3 prediction (--no-sky: exact, but with the background at DA3's sky
confidence and no sky mask, as files in DA3's own layout have; --hard: scenes.HARD, larger
depth and pose errors, like issue 12's held-out scenes). Every scene but the room and the
terrain (a drone's two strips over hills, houses, a water tower and trees) is an object, fused
in object mode ('parts', 'parts_table', 'parts_floor': an object in four separate parts on
nothing, a table or a textured floor; 'thin': a chair with thin legs and slats on nothing).
Printed per scene: accuracy and completeness (mean distance, % of the object's size),
precision, recall and F-score at 1% of that size, normal consistency (mean |cos| of face and
true normals), the recall of the thin parts alone ('-': none), boundary edges, connected
pieces and faces for REMESH (the importer's own per-view surfaces + Blender's voxel remesher)
and TSDF (numpy; and torch in the worker environment when one is found, see --worker-python);
then seconds per stage, peak traced memory (tracemalloc, a second run) and peak resident
memory of the process.

With --stages --renders DIR, pictures of the old default, the new default and (objects) the new
default after the voxel remesher are written to DIR/<scene>-old-default.png, -new-default.png and
-remeshed.png: each a strip of three 400x300 views, two from the scene's own cameras (around an
object side-on; in the room views down toward the box and the sphere) and the first of them
2.5x closer, to show the grain. They are rendered with Blender's Workbench engine (solid, studio
light, one neutral grey, no vertex colours), which renders in the headless bpy module through
EGL (it prints EGL_BAD_MATCH lines and renders all the same), so no Cycles fallback is needed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix="da3-bench-fusion-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)  # a run leaves no scratch behind
for var in ("HOME", "XDG_CACHE_HOME", "BLENDER_USER_RESOURCES"):  # bpy writes there on import
    os.environ.setdefault(var, str(TMP / var.lower()))
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import scenes  # noqa: E402

from engine.core.options import BuildOptions  # noqa: E402
from engine.core.prediction import save_prediction  # noqa: E402
from engine.fusion.base import TSDFOptions  # noqa: E402
from engine.fusion.pieces import face_components  # noqa: E402
from engine.fusion.tsdf import fuse_tsdf  # noqa: E402

CACHE = REPO / ".cache" / "bench-fusion"


def main() -> None:
    args = parse_args()
    for name in args.scenes:
        scene = cached_scene(name, args)
        if args.no_sky:
            degraded = scenes.degrade(scene, depth_error=0, pose_deg=0, pose_frac=0, background_conf=1.0)
        else:
            degraded = scenes.degrade(scene, seed=0, **(scenes.HARD if args.hard else {}))
        pred = degraded.prediction
        print(f"\n== {name}{' (hard)' if args.hard else ''}: {pred.num_views} views "
              f"{pred.width}x{pred.height}, F-score at {0.01 * scene.size:.3f} (1% of {scene.size:.2f})")
        options = TSDFOptions(resolution=args.resolution, object_mode=name not in scenes.SURROUNDINGS)
        if args.stages:
            meshes = print_stages(scene, degraded, options)
            if args.renders:
                write_renders(Path(args.renders), name, scene, degraded, meshes)
            continue
        (v, f, _), *seconds = timed(scenes.remesh_baseline, pred)
        rows = [("REMESH", (v, f), seconds)]
        mesh, *seconds = timed(fuse_tsdf, pred, options)
        rows.append(("TSDF numpy", (mesh.vertices, mesh.faces), seconds))
        torch_result = run_torch(pred, options, args)
        if torch_result is not None:
            label = f"TSDF {torch_result['device']}"  # 'numpy' when the worker has no CUDA
            rows.append((label[:14], torch_result["mesh"], torch_result["seconds"]))
        print(scenes.HEADER + f" {'wall s':>7} {'cpu s':>7}")
        for label, (v, f), (wall, cpu) in rows:
            quality = scenes.evaluate(v, f, scene, degraded.to_scene)
            print(quality.row(label) + f" {wall:7.2f} {cpu:7.2f}")
        print_cost(mesh, pred, options, torch_result)


MIN_ISLAND_FACES = 64  # builder/surface.py: what the importer drops after the remesher
# Each stage of the surface alone on top of the old default, then all of them (the new default).
OLD_DEFAULT = dict(denoise_radius=0, consistent_views=False, smooth_iterations=0,
                   unseen_smooth_iterations=0, normal_filter_iterations=0, max_hole_edges=0,
                   max_faces=0, outline_cycles=0)
CLEAN = dict(smooth_iterations=TSDFOptions.smooth_iterations,
             unseen_smooth_iterations=TSDFOptions.unseen_smooth_iterations,
             normal_filter_iterations=TSDFOptions.normal_filter_iterations,
             max_hole_edges=TSDFOptions.max_hole_edges)
STAGES = {
    "old default": {},
    "+denoised depth": dict(denoise_radius=TSDFOptions.denoise_radius),
    "+consistency": dict(consistent_views=True),
    "+outlines": dict(consistent_views=True, outline_cycles=TSDFOptions.outline_cycles),
    "+clean": CLEAN,
    "+face budget": dict(max_faces=BuildOptions.max_faces),
    "new default": dict(denoise_radius=TSDFOptions.denoise_radius, consistent_views=True,
                        outline_cycles=TSDFOptions.outline_cycles, **CLEAN, max_faces=BuildOptions.max_faces),
}


def print_stages(scene, degraded, options) -> dict:
    """One row per stage (``STAGES``), and in object mode the new default after Blender's voxel
    remesher at the fused voxel, as the importer builds it. Returns each row's mesh (vertices,
    faces; the prediction's frame) by label."""
    print(scenes.HEADER + f" {'wall s':>7} {'cpu s':>7}")
    meshes = {}
    for label, changes in STAGES.items():
        settings = replace(options, **{**OLD_DEFAULT, **changes})
        mesh, wall, cpu = timed(fuse_tsdf, degraded.prediction, settings)
        meshes[label] = (mesh.vertices, mesh.faces)
        print(scenes.evaluate(mesh.vertices, mesh.faces, scene, degraded.to_scene).row(label)
              + f" {wall:7.2f} {cpu:7.2f}")
        agreement = mesh.stats["consistency"]
    if agreement:
        print("views apart (|depth difference| / depth between overlapping views), median "
              f"{100 * agreement['disagreement_before']:.2f}% -> "
              f"{100 * agreement['disagreement_after']:.2f}%, "
              f"90th percentile {100 * agreement['disagreement_p90_before']:.2f}% -> "
              f"{100 * agreement['disagreement_p90_after']:.2f}%; voting pixels another view confirms: "
              f"{100 * agreement['confirmed_share']:.0f}%")
    if options.object_mode:
        (v, f), wall, cpu = timed(scenes.voxel_remeshed, mesh.vertices, mesh.faces, mesh.voxel_size)
        pieces = face_components(f, len(v))
        f = f[np.bincount(pieces)[pieces] >= MIN_ISLAND_FACES]  # as the importer drops specks
        meshes["+ remeshed"] = (v, f)
        print(scenes.evaluate(v, f, scene, degraded.to_scene).row("+ remeshed")
              + f" {wall:7.2f} {cpu:7.2f}  (Blender's voxel remesher alone, at the fused voxel)")
    return meshes


RENDERED = {"old default": "old-default", "new default": "new-default", "+ remeshed": "remeshed"}
RENDER_SIZE = (400, 300)


def write_renders(folder: Path, name: str, scene, degraded, meshes: dict) -> None:
    """DIR/<scene>-<kind>.png for each of ``RENDERED`` in ``meshes``: three Workbench views side
    by side, the mesh moved into the scene's world (``degraded.to_scene``)."""
    folder.mkdir(parents=True, exist_ok=True)
    views = render_views(name, scene, RENDER_SIZE[0])
    for label, kind in RENDERED.items():
        if label not in meshes:
            continue
        v, f = meshes[label]
        v = v @ degraded.to_scene[:3, :3].T + degraded.to_scene[:3, 3]
        strip = np.concatenate(list(scenes.workbench_render(v, f, views, *RENDER_SIZE)), axis=1)
        scenes.write_png(folder / f"{name}-{kind}.png", strip)
        print(f"wrote {folder / f'{name}-{kind}.png'}")


def render_views(name: str, scene, width: int, zoom: float = 2.5) -> list:
    """(w2c, K) of three views from the scene's own cameras: around an object a quarter and three
    quarters of the way round (side-on to its row of parts), 1.3x closer; in the room the
    downward views toward the box and the sphere; and the first of the two ``zoom`` times closer."""
    cams = scene.w2c[2::3] if name == "room" else scene.w2c  # room_cameras: up, level, down
    n = len(cams)
    first, second = (0, 3 * n // 5) if name == "room" else (n // 4, 3 * n // 4)
    K = scene.K * (width / scene.image.shape[2])
    K[2, 2] = 1.0
    wide, close = K.copy(), K.copy()
    wide[:2, :2] *= 1.0 if name == "room" else 1.3
    close[:2, :2] *= zoom
    return [(cams[first], wide), (cams[second], wide), (cams[first], close)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--width", type=int, default=504)
    parser.add_argument("--height", type=int, default=378)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--scenes", nargs="+", default=["mug", "room"],
                        choices=["mug", "room", "terrain", *scenes.OBJECT_SCENES])
    degradation = parser.add_mutually_exclusive_group()
    degradation.add_argument("--no-sky", action="store_true",
                             help="exact depth and poses, background at DA3's sky confidence (1.0) "
                                  "and no sky mask, as in DA3's own export layout")
    degradation.add_argument("--hard", action="store_true",
                             help="larger depth and pose errors (scenes.HARD: 2.5%% smooth depth "
                                  "error, 0.5%% pixel noise, poses off by 0.5 degrees and 1%% of "
                                  "the scene's size)")
    parser.add_argument("--stages", action="store_true",
                        help="TSDF only: the old default, each new stage alone, the new default")
    parser.add_argument("--renders", metavar="DIR",
                        help="with --stages: Workbench pictures of the old and new default meshes")
    parser.add_argument("--worker-python", default=os.environ.get("DA3_WORKER_PYTHON")
                        or str(REPO / ".worker-env" / "bin" / "python"))
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    args = parser.parse_args()
    if args.renders and not args.stages:
        parser.error("--renders needs --stages")
    return args


def cached_scene(name: str, args) -> scenes.Scene:
    path = CACHE / f"{name}-{args.views}-{args.width}x{args.height}-{args.samples}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            scene = pickle.load(f)
        if getattr(scene, "normals", None) is not None:
            return scene
        scene = scenes.with_truth(scene)  # pickled before true normals: add them, no render
    else:
        start = time.perf_counter()
        scene = scenes.render_scene(name, args.width, args.height, args.samples, args.views)
        print(f"rendered {name} in {time.perf_counter() - start:.1f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(scene, f)
    return scene


def timed(fn, *args):
    """Result, wall seconds and CPU seconds of this process (the machine may be shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - start, time.process_time() - cpu


def run_torch(pred, options, args) -> dict | None:
    """The torch path in the worker's interpreter (torch never enters this process)."""
    python = Path(args.worker_python)
    if not python.exists():
        print(f"(no worker environment at {python}: torch path skipped)")
        return None
    TMP.mkdir(parents=True, exist_ok=True)  # shared /tmp: someone may have tidied it
    npz = save_prediction(pred, TMP / "pred.npz")
    out = TMP / "torch.npz"
    code = (
        "import sys, json, time, resource, numpy as np\n"
        "from engine.fusion import tsdf_torch as fusion_torch\n"
        "from engine.fusion.base import TSDFOptions\n"
        "from engine.core.prediction import load_prediction\n"
        "pred = load_prediction(sys.argv[1])\n"
        "opts = TSDFOptions(**json.loads(sys.argv[3]))\n"
        "dev = sys.argv[4] if sys.argv[4] != 'None' else None\n"
        "fusion_torch.fuse_tsdf(pred, TSDFOptions(resolution=32), device=dev)  # warm-up\n"
        "t, c = time.perf_counter(), time.process_time()\n"
        "m = fusion_torch.fuse_tsdf(pred, opts, device=dev)\n"
        "s = [time.perf_counter() - t, time.process_time() - c]\n"
        "np.savez(sys.argv[2], v=m.vertices, f=m.faces)\n"
        "print(json.dumps(dict(seconds=s, device=m.stats['device'], timings=m.stats['timings'],"
        " gpu_peak_mb=m.stats.get('gpu_peak_mb'),"
        " rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))\n")
    opts = {"resolution": options.resolution, "object_mode": options.object_mode}
    done = subprocess.run([str(python), "-c", code, str(npz), str(out), json.dumps(opts),
                           str(args.device)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        print("torch path failed:", done.stderr.strip().splitlines()[-1:])
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    arrays = np.load(out)
    result["mesh"] = (arrays["v"], arrays["f"])
    return result


def print_cost(mesh, pred, options, torch_result) -> None:
    stats = mesh.stats
    stages = ", ".join(f"{k} {v:.2f}" for k, v in stats["timings"].items())
    print(f"numpy stages (s): {stages}")
    print(f"grid {stats['grid_shape']} voxel {mesh.voxel_size:.4g} trunc {mesh.truncation:.4g}; "
          f"{stats['blocks']} blocks allocated = {stats['voxels'] / 1e6:.1f} M voxels, "
          f"{stats['volume_mb']:.0f} MB of votes")
    tracemalloc.start()
    fuse_tsdf(pred, options)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"numpy peak traced memory {peak:.0f} MB; process peak RSS {rss:.0f} MB "
          "(includes Blender, the scenes and the REMESH run)")
    if torch_result is not None:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in torch_result["timings"].items())
        print(f"worker entry point (engine.fusion.tsdf_torch) on {torch_result['device']}: "
              f"{torch_result['seconds'][0]:.2f} s ({stages}); "
              f"worker peak RSS {torch_result['rss_mb']:.0f} MB"
              + (f", GPU peak {torch_result['gpu_peak_mb']:.0f} MB"
                 if torch_result.get("gpu_peak_mb") else ""))


if __name__ == "__main__":
    main()
