"""Truth tables of a simulation, with the output contract's column names (see ``schema.py``).

Private helper of :mod:`migradetect.synthetic`. Coordinates ``y_px, x_px`` are image pixels
(0-based pixel centres) *including* stage drift; ``*_drift_corrected`` columns subtract the
drift (they are the frame-0 image coordinates of anchored objects).

Each migrasome row is ``visible`` when its centre is in the field of view (rows exist only
while the diameter is > 0) and ``detectable`` when it is visible, its peak SNR is at least
:data:`DETECTABLE_MIN_SNR` and its diameter at least :data:`DETECTABLE_MIN_DIAMETER_UM`.
Scoring treats visible but undetectable rows as "don't care" (neither a miss nor, when
found, a false positive): rows start at birth, and a just-born vesicle is a
sub-resolution point whose peak is below the noise, which no detector can find.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from migradetect._synth_scene import Scene

#: Below ~2 sigma of the noise a punctum cannot be told from noise at a useful false-positive
#: rate (a 2-sigma threshold already passes ~2 % of background pixels).
DETECTABLE_MIN_SNR = 2.0
#: Below 0.3 µm (about half the PSF's FWHM) a vesicle is a sub-resolution point: its size
#: cannot be measured and its brightness falls with its membrane area (~d²).
DETECTABLE_MIN_DIAMETER_UM = 0.3

_MIG_COLS = ["frame", "time_s", "track_id", "cell_id", "y_px", "x_px", "y_um", "x_um",
             "diameter_um", "intensity_mean", "visible", "snr", "detectable",
             "y_px_drift_corrected", "x_px_drift_corrected", "plateau_diameter_um", "growth_law",
             "site"]
_TRACK_COLS = ["track_id", "cell_id", "assign_reason", "first_frame", "last_frame", "n_frames",
               "birth_time_s", "max_diameter_um", "plateau_diameter_um", "growth_time_s",
               "born_before_start", "growing_at_end", "growth_law", "rupture_frame", "y_um", "x_um",
               "site", "d_max_um", "tau_s"]
_CELL_COLS = ["cell_id", "first_frame", "last_frame", "n_frames", "observed_s", "touches_border",
              "path_length_um", "mean_speed_um_per_min", "n_migrasomes", "net_displacement_um",
              "persistence", "mean_area_um2"]
_CF_COLS = ["frame", "cell_id", "y_px", "x_px", "area_um2", "time_s", "touches_border"]
_FIB_COLS = ["frame", "fiber_id", "cell_id", "length_um", "n_tips", "n_branch_points", "snr"]
_CONF_COLS = ["frame", "punctum_id", "cell_id", "y_px", "x_px", "diameter_um", "snr"]


def _frame(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({c: [] for c in cols})
    return df[cols].reset_index(drop=True)


def truth_tables(scene: Scene, records: dict, shift: np.ndarray, shape: tuple[int, int], px: float,
                 interval_s: float, cell_labels: np.ndarray) -> dict[str, pd.DataFrame]:
    ny, nx = shape
    n_frames = len(scene.t_frames)
    t_last_s = (n_frames - 1) * interval_s
    by_id = {m.track_id: m for m in scene.migrasomes}
    summary = {m.track_id: m.growth_summary() for m in scene.migrasomes}

    def in_view(y, x):
        return (y >= -0.5) & (y < ny - 0.5) & (x >= -0.5) & (x < nx - 0.5)

    rows = []
    for r in records["migrasomes"]:
        m = by_id[r["track_id"]]
        f = r["frame"]
        rows.append({
            "frame": f, "time_s": f * interval_s, "track_id": m.track_id, "cell_id": m.cell_id,
            "y_px": r["y_px"], "x_px": r["x_px"], "y_um": r["y_px"] * px, "x_um": r["x_px"] * px,
            "diameter_um": r["diameter_um"], "intensity_mean": r["intensity_mean"],
            "visible": bool(in_view(r["y_px"], r["x_px"])), "snr": r["snr"],
            "detectable": bool(in_view(r["y_px"], r["x_px"]) and r["snr"] >= DETECTABLE_MIN_SNR
                               and r["diameter_um"] >= DETECTABLE_MIN_DIAMETER_UM),
            "y_px_drift_corrected": r["y_px"] - shift[f, 0],
            "x_px_drift_corrected": r["x_px"] - shift[f, 1],
            "plateau_diameter_um": summary[m.track_id][0], "growth_law": m.law, "site": m.site,
        })
    mig = _frame(rows, _MIG_COLS)
    seen = mig.loc[mig["visible"], "track_id"].unique() if len(mig) else []
    mig = mig[mig["track_id"].isin(seen)].reset_index(drop=True)

    tracks = []
    for tid in sorted(int(t) for t in seen):
        m = by_id[tid]
        vis = mig[(mig["track_id"] == tid) & mig["visible"]]
        peak, growth_min = summary[tid]
        rupture = -1
        if m.law == "rupture":
            fr = int(np.ceil(m.t_change * 60.0 / interval_s - 1e-9))
            rupture = fr if fr < n_frames else -1
        tracks.append({
            "track_id": tid, "cell_id": m.cell_id, "assign_reason": "fiber_at_birth",
            "first_frame": int(vis["frame"].min()), "last_frame": int(vis["frame"].max()),
            "n_frames": len(vis), "birth_time_s": m.t0 * 60.0,
            "max_diameter_um": float(vis["diameter_um"].max()), "plateau_diameter_um": peak,
            "growth_time_s": growth_min * 60.0, "born_before_start": m.t0 < 0,
            "growing_at_end": (m.t0 + growth_min) * 60.0 > t_last_s, "growth_law": m.law,
            "rupture_frame": rupture, "y_um": float(m.pos[0]), "x_um": float(m.pos[1]),
            "site": m.site, "d_max_um": m.d_max, "tau_s": m.tau * 60.0,
        })
    tracks = _frame(tracks, _TRACK_COLS)

    # cells from the truth labels: centroid, area, border contact per frame
    yy, xx = np.mgrid[0:ny, 0:nx]
    cf_rows = []
    for f in range(n_frames):
        lab = cell_labels[f].ravel()
        n = int(lab.max()) + 1
        if n <= 1:
            continue
        cnt = np.bincount(lab, minlength=n)
        sy = np.bincount(lab, weights=yy.ravel(), minlength=n)
        sx = np.bincount(lab, weights=xx.ravel(), minlength=n)
        edge = np.unique(np.concatenate([cell_labels[f][0], cell_labels[f][-1],
                                         cell_labels[f][:, 0], cell_labels[f][:, -1]]))
        for cid in np.nonzero(cnt)[0]:
            if cid == 0:
                continue
            cf_rows.append({"frame": f, "cell_id": int(cid),
                            "y_px": sy[cid] / cnt[cid], "x_px": sx[cid] / cnt[cid],
                            "area_um2": cnt[cid] * px * px, "time_s": f * interval_s,
                            "touches_border": bool(cid in edge)})
    cell_frames = _frame(cf_rows, _CF_COLS)
    cells = []
    for cell in scene.cells:
        cf = cell_frames[cell_frames["cell_id"] == cell.cell_id]
        if cf.empty:
            continue
        first, last = int(cf["frame"].min()), int(cf["frame"].max())
        idx = [cell.index(scene.t_frames[f]) for f in range(first, last + 1)]
        c = cell.centre[idx]
        path = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())
        net = float(np.linalg.norm(c[-1] - c[0]))
        dur_min = (last - first) * interval_s / 60.0
        cells.append({
            "cell_id": cell.cell_id, "first_frame": first, "last_frame": last, "n_frames": len(cf),
            "observed_s": len(cf) * interval_s, "touches_border": bool(cf["touches_border"].any()),
            "path_length_um": path,
            "mean_speed_um_per_min": path / dur_min if dur_min > 0 else np.nan,
            "n_migrasomes": int((tracks["cell_id"] == cell.cell_id).sum()),
            "net_displacement_um": net, "persistence": net / path if path > 0 else np.nan,
            "mean_area_um2": float(cf["area_um2"].mean()),
        })
    fibers = _frame(records["fibers"], _FIB_COLS)
    conf = [r for r in records["puncta"] if in_view(r["y_px"], r["x_px"])]
    drift = pd.DataFrame({"frame": np.arange(n_frames), "dy_px": shift[:, 0], "dx_px": shift[:, 1]})
    out = {
        "migrasomes": mig, "tracks": tracks, "cells": _frame(cells, _CELL_COLS),
        "cell_frames": cell_frames,
        "fibers": fibers, "drift": drift, "confounders": _frame(conf, _CONF_COLS),
    }
    return {k: _dtypes(v) for k, v in out.items()}


_INT = {"frame", "track_id", "cell_id", "first_frame", "last_frame", "n_frames", "n_migrasomes",
        "fiber_id", "n_tips", "n_branch_points", "rupture_frame", "punctum_id"}
_BOOL = {"visible", "detectable", "born_before_start", "growing_at_end", "touches_border"}
_STR = {"assign_reason", "growth_law", "site"}


def _dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes (int64, bool, str, float64) so that empty and full tables agree."""
    out = {}
    for c in df.columns:
        dtype = ("int64" if c in _INT else "bool" if c in _BOOL
                 else "str" if c in _STR else "float64")
        out[c] = df[c].astype(dtype)
    return pd.DataFrame(out, columns=list(df.columns))
