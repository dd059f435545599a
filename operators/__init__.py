"""Operators: thin wrappers over ``api``; each module has one CLASSES tuple."""

from . import drop, import_prediction, install_deps, run, set_scale, watch

_MODULES = (import_prediction, set_scale, watch, run, install_deps, drop)


def register():
    for module in _MODULES:
        module.register()


def unregister():
    for module in reversed(_MODULES):
        module.unregister()
