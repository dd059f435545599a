"""Starting and following the worker process from Blender's side (standard library, on
``core.protocol``); no bpy, so plain tests drive it too."""
