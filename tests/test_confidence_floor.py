"""What DA3 was unsure of never becomes geometry, in every fusion mode.

Files in DA3's own export layout (image, depth, conf, extrinsics, intrinsics) carry no sky mask,
so the background comes with depth at DA3's sky confidence (1.0). The scene is an object of
four parts in front of nothing (tests/scenes.py 'parts'), with exact depth and poses, so all
that is judged is what the confidence floor lets through: any surface away from the object is
a background shard.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.core import geometry
from engine.core.options import BuildOptions
from engine.core.prediction import load_prediction, save_prediction
from engine.fusion.base import TSDFOptions
from engine.fusion.tsdf import fuse_tsdf
from engine.fusion.views import view_weights

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import scenes  # noqa: E402

RESOLUTION = 96
# Scene units beyond the object's box that still count as object: the background lies three
# times farther than the object, so its shards are far outside; object mode closes the unseen
# space under an object that stands on nothing a little below it (0.2), which is no shard.
SHARD_MARGIN = 0.3


@pytest.fixture(scope="session")
def no_sky(tmp_path_factory):
    """The 'parts' scene as a file in DA3's export layout with no sky mask: its background at
    confidence 1.0."""
    scene = scenes.render_scene("parts")
    degraded = scenes.degrade(scene, depth_error=0, pose_deg=0, pose_frac=0, background_conf=1.0)
    path = save_prediction(degraded.prediction, tmp_path_factory.mktemp("no-sky") / "parts.npz")
    with np.load(path) as saved:
        assert "sky" not in saved.files and {"depth", "conf", "extrinsics"} <= set(saved.files)
    return scene, degraded, path


def shard_share(vertices, faces, scene, to_scene) -> float:
    """Share of the surface's area farther than SHARD_MARGIN outside the object's box."""
    v = np.asarray(vertices, np.float64) @ to_scene[:3, :3].T + to_scene[:3, 3]
    points = scenes.sample_mesh(v, faces, 20000, np.random.default_rng(0))
    low, high = scene.region
    return float(np.mean(np.any((points < low - SHARD_MARGIN) | (points > high + SHARD_MARGIN), axis=1)))


@pytest.mark.parametrize("object_mode", [False, True])
def test_tsdf_leaves_the_background_out(no_sky, object_mode):
    scene, degraded, path = no_sky
    pred = load_prediction(path)
    assert pred.sky is None
    mesh = fuse_tsdf(pred, TSDFOptions(resolution=RESOLUTION, object_mode=object_mode))
    assert shard_share(mesh.vertices, mesh.faces, scene, degraded.to_scene) < 0.01
    quality = scenes.evaluate(mesh.vertices, mesh.faces, scene, degraded.to_scene)
    assert quality.recall > 0.85, quality  # the object itself is there


def test_remesh_leaves_the_background_out(no_sky):
    scene, degraded, path = no_sky
    v, f, _ = scenes.remesh_baseline(load_prediction(path))
    assert shard_share(v, f, scene, degraded.to_scene) < 0.01


def test_torch_path_leaves_the_background_out(no_sky, worker_python, tmp_path):
    """fusion_torch.view_weights applies the same floor (torch on the CPU, in the worker's
    Python)."""
    scene, degraded, path = no_sky
    out = tmp_path / "mesh.npz"
    done = subprocess.run([str(worker_python), str(scenes.REPO / "tests" / "fuse_with_torch.py"),
                           str(path), str(out), json.dumps({"resolution": RESOLUTION}), "cpu"],
                          cwd=scenes.REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    mesh = np.load(out)
    assert shard_share(mesh["v"], mesh["f"], scene, degraded.to_scene) < 0.01
    ours = fuse_tsdf(load_prediction(path), TSDFOptions(resolution=RESOLUTION))
    assert abs(len(mesh["f"]) - len(ours.faces)) <= 0.02 * len(ours.faces)


@pytest.mark.parametrize("percentile", [5.0, 40.0])
def test_one_floor_for_every_mode(no_sky, percentile):
    """TSDF's surface votes and the points/REMESH mask come from the same rule: nothing under
    DA3's exporter threshold clamp(1.05, P_pct, P90) votes, and the background (1.0) never."""
    _, _, path = no_sky
    pred = load_prediction(path)
    confident, threshold = geometry.confident_pixels(pred, percentile, mask_sky=True)
    assert threshold >= geometry.CONF_FLOOR
    weights = view_weights(pred, TSDFOptions(confidence_percentile=percentile))
    assert not np.any(weights[~confident] > 0)
    assert np.mean(weights[confident] > 0) > 0.5  # the floor is not all that is left
    valid, same_threshold = geometry.valid_mask(pred, BuildOptions(confidence_percentile=percentile))
    assert same_threshold == threshold and not np.any(valid & ~confident)
    background = pred.conf <= 1.0
    assert background.mean() > 0.5 and not np.any(weights[background] > 0) and not np.any(valid[background])
