"""Migrasome puncta: multi-scale detection, sub-pixel centre, diameter in µm, intensity."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class MigrasomeConfig:
    min_diameter_um: float = param(0.4, unit="um", min=0.05, max=10.0)
    max_diameter_um: float = param(3.5, unit="um", min=0.1, max=20.0)
    threshold_snr: float = param(3.0, min=0.0, help="peak above background, in noise sigmas")
    reject_inside_cells: bool = param(True)
