"""Stage drift: masked frame registration, then refinement on anchored migrasomes.

Convention: the drift of frame ``t`` is ``(dy_px, dx_px)`` such that the image coordinate of
a fixed object at frame ``t`` is its frame-0 coordinate plus ``(dy, dx)``; frame 0 is 0.

Public functions
----------------
``register_pair(prev, cur, prev_mask=None, cur_mask=None, *, pixel_size_um, config=None)
-> (dy_px, dx_px, quality)``
    Shift of ``cur`` relative to ``prev`` (a fixed object at ``p`` in ``prev`` is at
    ``p + (dy, dx)`` in ``cur``). ``*_mask`` are cell masks (labels or booleans, > 0 = cell):
    migrating cells are excluded (dilated by ``cell_margin_um``) because they bias a
    whole-frame correlation. Integer search: skimage's masked normalised cross-correlation
    (``phase_cross_correlation`` with masks, which searches every shift, so a sudden 20 px
    jump is found); sub-pixel: Gauss-Newton minimisation of the masked squared difference with
    spline-shifted images (written here because skimage's masked mode returns whole pixels
    only). ``quality`` is the masked correlation after alignment (1 = identical).
    One call per frame pair, so the pipeline can run one dask task per pair.
``drift_from_pairs(pair_shifts, *, config=None) -> DataFrame[frame, dy_px, dx_px, quality]``
    Cumulative sum of the pair shifts (row ``k`` is the pair ``(k, k+1)``); unreliable pairs
    (quality < ``min_quality``) are interpolated from the reliable ones.
``estimate_drift(frames, cell_masks=None, *, pixel_size_um, config=None) -> DataFrame``
    Both of the above over a ``(T, Y, X)`` indexable, reading two frames at a time.
``drift_at_frames(drift, frames) -> (dy, dx)``
    The drift table looked up (linearly interpolated; 0 when the table is None or empty) at
    any frames.
``refine_drift(detections, drift, *, pixel_size_um, config=None, tracking_config=None)``
    Removes the random-walk error of the pairwise chain with anchored migrasomes (static
    fiducials): the detections are linked in coarse-corrected coordinates (unless they carry
    ``track_id``), and each frame gets the median residual of its long-lived tracks from their
    track medians (alternating a few times), relative to frame 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.stats import theilslopes
from skimage.registration import phase_cross_correlation
from skimage.transform import downscale_local_mean, resize

from migradetect.errors import InputError
from migradetect.params import param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftConfig:
    """Parameters of stage-drift estimation."""

    enabled: bool = param(True, help="estimate and correct stage drift")
    max_jump_um: float = param(
        10.0, unit="um", min=0.0, max=1000.0,
        help="largest stage move between two frames that is accepted",
    )
    highpass_um: float = param(
        5.0, unit="um", min=0.1, max=200.0,
        help="Gaussian sigma of the background removed before registration",
    )
    smoothing_um: float = param(
        0.15, unit="um", min=0.0, max=5.0, help="Gaussian sigma of the noise smoothing",
    )
    cell_margin_um: float = param(
        2.0, unit="um", min=0.0, max=50.0,
        help="cells are excluded from registration together with this margin",
    )
    min_quality: float = param(
        0.4, min=0.0, max=1.0,
        help="frame pairs whose aligned correlation is lower are unreliable: their shift is "
             "interpolated from the reliable pairs",
    )
    refine: bool = param(True, help="refine the drift on anchored migrasomes")
    refine_min_track_frames: int = param(
        5, unit="frames", min=2, help="shortest migrasome track used as a fiducial",
    )
    refine_min_objects: int = param(
        3, min=1, help="fewest fiducials in a frame for its drift to be refined",
    )


def drift_at_frames(
    drift: pd.DataFrame | None, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative drift ``(dy, dx)`` in px at each of ``frames`` (interpolated, 0 if unknown)."""
    frames = np.asarray(frames, dtype=np.float64)
    if drift is None or len(drift) == 0:
        z = np.zeros(len(frames))
        return z, z.copy()
    d = drift.sort_values("frame")
    f = d["frame"].to_numpy(np.float64)
    return (np.interp(frames, f, d["dy_px"].to_numpy(np.float64)),
            np.interp(frames, f, d["dx_px"].to_numpy(np.float64)))


def _as_frame(frame: Any) -> np.ndarray:
    img = np.asarray(frame, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"drift registration needs (Y, X) frames, got shape {img.shape}.",
                         fix="pass one channel of one z-plane per frame.")
    return img


def _smooth_masked(img: np.ndarray, v: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``img`` over the pixels where ``v`` is 1 (normalised convolution).

    Wide kernels are applied on a block-averaged copy and interpolated back (the background
    is smooth by definition), which is many times faster than the full-resolution filter.
    """
    k = max(1, int(sigma // 4))
    num, den = img * v, v
    if k > 1:
        num, den = downscale_local_mean(num, (k, k)), downscale_local_mean(den, (k, k))
    num, den = ndi.gaussian_filter(num, sigma / k), ndi.gaussian_filter(den, sigma / k)
    bg = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    if k > 1:
        bg = resize(bg, (bg.shape[0] * k, bg.shape[1] * k), order=1, mode="edge",
                    anti_aliasing=False)[: img.shape[0], : img.shape[1]]
    return bg.astype(np.float32, copy=False)


def _prepare(img: np.ndarray, valid: np.ndarray, sigma_hp: float, sigma_s: float) -> np.ndarray:
    """Smooth, then remove the background estimated from the valid (cell-free) pixels only.

    The masked (normalised) Gaussian keeps a bright moving cell from leaking into the
    background of the pixels around it, which would bias the registration.
    """
    if sigma_s > 0:
        img = ndi.gaussian_filter(img, sigma_s)
    v = valid.astype(np.float32)
    return (img - _smooth_masked(img, v, sigma_hp)) * v


def _valid(mask: Any, shape: tuple[int, ...], margin_px: int) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    cell = np.asarray(mask) > 0
    if margin_px > 0 and cell.any():
        cell = ndi.binary_dilation(cell, iterations=margin_px)
    return ~cell


def _refine_subpixel(a: np.ndarray, b: np.ndarray, va: np.ndarray, vb: np.ndarray,
                     d: np.ndarray, n_iter: int = 8) -> tuple[np.ndarray, float]:
    """Gauss-Newton: find d minimising sum over valid x of (b(x + d) - a(x))^2."""
    border = np.zeros(a.shape, dtype=bool)
    border[3:-3, 3:-3] = True
    quality = math.nan
    coef = ndi.spline_filter(b, order=3, mode="nearest")  # once, not at every iteration
    for _ in range(n_iter):
        w = ndi.shift(coef, -d, order=3, mode="nearest", prefilter=False)
        vw = ndi.shift(vb.astype(np.float32), -d, order=0, mode="constant", cval=0) > 0.5
        v = va & vw & border
        if v.sum() < 16:
            return d, math.nan
        gy, gx = np.gradient(w)
        r = (w - a)[v]
        gy, gx = gy[v], gx[v]
        jtj = np.array([[gy @ gy, gy @ gx], [gx @ gy, gx @ gx]], dtype=np.float64)
        if abs(np.linalg.det(jtj)) < 1e-12:
            break
        step = -np.linalg.solve(jtj, np.array([gy @ r, gx @ r], dtype=np.float64))
        step = np.clip(step, -1.0, 1.0)
        d = d + step
        av, wv = a[v] - a[v].mean(), w[v] - w[v].mean()
        den = math.sqrt(float(av @ av) * float(wv @ wv))
        quality = float(av @ wv) / den if den > 0 else math.nan
        if np.hypot(*step) < 1e-3:
            break
    return d, quality


def register_pair(
    prev: Any,
    cur: Any,
    prev_mask: Any = None,
    cur_mask: Any = None,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
) -> tuple[float, float, float]:
    """Stage shift of ``cur`` relative to ``prev`` in px, and the alignment quality.

    See the module docstring. Returns ``(dy_px, dx_px, quality)``; ``(0, 0, nan)`` when the
    frames have no usable overlap or the shift exceeds ``max_jump_um``.
    """
    config = config or DriftConfig()
    a, b = _as_frame(prev), _as_frame(cur)
    if a.shape != b.shape:
        raise InputError(f"frames differ in shape: {a.shape} vs {b.shape}.",
                         fix="register frames of the same movie.")
    margin = int(math.ceil(config.cell_margin_um / pixel_size_um))
    va, vb = _valid(prev_mask, a.shape, margin), _valid(cur_mask, b.shape, margin)
    sig_hp, sig_s = config.highpass_um / pixel_size_um, config.smoothing_um / pixel_size_um
    a, b = _prepare(a, va, sig_hp, sig_s), _prepare(b, vb, sig_hp, sig_s)
    if va.sum() < 64 or vb.sum() < 64:
        log.warning("drift: too little cell-free area to register a frame pair; shift set to 0")
        return 0.0, 0.0, math.nan
    # whole-pixel search on 2x2-binned frames (4x fewer pixels for the FFTs); the
    # Gauss-Newton step below converges from within a couple of pixels
    bin_ = 2 if min(a.shape) >= 128 else 1
    if bin_ > 1:
        ab, bb = downscale_local_mean(a, (bin_, bin_)), downscale_local_mean(b, (bin_, bin_))
        vab = downscale_local_mean(va.astype(np.float32), (bin_, bin_)) > 0.99
        vbb = downscale_local_mean(vb.astype(np.float32), (bin_, bin_)) > 0.99
    else:
        ab, bb, vab, vbb = a, b, va, vb
    if vab.all() and vbb.all():
        shift, _, _ = phase_cross_correlation(ab, bb, upsample_factor=1, normalization=None)
    else:
        shift = phase_cross_correlation(ab, bb, reference_mask=vab, moving_mask=vbb,
                                        overlap_ratio=0.3)[0]
    d = -np.asarray(shift, dtype=np.float64) * bin_
    max_jump = config.max_jump_um / pixel_size_um
    if np.hypot(*d) > max_jump + 1.0:
        log.warning("drift: pair shift %.1f px exceeds max_jump_um; set to 0", np.hypot(*d))
        return 0.0, 0.0, math.nan
    sa, sb = a[va].std(), b[vb].std()
    if sa > 0 and sb > 0:
        d, quality = _refine_subpixel(a / sa, b / sb, va, vb, d)
    else:
        quality = math.nan
    if not quality >= config.min_quality:
        log.info("drift: low registration quality %.3f for a frame pair", quality)
    return float(d[0]), float(d[1]), float(quality)


def drift_from_pairs(pair_shifts: Any, *, config: DriftConfig | None = None) -> pd.DataFrame:
    """Cumulative drift table from per-pair shifts ``[(dy, dx, quality), ...]`` (pair k: k→k+1).

    Pairs whose quality is below ``config.min_quality`` (or NaN) are unreliable (too few cell-free
    structures to register); their shifts are replaced by the linear interpolation of the
    reliable pairs' shifts (stage drift is smooth between rare jumps), when any are reliable.
    """
    min_quality = (config or DriftConfig()).min_quality
    arr = np.asarray(list(pair_shifts), dtype=np.float64).reshape(-1, 3)
    shifts = arr[:, :2].copy()
    good = arr[:, 2] >= min_quality
    if len(arr) and good.any() and not good.all():
        k = np.arange(len(arr))
        kg = k[good]
        for c in range(2):
            shifts[~good, c] = np.interp(k[~good], kg, shifts[good, c])
            # before the first / after the last reliable pair: continue the local trend
            # (Theil-Sen line through the nearest reliable pairs, robust to one jump pair)
            for ends, near in ((k < kg[0], kg[:6]), (k > kg[-1], kg[-6:])):
                if ends.any() and len(near) >= 3:
                    slope, icpt, _, _ = theilslopes(shifts[near, c], near)
                    shifts[ends, c] = icpt + slope * k[ends]
        log.info("drift: %d of %d frame pairs below quality %.2f were interpolated",
                 int((~good).sum()), len(arr), min_quality)
    dy = np.r_[0.0, np.cumsum(shifts[:, 0])]
    dx = np.r_[0.0, np.cumsum(shifts[:, 1])]
    quality = np.r_[1.0, arr[:, 2]]
    return pd.DataFrame({"frame": np.arange(len(dy), dtype=np.int64), "dy_px": dy, "dx_px": dx,
                         "quality": quality})


def estimate_drift(
    frames: Any,
    cell_masks: Any = None,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
) -> pd.DataFrame:
    """Cumulative stage drift of a ``(T, Y, X)`` movie relative to frame 0.

    Parameters
    ----------
    frames
        ``(T, Y, X)`` indexable (numpy, dask, zarr); two frames are read at a time.
    cell_masks
        ``(T, Y, X)`` cell labels or masks (> 0 = cell), or None.
    pixel_size_um
        µm per pixel.
    config
        :class:`DriftConfig`; when ``enabled`` is False the drift is all zeros.

    Returns
    -------
    DataFrame
        ``frame, dy_px, dx_px, quality`` (px; quality per pair into the frame, 1 at frame 0).
    """
    config = config or DriftConfig()
    n_t = int(frames.shape[0])
    if not config.enabled or n_t < 2:
        return drift_from_pairs([(0.0, 0.0, 1.0)] * max(n_t - 1, 0))
    pairs = []
    prev = np.asarray(frames[0])
    prev_m = None if cell_masks is None else np.asarray(cell_masks[0])
    for t in range(1, n_t):
        cur = np.asarray(frames[t])
        cur_m = None if cell_masks is None else np.asarray(cell_masks[t])
        pairs.append(register_pair(prev, cur, prev_m, cur_m, pixel_size_um=pixel_size_um,
                                   config=config))
        prev, prev_m = cur, cur_m
    return drift_from_pairs(pairs, config=config)


def refine_drift(
    detections: pd.DataFrame,
    drift: pd.DataFrame,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
    tracking_config: Any = None,
) -> pd.DataFrame:
    """Refine a coarse drift with anchored migrasomes (see the module docstring).

    Parameters
    ----------
    detections
        Migrasome detections (``frame, y_px, x_px, diameter_um``; ``track_id`` optional).
    drift
        Coarse cumulative drift ``frame, dy_px, dx_px`` (e.g. from :func:`estimate_drift`).
    pixel_size_um
        µm per pixel.
    config, tracking_config
        :class:`DriftConfig` and :class:`~migradetect.tracking.TrackingConfig` (for linking).

    Returns
    -------
    DataFrame
        The drift table with ``dy_px, dx_px`` refined (same frames, other columns kept).
    """
    from migradetect.tracking import link_migrasomes  # local: tracking imports drift

    config = config or DriftConfig()
    out = drift.sort_values("frame").reset_index(drop=True).copy()
    if not config.refine or len(detections) == 0 or len(out) < 2:
        return out
    det = detections
    if "track_id" not in det.columns:
        det = link_migrasomes(det, pixel_size_um=pixel_size_um, config=tracking_config,
                              drift=out)
    sizes = det.groupby("track_id")["frame"].transform("size")
    det = det[sizes >= config.refine_min_track_frames]
    if len(det) == 0:
        return out
    f = det["frame"].to_numpy(np.int64)
    dy, dx = drift_at_frames(out, f)
    pos = np.column_stack([det["y_px"].to_numpy(np.float64) - dy,
                           det["x_px"].to_numpy(np.float64) - dx])
    tid = det["track_id"].to_numpy()
    corr = np.zeros((len(out), 2))
    frame_index = pd.Index(out["frame"].to_numpy())
    rows = frame_index.get_indexer(f)
    keep = rows >= 0
    pos, tid, rows = pos[keep], tid[keep], rows[keep]
    ok = np.zeros(len(out), dtype=bool)
    for _ in range(4):  # alternate: track medians <-> per-frame median residuals
        p = pos - corr[rows]
        centre = pd.DataFrame(p).groupby(tid).transform("median").to_numpy()
        resid = pd.DataFrame(pos - centre).groupby(rows)
        med, count = resid.median(), resid.size()
        good = count[count >= config.refine_min_objects].index.to_numpy()
        if len(good) == 0:
            return out
        ok[:] = False
        ok[good] = True
        for k in range(2):
            corr[:, k] = np.interp(np.arange(len(out)), good, med.loc[good, k].to_numpy())
    corr -= corr[0]
    out["dy_px"] = out["dy_px"].to_numpy(np.float64) + corr[:, 0]
    out["dx_px"] = out["dx_px"].to_numpy(np.float64) + corr[:, 1]
    log.debug("drift refined on %d fiducial tracks; %d/%d frames with enough fiducials",
              len(np.unique(tid)), ok.sum(), len(out))
    return out
