"""Run one stage of engine.fusion.tsdf_torch next to its numpy version, as the worker would (run by
its Python: numpy and torch, no Blender), and save both results to compare.

    python tests/torch_stages.py consistency PREDICTION.npz OUT.npz [DEVICE]
    python tests/torch_stages.py clean MESH.npz OUT.npz [DEVICE]

consistency: the prediction's views (numpy weights), made to agree inside the planned grid by
engine.fusion.consistency on numpy and on the device with as many views per look-up as on a GPU;
OUT holds depth_numpy, depth_torch, weight_numpy, weight_torch and the two reports as JSON.
clean: engine.fusion.mesh_cleanup.clean_surface of MESH's (v, f) on numpy and on the device; OUT holds
v_numpy, f_numpy, v_torch, f_torch and holes (numpy, torch). Both sides run with the numpy
here, so only torch can tell them apart. Tensors made without naming a device land on 'meta'
and fail: what passes on the CPU keeps to one device on a GPU.
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.prediction import load_prediction  # noqa: E402
from engine.fusion import consistency, mesh_cleanup  # noqa: E402
from engine.fusion import tsdf_torch as fusion_torch  # noqa: E402
from engine.fusion.base import TSDFOptions  # noqa: E402
from engine.fusion.grid import plan_grid  # noqa: E402
from engine.fusion.views import prepare_views  # noqa: E402


def consistency_both(source: str, device: str) -> dict:
    options = TSDFOptions()
    views = prepare_views(load_prediction(source), options)
    region = plan_grid(views, options).box
    ours, theirs = copy.deepcopy(views), copy.deepcopy(views)
    reports = [consistency.make_consistent(ours, region),
               consistency.make_consistent(theirs, region, xp=fusion_torch.TorchArrays(device),
                                           views_at_once=fusion_torch.VIEWS_AT_ONCE)]
    return {"depth_numpy": np.stack([v.depth for v in ours]),
            "depth_torch": np.stack([v.depth for v in theirs]),
            "weight_numpy": np.stack([v.weight for v in ours]),
            "weight_torch": np.stack([v.weight for v in theirs]),
            "reports": np.array(json.dumps(reports))}


def clean_both(source: str, device: str) -> dict:
    mesh = np.load(source)
    v, f, unseen = mesh["v"], mesh["f"], mesh["unseen"]
    taut = unseen & (v[:, 0] < 0)  # half of them drawn taut, half smoothed as before
    ours = mesh_cleanup.clean_surface(v, f, unseen=unseen, taut=taut, unseen_iterations=UNSEEN_PASSES)
    theirs = fusion_torch.clean_surface(v, f, mesh_cleanup.MAX_HOLE_EDGES,
                                        mesh_cleanup.SMOOTH_ITERATIONS, unseen, taut, UNSEEN_PASSES,
                                        mesh_cleanup.NORMAL_FILTER_ITERATIONS, device=device)
    return {"v_numpy": ours[0], "f_numpy": ours[1], "v_torch": theirs[0], "f_torch": theirs[1],
            "holes": np.array([ours[2], theirs[2]]), "border": np.array([ours[3], theirs[3]])}


UNSEEN_PASSES = 10
STAGES = {"consistency": consistency_both, "clean": clean_both}

if __name__ == "__main__":
    stage, source, target = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    torch.set_default_device("meta")
    np.savez(target, **STAGES[stage](source, device))
