"""Assignment of each migrasome track to the cell that made it.

Public function
---------------
``assign_tracks(migrasomes, fibers, cell_frames, *, fiber_labels, cell_labels, pixel_size_um,
config=None, drift=None) -> DataFrame[track_id, cell_id, assign_reason, assign_distance_um]``

One row per ``track_id`` of ``migrasomes``; ``cell_id`` is -1 when unassigned, and
``assign_reason`` is one of ``schema.ASSIGN_REASONS``:

1. ``fiber_at_birth``: fiber vote. In each of the first ``birth_frames`` frames of the track
   and the ``vote_frames`` frames before its first detection, the nearest fiber skeleton
   pixel within ``fiber_distance_um`` of the migrasome votes for the cell its fiber belongs
   to, weight ``1 / (1 + d / fiber_distance_um)``. With ``fiber_geodesic`` (default) that
   cell is the one reached first walking from the migrasome along the skeleton of that fiber
   label, outside the cells, to a skeleton pixel within ``attach_distance_um`` of a cell (a
   skeleton component often holds several crossing fibers and touches several cells);
   otherwise it is the ``fibers`` table's cell of the whole fiber (``frame, fiber_id,
   cell_id``; the fiber label image holds ``fiber_id`` values). Without any vote in that
   window, the frames before are searched backwards (up to ``rear_lookback_frames``) for the
   nearest fiber at that place still attached to a cell: a small migrasome is detected only
   after it has grown, and its fiber may have broken in between. Cover vote: the cells whose
   masks came within ``cover_distance_um`` of the place in the ``rear_lookback_frames``
   frames up to the birth share ``cover_weight`` votes (default 8, more than the fiber votes
   of the whole window) in proportion to the number of frames each covered it. The producing
   cell's body passed over the adhesion it laid down, from its front reaching the place to
   its rear leaving it (the cell's length over its speed: many frames), then moved on and
   left the migrasome behind its rear; a neighbour's edge, or a piece of the producing
   cell's tail that the segmentation gave to a neighbour, covers the place a few frames only,
   and in crowded scenes fibers of neighbours cross the place. The most voted cell wins
   (reason ``rear_path`` if only cover votes back it; ``ambiguous`` when two cells have the
   same votes). Voting over frames keeps one frame where the producing cell was missed or
   merged with its neighbour (which then owns the fiber, or the place) from deciding.
2. ``rear_path``: otherwise (no fiber and no cell body over the place), the cells
   seen over the ``rear_lookback_frames`` frames up to the birth are scored by their smallest
   distance from the migrasome to the cell mask, counting only frames where the migrasome is
   at the cell's rear: inside the cell, or behind its centroid with respect to its direction of
   motion (from ``cell_frames`` centroids, drift-corrected). The nearest cell within
   ``rear_distance_um`` wins if the second one is at least ``ambiguity_margin_um`` farther.
3. ``ambiguous`` (-1): two cells are equally plausible, or cells were near but never had the
   migrasome behind them.
4. ``cell_not_in_view`` (-1): no cell came within ``rear_distance_um`` (e.g. a migrasome
   present from frame 0 whose cell was never in the field).

Cells seen in fewer than ``min_cell_frames`` frames (of a movie at least that long) are
segmentation artefacts (a piece cut off a cell for a frame or two, a passing blob: a cell
body lasts); their pixels are ignored by every rule, so a migrasome goes to the cell that
made it or to -1 with its reason, never to such a blob.

The migrasome position is the median of its drift-corrected positions over its first
``birth_frames`` frames (migrasomes are anchored), moved by each frame's drift before it is
looked up in that frame's label images. ``fiber_labels`` and ``cell_labels`` (cell ids, i.e.
relabelled with ``tracking.relabel``) are ``(T, Y, X)`` indexables read one frame at a time,
each frame once per call. All the place questions of one frame are answered together: the
nearest pixel of each cell is searched among the cells' outline pixels, the fiber among the
skeleton pixels, each with one KD-tree per frame (scipy), with the same answers as the
per-point definitions :func:`_nearest_labels` and :func:`_geodesic_cell_at` (tested equal).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from migradetect.drift import drift_at_frames
from migradetect.errors import InputError
from migradetect.params import param

log = logging.getLogger(__name__)

ASSIGN_COLUMNS = {"track_id": "int64", "cell_id": "int64", "assign_reason": "str",
                  "assign_distance_um": "float64"}


@dataclass(frozen=True)
class AssignConfig:
    """Parameters of the migrasome-to-cell assignment."""

    fiber_distance_um: float = param(
        1.5, unit="um", min=0.0, max=20.0,
        help="a migrasome sits on a fiber when a skeleton pixel is this close",
    )
    rear_distance_um: float = param(
        5.0, unit="um", min=0.0, max=200.0,
        help="farthest a cell's rear may have passed from a migrasome to be its maker",
    )
    ambiguity_margin_um: float = param(
        1.0, unit="um", min=0.0, max=100.0,
        help="the nearest cell must be this much nearer than the second, else ambiguous",
    )
    birth_frames: int = param(
        3, unit="frames", min=1, max=20,
        help="first frames of a track searched for the fiber it sits on",
    )
    rear_lookback_frames: int = param(
        30, unit="frames", min=0, max=500,
        help="frames before the first detection searched for an attached fiber under the "
             "migrasome and for the cell whose rear passed",
    )
    vote_frames: int = param(
        3, unit="frames", min=0, max=50,
        help="frames just before the first detection whose fibers vote, with the first "
             "birth_frames frames of the track, for the cell the migrasome sits on",
    )
    cover_weight: float = param(
        8.0, min=0.0, max=100.0,
        help="votes (in frames of fiber attachment) shared among the cells whose bodies "
             "covered the migrasome's place in the look-back window, in proportion to the "
             "frames each covered it (the producing cell's body passes over the adhesion it "
             "lays down; a neighbour's edge or a piece of tail given to the neighbour covers "
             "it a few frames): more than the whole fiber vote window, so the fibers decide "
             "only where the cover is split or missing",
    )
    fiber_geodesic: bool = param(
        True,
        help="follow the fiber skeleton from the migrasome to the first cell it reaches "
             "(geodesic) instead of using the fiber table's cell of the whole fiber",
    )
    attach_distance_um: float = param(
        1.0, unit="um", min=0.0, max=20.0,
        help="a fiber skeleton pixel this close to a cell reaches that cell (geodesic mode)",
    )
    cover_distance_um: float = param(
        1.0, unit="um", min=0.0, max=20.0,
        help="a cell covers the migrasome's place when its mask is this close",
    )
    min_cell_frames: int = param(
        3, unit="frames", min=1, max=1000,
        help="a cell seen in fewer frames (of a movie at least this long) is a segmentation "
             "artefact (a fragment or a passing blob; a cell body lasts), never a migrasome's "
             "maker: its pixels are ignored by every rule",
    )


def _outline(img: np.ndarray, *, border: bool) -> np.ndarray:
    """Pixels of a label that have a 4-neighbour of another value (the label's outline);
    with ``border``, pixels on the image border count as outline too (outside is 0)."""
    same = np.ones(img.shape, dtype=bool)
    same[1:] &= img[1:] == img[:-1]
    same[:-1] &= img[:-1] == img[1:]
    same[:, 1:] &= img[:, 1:] == img[:, :-1]
    same[:, :-1] &= img[:, :-1] == img[:, 1:]
    if border:
        same[0], same[-1], same[:, 0], same[:, -1] = False, False, False, False
    return (img > 0) & ~same


def _geodesic(lab: np.ndarray, cells: np.ndarray, attach_px: float,
              cell_edge: np.ndarray | None = None):
    """For every fiber skeleton pixel of one frame, the cell first reached along the
    skeleton and the path length to it (px).

    A fiber skeleton component often holds several fibers (they cross, or touch at the
    migrasomes), so the whole component touches several cells; the cell a migrasome's fiber
    belongs to is the one reached first walking along the skeleton from the migrasome.
    Multi-source Dijkstra (scipy.sparse.csgraph) on the 8-connected skeleton pixel graph,
    sources the skeleton pixels within ``attach_px`` of a cell (labelled by that cell).
    ``cell_edge`` is ``_outline(cells, border=False)`` when the caller has it.

    Returns ``(idx, cell_of, geo, lab, ys, xs)``: the skeleton pixel index per pixel (-1
    elsewhere), per skeleton pixel its cell (-1: none reached) and path length, the label
    image, and the skeleton pixels' coordinates (row-major, the index order).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    # walk outside the cells only: a fiber passing under a cell does not belong to it
    skel = (lab > 0) & (cells == 0)
    shape = skel.shape
    ys, xs = np.nonzero(skel)
    n = len(ys)
    idx = np.full(shape, -1, dtype=np.int32 if n < 2**31 else np.int64)
    idx[ys, xs] = np.arange(n)
    cell_of = np.full(n, -1, dtype=np.int64)
    geo = np.full(n, np.inf)
    if n == 0 or not (cells > 0).any():
        return idx, cell_of, geo, lab, ys, xs
    # skeleton pixels near a cell: the nearest cell edge pixel (a KD-tree on the edges,
    # far cheaper than a distance transform of the whole frame)
    edge = _outline(cells, border=False) if cell_edge is None else cell_edge
    ey, ex = np.nonzero(edge)
    dist, near = cKDTree(np.column_stack([ey, ex])).query(
        np.column_stack([ys, xs]), distance_upper_bound=attach_px + 1e-6)
    src = np.nonzero(np.isfinite(dist))[0]
    if len(src) == 0:
        return idx, cell_of, geo, lab, ys, xs
    src_cell = np.full(n, -1, dtype=np.int64)
    src_cell[src] = cells[ey[near[src]], ex[near[src]]]
    src_dist = np.where(np.isfinite(dist), dist, 0.0)
    # the skeleton graph from the skeleton pixels' own neighbours (work in the number of
    # skeleton pixels, not of frame pixels); edges in the order of their first pixel
    rows, cols, w = [], [], []
    node = np.arange(n)
    lab_s = lab[ys, xs]
    for dy, dx, wt in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))):
        ny, nx = ys + dy, xs + dx
        inside = (ny < shape[0]) & (nx >= 0) & (nx < shape[1])
        b = np.full(n, -1, dtype=np.int64)
        b[inside] = idx[ny[inside], nx[inside]]
        ok = b >= 0
        ok[ok] = lab[ny[ok], nx[ok]] == lab_s[ok]  # along one fiber label only
        rows.append(node[ok]), cols.append(b[ok]), w.append(np.full(ok.sum(), wt))
    g = coo_matrix((np.concatenate(w), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(n, n)).tocsr()
    d, _, source = dijkstra(g, directed=False, indices=src, min_only=True,
                            return_predecessors=True)
    reached = source >= 0
    cell_of[reached] = src_cell[source[reached]]
    geo[reached] = d[reached] + src_dist[source[reached]]
    return idx, cell_of, geo, lab, ys, xs


def _geodesic_cell_at(frame_geo, p: np.ndarray, radius_px: float):
    """(cell_id, distance to the fiber px) of the cell first reached along the fiber from
    the skeleton pixels within ``radius_px`` of ``p`` (``frame_geo`` from :func:`_geodesic`);
    cell -1 when the fiber reaches no cell; None when there is no fiber. The definition (one
    point, one crop); :func:`_geodesic_cells_at_many` answers many points at once."""
    idx, cell_of, geo, lab = frame_geo[:4]
    r = int(math.ceil(radius_px)) + 1
    y0, x0 = int(round(p[0])), int(round(p[1]))
    ys0, xs0 = max(y0 - r, 0), max(x0 - r, 0)
    crop = idx[ys0:max(y0 + r + 1, 0), xs0:max(x0 + r + 1, 0)]
    yy, xx = np.nonzero(crop >= 0)
    if len(yy) == 0:
        return None
    d = np.hypot(yy + ys0 - p[0], xx + xs0 - p[1])
    keep = d <= radius_px
    if not keep.any():
        return None
    yy, xx, d = yy[keep] + ys0, xx[keep] + xs0, d[keep]
    # the fiber it sits on: the label of the nearest skeleton pixel
    same = lab[yy, xx] == lab[yy[np.argmin(d)], xx[np.argmin(d)]]
    nodes, d = idx[yy[same], xx[same]], d[same]
    total = d + geo[nodes]
    k = int(np.argmin(total))
    if not np.isfinite(total[k]):
        return -1, float(d.min())
    return int(cell_of[nodes[k]]), float(d.min())


def _nearest_labels(img: np.ndarray, p: np.ndarray, radius_px: float) -> dict[int, float]:
    """Smallest distance (px) from point ``p`` to each label within ``radius_px``. The
    definition (one point, one crop); :func:`_nearest_labels_many` answers many at once."""
    r = int(math.ceil(radius_px)) + 1
    y0, x0 = int(round(p[0])), int(round(p[1]))
    ys, xs = max(y0 - r, 0), max(x0 - r, 0)
    crop = img[ys:max(y0 + r + 1, 0), xs:max(x0 + r + 1, 0)]
    yy, xx = np.nonzero(crop > 0)
    if len(yy) == 0:
        return {}
    d = np.hypot(yy + ys - p[0], xx + xs - p[1])
    keep = d <= radius_px
    if not keep.any():
        return {}
    lab, d = crop[yy[keep], xx[keep]], d[keep]
    order = np.lexsort((d, lab))
    lab, d = lab[order], d[order]
    first = np.r_[True, lab[1:] != lab[:-1]]
    return dict(zip(lab[first].tolist(), d[first].tolist()))


def _nearest_labels_many(img: np.ndarray, pts: np.ndarray, radius_px: float,
                         edge: np.ndarray | None = None) -> list[dict[int, float]]:
    """:func:`_nearest_labels` for many points of one label image at once, same answers.

    The pixel of a label nearest to a point is the pixel the point lies in, or else a pixel on
    the label's outline (4-neighbour boundary; any other pixel has a neighbour of the same
    label nearer to the point). So only the outline pixels are searched, with a KD-tree
    (scipy), plus the label under each point; distances are computed as in
    :func:`_nearest_labels`.
    """
    from scipy.spatial import cKDTree

    n = len(pts)
    out: list[dict[int, float]] = [{} for _ in range(n)]
    if n == 0 or img.size == 0:
        return out
    if edge is None:
        edge = _outline(img, border=True)
    ey, ex = np.nonzero(edge)
    q_idx, lab_l, d_l = [], [], []
    if len(ey):
        hits = cKDTree(np.column_stack([ey, ex])).query_ball_point(pts, radius_px + 1.0)
        counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=n)
        if counts.sum():
            e = np.fromiter(chain.from_iterable(hits), dtype=np.int64, count=counts.sum())
            qi = np.repeat(np.arange(n), counts)
            q_idx.append(qi)
            lab_l.append(img[ey[e], ex[e]])
            d_l.append(np.hypot(ey[e] - pts[qi, 0], ex[e] - pts[qi, 1]))
    # the pixel under each point (interior pixels are not on an outline)
    ry = np.round(pts[:, 0]).astype(np.int64)
    rx = np.round(pts[:, 1]).astype(np.int64)
    ok = (ry >= 0) & (ry < img.shape[0]) & (rx >= 0) & (rx < img.shape[1])
    qi = np.nonzero(ok)[0]
    if len(qi):
        lab = img[ry[qi], rx[qi]]
        keep = lab > 0
        q_idx.append(qi[keep])
        lab_l.append(lab[keep])
        d_l.append(np.hypot(ry[qi][keep] - pts[qi[keep], 0], rx[qi][keep] - pts[qi[keep], 1]))
    if not q_idx:
        return out
    qi, lab, d = np.concatenate(q_idx), np.concatenate(lab_l), np.concatenate(d_l)
    keep = d <= radius_px
    qi, lab, d = qi[keep], lab[keep], d[keep]
    if len(qi) == 0:
        return out
    order = np.lexsort((d, lab, qi))
    qi, lab, d = qi[order], lab[order], d[order]
    first = np.r_[True, (qi[1:] != qi[:-1]) | (lab[1:] != lab[:-1])]
    for i, lb, dd in zip(qi[first].tolist(), lab[first].tolist(), d[first].tolist()):
        out[i][lb] = dd
    return out


def _velocities(cell_frames: pd.DataFrame | None, drift: pd.DataFrame | None) -> dict:
    """(cell_id, frame) -> (centroid y, x in image px, velocity vy, vx drift-corrected)."""
    if cell_frames is None or len(cell_frames) == 0:
        return {}
    cf = cell_frames.sort_values(["cell_id", "frame"]).reset_index(drop=True)
    dy, dx = drift_at_frames(drift, cf["frame"].to_numpy())
    cy, cx = cf["y_px"].to_numpy(np.float64) - dy, cf["x_px"].to_numpy(np.float64) - dx
    out = {}
    for _, idx in cf.groupby("cell_id").indices.items():
        f = cf["frame"].to_numpy()[idx]
        vy = np.gradient(cy[idx], f) if len(idx) > 1 else np.zeros(1)
        vx = np.gradient(cx[idx], f) if len(idx) > 1 else np.zeros(1)
        for k, i in enumerate(idx):
            out[(int(cf["cell_id"][i]), int(f[k]))] = (cf["y_px"][i], cf["x_px"][i], vy[k], vx[k])
    return out


def assign_tracks(
    migrasomes: pd.DataFrame,
    fibers: pd.DataFrame | None,
    cell_frames: pd.DataFrame | None,
    *,
    fiber_labels: Any,
    cell_labels: Any,
    pixel_size_um: float,
    config: AssignConfig | None = None,
    drift: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Give each migrasome track the cell that made it (see the module docstring).

    Parameters
    ----------
    migrasomes
        Tracked detections: ``track_id, frame, y_px, x_px`` (image coordinates, px).
    fibers
        Fiber table ``frame, fiber_id, cell_id`` (-1: fiber attached to no cell), or None.
    cell_frames
        Tracked cells ``frame, cell_id, y_px, x_px`` (for the direction of motion), or None.
    fiber_labels
        ``(T, Y, X)`` fiber skeleton labels (values = ``fiber_id``), or None.
    cell_labels
        ``(T, Y, X)`` cell labels whose values are cell ids, or None.
    pixel_size_um
        µm per pixel.
    config
        :class:`AssignConfig`; defaults when None.
    drift
        Cumulative drift ``frame, dy_px, dx_px``, or None.

    Returns
    -------
    DataFrame
        ``track_id, cell_id, assign_reason, assign_distance_um`` (distance from the migrasome
        to the fiber or cell that decided, µm; NaN when unassigned), sorted by ``track_id``.
    """
    config = config or AssignConfig()
    missing = {"track_id", "frame", "y_px", "x_px"} - set(migrasomes.columns)
    if missing:
        raise InputError(f"the migrasome table lacks the columns {sorted(missing)}.",
                         fix="link detections with tracking.link_migrasomes first.")
    if not pixel_size_um > 0:
        raise InputError(f"pixel_size_um must be > 0, got {pixel_size_um}.",
                         fix="give the pixel size in µm.")
    if len(migrasomes) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in ASSIGN_COLUMNS.items()})
    has_fib, has_cel = fiber_labels is not None, cell_labels is not None
    n_t = int(cell_labels.shape[0]) if has_cel else None
    transient, transient_frames = _transient_cells(
        cell_frames, min(config.min_cell_frames,
                         n_t if n_t else int(migrasomes["frame"].max()) + 1))
    fiber_cell: dict[tuple[int, int], int] = {}
    if fibers is not None and len(fibers):
        fiber_cell = {(int(f), int(i)): -1 if int(c) in transient else int(c) for f, i, c in
                      fibers[["frame", "fiber_id", "cell_id"]].itertuples(index=False)}
    motion = _velocities(cell_frames, drift)
    use_geo = bool(config.fiber_geodesic and has_fib and has_cel)

    m = migrasomes.sort_values(["track_id", "frame"], kind="stable")
    fr = m["frame"].to_numpy(np.int64)
    dy, dx = drift_at_frames(drift, fr)
    m = m.assign(_yc=m["y_px"].to_numpy(np.float64) - dy, _xc=m["x_px"].to_numpy(np.float64) - dx)
    # each track's first birth_frames rows (m is sorted by track, then frame) and the median
    # of their positions, in one groupby instead of a Python loop over tracks
    head = m.groupby("track_id", sort=False).head(config.birth_frames)
    med = head.groupby("track_id", sort=False)[["_yc", "_xc"]].median()
    h_tid = head["track_id"].to_numpy(np.int64)
    h_fr = head["frame"].to_numpy(np.int64)
    starts = np.r_[0, np.nonzero(h_tid[1:] != h_tid[:-1])[0] + 1, len(h_tid)]
    med_yx = med.loc[h_tid[starts[:-1]]].to_numpy(np.float64)
    births = [(int(h_fr[a]), int(h_tid[a]), h_fr[a:b], med_yx[i].copy())
              for i, (a, b) in enumerate(zip(starts[:-1], starts[1:]))]
    births.sort(key=lambda b: (b[0], b[1]))

    n_all = int(max(fr.max(), n_t - 1 if n_t else 0)) + 1
    dyf, dxf = drift_at_frames(drift, np.arange(n_all))

    def at(pc: np.ndarray, f: int) -> np.ndarray:
        return pc + np.array([dyf[f], dxf[f]])

    # Every place-and-frame question the rules ask is answered in one sweep over the frames,
    # reading each label frame once and holding one frame at a time: memory does not grow
    # with the movie (a cache of the look-back window held ~35 full frames, GiBs at 2048²).
    r_fib = config.fiber_distance_um / pixel_size_um
    r_cel = max(config.cover_distance_um, config.rear_distance_um) / pixel_size_um
    n_fib = int(fiber_labels.shape[0]) if has_fib else 0
    fib_q: dict[int, list[int]] = {}
    cel_q: dict[int, list[int]] = {}
    for k, (birth, _tid, head_frames, _pc) in enumerate(births):
        if has_fib:
            wanted = {int(f) for f in head_frames}
            wanted.update(range(max(0, birth - 1 - config.rear_lookback_frames), birth))
            for f in wanted:
                if 0 <= f < n_fib:
                    fib_q.setdefault(f, []).append(k)
        if has_cel:
            for f in range(max(0, birth - config.rear_lookback_frames), min(birth, n_t - 1) + 1):
                cel_q.setdefault(f, []).append(k)
    fib_ans: dict[tuple[int, int], Any] = {}
    cel_ans: dict[tuple[int, int], dict[int, float]] = {}
    for f in sorted(set(fib_q) | set(cel_q)):
        cells = np.asarray(cell_labels[f]) if has_cel and (f in cel_q or use_geo) else None
        if cells is not None and f in transient_frames:
            cells = np.where(np.isin(cells, transient_frames[f]), 0, cells)
        edge = _outline(cells, border=False) if cells is not None else None
        if f in fib_q:
            lab = np.asarray(fiber_labels[f])
            frame_geo = _geodesic(lab, cells, config.attach_distance_um / pixel_size_um,
                                  edge) if use_geo and cells is not None else None
            ks = fib_q[f]
            pts = np.array([at(births[k][3], f) for k in ks]).reshape(-1, 2)
            for k, hit in zip(ks, _fiber_cells_many(lab, f, pts, fiber_cell, r_fib, frame_geo)):
                fib_ans[(k, f)] = hit
            del lab, frame_geo
        if f in cel_q:
            ks = cel_q[f]
            pts = np.array([at(births[k][3], f) for k in ks]).reshape(-1, 2)
            # the outline with the image border (a label's pixel nearest to a point
            # outside it may lie on the border)
            edge[0], edge[-1], edge[:, 0], edge[:, -1] = (cells[0] > 0, cells[-1] > 0,
                                                          cells[:, 0] > 0, cells[:, -1] > 0)
            for k, near in zip(ks, _nearest_labels_many(cells, pts, r_cel, edge)):
                cel_ans[(k, f)] = near
        del cells, edge

    rows = []
    for k, (birth, tid, head_frames, pc) in enumerate(births):
        def fiber_at(f: int, k: int = k):
            return fib_ans.get((k, f))

        def cells_near(f: int, radius_px: float, k: int = k) -> dict[int, float]:
            return {c: d for c, d in cel_ans.get((k, f), {}).items() if d <= radius_px}

        rows.append(_assign_one(tid, birth, head_frames, pc, at,
                                fiber_at if has_fib else None,
                                cells_near if has_cel else None, n_t, motion,
                                pixel_size_um, config))
    out = pd.DataFrame(rows, columns=list(ASSIGN_COLUMNS)).sort_values("track_id")
    return out.astype(ASSIGN_COLUMNS).reset_index(drop=True)


def _fiber_cells_many(lab: np.ndarray, f: int, pts: np.ndarray, fiber_cell: dict,
                      radius_px: float, frame_geo=None) -> list:
    """:func:`_fiber_cell` for many points of one frame at once, same answers."""
    if frame_geo is not None:
        return _geodesic_cells_at_many(frame_geo, pts, radius_px)
    out = []
    for near in _nearest_labels_many(lab, pts, radius_px):
        if not near:
            out.append(None)
            continue
        fiber_id, d = min(near.items(), key=lambda kv: kv[1])
        out.append((fiber_cell.get((f, int(fiber_id)), -1), d))
    return out


def _geodesic_cells_at_many(frame_geo, pts: np.ndarray, radius_px: float) -> list:
    """:func:`_geodesic_cell_at` for many points at once (a KD-tree over the skeleton pixels,
    scipy), same answers: ties go to the first pixel in row-major order, as there."""
    from scipy.spatial import cKDTree

    _, cell_of, geo, lab, sy, sx = frame_geo  # node k: the k-th skeleton pixel, row-major
    n = len(pts)
    out: list = [None] * n
    if n == 0 or len(sy) == 0:
        return out
    hits = cKDTree(np.column_stack([sy, sx])).query_ball_point(pts, radius_px + 1.0)
    counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=n)
    if counts.sum() == 0:
        return out
    node = np.fromiter(chain.from_iterable(hits), dtype=np.int64, count=counts.sum())
    qi = np.repeat(np.arange(n), counts)
    d = np.hypot(sy[node] - pts[qi, 0], sx[node] - pts[qi, 1])
    keep = d <= radius_px
    qi, node, d = qi[keep], node[keep], d[keep]
    if len(qi) == 0:
        return out
    # the nearest skeleton pixel of each point (first in row-major order on ties): its fiber
    order = np.lexsort((node, d, qi))
    first = order[np.r_[True, qi[order][1:] != qi[order][:-1]]]
    q_first = qi[first]
    near_lab = np.zeros(n, dtype=lab.dtype)
    near_d = np.zeros(n)
    near_lab[q_first] = lab[sy[node[first]], sx[node[first]]]
    near_d[q_first] = d[first]
    same = lab[sy[node], sx[node]] == near_lab[qi]
    qi, node, d = qi[same], node[same], d[same]
    total = d + geo[node]
    order = np.lexsort((node, total, qi))
    best = order[np.r_[True, qi[order][1:] != qi[order][:-1]]]
    for q, b in zip(qi[best].tolist(), best.tolist()):
        if not np.isfinite(total[b]):
            out[q] = (-1, float(near_d[q]))
        else:
            out[q] = (int(cell_of[node[b]]), float(near_d[q]))
    return out


def _transient_cells(cell_frames: pd.DataFrame | None,
                     min_frames: int) -> tuple[set[int], dict[int, np.ndarray]]:
    """Cells seen in fewer than ``min_frames`` frames (segmentation artefacts: a piece of a
    cell cut off for a frame or two, a passing blob), and per frame the ids of those there."""
    if cell_frames is None or len(cell_frames) == 0 or min_frames <= 1:
        return set(), {}
    n = cell_frames.groupby("cell_id")["frame"].nunique()
    short = n.index[n.to_numpy() < min_frames].to_numpy(np.int64)
    if len(short) == 0:
        return set(), {}
    rows = cell_frames[cell_frames["cell_id"].isin(short)]
    per_frame = {int(f): g["cell_id"].to_numpy(np.int64)
                 for f, g in rows.groupby("frame", sort=True)}
    return {int(c) for c in short}, per_frame


def _fiber_cell(lab: np.ndarray, f: int, p: np.ndarray, fiber_cell: dict, radius_px: float,
                frame_geo=None):
    """(cell_id, distance px) of the nearest fiber within ``radius_px`` of ``p`` in frame
    ``f`` (fiber labels ``lab``); cell_id -1 when that fiber is attached to no cell; None
    when there is no fiber. With ``frame_geo`` (:func:`_geodesic` of that frame), the cell is
    the one reached first along the fiber. The definition for one point;
    :func:`_fiber_cells_many` answers many at once."""
    if frame_geo is not None:
        return _geodesic_cell_at(frame_geo, p, radius_px)
    near = _nearest_labels(lab, p, radius_px)
    if not near:
        return None
    fiber_id, d = min(near.items(), key=lambda kv: kv[1])
    return fiber_cell.get((f, int(fiber_id)), -1), d


def _cover_frames(cells_near, birth: int, n_t: int, radius_px: float,
                  lookback: int) -> dict[int, int]:
    """Per cell, the number of frames from ``birth - lookback`` to ``birth`` in which its mask
    came within ``radius_px`` of the place (its body covered the place)."""
    out: dict[int, int] = {}
    for f in range(min(birth, n_t - 1), max(-1, birth - 1 - lookback), -1):
        for c in cells_near(f, radius_px):
            out[c] = out.get(c, 0) + 1
    return out


def _assign_one(tid, birth, head_frames, pc, at, fiber_at, cells_near, n_t, motion,
                pixel_size_um, config) -> tuple:
    """One track's (track_id, cell_id, assign_reason, distance µm). ``fiber_at(f)`` answers
    :func:`_fiber_cell` at the track's place in frame ``f`` (None: no fiber there, or no
    fiber labels); ``cells_near(f, radius_px)`` the cells within that radius."""
    # Fiber vote. The fiber under the migrasome in its first frames, and in the few frames
    # before its first detection (a small migrasome is seen only after it has grown), votes
    # for the cell it is attached to, a closer fiber weighing more (weight 1 on the fiber,
    # 1/2 at fiber_distance_um). One frame's attachment is fragile: a cell missed or merged
    # with its neighbour in that frame hands the fiber to the neighbour; the vote over frames
    # keeps a single bad frame from deciding.
    votes: dict[int, float] = {}
    dist: dict[int, float] = {}
    fib = fiber_at
    if fib is not None:
        r_fib = config.fiber_distance_um / pixel_size_um
        frames = [int(f) for f in head_frames]
        n_before = min(config.vote_frames, config.rear_lookback_frames)
        frames += [f for f in range(birth - 1, birth - 1 - n_before, -1) if f >= 0]
        for f in frames:
            hit = fiber_at(f)
            if hit is not None and hit[0] >= 0:
                w = 1.0 / (1.0 + hit[1] / max(r_fib, 1e-9))
                votes[hit[0]] = votes.get(hit[0], 0.0) + w
                dist[hit[0]] = min(dist.get(hit[0], math.inf), hit[1])
        if not votes:
            # none in the window: the nearest earlier frame with an attached fiber there
            for f in range(birth - 1 - n_before,
                           max(-1, birth - 1 - config.rear_lookback_frames), -1):
                hit = fiber_at(f)
                if hit is not None and hit[0] >= 0:
                    return tid, hit[0], "fiber_at_birth", hit[1] * pixel_size_um
    # Cover vote. A migrasome is left behind the rear of the cell that made it: that cell's
    # body was over the place before the birth (from its front reaching the place to its rear
    # leaving it: the cell's length over its speed, many frames), then moved on. A
    # neighbour's edge, or a piece of the producing cell's tail that the segmentation gave to
    # the neighbour, covers it a few frames only; so the cover_weight votes are shared in
    # proportion to the frames each cell covered the place in the look-back window (the most
    # recent cover alone picked the neighbour in most wrong assignments of crowded scenes).
    # The cover votes also decide when no fiber voted (the fiber had broken, or was missed).
    if cells_near is not None and config.cover_weight > 0:
        cover = _cover_frames(cells_near, birth, n_t, config.cover_distance_um / pixel_size_um,
                              config.rear_lookback_frames)
        total = sum(cover.values())
        for c, n in cover.items():
            votes[c] = votes.get(c, 0.0) + config.cover_weight * n / total
    if votes:
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], dist.get(kv[0], math.inf)))
        cid = ranked[0][0]
        if len(ranked) > 1 and ranked[1][1] >= ranked[0][1] - 1e-9 and \
                dist.get(ranked[1][0], math.inf) == dist.get(cid, math.inf):
            return tid, -1, "ambiguous", math.nan  # two cells with the same evidence
        if cid in dist:
            return tid, cid, "fiber_at_birth", dist[cid] * pixel_size_um
        return tid, cid, "rear_path", 0.0
    if cells_near is None:
        return tid, -1, "cell_not_in_view", math.nan
    radius = config.rear_distance_um / pixel_size_um
    best: dict[int, float] = {}
    seen_any = False
    last = min(birth, n_t - 1)
    for f in range(max(0, birth - config.rear_lookback_frames), last + 1):
        p = at(pc, f)
        for cid, d in cells_near(f, radius).items():
            seen_any = True
            if d > 0 and (cid, f) in motion:
                cy, cx, vy, vx = motion[(cid, f)]
                if math.hypot(vy, vx) > 0.05 and (p[0] - cy) * vy + (p[1] - cx) * vx > 0:
                    continue  # the migrasome is ahead of this cell, not at its rear
            best[cid] = min(best.get(cid, math.inf), float(d))
    if not best:
        return tid, -1, "ambiguous" if seen_any else "cell_not_in_view", math.nan
    ranked = sorted(best.items(), key=lambda kv: kv[1])
    margin_px = config.ambiguity_margin_um / pixel_size_um
    if len(ranked) > 1 and ranked[1][1] - ranked[0][1] < margin_px:
        return tid, -1, "ambiguous", math.nan
    return tid, ranked[0][0], "rear_path", ranked[0][1] * pixel_size_um
