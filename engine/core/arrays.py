"""Array namespaces (numpy only, no bpy, no torch).

The clean-up and view-consistency code is written once and runs on numpy in Blender and on a
torch device in the worker: its functions take ``xp``, numpy itself or
``engine.fusion.tsdf_torch.TorchArrays`` (numpy's functions, dtypes and promotion rules on a torch
device). They write ``xp.where``, ``xp.asarray(a, dtype=...)`` (never ``.astype``, which
tensors lack) and give integers a float dtype before mixing them with Python floats (numpy
makes float64 of ``int + 0.5``, torch float32). What numpy has no name for lives here.
"""

from __future__ import annotations

import numpy as np


def to_numpy(a) -> np.ndarray:
    """``a`` on the host: a numpy array as it is, a device array copied back."""
    return a if isinstance(a, np.ndarray) else a.cpu().numpy()
