"""Difference-of-Gaussians scale space on a pyramid, and its blob-like maxima.

Part of :mod:`migradetect.migrasomes` (see its docstring for the method). Gaussian images
at increasing blur are computed incrementally; once the blur exceeds 2 pixels of the current
level the image is subsampled by 2, so large scales cost little. Every DoG's noise is known
from the pixel noise and the discrete kernels, so thresholds are significances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


def _gauss1d(sigma: float) -> np.ndarray:
    r = int(math.ceil(4 * sigma)) + 1
    x = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return g / g.sum()


@lru_cache(maxsize=256)
def gauss_norm(sigma: float) -> float:
    """L2 norm of the 2-D Gaussian kernel of ``sigma`` (px) on the pixel grid."""
    g = _gauss1d(sigma)
    return float((g * g).sum())


@lru_cache(maxsize=256)
def dog_norm(a: float, b: float) -> float:
    """L2 norm of the 2-D kernel g_a - g_b (sigmas in px) on the pixel grid."""
    ga, gb = _gauss1d(a), _gauss1d(b)
    n = max(len(ga), len(gb))
    ga = np.pad(ga, (n - len(ga)) // 2)
    gb = np.pad(gb, (n - len(gb)) // 2)
    saa, sbb, sab = (ga * ga).sum(), (gb * gb).sum(), (ga * gb).sum()
    return math.sqrt(max(saa * saa + sbb * sbb - 2 * sab * sab, 1e-30))


def _gauss(img: np.ndarray, sigma: float, truncate: float = 3.0, rows: int = 64) -> np.ndarray:
    """Separable Gaussian blur in float32, borders mirrored (``scipy.ndimage`` "reflect").

    Same result as ``ndi.gaussian_filter(img, sigma, truncate=truncate)`` to float32
    rounding, two to four times faster: the kernel is symmetric (one multiply-add per tap
    pair on whole shifted views), nothing is converted to float64, and the image is
    processed in blocks of ``rows`` rows that stay in the CPU cache for both passes.
    """
    a = np.asarray(img, dtype=np.float32)
    r = max(int(truncate * float(sigma) + 0.5), 1)
    ny, nx = a.shape
    if min(ny, nx) <= r:  # tiny images: mirroring needs more than one reflection
        return ndi.gaussian_filter(a, sigma, truncate=truncate)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / max(float(sigma), 1e-3)) ** 2)
    g = (g / g.sum()).astype(np.float32)
    p = np.pad(a, r, mode="symmetric")
    out = np.empty((ny, nx), np.float32)
    acc = np.empty((rows, nx + 2 * r), np.float32)
    tmp = np.empty((rows, nx + 2 * r), np.float32)
    acc2 = np.empty((rows, nx), np.float32)
    tmp2 = np.empty((rows, nx), np.float32)
    for i0 in range(0, ny, rows):
        m = min(rows, ny - i0)
        va, vt = acc[:m], tmp[:m]  # along Y, over the padded width
        np.multiply(p[i0 + r:i0 + r + m], g[r], out=va)
        for k in range(1, r + 1):
            np.add(p[i0 + r - k:i0 + r - k + m], p[i0 + r + k:i0 + r + k + m], out=vt)
            vt *= g[r + k]
            va += vt
        vb, vt2 = acc2[:m], tmp2[:m]  # then along X
        np.multiply(va[:, r:r + nx], g[r], out=vb)
        for k in range(1, r + 1):
            np.add(va[:, r - k:r - k + nx], va[:, r + k:r + k + nx], out=vt2)
            vt2 *= g[r + k]
            vb += vt2
        out[i0:i0 + m] = vb
    return out


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    ny, nx = img.shape[0] // f, img.shape[1] // f
    return img[: ny * f, : nx * f].reshape(ny, f, nx, f).mean(axis=(1, 3), dtype=np.float32)


@dataclass
class _Level:
    g: np.ndarray       # Gaussian-smoothed image at this level
    sigma: float        # total blur, full-resolution px
    f: int              # downsampling factor
    o: float            # full-res coordinate of level pixel 0


def scale_space(img: np.ndarray, sigmas: np.ndarray) -> list[_Level]:
    """Gaussian images at the requested blurs (full-res px), on a pyramid."""
    s0 = float(sigmas[0])
    f = 1
    while s0 / (2 * f) >= 0.7 and f < 8 and min(img.shape) // (2 * f) >= 16:
        f *= 2
    base = _block_mean(img, f) if f > 1 else img
    var_box = (f * f - 1) / 12.0
    inc = math.sqrt(max(s0 * s0 - var_box, 0.09)) / f
    levels = [_Level(_gauss(base, inc), math.sqrt(var_box + (inc * f) ** 2),
                     f, (f - 1) / 2.0)]
    for s in sigmas[1:]:
        prev = levels[-1]
        g, lf = prev.g, prev.f
        if prev.sigma / lf >= 2.0 and min(g.shape) >= 32:
            g, lf = g[::2, ::2], lf * 2
        inc = math.sqrt(max(float(s) ** 2 - prev.sigma**2, 1e-6)) / lf
        levels.append(_Level(_gauss(g, inc), float(s), lf, prev.o))
    return levels


def _at_level(lev: _Level, arr: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest-pixel value of a level-sized array at full-res coordinates."""
    iy = np.clip(np.rint((y - lev.o) / lev.f).astype(np.int64), 0, arr.shape[0] - 1)
    ix = np.clip(np.rint((x - lev.o) / lev.f).astype(np.int64), 0, arr.shape[1] - 1)
    return arr[iy, ix]


def candidates(levels: list[_Level], noise_min: float, snr: float) -> dict[str, np.ndarray]:
    """Scale-space maxima of the DoG stack above ``snr`` x (DoG noise at ``noise_min``)."""
    dogs, dlev = [], []
    for j in range(len(levels) - 1):
        a, b = levels[j], levels[j + 1]
        ga = a.g[::2, ::2] if b.f > a.f else a.g
        ga = ga[: b.g.shape[0], : b.g.shape[1]]
        dogs.append(ga - b.g)
        dlev.append(b)
    norms = [dog_norm(levels[j].sigma, levels[j + 1].sigma) for j in range(len(dogs))]
    out: dict[str, list] = {k: [] for k in ("y", "x", "j", "resp", "iso")}
    for j, (d, lev) in enumerate(zip(dogs, dlev)):
        thr = snr * noise_min * norms[j]
        # away from the border: the Hessian needs the 3x3 neighbourhood
        ys, xs = np.nonzero(d[1:-1, 1:-1] > thr)
        if ys.size == 0:
            continue
        ys, xs = ys + 1, xs + 1
        v = d[ys, xs]
        keep = np.ones(ys.size, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    nb = d[ys + dy, xs + dx]
                    keep &= v >= nb if (dy, dx) < (0, 0) else v > nb
        ys, xs, v = ys[keep], xs[keep], v[keep]
        fy, fx = ys * lev.f + lev.o, xs * lev.f + lev.o
        for jn in (j - 1, j + 1):  # a maximum across scales too
            if 0 <= jn < len(dogs):
                keep = v >= _at_level(dlev[jn], dogs[jn], fy, fx)
                ys, xs, v, fy, fx = ys[keep], xs[keep], v[keep], fy[keep], fx[keep]
        if ys.size == 0:
            continue
        # sub-pixel peak (parabola per axis), in full-res px
        c, up, dn = d[ys, xs], d[ys - 1, xs], d[ys + 1, xs]
        lf, rt = d[ys, xs - 1], d[ys, xs + 1]
        sy = np.clip(0.5 * (up - dn) / np.minimum(up - 2 * c + dn, -1e-12), -0.5, 0.5)
        sx = np.clip(0.5 * (lf - rt) / np.minimum(lf - 2 * c + rt, -1e-12), -0.5, 0.5)
        # Hessian of the smoothed image at the detection scale
        g = lev.g
        hyy = g[ys + 1, xs] - 2 * g[ys, xs] + g[ys - 1, xs]
        hxx = g[ys, xs + 1] - 2 * g[ys, xs] + g[ys, xs - 1]
        hxy = 0.25 * (g[ys + 1, xs + 1] - g[ys + 1, xs - 1] - g[ys - 1, xs + 1] + g[ys - 1, xs - 1])
        half_tr = 0.5 * (hyy + hxx)
        root = np.sqrt(0.25 * (hyy - hxx) ** 2 + hxy**2)
        l1, l2 = half_tr - root, half_tr + root  # l1 <= l2
        iso = np.where(l1 < 0, np.clip(l2 / np.minimum(l1, -1e-30), 0.0, 1.0), 0.0)
        out["y"].append((ys + sy) * lev.f + lev.o)
        out["x"].append((xs + sx) * lev.f + lev.o)
        out["j"].append(np.full(ys.size, j))
        out["resp"].append(v / norms[j])  # in units of pixel noise
        out["iso"].append(iso)
    res = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in out.items()}
    res["j"] = res["j"].astype(np.int64)
    res["_dlev"] = dlev  # type: ignore[assignment]
    return res
