"""Panels in the 3D View sidebar (N-panel), tab "DA3"."""

from . import main

_MODULES = (main,)


def register():
    for module in _MODULES:
        module.register()


def unregister():
    for module in reversed(_MODULES):
        module.unregister()
