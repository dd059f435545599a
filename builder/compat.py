"""Where Blender's API differs between the versions we support (4.2 to 5.2): each difference is
decided here, once, on ``bpy.app.version``."""

from __future__ import annotations

import bpy

# 4.4 put an action's F-curves into per-slot channel bags; 5.0 removed ``Action.fcurves``.
SLOTTED_ACTIONS = bpy.app.version >= (4, 4, 0)
# 5.0 made materials and worlds node-based from the start and deprecated ``use_nodes``.
NODES_BY_DEFAULT = bpy.app.version >= (5, 0, 0)


def action_fcurves(obj: bpy.types.Object) -> list:
    """The F-curves that animate ``obj`` (its action's, for its slot on 4.4+)."""
    anim = obj.animation_data
    if anim is None or anim.action is None:
        return []
    if not SLOTTED_ACTIONS:
        return list(anim.action.fcurves)
    from bpy_extras import anim_utils

    channels = anim_utils.action_get_channelbag_for_slot(anim.action, anim.action_slot)
    return [] if channels is None else list(channels.fcurves)


def node_tree_of(owner):
    """A material's or world's node tree, switching nodes on where the version needs it."""
    if not NODES_BY_DEFAULT and not owner.use_nodes:
        owner.use_nodes = True
    return owner.node_tree


def cycles_can_denoise() -> bool:
    """Whether Cycles was built with OpenImageDenoise: distribution builds (Debian's among them)
    may lack it, and Cycles then refuses to render at all with denoising on."""
    try:
        import _cycles
    except ImportError:
        return False
    return bool(getattr(_cycles, "with_openimagedenoise", False))
