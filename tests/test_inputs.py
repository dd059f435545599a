"""Real-world sources -> RGB frames (engine.worker.inputs), in the dev environment (no torch)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.worker import inputs
from engine.worker.inputs import InputError
from tests import media


def test_natural_sort_puts_frame2_before_frame10(tmp_path):
    for name in ("frame10.png", "frame2.png", "Frame1.png", "frame2b.png"):
        media.write(tmp_path / name, media.noise(8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    found = inputs.collect_sources([str(tmp_path)])
    assert [p.name for p in found.images] == ["Frame1.png", "frame2.png", "frame2b.png",
                                              "frame10.png"]
    assert [p.name for p in found.ignored] == ["notes.txt"]


def test_file_list_keeps_the_given_order(tmp_path):
    a = media.write(tmp_path / "b.png", media.noise(8, 8))
    b = media.write(tmp_path / "a.png", media.noise(8, 8))
    assert inputs.collect_sources([str(a), str(b)]).images == [a, b]


def test_missing_input_is_one_line(tmp_path):
    with pytest.raises(InputError, match="input not found") as info:
        inputs.collect_sources([str(tmp_path / "nope.png")])
    assert "\n" not in str(info.value)


def test_video_must_be_alone(tmp_path):
    clip = media.video(tmp_path / "clip.mp4", frames=3)
    img = media.write(tmp_path / "a.png", media.noise(8, 8))
    with pytest.raises(InputError, match="only input"):
        inputs.collect_sources([str(clip), str(img)])
    assert inputs.collect_sources([str(clip)]).video == clip


def test_empty_folder_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="no image files"):
        inputs.collect_sources([str(tmp_path)])


def test_grey_alpha_and_16_bit_become_rgb_uint8(tmp_path):
    grey = media.write(tmp_path / "grey.png", media.noise(20, 30, channels=1))
    rgba = media.write(tmp_path / "rgba.png", media.noise(20, 30, channels=4))
    deep = media.noise(20, 30, dtype=np.uint16)
    sixteen = media.write(tmp_path / "deep.png", deep)
    for path in (grey, rgba, sixteen):
        rgb = inputs.read_image(path)
        assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    # 16 bits scale to 8 (not clipped), BGR on disk -> RGB in memory
    assert np.array_equal(inputs.read_image(sixteen), (deep >> 8).astype(np.uint8)[:, :, ::-1])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left
    rgb = inputs.read_image(media.exif_rotated_jpeg(tmp_path / "rotated.jpg", pixels))
    assert rgb.shape == (40, 20, 3)  # orientation 6: rotated 90 degrees clockwise
    assert rgb[:8].mean() > 200 and rgb[-8:].mean() < 50  # the band is now on top


def test_non_ascii_path_with_spaces(tmp_path):
    path = media.write(tmp_path / "Fotos vom Sommer" / "café été 写真.jpg", media.scene())
    assert inputs.read_image(path).shape == (48, 64, 3)


def test_cmyk_jpeg(tmp_path, worker_python):
    path = tmp_path / "cmyk.jpg"
    subprocess.run([str(worker_python), "tests/media.py", "cmyk", str(path)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    rgb = inputs.read_image(path)
    assert rgb.shape == (48, 64, 3)
    expected = media.scene()[:, :, ::-1]  # what was saved, as RGB
    assert np.abs(rgb.astype(int) - expected).mean() < 10  # colours survive CMYK (not inverted)


def test_huge_image_is_read_and_shrunk(tmp_path):
    path = media.write(tmp_path / "huge.jpg", np.full((6000, 8000, 3), 127, np.uint8))
    found = inputs.read_images([path], transform=lambda rgb: cv2.resize(rgb, (504, 378)))
    assert found.frames[0].rgb.shape == (378, 504, 3)


def test_unreadable_files_are_skipped_and_listed_once(tmp_path):
    good = media.write(tmp_path / "good.png", media.noise(8, 8))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    found = inputs.read_frames(inputs.collect_sources([str(tmp_path)]))
    assert [f.source for f in found.frames] == [str(good)]
    line = inputs.skipped_warning(found.skipped)
    assert "broken.jpg" in line and "empty.png" in line and "\n" not in line


def test_nothing_readable_is_an_input_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"y")
    with pytest.raises(InputError, match="none of the 2 image file"):
        inputs.read_frames(inputs.collect_sources([str(tmp_path)]))


@pytest.mark.parametrize("total, video_fps, max_frames, fps, count", [
    (100, 30, 10, 0, 10), (100, 30, 0, 3, 10), (100, 30, 5, 3, 5), (5, 30, 10, 0, 5),
    (100, 30, 0, 0, 100), (100, 0, 7, 2, 7)])
def test_sampling_windows_cover_the_video(total, video_fps, max_frames, fps, count):
    windows = inputs.sampling_windows(total, video_fps, max_frames, fps)
    assert len(windows) == count
    assert windows[0].start == 0 and windows[-1].stop == total
    assert all(a.stop == b.start for a, b in zip(windows[:-1], windows[1:], strict=True))


def test_video_keeps_the_sharpest_frame_of_each_window(tmp_path):
    sharp = {2, 7, 13, 16}  # one per window of 5 frames
    clip = media.video(tmp_path / "clip.mp4", frames=20,
                       blurred=[i for i in range(20) if i not in sharp])
    found = inputs.read_frames(inputs.collect_sources([str(clip)]), max_frames=4)
    assert [f.index for f in found.frames] == sorted(sharp)
    assert all(f.source == str(clip) and f.rgb.shape == (48, 64, 3) for f in found.frames)


def test_video_by_fps(tmp_path):
    clip = media.video(tmp_path / "clip.mp4", frames=20, fps=10.0)
    found = inputs.read_frames(inputs.collect_sources([str(clip)]), max_frames=0, fps=2.0)
    assert len(found.frames) == 4  # 2 s of video at 2 frames per second


def test_damaged_video_is_an_input_error(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="video"):
        inputs.read_frames(inputs.collect_sources([str(clip)]), max_frames=4)


def test_a_data_set_folder_is_read_from_its_images_subfolder(tmp_path):
    """scene/images/*.jpg, as COLMAP and most photo data sets lay them out."""
    for i in range(3):
        media.write(tmp_path / "scene" / "images" / f"{i}.jpg", media.scene(seed=i))
    (tmp_path / "scene" / "notes.txt").write_text("not a photo")
    found = inputs.collect_sources([str(tmp_path / "scene")])
    assert [p.name for p in found.images] == ["0.jpg", "1.jpg", "2.jpg"]


def test_the_views_expected_before_reading_bound_the_photos_budget(tmp_path):
    """The photos' pixel budget is shared by the views a run will keep, known before a frame is
    decoded: the images, the video's windows (2 per second of a 2 s video: 4), or for keyframes
    by motion the most the run may keep; the frames read agree."""
    for i in range(3):
        media.write(tmp_path / "stills" / f"{i}.png", media.scene(seed=i))
    stills = inputs.collect_sources([str(tmp_path / "stills")])
    assert inputs.expected_views(stills, 32, 0.0, "count") == 3
    clip = inputs.collect_sources([str(media.video(tmp_path / "clip.mp4", frames=20, fps=10.0))])
    assert inputs.expected_views(clip, 0, 2.0, "fps") == 4
    assert len(inputs.read_frames(clip, 0, 2.0, sampling="fps").frames) == 4
    assert inputs.expected_views(clip, 6, 0.0, "count") == 6
    assert inputs.expected_views(clip, 6, 0.0, "motion") == 6
