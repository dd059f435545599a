"""The DA3 sidebar drawn in every state with a recording layout (Blender never draws panels
when it runs as a module). The recorder is strict where Blender is lenient: a property or an
operator (or operator argument) that does not exist fails the test instead of a console warning.
"""

from __future__ import annotations

import time
from importlib import import_module

import pytest

from engine.core.options import RunOptions


class Recorder:
    """Stands in for bpy.types.UILayout; records (method, details) into a shared list."""

    def __init__(self, calls: list, bpy):
        self.calls, self.bpy = calls, bpy
        self.enabled, self.alert, self.active = True, False, True
        self.scale_y = self.scale_x = 1.0

    def _sub(self, kind):
        self.calls.append((kind,))
        return Recorder(self.calls, self.bpy)

    def row(self, **_kw):
        return self._sub("row")

    def column(self, **_kw):
        return self._sub("column")

    def box(self):
        return self._sub("box")

    def split(self, **_kw):
        return self._sub("split")

    def label(self, *, text="", icon="NONE"):
        assert isinstance(text, str)
        self._check_icon(icon)
        self.calls.append(("label", text))

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{data} has no property {name}"
        self._check_icon(kw.get("icon", "NONE"))
        self.calls.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **_kw):
        assert name in data.bl_rna.properties, f"{data} has no property {name}"
        assert hasattr(search_data, search_name)
        self.calls.append(("prop_search", name))

    def progress(self, *, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0 and type in ("BAR", "RING")
        self.calls.append(("progress", factor, text))

    def operator(self, idname, *, text=None, icon="NONE", **_kw):
        category, name = idname.split(".")
        op = getattr(getattr(self.bpy.ops, category), name)
        rna = op.get_rna_type()  # raises for an operator that is not registered
        self._check_icon(icon)
        self.calls.append(("operator", idname, text))
        return OperatorProps(rna)

    def _check_icon(self, icon):
        icons = self.bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items
        assert icon in icons, f"unknown icon {icon}"


class OperatorProps:
    def __init__(self, rna):
        object.__setattr__(self, "_rna", rna)

    def __setattr__(self, name, value):
        assert name in self._rna.properties, f"the operator has no property {name}"


def draw(blender, panel_name):
    calls = []
    panel_class = getattr(blender.types, panel_name)
    stand_in = type("Stand-in", (), {"layout": Recorder(calls, blender)})()
    panel_class.draw(stand_in, blender.context)
    return calls


def texts(calls):
    return " | ".join(str(c[1]) if len(c) > 1 else c[0] for c in calls)


@pytest.fixture
def ready_env(monkeypatch, worker_python):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(worker_python))


def test_the_panel_is_in_the_da3_tab(blender):
    panel = blender.types.DA3_PT_main
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "DA3")


def test_without_environment_it_offers_the_install(blender, monkeypatch, tmp_path):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(tmp_path / "nothing" / "python"))
    blender.context.preferences.system.use_online_access = True
    try:
        calls = draw(blender, "DA3_PT_main")
    finally:
        blender.context.preferences.system.use_online_access = False
    print(texts(calls))
    assert ("operator", "da3.install_dependencies", None) in calls
    assert any(c[0] == "label" and "Worker environment" in c[1] for c in calls)


def test_offline_without_environment_says_how_to_allow_it(blender, monkeypatch, tmp_path):
    monkeypatch.setenv("DA3_WORKER_PYTHON", str(tmp_path / "nothing" / "python"))
    calls = draw(blender, "DA3_PT_main")
    assert not any(c[0] == "operator" and c[1] == "da3.install_dependencies" for c in calls)
    assert any(c[0] == "label" and "Online Access" in c[1] for c in calls)


def test_idle_shows_source_and_the_one_button(blender, ready_env):
    calls = draw(blender, "DA3_PT_main")
    print(texts(calls))
    assert ("prop", "source") in calls
    assert ("operator", "da3.reconstruct", "Reconstruct from images") in calls
    assert not any(c[0] == "progress" for c in calls)


def test_running_shows_progress_eta_and_cancel(blender, addon, ready_env, small_weights, tmp_path):
    """The panel reads the live run (a real worker): progress bar, counts and Cancel."""
    from test_reconstruct import RES, write_images

    reconstruct = import_module(f"{addon.__name__}.reconstruct")
    folder = write_images(tmp_path / "photos", count=2)
    run = reconstruct.start(reconstruct.Request([str(folder)], RunOptions(weights=str(small_weights),
                                                                          device="cpu", process_res=RES)))
    try:
        while run.state.stage != "inference" or run.state.total == 0:
            assert not run.finished, run.state.error
            run.tick(timeout=0.1, budget_s=0.0)  # one event a tick: inference cannot slip by
        calls = draw(blender, "DA3_PT_main")
    finally:
        run.close()
    print(texts(calls))
    progress = next(c for c in calls if c[0] == "progress")
    assert 0.4 < progress[1] < 0.9 and progress[2].startswith("Estimating depth")
    assert any(c[0] == "label" and " / " in c[1] for c in calls)
    assert ("operator", "da3.cancel_reconstruct", "Cancel (Esc)") in calls
    assert not any(c[0] == "progress" for c in draw(blender, "DA3_PT_main")), "idle again"


def test_error_shows_the_message(blender, ready_env):
    job = blender.context.window_manager.da3_job
    job.error = "source not found: /photos/nowhere " + "x" * 80
    try:
        calls = draw(blender, "DA3_PT_main")
    finally:
        job.error = ""
    labels = [c[1] for c in calls if c[0] == "label"]
    assert "Last run failed:" in labels
    assert any("/photos/nowhere" in line for line in labels)


@pytest.mark.parametrize("model", ["da3-small", "da3-large", "da3metric-large"])
def test_model_panel_shows_size_licence_scale_and_weights(blender, ready_env, model, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("DA3_MODELS_DIR", str(tmp_path / "models"))
    blender.context.scene.da3.model = model
    calls = draw(blender, "DA3_PT_model")
    labels = " | ".join(c[1] for c in calls if c[0] == "label")
    print(labels)
    assert "MiB" in labels and ("Apache-2.0" in labels or "CC-BY-NC-4.0" in labels)
    assert ("Metric" in labels) == (model == "da3metric-large")
    assert "Weights missing" in labels  # online access is off in the module
    assert ("prop", "device") in calls and ("prop", "process_res") in calls


def test_model_panel_sees_present_weights(blender, ready_env, small_weights):
    blender.context.scene.da3.weights = str(small_weights)
    calls = draw(blender, "DA3_PT_model")
    assert ("label", "Weights present") in calls


def test_video_sampling_switches_between_count_and_fps(blender, ready_env):
    settings = blender.context.scene.da3
    assert ("prop", "max_frames") in draw(blender, "DA3_PT_model")
    settings.frame_sampling = "FPS"
    assert ("prop", "fps") in draw(blender, "DA3_PT_model")


def test_output_panel_shows_every_build_option(blender):
    from engine.core.options import BuildOptions

    calls = draw(blender, "DA3_PT_output")
    drawn = {c[1] for c in calls if c[0] in ("prop", "prop_search")}
    assert drawn == set(BuildOptions.names())


def test_the_panel_shows_the_face_count_of_the_last_result(blender, addon, ready_env):
    """The newest result, or the one the active object belongs to: its surface's face count
    after the face budget."""
    from synthetic_scenes import make_prediction

    from engine.core.options import BuildOptions

    pred, _ = make_prediction(n_views=2)
    assert not any(c[0] == "label" and c[1].startswith("Surface:") for c in draw(blender, "DA3_PT_main"))
    first = addon.api.import_prediction(pred, BuildOptions(fusion="REMESH", output_points=False,
                                                           max_faces=500), name="first")
    addon.api.import_prediction(pred, BuildOptions(output_surface=False), name="second")
    labels = [c[1] for c in draw(blender, "DA3_PT_main") if c[0] == "label"]
    assert "second" in labels and not any(line.startswith("Surface:") for line in labels)
    surface = next(o for o in first.objects if o.get("da3_role") == "surface")
    blender.context.view_layer.objects.active = surface
    labels = [c[1] for c in draw(blender, "DA3_PT_main") if c[0] == "label"]
    faces = surface["da3_faces"]
    assert 0 < faces <= 500 and faces == len(surface.data.polygons)
    assert "first" in labels and f"Surface: {faces:,} faces" in labels


def test_a_broken_draw_fails(blender):
    """The recorder must catch what Blender would only print: guard against a lenient stand-in."""
    recorder = Recorder([], blender)
    with pytest.raises(AssertionError):
        recorder.prop(blender.context.scene.da3, "no_such_setting")
    with pytest.raises((AttributeError, KeyError, RuntimeError)):
        recorder.operator("da3.no_such_operator")
    with pytest.raises(AssertionError):
        recorder.operator("da3.reconstruct").no_such_argument = 1


def test_online_without_weights_offers_the_download(blender, ready_env, tmp_path, monkeypatch):
    monkeypatch.setenv("DA3_MODELS_DIR", str(tmp_path / "models"))
    blender.context.preferences.system.use_online_access = True
    try:
        calls = draw(blender, "DA3_PT_model")
    finally:
        blender.context.preferences.system.use_online_access = False
    assert ("operator", "da3.download_weights", "Download now (131 MiB)") in calls


def test_install_refuses_offline_with_one_line(blender):
    with pytest.raises(RuntimeError, match="Online access is off") as info:
        blender.ops.da3.install_dependencies()
    assert "\n" not in str(info.value).strip()


def test_download_refuses_offline_with_one_line(blender, ready_env):
    with pytest.raises(RuntimeError, match="online access is off"):
        blender.ops.da3.download_weights(model="da3-small")


def test_install_failure_is_one_line(blender, monkeypatch):
    """The real installer, made to fail: the Python to build the environment from is missing.
    (A real install from the panel runs in test_real_blender.)"""
    monkeypatch.setenv("DA3_BASE_PYTHON", "/nonexistent/python3")
    blender.context.preferences.system.use_online_access = True
    try:
        with pytest.raises(RuntimeError) as info:
            blender.ops.da3.install_dependencies()
    finally:
        blender.context.preferences.system.use_online_access = False
    message = str(info.value).strip()
    assert "Installing the dependencies failed: cannot run the Python /nonexistent/python3" in message
    assert "\n" not in message


def test_the_drop_dialog_draws_the_operators_settings(blender, addon):
    from importlib import import_module
    from types import SimpleNamespace

    panels = import_module(f"{addon.__name__}.panels.main")
    op = SimpleNamespace(bl_rna=blender.ops.da3.reconstruct.get_rna_type(), frame_sampling="FPS",
                         fusion="TSDF", texture=True, output_points=True)
    calls = []
    panels.draw_run_settings(Recorder(calls, blender), op, blender.context)
    drawn = [c[1] for c in calls if c[0] in ("prop", "prop_search")]
    assert {"source", "model", "process_res", "fps", "device", "output_surface", "max_points",
            "object_mode", "texture", "texture_size"} <= set(drawn)


def wait_for_counts(frame_counts, timeout=120.0):
    """Until the background counts are in; the timeout only guards against a hang."""
    end = time.monotonic() + timeout
    while frame_counts._frame_counts.running:
        assert time.monotonic() < end, "the frame count did not finish"
        frame_counts._frame_counts.poll()
        time.sleep(0.05)


def test_the_panel_says_how_many_frames_a_run_uses(blender, addon, ready_env, tmp_path):
    from importlib import import_module

    from tests.test_reconstruct import write_images, write_video

    frame_counts = import_module(f"{addon.__name__}.frame_counts")
    settings = blender.context.scene.da3
    settings.source = str(write_images(tmp_path / "photos", count=3))
    assert ("label", "3 images") in draw(blender, "DA3_PT_model")
    settings.source = str(write_video(tmp_path / "clip.mp4", frames=20))
    calls = draw(blender, "DA3_PT_model")
    # the draw returned before the count: it runs in the background
    assert ("label", "Counting video frames...") in calls
    wait_for_counts(frame_counts)
    settings.max_frames = 8
    assert ("label", "8 of 20 frames") in draw(blender, "DA3_PT_model")
    settings.frame_sampling, settings.fps = "FPS", 2.0
    assert ("label", "4 of 20 frames") in draw(blender, "DA3_PT_model")  # 2 s of 10 fps video
    assert frame_counts.describe(settings.source, "MOTION", 8, 0.0) == "Finding keyframes..."
    wait_for_counts(frame_counts)
    assert frame_counts.describe(settings.source, "MOTION", 8, 0.0).endswith(
        "keyframes of 20 frames analysed")
    assert not frame_counts._frame_counts.running
