"""The "DA3" tab in the 3D View sidebar: source, model, quality, build options, progress, and
the last result (its surface's face count).

Drawing lives in plain functions that take a layout, so tests can draw every state (no worker
environment, idle, running, failed) with a recording layout: Blender never draws panels when it
runs as a module.
"""

import os
from pathlib import Path

import bpy

from .. import frame_counts, paths, reconstruct, vendor_install
from ..builder.rescale import SCALE_KEY, result_collection_of
from ..engine.core.presets import get_preset
from ..properties import FUSION_HINTS


class SidebarTab:
    """Where every DA3 panel lives: the 3D View's sidebar, tab "DA3" (class attributes only)."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DA3"


class DA3_PT_main(SidebarTab, bpy.types.Panel):
    bl_idname = "DA3_PT_main"
    bl_label = "DA3 Reconstruct"

    def draw(self, context):
        draw_main(self.layout, context)


class DA3_PT_model(SidebarTab, bpy.types.Panel):
    bl_idname = "DA3_PT_model"
    bl_label = "Model and Quality"
    bl_parent_id = "DA3_PT_main"

    def draw(self, context):
        draw_model(self.layout, context.scene.da3)
        draw_quality(self.layout, context.scene.da3, context)


class DA3_PT_output(SidebarTab, bpy.types.Panel):
    bl_idname = "DA3_PT_output"
    bl_label = "Output"
    bl_parent_id = "DA3_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        draw_build_options(self.layout, context.scene.da3)


class DA3_PT_scale(SidebarTab, bpy.types.Panel):
    bl_idname = "DA3_PT_scale"
    bl_label = "Real Scale"
    bl_parent_id = "DA3_PT_main"

    def draw(self, context):
        draw_scale(self.layout, context)


# -- the main panel ------------------------------------------------------------------------------

def draw_main(layout, context) -> None:
    settings = context.scene.da3
    run = reconstruct.current()
    env_ok = draw_environment(layout)
    error = context.window_manager.da3_job.error
    if run is not None:
        draw_progress(layout, run)
    elif error:
        draw_error(layout, error)
    draw_source(layout, settings, enabled=env_ok and run is None)
    result = last_result(context)
    if result is not None:
        draw_result(layout, result)


def draw_environment(layout) -> bool:
    """Say when the worker environment is missing and offer to install it; True when ready."""
    run = reconstruct.current()
    if run is not None and run.kind == "install":  # its progress: draw_progress, below
        layout.label(text="Installing dependencies", icon="IMPORT")
        return False
    status = worker_status()
    if status.ok:
        return True
    box = layout.box()
    box.label(text=f"Worker environment: {status.summary}", icon="ERROR")
    if bpy.app.online_access:
        box.operator("da3.install_dependencies", icon="IMPORT")
    else:
        box.label(text="Allow Online Access (Preferences > System) to install it", icon="INFO")
    return False


def draw_progress(layout, run) -> None:
    """The running job, read live from ``reconstruct.current()``."""
    box = layout.box()
    box.progress(factor=run.progress(), type="BAR", text=run.status_line())
    row = box.row()
    done, total, unit = run.counts()
    if total > 0:
        row.label(text=f"{done} / {total}{unit}")
    if run.state.eta_s is not None and run.state.eta_s >= 0:
        row.label(text=f"ETA {reconstruct.format_seconds(run.state.eta_s)}", icon="TIME")
    box.operator("da3.cancel_reconstruct", text="Cancel (Esc)", icon="CANCEL")


def draw_error(layout, error: str) -> None:
    box = layout.box()
    box.alert = True
    box.label(text="Last run failed:", icon="ERROR")
    for line in wrap(error, 48):
        box.label(text=line)


def draw_source(layout, settings, enabled: bool) -> None:
    row = layout.row(align=True)
    row.prop(settings, "source", text="")
    browse = row.operator("da3.reconstruct", text="", icon="FILEBROWSER")
    browse.browse = True
    column = layout.column()
    column.enabled = enabled
    column.scale_y = 1.5
    column.operator("da3.reconstruct", text="Reconstruct from images", icon="OUTLINER_OB_POINTCLOUD")


def last_result(context):
    """The DA3 result the active object belongs to, else the newest one in the scene."""
    obj = context.active_object
    found = result_collection_of(obj) if obj is not None and "da3_role" in obj else None
    return found or next((c for c in reversed(context.scene.collection.children) if SCALE_KEY in c),
                         None)


def draw_result(layout, collection) -> None:
    """A result's name, the face count of its surface (after the face budget), its texture and
    how far apart its views stood before and after they were made to agree."""
    box = layout.box()
    box.label(text=collection.name, icon="OUTLINER_COLLECTION")
    for obj in collection.objects:
        if obj.get("da3_role") == "surface" and obj.type == "MESH":
            box.label(text=f"Surface: {len(obj.data.polygons):,} faces", icon="MESH_DATA")
            if "da3_texture" in obj:
                box.label(text=f"Texture: {obj['da3_texture']}", icon="TEXTURE")
            if "da3_views_disagree" in obj:
                box.label(text=f"Views apart: {obj['da3_views_disagree']}", icon="CAMERA_DATA")


# -- model, quality, build options ---------------------------------------------------------------

def draw_model(layout, settings) -> None:
    layout.prop(settings, "model")
    preset = get_preset(settings.model)
    column = layout.column(align=True)
    usage = "commercial use allowed" if preset.commercial_use else "non-commercial only"
    column.label(text=f"{preset.params_m:.0f}M parameters, {preset.download_mb} MiB")
    column.label(text=f"{preset.licence} ({usage})",
                 icon="CHECKMARK" if preset.commercial_use else "ERROR")
    column.label(text="Metric scale (metres)" if preset.metric else "Relative scale",
                 icon="DRIVER_DISTANCE")
    draw_weights(layout, settings, preset)
    layout.prop(settings, "weights")


def draw_weights(layout, settings, preset) -> None:
    if reconstruct.weights_present(preset.name, settings.weights):
        layout.label(text="Weights present", icon="CHECKMARK")
    elif bpy.app.online_access:
        layout.label(text=f"Weights download on first run ({preset.download_mb} MiB)", icon="IMPORT")
        download = layout.operator("da3.download_weights", text=f"Download now ({preset.download_mb} MiB)")
        download.model = preset.name
    else:
        layout.label(text="Weights missing and online access is off", icon="ERROR")
        layout.label(text=f"Put them in {paths.models_dir() / preset.name}")


def draw_quality(layout, settings, context) -> None:
    layout.prop(settings, "process_res")
    layout.label(text="Video frames:")
    row = layout.row(align=True)
    row.prop(settings, "frame_sampling", expand=True)
    layout.prop(settings, "fps" if settings.frame_sampling == "FPS" else "max_frames")
    used = frame_counts.describe(bpy.path.abspath(settings.source), settings.frame_sampling,
                                     settings.max_frames, settings.fps)
    if used:
        layout.label(text=used, icon="SEQUENCE")
    prefs = paths.preferences()
    if prefs is not None:
        layout.prop(prefs, "device")


def draw_build_options(layout, settings) -> None:
    column = layout.column(heading="Build", align=True)
    for name in ("output_points", "output_view_meshes", "output_surface", "output_cameras"):
        column.prop(settings, name)
    row = layout.row()
    row.active = settings.output_points
    row.prop(settings, "max_points")
    layout.prop(settings, "fusion")
    layout.label(text=FUSION_HINTS[settings.fusion], icon="INFO")
    if settings.fusion == "TSDF":
        layout.prop(settings, "object_mode")
    layout.prop(settings, "voxel_size")
    layout.prop(settings, "max_faces")
    row = layout.row(heading="Texture")
    row.prop(settings, "texture", text="")
    sub = row.row()
    sub.active = settings.texture
    sub.prop(settings, "texture_size", text="Size")
    layout.prop(settings, "confidence_percentile")
    layout.prop(settings, "mask_sky")
    layout.prop_search(settings, "crop_object", bpy.data, "objects")


def draw_scale(layout, context) -> None:
    """Set Real Scale, with what to select for it: DA3's relative depth has no real unit."""
    column = layout.column(align=True)
    column.label(text="Select two points of a result:", icon="INFO")
    column.label(text="2 vertices (Edit Mode) or 2 objects")
    layout.operator("da3.set_scale", icon="DRIVER_DISTANCE")


def draw_run_settings(layout, op, context) -> None:
    """The reconstruct operator's dialog (after a drop): what the panel shows, on the operator.

    In the file browser's sidebar the chosen files are the source, so the field is left out.
    """
    space = getattr(context, "space_data", None)
    if space is None or space.type != "FILE_BROWSER":
        layout.prop(op, "source")
    layout.prop(op, "model")
    layout.prop(op, "process_res")
    row = layout.row(align=True)
    row.prop(op, "frame_sampling", expand=True)
    layout.prop(op, "fps" if op.frame_sampling == "FPS" else "max_frames")
    layout.prop(op, "device")
    draw_build_options(layout, op)


# -- helpers -------------------------------------------------------------------------------------

_status_cache: dict = {}


def worker_status() -> vendor_install.EnvStatus:
    """The worker environment's status, checked again only when its interpreter changes."""
    python = paths.worker_python()
    key = (str(python), _mtime(python), reconstruct.environment_generation())
    if _status_cache.get("key") != key:
        _status_cache.update(key=key, status=vendor_install.env_status(python))
    return _status_cache["status"]


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def wrap(text: str, width: int) -> list[str]:
    """Split a long one-line message into label-sized pieces at spaces."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


CLASSES = (DA3_PT_main, DA3_PT_model, DA3_PT_output, DA3_PT_scale)


register_classes, unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    register_classes()


def unregister():
    _status_cache.clear()
    unregister_classes()
