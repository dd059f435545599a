"""Fuse a prediction file with engine.fusion.tsdf_torch, as the worker does (run by its Python).

    python tests/fuse_with_torch.py PREDICTION.npz OUT.npz '{"resolution": 64}' [DEVICE]

Writes the mesh (v, f) to OUT.npz and prints the device used as JSON. Tensors made without
naming a device land on 'meta' here and fail: what passes on the CPU keeps to one device on a GPU.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.prediction import load_prediction  # noqa: E402
from engine.fusion import tsdf_torch as fusion_torch  # noqa: E402
from engine.fusion.base import TSDFOptions  # noqa: E402

if __name__ == "__main__":
    source, target, options = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_default_device("meta")
    mesh = fusion_torch.fuse_tsdf(load_prediction(source), TSDFOptions(**json.loads(options)),
                                  device=device)
    np.savez(target, v=mesh.vertices, f=mesh.faces)
    print(json.dumps(mesh.stats["device"]))
