"""The prediction file: DA3's own npz layout in both directions, and clear refusals."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from engine.core.prediction import (
    Prediction,
    PredictionError,
    PredictionWriter,
    load_prediction,
    prediction_arrays,
    save_prediction,
)

N, H, W = 3, 6, 8


def official_arrays(rng) -> dict:
    """What DA3's export_to_npz writes (same keys, dtypes and rounding)."""
    K = np.array([[10.0, 0, W / 2], [0, 10.0, H / 2], [0, 0, 1]], dtype=np.float32)
    ext = np.tile(np.eye(4, dtype=np.float32)[:3], (N, 1, 1))
    ext[:, 0, 3] = np.arange(N)
    return {
        "image": rng.integers(0, 255, (N, H, W, 3), dtype=np.uint8),
        "depth": np.round(rng.uniform(1, 3, (N, H, W)).astype(np.float32), 6),
        "conf": np.round(rng.uniform(1, 5, (N, H, W)).astype(np.float32), 2),
        "extrinsics": ext,
        "intrinsics": np.tile(K, (N, 1, 1)),
    }


def test_reads_a_file_in_the_official_layout(tmp_path):
    arrays = official_arrays(np.random.default_rng(0))
    np.savez_compressed(tmp_path / "results.npz", **arrays)
    pred = load_prediction(tmp_path / "results.npz")
    assert pred.num_views == N and (pred.height, pred.width) == (H, W)
    np.testing.assert_array_equal(pred.image, arrays["image"])
    np.testing.assert_allclose(pred.extrinsics, arrays["extrinsics"])
    assert not pred.is_metric and pred.sky is None and pred.source_paths == []


def test_reads_mini_npz_without_images(tmp_path):
    arrays = official_arrays(np.random.default_rng(1))
    del arrays["image"]
    np.savez_compressed(tmp_path / "mini.npz", **arrays)
    assert load_prediction(tmp_path / "mini.npz").image is None


def test_our_file_round_trips_and_keeps_the_official_keys(tmp_path):
    arrays = official_arrays(np.random.default_rng(2))
    pred = Prediction(**arrays, sky=np.zeros((N, H, W), bool), is_metric=True,
                      source_paths=["a b/é.png", "c.png", "d.png"],
                      frame_indices=np.array([-1, -1, -1]), model="da3-small", process_res=504)
    path = save_prediction(pred, tmp_path / "ours.npz")
    with np.load(path, allow_pickle=False) as npz:  # what the official tools' readers do
        assert {"image", "depth", "conf", "extrinsics", "intrinsics"} <= set(npz.files)
        assert npz["depth"].shape == (N, H, W) and npz["image"].dtype == np.uint8
    back = load_prediction(path)
    assert back.source_paths == pred.source_paths and back.model == "da3-small"
    assert back.is_metric and back.process_res == 504 and not back.is_video
    assert not (tmp_path / "ours.npz.partial").exists()


def our_prediction(seed: int) -> Prediction:
    arrays = official_arrays(np.random.default_rng(seed))
    arrays["intrinsics"] = np.asfortranarray(arrays["intrinsics"])  # numpy's own path for these
    return Prediction(**arrays, sky=np.zeros((N, H, W), bool), source_paths=["a", "b", "c"],
                      frame_indices=np.arange(N), model="da3-small", process_res=504)


@pytest.mark.parametrize("compress", [False, True])
def test_every_entry_holds_the_bytes_numpy_writes(tmp_path, compress):
    """Large arrays go out from their own memory; the entries must still be np.savez's (or
    np.savez_compressed's), byte for byte, so that every npz reader reads them."""
    pred = our_prediction(4)
    ours = save_prediction(pred, tmp_path / "ours.npz", compress=compress)
    (np.savez_compressed if compress else np.savez)(tmp_path / "numpy.npz", **prediction_arrays(pred))
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(tmp_path / "numpy.npz") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in b.namelist():
            assert a.read(name) == b.read(name), name
            assert a.getinfo(name).compress_type == b.getinfo(name).compress_type, name


def test_a_file_written_in_two_parts_is_the_same_file(tmp_path):
    pred = our_prediction(5)
    writer = PredictionWriter(tmp_path / "two.npz")
    writer.begin(image=pred.image)
    assert writer.partial.exists() and not writer.path.exists()  # nothing to read yet
    two = writer.finish(pred)
    one = save_prediction(pred, tmp_path / "one.npz")
    assert not writer.partial.exists()
    with np.load(two, allow_pickle=False) as a, np.load(one, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in b.files:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_an_array_written_first_must_be_the_predictions(tmp_path):
    pred = our_prediction(6)
    writer = PredictionWriter(tmp_path / "two.npz")
    writer.begin(image=pred.image.copy())
    with pytest.raises(ValueError, match="image written first"):
        writer.finish(pred)
    assert not writer.path.exists()


@pytest.mark.parametrize("spoil, words", [
    (lambda a: a.pop("depth"), "lacks depth"),
    (lambda a: a.update(conf=a["conf"][:, :-1]), "conf has shape"),
    (lambda a: a["depth"].__setitem__((0, 0, 0), np.nan), "NaN"),
    (lambda a: a["depth"].__setitem__((0, 0, 0), -1.0), "negative"),
    (lambda a: a["depth"].__setitem__((2, 5, 7), -np.inf), "depth holds NaN or infinite"),
    (lambda a: a["conf"].__setitem__((1, 2, 3), np.inf), "conf holds NaN or infinite"),
    (lambda a: a["intrinsics"].__setitem__((1, 0, 0), 0.0), "focal length"),
    (lambda a: a.pop("extrinsics"), "no extrinsics"),
    (lambda a: [a.update({k: v[:0]}) for k, v in list(a.items())], "no usable view"),
])
def test_bad_files_are_refused_with_one_line(tmp_path, spoil, words):
    arrays = official_arrays(np.random.default_rng(3))
    spoil(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PredictionError, match=words) as info:
        load_prediction(tmp_path / "bad.npz")
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path):
    (tmp_path / "photo.npz").write_bytes(b"\xff\xd8\xff\xe0 not a zip")
    with pytest.raises(PredictionError, match="not a DA3 npz file"):
        load_prediction(tmp_path / "photo.npz")
    with pytest.raises(PredictionError, match="does not exist"):
        load_prediction(tmp_path / "missing.npz")
    np.save(tmp_path / "depth.npy", np.ones((2, 4, 4), np.float32))  # one array, not an archive
    with pytest.raises(PredictionError, match="not a DA3 npz file"):
        load_prediction(tmp_path / "depth.npy")


def test_photos_round_trip_and_must_be_whole_multiples_of_the_depth_map(tmp_path):
    arrays = official_arrays(np.random.default_rng(4))
    photos = np.random.default_rng(5).integers(0, 255, (N, 3 * H, 3 * W, 3), dtype=np.uint8)
    path = save_prediction(Prediction(**arrays, photos=photos), tmp_path / "photos.npz")
    back = load_prediction(path)
    np.testing.assert_array_equal(back.photos, photos)
    assert back.photo_factor == 3 and load_prediction(path).image.shape == (N, H, W, 3)
    for bad in (photos[:, :-1], photos[:2], photos[..., :2], photos.astype(np.float32)):
        np.savez(tmp_path / "bad.npz", **arrays, photos=bad)
        with pytest.raises(PredictionError, match="photos have shape") as info:
            load_prediction(tmp_path / "bad.npz")
        assert "\n" not in str(info.value)
