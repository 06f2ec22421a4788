"""Assignment (migrasome track to cell) and growth-fit metrics on matched tracks.

Private; the public names are re-exported by :mod:`migradetect.evaluate`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from migradetect._eval_util import _as_bool, _median

GROWTH_FLAGS = ("born_before_start", "growing_at_end", "short_track")


# --------------------------------------------------------------------------- assignment, growth


def _cell_map(cell_matching: pd.DataFrame | None) -> dict[int, int] | None:
    if cell_matching is None:
        return None
    return {int(p): int(t) for t, p in zip(cell_matching["truth_cell_id"],
                                           cell_matching["pred_cell_id"], strict=True)}


def assignment_scores(
    truth_tracks: pd.DataFrame,
    pred_tracks: pd.DataFrame,
    matching: pd.DataFrame,
    *,
    cell_matching: pd.DataFrame | None = None,
    min_track_frames: int = 3,
    n_frames: int | None = None,
) -> dict[str, float]:
    """How well migrasome tracks were assigned to their cells, and per-cell counts.

    Predicted cell ids are the tracker's own: they are first translated to true cell ids with
    ``cell_matching`` (from :func:`match_cells` or :func:`match_cells_by_centroid`); a
    predicted cell without a match is wrong for every track.

    Parameters
    ----------
    truth_tracks, pred_tracks
        Track tables (``track_id, cell_id``; -1 = no cell).
    matching
        True track -> predicted track (:func:`match_tracks`), one row per true track that was
        visible at least once (only those are counted per cell); rows with ``pred_track_id``
        -1 are left out of the accuracy.
    cell_matching
        ``truth_cell_id, pred_cell_id`` pairs; ``None`` means predicted ids are true ids.
    min_track_frames
        Per-cell counts use the tracks ``cells.csv``'s ``n_migrasomes`` counts
        (:func:`migradetect.across_time.counted_tracks`): predicted tracks not flagged
        ``short_track`` and lasting (still seen at the end of the movie, or seen in enough
        frames: :func:`migradetect.across_time.lasting_tracks`), and true tracks of at least
        this many frames (the pipeline's default ``short_track`` threshold) that are lasting
        by the same rule. Accuracy and coverage use every matched track.
    n_frames
        Frames in the movie (for the lasting rule); None: one more than the largest
        ``last_frame`` of either table (no lasting rule when neither has ``last_frame``).

    Returns
    -------
    dict
        ``n_matched_tracks``; ``accuracy`` (fraction of matched true tracks whose
        predicted cell is their true cell; -1 is wrong wherever the truth has a cell and right
        where it has none); ``coverage`` (fraction with a predicted cell);
        ``n_cells_with_migrasomes`` (true cells with >= 1 true track); ``count_exact_fraction``
        (of those, fraction whose matched predicted cell has exactly as many tracks) and
        ``count_abs_error_mean`` (tracks per cell).
    """
    to_true = _cell_map(cell_matching)
    true_cell = dict(zip(truth_tracks["track_id"].astype(int), truth_tracks["cell_id"].astype(int),
                         strict=True))
    pred_cell = dict(zip(pred_tracks["track_id"].astype(int), pred_tracks["cell_id"].astype(int),
                         strict=True))
    m = matching[matching["pred_track_id"] >= 0]
    correct, covered = [], []
    for t, p in zip(m["truth_track_id"].astype(int), m["pred_track_id"].astype(int), strict=True):
        pc = pred_cell.get(p, -1)
        mapped = pc if (to_true is None or pc < 0) else to_true.get(pc, -2)
        correct.append(mapped == true_cell.get(t, -1))
        covered.append(pc >= 0)
    # Per-cell counts: the true tracks of a cell that were visible (those listed in
    # `matching`) against every predicted track of its matched predicted cell.
    # Both sides count what a per-cell count in cells.csv counts (across_time.counted_tracks):
    # tracks of at least `min_track_frames` frames (the pipeline flags shorter ones
    # `short_track`; a 1-2 frame true track is not countable either way) that are lasting
    # (still there at the end of the movie, or seen in enough frames).
    from migradetect.across_time import counted_tracks, lasting_tracks

    if n_frames is None:
        lasts = [t["last_frame"].max() for t in (truth_tracks, pred_tracks)
                 if "last_frame" in t.columns and len(t)]
        n_frames = int(max(lasts)) + 1 if lasts else None
    seen = truth_tracks[truth_tracks["track_id"].isin(matching["truth_track_id"])]
    if "n_frames" in seen.columns:
        seen = seen[seen["n_frames"].astype(int) >= min_track_frames]
        if n_frames is not None:
            seen = seen[lasting_tracks(seen, n_frames).to_numpy(bool)]
    true_counts = seen.loc[seen["cell_id"] >= 0, "cell_id"].astype(int).value_counts()
    counted = pred_tracks
    if "short_track" in counted.columns:
        if n_frames is None:  # movie length unknown (no last_frame): the flag alone
            counted = counted[~_as_bool(counted["short_track"])]
        else:
            counted = counted[counted_tracks(counted.assign(short_track=_as_bool(
                counted["short_track"])), n_frames).to_numpy(bool)]
    elif "n_frames" in counted.columns and n_frames is None:
        counted = counted[counted["n_frames"].astype(int) >= min_track_frames]
    elif "n_frames" in counted.columns:
        counted = counted[(counted["n_frames"].astype(int) >= min_track_frames)
                          & lasting_tracks(counted, n_frames)]
    pred_counts = counted.loc[counted["cell_id"] >= 0, "cell_id"].astype(int).value_counts()
    to_pred = ({t: t for t in true_counts.index} if to_true is None
               else {t: p for p, t in to_true.items()})
    errors = []
    for cell, n_true in true_counts.items():
        p = to_pred.get(int(cell))
        n_pred = int(pred_counts.get(p, 0)) if p is not None else 0
        errors.append(abs(n_pred - int(n_true)))
    errors_a = np.asarray(errors, dtype=float)
    return {
        "n_matched_tracks": float(len(m)),
        "accuracy": float(np.mean(correct)) if correct else math.nan,
        "coverage": float(np.mean(covered)) if covered else math.nan,
        "n_cells_with_migrasomes": float(len(true_counts)),
        "count_exact_fraction": float(np.mean(errors_a == 0)) if errors else math.nan,
        "count_abs_error_mean": float(np.mean(errors_a)) if errors else math.nan,
    }


def _flag(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.zeros(len(table), dtype=bool)
    return _as_bool(table[name])


def growth_scores(
    truth_tracks: pd.DataFrame,
    pred_tracks: pd.DataFrame,
    track_matching: pd.DataFrame,
    *,
    frame_interval_s: float,
) -> dict[str, float]:
    """Errors of the growth fit (plateau diameter, growth time) on matched tracks.

    Pairs flagged ``born_before_start``, ``growing_at_end`` or ``short_track`` in either the
    truth or the prediction are left out (their growth is not fully observed); the numbers
    left out per flag are reported.

    Parameters
    ----------
    truth_tracks, pred_tracks
        Track tables with ``track_id, plateau_diameter_um, growth_time_s`` and the flags.
    track_matching
        True track -> predicted track (:func:`match_tracks`).
    frame_interval_s
        Time between frames in s.

    Returns
    -------
    dict
        ``n_matched_tracks``, ``excluded_<flag>`` per flag, ``n_used``,
        ``plateau_rel_error_median`` (``|p_pred - p_true| / p_true``) and
        ``growth_time_abs_error_median_frames`` (``|g_pred - g_true|`` in frame intervals).
    """
    m = track_matching[track_matching["pred_track_id"] >= 0]
    t = truth_tracks.set_index(truth_tracks["track_id"].astype(int))
    p = pred_tracks.set_index(pred_tracks["track_id"].astype(int))
    m = m[m["truth_track_id"].isin(t.index) & m["pred_track_id"].isin(p.index)]
    tt, pp = t.loc[m["truth_track_id"]], p.loc[m["pred_track_id"]]
    keep = np.ones(len(m), dtype=bool)
    out: dict[str, float] = {"n_matched_tracks": float(len(m))}
    for name in GROWTH_FLAGS:
        flagged = _flag(tt, name) | _flag(pp, name)
        out[f"excluded_{name}"] = float(flagged.sum())
        keep &= ~flagged
    out["n_used"] = float(keep.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        p_true = tt["plateau_diameter_um"].to_numpy(float)[keep]
        p_pred = pp["plateau_diameter_um"].to_numpy(float)[keep]
        g_true = tt["growth_time_s"].to_numpy(float)[keep]
        g_pred = pp["growth_time_s"].to_numpy(float)[keep]
        out["plateau_rel_error_median"] = _median(np.abs(p_pred - p_true) / p_true)
        out["growth_time_abs_error_median_frames"] = _median(
            np.abs(g_pred - g_true) / float(frame_interval_s))
    return out
