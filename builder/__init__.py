"""numpy arrays -> Blender data: the bpy side of an import.

``result.build_result`` builds one prediction into a new collection; the other modules are its
parts (meshes, materials, surface fusion, cameras) and ``rescale`` is what ``da3.set_scale`` uses.
Everything bulk goes through ``foreach_set`` on contiguous arrays of the exact dtype.
"""
