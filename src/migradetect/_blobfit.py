"""Per-candidate measurements for :mod:`migradetect.migrasomes` (vectorised over candidates).

Physical model of a migrasome image
-----------------------------------
A migrasome is a membrane vesicle: the dye (TSPAN4-GFP in the membrane, or WGA bound to it)
lies on a thin spherical shell of radius ``R``. Projected along the optical axis (widefield,
or a confocal section thicker than the vesicle) a uniform shell gives the surface density

    Sigma(rho) = 1 / (2 pi R sqrt(R^2 - rho^2)),   rho < R   (unit total flux)

which is limb-brightened: a ring when ``R`` is large against the PSF. The image is this density
convolved with the lateral PSF (a Gaussian of sigma ``s``; camera pixels add a box of variance
1/12 px^2, folded into ``s``). Its azimuthal profile, with rho = R sin(theta) to remove the
square-root singularity, is

    I(r) = (1 / (2 pi s^2)) int_0^{pi/2} sin(theta) exp(-(r - rho)^2 / (2 s^2)) i0e(r rho / s^2) dtheta

(``i0e`` is the scaled modified Bessel function). ``R = 0`` gives the PSF itself. No library
offers this shell-convolved-with-Gaussian profile, hence this module.

The diameter of a candidate is found by fitting ``a * I_R(r) + c`` (amplitude and local
background linear, ``R`` on a fine grid, then refined by a parabola) to its azimuthal MEDIAN
profile: the median over angles ignores retraction fibers and touching neighbours, which
cover a small fraction of the angles at each radius.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi
from scipy.special import i0e

#: Radial grid step of the tabulated model profiles (px).
_DR = 0.125
#: Number of angles sampled around each candidate.
N_ANGLES = 32
#: Number of radial bins of a candidate's profile.
N_RADII = 28


@lru_cache(maxsize=16)
def model_table(psf_px: float, r_max_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated shell-convolved-with-PSF radial profiles.

    Parameters
    ----------
    psf_px
        Gaussian sigma of the PSF including pixel integration (px).
    r_max_px
        Largest radius tabulated (px); shells up to ``r_max_px / 1.2`` are modelled.

    Returns
    -------
    radii, table
        ``radii`` (K,) shell radii (px; 0 first, then geometric steps of about 2.5 %);
        ``table`` (K, M) the profile ``I_R(r)`` at ``r = m * _DR`` (unit flux).
    """
    s = float(psf_px)
    r_top = r_max_px / 1.2
    radii = [0.0, 0.25 * s]
    while radii[-1] < r_top:
        radii.append(radii[-1] * 1.025 + 0.02 * s)
    radii_arr = np.asarray(radii, dtype=np.float64)
    r = np.arange(0.0, r_max_px + 4 * s + 2 * _DR, _DR)
    n_theta = 256
    theta = (np.arange(n_theta) + 0.5) * (0.5 * np.pi / n_theta)
    sin_t = np.sin(theta)
    table = np.empty((len(radii_arr), len(r)), dtype=np.float64)
    for k, radius in enumerate(radii_arr):  # K ~ 100-250 rows, each vectorised over (r, theta)
        rho = radius * sin_t[None, :]
        z = r[:, None] * rho / (s * s)
        kern = np.exp(-((r[:, None] - rho) ** 2) / (2 * s * s)) * i0e(z)
        table[k] = (kern * sin_t[None, :]).sum(axis=1) * (0.5 * np.pi / n_theta) / (2 * np.pi * s * s)
    return radii_arr, table


def sample_polar(image: np.ndarray, cy: np.ndarray, cx: np.ndarray, radii: np.ndarray,
                 n_angles: int = N_ANGLES) -> np.ndarray:
    """Bilinear samples of ``image`` on circles: returns (n, len_r, n_angles).

    ``radii`` is (n, len_r) in px (one set of radii per centre).
    """
    ang = np.arange(n_angles) * (2 * np.pi / n_angles)
    ys = cy[:, None, None] + radii[:, :, None] * np.sin(ang)[None, None, :]
    xs = cx[:, None, None] + radii[:, :, None] * np.cos(ang)[None, None, :]
    return bilinear(image, ys, xs)


def bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at (ys, xs) (any equal shapes), edges repeated.

    The same values as ``ndi.map_coordinates(image, [ys, xs], order=1, mode="nearest")``
    (to float32 rounding for float32 images; integer images are sampled as float64, not
    rounded back), by four gathers from the flat image.
    """
    img = np.asarray(image)
    if img.dtype.kind != "f":
        img = img.astype(np.float64)
    ny, nx = img.shape
    if ny < 2 or nx < 2:
        return ndi.map_coordinates(img, [np.ravel(ys), np.ravel(xs)], order=1,
                                   mode="nearest").reshape(np.shape(ys))
    y = np.clip(ys, 0.0, ny - 1.0)
    x = np.clip(xs, 0.0, nx - 1.0)
    y0 = np.minimum(y.astype(np.int64), ny - 2)
    x0 = np.minimum(x.astype(np.int64), nx - 2)
    fy = (y - y0).astype(img.dtype)
    fx = (x - x0).astype(fy.dtype)
    flat = img.ravel()
    i = y0 * nx + x0
    a, b = flat[i], flat[i + 1]
    c, d = flat[i + nx], flat[i + nx + 1]
    top = a + (b - a) * fx
    return top + (c + (d - c) * fx - top) * fy


def weighted_centroid(image: np.ndarray, cy: np.ndarray, cx: np.ndarray, width: np.ndarray,
                      baseline: np.ndarray, *, n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted centroid of ``image - baseline``, iterated.

    The window is a Gaussian of sigma ``width`` (px) around the current estimate, over the
    image's own pixels (no interpolation, so thin rings are not aliased); shifts from the
    start are limited to ``width`` (a bright neighbour cannot drag the centre far). One
    patch of +-4 window sigmas is gathered per candidate (it holds the +-3 sigma window of
    every allowed estimate) and the Gaussian is separable, so each iteration is two small
    matrix products per candidate.
    """
    img = np.asarray(image)
    ny, nx = img.shape
    cy, cx = np.array(cy, dtype=np.float64), np.array(cx, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    half_all = np.clip(np.ceil(4.0 * width), 2, 48).astype(int)
    for half in np.unique(half_all):  # one group per window size (few groups)
        sel = np.flatnonzero(half_all == half)
        off = np.arange(-half, half + 1)
        py = np.rint(cy[sel]).astype(np.int64)[:, None] + off[None, :]  # (m, P) pixel rows
        px = np.rint(cx[sel]).astype(np.int64)[:, None] + off[None, :]
        v = img[np.clip(py, 0, ny - 1)[:, :, None], np.clip(px, 0, nx - 1)[:, None, :]]
        v = v.astype(np.float64) - baseline[sel, None, None]  # (m, P, P), edge pixels repeated
        y0, x0 = cy[sel], cx[sel]
        y, x = y0.copy(), x0.copy()
        sw = width[sel][:, None]
        for _ in range(n_iter):
            # no clipping: zero-mean noise then adds no bias; the window centred on the
            # current estimate damps each step, so iterate
            wy = np.exp(-0.5 * ((py - y[:, None]) / sw) ** 2)
            wx = np.exp(-0.5 * ((px - x[:, None]) / sw) ** 2)
            rows = np.einsum("mij,mj->mi", v, wx)  # per row, weighted over columns
            cols = np.einsum("mij,mi->mj", v, wy)
            tot = np.einsum("mi,mi->m", rows, wy)
            ok = tot > 0
            safe = np.where(ok, tot, 1.0)
            ny_ = np.where(ok, np.einsum("mi,mi->m", rows, wy * py) / safe, y)
            nx_ = np.where(ok, np.einsum("mj,mj->m", cols, wx * px) / safe, x)
            dy, dx = ny_ - y0, nx_ - x0
            d = np.hypot(dy, dx)
            lim = width[sel]
            f = np.where(d > lim, lim / np.maximum(d, 1e-9), 1.0)
            y, x = y0 + dy * f, x0 + dx * f
        cy[sel], cx[sel] = y, x
    return cy, cx


def fit_profiles(profiles: np.ndarray, r: np.ndarray, weights: np.ndarray, psf_px: float,
                 r_table_max: float) -> dict[str, np.ndarray]:
    """Fit ``a * I_R(r) + c`` to each profile; ``R`` from the tabulated grid, refined.

    Parameters
    ----------
    profiles
        (n, B) azimuthal median profiles (counts).
    r
        (n, B) radii of the bins (px).
    weights
        (n, B) least-squares weights.
    psf_px
        PSF sigma including pixel integration (px).
    r_table_max
        Largest radius to tabulate (px), at least ``r.max()``.

    Returns
    -------
    dict
        ``radius_px`` (shell radius), ``amplitude`` (flux, counts*px^2), ``offset`` (local
        background, counts), ``peak`` (model peak above the offset, counts) and ``r2``
        (weighted coefficient of determination) per candidate.
    """
    radii, table = model_table(round(float(psf_px), 3), float(np.ceil(r_table_max)))
    n = profiles.shape[0]
    out = {key: np.zeros(n) for key in ("radius_px", "amplitude", "offset", "peak", "r2")}
    rmax = r[:, -1]
    # candidates of one detection scale share their window: fit them together, on the model
    # radii their window can judge only (small scales need a small part of the table)
    for rm in np.unique(rmax):
        sel = np.flatnonzero(rmax == rm)
        n_ok = int(np.count_nonzero(radii * 1.1 + 2 * psf_px <= rm))
        kc = min(max(n_ok + 1, 3), len(radii))  # one judged-out radius more: the parabola
        res = _fit_group(profiles[sel], r[sel], weights[sel], psf_px, radii, table, kc)
        for key in out:
            out[key][sel] = res[key]
    return out


def _fit_group(profiles: np.ndarray, r: np.ndarray, weights: np.ndarray, psf_px: float,
               radii: np.ndarray, table: np.ndarray, kc: int) -> dict[str, np.ndarray]:
    """:func:`fit_profiles` on the first ``kc`` tabulated radii."""
    n = profiles.shape[0]
    # model values at each candidate's radii: (n, K, B) by linear interpolation in the table
    pos = r / _DR
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, table.shape[1] - 2)
    t = (pos - i0)[:, None, :]
    tab = table[:kc].astype(np.float32)
    t32 = t.transpose(1, 0, 2).astype(np.float32)
    m = tab[:, i0] * (1 - t32) + tab[:, i0 + 1] * t32
    m = m.transpose(1, 0, 2)  # (n, K, B), float32: the fit's bulk of arithmetic
    profiles = profiles.astype(np.float32)
    weights = weights.astype(np.float32)
    w = weights / weights.sum(axis=1, keepdims=True)
    wy = (w * profiles).sum(axis=1)  # (n,)
    mm = (w[:, None, :] * m).sum(axis=2)  # (n, K)
    dm = m - mm[:, :, None]
    dy = profiles - wy[:, None]
    var_m = (w[:, None, :] * dm * dm).sum(axis=2)
    cov = (w[:, None, :] * dm * dy[:, None, :]).sum(axis=2)
    var_y = (w * dy * dy).sum(axis=1)
    amp = cov / np.maximum(var_m, 1e-30)
    sse = var_y[:, None] - np.where(amp > 0, cov * amp, 0.0)  # negative amplitudes: no fit
    # only radii the profile window can judge: the shell must end inside the window
    rmax = r[:, -1]
    sse = np.where(radii[None, :kc] * 1.1 + 2 * psf_px <= rmax[:, None], sse, np.inf)
    sse[:, 0] = np.where(np.isfinite(sse[:, 0]), sse[:, 0], var_y)
    k = np.argmin(sse, axis=1)
    # parabola through the SSE around the minimum, in grid-index space
    kk = np.clip(k, 1, kc - 2)
    rows = np.arange(n)
    s0, s1, s2 = sse[rows, kk - 1], sse[rows, kk], sse[rows, kk + 1]
    den = s0 - 2 * s1 + s2
    ok = np.isfinite(den) & (den > 0) & (k == kk)
    frac = np.where(ok, 0.5 * (s0 - s2) / np.where(ok, den, 1.0), 0.0)
    frac = np.clip(frac, -0.5, 0.5)
    kf = k + frac
    radius = np.interp(kf, np.arange(len(radii)), radii)
    a = amp[rows, k]
    c = wy - a * mm[rows, k]
    peak = a * m[rows, k].max(axis=1)  # model maximum over the sampled radii
    peak = np.maximum(peak, a * table[k].max(axis=1))
    r2 = 1.0 - sse[rows, k] / np.maximum(var_y, 1e-30)
    return {"radius_px": radius, "amplitude": a, "offset": c, "peak": peak, "r2": r2}


def line_excess(circle: np.ndarray, centre: np.ndarray, noise: np.ndarray,
                max_width: np.ndarray, *, explained: np.ndarray | None = None,
                return_residual: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Fraction of a candidate's peak that straight fibers through it do not explain.

    Parameters
    ----------
    circle
        (n, A) smoothed intensities on a circle around each candidate, outside the object.
    centre
        (n,) smoothed intensity at the centre.
    noise
        (n,) noise sigma of the smoothed intensities.
    max_width
        (n,) widest spoke (in circle samples, at half its height) that can be a fiber: fibers
        are thinner than the PSF, so wider bumps are neighbouring vesicles or cells, ignored.
    explained
        (n, A) optional mask of circle samples already explained by another object (a
        touching vesicle): they take part in no spoke.
    return_residual
        Also return the unexplained peak ``centre - base - lines`` (intensity units, >= 0).

    Returns
    -------
    (n,) ``(centre - base - lines) / (centre - base)``, clipped to [0, 1], where ``base`` is
    the 25th percentile of the circle and ``lines`` the fibers' share of the centre value;
    with ``return_residual``, a tuple ``(excess, residual)``.

    Notes
    -----
    Intensities of overlapping structures add. A straight fiber through the centre crosses
    the circle twice (two opposite "spokes" of height v) and adds v at the centre; a fiber
    that ends at the centre (tip) gives one spoke and adds at most v. So a pair of opposite
    spokes counts once (its higher spoke), an unpaired spoke counts its full height: fiber
    interiors, tips and crossings leave ~0 excess, a vesicle on a fiber or at its tip or at a
    crossing keeps its own peak. Spokes lower than 3 noise sigmas are ignored.
    """
    n, a = circle.shape
    if explained is None or not explained.any():
        base = np.percentile(circle, 25, axis=1)
    else:  # the base from the samples no neighbour covers (all of them if none is free)
        free = np.where(explained.all(axis=1, keepdims=True), True, ~explained)
        # 25th percentile (linear) of the free samples of each row, vectorised
        srt = np.sort(np.where(free, circle, np.inf), axis=1)
        n_free = free.sum(axis=1)
        pos = 0.25 * (n_free - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_free - 1)
        rows = np.arange(n)
        base = srt[rows, lo] + (srt[rows, hi] - srt[rows, lo]) * (pos - lo)
    height = centre - base
    v = circle - base[:, None]
    if explained is not None:
        v = np.where(explained, np.minimum(v, 0.0), v)
    prev = np.roll(v, 1, axis=1)
    nxt = np.roll(v, -1, axis=1)
    is_max = (v >= prev) & (v > nxt) & (v > 3.0 * noise[:, None])
    out = np.zeros(n)
    lines_all = np.zeros(n)
    tol = a // 8  # +-45 degrees counts as opposite (fibers bend, centres are not exact)
    for i in np.flatnonzero(height > 0):  # per candidate: a handful of spokes each
        idx = np.flatnonzero(is_max[i])
        if idx.size:
            above = v[i] >= 0.5 * v[i, idx][:, None]  # (spokes, A)
            width = np.array([_run_length(row, k) for row, k in zip(above, idx)])
            idx = idx[width <= max_width[i]]
        if idx.size == 0:
            out[i] = 1.0
            continue
        vals = v[i, idx]
        order = np.argsort(-vals)
        used = np.zeros(idx.size, bool)
        lines = 0.0
        for p in order:
            if used[p]:
                continue
            used[p] = True
            dist = np.abs((idx - idx[p]) % a - a // 2)  # angular distance from opposite
            cand = np.flatnonzero(~used & (dist <= tol))
            if cand.size:
                q = cand[np.argmax(vals[cand])]
                used[q] = True
                lines += vals[p]  # the higher of the two: a weak opposite bump is no fiber
            else:
                lines += vals[p]
        lines_all[i] = lines
        out[i] = (height[i] - lines) / height[i]
    out = np.clip(out, 0.0, 1.0)
    resid = np.maximum(height - lines_all, 0.0)
    if return_residual:
        return out, resid
    return out


def _run_length(mask: np.ndarray, k: int) -> int:
    """Length of the circular run of True in ``mask`` that contains index ``k``."""
    a = mask.size
    if mask.all():
        return a
    n = 1
    while n < a and mask[(k + n) % a]:
        n += 1
    m = 1
    while m < a and mask[(k - m) % a]:
        m += 1
    return n + m - 1


def select_objects(cy: np.ndarray, cx: np.ndarray, radius: np.ndarray, strength: np.ndarray,
                   isotropy: np.ndarray, psf_px: float) -> np.ndarray:
    """Indices of the candidates kept as distinct objects (duplicates and mergers removed).

    1. A candidate is a *merger* (the scale-space response of two touching vesicles seen as
       one) when it is elongated (Hessian isotropy < 0.65; a single vesicle, ring-like or not,
       is round) and its disk holds the centres of two other candidates that do not overlap
       each other and are each at least 0.3 of its radius: it is dropped, they are kept.
    2. The rest are taken from large to small radius (then by ``strength``); a candidate
       whose centre lies inside an accepted object's disk (radius + 1 PSF sigma + half its
       own radius: it overlaps the accepted one by more than half its size) is a duplicate
       (another scale of the same object, a piece of a ring's rim, the contact point of two
       touching vesicles).
    """
    n = len(cy)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    d = np.hypot(cy[:, None] - cy[None, :], cx[:, None] - cx[None, :])
    min_sep = max(1.5, 2.0 * psf_px)
    merger = np.zeros(n, bool)
    for i in np.flatnonzero((radius > 2 * min_sep) & (isotropy < 0.65)):  # large, elongated
        inner = np.flatnonzero((d[i] < radius[i]) & (radius < radius[i])
                               & (radius >= 0.3 * radius[i]))
        if inner.size < 2:
            continue
        dd = d[np.ix_(inner, inner)]
        apart = dd >= 0.9 * (radius[inner][:, None] + radius[inner][None, :])
        merger[i] = bool(apart.any())
    order = np.lexsort((-strength, -radius))
    kept: list[int] = []
    for i in order:  # a few hundred candidates at most
        if merger[i]:
            continue
        if kept:
            k = np.asarray(kept)
            if np.any(d[k, i] < np.maximum(radius[k] + 0.5 * radius[i] + psf_px, min_sep)):
                continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)
