"""Preprocessing: background and uneven-illumination removal, noise, bleaching, denoising.

All functions take one ``(Y, X)`` frame (any real dtype) and never modify it. Scales are
given in µm and converted to pixels here with ``pixel_size_um``.

Background: a grey opening ("rolling ball" in spirit) with a disk of radius
``background_radius_um`` keeps only structures wider than that disk, so it must be larger
than the largest migrasome (3 µm across). It is computed on a block-averaged copy of the
frame (about 5 coarse pixels per radius), smoothed and upsampled bilinearly: the background
is smooth at that scale anyway, and this costs a few milliseconds on a 1024² frame instead of
a second for a full-resolution opening.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.morphology import disk

from migradetect.errors import InputError
from migradetect.params import param

logger = logging.getLogger(__name__)

#: MAD -> standard deviation for Gaussian noise.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class PreprocessConfig:
    """Background removal, bleaching correction and optional denoising."""

    background_radius_um: float = param(
        6.0, unit="um", min=0.5, max=200.0,
        help="radius of the disk of the background opening; larger than the largest migrasome",
    )
    bleach_correction: bool = param(True, help="correct intensities for photobleaching")
    bleach_model: str = param(
        "exponential", choices=("exponential", "ratio"),
        help="bleaching model: one exponential fitted over the movie, or a smoothed ratio "
             "to frame 0 (for non-exponential bleaching)",
    )
    bleach_smoothing_frames: int = param(
        5, min=1, max=101,
        help="median window (frames) of the 'ratio' bleaching model",
    )
    denoise_sigma_um: float = param(0.0, unit="um", min=0.0, max=2.0,
                                    help="Gaussian denoising sigma; 0 disables")


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise InputError(
            f"expected one (Y, X) frame, got an array of shape {frame.shape}.",
            fix="pass a single 2-D frame (use the *_stack functions for movies).",
        )
    if not (np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)
            or frame.dtype == bool):
        raise InputError(f"frame has unsupported dtype {frame.dtype}.",
                         fix="pass integer or floating-point pixel values.")
    return frame


def _check_pixel_size(pixel_size_um: float) -> float:
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise InputError(f"pixel size {pixel_size_um!r} µm is not a positive number.",
                         fix="give the calibration (µm per pixel) of the movie.")
    return float(pixel_size_um)


def block_mean(frame: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (edge-padded), as float32.

    The result has shape ``ceil(Y / factor), ceil(X / factor)``.
    """
    frame = np.asarray(frame)
    if factor <= 1:
        return np.array(frame, dtype=np.float32)  # a copy, as for larger factors
    if not (frame.dtype == bool or (frame.dtype.kind in "ui" and frame.dtype.itemsize <= 2)):
        frame = frame.astype(np.float32, copy=False)
    # (camera counts of up to 16 bits and masks are exact in float32: they are added into
    # the float32 sums as they are, the same sums without a float32 copy of the frame)
    ny, nx = frame.shape
    py, px = (-ny) % factor, (-nx) % factor
    if py or px:
        frame = np.pad(frame, ((0, py), (0, px)), mode="edge")
    # a sum of factor² strided views: several times faster than reshape(...).mean(axis=(1, 3))
    # for the small factors used here, and exactly the same block means up to rounding
    out = np.zeros((frame.shape[0] // factor, frame.shape[1] // factor), dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            out += frame[i::factor, j::factor]
    out *= np.float32(1.0 / (factor * factor))
    return out


def block_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """True where any pixel of a ``factor`` x ``factor`` block is: the grid of
    :func:`block_mean` (a partial last row/column of blocks counts as a block)."""
    mask = np.asarray(mask, dtype=bool)
    if factor <= 1:
        return mask.copy()
    ny, nx = mask.shape
    py, px = (-ny) % factor, (-nx) % factor
    if py or px:
        mask = np.pad(mask, ((0, py), (0, px)))
    out = mask[::factor, ::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                out |= mask[i::factor, j::factor]
    return out


def _interp_weights(n_small: int, n: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation indices and weights from block centres to pixel centres."""
    x = np.clip((np.arange(n) + 0.5) / factor - 0.5, 0, n_small - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_small - 1)
    return i0, i1, (x - i0).astype(np.float32)


def upsample(small: np.ndarray, factor: int, shape: tuple[int, int], *,
             order: int = 1) -> np.ndarray:
    """Inverse of :func:`block_mean`: back to ``shape`` with pixel centres aligned.

    ``order=1``: separable bilinear interpolation (float32; ~3x faster than
    ``scipy.ndimage.zoom`` for these large factors); ``order=0``: each block value repeated
    (for label images; keeps the dtype).
    """
    small = np.asarray(small)
    if factor <= 1:
        return small[: shape[0], : shape[1]].copy()
    if order == 0:
        big = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
        return np.ascontiguousarray(big[: shape[0], : shape[1]])
    small = small.astype(np.float32, copy=False)
    nky = small.shape[0]
    # along X on the small image (few rows: gathers are cheap), C-contiguous
    j0, j1, b = _interp_weights(small.shape[1], shape[1], factor)
    cols = np.take(small, j0, axis=1) * (1.0 - b)
    cols += np.take(small, j1, axis=1) * b
    if nky * factor < shape[0]:  # fewer blocks than the rows need: clip, by gathers
        i0, i1, a = _interp_weights(nky, shape[0], factor)
        out = cols[i0] * (1.0 - a)[:, None]
        out += cols[i1] * a[:, None]
        return out
    # along Y on full rows, by broadcasting instead of gathers: output row p of block k
    # (p < factor) lies at y = k + (p + 0.5) / factor - 0.5 in block-centre units, between
    # blocks k - 1 and k (first half) or k and k + 1 (second half) with weights that depend
    # on p only; an edge-padded copy of ``cols`` gives the same clipping at both ends as
    # :func:`_interp_weights`. Each phase is a (blocks, X) plane of whole rows.
    ext = np.pad(cols, ((1, 1), (0, 0)), mode="edge")  # ext[k + 1] = cols[k]
    delta = (np.arange(factor) + 0.5) / factor - 0.5
    n_lo = int(np.count_nonzero(delta < 0))  # rows 0..n_lo-1: between blocks k - 1 and k
    t = np.where(delta < 0, 1.0 + delta, delta).astype(np.float32)  # weight of block below
    out = np.empty((nky, factor, shape[1]), np.float32)
    tmp = np.empty((nky, shape[1]), np.float32)
    for p in range(factor):
        above, below = (ext[:-2], ext[1:-1]) if p < n_lo else (ext[1:-1], ext[2:])
        o = out[:, p, :]
        np.multiply(above, np.float32(1.0 - t[p]), out=o)
        np.multiply(below, t[p], out=tmp)
        o += tmp
    return out.reshape(nky * factor, shape[1])[: shape[0]]


def estimate_background(frame: np.ndarray, *, pixel_size_um: float,
                        radius_um: float) -> np.ndarray:
    """Smooth background (float32, frame's shape): grey opening with a disk of ``radius_um``.

    Structures narrower than the disk (migrasomes, fibers, noise) are removed; the opening
    runs on a block-averaged frame with about 5 coarse pixels per radius.
    """
    frame = _check_frame(frame)
    pixel_size_um = _check_pixel_size(pixel_size_um)
    radius_px = radius_um / pixel_size_um
    factor = max(1, int(radius_px // 5))
    small = block_mean(frame, factor)
    r_small = max(1, int(round(radius_px / factor)))
    opened = ndi.grey_opening(small, footprint=disk(r_small), mode="nearest")
    # the opening is piecewise flat; smooth it at half the disk radius before upsampling
    opened = ndi.gaussian_filter(opened, r_small / 2.0, mode="nearest")
    return upsample(opened.astype(np.float32), factor, frame.shape)


def denoise(frame: np.ndarray, *, pixel_size_um: float, sigma_um: float) -> np.ndarray:
    """Gaussian denoising with sigma ``sigma_um`` (float32); ``sigma_um == 0`` copies."""
    frame = np.asarray(_check_frame(frame), dtype=np.float32)
    if sigma_um <= 0:
        return frame.copy()
    return ndi.gaussian_filter(frame, sigma_um / _check_pixel_size(pixel_size_um),
                               mode="nearest")


def subtract_background(frame: np.ndarray, *, pixel_size_um: float,
                        config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Remove the smooth background and uneven illumination from one frame.

    Parameters
    ----------
    frame
        ``(Y, X)`` raw frame (camera counts).
    pixel_size_um
        Pixel size, µm.
    config
        ``background_radius_um`` (disk radius of the opening, µm) and ``denoise_sigma_um``
        (Gaussian sigma in µm applied to the corrected frame; 0 disables).

    Returns
    -------
    corrected, background
        float32 ``(Y, X)`` arrays in camera counts: ``corrected = frame - background``
        (then denoised if asked); background is >= 0 wherever the frame is.
    """
    frame = _check_frame(frame)
    background = estimate_background(frame, pixel_size_um=pixel_size_um,
                                     radius_um=config.background_radius_um)
    corrected = np.asarray(frame, dtype=np.float32) - background
    if config.denoise_sigma_um > 0:
        corrected = denoise(corrected, pixel_size_um=pixel_size_um,
                            sigma_um=config.denoise_sigma_um)
    return corrected, background


def noise_sigma(frame: np.ndarray) -> float:
    """Robust standard deviation of the pixel noise of one frame, in the frame's units.

    The frame is high-passed with the 3x3 kernel ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the
    product of two second differences: it cancels any locally linear signal), whose output
    has standard deviation ``6 sigma`` for white noise; the median absolute deviation of that
    output ignores the few pixels on structures. Shot noise is signal dependent: this is the
    noise of the typical (background) pixel.
    """
    f = _check_frame(frame)
    if min(f.shape) < 3:
        raise InputError(f"frame of shape {f.shape} is too small to estimate noise.",
                         fix="pass a frame at least 3 x 3 pixels.")
    # ~100k samples are plenty: the filter is evaluated only on a grid with this step (the
    # pixels it needs are converted to float32, not the whole frame)
    ny, nx = f.shape[0] - 2, f.shape[1] - 2
    step = max(1, int(np.sqrt(ny * nx / 100_000)))

    def rows(k: int) -> np.ndarray:  # second difference across rows, on the sample grid
        cols = f[:, k:k + nx:step]
        return (cols[0:ny:step].astype(np.float32) - 2.0 * cols[1:ny + 1:step].astype(np.float32)
                + cols[2:ny + 2:step].astype(np.float32))

    sample = (rows(0) - 2.0 * rows(1) + rows(2)).ravel()
    med = _median(sample)
    mad = _median(np.abs(sample - med))
    return float(_MAD_TO_SIGMA * mad / 6.0)


def _median(a: np.ndarray) -> float:
    """``np.median`` of a 1-D array (same value), from one partition.

    For an even length ``np.median`` partitions at two indices, several times slower than at
    one; the lower middle value is the largest element left of the upper one.
    """
    n = a.size
    if n == 0:
        return float("nan")
    h = n // 2
    part = np.partition(a, h)
    if n % 2:
        return float(part[h])
    return float((part[:h].max() + part[h]) / 2.0)


def frame_stats(frame: np.ndarray, *, mask: np.ndarray | None = None,
                background_percentile: float = 5.0) -> dict[str, float]:
    """Cheap per-frame statistics for bleaching correction and quality control.

    Parameters
    ----------
    frame
        ``(Y, X)`` raw frame.
    mask
        Optional boolean ``(Y, X)`` foreground (e.g. cell labels > 0). Without it, the
        foreground is the pixels more than 5 noise sigmas above the background.
    background_percentile
        Percentile taken as the background level (camera offset plus diffuse light).

    Returns
    -------
    dict
        ``mean``, ``median``, ``background`` (percentile), ``noise_sigma``,
        ``foreground_fraction`` and ``signal``: the mean of ``frame - background`` over the
        foreground (camera counts), the quantity that bleaching lowers.
    """
    f = _check_frame(frame)
    step = max(1, int(np.sqrt(f.size / 250_000)))
    sample = f[::step, ::step].astype(np.float32)  # only the sampled pixels are converted
    # the percentile and the median from one partition (each np.percentile / np.median
    # call partitions the sample again); linear interpolation as np.percentile's default
    flat = sample.ravel()
    pos = np.array([background_percentile / 100.0, 0.5]) * (flat.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, flat.size - 1)
    part = np.partition(flat, np.unique(np.concatenate([lo, hi])))
    q = part[lo].astype(np.float64) + (part[hi].astype(np.float64) - part[lo]) * (pos - lo)
    bg, med = float(q[0]), float(q[1])
    sigma = noise_sigma(f)
    if mask is None:
        fg = sample > bg + 5.0 * sigma
        values = sample[fg]
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != f.shape:
            raise InputError(f"mask shape {mask.shape} differs from the frame's {f.shape}.",
                             fix="pass a mask of the frame's shape.")
        values = f[mask].astype(np.float32)
        fg = mask
    signal = float(values.mean() - bg) if values.size else float("nan")
    return {
        "mean": float(sample.mean()),
        "median": med,
        "background": bg,
        "noise_sigma": sigma,
        "foreground_fraction": float(np.mean(fg)),
        "signal": signal,
    }


def bleach_factors(stats_per_frame: Sequence[Mapping[str, float]] | pd.DataFrame | np.ndarray,
                   *, model: str = "exponential", key: str = "signal",
                   smoothing_frames: int = 5) -> np.ndarray:
    """Per-frame multiplicative bleaching correction, 1.0 at frame 0.

    Parameters
    ----------
    stats_per_frame
        One entry per frame: dicts from :func:`frame_stats`, a table with column ``key``, or
        a 1-D array of the signal itself.
    model
        ``"exponential"``: fit ``log(signal) = a - k t`` (least squares, then once more
        without frames deviating more than 3 robust sigmas) and return ``exp(k t)``; a
        fitted brightening (k < 0) is not corrected (factors 1). ``"ratio"``:
        ``signal[0] / signal[t]`` after a running median over ``smoothing_frames``.
    key
        Which statistic measures the bleaching signal.

    Returns
    -------
    ndarray of float64, one factor per frame: multiply frame ``t``'s intensities by it.
    Frames with a non-positive or missing signal get the model's value (exponential) or the
    nearest valid factor (ratio).
    """
    if isinstance(stats_per_frame, pd.DataFrame):
        signal = stats_per_frame[key].to_numpy(dtype=float)
    elif isinstance(stats_per_frame, np.ndarray):
        signal = np.asarray(stats_per_frame, dtype=float).ravel()
    else:
        signal = np.array([float(s[key]) for s in stats_per_frame], dtype=float)
    n = signal.size
    if n == 0:
        return np.ones(0)
    t = np.arange(n, dtype=float)
    valid = np.isfinite(signal) & (signal > 0)
    if valid.sum() < 2:
        return np.ones(n)
    if model == "exponential":
        y = np.log(signal[valid])
        tv = t[valid]
        slope, icpt = np.polyfit(tv, y, 1)
        resid = y - (icpt + slope * tv)
        mad = np.median(np.abs(resid - np.median(resid)))
        keep = np.abs(resid) <= 3.0 * _MAD_TO_SIGMA * mad if mad > 0 else np.ones_like(tv, bool)
        if keep.sum() >= 2 and not keep.all():
            slope, icpt = np.polyfit(tv[keep], y[keep], 1)
        rate = max(0.0, -float(slope))  # per frame
        return np.exp(rate * t)
    if model == "ratio":
        smooth = pd.Series(np.where(valid, signal, np.nan)).rolling(
            smoothing_frames, center=True, min_periods=1).median()
        smooth = smooth.ffill().bfill().to_numpy()
        return smooth[0] / smooth
    raise ValueError(f"unknown bleaching model {model!r}; use 'exponential' or 'ratio'.")


def finite_frame(raw: np.ndarray, frame_index: int) -> np.ndarray:
    """``raw`` with non-finite pixels (NaN/inf in float movies) set to the frame's median.

    A few NaN pixels (dead pixels, stitching seams, masked regions) must not stop a movie;
    the median of the finite pixels is a background-like value that creates no structure. A
    frame with no finite pixel cannot be analysed and is an InputError.
    """
    if raw.dtype.kind != "f":
        return raw
    finite = np.isfinite(raw)
    if finite.all():
        return raw
    if not finite.any():
        raise InputError(
            f"frame {frame_index} has no finite pixel value (all NaN or infinite).",
            fix="check how the movie was exported (a float movie must hold numbers, not "
                "NaN); remove it from the batch if it is empty.",
            stage="analyze")
    logger.info("frame %d: %d non-finite pixels set to the frame median", frame_index,
             int((~finite).sum()))
    return np.where(finite, raw, np.median(raw[finite])).astype(raw.dtype)
