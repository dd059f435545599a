"""The prediction file: DA3's own ``npz`` export layout plus a few extras of ours.

DA3's exporter writes ``image`` (N,H,W,3 uint8), ``depth`` (N,H,W), ``conf`` (N,H,W),
``extrinsics`` (N,3,4 world-to-camera, OpenCV axes) and ``intrinsics`` (N,3,3); its
``mini_npz`` layout leaves out ``image``, and monocular models leave out ``conf`` and
``extrinsics``. Our worker writes the same keys, so files from either side are interchangeable,
and adds optional extras that the official tools simply do not have:

``sky`` (N,H,W bool), ``is_metric`` (bool), ``source_paths`` (N str), ``frame_indices``
(N int, -1 for still images), ``model`` (str), ``process_res`` (int), and, when the worker
fused the views (TSDF), ``fused_vertices`` (V,3 float32, prediction frame), ``fused_faces``
(F,3 int32), ``fused_colors`` (V,3 float32 sRGB) and ``fused_settings`` (JSON str); and
``photos`` (N,k*H,k*W,3 uint8): the input frames at k times the size of ``image`` (the same
field of view, so a pixel's coordinates scale by k), which the texture is baked from.

Everything is stored as plain arrays (no pickle), so ``np.load(allow_pickle=False)`` reads it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .options import BACKGROUND_THREADS
from .threads import Workers

REQUIRED_KEYS = ("depth", "intrinsics")


class PredictionError(ValueError):
    """A prediction file or array that cannot be used; the message is one line for the user."""


@dataclass
class Prediction:
    depth: np.ndarray  # (N,H,W) float32, z-depth along the optical axis
    intrinsics: np.ndarray  # (N,3,3) float64, pixels of the depth map
    extrinsics: np.ndarray | None = None  # (N,3,4) world-to-camera, OpenCV axes
    conf: np.ndarray | None = None  # (N,H,W) float32, >= 1 for DA3 any-view models
    image: np.ndarray | None = None  # (N,H,W,3) uint8
    sky: np.ndarray | None = None  # (N,H,W) bool, True where the model sees sky
    is_metric: bool = False
    source_paths: list[str] = field(default_factory=list)
    frame_indices: np.ndarray | None = None  # (N,) int, -1 for stills
    model: str = ""
    process_res: int = 0
    fused_vertices: np.ndarray | None = None  # (V,3) TSDF surface made by the worker
    fused_faces: np.ndarray | None = None  # (F,3)
    fused_colors: np.ndarray | None = None  # (V,3) sRGB in [0,1]
    fused_settings: str = ""  # JSON: what the fusion was asked, its voxel size and device
    photos: np.ndarray | None = None  # (N,k*H,k*W,3) uint8: the frames k times as large as image

    @property
    def num_views(self) -> int:
        return int(self.depth.shape[0])

    @property
    def height(self) -> int:
        return int(self.depth.shape[1])

    @property
    def width(self) -> int:
        return int(self.depth.shape[2])

    @property
    def is_video(self) -> bool:
        return self.frame_indices is not None and bool(np.all(self.frame_indices >= 0))

    def world_to_camera(self) -> np.ndarray:
        """(N,4,4) world-to-camera matrices; identity for files without extrinsics (one view)."""
        w2c = np.tile(np.eye(4), (self.num_views, 1, 1))
        if self.extrinsics is not None:
            w2c[:, :3, :4] = self.extrinsics
        return w2c

    @property
    def photo_factor(self) -> int:
        """How many times larger than the depth map the ``photos`` are (1 without them)."""
        return 1 if self.photos is None else self.photos.shape[1] // self.height


def prediction_arrays(pred: Prediction) -> dict[str, np.ndarray]:
    """The file's arrays by key: DA3's layout and our extras (the one definition of both)."""
    arrays = {"depth": np.asarray(pred.depth, dtype=np.float32), "intrinsics": pred.intrinsics}
    optional = {"image": pred.image, "conf": pred.conf, "extrinsics": pred.extrinsics,
                "sky": pred.sky, "frame_indices": pred.frame_indices,
                "fused_vertices": pred.fused_vertices, "fused_faces": pred.fused_faces,
                "fused_colors": pred.fused_colors, "photos": pred.photos}
    arrays.update({k: v for k, v in optional.items() if v is not None})
    if pred.source_paths:
        arrays["source_paths"] = np.array(pred.source_paths, dtype=str)
    arrays["is_metric"] = np.array(bool(pred.is_metric))
    arrays["model"] = np.array(pred.model, dtype=str)
    arrays["process_res"] = np.array(int(pred.process_res))
    if pred.fused_settings:
        arrays["fused_settings"] = np.array(pred.fused_settings, dtype=str)
    return arrays


class PredictionWriter:
    """Writes a prediction file in two parts: ``begin`` the arrays known early (the worker writes
    the image while the network runs), ``finish`` the rest once the prediction is complete. Each
    part leaves a closed, valid npz at ``partial``; the file appears at ``path`` only at the end,
    so a reader never sees a half-written one."""

    def __init__(self, path: str | os.PathLike, compress: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.compress = compress
        self.written: dict[str, np.ndarray] = {}

    def begin(self, **arrays: np.ndarray) -> None:
        """Write these arrays first; ``finish`` checks that the prediction holds the same ones."""
        write_npz(self.partial, arrays, "w", self.compress)
        self.written = arrays

    def finish(self, pred: Prediction) -> Path:
        validate(pred)
        arrays = prediction_arrays(pred)
        for key, value in self.written.items():
            if arrays.get(key) is not value:
                raise ValueError(f"the {key} written first is not the prediction's")
        rest = {k: v for k, v in arrays.items() if k not in self.written}
        write_npz(self.partial, rest, "a" if self.written else "w", self.compress)
        os.replace(self.partial, self.path)
        return self.path


def save_prediction(pred: Prediction, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write ``pred`` to ``path`` atomically (a reader never sees a half-written file)."""
    return PredictionWriter(path, compress).finish(pred)


def write_npz(path: Path, arrays: dict[str, np.ndarray], mode: str = "w",
              compress: bool = False) -> None:
    """``np.savez`` (``np.savez_compressed`` with ``compress``) of ``arrays``, or (``mode`` "a")
    the same entries added to an existing npz."""
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, mode, compression=compression, allowZip64=True) as npz:
        for key, value in arrays.items():
            with npz.open(key + ".npy", "w", force_zip64=True) as entry:  # as np.savez does
                write_npy(entry, np.asanyarray(value))


def write_npy(entry, array: np.ndarray) -> None:
    """The bytes ``np.lib.format.write_array`` writes, but a C-ordered plain array goes out in one
    piece from its own memory (write_array copies it in 16 MiB pieces into a zip entry)."""
    if not (array.flags.c_contiguous and array.dtype.kind in "biuf"):
        np.lib.format.write_array(entry, array, allow_pickle=False)
        return
    np.lib.format.write_array_header_1_0(entry, np.lib.format.header_data_from_array_1_0(array))
    entry.write(memoryview(array.reshape(-1).view(np.uint8)))


def load_prediction(path: str | os.PathLike) -> Prediction:
    """Read and validate a prediction file; PredictionError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"'{path}' does not exist; choose a DA3 .npz prediction file")
    try:
        arrays = read_arrays(path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PredictionError(
            f"'{path.name}' is not a DA3 npz file ({type(exc).__name__}); export one with "
            "DA3's 'npz' or 'mini_npz' format") from None
    pred = _from_arrays(arrays, path.name)
    validate(pred)
    return pred


def read_arrays(path: Path) -> dict:
    """Every array of an npz file, read on ``BACKGROUND_THREADS`` threads: a member's
    decompression (zlib, most of the read) lets go of Python's lock. Each thread opens the
    file on its own: one zipfile shared between threads counts its readers unguarded."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # one array saved with np.save
        raise ValueError("a single array, not an archive of them")
    with loaded as npz:
        keys = npz.files

    def read(key: str):
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]

    with Workers(BACKGROUND_THREADS, "da3-read") as workers:
        return dict(zip(keys, workers.map(read, keys), strict=True))


def _from_arrays(arrays: dict, name: str) -> Prediction:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise PredictionError(f"'{name}' lacks {', '.join(missing)}: not a DA3 prediction file")
    depth = np.asarray(arrays["depth"], dtype=np.float32)
    if depth.ndim == 2:  # a single view saved without its batch axis
        depth = depth[None]

    def opt(key, dtype=None):
        return np.asarray(arrays[key], dtype=dtype) if key in arrays else None

    paths = arrays.get("source_paths")
    return Prediction(
        depth=depth,
        intrinsics=np.asarray(arrays["intrinsics"], dtype=np.float64).reshape(-1, 3, 3),
        extrinsics=opt("extrinsics", np.float64),
        conf=opt("conf", np.float32),
        image=opt("image"),
        sky=opt("sky", bool),
        is_metric=bool(arrays["is_metric"]) if "is_metric" in arrays else False,
        source_paths=[str(p) for p in paths] if paths is not None else [],
        frame_indices=opt("frame_indices", np.int64),
        model=str(arrays["model"]) if "model" in arrays else "",
        process_res=int(arrays["process_res"]) if "process_res" in arrays else 0,
        fused_vertices=opt("fused_vertices", np.float32),
        fused_faces=opt("fused_faces", np.int32),
        fused_colors=opt("fused_colors", np.float32),
        fused_settings=str(arrays["fused_settings"]) if "fused_settings" in arrays else "",
        photos=opt("photos"),
    )


def validate(pred: Prediction) -> None:
    """Raise PredictionError naming the first thing that makes ``pred`` unusable."""
    depth = pred.depth
    if depth.ndim != 3:
        raise PredictionError(f"depth has shape {depth.shape}; expected (views, height, width)")
    n, h, w = depth.shape
    if n == 0 or h < 2 or w < 2:
        raise PredictionError(f"the prediction holds no usable view (depth shape {depth.shape})")
    _check_shape("intrinsics", pred.intrinsics, (n, 3, 3))
    _check_shape("extrinsics", pred.extrinsics, (n, 3, 4))
    _check_shape("conf", pred.conf, (n, h, w))
    _check_shape("image", pred.image, (n, h, w, 3))
    _check_shape("sky", pred.sky, (n, h, w))
    _check_shape("frame_indices", pred.frame_indices, (n,))
    if pred.extrinsics is None and n > 1:
        raise PredictionError(f"{n} views but no extrinsics: cannot place the views in one scene")
    if pred.source_paths and len(pred.source_paths) != n:
        raise PredictionError(f"{len(pred.source_paths)} source paths for {n} views")
    if not _all_finite(depth):
        raise PredictionError("depth holds NaN or infinite values: the file is corrupt")
    if depth.min() < 0:
        raise PredictionError("depth holds negative values: the file is corrupt")
    for key in ("intrinsics", "extrinsics", "conf"):
        arr = getattr(pred, key)
        if arr is not None and not _all_finite(arr):
            raise PredictionError(f"{key} holds NaN or infinite values: the file is corrupt")
    focal = pred.intrinsics[:, [0, 1], [0, 1]]
    if np.any(focal <= 0):
        raise PredictionError("a view has a zero or negative focal length in its intrinsics")
    _check_fused(pred)
    if pred.image is not None and pred.image.dtype != np.uint8:
        raise PredictionError(f"image has dtype {pred.image.dtype}; expected uint8 RGB")
    _check_photos(pred)


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every value is finite, from the extremes alone (NaN and infinities reach them),
    which reads the array without the boolean copy of ``np.isfinite``."""
    return arr.size == 0 or bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))


def _check_fused(pred: Prediction) -> None:
    vertices, faces = pred.fused_vertices, pred.fused_faces
    if vertices is None and faces is None:
        return
    if vertices is None or faces is None or vertices.ndim != 2 or vertices.shape[1:] != (3,) \
            or faces.ndim != 2 or faces.shape[1:] != (3,):
        raise PredictionError("the fused surface needs fused_vertices (V,3) and fused_faces (F,3)")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise PredictionError("fused_faces point at vertices that do not exist: the file is corrupt")
    _check_shape("fused_colors", pred.fused_colors, vertices.shape)


def _check_photos(pred: Prediction) -> None:
    """``photos`` must be whole multiples of the depth map's size, the same for both sides."""
    photos = pred.photos
    if photos is None:
        return
    n, h, w = pred.depth.shape
    k = photos.shape[1] // h if photos.ndim == 4 else 0
    if k < 1 or photos.shape != (n, k * h, k * w, 3) or photos.dtype != np.uint8:
        raise PredictionError(f"photos have shape {photos.shape} ({photos.dtype}); expected "
                              f"({n}, k*{h}, k*{w}, 3) uint8 for a whole k")


def _check_shape(key: str, arr: np.ndarray | None, expected: tuple) -> None:
    if arr is not None and arr.shape != expected:
        raise PredictionError(f"{key} has shape {arr.shape}; expected {expected} to match depth")
