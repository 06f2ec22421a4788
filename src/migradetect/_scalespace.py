"""Difference-of-Gaussians scale space on a pyramid, and its blob-like maxima.

Part of :mod:`migradetect.migrasomes` (see its docstring for the method). Gaussian images
at increasing blur are computed incrementally; once the blur reaches 2 pixels of the current
level the image is subsampled by 2, so large scales cost little. Every DoG's noise is known
from the pixel noise and the discrete kernels, so thresholds are significances.
"""

from __future__ import annotations

import functools
import math
import threading
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


def _gauss(img: np.ndarray, sigma: float, truncate: float = 3.0, rows: int = 64,
           out: np.ndarray | None = None) -> np.ndarray:
    """Separable Gaussian blur in float32, borders mirrored (``scipy.ndimage`` "reflect").

    Same result as ``ndi.gaussian_filter(img, sigma, truncate=truncate)`` to float32
    rounding, several times faster: the kernel is symmetric (one multiply-add per tap pair),
    nothing is converted to float64, the image is processed in blocks of ``rows`` rows that
    stay in the CPU cache for both passes, and no padded copy of the image is made (the
    mirrored rows and columns are indexed, not copied). Compiled with numba
    (:func:`_gauss_kernel`, ``nogil``): the former numpy version made one array call per
    tap and block (hundreds per image), each taking and releasing the GIL, so two threads
    convoyed on it; the arithmetic is the same, in the same order (bit-identical).
    """
    a = np.asarray(img, dtype=np.float32)
    r = max(int(truncate * float(sigma) + 0.5), 1)
    ny, nx = a.shape
    if min(ny, nx) <= r:  # tiny images: mirroring needs more than one reflection
        return ndi.gaussian_filter(a, sigma, truncate=truncate, output=out)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / max(float(sigma), 1e-3)) ** 2)
    g = (g / g.sum()).astype(np.float32)
    if out is None:
        out = np.empty((ny, nx), np.float32)
    _gauss_kernel()(np.ascontiguousarray(a), g, int(rows), out)
    return out


def _gauss_py(a, g, rows, out):  # pragma: no cover - compiled by numba
    """Core of :func:`_gauss`: along Y into a cache-resident block, then along X into
    ``out``. Float32 throughout; per output value ``g[r] * centre`` first, then for each
    tap ``k`` ``(left + right) * g[r + k]`` added (the order of the former numpy version)."""
    ny, nx = a.shape
    r = (g.shape[0] - 1) // 2
    acc = np.empty((rows, nx + 2 * r), np.float32)
    for i0 in range(0, ny, rows):
        m = min(rows, ny - i0)
        for ii in range(m):  # along Y ("symmetric" mirror: -1 -> 0, ny -> ny - 1)
            i = i0 + ii
            row = acc[ii]
            for j in range(nx):
                row[r + j] = a[i, j] * g[r]
            for k in range(1, r + 1):
                lo, hi = i - k, i + k
                if lo < 0:
                    lo = -lo - 1
                if hi >= ny:
                    hi = 2 * ny - hi - 1
                gk = g[r + k]
                for j in range(nx):
                    row[r + j] += (a[lo, j] + a[hi, j]) * gk
            for j in range(r):  # mirror the columns
                row[r - 1 - j] = row[r + j]
                row[r + nx + j] = row[r + nx - 1 - j]
        for ii in range(m):  # then along X, straight into the output
            row = acc[ii]
            o = out[i0 + ii]
            for j in range(nx):
                o[j] = row[r + j] * g[r]
            for k in range(1, r + 1):
                gk = g[r + k]
                for j in range(nx):
                    o[j] += (row[r - k + j] + row[r + k + j]) * gk
    return out


@functools.cache
def _gauss_kernel():
    """:func:`_gauss_py` compiled by numba (on first use, cached on disk; ``nogil``)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_gauss_py)


#: Blur (px of the current level) from which a level is subsampled by 2 before the next
#: blur. A Gaussian of sigma 2 leaves 0.7 % of the amplitude at the new Nyquist frequency
#: (exp(-2 pi^2 sigma^2 / 16)). 1.5 (5 %) saves one full-size blur per frame but puts the
#: ~0.9 um scale on the coarse grid, where touching vesicles merge (F1 -0.01 on crowded
#: scenes, tuning seeds): not worth it.
DECIMATE_AT = 2.0


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    ny, nx = img.shape[0] // f, img.shape[1] // f
    return img[: ny * f, : nx * f].reshape(ny, f, nx, f).mean(axis=(1, 3), dtype=np.float32)


_POOL = threading.local()

#: Most bytes of work arrays a thread keeps between frames. A 1024² frame's scale space
#: needs ~24 MiB and is kept whole; a 2048² frame's needs ~94 MiB, which each thread would
#: otherwise hold through the other stages of every frame (2 threads: ~190 MiB of a 1 GiB
#: budget) to save ~2 % of that frame's time in page faults. Beyond the cap, fresh arrays.
POOL_LIMIT_BYTES = 32 * 2**20


def scratch(key: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A work array kept by the calling thread between frames (contents undefined).

    Fresh multi-megabyte arrays cost page faults on first touch (about 1 ms per 4 MB, a
    tenth of the detector's time on a 1024^2 frame): the scale space of one frame reuses
    the previous frame's buffers instead. Per thread (dask runs frames in threads); the
    caller must not hand these arrays out of the frame's computation. At most
    :data:`POOL_LIMIT_BYTES` are kept per thread: past it, the array is a fresh one.
    """
    pool = getattr(_POOL, "arrays", None)
    if pool is None:
        pool = _POOL.arrays = {}
    arr = pool.get(key)
    if arr is not None and arr.shape == tuple(shape) and arr.dtype == dtype:
        return arr
    pool.pop(key, None)
    arr = np.empty(shape, dtype)
    if sum(a.nbytes for a in pool.values()) + arr.nbytes <= POOL_LIMIT_BYTES:
        pool[key] = arr
    return arr


@dataclass
class _Level:
    g: np.ndarray       # Gaussian-smoothed image at this level
    sigma: float        # total blur, full-resolution px
    f: int              # downsampling factor
    o: float            # full-res coordinate of level pixel 0


def scale_space(img: np.ndarray, sigmas: np.ndarray) -> list[_Level]:
    """Gaussian images at the requested blurs (full-res px), on a pyramid.

    The images are the calling thread's :func:`scratch` buffers: valid until the next call
    in the same thread (one frame's detection), never to be returned to a user.
    """
    s0 = float(sigmas[0])
    f = 1
    while s0 / (2 * f) >= 0.7 and f < 8 and min(img.shape) // (2 * f) >= 16:
        f *= 2
    base = _block_mean(img, f) if f > 1 else img
    var_box = (f * f - 1) / 12.0
    inc = math.sqrt(max(s0 * s0 - var_box, 0.09)) / f
    levels = [_Level(_gauss(base, inc, out=scratch("level0", base.shape)),
                     math.sqrt(var_box + (inc * f) ** 2), f, (f - 1) / 2.0)]
    for s in sigmas[1:]:
        prev = levels[-1]
        g, lf = prev.g, prev.f
        if prev.sigma / lf >= DECIMATE_AT and min(g.shape) >= 32:
            g, lf = g[::2, ::2], lf * 2
        inc = math.sqrt(max(float(s) ** 2 - prev.sigma**2, 1e-6)) / lf
        out = scratch(f"level{len(levels)}", g.shape)
        levels.append(_Level(_gauss(g, inc, out=out), float(s), lf, prev.o))
    return levels


def _dog_parts(levels: list[_Level], j: int) -> tuple[np.ndarray, np.ndarray, int]:
    """DoG ``j`` is ``ga - gb`` on level ``j + 1``'s grid; ``step`` subsamples ``ga``."""
    a, b = levels[j], levels[j + 1]
    step = 2 if b.f > a.f else 1
    return a.g, b.g, step


def _dog_at(levels: list[_Level], j: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Value of DoG ``j`` at its pixel nearest to full-res coordinates (from the levels)."""
    ga, gb, step = _dog_parts(levels, j)
    lev = levels[j + 1]
    iy = np.clip(np.rint((y - lev.o) / lev.f).astype(np.int64), 0, gb.shape[0] - 1)
    ix = np.clip(np.rint((x - lev.o) / lev.f).astype(np.int64), 0, gb.shape[1] - 1)
    return ga[iy * step, ix * step] - gb[iy, ix]


def _isotropy(g: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Smaller / larger Hessian eigenvalue of ``g`` at pixels (ys, xs) when both are
    negative (a bright blob: 1 round, 0 a line); 0 otherwise."""
    hyy = g[ys + 1, xs] - 2 * g[ys, xs] + g[ys - 1, xs]
    hxx = g[ys, xs + 1] - 2 * g[ys, xs] + g[ys, xs - 1]
    hxy = 0.25 * (g[ys + 1, xs + 1] - g[ys + 1, xs - 1] - g[ys - 1, xs + 1] + g[ys - 1, xs - 1])
    half_tr = 0.5 * (hyy + hxx)
    root = np.sqrt(0.25 * (hyy - hxx) ** 2 + hxy**2)
    l1, l2 = half_tr - root, half_tr + root  # l1 <= l2
    return np.where(l1 < 0, np.clip(l2 / np.minimum(l1, -1e-30), 0.0, 1.0), 0.0)


def candidates(levels: list[_Level], noise_min: float, snr: float) -> dict[str, np.ndarray]:
    """Scale-space maxima of the DoG stack above ``snr`` x (DoG noise at ``noise_min``).

    One DoG image at a time, in one reused buffer (fresh full-size arrays cost page faults:
    ~1 ms per 4 MB); the neighbouring scales are read at the candidates only, from the
    Gaussian levels.
    """
    dlev = levels[1:]
    n_dog = len(dlev)
    norms = [dog_norm(levels[j].sigma, levels[j + 1].sigma) for j in range(n_dog)]
    out: dict[str, list] = {k: [] for k in ("y", "x", "j", "resp", "iso")}
    top = levels[1].g.shape
    dbuf = scratch("dog", (top[0] * top[1],))
    mbuf = scratch("mask", (max(top[0] - 2, 0) * max(top[1] - 2, 0),), bool)
    for j, lev in enumerate(dlev):
        ga, gb, step = _dog_parts(levels, j)
        shp = gb.shape
        d = dbuf[: shp[0] * shp[1]].reshape(shp)
        np.subtract(ga[::step, ::step][: shp[0], : shp[1]], gb, out=d)
        thr = snr * noise_min * norms[j]
        # away from the border: the Hessian needs the 3x3 neighbourhood. Flat indices:
        # np.nonzero of a 2-D mask is ~10x slower than np.flatnonzero
        if min(shp) < 3:
            continue
        m = mbuf[: (shp[0] - 2) * (shp[1] - 2)].reshape(shp[0] - 2, shp[1] - 2)
        np.greater(d[1:-1, 1:-1], thr, out=m)
        ys, xs = np.divmod(np.flatnonzero(m), shp[1] - 2)
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
            if 0 <= jn < n_dog:
                keep = v >= _dog_at(levels, jn, fy, fx)
                ys, xs, v, fy, fx = ys[keep], xs[keep], v[keep], fy[keep], fx[keep]
        if ys.size == 0:
            continue
        # sub-pixel peak (parabola per axis), in full-res px
        c, up, dn = d[ys, xs], d[ys - 1, xs], d[ys + 1, xs]
        lf, rt = d[ys, xs - 1], d[ys, xs + 1]
        sy = np.clip(0.5 * (up - dn) / np.minimum(up - 2 * c + dn, -1e-12), -0.5, 0.5)
        sx = np.clip(0.5 * (lf - rt) / np.minimum(lf - 2 * c + rt, -1e-12), -0.5, 0.5)
        # Hessian of the smoothed image at the detection scale
        iso = _isotropy(lev.g, ys, xs)
        out["y"].append((ys + sy) * lev.f + lev.o)
        out["x"].append((xs + sx) * lev.f + lev.o)
        out["j"].append(np.full(ys.size, j))
        out["resp"].append(v / norms[j])  # in units of pixel noise
        out["iso"].append(iso)
    res = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in out.items()}
    res["j"] = res["j"].astype(np.int64)
    res["_dlev"] = dlev  # type: ignore[assignment]
    return res
