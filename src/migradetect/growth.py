"""Growth curves: plateau diameter, model-free growth time, saturating fit."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class GrowthConfig:
    plateau_fraction: float = param(0.9, min=0.5, max=1.0)
    smoothing_frames: int = param(3, min=1, max=21)
