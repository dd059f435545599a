"""Drag and drop: the file handler's extensions and poll, and what the drop operator passes on."""

from __future__ import annotations

from types import SimpleNamespace

VIDEOS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def test_file_handler_is_registered_with_the_extensions(blender):
    handler = blender.types.DA3_FH_reconstruct
    assert issubclass(handler, blender.types.FileHandler)
    assert set(handler.bl_file_extensions.split(";")) == VIDEOS | IMAGES
    assert ".heic" not in handler.bl_file_extensions  # OpenCV cannot read it
    assert handler.bl_import_operator == "da3.reconstruct_drop"
    blender.ops.da3.reconstruct_drop.get_rna_type()  # the operator it names exists


def test_every_extension_is_one_the_worker_reads(blender):
    # engine.worker.inputs needs OpenCV, which the dev env has
    from engine.worker.inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    claimed = set(blender.types.DA3_FH_reconstruct.bl_file_extensions.split(";"))
    assert claimed <= set(IMAGE_EXTENSIONS) | set(VIDEO_EXTENSIONS)


def test_drop_is_accepted_only_on_the_3d_viewport(blender):
    poll = blender.types.DA3_FH_reconstruct.poll_drop
    assert poll(SimpleNamespace(area=SimpleNamespace(type="VIEW_3D")))
    assert not poll(SimpleNamespace(area=SimpleNamespace(type="IMAGE_EDITOR")))
    assert not poll(SimpleNamespace(area=None))


def test_dropped_files_become_the_dialogs_source(addon):
    from importlib import import_module

    drop = import_module(f"{addon.__name__}.operators.drop")
    one = drop.dialog_arguments("/clips/", ["walk.MP4"])
    assert one == {"source": "/clips/walk.MP4"}
    several = drop.dialog_arguments("/photos", ["a.jpg", "b.jpg"])
    assert several == {"directory": "/photos", "files": [{"name": "a.jpg"}, {"name": "b.jpg"}]}
    mixed = drop.dialog_arguments("/x", ["a.jpg", "walk.mov", "b.png"])
    assert mixed == {"source": "/x/walk.mov"}


def test_the_dialog_accepts_what_a_drop_passes(blender, tmp_path):
    """In background mode the invoke falls through to execute; a missing file is one clear line."""
    import pytest

    with pytest.raises(RuntimeError, match="source not found"):
        blender.ops.da3.reconstruct_drop(directory=str(tmp_path), files=[{"name": "gone.mp4"}])


def test_the_dialog_starts_from_the_panel_settings_except_what_was_passed(blender, addon):
    """invoke() fills what the caller did not pass (a drop passes only the source) from scene.da3;
    a value Blender remembered from the last run (a 'ghost') does not count as passed."""
    from importlib import import_module

    modal = import_module(f"{addon.__name__}.operators.run")
    settings = blender.context.scene.da3
    settings.model, settings.process_res, settings.output_view_meshes = "da3-base", 280, True

    class Props:
        def is_property_set(self, name, ghost=True):
            assert ghost is False
            return name == "source"

    op = SimpleNamespace(properties=Props(), source="/dropped.mp4", model="da3-small", process_res=504,
                         output_view_meshes=False)
    modal.fill_unset_from(op, settings)
    assert (op.source, op.model, op.process_res, op.output_view_meshes) == (
        "/dropped.mp4", "da3-base", 280, True)
