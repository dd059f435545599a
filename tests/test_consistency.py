"""Views made to agree before fusion (engine.fusion.consistency), judged against the analytic room:
every check compares with depth ray-cast from the true cameras, never with the fit itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from room import ray_cast, room_truth

from engine.core.prediction import save_prediction
from engine.fusion import consistency
from engine.fusion.base import TSDFOptions
from engine.fusion.tsdf import fuse_tsdf
from engine.fusion.views import prepare_views

H, W, VIEWS = 96, 128, 24
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def truth():
    return room_truth(VIEWS, H, W)


def views_of(pred):
    return prepare_views(pred, TSDFOptions())


def smooth_errors(pred, seed=0, depth_error=0.03):
    """A copy of ``pred`` with a random smooth depth error (a tilt and bend of each view, up
    to ``depth_error``; a quadratic, which the 4x4 correction only approximates)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    x, y = 2 * (x + 0.5) / W - 1, 2 * (y + 0.5) / H - 1
    depth = pred.depth.copy()
    for i in range(1, pred.num_views):  # view 0 stays: the frame the others are judged in
        a = rng.uniform(-1, 1, 5)
        field = a[0] * x + a[1] * y + a[2] * x * x + a[3] * x * y + a[4] * y * y
        depth[i] *= 1 + depth_error * field / np.abs(field).max()
    return type(pred)(depth=depth, intrinsics=pred.intrinsics, extrinsics=pred.extrinsics,
                      conf=pred.conf)


def error_against_truth(views, truth) -> float:
    """Median |depth difference| / depth between each view's world points and the room seen
    from the true camera (ray-cast), over every view."""
    errors = []
    for view, ext, K in zip(views, truth.extrinsics, truth.intrinsics, strict=True):
        world = world_points(view)[view.weight[view.depth > 0] > 0]
        cam = world @ ext[:, :3].T + ext[:, 3]
        pu = np.floor(K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]).astype(int)
        pv = np.floor(K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]).astype(int)
        inside = (pu >= 0) & (pu < W) & (pv >= 0) & (pv < H)
        true_depth = ray_cast(ext, K, H, W)[pv[inside], pu[inside]]
        errors.append(np.abs(cam[inside, 2] / true_depth - 1))
    return float(np.median(np.concatenate(errors)))


def test_views_that_agree_stay_as_they_are(truth):
    """Their surfaces do not move."""
    views = views_of(truth)
    before = [world_points(v) for v in views]
    report = consistency.make_consistent(views)
    assert report["disagreement_before"] < 3e-3, report  # nearest-pixel look-ups
    moved = [np.linalg.norm(world_points(v) - p, axis=1) / v.depth[v.depth > 0]
             for v, p in zip(views, before, strict=True)]
    assert max(np.median(m) for m in moved) < 5e-3
    assert np.median(np.concatenate(moved)) < 5e-4
    assert report["confirmed_share"] > 0.95, report
    assert report["rounds"] <= 2, report  # nothing to correct: the fit stops early


def world_points(view):
    v, u = np.nonzero(view.depth > 0)
    K = view.K
    rays = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], np.ones(len(u))], 1)
    return (rays * view.depth[v, u, None] - view.t) @ view.R


def test_smooth_depth_errors_are_corrected(truth):
    views = views_of(smooth_errors(truth))
    error_before = error_against_truth(views, truth)
    report = consistency.make_consistent(views)
    error_after = error_against_truth(views, truth)
    assert report["disagreement_after"] < 0.4 * report["disagreement_before"], report
    assert error_after < 0.7 * error_before, (error_before, error_after)  # 0.44% -> 0.27%
    assert report["rounds"] == consistency.ROUNDS, report


def with_floater(pred):
    """``pred`` with a floater in front of view 0's wall, confidently (changed in place)."""
    pred.depth[0, 30:50, 40:70] *= 0.6
    return pred


def test_pixels_floating_where_others_see_through_lose_their_vote(truth):
    pred = with_floater(room_truth(VIEWS, H, W))
    views = views_of(pred)
    floating = np.zeros((H, W), bool)
    floating[30:50, 40:70] = views[0].weight[30:50, 40:70] > 0
    assert np.count_nonzero(floating) > 400
    consistency.make_consistent(views)
    assert np.mean(views[0].weight[floating] == 0) > 0.95
    voting = views_of(truth)[0].weight > 0
    voting[30:50, 40:70] = False
    assert np.mean(views[0].weight[voting] > 0) > 0.95  # the rest of the view still votes


def test_fusion_reports_the_views_agreement(truth):
    mesh = fuse_tsdf(smooth_errors(truth), TSDFOptions(resolution=64))
    report = mesh.stats["consistency"]
    assert report["disagreement_after"] < report["disagreement_before"]
    off = fuse_tsdf(truth, TSDFOptions(resolution=64, consistent_views=False))
    assert off.stats["consistency"] is None


def test_views_looked_up_at_once_change_nothing(truth):
    """Several views per look-up step (as the GPU runs it) give the one-by-one answer."""
    one, many = (views_of(with_floater(smooth_errors(truth))) for _ in range(2))
    assert consistency.make_consistent(one) == consistency.make_consistent(many, views_at_once=5)
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.weight, b.weight)


def test_torch_path_makes_the_same_views(truth, worker_python, tmp_path):
    """engine.fusion.consistency on torch (many views per look-up, as on the worker's GPU) corrects the
    depth as numpy does and silences the same pixels, in a subprocess of the worker's Python."""
    path = save_prediction(with_floater(smooth_errors(truth)), tmp_path / "room.npz")
    out = tmp_path / "views.npz"
    done = subprocess.run([str(worker_python), str(REPO / "tests" / "torch_stages.py"),
                           "consistency", str(path), str(out), "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = np.load(out)
    ours, theirs = json.loads(str(got["reports"]))
    assert theirs == pytest.approx(ours, rel=1e-9)
    assert ours["disagreement_after"] < 0.5 * ours["disagreement_before"]  # the fit did work
    np.testing.assert_allclose(got["depth_torch"], got["depth_numpy"], rtol=1e-6)
    assert np.mean(got["weight_torch"] != got["weight_numpy"]) < 1e-5
    for weight in (got["weight_numpy"], got["weight_torch"]):
        assert np.mean(weight[0, 30:50, 40:70] == 0) > 0.95  # the floater is silenced


@pytest.mark.parametrize("threads", [2, 3])
def test_views_fitted_on_threads_change_nothing(truth, threads):
    """The threads take whole views each (fit and confirmation): the one-thread answer, to the
    bit; a single view (nothing to compare it with) goes through as it is."""
    one, many = (views_of(with_floater(smooth_errors(truth))) for _ in range(2))
    assert consistency.make_consistent(one) == consistency.make_consistent(many, threads=threads)
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.weight, b.weight)
    alone = views_of(truth)[:1]
    depth = alone[0].depth.copy()
    report = consistency.make_consistent(alone, threads=threads)
    assert report["confirmed_share"] == 0 and np.array_equal(alone[0].depth, depth)
