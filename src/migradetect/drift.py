"""Stage drift estimation (cells masked out; anchored structures as fiducials)."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = param(True)
    max_jump_um: float = param(10.0, unit="um", min=0.0, help="largest sudden stage jump searched")
