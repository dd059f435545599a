"""DA3's exact input recipe (``upper_bound_resize``), in numpy + OpenCV.

Reproduces ``depth_anything_3.utils.io.input_processor.InputProcessor`` bit for bit:

1. RGB uint8.
2. If the long side is not ``process_res``: scale by ``process_res / long side``, sizes rounded
   with Python's ``round``; ``INTER_CUBIC`` when enlarging, ``INTER_AREA`` when shrinking.
3. Each side to the nearest multiple of 14 (ties up), resized again (CUBIC if a side grows).
4. ``/255``, CHW, ImageNet mean/std normalisation (float32, the same operations as torchvision).
5. Mixed sizes: every view is centre-cropped to the smallest height and width; the principal
   points of given intrinsics shift with the crop.
6. Given intrinsics scale row-wise with the resize (x row by w'/w, y row by h'/h).

cv2, not PIL, does the resizing: PIL's bicubic differs from cv2's by up to 0.12 after
normalisation, which changes the network's output.

Speed: a batch keeps its views as uint8 (``Batch.rgb``); the worker uploads those and normalises
on its device (``model.network_input``) by looking up ``NORMALISED``, a table of step 4's float32
values for the 256 values of each channel, made by ``normalise`` itself: the input is the same bit
for bit on every device, and a quarter of the bytes travels. The stored image comes from the same
kind of table (``DENORMALISED``: ``stored_images``), not from a float64 pass over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_FOV_X_DEG = 60.0  # monocular presets predict no camera: assume this horizontal FOV


# The texture is baked from the frames kept larger than the network sees them
# (``Prediction.photos``): a whole k times the network's image per side, at most this long side,
# and at most this many pixels for all the views together (the file holds them uncompressed:
# 64 MP are 192 MB, 32 views of 504x378 at k = 3).
PHOTO_LONG_SIDE = 2048
PHOTO_PIXELS = 64_000_000


@dataclass
class Batch:
    """Network-ready views."""

    rgb: np.ndarray  # (N,H,W,3) uint8 after steps 1-3 and 5: the network's input before step 4
    intrinsics: np.ndarray | None  # (N,3,3) given intrinsics in processed pixels, if any
    photos: np.ndarray | None = None  # (N,k*H,k*W,3) uint8 the same views k times as large

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every view."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    @property
    def pixels(self) -> np.ndarray:
        """(N,3,H,W) float32, normalised on the CPU (the worker normalises on its device)."""
        return normalise(self.rgb)

    @property
    def images(self) -> np.ndarray:
        """(N,H,W,3) uint8, what DA3 stores as ``image`` in its npz export, made on each access
        (the worker makes it once, in a thread: ``stored_images``)."""
        return stored_images(self.rgb)


def bound_size(w: int, h: int, process_res: int) -> tuple[int, int]:
    """Step 2: the (w, h) after scaling the long side to ``process_res``."""
    longest = max(w, h)
    if longest == process_res:
        return w, h
    scale = process_res / float(longest)
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def nearest_multiple(x: int, p: int = PATCH) -> int:
    """Step 3: the nearest multiple of ``p``, ties up (at least ``p``, where DA3 would crash)."""
    down = (x // p) * p
    up = down + p
    return max(p, up if abs(up - x) <= abs(x - down) else down)


def processed_size(w: int, h: int, process_res: int) -> tuple[int, int]:
    """The (w, h) a w x h image has after DA3's resize, before any batch crop."""
    bw, bh = bound_size(w, h, process_res)
    return nearest_multiple(bw), nearest_multiple(bh)


def resize_for_network(rgb: np.ndarray, process_res: int) -> np.ndarray:
    """Steps 2 and 3 on one RGB uint8 image."""
    h, w = rgb.shape[:2]
    bw, bh = bound_size(w, h, process_res)
    if (bw, bh) != (w, h):
        shrink = process_res / float(max(w, h)) <= 1.0
        rgb = cv2.resize(rgb, (bw, bh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    nw, nh = nearest_multiple(bw), nearest_multiple(bh)
    if (nw, nh) != (bw, bh):
        grows = nw > bw or nh > bh
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_CUBIC if grows else cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def photo_factor(full_wh: tuple[int, int], processed_wh: tuple[int, int], views: int) -> int:
    """The whole k for which a ``full_wh`` frame is kept k times as large as its network
    image (``processed_wh``) for the texture: never enlarged, within ``PHOTO_LONG_SIDE`` and,
    for ``views`` such frames, ``PHOTO_PIXELS``; 1 when a larger copy would add nothing."""
    (w, h), (pw, ph) = full_wh, processed_wh
    return max(1, min(w // pw, h // ph, PHOTO_LONG_SIDE // max(pw, ph),
                      photo_budget_factor(processed_wh, views)))


def photo_budget_factor(processed_wh: tuple[int, int], views: int) -> int:
    """The largest k whose photos of ``views`` views stay within ``PHOTO_PIXELS``."""
    return int(math.sqrt(PHOTO_PIXELS / (max(views, 1) * processed_wh[0] * processed_wh[1])))


def network_image_and_photo(rgb: np.ndarray, process_res: int, views: int):
    """Steps 2 and 3 on one RGB uint8 image, and the photo the texture is baked from (the whole
    frame, like the network's image, ``photo_factor`` times as large), or None when it would
    be no larger."""
    network = resize_for_network(rgb, process_res)
    (h, w), (ph, pw) = rgb.shape[:2], network.shape[:2]
    k = photo_factor((w, h), (pw, ph), views)
    if k == 1:
        return network, None
    return network, cv2.resize(rgb, (k * pw, k * ph), interpolation=cv2.INTER_AREA)


def scale_intrinsics(K: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """Step 6: intrinsics of a resized image (fx, cx by the width ratio; fy, cy by height)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[:1] *= to_wh[0] / float(from_wh[0])
    K[1:2] *= to_wh[1] / float(from_wh[1])
    return K


def centre_crop_to_common(images: list[np.ndarray], intrinsics: list[np.ndarray] | None = None,
                          photos: list[np.ndarray] | None = None):
    """Step 5: crop every image to the smallest (h, w) of the batch; shift cx, cy to match;
    crop ``photos`` (each a whole multiple of its image's size) the same way."""
    min_h = min(im.shape[0] for im in images)
    min_w = min(im.shape[1] for im in images)
    out_images, out_k = [], []
    for i, im in enumerate(images):
        top = (im.shape[0] - min_h) // 2
        left = (im.shape[1] - min_w) // 2
        out_images.append(im[top:top + min_h, left:left + min_w])
        if photos is not None:
            k = photos[i].shape[0] // im.shape[0]
            photos[i] = photos[i][k * top:k * (top + min_h), k * left:k * (left + min_w)]
        if intrinsics is not None:
            K = np.array(intrinsics[i], dtype=np.float64, copy=True)
            K[0, 2] -= left
            K[1, 2] -= top
            out_k.append(K)
    return out_images, (out_k if intrinsics is not None else None)


def normalise(images: np.ndarray) -> np.ndarray:
    """Step 4: (N,H,W,3) uint8 -> (N,3,H,W) float32, the same float ops as torchvision."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def denormalise_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(N,3,H,W) normalised -> (N,H,W,3) uint8 exactly as DA3's ``processed_images``."""
    x = pixels.transpose(0, 2, 3, 1)
    x = x * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _value_tables() -> tuple[np.ndarray, np.ndarray]:
    """Step 4 and DA3's denormalisation for every uint8 value of every channel, computed by
    ``normalise`` and ``denormalise_to_uint8`` themselves: both work value by value, so a lookup
    in these tables gives their results exactly."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None, None]  # (1,1,256,3)
    normalised = normalise(values)  # (1,3,1,256)
    return normalised[0, :, 0, :].copy(), denormalise_to_uint8(normalised)[0, 0].copy()


NORMALISED, DENORMALISED = _value_tables()  # (3,256) float32 by channel; (256,3) uint8 by value


def stored_images(rgb: np.ndarray) -> np.ndarray:
    """(N,H,W,3) uint8 -> ``denormalise_to_uint8(normalise(rgb))``, by table lookup."""
    n, h, w, _ = rgb.shape
    table = DENORMALISED.reshape(256, 1, 3)  # cv2.LUT: one table per channel
    return cv2.LUT(rgb.reshape(n * h, w, 3), table).reshape(n, h, w, 3)


def make_batch(resized: list[np.ndarray], intrinsics: list[np.ndarray] | None = None,
               photos: list[np.ndarray | None] | None = None) -> Batch:
    """Step 5 on images already passed through ``resize_for_network`` (step 4 is left to
    ``Batch.pixels`` or the device: ``model.network_input``), with the views' photos
    (``network_image_and_photo``) when every view has one, all brought to the smallest k."""
    if not resized:
        raise ValueError("no image to process")
    photos = common_photos(resized, photos)
    if len({im.shape for im in resized}) > 1:
        resized, intrinsics = centre_crop_to_common(resized, intrinsics, photos)
    K = np.stack(intrinsics) if intrinsics is not None else None
    return Batch(np.stack(resized), K, None if photos is None else np.stack(photos))


def common_photos(resized: list[np.ndarray], photos: list[np.ndarray | None] | None):
    """The photos at one factor k for every view (the smallest any has, within the pixel
    budget for this many views: the reader could only guess their number), or None unless each
    view has one larger than its image."""
    if not photos or any(p is None for p in photos):
        return None
    k = min([p.shape[0] // im.shape[0] for p, im in zip(photos, resized, strict=True)]
            + [photo_budget_factor((im.shape[1], im.shape[0]), len(resized)) for im in resized])
    if k < 2:
        return None
    return [p if p.shape[0] == k * im.shape[0] else
            cv2.resize(p, (k * im.shape[1], k * im.shape[0]), interpolation=cv2.INTER_AREA)
            for p, im in zip(photos, resized, strict=True)]


def preprocess(images: list[np.ndarray], process_res: int = 504,
               intrinsics: list[np.ndarray] | None = None) -> Batch:
    """The whole recipe on full-size RGB uint8 images (with their intrinsics, if known)."""
    resized = [resize_for_network(im, process_res) for im in images]
    if intrinsics is not None:
        intrinsics = [scale_intrinsics(K, (im.shape[1], im.shape[0]), (r.shape[1], r.shape[0]))
                      for K, im, r in zip(intrinsics, images, resized, strict=True)]
    return make_batch(resized, intrinsics)


def default_intrinsics(n: int, height: int, width: int,
                       fov_x_deg: float = DEFAULT_FOV_X_DEG) -> np.ndarray:
    """(n,3,3) pinhole intrinsics for views without a predicted camera (square pixels)."""
    f = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return np.tile(K, (n, 1, 1))
