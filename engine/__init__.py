"""The part of DA3 Reconstruct that never touches Blender.

It runs in two places: inside the worker process (with torch, DA3 and OpenCV) and inside
Blender or plain tests (numpy only). Modules that need torch import it inside their functions,
so importing any module here is cheap and safe without torch.
"""
