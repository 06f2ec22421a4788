"""Migrasome puncta: multi-scale detection, sub-pixel centre, diameter in µm, intensity.

Method (one frame)
------------------
1. **Noise.** Unless given, the noise sigma is estimated per 64 px block as the MAD of a
   4-neighbour high-pass (robust to sparse structures; follows Poisson noise that varies
   between background and cell bodies).
2. **Candidates.** A difference-of-Gaussians scale space (ratio sqrt(2) between scales) covers
   the blob sizes of migrasomes from ``min_diameter_um`` to ``max_diameter_um``; large scales
   are computed on a pyramid (downsampled by 2 once the blur allows it), so the cost is about
   that of a few full-size Gaussian filters. Candidates are scale-space maxima whose DoG
   response exceeds ``candidate_snr`` times the DoG's own noise (computed from the pixel noise
   and the kernels, so the threshold is a significance, not counts).
3. **Blob, not fiber.** Retraction fibers are sub-diffraction lines. Two tests on the shape of
   the peak (never on the distance to a fiber, since migrasomes sit on fibers):
   (a) the Hessian of the smoothed image at the detection scale must have two negative
   eigenvalues of similar size (``isotropy`` = small/large >= ``min_isotropy``; a line has ~0);
   (b) the "line excess": intensities add, so the share of the peak explained by straight
   fibers through the candidate is estimated from the fibers' crossings ("spokes") of a circle
   just outside the object; fiber interiors, tips and crossings explain their whole peak, a
   vesicle on a fiber does not (see :func:`migradetect._blobfit.line_excess`). Each spoke's
   line is placed from its crossings of two circles: a fiber that passes beside the
   candidate (a chord, in a dense web of fibers) adds little at its centre and explains
   only that (its height times the Gaussian of its distance from the centre). The share
   (``min_line_excess``) is not enough on bright fibers, where a 3-sigma noise bump is a large
   share of a small excess: the unexplained peak must also be significant, at least
   ``min_excess_snr`` noise sigmas of the smoothed image (pixel noise times the kernel's L2
   norm). Circle samples beyond the image border hold no data (sampling repeats the edge
   pixel, often the candidate's own light, which looked like a fiber): they take part in no
   spoke and no base.
4. **Centre and diameter.** The centre is refined by a Gaussian-weighted centroid on the frame;
   the diameter comes from a least-squares fit of a thin spherical shell convolved with the
   Gaussian PSF to the candidate's azimuthal median profile (see :mod:`migradetect._blobfit`):
   right for PSF-limited puncta and for large limb-brightened rings alike.
5. **Inside cells.** With ``reject_inside_cells``, puncta inside a cell body are dropped
   unless resolved (``inside_cell_min_diameter_um``: intracellular vesicles are mostly
   sub-resolution) AND fitted well by the vesicle model (``inside_cell_min_fit_r2``): the cell
   body's own smooth micrometre-scale humps are found by the scale space at large scales but
   have no vesicle edge, so the shell model explains little of their profile. A punctum
   on the cell's outline (within :data:`RIM_REACH_PSF` PSF sigmas of the label) counts as
   inside: the membrane rim, blurred over the outline, bends and meets the fibers' roots
   there, and those bright points are no vesicles (with WGA the largest class of false
   detections on the tuning seeds).
6. **Duplicates.** Candidates are taken from large to small fitted radius; a candidate whose
   centre lies inside an accepted object's disk is dropped (a ring gives one detection),
   while two touching vesicles, each centre outside the other, are both kept. A large
   candidate that would suppress two separate smaller ones (elongated for a pair, round
   for a cluster of three or more touching vesicles) is tested as the pair seen as one
   blob: the shell models of the two (two amplitudes + offset) and of the
   large one (amplitude + offset) are fitted to the pixels around it; when the two explain
   them better it is dropped for them. A ring-like migrasome whose rim gave the smaller
   candidates is one shell; two small blobs on its rim explain only part of it (the one
   shell gets its best of nearby centres and radii, as the two were each fitted on their
   own). A large blob over a cluster of much smaller vesicles (below the pair's size floor
   of 0.3 of its radius) is tested the same way with its distinct members fitted together
   (up to :data:`migradetect._blobfit.MAX_CLUSTER_PARTS`, strongest first; one amplitude
   each + offset) against the one shell.
7. **Rim pieces.** A large thin shell breaks, in noise, into bright arcs that the scale space
   finds as small blobs; when the ring's own candidate is lost (anisotropic at its centre,
   or its centroid pulled to one arc), two arcs were accepted as two vesicles. Two accepted
   objects that lie on one ring (the circle through them bright along most of its length,
   both on its fitted rim, each smaller than it) are replaced by that ring when the one
   shell explains the pixels better than the two (other objects nearby take part in both
   models). Two tangent vesicles are two filled disks that no ring through their centres
   explains, and stay two.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from migradetect import schema
from migradetect._blobfit import (
    N_RADII,
    bilinear,
    fit_profiles,
    line_excess,
    median_last,
    one_shell_fits_better,
    sample_polar,
    select_objects,
    shells_fit_better,
    two_shells_fit_better,
    weighted_centroid,
)
from migradetect._scalespace import candidates as _candidates
from migradetect._scalespace import gauss_norm as _gauss_norm
from migradetect._scalespace import scale_space as _scale_space
from migradetect.errors import InputError
from migradetect.params import param

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrasomeConfig:
    """Parameters of :func:`detect_migrasomes`."""

    min_diameter_um: float = param(0.4, unit="um", min=0.05, max=10.0,
                                   help="smallest migrasome diameter searched for")
    max_diameter_um: float = param(3.5, unit="um", min=0.1, max=20.0,
                                   help="largest migrasome diameter; larger objects are dropped")
    threshold_snr: float = param(2.0, min=0.0,
                                 help="fitted peak above local background, in noise sigmas")
    candidate_snr: float = param(5.0, min=0.0,
                                 help="scale-space (DoG) response in units of its own noise sigma")
    min_isotropy: float = param(0.4, min=0.0, max=1.0,
                                help="smaller/larger Hessian eigenvalue at the detection scale "
                                     "(1: round blob, 0: line)")
    min_line_excess: float = param(0.3, min=0.0, max=1.0,
                                   help="share of the peak not explained by fibers through it")
    min_excess_snr: float = param(
        5.0, min=0.0,
        help="the peak not explained by fibers through it, in noise sigmas of the smoothed "
             "image at the detection scale: a noise bump on a bright fiber has a large share "
             "but no significance")
    score_snr_scale: float = param(5.0, min=0.1,
                                   help="SNR at which the score's SNR term reaches 1 - 1/e")
    reject_inside_cells: bool = param(True, help="drop puncta inside cell bodies (vesicles)")
    inside_cell_min_diameter_um: float = param(
        0.5, unit="um", min=0.0, max=20.0,
        help="with reject_inside_cells, puncta inside a cell body are kept when at least this "
             "large: intracellular vesicles are mostly sub-resolution (< 0.5 um), a migrasome "
             "the cell has moved over is resolved (migrasomes are 0.5-3 um)")
    inside_cell_min_fit_r2: float = param(
        0.7, min=0.0, max=1.0,
        help="with reject_inside_cells, a resolved punctum inside a cell body is kept only when "
             "the vesicle (shell) model explains at least this share of its radial profile: "
             "the cell body's own smooth micrometre-scale humps do not have a vesicle's edge")

    def __post_init__(self) -> None:
        if self.max_diameter_um <= self.min_diameter_um:
            raise ValueError("max_diameter_um must be larger than min_diameter_um")


_SQRT2 = math.sqrt(2.0)
#: A ring made of two accepted objects must be seen on its own: the median over angles of
#: the circle through them, above their background, at least this share of the fainter
#: one's peak (one membrane, one dye density: a rim piece is a noise-raised stretch of the
#: rim, not many times brighter than the rest of it; two separate vesicles leave the rest
#: of the circle dark). Tuning seeds: 0.3 and 0.5 give the same F1.
RIM_SHARE = 0.3
_NOISE_BLOCK = 64
#: The cell's outline reaches this many PSF sigmas (plus half a pixel) beyond its label: a
#: cell's membrane rim (bright with membrane stains like WGA) is blurred by the PSF over the
#: outline, and the fibers' roots meet it there. Puncta on it are treated as inside the cell
#: (kept only when resolved and vesicle-shaped): its bends and fiber roots are no vesicles.
#: Tuning seeds: 2 and 4 give the same F1 (WGA medium sparse 0.858 -> 0.886).
RIM_REACH_PSF = 2.0
#: Diagnostics only (benchmarks/bench_detection.py --diagnose): when a dict, each call of
#: :func:`detect_migrasomes` stores its intermediate arrays there (candidates, the stage
#: each was dropped at). Not thread-safe; None (the default) costs nothing.
TRACE: dict | None = None


# ----------------------------------------------------------------------------- helpers


def _check_frame(frame: Any) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim != 2:
        raise InputError(f"detect_migrasomes needs a 2-D (Y, X) frame, got shape {a.shape}.",
                         fix="pass one frame of one channel (movie.frames(channel)[t]).",
                         stage="detect")
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise InputError(f"frame of shape {a.shape} is too small to search for migrasomes.",
                         fix="use frames of at least 8 x 8 pixels.", stage="detect")
    return a.astype(np.float32, copy=False)


def noise_map(frame: np.ndarray, *, block: int = _NOISE_BLOCK) -> np.ndarray:
    """Per-block pixel noise sigma (counts) from the MAD of a 4-neighbour high-pass.

    The high-pass ``f - mean(4 neighbours)`` of white noise has variance 1.25 sigma^2; sparse
    structures barely move its median absolute value. Returns an array of shape
    ``(ceil(Y/block), ceil(X/block))``; a block's value applies to its pixels.
    """
    f = np.asarray(frame, dtype=np.float32)
    # on every other pixel only: 4x cheaper, still ~1000 samples per block
    h = f[:-2:2, 1:-1:2] + f[2::2, 1:-1:2]  # in place: no further temporaries
    h += f[1:-1:2, :-2:2]
    h += f[1:-1:2, 2::2]
    h *= np.float32(-0.25)
    h += f[1:-1:2, 1:-1:2]
    np.abs(h, out=h)
    hb = max(block // 2, 1)
    ny, nx = -(-f.shape[0] // block), -(-f.shape[1] // block)
    if h.size == 0:
        out = np.full((ny, nx), np.nan)
    else:
        # blocks as one (ny, nx, hb*hb) array: the ragged last row/column of blocks is
        # completed by mirroring (it repeats a pixel row or two; the median barely moves)
        hp = np.pad(h, ((0, ny * hb - h.shape[0]), (0, nx * hb - h.shape[1])), mode="symmetric")
        blocks = hp.reshape(ny, hb, nx, hb).transpose(0, 2, 1, 3).reshape(ny, nx, hb * hb)
        if np.isfinite(h).all():  # a sort per block: several times faster than np.median
            out = median_last(blocks).astype(np.float64)
        else:
            out = np.median(blocks, axis=2).astype(np.float64)
    if np.isnan(out).any():
        out[np.isnan(out)] = np.nanmedian(out)
    out *= 1.4826 / math.sqrt(1.25)
    floor = max(float(np.median(out)) * 0.05, 1e-6)  # all-flat blocks (saturated, padded)
    return np.maximum(out, floor)


def _lookup(values: Any, y: np.ndarray, x: np.ndarray, shape: tuple[int, int],
            block: int) -> np.ndarray:
    """Value of a scalar, a full (Y, X) map or a block map at pixel positions."""
    if np.ndim(values) == 0:
        return np.full(len(y), float(values))
    arr = np.asarray(values)
    iy = np.clip(np.rint(y).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(np.rint(x).astype(np.int64), 0, shape[1] - 1)
    if arr.shape == shape:
        return arr[iy, ix].astype(np.float64)
    return arr[np.minimum(iy // block, arr.shape[0] - 1), np.minimum(ix // block, arr.shape[1] - 1)]


def _scales(pixel_size_um: float, psf_sigma_um: float, config: MigrasomeConfig) -> np.ndarray:
    """Gaussian blurs (full-res px) of the scale space: DoG j sits at ~sigma_j * 2**0.25."""
    def blob_sigma(d_um: float) -> float:  # std of a shell of diameter d seen through the PSF
        return math.sqrt((d_um / 2) ** 2 / 3 + psf_sigma_um**2) / pixel_size_um

    s_lo = max(blob_sigma(config.min_diameter_um) / _SQRT2**0.5, 0.6)
    s_hi = blob_sigma(config.max_diameter_um)
    n = max(int(math.ceil(math.log(s_hi / s_lo) / math.log(_SQRT2))) + 1, 2)
    return s_lo * _SQRT2 ** np.arange(n + 1)


# ----------------------------------------------------------------------------- public API


def detect_migrasomes(
    frame: np.ndarray,
    *,
    pixel_size_um: float,
    psf_sigma_um: float,
    config: MigrasomeConfig,
    cell_labels: np.ndarray | None = None,
    frame_index: int = 0,
    background: float | np.ndarray | None = None,
    noise_sigma: float | np.ndarray | None = None,
) -> pd.DataFrame:
    """Detect migrasomes in one frame.

    Parameters
    ----------
    frame
        (Y, X) image, camera counts (any real dtype; not modified, not rescaled).
    pixel_size_um
        Pixel size (µm).
    psf_sigma_um
        Gaussian sigma of the lateral PSF (µm).
    config
        Detection parameters.
    cell_labels
        (Y, X) cell body labels (> 0 inside a cell); sets ``inside_cell`` and, with
        ``config.reject_inside_cells``, drops those puncta.
    frame_index
        Value of the ``frame`` column.
    background
        Smooth background (counts; scalar or (Y, X)) to subtract first; ``None``: the local
        background comes from each object's profile fit only.
    noise_sigma
        Pixel noise sigma (counts; scalar or (Y, X)); ``None``: estimated per 64 px block.

    Returns
    -------
    DataFrame
        :data:`migradetect.schema.DETECTIONS`. ``background`` is the local level under the
        object (given background + fitted offset of the radial profile, counts);
        ``intensity_integrated`` is the sum of ``frame - background`` over the pixels whose
        centre lies within ``diameter_um / 2 + 2 psf_sigma_um`` of the centre (the object's
        disk dilated by two PSF sigmas), ``intensity_mean`` its mean over those pixels;
        ``peak_snr`` is the fitted model peak above background over the local noise sigma;
        ``score`` = ``(1 - exp(-peak_snr / score_snr_scale)) * line_excess * sqrt(isotropy)``,
        in [0, 1] and increasing with each term.
    """
    img = _check_frame(frame)
    if not (pixel_size_um > 0 and psf_sigma_um > 0):
        raise InputError(f"pixel_size_um={pixel_size_um} and psf_sigma_um={psf_sigma_um} must be > 0.",
                         fix="check the movie calibration and the optics section of the preset.",
                         stage="detect")
    if cell_labels is not None and np.shape(cell_labels) != img.shape:
        raise InputError(f"cell_labels shape {np.shape(cell_labels)} differs from the frame's {img.shape}.",
                         fix="pass the cell labels of the same frame.", stage="detect")
    shape = img.shape
    if background is not None:
        img = img - np.asarray(background, dtype=np.float32)
    if noise_sigma is None:
        noise: Any = noise_map(img)
    else:
        noise = np.asarray(noise_sigma, dtype=np.float64)
    noise_min = float(np.min(noise)) if np.size(noise) else 1.0
    if not np.isfinite(noise_min) or noise_min <= 0:
        noise_min = max(float(np.nanmax(noise)) if np.size(noise) else 0.0, 1e-6)

    sigmas = _scales(pixel_size_um, psf_sigma_um, config)
    levels = _scale_space(img, sigmas)
    cand = _candidates(levels, noise_min, config.candidate_snr)
    dlev = cand.pop("_dlev")
    n0 = len(cand["y"])
    nz = _lookup(noise, cand["y"], cand["x"], shape, _NOISE_BLOCK)
    keep = (cand["resp"] >= config.candidate_snr * nz) & (cand["iso"] >= config.min_isotropy)
    trace = TRACE
    if trace is not None:
        trace.clear()
        trace["raw"] = {k: v.copy() for k, v in cand.items()} | {"nz": nz.copy(),
                                                                  "keep": keep.copy()}
    cand = {k: v[keep] for k, v in cand.items()}
    nz = nz[keep]
    n = len(cand["y"])
    logger.debug("frame %d: %d scale-space maxima, %d blob-like", frame_index, n0, n)
    if n == 0:
        return schema.empty(schema.DETECTIONS)

    psf_px = math.sqrt((psf_sigma_um / pixel_size_um) ** 2 + 1.0 / 12.0)
    det_sigma = np.array([math.sqrt(lv.sigma * levels[i].sigma) for i, lv in enumerate(dlev)])
    s_det = det_sigma[cand["j"]]  # blob sigma of the detection scale (full-res px)
    r_guess = np.sqrt(3.0 * np.maximum(s_det**2 - psf_px**2, 0.0))
    r_win = 1.6 * r_guess + 4.0 * psf_px + 2.0
    r_table = float(1.6 * math.sqrt(3.0) * det_sigma.max() + 4.0 * psf_px + 3.0)
    frac = np.linspace(0.0, 1.0, N_RADII)
    radii = r_win[:, None] * frac[None, :]

    # local baseline at the initial centre, then the centre, then the profile fit
    r_out = radii[:, -N_RADII // 4:]  # the baseline needs the outer quarter only
    base0 = median_last(median_last(sample_polar(img, cand["y"], cand["x"], r_out)))
    cy, cx = weighted_centroid(img, cand["y"], cand["x"], np.maximum(s_det, psf_px), base0)
    prof = median_last(sample_polar(img, cy, cx, radii))
    weights = np.minimum(1.0 + 2 * np.pi * radii, 32.0)
    fit = fit_profiles(prof, radii, weights, psf_px, r_table)
    radius = fit["radius_px"]

    # the cheap tests first: the line excess is measured only where they pass
    peak_snr = fit["peak"] / nz
    max_r = config.max_diameter_um / 2 / pixel_size_um
    ok = ((peak_snr >= config.threshold_snr) & (fit["amplitude"] > 0)
          & (radius <= 1.15 * max_r)
          & (cy >= 0) & (cx >= 0) & (cy <= shape[0] - 1) & (cx <= shape[1] - 1))

    # line excess on the smoothed image of the detection scale
    excess = np.zeros(n)
    resid_sig = np.zeros(n)  # unexplained peak / noise of the smoothed image
    pairs = _neighbour_pairs(cy, cx, radius, psf_px)  # all candidates can be neighbours
    for jj in np.unique(cand["j"][ok]):
        sel = np.flatnonzero(ok & (cand["j"] == jj))
        lev = dlev[jj]
        width = math.sqrt(lev.sigma**2 + psf_px**2)
        rc = radius[sel] + 3.0 * width
        ly, lx = (cy[sel] - lev.o) / lev.f, (cx[sel] - lev.o) / lev.f
        ring_radii = np.stack([rc, rc + 2.0 * width], axis=1) / lev.f
        rings = sample_polar(lev.g, ly, lx, ring_radii)
        explained = _explained_by_neighbours(sel, cy, cx, radius, rc, pairs, 2.5 * width,
                                             rings.shape[2])
        # beyond the image border there is no data: a sample there repeats the edge pixel
        # (often the candidate's own light, seen as a bright spoke); it joins no spoke and
        # no base, as a neighbour's samples do
        explained |= _outside_circles(ly, lx, ring_radii, lev.g.shape, rings.shape[2])
        # a fiber crosses both circles in (about) the same direction, a neighbouring vesicle
        # only the inner one: keep what is on both
        outer = rings[:, 1, :]
        outer = np.maximum(np.maximum(outer, np.roll(outer, 1, axis=1)), np.roll(outer, -1, axis=1))
        circle = np.minimum(rings[:, 0, :], outer)
        centre = bilinear(lev.g, ly, lx)
        g_noise = nz[sel] * _gauss_norm(lev.sigma)  # ||g_sigma||_2 times pixel noise
        # a fiber's spoke is ~2.4 widths (FWHM) wide; allow 2x for angle and noise
        spacing = 2 * np.pi * rc / circle.shape[1]
        excess[sel], resid = line_excess(
            circle, centre, g_noise, 2 * 2.4 * width / spacing + 1, explained=explained,
            return_residual=True,
            rings=(rings[:, 0, :], rings[:, 1, :], rc, rc + 2.0 * width, np.full(len(sel), width)))
        resid_sig[sel] = resid / g_noise
    if trace is not None:
        trace.update(cy=cy.copy(), cx=cx.copy(), radius=radius.copy(), peak_snr=peak_snr.copy(),
                     r2=fit["r2"].copy(),
                     fit_ok=ok.copy(), excess=excess.copy(), resid_sig=resid_sig.copy())
    ok &= (excess >= config.min_line_excess) & (resid_sig >= config.min_excess_snr)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return schema.empty(schema.DETECTIONS)

    ci, xi, ri = cy[idx], cx[idx], radius[idx]

    one_shell: dict = {}  # each candidate's best one-shell residual, shared by its pair tests

    def pair_test(i: int, a: int, b: int) -> bool:
        return two_shells_fit_better(img, (ci[i], xi[i], ri[i]), (ci[a], xi[a], ri[a]),
                                     (ci[b], xi[b], ri[b]), psf_px, r_table, cache=one_shell)

    def group_test(i: int, members: np.ndarray) -> bool:
        return shells_fit_better(img, (ci[i], xi[i], ri[i]),
                                 tuple(zip(ci[members], xi[members], ri[members])),
                                 psf_px, r_table, cache=one_shell)

    sel = idx[select_objects(ci, xi, ri, peak_snr[idx], cand["iso"][idx], psf_px,
                              pair_test=pair_test, group_test=group_test)]
    if trace is not None:
        trace["line_ok"] = idx.copy()
        trace["selected"] = sel.copy()
    sel = _merge_rim_pieces(img, sel, cy, cx, radius, fit, peak_snr, nz, psf_px, r_table,
                            1.15 * max_r, config.threshold_snr)
    if trace is not None:
        trace["rim_merged"] = sel.copy()
        trace["rim_cy"], trace["rim_cx"] = cy.copy(), cx.copy()

    cy, cx, radius = cy[sel], cx[sel], radius[sel]
    if cell_labels is not None:
        lab = np.asarray(cell_labels)
        inside = lab[np.clip(np.rint(cy).astype(int), 0, shape[0] - 1),
                     np.clip(np.rint(cx).astype(int), 0, shape[1] - 1)] > 0
        on_cell = inside | _on_outline(lab, cy, cx, RIM_REACH_PSF * psf_px + 0.5)
    else:
        inside = on_cell = np.zeros(len(sel), bool)
    diameter = 2.0 * radius * pixel_size_um
    if config.reject_inside_cells:
        resolved = ((diameter >= config.inside_cell_min_diameter_um)
                    & (fit["r2"][sel] >= config.inside_cell_min_fit_r2))
        kept = ~on_cell | resolved
        sel, cy, cx, radius = sel[kept], cy[kept], cx[kept], radius[kept]
        diameter, inside = diameter[kept], inside[kept]
    order = np.lexsort((cx, cy))  # by y, then x (stable)
    sel, cy, cx, radius = sel[order], cy[order], cx[order], radius[order]
    diameter, inside = diameter[order], inside[order]
    bg_fit = fit["offset"][sel]
    bg_given = _lookup(background, cy, cx, shape, 1) if background is not None else 0.0
    integ, mean = _disk_sums(img, cy, cx, radius + 2.0 * psf_sigma_um / pixel_size_um, bg_fit)
    snr_term = 1.0 - np.exp(-peak_snr[sel] / config.score_snr_scale)
    score = np.clip(snr_term * excess[sel] * np.sqrt(cand["iso"][sel]), 0.0, 1.0)
    cols = {
        "frame": np.full(len(sel), int(frame_index), dtype=np.int64),
        "y_px": cy, "x_px": cx, "diameter_um": diameter,
        "intensity_mean": mean, "intensity_integrated": integ,
        "background": bg_fit + bg_given,
        "score": score, "peak_snr": peak_snr[sel], "inside_cell": inside,
    }
    if set(schema.DETECTIONS) <= set(cols):  # one DataFrame, already in the schema
        return pd.DataFrame({c: np.asarray(cols[c]).astype(d, copy=False)
                             for c, d in schema.DETECTIONS.items()})
    return schema.conform(pd.DataFrame(cols), schema.DETECTIONS)


def _merge_rim_pieces(img: np.ndarray, sel: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                      radius: np.ndarray, fit: dict, peak_snr: np.ndarray, nz: np.ndarray,
                      psf_px: float, r_table: float, max_r: float,
                      min_snr: float) -> np.ndarray:
    """Accepted objects that are pieces of one ring's rim, replaced by the ring.

    A large thin shell seen through a sharp PSF is a ring; in noise its rim breaks into
    bright arcs that the scale space finds as small blobs, and when the ring's own candidate
    is lost (its Hessian at the centre is anisotropic when the arcs are uneven, or its
    centroid is pulled to one arc) two or more arcs are accepted as separate vesicles.
    For each pair of accepted objects close enough to be on one ring (apart by at most the
    largest diameter), the ring they would form is centred at their midpoint and measured
    as any candidate is, by the shell fit of the azimuthal median profile there (a cheap
    look at the median of the circle through them comes first). When the ring is seen on
    its own (:data:`RIM_SHARE`), is larger than each, both objects lie on its rim (their
    centres within half their own radius plus 1.5 PSF sigmas of it) and the one shell
    (its best over centres +-1 px, radii +-15 %) explains the pixels better than the two
    (:func:`migradetect._blobfit.one_shell_fits_better`), the stronger is replaced by the
    ring (centre, radius, fit), and every accepted object whose centre then falls inside
    the ring's disk (the duplicate rule of :func:`select_objects`) is dropped. The arrays
    are updated in place at the replaced index. Vectorised over pairs up to the model test,
    which runs only where the geometry allows a ring.
    """
    from scipy.spatial import cKDTree

    if sel.size < 2:
        return sel
    pts = np.column_stack([cy[sel], cx[sel]])
    pr = cKDTree(pts).query_pairs(2.0 * max_r, output_type="ndarray")
    if len(pr) == 0:
        return sel
    a, b = sel[pr[:, 0]], sel[pr[:, 1]]
    d = np.hypot(cy[a] - cy[b], cx[a] - cx[b])
    # the ring's centre is taken at their midpoint (the profile fit and the model test then
    # judge it), so the ring's radius is about half their distance; each piece must be
    # smaller than that ring (see the gates below): a cheap test before any fit
    r_big = np.maximum(radius[a], radius[b])
    ok = ((r_big < 0.85 * (0.5 * d + 0.5 * r_big + 1.5 * psf_px))
          & (d >= max(1.5, 2.0 * psf_px)))
    a, b, d = a[ok], b[ok], d[ok]
    if a.size == 0:
        return sel
    ry, rx = 0.5 * (cy[a] + cy[b]), 0.5 * (cx[a] + cx[b])
    # cheap look first: the ring through them must be bright along most of its circle
    # (median over angles, at the radius of the pieces and just outside: arcs' centroids
    # lie a little inside the rim) above their local background; the same criterion as
    # the fit's gate below
    base = 0.5 * (fit["offset"][a] + fit["offset"][b])
    need = np.maximum(min_snr * 0.5 * (nz[a] + nz[b]),
                      RIM_SHARE * np.minimum(fit["peak"][a], fit["peak"][b]))
    circ = 0.5 * d[:, None] + psf_px * np.array([0.0, 0.7, 1.4])[None, :]
    seen = median_last(sample_polar(img, ry, rx, circ)).max(axis=1) - base >= need
    a, b, d, ry, rx, need = a[seen], b[seen], d[seen], ry[seen], rx[seen], need[seen]
    if a.size == 0:
        return sel
    # one profile window for all (one fit group: the fit's cost is mostly per group)
    r_win = min(float(np.max(0.8 * d)) + 4.0 * psf_px + 2.0, r_table)
    radii = np.broadcast_to(r_win * np.linspace(0.0, 1.0, N_RADII), (len(a), N_RADII))
    prof = median_last(sample_polar(img, ry, rx, radii))
    weights = np.minimum(1.0 + 2 * np.pi * radii, 32.0)
    ring = fit_profiles(prof, radii, weights, psf_px, r_table)
    rr = ring["radius_px"]
    # a piece of the rim is centred on it: an arc's centroid lies inside the ring by a
    # fraction of the arc's own size, plus the PSF's blur of the placement
    on_rim = np.ones(len(a), bool)
    for m in (a, b):
        on_rim &= (np.abs(np.hypot(cy[m] - ry, cx[m] - rx) - rr)
                   <= 0.5 * radius[m] + 1.5 * psf_px)
    # the ring must be seen as one on its own: the azimuthal MEDIAN profile holds it only
    # when most of the circle is bright (two separate vesicles cover two short arcs of the
    # circle through them; the median ignores them), with the significance any detection
    # needs; and each piece is smaller than the ring: a ring as large as one of the two is
    # that object itself, and the other its touching neighbour
    ok = (on_rim & (ring["amplitude"] > 0) & (rr <= max_r) & (ring["peak"] >= need)
          & (np.maximum(radius[a], radius[b]) < 0.85 * rr))
    alive = np.zeros(len(cy), bool)
    alive[sel] = True
    for q in np.flatnonzero(ok)[np.argsort(d[ok])]:  # closest pairs first
        i, k = int(a[q]), int(b[q])
        if not (alive[i] and alive[k]):
            continue
        # the other accepted objects reaching into the test window take part in both models
        others = np.flatnonzero(alive)
        others = others[(others != i) & (others != k)
                        & (np.hypot(cy[others] - ry[q], cx[others] - rx[q])
                           < rr[q] + radius[others] + 6.0 * psf_px)]
        if not one_shell_fits_better(img, (ry[q], rx[q], rr[q]), (cy[i], cx[i], radius[i]),
                                     (cy[k], cx[k], radius[k]), psf_px, r_table,
                                     others=tuple(zip(cy[others], cx[others], radius[others]))):
            continue
        keep, drop = (i, k) if peak_snr[i] >= peak_snr[k] else (k, i)
        cy[keep], cx[keep], radius[keep] = ry[q], rx[q], rr[q]
        for key in fit:
            fit[key][keep] = ring[key][q]
        peak_snr[keep] = ring["peak"][q] / nz[keep]
        alive[drop] = False
        others = np.flatnonzero(alive)
        dd = np.hypot(cy[others] - cy[keep], cx[others] - cx[keep])
        covered = dd < np.maximum(radius[keep] + 0.5 * radius[others] + psf_px,
                                  max(1.5, 2.0 * psf_px))
        alive[others[covered & (others != keep)]] = False
    return sel[alive[sel]]


def _neighbour_pairs(cy: np.ndarray, cx: np.ndarray, radius: np.ndarray,
                     psf_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, k) of candidates that are distinct objects close enough to touch.

    ``k`` is distinct from ``i`` when its centre lies outside ``i``'s disk by the same rule
    that :func:`select_objects` uses for duplicates (another scale of the same object is no
    neighbour), and close when the two disks plus a few PSF widths may overlap.
    """
    from scipy.spatial import cKDTree

    if len(cy) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pts = np.column_stack([cy, cx])
    reach = 2.0 * float(radius.max()) + 12.0 * psf_px + 12.0
    pr = cKDTree(pts).query_pairs(reach, output_type="ndarray")
    if len(pr) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i = np.concatenate([pr[:, 0], pr[:, 1]])
    k = np.concatenate([pr[:, 1], pr[:, 0]])
    d = np.hypot(cy[i] - cy[k], cx[i] - cx[k])
    distinct = d >= np.maximum(radius[i] + 0.5 * radius[k] + psf_px, max(1.5, 2.0 * psf_px))
    return i[distinct], k[distinct]


def _on_outline(labels: np.ndarray, cy: np.ndarray, cx: np.ndarray, reach: float) -> np.ndarray:
    """Whether a cell label lies within ``reach`` px of each centre (in 8 directions).

    Eight samples on a circle, not a dilation of the label image: a few hundred centres
    against a full-frame morphology.
    """
    out = np.zeros(len(cy), bool)
    for ang in np.arange(8) * (np.pi / 4):
        out |= _lookup(labels, cy + reach * np.sin(ang), cx + reach * np.cos(ang),
                       labels.shape, 1) > 0
    return out


def _outside_circles(cy: np.ndarray, cx: np.ndarray, radii: np.ndarray,
                     shape: tuple[int, int], n_angles: int) -> np.ndarray:
    """(n, n_angles) mask: the sample at that angle lies outside the image on any of the
    circles of ``radii`` (n, k) around (cy, cx) (the pixels' own extent, +-0.5 px, counts as
    inside). Same angles as :func:`migradetect._blobfit.sample_polar`."""
    ang = np.arange(n_angles) * (2 * np.pi / n_angles)
    ys = cy[:, None, None] + radii[:, :, None] * np.sin(ang)[None, None, :]
    xs = cx[:, None, None] + radii[:, :, None] * np.cos(ang)[None, None, :]
    out = (ys < -0.5) | (ys > shape[0] - 0.5) | (xs < -0.5) | (xs > shape[1] - 0.5)
    return out.any(axis=1)


def _explained_by_neighbours(sel: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                             radius: np.ndarray, rc: np.ndarray,
                             pairs: tuple[np.ndarray, np.ndarray], reach: float,
                             n_angles: int) -> np.ndarray:
    """(len(sel), n_angles) mask of circle samples that lie on a neighbouring candidate.

    A touching vesicle crosses the circle around a candidate like a fiber would; intensities
    add, and the neighbour's own disk (radius + ``reach`` px of blur) explains that bump, so
    it is not counted as a fiber through the candidate.
    """
    out = np.zeros((len(sel), n_angles), bool)
    pi, pk = pairs
    if pi.size == 0:
        return out
    pos = np.full(len(cy), -1, np.int64)
    pos[sel] = np.arange(len(sel))
    m = pos[pi] >= 0
    row, k = pos[pi[m]], pk[m]
    if row.size == 0:
        return out
    # only pairs whose neighbour disk can reach the circle (|d - rc| <= its radius + reach)
    i = sel[row]
    d = np.hypot(cy[i] - cy[k], cx[i] - cx[k])
    near = np.abs(d - rc[row]) <= radius[k] + reach
    row, k, i = row[near], k[near], i[near]
    if row.size == 0:
        return out
    ang = np.arange(n_angles) * (2 * np.pi / n_angles)
    sy = cy[i, None] + rc[row, None] * np.sin(ang)[None, :]
    sx = cx[i, None] + rc[row, None] * np.cos(ang)[None, :]
    hit = np.hypot(sy - cy[k, None], sx - cx[k, None]) <= (radius[k] + reach)[:, None]
    # scatter by plain assignment (repeated True writes are harmless; ufunc.at is slow)
    rr, aa = np.nonzero(hit)
    out[row[rr], aa] = True
    return out


def _disk_sums(img: np.ndarray, cy: np.ndarray, cx: np.ndarray, rad: np.ndarray,
               level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and mean of ``img - level`` over pixels whose centre is within ``rad`` (px).

    Vectorised over detections: one square patch per detection, in groups of equal patch
    size (a few groups), masked to the disk and to the image.
    """
    n = len(cy)
    integ = np.zeros(n)
    mean = np.zeros(n)
    if n == 0:
        return integ, mean
    ny, nx = img.shape
    r = np.maximum(np.asarray(rad, dtype=np.float64), 0.5)
    half_all = np.ceil(r).astype(np.int64) + 1
    for half in np.unique(half_all):
        sel = np.flatnonzero(half_all == half)
        off = np.arange(-half, half + 1)
        py = np.floor(cy[sel]).astype(np.int64)[:, None] + off  # (m, P)
        px = np.floor(cx[sel]).astype(np.int64)[:, None] + off
        dy2 = (py - cy[sel, None]) ** 2
        dx2 = (px - cx[sel, None]) ** 2
        m = ((dy2[:, :, None] + dx2[:, None, :]) <= (r[sel] ** 2)[:, None, None])
        m &= ((py >= 0) & (py < ny))[:, :, None] & ((px >= 0) & (px < nx))[:, None, :]
        v = img[np.clip(py, 0, ny - 1)[:, :, None], np.clip(px, 0, nx - 1)[:, None, :]]
        v = v.astype(np.float64) - level[sel, None, None]
        cnt = m.sum(axis=(1, 2))
        tot = np.where(m, v, 0.0).sum(axis=(1, 2))
        integ[sel] = tot
        mean[sel] = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
    return integ, mean


def render_labels(detections: pd.DataFrame, shape: tuple[int, int], pixel_size_um: float) -> np.ndarray:
    """Label image of detection disks (label = row position + 1), for ``labels.zarr``.

    Each detection is a disk of radius ``diameter_um / 2`` (at least one pixel) around
    ``(y_px, x_px)``; later rows are drawn over earlier ones where disks overlap.
    """
    from skimage.draw import disk

    out = np.zeros(tuple(int(s) for s in shape), dtype=np.int32)
    if len(detections) == 0:
        return out
    ys = detections["y_px"].to_numpy(float)
    xs = detections["x_px"].to_numpy(float)
    rs = np.nan_to_num(detections["diameter_um"].to_numpy(float), nan=0.0) / 2 / float(pixel_size_um)
    for i, (y, x, r) in enumerate(zip(ys, xs, rs)):
        rr, cc = disk((y, x), max(r, 1.0), shape=out.shape)
        out[rr, cc] = i + 1
    return out


def detect_stack(
    stack: Any,
    *,
    pixel_size_um: float,
    psf_sigma_um: float,
    config: MigrasomeConfig,
    cell_labels: Any = None,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """Detect migrasomes in every frame of a (T, Y, X) numpy or dask stack.

    One dask task per frame (``dask.delayed``), computed with ``scheduler`` (``None``: dask's
    default or the active distributed client); ``frame`` is the index along T.
    """
    import dask

    if np.ndim(stack) != 3:
        raise InputError(f"detect_stack needs a (T, Y, X) stack, got {np.ndim(stack)} dimensions.",
                         fix="select one channel: movie.frames(channel).", stage="detect")
    task = dask.delayed(detect_migrasomes, pure=True)
    tasks = [
        task(stack[t], pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um, config=config,
             cell_labels=None if cell_labels is None else cell_labels[t], frame_index=t)
        for t in range(stack.shape[0])
    ]
    if not tasks:
        return schema.empty(schema.DETECTIONS)
    tables = dask.compute(*tasks, scheduler=scheduler)
    tables = [t for t in tables if len(t)]
    if not tables:
        return schema.empty(schema.DETECTIONS)
    return schema.conform(pd.concat(tables, ignore_index=True), schema.DETECTIONS)
