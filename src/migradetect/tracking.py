"""Tracking of cells (label overlap / LAP) and migrasomes (LAP with gap closing)."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class TrackingConfig:
    max_step_um: float = param(1.0, unit="um", min=0.0, help="largest migrasome move per frame")
    max_gap_frames: int = param(2, min=0, max=50)
    min_track_frames: int = param(3, min=1, help="shorter tracks are flagged short_track")
    cell_max_step_um: float = param(15.0, unit="um", min=0.0)
