"""Tests of migradetect.preprocess: background, noise, bleaching (known-answer frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from migradetect.errors import InputError
from migradetect.preprocess import (
    PreprocessConfig,
    bleach_factors,
    frame_stats,
    noise_sigma,
    subtract_background,
)

PX = 0.1  # µm per pixel


def _gradient_with_spot(noise: float = 2.0, seed: int = 0) -> tuple[np.ndarray, float]:
    yy, xx = np.mgrid[:256, :256].astype(float)
    base = 100.0 + 0.2 * xx + 0.1 * yy  # 50 + 25 counts across the frame
    amp = 200.0
    spot = amp * np.exp(-((yy - 128) ** 2 + (xx - 100) ** 2) / (2 * 3.0**2))
    rng = np.random.default_rng(seed)
    return (base + spot + rng.normal(0, noise, base.shape)).astype(np.float32), amp


def test_background_flattens_gradient_and_keeps_spot():
    frame, amp = _gradient_with_spot()
    before = frame.copy()
    corrected, background = subtract_background(frame, pixel_size_um=PX,
                                                config=PreprocessConfig(background_radius_um=4.0))
    assert np.array_equal(frame, before)  # input untouched
    assert corrected.dtype == np.float32 and background.dtype == np.float32
    assert corrected.shape == frame.shape
    far = np.ones(frame.shape, bool)
    far[128 - 40:128 + 40, 100 - 40:100 + 40] = False
    # the 75-count gradient is gone: residual background flat within a few noise sigmas
    inner = corrected[16:-16, 16:-16][far[16:-16, 16:-16]]
    assert abs(np.median(inner)) < 3.0
    assert np.percentile(inner, 99) - np.percentile(inner, 1) < 12 * 2.0
    # spot amplitude kept within 10%
    peak = corrected[126:131, 98:103].mean()
    d = np.arange(-2, 3)
    box = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 3.0**2)).mean()  # 5x5 mean
    assert peak == pytest.approx(amp * box, rel=0.1)


def test_denoise_option_reduces_noise():
    frame, _ = _gradient_with_spot(noise=5.0)
    plain, _ = subtract_background(frame, pixel_size_um=PX, config=PreprocessConfig())
    smooth, _ = subtract_background(frame, pixel_size_um=PX,
                                    config=PreprocessConfig(denoise_sigma_um=0.2))
    assert noise_sigma(smooth) < 0.5 * noise_sigma(plain)


@pytest.mark.parametrize("sigma", [1.0, 5.0, 20.0])
def test_noise_sigma_recovers_known_sigma_with_structure(sigma):
    frame, _ = _gradient_with_spot(noise=sigma, seed=3)
    assert noise_sigma(frame) == pytest.approx(sigma, rel=0.1)


def test_noise_sigma_integer_frames_and_bad_input():
    rng = np.random.default_rng(1)
    frame = (1000 + rng.normal(0, 8, (128, 128))).astype(np.uint16)
    assert noise_sigma(frame) == pytest.approx(8.0, rel=0.1)
    with pytest.raises(InputError):
        noise_sigma(np.zeros((4, 8, 8)))
    with pytest.raises(InputError):
        subtract_background(np.zeros((8, 8)), pixel_size_um=0.0, config=PreprocessConfig())


def _bleaching_movie(rate: float, n: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:96, :96]
    cell = ((yy - 48) ** 2 + (xx - 48) ** 2 < 25**2).astype(float)
    return [(100 + 80 * np.exp(-rate * t) * cell + rng.normal(0, 2, cell.shape)).astype(np.float32)
            for t in range(n)]


def test_bleach_factors_recover_exponential_decay():
    rate = 0.02
    stats = [frame_stats(f) for f in _bleaching_movie(rate)]
    factors = bleach_factors(stats)
    t = np.arange(len(stats))
    assert factors[0] == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(factors, np.exp(rate * t), rtol=0.03)
    # the same from a table and with the ratio model
    table = pd.DataFrame(stats)
    np.testing.assert_allclose(bleach_factors(table), factors)
    ratio = bleach_factors(stats, model="ratio", smoothing_frames=3)
    assert ratio[0] == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(ratio, np.exp(rate * t), rtol=0.05)


def test_bleach_factors_exact_series_and_edge_cases():
    t = np.arange(50)
    signal = 500.0 * np.exp(-0.01 * t)
    signal[10] = 50.0  # one outlier frame (focus loss) does not bias the fit
    np.testing.assert_allclose(bleach_factors(signal), np.exp(0.01 * t), rtol=1e-3)
    np.testing.assert_allclose(bleach_factors(np.full(5, 10.0)), 1.0)
    assert np.all(bleach_factors(100.0 * np.exp(0.05 * np.arange(5))) == 1.0)  # brightening
    assert bleach_factors(np.array([])).shape == (0,)
    with pytest.raises(ValueError):
        bleach_factors(signal, model="spline")


def test_frame_stats_with_mask():
    frames = _bleaching_movie(0.0, n=1)
    yy, xx = np.mgrid[:96, :96]
    mask = (yy - 48) ** 2 + (xx - 48) ** 2 < 20**2
    s = frame_stats(frames[0], mask=mask)
    assert s["signal"] == pytest.approx(80.0, rel=0.05)
    assert s["background"] == pytest.approx(100.0 - 1.645 * 2, abs=1.0)
    with pytest.raises(InputError):
        frame_stats(frames[0], mask=mask[:10])


@pytest.mark.parametrize(("small_shape", "factor", "shape"),
                         [((128, 128), 8, (1024, 1024)), ((125, 126), 8, (1000, 1003)),
                          ((8, 10), 5, (37, 50)), ((3, 4), 4, (20, 9)), ((1, 1), 3, (3, 3)),
                          ((6, 6), 2, (11, 12))])
def test_upsample_is_separable_bilinear_with_clipping(small_shape, factor, shape):
    """Reference: pixel centre (i + 0.5) / factor - 0.5 in block units, clipped to the
    blocks, linear interpolation along each axis (np.interp)."""
    from migradetect.preprocess import upsample

    small = np.random.default_rng(0).random(small_shape).astype(np.float32)
    yq = np.clip((np.arange(shape[0]) + 0.5) / factor - 0.5, 0, small_shape[0] - 1)
    xq = np.clip((np.arange(shape[1]) + 0.5) / factor - 0.5, 0, small_shape[1] - 1)
    cols = np.array([np.interp(xq, np.arange(small_shape[1]), row) for row in small])
    ref = np.array([np.interp(yq, np.arange(small_shape[0]), col) for col in cols.T]).T
    out = upsample(small, factor, shape)
    assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.abs(out - ref).max() < 1e-5


def test_median_helper_equals_numpy_median():
    from migradetect.preprocess import _median

    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 11, 1000, 1001):
        a = rng.normal(size=n).astype(np.float32)
        assert _median(a) == pytest.approx(float(np.median(a)), rel=1e-6, abs=1e-7)
    ints = rng.integers(0, 5, size=400).astype(np.float32)  # many ties
    assert _median(ints) == float(np.median(ints))
