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
        A torch device ('cuda', 'cuda:1', 'cpu'); default: CUDA when available, else CPU.

    Returns
    -------
    FusedMesh
        As the numpy version; ``stats['device']`` names the device used.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
        coords = torch.as_tensor(grid.block_coords(keys), device=dev)
        acc = {name: torch.zeros((m, fusion.BLOCK_VOXELS), dtype=torch.float32, device=dev)
               for name in ("tsdf", "weight", "color_weight")}
        acc["color"] = torch.zeros((m, fusion.BLOCK_VOXELS, 3), dtype=torch.float32, device=dev)
        local = torch.as_tensor(fusion.local_offsets() * grid.voxel_size, dtype=torch.float64,
                                device=dev)
        for i, view in enumerate(views):
            self.integrate_view(grid, coords, local, view, acc, options.chunk_voxels)
            progress((i + 1) / len(views), f"fused view {i + 1} of {len(views)}")
        cpu = {k: v.cpu().numpy() for k, v in acc.items()}
        return fusion.Volume(keys, grid.block_coords(keys), cpu["tsdf"], cpu["weight"],
                             cpu["color"], cpu["color_weight"])

    def integrate_view(self, grid, coords, local, view, acc, chunk_voxels):
        import torch

        dev = self.device
        sel = torch.as_tensor(fusion.visible_blocks(grid, coords.cpu().numpy(), view), device=dev)
        if len(sel) == 0:
            return
        R = torch.as_tensor(view.R, dtype=torch.float64, device=dev)
        t = torch.as_tensor(view.t, dtype=torch.float64, device=dev)
        origin = torch.as_tensor(grid.origin, dtype=torch.float64, device=dev)
        local_cam = (local @ R.T).float()
        base = ((origin + coords[sel].double() * fusion.BLOCK * grid.voxel_size) @ R.T + t).float()
        images = self.view_tensors(view)
        step = max(1, chunk_voxels // fusion.BLOCK_VOXELS)
        for start in range(0, len(sel), step):
            cam = base[start:start + step, None, :] + local_cam[None]
            self.update_chunk(acc, sel[start:start + step], cam, view, images, grid.truncation)

    def view_tensors(self, view):
        import torch

        dev = self.device
        out = {"depth": torch.as_tensor(view.depth.ravel(), device=dev),
               "weight": torch.as_tensor(view.weight.ravel(), device=dev),
               "free": torch.as_tensor(view.free_weight.ravel(), device=dev)}
        if view.color is not None:
            out["color"] = torch.as_tensor(view.color.reshape(-1, 3), device=dev).float()
        return out

    def update_chunk(self, acc, blocks, cam, view, images, trunc):
        import torch

        h, w = view.depth.shape
        K = view.K
        z = cam[..., 2]
        zs = torch.where(z > 1e-9, z, torch.full_like(z, 1e-9))
        u = torch.floor(float(K[0, 0]) * cam[..., 0] / zs + float(K[0, 2]))
        v = torch.floor(float(K[1, 1]) * cam[..., 1] / zs + float(K[1, 2]))
        ok = (z > 1e-9) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        b, j = torch.nonzero(ok, as_tuple=True)
        pix = v[b, j].long() * w + u[b, j].long()
        d = images["depth"][pix]
        sdf = d - z[b, j]
        in_band = torch.where(sdf > -trunc, images["weight"][pix], torch.zeros_like(sdf))
        wt = torch.where(sdf >= trunc, images["free"][pix], in_band)
        wt = torch.where(torch.isfinite(sdf) & (d > 0), wt, torch.zeros_like(wt))
        vote = wt > 0
        b, j, pix, sdf, wt = b[vote], j[vote], pix[vote], sdf[vote], wt[vote]
        rows = blocks[b]
        acc["tsdf"][rows, j] += wt * torch.clamp(sdf / trunc, max=1.0)
        acc["weight"][rows, j] += wt
        if "color" in images:
            near = sdf.abs() < trunc
            rows, j, pix, wn = rows[near], j[near], pix[near], wt[near]
            acc["color"][rows, j] += wn[:, None] * images["color"][pix]
            acc["color_weight"][rows, j] += wn
