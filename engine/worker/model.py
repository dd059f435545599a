"""Build the DA3 network from its own config and run it, without ``depth_anything_3.api``.

``depth_anything_3.api`` imports torchvision, moviepy, pycolmap, trimesh and open3d at module
level; the network itself needs none of them. So the network is built from
``depth_anything_3.cfg`` + ``registry`` and the pre/post-processing lives in ``preprocess.py``
and here, matching ``InputProcessor``/``OutputProcessor`` of depth-anything-3 0.1.1.

Speed: the DualDPT head computes an auxiliary ray branch that the default camera-decoder path
deletes unread; ``skip_ray_branch`` replaces the head's inner forward by the main branch alone
(depth and conf bit-identical, about half the head time). On CPU the network runs in fp32: the
library's own ``forward`` would pick fp16 autocast there, which is 2-3x slower.

Torch is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np

from .preprocess import DEFAULT_FOV_X_DEG, NORMALISED, default_intrinsics

METRIC_FOCAL_DIVISOR = 300.0  # DA3 metric depth: metres = focal_px * output / 300
SKY_THRESHOLD = 0.5  # OutputProcessor's ``sky >= 0.5`` (the network itself masks at 0.3)


@dataclass
class Views:
    """The network's answer for a batch, as numpy arrays in processed pixels."""

    depth: np.ndarray  # (N,H,W) float32
    intrinsics: np.ndarray  # (N,3,3)
    extrinsics: np.ndarray | None = None  # (N,3,4) world-to-camera
    conf: np.ndarray | None = None  # (N,H,W)
    sky: np.ndarray | None = None  # (N,H,W) bool
    is_metric: bool = False


# --------------------------------------------------------------------------- device

def pick_device(requested: str = "auto"):
    """CUDA > MPS > CPU for 'auto'; a RuntimeError naming the problem for an absent device."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device 'cuda' is not available to this worker (torch {torch.__version__}"
                           f"{'' if torch.version.cuda else ', a build without CUDA'}); choose Auto or CPU")
    if requested == "mps" and not has_mps:
        raise RuntimeError("device 'mps' is not available on this machine; choose Auto or CPU")
    return torch.device(requested)


def autocast_dtype(device):
    """bf16 on CUDA where supported (fp16 otherwise), fp16 on MPS, None (fp32) on CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- network

INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                  "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_",
                  "orthogonal_")


def build_network(network: str, initialise: bool = True):
    """The bare network (``DepthAnything3Net`` or the nested one) in eval mode.

    ``initialise=False`` skips the random initialisation (5 s for da3-large on a CPU, most of
    a giant's load time): only for a network whose every tensor is loaded next, strictly.
    """
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    if network not in MODEL_REGISTRY:
        raise ValueError(f"depth-anything-3 has no network '{network}' "
                         f"(it knows {', '.join(MODEL_REGISTRY)})")
    config = load_config(MODEL_REGISTRY[network])
    if initialise:
        return create_object(config).eval()
    with _initialisation_skipped():
        return create_object(config).eval()


class _initialisation_skipped:
    """torch.nn.init functions as no-ops for the duration (parameters stay torch.empty)."""

    def __enter__(self):
        import torch

        self.saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, _leave_as_is)

    def __exit__(self, *exc):
        import torch

        for name, function in self.saved.items():
            setattr(torch.nn.init, name, function)


def _leave_as_is(tensor, *args, **kwargs):
    return tensor


def skip_ray_branch(net) -> int:
    """Make every DualDPT head compute depth and conf only; returns how many were changed."""
    from depth_anything_3.model.dualdpt import DualDPT

    heads = [m for m in net.modules() if isinstance(m, DualDPT)]
    for head in heads:
        head._forward_impl = types.MethodType(_depth_only_forward_impl, head)
    return len(heads)


def _depth_only_forward_impl(self, feats, H, W, patch_start_idx):
    """``DualDPT._forward_impl`` (depth-anything-3 0.1.1) without the aux (ray) branch."""
    B, _, C = feats[0].shape
    ph, pw = H // self.patch_size, W // self.patch_size
    resized = []
    for stage_idx, take_idx in enumerate(self.intermediate_layer_idx):
        x = self.norm(feats[take_idx][:, patch_start_idx:])
        x = x.permute(0, 2, 1).reshape(B, C, ph, pw)
        x = self.projects[stage_idx](x)
        if self.pos_embed:
            x = self._add_pos_embed(x, W, H)
        resized.append(self.resize_layers[stage_idx](x))
    fused = _fuse_main(self.scratch, resized)
    return _main_head(self, fused, ph, pw, H, W)


def _fuse_main(scratch, feats):
    l1, l2, l3, l4 = (scratch.layer1_rn(feats[0]), scratch.layer2_rn(feats[1]),
                      scratch.layer3_rn(feats[2]), scratch.layer4_rn(feats[3]))
    out = scratch.refinenet4(l4, size=l3.shape[2:])
    out = scratch.refinenet3(out, l3, size=l2.shape[2:])
    out = scratch.refinenet2(out, l2, size=l1.shape[2:])
    out = scratch.refinenet1(out, l1)
    return scratch.output_conv1(out)


def _main_head(self, fused, ph, pw, H, W):
    from depth_anything_3.model.utils.head_utils import custom_interpolate

    h_out = int(ph * self.patch_size / self.down_ratio)
    w_out = int(pw * self.patch_size / self.down_ratio)
    fused = custom_interpolate(fused, (h_out, w_out), mode="bilinear", align_corners=True)
    if self.pos_embed:
        fused = self._add_pos_embed(fused, W, H)
    fmap = self.scratch.output_conv2(fused).permute(0, 2, 3, 1)
    return {
        self.head_main: self._apply_activation_single(fmap[..., :-1], self.activation).squeeze(-1),
        f"{self.head_main}_conf": self._apply_activation_single(fmap[..., -1], self.conf_activation),
    }


# --------------------------------------------------------------------------- running

def progress_steps(net) -> list:
    """Modules that run once each per forward pass: the transformer blocks, then the heads."""
    named = list(net.named_modules())
    blocks = [m for name, m in named if name.rsplit(".", 2)[-2:-1] == ["blocks"]]
    heads = [m for name, m in named if name.split(".")[-1] == "head"]
    return blocks + heads


class reporting_steps:
    """Calls ``callback(done, total)`` after each block and head of a forward pass.

    Blocks take similar time, so the count gives an honest ETA inside one long pass, and the
    callback may raise (a cancel) to stop the pass between blocks.
    """

    def __init__(self, net, callback):
        self.steps = progress_steps(net)
        self.callback = callback
        self.done = 0
        self.handles = []

    @property
    def total(self) -> int:
        return len(self.steps)

    def _after_step(self, module, args, output):
        self.done += 1
        self.callback(min(self.done, self.total), self.total)

    def __enter__(self):
        self.done = 0
        self.handles = [m.register_forward_hook(self._after_step) for m in self.steps]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def network_input(rgb: np.ndarray, device):
    """(N,H,W,3) uint8 views (``preprocess.Batch.rgb``) -> the network's (1,N,3,H,W) float32 input
    on ``device``, normalised there.

    The views travel as uint8, a quarter of the float32 bytes, and normalising is a gather from
    ``preprocess.NORMALISED`` (no arithmetic on the device), so the input equals
    ``preprocess.normalise`` bit for bit on every device.
    """
    import torch

    table = torch.from_numpy(NORMALISED).to(device).reshape(-1)  # channel c's values at 256 c + v
    views = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    index = views.permute(0, 3, 1, 2).to(torch.int32, memory_format=torch.contiguous_format)
    index += torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=device).reshape(1, 3, 1, 1)
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)[None]


def forward(net, rgb: np.ndarray, device, dtype=None) -> dict:
    """One raw network call on (N,H,W,3) uint8 views seen together (normalised on ``device``:
    ``network_input``); outputs on the CPU.

    Seeded so that the sky-depth quantile (sampled when a view has >100k non-sky pixels) is
    reproducible.
    """
    import torch

    x = network_input(rgb, device)
    torch.manual_seed(0)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype,
                                                enabled=dtype is not None):
        out = net(x, None, None, export_feat_layers=[], infer_gs=False, use_ray_pose=False,
                  ref_view_strategy="saddle_balanced")
    return {k: (v.float().cpu().numpy() if torch.is_tensor(v) else v)
            for k, v in out.items() if k != "aux"}


def to_views(raw: dict, metric_raw_depth: bool = False,
             fov_x_deg: float = DEFAULT_FOV_X_DEG) -> Views:
    """Network outputs (batch of one) -> Views, as DA3's OutputProcessor does.

    Views without a predicted camera (monocular presets) get pinhole intrinsics with
    ``fov_x_deg``. ``metric_raw_depth``: da3metric-large returns focal-normalised depth; it
    becomes metres with that focal length (the library leaves this step to the caller).
    """
    depth = raw["depth"][0]
    if depth.ndim == 4:  # (N,H,W,1) from a one-channel head
        depth = depth[..., 0]
    n, h, w = depth.shape
    intrinsics = (raw["intrinsics"][0] if "intrinsics" in raw
                  else default_intrinsics(n, h, w, fov_x_deg))
    if metric_raw_depth:
        focal = (intrinsics[:, 0, 0] + intrinsics[:, 1, 1]) / 2
        depth = depth * (focal[:, None, None] / METRIC_FOCAL_DIVISOR)
    extrinsics = raw["extrinsics"][0] if "extrinsics" in raw else None
    conf = raw["depth_conf"][0] if "depth_conf" in raw else None
    sky = raw["sky"][0] >= SKY_THRESHOLD if "sky" in raw else None
    is_metric = bool(raw.get("is_metric", 0)) or metric_raw_depth
    return Views(depth.astype(np.float32, copy=False), intrinsics.astype(np.float64),
                 None if extrinsics is None else extrinsics[:, :3, :4].astype(np.float64),
                 None if conf is None else conf.astype(np.float32, copy=False), sky, is_metric)


def identity_extrinsics(n: int) -> np.ndarray:
    return np.tile(np.eye(4)[:3], (n, 1, 1))


def concat_views(parts: list[Views]) -> Views:
    """Views predicted one at a time (monocular presets) as one set."""
    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return Views(cat("depth"), cat("intrinsics"), cat("extrinsics"), cat("conf"), cat("sky"),
                 all(p.is_metric for p in parts))


