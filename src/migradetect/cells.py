"""Cell bodies: foreground, touching cells split, one label image per frame.

Cells are large (15-40 µm) and dim compared with migrasomes, so they are found in two steps:

1. **Coarse** (blocks of ``coarse_pixel_um``, ~0.6 µm): a grey opening with a square of
   ``punctum_size_um`` removes everything narrower than that (migrasomes, puncta, retraction
   fibers, a WGA cell's thin bright rim) and keeps cell bodies; after smoothing, pixels more
   than ``threshold_sigmas`` noise sigmas above the local background (a plane, a tile
   median and a normalized convolution of the pixels outside the cells, so uneven
   illumination does not matter) are cell, unless most of their signal lies in narrow
   bright objects (the fans of fibers and migrasomes behind a cell). Holes are filled
   (nuclei, WGA interiors); touching cells are split by a watershed of the distance
   transform from seeds at least ``min_cell_distance_um`` apart with a constriction between
   them; objects too small, without a core ``min_half_width_um`` deep, or mostly made of
   bright puncta are rejected.
2. **Fine** (blocks of ~0.3 µm): each cell's edge is placed where the smoothed image falls
   to ``edge_fraction`` of the cell's level above the background: the interior level (the
   edge of a blurred filled object lies at half its height, whatever the blur) or, for a
   membrane stain, the bright rim's level when higher. Smoothing grows automatically when
   the noise would move the edge. Where the noise is comparable to the level minus that
   threshold (WGA at low SNR), the cell's interior (pixels above a threshold a few noise
   sigmas below the level, inset from their own outline) is added, so that the hole filling
   does not leak through the gaps the noise breaks in a membrane rim.
   Attachments narrower than ~1 µm are cut by an opening.
   A cell that this leaves in two pieces, each with a cell's area and core (two cells
   touching at a point, a neck the coarse grid's smoothing filled), becomes two cells.
   Touching or overlapping cells that the coarse mask (smoothed and wider than the cells)
   glued without a constriction are split again on the placed edges, where the neck between
   them shows: the same distance-transform watershed, its seeds ``edge_split_depth_um``
   above the neck, each piece with a cell's core and area.
   This step runs only in crops around each group of cells (cells cover a fraction of most
   frames), and the labels are written to the full-resolution frame from those crops.

Cells cut by the frame's edge continue beyond it, so the frame's edge is not treated as
theirs: it closes a cut cell's outline for the hole filling (what it encloses is filled when
it is as bright as the cell's interior: a membrane stain's interior, not the gaps of a fan of
fibers), and the core test, the opening and the rim crest measure from the cell's edges in
view only (mirrored across the frame's edge; the splits' distance transforms do so by
themselves: the array's border is not background to them).

Speed (~25 ms per 1024² frame on one core): the small binary and grey morphology runs on
shifted views of whole arrays (several times cheaper here than scipy.ndimage's line
buffers), the background plane by its normal equations, the per-cell medians by one sort.

Parameters are in µm and converted to pixels here.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as label_regions  # connected regions of equal value
from skimage.segmentation import watershed

from migradetect.errors import ConfigError, InputError
from migradetect.params import param
from migradetect.preprocess import (
    _check_frame,
    _check_pixel_size,
    block_mean,
    noise_sigma,
    upsample,
)

logger = logging.getLogger(__name__)

MARKERS = ("tspan4_gfp", "wga")


@dataclass(frozen=True)
class CellConfig:
    """Cell-body segmentation parameters."""

    smoothing_um: float = param(1.0, unit="um", min=0.0, max=20.0,
                                help="Gaussian smoothing of the coarse image that finds cells")
    min_area_um2: float = param(40.0, unit="um2", min=0.0,
                                help="smallest cell area kept (a rounded cell 7 µm across)")
    split_touching: bool = param(True, help="split touching cells (distance-transform watershed)")
    split_glued_in_time: bool = param(
        True,
        help="touching cells segmented as one label keep both identities: the cell tracking "
             "splits the label between the two cells' masks of the previous frame, while each "
             "part keeps half its area and a min_half_width_um core "
             "(celltracking.track_cells_split)",
    )
    min_cell_distance_um: float = param(8.0, unit="um", min=0.5, max=200.0,
                                        help="smallest distance between two cell centres")
    split_depth_um: float = param(
        2.0, unit="um", min=0.0, max=50.0,
        help="two touching cells are split only if the constriction between them is this "
             "much narrower (in half-width) than the thinner of the two",
    )
    edge_split_depth_um: float = param(
        1.5, unit="um", min=0.0, max=50.0,
        help="second split, on the placed edges (fine grid): two touching cells are split "
             "if the constriction between them is this much narrower (in half-width) than "
             "the thinner of the two; the coarse mask, smoothed and wider, hides the "
             "constriction between touching or overlapping cells",
    )
    threshold_sigmas: float = param(
        4.0, min=0.5, max=100.0,
        help="coarse detection threshold above the local background, in noise sigmas of "
             "the smoothed coarse image",
    )
    edge_fraction: float = param(
        0.5, min=0.05, max=0.95,
        help="cell edge at this fraction of the interior level above background (0.5: half "
             "height, the edge of a blurred object)",
    )
    punctum_size_um: float = param(
        3.0, unit="um", min=0.5, max=20.0,
        help="bright objects narrower than this (migrasomes, puncta, fibers) are not cells",
    )
    max_punctate_fraction: float = param(
        0.5, min=0.0, max=1.0,
        help="reject objects whose signal is more than this fraction in narrow bright "
             "objects (clusters of migrasomes)",
    )
    min_half_width_um: float = param(
        3.0, unit="um", min=0.0, max=50.0,
        help="a cell body has a point at least this far from its edge (cells are 15-40 µm "
             "across; fiber bundles and chains of migrasomes are thinner)",
    )
    edge_smoothing_um: float = param(
        0.3, unit="um", min=0.0, max=5.0,
        help="least Gaussian smoothing of the image that places cell edges (more is used "
             "automatically when the noise would move the edge)",
    )
    max_narrow_fraction: float = param(
        0.5, min=0.0, max=1.0,
        help="a coarse pixel whose local signal is more than this fraction in narrow bright "
             "objects is not cell body (fans of fibers and migrasomes behind a cell)",
    )
    open_radius_um: float = param(
        2.0, unit="um", min=0.0, max=20.0,
        help="radius of the disk that opens the cell masks: attachments narrower than twice "
             "this (fans of retraction fibers and migrasomes behind a cell, 1-3 µm) are cut; "
             "cell bodies are 15-40 µm across",
    )
    coarse_pixel_um: float = param(0.6, unit="um", min=0.05, max=5.0,
                                   help="pixel size of the coarse grid that finds cells")
    fine_pixel_um: float = param(0.3, unit="um", min=0.05, max=2.0,
                                 help="pixel size of the grid that places cell edges")


def _coarse_factor(pixel_size_um: float, config: CellConfig) -> int:
    """Block factor of the coarse grid."""
    return max(1, int(round(config.coarse_pixel_um / pixel_size_um)))


def _fill_holes(mask: np.ndarray, closed: np.ndarray | None = None) -> np.ndarray:
    """:func:`scipy.ndimage.binary_fill_holes` (4-connected background, as there) by one
    labelling of the background: every background component not touching the border is a
    hole (much faster than the iterative propagation for large frames).

    ``closed``: optional boolean mask (same shape) of the border pixels beyond which the
    object continues (a cell cut by the frame edge): the border there is a wall, not the
    outside, so that a cell's interior that the frame cuts open (a membrane stain's dim
    interior inside its bright rim) is still a hole. Only its outermost rows and columns
    are read."""
    mask = np.asarray(mask, dtype=bool)
    if closed is not None and (closed[0].any() or closed[-1].any() or closed[:, 0].any()
                               or closed[:, -1].any()):
        p = _pad1(mask)
        p[0, 1:-1], p[-1, 1:-1] = closed[0], closed[-1]
        p[1:-1, 0], p[1:-1, -1] = closed[:, 0], closed[:, -1]
        return _fill_holes(p)[1:-1, 1:-1]
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[bg]


#: Fraction of the local body level below which a coarse pixel is not cell body. A blurred
#: body's edge lies at half its height; the cut is set lower so that dim parts of a cell
#: (nucleus, thin lamella) stay, while the glow between neighbouring cells (blur tails,
#: fibers, haze: 10-30 % of the level in the simulator) goes.
_BODY_FRACTION = 0.35
#: Radius within which the local body level is taken (µm; about a cell's half-width).
_LOCAL_LEVEL_UM = 5.0


def _checker_tiles(image: np.ndarray, tile: int = 8) -> np.ndarray:
    """Every other ``tile`` x ``tile`` tile of ``image`` in both directions, packed into one
    image half as tall and wide (a quarter of the pixels, for a cheaper noise estimate; for
    white noise any 3 x 3 set of distinct pixels, across tile seams too, has the same
    statistics). Images smaller than 4 tiles are returned as they are."""
    ny, nx = (image.shape[0] // (2 * tile)) * 2 * tile, (image.shape[1] // (2 * tile)) * 2 * tile
    if ny < 2 * tile or nx < 2 * tile:
        return image
    t = image[:ny, :nx].reshape(ny // tile, tile, nx // tile, tile)[::2, :, ::2, :]
    return t.reshape(ny // 2, nx // 2)


# Morphology by shifted views. scipy.ndimage's binary and grey morphology walks the image
# line by line through a buffer, which costs several times more than a few whole-array
# numpy operations for the small (3 x 3, 1-D) structuring elements used here; these give
# the same results as the scipy calls they replace (border: outside pixels are background
# for binary erosion, the nearest pixel for the grey filters).


def _pad1(a: np.ndarray) -> np.ndarray:
    """``a`` with a border of one zero (False) pixel (cheaper than ``np.pad`` for small
    arrays, where its generic set-up dominates)."""
    p = np.zeros((a.shape[0] + 2, a.shape[1] + 2), dtype=a.dtype)
    p[1:-1, 1:-1] = a
    return p


def _erode(mask: np.ndarray, iterations: int = 1, *, square: bool = False,
           alternate: bool = False) -> np.ndarray:
    """Binary erosion with a 3 x 3 cross (``square=False``, scipy's default) or square,
    ``iterations`` times; ``alternate``: cross, square, cross, ... (an octagon, close to a
    disk of radius ``iterations``)."""
    for k in range(iterations):
        sq = (k % 2 == 1) if alternate else square
        p = _pad1(mask)
        if sq:
            rows = p[:-2] & p[1:-1] & p[2:]
            mask = rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]
        else:
            mask = (p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2]
                    & p[1:-1, 2:])
    return mask


def _dilate(mask: np.ndarray, iterations: int = 1, *, square: bool = False,
            alternate: bool = False) -> np.ndarray:
    """Binary dilation, the counterpart of :func:`_erode` (same structuring elements; for
    ``alternate`` the order is reversed so that an opening is symmetric)."""
    for k in range(iterations):
        sq = ((iterations - 1 - k) % 2 == 1) if alternate else square
        p = _pad1(mask)
        if sq:
            rows = p[:-2] | p[1:-1] | p[2:]
            mask = rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]
        else:
            mask = (p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2]
                    | p[1:-1, 2:])
    return mask


def _min_max_1d(image: np.ndarray, size: int, axis: int, op) -> np.ndarray:
    """Running minimum or maximum (``op``) over ``size`` pixels along ``axis`` (edge mode)."""
    r = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, size - 1 - r)
    p = np.pad(image, pad, mode="edge")
    n = image.shape[axis]
    view = (lambda k: p[k:k + n]) if axis == 0 else (lambda k: p[:, k:k + n])
    out = view(0).copy()
    for k in range(1, size):
        op(out, view(k), out=out)
    return out


def _grey_opening(image: np.ndarray, size: int) -> np.ndarray:
    """Grey opening with a ``size`` x ``size`` square (as ``ndi.grey_opening``, nearest mode)."""
    out = _min_max_1d(_min_max_1d(image, size, 0, np.minimum), size, 1, np.minimum)
    return _min_max_1d(_min_max_1d(out, size, 0, np.maximum), size, 1, np.maximum)


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


def _plane(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Least-squares plane through ``image`` at the pixels ``where`` (float32, image shape)."""
    # a plane has 3 parameters: a few thousand points are plenty (every k-th row and column)
    k = max(1, int(np.sqrt(where.size / 5000)))
    yy, xx = np.nonzero(where[::k, ::k])
    yy, xx = yy * k, xx * k
    if len(yy) < 3:
        return np.zeros(image.shape, dtype=np.float32)
    # least squares by the 3 x 3 normal equations (centred coordinates keep them well
    # conditioned; an SVD-based lstsq of the whole design matrix costs far more)
    v = image[yy, xx].astype(np.float64)
    cy, cx = yy.mean(), xx.mean()
    dy, dx = yy - cy, xx - cx
    m = np.array([[dy @ dy, dy @ dx], [dy @ dx, dx @ dx]])
    rhs = np.array([dy @ v, dx @ v])
    try:
        by, bx = np.linalg.solve(m, rhs)
    except np.linalg.LinAlgError:  # all points on a line: a constant
        by = bx = 0.0
    b0 = v.mean() - by * cy - bx * cx
    gy = (b0 + by * np.arange(image.shape[0], dtype=np.float64)).astype(np.float32)
    gx = (bx * np.arange(image.shape[1], dtype=np.float64)).astype(np.float32)
    return gy[:, None] + gx[None, :]


def _local_background(image: np.ndarray, cells: np.ndarray, sigma: float,
                      also: tuple[np.ndarray, ...] = ()):
    """Background interpolated from non-cell pixels (normalized Gaussian convolution).

    Two scales: ``sigma`` (follows the illumination's fall-off near the frame borders) where
    enough background pixels are near, else ``4 sigma`` (under large cells). Computed on a
    grid ``sigma / 2`` times coarser: the result is smooth at that scale anyway. ``also``:
    more images of the same shape whose backgrounds are wanted from the same pixels (the
    weights are smoothed once); then a list of backgrounds is returned.
    """
    weight = (~cells).astype(np.float32)
    images = (image, *also)
    if weight.sum() < 0.02 * weight.size:  # almost all cell: fall back to a low percentile
        out = [np.full(im.shape, np.percentile(im, 2), dtype=np.float32) for im in images]
        return out if also else out[0]
    k = max(1, int(sigma // 2))
    den_s = block_mean(weight, k)
    dens = [(ndi.gaussian_filter(den_s, s, mode="nearest"), s, min_weight)
            for s, min_weight in ((4.0 * sigma / k, 1e-3), (sigma / k, 0.2))]
    result = []
    for im in images:
        # a plane fitted to the background pixels first: smoothing alone would flatten a
        # gradient towards the frame's corners
        plane = _plane(im, ~cells)
        im = im - plane
        fallback = float(np.median(im[weight > 0][::7]))
        num_s = block_mean(im * weight, k)
        out = np.full(num_s.shape, fallback, dtype=np.float32)
        for den, s, min_weight in dens:
            num = ndi.gaussian_filter(num_s, s, mode="nearest")
            ok = den > min_weight
            out[ok] = num[ok] / den[ok]
        result.append(upsample(out, k, im.shape) + plane)
    return result if also else result[0]


def _broad(small: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Keep only broad structures: light pre-smoothing, grey opening with a ``size`` square
    (removes everything narrower), Gaussian smoothing with ``sigma`` (coarse pixels)."""
    pre = ndi.gaussian_filter(small, 0.7, mode="nearest")
    opened = _grey_opening(pre, size)
    return ndi.gaussian_filter(opened, sigma, mode="nearest") if sigma > 0 else opened


@functools.lru_cache(maxsize=16)
def _noise_gain(factor: int, size: int, sigma: float) -> float:
    """Std of :func:`_broad` of block means of unit white noise (fixed seed, computed once)."""
    rng = np.random.default_rng(12345)
    n = max(64, 8 * size)
    noise = rng.standard_normal((n * factor, n * factor)).astype(np.float32)
    out = _broad(block_mean(noise, factor), size, sigma)
    core = out[size + 4: -size - 4, size + 4: -size - 4]
    return float(core.std())


def _mesh_background(image: np.ndarray, tile: int) -> np.ndarray:
    """Smooth background from tiles of ``tile`` pixels: the median of each tile (cells cover
    less than half of most tiles), then a 3x3 median across tiles (a tile covered by a cell
    takes its neighbours' value), interpolated back bilinearly."""
    ny, nx = image.shape
    py, px = (-ny) % tile, (-nx) % tile
    padded = np.pad(image, ((0, py), (0, px)), mode="reflect" if min(ny, nx) > tile else "edge")
    h, w = padded.shape[0] // tile, padded.shape[1] // tile
    v = padded.reshape(h, tile, w, tile).transpose(0, 2, 1, 3).reshape(h * w, tile * tile)
    m = np.median(v, axis=1).reshape(h, w)
    if h >= 3 and w >= 3:
        m = ndi.median_filter(m, size=3, mode="nearest")
    return upsample(m.astype(np.float32), tile, image.shape)


def _seeds(dist: np.ndarray, comp: np.ndarray, min_distance_px: float,
           depth_px: float, min_peak_px: float = 1.0) -> np.ndarray:
    """Seed points of the distance transform: peaks at least ``min_distance_px`` apart, and
    only where the straight path between two peaks dips by more than ``depth_px``; only
    peaks at least ``min_peak_px`` from the edge count."""
    # local maxima of the distance transform within a (min_distance_px // 2)-radius square
    # (as skimage's peak_local_max finds them; its extra spacing pass is left out: the
    # loop below keeps only peaks min_distance_px apart anyway)
    r = max(1, int(min_distance_px // 2))
    is_peak = ((dist == ndi.maximum_filter(dist, size=2 * r + 1, mode="constant"))
               & (dist >= max(1.0, min_peak_px)))
    is_peak &= comp > 0
    peaks = np.argwhere(is_peak)
    if len(peaks) == 0:
        return peaks
    order = np.argsort(-dist[peaks[:, 0], peaks[:, 1]], kind="stable")
    peaks = peaks[order]
    kept: list[np.ndarray] = []
    for p in peaks:
        ok = True
        for q in kept:
            if comp[p[0], p[1]] != comp[q[0], q[1]]:
                continue
            if np.hypot(*(p - q)) < min_distance_px:
                ok = False
                break
            n = int(np.ceil(np.hypot(*(p - q)))) + 1
            yy = np.round(np.linspace(p[0], q[0], n)).astype(int)
            xx = np.round(np.linspace(p[1], q[1], n)).astype(int)
            neck = dist[yy, xx].min()
            if neck > min(dist[p[0], p[1]], dist[q[0], q[1]]) - depth_px:
                ok = False
                break
        if ok:
            kept.append(p)
    return np.array(kept)


def _split(mask_labels: np.ndarray, n: int, min_distance_px: float,
           depth_px: float, min_area_px: float = 0.0, min_core_px: float = 0.0,
           smooth_px: float = 0.0) -> np.ndarray:
    """Split touching cells of each component by a watershed of its distance transform.

    Components smaller than twice ``min_area_px`` cannot hold two cells and are skipped
    (most components of a frame are small bits that are rejected later). With
    ``min_core_px``, only seeds that far from the edge (a cell's core) count, and only
    pieces of at least ``min_area_px`` are kept apart (a smaller piece goes to its
    neighbours), so that every piece is a cell on its own. A cell cut by the frame's edge
    has no neck there: the distance transform measures to background pixels only, and the
    array's border is not one."""
    out = mask_labels.copy()
    next_id = n + 1
    area = np.bincount(mask_labels.ravel(), minlength=n + 1)
    for i, sl in enumerate(ndi.find_objects(mask_labels), start=1):
        if sl is None or area[i] < 2.0 * min_area_px:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        comp = mask_labels[sl] == i
        shape_mask = comp
        if min_core_px > 0 and smooth_px > 0:
            # the outline's small notches and holes (noise on the fine grid) are not the
            # constriction between two cells: the distance transform of the mask closed by
            # a disk of smooth_px (padded so that the closing does not stick to the crop)
            r = int(smooth_px)
            pad = np.pad(comp, r)
            shape_mask = _fill_holes(_erode(_dilate(pad, r, alternate=True), r,
                                            alternate=True))[r:-r, r:-r] | comp
        dist = ndi.distance_transform_edt(shape_mask)
        seeds = _seeds(dist, comp.astype(np.int32), min_distance_px, depth_px,
                       min_peak_px=min_core_px)
        if len(seeds) < 2:
            continue
        markers = np.zeros(comp.shape, dtype=np.int32)
        markers[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
        ws = watershed(-dist, markers, mask=comp)
        if min_core_px > 0:
            big = np.bincount(ws.ravel(), minlength=len(seeds) + 1)[1:] >= min_area_px
            if big.sum() < 2:
                continue
            if not big.all():
                seeds = seeds[big]
                markers[:] = 0
                markers[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
                ws = watershed(-dist, markers, mask=comp)
        sub = out[sl]
        for k in range(2, len(seeds) + 1):
            sub[ws == k] = next_id
            next_id += 1
    return out


def coarse_cells(frame: np.ndarray, *, pixel_size_um: float, config: CellConfig,
                 marker: str = "tspan4_gfp", noise: float | None = None,
                 small: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Cells on the coarse grid: ``(labels int32, factor, background, linear background)``
    (coarse arrays; the last is the background of the block means smoothed by one coarse
    pixel, on which the edges are placed).

    ``noise``: the frame's pixel noise sigma (default :func:`preprocess.noise_sigma`);
    ``small``: the frame's block means on the coarse grid, if already computed.
    """
    if marker not in MARKERS:
        raise ConfigError(f"unknown marker {marker!r}.", fix=f"use one of {list(MARKERS)}.")
    frame = _check_frame(frame)  # block_mean converts to float32 (no full-size copy here)
    px = _check_pixel_size(pixel_size_um)
    factor = _coarse_factor(px, config)
    cpx = px * factor
    if small is None:
        small = block_mean(frame, factor)
    size = _odd(config.punctum_size_um / cpx)
    sigma = config.smoothing_um / cpx
    smooth = _broad(small, size, sigma)
    # noise of the smoothed coarse image: the frame's pixel noise times the gain of this
    # (nonlinear) filter chain for white noise, measured once on a seeded noise patch
    if noise is None:
        noise = noise_sigma(frame)
    noise = max(noise * _noise_gain(factor, size, round(sigma, 3)), 1e-6)
    low = smooth < np.percentile(smooth[::2, ::2], 60)  # mostly background pixels
    plane = _plane(smooth, low)
    bg = _mesh_background(smooth - plane, max(4, int(round(12.0 / cpx)))) + plane
    # one refinement: the background from the pixels outside the cells found on the tile
    # background, for the opened image and for the image on which the edges are placed
    # (lightly smoothed, not opened). A second round (as before) was found worse on tuning
    # seeds 0-39: WGA cell IoU 3 points lower, more merged crowded cells; TSPAN4 the same.
    lin1 = ndi.gaussian_filter(small, 1.0, mode="nearest")
    cells = _fill_holes(smooth - bg > config.threshold_sigmas * noise)
    bg, bg_lin = _local_background(smooth, _dilate(cells, 2), 5.0 / cpx, also=(lin1,))
    # drop pixels whose local signal is mostly in narrow bright objects (fans of fibers
    # and migrasomes behind a cell), then fill holes (nuclei, WGA interiors)
    linear = ndi.gaussian_filter(small, sigma, mode="nearest") if sigma > 0 else small
    narrow = np.maximum(linear - smooth, 0)
    above = smooth - bg > config.threshold_sigmas * noise
    above &= narrow <= config.max_narrow_fraction * np.maximum(linear - bg, 1e-6)
    # a fraction of the local cell level: the edge of a blurred body lies at half its
    # height, so the glow between neighbouring cells (the blur of both, fibers, haze) is
    # not cell even when it is many noise sigmas above the background. The level is the
    # brightest body signal within _LOCAL_LEVEL_UM, so a dim cell next to a bright one
    # keeps its own level. Not for a membrane stain: there the body's level is its bright
    # rim (partly kept by the opening), and the dim interior lies below half of it.
    if marker != "wga":
        body = smooth - bg
        w = _odd(2.0 * _LOCAL_LEVEL_UM / cpx)
        local = ndi.maximum_filter(np.where(above, body, 0), size=w, mode="nearest")
        above &= body > _BODY_FRACTION * local
    cells = _fill_holes(above)
    labels, n = ndi.label(cells)
    if n == 0:
        return labels.astype(np.int32), factor, bg, bg_lin
    if config.split_touching:
        labels = _split(labels, n, config.min_cell_distance_um / cpx,
                        config.split_depth_um / cpx, config.min_area_um2 / (cpx * cpx))
        n = int(labels.max())
    # reject small objects and objects whose signal is mostly in narrow bright things
    # (after splitting, so that a cell touching a cluster of migrasomes survives)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:] * cpx * cpx
    broad = np.bincount(flat, np.maximum(smooth - bg, 0).ravel(), minlength=n + 1)[1:]
    total = np.bincount(flat, np.maximum(linear - bg, 0).ravel(), minlength=n + 1)[1:]
    punctate = 1.0 - broad / np.maximum(total, 1e-9)
    keep = np.zeros(n + 1, dtype=bool)
    # a cell body has a core: some pixel at least min_half_width_um from its edge (fiber
    # bundles and chains of migrasomes are long but thin), i.e. that survives an erosion by
    # a disk (octagon) just short of that radius
    r_core = max(0, int(np.ceil(config.min_half_width_um / cpx)) - 1)
    # (mirrored across the frame's edges: the frame's edge is not a cut cell's edge)
    core = (_framed(lambda m: _erode(m, r_core, alternate=True), cells, r_core,
                    (True, True, True, True)) if r_core > 0 else cells)
    has_core = np.bincount(flat[core.ravel()], minlength=n + 1)[1:] > 0
    keep[1:] = ((area >= config.min_area_um2) & (punctate <= config.max_punctate_fraction)
                & has_core)
    labels = _sequential(np.where(keep[labels], labels, 0))
    return labels.astype(np.int32), factor, bg, bg_lin


def segment_cells(frame: np.ndarray, *, pixel_size_um: float, config: CellConfig,
                  marker: str = "tspan4_gfp") -> np.ndarray:
    """Segment cell bodies in one frame.

    Parameters
    ----------
    frame
        ``(Y, X)`` frame (raw counts or background-corrected with a radius larger than the
        cells; the local background is estimated here).
    pixel_size_um
        Pixel size, µm.
    config
        :class:`CellConfig`.
    marker
        ``"tspan4_gfp"`` (dim, fairly filled cells) or ``"wga"`` (bright rim, dimmer
        interior). Both are handled by the same steps (hole filling covers WGA interiors and
        nuclei); the marker is checked and recorded.

    Returns
    -------
    int32 ``(Y, X)`` labels, 0 = background, cells ``1..n`` in raster order of their first
    pixel.
    """
    frame = _check_frame(frame)  # block_mean converts to float32 (no full-size copy here)
    px = _check_pixel_size(pixel_size_um)
    factor = _coarse_factor(px, config)
    fine_f = max(1, min(factor, int(round(config.fine_pixel_um / px))))
    ratio = max(1, factor // fine_f)
    fine_f = factor // ratio  # so that the coarse grid is a whole number of fine blocks
    fpx = px * fine_f
    # block means once: fine grid from the frame, coarse grid from the fine one; the pixel
    # noise from a quarter of the fine blocks (white noise: their sigma times the side)
    fine_raw = block_mean(frame, fine_f)
    small = block_mean(fine_raw, ratio)
    pixel_noise = noise_sigma(_checker_tiles(fine_raw)) * fine_f
    coarse, factor, _, bg = coarse_cells(frame, pixel_size_um=px, config=config,
                                         marker=marker, noise=pixel_noise, small=small)
    if coarse.max() == 0:
        return np.zeros(frame.shape, dtype=np.int32)
    # bg: background of the linear (unopened) image, from the pixels outside the cells;
    # each cell's interior level above background: median inside the eroded coarse cell
    nid = int(coarse.max())
    inner = _erode(coarse > 0)
    diff = small - bg
    level = _label_percentile(diff, np.where(inner, coarse, 0), nid, 50.0)
    no_inner = np.bincount(coarse[inner], minlength=nid + 1)[1:] == 0
    if no_inner.any():  # cells too thin for an eroded core: all their pixels
        level[no_inner] = _label_percentile(diff, coarse, nid, 50.0)[no_inner]
    level = np.maximum(level, 0)
    # edge smoothing: at least edge_smoothing_um, more when the noise would move the edge
    # (noise after smoothing below a quarter of the edge threshold of the median cell)
    target = config.edge_fraction * float(np.median(level)) / 4.0
    need = pixel_noise / (fine_f * 2.0 * np.sqrt(np.pi) * max(target, 1e-9))
    sigma_f = float(np.clip(need, config.edge_smoothing_um / fpx, 2.0 / fpx))
    # the edges are placed on the fine grid only around the cells: per group of cells
    # (connected after growing by 2 coarse pixels), in its bounding box plus a margin that
    # keeps the smoothing's border effects away (cells cover a fraction of most frames)
    grown = _expand(coarse, 2)
    groups, _ = ndi.label(grown > 0)
    margin = int(np.ceil(4.0 * sigma_f / ratio)) + 2
    fny, fnx = fine_raw.shape
    cny, cnx = coarse.shape
    pieces = []
    next_id = nid + 1  # ids for cells that the fine grid splits off
    for g, sl in enumerate(ndi.find_objects(groups), start=1):
        y0, y1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, cny)
        x0, x1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, cnx)
        csl = (slice(y0, y1), slice(x0, x1))
        fsl = (slice(y0 * ratio, min(y1 * ratio, fny)), slice(x0 * ratio, min(x1 * ratio, fnx)))
        mine = groups[csl] == g
        lab, next_id = _refine(fine_raw[fsl], bg[csl], np.where(mine, coarse[csl], 0),
                               np.where(mine, grown[csl], 0), level, sigma_f, ratio, fpx,
                               config, marker, next_id,
                               noise_f=pixel_noise / (fine_f * 2.0 * np.sqrt(np.pi) * sigma_f),
                               frame_edges=(y0 == 0, y1 == cny, x0 == 0, x1 == cnx))
        pieces.append((fsl, lab))
    nid = next_id - 1
    # min area, then labels 1..n in raster order of each cell's first pixel
    min_px = max(config.min_area_um2 / (fpx * fpx), 1)
    area = np.zeros(nid + 1, dtype=np.int64)
    first = np.full(nid + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for fsl, lab in pieces:
        area += np.bincount(lab.ravel(), minlength=nid + 1)
        for i, osl in enumerate(ndi.find_objects(lab), start=1):
            if osl is None:
                continue
            row = lab[osl[0].start, osl[1]]
            y = fsl[0].start + osl[0].start
            x = fsl[1].start + osl[1].start + int(np.argmax(row == i))
            first[i] = min(first[i], y * fnx + x)
    good = np.flatnonzero(area >= min_px)
    good = good[good > 0]
    lut = np.zeros(nid + 1, dtype=np.int32)
    lut[good[np.argsort(first[good], kind="stable")]] = np.arange(1, len(good) + 1,
                                                                  dtype=np.int32)
    out = np.zeros(frame.shape, dtype=np.int32)
    for fsl, lab in pieces:
        osl = (slice(fsl[0].start * fine_f, min(fsl[0].stop * fine_f, frame.shape[0])),
               slice(fsl[1].start * fine_f, min(fsl[1].stop * fine_f, frame.shape[1])))
        big = upsample(lut[lab], fine_f, (osl[0].stop - osl[0].start, osl[1].stop - osl[1].start),
                       order=0)
        target = out[osl]
        np.copyto(target, big, where=big > 0)
    return out


def _refine(fine_raw: np.ndarray, bg: np.ndarray, coarse: np.ndarray, grown: np.ndarray,
            level: np.ndarray, sigma_f: float, ratio: int, fpx: float, config: CellConfig,
            marker: str, next_id: int, noise_f: float = 0.0,
            frame_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
            ) -> tuple[np.ndarray, int]:
    """Edges of one group of cells on the fine grid (arrays cropped around the group).

    ``fine_raw``: block means on the fine grid; ``bg``, ``coarse``, ``grown``: the linear
    background, the coarse labels and the same grown by 2 coarse pixels (coarse grid);
    ``level``: each cell's interior level above background (indexed by label - 1);
    ``noise_f``: the noise sigma of the fine image after smoothing by ``sigma_f``;
    ``frame_edges``: which sides of the crop (top, bottom, left, right) are the frame's
    edges, beyond which a cell that reaches them continues. Returns
    the fine-grid labels (the ids of ``coarse``; a cell that the fine grid finds in two
    cell-sized pieces gets ids from ``next_id`` on for the extra pieces) and the next
    unused id.
    """
    nid = len(level)
    fine = ndi.gaussian_filter(fine_raw, sigma_f, mode="nearest")
    fshape = fine.shape
    bg_f = upsample(bg, ratio, fshape)
    # candidate region: each coarse cell grown by 2 coarse pixels (edges can lie outside it)
    lab_f = upsample(grown, ratio, fshape, order=0)
    # a membrane stain's bright rim sets the edge: use the rim's level (90th percentile of
    # the fine image within 2 coarse pixels of the coarse edge) when above the interior's
    band = upsample(np.where(_erode(coarse > 0, 2), 0, grown), ratio, fshape, order=0)
    fdiff = fine - bg_f
    rim = _label_percentile(fdiff, band, nid, 90.0)
    thr = np.zeros(nid + 1, dtype=np.float32)
    thr[1:] = config.edge_fraction * np.maximum(np.maximum(level, rim), 0)
    mask = (fdiff > thr[lab_f]) & (lab_f > 0)
    mask |= _noisy_interior(fdiff, lab_f, thr, np.maximum(np.maximum(level, rim), 0), noise_f,
                            max(1, int(round(_INTERIOR_INSET_UM / fpx))))
    filled = _fill_holes(mask)
    # a cell cut by the frame edge continues beyond it: where its candidate region reaches
    # the frame edge, the edge closes the cell's outline (else a membrane stain's interior,
    # below the edge threshold, is open to the outside there and is not filled). What only
    # that closure encloses is filled if it is the cell's interior: its median at least
    # _CUT_INTERIOR_FRACTION of the cell's interior level (a fan of fibers behind a cell that
    # runs out of the frame also encloses gaps with the frame's edge, but they are background)
    wall = _frame_wall(lab_f, frame_edges)
    if wall is not None and wall.any():
        extra = _fill_holes(mask, closed=wall) & ~filled
        if extra.any():
            comp, nc = ndi.label(extra)
            idx = np.arange(1, nc + 1)
            owner = np.asarray(ndi.maximum(lab_f, comp, idx), dtype=np.int64)
            med = _label_percentile(fdiff, comp, nc, 50.0)
            lev = np.where(owner > 0, level[np.maximum(owner, 1) - 1], np.inf)
            ok = np.zeros(nc + 1, dtype=bool)
            ok[1:] = med >= _CUT_INTERIOR_FRACTION * lev
            filled |= ok[comp]
    mask = filled
    # cut attachments narrower than 2 open_radius_um (fans of fibers and migrasomes behind
    # a cell; cell bodies are 15-40 µm wide: a disk of that radius fits anywhere in a
    # cell), on the coarse grid (cheap for a disk this size); the opened mask, grown by one
    # coarse pixel, only cuts: the edges stay where the fine grid placed them
    r_open = config.open_radius_um / (fpx * ratio)
    relabel = None
    if r_open >= 0.5:
        cmask = block_mean(mask.astype(np.float32), ratio) >= 0.5 if ratio > 1 else mask
        r = max(1, int(round(r_open)))  # an octagon of this radius, close to a disk
        # mirrored across the frame's edges: a cell cut by the frame is as wide as its
        # part in view and its mirror image (not cut where it is less than 2 r deep in view)
        cmask = _framed(lambda m: _dilate(_erode(m, r, alternate=True), r, alternate=True),
                        cmask, r, frame_edges)
        relabel, next_id = _split_pieces(cmask, grown, fpx * ratio, config, next_id)
        cmask = _dilate(cmask, square=True)
        mask &= upsample(cmask, ratio, fshape, order=0)
    lab_f = np.where(mask, lab_f, 0)
    if marker == "wga":
        lab_f = _to_rim_crest(lab_f, fdiff, int(np.ceil(_RIM_SEARCH_UM / fpx)),
                              frame_edges=frame_edges)
        mask = lab_f > 0
    # keep, per cell, only pixels connected to its coarse core (drops nearby debris)
    comp, nc = ndi.label(mask)
    core = upsample(coarse, ratio, fshape, order=0)
    owner = np.zeros(nc + 1, dtype=bool)
    owner[comp[(core > 0) & mask]] = True
    owner[0] = False
    lab_f[~owner[comp]] = 0
    if relabel is not None:  # cells that the opening cut in two
        new = upsample(relabel, ratio, fshape, order=0)
        lab_f = np.where((new > 0) & (lab_f > 0), new, lab_f)
    # cells whose placed edges leave them in two cell-sized pieces
    relabel, next_id = _split_pieces(lab_f > 0, lab_f, fpx, config, next_id)
    if relabel is not None:
        lab_f = np.where(relabel > 0, relabel, lab_f)
    # touching cells that the coarse mask (smoothed, wider than the cells) glued without a
    # constriction: the same distance-transform split on the placed edges, where the neck
    # between two touching or overlapping cells shows; each piece must be a cell on its own
    # (a core min_half_width_um deep, min_area_um2), and notches or holes narrower than
    # _SHAPE_SMOOTH_UM (noise in the edge) do not count as a neck
    if config.split_touching:
        lab_f, next_id = _split_placed(lab_f, fpx, config, next_id)
    return lab_f, next_id


def _split_placed(lab_f: np.ndarray, fpx: float, config: CellConfig, next_id: int
                  ) -> tuple[np.ndarray, int]:
    """:func:`_split` of the fine-grid labels ``lab_f`` (pixel ``fpx`` µm); split-off pieces
    get ids from ``next_id`` on. Returns the labels and the next unused id.

    The distance transform and its seeds are computed on every other pixel of the fine grid
    when that is still finer than ``_SPLIT_GRID_UM`` (a neck of a µm or more is measured as
    well, at a quarter of the cost); the pieces are mapped back to the fine grid, a fine
    pixel whose subsampled pixel lies outside its own cell (edge pixels) taking the piece of
    its nearest neighbour.
    """
    h = 2 if 2 * fpx <= _SPLIT_GRID_UM else 1
    half = lab_f[::h, ::h]
    hpx = fpx * h
    split = _split(half, next_id - 1, config.min_cell_distance_um / hpx,
                   config.edge_split_depth_um / hpx, config.min_area_um2 / (hpx * hpx),
                   min_core_px=config.min_half_width_um / hpx,
                   smooth_px=_SHAPE_SMOOTH_UM / hpx)
    changed = split != half
    if not changed.any():
        return lab_f, next_id
    top = int(split.max())
    parent = np.arange(max(top, int(lab_f.max())) + 1)
    parent[split[changed]] = half[changed]
    next_id = max(next_id, top + 1)
    if h == 1:
        return split, next_id
    up = upsample(split, h, lab_f.shape, order=0)
    was_split = np.zeros(parent.size, dtype=bool)
    was_split[half[changed]] = True
    mine = was_split[lab_f]  # fine pixels of the cells that were split
    ok = mine & (parent[up] == lab_f)
    grown = _expand(np.where(ok, up, 0), 2)
    fix = mine & ~ok & (parent[grown] == lab_f)
    return np.where(ok, up, np.where(fix, grown, lab_f)).astype(lab_f.dtype), next_id


#: A region that only the frame's edge closes (see :func:`_refine`) is a cut cell's interior
#: if its median is at least this fraction of the cell's interior level: half height, where
#: a blurred object's edge lies (on tuning seeds: cut interiors 0.65-0.95, the gaps of fiber
#: fans running out of the frame 0.05-0.48).
_CUT_INTERIOR_FRACTION = 0.5
#: Grid of the split on the placed edges (µm): necks of a µm or more are measured on it.
_SPLIT_GRID_UM = 0.6
#: Notches and holes of a placed outline narrower than this (µm) are noise in the edge, not
#: the neck between two cells (see :func:`_split`).
_SHAPE_SMOOTH_UM = 0.6

#: Interior threshold (see :func:`_noisy_interior`): this many noise sigmas below the cell's
#: level (a pixel at the level passes whatever the noise: 4 sigmas, p = 3e-5 of dropping out),
#: but at least _INTERIOR_FLOOR_SIGMAS above the background.
_INTERIOR_SIGMAS = 4.0
_INTERIOR_FLOOR_SIGMAS = 2.0
#: How far inside its own outline the interior counts (µm): about the width of the blurred
#: membrane rim, so that the edge stays where the edge threshold places it, and isolated noise
#: pixels above the interior threshold (2 sigmas: 2 % of background pixels) do not survive.
_INTERIOR_INSET_UM = 0.6


def _noisy_interior(fdiff: np.ndarray, lab_f: np.ndarray, thr: np.ndarray, level: np.ndarray,
                    noise: float, inset: int) -> np.ndarray:
    """Cell interior that the edge threshold loses to noise.

    The edge threshold ``thr`` (per label, ``edge_fraction`` of the cell's level) is placed
    for the edge; a cell's dim parts lie below it: a membrane stain's interior just inside
    the rim (a third to a half of the level), the thin rear of any cell. Where the noise is
    comparable to the level minus the threshold, pixels of the cell at its level drop below
    the threshold too, the noise breaks the rim, and the hole filling leaks through the gaps:
    whole pieces of the cell go missing (WGA at low SNR: 10 % of the cell area, some cells
    half). Interior: pixels above a threshold ``_INTERIOR_SIGMAS`` noise sigmas below the
    level (``level``, indexed by label - 1; at least ``_INTERIOR_FLOOR_SIGMAS`` above the
    background, never above ``thr``), eroded by ``inset`` pixels (an octagon), so that it
    adds only interior: the outline stays the edge threshold's. Where the level is more than
    ``_INTERIOR_SIGMAS`` noise sigmas above the edge threshold (high SNR) nothing is added
    (the interior threshold is the edge threshold). Its holes are not filled here
    (filling would close the gaps between the fibers of a fan behind a cell, which the
    opening then no longer cuts); the caller's hole filling closes what the rim and the
    interior now enclose. Returns a boolean mask of the fine grid.
    """
    thr_lo = np.zeros_like(thr)
    thr_lo[1:] = np.minimum(thr[1:], np.maximum(level - _INTERIOR_SIGMAS * noise,
                                                 _INTERIOR_FLOOR_SIGMAS * noise))
    if not (thr_lo[1:] < thr[1:]).any():
        return np.zeros(lab_f.shape, dtype=bool)
    inner = (fdiff > thr_lo[lab_f]) & (lab_f > 0)
    return _erode(inner, inset, alternate=True)


def _split_pieces(opened: np.ndarray, grown: np.ndarray, cpx: float, config: CellConfig,
                  next_id: int) -> tuple[np.ndarray | None, int]:
    """Cells that the fine grid finds in two (or more) cell-sized pieces.

    The coarse detection (0.6 µm pixels, smoothed by 1 µm) fills a neck of a few µm between
    two cells that touch at a point, and its distance-transform split sees no constriction;
    on the fine grid the opening by ``open_radius_um`` (or the edge placement itself) cuts
    such a neck. Two pieces that each have the area and the core (a point
    ``min_half_width_um`` from its edge) of a cell are two cells. ``opened``: the mask
    (opened, or the final one); ``grown``: the labels (same grid, pixel size ``cpx`` µm).
    Returns a map of the new ids over the split cells (0 elsewhere: labels unchanged; None
    when nothing is split; each pixel of a split cell takes the id of the nearest piece, the
    largest piece keeping the cell's id) and the next unused id.
    """
    regions, nr = label_regions(np.where(opened, grown, 0), background=0, connectivity=1,
                                return_num=True)
    if nr <= 1:
        return None, next_id
    parent = np.zeros(nr + 1, dtype=np.int64)
    parent[regions.ravel()] = grown.ravel()
    parent[0] = 0
    area = np.bincount(regions.ravel(), minlength=nr + 1)
    big = (area >= config.min_area_um2 / (cpx * cpx)) & (parent > 0)
    count = np.bincount(parent[big], minlength=int(grown.max()) + 1)
    if not (count >= 2).any():
        return None, next_id
    # the core of each piece on its own (a pixel next to another piece is not inside it)
    inside = regions > 0
    inside[:-1] &= regions[:-1] == regions[1:]
    inside[1:] &= regions[1:] == regions[:-1]
    inside[:, :-1] &= regions[:, :-1] == regions[:, 1:]
    inside[:, 1:] &= regions[:, 1:] == regions[:, :-1]
    r_core = max(0, int(np.ceil(config.min_half_width_um / cpx)) - 1)
    core = _erode(inside, r_core, alternate=True) if r_core > 0 else inside
    has_core = np.bincount(regions[core], minlength=nr + 1) > 0
    cand = np.flatnonzero(big & has_core)
    split = [pid for pid in np.unique(parent[cand]) if np.sum(parent[cand] == pid) >= 2]
    if not split:
        return None, next_id
    seed_id = np.zeros(nr + 1, dtype=np.int64)
    for pid in split:
        mine = cand[parent[cand] == pid]
        mine = mine[np.argsort(-area[mine], kind="stable")]
        seed_id[mine[0]] = pid
        for r in mine[1:]:
            seed_id[r] = next_id
            next_id += 1
    seeds = seed_id[regions]
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[iy, ix]
    return np.where(np.isin(grown, split), nearest, 0), next_id


#: How far inside the threshold contour a membrane stain's rim crest is looked for (µm).
_RIM_SEARCH_UM = 2.0


def _framed(op, mask: np.ndarray, width: int,
            frame_edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """``op(mask)`` with ``mask`` mirrored by ``width`` pixels across the sides (top, bottom,
    left, right) that are the frame's edges, cropped back: a cell cut by the frame is not
    eroded from the frame's edge, which is not its own."""
    if not any(frame_edges) or width <= 0:
        return op(mask)
    w = [min(width, n) for n in mask.shape]
    pad = ((w[0] * frame_edges[0], w[0] * frame_edges[1]),
           (w[1] * frame_edges[2], w[1] * frame_edges[3]))
    out = op(np.pad(mask, pad, mode="symmetric"))
    return out[pad[0][0]:pad[0][0] + mask.shape[0], pad[1][0]:pad[1][0] + mask.shape[1]]


def _frame_wall(labels: np.ndarray, frame_edges: tuple[bool, bool, bool, bool]
                ) -> np.ndarray | None:
    """Where the frame's edge closes a cell's outline (for :func:`_fill_holes`): on each side
    (top, bottom, left, right) that is the frame's edge, the border pixels from the first to
    the last pixel of each cell of ``labels`` (candidate regions) there. A cell cut by the
    frame meets its edge in one stretch; gaps in its candidate region along it are noise in
    the coarse detection, through which the interior would leak. None when no side is the
    frame's edge."""
    if not any(frame_edges):
        return None
    wall = np.zeros(labels.shape, dtype=bool)
    for side, sl in zip(frame_edges, ((0, slice(None)), (-1, slice(None)),
                                      (slice(None), 0), (slice(None), -1))):
        if not side:
            continue
        line = labels[sl]
        closed = wall[sl]  # a view
        for i in np.unique(line[line > 0]):
            at = np.flatnonzero(line == i)
            closed[at[0]:at[-1] + 1] = True
    return wall


def _to_rim_crest(labels: np.ndarray, image: np.ndarray, n: int,
                  frame_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
                  ) -> np.ndarray:
    """Move each cell's edge in to the crest of its bright membrane rim.

    A threshold below the rim's peak places the edge on the rim's outer flank, outside the
    membrane. Per cell, the mean of ``image`` over the pixels at each distance 1..``n``
    (pixels) from the edge gives the rim's profile; pixels closer to the edge than its
    maximum (the crest, where the membrane is) are removed. A cell whose profile has no
    maximum before ``n`` (no rim) is left as it is. On the sides in ``frame_edges`` (top,
    bottom, left, right) the frame's edge is not the cell's: the cell, cut by the frame,
    continues beyond it (taken as its last row or column repeated), so no strip along the
    frame edge is removed.
    """
    cells = labels > 0
    if not cells.any() or n < 2:
        return labels
    if any(frame_edges):
        w = n + 2  # distances up to n + 1 are measured
        pad = ((w * frame_edges[0], w * frame_edges[1]), (w * frame_edges[2], w * frame_edges[3]))
        ny, nx = labels.shape
        out = _to_rim_crest(np.pad(labels, pad, mode="edge"), np.pad(image, pad, mode="edge"), n)
        return out[pad[0][0]:pad[0][0] + ny, pad[1][0]:pad[1][0] + nx]
    # distance from the edge, up to n + 1, by successive erosions alternating a square and a
    # cross (an octagonal distance within a few % of the Euclidean one; a full distance
    # transform of the frame costs several times more, and only the outer n + 1 layers count)
    dist = cells.astype(np.uint8)
    cur = cells
    for k in range(n + 1):
        cur = _erode(cur, square=k % 2 == 0)
        if not cur.any():
            break
        dist += cur
    dist = dist.astype(np.int64)
    near = cells & (dist <= n + 1)
    ids = labels[near].astype(np.int64)
    nl = int(labels.max()) + 1
    key = ids * (n + 2) + np.minimum(dist[near], n + 1)
    total = np.bincount(key, weights=image[near], minlength=nl * (n + 2)).reshape(nl, n + 2)
    count = np.bincount(key, minlength=nl * (n + 2)).reshape(nl, n + 2)
    prof = np.where(count > 0, total / np.maximum(count, 1), -np.inf)[:, 1:]
    crest = np.argmax(prof, axis=1) + 1  # distance of the maximum, 1..n+1
    crest[(crest > n) | ~np.isfinite(prof.max(axis=1))] = 1  # no rim within reach
    crest[0] = 0
    return np.where(dist >= crest[labels], labels, 0).astype(labels.dtype)


def _label_percentile(values: np.ndarray, labels: np.ndarray, n: int, q: float,
                      default: np.ndarray | None = None) -> np.ndarray:
    """``q``-th percentile (nearest rank) of ``values`` per label ``1..n`` (one sort of the
    labelled pixels instead of one boolean mask per label); ``default`` (or 0) where a label
    has no pixel."""
    sel = labels > 0
    lab = labels[sel].astype(np.int64)
    val = values[sel].astype(np.float64)
    out = np.zeros(n, dtype=np.float64) if default is None else np.asarray(default, np.float64).copy()
    if lab.size == 0:
        return out.astype(np.float32)
    order = np.lexsort((val, lab))
    lab, val = lab[order], val[order]
    count = np.bincount(lab, minlength=n + 1)[1:]
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    has = count > 0
    pick = start + np.floor(q / 100.0 * (count - 1) + 0.5).astype(np.int64)
    out[has] = val[pick[has]]
    return out.astype(np.float32)


def _expand(labels: np.ndarray, distance: int) -> np.ndarray:
    """Grow labels into the background by ``distance`` pixels.

    ``distance`` steps of a 3 x 3 cross (the pixels within that city-block distance; for 2,
    exactly those within Euclidean distance 2); where two labels reach the same pixel in the
    same step the larger wins (only in gaps narrower than ``2 distance`` between cells). By
    shifted views rather than a distance transform with indices of the whole grid, which
    costs several times more for the 2 pixels needed here.
    """
    if distance <= 0 or labels.max() == 0:
        return labels
    grown = labels
    for _ in range(distance):
        p = _pad1(grown)
        nb = np.maximum(np.maximum(p[:-2, 1:-1], p[2:, 1:-1]),
                        np.maximum(p[1:-1, :-2], p[1:-1, 2:]))
        grown = np.where(grown > 0, grown, nb)
    return grown


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Relabel ``1..n`` in raster order of each label's first pixel.

    The first pixel of a label lies in the first row of its bounding box, so only that row
    is searched (no sort of the whole image)."""
    nmax = int(labels.max()) if labels.size else 0
    lut = np.zeros(nmax + 1, dtype=np.int32)
    if nmax == 0:
        return lut[labels]
    ids, firsts = [], []
    nx = labels.shape[1]
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        row = labels[sl[0].start, sl[1]]
        firsts.append(sl[0].start * nx + sl[1].start + int(np.argmax(row == i)))
        ids.append(i)
    order = np.asarray(ids)[np.argsort(firsts, kind="stable")]
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def segment_cells_stack(stack, *, pixel_size_um: float, config: CellConfig,
                        marker: str = "tspan4_gfp"):
    """:func:`segment_cells` over a ``(T, Y, X)`` dask (or numpy) stack, one task per frame.

    Returns a lazy int32 dask array with one chunk per frame (labels are per frame; cell
    identities over time come from tracking).
    """
    import dask.array as da

    if getattr(stack, "ndim", 0) != 3:
        raise InputError(f"expected a (T, Y, X) stack, got shape {getattr(stack, 'shape', None)}.",
                         fix="select one channel and reduce Z first.")
    arr = da.asarray(stack).rechunk((1, -1, -1))
    return arr.map_blocks(
        lambda block: segment_cells(block[0], pixel_size_um=pixel_size_um, config=config,
                                    marker=marker)[None],
        dtype=np.int32,
    )
