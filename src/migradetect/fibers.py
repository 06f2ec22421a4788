"""Retraction fibers: ridge measure, hysteresis, skeleton graphs (skan)."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class FiberConfig:
    low_threshold: float = param(2.0, min=0.0, help="hysteresis low, in noise sigmas")
    high_threshold: float = param(4.0, min=0.0, help="hysteresis high, in noise sigmas")
    min_length_um: float = param(2.0, unit="um", min=0.0)
    attach_distance_um: float = param(1.0, unit="um", min=0.0,
                                      help="a fiber ending this close to a cell is attached")
