"""Worker wall time against the raw network forward, per preset and number of views.

Run with the worker environment's Python from the repository root::

    .worker-env/bin/python benchmarks/bench_worker.py --models da3-small --views 1 8
    .worker-env/bin/python benchmarks/bench_worker.py --models da3-small da3-base da3-large \
        --views 1 8 32 100            # on a CUDA machine

For each preset and N it writes N synthetic 640x480 images (-> 504x378, DA3's default
process_res), then measures in this process:

* ``fwd full``: the network as the library runs it (the head computes the ray branch too);
* ``fwd``: the worker's forward (ray branch skipped), same precision as the worker;
* ``head full`` / ``head``: the head's share of each (the ray-branch saving);

and runs the real worker (``python -m engine.worker``) on the same images, for its wall time
(process start, imports, decoding, weights, forward, writing), its overhead over ``fwd``,
images per second and peak memory (process RSS; CUDA allocator peak where there is a GPU).
Then the same job twice on one warm worker (``--serve``, as Blender runs it): ``warm1`` is the
first job from the process start (it loads the model), ``warm2`` the second job from the job
line to its ``done`` (model already loaded; the target is within 10 % of ``fwd``).
Without weights on disk, random ones are saved first (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DA3_LOG_LEVEL", "WARN")  # DA3 logs to stdout: keep the table readable

from engine.core.options import RunOptions  # noqa: E402
from engine.core.protocol import EXIT_LINE, Job, job_line  # noqa: E402
from engine.worker import preprocess as pp  # noqa: E402
from tests import media  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["da3-small"])
    parser.add_argument("--views", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--process-res", type=int, default=504)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights-dir", default=str(REPO / ".cache" / "bench-weights"))
    parser.add_argument("--json", help="also write the rows to this file")
    return parser.parse_args(argv)


def weights_for(model: str, root: Path) -> Path:
    from engine.worker.weights import has_weights, save_random

    folder = root / model
    if not has_weights(folder):
        print(f"saving random {model} weights to {folder}", file=sys.stderr)
        save_random(model, folder)
    return folder


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [media.write(folder / f"view{i:03d}.jpg", media.scene(480, 640, seed=i))
            for i in range(n)]


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class HeadTimer:
    """Seconds spent in ``net``'s head(s) during the last forward."""

    def __init__(self, net, device):
        self.device, self.seconds, self._start = device, 0.0, 0.0
        heads = [m for name, m in net.named_modules() if name.endswith("head")
                 and not name.endswith("gs_head")]
        for head in heads:
            head.register_forward_pre_hook(self._before)
            head.register_forward_hook(self._after)

    def _before(self, module, args):
        synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, module, args, out):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


def timed_forward(net, rgb, device, dtype, timer: HeadTimer) -> float:
    from engine.worker.model import forward

    timer.seconds = 0.0
    synchronize(device)
    start = time.perf_counter()
    forward(net, rgb, device, dtype)
    synchronize(device)
    return time.perf_counter() - start


def raw_forwards(model: str, weights: Path, images: list[Path], args) -> dict:
    """In-process forward times, full head then ray-skipped head, after a one-view warm-up."""
    import torch

    from engine.core.presets import get_preset
    from engine.worker.model import autocast_dtype, pick_device, skip_ray_branch
    from engine.worker.weights import load_network

    device = pick_device(args.device)
    dtype = autocast_dtype(device)
    net = load_network(weights, get_preset(model), str(device))  # as the worker loads it
    timer = HeadTimer(net, device)
    batch = pp.preprocess([media_read(p) for p in images], args.process_res)
    timed_forward(net, batch.rgb[:1], device, dtype, timer)  # lazy initialisation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    full = timed_forward(net, batch.rgb, device, dtype, timer)
    head_full = timer.seconds
    skip_ray_branch(net)
    fast = timed_forward(net, batch.rgb, device, dtype, timer)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    row = {"device": device.type, "size": f"{batch.size[1]}x{batch.size[0]}", "fwd_full": full,
           "head_full": head_full, "fwd": fast, "head": timer.seconds, "peak_gpu_mib": peak_gpu}
    del net
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def media_read(path: Path) -> np.ndarray:
    from engine.worker.inputs import read_image

    return read_image(path)


def run_worker(model: str, weights: Path, images: list[Path], args, tmp: Path) -> dict:
    """Wall time and peak RSS of one real worker run."""
    output = tmp / "prediction.npz"
    job = Job(sources=[str(p) for p in images], output=str(output),
              run=RunOptions(model=model, weights=str(weights), device=args.device,
                             process_res=args.process_res))
    job_path = job.save(tmp / "job.json")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine.worker", str(job_path)], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines = proc.stdout.read().splitlines()
    rss = wait_for_peak_rss(proc)
    wall = time.perf_counter() - start
    done = json.loads(lines[-1]) if lines else {}
    if done.get("event") != "done":
        raise RuntimeError(f"worker failed: {done}")
    output.unlink()
    return {"wall": wall, "peak_rss_mib": rss, "timings": done.get("timings", {}),
            "worker_gpu_mib": done.get("peak_gpu_mib")}


def run_warm_worker(model: str, weights: Path, images: list[Path], args, tmp: Path) -> dict:
    """Wall times of a first and a second job on one serving worker."""
    jobs = [Job(sources=[str(p) for p in images], output=str(tmp / f"warm{i}" / "prediction.npz"),
                run=RunOptions(model=model, weights=str(weights), device=args.device,
                               process_res=args.process_res)).save(tmp / f"warm{i}.json") for i in (1, 2)]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine.worker", "--serve"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = warm_job(proc, jobs[0])
        warm1 = time.perf_counter() - start
        start = time.perf_counter()
        second = warm_job(proc, jobs[1])
        warm2 = time.perf_counter() - start
    finally:
        proc.stdin.write(EXIT_LINE + "\n")
        proc.stdin.close()
        proc.wait()
    if first.get("model_reused") or not second.get("model_reused"):
        raise RuntimeError(f"the warm worker loaded the model {first}, {second}")
    return {"warm1": warm1, "warm2": warm2,
            "warm2_steps": {**second.get("timings", {}), "worker_total": second.get("seconds")}}


def warm_job(proc: subprocess.Popen, job: Path) -> dict:
    """Send one job to a serving worker; its done event."""
    proc.stdin.write(job_line(job) + "\n")
    proc.stdin.flush()
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] in ("done", "error"):
            if event["event"] != "done":
                raise RuntimeError(f"worker failed: {event}")
            Path(event["result"]).unlink()
            return event
    raise RuntimeError("the warm worker ended without a final event")


def wait_for_peak_rss(proc: subprocess.Popen) -> float | None:
    """Peak resident memory of the finished child, MiB (POSIX); None elsewhere."""
    if not hasattr(os, "wait4"):
        proc.wait()
        return None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 2**20


def bench(model: str, n: int, args, root: Path) -> dict:
    weights = weights_for(model, Path(args.weights_dir))
    with tempfile.TemporaryDirectory(prefix="da3-bench-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "images", n)
        row = {"model": model, "views": n, **raw_forwards(model, weights, images, args)}
        row.update(run_worker(model, weights, images, args, tmp))
        row.update(run_warm_worker(model, weights, images, args, tmp))
    row["overhead_pct"] = 100.0 * (row["wall"] - row["fwd"]) / row["fwd"]
    row["warm2_pct"] = 100.0 * (row["warm2"] - row["fwd"]) / row["fwd"]
    # the worker's own steps besides its forward: start-up, imports, weights, writing
    row["fixed"] = row["wall"] - row["timings"].get("inference", 0.0)
    row["img_per_s"] = n / row["wall"]
    row["s_per_view"] = row["fwd"] / n
    return row


COLUMNS = [("model", "{}"), ("views", "{}"), ("device", "{}"), ("size", "{}"),
           ("fwd_full", "{:.2f}"), ("fwd", "{:.2f}"), ("head_full", "{:.2f}"), ("head", "{:.2f}"),
           ("s_per_view", "{:.2f}"), ("wall", "{:.2f}"), ("fixed", "{:.2f}"), ("overhead_pct", "{:.0f}%"),
           ("img_per_s", "{:.2f}"), ("peak_rss_mib", "{:.0f}"), ("peak_gpu_mib", "{:.0f}"),
           ("worker_gpu_mib", "{:.0f}"), ("warm1", "{:.2f}"), ("warm2", "{:.2f}"),
           ("warm2_pct", "{:.0f}%")]


def print_table(rows: list[dict]) -> None:
    cells = [[name for name, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[name]) if row.get(name) is not None else "-"
                      for name, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print("seconds; fwd_full: the library's network, fwd: the worker's (ray branch skipped), "
          "both warm, in this process; wall: a real worker run; fixed: wall minus the worker's "
          "own forward; overhead: (wall - fwd) / fwd; warm1 / warm2: first / second job on one "
          "warm worker (--serve); warm2_pct: (warm2 - fwd) / fwd")
    for row in rows:
        print(f"{row['model']} N={row['views']}: the second warm job's steps {row['warm2_steps']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for model in args.models:
        for n in args.views:
            rows.append(bench(model, n, args, REPO))
            print(f"done {model} N={n}: wall {rows[-1]['wall']:.2f} s", file=sys.stderr)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
