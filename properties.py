"""User settings (one PropertyGroup on the Scene) and job state (on the WindowManager).

The build options are declared once in ``BuildOptionProps`` and shared by the settings, the
import operator and the reconstruct operator, so every place uses the same names and defaults
as ``engine.core.options.BuildOptions``.
"""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .engine.core.options import (
    FPS,
    MAX_FRAMES,
    MAX_TEXTURE_SIZE,
    MIN_TEXTURE_SIZE,
    PROCESS_RES,
    BuildOptions,
    RunOptions,
)
from .engine.core.presets import PRESETS

_DEFAULTS = BuildOptions()
_RUN_DEFAULTS = RunOptions()

FUSION_ITEMS = (
    ("TSDF", "TSDF", "Fuse all views into one signed-distance volume: one consistent surface, "
     "floaters carved away, fewer holes (best quality)"),
    ("REMESH", "Remesh", "Join the per-view surfaces and voxel-remesh them in place (faster, "
     "keeps whatever each view saw)"),
)
# One line the panel shows under the choice, so users know why it is the default.
FUSION_HINTS = {
    "TSDF": "TSDF: all views vote on one surface; cleanest result",
    "REMESH": "Remesh: per-view surfaces joined; faster, noisier",
}

# Enum items shared by the settings, the preferences and the operators.
MODEL_ITEMS = [(p.name, p.name, p.label) for p in PRESETS.values()]
DEVICE_ITEMS = (
    ("AUTO", "Auto", "CUDA if present, else Apple MPS, else CPU"),
    ("CUDA", "CUDA", "NVIDIA GPU"),
    ("CPU", "CPU", "Processor only (slow for large models)"),
    ("MPS", "Apple MPS", "Apple silicon GPU"),
)

# How frames are taken from a video (the panel and the reconstruct operator share these).
SAMPLING_ITEMS = (
    ("COUNT", "Frames", "Take this many frames from the whole video (the sharpest of each stretch)"),
    ("FPS", "Per Second", "Take this many frames per second of video"),
    ("MOTION", "By Motion", "Keep a frame once the camera has moved enough since the last kept "
     "one (parallax); blurred and repeated frames are dropped; at most Frames"),
)


class BuildOptionProps:
    """Mixin: the shared build options as Blender properties."""

    output_points: BoolProperty(name="Points", default=_DEFAULTS.output_points,
                                description="A coloured point cloud of all views")
    max_points: IntProperty(
        name="Max Points", default=_DEFAULTS.max_points, min=0, soft_max=20_000_000,
        description="Thin the point cloud evenly to at most this many points (a lighter viewport "
        "and .blend); 0: every kept pixel")
    output_view_meshes: BoolProperty(name="View Meshes", default=_DEFAULTS.output_view_meshes,
                                     description="One triangulated surface per view")
    output_surface: BoolProperty(name="Surface", default=_DEFAULTS.output_surface,
                                 description="One fused, remeshed surface of all views")
    output_cameras: BoolProperty(name="Cameras", default=_DEFAULTS.output_cameras,
                                 description="One camera per view, with the frame as background")
    fusion: EnumProperty(name="Fusion", items=FUSION_ITEMS, default=_DEFAULTS.fusion,
                         description="How the views become one surface")
    voxel_size: FloatProperty(name="Voxel Size", default=_DEFAULTS.voxel_size, min=0.0,
                              soft_max=1.0, precision=4, subtype="DISTANCE",
                              description="Detail of the surface; 0 picks it from the scene's size")
    confidence_percentile: FloatProperty(
        name="Confidence", default=_DEFAULTS.confidence_percentile, min=0.0, max=100.0,
        subtype="PERCENTAGE",
        description="Drop the least confident pixels: this percentile of the confidence "
        "(clamped like DA3's exporter)")
    mask_sky: BoolProperty(name="Mask Sky", default=_DEFAULTS.mask_sky,
                           description="Leave out pixels the model marks as sky")
    crop_object: StringProperty(name="Crop Object", default=_DEFAULTS.crop_object,
                                description="Keep only what lies inside this object's bounds")
    object_mode: BoolProperty(
        name="Isolate Object", default=_DEFAULTS.object_mode,
        description="TSDF: the photos circle one object; keep it alone and closed (drops the "
        "floor, background and loose bits)")
    max_faces: IntProperty(
        name="Max Faces", default=_DEFAULTS.max_faces, min=0, soft_max=2_000_000,
        description="Bring the surface down to at most this many faces (a closed one through "
        "Blender's voxel remesher for even quads, an open one through Decimate); 0: no limit")
    texture: BoolProperty(
        name="Texture", default=_DEFAULTS.texture,
        description="Bake a colour texture from the photos onto the surface (UV-unwrapped, packed "
        "into the .blend); off: the surface keeps vertex colours only")
    texture_size: IntProperty(
        name="Texture Size", default=_DEFAULTS.texture_size, min=0, max=MAX_TEXTURE_SIZE,
        soft_max=8192, subtype="PIXEL",
        description=f"Width and height of the texture; 0 picks it from the photos' detail "
        f"({MIN_TEXTURE_SIZE}-{MAX_TEXTURE_SIZE} when set)")
    # No methods here: Blender 4.2 crashes at exit after a class whose mixin has both
    # annotations and methods was registered (build_options below is a function for that).


class RunSettingProps:
    """Mixin: how the model sees the input, shared by the settings and the reconstruct operator
    (defaults from ``engine.core.options.RunOptions``, bounds from its ``RUN_SETTINGS``; the
    device is the preferences' or the operator's own)."""

    model: EnumProperty(name="Model", items=MODEL_ITEMS, default=_RUN_DEFAULTS.model)
    weights: StringProperty(name="Weights", subtype="DIR_PATH", default=_RUN_DEFAULTS.weights,
                            description="Folder with config.json and model.safetensors; "
                            "empty uses the models folder")
    process_res: IntProperty(name="Resolution", default=_RUN_DEFAULTS.process_res, min=int(PROCESS_RES.min),
                             soft_min=int(PROCESS_RES.soft_min), max=int(PROCESS_RES.max), step=14,
                             description="Longest side the model sees, in pixels (DA3 default 504)")
    frame_sampling: EnumProperty(name="Sampling", items=SAMPLING_ITEMS,
                                 default=_RUN_DEFAULTS.sampling.upper())
    max_frames: IntProperty(name="Frames", default=_RUN_DEFAULTS.max_frames, min=int(MAX_FRAMES.min),
                            max=int(MAX_FRAMES.max), description="Video: how many frames to use")
    fps: FloatProperty(name="FPS", default=FPS.default, min=FPS.min, max=FPS.max,
                       description="Video: how many frames per second of video to use")


def build_options(props) -> BuildOptions:
    """The BuildOptions that ``props`` (settings or an operator with BuildOptionProps) holds."""
    return BuildOptions.from_mapping(props)


def run_options(props, device: str = "") -> RunOptions:
    """The RunOptions that ``props`` (settings or an operator with RunSettingProps) holds, for
    ``device`` ("" = the preferences')."""
    weights = bpy.path.abspath(props.weights) if props.weights else ""
    return RunOptions.sampled(props.frame_sampling, props.max_frames, props.fps, model=props.model,
                              weights=weights, device=device, process_res=props.process_res)


class DA3Settings(BuildOptionProps, RunSettingProps, bpy.types.PropertyGroup):
    """What the panel shows; saved with the .blend file."""

    source: StringProperty(name="Source", subtype="FILE_PATH",
                           description="A folder of images, an image or a video file")


class DA3JobState(bpy.types.PropertyGroup):
    """How the last run ended, for the panel; not saved in the .blend (lives on WindowManager).

    The running job's progress is not copied here: every write to a property of an ID sends a
    window-wide redraw notifier, and redrawing the 3D viewport under software OpenGL on every
    tick blocked Blender's UI for up to half a second. The panel reads the live run instead.
    """

    error: StringProperty(default="")


CLASSES = (DA3Settings, DA3JobState)


register_classes, unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    register_classes()
    bpy.types.Scene.da3 = PointerProperty(type=DA3Settings)
    bpy.types.WindowManager.da3_job = PointerProperty(type=DA3JobState)


def unregister():
    del bpy.types.WindowManager.da3_job
    del bpy.types.Scene.da3
    unregister_classes()
