"""Tests of migradetect.fibers: ridge segmentation and skeleton graphs on drawn frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from migradetect.errors import ConfigError, InputError
from migradetect.fibers import (
    FIBER_TABLE,
    FiberConfig,
    fiber_tips_and_junctions,
    segment_fibers,
    segment_fibers_stack,
)

PX = 0.1  # µm per pixel
PSF = 0.08  # µm, Gaussian sigma of the PSF (0.21 * 0.51 µm / 1.4)
CFG = FiberConfig()


def draw(shape, segments=(), blobs=(), *, amp=60.0, noise=5.0, seed=0) -> np.ndarray:
    """Lines (sub-diffraction, peak ``amp`` counts) and disks blurred by the PSF, + noise."""
    img = np.zeros(shape)
    for (y0, x0), (y1, x1) in segments:
        n = int(np.hypot(y1 - y0, x1 - x0) * 8) + 2
        t = np.linspace(0.0, 1.0, n)
        yy = np.round(y0 + (y1 - y0) * t).astype(int)
        xx = np.round(x0 + (x1 - x0) * t).astype(int)
        np.add.at(img, (yy, xx), 1.0 / 8)
    psf_px = PSF / PX
    img = ndi.gaussian_filter(img, psf_px) * amp * np.sqrt(2 * np.pi) * psf_px
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y, x, r, a in blobs:
        spot = ((yy - y) ** 2 + (xx - x) ** 2 <= r * r).astype(float)
        img += a * ndi.gaussian_filter(spot, psf_px)
    rng = np.random.default_rng(seed)
    return (100.0 + img + rng.normal(0.0, noise, shape)).astype(np.float32)


def run(frame, cells=None, config=CFG):
    return segment_fibers(frame, pixel_size_um=PX, psf_sigma_um=PSF, config=config,
                          cell_labels=cells, frame_index=3)


def test_straight_line_length_tips_and_labels():
    frame = draw((120, 260), [((60, 30), (60, 230))])  # 200 px = 20 µm
    labels, table = run(frame)
    assert list(table.columns) == list(FIBER_TABLE)
    assert [str(t) for t in table.dtypes] == list(FIBER_TABLE.values())
    assert len(table) == 1
    row = table.iloc[0]
    assert row["length_um"] == pytest.approx(20.0, rel=0.05)
    assert (row["n_tips"], row["n_branch_points"], row["frame"], row["cell_id"]) == (2, 0, 3, -1)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1}
    ys, xs = np.nonzero(labels)
    assert np.all(np.abs(ys - 60) <= 1)  # on the centreline


def test_oblique_line_length_is_not_inflated_by_the_pixel_staircase():
    # 21.5 µm at 22 degrees, the worst angle for a pixel staircase (+8% if steps of 1 and
    # sqrt(2) were summed). Tolerance 10%: where the hysteresis stops at a fiber's ends
    # varies by a few pixels with the noise.
    frame = draw((160, 260), [((20, 30), (100, 230))], seed=2)
    _, table = run(frame)
    assert len(table) == 1
    assert table["length_um"].iloc[0] == pytest.approx(np.hypot(80, 200) * PX, rel=0.1)


def test_y_fiber_has_three_tips_and_one_branch_point():
    frame = draw((200, 250), [((100, 30), (100, 120)), ((100, 120), (40, 200)),
                              ((100, 120), (160, 200))])
    labels, table = run(frame)
    assert len(table) == 1
    assert (table["n_tips"].iloc[0], table["n_branch_points"].iloc[0]) == (3, 1)
    assert table["length_um"].iloc[0] == pytest.approx(9.0 + 2 * 10.0, rel=0.05)
    nodes = fiber_tips_and_junctions(labels, merge_distance_px=5)
    bp = nodes[nodes["kind"] == "branch_point"]
    assert len(bp) == 1
    # within junction_merge_um (0.5 µm = 5 px, about the optical resolution): the skeleton's
    # junction sits a few pixels into the fork, where the two arms' images still overlap
    assert abs(bp["y_px"].iloc[0] - 100) <= 5 and abs(bp["x_px"].iloc[0] - 120) <= 5
    assert (nodes["kind"] == "tip").sum() == 3


def test_faint_line_below_per_pixel_detection_is_found_by_integrating_along_it():
    # peak 1.5 noise sigmas per pixel: a per-pixel threshold cannot see it, the oriented
    # filter (averaging along ~1 µm on a 0.3 µm grid) gains sqrt(length / width) in SNR
    for seed in range(3):
        frame = draw((160, 300), [((80, 40), (80, 260)), ((20, 40), (140, 240))],
                     amp=7.5, seed=10 + seed)
        labels, table = run(frame)
        assert len(table) >= 1
        on_lines = np.zeros(frame.shape, bool)
        on_lines[80, 40:261] = True
        yy = np.round(np.linspace(20, 140, 400)).astype(int)
        xx = np.round(np.linspace(40, 240, 400)).astype(int)
        on_lines[yy, xx] = True
        near = ndi.distance_transform_edt(~on_lines) <= 2
        assert near[labels > 0].mean() > 0.85  # precision (a few pixels past the ends)
        found = ndi.distance_transform_edt(labels == 0)[on_lines] <= 2
        assert found.mean() > 0.8  # recall along both lines (22 + 23 µm)


def test_x_crossing_has_four_tips_and_one_branch_point():
    # A perpendicular crossing: skeletonizing the two blurred lines gives either one 4-way
    # junction or two 3-way junctions a pixel or two apart. Junction pixels closer than
    # junction_merge_um (0.5 µm, about twice the optical resolution) are one branch point,
    # since two branch points that close cannot be told apart optically: so 1, not 2.
    frame = draw((200, 200), [((30, 30), (170, 170)), ((30, 170), (170, 30))])
    _, table = run(frame)
    assert len(table) == 1
    assert table["n_tips"].iloc[0] == 4
    assert table["n_branch_points"].iloc[0] == 1
    # with merging limited to touching pixels the count may be 1 or 2, never more
    _, fine = run(frame, config=FiberConfig(junction_merge_um=0.0))
    assert fine["n_branch_points"].iloc[0] in (1, 2)


def test_attachment_to_touching_cell_and_broken_off_fiber():
    shape = (200, 300)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cells = np.zeros(shape, np.int32)
    cells[(yy - 100) ** 2 + (xx - 60) ** 2 <= 40**2] = 7
    # one fiber leaves the cell edge at x = 100, one lies far from it
    frame = draw(shape, [((100, 100), (100, 190)), ((20, 200), (20, 290))])
    _, table = run(frame, cells=cells)
    assert len(table) == 2
    by_x = table.sort_values("length_um")
    ids = sorted(table["cell_id"].tolist())
    assert ids == [-1, 7]
    assert np.all(by_x["n_tips"] == 2)


def test_blob_alone_is_not_a_fiber_and_blob_on_fiber_does_not_break_it():
    _, table = run(draw((200, 200), blobs=[(100, 100, 6, 600)]))
    assert len(table) == 0
    frame = draw((200, 260), [((100, 30), (100, 230))], blobs=[(100, 130, 6, 800)])
    _, table = run(frame)
    assert len(table) == 1
    assert table["length_um"].iloc[0] == pytest.approx(20.0, rel=0.05)
    assert table["n_tips"].iloc[0] == 2


def test_empty_and_noise_frames_give_empty_tables():
    for frame in (np.zeros((64, 64), np.uint16), draw((256, 256), seed=5)):
        labels, table = run(frame)
        assert not labels.any()
        assert len(table) == 0
        assert list(table.columns) == list(FIBER_TABLE)
        assert [str(t) for t in table.dtypes] == list(FIBER_TABLE.values())
    nodes = fiber_tips_and_junctions(np.zeros((10, 10), np.int32))
    assert list(nodes.columns) == ["fiber_id", "y_px", "x_px", "kind"] and len(nodes) == 0


def test_bad_inputs():
    with pytest.raises(InputError):
        run(np.zeros((2, 32, 32)))
    with pytest.raises(InputError):
        run(draw((64, 64)), cells=np.zeros((10, 10), np.int32))
    with pytest.raises(ConfigError):
        segment_fibers(draw((64, 64)), pixel_size_um=PX, psf_sigma_um=0.0, config=CFG)
    with pytest.raises(ValueError):
        FiberConfig(low_threshold=5.0, high_threshold=2.0)


def test_stack_wrapper_equals_per_frame_on_odd_chunks():
    da = pytest.importorskip("dask.array")
    frames = np.stack([draw((90, 130), [((45, 10), (45 + k * 10, 120))], seed=k)
                       for k in range(3)])
    cells = np.zeros(frames.shape, np.int32)
    cells[:, :20, :20] = 1
    stack = da.from_array(frames, chunks=(2, 47, 61))
    labels, table = segment_fibers_stack(stack, pixel_size_um=PX, psf_sigma_um=PSF,
                                         config=CFG,
                                         cell_labels=da.from_array(cells, chunks=(1, 50, 50)))
    expect = [segment_fibers(f, pixel_size_um=PX, psf_sigma_um=PSF, config=CFG,
                             cell_labels=c, frame_index=t)
              for t, (f, c) in enumerate(zip(frames, cells, strict=True))]
    np.testing.assert_array_equal(labels, np.stack([e[0] for e in expect]))
    pd.testing.assert_frame_equal(table, pd.concat([e[1] for e in expect], ignore_index=True))
    assert sorted(table["frame"].unique()) == [0, 1, 2]


def _centrelines(shape, segments):
    """1-px true centrelines of straight segments."""
    out = np.zeros(shape, np.int32)
    for (y0, x0), (y1, x1) in segments:
        t = np.linspace(0.0, 1.0, 4 * int(np.hypot(y1 - y0, x1 - x0)) + 2)
        out[np.round(y0 + (y1 - y0) * t).astype(int), np.round(x0 + (x1 - x0) * t).astype(int)] = 1
    return out


def test_faint_lines_at_two_noise_sigmas_per_pixel_are_found():
    # peak 2 noise sigmas per pixel: invisible pixel by pixel, found by integrating along the
    # line. Recall and precision of the centrelines (2 px) over three noise draws >= 0.9;
    # lengths within 10 % (the ends of a faint line stop up to ~0.4 µm short), 15 % for the
    # oblique line (a noise streak can join it as a side branch of about min_length_um).
    from migradetect.evaluate import fiber_scores

    segs = [((40, 20), (40, 180)), ((70, 30), (150, 170))]
    truth = np.stack([_centrelines((200, 200), segs)] * 3)
    pred = []
    for seed in range(3):
        labels, table = run(draw((200, 200), segs, amp=10.0, noise=5.0, seed=seed))
        pred.append(labels)
        assert len(table) == 2
        lengths = sorted(table["length_um"])
        assert lengths[0] == pytest.approx(16.0, rel=0.1)
        assert lengths[1] == pytest.approx(np.hypot(80, 140) * PX, rel=0.15)
    s = fiber_scores(truth, np.stack(pred))
    assert s["recall"] >= 0.9 and s["precision"] >= 0.9


def test_moderate_blob_in_noise_is_no_fiber():
    # a migrasome-like disk (1.2 µm, 8 noise sigmas peak) alone, several noise draws
    for seed in range(3):
        _, table = run(draw((160, 160), blobs=[(80, 80, 6, 40.0)], seed=seed))
        assert len(table) == 0


def test_along_line_sums_match_a_direct_sum():
    from migradetect.fibers import _DIRECTIONS, _along, _along_halves, _gaussian_kernel

    rng = np.random.default_rng(0)
    img = rng.normal(size=(23, 31)).astype(np.float32)
    w = _gaussian_kernel(1.3, truncate=2.5)
    r = len(w) // 2
    pad = 2 * r
    p = np.pad(img, pad)
    for (dy, dx), _ in _DIRECTIONS:
        expect_f = np.zeros_like(img)
        expect_b = np.zeros_like(img)
        for k in range(-r, r + 1):
            sh = p[pad + k * dy: pad + k * dy + 23, pad + k * dx: pad + k * dx + 31] * w[r + k]
            if k >= 0:
                expect_f += sh * (0.5 if k == 0 else 1.0)
            if k <= 0:
                expect_b += sh * (0.5 if k == 0 else 1.0)
        fwd, bwd = _along_halves(p, pad, img.shape, w, dy, dx)
        np.testing.assert_allclose(fwd, expect_f, atol=1e-5)
        np.testing.assert_allclose(bwd, expect_b, atol=1e-5)
        np.testing.assert_allclose(_along(p, pad, img.shape, w, dy, dx), expect_f + expect_b,
                                   atol=1e-5)


def test_fiber_scores_exclude_cells():
    # fibers are ridges outside cell bodies: centreline pixels drawn over a cell are not
    # scored when the (dilated) cells are excluded, neither are predictions there
    from migradetect.evaluate import fiber_scores

    truth = np.zeros((50, 100), np.int32)
    truth[25, 10:90] = 1  # 80 px, of which x >= 60 lies over a cell
    pred = np.zeros_like(truth)
    pred[25, 10:60] = 1  # found outside the cell only
    pred[5, 70:80] = 1  # a false piece inside the excluded zone
    cell = np.zeros(truth.shape, bool)
    cell[:, 60:] = True
    assert fiber_scores(truth, pred)["recall"] == pytest.approx(52 / 80)
    s = fiber_scores(truth, pred, exclude=cell)
    assert s["n_true_px"] == 50 and s["n_pred_px"] == 50
    assert s["recall"] == 1.0 and s["precision"] == 1.0


def _ridge_reference(small, noise_c, sigma, along, compact, threshold):
    """The ridge measure as plain numpy (the numpy/BLAS chain the fused numba kernels of
    ``_ridge_one`` replace): Hessian, compact-object and edge tests, along-line halves, end
    test, kept-share correction near compact objects, maximum over directions."""
    from migradetect import fibers as F

    g = F.smooth(small, sigma)
    kernels, pad = F._direction_kernels(along)
    *hp, grad2 = F._hessian_padded(g, pad)
    gains, h_gain, g_gain = F._chain_noise(round(sigma, 4), round(along, 4))
    sl = (slice(pad, -pad or None),) * 2
    hyy, hxx, hxy = (h[sl] for h in hp)
    half_trace = 0.5 * (hxx + hyy)
    root = np.sqrt((0.5 * (hxx - hyy)) ** 2 + hxy**2)
    l2 = half_trace + root
    blob = (-l2 > threshold * noise_c * h_gain) & (-l2 > 0.5 * (root - half_trace)) | compact
    blob = ndi.binary_dilation(blob, structure=ndi.generate_binary_structure(2, 1),
                               iterations=int(np.ceil(sigma)))
    l1 = ((root - half_trace) * np.float32(2.0 * sigma)) ** 2
    edge = (grad2 > np.maximum(l1, np.float32((threshold * noise_c * g_gain) ** 2))) | blob
    keep = np.pad(~edge, pad, mode="edge").astype(np.float32)
    for h in hp:
        h *= keep
    near = F._near(blob, along)
    near_idx = np.nonzero(near)
    keep_c = F.block_mean(keep[sl], 2)
    kernels_c, pad_c = F._direction_kernels(along / 2.0)
    keep_c = np.pad(keep_c, pad_c)
    shape_c = ((g.shape[0] + 1) // 2, (g.shape[1] + 1) // 2)
    ridge = np.zeros(g.shape, np.float32)
    for (fwd, bwd), gain, w_c, ((dy, dx), _) in zip(
            F._line_responses(hp, pad, g.shape, kernels, halves=True), gains, kernels_c,
            F._DIRECTIONS, strict=True):
        full = (fwd + bwd) / np.float32(noise_c * gain)
        ok = np.minimum(fwd, bwd) >= F._END_SHARE * (fwd + bwd)
        f = F._along(keep_c, pad_c, shape_c, w_c, dy, dx)[near_idx[0] // 2, near_idx[1] // 2]
        full[near_idx] /= np.sqrt(np.maximum(f, F._MIN_KEPT))
        ok[near_idx] = True
        ridge = np.maximum(ridge, full * ok)
    ridge[0], ridge[-1], ridge[:, 0], ridge[:, -1] = 0, 0, 0, 0
    return ridge, blob, near


def test_fused_ridge_kernels_match_the_numpy_chain():
    from migradetect.fibers import _ridge_one

    # lines, migrasome-like disks (compact objects: kept-share correction) and an edge
    img = draw((240, 200), segments=[((20, 20), (200, 170)), ((30, 180), (120, 40)),
                                     ((220, 10), (220, 190))],
               blobs=[(60, 60, 5, 80.0), (150, 120, 4, 60.0)], amp=25.0, seed=3)
    img[:, 150:] += 40.0
    small = img[::2, ::2] + img[1::2, ::2] + img[::2, 1::2] + img[1::2, 1::2]
    small = (small / 4).astype(np.float32)
    compact = np.zeros(small.shape, bool)
    compact[60:64, 30:33] = True
    for sigma, along in ((1.0, 3.3), (1.6, 2.0)):
        ridge, blob, near, _ = _ridge_one(small, 2.5, sigma, along, compact, 4.5)
        ref_ridge, ref_blob, ref_near = _ridge_reference(small, 2.5, sigma, along, compact, 4.5)
        assert ref_near.any() and (ref_ridge > 4.5).sum() > 50
        np.testing.assert_array_equal(blob, ref_blob)
        np.testing.assert_array_equal(near, ref_near)
        # equal up to float32 rounding, except where the end test (one half's share of the
        # sum against _END_SHARE) is decided by that rounding: a few pixels at most
        close = np.isclose(ridge, ref_ridge, rtol=1e-4, atol=1e-4)
        assert (~close).sum() <= 3, np.argwhere(~close)


def test_shifted_slice_dilations_match_ndimage():
    from migradetect.fibers import _close_square, _dilate_cross, _dilate_square, _max3

    m = np.random.default_rng(1).random((41, 57)) > 0.97
    m[0, 5] = m[40, 56] = m[20, 0] = True  # at the borders
    for it in (1, 2, 3):
        expect = ndi.binary_dilation(m, structure=ndi.generate_binary_structure(2, 1),
                                     iterations=it)
        np.testing.assert_array_equal(_dilate_cross(m, it), expect)
        expect = ndi.binary_dilation(m, structure=np.ones((3, 3), bool), iterations=it)
        np.testing.assert_array_equal(_dilate_square(m, it), expect)
    m = ndi.binary_dilation(m, iterations=2) & ~(np.random.default_rng(2).random(m.shape) > 0.9)
    m[:, 30] = False  # a one-pixel gap
    expect = ndi.binary_closing(m, structure=np.ones((3, 3), bool), border_value=0)
    np.testing.assert_array_equal(_close_square(m), expect)
    v = np.random.default_rng(3).normal(size=(23, 31)).astype(np.float32)
    np.testing.assert_array_equal(_max3(v), ndi.maximum_filter(v, size=3))


def test_mask_zones_hold_whole_pieces():
    # the skeleton is thinned per zone: every 8-connected piece of the mask must lie in one
    # zone, and zones must not touch
    from migradetect.fibers import _fiber_mask

    img = draw((300, 300), segments=[((20, 20), (20, 280)), ((40, 30), (280, 60)),
                                     ((150, 100), (150, 200)), ((155, 205), (290, 290))],
               blobs=[(150, 150, 6, 200.0)], amp=40.0, seed=2)
    mask, zones = _fiber_mask(img, pixel_size_um=PX, psf_sigma_um=PSF, config=CFG)
    assert mask.sum() > 300 and len(zones) >= 2
    zone_id = np.zeros(mask.shape, np.int32)
    for i, (sl, zone) in enumerate(zones, start=1):
        assert zone.shape == mask[sl].shape
        assert not (zone & (zone_id[sl] > 0)).any()  # disjoint
        zone_id[sl][zone] = i
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    for i in range(1, n + 1):
        assert len(np.unique(zone_id[lab == i])) == 1 and zone_id[lab == i].min() > 0
    # zones do not touch: growing each by one pixel meets no other zone
    for i in range(1, len(zones) + 1):
        grown = ndi.binary_dilation(zone_id == i, structure=np.ones((3, 3)))
        assert set(np.unique(zone_id[grown])) <= {0, i}


def test_temporal_mean_finds_a_static_faint_line_that_single_frames_miss():
    # a dish-anchored (static) line at 0.8 noise sigmas per pixel in 5 frames with
    # independent noise: single frames find little of it; the mean of 3 frames (sqrt(3) less
    # noise) finds most of it in every frame (2 frames at the movie's ends)
    from migradetect.evaluate import fiber_scores

    segs = [((60, 20), (60, 230)), ((100, 30), (170, 220))]
    for base in (20, 40):
        frames = np.stack([draw((200, 250), segs, amp=4.0, noise=5.0, seed=base + t)
                           for t in range(5)])
        truth = np.stack([_centrelines((200, 250), segs)] * 5)
        single, _ = segment_fibers_stack(frames, pixel_size_um=PX, psf_sigma_um=PSF,
                                         config=CFG)
        mean3, table = segment_fibers_stack(frames, pixel_size_um=PX, psf_sigma_um=PSF,
                                            config=CFG, temporal_frames=3)
        s1, s3 = fiber_scores(truth, single), fiber_scores(truth, mean3)
        assert s1["recall"] < 0.5
        assert s3["recall"] >= 0.8 and s3["precision"] >= 0.9
        assert sorted(table["frame"].unique()) == [0, 1, 2, 3, 4]


def test_temporal_mean_attaches_to_the_centre_frames_cells():
    # cells relabelled every frame: the fiber of frame t is attached to frame t's cell id
    shape = (120, 200)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    frames = np.stack([draw(shape, [((60, 70), (60, 190))], seed=50 + t) for t in range(3)])
    cells = np.stack([np.where(np.hypot(yy - 60, xx - 40) <= 30, 5 + t, 0) for t in range(3)])
    _, table = segment_fibers_stack(frames, pixel_size_um=PX, psf_sigma_um=PSF, config=CFG,
                                    cell_labels=cells.astype(np.int32), temporal_frames=3)
    assert list(table["frame"]) == [0, 1, 2] and list(table["cell_id"]) == [5, 6, 7]
    assert np.allclose(table["length_um"], 12.0, rtol=0.1)  # ends stop up to ~0.4 µm short


def test_temporal_frames_must_be_odd():
    frames = np.stack([draw((64, 64), seed=t) for t in range(3)])
    for bad in (0, 2, 1.5):
        with pytest.raises(ConfigError):
            segment_fibers_stack(frames, pixel_size_um=PX, psf_sigma_um=PSF, config=CFG,
                                 temporal_frames=bad)
