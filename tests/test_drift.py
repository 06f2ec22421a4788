"""Drift: known integer, sub-pixel and sudden shifts with a moving cell masked out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from migradetect.drift import (
    DriftConfig, drift_from_pairs, estimate_drift, refine_drift, register_pair,
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
    assert d.dy_px.tolist() == [0.0, 1.0, 1.5] and d.dx_px.tolist() == [0.0, 2.0, 1.0]


def test_bad_frames():
    with pytest.raises(InputError, match="shape"):
        register_pair(np.zeros((16, 16)), np.zeros((16, 17)), pixel_size_um=PX)
    with pytest.raises(InputError, match=r"\(Y, X\)"):
        register_pair(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), pixel_size_um=PX)
