"""Tests of migradetect.evaluate: known-answer cases and an end-to-end folder evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import zarr

from migradetect import evaluate as ev
from migradetect.cli import main
from migradetect.errors import InputError

PX = 0.1  # µm per pixel
T, H, W = 6, 40, 48


def _points(rows):
    """A migrasome table from (frame, track_id, cell_id, y, x, diameter_um) tuples."""
    df = pd.DataFrame(rows, columns=["frame", "track_id", "cell_id", "y_px", "x_px", "diameter_um"])
    return df.astype({"frame": np.int64, "track_id": np.int64, "cell_id": np.int64})


def _toy():
    """A small known movie: two cells (ids 1, 2), three migrasome tracks, a fiber, a drift."""
    cells = np.zeros((T, H, W), np.int32)
    fibers = np.zeros((T, H, W), np.int32)
    rows, cf, drift = [], [], []
    for t in range(T):
        cells[t, 5:15, 5 + t:15 + t] = 1
        cells[t, 25:35, 20:32] = 2
        fibers[t, 20, 5:40] = 1
        cf += [(t, 1, 9.5, 9.5 + t, 1.0), (t, 2, 29.5, 25.5, 1.2)]
        drift.append((t, 0.5 * t, -0.25 * t))
        rows.append((t, 0, 1, 18.0, 8.0, 0.4 + 0.1 * t))
        rows.append((t, 1, 1, 18.0, 30.0, 1.0))
        if t >= 2:
            rows.append((t, 2, 2, 37.0, 25.0, 1.5))
    mig = _points(rows)
    mig["visible"] = True
    mig.loc[(mig["track_id"] == 2) & (mig["frame"] == 3), "visible"] = False
    tracks = pd.DataFrame({
        "track_id": [0, 1, 2], "cell_id": [1, 1, 2],
        "plateau_diameter_um": [0.9, 1.0, 1.5], "growth_time_s": [240.0, 120.0, 60.0],
        "born_before_start": [False, True, False], "growing_at_end": [True, False, False],
        "short_track": [False, False, False],
    })
    cell_frames = pd.DataFrame(cf, columns=["frame", "cell_id", "y_px", "x_px", "area_um2"])
    drift_df = pd.DataFrame(drift, columns=["frame", "dy_px", "dx_px"])
    return {"migrasomes": mig, "tracks": tracks, "cell_frames": cell_frames, "drift": drift_df,
            "cells": cells, "fibers": fibers}


# --------------------------------------------------------------------------- detection


def test_three_truths_two_preds_one_beyond_radius():
    truth = _points([(0, 0, -1, 10, 10, 0.5), (0, 1, -1, 30, 30, 0.5), (0, 2, -1, 50, 50, 0.5)])
    pred = _points([(0, -1, -1, 11, 11, 0.5), (0, -1, -1, 30, 34, 0.5)])  # 4 px > 3 px radius
    s = ev.detection_scores(truth, pred, pixel_size_um=PX)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 2)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 / 3 / (0.5 + 1 / 3))
    assert s["localisation_rms_px"] == pytest.approx(math.sqrt(2))


def test_radius_grows_with_true_diameter():
    truth = _points([(0, 0, -1, 30, 30, 1.0)])  # radius 5 px at 0.1 µm/px
    pred = _points([(0, -1, -1, 30, 34.5, 1.2)])
    m = ev.match_detections(truth, pred, pixel_size_um=PX)
    assert len(m) == 1 and m["distance_px"].iloc[0] == pytest.approx(4.5)
    s = ev.detection_scores(truth, pred, pixel_size_um=PX)
    assert s["diameter_rel_error_median"] == pytest.approx(0.2)
    assert s["diameter_rel_error_median_ge_0p8"] == pytest.approx(0.2)
    far = _points([(0, -1, -1, 30, 35.5, 1.0)])
    assert len(ev.match_detections(truth, far, pixel_size_um=PX)) == 0


def test_matching_is_one_to_one_and_maximal():
    # A greedy nearest-first matching pairs t0 with p1 and leaves t1 alone; Hungarian finds 2.
    truth = _points([(0, 0, -1, 0, 0, 0.1), (0, 1, -1, 0, 3, 0.1)])
    pred = _points([(0, -1, -1, 0, 1.0, 0.1), (0, -1, -1, 0, -2.0, 0.1)])
    m = ev.match_detections(truth, pred, pixel_size_um=PX)
    assert len(m) == 2
    assert sorted(zip(m["truth_index"], m["pred_index"], strict=True)) == [(0, 1), (1, 0)]
    # different frames never match
    other = pred.assign(frame=1)
    assert len(ev.match_detections(truth, other, pixel_size_um=PX)) == 0


def test_invisible_truth_is_ignored_and_empty_prediction():
    truth = _points([(0, 0, -1, 10, 10, 0.5), (1, 0, -1, 10, 10, 0.5)])
    truth["visible"] = [True, False]
    empty = truth.iloc[:0][["frame", "track_id", "cell_id", "y_px", "x_px", "diameter_um"]]
    s = ev.detection_scores(truth, empty, pixel_size_um=PX)
    assert (s["n_truth"], s["tp"], s["fn"], s["recall"], s["f1"]) == (1, 0, 1, 0.0, 0.0)
    assert math.isnan(s["precision"]) and math.isnan(s["localisation_rms_px"])
    t = ev.tracking_scores(truth, empty, pixel_size_um=PX)
    assert t["complete_tracks"] == 0.0 and t["n_pred_tracks"] == 0


def test_dont_care_truth_is_neither_missed_nor_a_false_positive():
    truth = _points([(0, 0, -1, 10, 10, 1.0), (0, 1, -1, 30, 30, 0.2), (0, 2, -1, 50, 50, 0.2),
                     (0, 3, -1, 70, 70, 0.2)])
    truth["visible"] = [True, True, True, False]
    truth["detectable"] = [True, False, False, False]  # 1, 2: too small/dim; 3: out of view
    pred = _points([(0, -1, -1, 10, 11, 1.0),  # tp
                    (0, -1, -1, 31, 30, 0.2),  # on don't-care row 1: ignored
                    (0, -1, -1, 70, 70, 0.2),  # on an invisible row: a false positive
                    (0, -1, -1, 90, 90, 0.5)])  # on nothing: a false positive
    m = ev.match_detections(truth, pred, pixel_size_um=PX)
    assert list(m["truth_index"]) == [0] and list(m["pred_index"]) == [0]
    assert list(ev.ignored_predictions(truth, pred, m, pixel_size_um=PX)) == [1]
    s = ev.detection_scores(truth, pred, pixel_size_um=PX)
    # the missed don't-care row 2 is no false negative
    assert (s["n_truth"], s["n_pred"], s["n_ignored"], s["tp"], s["fp"], s["fn"]) == (
        1, 4, 1, 1, 2, 0)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == 1.0
    # a prediction on a don't-care row is ignored even when a detectable row is nearby: the
    # detectable row takes its one match first
    truth2 = _points([(0, 0, -1, 10, 10, 0.2), (0, 1, -1, 10, 12, 0.2)])
    truth2["detectable"] = [False, True]
    pred2 = _points([(0, -1, -1, 10, 11, 0.2), (0, -1, -1, 10, 10, 0.2)])
    s2 = ev.detection_scores(truth2, pred2, pixel_size_um=PX)
    assert (s2["tp"], s2["fp"], s2["fn"], s2["n_ignored"]) == (1, 0, 0, 1)
    # without a detectable column every visible row counts
    s3 = ev.detection_scores(truth.drop(columns="detectable"), pred, pixel_size_um=PX)
    assert (s3["n_truth"], s3["tp"], s3["fn"], s3["n_ignored"]) == (3, 2, 1, 0)


def test_complete_tracks_count_detectable_frames_only():
    # 10 visible frames, the first 4 undetectable (just born); found on the 6 detectable ones
    truth = _points([(t, 7, 1, 20.0, 20.0, 0.2 if t < 4 else 1.0) for t in range(10)])
    truth["visible"] = True
    truth["detectable"] = [t >= 4 for t in range(10)]
    pred = _points([(t, 1, 1, 20.2, 20.0, 1.0) for t in range(4, 10)])
    tm = ev.match_tracks(truth, pred, ev.match_detections(truth, pred, pixel_size_um=PX))
    assert list(tm["n_visible_frames"]) == [6] and list(tm["n_frames_in_pred_track"]) == [6]
    s = ev.tracking_scores(truth, pred, pixel_size_um=PX)
    assert s["complete_tracks"] == 1.0 and s["id_switches"] == 0
    assert s["n_true_tracks"] == 1 and s["ctc_det"] == pytest.approx(1.0)
    # a track never detectable is not asked for
    never = truth.assign(track_id=8, detectable=False, x_px=40.0)
    s = ev.tracking_scores(pd.concat([truth, never], ignore_index=True), pred, pixel_size_um=PX)
    assert s["n_true_tracks"] == 1 and s["complete_tracks"] == 1.0


# --------------------------------------------------------------------------- tracking


def _line_track(n_frames: int, pred_ids: list[int]):
    truth = _points([(t, 7, 1, 20.0, 20.0 + t, 0.5) for t in range(n_frames)])
    pred = _points([(t, pred_ids[t], 1, 20.2, 20.0 + t, 0.5) for t in range(n_frames)])
    return truth, pred


@pytest.mark.parametrize(("split", "complete"), [(8, 1.0), (7, 0.0)])
def test_track_split_in_two_predicted_ids(split, complete):
    truth, pred = _line_track(10, [1] * split + [2] * (10 - split))
    s = ev.tracking_scores(truth, pred, pixel_size_um=PX)
    assert s["id_switches"] == 1
    assert s["id_switches_per_100_track_frames"] == pytest.approx(10.0)
    assert s["complete_tracks"] == complete
    assert (s["n_true_tracks"], s["n_pred_tracks"]) == (1, 2)


def test_complete_track_threshold_is_exact_at_80_percent():
    truth, pred = _line_track(35, [4] * 28 + [5] * 7)  # 28 / 35 = 0.8 exactly
    assert ev.tracking_scores(truth, pred, pixel_size_um=PX)["complete_tracks"] == 1.0
    truth, pred = _line_track(35, [4] * 27 + [5] * 8)
    assert ev.tracking_scores(truth, pred, pixel_size_um=PX)["complete_tracks"] == 0.0


def test_switch_back_and_forth_counts_each_change():
    truth, pred = _line_track(6, [1, 1, 2, 2, 1, 1])
    tm = ev.match_tracks(truth, pred, ev.match_detections(truth, pred, pixel_size_um=PX))
    assert tm.loc[0, "id_switches"] == 2
    assert tm.loc[0, "pred_track_id"] == 1 and tm.loc[0, "n_frames_in_pred_track"] == 4


def test_truth_against_itself_is_perfect():
    toy = _toy()
    mig = toy["migrasomes"]
    vis = mig[mig["visible"]]
    det = ev.detection_scores(mig, vis, pixel_size_um=PX)
    assert det["f1"] == 1.0 and det["localisation_rms_px"] == 0.0
    assert det["diameter_rel_error_median"] == 0.0
    trk = ev.tracking_scores(mig, vis, pixel_size_um=PX)
    assert trk["complete_tracks"] == 1.0 and trk["id_switches"] == 0
    assert trk["n_true_tracks"] == 3 and trk["n_pred_tracks"] == 3
    if "ctc_tra" in trk:  # traccuracy installed (test extra)
        assert trk["ctc_tra"] == pytest.approx(1.0)
        assert trk["target_effectiveness"] == pytest.approx(1.0)
        assert trk["track_purity"] == pytest.approx(1.0)
    tm = ev.match_tracks(mig, vis, ev.match_detections(mig, vis, pixel_size_um=PX))
    asg = ev.assignment_scores(toy["tracks"], toy["tracks"], tm)
    assert asg["accuracy"] == 1.0 and asg["coverage"] == 1.0
    assert asg["count_exact_fraction"] == 1.0 and asg["count_abs_error_mean"] == 0.0
    assert asg["n_cells_with_migrasomes"] == 2
    fib = ev.fiber_scores(toy["fibers"], toy["fibers"])
    assert fib["recall"] == 1.0 and fib["precision"] == 1.0
    iou = ev.cell_iou(toy["cells"], toy["cells"])
    assert iou["cell_iou_mean"] == 1.0 and iou["cell_iou_tracked_mean"] == 1.0
    assert iou["foreground_iou"] == 1.0
    assert ev.drift_scores(toy["drift"], toy["drift"])["rms_px"] == 0.0


# --------------------------------------------------------------------------- assignment


def test_permuted_cell_ids_still_give_accuracy_one():
    toy = _toy()
    perm = {1: 20, 2: 10}
    pred_cells = np.zeros_like(toy["cells"])
    for old, new in perm.items():
        pred_cells[toy["cells"] == old] = new
    cm = ev.match_cells(toy["cells"], pred_cells)
    assert dict(zip(cm["truth_cell_id"], cm["pred_cell_id"], strict=True)) == {1: 20, 2: 10}
    pred_tracks = toy["tracks"].assign(track_id=[100, 101, 102],
                                       cell_id=toy["tracks"]["cell_id"].map(perm))
    tm = pd.DataFrame({"truth_track_id": [0, 1, 2], "pred_track_id": [100, 101, 102]})
    s = ev.assignment_scores(toy["tracks"], pred_tracks, tm, cell_matching=cm)
    assert s["accuracy"] == 1.0 and s["count_exact_fraction"] == 1.0
    # without the cell matching, the tracker's own ids are all wrong
    assert ev.assignment_scores(toy["tracks"], pred_tracks, tm)["accuracy"] == 0.0
    # the centroid tracks give the same matching
    cf = toy["cell_frames"].assign(cell_id=toy["cell_frames"]["cell_id"].map(perm))
    cm2 = ev.match_cells_by_centroid(toy["cell_frames"], cf, max_distance_px=5.0)
    assert dict(zip(cm2["truth_cell_id"], cm2["pred_cell_id"], strict=True)) == {1: 20, 2: 10}
    assert (cm2["n_frames"] == T).all()


def test_unassigned_and_wrong_cells_and_counts():
    truth_tracks = pd.DataFrame({"track_id": [0, 1, 2, 3], "cell_id": [1, 1, 2, -1]})
    pred_tracks = pd.DataFrame({"track_id": [10, 11, 12, 13, 14],
                                "cell_id": [1, -1, 1, -1, 2]})
    tm = pd.DataFrame({"truth_track_id": [0, 1, 2, 3], "pred_track_id": [10, 11, 12, 13]})
    s = ev.assignment_scores(truth_tracks, pred_tracks, tm)
    # right: 0 (1=1), 3 (-1 where truth has none); wrong: 1 (-1), 2 (1 != 2)
    assert s["accuracy"] == 0.5
    assert s["coverage"] == 0.5
    # cell 1: true 2, predicted 2 -> exact; cell 2: true 1, predicted 1 -> exact
    assert s["count_exact_fraction"] == 1.0
    # a true track never visible (absent from the track matching) is not counted
    hidden = pd.concat([truth_tracks, pd.DataFrame({"track_id": [9], "cell_id": [2]})])
    assert ev.assignment_scores(hidden, pred_tracks, tm)["count_exact_fraction"] == 1.0
    pred_tracks.loc[4, "cell_id"] = 1  # cell 1 now has 3, cell 2 has 0
    s = ev.assignment_scores(truth_tracks, pred_tracks, tm)
    assert s["count_exact_fraction"] == 0.0 and s["count_abs_error_mean"] == 1.0


def test_counts_leave_out_short_tracks_on_both_sides():
    # cell 1: two true tracks of 5 frames and one of 2 frames (not countable);
    # predicted: two long tracks and one short (flagged) spurious track, as cells.csv counts
    truth = pd.DataFrame({"track_id": [0, 1, 2], "cell_id": [1, 1, 1], "n_frames": [5, 5, 2]})
    pred = pd.DataFrame({"track_id": [10, 11, 12], "cell_id": [1, 1, 1],
                         "n_frames": [5, 4, 1], "short_track": [False, False, True]})
    tm = pd.DataFrame({"truth_track_id": [0, 1, 2], "pred_track_id": [10, 11, 12]})
    s = ev.assignment_scores(truth, pred, tm)
    assert s["count_exact_fraction"] == 1.0 and s["accuracy"] == 1.0
    # a long spurious track does count, and makes the count wrong
    pred.loc[2, "short_track"] = False
    s = ev.assignment_scores(truth, pred, tm)
    assert s["count_exact_fraction"] == 0.0 and s["count_abs_error_mean"] == 1.0
    # without the threshold every track counts: 3 true, 3 predicted
    assert ev.assignment_scores(truth, pred, tm, min_track_frames=1)["count_exact_fraction"] == 1.0


# --------------------------------------------------------------------------- growth


def test_growth_errors_and_flag_exclusions():
    truth = pd.DataFrame({
        "track_id": [0, 1, 2, 3], "plateau_diameter_um": [1.0, 2.0, 1.0, 1.0],
        "growth_time_s": [300.0, 600.0, 60.0, 60.0],
        "born_before_start": [False, False, True, False],
        "growing_at_end": [False, False, False, False],
        "short_track": [False, False, False, False],
    })
    pred = truth.assign(track_id=[5, 6, 7, 8], plateau_diameter_um=[1.1, 2.4, 1.0, 9.0],
                        growth_time_s=[420.0, 600.0, 60.0, 60.0],
                        short_track=[False, False, False, True])
    tm = pd.DataFrame({"truth_track_id": [0, 1, 2, 3], "pred_track_id": [5, 6, 7, 8]})
    s = ev.growth_scores(truth, pred, tm, frame_interval_s=60.0)
    assert s["excluded_born_before_start"] == 1 and s["excluded_short_track"] == 1
    assert s["excluded_growing_at_end"] == 0 and s["n_used"] == 2
    assert s["plateau_rel_error_median"] == pytest.approx(0.15)  # median of 0.1 and 0.2
    assert s["growth_time_abs_error_median_frames"] == pytest.approx(1.0)  # of 2 and 0


# --------------------------------------------------------------------------- fibers, cells, drift


@pytest.mark.parametrize(("shift", "expected"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0)])
def test_fiber_skeleton_shift(shift, expected):
    true = np.zeros((30, 30), bool)
    true[10, 3:27] = True
    pred = np.roll(true, shift, axis=0)
    s = ev.fiber_scores(true, pred)
    assert s["recall"] == expected and s["precision"] == expected


def test_fiber_missing_and_extra_pixels():
    true = np.zeros((2, 20, 20), np.int32)
    true[0, 5, 2:12] = 3  # 10 px, labelled by fiber id
    pred = np.zeros_like(true)
    pred[0, 5, 2:7] = 1  # finds 5 + 2 within tolerance
    pred[1, 15, 0:10] = 1  # 10 spurious px in a frame with no fiber
    s = ev.fiber_scores(true, pred)
    assert s["recall"] == pytest.approx(7 / 10)
    assert s["precision"] == pytest.approx(5 / 15)
    with pytest.raises(ValueError, match="shape"):
        ev.fiber_scores(true, pred[:1])


def test_two_overlapping_squares_iou():
    true = np.zeros((1, 30, 30), np.int32)
    pred = np.zeros_like(true)
    true[0, 0:10, 0:10] = 4
    pred[0, 0:10, 5:15] = 9  # overlap 50 px, union 150 px
    s = ev.cell_iou(true, pred)
    assert s["cell_iou_mean"] == pytest.approx(1 / 3)
    assert s["cell_iou_tracked_mean"] == pytest.approx(1 / 3)
    assert s["foreground_iou"] == pytest.approx(1 / 3)
    # a second true cell with no prediction scores 0 and halves the mean
    true[0, 20:25, 20:25] = 5
    assert ev.cell_iou(true, pred)["cell_iou_mean"] == pytest.approx(1 / 6)


def test_cell_iou_reads_zarr_and_dask_frame_by_frame(tmp_path):
    da = pytest.importorskip("dask.array")
    toy = _toy()
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=toy["cells"].shape, dtype="int32",
                          chunks=(1, H, W))
    z[:] = toy["cells"]
    shifted = np.roll(toy["cells"], 1, axis=2)
    expected = ev.cell_iou(toy["cells"], shifted)
    assert ev.cell_iou(z, da.from_array(shifted, chunks=(1, H, W))) == expected
    assert 0.5 < expected["cell_iou_mean"] < 1.0


def test_drift_rms_after_alignment():
    truth = pd.DataFrame({"frame": [0, 1, 2, 3], "dy_px": [0.0, 1.0, 2.0, 3.0],
                          "dx_px": [0.0, 0.0, 0.0, 0.0]})
    offset = truth.assign(dy_px=truth["dy_px"] + 5.0)  # same drift, other origin
    assert ev.drift_scores(truth, offset)["rms_px"] == pytest.approx(0.0)
    wrong = truth.assign(dx_px=[0.0, 3.0, 0.0, 4.0])
    s = ev.drift_scores(truth, wrong)
    assert s["rms_px"] == pytest.approx(math.sqrt((9 + 16) / 4))
    assert s["max_px"] == pytest.approx(4.0) and s["n_frames"] == 4


# --------------------------------------------------------------------------- folders and CLI


def _write_folder(folder, tables, labels, meta_name, meta):
    folder.mkdir(parents=True)
    for name, df in tables.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    group = zarr.open_group(str(folder / "labels.zarr"), mode="w")
    for name, arr in labels.items():
        a = group.create_array(name, shape=arr.shape, dtype="int32", chunks=(1, *arr.shape[1:]))
        a[:] = arr
    (folder / meta_name).write_text(json.dumps(meta))


def _result_from_toy(toy):
    """A plausible analysis result: own cell ids, one missed frame, one split track."""
    perm = {1: 7, 2: 3}
    mig = toy["migrasomes"]
    pred = mig[mig["visible"]].drop(columns="visible").reset_index(drop=True)
    pred = pred[~((pred["track_id"] == 1) & (pred["frame"] == 0))].reset_index(drop=True)
    pred["track_id"] = pred["track_id"] + 10
    pred.loc[(pred["track_id"] == 10) & (pred["frame"] >= 4), "track_id"] = 20  # split 4 / 2
    pred["cell_id"] = pred["cell_id"].map(perm)
    tracks = pd.DataFrame({"track_id": [10, 11, 12, 20], "cell_id": [7, 7, 3, 7],
                           "plateau_diameter_um": [1.0, 1.0, 1.5, 1.0],
                           "growth_time_s": [240.0, 120.0, 120.0, 60.0],
                           "born_before_start": False, "growing_at_end": False,
                           "short_track": [False, False, False, True]})
    cells = np.zeros_like(toy["cells"])
    for old, new in perm.items():
        cells[toy["cells"] == old] = new
    fibers = np.roll(toy["fibers"], 1, axis=1)
    cf = toy["cell_frames"].assign(cell_id=toy["cell_frames"]["cell_id"].map(perm))
    drift = toy["drift"].assign(dy_px=toy["drift"]["dy_px"] + [0, 0, 0, 0, 0, 3.0])
    return ({"migrasomes": pred, "tracks": tracks, "cell_frames": cf, "drift": drift},
            {"cells": cells, "fibers": fibers, "migrasomes": np.zeros_like(cells)})


@pytest.fixture
def folders(tmp_path):
    toy = _toy()
    tables = {k: toy[k] for k in ("migrasomes", "tracks", "cell_frames", "drift")}
    _write_folder(tmp_path / "sim" / "truth", tables,
                  {"cells": toy["cells"], "fibers": toy["fibers"]}, "truth.json",
                  {"params": {"pixel_size_um": PX, "frame_interval_s": 60.0}, "seed": 0})
    res_tables, res_labels = _result_from_toy(toy)
    _write_folder(tmp_path / "out" / "exp" / "movie", res_tables, res_labels, "manifest.json",
                  {"version": "0"})
    return tmp_path / "sim", tmp_path / "out" / "exp" / "movie"


def test_evaluate_dirs_end_to_end(folders):
    truth, result = folders
    df = ev.evaluate_dirs(truth, result)
    assert list(df.columns) == ["metric", "value", "n", "note"]
    v = dict(zip(df["metric"], df["value"], strict=True))
    # 15 visible true detections, one missed
    assert v["detection.tp"] == 14 and v["detection.fn"] == 1 and v["detection.fp"] == 0
    assert v["detection.recall"] == pytest.approx(14 / 15)
    # in the specified range (>= 0.5 µm): track 0's frame 0 (0.4 µm) is don't care, and the
    # prediction there (0.4 µm) is out of range
    assert v["detection.n_truth_ge_0p5um"] == 14 and v["detection.tp_ge_0p5um"] == 13
    assert v["detection.fn_ge_0p5um"] == 1 and v["detection.fp_ge_0p5um"] == 0
    assert v["detection.f1_ge_0p5um"] == pytest.approx(26 / 27)
    assert v["detection.n_ignored"] == 0
    # track 0 split 4/2 of 6 frames: incomplete, 1 switch; tracks 1 (5/6) and 2 complete
    assert v["tracking.complete_tracks"] == pytest.approx(2 / 3)
    assert v["tracking.id_switches"] == 1
    # the split-off 2-frame fragment (track 20) is flagged short_track, so like cells.csv the
    # count leaves it out: both cells get their true count
    assert v["assignment.accuracy"] == 1.0 and v["assignment.count_exact_fraction"] == 1.0
    assert v["cells.cell_iou_mean"] == 1.0
    assert v["fibers.recall"] == 1.0 and v["fibers.precision"] == 1.0
    assert v["drift.rms_px"] == pytest.approx(math.sqrt(9 / 6))
    # truth tracks 0 (growing_at_end) and 1 (born_before_start) are left out; 2 is used
    assert v["growth.excluded_growing_at_end"] == 1 and v["growth.n_used"] == 1
    assert v["growth.growth_time_abs_error_median_frames"] == pytest.approx(1.0)
    # the truth/ folder itself is accepted too
    df2 = ev.evaluate_dirs(truth / "truth", result)
    assert df2["value"].equals(df["value"])


def test_evaluate_dirs_truth_against_itself(folders):
    truth, _ = folders
    df = ev.evaluate_dirs(truth, truth / "truth")
    v = dict(zip(df["metric"], df["value"], strict=True))
    for name in ("detection.f1", "tracking.complete_tracks", "assignment.accuracy",
                 "assignment.count_exact_fraction", "fibers.recall", "fibers.precision",
                 "cells.cell_iou_mean", "cells.cell_iou_tracked_mean"):
        assert v[name] == 1.0, name
    assert v["tracking.id_switches"] == 0 and v["drift.rms_px"] == 0.0
    assert v["growth.plateau_rel_error_median"] == 0.0


def test_evaluate_dirs_skips_missing_parts(folders):
    truth, result = folders
    for name in ("tracks.csv", "drift.csv"):
        (result / name).unlink()
    df = ev.evaluate_dirs(truth, result)
    notes = dict(zip(df["metric"], df["note"], strict=True))
    assert notes["drift"].startswith("skipped") and notes["growth"].startswith("skipped")
    assert "detection.f1" in notes


def test_evaluate_dirs_bad_inputs(tmp_path, folders):
    truth, result = folders
    with pytest.raises(InputError, match="truth"):
        ev.evaluate_dirs(tmp_path / "nowhere", result)
    with pytest.raises(InputError, match="migrasomes.csv"):
        ev.evaluate_dirs(truth, tmp_path)
    pd.DataFrame({"frame": [0], "y_px": [1.0]}).to_csv(result / "migrasomes.csv", index=False)
    with pytest.raises(InputError, match="lacks the columns"):
        ev.evaluate_dirs(truth, result)
    (truth / "truth" / "truth.json").write_text("{}")
    with pytest.raises(InputError, match="pixel_size_um"):
        ev.evaluate_dirs(truth, result)


def test_evaluate_dirs_label_shapes_differ(folders):
    truth, result = folders
    group = zarr.open_group(str(result / "labels.zarr"), mode="a")
    del group["fibers"]
    group.create_array("fibers", shape=(T, H, W + 1), dtype="int32", chunks=(1, H, W + 1))
    df = ev.evaluate_dirs(truth, result)
    notes = dict(zip(df["metric"], df["note"], strict=True))
    assert notes["fibers"].startswith("skipped: labels.zarr/fibers shapes differ")


def test_cli_evaluate_prints_table_and_writes_json(folders, tmp_path, capsys):
    truth, result = folders
    out = tmp_path / "m.json"
    assert main(["evaluate", str(truth), str(result), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "detection.f1" in text and "tracking.complete_tracks" in text
    records = json.loads(out.read_text())
    assert {r["metric"] for r in records} >= {"detection.f1", "drift.rms_px"}
    assert main(["evaluate", str(tmp_path / "nowhere"), str(result)]) == 2


def test_format_table_aligns_columns():
    df = pd.DataFrame({"metric": ["a.x", "b.longer"], "value": [0.123456, math.nan],
                       "n": [3, -1], "note": ["", "skipped: why"]})
    lines = ev.format_table(df).splitlines()
    assert lines[0].split() == ["metric", "value", "n", "note"]
    assert lines[2].split() == ["a.x", "0.1235", "3"]
    assert lines[3].split()[:2] == ["b.longer", "-"]
    assert lines[2].index("0.1235") + 6 == lines[3].index("-") + 1  # right-aligned values


def test_single_frame_movie_scores_without_warnings():
    truth = _points([(0, 0, 1, 10, 10, 1.0), (0, 1, 1, 30, 30, 1.0)])
    s = ev.tracking_scores(truth, truth, pixel_size_um=PX)
    assert s["complete_tracks"] == 1.0 and s["id_switches"] == 0
    assert "ctc_lnk" not in s  # undefined without links
    far = truth.assign(y_px=truth["y_px"] + 20)
    assert ev.tracking_scores(truth, far, pixel_size_um=PX)["complete_tracks"] == 0.0


@pytest.mark.parametrize("visible", [[1.0, np.nan, 0.0], ["True", None, "False"],
                                     [True, False, False], [1, 0, 0]])
def test_visible_column_read_any_way(visible):
    truth = _points([(0, 0, -1, 10, 10, 0.5), (0, 1, -1, 30, 30, 0.5), (0, 2, -1, 50, 50, 0.5)])
    truth["visible"] = visible
    assert ev.detection_scores(truth, truth, pixel_size_um=PX)["n_truth"] == 1
