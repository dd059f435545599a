"""The run settings are defined once (``engine.core.options.RunOptions`` and ``RUN_SETTINGS``):
the panel's and the operator's properties as Blender registered them, the command line, the
job file and the checks before a run all agree with that one definition."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from engine.core.options import FPS, PROCESS_RES, RUN_SETTINGS, RunOptions
from engine.core.protocol import PROTOCOL_VERSION, Job


def test_the_defaults_are_a_valid_run():
    assert RunOptions().problem() == ""
    assert (RunOptions().model, RunOptions().process_res, RunOptions().max_frames) == ("da3-small", 504, 32)


@pytest.mark.parametrize("changes, expected", [
    ({"model": "da3-tiny"}, "da3-tiny"),
    ({"device": "tpu"}, "device must be one of auto, cuda, mps, cpu"),
    ({"sampling": "MOTION"}, "sampling must be one of count, fps, motion"),
    ({"process_res": 7}, "the processing resolution must be between 14 and 2016, not 7"),
    ({"process_res": 4096}, "between 14 and 2016"),
    ({"max_frames": 0, "fps": 0.0}, "give a number of frames or frames per second above zero"),
    ({"max_frames": 6000}, "the number of frames must be between 1 and 5000"),
    ({"max_frames": 0, "fps": 500.0}, "frames per second must be between 0.01 and 120"),
    ({"chunk_size": -1}, "chunk_size and chunk_overlap must be 0"),
])
def test_each_bad_setting_is_one_line(changes, expected):
    problem = RunOptions(**changes).problem()
    assert expected in problem and "\n" not in problem


def test_motion_needs_no_count_and_the_panels_choice_sets_one_number():
    assert RunOptions(sampling="motion", max_frames=0).problem() == ""
    assert RunOptions.sampled("FPS", 12, 3.0) == RunOptions(sampling="fps", max_frames=0, fps=3.0)
    assert RunOptions.sampled("COUNT", 12, 3.0) == RunOptions(sampling="count", max_frames=12, fps=0.0)
    assert RunOptions.sampled("MOTION", 12, 3.0, model="da3-large").model == "da3-large"
    with pytest.raises(ValueError, match="COUNT, FPS, MOTION"):
        RunOptions.sampled("EVERY", 12, 3.0)


def test_the_job_file_carries_the_run_settings_and_reads_the_old_layout(tmp_path):
    run = RunOptions(model="da3-large", device="cpu", process_res=280, max_frames=0, fps=1.5,
                     sampling="fps", chunk_size=8)
    path = Job(sources=["v.mp4"], output="o.npz", run=run).save(tmp_path / "job.json")
    written = json.loads(path.read_text())
    assert written["version"] == PROTOCOL_VERSION and written["run"]["process_res"] == 280
    assert Job.load(path).run == run

    written["run"]["process_res"] = 7
    path.write_text(json.dumps(written))
    with pytest.raises(ValueError, match="processing resolution must be between 14 and 2016"):
        Job.load(path)

    # version 1 kept the same settings at the top level
    path.write_text(json.dumps({"sources": ["v.mp4"], "output": "o.npz", "version": 1,
                                "model": "da3-base", "process_res": 140}))
    assert Job.load(path).run == RunOptions(model="da3-base", process_res=140)


def test_blenders_properties_take_their_defaults_and_bounds_from_the_one_definition(addon, blender):
    """Read back from Blender's RNA, what the panel and the operator really offer."""
    defaults = RunOptions()
    for owner in (blender.types.Scene.bl_rna.properties["da3"].fixed_type,
                  blender.ops.da3.reconstruct.get_rna_type()):
        props = owner.properties
        for name, bounds in RUN_SETTINGS.items():
            assert (props[name].hard_min, props[name].hard_max) == pytest.approx((bounds.min, bounds.max))
        assert props["process_res"].soft_min == PROCESS_RES.soft_min
        assert props["process_res"].default == defaults.process_res
        assert props["max_frames"].default == defaults.max_frames
        assert props["fps"].default == pytest.approx(FPS.default)
        assert props["model"].default == defaults.model
        assert props["frame_sampling"].default == defaults.sampling.upper()
    # an untouched panel asks for exactly the default run
    settings = blender.context.scene.da3
    assert asdict(addon.properties.run_options(settings)) == asdict(defaults)


def test_the_panels_settings_are_checked_by_the_same_rule(addon, blender):
    settings = blender.context.scene.da3
    settings.frame_sampling = "FPS"
    settings.fps = 0.5
    run = addon.properties.run_options(settings, device="cpu")
    assert (run.sampling, run.max_frames, run.fps, run.device) == ("fps", 0, 0.5, "cpu")
    assert run.problem() == ""
