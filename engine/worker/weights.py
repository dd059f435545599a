"""Find, download, check and load DA3 weights; save random ones in the same layout for tests.

Layout (the model hub's): a folder with ``config.json`` (``{"model_name": "<network>"}``) and
``model.safetensors`` whose keys all start with ``model.`` (the library wraps the network as
``DepthAnything3.model``). The head shares one LayerNorm across four levels, so the file holds
those tensors once and lists the duplicate names in its metadata (safetensors' ``save_model``).

The library loads with ``strict=False``: a file with other keys loads silently and leaves random
weights. Here every expected key must be in the file (a shared tensor counts for all its names)
and nothing else may be, or loading stops with one line naming the problem.

Command line (used by the tests' ``small_weights`` fixture)::

    python -m engine.worker save-random --model da3-small --out DIR
    python -m engine.worker download da3-small DIR      # JSON-lines events, for the panel
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.presets import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelPreset,
    WeightsError,
    get_preset,
    has_weights,
    hub_url,
    missing_message,
)

KEY_PREFIX = "model."

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- download

def download(preset: ModelPreset, folder: Path, progress: Progress | None = None) -> Path:
    """Fetch config.json + model.safetensors from the model hub into ``folder``, resumably.

    The weights arrive in ``model.safetensors.part``; an interrupted download (lost connection,
    cancel, crash) continues from where that file ends with an HTTP Range request. The hub
    client supplies the URL, the session (proxies, certificates) and the headers (token);
    ``progress(done_bytes, total_bytes)`` follows the weights file. Where the hub gives the
    file's SHA-256 (its LFS/Xet ETag), the finished file is checked against it.
    """
    # Not ``hf_hub_download``: in huggingface_hub 2.x it writes each attempt to a new
    # process-unique temporary file (huggingface_hub PR 4228), so a lost connection restarts a
    # 1.3 GB download from zero, and it checks the size but not the SHA-256.
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    if constants.HF_HUB_OFFLINE:
        raise WeightsError("the model hub is switched off here (HF_HUB_OFFLINE is set)")
    folder.mkdir(parents=True, exist_ok=True)
    session, headers = get_session(), build_hf_headers()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        url = hf_hub_url(preset.hub_repo, name)
        fetch_resumable(session, url, folder / name, headers,
                        progress if name == WEIGHTS_FILE else None)
    return folder


CHUNK_BYTES = 1 << 20


def fetch_resumable(session, url: str, dest: Path, headers: dict,
                    progress: Progress | None = None) -> Path:
    """GET ``url`` into ``dest`` through ``dest.part``, continuing a partial ``.part`` file."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request_headers = {**headers, **({"Range": f"bytes={have}-"} if have else {})}
    with session.stream("GET", url, headers=request_headers, follow_redirects=True,
                        timeout=60) as response:
        if response.status_code == 416 and have:  # nothing after what we have: it is complete
            os.replace(part, dest)
            return dest
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the range: start over
            have = 0
        total = have + int(response.headers.get("content-length") or 0)
        sha256 = _announced_sha256(response)
        with open(part, "ab" if have else "wb") as f:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                f.write(chunk)
                have += len(chunk)
                if progress is not None:
                    progress(have, max(total, have))
    if total and have != total:
        raise WeightsError(f"the download of {dest.name} stopped at {have} of {total} bytes; "
                           "try again to continue it")
    _verify_sha256(part, sha256)
    os.replace(part, dest)
    return dest


def _announced_sha256(response) -> str | None:
    """The file's SHA-256 as the hub announces it (LFS/Xet files: X-Linked-Etag), if any."""
    for step in [*getattr(response, "history", []), response]:
        for key in ("x-linked-etag", "etag"):
            tag = (step.headers.get(key) or "").strip('W/"')
            if len(tag) == 64 and all(c in "0123456789abcdef" for c in tag):
                return tag
    return None


def _verify_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES * 8), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        path.unlink()
        raise WeightsError(f"the downloaded {path.name[:-5]} is corrupt (SHA-256 mismatch); "
                           "it was removed: try again")


# --------------------------------------------------------------------------- checking

def read_config(folder: Path, preset: ModelPreset) -> None:
    """config.json, when present, must name this preset's network."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("model_name", "")
    except (ValueError, AttributeError, OSError) as exc:
        raise WeightsError(f"'{path}' is not a readable DA3 config ({type(exc).__name__})") from None
    if name and name not in (preset.network, preset.name):
        raise WeightsError(f"the weights in '{folder}' are for {name}, not {preset.name}; "
                           f"choose {name} or the right folder")


def shared_groups(state_dict) -> list[set[str]]:
    """Names that share one tensor in the module (stored once in the file)."""
    groups: dict[tuple, set[str]] = {}
    for name, tensor in state_dict.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape))
        groups.setdefault(key, set()).add(name)
    return [g for g in groups.values() if len(g) > 1]


def check_keys(file_keys: set[str], expected: list[str], groups: list[set[str]],
               preset: ModelPreset) -> None:
    """WeightsError unless the file holds exactly the expected tensors (one per shared group)."""
    covered = set(file_keys)
    for group in groups:
        if covered & group:
            covered |= group
    found = sum(1 for k in expected if k in covered)
    if found == 0:
        raise WeightsError(f"{WEIGHTS_FILE} has 0 of {len(expected)} expected keys; it is not a "
                           f"{preset.name} checkpoint")
    missing = [k for k in expected if k not in covered]
    if missing:
        raise WeightsError(f"{WEIGHTS_FILE} has {found} of {len(expected)} expected keys (missing "
                           f"e.g. '{missing[0]}'); it is incomplete or not a {preset.name} checkpoint")
    unexpected = sorted(file_keys - set(expected))
    if unexpected:
        raise WeightsError(f"{WEIGHTS_FILE} has {len(unexpected)} unexpected key(s) (e.g. "
                           f"'{unexpected[0]}'); it is not a {preset.name} checkpoint")


def _open_tensors(path: Path, device: str = "cpu") -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"'{path}' is damaged or not a safetensors file ({exc}); delete it and "
                           "download it again") from None


def _check_shapes(tensors: dict, state_dict, preset: ModelPreset) -> None:
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(state_dict[name].shape):
            raise WeightsError(f"{WEIGHTS_FILE}: '{name}' has shape {tuple(tensor.shape)}, "
                               f"{preset.name} needs {tuple(state_dict[name].shape)}; it is "
                               f"not a {preset.name} checkpoint")


# --------------------------------------------------------------------------- load / save

def hub_module(net):
    """Wrap the bare network as the library does, so state-dict keys start with 'model.'."""
    import torch

    wrapper = torch.nn.Module()
    wrapper.model = net
    return wrapper


def load_into(net, folder: Path, preset: ModelPreset, device: str = "cpu"):
    """Load ``folder``'s weights into ``net`` after checking them strictly; returns ``net``.

    The file's tensors, read straight onto ``device``, become the parameters (``assign``):
    no second copy, no CPU-to-GPU transfer of the whole model afterwards.
    """
    if not has_weights(folder):
        raise WeightsError(missing_message(folder, preset))
    read_config(folder, preset)
    module = hub_module(net)
    state = module.state_dict()
    tensors = _open_tensors(folder / WEIGHTS_FILE, str(device))
    groups = shared_groups(state)
    check_keys(set(tensors), list(state), groups, preset)
    _check_shapes(tensors, state, preset)
    for group in groups:  # fill the duplicate names from the stored one
        stored = next(n for n in sorted(group) if n in tensors)
        tensors.update({n: tensors[stored] for n in group})
    module.load_state_dict(tensors, strict=True, assign=True)
    return net


def load_network(folder: Path, preset: ModelPreset, device: str = "cpu"):
    """Build the preset's network and load checked weights onto ``device`` (eval mode).

    Random initialisation is skipped: the strict check guarantees that every tensor is
    overwritten (and DA3's networks have no buffers outside the state dict).
    """
    from .model import build_network

    net = build_network(preset.network, initialise=False)
    return load_into(net, folder, preset, device)


def save_network(net, folder: Path, preset: ModelPreset) -> Path:
    """Save ``net`` in the model-hub layout (config.json + deduplicated model.safetensors)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"model_name": preset.network}), encoding="utf-8")
    partial = folder / (WEIGHTS_FILE + ".partial")  # a reader never sees half a file
    save_model(hub_module(net), str(partial), metadata={"format": "pt"})
    os.replace(partial, folder / WEIGHTS_FILE)
    return folder


def save_random(preset_name: str, folder: Path, seed: int = 0) -> Path:
    """Random-initialised weights of a preset, for tests and benchmarks without the hub."""
    import torch

    from .model import build_network

    preset = get_preset(preset_name)
    torch.manual_seed(seed)
    return save_network(build_network(preset.network), folder, preset)


def download_with_events(model: str, folder: Path) -> int:
    """``download`` for the panel's Download button: progress and the outcome as the worker's
    JSON-lines events (engine.core.protocol), a failure as one ``error`` event naming the folder."""
    from ..core.protocol import encode

    preset = get_preset(model)

    def say(event: str, **fields) -> None:
        print(encode(event, **fields), flush=True)

    say("stage", stage="downloading_weights", message=f"downloading {preset.name} from {hub_url(preset)}")
    try:
        download(preset, folder, lambda done, total: say("progress", stage="downloading_weights",
                                                         done=done, total=total, eta_s=None))
    except Exception as exc:  # any failure is one line for the panel
        detail = (str(exc).splitlines() or [""])[0][:200]
        say("error", kind="missing_weights", traceback="",
            message=f"could not download {preset.name} ({type(exc).__name__}: {detail}); "
                    f"check the connection or put its files in '{folder}'")
        return 1
    say("done", result=str(folder), views=0, seconds=0.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    rnd = sub.add_parser("save-random", help="save random-initialised weights in the hub layout")
    rnd.add_argument("--model", default="da3-small")
    rnd.add_argument("--out", required=True)
    rnd.add_argument("--seed", type=int, default=0)
    get = sub.add_parser("download", help="download a model's weights, reporting JSON-lines events")
    get.add_argument("model")
    get.add_argument("folder")
    args = parser.parse_args(argv)
    if args.command == "download":
        return download_with_events(args.model, Path(args.folder))
    folder = save_random(args.model, Path(args.out), args.seed)
    print(f"saved random {args.model} weights to {folder}", file=sys.stderr)
    return 0
