"""What every stage of TSDF fusion shares: the options, the fused mesh, a view ready to
integrate, the grid of voxel blocks and the volume of votes (numpy only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .mesh_cleanup import (
    MAX_HOLE_EDGES,
    NORMAL_FILTER_ITERATIONS,
    SMOOTH_ITERATIONS,
    UNSEEN_SMOOTH_ITERATIONS,
)
from .outlines import OUTLINE_CYCLES

BLOCK = 8  # voxels per block side
BLOCK_VOXELS = BLOCK ** 3
# bytes per allocated voxel: tsdf sum, weight, colour sum (3), colour weight (float32 each)
BYTES_PER_VOXEL = 24
Progress = Callable[[float, str], None]


@dataclass
class TSDFOptions:
    """What the fusion can be told; every default is automatic from the scene.

    voxel_size: 0 chooses the longest side of the fused region / ``resolution``.
    truncation: 0 chooses ``truncation_voxels`` voxels, or ``truncation_depth`` times the
        median depth (object mode: the object's distance) when that is more: DA3's depth
        error is relative (2-3% of the depth), and a band narrower than the disagreement
        between views tears the surface.
    denoise_radius: each view's depth is averaged over this many pixels either side, along rows
        and columns, among the neighbours of about the same depth (0: as DA3 gave it; see
        ``engine.fusion.views.denoised_depth``).
    confidence_percentile: DA3's exporter rule, the one definition that points and REMESH
        use (``geometry.confident_pixels``): pixels under clamp(1.05, P_pct, P90) of the
        confidence cast no surface vote; those above are weighed by confidence. They still
        carve free space in front of them: a ray that reached the far background, or a flying
        pixel between two surfaces, passed through empty space either way. The default is
        lower than the exporter's P40 because the votes of many views are averaged: P40
        costs the room scene 5 points of F-score in holes (0.92 against 0.98), while the
        floor of 1.05 alone drops DA3's background (confidence 1.0).
    object_mode: isolate one object photographed from around it (see ``engine.fusion.tsdf``).
    consistent_views: correct each view's smooth depth error and pose so that the views
        agree, and silence pixels that other views see through (``engine.fusion.consistency``).
    outline_cycles: object mode, with ``consistent_views``: cycles of depth correction and
        of camera moves that make the object's outlines agree, before the depth is corrected
        for the moved cameras (0: cameras as given; ``engine.fusion.outlines``). Under the hard
        errors of bench_fusion (poses off by 0.5 degrees and 1% of the scene) 2 cycles keep
        97% of the chair's legs instead of 65-78%; one cycle keeps 90-94%.
    max_faces: 0 for no limit, else the surface is fused with voxels coarse enough for at
        most this many triangles (a probe at twice the voxel foretells the count).
    smooth_iterations: Taubin lambda|mu passes over the mesh (0: none), and
    max_hole_edges: border loops up to this many edges are closed (0: none); see
        ``engine.fusion.mesh_cleanup``.
    unseen_smooth_iterations: object mode: passes more for the surface no view saw (the
        underside of a seat: where the votes behind the seen top ran out, voxel-rough), drawn
        taut where an open pocket meets the solid (``engine.fusion.mesh_cleanup``); on the
        chair of bench_fusion 30 raise its normal consistency 0.85 -> 0.93 (exact depth),
        the F-score unchanged or better.
    normal_filter_iterations: passes of a bilateral filter of the face normals, which the
        vertices then follow (0: none; ``engine.fusion.mesh_cleanup.filter_normals``): the
        lumps a voxel or more wide that Taubin's passes keep, edges kept. On bench_fusion's
        seven scenes (hard errors) 30 raise the normal consistency by 0.004-0.032 (the chair
        0.862 -> 0.885, exact depth 0.928 -> 0.942), F@1% within 0.003; 0.5 s for 280k
        triangles on one thread of this 2-core machine, 0.4 s on two.
    crop_box: (2,3) world min/max corners; restricts fusion to this box (object mode closes
        the surface at its faces).
    free_space_weight: every pixel with a depth, however unconfident (background, flying
        pixels), says at least that the space in front of it is empty, with this weight.
    min_weight: a voxel needs this much evidence (one confident view = 1) to count as
        observed; less leaves it unknown, so the surface has a hole there (scene mode; object
        mode uses ``solid_weight``). Near zero on purpose: DA3's confidence floor already
        decides which pixels vote, and one unknown voxel takes out the 8 cubes around it. At
        0.15, places 1-3 views saw at middling confidence got square holes: the room's floor
        around the box and its top, 5930 boundary edges, F 0.980 (a view left out: 6328,
        0.967); at 0.01, 4216 and 0.982 (4736, 0.978), precision 0.978 -> 0.971 as more of
        the weakly seen ceiling stays. 0.05 down to 1e-6 measure alike.
    solid_weight: object mode: a voxel with less evidence than this counts as solid (no
        view could see into it; a stray vote through the object must not open a bubble).
    keep_largest: keep only the largest connected piece (off by default: object mode keeps
        every piece the views look at, see ``engine.fusion.pieces.kept_pieces``).
    min_component_faces: otherwise, pieces with fewer triangles are dropped as floaters.
    memory_mb: budget for the voxel blocks; the voxel size grows until they fit.
    chunk_voxels: voxels one integration step updates at once (bounds its temporary arrays).
    threads: numpy threads the integration shares each view's blocks among (the caller knows
        its cores: ``BACKGROUND_THREADS`` in Blender's process, every core in the worker);
        the result is the same for any number.
    """

    voxel_size: float = 0.0
    resolution: int = 256
    truncation: float = 0.0
    truncation_voxels: float = 4.0
    truncation_depth: float = 0.03
    denoise_radius: int = 2
    confidence_percentile: float = 5.0
    mask_sky: bool = True
    object_mode: bool = False
    consistent_views: bool = True
    outline_cycles: int = OUTLINE_CYCLES
    max_faces: int = 0
    smooth_iterations: int = SMOOTH_ITERATIONS
    unseen_smooth_iterations: int = UNSEEN_SMOOTH_ITERATIONS
    normal_filter_iterations: int = NORMAL_FILTER_ITERATIONS
    max_hole_edges: int = MAX_HOLE_EDGES
    crop_box: np.ndarray | None = None
    min_weight: float = 0.01
    solid_weight: float = 1.5
    free_space_weight: float = 0.25
    keep_largest: bool = False
    min_component_faces: int = 200
    memory_mb: float = 1024.0
    chunk_voxels: int = 1 << 20
    threads: int = 1

    def __post_init__(self):
        if self.voxel_size < 0 or self.truncation < 0:
            raise ValueError("voxel_size and truncation must be 0 (automatic) or positive")
        if self.max_faces < 0:
            raise ValueError("max_faces must be 0 (no limit) or positive")
        if self.denoise_radius < 0:
            raise ValueError("denoise_radius must be 0 (none) or positive")
        if self.resolution < 16:
            raise ValueError("resolution must be at least 16 voxels")
        if not 0 <= self.confidence_percentile <= 100:
            raise ValueError("confidence_percentile must be between 0 and 100")
        if self.crop_box is not None:
            box = np.asarray(self.crop_box, dtype=np.float64).reshape(2, 3)
            if np.any(box[1] <= box[0]):
                raise ValueError("crop_box must be [min corner, max corner] with min < max")
            self.crop_box = box


@dataclass
class FusedMesh:
    """The fused surface, in the prediction's world frame (OpenCV axes, DA3's units).

    vertices (V,3) float32; faces (F,3) int32, counter-clockwise seen from outside (normals
    point into free space); colors (V,3) float32 sRGB-encoded (as the images) in [0,1] or None;
    ``stats`` holds the voxel size, truncation, counts, memory and timings of each stage.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None
    voxel_size: float
    truncation: float
    stats: dict = field(default_factory=dict)


@dataclass
class View:
    """One view, ready to integrate: depth 0 where there is no vote."""

    depth: np.ndarray  # (H,W) float32, 0 where the pixel says nothing
    weight: np.ndarray  # (H,W) float32 in [0,1]: weight of its surface vote
    free_weight: np.ndarray  # (H,W) float32: weight of its vote for free space in front
    color: np.ndarray | None  # (H,W,3) uint8
    K: np.ndarray  # (3,3) float64
    R: np.ndarray  # (3,3) world-to-camera rotation
    t: np.ndarray  # (3,)


@dataclass
class Grid:
    """Where the voxels are: voxel (i,j,k) has its centre at origin + (i,j,k) * voxel_size."""

    origin: np.ndarray  # (3,) float64
    voxel_size: float
    truncation: float
    blocks: np.ndarray  # (3,) int, number of blocks along each axis
    object_mode: bool = False
    floor: np.ndarray | None = None  # (4,) plane n.p + d = 0, n up; below + floor_cut is free
    floor_cut: float = 0.0  # how far above the plane the object starts
    crop_box: np.ndarray | None = None  # (2,3): nothing outside it is surface
    depth: float = 0.0  # how far the cameras typically are from what they fuse

    @property
    def block_extent(self) -> float:
        return BLOCK * self.voxel_size

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """World corners (low, high) of the grid."""
        return self.origin, self.origin + self.blocks * self.block_extent

    def block_centres(self, coords: np.ndarray) -> np.ndarray:
        return self.origin + (coords * BLOCK + (BLOCK - 1) / 2) * self.voxel_size

    def block_keys(self, coords: np.ndarray) -> np.ndarray:
        b = self.blocks
        return (coords[:, 0].astype(np.int64) * b[1] + coords[:, 1]) * b[2] + coords[:, 2]

    def block_coords(self, keys: np.ndarray) -> np.ndarray:
        b = self.blocks
        return np.stack([keys // (b[1] * b[2]), keys // b[2] % b[1], keys % b[2]], axis=1)


@dataclass
class Volume:
    """The allocated blocks, sorted by key, and their accumulated votes (M, 512)."""

    keys: np.ndarray
    coords: np.ndarray
    tsdf: np.ndarray
    weight: np.ndarray
    color: np.ndarray  # (M, 512, 3) weighted sums
    color_weight: np.ndarray
