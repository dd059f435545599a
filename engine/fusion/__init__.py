"""TSDF fusion of the views into one surface: views made to agree (``consistency``), the
volume and its mesh (``tsdf``), clean-up (``mesh_cleanup``). numpy, on ``core``; ``tsdf_torch``
runs the same stages on a torch device and is imported only in the worker."""
