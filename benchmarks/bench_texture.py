"""The texture baked from the photos: how closely the surface renders like a photo it never saw,
with the texture and with vertex colours, and what the bake costs.

    .venv/bin/python benchmarks/bench_texture.py [--scenes parts_checker room --hard
                                                  --budgets 20000 300000 --renders DIR
                                                  --texture-size 0 1024 2048 --photo-factor 2]

Each scene is rendered with Cycles at 504x378 from 30 views (tests/scenes.py; cached under
.cache/bench-fusion/ like bench_fusion.py's) and degraded like a DA3 prediction (--hard:
scenes.HARD). View 5 is left out; the rest is imported with default options at each face budget
(object mode for objects), then the surface is rendered from view 5's true pose by Blender's
Workbench engine (flat light) with its texture and with its vertex colours. Printed per scene and budget:
the mean |difference| (0-255) from the left-out photo over the object's pixels, the texture's
size and the share of it that came from the photos, the surface's faces, and the seconds of the
bake (on the importer's thread) and of the whole import. --texture-size compares fixed sizes with
the automatic one (0). --photo-factor K also renders the views K times as large, bakes from
those photos as from the worker's (``Prediction.photos``) and judges both bakes at that size.
With --renders DIR, DIR/<scene>-<budget>.png
shows the photo, the texture and the vertex colours side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# bench_fusion first: it points HOME and the caches somewhere temporary before bpy is imported,
# and puts tests/ (scenes) on the path
from bench_fusion import cached_scene, scenes
from bench_import import load_extension

HELD_OUT = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=["parts_checker", "room"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[20_000, 300_000])
    parser.add_argument("--hard", action="store_true", help="scenes.HARD errors")
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--width", type=int, default=504)
    parser.add_argument("--height", type=int, default=378)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--renders", type=Path, default=None)
    parser.add_argument("--texture-size", type=int, nargs="+", default=[0],
                        help="texture sizes to compare (0: automatic)")
    parser.add_argument("--photo-factor", type=int, default=1,
                        help="K > 1: also render the views K times as large and bake from those "
                             "photos (what the worker keeps of large frames); both bakes are then "
                             "judged against the K-times photo")
    return parser.parse_args()


def measure(api, scene, degraded, budget: int, renders: Path | None, texture_size: int = 0,
            judge=None, photos=None) -> str:
    """One import and its left-out render, judged against ``judge``'s photo (a larger render of
    the same views, or ``scene``); ``photos``: bake from that scene's images."""
    import bpy
    from da3_reconstruct.engine.core.options import BuildOptions

    bpy.ops.wm.read_homefile(use_empty=True)
    pred = scenes.without_view(degraded.prediction, HELD_OUT)
    if photos is not None:
        pred.photos = np.delete(photos.image, HELD_OUT, axis=0)
    judge = judge or scene
    options = BuildOptions(object_mode=scene.name not in scenes.SURROUNDINGS, output_points=False,
                           output_cameras=False, max_faces=budget, texture_size=texture_size)
    timings: dict = {}
    start = time.perf_counter()
    collection = api.import_prediction(pred, options, name=scene.name, timings=timings)
    whole = time.perf_counter() - start
    surface = next(o for o in collection.objects if o.get("da3_role") == "surface")
    # from where the left-out photo truly was taken: its pose in the file is off like the others
    pictures = scenes.left_out_renders(collection, judge, scenes.with_true_poses(scene, degraded), HELD_OUT)
    photo, depth = judge.image[HELD_OUT], judge.depth[HELD_OUT]
    errors = {kind: scenes.photo_error(picture, photo, depth) for kind, picture in pictures.items()}
    sharp = {kind: scenes.sharpness(picture[..., :3] * 255, picture[..., 3] > 0.99, photo, depth)
             for kind, picture in pictures.items()}
    if renders:
        strip = [photo] + [np.round(p[..., :3] * 255).astype(np.uint8) for p in pictures.values()]
        renders.mkdir(parents=True, exist_ok=True)
        suffix = (f"-{texture_size}" if texture_size else "") + ("-photos" if photos else "")
        scenes.write_png(renders / f"{scene.name}-{budget}{suffix}.png", np.concatenate(strip, axis=1))
    return (f"{scene.name:<14} {budget:>8,} {len(surface.data.polygons):>8,} "
            f"{errors['TEXTURE']:>8.1f} {errors['VERTEX']:>8.1f} {sharp['TEXTURE']:>6.2f} "
            f"{sharp['VERTEX']:>6.2f}   {surface['da3_texture']:<28} "
            f"{timings.get('texture', 0.0):>6.2f} s {whole:>7.2f} s")


def main():
    args = parse_args()
    _, api = load_extension()
    print(f"left-out view {HELD_OUT}; errors: mean |photo - render| (0-255) on the object's pixels"
          f"{'; scenes.HARD errors' if args.hard else ''}")
    print("sharpness: mean |gradient| of the render over the photo's, same pixels (photo = 1); "
          "a mean error rewards blur where poses are off, sharpness does not")
    print(f"{'scene':<14} {'budget':>8} {'faces':>8} {'texture':>8} {'vertex':>8} {'sharp':>6} "
          f"{'sharp':>6}   "
          f"{'texture made':<28} {'bake':>8} {'import':>9}")
    k = args.photo_factor
    if k > 1:
        print(f"judged at {k}x ({k * args.width}x{k * args.height}) against Cycles' {k}x photo; "
              f"each row baked from the {args.width}x{args.height} images, then from {k}x photos")
    for name in args.scenes:
        scene = cached_scene(name, args)
        large = cached_scene(name, argparse.Namespace(**{**vars(args), "width": k * args.width,
                                                         "height": k * args.height})) if k > 1 else None
        degraded = scenes.degrade(scene, seed=0, **(scenes.HARD if args.hard else {}))
        for budget in args.budgets:
            for texture_size in args.texture_size:
                for photos in ((None, large) if large else (None,)):
                    print(measure(api, scene, degraded, budget, args.renders, texture_size,
                                  judge=large, photos=photos), flush=True)


if __name__ == "__main__":
    sys.exit(main())
