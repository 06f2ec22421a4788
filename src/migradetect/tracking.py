"""Linking migrasome detections into tracks (anchored, growing objects).

Public functions
----------------
``link_migrasomes(detections, *, pixel_size_um, config=None, drift=None) -> DataFrame``
    The detections (input order, input columns kept) plus ``track_id`` (int64, 0..n-1 in
    order of first appearance; every row has a track, unlinked singletons are one-frame
    tracks) and ``y_px_drift_corrected``, ``x_px_drift_corrected`` (image coordinate minus
    the cumulative drift of its frame; equal to ``y_px, x_px`` when ``drift`` is None).

Cell tracking (``track_cells``, ``relabel``, ``summarize_cells``) lives in
:mod:`migradetect.celltracking` and is re-exported here.

Why trackpy: measured on the same 31k detections, ``trackpy`` links in 0.2 s and ``laptrack``
in 11 s with equal accuracy; the pipeline targets >= 10 frames/s, so the linking runs on
trackpy's array-level ``link_iter`` (its DataFrame front end sorts in place, which pandas 3
deprecates). The cost is the Euclidean distance in a scaled ``(y, x, w * diameter)`` space (µm):
migrasomes are anchored (``max_step_um`` small) and change size slowly, so a detection of very
different size is a worse match than a static one; linking is one-to-one, so two touching
migrasomes stay two tracks; ``memory = max_gap_frames`` closes gaps of missed detections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import trackpy

from migradetect.celltracking import relabel, summarize_cells, track_cells
from migradetect.drift import drift_at_frames
from migradetect.errors import InputError
from migradetect.params import param

__all__ = ["TrackingConfig", "link_migrasomes", "drift_at_frames", "track_cells", "relabel",
           "summarize_cells"]

log = logging.getLogger(__name__)
trackpy.quiet()  # trackpy reports every frame at INFO level otherwise


@dataclass(frozen=True)
class TrackingConfig:
    """Parameters of migrasome linking and cell tracking."""

    max_step_um: float = param(
        1.0, unit="um", min=0.01, max=20.0,
        help="largest distance (drift-corrected, in the scaled (y, x, size) space) between a "
             "migrasome's positions in two linked frames; migrasomes are anchored",
    )
    max_gap_frames: int = param(
        2, unit="frames", min=0, max=50,
        help="frames a migrasome may be missed and still keep its track (gap closing)",
    )
    diameter_weight: float = param(
        0.5, unit="um/um", min=0.0, max=10.0,
        help="µm of displacement that 1 µm of diameter change costs when linking",
    )
    cell_max_step_um: float = param(
        15.0, unit="um", min=0.0, max=500.0,
        help="largest centroid move of a cell per frame when overlap gives no match",
    )
    cell_min_iou: float = param(
        0.05, min=0.0, max=1.0,
        help="smallest intersection-over-union of a cell's masks in two frames to link by overlap",
    )
    cell_max_gap_frames: int = param(
        5, unit="frames", min=0, max=100,
        help="frames a cell may vanish (merged with a neighbour, missed) and keep its id",
    )


def _link(coords: np.ndarray, frames: np.ndarray, search_range: float, memory: int) -> np.ndarray:
    """trackpy link_iter over every frame from the first to the last; labels per row."""
    order = np.argsort(frames, kind="stable")
    f_sorted = frames[order]
    f0, f1 = int(f_sorted[0]), int(f_sorted[-1])
    bounds = np.searchsorted(f_sorted, np.arange(f0, f1 + 2))
    labels = np.empty(len(frames), dtype=np.int64)

    def frames_iter():
        for i, t in enumerate(range(f0, f1 + 1)):
            yield t, coords[order[bounds[i]:bounds[i + 1]]]

    def run(**adaptive):
        for i, (_, ids) in enumerate(trackpy.link_iter(frames_iter(), search_range,
                                                       memory=memory, **adaptive)):
            labels[order[bounds[i]:bounds[i + 1]]] = ids

    try:
        run()
    except trackpy.SubnetOversizeException:
        log.info("crowded linking subnetwork: retrying with an adaptive search range")
        run(adaptive_stop=0.1 * search_range, adaptive_step=0.9)
    return labels


def link_migrasomes(
    detections: pd.DataFrame,
    *,
    pixel_size_um: float,
    config: TrackingConfig | None = None,
    drift: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Link migrasome detections over frames into tracks (see the module docstring).

    Parameters
    ----------
    detections
        One row per detection: ``frame``, ``y_px``, ``x_px`` (image coordinates, px),
        ``diameter_um`` (µm; NaN treated as 0 in the size term).
    pixel_size_um
        µm per pixel.
    config
        :class:`TrackingConfig`; defaults when None.
    drift
        Cumulative drift table ``frame, dy_px, dx_px`` (see :mod:`migradetect.drift`); linking
        runs in drift-corrected coordinates.

    Returns
    -------
    DataFrame
        ``detections`` with ``track_id`` (int64), ``y_px_drift_corrected`` and
        ``x_px_drift_corrected`` added (or replaced).
    """
    config = config or TrackingConfig()
    missing = {"frame", "y_px", "x_px", "diameter_um"} - set(detections.columns)
    if missing:
        raise InputError(f"the detection table lacks the columns {sorted(missing)}.",
                         fix="pass the table made by migrasomes.detect_migrasomes.")
    if not pixel_size_um > 0:
        raise InputError(f"pixel_size_um must be > 0, got {pixel_size_um}.",
                         fix="give the pixel size in µm.")
    out = detections.reset_index(drop=True).copy()
    frames = out["frame"].to_numpy(np.int64)
    dy, dx = drift_at_frames(drift, frames)
    out["y_px_drift_corrected"] = out["y_px"].to_numpy(np.float64) - dy
    out["x_px_drift_corrected"] = out["x_px"].to_numpy(np.float64) - dx
    if len(out) == 0:
        out["track_id"] = pd.Series([], dtype="int64")
        return out
    coords = np.column_stack([
        out["y_px_drift_corrected"].to_numpy(np.float64) * pixel_size_um,
        out["x_px_drift_corrected"].to_numpy(np.float64) * pixel_size_um,
        np.nan_to_num(out["diameter_um"].to_numpy(np.float64)) * config.diameter_weight,
    ])
    raw = _link(coords, frames, config.max_step_um, config.max_gap_frames)
    # renumber 0..n-1 in order of first appearance (frame, then row)
    order = np.lexsort((np.arange(len(raw)), frames))
    _, first_pos = np.unique(raw[order], return_index=True)
    firsts = raw[order][np.sort(first_pos)]
    new_id = {int(r): i for i, r in enumerate(firsts)}
    out["track_id"] = np.array([new_id[int(r)] for r in raw], dtype=np.int64)
    log.debug("linked %d detections into %d tracks", len(out), len(new_id))
    return out
