"""Create the worker's isolated Python environment (placeholder: the vendor helper fills this in)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EnvStatus:
    ok: bool
    summary: str


def env_python(target: Path) -> Path:
    target = Path(target)
    if sys.platform == "win32":
        return target / "Scripts" / "python.exe"
    return target / "bin" / "python"


def env_status(python: Path) -> EnvStatus:
    python = Path(python)
    if not python.exists():
        return EnvStatus(False, "not installed")
    return EnvStatus(True, "ready")
