"""Stage drift: masked frame registration on a pair graph, then refinement on anchored migrasomes.

Convention: the drift of frame ``t`` is ``(dy_px, dx_px)`` such that the image coordinate of
a fixed object at frame ``t`` is its frame-0 coordinate plus ``(dy, dx)``; frame 0 is 0.

Method
------
Stage drift moves everything that is fixed on the coverslip (retraction fibers, migrasomes,
debris) together, while migrating cells move on their own. Each frame is therefore reduced once
(:func:`prepare_frame`, what the per-frame pipeline task returns) to a small registration
product: the frame block-averaged to about 0.3 µm pixels, band-passed at the scale of fibers and
migrasomes (a Gaussian high-pass of ``highpass_um``, ~1.2 µm, removes the cell bodies' smooth
texture and the uneven background), normalised by its robust noise, and with the cells plus a
``cell_margin_um`` margin set to NaN (excluded): the cell mask's cells, and cell bodies it
missed (e.g. entering at the frame border; ``mask_unsegmented_cells``, found as extended bright
regions with a core wider than any migrasome cluster, :func:`_unmasked_bodies`). Products are
float16: a 1024² frame at 0.15 µm
pixels is 0.5 MiB, 200 MiB for 400 frames.

A pair of products is registered (:func:`register_prepared`) by masked normalised
cross-correlation (Padfield's, as skimage's ``cross_correlate_masked``, but evaluated only
up to ``max_jump_um``: :mod:`migradetect._ncc`): at a shift ``d`` a pixel ``x``
counts where ``prev`` is cell-free at ``x`` and ``cur`` at ``x + d``, so both frames' cells
are excluded in stage coordinates (the union of the masks, even across a sudden jump). The
peak search is limited to ``max_jump_um``; a Gaussian (log-parabola) fit of the 3x3 peak
neighbourhood gives the sub-pixel position (analytic: no image shifts). ``quality`` is the
correlation at the peak; a peak that does not stand ``min_significance`` noise units above 0
(noise of a correlation over ``n`` independent pixels: ``1 / sqrt(n)``) means the frames share
no fixed structure (e.g. early frames before any fiber exists) and the pair is not used.

The products are clipped at ``clip_noise`` noise units before correlation (bounded
influence: a few very bright migrasomes landing on other bright spots must not outweigh the
area of shared fibers). Whether a pair is used is one scale-free statistical test, the same
for bright and dim movies: the peak must stand ``min_peak_separation`` noise units of the
correlation surface itself (the robust spread of its values over the searched shifts) above
the best other peak farther than ~1 µm. A dim movie correlates weakly at its right shift but
also weakly everywhere else; sparse or repeated structure has a second peak nearly as high.

Each frame is registered to the frames 1, 2, 4, ... ``pair_gap`` before it, every pair by a
global search (up to ``max_jump_um``), while the products arrive (:class:`PairRegistrar`:
only the last ``pair_gap`` products are held, so memory does not grow with the movie).
:func:`drift_from_edges` first finds the drift that most pairs agree on (least absolute
deviations over the pair graph: a block of wrong pairs that agree with each other is outvoted
by the other pairs across the same frames, where a chain of short pairs would carry the error
to every later frame), drops the pairs far from it, and solves the rest by iteratively
reweighted least squares (Cauchy weights at ``consistency_px``; a fiducial pair weighs
``sqrt(support)``), with a weak smoothness prior (stage drift is smooth: second differences
near 0) that fills frames without any reliable pair: a smooth interpolation inside a gap, and
the velocity of the nearest reliable frames continued before the first / after the last one
(e.g. early frames before any fiber exists carry no drift information, frame 0 included: the
reference then follows from the drift's velocity, where holding it still was off by velocity
times gap). A pair that no other path of pairs confirms (a bridge of the pair graph,
e.g. the one pair left between early frames with only moving structure and the rest) cannot be
checked by the consensus and is not used (except in a plain chain, :func:`drift_from_pairs`).

Finally :func:`refine_drift` brings in the migrasome detections (static fiducials, seen also
on top of cells, where the image registration is masked): every pair of the same graph is
matched by displacement voting with a chance-coincidence (a-contrario) test
(:func:`fiducial_edges`), and the pair graph is solved again with these pairs, each voting
in the consensus with its number of agreeing migrasomes (crowded movies whose first frames
have all their fixed structure under cells, or only a moving cell edge outside the masks, get
their drift from the migrasomes); then the remaining random-walk error is removed with
anchored migrasomes (long tracks whose positions agree closely).

Public functions
----------------
``prepare_frame(frame, cell_mask=None, *, pixel_size_um, config=None) -> ndarray``
    The registration product of one frame (float16, NaN = excluded).
``register_prepared(prev, cur, *, pixel_size_um, config=None) -> (dy_px, dx_px, quality)``
    Shift of ``cur`` relative to ``prev`` (full-resolution px) from two products.
``PairRegistrar(n_frames, *, pixel_size_um, config=None)``
    ``add(t, product)``, ``register()``, ``edges()``: the pairs registered as products
    arrive, with bounded memory; ``register_products(products, ...)`` does it for a list.
``register_pair(prev, cur, prev_mask=None, cur_mask=None, *, pixel_size_um, config=None)
-> (dy_px, dx_px, quality)``
    The same from two raw frames and their cell masks (labels or booleans, > 0 = cell): a
    fixed object at ``p`` in ``prev`` is at ``p + (dy, dx)`` in ``cur``.
``drift_from_edges(edges, n_frames, *, config=None)
-> DataFrame[frame, dy_px, dx_px, quality, registered]``
    Cumulative drift from pair shifts ``(i, j, dy, dx, quality)`` (``j > i``); ``registered``
    is False for frames that no reliable pair reaches (their drift is a guess).
``drift_from_pairs(pair_shifts, *, config=None) -> DataFrame``
    The same for a chain: row ``k`` of ``pair_shifts`` is the pair ``(k, k+1)``.
``estimate_drift(frames, cell_masks=None, *, pixel_size_um, config=None) -> DataFrame``
    All of the above over a ``(T, Y, X)`` indexable, one frame read at a time.
``drift_at_frames(drift, frames) -> (dy, dx)``
    The drift table looked up (linearly interpolated; 0 when the table is None or empty) at
    any frames.
``fiducial_edges(detections, n_frames, *, pixel_size_um, config=None)
-> [(i, j, dy_px, dx_px, support), ...]``
    The pair shifts that the migrasome detections of two frames agree on (displacement
    voting, chance-coincidence test; see :func:`_point_pair_shift`).
``refine_drift(detections, drift, *, pixel_size_um, config=None, tracking_config=None,
pair_edges=None, fiducial_pairs=None)``
    Solves the pair graph again with the fiducial pairs added (image pairs: ``pair_edges``,
    the edges ``drift`` was solved from; not again when ``drift`` was solved with the
    ``fiducial_pairs`` already, as :func:`migradetect.across_time.estimate_drift` does),
    then removes the
    random-walk error of the pair solution with anchored migrasomes (static fiducials): the
    detections are linked in coarse-corrected coordinates (unless they carry
    ``track_id``); tracks of at least ``refine_min_track_frames`` whose corrected positions
    scatter less than ``refine_max_scatter_um`` are fiducials; each frame gets the median
    residual of its fiducials from their track medians (alternating a few times), relative to
    frame 0, and only where ``refine_min_objects`` fiducials agree within
    ``refine_max_scatter_um`` (two suffice in a frame that no reliable pair reaches,
    e.g. the first frames, where only a migrasome or two exist yet).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import spsolve
from skimage.transform import downscale_local_mean, resize

from migradetect._ncc import masked_ncc, masked_ncc_map_from_spectra, ncc_shape, ncc_spectra
from migradetect.errors import InputError
from migradetect.params import param
from migradetect.preprocess import _median, block_any, block_mean

log = logging.getLogger(__name__)

#: Target pixel size of the registration products (µm): fibers and migrasomes (>= 0.5 µm)
#: stay resolved, and the correlation works on 4x fewer pixels at 0.15 µm pixels.
PRODUCT_PIXEL_UM = 0.3


@dataclass(frozen=True)
class DriftConfig:
    """Parameters of stage-drift estimation."""

    enabled: bool = param(True, help="estimate and correct stage drift")
    max_jump_um: float = param(
        10.0, unit="um", min=0.0, max=1000.0,
        help="largest stage move between two frames that is searched for",
    )
    highpass_um: float = param(
        1.2, unit="um", min=0.1, max=200.0,
        help="Gaussian sigma of the background removed before registration (keeps fibers "
             "and migrasomes, removes cell bodies and uneven illumination)",
    )
    smoothing_um: float = param(
        0.15, unit="um", min=0.0, max=5.0, help="Gaussian sigma of the noise smoothing",
    )
    cell_margin_um: float = param(
        2.0, unit="um", min=0.0, max=50.0,
        help="cells are excluded from registration together with this margin (segmented "
             "masks miss thin lamellipodia)",
    )
    mask_unsegmented_cells: bool = param(
        True,
        help="also exclude extended bright regions with a core wider than any migrasome "
             "(cell bodies the cell mask missed, e.g. at the frame border: they move)",
    )
    min_significance: float = param(
        7.0, min=0.0, max=100.0,
        help="a correlation peak must stand this many noise units (1 / sqrt of the "
             "independent overlapping pixels) above 0, else the pair has no common structure",
    )
    min_peak_separation: float = param(
        4.0, min=0.0, max=100.0,
        help="a pair's correlation peak must stand this many noise units of the correlation "
             "surface (robust spread over the searched shifts) above the best other peak "
             "farther than ~1 um: else the frames share no unique fixed structure and the "
             "pair is not used (one rule for bright and dim movies)",
    )
    pair_gap: int = param(
        16, unit="frames", min=1, max=64,
        help="each frame is registered to the frames 1, 2, 4, ... up to this many before it "
             "(redundant pairs outvote a wrong one; long pairs stop the chain's bias adding up)",
    )
    long_pair_radius_um: float = param(
        0.5, unit="um", min=0.01, max=100.0,
        help="a registration given a guess of the shift (register_prepared(guess=...)) looks "
             "for its peak only this far from it",
    )
    clip_noise: float = param(
        8.0, min=0.5, max=6e4,
        help="product values are clipped at this many noise units before correlation, so a "
             "few bright spots (migrasomes) cannot dominate the match; structure counts by "
             "its area",
    )
    consistency_px: float = param(
        0.5, unit="px", min=0.01, max=100.0,
        help="scale of the disagreement between pairs above which a pair is down-weighted",
    )
    fiducial_tolerance_um: float = param(
        0.3, unit="um", min=0.01, max=10.0,
        help="detections of static migrasomes agree on a frame pair's shift within this "
             "distance (a few times the precision of their centres)",
    )
    fiducial_max_nfa: float = param(
        1e-3, min=0.0, max=1.0,
        help="a frame pair's shift from the migrasome detections is used when the number of "
             "agreeing detections would arise by chance (detections at random) less often "
             "than this",
    )
    refine: bool = param(True, help="refine the drift on anchored migrasomes")
    refine_min_track_frames: int = param(
        5, unit="frames", min=2, help="shortest migrasome track used as a fiducial",
    )
    refine_min_objects: int = param(
        3, min=1, help="fewest fiducials in a frame for its drift to be refined",
    )
    refine_max_scatter_um: float = param(
        0.15, unit="um", min=0.0, max=10.0,
        help="fiducial tracks (and a frame's fiducials) must agree within this spread",
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


def product_bin(pixel_size_um: float) -> int:
    """Block size (px) that brings ``pixel_size_um`` to about :data:`PRODUCT_PIXEL_UM`."""
    return max(1, int(PRODUCT_PIXEL_UM / float(pixel_size_um) + 1e-6))


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


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Mean of whole ``k`` x ``k`` blocks (a partial last row/column of blocks is dropped)."""
    if k == 1:
        return img
    ny, nx = img.shape[0] // k * k, img.shape[1] // k * k
    return block_mean(img[:ny, :nx], k)


def _block_any(mask: np.ndarray, k: int) -> np.ndarray:
    """True where any pixel of a whole ``k`` x ``k`` block is True (the grid of
    :func:`_block_mean`: a partial last row/column of blocks is dropped)."""
    ny, nx = mask.shape[0] // k * k, mask.shape[1] // k * k
    return block_any(mask[:ny, :nx], k)


def _grown(mask: np.ndarray, margin: float) -> np.ndarray:
    """``mask`` grown by every pixel within Euclidean distance ``margin`` of it.

    The distance transform runs in boxes around the mask's pieces (grown by the margin),
    not over the whole frame: a pixel within ``margin`` of a piece lies in that piece's
    box, so the union over the boxes is exact; cells cover a small part of most frames.
    """
    if not margin > 0:
        return mask.copy()
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    m = int(math.ceil(margin)) + 1
    ny, nx = mask.shape
    out = np.zeros_like(mask)
    for sl in ndi.find_objects(lab):
        box = (slice(max(sl[0].start - m, 0), min(sl[0].stop + m, ny)),
               slice(max(sl[1].start - m, 0), min(sl[1].stop + m, nx)))
        out[box] |= ndi.distance_transform_edt(~mask[box]) <= margin
    return out


#: Cell bodies that the given cell mask misses (e.g. a cell entering at the frame border) are
#: found in the frame itself: extended regions raised this many noise units above the local
#: background (after smoothing), with a core wider than any migrasome (see
#: :func:`_unmasked_bodies`).
BODY_SIGMAS = 5.0
#: Core radius (µm) a bright region needs to count as a cell body: migrasomes are <= 3 µm
#: across, but touching ones form bright clusters of several µm (static fiducials that must
#: stay); cells are 7-40 µm (a sliver of a cell at the border narrower than twice this is
#: missed). 2.5 µm masked such clusters on seeds 0-99 (wga crowded); 4 µm did not.
BODY_CORE_UM = 4.0
#: Gaussian sigma (µm) of the background the bodies are raised above (larger than the core,
#: smaller than the frame: frames narrower than four times this are not searched).
BODY_BACKGROUND_UM = 8.0


def _unmasked_bodies(b: np.ndarray, valid: np.ndarray, px: float) -> np.ndarray:
    """Cell bodies not in the cell mask: True on extended bright regions of ``b``.

    Migrating cells move on their own; a cell the segmentation missed (typically one entering
    at the frame border) would dominate a frame pair's correlation with its bright edge and
    give the pair the cell's motion, in every pair of the frames it crosses (consistent
    wrong pairs that the consensus cannot outvote when fixed structure is sparse). A cell
    body is an extended region of raised intensity: ``b`` block-averaged to ~0.9 µm (bodies
    are large; the averaging is the noise smoothing) minus a broad background of the
    cell-free area, above ``BODY_SIGMAS`` noise units, opened with a disk of
    ``BODY_CORE_UM`` (fibers and migrasomes, thinner than the core, vanish; the cell margin
    then covers the body's rim). ``b``: block-mean frame at ``px`` µm; ``valid``: pixels not
    already excluded.
    """
    none = np.zeros(b.shape, dtype=bool)
    if min(b.shape) * px < 4 * BODY_BACKGROUND_UM:
        return none  # no room for a background around cell-sized regions
    c = max(1, int(round(0.9 / px)))
    ny, nx = b.shape[0] // c * c, b.shape[1] // c * c
    bc = block_mean(b[:ny, :nx], c) if c > 1 else b
    w = (block_mean(valid[:ny, :nx].astype(np.float32), c) > 0.5).astype(np.float32)
    pc = px * c
    if w.sum() < 64:
        return none
    raised = np.zeros(bc.shape, dtype=bool)
    for _ in range(2):  # the background again without the raised pixels found (cells in it)
        wr = w * ~raised
        r = bc - _smooth_masked(bc, wr, BODY_BACKGROUND_UM / pc)
        vals = r[wr > 0]
        med = _median(vals)
        sigma = 1.4826 * _median(np.abs(vals - med))
        if not sigma > 0:
            return none
        raised = r > med + BODY_SIGMAS * sigma
    core = ndi.distance_transform_edt(raised) > BODY_CORE_UM / pc
    if not core.any():
        return none
    # opening (the core grown back by its radius), not reconstruction: fibers attached to a
    # cell are fixed structure and must stay
    body = ndi.distance_transform_edt(~core) <= BODY_CORE_UM / pc + 1
    out = none
    if c > 1:  # each coarse pixel back to its c x c block (a broadcast copy: np.repeat twice
        # made two passes and an intermediate)
        out[:ny, :nx].reshape(ny // c, c, nx // c, c)[...] = body[:, None, :, None]
    else:
        out[:ny, :nx] = body
    return out


def prepare_frame(
    frame: Any,
    cell_mask: Any = None,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
) -> np.ndarray:
    """The registration product of one frame (see the module docstring).

    Parameters
    ----------
    frame
        (Y, X) frame, camera counts (not modified).
    cell_mask
        (Y, X) cell labels or mask (> 0 = cell) of the same frame, or None.
    pixel_size_um
        µm per pixel of ``frame``.
    config
        :class:`DriftConfig`.

    Returns
    -------
    ndarray
        float16 ``(Y // k, X // k)`` with ``k = product_bin(pixel_size_um)``: the band-passed
        frame in units of its robust noise; NaN on cells (with their margin).
    """
    config = config or DriftConfig()
    img = np.asarray(frame)
    if img.ndim != 2:
        img = _as_frame(img)  # raises the shape error
    k = product_bin(pixel_size_um)
    # binned straight from the camera counts (block_mean sums them into float32 exactly):
    # no float32 copy of the whole frame
    b = _block_mean(img, k) if k > 1 else _as_frame(img)
    px = float(pixel_size_um) * k
    valid = np.ones(b.shape, dtype=bool)
    if cell_mask is not None:
        cell = np.asarray(cell_mask)
        if cell.shape != img.shape:
            raise InputError(f"cell mask shape {cell.shape} differs from the frame {img.shape}.",
                             fix="pass the cell labels of the same frame.")
        cell = _block_any(cell > 0, k)
        if cell.any():
            valid = ~_grown(cell, config.cell_margin_um / px)
    if config.mask_unsegmented_cells:
        body = _unmasked_bodies(b, valid, px) & valid
        if body.any():
            valid &= ~_grown(body, config.cell_margin_um / px)
    out = np.full(b.shape, np.nan, dtype=np.float16)
    if valid.sum() < 16 or np.ptp(b) == 0:
        return out
    sig_s = config.smoothing_um / px
    if sig_s > 0.25:
        b = ndi.gaussian_filter(b, sig_s)
    hp = b - _smooth_masked(b, valid.astype(np.float32), config.highpass_um / px)
    vals = hp[valid]
    noise = 1.4826 * _median(np.abs(vals - _median(vals)))
    if not noise > 0:
        noise = float(vals.std()) or 1.0
    out[valid] = np.clip(hp[valid] / noise, -6e4, 6e4)
    return out


def _peak_offset(lo: float, c: float, hi: float) -> float:
    """Sub-pixel offset of a peak from three samples (Gaussian fit; parabola if not > 0)."""
    if lo > 0 and c > 0 and hi > 0:
        lo, c, hi = math.log(lo), math.log(c), math.log(hi)
    den = lo - 2 * c + hi
    if not den < 0:
        return 0.0
    return float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5))


class _Side:
    """One product made ready for registration: what every pair it is in computes from it.

    A frame is in up to ``2 x`` the number of gaps pairs (as the later and the earlier
    frame); :class:`PairRegistrar` keeps these for the products it holds (within
    :data:`SIDE_CACHE_BYTES`), so the conversions, the coarse copy and its FFT spectra are
    made once per frame instead of once per pair. Values are exactly those a pair computed.
    """

    __slots__ = ("a", "fa", "n_valid", "varies", "c", "ac", "mac", "spectra", "nbytes")

    def __init__(self, product: np.ndarray, config: DriftConfig) -> None:
        a = product.astype(np.float32)
        ma = np.isfinite(a)  # the frame's own cells (with margin) excluded
        self.n_valid = int(ma.sum())
        # bounded influence: above a few noise units a pixel is "structure", however bright;
        # a match is then decided by the area of structure that overlaps, not by one or two
        # bright migrasomes landing on other bright spots
        lim = float(config.clip_noise)
        self.a = np.clip(np.where(ma, a, 0.0), -lim, lim).astype(np.float32)
        self.varies = bool(self.n_valid >= 64 and self.a[ma].std() > 0)
        self.fa = ma.astype(np.float32)  # the mask as the compiled sums take it
        # the coarse copy of the global search: binned c x c down to ~100-200 px (the fine
        # search starts within c / 2 px of its peak); c depends on the shape alone
        c = 1
        while min(a.shape) // (2 * c) >= 96:
            c *= 2
        self.c = c
        if c > 1:
            wa = _block_mean(self.fa, c)
            self.ac = np.divide(_block_mean(self.a, c), wa, out=np.zeros_like(wa),
                                where=wa > 0)
            self.mac = wa > 0.99
        else:
            self.ac, self.mac = self.a, ma
        self.spectra: dict[tuple[int, ...], Any] = {}
        self.nbytes = self.a.nbytes + self.fa.nbytes + self.ac.nbytes + self.mac.nbytes

    def coarse_spectra(self, r: int) -> tuple[tuple[int, int], Any]:
        """The FFT shape and :func:`migradetect._ncc.ncc_spectra` of the coarse copy for a
        search radius ``r`` (made once)."""
        shape = ncc_shape(self.ac.shape, r)
        if shape not in self.spectra:
            self.spectra[shape] = ncc_spectra(self.ac, self.mac, shape)
            self.nbytes += sum(x.nbytes for x in self.spectra[shape])
        return shape, self.spectra[shape]


def register_prepared(
    prev: np.ndarray,
    cur: np.ndarray,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
    guess: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Shift of ``cur`` relative to ``prev`` (full-resolution px) from two products.

    Returns ``(dy_px, dx_px, quality)``; ``(0, 0, nan)`` when the products have too little
    usable overlap. See the module docstring for the method. With ``guess`` (px), only the
    peak within ``long_pair_radius_um`` of it is searched (no global search); a peak on the
    edge of that disk is no peak (quality NaN).
    """
    config = config or DriftConfig()
    if prev.shape != cur.shape:
        raise InputError(f"frames differ in shape: {prev.shape} vs {cur.shape}.",
                         fix="register frames of the same movie.")
    return _register_sides(_Side(prev, config), _Side(cur, config),
                           pixel_size_um=pixel_size_um, config=config, guess=guess)


def _register_sides(
    sa: _Side,
    sb: _Side,
    *,
    pixel_size_um: float,
    config: DriftConfig,
    guess: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """:func:`register_prepared` on two :class:`_Side` (products of the same shape)."""
    k = product_bin(pixel_size_um)
    if sa.n_valid < 64 or sb.n_valid < 64:
        return 0.0, 0.0, math.nan
    if not (sa.varies and sb.varies):
        return 0.0, 0.0, math.nan
    a, b = sa.a, sb.a
    px = pixel_size_um * k
    # pixels per independent noise sample of a product (the noise smoothing correlates them)
    area = max(1.0, 4 * math.pi * (config.smoothing_um / px) ** 2)
    max_jump = config.max_jump_um / px
    if guess is not None:
        g = np.asarray(guess, dtype=np.float64) / k
        return _local_peak(a, b, sa.fa, sb.fa, g, config.long_pair_radius_um / px, k, area,
                           config.min_significance)
    # integer search over every shift up to max_jump: masked NCC via FFT on the coarse copies
    # (the masked NCC of every shift up to max_jump at once, by FFT: the arrays are padded by
    # the search radius only, ~9x cheaper than a full-frame masked correlation)
    c = sa.c
    r = int(math.ceil(max_jump / c)) + 1
    shape, spec_a = sa.coarse_spectra(r)
    _, spec_b = sb.coarse_spectra(r)
    win = np.nan_to_num(masked_ncc_map_from_spectra(spec_a, spec_b, shape, r,
                                                    overlap_ratio=0.3), nan=-np.inf)
    yy, xx = np.mgrid[: win.shape[0], : win.shape[1]]
    oy, ox = r, r
    win = np.where(np.hypot(yy - oy, xx - ox) <= max_jump / c + 1, win, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    if not np.isfinite(win[iy, ix]):
        return 0.0, 0.0, math.nan
    # significance and uniqueness in one scale-free test: the correlation surface's own
    # noise (robust spread of its values over the searched shifts, ~1 um around the peak
    # left out) is the unit; the peak must stand min_peak_separation units above the best
    # other peak. A dim movie correlates weakly everywhere, so its right peaks pass as a
    # bright one's do; a repeated pattern or structure that matches at several shifts
    # (blobs landing on other blobs) does not
    far = np.hypot(yy - iy, xx - ix) > max(2.0, 1.0 / (px * c))
    off = win[far & np.isfinite(win)]
    if not win[iy, ix] > 0 or len(off) < 16:
        return 0.0, 0.0, math.nan
    med = float(np.median(off))
    spread = 1.4826 * float(np.median(np.abs(off - med)))
    if not spread > 0 or (win[iy, ix] - off.max()) / spread < config.min_peak_separation:
        return 0.0, 0.0, math.nan
    d = np.array([(iy - oy) * c, (ix - ox) * c], dtype=np.int64)
    dy, dx, q = _local_peak(a, b, sa.fa, sb.fa, d.astype(np.float64), c + 1.0, k, area,
                            config.min_significance)
    if math.hypot(dy, dx) > config.max_jump_um / pixel_size_um + k:
        return 0.0, 0.0, math.nan
    return dy, dx, q


def _local_peak(a: np.ndarray, b: np.ndarray, fa: np.ndarray, fb: np.ndarray,
                start: np.ndarray, radius: float, k: int, area: float,
                min_significance: float) -> tuple[float, float, float]:
    """Hill-climb the masked NCC from ``start`` (product px) within ``radius``, then fit.

    The integer peak is refined by a 3-point Gaussian fit per axis; the shift is returned in
    full-resolution px (``k`` px per product px). No peak (``(0, 0, nan)``) when the climb
    leaves the disk, or when the peak correlation is not significant: ``q * sqrt(n / area)``
    (``n`` overlapping pixels, ``area`` pixels per independent noise sample) is the peak in
    units of the correlation's noise, and the best of a few thousand shifts of pure noise
    reaches ~4. ``a``, ``b``: clipped products, 0 outside their masks ``fa``, ``fb``
    (float32 0/1).
    """
    cache: dict[tuple[int, int], tuple[float, int]] = {}

    def ncc(dy: int, dx: int) -> float:
        if (dy, dx) not in cache:
            v, n = masked_ncc(a, b, fa, fb, dy, dx)
            cache[(dy, dx)] = (-math.inf if math.isnan(v) else v, n)
        return cache[(dy, dx)][0]

    d = np.round(start).astype(np.int64)
    for _ in range(int(radius) + 3):
        nb = [(ncc(d[0] + u, d[1] + v), u, v) for u in (-1, 0, 1) for v in (-1, 0, 1)]
        best = max(nb)
        if best[1] == 0 and best[2] == 0:
            break
        d = d + np.array(best[1:], dtype=np.int64)
        if math.hypot(*(d - start)) > radius:
            return 0.0, 0.0, math.nan
    q = ncc(int(d[0]), int(d[1]))
    n = cache[(int(d[0]), int(d[1]))][1]
    if not np.isfinite(q) or q * math.sqrt(n / area) < min_significance:
        return 0.0, 0.0, math.nan
    fy = _peak_offset(ncc(d[0] - 1, d[1]), q, ncc(d[0] + 1, d[1]))
    fx = _peak_offset(ncc(d[0], d[1] - 1), q, ncc(d[0], d[1] + 1))
    return float((d[0] + fy) * k), float((d[1] + fx) * k), float(q)


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

    Both frames are reduced with :func:`prepare_frame` and registered with
    :func:`register_prepared`. Returns ``(dy_px, dx_px, quality)``; ``(0, 0, nan)`` when the
    frames have no usable overlap or no peak within ``max_jump_um``.
    """
    config = config or DriftConfig()
    a, b = _as_frame(prev), _as_frame(cur)
    if a.shape != b.shape:
        raise InputError(f"frames differ in shape: {a.shape} vs {b.shape}.",
                         fix="register frames of the same movie.")
    pa = prepare_frame(a, prev_mask, pixel_size_um=pixel_size_um, config=config)
    pb = prepare_frame(b, cur_mask, pixel_size_um=pixel_size_um, config=config)
    out = register_prepared(pa, pb, pixel_size_um=pixel_size_um, config=config)
    if not np.isfinite(out[2]):
        log.info("drift: no significant unique correlation peak for a frame pair")
    return out


#: Memory for the registration-ready products a :class:`PairRegistrar` keeps: each frame
#: is in up to ``2 x`` the number of gaps pairs, and made ready once instead of once per pair
#: (a third of the registration time). ~2.6 MiB per 1024² frame at 0.15 µm pixels, so with
#: pair_gap 16 every held one fits; larger products (2048² frames: ~10 MiB) are not kept,
#: each pair makes its own as it runs (their movies' memory is tight).
SIDE_CACHE_BYTES = 48 * 2**20


def pair_list(n_frames: int, *, config: DriftConfig | None = None) -> list[tuple[int, int]]:
    """Frame pairs ``(i, j)`` registered for a movie: ``j`` to ``j - g`` for the gaps
    1, 2, 4, ... up to ``pair_gap`` (short pairs first, then the long ones)."""
    gaps = _gaps(config or DriftConfig())
    return [(j - g, j) for g in gaps for j in range(1, n_frames) if j - g >= 0]


def _gaps(config: DriftConfig) -> list[int]:
    gap = config.pair_gap
    return sorted({1, gap} | {2**e for e in range(gap.bit_length()) if 2**e <= gap})


class PairRegistrar:
    """Registers the pairs of :func:`pair_list` while the frames' products arrive.

    Products are handed over with :meth:`add` (any order, e.g. a window of frames computed in
    parallel); :meth:`register` registers every pair whose two frames have arrived (up to the
    first frame still missing) and drops the products that no later pair needs. So at most
    ``pair_gap`` + one window of products are held, whatever the movie length (a 2048² frame
    at 0.15 µm pixels gives a 2 MiB product: 400 frames would be 800 MiB).

    Every pair is searched globally (up to ``max_jump_um``, see :func:`register_prepared`):
    each frame then has up to two pairs per gap (to earlier and later frames), independent
    measurements of its drift, and :func:`drift_from_edges` keeps the consensus of the
    redundant pairs, so a pair that matched moving structure or a wrong peak is outvoted.
    Results do not depend on the order or grouping in which products arrive.

    Parameters
    ----------
    n_frames
        Frames of the movie.
    pixel_size_um
        µm per pixel of the frames.
    config
        :class:`DriftConfig`.
    compute
        ``compute(list_of_dask_delayed) -> list`` to run the registrations; None: the
        threaded scheduler.
    """

    def __init__(self, n_frames: int, *, pixel_size_um: float,
                 config: DriftConfig | None = None, compute: Any = None) -> None:
        self.n_frames = int(n_frames)
        self.pixel_size_um = float(pixel_size_um)
        self.config = config or DriftConfig()
        self._compute = compute
        self._gaps = _gaps(self.config)
        self._products: dict[int, np.ndarray] = {}
        self._next = 1  # first frame whose pairs (to earlier frames) are not registered yet
        self._edges: dict[tuple[int, int], tuple[float, float, float]] = {}
        self.max_held = 0  # most products held at once (for tests and benchmarks)
        self._sides: dict[int, _Side] = {}  # held products made ready (SIDE_CACHE_BYTES)

    def _keeps_sides(self, product: np.ndarray) -> bool:
        """Whether the registration-ready products of one frame's pairs (``pair_gap + 1``)
        fit in :data:`SIDE_CACHE_BYTES` (~10 bytes per product pixel: ``a``, its mask, the
        coarse copy and its spectra): e.g. 1024² frames at 0.15 µm pixels, not 2048²
        ones, which register each pair from the products alone (memory bounded first)."""
        return 10 * product.size * (max(self._gaps) + 1) <= SIDE_CACHE_BYTES

    def _side(self, t: int) -> _Side:
        """Frame ``t``'s product made ready for registration: kept while the product is
        held, as far as :data:`SIDE_CACHE_BYTES` allows (the earliest frames, those with
        the fewest pairs left, are dropped first; a dropped one is made again when needed)."""
        side = self._sides.get(t)
        if side is None:
            side = _Side(self._products[t], self.config)
            self._sides[t] = side
            while (len(self._sides) > 1
                   and sum(x.nbytes for x in self._sides.values()) > SIDE_CACHE_BYTES):
                del self._sides[min(self._sides)]
        return side

    def add(self, t: int, product: np.ndarray) -> None:
        """Hand over frame ``t``'s :func:`prepare_frame` product."""
        t = int(t)
        if not 0 <= t < self.n_frames:
            raise ValueError(f"frame {t} outside 0..{self.n_frames - 1}")
        if t < self._next and t != 0 or t in self._products:
            raise ValueError(f"the product of frame {t} was already handed over")
        self._products[t] = product
        self.max_held = max(self.max_held, len(self._products))

    def register(self) -> None:
        """Register the pairs that the products handed over so far allow; drop old ones."""
        import dask

        if self._next == 1 and 0 not in self._products:
            return  # frame 0 has not arrived yet (frames may arrive in any order)
        end = self._next  # frames < end have all arrived (or were dropped once registered)
        while end < self.n_frames and end in self._products:
            end += 1
        for j in range(self._next, end):  # frame by frame: a few sides alive at a time
            pairs = [(j - g, j) for g in self._gaps if j - g >= 0]
            if self._keeps_sides(self._products[j]):
                reg = dask.delayed(_register_sides, pure=False)
                tasks = [reg(self._side(i), self._side(j),
                             pixel_size_um=self.pixel_size_um, config=self.config)
                         for i, _ in pairs]
            else:  # large products: each pair makes its own, one pair's memory at a time
                reg = dask.delayed(register_prepared, pure=False)
                tasks = [reg(self._products[i], self._products[j],
                             pixel_size_um=self.pixel_size_um, config=self.config)
                         for i, _ in pairs]
            if self._compute is None:
                res = list(dask.compute(*tasks, scheduler="threads"))
            else:
                res = list(self._compute(tasks))
            self._edges.update(zip(pairs, (tuple(map(float, r)) for r in res), strict=True))
        self._next = max(self._next, end)
        keep_from = self._next - max(self._gaps)  # later pairs reach back this far
        for t in [t for t in self._products if t < keep_from]:
            del self._products[t]
            self._sides.pop(t, None)

    def edges(self) -> list[tuple[int, int, float, float, float]]:
        """``(i, j, dy_px, dx_px, quality)`` per pair, in :func:`pair_list` order."""
        self.register()
        if self._next < self.n_frames:
            raise ValueError(f"the product of frame {self._next} was never handed over")
        self._products.clear()
        self._sides.clear()
        return [(i, j, *self._edges[(i, j)])
                for i, j in pair_list(self.n_frames, config=self.config)]


def register_products(
    products: Any,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
    compute: Any = None,
) -> list[tuple[int, int, float, float, float]]:
    """Register every pair of :func:`pair_list` from per-frame products.

    Every pair is searched over every shift up to ``max_jump_um`` (see
    :class:`PairRegistrar`, which does the same while products arrive, with bounded memory);
    :func:`drift_from_edges` then keeps the consensus of the redundant pairs.

    Parameters
    ----------
    products
        One :func:`prepare_frame` result per frame (a list; indexed by frame).
    pixel_size_um
        µm per pixel of the frames.
    config
        :class:`DriftConfig`.
    compute
        ``compute(list_of_dask_delayed) -> list`` to run the registrations; None: the
        threaded scheduler. Results do not depend on it.

    Returns
    -------
    list
        ``(i, j, dy_px, dx_px, quality)`` per pair, in :func:`pair_list` order.
    """
    reg = PairRegistrar(len(products), pixel_size_um=pixel_size_um, config=config,
                        compute=compute)
    for t, p in enumerate(products):
        reg.add(t, p)
    return reg.edges()


#: A pair whose shift differs from the consensus drift by more than this many
#: ``consistency_px`` is an outlier (a wrong peak) and is not used at all.
OUTLIER_SCALE = 4.0


#: Ratio of the smoothness prior's weights (second / first differences), in frames: the
#: velocity of the nearest reliable frames is continued over stretches of unreached frames
#: much shorter than this (the first differences only fix a movie without any pair). Tried 4
#: on seeds 0-99 (velocity damped after a few frames): worse on short early gaps, no help
#: where a wrong velocity was continued (see :func:`_smoothness_prior`).
PRIOR_VELOCITY_FRAMES = 100.0


def _smoothness_prior(n: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Rows of the weak prior on the drift of ``n`` frames (target 0) and their weights.

    Stage drift (thermal, focus-motor creep) is smooth: its second differences
    ``D_{t-1} - 2 D_t + D_{t+1}`` are near 0. Where no reliable pair reaches (e.g. the first
    frames of a movie, before any fixed structure exists, or frame 0 itself), this continues
    the drift of the nearest reliable frames at their velocity (linear extrapolation; across
    a gap, a smooth interpolation), where holding the drift still would put the unreached
    frames off by their velocity times the gap. A much weaker prior on the first differences
    only removes the last freedom (the velocity of a movie without any pair). The weights are
    tiny against a pair's (1): wherever pairs connect the frames, the prior has no say.
    """
    t = np.arange(1, n - 1)
    r = np.arange(len(t))
    second = sparse.csr_matrix(
        (np.r_[np.ones(len(t)), np.full(len(t), -2.0), np.ones(len(t))],
         (np.r_[r, r, r], np.r_[t - 1, t, t + 1])), shape=(len(t), n))
    u = np.arange(1, n)
    first = sparse.csr_matrix(
        (np.r_[np.ones(len(u)), -np.ones(len(u))],
         (np.r_[np.arange(len(u)), np.arange(len(u))], np.r_[u, u - 1])), shape=(len(u), n))
    return (sparse.vstack([second, first]).tocsr(),
            np.r_[np.full(len(t), 1e-4), np.full(len(u), 1e-4 / PRIOR_VELOCITY_FRAMES)])


def _consensus_drift(i: np.ndarray, j: np.ndarray, y: np.ndarray, n: int,
                     weight: np.ndarray | None = None) -> np.ndarray:
    """Drift per frame that satisfies most pairs: least absolute deviations over the graph.

    Minimises ``sum |D_j - D_i - y_ij|`` per axis (a linear programme, HiGHS). Unlike least
    squares, the L1 solution lets a minority of wrong pairs (a peak on moving structure or a
    repeated pattern) keep their whole error instead of spreading it: wherever the pairs
    crossing between two blocks of frames disagree, the majority decides. A very weak L1
    smoothness prior (:func:`_smoothness_prior`) continues the drift into frames that no
    pair reaches. The convex problem has no local minima, so no starting guess can mislead it.
    """
    from scipy.optimize import linprog

    m = len(i)
    prior, prior_w = _smoothness_prior(n)
    # rows: pairs, then the prior rows (target 0); columns: D_1..D_{n-1}, one slack per row
    rows_p = np.arange(m)
    a_pair = sparse.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[rows_p, rows_p],
                                                                 np.r_[j, i])), shape=(m, n))
    a = sparse.vstack([a_pair, prior]).tocsr()[:, 1:]
    n_rows = a.shape[0]
    slack = sparse.identity(n_rows, format="csr")
    a_ub = sparse.vstack([sparse.hstack([a, -slack]), sparse.hstack([-a, -slack])]).tocsr()
    w = np.ones(m) if weight is None else np.asarray(weight, dtype=np.float64)
    cost = np.r_[np.zeros(n - 1), w, prior_w]
    bounds = [(None, None)] * (n - 1) + [(0, None)] * n_rows
    out = np.zeros((n, 2))
    for comp in range(2):
        rhs = np.r_[y[:, comp], np.zeros(prior.shape[0])]
        res = linprog(cost, A_ub=a_ub, b_ub=np.r_[rhs, -rhs], bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"drift: the L1 consensus failed ({res.message})")
        out[1:, comp] = res.x[: n - 1]
    return out


def _bridges(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Per pair: True where its frame pair is a bridge of the pair graph.

    A bridge is a frame pair on no cycle of pairs: no other path of pairs reaches from one
    of its frames to the other, so nothing can confirm its shift. Only the edges of a
    spanning forest can be bridges; each is tested by removing it (scipy's connected
    components), which is cheap for the few thousand pairs of a long movie.
    """
    from scipy.sparse.csgraph import breadth_first_tree, connected_components

    out = np.zeros(len(i), dtype=bool)
    if len(i) == 0:
        return out
    u, v = np.minimum(i, j), np.maximum(i, j)
    pairs = np.unique(np.column_stack([u, v]), axis=0)
    adj = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                            shape=(n, n)).tocsr()
    adj = (adj + adj.T).tocsr()
    n_comp, comp = connected_components(adj, directed=False)
    tree = sparse.csr_matrix((n, n))
    for root in np.unique(comp, return_index=True)[1]:
        tree = tree + breadth_first_tree(adj, int(root), directed=False)
    tu, tv = sparse.triu(tree + tree.T).nonzero()
    for a, b in zip(tu, tv, strict=True):
        keep = (pairs[:, 0] != a) | (pairs[:, 1] != b)
        cut = sparse.csr_matrix((np.ones(int(keep.sum())), (pairs[keep, 0], pairs[keep, 1])),
                                shape=(n, n))
        if connected_components(cut, directed=False)[0] > n_comp:
            out |= (u == a) & (v == b)
    return out


def drift_from_edges(edges: Any, n_frames: int, *, config: DriftConfig | None = None,
                     fiducial_edges: Any = None, confirm: bool = True) -> pd.DataFrame:
    """Cumulative drift from pair shifts ``[(i, j, dy, dx, quality), ...]`` (``D_j - D_i``).

    Pairs without a quality (NaN: no significant, unique peak, see :func:`register_prepared`)
    are left out. ``fiducial_edges`` (:func:`fiducial_edges`: ``(i, j, dy, dx, support)``)
    join them, each voting in the consensus with its number of agreeing migrasomes. The
    pairs first give the consensus drift (:func:`_consensus_drift`, least absolute
    deviations): a pair more than ``OUTLIER_SCALE * consistency_px`` from it matched a
    wrong peak (moving structure, a repeated pattern) and is dropped. The rest are solved by
    least squares with Cauchy reweighting (scale ``consistency_px``), so that a pair that
    disagrees with the redundant ones loses its weight (a fiducial pair starts at weight
    ``sqrt(support)``); a weak smoothness prior (:func:`_smoothness_prior`: second
    differences of the drift near 0) fills frames that no reliable pair reaches: a smooth
    interpolation inside a gap, the nearest reliable frames' velocity continued before the
    first / after the last one (frames without any fixed structure carry no drift
    information; stage drift is smooth, so its velocity is the best guess there; the
    ``registered`` column marks these guessed frames).

    Returns
    -------
    DataFrame
        ``frame, dy_px, dx_px, quality, registered`` (quality: best reliable pair into the
        frame, 1 at 0; registered: some reliable pair reaches the frame).
    """
    config = config or DriftConfig()
    n = int(n_frames)
    arr = np.asarray(list(edges), dtype=np.float64).reshape(-1, 5)
    quality = np.full(n, np.nan)
    if n:
        quality[0] = 1.0
    good = np.isfinite(arr[:, 4])
    if n < 2:
        return pd.DataFrame({"frame": np.arange(n, dtype=np.int64), "dy_px": np.zeros(n),
                             "dx_px": np.zeros(n), "quality": quality,
                             "registered": np.zeros(n, dtype=bool)})
    e = arr[good]
    fid = np.asarray(list(fiducial_edges if fiducial_edges is not None else []),
                     dtype=np.float64).reshape(-1, 5)
    n_img = len(e)
    e = np.vstack([e, fid])
    is_img = np.arange(len(e)) < n_img
    i, j = e[:, 0].astype(np.int64), e[:, 1].astype(np.int64)
    n_out = 0
    if confirm and n >= 3 and config.pair_gap >= 2:
        # a pair that no other path of pairs confirms (a bridge of the pair graph: e.g. the
        # only pair left between early frames with moving structure and the rest) cannot
        # be checked by the consensus, and is not used; parallel pairs (an image and a
        # fiducial pair of the same frames) confirm each other when they agree
        bridge = _bridges(i, j, n)
        for a, b in {(int(x), int(y)) for x, y in zip(i[bridge], j[bridge], strict=True)}:
            same = np.flatnonzero((i == a) & (j == b))
            spread = np.hypot(*(e[same, 2:4] - np.median(e[same, 2:4], axis=0)).T).max()
            if len(same) >= 2 and spread <= OUTLIER_SCALE * config.consistency_px:
                bridge[same] = False
        n_out += int(bridge.sum())
        e, i, j, is_img = e[~bridge], i[~bridge], j[~bridge], is_img[~bridge]
    if len(e):
        # votes: an image pair is one measurement; a fiducial pair is as many as the static
        # migrasomes that agree on it (independent objects, each fixed to the coverslip)
        start = _consensus_drift(i, j, e[:, 2:4], n, np.where(is_img, 1.0, e[:, 4]))
        res0 = np.hypot(*(start[j] - start[i] - e[:, 2:4]).T)
        inlier = res0 <= OUTLIER_SCALE * config.consistency_px
        n_out += int((~inlier).sum())
        e, i, j, is_img = e[inlier], i[inlier], j[inlier], is_img[inlier]
    for jj in np.unique(j[is_img]):
        quality[jj] = e[is_img & (j == jj), 4].max()
    registered = np.zeros(n, dtype=bool)  # frames that some reliable pair reaches
    registered[i] = True
    registered[j] = True
    # unknowns D_1..D_{n-1} (D_0 = 0); rows: pairs, then the prior
    rows_p = np.arange(len(e))
    a_pair = sparse.csr_matrix(
        (np.r_[np.ones(len(e)), -np.ones(len(e))], (np.r_[rows_p, rows_p], np.r_[j, i])),
        shape=(len(e), n))
    prior, prior_w = _smoothness_prior(n)
    a_prior = sparse.diags(prior_w) @ prior
    # precision weights: an image pair is one measurement; a fiducial pair is the median of
    # its agreeing migrasomes, each an independent static object (variance ~ 1 / support).
    # Image pairs of crowded early frames are biased by moving structure outside the cell
    # masks (cell edges, growing fibers); where migrasomes exist they outweigh such pairs
    w0 = np.where(is_img, 1.0, np.sqrt(np.maximum(e[:, 4], 1.0)))
    out = np.zeros((n, 2))
    n_down = 0
    for comp in range(2):
        y = e[:, 2 + comp]
        w = w0.copy()
        sol = np.zeros(n - 1)
        for _ in range(20):
            a = sparse.vstack([sparse.diags(np.sqrt(w)) @ a_pair, a_prior])
            a = a.tocsc()[:, 1:]
            rhs = np.r_[np.sqrt(w) * y, np.zeros(a_prior.shape[0])]
            new = np.atleast_1d(spsolve((a.T @ a).tocsc(), a.T @ rhs))
            res = a_pair[:, 1:] @ new - y
            w_new = w0 / (1.0 + (res / config.consistency_px) ** 2)  # Cauchy
            done = np.allclose(new, sol, atol=1e-4)
            sol, w = new, w_new
            if done:
                break
        n_down += int((w < 0.5 * w0).sum())
        out[1:, comp] = sol
    if (~good).any() or n_down or n_out:
        log.info("drift: %d of %d frame pairs unreliable, %d outliers, %d inconsistent ones "
                 "down-weighted", int((~good).sum()), len(arr), n_out, n_down)
    table = pd.DataFrame({"frame": np.arange(n, dtype=np.int64), "dy_px": out[:, 0],
                          "dx_px": out[:, 1], "quality": quality, "registered": registered})
    # the image pairs travel with the table, so refine_drift can solve them again together
    # with the fiducial pairs (a list of tuples: attrs are compared when tables are joined)
    table.attrs["pair_edges"] = [tuple(map(float, r)) for r in arr]
    return table


def _point_pair_shift(p: np.ndarray, q: np.ndarray, *, max_jump: float, tol: float,
                      area: float, max_nfa: float, trees: tuple[Any, Any] | None = None
                      ) -> tuple[float, float, int] | None:
    """Common shift of two point sets (static objects seen in two frames), or None.

    Every displacement ``q_b - p_a`` up to ``max_jump`` is a candidate; its support is the
    number of one-to-one point pairs whose displacement agrees with it within ``tol``. The
    best-supported candidate is accepted when it is not explained by chance (an a-contrario
    test: ``max_nfa`` is the expected number of false detections): with the points placed at
    random over ``area``, a candidate gathers ``Poisson(n_p n_q pi tol^2 / area)`` other
    chance coincidences, and one of the candidates is the best. The shift is the median of
    the agreeing displacements.

    Written by hand: a displacement-voting (Hough) match of two small point sets with a
    chance-coincidence test; scipy has the nearest-neighbour queries (cKDTree), not this.
    ``trees``: the cKDTrees of ``p`` and ``q`` when the caller has them (a frame is in many
    pairs).
    """
    from scipy.spatial import cKDTree
    from scipy.special import pdtrc

    if len(p) == 0 or len(q) == 0:
        return None
    tp, tq = trees if trees is not None else (cKDTree(p), cKDTree(q))
    near = tp.query_ball_tree(tq, max_jump)
    ia = np.repeat(np.arange(len(p)), [len(x) for x in near])
    ib = np.fromiter((b for x in near for b in x), dtype=np.int64, count=len(ia))
    if len(ia) == 0:
        return None
    v = q[ib] - p[ia]
    tv = cKDTree(v)
    # one-to-one support (distinct points on both sides) of the candidates, largest groups
    # first: a group smaller than the best support found cannot beat it. Only the group
    # sizes are counted for every candidate (in C); the members are listed for the few
    # candidates examined (sorted, as a query of all points lists them): listing every
    # group was 90 % of the time
    size = np.asarray(tv.query_ball_point(v, tol, return_length=True), dtype=np.int64)
    k, s, best = 0, 0, None
    for c in np.argsort(-size, kind="stable"):
        if size[c] <= s:
            break
        g = tv.query_ball_point(v[c], tol, return_sorted=True)
        sup = min(len(np.unique(ia[g])), len(np.unique(ib[g])))
        if sup > s:
            k, s, best = int(c), sup, g
    lam = len(p) * len(q) * math.pi * tol**2 / max(area, 1.0)
    # pdtrc(k, lam) = P(Poisson(lam) > k): scipy.stats.poisson.sf without its argument
    # handling (s - 2 >= 0 here)
    if s < 2 or len(v) * float(pdtrc(s - 2, lam)) > max_nfa:
        return None
    sel = np.hypot(*(v - v[best].mean(axis=0)).T) <= tol
    dy, dx = np.median(v[sel], axis=0)
    return float(dy), float(dx), s


def fiducial_edges(
    detections: pd.DataFrame,
    n_frames: int,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
) -> list[tuple[int, int, float, float, float]]:
    """Pair shifts from the migrasome detections (static fiducials), for :func:`pair_list`.

    Migrasomes stay where they were left on the coverslip, so between two frames the
    detections of the same migrasomes all move by the stage drift, wherever they are (also
    on top of cells, which the image registration masks out). Each pair's shift is found
    by displacement voting with a chance-coincidence test (:func:`_point_pair_shift`), so
    it needs no linking and no starting guess: a few agreeing detections in a sparse frame
    suffice, and the shift that most detections share wins in a dense one. The area for the
    test is the detections' bounding box (a smaller area only makes the test stricter).

    Returns
    -------
    list
        ``(i, j, dy_px, dx_px, support)`` for the pairs with a significant common shift
        (support: the agreeing detections).
    """
    config = config or DriftConfig()
    n = int(n_frames)
    if n < 2 or len(detections) == 0:
        return []
    f = detections["frame"].to_numpy(np.int64)
    yx = detections[["y_px", "x_px"]].to_numpy(np.float64)
    ok = np.isfinite(yx).all(axis=1) & (f >= 0) & (f < n)
    f, yx = f[ok], yx[ok]
    if len(f) == 0:
        return []
    area = float(np.prod(np.ptp(yx, axis=0) + 1.0))
    order = np.lexsort((yx[:, 1], yx[:, 0], f))  # independent of the detections' row order
    f, yx = f[order], yx[order]
    bounds = np.searchsorted(f, np.arange(n + 1))
    pts = [yx[bounds[t]: bounds[t + 1]] for t in range(n)]
    px = float(pixel_size_um)
    from scipy.spatial import cKDTree

    trees = [cKDTree(x) if len(x) else None for x in pts]  # each frame is in many pairs
    out = []
    for i, j in pair_list(n, config=config):
        r = _point_pair_shift(pts[i], pts[j], max_jump=config.max_jump_um / px,
                              tol=config.fiducial_tolerance_um / px, area=area,
                              max_nfa=config.fiducial_max_nfa, trees=(trees[i], trees[j]))
        if r is not None:
            out.append((i, j, r[0], r[1], float(r[2])))
    return out


def drift_from_pairs(pair_shifts: Any, *, config: DriftConfig | None = None) -> pd.DataFrame:
    """Cumulative drift table from chain shifts ``[(dy, dx, quality), ...]`` (pair k: k→k+1).

    :func:`drift_from_edges` on the chain: unreliable pairs are bridged by linear
    interpolation of the drift.
    """
    arr = np.asarray(list(pair_shifts), dtype=np.float64).reshape(-1, 3)
    k = np.arange(len(arr), dtype=np.float64)
    edges = np.column_stack([k, k + 1, arr]) if len(arr) else np.zeros((0, 5))
    return drift_from_edges(edges, len(arr) + 1, config=config, confirm=False)


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
        ``(T, Y, X)`` indexable (numpy, dask, zarr); one frame is read at a time and kept as
        its small registration product.
    cell_masks
        ``(T, Y, X)`` cell labels or masks (> 0 = cell), or None.
    pixel_size_um
        µm per pixel.
    config
        :class:`DriftConfig`; when ``enabled`` is False the drift is all zeros.

    Returns
    -------
    DataFrame
        ``frame, dy_px, dx_px, quality`` (px; best pair quality into the frame, 1 at frame 0).
    """
    config = config or DriftConfig()
    n_t = int(frames.shape[0])
    if not config.enabled or n_t < 2:
        return drift_from_pairs([(0.0, 0.0, 1.0)] * max(n_t - 1, 0))
    products = [prepare_frame(np.asarray(frames[t]),
                              None if cell_masks is None else np.asarray(cell_masks[t]),
                              pixel_size_um=pixel_size_um, config=config) for t in range(n_t)]
    edges = register_products(products, pixel_size_um=pixel_size_um, config=config)
    return drift_from_edges(edges, n_t, config=config)


def _with_fiducial_pairs(detections: pd.DataFrame, drift: pd.DataFrame, out: pd.DataFrame, *,
                         pixel_size_um: float, config: DriftConfig,
                         pair_edges: Any = None) -> pd.DataFrame:
    """The pair solution again, with the migrasome detections' pair shifts added.

    The image pairs are ``pair_edges`` (what :func:`drift_from_edges` solved), else
    ``drift.attrs["pair_edges"]`` (set by :func:`drift_from_edges`, lost when a table is
    copied through some pandas operations); a table without either (made by hand) stands
    for its registered frames by the chain of their drift differences. Frames that no image
    pair reached (e.g. early frames whose fixed structure all lies on cells) get their drift
    from the fiducials, and where the two disagree the consensus over the pair graph
    decides.
    """
    n = len(out)
    if not np.array_equal(out["frame"].to_numpy(), np.arange(n)):
        return out
    fid = fiducial_edges(detections, n, pixel_size_um=pixel_size_um, config=config)
    if not fid:
        return out
    img = pair_edges if pair_edges is not None else drift.attrs.get("pair_edges")
    if img is None:
        reg = (out["registered"].to_numpy(bool) if "registered" in out.columns
               else np.ones(n, dtype=bool))
        t = np.flatnonzero(reg)
        d = out[["dy_px", "dx_px"]].to_numpy(np.float64)
        img = [(a, b, *(d[b] - d[a]), 1.0) for a, b in zip(t[:-1], t[1:], strict=True)]
    new = drift_from_edges(img, n, config=config, fiducial_edges=fid)
    out = out.copy()
    out["dy_px"], out["dx_px"] = new["dy_px"].to_numpy(), new["dx_px"].to_numpy()
    out["registered"] = new["registered"].to_numpy()
    return out


def refine_drift(
    detections: pd.DataFrame,
    drift: pd.DataFrame,
    *,
    pixel_size_um: float,
    config: DriftConfig | None = None,
    tracking_config: Any = None,
    pair_edges: Any = None,
    fiducial_pairs: Any = None,
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
    pair_edges
        The image pairs ``(i, j, dy_px, dx_px, quality)`` that ``drift`` was solved from
        (:func:`register_products`, :meth:`PairRegistrar.edges`): solved again together
        with the migrasome detections' pairs. None: ``drift.attrs["pair_edges"]`` if
        present (kept for callers that do not pass them yet), else the chain of the
        table's registered frames.
    fiducial_pairs
        The :func:`fiducial_edges` of ``detections`` when ``drift`` was already solved with
        them (``drift_from_edges(..., fiducial_edges=...)``): the pair graph is not solved
        again. None: they are found and solved here.

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
    if fiducial_pairs is None:
        out = _with_fiducial_pairs(detections, drift, out, pixel_size_um=pixel_size_um,
                                   config=config, pair_edges=pair_edges)
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
    max_scatter = config.refine_max_scatter_um / pixel_size_um
    # a frame that no reliable pair reaches has no drift estimate at all: two fiducials that
    # agree (static tracks seen in the registered frames too) beat the held guess
    min_objects = np.full(len(out), config.refine_min_objects)
    if "registered" in out.columns:
        min_objects[~out["registered"].to_numpy(bool)] = min(2, config.refine_min_objects)
    use = np.ones(len(pos), dtype=bool)
    for _ in range(5):  # alternate: track medians <-> per-frame median residuals
        p = pos - corr[rows]
        centre = pd.DataFrame(p).groupby(tid).transform("median").to_numpy()
        # a fiducial is static: its corrected positions stay within max_scatter of its median
        dev = pd.Series(np.hypot(*(p - centre).T)).groupby(tid).transform("median").to_numpy()
        use = dev <= max_scatter
        resid = pd.DataFrame(pos - centre)[use].groupby(rows[use])
        med, count = resid.median(), resid.size()
        spread = (pd.DataFrame(np.abs(pos - centre - med.reindex(rows).to_numpy()))[use]
                  .groupby(rows[use]).median().max(axis=1))
        good = count[(count >= min_objects[count.index.to_numpy()])
                     & (spread.reindex(count.index) <= max_scatter)].index.to_numpy()
        if len(good) == 0:
            return out
        ok[:] = False
        ok[good] = True
        for k in range(2):
            corr[:, k] = np.interp(np.arange(len(out)), good, med.loc[good, k].to_numpy())
    tid = tid[use]
    if ok[0]:
        corr -= corr[0]  # frame 0 is seen through its fiducials: it is the reference
    else:
        # frame 0 is tied to the fiducial frames only by the pair registration: their offset
        # is the median over the first few of them (not one frame's), and frames before the
        # first fiducial frame keep the pair solution
        corr -= np.median(corr[np.flatnonzero(ok)[: config.refine_min_track_frames]], axis=0)
        corr[: int(np.argmax(ok))] = 0.0
    out["dy_px"] = out["dy_px"].to_numpy(np.float64) + corr[:, 0]
    out["dx_px"] = out["dx_px"].to_numpy(np.float64) + corr[:, 1]
    log.debug("drift refined on %d fiducial tracks; %d/%d frames with enough fiducials",
              len(np.unique(tid)), ok.sum(), len(out))
    return out
