"""Tests of the simulator: determinism, truth vs. the noise-free render, SNR, drift, writing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.feature import hessian_matrix, hessian_matrix_eigvals
from skimage.registration import phase_cross_correlation

from migradetect.errors import ConfigError, OutputError
from migradetect.synthetic import SNR_TARGETS, load_truth, simulate, write_simulation

SMALL = dict(size=160, n_frames=10, n_cells=2, pixel_size_um=0.3, frame_interval_s=60.0)
SEED = 14  # a tuning seed (0-99) whose cells leave many migrasomes in this small field
CONTRACT = {
    "migrasomes": ["frame", "time_s", "track_id", "cell_id", "y_px", "x_px", "y_um", "x_um",
                   "diameter_um", "intensity_mean", "visible", "snr"],
    "tracks": ["track_id", "cell_id", "assign_reason", "first_frame", "last_frame", "n_frames",
               "birth_time_s", "max_diameter_um", "plateau_diameter_um", "growth_time_s",
               "born_before_start", "growing_at_end", "growth_law", "rupture_frame"],
    "cells": ["cell_id", "first_frame", "last_frame", "n_frames", "observed_s", "touches_border",
              "path_length_um", "mean_speed_um_per_min", "n_migrasomes"],
    "cell_frames": ["frame", "cell_id", "y_px", "x_px", "area_um2"],
    "fibers": ["frame", "fiber_id", "cell_id", "length_um", "n_tips", "n_branch_points"],
    "drift": ["frame", "dy_px", "dx_px"],
    "confounders": ["frame", "punctum_id", "cell_id", "y_px", "x_px", "diameter_um"],
}


@pytest.fixture(scope="module")
def sim():
    return simulate(preset="tspan4_gfp", seed=SEED, **SMALL)


@pytest.fixture(scope="module")
def sim_drift():
    return simulate(preset="tspan4_gfp", seed=SEED, drift=True, **{**SMALL, "n_frames": 12})


def test_shapes_and_contract_columns(sim):
    t, y, x = SMALL["n_frames"], SMALL["size"], SMALL["size"]
    assert sim.image.shape == (t, 1, y, x) and sim.image.dtype == np.uint16
    assert sim.clean.shape == (t, 1, y, x) and sim.clean.dtype == np.float32
    assert sim.cell_labels.shape == (t, y, x) and sim.cell_labels.dtype == np.int32
    assert sim.fiber_labels.shape == (t, y, x) and sim.fiber_labels.dtype == np.int32
    for name, cols in CONTRACT.items():
        assert list(sim.truth[name].columns[: len(cols)]) == cols, name
    tr = sim.truth["tracks"]
    assert len(tr) > 0 and (tr["assign_reason"] == "fiber_at_birth").all()
    assert set(sim.truth["cell_frames"]["cell_id"]) <= set(np.unique(sim.cell_labels)) - {0}
    # every fiber in the table has its centreline in the label stack, and vice versa
    fib = sim.truth["fibers"]
    for f in range(t):
        drawn = set(np.unique(sim.fiber_labels[f])) - {0}
        assert drawn <= set(fib.loc[fib["frame"] == f, "fiber_id"])


def test_same_seed_same_movie_other_seed_differs(sim):
    again = simulate(preset="tspan4_gfp", seed=SEED, **SMALL)
    np.testing.assert_array_equal(again.image, sim.image)
    np.testing.assert_array_equal(again.clean, sim.clean)
    np.testing.assert_array_equal(again.cell_labels, sim.cell_labels)
    for name in sim.truth:
        pd.testing.assert_frame_equal(again.truth[name], sim.truth[name])
    other = simulate(preset="tspan4_gfp", seed=SEED + 1, **SMALL)
    assert not np.array_equal(other.image, sim.image)
    assert not other.truth["tracks"].equals(sim.truth["tracks"])


def test_more_than_one_growth_law_and_consistent_growth_truth(sim):
    tr = sim.truth["tracks"]
    assert tr["growth_law"].nunique() >= 2
    sat = tr[tr["growth_law"] == "saturating"]
    # saturating exponential: 90 % of d_max is reached after tau * ln(10)
    np.testing.assert_allclose(sat["growth_time_s"], sat["tau_s"] * np.log(10), rtol=1e-3)
    mig = sim.truth["migrasomes"]
    peak = mig.groupby("track_id")["diameter_um"].max()
    plateau = tr.set_index("track_id")["plateau_diameter_um"].reindex(peak.index)
    assert (peak <= plateau + 1e-9).all()
    assert tr["plateau_diameter_um"].between(0.3, 3.0).all()
    assert (tr["born_before_start"] == (tr["birth_time_s"] < 0)).all()


def _isolated(sim, rows, frame):
    """Visible migrasomes far from every other object (the exclusion rule of the test).

    Excluded: closer than (r1 + r2 + 4 px) to another migrasome or to a punctum, or within
    r + 4 px of a cell or of the frame's edge, or with centrelines of two or more fibers within
    r + 4 px (crossings and branch points, where fibers add up), or smaller than 0.4 µm (a
    new-born migrasome is dimmer than the fiber it sits on).
    """
    px = sim.pixel_size_um
    mig = sim.truth["migrasomes"]
    here = mig[mig["frame"] == frame]
    conf = sim.truth["confounders"]
    conf = conf[conf["frame"] == frame]
    near_cell = ndi.distance_transform_edt(sim.cell_labels[frame] == 0)
    out = []
    for r in rows.itertuples():
        rad = r.diameter_um / 2 / px
        if r.diameter_um < 0.4:
            continue
        others = here[here["track_id"] != r.track_id]
        d = np.hypot(others["y_px"] - r.y_px, others["x_px"] - r.x_px)
        if (d < rad + others["diameter_um"] / 2 / px + 4).any():
            continue
        if (np.hypot(conf["y_px"] - r.y_px, conf["x_px"] - r.x_px) < rad + 4).any():
            continue
        iy, ix = int(round(r.y_px)), int(round(r.x_px))
        edge = rad + 4
        ny, nx = near_cell.shape
        if not (edge <= r.y_px < ny - 1 - edge and edge <= r.x_px < nx - 1 - edge):
            continue
        if near_cell[iy, ix] < rad + 4:
            continue
        reach = int(np.ceil(rad + 4))
        fl = sim.fiber_labels[frame, iy - reach:iy + reach + 1, ix - reach:ix + reach + 1]
        if len(np.unique(fl[fl > 0])) >= 2:
            continue
        out.append(r)
    return out


@pytest.mark.parametrize("preset", ["tspan4_gfp", "wga"])
def test_migrasome_centres_are_local_maxima_of_the_clean_render(preset, sim):
    s = sim if preset == "tspan4_gfp" else simulate(preset="wga", seed=SEED, **SMALL)
    px = s.pixel_size_um
    mig = s.truth["migrasomes"]
    checked = 0
    for frame in range(SMALL["n_frames"]):
        rows = mig[(mig["frame"] == frame) & mig["visible"]]
        img = s.clean[frame, 0].astype(float)
        for r in _isolated(s, rows, frame):
            # a large migrasome renders as a ring; smoothing a ring of radius r with a
            # Gaussian makes its centre a clear maximum only for sigma well above r / sqrt(2)
            sigma = max(1.0, 0.9 * r.diameter_um / 2 / px)
            sm = ndi.gaussian_filter(img, sigma)
            is_max = sm == ndi.maximum_filter(sm, size=3)
            yy, xx = np.nonzero(is_max)
            d = np.hypot(yy - r.y_px, xx - r.x_px)
            assert d.min() <= 1.0, (frame, r.track_id, d.min())
            checked += 1
    assert checked >= 5


def test_fiber_centrelines_lie_on_ridges_of_the_clean_render(sim):
    px = sim.pixel_size_um
    mig = sim.truth["migrasomes"]
    conf = sim.truth["confounders"]
    good = total = 0
    for frame in range(0, SMALL["n_frames"], 3):
        lab = sim.fiber_labels[frame]
        h = hessian_matrix(sim.clean[frame, 0].astype(float), sigma=1.0, order="rc",
                           use_gaussian_derivatives=False)
        ev = hessian_matrix_eigvals(h)  # sorted, ev[0] >= ev[1]
        largest = np.where(np.abs(ev[0]) > np.abs(ev[1]), ev[0], ev[1])
        # exclusions: near cells, migrasomes, puncta, other fibers (crossings) or frame edges
        keep = ndi.distance_transform_edt(sim.cell_labels[frame] == 0) > 4
        yy, xx = np.mgrid[0:lab.shape[0], 0:lab.shape[1]]
        m = mig[mig["frame"] == frame]
        for r in m.itertuples():
            keep &= np.hypot(yy - r.y_px, xx - r.x_px) > r.diameter_um / 2 / px + 4
        for r in conf[conf["frame"] == frame].itertuples():
            keep &= np.hypot(yy - r.y_px, xx - r.x_px) > 5
        big = np.where(lab > 0, lab, lab.max() + 1)
        other = ndi.maximum_filter(lab, size=5) != ndi.minimum_filter(big, size=5)
        keep &= ~other
        keep[:3], keep[-3:], keep[:, :3], keep[:, -3:] = False, False, False, False
        on = (lab > 0) & keep
        good += int((largest[on] < 0).sum())
        total += int(on.sum())
    assert total >= 50
    assert good / total >= 0.9, good / total


def test_migrasomes_are_anchored_in_drift_corrected_coordinates(sim_drift):
    mig = sim_drift.truth["migrasomes"]
    drift = sim_drift.truth["drift"].set_index("frame")
    y = mig["y_px"] - drift.loc[mig["frame"], "dy_px"].to_numpy()
    x = mig["x_px"] - drift.loc[mig["frame"], "dx_px"].to_numpy()
    spread = pd.DataFrame({"t": mig["track_id"], "y": y, "x": x}).groupby("t").agg(["min", "max"])
    assert ((spread["y"]["max"] - spread["y"]["min"]) < 1e-6).all()
    assert ((spread["x"]["max"] - spread["x"]["min"]) < 1e-6).all()
    assert np.abs(drift[["dy_px", "dx_px"]].to_numpy()).max() > 5  # it did drift


def test_drift_truth_matches_the_image_shift(sim_drift):
    """Phase correlation of two clean frames recovers the drift difference.

    Only fixed objects are kept: cells and fibers still attached to a cell are masked out.
    """
    s = sim_drift
    drift = s.truth["drift"][["dy_px", "dx_px"]].to_numpy()
    jump = s.params["drift"]["jump_frame"]
    a, b = jump - 1, jump

    def fixed_only(f):
        img = s.clean[f, 0].astype(float)
        img = img - ndi.gaussian_filter(img, 8)  # the illumination is fixed to the camera
        fib = s.truth["fibers"]
        moving = fib.loc[(fib["frame"] == f) & (fib["cell_id"] > 0), "fiber_id"]
        mask = (s.cell_labels[f] > 0) | np.isin(s.fiber_labels[f], moving)
        img[ndi.binary_dilation(mask, iterations=6)] = 0
        return img

    shift, _, _ = phase_cross_correlation(fixed_only(a), fixed_only(b), upsample_factor=10,
                                          normalization=None)
    expected = drift[b] - drift[a]
    assert np.linalg.norm(expected) > 5  # the 3 µm jump is in between
    np.testing.assert_allclose(-shift, expected, atol=1.0)


def test_measured_snr_follows_the_presets():
    got = {}
    for level in ("high", "medium", "low"):
        s = simulate(preset="tspan4_gfp", seed=SEED, snr=level, **{**SMALL, "n_frames": 6})
        got[level] = s.params["snr_measured"]["migrasomes_typical_1um_plateau"]
        assert s.params["snr_target"] == SNR_TARGETS[level]
        want = SNR_TARGETS[level]
        assert 0.8 * want < got[level] < 1.25 * want, (level, got[level])
        # the per-row SNR agrees with the noisy movie: peak above background / noise std
        mig = s.truth["migrasomes"]
        r = mig[mig["visible"] & (mig["diameter_um"] > 1.0)].iloc[0]
        f, y, x = int(r["frame"]), int(round(r["y_px"])), int(round(r["x_px"]))
        resid = s.image[f, 0].astype(float) - s.clean[f, 0]
        bg = np.median(s.clean[f, 0])
        peak = s.clean[f, 0, y - 4:y + 5, x - 4:x + 5].max() - bg
        assert 0.5 < peak / resid.std() / r["snr"] < 2.0
        assert s.truth["migrasomes"]["snr"].notna().all()
    assert got["high"] > got["medium"] > got["low"]
    # a number works too and the scene does not depend on the SNR
    s8 = simulate(preset="tspan4_gfp", seed=SEED, snr="8", **{**SMALL, "n_frames": 6})
    pd.testing.assert_frame_equal(s8.truth["tracks"], s.truth["tracks"])


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        simulate(preset="dapi", seed=0, size=64, n_frames=2)
    with pytest.raises(ConfigError, match="snr"):
        simulate(seed=0, size=64, n_frames=2, snr="huge")
    with pytest.raises(ConfigError, match="size"):
        simulate(seed=0, size=8, n_frames=2)
    with pytest.raises(ConfigError, match="seed"):
        simulate(seed=-1, size=64, n_frames=2)


def _open_movie_or_none():
    try:
        from migradetect.io import open_movie
    except ImportError:
        return None
    return open_movie


@pytest.mark.parametrize("fmt", ["ome", "imagej", "plain", "folder"])
def test_write_simulation_round_trips(fmt, tmp_path):
    s = simulate(preset="wga", seed=3, size=(64, 80), n_frames=4, n_cells=1, pixel_size_um=0.3,
                 frame_interval_s=30.0)
    out = tmp_path / "sim"
    movie = write_simulation(s, out, fmt=fmt, write_clean=(fmt == "ome"))
    px = 0.3
    if fmt == "folder":
        files = sorted(movie.glob("t*.tif"))
        assert [f.name for f in files] == [f"t{i:04d}.tif" for i in range(1, 5)]
        np.testing.assert_array_equal(np.stack([tifffile.imread(f) for f in files]), s.image[:, 0])
        first = files[0]
    else:
        first = movie
        data = tifffile.imread(movie)
        np.testing.assert_array_equal(data.reshape(s.image.shape), s.image)
    with tifffile.TiffFile(first) as tif:
        page = tif.pages[0]
        if fmt == "ome":
            ome = tif.ome_metadata
            assert 'PhysicalSizeX="0.3"' in ome and 'TimeIncrement="30.0"' in ome and "WGA" in ome
        elif fmt == "imagej":
            meta = tif.imagej_metadata
            assert meta["unit"] == "micron" and meta["finterval"] == 30.0
            xres = page.tags["XResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1 / px, rel=1e-4)
        else:
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            xres = page.tags["XResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1e4 / px, rel=1e-4)
    truth = load_truth(out)
    for name in CONTRACT:
        got, want = truth[name], s.truth[name]
        assert list(got.columns) == list(want.columns)
        assert len(got) == len(want)
        num = want.select_dtypes("number").columns
        np.testing.assert_allclose(got[num].to_numpy(float), want[num].to_numpy(float), rtol=1e-9)
    np.testing.assert_array_equal(truth["cell_labels"][:], s.cell_labels)
    np.testing.assert_array_equal(truth["fiber_labels"][:], s.fiber_labels)
    meta = json.loads((out / "truth" / "truth.json").read_text())
    assert meta["psf"]["kind"] in ("airy", "gaussian") and "migrasomes_all" in meta["snr"]
    if fmt == "ome":
        back = tifffile.imread(out / "truth" / "movie_clean.tif").reshape(s.clean.shape)
        np.testing.assert_allclose(back, s.clean)
    with pytest.raises(OutputError, match="not empty"):
        write_simulation(s, out, fmt=fmt)
    open_movie = _open_movie_or_none()
    if open_movie is not None:
        m = open_movie(movie, pixel_size_um=None if fmt in ("ome", "imagej") else px,
                       frame_interval_s=None if fmt in ("ome", "imagej") else 30.0)
        assert m.data.shape[0] == 4 and m.data.shape[-2:] == (64, 80)
        assert m.calibration.pixel_size_um == pytest.approx(px, rel=1e-4)
        assert m.calibration.frame_interval_s == pytest.approx(30.0)


def test_cli_simulate_writes_movie_and_truth(tmp_path):
    from migradetect.cli import main

    out = tmp_path / "cli"
    rc = main(["simulate", str(out), "--seed", "2", "--size", "64", "--frames", "3", "--cells", "1",
               "--pixel-size", "0.3", "--snr", "medium", "--format", "imagej", "--clean"])
    assert rc == 0
    assert (out / "movie.tif").is_file() and (out / "truth" / "movie_clean.tif").is_file()
    assert load_truth(out / "truth")["meta"]["params"]["snr_target"] == SNR_TARGETS["medium"]


def test_crowded_two_channel_movie():
    s = simulate(preset="tspan4_gfp", seed=SEED, crowded=True, n_channels=2,
                 **{**SMALL, "size": 128, "n_frames": 4})
    assert s.image.shape[:2] == (4, 2) and s.channel_names == ("TSPAN4-GFP", "cell")
    mig = s.truth["migrasomes"]
    mig = mig[mig["visible"]]
    pairs = 0
    for _, g in mig.groupby("frame"):
        yx = g[["y_px", "x_px"]].to_numpy()
        rad = g["plateau_diameter_um"].to_numpy() / 2 / s.pixel_size_um
        d = np.hypot(*(yx[:, None, :] - yx[None, :, :]).transpose(2, 0, 1))
        close = (d <= 1.4 * (rad[:, None] + rad[None, :])) & ~np.eye(len(g), dtype=bool)
        pairs += int(close.sum()) // 2
    assert pairs >= 1
    # the cell channel shows cells but no migrasomes (checked on those away from cells)
    f = 0
    away = ndi.distance_transform_edt(s.cell_labels[f] == 0)
    rows = mig[(mig["frame"] == f) & (mig["diameter_um"] > 0.8)]
    yx = [(int(round(r.y_px)), int(round(r.x_px))) for r in rows.itertuples()]
    yx = [(y, x) for y, x in yx if away[y, x] > 8]
    assert yx
    bg0, bg1 = np.median(s.clean[f, 0]), np.median(s.clean[f, 1])
    for y, x in yx:
        assert s.clean[f, 0, y, x] - bg0 > 5 * abs(s.clean[f, 1, y, x] - bg1) + 1
    cells = s.cell_labels[f] > 0
    assert s.clean[f, 1][cells].mean() - bg1 > 10


def test_empty_scene_gives_empty_tables_with_columns(tmp_path):
    s = simulate(seed=1, size=64, n_frames=3, n_cells=0)
    for name, cols in CONTRACT.items():
        assert list(s.truth[name].columns[: len(cols)]) == cols
    assert len(s.truth["migrasomes"]) == 0 and len(s.truth["drift"]) == 3
    assert (s.cell_labels == 0).all() and (s.fiber_labels == 0).all()
    # noise only: the movie is the camera offset plus background, with the right noise
    resid = s.image.astype(float) - s.clean
    assert abs(resid.mean()) < 0.5 and resid.std() > 1
    write_simulation(s, tmp_path / "empty", fmt="plain")
    meta = load_truth(tmp_path / "empty")["meta"]
    assert meta["snr"]["migrasomes_all"] is None  # no NaN in the JSON


def test_crowded_migrasomes_never_overlap_but_some_touch():
    """Two coexisting vesicles are >= the sum of their maximum radii apart; pairs touch."""
    s = simulate(preset="tspan4_gfp", seed=SEED, crowded=True, **{**SMALL, "n_frames": 8})
    mig = s.truth["migrasomes"]
    r_max = s.truth["tracks"].set_index("track_id")["d_max_um"] / 2
    worst, touching = np.inf, 0
    for _, g in mig.groupby("frame"):
        if len(g) < 2:
            continue
        yx = g[["y_px", "x_px"]].to_numpy() * s.pixel_size_um
        r = r_max.loc[g["track_id"]].to_numpy()
        d = np.hypot(*(yx[:, None, :] - yx[None, :, :]).transpose(2, 0, 1))
        ratio = d / (r[:, None] + r[None, :])
        np.fill_diagonal(ratio, np.inf)
        worst = min(worst, float(ratio.min()))
        touching += int((ratio <= 1.3).sum()) // 2
    assert len(r_max) >= 10
    assert worst >= 1.0 - 1e-6
    assert touching >= 1


def test_detectable_rows_are_visible_bright_and_large_enough(sim):
    mig = sim.truth["migrasomes"]
    assert mig["detectable"].dtype == bool
    rule = mig["visible"] & (mig["snr"] >= 2.0) & (mig["diameter_um"] >= 0.3)
    assert (mig["detectable"] == rule).all()
    # a just-born vesicle is visible but not detectable; grown ones are detectable
    assert (mig["visible"] & ~mig["detectable"]).any() and mig["detectable"].any()
