"""What a source is (engine.core.sources, imported by Blender and the worker alike)."""

from __future__ import annotations

from pathlib import Path

from engine.core.sources import image_folder, result_name


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_folder_with_photos_is_its_own_image_folder(tmp_path):
    touch(tmp_path / "statue" / "a.jpg")
    touch(tmp_path / "statue" / "images" / "b.jpg")
    assert image_folder(tmp_path / "statue") == tmp_path / "statue"


def test_a_data_set_keeps_its_photos_in_images(tmp_path):
    touch(tmp_path / "scene" / "sparse" / "cameras.txt")
    touch(tmp_path / "scene" / "images" / "0001.JPG")
    assert image_folder(tmp_path / "scene") == tmp_path / "scene" / "images"


def test_a_folder_without_photos_stays_as_it_is(tmp_path):
    touch(tmp_path / "empty" / "notes.txt")
    assert image_folder(tmp_path / "empty") == tmp_path / "empty"


def test_results_are_named_after_the_data_set_not_its_images_folder(tmp_path):
    video = touch(tmp_path / "walk.mp4")
    photos = [touch(tmp_path / "scene" / "images" / f"{i}.jpg") for i in range(2)]
    assert result_name([str(video)]) == "walk"
    assert result_name([str(tmp_path / "statue")]) == "statue"
    assert result_name([str(tmp_path / "scene" / "images")]) == "scene"
    assert result_name([str(tmp_path / "scene")]) == "scene"
    assert result_name([str(p) for p in photos]) == "scene"
    assert result_name([str(tmp_path / "shots" / "one.jpg")]) == "one"
