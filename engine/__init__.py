"""The part of DA3 Reconstruct that never touches Blender, in levels that import downwards only
(docs/architecture.md; tests/test_architecture.py keeps it so):

- ``core``: numpy and the standard library; the prediction file, the worker protocol, every
  setting and its bounds, model presets, sources, camera and mesh arithmetic.
- ``fusion``: TSDF fusion of the views into one surface (numpy; ``tsdf_torch`` swaps in torch
  stages, in the worker only).
- ``texture``: the colour texture baked from the photos (numpy).
- ``host``: starting and following the worker process from Blender (standard library).
- ``worker``: the worker process itself (``python -m engine.worker``), with torch, DA3 and OpenCV.

Blender's process imports ``core``, ``fusion``, ``texture`` and ``host``, never ``worker``.
"""
