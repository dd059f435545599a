"""DA3 Reconstruct: photos and videos to 3D scenes in Blender with Depth Anything 3.

This file only registers. The pieces: ``engine/`` (no Blender: worker, geometry, files),
``builder/`` (numpy arrays to Blender data), ``api.py`` (the Python API the operators call),
``operators/`` and ``panels/`` (thin UI), ``vendor_install.py`` (the worker's environment).
"""

from . import cli, operators, panels, preferences, properties

# Order matters: properties before the operators and panels that read them.
_MODULES = (preferences, properties, operators, panels, cli)


def register():
    for module in _MODULES:
        module.register()


def unregister():
    for module in reversed(_MODULES):
        module.unregister()
