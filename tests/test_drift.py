"""Drift: known integer, sub-pixel and sudden shifts with a moving cell masked out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from migradetect.drift import (
    DriftConfig, PairRegistrar, drift_from_edges, drift_from_pairs, estimate_drift,
    fiducial_edges, pair_list,
    prepare_frame, product_bin, refine_drift, register_pair, register_prepared,
    register_products,
)
from migradetect.errors import InputError

PX = 0.15
SHAPE = (128, 128)


def _scene(seed=0, n=60):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(8, 120, size=(n, 2))
    return pts, rng.uniform(200, 600, n)


def _render(pts, amps, shift, cell_centre=None, seed=1):
    """Gaussian spots shifted by (dy, dx) plus a bright cell disk (not shifted) and noise."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(np.float32)
    img = np.full(SHAPE, 100.0, np.float32)
    for (y, x), a in zip(pts, amps):
        img += a * np.exp(-((yy - y - shift[0]) ** 2 + (xx - x - shift[1]) ** 2) / (2 * 1.5**2))
    mask = np.zeros(SHAPE, np.int32)
    if cell_centre is not None:
        cell = (yy - cell_centre[0]) ** 2 + (xx - cell_centre[1]) ** 2 <= 20**2
        img += 3000.0 * ndi.gaussian_filter(cell.astype(np.float32), 2)
        img += 800.0 * (np.sin(xx / 2.0) * cell)  # internal texture that moves with the cell
        mask[cell] = 1
    img += np.random.default_rng(seed).normal(0, 5, SHAPE).astype(np.float32)
    return img, mask


@pytest.mark.parametrize("shift", [(3.0, -5.0), (1.37, -0.62), (-20.0, 12.4)])
def test_register_pair_with_moving_cell(shift):
    pts, amps = _scene()
    a, ma = _render(pts, amps, (0, 0), cell_centre=(64, 40), seed=1)
    b, mb = _render(pts, amps, shift, cell_centre=(64, 52), seed=2)  # the cell moved 12 px
    dy, dx, q = register_pair(a, b, ma, mb, pixel_size_um=PX)
    assert dy == pytest.approx(shift[0], abs=0.1) and dx == pytest.approx(shift[1], abs=0.1)
    assert q > 0.5


def test_estimate_drift_with_jump_and_refine():
    pts, amps = _scene(seed=4)
    truth = np.array([[0, 0], [0.4, 0.3], [0.9, 0.5], [20.9, 0.8], [21.3, 1.2]])
    frames, masks = [], []
    for t, s in enumerate(truth):
        img, m = _render(pts, amps, s, cell_centre=(64, 30 + 8 * t), seed=10 + t)
        frames.append(img)
        masks.append(m)
    frames, masks = np.stack(frames), np.stack(masks)
    drift = estimate_drift(frames, masks, pixel_size_um=PX)
    assert drift.frame.tolist() == [0, 1, 2, 3, 4]
    err = np.hypot(drift.dy_px - truth[:, 0], drift.dx_px - truth[:, 1])
    assert err.max() < 0.15
    # refinement on anchored fiducials: detections = spot centres with jitter
    rng = np.random.default_rng(0)
    rows = []
    for t, s in enumerate(truth):
        for y, x in pts:
            rows.append((t, y + s[0] + rng.normal(0, 0.1), x + s[1] + rng.normal(0, 0.1), 1.0))
    det = pd.DataFrame(rows, columns=["frame", "y_px", "x_px", "diameter_um"])
    biased = drift.assign(dy_px=drift.dy_px + np.r_[0, 0.3, 0.6, 0.9, 1.2])  # accumulated error
    refined = refine_drift(det, biased, pixel_size_um=PX)
    err = np.hypot(refined.dy_px - truth[:, 0], refined.dx_px - truth[:, 1])
    assert err.max() < 0.1
    assert refined.dy_px[0] == 0.0


def test_disabled_single_frame_and_pairs():
    frames = np.zeros((3, 16, 16), np.float32)
    d = estimate_drift(frames, pixel_size_um=PX, config=DriftConfig(enabled=False))
    assert d.dy_px.tolist() == [0.0, 0.0, 0.0]
    assert len(estimate_drift(frames[:1], pixel_size_um=PX)) == 1
    d = drift_from_pairs([(1.0, 2.0, 0.9), (0.5, -1.0, 0.8)])
    assert d.dy_px.to_numpy() == pytest.approx([0.0, 1.0, 1.5], abs=1e-6)
    assert d.dx_px.to_numpy() == pytest.approx([0.0, 2.0, 1.0], abs=1e-6)


def test_bad_frames():
    with pytest.raises(InputError, match="shape"):
        register_pair(np.zeros((16, 16)), np.zeros((16, 17)), pixel_size_um=PX)
    with pytest.raises(InputError, match=r"\(Y, X\)"):
        register_pair(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), pixel_size_um=PX)


def test_prepare_frame_is_small_and_masks_cells():
    pts, amps = _scene()
    img, mask = _render(pts, amps, (0, 0), cell_centre=(64, 40))
    p = prepare_frame(img, mask, pixel_size_um=PX)
    k = product_bin(PX)
    assert k == 2 and p.dtype == np.float16 and p.shape == (64, 64)
    # the cell (radius 10 product px) plus its 2 um margin (6.7 product px) is NaN
    assert np.isnan(p[32, 20]) and np.isnan(p[32, 20 + 10 + 6])
    assert np.isfinite(p[32, 20 + 10 + 8]) and np.isfinite(p[32, 60])
    # bounded memory: a 1024 x 1024 frame gives 0.5 MiB, 200 MiB for 400 frames
    big = prepare_frame(np.random.default_rng(0).normal(100, 5, (1024, 1024)),
                        pixel_size_um=0.15)
    assert big.nbytes == 512 * 512 * 2
    assert np.isnan(prepare_frame(np.zeros((64, 64)), pixel_size_um=PX)).all()  # blank frame


def test_shift_beyond_max_jump_is_not_found():
    pts, amps = _scene()
    a, _ = _render(pts, amps, (0, 0))
    b, _ = _render(pts, amps, (0, 24.0), seed=3)  # 24 px = 3.6 um
    cfg = DriftConfig(max_jump_um=1.0)
    dy, dx, q = register_pair(a, b, pixel_size_um=PX, config=cfg)
    assert not (abs(dx - 24.0) < 1.0)  # the true peak lies outside the search disk
    dy, dx, q = register_pair(a, b, pixel_size_um=PX)
    assert dx == pytest.approx(24.0, abs=0.1) and q > 0.5


def test_guess_limits_the_search_to_a_local_peak():
    pts, amps = _scene()
    a, _ = _render(pts, amps, (0, 0))
    b, _ = _render(pts, amps, (2.3, -1.4), seed=3)
    pa, pb = prepare_frame(a, pixel_size_um=PX), prepare_frame(b, pixel_size_um=PX)
    dy, dx, q = register_prepared(pa, pb, pixel_size_um=PX, guess=(2.0, -1.0))
    assert dy == pytest.approx(2.3, abs=0.1) and dx == pytest.approx(-1.4, abs=0.1)
    # no peak within long_pair_radius_um (0.5 um = 3.3 px) of a wrong guess
    dy, dx, q = register_prepared(pa, pb, pixel_size_um=PX, guess=(12.0, 10.0))
    assert np.isnan(q)


def test_redundant_pairs_outvote_a_wrong_one():
    truth = np.cumsum(np.r_[0.0, np.linspace(0.5, 1.5, 9)])
    cfg = DriftConfig(pair_gap=2)
    edges = [(i, j, truth[j] - truth[i], 0.0, 0.9) for i, j in pair_list(10, config=cfg)]
    assert {j - i for i, j, *_ in edges} == {1, 2}
    edges[4] = (edges[4][0], edges[4][1], edges[4][2] + 6.0, 0.0, 0.9)  # one wrong pair
    d = drift_from_edges(edges, 10, config=cfg)
    np.testing.assert_allclose(d.dy_px, truth, atol=0.05)
    # an unreliable pair is bridged by the gap-2 pairs over it
    edges = [(i, j, truth[j] - truth[i], 0.0, np.nan if (i, j) == (4, 5) else 0.9)
             for i, j in pair_list(10, config=cfg)]
    np.testing.assert_allclose(drift_from_edges(edges, 10, config=cfg).dy_px, truth, atol=1e-3)
    # frames that no reliable pair reaches (here frame 0, the reference, too) continue the
    # velocity of the nearest reliable frames (stage drift is smooth), not a standstill
    edges = [(i, j, truth[j] - truth[i], 0.0, np.nan if i < 3 else 0.9)
             for i, j in pair_list(10, config=cfg)]
    d = drift_from_edges(edges, 10, config=cfg)
    np.testing.assert_allclose(d.dy_px[:4], np.arange(4) * (truth[4] - truth[3]), atol=0.01)
    assert not d.registered[:3].any() and d.registered[3:].all()
    np.testing.assert_allclose(d.dy_px[3:] - d.dy_px[3], truth[3:] - truth[3], atol=1e-3)
    assert np.isnan(d.quality[1]) and d.quality[0] == 1.0


def test_long_pairs_and_a_jump():
    """Pairs 1, 2, 4 and 8 frames apart all find the true shift (a moving cell masked out),
    and the solution keeps the slow drift plus a sudden jump."""
    pts, amps = _scene(seed=5, n=40)
    truth = np.column_stack([0.4 * np.arange(10), -0.25 * np.arange(10)])
    truth[6:] += (9.0, 5.0)
    frames, masks = [], []
    for t, s in enumerate(truth):
        img, m = _render(pts, amps, s, cell_centre=(64, 30 + 3 * t), seed=20 + t)
        frames.append(img)
        masks.append(m)
    cfg = DriftConfig(pair_gap=8)
    products = [prepare_frame(f, m, pixel_size_um=PX, config=cfg) for f, m in zip(frames, masks)]
    edges = register_products(products, pixel_size_um=PX, config=cfg)
    assert {j - i for i, j, *_ in edges} == {1, 2, 4, 8}
    assert all(q > 0.5 for *_, q in edges)
    for i, j, dy, dx, _ in edges:
        assert dy == pytest.approx(truth[j, 0] - truth[i, 0], abs=0.15)
        assert dx == pytest.approx(truth[j, 1] - truth[i, 1], abs=0.15)
    d = drift_from_edges(edges, 10, config=cfg)
    assert np.hypot(d.dy_px - truth[:, 0], d.dx_px - truth[:, 1]).max() < 0.1
    pd.testing.assert_frame_equal(d, estimate_drift(np.stack(frames), np.stack(masks),
                                                    pixel_size_um=PX, config=cfg))


def test_refine_ignores_moving_tracks():
    rng = np.random.default_rng(1)
    n = 8
    truth = np.column_stack([0.3 * np.arange(n), 0.1 * np.arange(n)])
    rows = []
    for tid, (y, x) in enumerate(rng.uniform(10, 100, (6, 2))):
        v = 1.5 if tid == 0 else 0.0  # track 0 slides (not a fiducial)
        for t in range(n):
            rows.append((t, tid, y + truth[t, 0] + v * t + rng.normal(0, 0.05),
                         x + truth[t, 1] + rng.normal(0, 0.05), 1.0))
    det = pd.DataFrame(rows, columns=["frame", "track_id", "y_px", "x_px", "diameter_um"])
    coarse = pd.DataFrame({"frame": np.arange(n), "dy_px": truth[:, 0] + 0.2 * np.arange(n),
                           "dx_px": truth[:, 1]})
    refined = refine_drift(det, coarse, pixel_size_um=PX)
    np.testing.assert_allclose(refined.dy_px, truth[:, 0], atol=0.1)


def test_two_fiducials_fix_unregistered_frames():
    """The first frames had no reliable pair (drift held at 0); two static migrasomes seen
    from frame 0 give their drift, and frame 0 stays the reference."""
    n = 8
    truth = np.column_stack([0.8 * np.arange(n), -0.5 * np.arange(n)])
    # frames 0-2 without a reliable pair: the pair solution holds frame 0's drift (0) and the
    # registered block from frame 3 on is off by the unseen drift truth[3]
    held = np.where(np.arange(n)[:, None] >= 3, truth - truth[3], 0.0)
    coarse = pd.DataFrame({"frame": np.arange(n), "dy_px": held[:, 0], "dx_px": held[:, 1],
                           "registered": np.arange(n) >= 3})
    rows = []
    for tid, (y, x) in enumerate([(20.0, 30.0), (60.0, 45.0), (90.0, 10.0)]):
        for t in range(n):
            if tid == 2 and t < 3:
                continue  # the third one appears later
            rows.append((t, tid, y + truth[t, 0], x + truth[t, 1], 1.0))
    det = pd.DataFrame(rows, columns=["frame", "track_id", "y_px", "x_px", "diameter_um"])
    refined = refine_drift(det, coarse, pixel_size_um=PX)
    np.testing.assert_allclose(refined[["dy_px", "dx_px"]].to_numpy(), truth, atol=1e-6)
    # without the flag, frames with fewer than refine_min_objects (3) fiducials keep the guess
    kept = refine_drift(det, coarse.drop(columns="registered"), pixel_size_um=PX)
    np.testing.assert_allclose(kept.dy_px[:3], 0.0, atol=1e-6)


def test_registrar_holds_a_bounded_number_of_products():
    """Products handed over window by window: the edges equal register_products' and only
    pair_gap + one window of products are ever held; a missing frame is reported."""
    pts, amps = _scene(seed=7, n=40)
    truth = np.column_stack([0.3 * np.arange(14), 0.2 * np.arange(14)])
    cfg = DriftConfig(pair_gap=4)
    products = [prepare_frame(_render(pts, amps, s, seed=40 + t)[0], pixel_size_um=PX,
                              config=cfg) for t, s in enumerate(truth)]
    reg = PairRegistrar(len(products), pixel_size_um=PX, config=cfg)
    window = 3
    for start in range(0, len(products), window):
        for t in reversed(range(start, min(start + window, len(products)))):  # any order
            reg.add(t, products[t])
        reg.register()
        assert len(reg._products) <= cfg.pair_gap
    assert reg.max_held <= cfg.pair_gap + window
    edges = reg.edges()
    assert edges == register_products(products, pixel_size_um=PX, config=cfg)
    d = drift_from_edges(edges, len(products), config=cfg)
    assert np.hypot(d.dy_px - truth[:, 0], d.dx_px - truth[:, 1]).max() < 0.1
    # registered after every arrival, frame 0 arriving last (a sliding window of tasks
    # finishes in any order): same edges
    late0 = PairRegistrar(len(products), pixel_size_um=PX, config=cfg)
    for t in [1, 2, 3, 0] + list(range(4, len(products))):
        late0.add(t, products[t])
        late0.register()
    assert late0.edges() == edges
    incomplete = PairRegistrar(3, pixel_size_um=PX, config=cfg)
    incomplete.add(0, products[0])
    incomplete.add(2, products[2])
    with pytest.raises(ValueError, match="frame 1"):
        incomplete.edges()


def test_consensus_rejects_a_block_of_agreeing_wrong_pairs():
    """The short pairs across the 4|5 cut (gaps 1 and 2) matched the same wrong peak (30 px
    off, agreeing with each other: a chain of short pairs alone would move every later frame);
    the 4-frame pairs across the cut are right and outvote them."""
    n = 12
    truth = np.cumsum(np.r_[0.0, np.full(n - 1, 1.5)])
    cfg = DriftConfig(pair_gap=4)
    edges = []
    for i, j in pair_list(n, config=cfg):
        dy = truth[j] - truth[i]
        if i < 5 <= j and j - i <= 2:
            dy += 30.0  # wrong, mutually consistent
        edges.append((i, j, dy, 0.0, 0.5))
    d = drift_from_edges(edges, n, config=cfg)
    np.testing.assert_allclose(d.dy_px, truth, atol=1e-3)
    assert d.registered.all()


def test_ambiguous_repeated_structure_is_not_registered():
    """A pattern that repeats every 20 px has several equal correlation peaks: the pair is
    ambiguous (ratio test), not a wrong shift; a unique scene registers."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(np.float32)
    rng = np.random.default_rng(3)

    def stripes(shift):
        img = 100 + 300 * np.exp(-(((xx - shift) % 20 - 10) ** 2) / (2 * 1.5**2))
        return img + rng.normal(0, 5, SHAPE).astype(np.float32)

    dy, dx, q = register_pair(stripes(0.0), stripes(3.0), pixel_size_um=PX)
    assert np.isnan(q)
    pts, amps = _scene(seed=9)
    a, _ = _render(pts, amps, (0, 0), seed=1)
    b, _ = _render(pts, amps, (0, 3.0), seed=2)
    dy, dx, q = register_pair(a, b, pixel_size_um=PX)
    assert dx == pytest.approx(3.0, abs=0.1) and q > 0.5


def test_dim_pair_is_registered_and_noise_is_not():
    """One rule for bright and dim movies: spots at ~0.75 noise sigma correlate weakly (the
    noise dominates both frames) but their peak stands out of the correlation surface, so
    the shift is found; two frames of pure noise give no pair."""
    shape = (256, 256)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    pts = np.random.default_rng(11).uniform(8, 248, size=(240, 2))
    rng = np.random.default_rng(0)

    def dim(s):
        img = np.full(shape, 100.0, np.float32)
        for y, x in pts:
            img += 6.0 * np.exp(-((yy - y - s[0]) ** 2 + (xx - x - s[1]) ** 2) / (2 * 2.0**2))
        return img + rng.normal(0, 8, shape).astype(np.float32)

    shift = (2.6, -1.7)
    dy, dx, q = register_pair(dim((0, 0)), dim(shift), pixel_size_um=PX)
    assert q < 0.2  # the former min_quality (0.2) threw such right pairs away
    assert dy == pytest.approx(shift[0], abs=0.5) and dx == pytest.approx(shift[1], abs=0.5)
    for _ in range(3):
        noise = [100 + rng.normal(0, 8, shape).astype(np.float32) for _ in range(2)]
        assert np.isnan(register_pair(*noise, pixel_size_um=PX)[2])


def _fiducial_scene(n=12, seed=3):
    """Static migrasomes (appearing over time) moved by a drift with a jump, a cell's puncta
    moving on their own, and random false detections; returns (detections, truth)."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack([0.7 * np.arange(n), -0.4 * np.arange(n)])
    truth[7:] += (14.0, 9.0)  # a sudden 3 um jump
    static = rng.uniform(20, 360, (40, 2))
    born = rng.integers(0, n // 3, len(static))
    rows = []
    for t in range(n):
        for k, p in enumerate(static):
            if born[k] <= t:
                y, x = p + truth[t] + rng.normal(0, 0.15, 2)
                rows.append((t, y, x))
        for q in rng.uniform(150, 170, (4, 2)):  # puncta of a cell moving 6 px per frame
            rows.append((t, q[0] + 6.0 * t, q[1]))
        for y, x in rng.uniform(0, 380, (3, 2)):  # false detections
            rows.append((t, y, x))
    det = pd.DataFrame(rows, columns=["frame", "y_px", "x_px"]).assign(diameter_um=1.0)
    return det, truth


def test_fiducial_edges_find_the_stage_shift_and_reject_chance():
    det, truth = _fiducial_scene()
    n = len(truth)
    edges = fiducial_edges(det, n, pixel_size_um=PX)
    assert len(edges) == len(pair_list(n))  # every pair, across the jump too
    for i, j, dy, dx, support in edges:
        assert np.hypot(dy - (truth[j, 0] - truth[i, 0]), dx - (truth[j, 1] - truth[i, 1])) < 0.5
        assert support >= 3
    # the same whatever the detections' row order (windows of frames arrive in any order)
    assert fiducial_edges(det.sample(frac=1.0, random_state=2), n, pixel_size_um=PX) == edges
    # one detection per frame, anywhere: a coincidence is not evidence of a common shift
    rng = np.random.default_rng(0)
    lone = pd.DataFrame({"frame": np.arange(n), "y_px": rng.uniform(0, 380, n),
                         "x_px": rng.uniform(0, 380, n)})
    assert fiducial_edges(lone, n, pixel_size_um=PX) == []


def test_refine_fills_frames_without_image_pairs_from_fiducials():
    """The image pairs of the first frames are missing (their fixed structure is under
    cells) and the pair across the jump is missing too: the held / interpolated drift is
    wrong there; the fiducial pairs, solved with the image pairs, recover it."""
    det, truth = _fiducial_scene()
    n = len(truth)
    edges = [(i, j, *(truth[j] - truth[i] + 0.02), 0.5 if i >= 4 and not i < 7 <= j else np.nan)
             for i, j in pair_list(n)]
    coarse = drift_from_edges(edges, n)
    assert np.abs(coarse.dy_px - truth[:, 0]).max() > 3  # frames 0-3 held, jump missed
    refined = refine_drift(det, coarse, pixel_size_um=PX)
    err = np.hypot(refined.dy_px - truth[:, 0], refined.dx_px - truth[:, 1])
    assert np.sqrt(np.mean(err**2)) < 0.2 and err.max() < 0.4 and refined.registered.all()


def test_cell_margin_grown_in_boxes_equals_the_full_distance_transform():
    from scipy import ndimage as ndi

    from migradetect.drift import _grown

    rng = np.random.default_rng(5)
    yy, xx = np.ogrid[:120, :110]
    for _ in range(10):
        m = np.zeros((120, 110), bool)
        for _ in range(rng.integers(1, 6)):  # discs, some touching the border or each other
            y, x, r = rng.integers(0, 120), rng.integers(0, 110), rng.integers(1, 25)
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        for margin in (1.5, 6.7, 15.0):
            full = ndi.distance_transform_edt(~m) <= margin
            np.testing.assert_array_equal(_grown(m, margin), full)
    empty = np.zeros((20, 20), bool)
    assert not _grown(empty, 3.0).any()


def test_refine_takes_the_image_pairs_explicitly():
    """refine_drift(pair_edges=...) solves the image pairs again with the fiducial pairs; the
    same as the pairs carried in the table's attrs (which pandas operations can drop)."""
    det, truth = _fiducial_scene()
    n = len(truth)
    edges = [(i, j, *(truth[j] - truth[i] + 0.02), 0.5 if i >= 4 and not i < 7 <= j else np.nan)
             for i, j in pair_list(n)]
    coarse = drift_from_edges(edges, n)
    bare = pd.DataFrame(coarse.to_dict("list"))
    assert "pair_edges" not in bare.attrs
    explicit = refine_drift(det, bare, pixel_size_um=PX, pair_edges=edges)
    pd.testing.assert_frame_equal(explicit, refine_drift(det, coarse, pixel_size_um=PX))
    err = np.hypot(explicit.dy_px - truth[:, 0], explicit.dx_px - truth[:, 1])
    assert np.sqrt(np.mean(err**2)) < 0.2


def _border_cell_pair(shift, cell_dx, size=256, seed=0):
    """Fixed spots and a fiber shifted by ``shift``; a large textured cell entering at the
    right border (not in any mask) moves by ``cell_dx`` on its own."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(10, 0.6 * size, size=(40, 2))
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = []
    for k, (s, cx) in enumerate([((0.0, 0.0), size + 5.0), (shift, size + 5.0 + cell_dx)]):
        img = np.full((size, size), 100.0, np.float32)
        for y, x in pts:
            img += 300.0 * np.exp(-((yy - y - s[0]) ** 2 + (xx - x - s[1]) ** 2) / (2 * 1.5**2))
        img += 200.0 * np.exp(-((yy - 0.5 * size - s[0]) ** 2) / 2.0) * (xx < 0.6 * size)  # fiber
        cell = (yy - 0.5 * size) ** 2 + (xx - cx) ** 2 <= 80.0**2
        img += 1500.0 * ndi.gaussian_filter(cell.astype(np.float32), 2)
        img += 600.0 * np.sin((xx - cx) / 2.5) * np.cos((yy - 0.5 * size) / 3.0) * cell
        img += rng.normal(0, 5, img.shape).astype(np.float32)
        out.append(img)
    return out


def test_a_cell_missing_from_the_mask_is_excluded():
    """A cell entering at the frame border that the cell mask missed moves on its own: the
    product excludes it (extended bright region with a core wider than any migrasome) and
    keeps the spots and the fiber; the pair gives the stage shift, not the cell's."""
    a, b = _border_cell_pair((2.0, -3.0), cell_dx=-15.0)
    pa = prepare_frame(a, pixel_size_um=PX).astype(np.float32)
    k = product_bin(PX)
    assert np.isnan(pa[128 // k, 230 // k]) and np.isnan(pa[128 // k, 200 // k])  # the cell
    assert np.isfinite(pa[: 140 // k, : 140 // k]).mean() > 0.95  # spots and fiber kept
    dy, dx, q = register_pair(a, b, pixel_size_um=PX)
    assert dy == pytest.approx(2.0, abs=0.15) and dx == pytest.approx(-3.0, abs=0.15)
    # without the exclusion the cell's own peak competes: the pair is lost (or wrong)
    off = DriftConfig(mask_unsegmented_cells=False)
    dy, dx, q = register_pair(a, b, pixel_size_um=PX, config=off)
    assert np.isnan(q) or not (abs(dx + 3.0) < 0.5 and abs(dy - 2.0) < 0.5)


def test_registrar_cache_gives_the_pairs_of_fresh_registrations(monkeypatch):
    """The registrar keeps each held product made ready for registration (within
    SIDE_CACHE_BYTES): its edges are exactly those of register_prepared on every pair alone,
    with the cache large, and small enough that sides are dropped and made again."""
    from migradetect import drift as drift_mod

    pts, amps = _scene(seed=3, n=50)
    truth = np.column_stack([0.4 * np.arange(10), -0.3 * np.arange(10)])
    cfg = DriftConfig(pair_gap=4)
    products = [prepare_frame(_render(pts, amps, s, seed=60 + t)[0], pixel_size_um=PX,
                              config=cfg) for t, s in enumerate(truth)]
    alone = [(i, j, *register_prepared(products[i], products[j], pixel_size_um=PX, config=cfg))
             for i, j in pair_list(len(products), config=cfg)]
    assert sum(np.isfinite(e[4]) for e in alone) >= len(alone) // 2  # real registrations
    side = drift_mod._Side(products[0], cfg)
    side.coarse_spectra(int(np.ceil(DriftConfig().max_jump_um / (PX * product_bin(PX)))) + 1)
    # everything kept / sides dropped and made again (a side's spectra are counted once
    # made: up to 3 then) / large products: no sides at all
    for budget, kept in ((2**30, cfg.pair_gap + 1), (side.nbytes * 2.5, 3), (1, 0)):
        monkeypatch.setattr(drift_mod, "SIDE_CACHE_BYTES", budget)
        reg = PairRegistrar(len(products), pixel_size_um=PX, config=cfg)
        if kept == 3:
            monkeypatch.setattr(reg, "_keeps_sides", lambda product: True)
        for t, p in enumerate(products):
            reg.add(t, p)
            reg.register()
            assert len(reg._sides) <= kept
        edges = reg.edges()
        assert edges == alone
        assert not reg._sides


def test_point_pair_shift_with_given_trees_and_known_shift():
    """Displacement voting finds a known common shift among clutter, the same with the
    caller's KD-trees, and the one-to-one support counts the static points."""
    from scipy.spatial import cKDTree

    from migradetect.drift import _point_pair_shift

    rng = np.random.default_rng(5)
    static = rng.uniform(0, 400, size=(25, 2))
    p = np.vstack([static, rng.uniform(0, 400, size=(15, 2))])
    q = np.vstack([static + [3.2, -1.7] + rng.normal(0, 0.05, size=(25, 2)),
                   rng.uniform(0, 400, size=(15, 2))])
    kw = dict(max_jump=20.0, tol=0.5, area=400.0**2, max_nfa=1e-3)
    dy, dx, support = _point_pair_shift(p, q, **kw)
    assert abs(dy - 3.2) < 0.1 and abs(dx + 1.7) < 0.1 and support >= 24
    assert _point_pair_shift(p, q, trees=(cKDTree(p), cKDTree(q)), **kw) == (dy, dx, support)


def test_refine_of_a_drift_solved_with_the_fiducial_pairs_is_the_same():
    """estimate_drift solves the image and fiducial pairs once (drift_from_edges with
    fiducial_edges) and tells refine_drift so: the same drift as refine_drift solving the
    image pairs again with the fiducial pairs itself."""
    det, truth = _fiducial_scene()
    n = len(truth)
    edges = [(i, j, *(truth[j] - truth[i] + 0.02), 0.5 if i >= 4 and not i < 7 <= j else np.nan)
             for i, j in pair_list(n)]
    fid = fiducial_edges(det, n, pixel_size_um=PX)
    assert fid
    twice = refine_drift(det, drift_from_edges(edges, n), pixel_size_um=PX, pair_edges=edges)
    once = refine_drift(det, drift_from_edges(edges, n, fiducial_edges=fid), pixel_size_um=PX,
                        pair_edges=edges, fiducial_pairs=fid)
    for col in ("frame", "dy_px", "dx_px", "registered"):
        np.testing.assert_array_equal(once[col].to_numpy(), twice[col].to_numpy())
    err = np.hypot(once.dy_px - truth[:, 0], once.dx_px - truth[:, 1])
    assert np.sqrt(np.mean(err**2)) < 0.2
