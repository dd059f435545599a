"""TSDF fusion with the integration (views x voxels, the hot loop) on a torch device.

The worker imports this when torch is present; the algorithm is ``engine.fusion``'s, step for
step (same weights, same votes, same float32 arithmetic), so the two give the same mesh up to
rounding. Planning, meshing and clean-up are shared numpy code. torch is imported here only.
"""

from __future__ import annotations

import numpy as np

from . import fusion
from .prediction import Prediction


def fuse_tsdf(pred: Prediction, options: fusion.TSDFOptions | None = None,
              progress: fusion.Progress | None = None, device: str | None = None) -> fusion.FusedMesh:
    """:func:`engine.fusion.fuse_tsdf` with the integration on ``device``.

    Parameters
    ----------
    device : str, optional
        A torch device ('cuda', 'cuda:1', 'cpu'); default: CUDA when available, else the numpy
        integration (faster than torch on a CPU).

    Returns
    -------
    FusedMesh
        As the numpy version; ``stats['device']`` names the device used ('numpy' for none).
    """
    import torch

    if device is None and not torch.cuda.is_available():
        mesh = fusion.fuse_tsdf(pred, options, progress)  # numpy beats torch's CPU scatter
        mesh.stats["device"] = "numpy"
        return mesh
    dev = torch.device(device or "cuda")
    mesh = fusion.fuse_tsdf(pred, options, progress, integrate=TorchIntegrator(dev))
    mesh.stats["device"] = str(dev)
    if dev.type == "cuda":
        mesh.stats["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return mesh


class TorchIntegrator:
    """Drop-in for :func:`engine.fusion.integrate_views`."""

    def __init__(self, device):
        self.device = device

    def __call__(self, grid: fusion.Grid, keys: np.ndarray, views: list[fusion.View],
                 options: fusion.TSDFOptions, progress: fusion.Progress) -> fusion.Volume:
        import torch

        dev = self.device
        m = len(keys)
        coords_np = grid.block_coords(keys)
        coords = torch.as_tensor(coords_np, device=dev)
        acc = {name: torch.zeros((m, fusion.BLOCK_VOXELS), dtype=torch.float32, device=dev)
               for name in ("tsdf", "weight", "color_weight")}
        acc["color"] = torch.zeros((m, fusion.BLOCK_VOXELS, 3), dtype=torch.float32, device=dev)
        local = torch.as_tensor(fusion.local_offsets() * grid.voxel_size, dtype=torch.float64,
                                device=dev)
        for i, view in enumerate(views):
            self.integrate_view(grid, coords_np, coords, local, view, acc, options.chunk_voxels)
            progress((i + 1) / len(views), f"fused view {i + 1} of {len(views)}")
        cpu = {k: v.cpu().numpy() for k, v in acc.items()}
        return fusion.Volume(keys, coords_np, cpu["tsdf"], cpu["weight"],
                             cpu["color"], cpu["color_weight"])

    def integrate_view(self, grid, coords_np, coords, local, view, acc, chunk_voxels):
        import torch

        dev = self.device
        sel = torch.as_tensor(fusion.visible_blocks(grid, coords_np, view), device=dev)
        if len(sel) == 0:
            return
        R = torch.as_tensor(view.R, dtype=torch.float64, device=dev)
        t = torch.as_tensor(view.t, dtype=torch.float64, device=dev)
        origin = torch.as_tensor(grid.origin, dtype=torch.float64, device=dev)
        local_cam = (local @ R.T).float().T.contiguous()
        base = ((origin + coords[sel].double() * fusion.BLOCK * grid.voxel_size) @ R.T
                + t).float().T.contiguous()
        maps = self.padded_maps(view)
        step = max(1, chunk_voxels // fusion.BLOCK_VOXELS)
        for start in range(0, len(sel), step):
            cam = [base[a, start:start + step, None] + local_cam[a] for a in range(3)]
            self.update_chunk(acc, sel[start:start + step], cam, view, maps, grid.truncation)

    def padded_maps(self, view):
        import torch

        return {k: torch.as_tensor(v, device=self.device)
                for k, v in fusion.padded_maps(view).items()}

    def update_chunk(self, acc, blocks, cam, view, maps, trunc):
        """engine.fusion.update_chunk, line for line."""
        import torch

        h, w = view.depth.shape
        K = view.K
        x, y, z = cam
        inv = 1 / torch.clamp(z, min=1e-9)
        u = float(K[0, 0]) * x * inv + float(K[0, 2])
        v = float(K[1, 1]) * y * inv + float(K[1, 2])
        ok = (z > 1e-9) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        pix = torch.where(ok, v.int() * w + u.int(), torch.full_like(u, h * w, dtype=torch.int32))
        pix = pix.long()
        sdf = maps["depth"][pix] - z
        zero = torch.zeros((), dtype=sdf.dtype, device=sdf.device)
        wt = torch.where(sdf >= trunc, maps["free_weight"][pix],
                         torch.where(sdf > -trunc, maps["weight"][pix], zero))
        acc["tsdf"].index_add_(0, blocks, wt * torch.clamp(sdf / trunc, max=1.0))
        acc["weight"].index_add_(0, blocks, wt)
        if "color" in maps:
            b, j = torch.nonzero((wt > 0) & (sdf.abs() < trunc), as_tuple=True)
            rows, wn = blocks[b], wt[b, j]
            acc["color"][rows, j] += wn[:, None] * maps["color"][pix[b, j]].float()
            acc["color_weight"][rows, j] += wn
