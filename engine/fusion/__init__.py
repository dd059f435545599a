"""TSDF fusion of the views into one surface (numpy, on ``core``). ``tsdf`` runs the stages,
each in one module, all on ``base``'s types: ``views`` (the views' pixel weights), ``grid`` and
``floor`` (where to fuse, the floor to cut), ``consistency`` (views made to agree),
``integrate`` (blocks allocated, votes, voxel values), ``pockets`` (unseen space
inside the object or open beside it), ``tets`` (marching tetrahedra),
``pieces`` (colours, the pieces kept), ``mesh_cleanup`` (holes, smoothing). ``tsdf_torch``
runs the array-heavy stages on a torch device and is imported only in the worker."""
