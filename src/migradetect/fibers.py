"""Retraction fibers: ridge measure, hysteresis, skeleton graphs (skan).

Retraction fibers are membrane tubes narrower than the diffraction limit, so their image is a
line whose cross-section IS the point-spread function: one Gaussian scale at the PSF width
(floor 1 pixel) suffices, because the width is fixed by the optics, not by the object.

Ridge measure (in noise sigmas of the filter's own output, so thresholds are SNRs):

- the curvature across a line, ``-(n^T H n)`` for 8 line directions (22.5 degrees apart),
  each averaged along its direction over ``line_smoothing_um`` (fibers are straight over a
  few µm: this gathers signal that a pixel-scale Hessian alone cannot see); maximum over
  the directions;
- minus a blob term ``max(0, -l2)`` (``l1 <= l2`` the Hessian eigenvalues): a punctum curves
  down in every direction, a line only across itself, so migrasomes are not fibers;
- minus an edge term ``|grad g| / st`` (``st`` the total blur): at the inner shoulder of a
  blurred edge (a large migrasome's rim) ``|grad g| = |l1| st``; a line's centre has no
  gradient;
- and a pixel must also curve across at its own position (isotropic ridge > 0), so the
  along-line averaging does not carry the mask past a fiber's end.

Hysteresis (seeds above ``high_threshold``, grown over ``low_threshold``), outside the cell
bodies. Isotropic blobs (migrasomes, crossings) and very bright spots cannot seed a fiber but
are filled in where a fiber touches them, so the graph runs through a migrasome instead of
breaking or looping around its rim. Then skeletonize (scikit-image), graph with skan
(``skan.Skeleton``, once per frame), side branches shorter than ``min_length_um`` pruned on
the graph, fibers shorter than ``min_length_um`` dropped, lengths from 5-pixel-smoothed
paths, branch points counted as clusters of junction pixels.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from migradetect.errors import ConfigError, InputError
from migradetect.params import param
from migradetect.preprocess import _check_frame, _check_pixel_size, block_mean, noise_sigma

logger = logging.getLogger(__name__)

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

    low_threshold: float = param(2.0, min=0.0,
                                 help="hysteresis low threshold, in noise sigmas of the ridge "
                                      "filter")
    high_threshold: float = param(4.0, min=0.0,
                                  help="hysteresis high threshold (seeds), in noise sigmas of "
                                       "the ridge filter")
    ridge_scales: tuple[float, ...] = param(
        (1.0,), min=0.3, max=5.0,
        help="Gaussian scales of the ridge filter, in units of the PSF sigma (floor 1 pixel)",
    )
    line_smoothing_um: float = param(
        0.3, unit="um", min=0.0, max=5.0,
        help="Gaussian sigma of the averaging along each of 8 line directions (fibers are "
             "straight over a few µm; longer averaging finds fainter fibers); 0 disables",
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
    out = w[0] * p[:ny]
    tmp = np.empty_like(out)
    for i in range(1, len(w)):
        np.multiply(p[i:i + ny], w[i], out=tmp)
        out += tmp
    return out


def _along(p: np.ndarray, o: int, shape: tuple[int, int], w: np.ndarray, dy: int,
           dx: int) -> np.ndarray:
    """Smooth with the symmetric 1-D kernel ``w`` along the pixel step ``(dy, dx)``.

    ``p`` is the image padded by ``o`` pixels on every side (edges replicated); the result
    has ``shape``. Written as a sum of shifted slices: integer steps need no interpolation
    and cost one add per tap."""
    r = len(w) // 2
    ny, nx = shape
    out = p[o: o + ny, o: o + nx] * w[r]
    tmp = np.empty_like(out)
    for k in range(1, r + 1):
        np.add(p[o + k * dy: o + k * dy + ny, o + k * dx: o + k * dx + nx],
               p[o - k * dy: o - k * dy + ny, o - k * dx: o - k * dx + nx], out=tmp)
        tmp *= w[r + k]
        out += tmp
    return out


def _direction_weights(dy: int, dx: int) -> tuple[float, float, float]:
    """Weights of (hyy, hxx, hxy) in the second derivative across a line along (dy, dx)."""
    ny, nx = dx / np.hypot(dy, dx), -dy / np.hypot(dy, dx)  # unit normal
    return ny * ny, nx * nx, 2.0 * ny * nx


#: Line directions as pixel steps (8 directions, 22.5 degrees apart to within 4 degrees) and
#: the weights of (hyy, hxx, hxy) in the curvature across a line running along them.
_DIRECTIONS = tuple(((dy, dx), _direction_weights(dy, dx)) for dy, dx in
                    ((0, 1), (1, 2), (1, 1), (2, 1), (1, 0), (2, -1), (1, -1), (1, -2)))


def _hessian(g: np.ndarray) -> tuple[np.ndarray, ...]:
    """Central-difference Hessian and squared gradient of ``g`` on its interior."""
    c = g[1:-1, 1:-1]
    up, down, left, right = g[:-2, 1:-1], g[2:, 1:-1], g[1:-1, :-2], g[1:-1, 2:]
    hyy = down + up
    hyy -= 2.0 * c
    hxx = right + left
    hxx -= 2.0 * c
    hxy = g[2:, 2:] - g[2:, :-2]
    hxy -= g[:-2, 2:]
    hxy += g[:-2, :-2]
    hxy *= 0.25
    grad2 = down - up
    grad2 *= grad2
    gx = right - left
    gx *= gx
    grad2 += gx
    grad2 *= 0.25
    return hyy, hxx, hxy, grad2


def _line_chain(frame: np.ndarray, sigma_px: float, along_px: float):
    """Per-direction line responses ``-(smoothed cross-line 2nd derivative)`` (interior),
    the isotropic blob and gradient terms, and the smoothed frame."""
    g = smooth(frame, sigma_px)
    hyy, hxx, hxy, grad2 = _hessian(g)
    kernels = [_gaussian_kernel(max(along_px / float(np.hypot(dy, dx)), 0.3), truncate=2.5)
               if along_px > 0 else np.ones(1, np.float32) for (dy, dx), _ in _DIRECTIONS]
    pad = max(len(k) // 2 * max(abs(dy), abs(dx))
              for k, ((dy, dx), _) in zip(kernels, _DIRECTIONS, strict=True))
    # pad the Hessian once; each direction's cross-line curvature is made on the padded grid
    hp = [np.pad(h, pad, mode="edge") for h in (hyy, hxx, hxy)]
    tmp = np.empty_like(hp[0])
    responses = []
    for w, ((dy, dx), (a, b, c)) in zip(kernels, _DIRECTIONS, strict=True):
        d = hp[0] * np.float32(-a)
        np.multiply(hp[1], np.float32(-b), out=tmp)
        d += tmp
        np.multiply(hp[2], np.float32(-c), out=tmp)
        d += tmp
        responses.append(_along(d, pad, hyy.shape, w, dy, dx))
    half_trace = 0.5 * (hxx + hyy)
    root = np.sqrt((0.5 * (hxx - hyy)) ** 2 + hxy**2)
    blob = np.maximum(-(half_trace + root), 0.0)
    return responses, blob, np.sqrt(grad2), g, root - half_trace


@functools.lru_cache(maxsize=32)
def _chain_noise(sigma_px: float, along_px: float) -> tuple[tuple[float, ...], float]:
    """Noise std of each direction's line response and of ``hxx`` for unit white noise
    (computed on a delta image: the chain is linear)."""
    half = int(np.ceil(4 * sigma_px + 4 * along_px)) + 4
    delta = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    delta[half, half] = 1.0
    responses, _, _, g, _ = _line_chain(delta, sigma_px, along_px)
    gains = tuple(float(np.sqrt(np.sum(r.astype(np.float64) ** 2))) for r in responses)
    hxx = g[1:-1, 2:] - 2.0 * g[1:-1, 1:-1] + g[1:-1, :-2]
    return gains, float(np.sqrt(np.sum(hxx.astype(np.float64) ** 2)))


def _ridge(frame: np.ndarray, sigma_px: float, along_px: float, line_sigma_px: float,
           noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge measure R and blob measure B (noise sigmas) and the smoothed frame at one scale.

    R = max over 8 directions of the line response (cross-line curvature averaged along
    the direction over ``along_px``, in its own noise sigmas) minus the blob and edge
    penalties (isotropic Hessian, in noise sigmas of ``hxx``)."""
    responses, blob, grad, g, cross = _line_chain(frame, sigma_px, along_px)
    gains, h_gain = _chain_noise(sigma_px, along_px)
    noise = max(noise, 1e-12)
    best = responses[0] * np.float32(1.0 / (noise * gains[0]))
    for resp, gain in zip(responses[1:], gains[1:]):
        np.maximum(best, resp * np.float32(1.0 / (noise * gain)), out=best)
    inv_h = np.float32(1.0 / (noise * h_gain))
    blob *= inv_h
    # |grad g| / st: zero at a line's centre, |l1| at the shoulder of a blurred edge
    grad *= inv_h / np.float32(np.hypot(sigma_px, line_sigma_px))
    best -= blob
    best -= grad
    # a fiber pixel must also curve across at its own position (isotropic ridge > 0): stops
    # the along-line averaging from carrying the mask past a fiber's end
    iso = cross * inv_h
    iso -= blob
    iso -= grad
    np.minimum(best, np.where(iso > 0, best, np.float32(0)), out=best)
    ridge = np.zeros(frame.shape, dtype=np.float32)
    ridge[1:-1, 1:-1] = best
    # isotropic blobs only (both curvatures similar: spots, crossings), not line ends
    out_blob = np.zeros(frame.shape, dtype=np.float32)
    out_blob[1:-1, 1:-1] = np.where(blob > 0.6 * cross * inv_h, blob, np.float32(0))
    return ridge, out_blob, g


def ridge_measure(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
                  config: FiberConfig, noise: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge and blob measures in noise sigmas (float32; max over scales) and the frame
    smoothed at the first scale.

    ``noise`` is the frame's pixel noise sigma (default :func:`preprocess.noise_sigma`).
    Returns ``(R, B, smoothed)``: the ridge measure, the blob measure ``max(0, -l2)`` (both
    Hessian eigenvalues negative: spots, and crossings of two fibers).
    """
    frame = np.asarray(_check_frame(frame), dtype=np.float32)
    pixel_size_um = _check_pixel_size(pixel_size_um)
    if noise is None:
        noise = noise_sigma(frame)
    psf_px = psf_sigma_um / pixel_size_um
    line_px = float(np.hypot(psf_px, np.sqrt(1.0 / 12.0)))  # PSF and pixel integration
    along_px = config.line_smoothing_um / pixel_size_um
    ridge = blob = smoothed = None
    for k in config.ridge_scales:
        r, b, g = _ridge(frame, max(1.0, k * psf_px), along_px, line_px, noise)
        if ridge is None:
            ridge, blob, smoothed = r, b, g
        else:
            np.maximum(ridge, r, out=ridge)
            np.maximum(blob, b, out=blob)
    return ridge, blob, smoothed


def _hysteresis(values: np.ndarray, low: float, seeds: np.ndarray) -> np.ndarray:
    """Pixels above ``low`` connected (8-neighbours) to a seed pixel (boolean ``seeds``)."""
    lab, n = ndi.label(values > low, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(values.shape, dtype=bool)
    keep = np.zeros(n + 1, dtype=bool)
    keep[lab[seeds]] = True
    keep[0] = False
    return keep[lab]


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


def fiber_mask(frame: np.ndarray, *, pixel_size_um: float, psf_sigma_um: float,
               config: FiberConfig, cell_labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Y, X)`` mask of ridge pixels (hysteresis), outside the cell bodies."""
    frame = np.asarray(_check_frame(frame), dtype=np.float32)
    noise = noise_sigma(frame)
    r, b, g = ridge_measure(frame, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
                            config=config, noise=noise)
    # bridges: blob-like regions (migrasomes on fibers, crossings of two fibers) and bright
    # regions (large migrasomes: their flat tops have no curvature at the PSF scale),
    # widened by the line filter's reach. They cannot seed a fiber (so a migrasome alone
    # is no fiber), but those touching a fiber are filled in, so the fiber graph runs
    # through them instead of breaking or looping around their rims.
    step = max(2, int(round(2.0 / pixel_size_um)))
    coarse = ndi.minimum_filter(block_mean(g, step), size=3, mode="nearest")
    local_bg = np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)
    local_bg = local_bg[: frame.shape[0], : frame.shape[1]]
    bridge = b > config.low_threshold
    bridge |= (g - local_bg) > 2.0 * config.high_threshold * noise
    reach = int(np.ceil((config.line_smoothing_um + psf_sigma_um) / pixel_size_um))
    if reach > 0 and bridge.any():
        bridge = ndi.maximum_filter(bridge, size=2 * reach + 1)
    cells = None
    if cell_labels is not None:
        cells = np.asarray(cell_labels) > 0
        if cells.shape != frame.shape:
            raise InputError(f"cell labels shape {cells.shape} differs from the frame's "
                             f"{frame.shape}.", fix="pass cell labels of the same frame.")
        m = int(round(config.cell_margin_um / pixel_size_um))
        if m > 0:
            cells = ndi.maximum_filter(cells, size=2 * m + 1)
        r = np.where(cells, np.float32(0), r)
    seeds = (r > config.high_threshold) & ~bridge
    mask = _hysteresis(r, config.low_threshold, seeds)
    if cells is not None:
        bridge &= ~cells
    if not mask.any():
        return mask
    # close one-pixel gaps and holes (they would become loops in the skeleton); lines
    # closer than that are not resolved optically anyway
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), border_value=0) | mask
    if cells is not None:
        mask &= ~cells
    blab, nb = ndi.label(bridge, structure=np.ones((3, 3)))
    if nb:
        touch = np.zeros(nb + 1, dtype=bool)
        touch[blab[mask]] = True
        touch[0] = False
        mask |= touch[blab]
    return mask


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
    mask = fiber_mask(frame, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
                      config=config, cell_labels=cell_labels)
    labels = np.zeros(frame.shape, dtype=np.int32)
    min_len_px = config.min_length_um / pixel_size_um
    # drop mask pieces too small to hold a fiber of the minimum length before skeletonizing
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n:
        sizes = np.bincount(lab.ravel())
        small = sizes < max(3.0, min_len_px)
        small[0] = True
        mask = ~small[lab]
    if mask.sum() < 2:
        return labels, empty_fiber_table()
    skel = skeletonize(mask)
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
    nodes = _nodes_table(coords[sel], deg[sel], fid_node,
                         config.junction_merge_um / pixel_size_um)
    fid = np.arange(1, kept.size + 1)
    n_tips = np.bincount(nodes.loc[nodes["kind"] == "tip", "fiber_id"], minlength=kept.size + 1)
    n_branch = np.bincount(nodes.loc[nodes["kind"] == "branch_point", "fiber_id"],
                           minlength=kept.size + 1)
    cell_id = np.full(kept.size, -1, dtype=np.int64)
    if cell_labels is not None:
        cell_id = _attach(labels, np.asarray(cell_labels), kept.size,
                          config.attach_distance_um / pixel_size_um)
    table = pd.DataFrame({
        "frame": np.full(kept.size, frame_index, dtype=np.int64),
        "fiber_id": fid.astype(np.int64),
        "cell_id": cell_id,
        "length_um": comp_len[kept] * pixel_size_um,
        "n_tips": n_tips[1:],
        "n_branch_points": n_branch[1:],
    })
    return labels, table.astype(FIBER_TABLE)


def _attach(fiber_labels: np.ndarray, cell_labels: np.ndarray, n_fibers: int,
            radius_px: float) -> np.ndarray:
    """Cell id nearest to each fiber (any of its pixels) within ``radius_px``, else -1."""
    out = np.full(n_fibers, -1, dtype=np.int64)
    cells = cell_labels > 0
    if not cells.any():
        return out
    edge = cells & ~ndi.binary_erosion(cells, border_value=1)
    ey, ex = np.nonzero(edge)
    fy, fx = np.nonzero(fiber_labels)
    dist, idx = cKDTree(np.column_stack([ey, ex])).query(
        np.column_stack([fy, fx]), distance_upper_bound=radius_px + 1e-6)
    hit = np.isfinite(dist)
    if not hit.any():
        return out
    df = pd.DataFrame({"fiber": fiber_labels[fy[hit], fx[hit]], "dist": dist[hit],
                       "cell": cell_labels[ey[idx[hit]], ex[idx[hit]]]})
    best = df.sort_values(["fiber", "dist", "cell"]).drop_duplicates("fiber")
    out[best["fiber"].to_numpy() - 1] = best["cell"].to_numpy()
    return out


def segment_fibers_stack(stack, *, pixel_size_um: float, psf_sigma_um: float,
                         config: FiberConfig, cell_labels=None) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`segment_fibers` over a ``(T, Y, X)`` stack, one dask task per frame.

    ``stack`` and ``cell_labels`` may be numpy or dask arrays; frames are read inside the
    tasks. Returns the int32 ``(T, Y, X)`` fiber labels and the concatenated table (computed;
    for movies too long to hold the labels in memory, call :func:`segment_fibers` per frame
    and write each result out).
    """
    import dask

    if getattr(stack, "ndim", 0) != 3:
        raise InputError(f"expected a (T, Y, X) stack, got shape {getattr(stack, 'shape', None)}.",
                         fix="select one channel and reduce Z first.")

    def one(frame, cl, t: int):
        return segment_fibers(np.asarray(frame), pixel_size_um=pixel_size_um,
                              psf_sigma_um=psf_sigma_um, config=config,
                              cell_labels=None if cl is None else np.asarray(cl), frame_index=t)

    tasks = [dask.delayed(one)(stack[t], None if cell_labels is None else cell_labels[t], t)
             for t in range(stack.shape[0])]
    results = dask.compute(*tasks)
    if not results:
        return np.zeros((0,) + tuple(stack.shape[1:]), dtype=np.int32), empty_fiber_table()
    labels = np.stack([r[0] for r in results])
    tables = [r[1] for r in results if len(r[1])]
    table = pd.concat(tables, ignore_index=True) if tables else empty_fiber_table()
    return labels, table.astype(FIBER_TABLE)
