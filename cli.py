"""The headless command line: ``blender -c da3_reconstruct INPUT -o OUT.blend``."""

_handle = None


def register():
    pass


def unregister():
    pass
