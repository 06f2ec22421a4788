"""Growth curves: known-answer tests on hand-made tracks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from migradetect import schema
from migradetect.errors import InputError
from migradetect.growth import GROWTH_COLUMNS, GrowthConfig, fit_tracks

DT = 60.0


def _track(d, first=5, track_id=0):
    d = np.asarray(d, float)
    return pd.DataFrame({
        "track_id": track_id, "frame": np.arange(first, first + len(d)), "diameter_um": d,
        "y_px": 10.0, "x_px": 20.0, "intensity_integrated": d**2 * 100,
    })


def test_saturating_exponential_with_noise():
    rng = np.random.default_rng(3)
    dp, tau = 1.5, 200.0
    t = np.arange(40) * DT
    d = dp * (1 - np.exp(-(t + 20.0) / tau)) + rng.normal(0, 0.02, t.size)
    out = fit_tracks(_track(d), frame_interval_s=DT, n_frames=100)
    row = out.iloc[0]
    assert abs(row.plateau_diameter_um - dp) / dp < 0.05
    # growth started 20 s before the first detection: the growth time runs from that onset
    # (the fitted t0), not from the first detection
    t90 = -tau * math.log(0.1)
    assert abs(row.growth_time_s - t90) <= DT
    assert abs(row.fit_plateau_diameter_um - dp) / dp < 0.05
    assert abs(row.fit_time_constant_s - tau) / tau < 0.2
    assert row.fit_r2 > 0.9
    assert not row.born_before_start and not row.growing_at_end and not row.short_track
    assert row.first_frame == 5 and row.last_frame == 44 and row.n_frames == 40
    assert row.birth_time_s == 5 * DT
    assert row.y_um is not None and math.isnan(row.y_um)  # no pixel size given


def test_logistic_growth_time():
    t = np.arange(30) * DT
    dp, k, tm = 2.0, 1 / 120.0, 600.0
    d = dp / (1 + np.exp(-k * (t - tm)))
    out = fit_tracks(_track(d), frame_interval_s=DT, n_frames=100, pixel_size_um=0.1)
    row = out.iloc[0]
    t90 = tm + math.log(9) / k  # logistic reaches 90 % here
    assert abs(row.growth_time_s - t90) <= DT
    assert abs(row.plateau_diameter_um - dp) / dp < 0.05
    assert row.y_um == pytest.approx(1.0) and row.x_um == pytest.approx(2.0)


def test_shrinkage_reported():
    d = np.concatenate([np.linspace(0.3, 1.6, 6), np.full(10, 1.6), np.linspace(1.5, 1.0, 6)])
    row = fit_tracks(_track(d), frame_interval_s=DT, n_frames=100).iloc[0]
    assert row.max_diameter_um == pytest.approx(1.6)
    assert row.final_diameter_um == pytest.approx(1.1, abs=0.01)
    assert row.shrinkage_um == pytest.approx(0.5, abs=0.01)
    assert row.plateau_diameter_um == pytest.approx(1.6)


def test_flags():
    growing = _track(np.linspace(0.3, 1.5, 8), first=0)
    ending = _track(np.linspace(0.3, 1.5, 8), first=12, track_id=1)
    short = _track([0.5, 0.6], first=3, track_id=2)
    out = fit_tracks(pd.concat([growing, ending, short]), frame_interval_s=DT, n_frames=20)
    assert out.track_id.tolist() == [0, 1, 2]
    assert out.born_before_start.tolist() == [True, False, False]
    assert out.growing_at_end.tolist() == [False, True, False]
    assert out.short_track.tolist() == [False, False, True]
    assert math.isnan(out.growth_time_s[0])  # birth not observed
    assert math.isnan(out.fit_r2[2])  # too few points for the fit
    assert out.intensity_integrated_max[1] == pytest.approx(1.5**2 * 100)
    schema.check(out, GROWTH_COLUMNS)


def test_single_frame_movie():
    det = pd.DataFrame({"track_id": [0, 1], "frame": [0, 0], "diameter_um": [1.0, 0.8]})
    out = fit_tracks(det, frame_interval_s=DT, n_frames=1)
    assert len(out) == 2
    for col in ("max_diameter_um", "plateau_diameter_um", "growth_time_s", "fit_r2"):
        assert out[col].isna().all()
    assert out.born_before_start.all()


def test_empty_and_bad_input():
    cols = {"track_id": "int64", "frame": "int64", "diameter_um": "float64"}
    out = fit_tracks(schema.empty(cols), frame_interval_s=DT, n_frames=10)
    assert len(out) == 0 and list(out.columns) == list(GROWTH_COLUMNS)
    with pytest.raises(InputError, match="track_id"):
        fit_tracks(pd.DataFrame({"frame": [0], "diameter_um": [1.0]}), frame_interval_s=DT,
                   n_frames=10)
    with pytest.raises(InputError, match="frame_interval_s"):
        fit_tracks(_track([1.0]), frame_interval_s=0.0, n_frames=10)


def test_config_smoothing_changes_nothing_on_clean_curve():
    d = 1.2 * (1 - np.exp(-np.arange(30) * DT / 150.0))
    a = fit_tracks(_track(d), frame_interval_s=DT, n_frames=100,
                   config=GrowthConfig(smoothing_frames=1))
    b = fit_tracks(_track(d), frame_interval_s=DT, n_frames=100,
                   config=GrowthConfig(smoothing_frames=5))
    assert a.growth_time_s[0] == pytest.approx(b.growth_time_s[0], abs=DT)


def test_growth_time_from_fitted_onset_when_detected_late():
    # a migrasome growing from 0 at frame 10 is first detected at frame 13 (too small before):
    # the growth time is counted from the onset of growth, not from the first detection
    tau, dp = 180.0, 1.2
    t = (np.arange(13, 45) - 10) * DT
    d = dp * (1 - np.exp(-t / tau)) + np.random.default_rng(1).normal(0, 0.01, t.size)
    row = fit_tracks(_track(d, first=13), frame_interval_s=DT, n_frames=60).iloc[0]
    t90 = tau * math.log(10)
    assert abs(row.growth_time_s - t90) <= 0.5 * DT
    late = fit_tracks(_track(d, first=13), frame_interval_s=DT, n_frames=60,
                      config=GrowthConfig(onset_min_r2=1.0)).iloc[0]
    assert late.growth_time_s < t90 - 2 * DT  # from the first detection: 3 frames short


def test_moving_median_matches_pandas_rolling_median():
    from migradetect.growth import _moving_median

    rng = np.random.default_rng(3)
    for window in range(1, 8):
        for n in range(1, 12):
            d = rng.normal(1.0, 0.3, n)
            ref = pd.Series(d).rolling(window, center=True, min_periods=1).median().to_numpy()
            np.testing.assert_allclose(_moving_median(d, window), ref, rtol=0, atol=1e-12)


def test_saturating_jacobian_matches_finite_differences():
    from migradetect.growth import _saturating, _saturating_jac

    t = np.linspace(0.0, 1800.0, 25)
    p = np.array([1.3, 240.0, 95.0])  # onset inside the range: both branches are used
    jac = _saturating_jac(t, *p)
    for k in range(3):
        h = np.zeros(3)
        h[k] = 1e-6 * max(1.0, abs(p[k]))
        fd = (_saturating(t, *(p + h)) - _saturating(t, *(p - h))) / (2 * h[k])
        keep = np.abs(t - p[2]) > 1.0  # the kink at the onset has no derivative
        np.testing.assert_allclose(jac[keep, k], fd[keep], rtol=1e-5, atol=1e-9)


def test_tracks_in_any_row_order_give_the_same_table():
    d1 = 1.0 * (1 - np.exp(-np.arange(12) * DT / 120.0)) + 0.05
    d2 = 1.6 * (1 - np.exp(-np.arange(9) * DT / 200.0)) + 0.05
    tab = pd.concat([_track(d1, first=4).assign(track_id=7),
                     _track(d2, first=2).assign(track_id=3)], ignore_index=True)
    a = fit_tracks(tab, frame_interval_s=DT, n_frames=30)
    b = fit_tracks(tab.sample(frac=1.0, random_state=0), frame_interval_s=DT, n_frames=30)
    assert list(a.track_id) == [3, 7]
    assert a.n_frames.tolist() == [9, 12] and a.first_frame.tolist() == [2, 4]
    pd.testing.assert_frame_equal(a, b)


def test_moving_median_of_all_tracks_at_once_equals_one_call_per_track():
    """The vectorised smoothing gives bit for bit the per-track values (ties, single-frame
    tracks and every window size included)."""
    from migradetect.growth import _grouped_moving_median, _moving_median

    rng = np.random.default_rng(5)
    for window in range(1, 8):
        for trial in range(20):
            n = int(rng.integers(0, 60))
            group = np.sort(rng.integers(0, 12, n))
            d = rng.normal(1.0, 0.3, n)
            if trial % 2:
                d = np.round(d, 1)  # ties
            want = [_moving_median(d[group == g], window) for g in np.unique(group)]
            got = _grouped_moving_median(d, group, window)
            assert np.array_equal(got, np.concatenate(want) if want else d)


def test_tracks_with_missing_diameters_are_smoothed_on_their_finite_frames():
    """NaN diameters are dropped before smoothing, per track: the table equals that of the
    same tracks without those rows (except the frame counts, which keep every row)."""
    frames = np.arange(12)
    d = 1.5 * (1 - np.exp(-frames / 3.0))
    rows = []
    for tid in (1, 2, 3):
        for t, v in zip(frames, d * tid, strict=True):
            rows.append({"track_id": tid, "frame": int(t) + 1, "diameter_um": float(v)})
    full = pd.DataFrame(rows)
    holes = full.copy()
    holes.loc[[4, 15, 16, 30], "diameter_um"] = np.nan
    a = fit_tracks(holes, frame_interval_s=10.0, n_frames=20)
    b = fit_tracks(full.drop(index=[4, 15, 16, 30]), frame_interval_s=10.0, n_frames=20)
    same = [c for c in GROWTH_COLUMNS if c not in ("n_frames", "first_frame", "last_frame",
                                                   "short_track", "intensity_integrated_max")]
    pd.testing.assert_frame_equal(a[same], b[same])
