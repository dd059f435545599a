"""Benchmark of chunked prediction: alignment/merge cost, accuracy, and the real chunked forward.

Two modes:

``synthetic`` (numpy only, the dev environment): a room ray-cast from 300 and 1000 cameras at
504x378, cut into chunks the way DA3-Streaming does (120 views, 60 shared), each chunk in its own
frame and scale with depth noise and outliers. Prints, per run: time to align and merge one
chunk, the whole merge, camera/point error against the truth (% of the room's size), ghosting of
the shared views, and the process's peak memory.

    .venv/bin/python benchmarks/bench_chunking.py synthetic --frames 300 1000

``model`` (the worker environment: torch + depth-anything-3): the real network in chunks through
``engine.worker.chunking.predict_in_chunks``: two memory probes, the chunk size they allow, frames/s and
peak memory. Without ``--weights`` the network is random-initialised (timings and memory are
real, the geometry is not). On a GPU machine this is the run that compares with DA3-Streaming's
8.5 frames/s on an A100:

    python benchmarks/bench_chunking.py model --model da3-large --weights DIR --device cuda \\
        --frames 300 1000 --chunk 0 --overlap 60

``--chunk 0`` takes the chunk size from the probes. No GPU was available when this was written:
the GPU figures are to be measured there.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.worker.align import backproject, camera_centres, umeyama  # noqa: E402
from engine.worker.chunking import (  # noqa: E402
    free_device_bytes,
    measure_chunk_size,
    predict_in_chunks,
)

GIB = 1024**3


def peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


# --- synthetic ---------------------------------------------------------------------------------

class RoomChunks:
    """Chunks of the synthetic room made on demand, so only one chunk's truth is ever held."""

    def __init__(self, frames: int, height: int, width: int, seed: int = 0):
        from tests.room import circle_path, intrinsics_for

        self.extrinsics = circle_path(frames, laps=2.0)
        self.k = intrinsics_for(height, width)
        self.h, self.w = height, width
        self.rng = np.random.default_rng(seed)
        self.make_seconds = 0.0

    def truth_depth(self, views) -> np.ndarray:
        from tests.room import ray_cast

        return np.stack([ray_cast(self.extrinsics[i], self.k, self.h, self.w) for i in views])

    def __call__(self, indices):
        from engine.core.prediction import Prediction
        from tests.test_align import as_da3_chunk

        start = time.perf_counter()
        truth = Prediction(depth=self.truth_depth(indices).astype(np.float32),
                           intrinsics=np.tile(self.k, (len(indices), 1, 1)),
                           extrinsics=self.extrinsics[indices])
        chunk = as_da3_chunk(truth, np.arange(len(indices)), self.rng)
        self.make_seconds += time.perf_counter() - start
        return chunk


def synthetic_errors(merged, room: RoomChunks, sample_views: int = 20) -> dict:
    """Camera and point errors after one global similarity, in % of the room's longest side."""
    from tests.room import SCENE_SIZE

    to_truth = umeyama(camera_centres(merged.extrinsics), camera_centres(room.extrinsics))
    centres = np.linalg.norm(to_truth.apply(camera_centres(merged.extrinsics))
                             - camera_centres(room.extrinsics), axis=1)
    views = np.linspace(0, merged.num_views - 1, sample_views).astype(int)
    truth = room.truth_depth(views)
    rr, cc = np.meshgrid(np.arange(4, room.h, 8), np.arange(4, room.w, 8), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    errs = []
    for v, depth in zip(views, truth, strict=True):
        got = backproject(merged.depth[v][rr, cc].astype(np.float64), merged.intrinsics[v],
                          merged.extrinsics[v], cc + 0.5, rr + 0.5)
        want = backproject(depth[rr, cc], room.k, room.extrinsics[v], cc + 0.5, rr + 0.5)
        errs.append(np.linalg.norm(to_truth.apply(got) - want, axis=1))
    errs = np.concatenate(errs)
    return {"centre_max_pct": 100 * centres.max() / SCENE_SIZE,
            "point_median_pct": 100 * float(np.median(errs)) / SCENE_SIZE}


def merged_bytes(merged) -> int:
    """What the merge allocated once: the merged prediction's arrays."""
    arrays = (merged.depth, merged.conf, merged.image, merged.sky, merged.intrinsics,
              merged.extrinsics)
    return sum(a.nbytes for a in arrays if a is not None)


def run_synthetic(args) -> None:
    width, height = args.width, args.height
    print(f"synthetic room, {width}x{height}, chunk {args.chunk} / overlap {args.overlap}, "
          "numpy on CPU")
    header = ("frames", "chunks", "align+merge ms/chunk (median / max)", "merge total s",
              "cam err max %", "point err med %", "ghosting med %", "merged GiB", "peak RSS GiB")
    rows = []
    for frames in args.frames:
        room = RoomChunks(frames, height, width, seed=args.seed)
        start = time.perf_counter()
        merged, reports, run = predict_in_chunks(frames, room, chunk_size=args.chunk,
                                                 overlap=args.overlap)
        total = time.perf_counter() - start - room.make_seconds
        per_chunk = [1000 * r.seconds for r in reports[1:]] or [0.0]
        err = synthetic_errors(merged, room)
        ghost = 100 * float(np.median([r.ghosting for r in reports[1:]])) if len(reports) > 1 else 0
        rows.append((frames, len(reports), f"{np.median(per_chunk):.0f} / {max(per_chunk):.0f}",
                     f"{total:.2f}", f"{err['centre_max_pct']:.3f}",
                     f"{err['point_median_pct']:.3f}", f"{ghost:.2f}",
                     f"{merged_bytes(merged) / GIB:.2f}",
                     f"{peak_rss_gib():.2f}"))
        del merged
    print_table(header, rows)
    print("ghosting: median distance between the two aligned versions of the shared views' "
          "pixels, % of their depth (the depth noise of both sides is 0.5%)")


# --- the real network --------------------------------------------------------------------------

def panning_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """RGB frames of a slow pan over a textured strip: enough structure for the network to run."""
    import cv2

    rng = np.random.default_rng(seed)
    strip = cv2.GaussianBlur(rng.uniform(0, 255, (height, width * 3, 3)).astype(np.float32),
                             (0, 0), 3.0)
    step = (strip.shape[1] - width) / max(1, n - 1)
    return [np.clip(strip[:, int(i * step): int(i * step) + width], 0, 255).astype(np.uint8)
            for i in range(n)]


def load_net(args):
    import torch

    from engine.core.presets import get_preset
    from engine.worker.model import autocast_dtype, build_network, pick_device, skip_ray_branch
    from engine.worker.weights import load_network

    preset = get_preset(args.model)
    if args.weights:
        net = load_network(Path(args.weights), preset)
    else:
        torch.manual_seed(0)
        net = build_network(preset.network)
    skip_ray_branch(net)
    device = pick_device(args.device)
    return net.to(device), device, autocast_dtype(device)


def run_model(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    net, device, dtype = load_net(args)
    print(f"{args.model} ({'weights ' + args.weights if args.weights else 'random weights'}) on "
          f"{device.type}, dtype {dtype or 'float32'}")
    header = ("frames", "chunk", "overlap", "chunks", "OOM retries", "frames/s",
              "forward s", "align s", "peak dev GiB", "peak RSS GiB")
    rows = [model_row(net, device, dtype, frames, args) for frames in args.frames]
    print_table(header, rows)


def model_row(net, device, dtype, frames: int, args) -> tuple:
    """One chunked run of ``frames`` views: probes, chunk size, the run, its figures."""
    import torch

    from engine.worker.model import forward, free_device_memory, to_views
    from engine.worker.preprocess import preprocess

    batch = preprocess(panning_frames(frames, 378, 504), args.res)
    size, model, probes = measure_chunk_size(
        lambda k: forward(net, batch.rgb[:k], device, dtype), str(device),
        probe_views=tuple(args.probes), max_views=frames)
    free = free_device_bytes(str(device))
    chunk = args.chunk or size
    overlap = min(args.overlap, chunk // 2)
    print(f"probes {[(k, round(b / GIB, 3)) for k, b in probes]} GiB -> {model}; free "
          f"{free / GIB:.1f} GiB -> chunk {chunk}, overlap {overlap}")
    forward_s = [0.0]

    def run_chunk(indices):
        start = time.perf_counter()
        try:
            return to_views(forward(net, batch.rgb[indices], device, dtype))
        except Exception:
            free_device_memory()  # the driver retries a smaller chunk on out-of-memory
            raise
        finally:
            forward_s[0] += time.perf_counter() - start

    def progress(done, total, eta):
        print(f"  {done}/{total} views, ETA {eta if eta is None else round(eta)} s", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    merged, reports, run = predict_in_chunks(frames, run_chunk, chunk_size=chunk,
                                             overlap=overlap, progress=progress)
    seconds = time.perf_counter() - start
    peak_dev = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else 0.0
    print(f"  ghosting per chunk (% of depth): "
          f"{[round(100 * r.ghosting, 2) for r in reports[1:]]}")
    del merged
    return (frames, chunk, overlap, len(run.chunks), len(run.retries),
            f"{frames / seconds:.2f}", f"{forward_s[0]:.1f}",
            f"{sum(r.seconds for r in reports):.2f}", f"{peak_dev:.2f}", f"{peak_rss_gib():.2f}")


# --- output ------------------------------------------------------------------------------------

def print_table(header, rows) -> None:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    syn = sub.add_parser("synthetic", help="alignment and merge on a synthetic room (numpy)")
    syn.add_argument("--frames", type=int, nargs="+", default=[300, 1000])
    syn.add_argument("--width", type=int, default=504)
    syn.add_argument("--height", type=int, default=378)
    syn.add_argument("--chunk", type=int, default=120)
    syn.add_argument("--overlap", type=int, default=60)
    syn.add_argument("--seed", type=int, default=0)
    mod = sub.add_parser("model", help="the real network in chunks (worker environment)")
    mod.add_argument("--model", default="da3-small")
    mod.add_argument("--weights", default="", help="weights folder; random weights without it")
    mod.add_argument("--device", default="auto")
    mod.add_argument("--frames", type=int, nargs="+", default=[12])
    mod.add_argument("--chunk", type=int, default=6, help="0: from the memory probes")
    mod.add_argument("--overlap", type=int, default=2)
    mod.add_argument("--res", type=int, default=504)
    mod.add_argument("--probes", type=int, nargs="+", default=[2, 8],
                     help="views of the memory probes")
    mod.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.frames) < 2:
        parser.error("--frames must be at least 2")
    (run_synthetic if args.mode == "synthetic" else run_model)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
