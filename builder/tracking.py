"""Leave nothing behind: undo every datablock and setting an import made when it fails."""

from __future__ import annotations

import bpy

# Every kind of datablock an import can create, directly or through an operator.
TRACKED = ("collections", "objects", "meshes", "materials", "cameras", "images", "node_groups",
           "actions", "pointclouds", "volumes")


class NewDataGuard:
    """Context manager: on an exception, remove the datablocks created inside it and restore the
    render resolution (the one existing setting an import changes), then let the exception go on.
    """

    def __init__(self, scene: bpy.types.Scene):
        self.scene = scene

    def __enter__(self):
        self.before = {kind: _pointers(kind) for kind in TRACKED}
        render = self.scene.render
        self.resolution = (render.resolution_x, render.resolution_y)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.remove_new()
            self.scene.render.resolution_x, self.scene.render.resolution_y = self.resolution
        return False

    def new_ids(self) -> list[bpy.types.ID]:
        return [block for kind in TRACKED for block in getattr(bpy.data, kind)
                if block.as_pointer() not in self.before[kind]]

    def remove_new(self) -> None:
        bpy.data.batch_remove(self.new_ids())


def _pointers(kind: str) -> set[int]:
    return {block.as_pointer() for block in getattr(bpy.data, kind)}
