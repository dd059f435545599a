"""Speed of TSDF fusion alone: the numpy path against the worker's torch path, per stage.

Run with the worker environment's Python from the repository root (numpy and torch, no Blender)::

    .worker-env/bin/python benchmarks/bench_fusion_speed.py [--views 30 --width 504 --height 378
                                                             --resolution 256 --device cuda
                                                             --profile 25]

The scene is the ray-cast room of tests/test_align.py (walls and pillars, cameras on a circle)
at full DA3 resolution, with DA3-like depth noise, a confidence map and colour, so no Blender is
needed and it runs on a GPU machine as it is. Each path runs once to warm up (CUDA context,
kernels), then ``--repeat`` times; the best and the median wall time and each stage's seconds are
printed, with the faces produced (both paths must agree) and the GPU allocator's peak. The numpy
path runs on one thread and on ``--threads`` (every core by default, as the worker fuses). The stages
are fusion's laps: weigh, plan, consistency (the views made to agree), replan, allocate,
integrate, mesh, pieces (vertex colours, connected pieces) and clean (holes, smoothing); the
torch path runs all but plan, replan and allocate on the device (pieces: its connected pieces).
``--profile N`` adds one more numpy run under cProfile and prints its N most expensive functions
(own time). On a machine shared with other work, compare timings taken in the same run.
Quality is bench_fusion.py's job.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.core.prediction import Prediction  # noqa: E402
from engine.fusion.base import TSDFOptions  # noqa: E402
from engine.fusion.tsdf import fuse_tsdf  # noqa: E402
from tests.room import circle_path, intrinsics_for, ray_cast  # noqa: E402


def room_prediction(views: int, height: int, width: int, seed: int = 0) -> Prediction:
    """The room seen from ``views`` cameras, depth with 0.5 % noise, checker colours."""
    rng = np.random.default_rng(seed)
    ext = circle_path(views)
    k = intrinsics_for(height, width)
    depth = np.stack([ray_cast(e, k, height, width) for e in ext]).astype(np.float32)
    depth *= 1 + rng.normal(0, 0.005, depth.shape).astype(np.float32)
    conf = rng.uniform(1.0, 6.0, depth.shape).astype(np.float32)
    yy, xx = np.mgrid[:height, :width]
    checker = (((yy // 24) + (xx // 24)) % 2 * 120 + 60).astype(np.uint8)
    image = np.repeat(checker[None, :, :, None], views, 0).repeat(3, -1)
    return Prediction(depth=depth, conf=conf, image=image, extrinsics=ext,
                      intrinsics=np.tile(k, (views, 1, 1)))


def run(label: str, fuse, repeat: int) -> dict:
    fuse()  # warm-up: CUDA context, kernels, allocator
    walls, meshes = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        meshes.append(fuse())
        walls.append(time.perf_counter() - start)
    mesh = meshes[int(np.argmin(walls))]
    stages = ", ".join(f"{k} {v:.3f}" for k, v in mesh.stats["timings"].items())
    peak = mesh.stats.get("gpu_peak_mb")
    print(f"{label:>18}: best {min(walls):.3f} s, median {statistics.median(walls):.3f} s "
          f"({stages}); {len(mesh.faces)} faces, {len(mesh.vertices)} vertices"
          + (f"; GPU peak {peak:.0f} MB" if peak else ""), flush=True)
    return {"label": label, "best": min(walls), "faces": len(mesh.faces)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--width", type=int, default=504)
    parser.add_argument("--height", type=int, default=378)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("--skip-numpy", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="numpy threads of the second numpy row (default: every core, as the "
                             "worker fuses; 1 thread is always timed)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile one more numpy run and print its N costliest functions")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    pred = room_prediction(args.views, args.height, args.width)
    print(f"room: {args.views} views {args.width}x{args.height}, resolution {args.resolution} "
          f"(made in {time.perf_counter() - start:.1f} s)")
    options = TSDFOptions(resolution=args.resolution)
    rows = []
    if not args.skip_numpy:
        rows.append(run("numpy", lambda: fuse_tsdf(pred, options), args.repeat))
        if args.threads > 1:  # the same mesh, each view's blocks shared among the threads
            threaded = dataclasses.replace(options, threads=args.threads)
            rows.append(run(f"numpy, {args.threads} threads", lambda: fuse_tsdf(pred, threaded),
                            args.repeat))
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(fuse_tsdf, pred, options)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    try:
        import torch

        from engine.fusion import tsdf_torch as fusion_torch
    except ImportError:
        print("(no torch here: the worker's path is skipped)")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    rows.append(run(f"torch {device}",
                    lambda: fusion_torch.fuse_tsdf(pred, options, device=device), args.repeat))
    print(f"device: {name}; torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
