"""Table schemas: the output contract's columns come first, in order, with their dtypes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from migradetect import schema

# The output contract v1 (DESIGN.md), written out here on purpose: a rename in schema.py
# must fail this test.
CONTRACT = {
    "migrasomes.csv": "experiment, movie, frame, time_s, track_id, cell_id, y_px, x_px, y_um, "
    "x_um, diameter_um, intensity_mean, intensity_integrated, intensity_integrated_corrected, score",
    "tracks.csv": "experiment, movie, track_id, cell_id, assign_reason, first_frame, last_frame, "
    "n_frames, birth_time_s, max_diameter_um, plateau_diameter_um, growth_time_s, fit_r2, "
    "born_before_start, growing_at_end, short_track",
    "cells.csv": "experiment, movie, cell_id, first_frame, last_frame, n_frames, observed_s, "
    "touches_border, path_length_um, mean_speed_um_per_min, n_migrasomes, migrasomes_per_100um",
    "cell_frames.csv": "experiment, movie, frame, cell_id, y_px, x_px, area_um2",
    "fibers.csv": "experiment, movie, frame, fiber_id, cell_id, length_um, n_tips, n_branch_points",
    "drift.csv": "experiment, movie, frame, dy_px, dx_px",
}
SUMMARY = (
    "experiment, movie, n_frames, duration_s, n_cells, n_cells_with_migrasomes, "
    "pct_cells_with_migrasomes, n_migrasomes, migrasomes_per_cell_mean, "
    "migrasomes_per_cell_median, migrasome_density_per_mm2, plateau_diameter_um_median, "
    "growth_time_s_median"
)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_columns_lead_each_table(name):
    required = [c.strip() for c in CONTRACT[name].split(",")]
    assert list(schema.MOVIE_TABLES[name])[: len(required)] == required


def test_summary_columns():
    assert list(schema.SUMMARY) == [c.strip() for c in SUMMARY.split(",")]


def test_every_measured_column_has_a_unit():
    unitless = {
        "experiment", "movie", "frame", "track_id", "cell_id", "fiber_id", "assign_reason",
        "first_frame", "last_frame", "n_frames", "n_tips", "n_branch_points", "score", "fit_r2",
        "born_before_start", "growing_at_end", "short_track", "touches_border", "n_migrasomes",
        "n_cells", "n_cells_with_migrasomes", "pct_cells_with_migrasomes", "n_migrasomes",
        "migrasomes_per_cell_mean", "migrasomes_per_cell_median", "persistence", "peak_snr",
        "inside_cell", "stage", "error", "message", "path",
    }
    counts = ("intensity", "background")  # camera counts: no unit by convention
    units = ("_um", "_s", "_px", "_um2", "_per_min", "_per_100um", "_per_mm2", "_um_per_min")
    for table in [*schema.MOVIE_TABLES.values(), schema.SUMMARY, schema.DETECTIONS]:
        for col in table:
            if col in unitless or col.startswith(counts):
                continue
            assert any(u in col for u in units), f"{col} has no unit in its name"


def test_empty_has_full_schema():
    df = schema.empty(schema.MIGRASOMES)
    assert len(df) == 0
    schema.check(df, schema.MIGRASOMES)


def test_conform_orders_fills_and_casts_without_touching_input():
    src = pd.DataFrame({"x_px": [1.5, 2.5], "frame": [3, 4], "extra": ["a", "b"]})
    before = src.copy()
    out = schema.conform(src, schema.DRIFT, fill={"movie": "m1"})
    schema.check(out, schema.DRIFT)
    assert list(out["movie"]) == ["m1", "m1"]
    assert list(out["frame"]) == [3, 4]
    assert np.isnan(out["dy_px"]).all()
    pd.testing.assert_frame_equal(src, before)


def test_check_rejects_wrong_columns():
    with pytest.raises(ValueError):
        schema.check(pd.DataFrame({"frame": [1]}), schema.DRIFT)
