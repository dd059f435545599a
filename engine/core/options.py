"""Every setting users see, defined once: how the model sees the input (``RunOptions``, with
its number settings' bounds in ``RUN_SETTINGS``) and how the result is built (``BuildOptions``).

The names here are the names users see everywhere (``bpy.ops.da3.import_prediction(fusion=...)``,
the panel, the command line), and the operator properties, the panel, the CLI, the job file and
the checks before a run all take their defaults, bounds and validation from here.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, fields

from .presets import DEFAULT_MODEL, get_preset

# TSDF first: it is the default (clearly better F-score and fewer holes on objects and rooms;
# see benchmarks/bench_fusion.py), REMESH the faster, simpler alternative.
FUSION_MODES = ("TSDF", "REMESH")
MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE = 64, 16384
# Threads an import's numpy work (the fusion beside the rest, the bake) may take in Blender's
# process: every core (up to 8: past that memory bandwidth, not cores, limits numpy) where
# those threads run below Blender's own priority (Linux, Windows: ``core.threads``), so the
# UI still gets the CPU first; elsewhere all cores but one, which stays the UI's.
_CORES = os.cpu_count() or 1
_PRIORITY_LOWERED = sys.platform.startswith("linux") or sys.platform == "win32"
BACKGROUND_THREADS = min(8, _CORES if _PRIORITY_LOWERED else max(1, _CORES - 1))


@dataclass(frozen=True)
class Bounds:
    """A number setting's default and limits; ``soft_min`` is where the UI's slider starts."""

    default: float
    min: float
    max: float
    soft_min: float | None = None

    def problem(self, label: str, value: float) -> str:
        """One line when ``value`` is out of bounds, else ""."""
        if self.min <= value <= self.max:
            return ""
        return f"{label} must be between {self.min:g} and {self.max:g}, not {value:g}"


# The run settings (how the model sees the input): the processing resolution is a multiple of
# DA3's 14-pixel patch (below 140 only tests go); a video gives this many frames, or this many
# per second.
PROCESS_RES = Bounds(default=504, min=14, max=2016, soft_min=140)
MAX_FRAMES = Bounds(default=32, min=1, max=5000)
FPS = Bounds(default=2.0, min=0.01, max=120.0)
RUN_SETTINGS = {"process_res": PROCESS_RES, "max_frames": MAX_FRAMES, "fps": FPS}
DEVICES = ("auto", "cuda", "mps", "cpu")
# How a video's frames are chosen: "count" and "fps" cut it into windows (``window_count``) and
# keep each window's sharpest frame; "motion" keeps frames by parallax (engine.worker.keyframes).
SAMPLINGS = ("count", "fps", "motion")


class _Named:
    """The dataclass's field names, and an instance from anything that has them."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values):
        """Options from any mapping or object with these names (a PropertyGroup, kwargs, JSON);
        names it does not have keep their defaults, other keys are ignored."""
        get = values.get if hasattr(values, "get") and not hasattr(values, "bl_rna") else None
        picked = {}
        for name in cls.names():
            if get is not None:
                if name in values:
                    picked[name] = get(name)
            elif hasattr(values, name):
                picked[name] = getattr(values, name)
        return cls(**picked)


@dataclass(frozen=True)
class RunOptions(_Named):
    """How the model sees the input: the settings of a run, from the panel, the reconstruct
    operator, the command line or a script to the worker's job file.

    Not checked on creation (a panel holds half-typed values); ``problem()`` says what is wrong.
    """

    model: str = DEFAULT_MODEL
    weights: str = ""  # a folder with config.json + model.safetensors; "" = the models folder
    device: str = ""  # one of DEVICES; "" = the preferences' device in Blender, else "auto"
    process_res: int = int(PROCESS_RES.default)  # the longest side the model sees, in pixels
    max_frames: int = int(MAX_FRAMES.default)  # video: frames to keep (0 = use fps)
    fps: float = 0.0  # video: frames per second to keep (0 = use max_frames)
    sampling: str = "count"  # video: one of SAMPLINGS
    chunk_size: int = 0  # views per forward pass; 0 = all that fit (measured above 16 views)
    chunk_overlap: int = 0  # views shared by consecutive chunks; 0 = half a chunk

    @classmethod
    def sampled(cls, frame_sampling: str, max_frames: int, fps: float, **rest) -> "RunOptions":
        """Options for the panel's frame sampling choice ('COUNT', 'FPS' or 'MOTION'), which
        shows one of the two numbers: the other is 0, as the worker reads it."""
        mode = frame_sampling.lower()
        if mode not in SAMPLINGS:
            raise ValueError(f"frame sampling must be one of {', '.join(s.upper() for s in SAMPLINGS)}")
        if mode == "fps":
            return cls(sampling=mode, max_frames=0, fps=fps, **rest)
        return cls(sampling=mode, max_frames=max_frames, fps=0.0, **rest)

    def problem(self) -> str:
        """One line saying what is wrong with these settings, else ""."""
        try:
            get_preset(self.model)
        except ValueError as exc:
            return str(exc)
        if self.device and self.device not in DEVICES:
            return f"device must be one of {', '.join(DEVICES)}, not '{self.device}'"
        if self.sampling not in SAMPLINGS:
            return f"sampling must be one of {', '.join(SAMPLINGS)}, not '{self.sampling}'"
        if self.sampling != "motion" and self.max_frames <= 0 and self.fps <= 0:
            return "give a number of frames or frames per second above zero"
        if self.chunk_size < 0 or self.chunk_overlap < 0:
            return "chunk_size and chunk_overlap must be 0 (automatic) or positive"
        return (PROCESS_RES.problem("the processing resolution", self.process_res)
                or (self.max_frames and MAX_FRAMES.problem("the number of frames", self.max_frames))
                or (self.fps and FPS.problem("frames per second", self.fps)) or "")


def window_count(total: int, video_fps: float, max_frames: int, fps: float) -> int:
    """How many frames of a ``total``-frame video a run keeps with count or fps sampling.

    ``fps`` > 0 asks for that many per second of video (capped by ``max_frames`` when it is
    also set); otherwise ``max_frames``; both 0 keeps every frame. Shared by the worker (which
    cuts the video into this many windows) and the panel (which shows the count up front).
    """
    if total <= 0:
        return 0
    count = total
    if fps > 0 and video_fps > 0:
        count = math.ceil(total / video_fps * fps)
        if max_frames > 0:
            count = min(count, max_frames)
    elif max_frames > 0:
        count = max_frames
    return max(1, min(count, total))


@dataclass
class BuildOptions(_Named):
    output_points: bool = True
    # the point cloud's budget: above it the kept pixels are thinned evenly (DA3's GLB export
    # keeps 1 M too); 0: every kept pixel
    max_points: int = 1_000_000
    output_view_meshes: bool = False
    output_surface: bool = True
    output_cameras: bool = True
    fusion: str = "TSDF"
    voxel_size: float = 0.0  # 0: automatic from the scene's size
    confidence_percentile: float = 40.0  # like DA3's exporter: clamp(1.05, P40, P90)
    mask_sky: bool = True
    crop_object: str = ""  # name of a Blender object whose bounds crop the result
    object_mode: bool = False  # TSDF: one object seen from around it -> one closed object
    max_faces: int = 300_000  # the surface's face budget (Blender's remesher/Decimate); 0: no limit
    texture: bool = True  # bake a colour texture from the photos onto the surface (else vertex colours)
    texture_size: int = 0  # its width and height in texels; 0: as sharp as the photos (512-2048)

    def __post_init__(self):
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {', '.join(FUSION_MODES)}, not '{self.fusion}'")
        if self.voxel_size < 0:
            raise ValueError("voxel_size must be 0 (automatic) or positive")
        if not 0 <= self.confidence_percentile <= 100:
            raise ValueError("confidence_percentile must be between 0 and 100")
        if self.max_faces < 0:
            raise ValueError(f"max_faces must be 0 (no limit) or a number of faces, not {self.max_faces}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be 0 (no limit) or a number of points, not {self.max_points}")
        if self.texture_size and not MIN_TEXTURE_SIZE <= self.texture_size <= MAX_TEXTURE_SIZE:
            raise ValueError(f"texture_size must be 0 (automatic) or {MIN_TEXTURE_SIZE}-{MAX_TEXTURE_SIZE} "
                             f"texels, not {self.texture_size}")


def fusion_settings(options: BuildOptions) -> dict:
    """The build settings a fused surface depends on, named as ``engine.fusion.base.TSDFOptions``
    names them: the worker fuses with these, and the importer reuses its surface only when
    they match. (A crop object or a voxel size of the user's own are fused in Blender.)

    An object's surface is closed, so the importer voxel-remeshes it to the face budget; fusion
    then only has to stay within what that remesh needs, in its own triangles."""
    fused_faces = options.max_faces
    if options.object_mode and fused_faces:
        fused_faces = max(fused_faces, min(TRIANGLES_PER_REMESHED_FACE * fused_faces, REMESH_INPUT))
    return {"object_mode": options.object_mode, "mask_sky": options.mask_sky,
            "max_faces": fused_faces}


# Marching tetrahedra cut each voxel the surface crosses into ~6 triangles where the voxel
# remesher makes one quad: 270 k fused triangles remeshed at the same voxel gave 44 k faces
# (the checkered four-part object). A budget counted in fused triangles left objects at a
# sixth of it (3.3 k faces for 20 k).
TRIANGLES_PER_REMESHED_FACE = 6
# ...but no more than this many triangles, or the budget itself: the remesher runs on Blender's
# main thread, for longer the more it is given (114 k faces from 270 k triangles: 3.2 s on the
# 2-core machine; from 689 k: 6.6 s).
REMESH_INPUT = 300_000

