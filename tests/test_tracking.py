"""Migrasome linking and cell tracking: hand-made tables and label stacks with known links."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from migradetect import schema
from migradetect.errors import InputError
from migradetect.tracking import (
    TrackingConfig, link_migrasomes, relabel, summarize_cells, track_cells,
)

PX = 0.15


def _det(rows):
    return pd.DataFrame(rows, columns=["frame", "y_px", "x_px", "diameter_um"])


def _n_ids(out, mask):
    return out.loc[mask, "track_id"].nunique()


def test_two_close_static_migrasomes_stay_two_tracks():
    rows = []
    for f in range(6):
        rows += [(f, 50.0, 50.0, 1.0), (f, 50.0, 53.0, 1.0)]  # 3 px = 0.45 µm apart
    out = link_migrasomes(_det(rows), pixel_size_um=PX)
    assert out.track_id.dtype == np.int64
    assert sorted(out.track_id.unique()) == [0, 1]
    assert _n_ids(out, out.x_px == 50.0) == 1 and _n_ids(out, out.x_px == 53.0) == 1


def test_gap_closing_and_growth_keep_one_id():
    frames = [0, 1, 2, 5, 6, 7]  # missed in frames 3 and 4
    d = np.linspace(0.3, 1.6, len(frames))  # growing
    out = link_migrasomes(_det([(f, 20.0, 20.0, di) for f, di in zip(frames, d)]),
                          pixel_size_um=PX, config=TrackingConfig(max_gap_frames=2))
    assert out.track_id.nunique() == 1
    out = link_migrasomes(_det([(f, 20.0, 20.0, di) for f, di in zip(frames, d)]),
                          pixel_size_um=PX, config=TrackingConfig(max_gap_frames=1,
                                                                   merge_max_gap_frames=0))
    assert out.track_id.nunique() == 2  # gap too long: two tracks
    assert out.track_id.tolist() == [0, 0, 0, 1, 1, 1]


def test_drift_given_keeps_static_object():
    rng = np.random.default_rng(0)
    drift = pd.DataFrame({"frame": range(8), "dy_px": np.r_[0, 2, 4, 26, 28, 30, 32, 34.0],
                          "dx_px": -np.arange(8) * 3.0})
    rows = []
    for f in range(8):
        for y0, x0 in ((30.0, 30.0), (60.0, 90.0)):
            rows.append((f, y0 + drift.dy_px[f] + rng.normal(0, 0.3),
                         x0 + drift.dx_px[f] + rng.normal(0, 0.3), 1.0))
    det = _det(rows)
    out = link_migrasomes(det, pixel_size_um=PX, drift=drift)
    assert out.track_id.nunique() == 2
    assert out.groupby("track_id").size().tolist() == [8, 8]
    assert np.allclose(out.y_px_drift_corrected[out.track_id == out.track_id[0]], 30.0, atol=1.5)
    no_drift = link_migrasomes(det, pixel_size_um=PX)
    assert no_drift.track_id.nunique() > 2  # without drift the jumps break the tracks


def test_singletons_and_renumbering():
    out = link_migrasomes(_det([(3, 5.0, 5.0, 1.0), (1, 80.0, 80.0, 1.0), (1, 5.0, 5.0, 1.0)]),
                          pixel_size_um=PX, config=TrackingConfig(max_gap_frames=0,
                                                                  merge_max_gap_frames=0))
    # frame order of first appearance: (1, 80, 80) -> 0, (1, 5, 5) -> 1, (3, 5, 5) -> 2
    assert out.track_id.tolist() == [2, 0, 1]


def test_empty_and_bad_detections():
    out = link_migrasomes(_det([]), pixel_size_um=PX)
    assert len(out) == 0 and out.track_id.dtype == np.int64
    with pytest.raises(InputError, match="diameter_um"):
        link_migrasomes(pd.DataFrame({"frame": [0], "y_px": [1.0], "x_px": [1.0]}),
                        pixel_size_um=PX)


def _disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_disk_moving_right_and_one_entering():
    shape = (60, 120)
    stack = np.zeros((6, *shape), np.int32)
    for t in range(6):
        stack[t][_disk(shape, 20, 20 + 4 * t, 8)] = 1 + (t % 2)  # label value flips
        if t >= 3:
            stack[t][_disk(shape, 45, 100, 8)] = 7
    mapping, cf = track_cells(stack, pixel_size_um=0.5, frame_interval_s=30.0)
    assert list(cf.columns) == [c for c in schema.CELL_FRAMES if c not in ("experiment", "movie")]
    first = cf[cf.y_px < 30]
    assert first.cell_id.nunique() == 1 and len(first) == 6
    second = cf[cf.y_px > 30]
    assert second.cell_id.nunique() == 1 and second.cell_id.iloc[0] != first.cell_id.iloc[0]
    assert second.frame.min() == 3
    # 4 px per 30 s at 0.5 µm/px = 4 µm/min
    assert np.allclose(first.speed_um_per_min.iloc[1:], 4.0, atol=0.05)
    assert math.isnan(first.speed_um_per_min.iloc[0])
    relab = relabel(stack[1], mapping, frame=1)
    assert set(np.unique(relab)) == {0, int(first.cell_id.iloc[0])}


def test_touching_cells_keep_ids_after_split():
    shape = (60, 140)
    xs_a = [30, 38, 46, 46, 46, 38, 30]
    xs_b = [110, 102, 94, 94, 94, 102, 110]
    stack = np.zeros((7, *shape), np.int32)
    for t in range(7):
        a = _disk(shape, 30, xs_a[t], 14)
        b = _disk(shape, 30, xs_b[t], 12)
        if t in (3, 4):  # touching: segmented as one object, bridged
            stack[t][a | b] = 5
            stack[t][28:33, 46:95] = 5
        else:
            stack[t][a] = 1
            stack[t][b] = 2
    mapping, cf = track_cells(stack, pixel_size_um=0.5, frame_interval_s=30.0)
    ids_a = [mapping[(mapping.frame == t) & (mapping.label == 1)].cell_id.item()
             for t in (0, 1, 2, 5, 6)]
    ids_b = [mapping[(mapping.frame == t) & (mapping.label == 2)].cell_id.item()
             for t in (0, 1, 2, 5, 6)]
    assert len(set(ids_a)) == 1 and len(set(ids_b)) == 1 and ids_a[0] != ids_b[0]
    merged = mapping[mapping.frame.isin([3, 4])].cell_id.unique()
    assert merged.tolist() == [ids_a[0]]  # the larger overlap keeps its identity
    assert cf.cell_id.nunique() == 2


def test_empty_stack():
    mapping, cf = track_cells(np.zeros((3, 10, 10), np.int32), pixel_size_um=1.0,
                              frame_interval_s=1.0)
    assert len(mapping) == 0 and len(cf) == 0
    assert len(summarize_cells(cf, None, pixel_size_um=1.0, frame_interval_s=1.0)) == 0


def test_summarize_cells_exact():
    cf = pd.DataFrame({
        "frame": [0, 1, 3, 0], "cell_id": [1, 1, 1, 2],
        "y_px": [0.0, 0.0, 4.0, 50.0], "x_px": [0.0, 3.0, 3.0, 50.0],
        "area_um2": [10.0, 20.0, 30.0, 5.0], "touches_border": [False, True, False, False],
    })
    tracks = pd.DataFrame({"track_id": [0, 1, 2, 3], "cell_id": [1, 1, -1, 2]})
    out = summarize_cells(cf, tracks, pixel_size_um=0.5, frame_interval_s=60.0)
    c1 = out[out.cell_id == 1].iloc[0]
    assert (c1.first_frame, c1.last_frame, c1.n_frames) == (0, 3, 3)
    assert c1.observed_s == 180.0 and c1.touches_border
    assert c1.path_length_um == pytest.approx(3.5)  # (3 + 4) px * 0.5
    assert c1.mean_speed_um_per_min == pytest.approx(3.5 / 3.0)
    assert c1.net_displacement_um == pytest.approx(2.5)
    assert c1.persistence == pytest.approx(2.5 / 3.5)
    assert c1.n_migrasomes == 2 and c1.migrasomes_per_100um == pytest.approx(2 / 3.5 * 100)
    assert c1.mean_area_um2 == pytest.approx(20.0)
    c2 = out[out.cell_id == 2].iloc[0]
    assert c2.n_migrasomes == 1 and math.isnan(c2.migrasomes_per_100um)
    assert math.isnan(c2.mean_speed_um_per_min)
    # drift-corrected path: the cell moved only with the stage
    drift = pd.DataFrame({"frame": [0, 1, 2, 3], "dy_px": [0, 0, 2, 4.0], "dx_px": [0, 3, 3, 3.0]})
    c1d = summarize_cells(cf, tracks, pixel_size_um=0.5, frame_interval_s=60.0, drift=drift)
    assert c1d[c1d.cell_id == 1].path_length_um.item() == pytest.approx(0.0)


def test_track_cells_dask_equals_numpy_and_inputs_untouched():
    da = pytest.importorskip("dask.array")
    shape = (40, 60)
    stack = np.zeros((4, *shape), np.int32)
    for t in range(4):
        stack[t][_disk(shape, 20, 15 + 5 * t, 6)] = 3
    before = stack.copy()
    m1, c1 = track_cells(stack, pixel_size_um=0.2, frame_interval_s=10.0)
    m2, c2 = track_cells(da.from_array(stack, chunks=(1, 17, 23)), pixel_size_um=0.2,
                         frame_interval_s=10.0)
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(c1, c2)
    assert np.array_equal(stack, before)
    det = _det([(0, 1.0, 1.0, 1.0), (1, 1.0, 1.0, 1.0)])
    det_before = det.copy()
    link_migrasomes(det, pixel_size_um=PX)
    pd.testing.assert_frame_equal(det, det_before)


def test_fragments_of_an_anchored_migrasome_are_merged():
    # one anchored migrasome missed for 5 frames (longer than the gap closing), then found
    # again 0.1 µm away; a second one 2 µm away starts during the gap; a third one at the
    # same place as the first but overlapping it in time (a neighbour) is never merged
    rng = np.random.default_rng(4)
    rows = [(f, 40.0 + rng.normal(0, 0.2), 40.0 + rng.normal(0, 0.2), 1.0)
            for f in list(range(0, 5)) + list(range(10, 16))]
    rows += [(f, 40.0, 53.3, 1.0) for f in range(6, 12)]  # 13.3 px = 2 µm away
    out = link_migrasomes(_det(rows), pixel_size_um=PX)
    first = out.x_px < 45
    assert _n_ids(out, first) == 1
    assert _n_ids(out, ~first) == 1 and out.track_id.nunique() == 2
    off = link_migrasomes(_det(rows), pixel_size_um=PX,
                          config=TrackingConfig(merge_max_gap_frames=0))
    assert _n_ids(off, first) == 2  # without merging: two fragments
    gap_too_long = link_migrasomes(_det(rows), pixel_size_um=PX,
                                   config=TrackingConfig(merge_max_gap_frames=4))
    assert _n_ids(gap_too_long, first) == 2


def test_fragment_merging_is_one_to_one_and_ordered_in_time():
    # A (frames 0-3) and B (frames 8-11) at one place; C (frames 8-11) 0.3 µm away, beside B:
    # A is joined to the nearer of B and C only, and B and C stay two tracks
    rows = [(f, 20.0, 20.0, 1.0) for f in range(0, 4)]
    rows += [(f, 20.0, 20.3, 1.0) for f in range(8, 12)]   # B, 0.045 µm from A
    rows += [(f, 20.0, 22.0, 1.0) for f in range(8, 12)]   # C, 0.3 µm from A
    out = link_migrasomes(_det(rows), pixel_size_um=PX)
    a, b, c = (out.x_px == 20.0), (out.x_px == 20.3), (out.x_px == 22.0)
    assert _n_ids(out, a | b) == 1
    assert _n_ids(out, c) == 1 and out.track_id[c].iloc[0] != out.track_id[a].iloc[0]


def test_group_medians_equal_numpy_median_per_group():
    from migradetect.tracking import group_medians

    rng = np.random.default_rng(7)
    for trial in range(50):
        n = int(rng.integers(1, 120))
        _, groups = np.unique(rng.integers(0, 15, n), return_inverse=True)
        values = rng.normal(0, 50, (n, 2))
        if trial % 3 == 0:
            values = np.round(values)  # ties
        if trial % 5 == 0:
            values[rng.integers(0, n), 1] = np.nan
        want = np.array([np.median(values[groups == g], axis=0)
                         for g in range(groups.max() + 1)])
        got = group_medians(values, groups, groups.max() + 1)
        assert np.array_equal(got, want, equal_nan=True)
