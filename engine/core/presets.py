"""The DA3 model presets: what each one is, where its weights live, what it may be used for.

This table is the single source for the worker (which network to build, which hub repo to
download), the panel (size, licence, metric scale) and the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HUB_ORG = "depth-anything"
DEFAULT_MODEL = "da3-small"


@dataclass(frozen=True)
class ModelPreset:
    name: str  # preset name, also the network config name in depth_anything_3/configs
    hub_repo: str  # model hub repository holding config.json + model.safetensors
    params_m: float  # parameters, millions
    download_mb: int  # size of model.safetensors (fp32), MiB
    licence: str
    commercial_use: bool
    metric: bool  # depth in metres
    multi_view: bool  # estimates camera poses across views (False: one view at a time)
    config_name: str = ""  # network config, when it differs from ``name`` (the -1.1 releases)

    @property
    def network(self) -> str:
        return self.config_name or self.name

    @property
    def label(self) -> str:
        scale = "metric" if self.metric else "relative"
        return f"{self.name} ({self.params_m:.0f}M, {scale}, {self.licence})"


def _preset(name, repo, params_m, licence, metric=False, multi_view=True, config_name=""):
    commercial = licence.startswith("Apache")
    download_mb = round(params_m * 4 * 1e6 / 2**20)
    return ModelPreset(name, f"{HUB_ORG}/{repo}", params_m, download_mb, licence, commercial,
                       metric, multi_view, config_name)


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        _preset("da3-small", "DA3-SMALL", 34.3, "Apache-2.0"),
        _preset("da3-base", "DA3-BASE", 135.0, "Apache-2.0"),
        _preset("da3-large", "DA3-LARGE", 411.0, "CC-BY-NC-4.0"),
        _preset("da3-large-1.1", "DA3-LARGE-1.1", 411.0, "CC-BY-NC-4.0", config_name="da3-large"),
        _preset("da3-giant", "DA3-GIANT", 1356.0, "CC-BY-NC-4.0"),
        _preset("da3-giant-1.1", "DA3-GIANT-1.1", 1356.0, "CC-BY-NC-4.0", config_name="da3-giant"),
        _preset("da3metric-large", "DA3METRIC-LARGE", 334.0, "Apache-2.0", metric=True,
                multi_view=False),
        _preset("da3mono-large", "DA3MONO-LARGE", 334.0, "Apache-2.0", multi_view=False),
        _preset("da3nested-giant-large", "DA3NESTED-GIANT-LARGE", 1690.0, "CC-BY-NC-4.0",
                metric=True),
        _preset("da3nested-giant-large-1.1", "DA3NESTED-GIANT-LARGE-1.1", 1690.0, "CC-BY-NC-4.0",
                metric=True, config_name="da3nested-giant-large"),
    )
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------- where the weights live
# (the model hub's layout; Blender checks it before a run, the worker loads from it)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class WeightsError(Exception):
    """Weights that are missing or wrong; ``kind`` is the protocol's error kind."""

    def __init__(self, message: str, kind: str = "missing_weights"):
        super().__init__(message)
        self.kind = kind


def hub_url(preset: ModelPreset) -> str:
    return f"https://huggingface.co/{preset.hub_repo}"


def default_folder(models_dir: str | Path, preset: ModelPreset) -> Path:
    return Path(models_dir).expanduser() / preset.name


def has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file()


def resolve_folder(weights: str, models_dir: str, preset: ModelPreset) -> Path:
    """The folder the weights are (or will be downloaded) in: ``weights`` or models_dir/<name>."""
    if weights:
        path = Path(weights).expanduser()
        return path.parent if path.suffix == ".safetensors" else path
    if not models_dir:
        raise WeightsError(f"no weights folder and no models folder given for {preset.name}; "
                           "set the models folder in the preferences")
    return default_folder(models_dir, preset)


def missing_message(folder: Path, preset: ModelPreset) -> str:
    return (f"no {preset.name} weights in '{folder}': put {CONFIG_FILE} and {WEIGHTS_FILE} from "
            f"{hub_url(preset)} there, or allow online access to download them")
