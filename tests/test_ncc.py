"""The compiled masked correlation against a plain numpy statement of its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from migradetect._ncc import masked_ncc


def _reference(a, b, ma, mb, dy, dx):
    """Pearson correlation of a(x) and b(x + d) over the x valid in both (by definition)."""
    ny, nx = a.shape
    va, vb = [], []
    for y in range(ny):
        for x in range(nx):
            y2, x2 = y + dy, x + dx
            if 0 <= y2 < ny and 0 <= x2 < nx and ma[y, x] and mb[y2, x2]:
                va.append(a[y, x])
                vb.append(b[y2, x2])
    if len(va) < 16:
        return math.nan, len(va)
    return float(np.corrcoef(np.float64(va), np.float64(vb))[0, 1]), len(va)


@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-4, 5), (9, 9)])
def test_masked_ncc_matches_the_definition(shift):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 48)).astype(np.float32)
    a = base
    b = np.roll(base, (2, -3), axis=(0, 1)) + 0.3 * rng.standard_normal(base.shape).astype(np.float32)
    ma, mb = rng.random(a.shape) > 0.25, rng.random(a.shape) > 0.35
    a0, b0 = np.where(ma, a, 0).astype(np.float32), np.where(mb, b, 0).astype(np.float32)
    q, n = masked_ncc(a0, b0, ma.astype(np.float32), mb.astype(np.float32), *shift)
    q_ref, n_ref = _reference(a, b, ma, mb, *shift)
    assert n == n_ref
    assert q == pytest.approx(q_ref, abs=1e-6)  # float32 products
    if shift == (2, -3):  # the true shift: strongly correlated
        assert q > 0.9


def test_masked_ncc_too_little_overlap_is_nan():
    a = np.ones((10, 10), np.float32)
    f = np.ones((10, 10), np.float32)
    q, n = masked_ncc(a, a, f, f, 8, 8)  # 2 x 2 pixels overlap
    assert math.isnan(q) and n == 4
    q, n = masked_ncc(a, a, f, f, 0, 0)  # constant: no correlation defined
    assert math.isnan(q) and n == 100


def test_masked_ncc_map_equals_the_per_shift_statistic():
    from migradetect._ncc import masked_ncc_map

    rng = np.random.default_rng(11)
    base = rng.standard_normal((50, 44))
    b = np.roll(base, (-2, 3), axis=(0, 1)) + 0.4 * rng.standard_normal(base.shape)
    ma, mb = rng.random(base.shape) > 0.3, rng.random(base.shape) > 0.2
    a0, b0 = np.where(ma, base, 0).astype(np.float32), np.where(mb, b, 0).astype(np.float32)
    r = 4
    m = masked_ncc_map(a0, b0, ma, mb, r)
    assert m.shape == (2 * r + 1, 2 * r + 1)
    assert np.unravel_index(np.nanargmax(m), m.shape) == (-2 + r, 3 + r)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            q, _ = masked_ncc(a0, b0, ma.astype(np.float32), mb.astype(np.float32), dy, dx)
            assert m[dy + r, dx + r] == pytest.approx(q, abs=1e-6)


def test_masked_ncc_equals_numpy_sums_at_shifts_across_the_edges():
    """The compiled per-shift sums (row slices) against plain numpy on the overlap, for
    positive, negative and zero shifts on a non-square frame."""
    from migradetect._ncc import masked_ncc

    rng = np.random.default_rng(11)
    a = rng.normal(size=(37, 53)).astype(np.float32)
    b = rng.normal(size=(37, 53)).astype(np.float32)
    ma, mb = rng.random(a.shape) > 0.2, rng.random(a.shape) > 0.3
    a[~ma], b[~mb] = 0, 0
    for dy, dx in [(0, 0), (3, -5), (-7, 2), (-1, -1), (10, 20)]:
        ys, xs = slice(max(0, -dy), min(37, 37 - dy)), slice(max(0, -dx), min(53, 53 - dx))
        yb, xb = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
        both = ma[ys, xs] & mb[yb, xb]
        va, vb = a[ys, xs][both].astype(float), b[yb, xb][both].astype(float)
        v, n = masked_ncc(a, b, ma.astype(np.float32), mb.astype(np.float32), dy, dx)
        assert n == both.sum()
        assert v == pytest.approx(np.corrcoef(va, vb)[0, 1], abs=1e-5)
