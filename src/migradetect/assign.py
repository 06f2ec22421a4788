"""Assignment of each migrasome track to the cell that made it."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class AssignConfig:
    fiber_distance_um: float = param(1.5, unit="um", min=0.0)
    rear_distance_um: float = param(5.0, unit="um", min=0.0)
