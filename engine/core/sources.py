"""What a source is, for both sides: which files are images or videos, where a data set keeps
its photos, and what the result is called. Standard library only: Blender imports it too."""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff",
                              ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".sr", ".ras"))
VIDEO_EXTENSIONS = frozenset((".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".3gp", ".mts", ".m2ts", ".ts", ".ogv"))
# Where photo data sets keep their pictures (COLMAP, nerfstudio, DTU, ...): scene/images/*.jpg.
IMAGE_SUBFOLDERS = ("images", "image", "imgs", "rgb", "frames")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def has_images(folder: Path) -> bool:
    try:
        return any(is_image(p) and p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def image_folder(folder: Path) -> Path:
    """The folder that holds ``folder``'s photos: itself, or the data set's images/ subfolder
    when it holds none of its own."""
    if has_images(folder):
        return folder
    for name in IMAGE_SUBFOLDERS:
        if has_images(folder / name):
            return folder / name
    return folder


def result_name(sources: list[str]) -> str:
    """A result's name after its source: the video's or folder's name, the folder of several
    files; a data set's images/ subfolder is named after the data set."""
    first = Path(sources[0]).expanduser()
    path = first.parent if len(sources) > 1 else first
    if path.name.lower() in IMAGE_SUBFOLDERS and path.parent.name:
        path = path.parent
    return path.stem if is_image(path) or is_video(path) else path.name
