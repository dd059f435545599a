"""The warm worker's own steps around the forward pass, timed one by one, without a network.

Run with the worker environment's Python from the repository root::

    .worker-env/bin/python benchmarks/bench_worker_steps.py --views 100 --size 640x480

It writes ``--views`` synthetic images of ``--size`` (640x480 -> 504x378, DA3's default
process_res) and times, best of ``--repeat``, the calls the worker makes:

* ``read_frames``: decoding and resizing every image (``inputs.read_frames``);
* ``make_batch``: stacking the views (``preprocess.make_batch``);
* ``network_input``: uploading the uint8 views and normalising them on ``--device``, the part
  of the worker's ``inference`` step that used to be ``make_batch``'s;
* ``stored_image`` and ``write_image``: the npz's ``image`` and the first part of the file,
  which the worker makes and writes in a thread while the network runs;
* ``write``: the rest, once the prediction is known (the worker's ``write`` step), with random
  depth and conf in place of the network's.

Timings on a shared machine vary: take the best of several repeats.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.core.prediction import Prediction, PredictionWriter  # noqa: E402
from engine.worker.inputs import collect_sources, read_frames  # noqa: E402
from engine.worker.preprocess import make_batch, resize_for_network, stored_images  # noqa: E402
from tests import media  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--size", default="640x480", help="source images, WIDTHxHEIGHT")
    parser.add_argument("--ext", default=".jpg")
    parser.add_argument("--process-res", type=int, default=504)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args(argv)


def best_of(repeat: int, step):
    """(fewest seconds, the last result) of ``repeat`` calls."""
    seconds, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - start)
    return min(seconds), result


def timed_network_input(rgb: np.ndarray, device: str):
    import torch

    from engine.worker.model import network_input

    def step():
        x = network_input(rgb, torch.device(device))
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def fake_prediction(image: np.ndarray, frames) -> Prediction:
    """The worker's prediction with random depth and conf in place of the network's."""
    n, h, w = image.shape[:3]
    rng = np.random.default_rng(0)
    return Prediction(depth=rng.random((n, h, w), dtype=np.float32) + 1.0,
                      intrinsics=np.tile(np.eye(3), (n, 1, 1)),
                      extrinsics=np.tile(np.eye(4)[:3], (n, 1, 1)),
                      conf=rng.random((n, h, w), dtype=np.float32) + 1.0, image=image,
                      source_paths=[f.source for f in frames],
                      frame_indices=np.full(n, -1, dtype=np.int64), model="da3-large",
                      process_res=504)


def bench(args, folder: Path) -> dict:
    w, h = (int(v) for v in args.size.split("x"))
    for i in range(args.views):
        media.write(folder / "images" / f"view{i:03d}{args.ext}", media.scene(h, w, seed=i))
    sources = collect_sources([str(folder / "images")])
    times = {}
    times["read_frames"], found = best_of(args.repeat, lambda: read_frames(
        sources, transform=lambda rgb: resize_for_network(rgb, args.process_res)))
    times["make_batch"], batch = best_of(args.repeat,
                                         lambda: make_batch([f.rgb for f in found.frames]))
    times["network_input"], _ = best_of(args.repeat, timed_network_input(batch.rgb, args.device))
    times["stored_image"], image = best_of(args.repeat, lambda: stored_images(batch.rgb))
    pred = fake_prediction(image, found.frames)
    parts = [timed_write(folder / "prediction.npz", pred) for _ in range(args.repeat)]
    times["write_image"], times["write"] = (min(seconds) for seconds in zip(*parts, strict=True))
    times["file_mib"] = (folder / "prediction.npz").stat().st_size / 2**20
    return times


def timed_write(path: Path, pred: Prediction) -> tuple[float, float]:
    """Seconds of the two parts of the worker's file: the image, then the rest."""
    path.unlink(missing_ok=True)  # the worker writes a new file: replacing one costs more
    writer = PredictionWriter(path)
    start = time.perf_counter()
    writer.begin(image=pred.image)
    middle = time.perf_counter()
    writer.finish(pred)
    return middle - start, time.perf_counter() - middle


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="da3-steps-") as tmp:
        times = bench(args, Path(tmp))
    print(f"{args.views} images {args.size}{args.ext}, network input on {args.device}, "
          f"best of {args.repeat}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
