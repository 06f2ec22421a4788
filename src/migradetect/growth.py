"""Growth curves of migrasome tracks: size at plateau, model-free growth time, saturating fit.

Public function
---------------
``fit_tracks(migrasomes, *, frame_interval_s, n_frames, config, pixel_size_um=None)
-> DataFrame[schema.TRACKS minus experiment, movie, cell_id, assign_reason]``

Definitions (per track, frames sorted; ``d`` is ``diameter_um``; ``s`` is ``d`` smoothed by a
centred moving median over ``smoothing_frames`` observed frames, shorter at the ends):

- ``max_diameter_um``: the largest value of ``s`` (the moving median keeps single noisy
  frames from setting the maximum).
- ``growth_time_s``: time from the first detection until ``s`` first reaches
  ``plateau_fraction`` (default 90 %) of ``max_diameter_um``, linearly interpolated between
  the two frames around the crossing. NaN when the track is born before the movie starts
  (its birth was not seen), or has fewer than 2 frames.
- ``plateau_diameter_um``: the median of the raw diameters over the plateau: the frames from
  the one where ``s`` first reaches ``plateau_fraction * max`` until (excluding) the first
  later frame where ``s`` falls below it again (shrinkage).
- ``final_diameter_um``: the median of the last ``smoothing_frames`` raw diameters;
  ``shrinkage_um = max(0, max_diameter_um - final_diameter_um)``: shrinkage after the plateau
  is reported, never fitted away.
- ``fit_plateau_diameter_um``, ``fit_time_constant_s``, ``fit_r2``: least-squares fit of
  ``d(t) = dp (1 - exp(-(t - t0) / tau))`` (``d = 0`` before ``t0``) to the frames up to the
  end of the plateau, with bounds ``0 < dp <= 3 max``, ``0.05 dt <= tau <= 100 T``,
  ``t0`` up to 10 frames before the first detection. NaN when there are fewer than
  ``min_fit_points`` frames or the fit fails. ``fit_r2`` is the coefficient of determination.
- Flags: ``born_before_start`` (``first_frame == 0``), ``growing_at_end`` (the track reaches
  the last frame of the movie and a straight line through its last ``end_frames`` diameters
  rises by more than ``end_rise_fraction`` of ``max_diameter_um``), ``short_track``
  (``n_frames < min_track_frames``; flagged, never dropped).
- ``y_um, x_um``: median position of the track (image coordinates in µm, from ``y_um/x_um``
  columns, else ``y_px/x_px`` times ``pixel_size_um``, else NaN).
- ``intensity_integrated_max``: maximum of ``intensity_integrated_corrected`` when present,
  else of ``intensity_integrated``.

A single-frame movie (``n_frames == 1``) gives NaN growth columns and no error.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import OptimizeWarning, curve_fit

from migradetect import schema
from migradetect.errors import InputError
from migradetect.params import param

log = logging.getLogger(__name__)

#: Columns of the table fit_tracks returns (schema.TRACKS without experiment/movie/assignment).
GROWTH_COLUMNS = {
    c: d for c, d in schema.TRACKS.items()
    if c not in ("experiment", "movie", "cell_id", "assign_reason")
}


@dataclass(frozen=True)
class GrowthConfig:
    """Parameters of the growth-curve analysis of migrasome tracks."""

    plateau_fraction: float = param(
        0.9, min=0.5, max=1.0,
        help="growth ends when the smoothed diameter first reaches this fraction of its maximum",
    )
    smoothing_frames: int = param(
        3, unit="frames", min=1, max=21,
        help="window of the centred moving median applied to the diameter before timing",
    )
    min_track_frames: int = param(
        3, unit="frames", min=1, help="tracks with fewer frames are flagged short_track",
    )
    min_fit_points: int = param(
        5, unit="frames", min=4, max=100,
        help="fewest frames (up to the plateau end) needed for the saturating fit",
    )
    onset_min_r2: float = param(
        0.8, min=0.0, max=1.0,
        help="growth time is measured from the fitted onset of growth (not the first "
             "detection) when the saturating fit reaches this R^2; 1.0 disables it",
    )
    end_frames: int = param(
        4, unit="frames", min=2, max=50,
        help="frames at the end of a track used to decide whether it is still growing",
    )
    end_rise_fraction: float = param(
        0.05, min=0.0, max=1.0,
        help="a rise over the last end_frames larger than this fraction of the maximum "
             "diameter flags growing_at_end",
    )


def _saturating(t: np.ndarray, dp: float, tau: float, t0: float) -> np.ndarray:
    return dp * (1.0 - np.exp(-np.clip(t - t0, 0.0, None) / tau))


def _saturating_jac(t: np.ndarray, dp: float, tau: float, t0: float) -> np.ndarray:
    """Partial derivatives of :func:`_saturating` by (dp, tau, t0): given to the fit, it
    saves the three extra model calls per step of a finite-difference Jacobian."""
    u = np.clip(t - t0, 0.0, None)
    e = np.exp(-u / tau)
    return np.column_stack([1.0 - e, -dp * e * u / tau**2, np.where(u > 0, -dp * e / tau, 0.0)])


def _fit(t: np.ndarray, d: np.ndarray, dt: float,
         d_max: float) -> tuple[float, float, float, float]:
    """Bounded saturating fit; (dp, tau, r2, t0) or NaNs when it fails."""
    duration = max(float(t[-1] - t[0]), dt)
    lo = [1e-6, 0.05 * dt, t[0] - 10.0 * dt]
    hi = [3.0 * max(d_max, 1e-6), 100.0 * duration, t[0]]
    p0 = [max(d_max, 1e-3), max(duration / 3.0, 0.1 * dt), t[0] - 0.5 * dt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(_saturating, t, d, p0=p0, bounds=(lo, hi), maxfev=2000,
                                jac=_saturating_jac)
    except (RuntimeError, ValueError):
        return math.nan, math.nan, math.nan, math.nan
    resid = d - _saturating(t, *popt)
    ss_tot = float(np.sum((d - d.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else math.nan
    return float(popt[0]), float(popt[1]), r2, float(popt[2])


def _moving_median(d: np.ndarray, window: int) -> np.ndarray:
    """Centred moving median over ``window`` values, fewer at the ends (as pandas'
    ``rolling(window, center=True, min_periods=1).median()``)."""
    if window <= 1 or len(d) <= 1:
        return d.copy()
    lo = window // 2
    pad = np.concatenate([np.full(lo, np.nan), d, np.full(window - 1 - lo, np.nan)])
    return np.nanmedian(sliding_window_view(pad, window), axis=1)


def _grouped_moving_median(d: np.ndarray, group: np.ndarray, window: int) -> np.ndarray:
    """:func:`_moving_median` of each run of equal ``group`` values (rows sorted by group),
    for all groups at once: the same windows (neighbours of other groups are NaN padding)
    through one ``np.nanmedian``, so the values are those of a call per group (one call
    per track cost a tenth of the growth step)."""
    n = len(d)
    if window <= 1 or n == 0:
        return d.copy()
    lo = window // 2
    idx = np.arange(n)[:, None] + (np.arange(window) - lo)[None, :]
    inside = (idx >= 0) & (idx < n)
    idx = np.clip(idx, 0, n - 1)
    inside &= group[idx] == group[:, None]
    # (a group of one value: its window holds it alone, and the median is that value)
    return np.nanmedian(np.where(inside, d[idx], np.nan), axis=1)


def _nanmedian(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else math.nan


def _one_track(
    frames: np.ndarray, d: np.ndarray, yx_um: tuple[np.ndarray | None, np.ndarray | None],
    intensity: np.ndarray | None, dt: float, n_frames: int, config: GrowthConfig,
    smoothed: np.ndarray,
) -> dict:
    """One track's row; its arrays sorted by frame (``yx_um``: µm positions or None).
    ``smoothed``: the moving median of its finite diameters (:func:`_grouped_moving_median`
    computes it for all tracks at once)."""
    first, last = int(frames[0]), int(frames[-1])
    n = len(frames)
    row: dict = {
        "first_frame": first, "last_frame": last, "n_frames": n,
        "birth_time_s": first * dt,
        "born_before_start": first == 0,
        "short_track": n < config.min_track_frames,
    }
    for col, v in zip(("y_um", "x_um"), yx_um, strict=True):
        row[col] = math.nan if v is None else _nanmedian(v)
    if intensity is None or not np.isfinite(intensity).any():
        row["intensity_integrated_max"] = math.nan
    else:
        row["intensity_integrated_max"] = float(np.nanmax(intensity))

    ok = np.isfinite(d)
    frames, d = frames[ok], d[ok]
    nan_cols = ("max_diameter_um", "plateau_diameter_um", "growth_time_s", "fit_r2",
                "fit_plateau_diameter_um", "fit_time_constant_s", "final_diameter_um",
                "shrinkage_um")
    row.update({c: math.nan for c in nan_cols})
    row["growing_at_end"] = False
    if n_frames <= 1 or len(d) == 0:
        return row
    s = smoothed
    d_max = float(s.max())
    level = config.plateau_fraction * d_max
    i90 = int(np.argmax(s >= level))
    below = np.nonzero(s[i90:] < level)[0]
    i_end = i90 + int(below[0]) if len(below) else len(s)  # plateau is s[i90:i_end]
    row["max_diameter_um"] = d_max
    row["plateau_diameter_um"] = float(np.median(d[i90:i_end]))
    final = float(np.median(d[-config.smoothing_frames:]))
    row["final_diameter_um"] = final
    row["shrinkage_um"] = max(0.0, d_max - final)
    t = (frames - first) * dt
    if len(d) >= 2 and first > 0:
        if i90 == 0:
            row["growth_time_s"] = 0.0
        else:  # interpolate the crossing between the frames i90-1 and i90
            s0, s1 = s[i90 - 1], s[i90]
            frac = (level - s0) / (s1 - s0) if s1 > s0 else 1.0
            row["growth_time_s"] = float(t[i90 - 1] + frac * (t[i90] - t[i90 - 1]))
    if last == n_frames - 1 and len(d) >= 2:
        k = min(config.end_frames, len(d))
        slope = np.polyfit(t[-k:], d[-k:], 1)[0] if t[-1] > t[-k] else 0.0
        row["growing_at_end"] = bool(slope * (t[-1] - t[-k]) > config.end_rise_fraction * d_max)
    if i_end >= config.min_fit_points:
        dp, tau, r2, t0 = _fit(t[:i_end], d[:i_end], dt, d_max)
        row["fit_plateau_diameter_um"], row["fit_time_constant_s"], row["fit_r2"] = dp, tau, r2
        # A migrasome is first detected only once it has grown past the detection limit, so
        # the first detection is late; its growth started at the fitted onset t0 (where the
        # saturating curve through the growing frames leaves 0), which the growth time is
        # measured from when the fit describes the growth (r2 >= onset_min_r2).
        g = row["growth_time_s"]
        if (np.isfinite(g) and np.isfinite(t0) and np.isfinite(r2) and r2 >= config.onset_min_r2
                and first > 0):
            row["growth_time_s"] = float(g - t0)
    return row


def fit_tracks(
    migrasomes: pd.DataFrame,
    *,
    frame_interval_s: float,
    n_frames: int,
    config: GrowthConfig | None = None,
    pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """Growth table: one row per migrasome track (see the module docstring for definitions).

    Parameters
    ----------
    migrasomes
        Tracked detections, one row per migrasome per frame, with ``track_id``, ``frame``,
        ``diameter_um`` (µm) and optionally ``intensity_integrated(_corrected)``,
        ``y_um/x_um`` or ``y_px/x_px``.
    frame_interval_s
        Time between frames, s.
    n_frames
        Number of frames in the movie (to flag tracks that reach its end).
    config
        :class:`GrowthConfig`; defaults when None.
    pixel_size_um
        µm per pixel, used for ``y_um/x_um`` only when the table has no µm columns.

    Returns
    -------
    DataFrame
        Columns :data:`GROWTH_COLUMNS` in order, sorted by ``track_id``.
    """
    config = config or GrowthConfig()
    missing = {"track_id", "frame", "diameter_um"} - set(migrasomes.columns)
    if missing:
        raise InputError(f"the migrasome table lacks the columns {sorted(missing)}.",
                         fix="link detections with tracking.link_migrasomes before fit_tracks.")
    if not frame_interval_s > 0:
        raise InputError(f"frame_interval_s must be > 0, got {frame_interval_s}.",
                         fix="give the movie's frame interval in seconds.")
    if len(migrasomes) == 0:
        return schema.empty(GROWTH_COLUMNS)
    # one sort and plain arrays per track (a pandas group per track cost more than its fit)
    order = np.lexsort((migrasomes["frame"].to_numpy(), migrasomes["track_id"].to_numpy()))
    m = migrasomes.iloc[order]
    tids = m["track_id"].to_numpy(np.int64)
    frames = m["frame"].to_numpy(np.int64)
    diam = m["diameter_um"].to_numpy(np.float64)
    pos: list[np.ndarray | None] = []
    for col, px in (("y_um", "y_px"), ("x_um", "x_px")):
        if col in m and m[col].notna().any():
            pos.append(m[col].to_numpy(np.float64))
        elif pixel_size_um is not None and px in m:
            pos.append(m[px].to_numpy(np.float64) * pixel_size_um)
        else:
            pos.append(None)
    icol = "intensity_integrated_corrected"
    if icol not in m or m[icol].isna().all():
        icol = "intensity_integrated"
    inten = m[icol].to_numpy(np.float64) if icol in m else None
    starts = np.flatnonzero(np.r_[True, tids[1:] != tids[:-1]])
    stops = np.r_[starts[1:], len(tids)]
    # the smoothed diameters of every track at once, over its finite diameters
    finite = np.isfinite(diam)
    smoothed = _grouped_moving_median(diam[finite], tids[finite], config.smoothing_frames)
    s_bounds = np.searchsorted(np.flatnonzero(finite), np.r_[starts, len(tids)])
    rows = []
    for k, (a, b) in enumerate(zip(starts, stops, strict=True)):
        sl = slice(a, b)
        row = _one_track(frames[sl], diam[sl],
                         tuple(None if v is None else v[sl] for v in pos),
                         None if inten is None else inten[sl],
                         float(frame_interval_s), int(n_frames), config,
                         smoothed=smoothed[s_bounds[k]:s_bounds[k + 1]])
        row["track_id"] = int(tids[a])
        rows.append(row)
    return schema.conform(pd.DataFrame(rows), GROWTH_COLUMNS)
