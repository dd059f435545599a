"""DA3's resize/crop/normalise recipe (engine.worker.preprocess) against the numbers of the recipe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.worker import preprocess as pp
from tests import media

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size, expected", [
    ((640, 480), (504, 378)),
    ((1920, 1080), (504, 280)),
    ((400, 300), (504, 378)),
    ((504, 378), (504, 378)),
    ((1080, 1920), (280, 504)),
    ((64, 48), (504, 378)),
])
def test_processed_sizes_follow_the_recipe(size, expected):
    w, h = size
    assert pp.processed_size(w, h, 504) == expected
    out = pp.resize_for_network(np.zeros((h, w, 3), np.uint8), 504)
    assert out.shape == (expected[1], expected[0], 3)


def test_small_process_res_used_by_the_tests():
    assert pp.processed_size(64, 48, 140) == (140, 112)  # 105 -> 112: ties go up


@pytest.mark.parametrize("x, expected", [(7, 14), (21, 28), (20, 14), (22, 28), (378, 378),
                                         (280, 280), (283, 280), (3, 14)])
def test_nearest_multiple_of_14_ties_up(x, expected):
    assert pp.nearest_multiple(x) == expected


def test_shrinking_uses_area_and_enlarging_cubic():
    import cv2

    img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    grown = pp.resize_for_network(img, 140)
    step1 = cv2.resize(img, (140, 105), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(grown, cv2.resize(step1, (140, 112), interpolation=cv2.INTER_CUBIC))
    big = np.repeat(np.repeat(img, 10, 0), 10, 1)  # 640x480
    shrunk = pp.resize_for_network(big, 504)
    assert np.array_equal(shrunk, cv2.resize(big, (504, 378), interpolation=cv2.INTER_AREA))


def test_intrinsics_scale_with_the_resize():
    K = np.array([[800.0, 0, 320], [0, 780.0, 240], [0, 0, 1]])
    batch = pp.preprocess([np.zeros((480, 640, 3), np.uint8)], 504, intrinsics=[K])
    expected = K.copy()
    expected[0] *= 504 / 640
    expected[1] *= 378 / 480
    np.testing.assert_allclose(batch.intrinsics[0], expected)


def test_intrinsics_scale_per_axis_when_rounding_changes_the_aspect():
    K = np.array([[1000.0, 0, 960], [0, 1000.0, 540], [0, 0, 1]])
    out = pp.preprocess([np.zeros((1080, 1920, 3), np.uint8)], 504, intrinsics=[K]).intrinsics[0]
    assert out[0, 0] == pytest.approx(1000 * 504 / 1920)
    assert out[1, 1] == pytest.approx(1000 * 280 / 1080)  # 283.5 -> 284 -> 280
    assert (out[0, 2], out[1, 2]) == pytest.approx((252.0, 140.0))


def test_mixed_sizes_are_centre_cropped_to_the_smallest_and_cx_cy_shift():
    landscape = np.zeros((480, 640, 3), np.uint8)  # -> 504x378
    portrait = np.zeros((640, 480, 3), np.uint8)  # -> 378x504
    wide = np.zeros((1080, 1920, 3), np.uint8)  # -> 504x280
    Ks = [np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]),
          np.array([[500.0, 0, 240], [0, 500.0, 320], [0, 0, 1]]),
          np.array([[900.0, 0, 960], [0, 900.0, 540], [0, 0, 1]])]
    batch = pp.preprocess([landscape, portrait, wide], 504, intrinsics=Ks)
    assert batch.size == (280, 378)
    assert batch.pixels.shape == (3, 3, 280, 378)
    assert batch.images.shape == (3, 280, 378, 3)
    # landscape 504x378: left (504-378)//2 = 63, top (378-280)//2 = 49
    assert batch.intrinsics[0][0, 2] == pytest.approx(320 * 504 / 640 - 63)
    assert batch.intrinsics[0][1, 2] == pytest.approx(240 * 378 / 480 - 49)
    # portrait 378x504: left 0, top (504-280)//2 = 112
    assert batch.intrinsics[1][1, 2] == pytest.approx(320 * 504 / 640 - 112)
    # wide 504x280: left 63, top 0
    assert batch.intrinsics[2][1, 2] == pytest.approx(140.0)


def test_crop_takes_the_centre():
    img = np.zeros((504, 378, 3), np.uint8)
    img[63:63 + 378] = 255  # the middle rows
    other = np.zeros((378, 504, 3), np.uint8)
    batch = pp.make_batch([img, other])
    assert batch.size == (378, 378)
    assert batch.images[0].min() >= 254  # DA3 truncates after denormalising


def test_normalisation_matches_torchvision_arithmetic():
    img = (np.arange(14 * 28 * 3) % 256).astype(np.uint8).reshape(1, 14, 28, 3)
    x = pp.normalise(img)
    assert x.dtype == np.float32 and x.shape == (1, 3, 14, 28)
    # ToTensor: float32 / 255, then Normalize: (x - mean) / std, all in float32
    ref = ((img.astype(np.float32) / np.float32(255)) - pp.MEAN) / pp.STD
    assert np.array_equal(x, ref.transpose(0, 3, 1, 2))


def test_image_field_is_what_da3_stores():
    img = (np.arange(14 * 28 * 3) % 256).astype(np.uint8).reshape(14, 28, 3)
    batch = pp.make_batch([img])
    # DA3 denormalises the float tensor and truncates: values may be one below the input
    diff = img.astype(int) - batch.images[0].astype(int)
    assert diff.min() >= 0 and diff.max() <= 1


def test_batch_tables_give_the_arithmetic_exactly():
    rgb = media.every_value(2)
    batch = pp.make_batch(list(rgb))
    assert np.array_equal(batch.rgb, rgb)
    assert np.array_equal(batch.pixels, pp.normalise(rgb))
    assert np.array_equal(batch.images, pp.denormalise_to_uint8(pp.normalise(rgb)))


DEVICE_CHECK = r"""
import numpy as np, torch
from engine.worker import preprocess as pp
from engine.worker.model import network_input
from tests import media
rgb = media.every_value(3)
x = network_input(rgb, torch.device("cpu"))
assert x.shape == (1, 3, 3, 14, 28) and x.dtype == torch.float32 and x.is_contiguous()
assert np.array_equal(x[0].numpy(), pp.normalise(rgb))
print("identical")
"""


def test_normalising_on_the_device_is_the_cpu_arithmetic_bit_for_bit(worker_python):
    """The worker uploads uint8 views and normalises them where the network runs (a table
    lookup, so any device gives the CPU's float32 values; checked here on the CPU)."""
    out = subprocess.run([str(worker_python), "-c", DEVICE_CHECK], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("identical"), out.stderr[-3000:]


def test_default_intrinsics_have_the_documented_field_of_view():
    K = pp.default_intrinsics(2, 378, 504)
    assert K.shape == (2, 3, 3)
    fov = 2 * np.degrees(np.arctan(252 / K[0, 0, 0]))
    assert fov == pytest.approx(pp.DEFAULT_FOV_X_DEG)
    assert (K[0, 0, 2], K[0, 1, 2]) == (252.0, 189.0)


LIBRARY_CHECK = r"""
import sys, types
sys.path.append(sys.argv[1])  # torchvision (+ imageio) for DA3's own InputProcessor
# a torchvision wheel built for another torch cannot register its C++ ops; transforms need none
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
import numpy as np
import torch
from depth_anything_3.utils.io.input_processor import InputProcessor
from engine.worker import preprocess as pp
from engine.worker.model import network_input
from tests import media
rng = np.random.default_rng(0)
cases = [[media.scene(480, 640, 1)], [media.scene(1080, 1920, 2)], [media.scene(300, 400, 3)],
         [media.scene(48, 64, 4)], [rng.integers(0, 255, (517, 333, 3), dtype=np.uint8)],
         [media.scene(480, 640, 5), media.scene(640, 480, 6), media.scene(1080, 1920, 7)]]
for imgs in cases:
    for res in (504, 140):
        K = np.stack([np.array([[500., 0, im.shape[1] / 2], [0, 480., im.shape[0] / 2], [0, 0, 1]],
                               np.float32) for im in imgs])
        lib, _, lib_k = InputProcessor()(imgs, None, K, res, "upper_bound_resize", num_workers=1)
        ours = pp.preprocess(imgs, res, intrinsics=list(K))
        assert np.array_equal(lib.numpy(), ours.pixels), (res, [im.shape for im in imgs])
        assert torch.equal(lib, network_input(ours.rgb, torch.device("cpu"))[0]), res
        assert np.allclose(lib_k.numpy(), ours.intrinsics, rtol=1e-6, atol=1e-4)
print("identical")
"""


def test_bit_identical_to_da3s_own_input_processor(worker_python, da3_reference):
    """DA3's InputProcessor needs torchvision, which the worker does without; this check runs
    it from an extra folder (the da3_reference fixture installs it when missing)."""
    out = subprocess.run([str(worker_python), "-c", LIBRARY_CHECK, str(da3_reference)],
                         cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "DA3_LOG_LEVEL": "ERROR"})
    assert out.returncode == 0 and out.stdout.strip().endswith("identical"), out.stderr[-3000:]


# --- the photos kept for the texture ----------------------------------------------------------

@pytest.mark.parametrize("full, processed, views, k", [
    ((4032, 3024), (504, 378), 1, 4),  # 2016x1512: the long side stays within 2048
    ((4032, 3024), (504, 378), 32, 3),  # 32 x 1512x1134 = 55 MP within the 64 MP budget
    ((4032, 3024), (504, 378), 100, 1),  # even 2x would be 76 MP: no photos
    ((1920, 1080), (504, 280), 1, 3),  # a video frame: 1920 // 504
    ((640, 480), (504, 378), 1, 1),  # barely larger than the network's image: nothing to gain
])
def test_photo_factor_is_whole_never_enlarges_and_keeps_the_budgets(full, processed, views, k):
    assert pp.photo_factor(full, processed, views) == k
    if k > 1:
        assert k * processed[0] <= full[0] and k * processed[1] <= full[1]
        assert k * max(processed) <= pp.PHOTO_LONG_SIDE
        assert views * k * k * processed[0] * processed[1] <= pp.PHOTO_PIXELS


def disc(w: int, h: int, x: float, y: float, r: float) -> np.ndarray:
    """A white disc centred on (x, y) (pixel j's centre at j + 0.5) on black."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = (xx - x) ** 2 + (yy - y) ** 2 < r * r
    return np.repeat(np.where(inside, 255, 0).astype(np.uint8)[..., None], 3, axis=2)


def centre_of(image: np.ndarray) -> np.ndarray:
    """The brightness-weighted centre (x, y) of ``image``, pixel centres at j + 0.5."""
    weight = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()


def test_a_photo_sees_what_the_network_sees_k_times_as_large():
    """A disc drawn at a known place in a 4032x3024 frame lands, in the photo, at k times its
    place in the network's image (which the depth map's pixels are), and both where the frame
    puts it, scaled."""
    frame = disc(4032, 3024, x=1000.3, y=2200.7, r=40)
    network, photo = pp.network_image_and_photo(frame, 504, views=32)
    assert network.shape == (378, 504, 3) and photo.shape == (3 * 378, 3 * 504, 3)
    full = np.array([1000.3, 2200.7])
    assert np.allclose(centre_of(network) * [4032 / 504, 3024 / 378], full, atol=1.0)
    assert np.allclose(centre_of(photo) * [4032 / 1512, 3024 / 1134], full, atol=1.0)
    assert np.allclose(centre_of(photo), 3 * centre_of(network), atol=0.1)
    small = disc(600, 450, 300, 200, 20)  # not even twice the network's size: no photo
    assert pp.network_image_and_photo(small, 504, views=1)[1] is None


def test_mixed_sizes_crop_the_photos_like_their_images_and_share_the_smallest_k():
    """A landscape and a portrait frame: both are cropped to 378x378 for the network, and
    their photos to k times that, around the same point; the larger k is brought down."""
    landscape = disc(2016, 1512, x=1100.0, y=700.0, r=30)  # -> 504x378, k = 4
    portrait = disc(1134, 1512, x=500.0, y=900.0, r=30)  # -> 378x504, k = 3
    made = [pp.network_image_and_photo(f, 504, views=2) for f in (landscape, portrait)]
    assert [p.shape[0] // n.shape[0] for n, p in made] == [4, 3]
    batch = pp.make_batch([n for n, _ in made], photos=[p for _, p in made])
    assert batch.rgb.shape == (2, 378, 378, 3) and batch.photos.shape == (2, 1134, 1134, 3)
    for network, photo in zip(batch.rgb, batch.photos, strict=True):
        assert np.allclose(centre_of(photo), 3 * centre_of(network), atol=0.15)
    assert pp.make_batch([n for n, _ in made], photos=[made[0][1], None]).photos is None
