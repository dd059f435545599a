"""The DA3 model presets: what each one is, where its weights live, what it may be used for.

This table is the single source for the worker (which network to build, which hub repo to
download), the panel (size, licence, metric scale) and the README.
"""

from __future__ import annotations

from dataclasses import dataclass

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
