"""Sim(3) alignment of overlapping chunks and their merge into one prediction (numpy only).

A long video goes through DA3 in overlapping chunks. Each chunk comes back in its own frame (its
reference view's camera) and at its own scale, so before the chunks can form one scene each is
brought into the frame of the growing result by a similarity (scale, rotation, translation):

* Point pairs come from geometry both sides agree on. Views the chunk shares with the result are
  back-projected at the same pixels on both sides. Views of earlier chunks that look at the same
  place (a loop, a revisit) are matched by projecting their points into the chunk's views. Aligning
  to everything already placed, not only to the previous chunk, keeps errors from piling up.
* The fit is confidence-weighted Umeyama inside IRLS with Cauchy weights, started from a small
  RANSAC so that outliers (sky, flying pixels, a wrong depth) cannot drag it. Residuals are measured
  relative to depth because DA3's depth error grows with depth.
* The merge writes into arrays allocated once for all views (no growing copies); a view predicted
  by two chunks keeps the version with the higher confidence.

Frames: depth is z-depth; extrinsics are world-to-camera (3x4, OpenCV axes); pixel j spans [j, j+1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import cameras
from ..core.geometry import depth_jumps
from ..core.prediction import Prediction

CAUCHY_C = 2.3849  # 95% efficiency of the Cauchy loss for Gaussian residuals
RANSAC_INLIER = 0.05  # a pair within 5% of its depth supports a hypothesis
CONSISTENT_DEPTH = 0.05  # a projected point within 5% of the depth seen there is the same surface
MIN_PAIRS = 12


class AlignmentError(ValueError):
    """Two chunks share too little reliable geometry to be aligned; one line for the user."""


# --- the similarity ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sim3:
    """x -> scale * rotation @ x + translation."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * (points @ self.rotation.T) + self.translation

    def compose(self, inner: "Sim3") -> "Sim3":
        """self after ``inner``."""
        return Sim3(self.scale * inner.scale, self.rotation @ inner.rotation,
                    self.apply(inner.translation))

    def inverse(self) -> "Sim3":
        rot = self.rotation.T
        return Sim3(1.0 / self.scale, rot, -(rot @ self.translation) / self.scale)

    def matrix(self) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out


def transform_extrinsics(extrinsics: np.ndarray, sim: Sim3) -> np.ndarray:
    """World-to-camera (...,3,4) of cameras whose world moved by ``sim`` (depths scale by sim.scale).

    A camera point in the new world is ``scale * (R_i x + t_i)`` with ``x = sim^-1(X)``, hence
    ``R' = R_i R^T`` and ``t' = scale * t_i - R' t``.
    """
    rot = extrinsics[..., :3, :3] @ sim.rotation.T
    trans = sim.scale * extrinsics[..., :3, 3] - rot @ sim.translation
    return np.concatenate([rot, trans[..., None]], axis=-1)


def camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    """(N,3) camera centres in the world: -R^T t."""
    rot, trans = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    return -np.einsum("nji,nj->ni", rot, trans)


# --- fitting -----------------------------------------------------------------------------------

def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Sim3:
    """Weighted least-squares similarity with dst ~ S(src) (Umeyama 1991), closed form.

    Parameters
    ----------
    src, dst : (M,3) corresponding points, M >= 3 and not collinear.
    weights : (M,) non-negative weights, or None for equal weights.
    """
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    sc, dc = src - mu_s, dst - mu_d
    var_s = float(w @ np.einsum("ij,ij->i", sc, sc))
    cov = (dc * w[:, None]).T @ sc
    u, d, vt = np.linalg.svd(cov)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(d) @ flip) / var_s) if var_s > 0 else 1.0
    return Sim3(scale, rot, mu_d - scale * rot @ mu_s)


def relative_residuals(sim: Sim3, src: np.ndarray, dst: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """|dst - S(src)| / depth: the misfit as a fraction of each point's depth."""
    return np.linalg.norm(dst - sim.apply(src), axis=1) / depth


def ransac_sim3(src, dst, weights, depth, trials: int = 64, sample: int = 2000,
                rng: np.random.Generator | None = None) -> tuple[Sim3, np.ndarray]:
    """A starting similarity from 3-pair hypotheses, scored on a subsample; and its inlier mask."""
    rng = rng or np.random.default_rng(0)
    m = len(src)
    probe = rng.choice(m, size=min(m, sample), replace=False)
    p = weights / weights.sum()
    best, best_score = None, -1.0
    for _ in range(trials):
        pick = rng.choice(m, size=3, replace=False, p=p)
        if _degenerate(src[pick]):
            continue
        hyp = umeyama(src[pick], dst[pick])
        ok = relative_residuals(hyp, src[probe], dst[probe], depth[probe]) < RANSAC_INLIER
        score = float(weights[probe][ok].sum())
        if score > best_score:
            best, best_score = hyp, score
    if best is None:
        best = umeyama(src, dst, weights)
    inliers = relative_residuals(best, src, dst, depth) < RANSAC_INLIER
    if inliers.sum() >= MIN_PAIRS:
        best = umeyama(src[inliers], dst[inliers], weights[inliers])
    return best, inliers


def _degenerate(points: np.ndarray) -> bool:
    """Three points too close to a line to fix a rotation."""
    a, b, c = points
    area = np.linalg.norm(np.cross(b - a, c - a))
    span = max(np.linalg.norm(b - a), np.linalg.norm(c - a), 1e-12)
    return area < 1e-3 * span * span


@dataclass
class FitReport:
    sim: Sim3
    inlier_fraction: float  # pairs within 3 robust sigmas
    residual: float  # median |dst - S(src)| / depth over all pairs
    sigma: float  # robust spread of the relative residuals (MAD * 1.4826)


def robust_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                depth: np.ndarray | None = None, iterations: int = 12, ransac_trials: int = 64,
                rng: np.random.Generator | None = None,
                cancel: Callable[[], bool] | None = None) -> FitReport:
    """Similarity dst ~ S(src) that outliers cannot drag: RANSAC start, then Cauchy IRLS.

    Parameters
    ----------
    src, dst : (M,3) point pairs (M >= MIN_PAIRS).
    weights : (M,) prior weights (e.g. confidence); the robust weights multiply them.
    depth : (M,) depth of each pair on the ``dst`` side; residuals are divided by it and the
        least-squares weights by its square, so near and far points count by their reliability.
    cancel : checked between iterations; a True raises ``InterruptedError``.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if len(src) < MIN_PAIRS:
        raise AlignmentError(f"only {len(src)} reliable point pairs in the overlap; need "
                             f"{MIN_PAIRS}: use a larger chunk overlap")
    prior = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    depth = np.ones(len(src)) if depth is None else np.maximum(np.asarray(depth, np.float64), 1e-9)
    sim, _ = ransac_sim3(src, dst, prior, depth, ransac_trials, rng=rng) if ransac_trials else (
        umeyama(src, dst, prior / depth**2), None)
    sigma = 0.0
    for _ in range(iterations):
        _check(cancel)
        r = relative_residuals(sim, src, dst, depth)
        sigma = max(1.4826 * float(np.median(r)), 1e-6)
        robust = 1.0 / (1.0 + (r / (CAUCHY_C * sigma)) ** 2)
        new = umeyama(src, dst, prior * robust / depth**2)
        converged = _close(new, sim)
        sim = new
        if converged:
            break
    r = relative_residuals(sim, src, dst, depth)
    return FitReport(sim, float(np.mean(r < 3 * sigma)), float(np.median(r)), sigma)


def _close(a: Sim3, b: Sim3, tol: float = 1e-7) -> bool:
    scale_change = abs(a.scale / b.scale - 1.0)
    rot_change = np.linalg.norm(a.rotation - b.rotation)
    shift = np.linalg.norm(a.translation - b.translation) / max(np.linalg.norm(b.translation), 1.0)
    return max(scale_change, rot_change, shift) < tol


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise InterruptedError("cancelled")


# --- pixels, points, pairs ---------------------------------------------------------------------

def pixel_grid(height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat (rows, cols) of every ``stride``-th pixel, offset to spread over the image."""
    rows = np.arange(stride // 2, height, stride)
    cols = np.arange(stride // 2, width, stride)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return rr.ravel(), cc.ravel()


def backproject(depth: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(M,3) world points of image positions (u, v) (pixels: pixel j's centre is j + 0.5) at
    ``depth`` (M,)."""
    fx, fy, cx, cy = cameras.lens(intrinsics)
    cam = cameras.camera_points(depth, cameras.ray_slope(u, fx, cx), cameras.ray_slope(v, fy, cy))
    return cameras.camera_to_world(np.stack(cam, axis=1), extrinsics[:3, :3], extrinsics[:3, 3])


def smooth_at(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True where no 4-neighbour's depth jumps (``geometry.depth_jumps``: not a flying pixel)."""
    h, w = depth.shape
    centre = depth[rows, cols]
    ok = centre > 0
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = depth[np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1)]
        ok &= ~depth_jumps(nb, centre)
    return ok


@dataclass
class ViewData:
    """One view as one side sees it: depth, confidence, sky, camera (all in that side's world)."""

    depth: np.ndarray  # (H,W)
    conf: np.ndarray | None
    sky: np.ndarray | None
    intrinsics: np.ndarray  # (3,3)
    extrinsics: np.ndarray  # (3,4)

    def usable(self, rows, cols) -> np.ndarray:
        ok = smooth_at(self.depth, rows, cols)
        if self.sky is not None:
            ok &= ~self.sky[rows, cols]
        return ok

    def confidence(self, rows, cols) -> np.ndarray:
        return np.ones(len(rows)) if self.conf is None else self.conf[rows, cols].astype(np.float64)

    def points(self, rows, cols) -> np.ndarray:
        return backproject(self.depth[rows, cols].astype(np.float64), self.intrinsics,
                           self.extrinsics, cols + cameras.PIXEL_CENTRE, rows + cameras.PIXEL_CENTRE)


@dataclass
class Pairs:
    src: np.ndarray  # (M,3) chunk side
    dst: np.ndarray  # (M,3) result side
    weight: np.ndarray  # (M,)
    depth: np.ndarray  # (M,) result-side depth

    @staticmethod
    def concat(parts: Sequence["Pairs"]) -> "Pairs":
        parts = [p for p in parts if len(p.src)]
        if not parts:
            return Pairs(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        return Pairs(*(np.concatenate([getattr(p, k) for p in parts])
                       for k in ("src", "dst", "weight", "depth")))


def same_pixel_pairs(chunk: ViewData, result: ViewData, stride: int) -> Pairs:
    """Pairs from one view seen by both sides: the same pixels back-projected in each world."""
    rows, cols = pixel_grid(*chunk.depth.shape, stride)
    ok = chunk.usable(rows, cols) & result.usable(rows, cols)
    rows, cols = rows[ok], cols[ok]
    weight = np.sqrt(chunk.confidence(rows, cols) * result.confidence(rows, cols))
    return Pairs(chunk.points(rows, cols), result.points(rows, cols), weight,
                 result.depth[rows, cols].astype(np.float64))


def projected_pairs(chunk: ViewData, result: ViewData, chunk_to_result: Sim3, stride: int) -> Pairs:
    """Pairs from a result view and a chunk view that see the same place from different cameras.

    The result view's points are projected into the chunk camera (placed by the current estimate
    ``chunk_to_result``); where the chunk's depth there agrees, the chunk point along the same ray
    pairs with the result point. Disagreeing depths are occlusions, not matches.
    """
    rows, cols = pixel_grid(*result.depth.shape, stride)
    ok = result.usable(rows, cols)
    rows, cols = rows[ok], cols[ok]
    world = result.points(rows, cols)
    placed = transform_extrinsics(chunk.extrinsics, chunk_to_result)
    cam = cameras.world_to_camera(world, placed[:3, :3], placed[:3, 3])
    z = cam[:, 2]
    front = z > 1e-9
    k = chunk.intrinsics
    u, v = cameras.image_positions((cam[:, 0], cam[:, 1], np.where(front, z, 1)), cameras.lens(k))
    u, v = np.where(front, u, -1), np.where(front, v, -1)
    h, w = chunk.depth.shape
    inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ci, ri = u[inside].astype(int), v[inside].astype(int)
    seen = chunk.depth[ri, ci].astype(np.float64)
    agree = np.abs(seen * chunk_to_result.scale - z[inside]) < CONSISTENT_DEPTH * z[inside]
    agree &= chunk.usable(ri, ci)
    sel = np.flatnonzero(inside)[agree]
    ri, ci = ri[agree], ci[agree]
    src = backproject(seen[agree], k, chunk.extrinsics, u[sel], v[sel])
    weight = np.sqrt(chunk.confidence(ri, ci) * result.confidence(rows[sel], cols[sel]))
    return Pairs(src, world[sel], weight, z[sel])


# --- chunk input -------------------------------------------------------------------------------

def _get(chunk, key: str):
    if isinstance(chunk, Mapping):
        return chunk.get(key)
    return getattr(chunk, key, None)


def chunk_view(chunk, i: int) -> ViewData:
    """View ``i`` of a chunk (a Prediction or a mapping with the same keys)."""
    conf, sky = _get(chunk, "conf"), _get(chunk, "sky")
    return ViewData(_get(chunk, "depth")[i], None if conf is None else conf[i],
                    None if sky is None else sky[i], _get(chunk, "intrinsics")[i],
                    _get(chunk, "extrinsics")[i])


# --- the streaming merge -----------------------------------------------------------------------

@dataclass
class ChunkAlignment:
    """How one chunk was placed; what the worker logs and the tests check."""

    views: tuple[int, int]  # first and last global view index of the chunk
    shared_views: int  # views the chunk shares with the result
    covisible_views: int  # earlier views matched by projection
    pairs: int
    sim: Sim3
    inlier_fraction: float
    residual: float  # median relative misfit of all pairs after alignment
    ghosting: float  # median |p_result - p_chunk| / depth over the shared views' inlier pixels
    seconds: float

    def doubt(self) -> str:
        """One line for a warning event when this chunk's placement is not to be trusted, else ''.

        Under half the pairs agreeing, or shared surfaces 3% of their depth apart after the fit,
        mean the chunks disagree about the scene (a scene cut, a wrong pose inside a chunk).
        """
        first, last = self.views
        if self.pairs and self.inlier_fraction < 0.5:
            return (f"views {first}-{last}: only {self.inlier_fraction:.0%} of the overlap agrees "
                    "with the rest; expect a visible seam (a larger chunk overlap helps)")
        if self.ghosting > 0.03:
            return (f"views {first}-{last}: shared surfaces stay {self.ghosting:.1%} of their "
                    "depth apart after alignment; expect doubled surfaces at this seam")
        return ""


class ChunkMerger:
    """Aligns chunks as they arrive and writes them into one prediction allocated once.

    Parameters
    ----------
    num_views : views of the whole job; chunk view ``j`` is global view ``indices[j]``.
    max_pairs : point pairs per fit, spread over the shared views (more only costs time).
    max_covisible : earlier views, outside the chunk, matched by projection.
    """

    def __init__(self, num_views: int, *, max_pairs: int = 40_000, max_covisible: int = 8,
                 seed: int = 0):
        self.num_views = num_views
        self.max_pairs = max_pairs
        self.max_covisible = max_covisible
        self.rng = np.random.default_rng(seed)
        self.filled = np.zeros(num_views, dtype=bool)
        self.reports: list[ChunkAlignment] = []
        self._arrays: dict[str, np.ndarray] | None = None

    # -- public ---------------------------------------------------------------------------------

    def add(self, indices: Sequence[int], chunk, cancel: Callable[[], bool] | None = None
            ) -> ChunkAlignment:
        """Place one chunk's views (global ``indices``) into the result; returns how it went."""
        start = time.perf_counter()
        indices = np.asarray(indices, dtype=np.int64)
        if self._arrays is None:
            self._allocate(chunk)
        shared = [j for j, g in enumerate(indices) if self.filled[g]]
        if not self.filled.any():
            report = self._first_chunk(indices)
        elif not shared:
            raise AlignmentError(f"chunk of views {indices[0]}-{indices[-1]} shares no view with "
                                 "the result: chunks must overlap")
        else:
            report = self._align(indices, chunk, shared, cancel)
        self._write(indices, chunk, report.sim, shared)
        report.seconds = time.perf_counter() - start
        self.reports.append(report)
        return report

    def result(self) -> Prediction:
        """The merged prediction; its metadata (model, source_paths, ...) is the caller's to fill."""
        if self._arrays is None or not self.filled.all():
            missing = self.num_views - int(self.filled.sum())
            raise AlignmentError(f"{missing} views were never predicted: the chunks left a gap")
        a = self._arrays
        return Prediction(depth=a["depth"], intrinsics=a["intrinsics"], extrinsics=a["extrinsics"],
                          conf=a.get("conf"), image=a.get("image"), sky=a.get("sky"))

    # -- steps ----------------------------------------------------------------------------------

    def _allocate(self, chunk) -> None:
        _, h, w = _get(chunk, "depth").shape
        n = self.num_views
        arrays = {"depth": np.zeros((n, h, w), np.float32),
                  "intrinsics": np.zeros((n, 3, 3)), "extrinsics": np.zeros((n, 3, 4))}
        if _get(chunk, "conf") is not None:
            arrays["conf"] = np.ones((n, h, w), np.float32)
        if _get(chunk, "image") is not None:
            arrays["image"] = np.zeros((n, h, w, 3), np.uint8)
        if _get(chunk, "sky") is not None:
            arrays["sky"] = np.zeros((n, h, w), bool)
        self._arrays = arrays

    def _first_chunk(self, indices) -> ChunkAlignment:
        return ChunkAlignment((int(indices[0]), int(indices[-1])), 0, 0, 0, Sim3(), 1.0, 0.0, 0.0,
                              0.0)

    def _result_view(self, g: int) -> ViewData:
        a = self._arrays
        return ViewData(a["depth"][g], a["conf"][g] if "conf" in a else None,
                        a["sky"][g] if "sky" in a else None, a["intrinsics"][g], a["extrinsics"][g])

    def _align(self, indices, chunk, shared, cancel) -> ChunkAlignment:
        h, w = _get(chunk, "depth").shape[1:]
        stride = _stride_for(h, w, self.max_pairs // max(1, len(shared)))
        shared_pairs = Pairs.concat([
            same_pixel_pairs(chunk_view(chunk, j), self._result_view(indices[j]), stride)
            for j in shared])
        fit = robust_sim3(shared_pairs.src, shared_pairs.dst, shared_pairs.weight,
                          shared_pairs.depth, rng=self.rng, cancel=cancel)
        covisible = self._covisible(indices, chunk, fit.sim)
        pairs = shared_pairs
        if covisible:
            _check(cancel)
            stride = _stride_for(h, w, self.max_pairs // (len(shared) + len(covisible)))
            extra = Pairs.concat([projected_pairs(chunk_view(chunk, j), self._result_view(g),
                                                  fit.sim, stride) for j, g in covisible])
            pairs = Pairs.concat([shared_pairs, extra])
            fit = robust_sim3(pairs.src, pairs.dst, pairs.weight, pairs.depth, rng=self.rng,
                              cancel=cancel)
        ghost = relative_residuals(fit.sim, shared_pairs.src, shared_pairs.dst, shared_pairs.depth)
        ghost = ghost[ghost < 3 * fit.sigma] if np.any(ghost < 3 * fit.sigma) else ghost
        return ChunkAlignment((int(indices[0]), int(indices[-1])), len(shared), len(covisible),
                              len(pairs.src), fit.sim, fit.inlier_fraction, fit.residual,
                              float(np.median(ghost)), 0.0)

    def _covisible(self, indices, chunk, sim: Sim3) -> list[tuple[int, int]]:
        """(chunk view, result view) pairs of earlier views, outside the chunk, that look at the
        same place as a chunk view: camera centres close (against the scene depth), axes within
        45 degrees. The closest ``max_covisible`` pairs, one result view each."""
        if self.max_covisible == 0:
            return []
        placed = self.filled.copy()
        placed[indices] = False
        if self.reports:  # the previous chunk speaks through the shared views already; older
            first, last = self.reports[-1].views  # views are what hold drift back
            placed[first:last + 1] = False
        earlier = np.flatnonzero(placed)
        if len(earlier) == 0:
            return []
        ext = self._arrays["extrinsics"]
        mine = transform_extrinsics(np.asarray(_get(chunk, "extrinsics"), np.float64), sim)
        dist = np.linalg.norm(camera_centres(mine)[:, None] - camera_centres(ext[earlier])[None],
                              axis=-1)
        cos = mine[:, 2, :3] @ ext[earlier][:, 2, :3].T  # optical axes are the third rows
        depth_scale = sim.scale * float(np.median(_get(chunk, "depth")[:, ::8, ::8]))
        dist = np.where((cos > np.cos(np.radians(45))) & (dist < 0.5 * depth_scale), dist, np.inf)
        best_chunk_view = np.argmin(dist, axis=0)
        best = dist[best_chunk_view, np.arange(len(earlier))]
        order = [k for k in np.argsort(best) if np.isfinite(best[k])][: self.max_covisible]
        return [(int(best_chunk_view[k]), int(earlier[k])) for k in order]

    def _write(self, indices, chunk, sim: Sim3, shared) -> None:
        depth, conf = _get(chunk, "depth"), _get(chunk, "conf")
        ext = transform_extrinsics(np.asarray(_get(chunk, "extrinsics"), np.float64), sim)
        for j, g in enumerate(indices):
            placed_depth = depth[j].astype(np.float32) * np.float32(sim.scale)
            new_conf = conf[j] if conf is not None else None
            if j in shared:
                self._merge_view(g, placed_depth, new_conf, ext[j], chunk, j)
            else:
                self._store(g, placed_depth, new_conf, ext[j], chunk, j)
        self.filled[indices] = True

    def _store(self, g, depth, conf, ext, chunk, j) -> None:
        a = self._arrays
        a["depth"][g] = depth
        a["intrinsics"][g] = _get(chunk, "intrinsics")[j]
        a["extrinsics"][g] = ext
        for key in ("conf", "image", "sky"):
            if key in a and _get(chunk, key) is not None:
                a[key][g] = _get(chunk, key)[j]

    def _merge_view(self, g, depth, conf, ext, chunk, j) -> None:
        """A view both sides predicted keeps the side with the higher median confidence."""
        a = self._arrays
        if conf is None or "conf" not in a:
            return  # without confidence nothing says the new side is better: keep the first
        # a median over every 4th pixel each way decides as well and costs 1/16 of the full one
        if np.median(conf[::4, ::4]) > np.median(a["conf"][g][::4, ::4]):
            self._store(g, depth, conf, ext, chunk, j)


def _stride_for(height: int, width: int, budget: int) -> int:
    """Pixel step that samples about ``budget`` pixels of an image."""
    return max(1, int(np.ceil(np.sqrt(height * width / max(budget, 1)))))

