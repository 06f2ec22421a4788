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

import functools
from collections.abc import Callable
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
#: Margin, in line sigmas, by which a fiber's line (from its crossings of two circles 2 line
#: sigmas apart) must miss a candidate's centre before its spoke counts less than in full
#: (:func:`line_excess`): the sub-sample crossings place a straight line to about one
#: sigma, and fibers bend (a bent fiber through the centre, or the curved rim of a large
#: neighbouring vesicle, must not pass for a chord beside it). Tuning seeds: 1 lets rim
#: pieces of large bright vesicles through (TSPAN4 high SNR), 2 keeps the WGA gain.
LINE_PLACEMENT_SIGMAS = 2.0
#: Most member vesicles fitted together when a large blob is tested as a cluster
#: (:func:`select_objects`): the strongest few decide.
MAX_CLUSTER_PARTS = 6


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


@lru_cache(maxsize=8)
def _unit_circle(n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    ang = np.arange(n_angles) * (2 * np.pi / n_angles)
    return np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)


def sample_polar(image: np.ndarray, cy: np.ndarray, cx: np.ndarray, radii: np.ndarray,
                 n_angles: int = N_ANGLES) -> np.ndarray:
    """Bilinear samples of ``image`` on circles: returns (n, len_r, n_angles).

    ``radii`` is (n, len_r) in px (one set of radii per centre). Coordinates are float32
    (1e-4 px at 1000 px; far below the noise of any position here) for a float32 image.
    """
    sin_a, cos_a = _unit_circle(int(n_angles))
    ct = _coord_dtype(image)
    img = _as_float(image)
    radii = np.asarray(radii, dtype=ct)
    cy, cx = np.asarray(cy, dtype=ct), np.asarray(cx, dtype=ct)
    n, nr = radii.shape
    out = np.empty((n, nr, int(n_angles)), img.dtype)
    # in chunks of ~16k samples: the temporaries stay small and are reused from the heap
    # (multi-megabyte ones would cost page faults, ~1 ms per 4 MB, on every frame)
    step = max(1, 16384 // max(nr * int(n_angles), 1))
    for i0 in range(0, n, step):
        i1 = min(i0 + step, n)
        r = radii[i0:i1, :, None]
        ys = r * sin_a
        ys += cy[i0:i1, None, None]
        xs = r * cos_a
        xs += cx[i0:i1, None, None]
        out[i0:i1] = _bilinear_inplace(img, ys, xs)
    return out


def _as_float(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    return img if img.dtype.kind == "f" else img.astype(np.float64)


def _coord_dtype(image: np.ndarray) -> type:
    return np.float32 if np.asarray(image).dtype == np.float32 else np.float64


def bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at (ys, xs) (any equal shapes), edges repeated.

    The same values as ``ndi.map_coordinates(image, [ys, xs], order=1, mode="nearest")``
    (to float32 rounding for float32 images; integer images are sampled as float64, not
    rounded back), by four gathers from the flat image.
    """
    ct = _coord_dtype(image)
    return _bilinear_inplace(_as_float(image), np.array(ys, dtype=ct), np.array(xs, dtype=ct))


def _bilinear_inplace(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """:func:`bilinear` on a float image; overwrites ``ys`` and ``xs`` (fresh arrays).

    Written as in-place array operations (no temporaries beyond the four gathers): this is
    the bulk of the per-candidate work of the detector.
    """
    ny, nx = img.shape
    if ny < 2 or nx < 2:
        return ndi.map_coordinates(img, [np.ravel(ys), np.ravel(xs)], order=1,
                                   mode="nearest").reshape(np.shape(ys))
    np.clip(ys, 0.0, ny - 1.0, out=ys)
    np.clip(xs, 0.0, nx - 1.0, out=xs)
    y0 = ys.astype(np.intp)
    x0 = xs.astype(np.intp)
    np.minimum(y0, ny - 2, out=y0)
    np.minimum(x0, nx - 2, out=x0)
    ys -= y0  # now the fractions
    xs -= x0
    fy = ys if ys.dtype == img.dtype else ys.astype(img.dtype)
    fx = xs if xs.dtype == img.dtype else xs.astype(img.dtype)
    flat = img.ravel()
    i = y0
    i *= nx
    i += x0
    a = flat.take(i)
    i += 1
    b = flat.take(i)
    i += nx
    d = flat.take(i)
    i -= 1
    c = flat.take(i)
    b -= a  # top: a + (b - a) fx
    b *= fx
    a += b
    d -= c  # bottom: c + (d - c) fx
    d *= fx
    c += d
    c -= a  # top + (bottom - top) fy
    c *= fy
    a += c
    return a


def median_last(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1)`` for NaN-free arrays, by a full sort of the last axis.

    For the short rows here (32 angles, 1024 samples) numpy's vectorised sort is several
    times faster than the partition ``np.median`` uses.
    """
    s = np.sort(a, axis=-1)
    n = s.shape[-1]
    if n % 2:
        return s[..., n // 2]
    return 0.5 * (s[..., n // 2 - 1] + s[..., n // 2])


def weighted_centroid(image: np.ndarray, cy: np.ndarray, cx: np.ndarray, width: np.ndarray,
                      baseline: np.ndarray, *, n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted centroid of ``image - baseline``, iterated.

    The window is a Gaussian of sigma ``width`` (px) around the current estimate, over the
    image's own pixels (no interpolation, so thin rings are not aliased); shifts from the
    start are limited to ``width`` (a bright neighbour cannot drag the centre far). One
    patch of +-4 window sigmas is gathered per candidate (it holds the +-3 sigma window of
    every allowed estimate; edge pixels repeated) and the Gaussian is separable, so each
    iteration is two small matrix-vector products per candidate. Compiled with numba
    (:func:`_centroid_kernel`, ``nogil``): per candidate the work is a few hundred
    multiply-adds, where numpy's per-call overhead (holding the GIL) dominated.
    """
    img = np.asarray(image)
    if img.dtype != np.float32:
        img = img.astype(np.float64)
    cy, cx = np.array(cy, dtype=np.float64), np.array(cx, dtype=np.float64)
    width = np.ascontiguousarray(width, dtype=np.float64)
    base = np.ascontiguousarray(np.broadcast_to(baseline, cy.shape), dtype=np.float64)
    if cy.size == 0:
        return cy, cx
    _centroid_kernel()(np.ascontiguousarray(img), cy, cx, width, base, int(n_iter))
    return cy, cx


def _centroid_py(img, cy, cx, width, base, n_iter):  # pragma: no cover - compiled by numba
    """In-place core of :func:`weighted_centroid` (hand-written loops for numba; the same
    arithmetic as the former vectorised numpy version: separable Gaussian weights, row and
    column sums of the patch, the shift limited to ``width`` from the start)."""
    ny, nx = img.shape
    for c in range(cy.shape[0]):
        w = width[c]
        half = min(max(int(np.ceil(4.0 * w)), 2), 48)
        p = 2 * half + 1
        y0, x0 = cy[c], cx[c]
        ry, rx = int(np.rint(y0)) - half, int(np.rint(x0)) - half
        v = np.empty((p, p))
        for i in range(p):
            yi = min(max(ry + i, 0), ny - 1)
            for j in range(p):
                xj = min(max(rx + j, 0), nx - 1)
                v[i, j] = np.float64(img[yi, xj]) - base[c]
        wy = np.empty(p)
        wx = np.empty(p)
        rows = np.empty(p)
        cols = np.empty(p)
        y, x = y0, x0
        for _ in range(n_iter):
            for i in range(p):
                t = (ry + i - y) / w
                wy[i] = np.exp(-0.5 * t * t)
                t = (rx + i - x) / w
                wx[i] = np.exp(-0.5 * t * t)
            for i in range(p):
                acc = 0.0
                for j in range(p):
                    acc += v[i, j] * wx[j]
                rows[i] = acc
            for j in range(p):
                cols[j] = 0.0
            for i in range(p):
                for j in range(p):
                    cols[j] += v[i, j] * wy[i]
            tot = 0.0
            sy = 0.0
            sx = 0.0
            for i in range(p):
                tot += rows[i] * wy[i]
                sy += rows[i] * wy[i] * (ry + i)
                sx += cols[i] * wx[i] * (rx + i)
            # no clipping of negative pixels: zero-mean noise then adds no bias; the window
            # centred on the current estimate damps each step, so iterate
            if tot > 0:
                ny_, nx_ = sy / tot, sx / tot
            else:
                ny_, nx_ = y, x
            dy, dx = ny_ - y0, nx_ - x0
            d = np.sqrt(dy * dy + dx * dx)
            f = w / max(d, 1e-9) if d > w else 1.0
            y, x = y0 + dy * f, x0 + dx * f
        cy[c], cx[c] = y, x


@functools.cache
def _centroid_kernel():
    """:func:`_centroid_py` compiled by numba (on first use, cached on disk; ``nogil``: the
    pipeline detects frames in threads)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_centroid_py)


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
    if n > 1 and (r == r[:1]).all() and (weights == weights[:1]).all():
        return _fit_group_shared(profiles, r[0], weights[0], psf_px, radii, table, kc)
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
    k, radius = _best_radius(sse, radii, kc)
    rows = np.arange(n)
    a = amp[rows, k]
    c = wy - a * mm[rows, k]
    peak = a * m[rows, k].max(axis=1)  # model maximum over the sampled radii
    peak = np.maximum(peak, a * table[k].max(axis=1))
    r2 = 1.0 - sse[rows, k] / np.maximum(var_y, 1e-30)
    return {"radius_px": radius, "amplitude": a, "offset": c, "peak": peak, "r2": r2}


def _best_radius(sse: np.ndarray, radii: np.ndarray, kc: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sse`` (n, kc): the grid index of the smallest error and the radius at the
    minimum of a parabola through it and its two neighbours (grid-index space, within half a
    step)."""
    k = np.argmin(sse, axis=1)
    kk = np.clip(k, 1, kc - 2)
    rows = np.arange(sse.shape[0])
    s0, s1, s2 = sse[rows, kk - 1], sse[rows, kk], sse[rows, kk + 1]
    den = s0 - 2 * s1 + s2
    ok = np.isfinite(den) & (den > 0) & (k == kk)
    frac = np.where(ok, 0.5 * (s0 - s2) / np.where(ok, den, 1.0), 0.0)
    frac = np.clip(frac, -0.5, 0.5)
    return k, np.interp(k + frac, np.arange(len(radii)), radii)


def _fit_group_shared(profiles: np.ndarray, r: np.ndarray, weights: np.ndarray,
                      psf_px: float, radii: np.ndarray, table: np.ndarray,
                      kc: int) -> dict[str, np.ndarray]:
    """:func:`_fit_group` when all profiles share their radii ``r`` (B,) and ``weights``.

    Candidates of one detection scale are sampled on the same radii, so the model matrix
    (K, B) is shared and the least squares of all candidates reduce to matrix products
    (same formulas as :func:`_fit_group`).
    """
    n = profiles.shape[0]
    pos = r / _DR
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, table.shape[1] - 2)
    t = pos - i0
    m = table[:kc, i0] * (1 - t) + table[:kc, i0 + 1] * t  # (K, B)
    w = weights / weights.sum()
    y = profiles.astype(np.float64)
    wy = y @ w  # (n,)
    mm = m @ w  # (K,)
    dm = m - mm[:, None]
    dy = y - wy[:, None]
    var_m = (dm * dm) @ w  # (K,)
    cov = (dy * w) @ dm.T  # (n, K)
    var_y = (dy * dy) @ w  # (n,)
    amp = cov / np.maximum(var_m, 1e-30)
    sse = var_y[:, None] - np.where(amp > 0, cov * amp, 0.0)  # negative amplitudes: no fit
    judged = radii[:kc] * 1.1 + 2 * psf_px <= r[-1]  # the shell must end inside the window
    sse = np.where(judged[None, :], sse, np.inf)
    if not judged[0]:
        sse[:, 0] = var_y
    k, radius = _best_radius(sse, radii, kc)
    rows = np.arange(n)
    a = amp[rows, k]
    c = wy - a * mm[k]
    peak = np.maximum(a * m.max(axis=1)[k], a * table[:kc].max(axis=1)[k])
    r2 = 1.0 - sse[rows, k] / np.maximum(var_y, 1e-30)
    return {"radius_px": radius, "amplitude": a, "offset": c, "peak": peak, "r2": r2}


def line_excess(circle: np.ndarray, centre: np.ndarray, noise: np.ndarray,
                max_width: np.ndarray, *, explained: np.ndarray | None = None,
                return_residual: bool = False,
                rings: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
                = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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
    rings
        Optional ``(inner, outer, r_inner, r_outer, line_sigma)``: the (n, A) intensities on
        two concentric circles (radii (n,) px; ``circle`` is taken from them), and the (n,)
        Gaussian sigma (px) of a fiber's cross-profile in the smoothed image. Each spoke's
        line is then located from its crossings of the two circles, and the spoke explains
        the centre only as much as that line passes through it (see Notes).

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

    A fiber that passes the candidate at a distance ``h`` (a chord of the circle, common in
    a dense web of fibers) adds only ``v exp(-h^2 / (2 s^2))`` at the centre (``s`` its
    cross-profile sigma), yet crosses the circle with its full height, at two angles that
    are not opposite: counted as two tips it would "explain" twice its height and hide a
    vesicle. With ``rings``, each spoke's line is the line through its crossings of the two
    circles (sub-sample peak positions), ``h`` its distance from the centre, and the spoke
    counts ``v exp(-(h - m s)^2 / (2 s^2))`` for ``h > m s``, in full otherwise (``m`` =
    :data:`LINE_PLACEMENT_SIGMAS`, the margin for the line's placement error and for bent
    fibers): a fiber through the centre or ending there counts as above.
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
    # all spokes at once: the width (samples at >= half its height, circular run through it)
    si, sk = np.nonzero(is_max & (height > 0)[:, None])
    if si.size:
        half = 0.5 * v[si, sk]
        steps = np.arange(a)
        fwd = v[si[:, None], (sk[:, None] + steps) % a] >= half[:, None]
        bwd = v[si[:, None], (sk[:, None] - steps) % a] >= half[:, None]
        full = fwd.all(axis=1)
        n_f = np.where(full, a, np.argmin(fwd, axis=1))
        n_b = np.where(full, a, np.argmin(bwd, axis=1))
        width = np.where(full, a, n_f + n_b - 1)
        ok = width <= max_width[si]
        si, sk = si[ok], sk[ok]
    if rings is not None and si.size:  # v is this call's own array
        v[si, sk] *= _spoke_through_centre(rings, si, sk)
    n_spokes = np.bincount(si, minlength=n)
    one = n_spokes == 1  # a single spoke (a tip) counts its full height
    lines_all[si[one[si]]] = v[si[one[si]], sk[one[si]]]
    starts = np.searchsorted(si, np.arange(n))
    if (n_spokes >= 2).any():  # pairs of opposite spokes: a handful per candidate
        _pair_spokes_kernel()(np.ascontiguousarray(v), si.astype(np.int64), sk.astype(np.int64),
                              starts.astype(np.int64), n_spokes.astype(np.int64), int(tol),
                              lines_all)
    pos = height > 0
    out[pos] = (height[pos] - lines_all[pos]) / height[pos]
    out = np.clip(out, 0.0, 1.0)
    resid = np.maximum(height - lines_all, 0.0)
    if return_residual:
        return out, resid
    return out


def _pair_spokes_py(v, si, sk, starts, n_spokes, tol, lines_all):  # pragma: no cover
    """The fibers' share of each candidate with two or more spokes (:func:`line_excess`),
    into ``lines_all``: from the highest spoke down, each unpaired spoke takes the highest
    free spoke within ``tol`` samples of opposite as its pair, and the pair counts its
    higher spoke (a weak opposite bump is no fiber). Compiled by numba (``nogil``): a
    greedy loop over a handful of spokes per candidate, no array form."""
    a = v.shape[1]
    for i in range(n_spokes.shape[0]):
        cnt = n_spokes[i]
        if cnt < 2:
            continue
        idx = sk[starts[i]:starts[i] + cnt]
        vals = np.empty(cnt, v.dtype)
        for t in range(cnt):
            vals[t] = v[i, idx[t]]
        order = np.empty(cnt, np.int64)  # highest first, stable: an insertion sort of a few
        for t in range(cnt):
            u = t
            while u > 0 and vals[order[u - 1]] < vals[t]:
                order[u] = order[u - 1]
                u -= 1
            order[u] = t
        used = np.zeros(cnt, np.bool_)
        lines = 0.0
        for p in order:
            if used[p]:
                continue
            used[p] = True
            q = -1
            for t in range(cnt):  # the highest free spoke near opposite (first on ties)
                if (not used[t] and abs((idx[t] - idx[p]) % a - a // 2) <= tol
                        and (q < 0 or vals[t] > vals[q])):
                    q = t
            if q >= 0:
                used[q] = True
            lines += vals[p]
        lines_all[i] = lines


@functools.cache
def _pair_spokes_kernel():
    """:func:`_pair_spokes_py` compiled by numba (on first use, cached on disk; ``nogil``)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_pair_spokes_py)


def _subsample_peak(ring: np.ndarray, si: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-sample position of the peak at sample ``k`` of each ``ring[si]`` (parabola)."""
    a = ring.shape[1]
    c, lo, hi = ring[si, k % a], ring[si, (k - 1) % a], ring[si, (k + 1) % a]
    den = lo - 2 * c + hi
    off = np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
    return k + np.clip(off, -0.5, 0.5)


def _spoke_through_centre(rings: tuple, si: np.ndarray, sk: np.ndarray) -> np.ndarray:
    """Share of each spoke's height that its line adds at the centre (see :func:`line_excess`).

    The spoke's line goes through its sub-sample crossing of the inner circle (at sample
    ``sk``) and of the outer one (the highest outer sample within +-2 of it); ``h`` is the
    distance of that line from the centre. Straight-line geometry, hand-written: a few
    vectorised lines, no library computes this.
    """
    inner, outer, r_in, r_out, s_line = rings
    a = inner.shape[1]
    step = 2 * np.pi / a
    near = (sk[:, None] + np.arange(-2, 3)[None, :]) % a
    ko = sk + np.argmax(outer[si[:, None], near], axis=1) - 2
    ai = _subsample_peak(inner, si, sk) * step
    ao = _subsample_peak(outer, si, ko) * step
    yi, xi = r_in[si] * np.sin(ai), r_in[si] * np.cos(ai)
    yo, xo = r_out[si] * np.sin(ao), r_out[si] * np.cos(ao)
    h = np.abs(yi * xo - xi * yo) / np.maximum(np.hypot(yo - yi, xo - xi), 1e-9)
    # only the part of h beyond the line's placement error discounts the spoke
    return np.exp(-0.5 * np.maximum(h / s_line[si] - LINE_PLACEMENT_SIGMAS, 0.0) ** 2)


def _window_pixels(img: np.ndarray, y0: float, x0: float, reach: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rows, columns and float64 values of the pixels within ``reach`` px of ``(y0, x0)``
    (clipped to the image); None when fewer than 3 rows or columns remain."""
    ny, nx = img.shape
    half = int(np.ceil(reach + 1.0))
    yy = np.arange(int(round(y0)) - half, int(round(y0)) + half + 1)
    xx = np.arange(int(round(x0)) - half, int(round(x0)) + half + 1)
    yy, xx = yy[(yy >= 0) & (yy < ny)], xx[(xx >= 0) & (xx < nx)]
    if yy.size < 3 or xx.size < 3:
        return None
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    inside = np.hypot(gy - y0, gx - x0) <= reach
    py, px = gy[inside], gx[inside]
    return py, px, img[py, px].astype(np.float64)


def two_shells_fit_better(image: np.ndarray, big: tuple[float, float, float],
                          a: tuple[float, float, float], b: tuple[float, float, float],
                          psf_px: float, r_table_max: float,
                          cache: dict | None = None) -> bool:
    """Whether two vesicles ``a`` and ``b`` explain the image around ``big`` better than one.

    :func:`shells_fit_better` with the two parts ``(a, b)`` (see there).
    """
    return shells_fit_better(image, big, (a, b), psf_px, r_table_max, cache=cache)


def shells_fit_better(image: np.ndarray, big: tuple[float, float, float],
                      parts: tuple[tuple[float, float, float], ...],
                      psf_px: float, r_table_max: float,
                      cache: dict | None = None) -> bool:
    """Whether the vesicles ``parts`` explain the image around ``big`` better than one.

    Each object is ``(y, x, shell radius)`` in px. On the pixels within ``big``'s radius
    plus 4 PSF sigmas, the shell-convolved-with-PSF model of ``big`` (amplitude + offset) and
    the sum of the models of the parts (one amplitude each + offset) are fitted by linear
    least squares; True when the second has the smaller residual with all amplitudes
    positive. Two touching vesicles seen as one blob are not one limb-brightened shell; a
    ring-like migrasome is, and two small blobs on its rim explain only part of it. The one
    shell's residual is its best over nearby centres (+-1 px) and radii (+-15 %): the two
    were each centred and sized on their own. ``cache`` (a dict, one per image) keeps that
    best residual per ``big`` between calls that test several pairs against one candidate.
    """
    radii, table = model_table(round(float(psf_px), 3), float(np.ceil(r_table_max)))
    img = np.asarray(image)
    if img.dtype != np.float32:
        img = img.astype(np.float64)
    key = tuple(big)
    known = cache.get(key, np.nan) if cache is not None else np.nan
    y0, x0, r0 = (float(v) for v in big)
    wins, best = _shells_kernel()(np.ascontiguousarray(img), y0, x0, r0,
                                  np.asarray(parts, dtype=np.float64).reshape(-1, 3),
                                  float(psf_px), radii, table, float(known))
    if cache is not None and np.isfinite(best) and key not in cache:
        cache[key] = float(best)
    return bool(wins)


def _shells_py(img, y0, x0, r0, parts, psf_px, radii, table, known):  # pragma: no cover
    """Core of :func:`shells_fit_better` (compiled by numba, ``nogil``): hand-written loops
    because each call is a few hundred pixels and a handful of models, where numpy's
    per-call overhead (holding the GIL) was most of the cost. Returns ``(wins, best)``:
    whether the parts fit better, and the one shell's best residual over its 27 variants
    (NaN when not computed; ``known`` is that residual from an earlier call, or NaN)."""
    ny, nx = img.shape
    reach = r0 + 4.0 * psf_px
    half = int(np.ceil(reach + 1.0))
    iy, ix = int(np.rint(y0)), int(np.rint(x0))
    ylo, yhi = max(iy - half, 0), min(iy + half, ny - 1)
    xlo, xhi = max(ix - half, 0), min(ix + half, nx - 1)
    if yhi - ylo + 1 < 3 or xhi - xlo + 1 < 3:
        return False, np.nan
    # the window: pixels within reach of the centre, row by row
    cap = (yhi - ylo + 1) * (xhi - xlo + 1)
    py = np.empty(cap)
    px = np.empty(cap)
    vals = np.empty(cap)
    n = 0
    for yy in range(ylo, yhi + 1):
        for xx in range(xlo, xhi + 1):
            if np.hypot(yy - y0, xx - x0) <= reach:
                py[n], px[n], vals[n] = yy, xx, img[yy, xx]
                n += 1
    py, px, vals = py[:n], px[:n], vals[:n]
    n_radii, n_tab = radii.shape[0], table.shape[1]

    def shell_values(y, x, r, out):
        # the tabulated shell of radius r at (y, x) on the window's pixels: the table row
        # interpolated between radii, then linearly in distance (np.interp's arithmetic;
        # the table's grid is uniform, step _DR)
        if r <= radii[0]:
            k = 0.0
        elif r >= radii[n_radii - 1]:
            k = float(n_radii - 1)
        else:
            j = np.searchsorted(radii, r, side="right") - 1
            k = float(j) if radii[j] == r else (1.0 / (radii[j + 1] - radii[j])) * (r - radii[j]) + j
        k0 = min(int(k), n_radii - 2)
        f = k - k0
        for i in range(n):
            t = np.hypot(py[i] - y, px[i] - x) / 0.125  # _DR
            if t >= n_tab - 1:
                out[i] = table[k0, n_tab - 1] * (1.0 - f) + table[k0 + 1, n_tab - 1] * f
            else:
                j = int(t)
                lo = table[k0, j] * (1.0 - f) + table[k0 + 1, j] * f
                if t == j:
                    out[i] = lo
                else:
                    hi = table[k0, j + 1] * (1.0 - f) + table[k0 + 1, j + 1] * f
                    out[i] = (hi - lo) * (t - j) + lo

    def sse_one(model, dv, dvdv):
        # amplitude + offset fitted to dv (centred data), closed form; no fit if <= 0
        mean = 0.0
        for i in range(n):
            mean += model[i]
        mean /= n
        cov = 0.0
        var_m = 0.0
        for i in range(n):
            mc = model[i] - mean
            cov += mc * dv[i]
            var_m += mc * mc
        var_m = max(var_m, 1e-30)
        return dvdv - (cov * cov / var_m if cov > 0 else 0.0)

    # the parts (one amplitude each) + offset: normal equations, Gaussian elimination
    m = parts.shape[0] + 1
    design = np.ones((m, n))
    for j in range(m - 1):
        shell_values(parts[j, 0], parts[j, 1], parts[j, 2], design[j])
    a = np.empty((m, m))
    rhs = np.empty(m)
    for p in range(m):
        acc = 0.0
        for i in range(n):
            acc += design[p, i] * vals[i]
        rhs[p] = acc
        for q in range(p, m):
            acc = 0.0
            for i in range(n):
                acc += design[p, i] * design[q, i]
            a[p, q] = acc
            a[q, p] = acc
    c = rhs.copy()
    for col in range(m):  # partial pivoting
        piv = col
        for r_ in range(col + 1, m):
            if abs(a[r_, col]) > abs(a[piv, col]):
                piv = r_
        if a[piv, col] == 0.0:
            return False, np.nan
        if piv != col:
            for q in range(m):
                a[col, q], a[piv, q] = a[piv, q], a[col, q]
            c[col], c[piv] = c[piv], c[col]
        for r_ in range(col + 1, m):
            f = a[r_, col] / a[col, col]
            for q in range(col, m):
                a[r_, q] -= f * a[col, q]
            c[r_] -= f * c[col]
    coef = np.empty(m)
    for r_ in range(m - 1, -1, -1):
        acc = c[r_]
        for q in range(r_ + 1, m):
            acc -= a[r_, q] * coef[q]
        coef[r_] = acc / a[r_, r_]
    for j in range(m - 1):
        if not coef[j] > 0:
            return False, np.nan
    sse2 = 0.0
    mean = 0.0
    for i in range(n):
        sse2 += vals[i] * vals[i]
        mean += vals[i]
    for p in range(m):
        sse2 -= coef[p] * rhs[p]
    mean /= n
    dv = vals - mean
    dvdv = 0.0
    for i in range(n):
        dvdv += dv[i] * dv[i]
    model = np.empty(n)
    shell_values(y0, x0, r0, model)
    if sse2 >= sse_one(model, dv, dvdv):
        return False, np.nan
    if np.isfinite(known):
        return sse2 < known, np.nan
    # the one shell gets the freedom of place and size the parts had (each was centred
    # and sized on its own): its best over centres +-1 px and radii +-15 %, so an
    # off-centre or mis-sized ring candidate does not lose to blobs on its rim
    best = np.inf
    for fr in (0.85, 1.0, 1.15):
        for oy in (-1.0, 0.0, 1.0):
            for ox in (-1.0, 0.0, 1.0):
                shell_values(y0 + oy, x0 + ox, r0 * fr, model)
                best = min(best, sse_one(model, dv, dvdv))
    return sse2 < best, best


@functools.cache
def _shells_kernel():
    """:func:`_shells_py` compiled by numba (on first use, cached on disk; ``nogil``)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_shells_py)


def one_shell_fits_better(image: np.ndarray, shell: tuple[float, float, float],
                          a: tuple[float, float, float], b: tuple[float, float, float],
                          psf_px: float, r_table_max: float,
                          others: tuple[tuple[float, float, float], ...] = ()) -> bool:
    """Whether ONE vesicle ``shell`` explains the image around it better than ``a`` and ``b``.

    The converse of :func:`two_shells_fit_better`, for two accepted objects that may be
    pieces of the rim of one ring-like vesicle (a large thin shell seen through a sharp PSF
    breaks, in noise, into bright arcs that the scale space finds as small blobs). Each
    argument is ``(y, x, shell radius)`` in px. On the pixels within ``shell``'s radius plus
    4 PSF sigmas, the one shell (amplitude + offset; its best over centres +-1 px and radii
    +-15 %) wins when its residual is below that of ``a`` + ``b`` with two free amplitudes
    and an offset (unconstrained: a lower bound of the physical fit, so the one shell must
    beat the pair at its best). Two touching vesicles are two filled disks, which no ring
    through their centres explains; the rim of a ring is not a second vesicle. ``others``
    (``(y, x, radius)`` each) are further objects reaching into the window: intensities add,
    so each enters both models with its own free amplitude (neither model is credited with
    a neighbour's light).
    """
    radii, table = model_table(round(float(psf_px), 3), float(np.ceil(r_table_max)))
    img = np.asarray(image)
    y0, x0, r0 = shell
    reach = r0 + 4.0 * psf_px
    window = _window_pixels(img, y0, x0, reach)
    if window is None:
        return False
    py, px, vals = window
    pos = np.arange(table.shape[1])

    def row(r: float) -> np.ndarray:
        k = float(np.interp(r, radii, np.arange(len(radii))))
        k0 = min(int(k), len(radii) - 2)
        return table[k0] * (1.0 - (k - k0)) + table[k0 + 1] * (k - k0)

    def shells(objs) -> list[np.ndarray]:
        return [np.interp(np.hypot(py - y, px - x) / _DR, pos, row(r)) for y, x, r in objs]

    # the shared part of both models (offset, neighbours) is projected out of everything:
    # then each model's own columns are fitted to what is left
    q = np.linalg.qr(np.stack(shells(others) + [np.ones(vals.size)], axis=1))[0]

    def resid(v: np.ndarray) -> np.ndarray:
        return v - (v @ q) @ q.T

    dv = resid(vals)
    design = resid(np.stack(shells((a, b)), axis=1).T)
    try:
        c2 = np.linalg.lstsq(design.T, dv, rcond=None)[0]
    except np.linalg.LinAlgError:
        return False
    r2 = dv - c2 @ design
    sse2 = float(r2 @ r2)
    def sse1(m: np.ndarray) -> np.ndarray:  # amplitude, closed form, per row
        m = resid(m)
        cov = m @ dv
        var_m = np.maximum(np.einsum("ij,ij->i", m, m), 1e-30)
        return float(dv @ dv) - np.where(cov > 0, cov * cov / var_m, 0.0)

    # the best centre (+-1 px) at the fitted radius, then the radius (+-15 %) there: 11
    # models, not the 27 of the full grid (the two are nearly independent for a thin ring)
    off = np.array([-1.0, 0.0, 1.0])
    cyy, cxx = np.meshgrid(y0 + off, x0 + off, indexing="ij")
    cyy, cxx = cyy.ravel(), cxx.ravel()
    e = sse1(np.interp(np.hypot(py[None, :] - cyy[:, None], px[None, :] - cxx[:, None]) / _DR,
                       pos, row(r0)))
    j = int(np.argmin(e))
    if e[j] < sse2:
        return True
    dist = np.hypot(py - cyy[j], px - cxx[j]) / _DR
    e2 = sse1(np.stack([np.interp(dist, pos, row(r0 * fr)) for fr in (0.85, 1.15)]))
    return bool(e2.min() < sse2)


def select_objects(cy: np.ndarray, cx: np.ndarray, radius: np.ndarray, strength: np.ndarray,
                   isotropy: np.ndarray, psf_px: float,
                   pair_test: Callable[[int, int, int], bool] | None = None,
                   group_test: Callable[[int, np.ndarray], bool] | None = None) -> np.ndarray:
    """Indices of the candidates kept as distinct objects (duplicates and mergers removed).

    1. A candidate is a *merger* (the scale-space response of two touching vesicles seen as
       one) when it is elongated (Hessian isotropy < 0.65; a single vesicle, ring-like or not,
       is round) and its disk holds the centres of two other candidates that do not overlap
       each other and are each at least 0.3 of its radius: it is dropped, they are kept.
       With ``pair_test(i, a, b)`` (e.g. :func:`two_shells_fit_better`) every large
       candidate is tested, round or not (a cluster of three or more touching vesicles gives
       a round blob), the members are the candidates ``i`` would suppress as duplicates
       (below), and ``i`` is a merger only when the test says two objects ``a``, ``b``
       explain the image better than ``i`` alone: a ring-like migrasome whose rim gave the
       smaller candidates is no merger. (Tuning seeds: round cluster blobs suppressing their
       members were the most frequent cause of missed vesicles beside a detected one.) The
       test runs only for candidates the greedy pass below would keep (a covered candidate
       is dropped either way: same result, fewer model fits), on its three strongest member
       pairs when elongated, on its strongest one when round (any two vesicles of a cluster
       explain it better than one shell).
       With ``group_test(i, members)`` (e.g. :func:`shells_fit_better`), a large candidate
       that is no merger is also tested as a *cluster*: its distinct members of any size
       (those it would suppress, none covering another, up to :data:`MAX_CLUSTER_PARTS`,
       strongest first) fitted together against it. A cluster of small vesicles is seen as
       one large round blob whose members are far below the 0.3 floor above.
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
    suspect = radius > 2 * min_sep  # large; without a model test, elongated only
    if pair_test is None:
        suspect &= isotropy < 0.65
    # covers[k, i]: an accepted k would make i a duplicate
    covers = d < np.maximum(radius[:, None] + 0.5 * radius[None, :] + psf_px, min_sep)
    np.fill_diagonal(covers, False)

    def is_merger(i: int) -> bool:
        if pair_test is None:
            inner = np.flatnonzero((d[i] < radius[i]) & (radius < radius[i])
                                   & (radius >= 0.3 * radius[i]))
        else:  # the members it would suppress; the model comparison decides
            inner = np.flatnonzero(covers[i] & (radius < radius[i]) & (radius >= 0.3 * radius[i]))
        if inner.size < 2:
            return False
        dd = d[np.ix_(inner, inner)]
        apart = np.triu(dd >= 0.9 * (radius[inner][:, None] + radius[inner][None, :]), 1)
        if pair_test is None:
            return bool(apart.any())
        pa, pb = np.nonzero(apart)
        # a few pairs; for a round blob (a cluster) its strongest pair: any two of a cluster
        # explain it better than one shell (and the test is the bulk of the cost here)
        n_pairs = 3 if isotropy[i] < 0.65 else 1
        best = np.argsort(-(strength[inner[pa]] + strength[inner[pb]]))[:n_pairs]
        return any(pair_test(i, int(inner[pa[q]]), int(inner[pb[q]])) for q in best)

    def is_cluster(i: int) -> bool:
        # a blob made of several smaller vesicles (any size: a cluster of small vesicles
        # is seen as one large blob whose members are far smaller than it): its distinct
        # members, strongest first, fitted together against the one shell
        inner = np.flatnonzero(covers[i] & (radius < radius[i]))
        if inner.size < 2:
            return False
        members: list[int] = []
        for k in inner[np.argsort(-strength[inner])]:
            if not (covers[k, members].any() or covers[members, k].any()):
                members.append(int(k))
            if len(members) == MAX_CLUSTER_PARTS:
                break
        return len(members) >= 2 and group_test(i, np.asarray(members))

    order = np.lexsort((-strength, -radius))
    kept = np.zeros(n, bool)
    kept_list: list[int] = []
    for i in order:  # greedy: a few hundred candidates at most
        # the merger test only where it matters: a covered candidate is dropped anyway
        if (kept & covers[:, i]).any() or (suspect[i] and is_merger(int(i))):
            continue
        if group_test is not None and suspect[i] and is_cluster(int(i)):
            continue
        kept[i] = True
        kept_list.append(i)
    return np.asarray(kept_list, dtype=np.int64)
