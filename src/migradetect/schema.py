"""Table schemas: every table migradetect makes or writes, declared once.

Each schema is an ordered mapping ``column -> dtype``. The first columns of the output
tables are the output contract (v1, see DESIGN.md) that other tools read: never rename or
reorder them; extra columns go after them. Units are in the column names (``_um``, ``_s``,
``_px``, ``_um2``); intensities are camera counts above local background.

Functions that find nothing return :func:`empty` of their schema, never a bare DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

Schema = Mapping[str, str]

STR = "str"
I64 = "int64"
F64 = "float64"
BOOL = "bool"

#: One detected migrasome in one frame, as the detector returns it (before tracking).
DETECTIONS: Schema = {
    "frame": I64,
    "y_px": F64,
    "x_px": F64,
    "diameter_um": F64,
    "intensity_mean": F64,
    "intensity_integrated": F64,
    "background": F64,
    "score": F64,
    "peak_snr": F64,  # fitted peak above background / background noise
    "inside_cell": BOOL,
}

#: migrasomes.csv: one row per migrasome per frame.
MIGRASOMES: Schema = {
    "experiment": STR,
    "movie": STR,
    "frame": I64,
    "time_s": F64,
    "track_id": I64,
    "cell_id": I64,
    "y_px": F64,
    "x_px": F64,
    "y_um": F64,
    "x_um": F64,
    "diameter_um": F64,
    "intensity_mean": F64,
    "intensity_integrated": F64,
    "intensity_integrated_corrected": F64,
    "score": F64,
    # extras
    "y_px_drift_corrected": F64,
    "x_px_drift_corrected": F64,
    "background": F64,
    "peak_snr": F64,
}

#: tracks.csv: one row per migrasome track (growth table).
TRACKS: Schema = {
    "experiment": STR,
    "movie": STR,
    "track_id": I64,
    "cell_id": I64,
    "assign_reason": STR,
    "first_frame": I64,
    "last_frame": I64,
    "n_frames": I64,
    "birth_time_s": F64,
    "max_diameter_um": F64,
    "plateau_diameter_um": F64,
    "growth_time_s": F64,
    "fit_r2": F64,
    "born_before_start": BOOL,
    "growing_at_end": BOOL,
    "short_track": BOOL,
    # extras
    "y_um": F64,
    "x_um": F64,
    "fit_plateau_diameter_um": F64,
    "fit_time_constant_s": F64,
    "final_diameter_um": F64,
    "shrinkage_um": F64,
    "intensity_integrated_max": F64,
}

#: cells.csv: one row per tracked cell.
CELLS: Schema = {
    "experiment": STR,
    "movie": STR,
    "cell_id": I64,
    "first_frame": I64,
    "last_frame": I64,
    "n_frames": I64,
    "observed_s": F64,
    "touches_border": BOOL,
    "path_length_um": F64,
    "mean_speed_um_per_min": F64,
    "n_migrasomes": I64,
    "migrasomes_per_100um": F64,
    # extras
    "net_displacement_um": F64,
    "persistence": F64,  # net displacement / path length, 0..1
    "mean_area_um2": F64,
}

#: cell_frames.csv: one row per cell per frame.
CELL_FRAMES: Schema = {
    "experiment": STR,
    "movie": STR,
    "frame": I64,
    "cell_id": I64,
    "y_px": F64,
    "x_px": F64,
    "area_um2": F64,
    # extras
    "time_s": F64,
    "speed_um_per_min": F64,
    "touches_border": BOOL,
}

#: fibers.csv: one row per fiber (connected skeleton) per frame.
FIBERS: Schema = {
    "experiment": STR,
    "movie": STR,
    "frame": I64,
    "fiber_id": I64,
    "cell_id": I64,
    "length_um": F64,
    "n_tips": I64,
    "n_branch_points": I64,
}

#: drift.csv: one row per frame; cumulative stage drift relative to frame 0.
DRIFT: Schema = {
    "experiment": STR,
    "movie": STR,
    "frame": I64,
    "dy_px": F64,
    "dx_px": F64,
}

#: summary.csv: one row per movie.
SUMMARY: Schema = {
    "experiment": STR,
    "movie": STR,
    "n_frames": I64,
    "duration_s": F64,
    "n_cells": I64,
    "n_cells_with_migrasomes": I64,
    "pct_cells_with_migrasomes": F64,
    "n_migrasomes": I64,
    "migrasomes_per_cell_mean": F64,
    "migrasomes_per_cell_median": F64,
    "migrasome_density_per_mm2": F64,
    "plateau_diameter_um_median": F64,
    "growth_time_s_median": F64,
}

#: failures.csv: one row per movie that failed.
FAILURES: Schema = {
    "experiment": STR,
    "movie": STR,
    "path": STR,
    "stage": STR,
    "error": STR,
    "message": STR,
}

#: Assignment reasons (tracks.assign_reason).
ASSIGN_REASONS = ("fiber_at_birth", "rear_path", "ambiguous", "cell_not_in_view")

#: Output file name -> schema, for the per-movie contract.
MOVIE_TABLES: dict[str, Schema] = {
    "migrasomes.csv": MIGRASOMES,
    "tracks.csv": TRACKS,
    "cells.csv": CELLS,
    "cell_frames.csv": CELL_FRAMES,
    "fibers.csv": FIBERS,
    "drift.csv": DRIFT,
}

_NA = {STR: "", I64: -1, F64: np.nan, BOOL: False}


def empty(schema: Schema) -> pd.DataFrame:
    """A zero-row table with every column of ``schema`` in order, with its dtype."""
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in schema.items()})


def conform(df: pd.DataFrame, schema: Schema, *, fill: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Return ``df`` with exactly the columns of ``schema``, in order, with its dtypes.

    Missing columns are filled from ``fill`` or with the dtype's missing value (NaN for
    floats, -1 for ints, "" for strings, False for booleans); columns not in the schema are
    dropped; the index is reset to a RangeIndex. ``df`` itself is not modified.
    """
    fill = dict(fill or {})
    n = len(df)
    out = {}
    for col, dtype in schema.items():
        if col in df.columns:
            s = df[col].reset_index(drop=True)
            if dtype == I64 and s.isna().any():
                s = s.fillna(_NA[I64])
            if dtype == BOOL and s.isna().any():
                s = s.fillna(False)
            out[col] = s.astype(dtype)
        else:
            value = fill.get(col, _NA[dtype])
            out[col] = pd.Series([value] * n, dtype=dtype)
    return pd.DataFrame(out)


def check(df: pd.DataFrame, schema: Schema) -> None:
    """Raise ``ValueError`` unless ``df`` starts with the schema's columns and dtypes."""
    cols = list(df.columns)[: len(schema)]
    if cols != list(schema):
        raise ValueError(f"columns {cols} differ from schema {list(schema)}")
    for col, dtype in schema.items():
        if str(df[col].dtype) != str(pd.Series([], dtype=dtype).dtype):
            raise ValueError(f"column {col!r} has dtype {df[col].dtype}, expected {dtype}")
