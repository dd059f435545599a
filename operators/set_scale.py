"""``da3.set_scale``: give a DA3 result its real size from one known distance."""

import bpy
from bpy.props import FloatProperty

from .. import api
from ..builder.rescale import object_span, result_collection_of, selected_vertex_span


class DA3_OT_set_scale(bpy.types.Operator):
    """Rescale the whole DA3 result so the selected pair (two vertices, an edge or two objects)
    is this far apart"""

    bl_idname = "da3.set_scale"
    bl_label = "Set Real Scale"
    bl_options = {"REGISTER", "UNDO"}

    distance: FloatProperty(name="Real Distance", default=1.0, min=1e-6, subtype="DISTANCE",
                            description="The true distance between the selected pair")

    @classmethod
    def poll(cls, context):
        return bool(context.view_layer.objects.selected)

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        try:
            collection, measured = measure(context)
            factor = api.set_scale(collection, measured, self.distance)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Scaled '{collection.name}' by {factor:.4g}")
        return {"FINISHED"}


def measure(context):
    """(result collection, measured distance) from the edit-mode selection or two objects."""
    if context.mode == "EDIT_MESH":
        obj = context.edit_object
        span, candidates = selected_vertex_span(obj), [obj]
    else:
        # The view layer's selection: context.selected_objects needs a 3D view to exist.
        candidates = list(context.view_layer.objects.selected)
        span = object_span(candidates)
    collection = next(filter(None, map(result_collection_of, candidates)), None)
    if collection is None:
        raise ValueError("the selection is not part of a DA3 result collection")
    return collection, span


def menu_entry(self, _context):
    """Set Real Scale in the object and edit-mesh context menus, where a pair is selected."""
    self.layout.separator()
    self.layout.operator(DA3_OT_set_scale.bl_idname, icon="DRIVER_DISTANCE")


CLASSES = (DA3_OT_set_scale,)
MENUS = (bpy.types.VIEW3D_MT_object_context_menu, bpy.types.VIEW3D_MT_edit_mesh_context_menu)


register_classes, unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    register_classes()
    for menu in MENUS:
        menu.append(menu_entry)


def unregister():
    for menu in MENUS:
        menu.remove(menu_entry)
    unregister_classes()
