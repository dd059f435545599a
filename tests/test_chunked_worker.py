"""The worker's chunked inference and motion keyframes, end to end (real subprocess, random
da3-small weights): chunks forced by ``chunk_size`` on a few tiny images."""

from __future__ import annotations

import json
import subprocess
import time

import cv2
import numpy as np
import pytest

from engine.core.prediction import load_prediction
from tests import media
from tests.test_worker import REPO, final, job_file, parse_events, run_worker

RES = 70  # 70x56 network input: a chunk's forward costs little more than the start-up


@pytest.fixture
def seven_views(tmp_path):
    return [media.write(tmp_path / "views" / f"v{i}.png", media.scene(seed=i)) for i in range(7)]


def inference_progress(events):
    return [e for e in events if e["event"] == "progress" and e["stage"] == "inference"]


def test_chunks_merge_into_one_prediction_in_input_order(worker_python, small_weights,
                                                         seven_views, tmp_path):
    job, output = job_file(tmp_path, seven_views, small_weights, process_res=RES,
                           chunk_size=4, chunk_overlap=2)  # chunks 0-3, 2-5, 3-6
    code, events, stderr = run_worker(worker_python, job)
    end = final(events)
    assert code == 0 and end["event"] == "done", stderr[-3000:]
    assert end["views"] == 7
    assert "chunks [(0, 4), (2, 6), (3, 7)]" in stderr
    progress = inference_progress(events)
    assert progress[0]["done"] == 0 and progress[-1]["done"] == progress[-1]["total"] == 7
    assert all(e["total"] == 7 for e in progress)
    pred = load_prediction(output)
    assert pred.depth.shape[0] == pred.conf.shape[0] == pred.image.shape[0] == 7
    assert pred.extrinsics.shape == (7, 3, 4) and np.isfinite(pred.extrinsics).all()
    assert np.isfinite(pred.depth).all() and (pred.depth > 0).all()
    assert [p.split("/")[-1] for p in pred.source_paths] == [f"v{i}.png" for i in range(7)]
    rot = pred.extrinsics[:, :, :3]  # Sim(3) placement keeps the rotations rotations
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.tile(np.eye(3), (7, 1, 1)),
                               atol=1e-3)


def test_a_job_that_fits_is_one_pass_as_before(worker_python, small_weights, seven_views,
                                               tmp_path):
    job, output = job_file(tmp_path, seven_views[:3], small_weights, process_res=RES,
                           chunk_size=3)
    code, events, stderr = run_worker(worker_python, job)
    assert code == 0, stderr[-3000:]
    assert "chunks" not in stderr
    assert inference_progress(events)[-1]["total"] == 13  # steps of the one pass: 12 blocks + head


def test_cancel_during_chunks_stops_before_the_last_chunk(worker_python, small_weights, tmp_path):
    images = [media.write(tmp_path / f"v{i}.png", media.scene(seed=i)) for i in range(8)]
    job, output = job_file(tmp_path, images, small_weights, process_res=280, chunk_size=4,
                           chunk_overlap=2)
    proc = subprocess.Popen([str(worker_python), "-m", "engine.worker", str(job)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # wait until the first chunk is done and the second one runs
        event = parse_events(line)[0]
        assert event["event"] != "error", event
        if event["event"] == "progress" and event["stage"] == "inference" and event["done"] >= 4:
            break
    sent = time.monotonic()
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    rest = proc.stdout.read()
    proc.wait(timeout=60)  # a hang guard; how fast is bench_worker's and the README's figure
    print(f"stopped {time.monotonic() - sent:.2f} s after the cancel line")
    events = parse_events(rest)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "cancelled"
    assert not any(e["event"] == "progress" and e["stage"] == "inference" and e["done"] >= 8
                   for e in events), "the last chunk ran after the cancel"
    assert proc.returncode == 3
    assert not output.exists() and not list(output.parent.glob("*"))


def static_heavy_clip(path, frames=40, h=48, w=64):
    """Still for 15 frames, a pan of 2 px per frame for 10, still again for 15."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    rng = np.random.default_rng(3)  # blurred noise and boxes: corners for the tracker
    base = cv2.GaussianBlur(rng.integers(0, 255, (h, w * 2, 3), dtype=np.uint8), (0, 0), 1.5)
    for _ in range(25):
        x, y = int(rng.integers(0, 2 * w - 8)), int(rng.integers(0, h - 8))
        cv2.rectangle(base, (x, y), (x + 7, y + 6), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    for i in range(frames):
        x = 2 * min(max(0, i - 15), 10)
        writer.write(np.ascontiguousarray(base[:, x:x + w]))
    writer.release()
    return path


def test_motion_sampling_keeps_frames_by_parallax(worker_python, small_weights, tmp_path):
    clip = static_heavy_clip(tmp_path / "clip.mp4")
    job, output = job_file(tmp_path, [clip], small_weights, process_res=RES, sampling="motion",
                           max_frames=32, keyframe_cache=str(tmp_path / "cache"))
    code, events, stderr = run_worker(worker_python, job)
    assert code == 0, stderr[-3000:]
    pred = load_prediction(output)
    kept = list(pred.frame_indices)
    assert 3 <= len(kept) <= 8, kept  # of 40 frames, 30 of them still
    assert kept == sorted(kept) and kept[0] == 0
    assert sum(i < 15 for i in kept) == 1 and sum(i > 25 for i in kept) <= 1  # stills: one view
    assert pred.num_views == len(kept) and set(pred.source_paths) == {str(clip)}
    assert list(tmp_path.joinpath("cache").glob("keyframes-*.json"))  # shared with the panel


OOM_FALLBACK = """
import io, json, sys
import numpy as np
import torch
from engine.core.options import RunOptions
from engine.worker import model
from engine.worker import process as worker
from engine.worker.preprocess import make_batch


def fake_forward(net, rgb, device, dtype=None):  # a flat wall seen by 1 camera; OOM above 4
    k, h, w, _ = rgb.shape
    if k > 4:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    return {"depth": np.full((1, k, h, w), 2.0, np.float32) + np.arange(w) / (10 * w),
            "depth_conf": np.full((1, k, h, w), 2.0, np.float32),
            "intrinsics": np.tile(K, (1, k, 1, 1)),
            "extrinsics": np.tile(np.eye(4), (1, k, 1, 1))}


model.forward = fake_forward
out = io.StringIO()
emitter = worker.Emitter(out)
cancel = worker.CancelToken(emitter, worker.Cleanup())
job = type("J", (), {"run": RunOptions(), "extra": {}})()
preset = type("P", (), {"multi_view": True, "metric": False})()
run = worker.JobInProgress(job, preset, emitter, cancel)
batch = make_batch([np.zeros((48, 64, 3), np.uint8) + i for i in range(int(sys.argv[1]))])
views = worker.infer(run, torch.nn.Module(), torch.device("cpu"), None, batch)
print(json.dumps({"views": views.depth.shape[0], "events": out.getvalue().splitlines()}))
"""


def oom_fallback(worker_python, views: int) -> tuple[list[str], str]:
    done = subprocess.run([str(worker_python), "-c", OOM_FALLBACK, str(views)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["views"] == views
    return [json.loads(e)["message"] for e in result["events"] if '"warning"' in e], done.stderr


def test_out_of_memory_in_one_pass_continues_in_chunks(worker_python):
    warnings, stderr = oom_fallback(worker_python, 7)
    assert warnings[0] == "out of memory with 7 views in one pass; continuing in chunks of 3"
    assert "chunks [(0, 3), (2, 5), (4, 7)]" in stderr  # overlap: half a chunk


def test_out_of_memory_while_measuring_continues_in_small_chunks(worker_python):
    warnings, stderr = oom_fallback(worker_python, 17)  # above 16 views memory is measured
    assert "memory probes None: 4 of 17 views per pass" in stderr
    assert "chunks [(0, 4), (2, 6)," in stderr and not warnings


def test_old_job_files_keep_their_meaning(tmp_path):
    from engine.core.protocol import Job

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"sources": ["a.mp4"], "output": "o.npz", "max_frames": 8,
                               "version": 1}))
    job = Job.load(old)
    assert job.run.max_frames == 8
    assert (job.run.sampling, job.run.chunk_size, job.run.chunk_overlap, job.keyframe_cache) == \
        ("count", 0, 0, "")
    old.write_text(json.dumps({"sources": ["a.mp4"], "output": "o.npz", "sampling": "MOTION"}))
    with pytest.raises(ValueError, match="sampling must be one of count, fps, motion"):
        Job.load(old)
