"""The command line (``blender -c da3_reconstruct ...``): its function called with argument lists."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
from test_reconstruct import RES, write_images, write_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(addon, monkeypatch, worker_python, tmp_path):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(worker_python))
    monkeypatch.setenv("DA3_MODELS_DIR", str(tmp_path / "models"))
    return import_module(f"{addon.__name__}.cli")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, f"expected one line, got: {err!r}"
    return err


def test_the_command_is_registered(cli):
    assert cli._handle is not None


def test_success_writes_a_blend_that_reloads(blender, cli, small_weights, tmp_path):
    out = tmp_path / "out" / "scene.blend"
    video = write_video(tmp_path / "walk.mp4", frames=6)
    code = cli.main([str(video), "-o", str(out), "--weights", str(small_weights),
                     "--resolution", str(RES), "--frames", "3", "--device", "cpu",
                     "--output-view-meshes", "on"])
    assert code == 0 and out.exists()
    blender.ops.wm.open_mainfile(filepath=str(out))
    roles = [o.get("da3_role") for o in blender.data.objects]
    assert roles.count("camera") == 3 and roles.count("view_mesh") == 3
    assert "walk" in blender.data.collections


def test_render_writes_a_preview(blender, cli, small_weights, tmp_path):
    out, png = tmp_path / "s.blend", tmp_path / "s.png"
    photos = write_images(tmp_path / "photos", count=3)
    code = cli.main([str(photos), "-o", str(out), "--weights", str(small_weights),
                     "--resolution", str(RES), "--render", str(png)])
    assert code == 0 and png.stat().st_size > 0
    image = blender.data.images.load(str(png))
    assert image.size[0] > 0


@pytest.mark.parametrize("argv, expected", [
    ([], "the following arguments are required"),
    (["x.mp4"], "-o/--output"),
    (["x.mp4", "-o", "o.blend", "--model", "da3-tiny"], "invalid choice"),
    (["x.mp4", "-o", "o.blend", "--frames", "3", "--fps", "2"], "not allowed with"),
    (["x.mp4", "-o", "o.blend", "--mask-sky", "maybe"], "expected on or off"),
    (["x.mp4", "-o", "o.blend", "--confidence-percentile", "120"], "between 0 and 100"),
    (["x.mp4", "-o", "o.blend", "--max-points", "-1"], "max_points must be 0 (no limit)"),
    (["x.mp4", "-o", "o.blend", "--motion", "--fps", "2"], "exclude each other"),
    (["x.mp4", "-o", "o.blend", "--fusion", "MARCHING"], "invalid choice"),
    (["x.mp4", "-o", "o.blend", "--resolution", "7"], "processing resolution must be between 14 and 2016"),
    (["x.mp4", "-o", "o.blend", "--fps", "500"], "frames per second must be between 0.01 and 120"),
])
def test_bad_arguments_exit_2_with_one_line(cli, capsys, argv, expected):
    assert cli.main(argv) == 2
    assert expected in one_line_error(capsys)


@pytest.mark.parametrize("make_input, expected", [
    (lambda tmp: tmp / "missing.mp4", "source not found"),
    (lambda tmp: (tmp / "e").mkdir() or tmp / "e", "no image files"),
])
def test_bad_inputs_exit_1_with_one_line(blender, cli, capsys, small_weights, tmp_path, make_input,
                                         expected):
    source = make_input(tmp_path)
    code = cli.main([str(source), "-o", str(tmp_path / "o.blend"), "--weights", str(small_weights),
                     "--resolution", str(RES)])
    assert code == 1
    line = one_line_error(capsys)
    assert line.startswith("da3_reconstruct: ") and expected in line
    assert not (tmp_path / "o.blend").exists()


def test_missing_weights_name_the_folder(blender, cli, capsys, tmp_path):
    photos = write_images(tmp_path / "p", count=1)
    assert cli.main([str(photos), "-o", str(tmp_path / "o.blend")]) == 1
    line = one_line_error(capsys)
    assert "no da3-small weights in" in line and "models" in line


def test_output_must_be_a_blend(blender, cli, capsys, small_weights, tmp_path):
    photos = write_images(tmp_path / "p", count=1)
    assert cli.main([str(photos), "-o", str(tmp_path / "o.png")]) == 1
    assert ".blend" in one_line_error(capsys)


@pytest.mark.parametrize("extra, sampling, frames, fps", [
    ([], "count", 32, 0.0),
    (["--fps", "2"], "fps", 0, 2.0),
    (["--motion", "--frames", "12"], "motion", 12, 0.0),
])
def test_frame_sampling_reaches_the_request(cli, extra, sampling, frames, fps):
    request = cli.request_from(cli.make_parser().parse_args(["v.mp4", "-o", "o.blend", *extra]))
    assert (request.run.sampling, request.run.max_frames, request.run.fps) == (sampling, frames, fps)
    assert request.options.fusion == "TSDF"


def test_the_point_budget_reaches_the_request(cli):
    request = cli.request_from(cli.make_parser().parse_args(["v.mp4", "-o", "o.blend", "--max-points", "0"]))
    assert request.options.max_points == 0


def test_help_lists_the_build_options(cli, capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--output-points", "--voxel-size", "--max-points", "--confidence-percentile", "--render"):
        assert option in text


def test_runner_script_for_the_python_module(worker_python, small_weights, tmp_path):
    """scripts/da3_cli.py: the same command where Blender is only a Python module (pip's bpy)."""
    photos = write_images(tmp_path / "p", count=3)
    out = tmp_path / "runner.blend"
    env = {"DA3_WORKER_PYTHON": str(worker_python), "DA3_MODELS_DIR": str(tmp_path / "models"),
           "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, REPO / "scripts" / "da3_cli.py", str(photos), "-o", str(out),
                           "--weights", str(small_weights), "--resolution", str(RES),
                           "--output-surface", "off"],  # about the runner, not random-weight fusion
                          env=env, capture_output=True, text=True, timeout=300)
    print(done.stdout[-2000:], done.stderr[-2000:])
    assert done.returncode == 0 and out.exists()
    bad = subprocess.run([sys.executable, REPO / "scripts" / "da3_cli.py", "--model", "x"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("blender -c da3_reconstruct: error:")


def test_the_demo_runs_the_command_on_the_shipped_sample():
    """`make demo`'s recipe (dry run) and the sample it needs: small, readable, enough frames."""
    import cv2

    sample = REPO / "samples" / "courtyard.mp4"
    assert 0 < sample.stat().st_size < 500_000
    video = cv2.VideoCapture(str(sample))
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = video.read()
    video.release()
    assert ok and first.shape == (240, 320, 3) and frames >= 24
    recipe = subprocess.run(["make", "-n", "-s", "demo"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    assert "scripts/da3_cli.py" in recipe and "samples/courtyard.mp4" in recipe
    assert "--render out/demo.png" in recipe and "-o out/demo.blend" in recipe
