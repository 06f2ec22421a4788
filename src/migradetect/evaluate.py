"""Metrics of an analysis against the simulator's ground truth.

Pure functions over tables and label stacks (detection, tracking, assignment, growth, fibers,
cells, drift), plus :func:`evaluate_dirs`, which reads a truth folder written by
``migradetect simulate`` and a per-movie result folder written by ``migradetect run`` and
returns one tidy table of metrics (``metric, value, n, note``).

Conventions: truth migrasome tables have one row per migrasome per frame with ``frame,
track_id, cell_id, y_px, x_px, diameter_um`` and, optionally, ``visible`` (only visible rows
are scored; without the column every row is) and ``detectable``. Visible rows that are not
detectable (too dim or too small for any detector, see :mod:`migradetect._synth_truth`) are
"don't care", the usual ignore-region rule: predictions are first matched one-to-one to
detectable rows only; a prediction left unmatched that lies within the matching radius of a
don't-care row is then neither a true nor a false positive (it is counted as ``n_ignored``),
and a missed don't-care row is not a false negative. Without a ``detectable`` column every
visible row is detectable. A prediction is a migrasomes table of the output
contract. Label stacks are ``(T, Y, X)`` (or a single ``(Y, X)`` frame) numpy, dask or zarr
arrays and are read one frame at a time.

Libraries: scipy (Hungarian matching, distance transforms), and traccuracy (a test extra)
for the standard CTC TRA/DET/LNK and track purity / target effectiveness, fed with our own
detection matching. The ">= 80 % of detectable frames" complete-track score, the identity
switches, the assignment and growth scores are defined by this project and written here.

Layout: this module holds the folder-level evaluation and re-exports the metric functions;
they live in ``_eval_match`` (detection, tracking), ``_eval_growth`` (assignment, growth),
``_eval_labels`` (fibers, cells, drift), ``_eval_io`` (reading folders) and ``_eval_util``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from migradetect._eval_growth import GROWTH_FLAGS, assignment_scores, growth_scores
from migradetect._eval_io import NEEDED_COLUMNS, _calibration, _labels, _read_csv, _truth_folder
from migradetect._eval_labels import (
    _iou_summary,
    _overlaps,
    _stack_matching,
    cell_iou,
    drift_scores,
    fiber_scores,
    match_cells,
    match_cells_by_centroid,
)
from migradetect._eval_match import (
    MATCHES_COLUMNS,
    detection_scores,
    ignored_predictions,
    match_detections,
    match_tracks,
    tracking_scores,
)
from migradetect._eval_util import _as_bool, _detectable, _visible

log = logging.getLogger(__name__)

__all__ = [
    "CELL_MATCH_DISTANCE_UM", "GROWTH_FLAGS", "MATCHES_COLUMNS", "NEEDED_COLUMNS", "NOTES",
    "SPEC_MIN_DIAMETER_UM", "assignment_scores", "cell_iou", "detection_scores", "drift_scores",
    "evaluate_dirs", "fiber_scores", "format_table", "growth_scores", "ignored_predictions",
    "match_cells", "match_cells_by_centroid", "match_detections", "match_tracks",
    "tracking_scores",
]


#: Short meaning of the main metrics, shown in the table's ``note`` column.
NOTES = {
    "detection.f1": "one-to-one within max(3 px, true radius)",
    "detection.localisation_rms_px": "matched pairs",
    "detection.n_ignored": "predictions on don't-care (undetectable) truth",
    "detection.f1_ge_0p5um": "truth < 0.5 um is don't care; unmatched pred < 0.5 um dropped",
    "tracking.complete_tracks": "one predicted track over >= 80% of detectable frames",
    "tracking.id_switches_per_100_track_frames": "per 100 matched true track-frames",
    "tracking.ctc_tra": "traccuracy CTC TRA on our matching",
    "assignment.accuracy": "matched tracks with the true cell (cell ids matched first)",
    "assignment.count_exact_fraction": "true cells with >= 1 track",
    "growth.plateau_rel_error_median": "tracks without growth flags",
    "growth.growth_time_abs_error_median_frames": "in frame intervals",
    "fibers.recall": "true centreline px within 2 px of the skeleton",
    "cells.cell_iou_mean": "per frame, Hungarian on IoU",
    "drift.rms_px": "after aligning both to frame 0",
}

#: Cells whose centroids are farther apart than this are never matched (µm).
CELL_MATCH_DISTANCE_UM = 10.0


def _add(rows: list, section: str, scores: dict[str, float], n_key: str | None,
         n_keys: dict[str, str] | None = None) -> None:
    for key, value in scores.items():
        nk = (n_keys or {}).get(key, n_key)
        n = scores.get(nk, math.nan) if nk else math.nan
        name = f"{section}.{key}"
        rows.append({"metric": name, "value": float(value),
                     "n": -1 if not np.isfinite(n) else int(n), "note": NOTES.get(name, "")})


def _skip(rows: list, section: str, why: str) -> None:
    rows.append({"metric": section, "value": math.nan, "n": 0, "note": f"skipped: {why}"})


def _why_not(t_lab: dict[str, Any], p_lab: dict[str, Any], name: str) -> str | None:
    """Why two label stacks cannot be compared (None if they can)."""
    if name not in t_lab or name not in p_lab:
        return f"labels.zarr/{name} missing in truth or result"
    if tuple(t_lab[name].shape) != tuple(p_lab[name].shape):
        return (f"labels.zarr/{name} shapes differ: truth {tuple(t_lab[name].shape)}, "
                f"result {tuple(p_lab[name].shape)}")
    return None


def _cells_section(
    rows: list, t_lab: dict[str, Any], p_lab: dict[str, Any], t_cf: pd.DataFrame | None,
    p_cf: pd.DataFrame | None, *, max_distance_px: float,
) -> tuple[pd.DataFrame | None, str]:
    """Add the cell IoU rows; return the cell id matching (None if impossible) and its method.

    Label-stack IoU is preferred; centroid tracks of cell_frames.csv are the fallback, also
    used when the result's label values are not its tracked cell ids."""
    cell_matching = None
    if (why := _why_not(t_lab, p_lab, "cells")) is None:
        overlaps = _overlaps(t_lab["cells"], p_lab["cells"])
        cell_matching, best = _stack_matching(overlaps)
        _add(rows, "cells", _iou_summary(overlaps, best), "n_true_cell_frames",
             {"cell_iou_tracked_mean": "n_true_cells"})
        if p_cf is not None and len(cell_matching) and \
                cell_matching["pred_cell_id"].isin(p_cf["cell_id"]).mean() < 0.5:
            cell_matching = None
        else:
            return cell_matching, "cell ids matched by label IoU"
    else:
        _skip(rows, "cells", why)
    if t_cf is not None and p_cf is not None:
        return (match_cells_by_centroid(t_cf, p_cf, max_distance_px=max_distance_px),
                "cell ids matched by centroid tracks")
    return None, ""


#: Smallest diameter of the specified range (0.5-3 µm), for the extra detection rows (µm).
SPEC_MIN_DIAMETER_UM = 0.5


def _detection_in_range(t_mig: pd.DataFrame, p_mig: pd.DataFrame, *,
                        pixel_size_um: float) -> dict[str, float]:
    """Detection scores restricted to the specified range (true diameter >= 0.5 µm).

    Smaller true rows become don't care; predictions smaller than 0.5 µm that match no true
    row in range are out of range and dropped (not false positives)."""
    t = t_mig.copy()
    det = np.zeros(len(t), dtype=bool)
    vis = _as_bool(t["visible"]) if "visible" in t.columns else np.ones(len(t), dtype=bool)
    det[vis] = _detectable(t)
    t["detectable"] = det & (t["diameter_um"].to_numpy(float) >= SPEC_MIN_DIAMETER_UM)
    m = match_detections(t, p_mig, pixel_size_um=pixel_size_um)
    small = p_mig["diameter_um"].to_numpy(float) < SPEC_MIN_DIAMETER_UM
    p = p_mig[~small | p_mig.index.isin(m["pred_index"])]
    s = detection_scores(t, p, pixel_size_um=pixel_size_um, matches=m)
    tag = f"ge_{SPEC_MIN_DIAMETER_UM:g}um".replace(".", "p")
    keys = ("n_truth", "n_pred", "n_ignored", "tp", "fp", "fn", "precision", "recall", "f1")
    return {f"{k}_{tag}": s[k] for k in keys}


def evaluate_dirs(truth_dir: str | Path, result_dir: str | Path) -> pd.DataFrame:
    """Score a per-movie result folder against the simulator's truth.

    Parameters
    ----------
    truth_dir
        The folder written by ``migradetect simulate`` (holding ``truth/``) or its ``truth/``
        folder itself.
    result_dir
        A per-movie result folder written by ``migradetect run`` (``migrasomes.csv`` ...).

    Returns
    -------
    DataFrame
        ``metric`` (``section.name``), ``value``, ``n`` (the sample size behind it, -1 if none)
        and ``note``. Sections whose inputs are missing get one row noting why they were
        skipped. Pixel size and frame interval come from ``truth.json`` (or the result's
        ``manifest.json``).
    """
    truth, result = _truth_folder(Path(truth_dir)), Path(result_dir)
    pixel_size_um, frame_interval_s = _calibration(truth, result)
    t_mig = _visible(_read_csv(truth / "migrasomes.csv", required=True)).reset_index(drop=True)
    # A result carrying `visible` is the truth itself (a self-check): filter it the same way.
    p_mig = _visible(_read_csv(result / "migrasomes.csv", required=True)).reset_index(drop=True)
    rows: list[dict] = []

    matches = match_detections(t_mig, p_mig, pixel_size_um=pixel_size_um)
    _add(rows, "detection", detection_scores(t_mig, p_mig, pixel_size_um=pixel_size_um,
                                             matches=matches), "n_truth")
    _add(rows, "detection", _detection_in_range(t_mig, p_mig, pixel_size_um=pixel_size_um),
         "n_truth_ge_0p5um")
    track_matching = match_tracks(t_mig, p_mig, matches)
    _add(rows, "tracking", tracking_scores(t_mig, p_mig, pixel_size_um=pixel_size_um,
                                           matches=matches, track_matching=track_matching),
         "n_true_tracks")

    t_lab, p_lab = _labels(truth), _labels(result)
    t_tracks, p_tracks = _read_csv(truth / "tracks.csv"), _read_csv(result / "tracks.csv")
    cell_matching, how = _cells_section(rows, t_lab, p_lab, _read_csv(truth / "cell_frames.csv"),
                                        _read_csv(result / "cell_frames.csv"),
                                        max_distance_px=CELL_MATCH_DISTANCE_UM / pixel_size_um)
    if t_tracks is None or p_tracks is None:
        _skip(rows, "assignment", "tracks.csv missing in truth or result")
        _skip(rows, "growth", "tracks.csv missing in truth or result")
    else:
        if cell_matching is None:
            _skip(rows, "assignment", "no cell labels or cell_frames.csv to match cell ids")
        else:
            _add(rows, "assignment", assignment_scores(t_tracks, p_tracks, track_matching,
                                                       cell_matching=cell_matching),
                 "n_matched_tracks", {k: "n_cells_with_migrasomes" for k in
                                      ("count_exact_fraction", "count_abs_error_mean")})
            for row in rows:
                if row["metric"] == "assignment.accuracy":
                    row["note"] = f"{row['note']}; {how}"
        if np.isfinite(frame_interval_s):
            _add(rows, "growth", growth_scores(t_tracks, p_tracks, track_matching,
                                               frame_interval_s=frame_interval_s), "n_used")
        else:
            _skip(rows, "growth", "no frame_interval_s in truth.json or manifest.json")

    if (why := _why_not(t_lab, p_lab, "fibers")) is None:
        _add(rows, "fibers", fiber_scores(t_lab["fibers"], p_lab["fibers"]), "n_true_px",
             {"precision": "n_pred_px"})
    else:
        _skip(rows, "fibers", why)

    t_drift, p_drift = _read_csv(truth / "drift.csv"), _read_csv(result / "drift.csv")
    if t_drift is None or p_drift is None:
        _skip(rows, "drift", "drift.csv missing in truth or result")
    else:
        _add(rows, "drift", drift_scores(t_drift, p_drift), "n_frames")
    table = pd.DataFrame(rows, columns=["metric", "value", "n", "note"])
    return table.astype({"value": float, "n": np.int64})


def format_table(df: pd.DataFrame) -> str:
    """The metrics table as aligned plain text (values to 4 significant digits)."""
    cells = [["metric", "value", "n", "note"]]
    for r in df.itertuples(index=False):
        value = "-" if not np.isfinite(r.value) else f"{r.value:.4g}"
        cells.append([str(r.metric), value, "" if r.n < 0 else str(r.n), str(r.note)])
    widths = [max(len(row[k]) for row in cells) for k in range(4)]
    lines = []
    for i, row in enumerate(cells):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                                row[2].rjust(widths[2]), row[3]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
