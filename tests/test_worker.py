"""The worker end to end: a real subprocess, random da3-small weights in the hub layout.

Images are tiny (64x48, process_res 140) so each run costs about the worker's start-up.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.core.options import RunOptions
from engine.core.prediction import load_prediction
from engine.core.protocol import ERROR_KINDS, STAGES, Job, decode, job_line
from tests import media

REPO = Path(__file__).resolve().parents[1]
RES = 140


def job_file(tmp_path: Path, sources, weights="", **kw) -> tuple[Path, Path]:
    output = tmp_path / "out" / "prediction.npz"
    run = RunOptions(weights=str(weights), process_res=kw.pop("process_res", RES), device="cpu",
                     **{k: kw.pop(k) for k in RunOptions.names() if k in kw})
    job = Job(sources=[str(s) for s in sources], output=str(output), run=run, **kw)
    return job.save(tmp_path / "job.json"), output


def run_worker(python, job: Path, timeout: float = 120, env=None) -> tuple[int, list[dict], str]:
    proc = subprocess.run([str(python), "-m", "engine.worker", str(job)], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})
    return proc.returncode, parse_events(proc.stdout), proc.stderr


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line must be a protocol event."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(e, dict) and "event" in e for e in events), stdout
    for e in events:
        assert decode(json.dumps(e)) == e
        if e["event"] in ("stage", "progress"):
            assert e["stage"] in STAGES
    return events


def final(events: list[dict]) -> dict:
    finals = [e for e in events if e["event"] in ("done", "error")]
    assert len(finals) == 1, events
    assert events[-1] is finals[0]
    return finals[0]


def assert_bad_input(python, job, words: str) -> dict:
    code, events, stderr = run_worker(python, job)
    end = final(events)
    assert code == 1 and end["kind"] == "bad_input", (end, stderr[-2000:])
    assert words in end["message"] and "\n" not in end["message"]
    assert end["kind"] in ERROR_KINDS
    return end


@pytest.fixture
def folder(tmp_path) -> Path:
    images = tmp_path / "my photos é"
    for i in (10, 2, 1):
        media.write(images / f"frame{i}.png", media.scene(seed=i))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "notes.txt").write_text("ignored silently")
    return images


def test_folder_end_to_end(worker_python, small_weights, folder, tmp_path):
    job, output = job_file(tmp_path, [folder], small_weights)
    code, events, stderr = run_worker(worker_python, job)
    end = final(events)
    assert code == 0 and end["event"] == "done", stderr[-3000:]
    assert end["result"] == str(output) and end["views"] == 3
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0]["message"]
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert {"starting", "reading_frames", "loading_model", "inference", "writing"} <= set(stages)
    steps = [e for e in events if e["event"] == "progress" and e["stage"] == "inference"]
    assert steps[0]["done"] == 0 and steps[-1]["done"] == steps[-1]["total"] == 13  # 12 blocks + head

    pred = load_prediction(output)
    assert pred.depth.shape == (3, 112, 140) and pred.image.shape == (3, 112, 140, 3)
    assert pred.conf.shape == (3, 112, 140) and pred.extrinsics.shape == (3, 3, 4)
    assert [Path(p).name for p in pred.source_paths] == ["frame1.png", "frame2.png",
                                                         "frame10.png"]
    assert list(pred.frame_indices) == [-1, -1, -1]
    assert pred.model == "da3-small" and pred.process_res == RES and not pred.is_metric
    assert not list(output.parent.glob("*.tmp*"))


def test_frames_larger_than_the_network_sees_are_kept_as_photos(worker_python, small_weights,
                                                                 tmp_path):
    """Frames four times the network's image (560x448 at process_res 140): the file keeps them
    as ``photos``, four times as large as ``image`` over the same view, for the texture."""
    frames = [media.scene(h=448, w=560, seed=i) for i in range(3)]
    for i, frame in enumerate(frames):
        media.write(tmp_path / "large" / f"frame{i}.png", frame)
    job, output = job_file(tmp_path, [tmp_path / "large"], small_weights, photos=True)
    code, events, stderr = run_worker(worker_python, job)
    assert code == 0 and final(events)["event"] == "done", stderr[-3000:]
    assert final(events)["photo_factor"] == 4
    pred = load_prediction(output)
    assert pred.image.shape == (3, 112, 140, 3) and pred.photos.shape == (3, 448, 560, 3)
    for frame, photo, image in zip(frames, pred.photos, pred.image, strict=True):
        # four times 140x112 is the frame's own size (media.write encodes BGR, as OpenCV does)
        assert np.array_equal(photo, frame[..., ::-1])
        block_mean = photo.reshape(112, 4, 140, 4, 3).mean(axis=(1, 3))
        assert np.abs(block_mean - image).max() <= 2  # what the network saw, at its size


def test_output_reads_like_da3s_own_npz(worker_python, small_weights, folder, tmp_path):
    job, output = job_file(tmp_path, [folder / "frame1.png"], small_weights)
    code, events, _ = run_worker(worker_python, job)
    assert code == 0
    with np.load(output, allow_pickle=False) as npz:  # the keys DA3's npz export has
        assert npz["image"].dtype == np.uint8 and npz["image"].shape == (1, 112, 140, 3)
        assert npz["depth"].shape == (1, 112, 140) and npz["conf"].shape == (1, 112, 140)
        assert npz["extrinsics"].shape == (1, 3, 4) and npz["intrinsics"].shape == (1, 3, 3)


def test_video_end_to_end(worker_python, small_weights, tmp_path):
    clip = media.video(tmp_path / "walk around.mp4", frames=24, blurred=[0, 1, 8, 9, 16, 17])
    job, output = job_file(tmp_path, [clip], small_weights, max_frames=3)
    code, events, stderr = run_worker(worker_python, job)
    assert code == 0, stderr[-3000:]
    pred = load_prediction(output)
    assert pred.num_views == 3 and pred.is_video
    assert all(i not in (0, 1, 8, 9, 16, 17) for i in pred.frame_indices)
    assert list(pred.frame_indices) == sorted(pred.frame_indices)
    assert set(pred.source_paths) == {str(clip)}


def test_mixed_sizes_are_cropped_to_one_size(worker_python, small_weights, tmp_path):
    a = media.write(tmp_path / "landscape.png", media.scene(48, 64))
    b = media.write(tmp_path / "portrait.png", media.scene(64, 48))
    job, output = job_file(tmp_path, [a, b], small_weights)
    code, _, stderr = run_worker(worker_python, job)
    assert code == 0, stderr[-3000:]
    assert load_prediction(output).depth.shape == (2, 112, 112)


def test_mono_preset_with_several_images_names_a_multi_view_model(worker_python, folder, tmp_path):
    job, _ = job_file(tmp_path, [folder], model="da3mono-large")
    end = assert_bad_input(worker_python, job, "choose a multi-view model such as da3-small")
    assert "da3mono-large" in end["message"]


@pytest.mark.parametrize("case, words", [
    ("missing", "input not found"),
    ("empty_folder", "no image files"),
    ("all_broken", "none of the 2 image file(s) could be read"),
    ("video_and_image", "a video must be the only input"),
    ("damaged_video", "video"),
    ("unknown_model", "unknown model 'da3-huge'"),
    ("output_is_a_folder", "cannot write the prediction"),
])
def test_bad_inputs_are_one_line_errors(worker_python, small_weights, tmp_path, case, words):
    sources, extra = [], {}
    if case == "missing":
        sources = [tmp_path / "nowhere"]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        sources = [tmp_path / "empty"]
    elif case == "all_broken":
        for name in ("a.jpg", "b.png"):
            (tmp_path / name).write_bytes(b"garbage")
        sources = [tmp_path / "a.jpg", tmp_path / "b.png"]
    elif case == "video_and_image":
        sources = [media.video(tmp_path / "v.mp4", frames=3),
                   media.write(tmp_path / "a.png", media.scene())]
    elif case == "damaged_video":
        (tmp_path / "v.mp4").write_bytes(b"\x00" * 500)
        sources = [tmp_path / "v.mp4"]
    elif case == "unknown_model":
        sources, extra = [media.write(tmp_path / "a.png", media.scene())], {"model": "da3-huge"}
    elif case == "output_is_a_folder":
        sources = [media.write(tmp_path / "a.png", media.scene())]
    job, output = job_file(tmp_path, sources, small_weights, **extra)
    if case == "output_is_a_folder":
        output.mkdir(parents=True)
    assert_bad_input(worker_python, job, words)
    assert output.is_dir() if case == "output_is_a_folder" else not output.exists()


def test_broken_job_file(worker_python, tmp_path):
    job = tmp_path / "job.json"
    job.write_text("{not json")
    assert_bad_input(worker_python, job, "bad job file")


def test_missing_weights_say_where_to_put_them(worker_python, folder, tmp_path):
    job = Job(sources=[str(folder)], output=str(tmp_path / "o.npz"), models_dir=str(tmp_path / "m"),
              allow_download=False, run=RunOptions(process_res=RES)).save(tmp_path / "job.json")
    code, events, _ = run_worker(worker_python, job)
    end = final(events)
    assert code == 1 and end["kind"] == "missing_weights"
    assert str(tmp_path / "m" / "da3-small") in end["message"]
    assert "huggingface.co/depth-anything/DA3-SMALL" in end["message"]


def test_wrong_weights_are_refused(worker_python, small_weights, folder, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text('{"model_name": "da3-small"}')
    (wrong / "model.safetensors").write_bytes(make_safetensors({"encoder.weight": [1.0]}))
    job, _ = job_file(tmp_path, [folder], wrong)
    code, events, _ = run_worker(worker_python, job)
    end = final(events)
    assert code == 1 and end["kind"] == "missing_weights"
    assert end["message"] == ("model.safetensors has 0 of 443 expected keys; it is not a "
                              "da3-small checkpoint")
    assert "Traceback" in end["traceback"]


def make_safetensors(tensors: dict[str, list[float]]) -> bytes:
    header, data = {}, b""
    for name, values in tensors.items():
        raw = np.asarray(values, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": [len(values)],
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + data


# --------------------------------------------------------------------------- cancellation

@pytest.fixture
def slow_job(small_weights, tmp_path) -> tuple[Path, Path]:
    """Six views at 504x378: several seconds of forward pass on a CPU."""
    images = [media.write(tmp_path / f"v{i}.png", media.scene(seed=i)) for i in range(6)]
    return job_file(tmp_path, images, small_weights, process_res=504)


def start_and_wait_for_inference(python, job: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(python), "-m", "engine.worker", str(job)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "stage" and event["stage"] == "inference":
            time.sleep(0.3)  # well inside the forward pass
            return proc
        assert event["event"] != "error", event
    raise AssertionError("the worker ended before inference")


def assert_cancelled_quickly(proc: subprocess.Popen, sent: float, output: Path) -> None:
    rest = proc.stdout.read()
    proc.wait(timeout=60)  # a hang guard; the time it takes is a benchmark's figure
    print(f"stopped {time.monotonic() - sent:.2f} s after the cancel")
    events = parse_events(rest)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "cancelled"
    assert proc.returncode == 3
    assert not output.exists() and not list(output.parent.glob("*"))


def test_cancel_line_on_stdin_stops_within_two_seconds(worker_python, slow_job):
    job, output = slow_job
    proc = start_and_wait_for_inference(worker_python, job)
    sent = time.monotonic()
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    assert_cancelled_quickly(proc, sent, output)


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM cannot be caught on Windows")
def test_sigterm_stops_within_two_seconds(worker_python, slow_job):
    job, output = slow_job
    proc = start_and_wait_for_inference(worker_python, job)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert_cancelled_quickly(proc, sent, output)


# --------------------------------------------------------------------------- serving

class Server:
    """``python -m engine.worker --serve``: one job line at a time, events until its final one."""

    def __init__(self, python, env=None, stderr=subprocess.DEVNULL):
        self.proc = subprocess.Popen([str(python), "-m", "engine.worker", "--serve"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, env={**os.environ, **(env or {})})

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, job: Path) -> list[dict]:
        self.send(job_line(job))
        return self.events_until_final()

    def events_until_final(self) -> list[dict]:
        events = []
        for line in self.proc.stdout:
            events += parse_events(line)
            if events[-1]["event"] in ("done", "error"):
                return events
        raise AssertionError(f"the worker ended without a final event: {events}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def server(worker_python):
    servers = []

    def start(env=None, stderr=subprocess.DEVNULL) -> Server:
        servers.append(Server(worker_python, env, stderr))
        return servers[-1]

    yield start
    for started in servers:
        started.close()


def test_a_serving_worker_keeps_the_model_between_jobs(server, small_weights, folder, tmp_path):
    """The same model is reused; another weights file is loaded in its place; a job's own
    error keeps the worker serving; with no job for a while it exits by itself."""
    other_weights = tmp_path / "weights" / "da3-small"
    shutil.copytree(small_weights, other_weights)
    worker = server({"DA3_WORKER_IDLE_S": "3"})
    ends, outputs = [], []
    for name, weights, sources in (("first", small_weights, [folder]),
                                   ("same", small_weights, [folder / "frame1.png"]),
                                   ("other", other_weights, [folder]),
                                   ("bad", other_weights, [tmp_path / "nowhere"]),
                                   ("after_error", other_weights, [folder])):
        (tmp_path / name).mkdir()
        job, output = job_file(tmp_path / name, sources, weights)
        events = worker.run(job)
        ends.append(final(events))
        outputs.append(output)
        loads = [e for e in events if e["event"] == "stage" and e["stage"] == "loading_model"]
        assert len(loads) == (0 if ends[-1].get("model_reused", True) else 1), name
        assert worker.proc.poll() is None, f"the worker left after the {name} job"
    first, same, other, bad, after_error = ends
    assert first["event"] == "done" and first["model_reused"] is False
    assert "load_model" in first["timings"]
    assert same["event"] == "done" and same["model_reused"] is True
    assert "load_model" not in same["timings"] and same["views"] == 1
    assert other["event"] == "done" and other["model_reused"] is False
    assert bad["event"] == "error" and bad["kind"] == "bad_input"
    assert after_error["event"] == "done" and after_error["model_reused"] is True
    assert load_prediction(outputs[1]).num_views == 1 and load_prediction(outputs[4]).num_views == 3
    assert worker.proc.wait(timeout=60) == 0  # idle for 3 s: it exits by itself
    assert worker.proc.stdout.read() == ""


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_idle_serving_worker_gives_a_jobs_memory_back(server, small_weights, tmp_path):
    """A second after its job the worker releases what the job left: Python's garbage, torch's
    cache and the C heap's free pages (glibc keeps those: 0.61 GB stayed resident after three
    640x480 views on the CPU, 0.40 GB with them given back)."""
    photos = [media.write(tmp_path / "photos" / f"view{i}.jpg", media.scene(480, 640, seed=i))
              for i in range(3)]
    worker = server()
    job, _ = job_file(tmp_path, photos, small_weights, process_res=504)  # DA3's default
    assert final(worker.run(job))["event"] == "done"
    at_done = resident_mib(worker.proc.pid)
    deadline, idle = time.monotonic() + 15, at_done
    while time.monotonic() < deadline and idle > 0.85 * at_done:
        time.sleep(0.5)
        idle = resident_mib(worker.proc.pid)
    print(f"resident: {at_done:.0f} MiB at the end of the job, {idle:.0f} MiB idle")
    assert idle < 0.85 * at_done, (at_done, idle)
    assert final(worker.run(job))["model_reused"] is True  # still serving, the model kept


def test_a_serving_worker_measures_memory_once_per_model_and_size(server, small_weights, tmp_path):
    """Above 16 views the first job probes the memory; the next one of that size reuses it."""
    views = [media.write(tmp_path / "views" / f"v{i}.png", media.scene(32, 48, seed=i))
             for i in range(17)]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        worker = server(stderr=stderr)
        for name in ("first", "second"):
            (tmp_path / name).mkdir()
            job, _ = job_file(tmp_path / name, views, small_weights, process_res=28)
            end = final(worker.run(job))
            assert end["event"] == "done" and "probe_memory" in end["timings"], end
    probes = [line for line in (tmp_path / "stderr.txt").read_text().splitlines()
              if line.startswith("memory probes")]
    assert len(probes) == 2, probes
    assert "kept" not in probes[0] and "(kept from an earlier job)" in probes[1]
    assert probes[0].split(": ")[0] + " (kept from an earlier job)" == probes[1].split(": ")[0]


@pytest.mark.parametrize("how", ["exit", "end_of_stdin", "sigterm"])
def test_a_serving_worker_leaves_when_told_or_orphaned(server, how):
    worker = server()
    if how == "exit":
        worker.send("exit")
    elif how == "end_of_stdin":  # Blender died: its end of the pipe closed
        worker.proc.stdin.close()
    else:
        time.sleep(1.0)  # its signal thread is listening by then
        worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) in (0, 3)
    assert worker.proc.stdout.read() == "", "an idle worker has nothing to report"


def test_cancel_ends_a_serving_worker(server, slow_job):
    job, output = slow_job
    worker = server()
    worker.send(job_line(job))
    for line in worker.proc.stdout:
        event = json.loads(line)
        if event["event"] == "stage" and event["stage"] == "inference":
            break
    time.sleep(0.3)  # well inside the forward pass
    sent = time.monotonic()
    worker.send("cancel")
    assert_cancelled_quickly(worker.proc, sent, output)


def test_download_failure_is_a_missing_weights_error(worker_python, folder, tmp_path):
    """The hub is unreachable in tests (HF_HUB_OFFLINE): the download path still reports well."""
    job = Job(sources=[str(folder)], output=str(tmp_path / "o.npz"), models_dir=str(tmp_path / "m"),
              allow_download=True, run=RunOptions(process_res=RES)).save(tmp_path / "job.json")
    code, events, _ = run_worker(worker_python, job)
    end = final(events)
    assert code == 1 and end["kind"] == "missing_weights"
    assert end["message"].startswith("could not download da3-small from https://huggingface.co/")
    assert any(e["event"] == "stage" and e["stage"] == "downloading_weights" for e in events)


# --------------------------------------------------------------------------- post-processing

def test_engine_worker_modules_import_without_torch_or_bpy():
    code = ("import sys, engine.worker.inputs, engine.worker.preprocess, engine.worker.model, "
            "engine.worker.weights, engine.worker.process; "
            "bad = {'torch', 'bpy'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def raw_output(n=1, h=28, w=42, **extra) -> dict:
    out = {"depth": np.full((1, n, h, w), 2.0, np.float32)}
    out.update({k: np.asarray(v) for k, v in extra.items()})
    return out


def test_metric_model_depth_becomes_metres_with_the_default_focal():
    from engine.worker.model import to_views
    from engine.worker.preprocess import default_intrinsics

    sky = np.zeros((1, 1, 28, 42), np.float32)
    sky[..., :5, :] = 0.9
    views = to_views(raw_output(sky=sky), metric_raw_depth=True)
    focal = default_intrinsics(1, 28, 42)[0, 0, 0]
    np.testing.assert_allclose(views.depth, 2.0 * focal / 300, rtol=1e-6)
    assert views.is_metric and views.conf is None and views.extrinsics is None
    assert views.sky[0, :5].all() and not views.sky[0, 5:].any()  # OutputProcessor: sky >= 0.5


def test_field_of_view_can_be_chosen_for_monocular_views():
    from engine.worker.model import to_views

    views = to_views(raw_output(), fov_x_deg=90.0)
    assert views.intrinsics[0, 0, 0] == pytest.approx(21.0)  # (w/2) / tan(45 degrees)
    assert not views.is_metric


def test_multi_view_outputs_pass_through():
    from engine.worker.model import to_views

    ext = np.tile(np.eye(4)[:3], (1, 2, 1, 1))
    K = np.tile(np.eye(3), (1, 2, 1, 1))
    views = to_views(raw_output(n=2, depth_conf=np.full((1, 2, 28, 42), 3.0), extrinsics=ext,
                                intrinsics=K, is_metric=1))
    assert views.extrinsics.shape == (2, 3, 4) and views.conf.shape == (2, 28, 42)
    assert views.is_metric  # nested models scale to metres themselves


def test_out_of_memory_says_what_to_change(worker_python):
    code = """
import torch
from engine.worker.process import WorkerError, raise_if_out_of_memory
for exc in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9"),
            RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")):
    try:
        raise_if_out_of_memory(exc, torch.device("cpu"), 100, 504, 378)
    except WorkerError as err:
        print(err.kind, err)
raise_if_out_of_memory(RuntimeError("shape mismatch"), torch.device("cpu"), 1, 14, 14)
print("other errors pass through")
"""
    out = subprocess.run([str(worker_python), "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(out) == 4 and out[-1] == "other errors pass through"
    for line in out[:3]:
        assert line.startswith("out_of_memory out of memory on cpu with 100 views at 504x378")
        assert "fewer frames, a lower processing resolution or a smaller model" in line


# --------------------------------------------------------------------------- download

class HubStub(http.server.BaseHTTPRequestHandler):
    """A local stand-in for the model hub's resolve URLs, with HTTP ranges; it can cut the
    first transfer of the weights half-way, like a lost connection."""

    def do_GET(self):
        server = self.server
        data = server.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
        server.requests.append((self.path.rsplit("/", 1)[-1], start))
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body)))
        digest = hashlib.sha256(data if not server.lie else data + b"x").hexdigest()
        self.send_header("X-Linked-Etag", f'"{digest}"')
        self.end_headers()
        if server.cut_next and len(data) > 1000:
            server.cut_next = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet: the test asserts on ``requests`` instead."""


@pytest.fixture
def hub_stub(small_weights):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubStub)
    server.files = {name: (small_weights / name).read_bytes()
                    for name in ("config.json", "model.safetensors")}
    server.requests, server.cut_next, server.lie = [], True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def stub_env(server) -> dict:
    return {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def download_job(folder: Path, tmp_path: Path) -> Path:
    return Job(sources=[str(folder)], output=str(tmp_path / "o.npz"),
               models_dir=str(tmp_path / "models"), allow_download=True,
               run=RunOptions(process_res=RES, device="cpu")).save(tmp_path / "job.json")


def test_interrupted_download_resumes_where_it_stopped(worker_python, hub_stub, folder, tmp_path):
    env, job, models = stub_env(hub_stub), download_job(folder, tmp_path), tmp_path / "models"

    code, events, _ = run_worker(worker_python, job, env=env)  # the connection drops
    assert code == 1 and final(events)["kind"] == "missing_weights"
    part = models / "da3-small" / "model.safetensors.part"
    size = len(hub_stub.files["model.safetensors"])
    partial = part.stat().st_size
    assert 0 < partial < size

    code, events, stderr = run_worker(worker_python, job, env=env)  # continues, then runs
    assert code == 0 and final(events)["event"] == "done", stderr[-3000:]
    starts = [start for name, start in hub_stub.requests if name == "model.safetensors"]
    assert starts == [0, partial]  # the second request asked only for the missing bytes
    assert not part.exists()
    assert (models / "da3-small" / "model.safetensors").stat().st_size == size
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "downloading_weights"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == size


def test_corrupt_download_is_removed_and_reported(worker_python, hub_stub, folder, tmp_path):
    hub_stub.cut_next, hub_stub.lie = False, True
    code, events, _ = run_worker(worker_python, download_job(folder, tmp_path),
                                 env=stub_env(hub_stub))
    end = final(events)
    assert code == 1 and end["kind"] == "missing_weights" and "SHA-256 mismatch" in end["message"]
    assert not list((tmp_path / "models" / "da3-small").glob("model.safetensors*"))


# --------------------------------------------------------------------------- interchangeability

DA3_PIPELINE = r"""
import contextlib, importlib.abc, importlib.machinery, os, sys, types
sys.path.append(sys.argv[1])  # torchvision + imageio, which the worker does without
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")


class Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # empty modules for exporters that an npz export never calls
    roots = {"moviepy", "pycolmap", "trimesh", "open3d", "gsplat", "e3nn", "plyfile", "matplotlib"}

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})
        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, Stub())
import torch
torch.autocast = lambda *a, **k: contextlib.nullcontext()  # fp32, as the worker on a CPU
from depth_anything_3.api import DepthAnything3
weights, out, images = sys.argv[2], sys.argv[3], sys.argv[4:]
model = DepthAnything3.from_pretrained(weights).eval()
model.inference(images, process_res=140, export_dir=out, export_format="npz")
"""


def test_same_file_as_da3s_own_pipeline(worker_python, small_weights, da3_reference, tmp_path):
    """DA3's DepthAnything3.inference + npz export and our worker, same images and weights."""
    images = [media.write(tmp_path / f"v{i}.png", media.scene(seed=i)) for i in range(3)]
    subprocess.run([str(worker_python), "-c", DA3_PIPELINE, str(da3_reference),
                    str(small_weights), str(tmp_path / "da3"), *map(str, images)], cwd=REPO,
                   check=True, capture_output=True, env={**os.environ, "DA3_LOG_LEVEL": "ERROR"})
    job, output = job_file(tmp_path, images, small_weights)
    assert run_worker(worker_python, job)[0] == 0
    theirs = np.load(tmp_path / "da3" / "exports" / "npz" / "results.npz")
    ours = np.load(output)
    assert set(theirs.files) <= set(ours.files)
    assert np.array_equal(theirs["image"], ours["image"])
    np.testing.assert_allclose(ours["depth"], theirs["depth"], atol=1e-6)  # DA3 rounds to 6 places
    np.testing.assert_allclose(ours["conf"], theirs["conf"], atol=0.0051)  # ...and conf to 2
    np.testing.assert_allclose(ours["extrinsics"], theirs["extrinsics"], atol=1e-6)
    np.testing.assert_allclose(ours["intrinsics"], theirs["intrinsics"], rtol=1e-6)


def test_worker_fuses_the_views_when_the_job_asks(worker_python, small_weights, folder, tmp_path):
    job, output = job_file(tmp_path, [folder], small_weights,
                           tsdf={"object_mode": False, "mask_sky": True})
    code, events, stderr = run_worker(worker_python, job)
    assert code == 0 and final(events)["event"] == "done", stderr[-3000:]
    assert "fusing" in [e["stage"] for e in events if e["event"] == "stage"]
    pred = load_prediction(output)
    # Random weights may give depth that fuses into nothing; then the worker says so.
    if pred.fused_vertices is None:
        assert any("no fused surface" in e["message"] for e in events if e["event"] == "warning")
    else:
        steps = [e for e in events if e["event"] == "progress" and e["stage"] == "fusing"]
        assert steps[-1]["done"] == steps[-1]["total"] == 100
        settings = json.loads(pred.fused_settings)
        assert settings["mask_sky"] and not settings["object_mode"]
        assert settings["device"] == "numpy" and settings["voxel_size"] > 0
        assert pred.fused_faces.max() < len(pred.fused_vertices)
