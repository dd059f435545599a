"""A whole run on real Blender with the real worker: images and a video in, objects out.

bpy.app.background is True in the module, so ``bpy.ops.da3.reconstruct`` takes its blocking path
(the modal path drives the same ``reconstruct.Run``, ticked here as its timer ticks it). Times are
printed, never asserted.
"""

from __future__ import annotations

import os
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from engine.core.options import RunOptions

RES = 56  # processing resolution: tiny, for speed (a multiple of the 14-pixel patch)


def write_images(folder: Path, count: int = 3, size=(64, 48)) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[1], size[0] * 2, 3), dtype=np.uint8)
    for i in range(count):
        shift = i * 4
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), base[:, shift:shift + size[0]])
    return folder


def write_video(path: Path, frames: int = 6, size=(64, 48)) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (size[1], size[0] * 2, 3), dtype=np.uint8)
    for i in range(frames):
        writer.write(np.ascontiguousarray(base[:, i * 3:i * 3 + size[0]]))
    writer.release()
    assert path.stat().st_size > 0
    return path


def roles(bpy) -> dict[str, int]:
    found: dict[str, int] = {}
    for obj in bpy.data.objects:
        role = obj.get("da3_role")
        if role:
            found[role] = found.get(role, 0) + 1
    return found


def jobs_left(addon) -> list[str]:
    paths = import_module(f"{addon.__name__}.paths")
    return sorted(os.listdir(paths.jobs_dir()))


@pytest.fixture
def worker_env(monkeypatch, worker_python, tmp_path):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(worker_python))
    monkeypatch.setenv("DA3_MODELS_DIR", str(tmp_path / "models"))


def test_images_end_to_end(blender, addon, worker_env, small_weights, tmp_path):
    folder = write_images(tmp_path / "photos", count=3)
    t0 = time.perf_counter()
    result = blender.ops.da3.reconstruct(source=str(folder), model="da3-small",
                                         weights=str(small_weights), process_res=RES, device="CPU")
    print(f"3 images: {time.perf_counter() - t0:.1f} s, roles {roles(blender)}")
    assert result == {"FINISHED"}
    found = roles(blender)
    assert found["camera"] == 3 and found["points"] == 1
    # Random weights give degenerate depth: whether a fused surface survives is the importer's call.
    assert found.get("surface", 1) == 1 and set(found) <= {"camera", "points", "surface"}
    assert "photos" in blender.data.collections
    assert jobs_left(addon) == []


def test_video_end_to_end(blender, addon, worker_env, small_weights, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=8)
    result = blender.ops.da3.reconstruct(source=str(video), weights=str(small_weights),
                                         process_res=RES, device="CPU", max_frames=4,
                                         output_surface=False, output_view_meshes=True)
    assert result == {"FINISHED"}
    found = roles(blender)
    print("video roles", found)
    assert found["camera"] == 4 and found["view_mesh"] == 4
    assert "surface" not in found
    assert jobs_left(addon) == []


def test_api_and_operator_agree(blender, addon, worker_env, small_weights, tmp_path):
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "api", count=3)
    collection = reconstruct.run(reconstruct.Request(
        [str(folder)], RunOptions(weights=str(small_weights), device="cpu", process_res=RES)), report=None)
    assert collection.name == "api"
    assert sorted(o.get("da3_role") for o in collection.all_objects).count("camera") == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "/no/such/folder"}, "source not found"),
    ({"source": "", "directory": ""}, "no source given"),
    ({"model": "da3-small", "weights": "/no/weights/here"}, "weights folder"),
])
def test_bad_requests_raise_one_line(blender, worker_env, tmp_path, kwargs, message):
    kwargs.setdefault("source", str(write_images(tmp_path / "p", count=1)))
    with pytest.raises(RuntimeError, match=message) as info:
        blender.ops.da3.reconstruct(**kwargs)
    assert "\n" not in str(info.value).strip()
    assert len(blender.data.objects) == 0


def test_missing_weights_offline_says_where_to_put_them(blender, worker_env, tmp_path):
    folder = write_images(tmp_path / "p", count=1)
    with pytest.raises(RuntimeError, match="no da3-small weights in .*models.*da3-small") as info:
        blender.ops.da3.reconstruct(source=str(folder))
    print(info.value)


def test_missing_environment_is_one_line(blender, monkeypatch, tmp_path):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(tmp_path / "none" / "python"))
    folder = write_images(tmp_path / "p", count=1)
    with pytest.raises(RuntimeError, match="worker environment"):
        blender.ops.da3.reconstruct(source=str(folder))


def test_worker_failure_leaves_nothing(blender, addon, worker_env, small_weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(RuntimeError) as info:
        blender.ops.da3.reconstruct(source=str(empty), weights=str(small_weights), process_res=RES)
    print("worker error:", info.value)
    assert len(blender.data.objects) == 0 and jobs_left(addon) == []


def test_cancel_mid_run_leaves_nothing(blender, addon, worker_env, small_weights, tmp_path):
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "many", count=6, size=(256, 192))
    request = reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights), device="cpu",
                                                            process_res=280))
    seen, processes = [], []

    def cancel_once_running():
        run = reconstruct.current()
        processes.append(run.monitor.process)
        seen.append(run.state.stage)
        return seen[-1] in ("loading_model", "reading_frames", "inference")

    t0 = time.perf_counter()
    with pytest.raises(reconstruct.ReconstructCancelled):
        reconstruct.run(request, report=None, should_cancel=cancel_once_running)
    print(f"cancelled at stage {seen[-1]!r} after {time.perf_counter() - t0:.2f} s")
    assert reconstruct.current() is None
    assert len(blender.data.objects) == 0 and len(blender.data.meshes) == 0
    assert jobs_left(addon) == []
    assert processes[-1].poll() is not None


def test_cancel_kills_the_worker(blender, addon, worker_env, small_weights, tmp_path):
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "many", count=6, size=(256, 192))
    run = reconstruct.start(reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights),
                                                                          device="cpu", process_res=280)))
    try:
        while run.state.stage != "inference":  # one event a tick: inference cannot slip by
            assert not run.finished, run.state.final
            run.tick(timeout=0.05, budget_s=0.0)
        t0 = time.perf_counter()
        run.cancel(wait=True)
        took = time.perf_counter() - t0
        print(f"cancel during {run.state.stage!r}: {took * 1000:.0f} ms")
        assert run.monitor.process.poll() is not None
    finally:
        run.close()
    assert jobs_left(addon) == []


def run_to_the_end(reconstruct, request) -> tuple[object, dict]:
    """A run driven as the UI drives it; (the worker process that ran it, its final event)."""
    run = reconstruct.start(request)
    try:
        process = run.monitor.process
        while not run.finished:
            run.tick(timeout=0.1)
        final = run.state.final
        run.build()
    finally:
        run.close()
    return process, final


def test_runs_of_a_session_share_one_warm_worker(blender, addon, worker_env, small_weights,
                                                 tmp_path):
    """The second run reuses the process and its loaded model; a worker killed between runs is
    replaced on the next run; loading a file ends the worker."""
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "warm", count=2)
    request = reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights), device="cpu",
                                                            process_res=RES))
    first, first_end = run_to_the_end(reconstruct, request)
    second, second_end = run_to_the_end(reconstruct, request)
    assert second is first and first.poll() is None, "the worker stays between runs"
    assert first_end["model_reused"] is False and second_end["model_reused"] is True
    first.kill()
    first.wait(timeout=10)
    third, third_end = run_to_the_end(reconstruct, request)
    assert third.pid != first.pid and third_end["event"] == "done"
    assert third_end["model_reused"] is False
    assert len(blender.data.collections) == 3 and jobs_left(addon) == []
    blender.ops.wm.read_homefile(use_empty=True)  # load_pre: the worker ends with the file
    assert third.poll() is not None


def test_one_job_at_a_time(blender, addon, worker_env, small_weights, tmp_path):
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "one", count=1)
    request = reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights), process_res=RES))
    run = reconstruct.start(request)
    try:
        assert not blender.ops.da3.reconstruct.poll()
        with pytest.raises(reconstruct.ReconstructError, match="already running"):
            reconstruct.start(request)
    finally:
        run.close()
    assert blender.ops.da3.reconstruct.poll()


def test_disabling_the_extension_stops_the_worker(blender, addon, addon_module, worker_env,
                                                  small_weights, tmp_path):
    import addon_utils

    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "off", count=3, size=(256, 192))
    run = reconstruct.start(reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights),
                                                                          process_res=280)))
    run.tick(timeout=0.5)
    process, job_dir = run.monitor.process, run.monitor.job_dir
    addon_utils.disable(addon_module, default_set=True)
    try:
        assert process.poll() is not None
        assert not job_dir.exists()
    finally:
        addon_utils.enable(addon_module, default_set=True)


def test_download_runs_in_the_worker_env_and_fails_in_one_line_offline(blender, worker_env, tmp_path):
    """The hub is out of reach in tests (HF_HUB_OFFLINE): the script must still run and say so."""
    blender.context.preferences.system.use_online_access = True
    try:
        with pytest.raises(RuntimeError, match="could not download da3-small") as info:
            blender.ops.da3.download_weights(model="da3-small")
    finally:
        blender.context.preferences.system.use_online_access = False
    print(info.value)
    assert "models" in str(info.value) and "\n" not in str(info.value).strip()


def test_loading_a_file_stops_the_run(blender, addon, worker_env, small_weights, tmp_path):
    """A job belongs to the open file: loading another one stops the worker and removes its files.
    (In the module operators are never invoked, only executed, so this is the load_pre handler.)"""
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "ui", count=3, size=(256, 192))
    run = reconstruct.start(reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights),
                                                                          process_res=280)))
    process, job_dir = run.monitor.process, run.monitor.job_dir
    blender.ops.wm.read_homefile(use_empty=True)
    assert reconstruct.current() is None
    assert process.poll() is not None and not job_dir.exists()


def test_motion_sampling_through_the_api(blender, addon, worker_env, small_weights, tmp_path):
    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    video = write_video(tmp_path / "clip.mp4", frames=8)
    run = RunOptions.sampled("MOTION", 4, 0.0, weights=str(small_weights), device="cpu", process_res=RES)
    request = reconstruct.Request([str(video)], run)
    job = reconstruct.make_job(request)
    assert job.run.sampling == "motion" and Path(job.keyframe_cache).is_dir()
    Path(job.output).parent.rmdir()
    collection = reconstruct.run(request, report=None)
    cameras = [o for o in collection.all_objects if o.get("da3_role") == "camera"]
    assert 1 <= len(cameras) <= 4
    assert list(Path(job.keyframe_cache).glob("keyframes-*.json"))  # the panel's count reuses it
    assert jobs_left(addon) == []


def test_the_worker_fuses_only_with_settings_it_can_honour(addon):
    from engine.core.options import BuildOptions

    fusion_for = addon.reconstruct.worker_fusion
    assert fusion_for(BuildOptions()) == {"object_mode": False, "mask_sky": True, "max_faces": 300_000}
    assert fusion_for(BuildOptions(max_faces=0))["max_faces"] == 0
    from engine.fusion.base import TSDFOptions

    assert TSDFOptions(**fusion_for(BuildOptions())).max_faces == 300_000  # as the worker reads it
    assert fusion_for(BuildOptions(object_mode=True))["object_mode"] is True
    # an object is remeshed to the budget afterwards: fusion may use 6 triangles per face, up
    # to 300 k (the remesher's input), or the budget itself
    assert fusion_for(BuildOptions(object_mode=True, max_faces=20_000))["max_faces"] == 120_000
    assert fusion_for(BuildOptions(object_mode=True, max_faces=100_000))["max_faces"] == 300_000
    assert fusion_for(BuildOptions(object_mode=True, max_faces=500_000))["max_faces"] == 500_000
    for other in (BuildOptions(fusion="REMESH"), BuildOptions(voxel_size=0.01),
                  BuildOptions(crop_object="Cube"), BuildOptions(output_surface=False)):
        assert fusion_for(other) == {}
