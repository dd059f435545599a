"""Weights: strict key checking, the hub layout round trip, and the skipped ray branch.

Key checking itself is plain Python and runs here; everything that needs torch runs once in
the worker's Python (one subprocess, results as JSON) on the random ``small_weights``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.core.presets import WeightsError, get_preset, resolve_folder
from engine.worker.weights import check_keys, read_config

REPO = Path(__file__).resolve().parents[1]
SMALL = get_preset("da3-small")

TORCH_CHECKS = r"""
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from engine.worker.model import build_network, skip_ray_branch
from engine.core.presets import get_preset
from engine.core.presets import WeightsError
from engine.worker.weights import load_network, save_network

src, tmp = Path(sys.argv[1]), Path(sys.argv[2])
preset = get_preset("da3-small")
results = {}

def error_of(folder):
    try:
        load_network(folder, preset)
    except WeightsError as exc:
        return [exc.kind, str(exc)]
    return None

def variant(name, change):
    folder = tmp / name
    folder.mkdir(parents=True)
    shutil.copy(src / "config.json", folder / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    save_file(change(tensors), str(folder / "model.safetensors"))
    return folder

net = load_network(src, preset)
state = net.state_dict()
results["state_keys"] = len(state) + 0
torch.manual_seed(0)
again = save_network(build_network("da3-small"), tmp / "fresh", preset)
reloaded = load_network(again, preset)
torch.manual_seed(0)
ref = build_network("da3-small")
results["round_trip_identical"] = all(
    torch.equal(a, b) for a, b in zip(ref.state_dict().values(), reloaded.state_dict().values()))
x = torch.randn(1, 2, 3, 28, 42)
with torch.inference_mode():  # loading skips the random initialisation: outputs must not care
    a, b = ref(x, None, None, export_feat_layers=[]), reloaded(x, None, None, export_feat_layers=[])
results["round_trip_forward_identical"] = all(torch.equal(a[k], b[k]) for k in a if k != "aux")
results["no_prefix"] = error_of(variant("noprefix", lambda t: {k[6:]: v for k, v in t.items()}))
results["one_missing"] = error_of(variant("missing", lambda t: dict(list(t.items())[1:])))
results["extra_key"] = error_of(variant("extra", lambda t: {**t, "model.extra": torch.zeros(1)}))
results["bad_shape"] = error_of(variant(
    "shape", lambda t: {k: (v[:1] if k.endswith("head.norm.weight") else v) for k, v in t.items()}))
damaged = tmp / "damaged"
damaged.mkdir()
(damaged / "model.safetensors").write_bytes(b"\x00" * 100)
results["damaged"] = error_of(damaged)

with torch.inference_mode():
    full = net(x, None, None, export_feat_layers=[])
    skip_ray_branch(net)
    fast = net(x, None, None, export_feat_layers=[])
results["ray_branch_in_full"] = "ray" in full or "ray_conf" in full
results["skip_identical"] = {k: bool(torch.equal(full[k], fast[k]))
                             for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def torch_results(worker_python, small_weights, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("weights")
    proc = subprocess.run([str(worker_python), "-c", TORCH_CHECKS, str(small_weights), str(tmp)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS"):])


def test_hub_layout_on_disk(small_weights):
    assert json.loads((small_weights / "config.json").read_text()) == {"model_name": "da3-small"}
    from engine.core.presets import WEIGHTS_FILE

    header_len = int.from_bytes((small_weights / WEIGHTS_FILE).read_bytes()[:8], "little")
    header = json.loads((small_weights / WEIGHTS_FILE).read_bytes()[8:8 + header_len])
    meta = header.pop("__metadata__")
    assert len(header) == 437 and all(k.startswith("model.") for k in header)
    aliases = {k: v for k, v in meta.items() if k != "format"}
    assert len(aliases) == 6  # the shared LayerNorm, stored once, listed as in published files
    assert set(aliases.values()) == {"model.head.scratch.output_conv2_aux.0.2.weight",
                                     "model.head.scratch.output_conv2_aux.0.2.bias"}


def test_saved_weights_load_back_bit_identical(torch_results):
    assert torch_results["state_keys"] == 443
    assert torch_results["round_trip_identical"]
    assert torch_results["round_trip_forward_identical"]


def test_wrong_prefix_is_refused_not_loaded_silently(torch_results):
    kind, message = torch_results["no_prefix"]
    assert kind == "missing_weights"
    assert message == ("model.safetensors has 0 of 443 expected keys; it is not a da3-small "
                       "checkpoint")


@pytest.mark.parametrize("case, words", [
    ("one_missing", "442 of 443 expected keys"),
    ("extra_key", "1 unexpected key"),
    ("bad_shape", "has shape (1,)"),
    ("damaged", "damaged or not a safetensors file"),
])
def test_every_wrong_file_is_one_clear_line(torch_results, case, words):
    kind, message = torch_results[case]
    assert kind == "missing_weights" and words in message and "\n" not in message


def test_skipping_the_ray_branch_keeps_outputs_identical(torch_results):
    assert torch_results["ray_branch_in_full"] is False  # the library drops it unread...
    assert all(torch_results["skip_identical"].values()), torch_results["skip_identical"]


def test_check_keys_counts_shared_tensors_once():
    expected = ["model.a", "model.b1", "model.b2"]
    groups = [{"model.b1", "model.b2"}]
    check_keys({"model.a", "model.b1"}, expected, groups, SMALL)  # b2 is b1's alias
    with pytest.raises(WeightsError, match="has 0 of 3 expected keys; it is not a da3-small"):
        check_keys({"a", "b1"}, expected, groups, SMALL)


def test_config_for_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-base"}))
    with pytest.raises(WeightsError, match="are for da3-base, not da3-small"):
        read_config(tmp_path, SMALL)


def test_weights_folder_defaults_to_models_dir(tmp_path):
    assert resolve_folder("", str(tmp_path), SMALL) == tmp_path / "da3-small"
    assert resolve_folder(str(tmp_path / "x" / "model.safetensors"), "", SMALL) == tmp_path / "x"
    with pytest.raises(WeightsError, match="models folder"):
        resolve_folder("", "", SMALL)
