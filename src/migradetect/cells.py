"""Cell bodies: foreground, touching cells split, one label image per frame."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class CellConfig:
    smoothing_um: float = param(1.0, unit="um", min=0.0, max=20.0)
    min_area_um2: float = param(80.0, unit="um2", min=0.0)
    split_touching: bool = param(True)
    min_cell_distance_um: float = param(8.0, unit="um", min=0.5, max=200.0,
                                        help="smallest distance between two cell centres")
