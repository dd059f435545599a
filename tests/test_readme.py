"""The README stays true to the code it describes."""

from conftest import REPO

from engine.core.options import DEVICES, RUN_SETTINGS, SAMPLINGS, BuildOptions, RunOptions
from engine.core.presets import PRESETS

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_model_row_matches_the_preset_table():
    rows = {line.split("|")[1].strip(): line for line in README.splitlines()
            if line.startswith("| da3")}
    assert set(rows) == set(PRESETS)
    for name, preset in PRESETS.items():
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert cells[2] == f"{preset.download_mb} MiB", name
        assert cells[3] == preset.licence, name
        assert cells[4].startswith("metric") == preset.metric, name
        assert (cells[5] == "many") == preset.multi_view, name


def test_every_build_option_is_documented_with_its_default():
    for name in BuildOptions.names():
        assert f"| `{name}` |" in README, name


def test_the_two_commands_are_the_ones_ci_runs():
    assert "make demo" in README and "make test" in README
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_run_setting_is_documented_with_its_default_and_limits():
    section = README[README.index("### Run settings"):]
    table = section[section.index("| setting |"):].split("\n\n")[0].splitlines()[2:]
    rows = {line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[2:-1]] for line in table}
    hidden = {"chunk_size", "chunk_overlap"}  # the worker's own tuning, not a user's setting
    assert set(rows) == set(RunOptions.names()) - hidden
    defaults = RunOptions()
    for name in ("model", "process_res", "max_frames", "sampling"):
        assert rows[name][0].strip("`") == str(getattr(defaults, name)), name
    for name, bounds in RUN_SETTINGS.items():
        assert rows[name][1].startswith(f"{bounds.min:g}-{bounds.max:g}"), name
    assert rows["device"][1] == ", ".join(f"`{d}`" for d in DEVICES)
    assert rows["sampling"][1] == ", ".join(f"`{s}`" for s in SAMPLINGS)
