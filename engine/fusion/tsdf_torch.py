"""TSDF fusion with its array-heavy stages on a torch device (the GPU, in the worker).

The worker imports this when torch is present. Each stage is the numpy one's (``engine.fusion``),
step for step (same weights, votes, cases and order of operations; float64 where numpy computes in
float64), so the two paths give the same mesh up to float32 summation order. The views'
consistency (``engine.fusion.consistency``) and the surface clean-up (``engine.fusion.mesh_cleanup``) are
written once for an array namespace: here they run on :class:`TorchArrays`. Planning and
allocation are the shared numpy code: they take a fraction of the time. torch is imported here
only.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..core import cameras, geometry
from ..core.prediction import Prediction
from . import consistency, mesh_cleanup
from .base import BLOCK, BLOCK_VOXELS, FusedMesh, Grid, Progress, TSDFOptions, View, Volume
from .integrate import local_offsets, padded_maps, visible_blocks
from .tets import CASE_ENDS, CORNER_OFFSETS, EDGE_DIRECTION, EDGE_LOWER, KUHN_TETS, meshing_blocks
from .tsdf import Stages
from .tsdf import fuse_tsdf as numpy_fuse_tsdf
from .views import FULL_COS, GRAZING_COS, RAMP_HIGH_PERCENTILE, RAMP_LOW_PERCENTILE

# The views' consistency looks points up in this many views per step on a device, where a step
# costs its kernel launches more than its arithmetic (numpy looks in one at a time: each view
# that confirms a pixel spares the next ones' look-ups).
VIEWS_AT_ONCE = 32


def fuse_tsdf(pred: Prediction, options: TSDFOptions | None = None,
              progress: Progress | None = None, device: str | None = None) -> FusedMesh:
    """:func:`engine.fusion.tsdf.fuse_tsdf` with pixel weights, integration, meshing and connected
    pieces on ``device``.

    Parameters
    ----------
    device : str, optional
        A torch device ('cuda', 'cuda:1', 'cpu'); default: CUDA when available, else the numpy
        path (faster than torch on a CPU).

    Returns
    -------
    FusedMesh
        As the numpy version; ``stats['device']`` names the device used ('numpy' for none).
    """
    import torch

    if device is None and not torch.cuda.is_available():
        mesh = numpy_fuse_tsdf(pred, options, progress)  # numpy beats torch's CPU scatter
        mesh.stats["device"] = "numpy"
        return mesh
    dev = torch.device(device or "cuda")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    mesh = numpy_fuse_tsdf(pred, options, progress, stages=torch_stages(dev))
    mesh.stats["device"] = str(dev)
    if dev.type == "cuda":
        mesh.stats["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return mesh


def torch_stages(device) -> Stages:
    return Stages(weigh=lambda pred, options: view_weights(pred, options, device),
                 make_consistent=lambda views, region, _threads, confirm=True: make_consistent(
                     views, region, device, confirm),
                 integrate=TorchIntegrator(device),
                 extract=lambda *args: TorchMesher(device)(*args[:5]),  # (no threads: one device)
                 components=lambda faces, n: face_components(faces, n, device),
                 clean_surface=lambda *args: clean_surface(*args[:7], *args[8:], device=device))


def make_consistent(views: list[View], region, device, confirm: bool = True) -> dict:
    """engine.fusion.consistency.make_consistent on ``device`` (the views go there and back once)."""
    xp = TorchArrays(device)
    at_once = 1 if xp.device.type == "cpu" else VIEWS_AT_ONCE  # a CPU pays for arithmetic
    return consistency.make_consistent(views, region, xp=xp, views_at_once=at_once, confirm=confirm)


def clean_surface(vertices: np.ndarray, faces: np.ndarray, max_hole_edges: int, iterations: int,
                  unseen: np.ndarray | None = None, taut: np.ndarray | None = None,
                  unseen_iterations: int = 0,
                  normal_iterations: int = mesh_cleanup.NORMAL_FILTER_ITERATIONS, *, device
                  ) -> tuple[np.ndarray, np.ndarray, int, int | None]:
    """engine.fusion.mesh_cleanup.clean_surface on ``device``: the mesh goes there and back once."""
    xp = TorchArrays(device)
    vertices, faces, holes, border = mesh_cleanup.clean_surface(
        xp.asarray(vertices), xp.asarray(faces), max_hole_edges, iterations, xp=xp,
        unseen=None if unseen is None else xp.asarray(unseen),
        taut=None if taut is None else xp.asarray(taut), unseen_iterations=unseen_iterations,
        normal_iterations=normal_iterations)
    return vertices.cpu().numpy(), faces.cpu().numpy(), holes, border


# --------------------------------------------------------------------------------------------
# numpy's namespace on a torch device (engine.core.arrays)


class TorchArrays:
    """The numpy functions that the code written for an array namespace uses (``engine.core.arrays``),
    with numpy's signatures and results on a torch device: new arrays are float64 unless told
    (torch's default is float32), weighted counts are float64, medians and percentiles
    interpolate as numpy's. Functions torch spells and behaves as numpy pass through; nothing
    else does, so that a numpy name torch means otherwise (sort, any, median) cannot slip in.
    """

    PASSTHROUGH = ("abs", "exp", "floor", "sqrt", "sign", "where", "einsum", "diff", "diag", "take",
                   "searchsorted", "empty_like", "linalg", "float32", "float64", "int32", "int64")

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        for name in self.PASSTHROUGH:
            setattr(self, name, getattr(torch, name))
        self.add = _SegmentSums(self)

    def dtype(self, dtype):
        """torch's dtype for a numpy one (or a Python type: float is float64, as in numpy)."""
        if dtype is None or isinstance(dtype, self.torch.dtype):
            return dtype
        return getattr(self.torch, np.dtype(dtype).name)

    def asarray(self, a, dtype=None):
        return self.torch.as_tensor(a, dtype=self.dtype(dtype), device=self.device)

    def array(self, a, dtype=None):
        return self.asarray(a, dtype).clone()

    def copy(self, a):
        return a.clone()

    def zeros(self, shape, dtype=float):
        return self.torch.zeros(shape, dtype=self.dtype(dtype), device=self.device)

    def ones(self, shape, dtype=float):
        return self.torch.ones(shape, dtype=self.dtype(dtype), device=self.device)

    def full(self, shape, value, dtype=None):
        dtype = self.dtype(dtype or np.asarray(value).dtype)  # an int fills int64, as numpy
        return self.torch.full((shape,) if np.ndim(shape) == 0 else tuple(shape), value,
                               dtype=dtype, device=self.device)

    def arange(self, n, dtype=None):
        return self.torch.arange(n, dtype=self.dtype(dtype), device=self.device)

    def stack(self, arrays, axis=0):
        return self.torch.stack(list(arrays), dim=axis)

    def concatenate(self, arrays, axis=0):
        return self.torch.cat(list(arrays), dim=axis)

    def maximum(self, a, b):
        if not self.torch.is_tensor(b):
            return self.torch.clamp(a, min=b)
        return self.torch.maximum(a, b)

    def minimum(self, a, b):
        if not self.torch.is_tensor(b):
            return self.torch.clamp(a, max=b)
        return self.torch.minimum(a, b)

    def nonzero(self, a):
        return self.torch.nonzero(a, as_tuple=True)

    def flatnonzero(self, a):
        return self.torch.nonzero(a.reshape(-1))[:, 0]

    def any(self, a, axis=None):
        return self.torch.any(a) if axis is None else self.torch.any(a, dim=axis)

    def sort(self, a):
        return self.torch.sort(a).values

    def cumsum(self, a):
        return self.torch.cumsum(a.reshape(-1), 0)

    def repeat(self, a, repeats, axis=None):
        return self.torch.repeat_interleave(a, repeats, dim=axis)

    def bincount(self, x, weights=None, minlength=0):
        weights = None if weights is None else weights.to(self.torch.float64)
        return self.torch.bincount(x, weights, minlength=minlength)

    def median(self, a):
        """numpy's median of a 1-D array (the mean of the middle two), as a 0-d array: no sync."""
        ordered = self.torch.sort(a).values
        return (ordered[(len(a) - 1) // 2] + ordered[len(a) // 2]) / 2

    def percentile(self, a, q: float):
        """numpy's default (linear) percentile of a 1-D array, interpolated as numpy's _lerp."""
        ordered = self.torch.sort(a).values
        pos = q / 100 * (len(a) - 1)
        low = int(pos)
        below, above = ordered[low], ordered[min(low + 1, len(a) - 1)]
        t = pos - low
        diff = above - below
        return above - diff * (1 - t) if t >= 0.5 else below + diff * t

    def insert(self, a, index, values):
        """numpy's insert of ``values`` before positions ``index`` of 1-D ``a``."""
        torch = self.torch
        rank = torch.empty_like(index)
        rank[torch.argsort(index, stable=True)] = torch.arange(len(index), device=self.device)
        at = index + rank
        out = torch.empty(len(a) + len(index), dtype=a.dtype, device=self.device)
        old = torch.ones(len(out), dtype=torch.bool, device=self.device)
        old[at] = False
        out[at] = values.to(a.dtype)
        out[old] = a
        return out

    def errstate(self, **_):
        return contextlib.nullcontext()  # torch raises no floating-point warnings


class _SegmentSums:
    """``xp.add.reduceat(values, bounds)`` as numpy's for segments that are not empty (an empty
    one sums to 0 here, to values[bound] in numpy: callers give such sums no weight)."""

    def __init__(self, xp: TorchArrays):
        self.xp = xp

    def reduceat(self, values, bounds):
        torch, dev = self.xp.torch, values.device
        # the last segment runs to the end; sizes given, so that nothing waits for the device
        lengths = torch.diff(bounds, append=torch.full((1,), len(values), device=dev))
        owner = torch.repeat_interleave(torch.arange(len(bounds), device=dev), lengths,
                                        output_size=len(values))
        return torch.zeros(len(bounds), dtype=values.dtype, device=dev).index_add_(0, owner, values)


# --------------------------------------------------------------------------------------------
# pixel weights (engine.fusion.views.view_weights, all views at once)


def view_weights(pred: Prediction, options: TSDFOptions, device) -> np.ndarray:
    import torch

    depth = torch.as_tensor(np.asarray(pred.depth, dtype=np.float32), device=device)
    # the floor is the one shared definition (numpy): one percentile, not worth a device copy
    confident, _ = geometry.confident_pixels(pred, options.confidence_percentile, options.mask_sky)
    weight = torch.as_tensor(confident, device=device).float()
    if pred.conf is not None:
        weight *= confidence_weights(torch.as_tensor(pred.conf, device=device))
    K = torch.as_tensor(np.asarray(pred.intrinsics, dtype=np.float64), device=device)
    weight *= surface_angle_weights(depth, K)
    return weight.cpu().numpy()


def percentile(ordered, q: float) -> float:
    """numpy's default (linear) percentile of sorted values (torch.quantile caps the size)."""
    pos = q / 100 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low]) + (float(ordered[high]) - float(ordered[low])) * (pos - low)


def confidence_weights(conf):
    import torch

    ordered = torch.sort(conf.flatten()).values
    low = percentile(ordered, RAMP_LOW_PERCENTILE)
    high = percentile(ordered, RAMP_HIGH_PERCENTILE)
    ramp = torch.clamp((conf.double() - low) / max(high - low, 1e-6), 0, 1)
    return torch.where(conf >= high, 1.0, ramp).float()


def surface_angle_weights(depth, K):
    """engine.fusion.views.surface_angle_weights for (N,H,W) depth and (N,3,3) K."""
    import torch
    import torch.nn.functional as F

    lens = tuple(c[:, None] for c in cameras.lens(K))  # (N,1): every view's rays at once
    u, v = cameras.pixel_ray_factors(lens, *depth.shape[1:], TorchArrays(depth.device))
    z = depth
    x, y, _ = cameras.camera_points(z, u.float()[:, None, :], v.float()[:, :, None])
    ax, ay, az = (torch.zeros_like(z) for _ in range(3))
    bx, by, bz = (torch.zeros_like(z) for _ in range(3))
    for d, p in ((ax, x), (ay, y), (az, z)):
        d[:, :, 1:-1] = p[:, :, 2:] - p[:, :, :-2]
    for d, p in ((bx, x), (by, y), (bz, z)):
        d[:, 1:-1] = p[:, 2:] - p[:, :-2]
    nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    dot = torch.abs(nx * x + ny * y + nz * z)
    length = torch.sqrt(nx * nx + ny * ny + nz * nz) * torch.sqrt(x * x + y * y + z * z)
    cos = dot / torch.clamp(length, min=1e-12)
    ramp = torch.clamp((cos - GRAZING_COS) / (FULL_COS - GRAZING_COS), 0, 1)
    padded = F.pad(ramp[:, None], (1, 1, 1, 1), mode="replicate")  # 3x3 minimum, edge padded
    return (-F.max_pool2d(-padded, 3, stride=1))[:, 0].float()


# --------------------------------------------------------------------------------------------
# integration (engine.fusion.integrate.integrate_views)


class TorchIntegrator:
    """engine.fusion.integrate.integrate_views on a torch device."""

    def __init__(self, device):
        self.device = device

    def __call__(self, grid: Grid, keys: np.ndarray, views: list[View],
                 options: TSDFOptions, progress: Progress) -> Volume:
        import torch

        dev = self.device
        m = len(keys)
        coords_np = grid.block_coords(keys)
        coords = torch.as_tensor(coords_np, device=dev)
        acc = {name: torch.zeros((m, BLOCK_VOXELS), dtype=torch.float32, device=dev)
               for name in ("tsdf", "weight", "color_weight")}
        acc["color"] = torch.zeros((m, BLOCK_VOXELS, 3), dtype=torch.float32, device=dev)
        local = torch.as_tensor(local_offsets() * grid.voxel_size, dtype=torch.float64,
                                device=dev)
        for i, view in enumerate(views):
            self.integrate_view(grid, coords_np, coords, local, view, acc, options.chunk_voxels)
            progress((i + 1) / len(views), f"fused view {i + 1} of {len(views)}")
        cpu = {k: v.cpu().numpy() for k, v in acc.items()}
        return Volume(keys, coords_np, cpu["tsdf"], cpu["weight"],
                             cpu["color"], cpu["color_weight"])

    def integrate_view(self, grid, coords_np, coords, local, view, acc, chunk_voxels):
        import torch

        dev = self.device
        sel = torch.as_tensor(visible_blocks(grid, coords_np, view), device=dev)
        if len(sel) == 0:
            return
        R = torch.as_tensor(view.R, dtype=torch.float64, device=dev)
        t = torch.as_tensor(view.t, dtype=torch.float64, device=dev)
        origin = torch.as_tensor(grid.origin, dtype=torch.float64, device=dev)
        local_cam = (local @ R.T).float().T.contiguous()
        base = ((origin + coords[sel].double() * BLOCK * grid.voxel_size) @ R.T
                + t).float().T.contiguous()
        maps = self.padded_maps(view)
        step = max(1, chunk_voxels // BLOCK_VOXELS)
        for start in range(0, len(sel), step):
            cam = [base[a, start:start + step, None] + local_cam[a] for a in range(3)]
            self.update_chunk(acc, sel[start:start + step], cam, view, maps, grid.truncation)

    def padded_maps(self, view):
        import torch

        return {k: torch.as_tensor(v, device=self.device)
                for k, v in padded_maps(view).items()}

    def update_chunk(self, acc, blocks, cam, view, maps, trunc):
        """engine.fusion.integrate.update_chunk, line for line."""
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
            wn = torch.where(sdf.abs() < trunc, wt, zero)
            acc["color"].index_add_(0, blocks, wn[..., None] * maps["color"][pix].float())
            acc["color_weight"].index_add_(0, blocks, wn)


# --------------------------------------------------------------------------------------------
# meshing (engine.fusion.tets.mesh_volume: marching tetrahedra, the front-side test)


class TorchMesher:
    """engine.fusion.tets.mesh_volume on a torch device: all blocks in a few large chunks."""

    def __init__(self, device, chunk_blocks: int = 16384):
        import torch

        self.device, self.chunk_blocks = device, chunk_blocks
        as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        self.kuhn, self.offsets = as_t(KUHN_TETS), as_t(CORNER_OFFSETS)
        self.ends, self.lower = as_t(CASE_ENDS), as_t(EDGE_LOWER)
        self.direction = as_t(EDGE_DIRECTION)

    def __call__(self, grid: Grid, keys: np.ndarray, values: np.ndarray,
                 coarse: np.ndarray, views: list[View] | None):
        import torch

        dev = self.device
        self.grid = grid
        self.views = views
        self.keys = torch.as_tensor(keys, device=dev)
        self.values = torch.as_tensor(values, device=dev)
        self.coarse = torch.as_tensor(coarse, device=dev)
        self.blocks = torch.as_tensor(grid.blocks, device=dev)
        mesh_keys = torch.as_tensor(meshing_blocks(grid, keys), device=dev)
        parts = [self.march_blocks(mesh_keys[start:start + self.chunk_blocks])
                 for start in range(0, len(mesh_keys), self.chunk_blocks)]
        parts = [p for p in parts if p is not None]
        if not parts:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
        edge_keys = torch.cat([p[0] for p in parts])
        positions = torch.cat([p[1] for p in parts])
        unique, inverse = torch.unique(edge_keys, return_inverse=True)
        # one position per edge (every cube sharing it interpolates the same two values)
        first = torch.full((len(unique),), len(edge_keys), dtype=torch.int64, device=dev)
        first.scatter_reduce_(0, inverse, torch.arange(len(edge_keys), device=dev), "amin")
        origin = torch.as_tensor(grid.origin, device=dev)
        vertices = origin + positions[first] * grid.voxel_size
        faces = inverse.reshape(-1, 3)
        ok = ((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
              & (faces[:, 0] != faces[:, 2]))
        return vertices.cpu().numpy(), faces[ok].cpu().numpy()

    def block_coords(self, keys):
        b = self.blocks
        return torch_stack([keys // (b[1] * b[2]), keys // b[2] % b[1], keys % b[2]])

    def block_keys(self, coords):
        b = self.blocks
        return (coords[:, 0] * b[1] + coords[:, 1]) * b[2] + coords[:, 2]

    def block_values(self, coords):
        """engine.fusion.tets.block_values: (m,8,8,8) fine values, else coarse, else outside."""
        import torch

        grid = self.grid
        in_grid = torch.all((coords >= 0) & (coords < self.blocks), dim=1)
        out = torch.full((len(coords), BLOCK_VOXELS), 1.0 if grid.object_mode else float("nan"),
                         dtype=torch.float32, device=self.device)
        k = self.block_keys(torch.where(in_grid[:, None], coords, 0))
        if len(self.keys):
            pos = torch.clamp(torch.searchsorted(self.keys, k), 0, len(self.keys) - 1)
            fine = in_grid & (self.keys[pos] == k)
            out[fine] = self.values[pos[fine]]
        else:
            fine = torch.zeros_like(in_grid)
        coarse_only = in_grid & ~fine
        out[coarse_only] = self.coarse[k[coarse_only], None]
        return out.reshape(-1, BLOCK, BLOCK, BLOCK)

    def padded_blocks(self, coords):
        import torch

        B = BLOCK
        out = torch.empty((len(coords), B + 1, B + 1, B + 1), dtype=torch.float32, device=self.device)
        for c in range(8):
            off = CORNER_OFFSETS[c]
            src = self.block_values(coords + self.offsets[c])
            sx, sy, sz = (slice(0, B) if o == 0 else slice(0, 1) for o in off)
            dx, dy, dz = (slice(0, B) if o == 0 else slice(B, B + 1) for o in off)
            out[:, dx, dy, dz] = src[:, sx, sy, sz]
        return out

    def march_blocks(self, chunk):
        """engine.fusion.tets.march_blocks: (edge keys, positions) of this chunk's triangles."""
        import torch

        B = BLOCK
        coords = self.block_coords(chunk)
        padded = self.padded_blocks(coords)
        corners = torch.stack([padded[:, o[0]:o[0] + B, o[1]:o[1] + B, o[2]:o[2] + B]
                               for o in CORNER_OFFSETS.tolist()])
        lo, hi = corners.amin(dim=0), corners.amax(dim=0)
        b, x, y, z = torch.nonzero((lo < 0) & (hi >= 0), as_tuple=True)  # NaN compares false
        if len(b) == 0:
            return None
        cube_values = corners[:, b, x, y, z].T.contiguous()  # (n,8)
        cube_origin = coords[b] * B + torch_stack([x, y, z])
        if self.views is not None:
            keep = self.seen_from_front(cube_origin, cube_values)
            cube_origin, cube_values = cube_origin[keep], cube_values[keep]
        return self.march_tets(cube_origin, cube_values)

    def seen_from_front(self, cube_origin, cube_values):
        """engine.fusion.tets.seen_from_front for the cubes' centres and value gradients."""
        import torch

        dev, grid = self.device, self.grid
        centres = (torch.as_tensor(grid.origin, device=dev)
                   + (cube_origin.double() + 0.5) * grid.voxel_size)
        normals = cube_values.double() @ (2 * self.offsets - 1).double()
        seen = torch.zeros(len(centres), dtype=torch.bool, device=dev)
        for view in self.views:
            R = torch.as_tensor(view.R, device=dev)
            t = torch.as_tensor(view.t, device=dev)
            depth = torch.as_tensor(view.depth, device=dev).flatten()
            voting = torch.as_tensor(view.weight, device=dev).flatten() > 0
            h, w = view.depth.shape
            cam = cameras.world_to_camera(centres, R, t)
            z = cam[:, 2]
            safe = torch.where(torch.abs(z) > 1e-12, z, 1e-12)
            u, v = cameras.image_positions((cam[:, 0], cam[:, 1], safe), cameras.lens(view.K))
            inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            pix = torch.where(inside, torch.clamp(v, 0, h - 1).long() * w
                              + torch.clamp(u, 0, w - 1).long(), 0)
            d = torch.where(inside, depth[pix].double(), 0.0)
            near = (d > 0) & (torch.abs(d - z) < 1.5 * grid.truncation) & voting[pix]
            eye = -R.T @ t
            seen |= near & (torch.sum(normals * (eye - centres), dim=1) > 0)
        return seen

    def march_tets(self, cube_origin, cube_values):
        """engine.fusion.tets.march_tets: per triangle corner, its edge key and position."""
        import torch

        tet_values = cube_values[:, self.kuhn]  # (n,6,4)
        bits = torch.tensor([1, 2, 4, 8], device=self.device)
        case = ((tet_values < 0).long() * bits).sum(dim=-1)
        ends = self.ends[torch.arange(6, device=self.device), case]  # (n,6,2,3,2)
        cube, tet, slot = torch.nonzero(ends[..., 0, 0] >= 0, as_tuple=True)
        a, b = ends[cube, tet, slot].unbind(-1)  # (T,3)
        va = cube_values[cube[:, None], a]
        vb = cube_values[cube[:, None], b]
        t = (va / (va - vb)).double()[..., None]
        origin = cube_origin[cube]
        pos = origin[:, None, :] + self.offsets[a] + t * (self.offsets[b] - self.offsets[a])
        n = self.blocks * BLOCK + 1
        strides = torch.stack([n[1] * n[2], n[2], torch.ones_like(n[2])])
        # integer matrix products are CPU-only in torch: multiply and sum
        keys = (((origin * strides).sum(-1)[:, None] + (self.lower[a, b] * strides).sum(-1)) * 8
                + self.direction[a, b])
        return keys.flatten(), pos.reshape(-1, 3)


def torch_stack(columns):
    import torch

    return torch.stack(columns, dim=1)


# --------------------------------------------------------------------------------------------
# connected pieces (engine.fusion.pieces.face_components)


def face_components(faces: np.ndarray, num_vertices: int, device) -> np.ndarray:
    """Component label (0..k-1) of every face: union-find with pointer jumping, as numpy's
    (``engine.core.geometry.island_labels``)."""
    import torch

    f = torch.as_tensor(faces, device=device).long()
    parent = torch.arange(num_vertices, device=device)
    a = torch.cat([f[:, 0], f[:, 1]])
    b = torch.cat([f[:, 1], f[:, 2]])
    while True:
        pa, pb = parent[a], parent[b]
        if torch.equal(pa, pb):
            break
        parent.scatter_reduce_(0, torch.maximum(pa, pb), torch.minimum(pa, pb), "amin")
        while True:
            nxt = parent[parent]
            if torch.equal(nxt, parent):
                break
            parent = nxt
    return torch.unique(parent[f[:, 0]], return_inverse=True)[1].cpu().numpy()
