"""The fused surface an artist keeps (issue 12): views made to agree, grain smoothed away, holes
closed, a face budget, thin parts kept; on Cycles scenes of known shape with DA3-like errors
(``scenes.HARD``: smooth depth error, pixel noise, flying pixels, pose noise).

Thresholds sit a little under what the fusion measures today at the tests' small renders;
``benchmarks/bench_fusion.py --stages`` prints the full table at 504x378.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import replace

import numpy as np
import pytest

from engine.fusion.base import FusedMesh, TSDFOptions
from engine.fusion.tsdf import fuse_tsdf
from engine.fusion.views import denoised_depth, pixel_noise

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import scenes  # noqa: E402

RESOLUTION = 128
OLD_DEFAULT = dict(denoise_radius=0, consistent_views=False, smooth_iterations=0, unseen_smooth_iterations=0,
                   normal_filter_iterations=0, max_hole_edges=0)


@functools.cache
def scene_of(name: str, hard: bool):
    scene = scenes.render_scene(name)
    return scene, scenes.degrade(scene, seed=0, **(scenes.HARD if hard else {}))


def quality(name: str, hard: bool, **options) -> tuple[scenes.Quality, FusedMesh]:
    scene, degraded = scene_of(name, hard)
    settings = TSDFOptions(resolution=RESOLUTION, object_mode=name not in scenes.SURROUNDINGS, **options)
    mesh = fuse_tsdf(degraded.prediction, settings)
    return scenes.evaluate(mesh.vertices, mesh.faces, scene, degraded.to_scene), mesh


@pytest.mark.parametrize("name", ["parts", "room", "terrain"])
def test_views_made_to_agree_give_a_smoother_truer_surface(name):
    old, _ = quality(name, True, **OLD_DEFAULT)
    new, mesh = quality(name, True)
    report = mesh.stats["consistency"]
    print(f"{name}: old {old}\nnew {new}\n{report}")
    assert report["disagreement_after"] < 0.5 * report["disagreement_before"], report
    assert new.normal > old.normal + 0.05, (old, new)
    assert new.fscore >= old.fscore - 0.01, (old, new)  # the small room: 0.945 -> 0.940
    assert new.components <= old.components


def test_denoising_averages_the_pixel_noise_away_and_keeps_slopes_and_outlines():
    """A sloping wall with a bar 3 pixels wide in front of it and 0.5% pixel noise, judged
    against the noiseless depth."""
    h, w = 120, 160
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    wall = 2.0 + 0.004 * u + 0.002 * v  # sloping: a pixel further is 0.1-0.2% deeper
    truth = wall.copy()
    bar = (u >= 80) & (u < 83)
    truth[bar] = 1.5
    truth[:10, :10] = 0  # no depth
    noisy = (truth * (1 + np.random.default_rng(0).normal(0, 0.005, (h, w)))).astype(np.float32)
    noisy[:10, :10] = 0
    noisy[-1, -1] = np.nan
    measured = pixel_noise(noisy, np.isfinite(noisy) & (noisy > 0))
    assert 0.0045 < measured < 0.0055, measured  # the outline's pixels do not count
    out = denoised_depth(noisy, 2)
    rest = (truth > 0) & ~bar & np.isfinite(noisy)
    before, after = (noisy - truth)[rest] / truth[rest], (out - truth)[rest] / truth[rest]
    print(f"noise {before.std():.5f} -> {after.std():.5f}, bias {after.mean():.6f}")
    assert after.std() < 0.3 * before.std()
    assert abs(after.mean()) < 0.0005  # the slope is kept, image borders included
    assert np.abs(out[bar] - 1.5).max() < 0.02 * 1.5  # the bar is not blended with the wall
    beside = (u == 79) | (u == 83)
    assert np.abs(out[beside] - wall[beside]).max() < 0.02 * 2.5
    assert np.all(out[:10, :10] == 0) and np.isnan(out[-1, -1])
    assert np.array_equal(denoised_depth(truth, 2), truth)  # smooth already: left as it is


def test_a_chair_under_pixel_noise_comes_out_true_once_denoised():
    """The voxels sample each view at one pixel: its noise went into the chair as it was."""
    noisy, _ = quality("thin", True, denoise_radius=0)
    denoised, _ = quality("thin", True)
    print(f"as given {noisy}\ndenoised {denoised}")
    assert denoised.fscore > noisy.fscore + 0.1, (noisy, denoised)
    assert denoised.normal > noisy.normal + 0.03, (noisy, denoised)


def test_a_drone_flight_over_terrain_meets_the_bar():
    """Issue 12's terrain (a drone's 16 views: F@1% 0.84, normal consistency 0.69, holes all
    over the ground): hills, a hollow, houses, a water tower and trees seen in two strips, with
    the hard errors. Bar: F@1% and normal consistency at least 0.9 (0.96 and 0.97 today)."""
    result, mesh = quality("terrain", True)
    print(result, mesh.stats["consistency"])
    assert result.fscore >= 0.93 and result.normal >= 0.93, result
    # the ground and the two trees' crowns: their trunks, 16 cm across, are two of the tests'
    # 8 cm voxels and do not survive the hard errors
    assert result.components <= 3, result


def test_consistency_alone_brings_the_views_together():
    old, _ = quality("parts", True, **OLD_DEFAULT)
    agreed, _ = quality("parts", True, **{**OLD_DEFAULT, "consistent_views": True})
    print(f"old {old}\nagreed {agreed}")
    assert agreed.accuracy < old.accuracy and agreed.fscore >= old.fscore, (old, agreed)


def test_the_face_budget_holds_and_the_object_stays_closed_and_whole():
    whole, full = quality("parts", True, max_faces=0)
    budget = len(full.faces) // 4
    fitted, mesh = quality("parts", True, max_faces=budget)
    print(f"whole {whole}\nfitted {fitted}")
    assert budget // 3 < len(mesh.faces) <= budget
    assert fitted.boundary_edges == 0 and fitted.components == whole.components
    assert fitted.fscore > whole.fscore - 0.02, (whole, fitted)
    # the probe at twice the voxel foretold the full pass's faces, so one pass fitted the budget
    assert 0.75 < 4 * mesh.stats["probe_faces"] / len(full.faces) < 1.1
    assert "first_pass_faces" not in mesh.stats


@pytest.mark.parametrize("hard", [False, True])
def test_thin_parts_survive_as_well_as_before(hard):
    """A chair's legs and slats (2-3% of its size): what the old default kept of them is kept.
    With the hard errors at the tests' renders the legs are 1-3 pixels wide and the views' pose
    errors shift them by about as much: the old default kept 0.42 of them, fattened into a
    surface of F@1% 0.49, and the views denoised and made to agree keep 0.34 in a chair of F@1%
    0.80 (at bench_fusion's 504x378, 0.88 and 0.79 of them, F@1% 0.65 and 0.93). With the
    milder errors the old default kept 0.662, the new one 0.636, and 0.630 since the normal
    filter (which trades 0.005 of them for a normal consistency 0.02 higher)."""
    old, _ = quality("thin", hard, **OLD_DEFAULT)
    new, _ = quality("thin", hard)
    print(f"old {old}\nnew {new}")
    if hard:
        assert new.thin_survival > old.thin_survival - 0.1, (old, new)
        assert new.fscore > old.fscore + 0.2, (old, new)
    else:
        assert new.thin_survival > old.thin_survival - 0.04, (old, new)
        assert new.fscore > old.fscore - 0.01, (old, new)


@pytest.mark.parametrize("hard", [False, True])
def test_the_space_under_a_chair_seat_stays_open(hard):
    """Cameras that look down on a chair never see under its seat. Taken as the inside of the
    object, that space hung below the seat down to where the views' rays passed: 22-28% of the
    fused area lay there, F@1% 0.59 (0.49 with hard errors). Judged on the mesh itself: its
    area in the box under the seat, inside the legs, where the chair has nothing."""
    result, mesh = quality("thin", hard)
    scene, degraded = scene_of("thin", hard)
    v = mesh.vertices @ degraded.to_scene[:3, :3].T + degraded.to_scene[:3, 3]
    points = scenes.sample_mesh(v, mesh.faces, 50000, np.random.default_rng(0))
    under_seat = np.all((np.abs(points[:, :2]) < 0.22) & (points[:, 2:] > 0.1) & (points[:, 2:] < 0.45),
                        axis=1)
    print(f"{result}\nunder the seat: {under_seat.mean():.4f} of the area")
    assert under_seat.mean() < 0.01
    assert result.boundary_edges == 0
    if not hard:
        assert result.fscore > 0.8, result  # 0.88 today


def test_the_surface_no_view_saw_comes_out_smooth():
    """The underside of a chair's seat: where the votes behind its seen top ran out, voxel by
    voxel, it came out as rough as sandpaper. The passes for a surface no view saw smooth it:
    normal consistency against the true chair 0.76 -> 0.86 at the tests' renders since the
    pocket walls are drawn taut (0.74 -> 0.80 with Taubin's passes alone), the four-part object
    0.90 -> 0.93. At these coarse voxels the taut underside costs the chair a little accuracy
    (F@1% 0.874 -> 0.863, against 0.872 with Taubin's passes); at bench_fusion's 504x378 it
    gains some (0.978 -> 0.979 exact, 0.925 -> 0.927 hard errors)."""
    for name, gain in (("thin", 0.05), ("parts", 0.01)):
        rough, _ = quality(name, False, unseen_smooth_iterations=0)
        smooth, _ = quality(name, False)
        print(f"{name}\nwithout: {rough}\nwith:    {smooth}")
        assert smooth.normal > rough.normal + gain, (rough, smooth)
        assert smooth.fscore > rough.fscore - 0.015, (rough, smooth)


@pytest.mark.parametrize("name", ["thin", "parts"])
def test_the_normal_filter_takes_out_the_lumps_and_keeps_the_shape(name):
    """Under the hard errors each misposed view puts a chair's leg or a part's rim a little
    elsewhere, and the fused surface comes out lumpy at a scale Taubin's passes keep. The
    bilateral normal filter after them takes the lumps out: normal consistency at the tests'
    renders 0.865 -> 0.887 (the chair) and 0.903 -> 0.943 (the four parts), F@1% within 0.006,
    the chair's legs and slats kept within 0.011 (0.862 -> 0.885 and 0.952 -> 0.973 at
    bench_fusion's 504x378)."""
    lumpy, _ = quality(name, True, normal_filter_iterations=0)
    filtered, _ = quality(name, True)
    print(f"{name}\nwithout: {lumpy}\nwith:    {filtered}")
    assert filtered.normal > lumpy.normal + 0.015, (lumpy, filtered)
    assert filtered.fscore > lumpy.fscore - 0.01, (lumpy, filtered)
    if lumpy.thin_survival is not None:
        assert filtered.thin_survival > lumpy.thin_survival - 0.02, (lumpy, filtered)
    assert filtered.boundary_edges == lumpy.boundary_edges == 0
    assert filtered.components == lumpy.components


def test_cameras_moved_until_the_outlines_agree_keep_the_chairs_legs():
    """Under the hard errors every view sees a chair's legs (1-3 pixels wide at the tests'
    renders) a pixel or more from where the others do, and the fusion keeps a third of them.
    Cameras moved sideways until the object's outlines agree (``engine.fusion.outlines``) keep
    0.55 of them, F@1% 0.786 -> 0.811 (normal consistency 0.887 -> 0.854: the legs kept are
    rough at 8 cm voxels); the four parts 0.943 -> 0.964, F@1% within 0.004. At bench_fusion's
    504x378 the chair keeps 0.95-0.99 of its legs (0.65-0.78) and its normal consistency rises
    0.885 -> 0.903 and 0.899 -> 0.922 (two draws)."""
    fixed, _ = quality("thin", True, outline_cycles=0)
    aligned, mesh = quality("thin", True)
    outlines = mesh.stats["consistency"]["outlines"]
    print(f"cameras as given: {fixed}\noutlines agreed:  {aligned}\n{outlines}")
    assert outlines["outline_px_after"] < 0.9 * outlines["outline_px_before"], outlines
    assert aligned.thin_survival > fixed.thin_survival + 0.15, (fixed, aligned)
    assert aligned.fscore > fixed.fscore + 0.01, (fixed, aligned)
    assert aligned.boundary_edges == 0 and aligned.components == fixed.components
    fixed, _ = quality("parts", True, outline_cycles=0)
    aligned, _ = quality("parts", True)
    print(f"four parts, cameras as given: {fixed}\noutlines agreed:  {aligned}")
    assert aligned.normal > fixed.normal + 0.01 and aligned.fscore > fixed.fscore - 0.01, (fixed, aligned)


@pytest.mark.parametrize("hard", [False, True])
def test_an_underside_no_view_saw_comes_out_flat_where_it_was(hard):
    """Where the votes behind a chair's seen seat ran out and the open space under it began, the
    seat's underside came out in terraces a voxel high, and Taubin's passes, which keep shapes a
    few edges wide, kept them. Drawn taut between the surfaces round it (the passes for what no
    view saw, without their mu steps, where an open pocket meets the solid), it comes out flat,
    and where it was. Judged on the mesh's points whose nearest true surface faces down (the
    underside, about a third of the chair): their normals against the truth's, and their offset
    from it along the true normal."""
    def underside(**options) -> tuple[float, float]:
        """Normal consistency, and the median offset along the true normal in voxels."""
        _, mesh = quality("thin", hard, **options)
        scene, degraded = scene_of("thin", hard)
        v = mesh.vertices @ degraded.to_scene[:3, :3].T + degraded.to_scene[:3, 3]
        points, faces = scenes.sample_faces(v, mesh.faces, 40000, np.random.default_rng(0))
        distance, nearest = scenes.nearest_distances(scene.surface, points, return_index=True)
        under = (scene.normals[nearest, 2] < -0.9) & (distance < 0.01 * scene.size)
        normal = scene.normals[nearest[under]]
        cos = np.abs(np.sum(scenes.face_normals(v, mesh.faces)[faces[under]] * normal, axis=1))
        offset = np.sum((points[under] - scene.surface[nearest[under]]) * normal, axis=1)
        voxel = mesh.voxel_size * np.linalg.norm(degraded.to_scene[:3, 0])
        return float(cos.mean()), float(np.median(offset) / voxel)

    # the passes' own doing, without the normal filter after them (which lifts both: the
    # default's underside measures 0.97 and 0.95)
    rough, was = underside(unseen_smooth_iterations=0, normal_filter_iterations=0)
    taut, now = underside(normal_filter_iterations=0)
    print(f"underside normal consistency {rough:.3f} -> {taut:.3f}; "
          f"median offset {was:+.2f} -> {now:+.2f} voxels")
    # 0.72 -> 0.97 (milder) and 0.72 -> 0.94 (hard) today; Taubin's passes alone: 0.85 and 0.83
    assert taut > rough + 0.2
    assert abs(now - was) < 0.3  # 0.03 voxels today


def test_a_chair_seat_is_no_table_to_cut():
    """Exact depth, no sky mask (DA3's own layout): the seat is a plane with the back on it and
    little under it, like a table; it is no support because it does not reach out around what
    stands on it, so the legs stay."""
    scene = scenes.render_scene("thin")
    degraded = scenes.degrade(scene, depth_error=0, pose_deg=0, pose_frac=0, background_conf=1.0)
    mesh = fuse_tsdf(degraded.prediction, TSDFOptions(resolution=RESOLUTION, object_mode=True))
    result = scenes.evaluate(mesh.vertices, mesh.faces, scene, degraded.to_scene)
    print(result)
    assert mesh.stats["floor"] is None
    # 0.68 today: the legs' upper halves (at this render their lower halves are too thin for
    # any pixel to vote); 0.72 while the space under the seat was solid and hung around them
    assert result.thin_survival > 0.64, result


def test_options_refuse_a_negative_budget():
    with pytest.raises(ValueError, match="max_faces"):
        replace(TSDFOptions(), max_faces=-1)
