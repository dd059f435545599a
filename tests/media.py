"""Tiny test media made on the spot: images of every awkward kind and short videos.

numpy + OpenCV only (the dev environment has no PIL), except ``cmyk`` which runs as a script
with the worker's Python: ``python tests/media.py cmyk OUT.jpg``.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import cv2
import numpy as np


def noise(h: int = 48, w: int = 64, seed: int = 0, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, top, shape, dtype=dtype)


def every_value(n: int = 2, h: int = 14, w: int = 28) -> np.ndarray:
    """(n,h,w,3) random uint8 views; the first holds every value 0-255 in every channel."""
    rgb = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    rgb[0].reshape(-1, 3)[:256] = np.arange(256)[:, None]  # a view: h * w >= 256
    return rgb


def scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth shapes with edges (noise has no structure to blur away)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 80, np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(3, max(4, min(h, w) // 3)))
        cv2.circle(img, (x, y), r, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


def write(path: Path, pixels: np.ndarray, ext: str | None = None) -> Path:
    """Encode with OpenCV and write through numpy, so any path (non-ASCII, spaces) works."""
    ok, data = cv2.imencode(ext or path.suffix, pixels)
    assert ok, f"could not encode {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(str(path))
    return path


def exif_rotated_jpeg(path: Path, pixels: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose EXIF orientation says 'rotate' (6 = 90 degrees clockwise)."""
    ok, jpg = cv2.imencode(".jpg", pixels)
    assert ok
    jpg = jpg.tobytes()
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    path.write_bytes(jpg[:2] + app1 + jpg[2:])
    return path


def video(path: Path, frames: int = 20, h: int = 48, w: int = 64, fps: float = 10.0,
          blurred=()) -> Path:
    """An mp4v video of a moving scene; frames listed in ``blurred`` are heavily blurred."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    base = scene(h, w * 2, seed=1)
    for i in range(frames):
        frame = np.ascontiguousarray(base[:, i % w:i % w + w])
        cv2.putText(frame, str(i), (2, h - 4), cv2.FONT_HERSHEY_PLAIN, 1.0, (255, 255, 255))
        if i in blurred:
            frame = cv2.GaussianBlur(frame, (0, 0), 6)
        writer.write(frame)
    writer.release()
    return path


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG (needs PIL; run with the worker's Python)."""
    from PIL import Image

    Image.fromarray(scene()[:, :, ::-1].copy()).convert("CMYK").save(path)
    return path


if __name__ == "__main__":
    if sys.argv[1:2] == ["cmyk"]:
        cmyk_jpeg(Path(sys.argv[2]))
