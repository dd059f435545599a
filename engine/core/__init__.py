"""What every other part builds on: numpy and the standard library only, no engine module
outside ``core``. Imported by Blender's process and the worker alike."""
