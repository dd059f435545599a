"""Chunk alignment on a synthetic scene whose truth is known.

The scene is a room (8 x 3 x 8 units) with two pillars, ray-cast analytically from cameras on a
circle. Each chunk is handed back the way DA3 would: in its own frame (its first camera) and at
its own random scale, with depth noise, outliers and slightly wrong poses. After the merge one
global similarity must bring cameras and points within 0.5% of the room's size of the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.prediction import Prediction, validate
from engine.worker.align import (
    AlignmentError,
    ChunkMerger,
    Sim3,
    backproject,
    camera_centres,
    robust_sim3,
    transform_extrinsics,
    umeyama,
)
from tests.room import SCENE_SIZE, look_extrinsics, room_truth


def chunk_spans(n: int, size: int, overlap: int) -> list[np.ndarray]:
    spans, start = [], 0
    while True:
        end = min(start + size, n)
        spans.append(np.arange(max(0, min(start, end - size)), end))
        if end == n:
            return spans
        start = end - overlap


def as_da3_chunk(truth: Prediction, idx: np.ndarray, rng: np.random.Generator,
                 noise: float = 0.005, outliers: float = 0.05, pose_noise: float = 5e-4) -> dict:
    """Views ``idx`` as DA3 would return them: in the first view's frame, at a random scale,
    with relative depth noise, gross outliers (half of them with high confidence) and pose noise."""
    scale = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    first = truth.extrinsics[idx[0]]
    to_chunk = Sim3(scale, first[:, :3], scale * first[:, 3])
    ext = transform_extrinsics(truth.extrinsics[idx], to_chunk)
    ext[:, :, 3] += rng.normal(0, pose_noise * SCENE_SIZE * scale, (len(idx), 3))
    depth = truth.depth[idx] * scale * (1 + rng.normal(0, noise, truth.depth[idx].shape))
    bad = rng.random(depth.shape) < outliers
    depth[bad] *= rng.uniform(0.4, 1.6, bad.sum())
    conf = rng.uniform(1.5, 6.0, depth.shape)
    conf[bad & (rng.random(depth.shape) < 0.5)] = 1.1
    return {"depth": depth.astype(np.float32), "conf": conf.astype(np.float32),
            "intrinsics": truth.intrinsics[idx].copy(), "extrinsics": ext,
            "image": np.zeros(depth.shape + (3,), np.uint8)}


def merge_synthetic(truth: Prediction, size: int, overlap: int, seed: int = 0, **options):
    rng = np.random.default_rng(seed)
    merger = ChunkMerger(truth.num_views, **options)
    for idx in chunk_spans(truth.num_views, size, overlap):
        merger.add(idx, as_da3_chunk(truth, idx, rng))
    return merger.result(), merger.reports


# --- measuring against the truth ---------------------------------------------------------------

def world_points(pred: Prediction, stride: int = 4) -> np.ndarray:
    """(N,M,3) points of every ``stride``-th pixel of each view."""
    h, w = pred.depth.shape[1:]
    rr, cc = np.meshgrid(np.arange(1, h, stride), np.arange(1, w, stride), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    return np.stack([backproject(pred.depth[i][rr, cc].astype(np.float64), pred.intrinsics[i],
                                 pred.extrinsics[i], cc + 0.5, rr + 0.5)
                     for i in range(pred.num_views)])


def errors_vs_truth(merged: Prediction, truth: Prediction) -> dict:
    """Camera-centre and point errors after one global similarity, as fractions of the room."""
    to_truth = umeyama(camera_centres(merged.extrinsics), camera_centres(truth.extrinsics))
    centre_err = np.linalg.norm(to_truth.apply(camera_centres(merged.extrinsics))
                                - camera_centres(truth.extrinsics), axis=1)
    point_err = np.linalg.norm(to_truth.apply(world_points(merged)) - world_points(truth), axis=-1)
    return {"centre_max": centre_err.max() / SCENE_SIZE,
            "point_median": float(np.median(point_err)) / SCENE_SIZE,
            "point_p90": float(np.percentile(point_err, 90)) / SCENE_SIZE}


def seam_double_surface(merged: Prediction, a: int, b: int) -> float:
    """Median relative depth disagreement where view ``a``'s points land in view ``b``: a second,
    shifted copy of a surface (ghosting) shows up as a disagreement between neighbouring views."""
    h, w = merged.depth.shape[1:]
    pts = world_points(merged.__class__(depth=merged.depth[[a]], intrinsics=merged.intrinsics[[a]],
                                        extrinsics=merged.extrinsics[[a]]), stride=2)[0]
    e, k = merged.extrinsics[b], merged.intrinsics[b]
    cam = pts @ e[:, :3].T + e[:, 3]
    u = (k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]).astype(int)
    v = (k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]).astype(int)
    ok = (cam[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    rel = np.abs(merged.depth[b][v[ok], u[ok]] - cam[ok, 2]) / cam[ok, 2]
    return float(np.median(rel[rel < 0.2]))


# --- tests -------------------------------------------------------------------------------------

def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    true = Sim3(2.5, q * np.sign(np.linalg.det(q)), np.array([1.0, -2.0, 0.5]))
    fit = umeyama(src, true.apply(src))
    assert fit.scale == pytest.approx(2.5)
    np.testing.assert_allclose(fit.matrix(), true.matrix(), atol=1e-9)
    np.testing.assert_allclose(true.compose(true.inverse()).matrix(), np.eye(4), atol=1e-12)


def test_robust_fit_ignores_a_third_of_gross_outliers():
    rng = np.random.default_rng(2)
    src = rng.uniform(-1, 1, size=(3000, 3)) + [0, 0, 4]
    true = Sim3(0.7, np.eye(3), np.array([0.2, 0.0, -1.0]))
    dst = true.apply(src) * (1 + rng.normal(0, 0.002, (3000, 1)))
    dst[:1000] += rng.normal(0, 1.0, (1000, 3))
    fit = robust_sim3(src, dst, depth=dst[:, 2])
    assert fit.sim.scale == pytest.approx(0.7, rel=1e-3)
    np.testing.assert_allclose(fit.sim.translation, true.translation, atol=5e-3)
    assert 0.6 < fit.inlier_fraction < 0.72


def test_moving_the_world_keeps_points_on_their_pixels():
    truth = room_truth(2, 12, 16)
    sim = Sim3(3.0, look_extrinsics(np.zeros(3), np.array([1.0, 0.2, 0.3]))[:, :3],
               np.array([0.5, 1.0, -2.0]))
    moved = transform_extrinsics(truth.extrinsics, sim)
    u, v = np.array([3.5, 10.5]), np.array([2.5, 7.5])
    before = backproject(np.array([2.0, 3.0]), truth.intrinsics[1], truth.extrinsics[1], u, v)
    after = backproject(np.array([6.0, 9.0]), truth.intrinsics[1], moved[1], u, v)
    np.testing.assert_allclose(sim.apply(before), after, atol=1e-9)


def test_chunks_in_their_own_frames_come_back_within_half_a_percent():
    truth = room_truth(60)
    merged, reports = merge_synthetic(truth, size=16, overlap=6)
    validate(merged)
    err = errors_vs_truth(merged, truth)
    assert len(reports) == 6
    assert err["centre_max"] < 0.005, err
    assert err["point_median"] < 0.005, err
    # the shared views of neighbouring chunks land on each other: only the noise remains
    assert max(r.ghosting for r in reports[1:]) < 0.01
    assert min(r.inlier_fraction for r in reports[1:]) > 0.85
    assert not any(r.doubt() for r in reports)


def test_a_chunk_that_disagrees_with_the_result_is_flagged():
    truth = room_truth(20, 24, 32)
    rng = np.random.default_rng(0)
    merger = ChunkMerger(20)
    merger.add(np.arange(12), as_da3_chunk(truth, np.arange(12), rng))
    chunk = as_da3_chunk(truth, np.arange(8, 20), rng)
    # the shared views are bent: depth off by -30% on the left to +30% on the right
    chunk["depth"][:4] *= np.linspace(0.7, 1.3, 32, dtype=np.float32)
    assert "seam" in merger.add(np.arange(8, 20), chunk).doubt()


def test_seams_show_no_more_double_surface_than_inside_a_chunk():
    truth = room_truth(40)
    merged, _ = merge_synthetic(truth, size=12, overlap=4)
    spans = chunk_spans(40, 12, 4)
    seams = [int(s[0]) for s in spans[1:]]  # first view of each later chunk vs the one before
    inside = [i for i in range(1, 40) if all(abs(i - s) > 2 for s in seams)]
    seam = np.median([seam_double_surface(merged, i - 1, i) for i in seams])
    within = np.median([seam_double_surface(merged, i - 1, i) for i in inside])
    assert seam < 1.5 * within + 0.002, (seam, within)


def test_matching_earlier_views_drifts_no_more_than_chaining_chunks():
    """On a revisit, views of earlier chunks seen again hold drift back: with them (the worker's
    merge) the errors are no larger than with the shared views of the chunk before alone."""
    truth = room_truth(96, laps=2.0)  # the second lap revisits the first
    errors = {}
    for covisible in (8, 0):  # 8: the worker's default; 0: chained to the previous chunk only
        merged, reports = merge_synthetic(truth, size=12, overlap=4, seed=3,
                                          max_covisible=covisible)
        errors[covisible] = errors_vs_truth(merged, truth)
        matched = sum(r.covisible_views > 0 for r in reports)
        assert matched >= len(reports) // 2 if covisible else matched == 0
    assert errors[8]["centre_max"] <= errors[0]["centre_max"] * 1.05, errors
    assert errors[8]["point_p90"] <= errors[0]["point_p90"] * 1.05, errors
    assert errors[8]["centre_max"] < 0.005, errors


def test_a_chunk_that_shares_nothing_is_refused():
    truth = room_truth(20, 12, 16)
    rng = np.random.default_rng(0)
    merger = ChunkMerger(20)
    merger.add(np.arange(10), as_da3_chunk(truth, np.arange(10), rng))
    with pytest.raises(AlignmentError, match="shares no view"):
        merger.add(np.arange(12, 20), as_da3_chunk(truth, np.arange(12, 20), rng))
    with pytest.raises(AlignmentError, match="never predicted"):
        merger.result()

