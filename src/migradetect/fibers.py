"""Retraction fibers: oriented line filter, hysteresis, skeleton graphs (skan).

Retraction fibers are membrane tubes narrower than the diffraction limit, so their image is a
line whose cross-section IS the point-spread function. In TSPAN4-GFP movies they peak at only
~1-3 noise sigmas per pixel, below any per-pixel threshold, but they are straight over a few
µm: a filter that integrates along them gains about ``sqrt(length / width)`` in SNR.

Line measure (:func:`ridge_measure`, in noise sigmas of its own output, so thresholds are SNRs):

- the frame is block-averaged to about ``ridge_pixel_um`` (0.3 µm: a fiber's signal stays in
  one or two blocks while the noise averages down; 4x fewer pixels), smoothed with a
  Gaussian at the PSF scale (floor one grid pixel);
- for 8 line directions (22.5 degrees apart to within 4 degrees) the curvature across the
  direction, ``-(n^T H n)`` from the 3 Hessian components, is averaged along it with a
  Gaussian of ``line_smoothing_um``, and divided by the chain's exact white-noise gain (the
  L2 norm of its impulse response) times the pixel noise; maximum over the directions;
- both one-sided halves of that average must carry part of the response (a line pixel has
  line on both sides), so the averaging does not carry the mask past a fiber's end;
- compact objects (migrasomes, puncta: both curvatures negative, or a grey opening wider
  than a fiber above the background but narrower than a cell) and edges (a significant
  gradient larger than the curvature: flanks of blobs and steps) have their curvature zeroed
  before the averaging, so they do not streak into lines.

Hysteresis on the grid (seeds above ``high_threshold``, away from compact objects; grown over
``low_threshold``), outside the cell bodies plus ``cell_margin_um``; compact objects touching a
fiber are filled in so that the graph runs through a migrasome. The line measure inside the
mask is interpolated back to the frame's pixels and cut at its half height, which centres the
mask on the line; then skeletonize (scikit-image), graph with skan (``skan.Skeleton``, once per
frame), side branches shorter than ``min_length_um`` pruned on the graph, fibers shorter than
``min_length_um`` dropped, lengths from 5-pixel-smoothed paths, branch points counted as
clusters of junction pixels.

Cost (about 45-50 ms of one CPU core per 1024 x 1024 frame): the Hessian with the compact-
object and edge tests, and the 8 directions' along-line halves with the end test and the
maximum, are two fused numba kernels (:func:`_hessian_tests_py`, :func:`_direction_max_py`;
compiled once, cached on disk) instead of ~150 full-grid numpy passes; the numpy chain
(:func:`_line_responses`, BLAS ``saxpy`` per tap) stays as their reference in the tests and
calibrates the noise gains. The neighbourhood steps after the hysteresis (local-share test,
interpolation, thinning, attachment to cells) run in boxes or zones around the sparse fiber
pieces, not over the whole frame.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.linalg.blas import saxpy as _saxpy
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from migradetect.errors import ConfigError, InputError
from migradetect.params import param
from migradetect.preprocess import (
    _check_frame,
    _check_pixel_size,
    block_any,
    block_mean,
    noise_sigma,
    upsample,
)

logger = logging.getLogger(__name__)

#: Largest compact bright object (µm): migrasomes are at most ~3.5 µm across; wider bright
#: things (cell bodies) are not treated as compact objects.
_COMPACT_UM = 4.0

#: Least share of the along-line response on each side of a line pixel (0.5: both equal).
_END_SHARE = 0.2

#: Grid pixels at the frame's border where the ridge measure is not used.
_BORDER = 1

#: A fiber piece shorter than this many along-line sigmas must peak _SHORT_PEAK times
#: higher than the seed threshold.
_NOISE_LENGTHS = 3.0
_SHORT_PEAK = 1.5

#: Least share of the local peak line response for a pixel to join a fiber.
_LOCAL_SHARE = 0.2

#: Least kept share of the along-line kernel that is renormalized near compact objects.
_MIN_KEPT = 0.5

#: Columns of the per-frame fiber table (schema.FIBERS without experiment and movie).
FIBER_TABLE: dict[str, str] = {
    "frame": "int64",
    "fiber_id": "int64",
    "cell_id": "int64",
    "length_um": "float64",
    "n_tips": "int64",
    "n_branch_points": "int64",
}

#: Columns of :func:`fiber_tips_and_junctions`.
FIBER_NODES: dict[str, str] = {"fiber_id": "int64", "y_px": "float64", "x_px": "float64",
                               "kind": "str"}


@dataclass(frozen=True)
class FiberConfig:
    """Retraction-fiber segmentation parameters."""

    low_threshold: float = param(2.5, min=0.0,
                                 help="hysteresis low threshold, in noise sigmas of the ridge "
                                      "filter")
    high_threshold: float = param(4.5, min=0.0,
                                  help="hysteresis high threshold (seeds), in noise sigmas of "
                                       "the ridge filter")
    ridge_scales: tuple[float, ...] = param(
        (1.0,), min=0.3, max=5.0,
        help="Gaussian scales of the ridge filter, in units of the PSF sigma (floor 1 pixel)",
    )
    line_smoothing_um: float = param(
        1.0, unit="um", min=0.0, max=5.0,
        help="Gaussian sigma of the averaging along each of 8 line directions (fibers are "
             "straight over a few µm; longer averaging finds fainter fibers); 0 disables",
    )
    ridge_pixel_um: float = param(
        0.3, unit="um", min=0.01, max=2.0,
        help="pixel size of the grid the line filter runs on (frames are block-averaged to "
             "about this; fibers are narrower, so little signal is lost and it is faster)",
    )
    min_length_um: float = param(2.0, unit="um", min=0.0,
                                 help="shortest fiber kept, and shortest side branch (spur) kept")
    attach_distance_um: float = param(1.0, unit="um", min=0.0,
                                      help="a fiber passing this close to a cell is attached to it")
    cell_margin_um: float = param(
        0.4, unit="um", min=0.0, max=10.0,
        help="band around cell bodies excluded from fibers (cell edges are ridges too); "
             "must be below attach_distance_um",
    )
    junction_merge_um: float = param(
        0.5, unit="um", min=0.0, max=5.0,
        help="junction pixels closer than this form one branch point (about twice the "
             "optical resolution: closer crossings cannot be told apart)",
    )

    def __post_init__(self) -> None:
        if self.high_threshold < self.low_threshold:
            raise ValueError("fibers.high_threshold must be >= fibers.low_threshold")
        if self.cell_margin_um >= self.attach_distance_um and self.attach_distance_um > 0:
            raise ValueError("fibers.cell_margin_um must be smaller than fibers.attach_distance_um")
        if not self.ridge_scales:
            raise ValueError("fibers.ridge_scales needs at least one scale")


def empty_fiber_table() -> pd.DataFrame:
    """The fiber table with its columns and no rows."""
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in FIBER_TABLE.items()})


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


def _gaussian_kernel(sigma_px: float, truncate: float = 3.5) -> np.ndarray:
    radius = max(1, int(np.ceil(truncate * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (w / w.sum()).astype(np.float32)


def smooth(frame: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing (edges replicated), float32.

    Same result as ``scipy.ndimage.gaussian_filter(frame, sigma_px, truncate=3.5,
    mode="nearest")``; the filter along rows runs as a sum of shifted rows because
    ``ndimage`` along the slow axis of a large C-ordered image is cache-bound (3x slower).
    """
    w = _gaussian_kernel(sigma_px)
    radius = len(w) // 2
    h = ndi.correlate1d(np.asarray(frame, dtype=np.float32), w, axis=1, mode="nearest")
    p = np.pad(h, ((radius, radius), (0, 0)), mode="edge")
    ny = h.shape[0]
    n = h.size  # each shifted block of rows is one contiguous range of the flat array
    flat = p.reshape(-1)
    out = w[0] * p[:ny]
    acc = out.reshape(-1)
    for i in range(1, len(w)):
        _saxpy(flat[i * h.shape[1]:i * h.shape[1] + n], acc, a=float(w[i]))
    return out


def _shifted_sums(p: np.ndarray, o: int, shape: tuple[int, int], w: np.ndarray, dy: int,
                  dx: int, signs: tuple[int, ...]) -> list[np.ndarray]:
    """For each sign ``+1``/``-1``: ``sum_k w[r + k] p[q + sign k (dy, dx)]`` over k = 1..r
    plus ``w[r] p[q]`` (``r = len(w) // 2``), for the pixels ``q`` of the frame inside ``p``
    (padded by ``o`` pixels of zeros on every side, C-contiguous float32).

    Integer steps need no interpolation. On the flat padded array every shifted copy of the
    frame is one contiguous range (the padding columns ride along and are cropped at the
    end), so each tap is one BLAS ``saxpy`` (``y += a x``, a single pass) instead of a
    multiply and an add over a strided 2-D slice: 2-3x faster."""
    r = len(w) // 2
    ny, nx = shape
    wp = p.shape[1]
    flat = p.reshape(-1)
    n = (ny - 1) * wp + nx  # from the frame's first pixel to its last, in the flat array
    base = o * wp + o
    out = []
    for sign in signs:
        acc = np.empty(ny * wp, dtype=np.float32)
        np.multiply(flat[base:base + n], w[r], out=acc[:n])
        for k in range(1, r + 1):
            off = sign * k * (dy * wp + dx)
            _saxpy(flat[base + off:base + off + n], acc[:n], a=float(w[r + k]))
        out.append(acc.reshape(ny, wp)[:, :nx])
    return out


def _along(p: np.ndarray, o: int, shape: tuple[int, int], w: np.ndarray, dy: int,
           dx: int) -> np.ndarray:
    """Smooth with the symmetric 1-D kernel ``w`` along the pixel step ``(dy, dx)``.

    ``p`` is the image padded by ``o`` pixels of zeros on every side; the result has
    ``shape``."""
    fwd, bwd = _shifted_sums(p, o, shape, w, dy, dx, (1, -1))
    fwd += bwd
    ny, nx = shape
    fwd -= w[len(w) // 2] * p[o:o + ny, o:o + nx]  # the centre was counted twice
    return fwd


def _direction_weights(dy: int, dx: int) -> tuple[float, float, float]:
    """Weights of (hyy, hxx, hxy) in the second derivative across a line along (dy, dx)."""
    ny, nx = dx / np.hypot(dy, dx), -dy / np.hypot(dy, dx)  # unit normal
    return ny * ny, nx * nx, 2.0 * ny * nx


#: Line directions as pixel steps (8 directions, 22.5 degrees apart to within 4 degrees) and
#: the weights of (hyy, hxx, hxy) in the curvature across a line running along them.
_DIRECTIONS = tuple(((dy, dx), _direction_weights(dy, dx)) for dy, dx in
                    ((0, 1), (1, 2), (1, 1), (2, 1), (1, 0), (2, -1), (1, -1), (1, -2)))


def _hessian(g: np.ndarray, out: tuple[np.ndarray, ...] | None = None
             ) -> tuple[np.ndarray, ...]:
    """Central-difference Hessian ``(hyy, hxx, hxy)`` and squared gradient of ``g`` on its
    interior (written into ``out``, three arrays of the interior's shape, if given)."""
    c = g[1:-1, 1:-1]
    up, down, left, right = g[:-2, 1:-1], g[2:, 1:-1], g[1:-1, :-2], g[1:-1, 2:]
    if out is None:
        out = tuple(np.empty(c.shape, dtype=np.float32) for _ in range(3))
    hyy, hxx, hxy = out
    c2 = c * np.float32(2.0)
    np.add(down, up, out=hyy)
    hyy -= c2
    np.add(right, left, out=hxx)
    hxx -= c2
    np.subtract(g[2:, 2:], g[2:, :-2], out=hxy)
    hxy -= g[:-2, 2:]
    hxy += g[:-2, :-2]
    hxy *= np.float32(0.25)
    grad2 = down - up
    grad2 *= grad2
    gx = right - left
    gx *= gx
    grad2 += gx
    grad2 *= np.float32(0.25)
    return hyy, hxx, hxy, grad2


def _hessian_padded(g: np.ndarray, pad: int) -> tuple[np.ndarray, ...]:
    """Hessian ``(hyy, hxx, hxy)`` of ``g`` (central differences, edges replicated), each
    padded by ``pad`` pixels of zeros for :func:`_along`, and the squared gradient (not
    padded).

    Zeros, not replicated values, outside the frame: a replicated border row summed along a
    direction crossing the border would count one noisy value many times (far more noise
    than calibrated, false lines along the frame's edges)."""
    ny, nx = g.shape
    padded = tuple(np.zeros((ny + 2 * pad, nx + 2 * pad), dtype=np.float32) for _ in range(3))
    inner = tuple(h[pad:pad + ny, pad:pad + nx] for h in padded)
    grad2 = _hessian(np.pad(np.asarray(g, dtype=np.float32), 1, mode="edge"), inner)[3]
    return (*padded, grad2)


def _direction_kernels(along_px: float) -> tuple[list[np.ndarray], int]:
    """Along-line Gaussian kernels of each direction (in steps of that direction) and the
    padding they need."""
    kernels = [_gaussian_kernel(max(along_px / float(np.hypot(dy, dx)), 0.3), truncate=2.5)
               if along_px > 0 else np.ones(1, np.float32) for (dy, dx), _ in _DIRECTIONS]
    pad = max(len(k) // 2 * max(abs(dy), abs(dx))
              for k, ((dy, dx), _) in zip(kernels, _DIRECTIONS, strict=True))
    return kernels, pad


def _along_halves(p: np.ndarray, o: int, shape: tuple[int, int], w: np.ndarray, dy: int,
                  dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of :func:`_along` (steps ``+k (dy, dx)`` and ``-k (dy, dx)``, the
    centre tap split between them)."""
    half = w.copy()
    half[len(w) // 2] *= np.float32(0.5)
    fwd, bwd = _shifted_sums(p, o, shape, half, dy, dx, (1, -1))
    return fwd, bwd


def _line_responses(hp: tuple[np.ndarray, ...], pad: int, shape: tuple[int, int],
                    kernels: list[np.ndarray], *, halves: bool = False) -> list:
    """Per-direction line response ``-(n^T H n)`` averaged along the direction (or, with
    ``halves``, its two one-sided halves)."""
    flat = [np.ravel(h) for h in hp]
    out = []
    for w, ((dy, dx), (a, b, c)) in zip(kernels, _DIRECTIONS, strict=True):
        # d = -(a hyy + b hxx + c hxy), one pass per non-zero term (BLAS saxpy)
        d = hp[0] * np.float32(-a)
        for h, weight in ((flat[1], b), (flat[2], c)):
            if weight != 0.0:
                _saxpy(h, d.reshape(-1), a=-float(weight))
        out.append(_along_halves(d, pad, shape, w, dy, dx) if halves
                   else _along(d, pad, shape, w, dy, dx))
    return out


@functools.lru_cache(maxsize=32)
def _chain_noise(sigma_px: float, along_px: float
                 ) -> tuple[tuple[float, ...], float, float]:
    """Noise std of each direction's line response, of ``hxx`` and of ``gx`` (a gradient
    component) for unit white noise.

    The chain (Gaussian, Hessian, along-line average) is linear, so its noise gain is the
    L2 norm of its impulse response, computed exactly on a delta image."""
    half = int(np.ceil(4 * sigma_px + 3 * along_px)) + 4
    delta = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    delta[half, half] = 1.0
    g = smooth(delta, sigma_px)
    kernels, pad = _direction_kernels(along_px)
    responses = _line_responses(_hessian_padded(g, pad)[:3], pad, g.shape, kernels)
    gains = tuple(float(np.sqrt(np.sum(r.astype(np.float64) ** 2))) for r in responses)
    hxx = g[1:-1, 2:] - 2.0 * g[1:-1, 1:-1] + g[1:-1, :-2]
    gx = 0.5 * (g[1:-1, 2:] - g[1:-1, :-2])
    return (gains, float(np.sqrt(np.sum(hxx.astype(np.float64) ** 2))),
            float(np.sqrt(np.sum(gx.astype(np.float64) ** 2))))


def _grid(pixel_size_um: float, psf_sigma_um: float, config: FiberConfig
          ) -> tuple[int, float, float]:
    """Block factor of the ridge grid, Gaussian sigma across the line and along-line sigma
    (both in ridge-grid pixels)."""
    k = max(1, int(np.floor(config.ridge_pixel_um / pixel_size_um + 0.25)))
    cpx = k * pixel_size_um
    sigma = max(1.0, psf_sigma_um / cpx)
    return k, sigma, config.line_smoothing_um / cpx


def ridge_measure(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
                  config: FiberConfig, noise: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oriented line filter on the ridge grid, in noise sigmas of its own output.

    The frame is averaged in blocks of about ``ridge_pixel_um`` (a fiber is narrower than
    that, so its signal stays in one or two blocks while the noise averages out), smoothed
    at the PSF scale (floor one grid pixel), and the curvature across each of 8 directions is
    averaged along that direction with a Gaussian of ``line_smoothing_um``: a matched filter
    for a straight piece of fiber, which gains about ``sqrt(length / width)`` in SNR over a
    per-pixel test. Each direction's response is divided by its noise sigma (the filter's
    exact white-noise gain times the frame's pixel noise over ``k``), so the thresholds are
    SNRs. Compact bright objects (migrasomes, puncta: both curvatures negative, or far above
    the local background) have their curvature zeroed over their extent before the
    averaging, so they do not streak into false lines.

    Returns
    -------
    R, blobs, smoothed
        On the ridge grid (shape ``ceil(Y / k), ceil(X / k)``, ``k`` from
        :func:`_grid`): the ridge measure (max over directions, noise sigmas), the boolean
        compact-object region, and the smoothed grid image.
    """
    ridge, blob, _, g = _ridge_fields(frame, pixel_size_um=pixel_size_um,
                                      psf_sigma_um=psf_sigma_um, config=config, noise=noise)
    return ridge, blob, g


def _ridge_fields(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
                  config: FiberConfig, noise: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ridge_measure` plus the zone within the along-line reach of compact objects
    (``ridge, blob, near, smoothed``)."""
    frame = np.asarray(_check_frame(frame), dtype=np.float32)
    pixel_size_um = _check_pixel_size(pixel_size_um)
    k, sigma0, along = _grid(pixel_size_um, psf_sigma_um, config)
    small = block_mean(frame, k)
    if noise is None:  # white noise: the block means' noise is the pixels' over k
        noise = noise_sigma(small) * k if k > 1 else noise_sigma(frame)
    noise_c = max(float(noise) / k, 1e-12)  # white noise averaged over k x k pixels
    cpx = k * pixel_size_um
    # broad bright objects (large migrasomes have flat tops without curvature): what
    # survives a grey opening about 1 µm wide (wider than a fiber's image) of the block
    # means, significantly above the local background; cell bodies (wider than
    # _COMPACT_UM) survive a second, wider opening too and are not compact objects
    step = max(2, int(round(2.0 / cpx)))
    local_bg = upsample(ndi.minimum_filter(block_mean(small, step), size=3, mode="nearest"),
                        step, small.shape, order=0)
    width = max(3, _odd(1.0 / cpx))
    broad = _opening(small, width)
    # the wide opening on blocks of about 1 µm (it only has to keep cell bodies)
    f = max(1, int(round(1.0 / cpx)))
    wide = max(3, _odd(_COMPACT_UM / (f * cpx)))
    wide = upsample(ndi.grey_opening(block_mean(small, f), size=(wide, wide), mode="nearest"),
                    f, small.shape, order=0)
    broad -= np.maximum(wide, local_bg)
    compact = broad > config.high_threshold * noise_c
    ridge = blob = near = g0 = None
    for scale in config.ridge_scales:
        sigma = max(1.0, scale * psf_sigma_um / cpx) if scale != 1.0 else sigma0
        r, b, n, g = _ridge_one(small, noise_c, sigma, along, compact, config.high_threshold)
        if ridge is None:
            ridge, blob, near, g0 = r, b, n, g
        else:
            np.maximum(ridge, r, out=ridge)
            blob |= b
            near |= n
    return ridge, blob, near, g0


def _near(blob: np.ndarray, along: float) -> np.ndarray:
    """Pixels within the along-line reach (``along`` grid pixels) of a compact object."""
    return ndi.maximum_filter(blob, size=2 * int(np.ceil(along)) + 1) if blob.any() else blob


def _half_kernels(kernels: list[np.ndarray], full: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided halves of symmetric kernels as rows of one array (entry 0 the centre
    tap, halved unless ``full``: the two halves then sum to the kernel) and their radii."""
    radii = np.array([len(w) // 2 for w in kernels], dtype=np.int64)
    out = np.zeros((len(kernels), int(radii.max()) + 1), dtype=np.float32)
    for i, w in enumerate(kernels):
        r = len(w) // 2
        out[i, :r + 1] = w[r:]
        if not full:
            out[i, 0] *= np.float32(0.5)
    return out, radii


def _direction_max_py(hyy, hxx, hxy, edge, pad, steps, coef, halves, radii, scale,
                      near_id, inv_f, share):  # pragma: no cover - compiled by numba
    """Ridge measure: for each direction, the curvature across it ``d = -(a hyy + b hxx +
    c hxy)`` (zeroed where ``edge``; zeros outside the frame, ``pad`` pixels of them: the
    kernels' reach) summed along it over each one-sided half of the kernel (``halves``),
    kept where both halves carry ``share`` of the sum (or at near pixels, ``near_id >= 0``,
    divided by ``sqrt`` of the kept share instead, ``inv_f``), times ``scale``; the maximum
    over the directions and 0.

    Hand-written (numba) because it fuses what numpy does in ~20 full-grid passes per
    direction (one per tap and per step of the end test): the along-line sums accumulate in
    row buffers that stay in the CPU cache, two taps per pass; about 4x faster than the BLAS
    saxpy chain plus the numpy end test."""
    ny, nx = edge.shape
    ridge = np.zeros((ny, nx), dtype=np.float32)
    d = np.zeros((ny + 2 * pad, nx + 2 * pad), dtype=np.float32)  # zeros outside the frame
    fwd = np.empty(nx, dtype=np.float32)
    bwd = np.empty(nx, dtype=np.float32)
    has_near = near_id.shape[0] > 0
    zero = np.float32(0.0)
    for j in range(steps.shape[0]):
        a, b, c = -coef[j, 0], -coef[j, 1], -coef[j, 2]
        for y in range(ny):
            hy, hx, hc, e, dr = hyy[y], hxx[y], hxy[y], edge[y], d[y + pad]
            for x in range(nx):
                v = a * hy[x] + b * hx[x] + c * hc[x]
                dr[x + pad] = zero if e[x] else v
        dy, dx = steps[j, 0], steps[j, 1]
        r = radii[j]
        s = scale[j]
        for y in range(ny):
            row = d[y + pad, pad:pad + nx]
            w0 = halves[j, 0]
            for x in range(nx):
                v = w0 * row[x]
                fwd[x] = v
                bwd[x] = v
            # two taps per pass over the row buffers (half the loads and stores of them)
            k = 1
            while k + 1 <= r:
                wk = halves[j, k]
                wl = halves[j, k + 1]
                rf = d[y + pad + k * dy, pad + k * dx:pad + k * dx + nx]
                rb = d[y + pad - k * dy, pad - k * dx:pad - k * dx + nx]
                rf2 = d[y + pad + (k + 1) * dy, pad + (k + 1) * dx:pad + (k + 1) * dx + nx]
                rb2 = d[y + pad - (k + 1) * dy, pad - (k + 1) * dx:pad - (k + 1) * dx + nx]
                for x in range(nx):
                    fwd[x] += wk * rf[x] + wl * rf2[x]
                    bwd[x] += wk * rb[x] + wl * rb2[x]
                k += 2
            if k <= r:
                wk = halves[j, k]
                rf = d[y + pad + k * dy, pad + k * dx:pad + k * dx + nx]
                rb = d[y + pad - k * dy, pad - k * dx:pad - k * dx + nx]
                for x in range(nx):
                    fwd[x] += wk * rf[x]
                    bwd[x] += wk * rb[x]
            # branch-free (vectorized) for all pixels, then the few near pixels: their
            # value, divided by sqrt(kept share) <= 1, is the larger where it is positive
            out = ridge[y]
            for x in range(nx):
                f = fwd[x]
                bk = bwd[x]
                full = f + bk
                v = full * s if min(f, bk) >= share * full else zero
                out[x] = max(out[x], v)
            if has_near:
                nid = near_id[y]
                for x in range(nx):
                    if nid[x] >= 0:
                        v = (fwd[x] + bwd[x]) * s * inv_f[j, nid[x]]
                        out[x] = max(out[x], v)
    return ridge


def _hessian_tests_py(gp, hyy, hxx, hxy, blob, edge, t_blob, two_sigma, t_edge2
                      ):  # pragma: no cover - compiled by numba
    """Central-difference Hessian of ``gp`` (the smoothed grid padded by one replicated
    pixel) written into ``hyy, hxx, hxy``, and per pixel: ``blob``,
    the larger eigenvalue ``l2`` below ``-t_blob`` and ``-l2 > |l1| / 2`` (both curvatures
    negative, within a factor 2); ``edge``, the squared gradient above both ``t_edge2`` and
    ``(l1 two_sigma)^2``. Hand-written (numba): one pass instead of ~20 full-grid numpy
    passes and temporaries."""
    ny, nx = blob.shape
    for y in range(ny):
        up, mid, down = gp[y], gp[y + 1], gp[y + 2]
        oyy, oxx, oxy = hyy[y], hxx[y], hxy[y]
        for x in range(nx):
            c2 = mid[x + 1] * np.float32(2.0)
            h_yy = (down[x + 1] + up[x + 1]) - c2
            h_xx = (mid[x + 2] + mid[x]) - c2
            h_xy = (((down[x + 2] - down[x]) - up[x + 2]) + up[x]) * np.float32(0.25)
            gy = down[x + 1] - up[x + 1]
            gx = mid[x + 2] - mid[x]
            grad2 = (gy * gy + gx * gx) * np.float32(0.25)
            oyy[x] = h_yy
            oxx[x] = h_xx
            oxy[x] = h_xy
            half_trace = np.float32(0.5) * (h_xx + h_yy)
            dd = np.float32(0.5) * (h_xx - h_yy)
            root = np.sqrt(dd * dd + h_xy * h_xy)
            neg_l1 = root - half_trace
            neg_l2 = -(half_trace + root)
            blob[y, x] = (neg_l2 > t_blob) and (neg_l2 > np.float32(0.5) * neg_l1)
            l1s = neg_l1 * two_sigma
            edge[y, x] = grad2 > max(l1s * l1s, t_edge2)


def _kept_share_py(keep, pad, ys, xs, steps, kernels, radii, least
                   ):  # pragma: no cover - compiled by numba
    """``1 / sqrt(max(f, least))`` with ``f`` the sum of ``keep`` (padded by ``pad``) along
    each direction with its full kernel, at the pixels ``(ys, xs)`` only (few: the zone near
    compact objects)."""
    out = np.empty((steps.shape[0], ys.shape[0]), dtype=np.float32)
    for j in range(steps.shape[0]):
        dy, dx = steps[j, 0], steps[j, 1]
        for i in range(ys.shape[0]):
            y, x = ys[i] + pad, xs[i] + pad
            f = kernels[j, 0] * keep[y, x]
            for k in range(1, radii[j] + 1):
                f += kernels[j, k] * (keep[y + k * dy, x + k * dx] + keep[y - k * dy, x - k * dx])
            out[j, i] = 1.0 / np.sqrt(max(f, least))
    return out


@functools.cache
def _kernels():
    """The numba-compiled :func:`_direction_max_py`, :func:`_kept_share_py` and
    :func:`_hessian_tests_py` (compiled on first use, cached on disk; imported here: numba
    start-up is slow)."""
    import numba

    jit = numba.njit(cache=True, nogil=True, fastmath=True)
    return jit(_direction_max_py), jit(_kept_share_py), jit(_hessian_tests_py)


def _dilate_cross(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation by the 4-neighbour cross, ``iterations`` times (nothing outside the
    frame): ``ndimage.binary_dilation`` with that structure, as ORs of shifted slices
    (several times faster for a few iterations)."""
    for _ in range(iterations):
        out = mask.copy()
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
        mask = out
    return mask


def _dilate_square(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation by the 3 x 3 square, ``iterations`` times (nothing outside the frame):
    ``ndimage.binary_dilation`` with that structure, as ORs of shifted slices (separable:
    rows, then columns; several times faster)."""
    for _ in range(iterations):
        out = mask.copy()
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
        mask = out.copy()
        mask[:, 1:] |= out[:, :-1]
        mask[:, :-1] |= out[:, 1:]
    return mask


def _close_square(mask: np.ndarray) -> np.ndarray:
    """Binary closing by the 3 x 3 square (nothing outside the frame):
    ``ndimage.binary_closing(mask, np.ones((3, 3)), border_value=0)``, from shifted-slice
    dilations (a few fast passes over a boolean image instead of ndimage's generic
    structuring-element loop)."""
    closed = ~_dilate_square(~_dilate_square(mask, 1), 1)  # erosion: outside counts as kept
    closed[0], closed[-1], closed[:, 0], closed[:, -1] = False, False, False, False
    return closed


def _max3(image: np.ndarray) -> np.ndarray:
    """Maximum over 3 x 3 neighbourhoods (the frame's own pixels only: the same as
    ``ndimage.maximum_filter(image, size=3)``, whose reflected border repeats an edge pixel
    already in the window), as maxima of shifted slices (rows, then columns; 2-3x faster)."""
    rows = image.copy()
    np.maximum(rows[1:], image[:-1], out=rows[1:])
    np.maximum(rows[:-1], image[1:], out=rows[:-1])
    out = rows.copy()
    np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def _ridge_one(small: np.ndarray, noise_c: float, sigma: float, along: float,
               compact: np.ndarray, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_ridge_fields` at one Gaussian scale ``sigma`` (ridge-grid pixels)."""
    g = smooth(small, sigma)
    kernels, pad = _direction_kernels(along)
    gains, h_gain, g_gain = _chain_noise(round(sigma, 4), round(along, 4))
    # Hessian (central differences, edges replicated) and per pixel (fused, numba:
    # :func:`_hessian_tests_py`):
    # small compact objects: both curvatures strongly negative and within a factor 2;
    # edges: a significant gradient larger than the curvature across times twice the blur. The
    # flank of a blurred blob or step curves down tangentially and would streak into radial
    # lines; a line's centre has no gradient (only its flanks beyond ~0.6 sigma are dropped,
    # which the along-line average does not use)
    hp = tuple(np.empty(g.shape, dtype=np.float32) for _ in range(3))
    blob = np.empty(g.shape, dtype=np.bool_)
    edge = np.empty(g.shape, dtype=np.bool_)
    _kernels()[2](np.pad(g, 1, mode="edge"), *hp, blob, edge,
                  np.float32(threshold * noise_c * h_gain), np.float32(2.0 * sigma),
                  np.float32((threshold * noise_c * g_gain) ** 2))
    blob |= compact
    if blob.any():
        # widened by the Gaussian's reach across a line; their curvature is zeroed so the
        # along-line averaging does not streak them into lines
        blob = _dilate_cross(blob, int(np.ceil(sigma)))
    edge |= blob  # curvature zeroed there (inside :func:`_direction_max_py`)
    # a line pixel has the line on both sides along its direction: each one-sided half of
    # the average must carry at least _END_SHARE of the response (else the averaging would
    # carry the mask past a fiber's end by about line_smoothing_um)
    # (not within line_smoothing_um of a compact object, whose zeroed curvature would look
    # like an end)
    near = _near(blob, along)
    # the 8 directions' along-line halves, end test, noise scaling and maximum in one fused
    # pass per direction (numba, see :func:`_direction_max_py`); the numpy/BLAS chain of
    # :func:`_line_responses` is the reference (tests) and calibrates the gains
    steps = np.array([d for d, _ in _DIRECTIONS], dtype=np.int64)
    coef = np.array([c for _, c in _DIRECTIONS], dtype=np.float32)
    scale = np.array([1.0 / (noise_c * gain) for gain in gains], dtype=np.float32)
    halves, radii = _half_kernels(kernels)
    near_id = np.full(g.shape if near.any() else (0, 0), -1, dtype=np.int32)
    inv_f = np.zeros((len(_DIRECTIONS), 0), dtype=np.float32)
    if near.any():
        # near compact objects part of the average fell on zeroed pixels: divide by the
        # square root of the kept share f of the kernel (normalized convolution; signal / f,
        # noise / sqrt(f), so the SNR by sqrt(f)); a fiber then runs up to its migrasome
        # (the kept share is smooth: computed on blocks of 2 x 2, 4x fewer pixels, only at
        # the near pixels)
        keep_c = block_mean(~edge, 2)
        kernels_c, pad_c = _direction_kernels(along / 2.0)
        keep_c = np.pad(keep_c, pad_c)  # nothing is kept outside the frame
        ny_i, nx_i = np.nonzero(near)
        near_id[ny_i, nx_i] = np.arange(ny_i.size, dtype=np.int32)
        full_c, radii_c = _half_kernels(kernels_c, full=True)
        inv_f = _kernels()[1](keep_c, pad_c, (ny_i // 2).astype(np.int64),
                              (nx_i // 2).astype(np.int64), steps, full_c, radii_c,
                              np.float32(_MIN_KEPT))
    ridge = _kernels()[0](*hp, edge, pad, steps, coef, halves, radii, scale, near_id, inv_f,
                          np.float32(_END_SHARE))
    # the frame's outermost grid pixels: one-sided differences, noise not as calibrated
    ridge[:_BORDER], ridge[-_BORDER:], ridge[:, :_BORDER], ridge[:, -_BORDER:] = 0, 0, 0, 0
    return ridge, blob, near, g


def _hysteresis(values: np.ndarray, low: float, seeds: np.ndarray, margin: int | None = None
                ) -> np.ndarray | tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Pixels above ``low`` connected (8-neighbours) to a seed pixel (boolean ``seeds``).

    With ``margin``, also the bounding boxes of its 8-connected pieces grown by ``margin``
    pixels (clipped to the frame), from the same labelling: neighbourhood operations near
    sparse pieces run on these boxes instead of the whole frame."""
    lab, n = ndi.label(values > low, structure=np.ones((3, 3)))
    keep = np.zeros(n + 1, dtype=bool)
    if n:
        keep[lab[seeds]] = True
        keep[0] = False
    if margin is None:
        return keep[lab] if n else np.zeros(values.shape, dtype=bool)
    if not n:
        return np.zeros(values.shape, dtype=bool), []
    # the pieces of the result are the kept pieces of the labelling; they are renumbered
    # 1..m before find_objects, whose cost grows with the highest label (the noise above
    # `low` makes tens of thousands of pieces in a 1024² frame: 70 ms vs 5 ms)
    ids = np.cumsum(keep, dtype=np.int32)
    ids[~keep] = 0
    kept = ids[lab]
    ny, nx = values.shape
    boxes = [(slice(max(a.start - margin, 0), min(a.stop + margin, ny)),
              slice(max(b.start - margin, 0), min(b.stop + margin, nx)))
             for a, b in ndi.find_objects(kept)]
    return kept > 0, boxes


def _junction_clusters(coords: np.ndarray, merge_px: float) -> np.ndarray:
    """Cluster index for each junction pixel (pixels within ``merge_px`` joined, transitively)."""
    n = len(coords)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    pairs = cKDTree(coords).query_pairs(max(merge_px, 1.5), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _skeleton_graph(skel: np.ndarray):
    """skan Skeleton of a boolean skeleton image (imported here: numba start-up is slow)."""
    from skan import Skeleton

    return Skeleton(skel, keep_images=False)


def _nodes_table(coords: np.ndarray, degrees: np.ndarray, fiber_ids: np.ndarray,
                 merge_px: float) -> pd.DataFrame:
    """Tips (degree 1) and branch points (junction clusters) of skeleton nodes."""
    tip = degrees == 1
    rows = [pd.DataFrame({"fiber_id": fiber_ids[tip], "y_px": coords[tip, 0].astype(float),
                          "x_px": coords[tip, 1].astype(float), "kind": "tip"})]
    junction = degrees >= 3
    if junction.any():
        jc = coords[junction].astype(float)
        jid = fiber_ids[junction]
        # never merge junctions of different fibers: place each fiber far from the others
        cl = _junction_clusters(np.column_stack([jc, jid * 1e7]), merge_px)
        df = pd.DataFrame({"c": cl, "fiber_id": jid, "y_px": jc[:, 0], "x_px": jc[:, 1]})
        agg = df.groupby("c", sort=True).agg(fiber_id=("fiber_id", "first"),
                                             y_px=("y_px", "mean"), x_px=("x_px", "mean"))
        agg["kind"] = "branch_point"
        rows.append(agg.reset_index(drop=True))
    out = pd.concat(rows, ignore_index=True)
    out = out.sort_values(["fiber_id", "kind", "y_px", "x_px"], kind="stable", ignore_index=True)
    return out.astype(FIBER_NODES)


def _node_counts(coords: np.ndarray, degrees: np.ndarray, fiber_ids: np.ndarray,
                 merge_px: float, n_fibers: int) -> tuple[np.ndarray, np.ndarray]:
    """Tips and branch points (junction clusters, as :func:`_nodes_table` makes them) per
    fiber ``1..n_fibers``, without building the table."""
    tip = degrees == 1
    n_tips = np.bincount(fiber_ids[tip], minlength=n_fibers + 1)[1:]
    junction = degrees >= 3
    n_branch = np.zeros(n_fibers, dtype=np.int64)
    if junction.any():
        jid = fiber_ids[junction]
        cl = _junction_clusters(np.column_stack([coords[junction].astype(float), jid * 1e7]),
                                merge_px)
        first = np.unique(cl, return_index=True)[1]  # a cluster lies within one fiber
        n_branch = np.bincount(jid[first], minlength=n_fibers + 1)[1:]
    return n_tips.astype(np.int64), n_branch.astype(np.int64)


def fiber_tips_and_junctions(fiber_labels: np.ndarray, *,
                             merge_distance_px: float = 1.5) -> pd.DataFrame:
    """Tips and branch points of labelled fiber skeletons.

    Parameters
    ----------
    fiber_labels
        ``(Y, X)`` int skeleton pixels labelled by fiber id (0 = none), as made by
        :func:`segment_fibers`.
    merge_distance_px
        Junction pixels (skeleton degree >= 3 in skan's graph, where each clump of adjacent
        junction pixels is already reduced to a tree) closer than this, in pixels, form one
        branch point.

    Returns
    -------
    DataFrame
        ``fiber_id, y_px, x_px, kind`` with ``kind`` ``"tip"`` (degree-1 pixel) or
        ``"branch_point"`` (centroid of a junction cluster).
    """
    fiber_labels = np.asarray(fiber_labels)
    if fiber_labels.ndim != 2:
        raise InputError(f"fiber labels must be (Y, X), got shape {fiber_labels.shape}.",
                         fix="pass one frame of fiber labels.")
    skel = fiber_labels > 0
    if skel.sum() < 2:
        return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in FIBER_NODES.items()})
    graph = _skeleton_graph(skel)
    coords = graph.coordinates
    ids = fiber_labels[coords[:, 0], coords[:, 1]].astype(np.int64)
    return _nodes_table(coords, graph.degrees, ids, merge_distance_px)


def _path_lengths_px(graph) -> np.ndarray:
    """Length of every skan path, in pixels, after a 5-point running mean of its coordinates.

    Summing 1 and sqrt(2) steps along a digital line overestimates its length by up to 8%
    (staircase); averaging the coordinates over 5 pixels first removes that bias for lines
    that are straight over a few pixels, as fibers are. End points are kept exact; all paths
    are processed at once on skan's concatenated path index arrays.
    """
    indptr, indices = graph.paths.indptr, graph.paths.indices
    if len(indices) == 0:
        return np.zeros(graph.n_paths)
    c = graph.coordinates[indices].astype(float)
    n = len(indices)
    seg = np.repeat(np.arange(graph.n_paths), np.diff(indptr))
    start, stop = indptr[:-1][seg], indptr[1:][seg] - 1  # first and last index of own path
    i = np.arange(n)
    lo, hi = np.maximum(i - 2, start), np.minimum(i + 2, stop)
    cum = np.vstack([np.zeros((1, 2)), np.cumsum(c, axis=0)])
    sm = (cum[hi + 1] - cum[lo]) / (hi - lo + 1)[:, None]
    ends = (i == start) | (i == stop)
    sm[ends] = c[ends]
    step = np.hypot(*np.diff(sm, axis=0).T)
    same = seg[1:] == seg[:-1]
    return np.bincount(seg[1:][same], weights=step[same], minlength=graph.n_paths)


def _opening(image: np.ndarray, size: int) -> np.ndarray:
    """Grey opening with a ``size`` square (edges replicated); 3 x 3 as shifted minima and
    maxima of slices (several times faster than ``ndimage`` for this small size)."""
    if size != 3:
        return ndi.grey_opening(image, size=(size, size), mode="nearest")

    def ext(a, fn, axis):
        p = np.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(2)], mode="edge")
        lo = [slice(None)] * 2
        mid, hi = list(lo), list(lo)
        lo[axis], mid[axis], hi[axis] = slice(0, -2), slice(1, -1), slice(2, None)
        out = fn(p[tuple(lo)], p[tuple(mid)])
        return fn(out, p[tuple(hi)], out=out)

    out = ext(ext(image, np.minimum, 0), np.minimum, 1)
    return ext(ext(out, np.maximum, 0), np.maximum, 1)


def fiber_mask(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
               config: FiberConfig, cell_labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Y, X)`` mask of line pixels (hysteresis), outside the cell bodies.

    Hysteresis runs on the ridge grid; compact objects cannot seed a fiber (a migrasome
    alone is no fiber) but those touching a fiber are filled in, so that the fiber graph runs
    through a migrasome instead of breaking at it. Pieces shorter than ``min_length_um``
    are dropped. The ridge measure inside the mask is interpolated back to the frame's
    pixels (bilinear) and cut at its half height across the line (or ``low_threshold`` if
    higher): the mask, and its skeleton, is centred on the line to within a fraction of a
    grid pixel.
    """
    return _fiber_mask(frame, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
                       config=config, cell_labels=cell_labels)[0]


def _fiber_mask(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
                config: FiberConfig, cell_labels: np.ndarray | None = None
                ) -> tuple[np.ndarray, list | None]:
    """:func:`fiber_mask` and the zones holding its pieces: a list of ``(box, zone)``
    (``zone`` a boolean array of the box's shape) such that every 8-connected piece of the
    mask lies inside one zone and zones are at least one grid pixel apart, or None (no
    grid: ``k == 1``)."""
    frame = np.asarray(_check_frame(frame), dtype=np.float32)
    if cell_labels is not None and np.shape(cell_labels) != frame.shape:
        raise InputError(f"cell labels shape {np.shape(cell_labels)} differs from the frame's "
                         f"{frame.shape}.", fix="pass cell labels of the same frame.")
    r, blob, near, _ = _ridge_fields(frame, pixel_size_um=pixel_size_um,
                                     psf_sigma_um=psf_sigma_um, config=config)
    k = _grid(pixel_size_um, psf_sigma_um, config)[0]
    cells_c = None
    if cell_labels is not None:
        # cells and their margin on the ridge grid (a grid pixel is cell if any of its
        # pixels is; the margin rounded to whole grid pixels)
        cells_c = block_any(np.asarray(cell_labels) > 0, k)
        m = int(round(config.cell_margin_um / (k * pixel_size_um)))
        if m > 0 and cells_c.any():
            cells_c = _dilate_square(cells_c, m)
        r[cells_c] = 0.0
        blob &= ~cells_c
    low = config.low_threshold
    # seeds beyond the along-line reach of compact objects (a bright migrasome's flanks
    # leak into the line filter); a fiber reaching one is grown into it and then through it
    # a pixel joins a fiber above low_threshold and above _LOCAL_SHARE of the strongest line
    # response within two grid pixels: noise streaks touching a bright fiber's flank (or a
    # bright migrasome's radial leaks) do not grow into it as side branches
    # (the test only matters inside the plain hysteresis result, a superset: it is evaluated
    # in boxes around its pieces, not over the whole frame)
    seeds = (r > config.high_threshold) & ~near
    out = np.zeros(frame.shape, dtype=bool)
    cand, boxes = _hysteresis(r, low, seeds, margin=2)
    if not boxes:
        return out, []
    member = np.zeros(r.shape, dtype=bool)
    for sl in boxes:
        rs = r[sl]
        member[sl] |= cand[sl] & (rs > np.maximum(ndi.maximum_filter(rs, size=5, mode="nearest")
                                                  * np.float32(_LOCAL_SHARE), low))
    mask = _hysteresis(np.where(member, r, np.float32(0)), low, seeds)
    if not mask.any():
        return out, []
    # close one-pixel gaps and holes (they would become loops in the skeleton)
    mask |= _close_square(mask)
    blab, nb = ndi.label(blob, structure=np.ones((3, 3)))
    filled = np.zeros(mask.shape, dtype=bool)
    if nb:
        touch = np.zeros(nb + 1, dtype=bool)
        touch[blab[mask]] = True
        touch[0] = False
        filled = touch[blab]
        mask |= filled
    # pieces too small to hold a fiber of the minimum length; and pieces shorter than
    # _NOISE_LENGTHS along-line sigmas (the filter's noise is correlated over about that
    # length, so such a piece is one noise sample) unless their peak is _SHORT_PEAK times
    # the seed threshold (a false-alarm rate for one sample, not for a whole line)
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    big = sizes >= max(2.0, config.min_length_um / (k * pixel_size_um))
    big[0] = False
    if n:
        along = _grid(pixel_size_um, psf_sigma_um, config)[2]
        extent = np.zeros(n + 1)
        objects = ndi.find_objects(lab)
        for i, sl in enumerate(objects, start=1):
            extent[i] = np.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        peak = np.zeros(n + 1, dtype=np.float32)
        on = lab > 0
        np.maximum.at(peak, lab[on], r[on])
        big &= (extent >= _NOISE_LENGTHS * along) | (peak >= _SHORT_PEAK * config.high_threshold)
    if not big[1:].any():
        return out, []
    zones = None
    if k == 1:
        out = big[lab]
    else:
        # the ridge's half height across the line (its local maximum over 3 x 3 grid
        # pixels) or low_threshold, whichever is higher, divides the interpolated ridge
        inside = np.where(big[lab] & ~filled, r, np.float32(0))
        half = np.maximum(_max3(inside) * np.float32(0.5), low)
        inside -= half
        inside[filled & big[lab]] = 1.0
        if cells_c is not None:  # interpolation then stops half a grid pixel from them
            inside[cells_c] = -1e6
        # interpolate only around the kept pieces (one grid pixel of margin)
        ny, nx = inside.shape
        boxes = np.zeros(inside.shape, dtype=bool)
        for i, sl in enumerate(objects, start=1):
            if sl is None or not big[i]:
                continue
            y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, ny)
            x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, nx)
            boxes[y0:y1, x0:x1] = True
            sub = upsample(inside[y0:y1, x0:x1], k, ((y1 - y0) * k, (x1 - x0) * k)) >= 0
            fy0, fx0 = y0 * k, x0 * k
            fy1, fx1 = min(y1 * k, frame.shape[0]), min(x1 * k, frame.shape[1])
            out[fy0:fy1, fx0:fx1] |= sub[: fy1 - fy0, : fx1 - fx0]
        # every mask pixel lies in one of these boxes: their 8-connected unions (on the
        # grid, so at least k pixels apart) are zones no piece of the mask crosses, found
        # without labelling the full-resolution mask
        zlab = ndi.label(boxes, structure=np.ones((3, 3)))[0]
        zones = []
        for i, sl in enumerate(ndi.find_objects(zlab), start=1):
            zone = np.repeat(np.repeat(zlab[sl] == i, k, axis=0), k, axis=1)
            fsl = tuple(slice(a.start * k, min(a.stop * k, m)) for a, m in zip(sl, frame.shape))
            zones.append((fsl, zone[: fsl[0].stop - fsl[0].start, : fsl[1].stop - fsl[1].start]))
    if cells_c is not None and k == 1:
        out &= ~cells_c
    return out, zones


def segment_fibers(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
                   config: FiberConfig, cell_labels: np.ndarray | None = None,
                   frame_index: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Segment retraction fibers in one frame and measure their skeleton graphs.

    Parameters
    ----------
    frame
        ``(Y, X)`` frame (raw or background-corrected; the ridge filter ignores smooth
        backgrounds).
    pixel_size_um, psf_sigma_um
        Pixel size and lateral PSF Gaussian sigma, µm.
    config
        :class:`FiberConfig`.
    cell_labels
        ``(Y, X)`` int cell labels of the same frame (0 = background). Fibers are taken
        outside them (minus ``cell_margin_um``) and attached to the nearest cell within
        ``attach_distance_um``.
    frame_index
        Written to the ``frame`` column.

    Returns
    -------
    fiber_labels
        int32 ``(Y, X)``: skeleton pixels labelled by fiber id ``1..n``.
    table
        One row per fiber: ``frame, fiber_id, cell_id (-1: not attached), length_um
        (skeleton length, µm), n_tips (degree-1 ends), n_branch_points (junction clusters:
        junction pixels closer than ``junction_merge_um`` count once)``. Side branches
        (tip to junction) shorter than ``min_length_um`` are removed first (once, not
        recursively), then fibers shorter than ``min_length_um``.
    """
    frame = _check_frame(frame)
    pixel_size_um = _check_pixel_size(pixel_size_um)
    if not (np.isfinite(psf_sigma_um) and psf_sigma_um > 0):
        raise ConfigError(f"PSF sigma {psf_sigma_um!r} µm is not a positive number.",
                          fix="set optics.psf_sigma_um or the wavelength and NA.")
    mask, zones = _fiber_mask(frame, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
                              config=config, cell_labels=cell_labels)
    labels = np.zeros(frame.shape, dtype=np.int32)
    min_len_px = config.min_length_um / pixel_size_um
    if mask.sum() < 2:
        return labels, empty_fiber_table()
    # thinning is local: each 8-connected piece (or zone of pieces) is thinned in its own box
    skel = np.zeros(mask.shape, dtype=bool)
    if zones is None:
        plab = ndi.label(mask, structure=np.ones((3, 3)))[0]
        zones = [(sl, plab[sl] == i) for i, sl in enumerate(ndi.find_objects(plab), start=1)]
    for sl, zone in zones:
        skel[sl] |= skeletonize(mask[sl] & zone)
    if skel.sum() < 2:
        return labels, empty_fiber_table()
    graph = _skeleton_graph(skel)  # skan: once per frame (its cost grows with the pixels)
    coords = graph.coordinates
    deg0 = graph.degrees.astype(np.int64)  # as skan found them
    deg = deg0.copy()  # after spur pruning
    lengths = _path_lengths_px(graph)
    indptr, indices = graph.paths.indptr, graph.paths.indices
    src, dst = indices[indptr[:-1]], indices[indptr[1:] - 1]
    # spur pruning on the graph: drop tip-to-junction paths shorter than min_length
    removed_node = np.zeros(len(coords), dtype=bool)
    removed_path = np.zeros(graph.n_paths, dtype=bool)
    spur = (((deg0[src] == 1) & (deg0[dst] >= 3)) | ((deg0[dst] == 1) & (deg0[src] >= 3)))
    spur &= lengths < min_len_px
    for i in np.flatnonzero(spur):
        nodes = indices[indptr[i]:indptr[i + 1]]
        junction = nodes[0] if deg0[nodes[0]] >= 3 else nodes[-1]
        removed_node[nodes[nodes != junction]] = True
        removed_path[i] = True
        deg[junction] -= 1
    comp = connected_components(graph.graph, directed=False)[1]
    n_comp = comp.max() + 1
    comp_len = np.bincount(comp[src[~removed_path]], weights=lengths[~removed_path],
                           minlength=n_comp)
    keep = comp_len >= max(min_len_px, 1e-9)
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return labels, empty_fiber_table()
    new_id = np.zeros(n_comp, dtype=np.int64)
    new_id[kept] = np.arange(1, kept.size + 1)
    sel = ~removed_node & keep[comp]
    fid_node = new_id[comp[sel]]
    labels[coords[sel, 0], coords[sel, 1]] = fid_node
    n_tips, n_branch = _node_counts(coords[sel], deg[sel], fid_node,
                                    config.junction_merge_um / pixel_size_um, kept.size)
    fid = np.arange(1, kept.size + 1)
    cell_id = np.full(kept.size, -1, dtype=np.int64)
    if cell_labels is not None:
        cell_id = _attach(coords[sel], fid_node, np.asarray(cell_labels), kept.size,
                          config.attach_distance_um / pixel_size_um)
    table = pd.DataFrame({
        "frame": np.full(kept.size, frame_index, dtype=np.int64),
        "fiber_id": fid.astype(np.int64),
        "cell_id": cell_id,
        "length_um": comp_len[kept] * pixel_size_um,
        "n_tips": n_tips,
        "n_branch_points": n_branch,
    })
    return labels, table  # every column built with its FIBER_TABLE dtype


def _attach(coords: np.ndarray, fiber_ids: np.ndarray, cell_labels: np.ndarray,
            n_fibers: int, radius_px: float) -> np.ndarray:
    """Cell id nearest to each fiber (any of its skeleton pixels ``coords``, labelled
    ``fiber_ids``) within ``radius_px``, else -1."""
    out = np.full(n_fibers, -1, dtype=np.int64)
    if len(coords) == 0:
        return out
    # only the cells' boundary pixels near the fibers matter: search the fibers' bounding
    # box grown by the radius (the whole frame's boundary would cost a full-frame scan)
    m = int(np.ceil(radius_px)) + 2
    y0, x0 = np.maximum(coords.min(axis=0) - m, 0)
    y1, x1 = coords.max(axis=0) + m + 1
    sub = cell_labels[y0:y1, x0:x1]
    cells = sub > 0
    if not cells.any():
        return out
    # cell pixels with a 4-neighbour outside the cells (beyond the box counts as cell: the
    # box's own border is farther than the radius from every fiber pixel)
    interior = np.pad(cells, 1, mode="edge")
    interior = (interior[1:-1, 1:-1] & interior[:-2, 1:-1] & interior[2:, 1:-1]
                & interior[1:-1, :-2] & interior[1:-1, 2:])
    ey, ex = np.nonzero(cells & ~interior)
    if ey.size == 0:
        return out
    fy, fx = coords[:, 0] - y0, coords[:, 1] - x0
    dist, idx = cKDTree(np.column_stack([ey, ex])).query(
        np.column_stack([fy, fx]), distance_upper_bound=radius_px + 1e-6)
    hit = np.isfinite(dist)
    if not hit.any():
        return out
    fib, dist = fiber_ids[hit], dist[hit]
    cell = sub[ey[idx[hit]], ex[idx[hit]]].astype(np.int64)
    order = np.lexsort((cell, dist, fib))  # per fiber: nearest, then smallest cell id
    fib, cell = fib[order], cell[order]
    first = np.r_[True, fib[1:] != fib[:-1]]
    out[fib[first] - 1] = cell[first]
    return out


def segment_fibers_stack(stack, *, pixel_size_um: float, psf_sigma_um: float,
                         config: FiberConfig, cell_labels=None, temporal_frames: int = 1
                         ) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`segment_fibers` over a ``(T, Y, X)`` stack, one dask task per frame.

    ``stack`` and ``cell_labels`` may be numpy or dask arrays; frames are read inside the
    tasks. Returns the int32 ``(T, Y, X)`` fiber labels and the concatenated table (computed;
    for movies too long to hold the labels in memory, call :func:`segment_fibers` per frame
    and write each result out).

    ``temporal_frames`` (odd; default 1: off): each frame is segmented on the mean of this
    many frames centred on it (fewer at the movie's ends), with its own cell labels.
    Retraction fibers are anchored to the dish, and most of their length stays within a
    pixel between frames a minute apart (about 80 % in the simulator), so the mean of n
    frames shows them with ``sqrt(n)`` times less noise: fibers ~1.7x fainter are found (the
    ridge measure's noise is estimated on the mean itself). What moves blurs: the stack must
    be drift-corrected, and with a membrane stain the bright rim of a migrating cell leaves
    ridges along its past outline (not for WGA-like markers).
    """
    import dask

    if getattr(stack, "ndim", 0) != 3:
        raise InputError(f"expected a (T, Y, X) stack, got shape {getattr(stack, 'shape', None)}.",
                         fix="select one channel and reduce Z first.")
    if int(temporal_frames) != temporal_frames or temporal_frames < 1 or temporal_frames % 2 == 0:
        raise ConfigError(f"temporal_frames must be an odd number >= 1, got {temporal_frames!r}.",
                          fix="use 1 (off), 3 or 5.")
    half = int(temporal_frames) // 2
    n_t = stack.shape[0]

    def one(frames, cl, t: int):
        frame = (np.mean([np.asarray(f, dtype=np.float32) for f in frames], axis=0)
                 if len(frames) > 1 else np.asarray(frames[0]))
        return segment_fibers(frame, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
                              config=config, cell_labels=None if cl is None else np.asarray(cl),
                              frame_index=t)

    tasks = [dask.delayed(one)([stack[u] for u in range(max(t - half, 0), min(t + half + 1, n_t))],
                               None if cell_labels is None else cell_labels[t], t)
             for t in range(n_t)]
    results = dask.compute(*tasks)
    if not results:
        return np.zeros((0,) + tuple(stack.shape[1:]), dtype=np.int32), empty_fiber_table()
    labels = np.stack([r[0] for r in results])
    tables = [r[1] for r in results if len(r[1])]
    table = pd.concat(tables, ignore_index=True) if tables else empty_fiber_table()
    return labels, table.astype(FIBER_TABLE)
