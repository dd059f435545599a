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


def solve_positive_definite(a, b):
    """x with a @ x = b for a batch of small symmetric positive definite systems: ``a``
    (n,k,k), ``b`` (n,k), in either array namespace (Gauss-Jordan elimination, no pivot: the
    diagonal of such a matrix stays positive).

    Not ``linalg.solve``: numpy hands that to LAPACK in OpenBLAS, whose threads run at
    Blender's priority, not an import's lowered one, and spin for a tenth of a second after each
    call (``engine.core.cameras.rotated``); the views' fit calls it every round."""
    k = a.shape[1]
    m = a[:, :, :] * 1.0  # a copy, in the namespace's own way
    x = b * 1.0
    for i in range(k):
        pivot = m[:, i, i]
        row, value = m[:, i, :] / pivot[:, None], x[:, i] / pivot
        x = x - m[:, :, i] * value[:, None]
        m = m - m[:, :, i, None] * row[:, None, :]
        m[:, i, :], x[:, i] = row, value
    return x
