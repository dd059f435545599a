"""The worker process, run by the worker environment's Python (torch, DA3, OpenCV): images or a
video in, a prediction file out. ``python -m engine.worker`` (``__main__``) names its commands.
Never imported by Blender's process."""
