"""Cell identities over time (label overlap, then centroid distance) and per-cell motion.

Public functions (re-exported by :mod:`migradetect.tracking`)
-------------------------------------------------------------
``track_cells(cell_labels, *, pixel_size_um, frame_interval_s, config=None, drift=None)
-> (mapping, cell_frames)``
    ``cell_labels`` is a ``(T, Y, X)`` indexable of per-frame labels (numpy, dask or zarr), read
    one frame at a time. ``mapping`` has ``frame, label, cell_id`` (cell ids 1, 2, ... stable
    over time); ``cell_frames`` has the columns of ``schema.CELL_FRAMES`` without experiment
    and movie: ``frame, cell_id, y_px, x_px, area_um2, time_s, speed_um_per_min,
    touches_border``.
``track_cells_split(cell_labels, *, ..., backward=False) -> (mapping, cell_frames, splits)``
    The same, and a label holding two touching cells that were apart before (segmented as
    one) is split between them by their masks of the previous frame; ``splits`` holds the
    split-off parts per frame. ``apply_splits(labels, pieces)`` writes one frame's parts into
    a copy of its labels, ``write_splits(array, splits)`` into a writable stack (then the
    mapping's lookup table applies to it).
``relabel(labels, mapping, *, frame=None, splits=None) -> labels with cell ids``
``summarize_cells(cell_frames, tracks=None, *, pixel_size_um, frame_interval_s, drift=None)``
    One row per cell, the columns of ``schema.CELLS`` without experiment and movie.

How identities are kept. In each frame, every track seen within the last
``cell_max_gap_frames + 1`` frames is compared with every label of the frame by the
intersection over union (IoU) of the track's last mask and the label; one-to-one matches
maximise the total IoU (Hungarian, scipy ``linear_sum_assignment``), a track not seen in the
previous frame paying a small penalty. When two cells touch and are segmented as one label,
the label keeps the identity with the larger overlap and the other track waits with its last
separate mask; when they split again, the joint matching restores both. Labels left without
an overlap match are matched to remaining tracks by centroid distance (at most
``cell_max_step_um`` per elapsed frame), and labels still unmatched (cells entering the field)
get new ids. Written here because trackpy/laptrack link points, not masks, and overlap is what
separates cells that pass close to each other. :func:`track_cells_split` adds the split of
glued labels (its docstring has the rules and the stop rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.measure import regionprops

from migradetect import schema
from migradetect.drift import drift_at_frames
from migradetect.errors import InputError

if TYPE_CHECKING:
    from migradetect.tracking import TrackingConfig

CELL_FRAME_COLUMNS = {c: d for c, d in schema.CELL_FRAMES.items()
                      if c not in ("experiment", "movie")}
CELL_COLUMNS = {c: d for c, d in schema.CELLS.items() if c not in ("experiment", "movie")}
_BIG = 1e9


def _match(cost: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one matches with finite cost < _BIG."""
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] < _BIG]


def _checked_config(cell_labels: Any, pixel_size_um: float, frame_interval_s: float,
                    config: TrackingConfig | None) -> TrackingConfig:
    if config is None:
        from migradetect.tracking import TrackingConfig

        config = TrackingConfig()
    if getattr(cell_labels, "ndim", 3) != 3:
        raise InputError(f"cell labels must be a (T, Y, X) stack, got {cell_labels.ndim} dims.",
                         fix="pass one label image per frame stacked over time.")
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise InputError("pixel_size_um and frame_interval_s must be > 0.",
                         fix="give the movie's calibration.")
    return config


def track_cells(
    cell_labels: Any,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    config: TrackingConfig | None = None,
    drift: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every segmented cell an identity that is stable over frames.

    Labels are never split here (:func:`track_cells_split` also splits a label that holds two
    cells that were apart before or after).

    Parameters
    ----------
    cell_labels
        ``(T, Y, X)`` label stack (0 = background), indexable frame by frame.
    pixel_size_um
        µm per pixel.
    frame_interval_s
        Time between frames, s.
    config
        :class:`~migradetect.tracking.TrackingConfig` (``cell_*`` fields); defaults when None.
    drift
        Cumulative drift ``frame, dy_px, dx_px``; when given, speeds are drift-corrected
        (``y_px, x_px`` stay image coordinates).

    Returns
    -------
    mapping, cell_frames
        See the module docstring.
    """
    config = _checked_config(cell_labels, pixel_size_um, frame_interval_s, config)
    tracker = _Tracker(config, pixel_size_um, None)
    for t in range(int(cell_labels.shape[0])):
        tracker.step(t, np.asarray(cell_labels[t]))
    return tracker.tables(pixel_size_um, frame_interval_s, drift)


def track_cells_split(
    cell_labels: Any,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    config: TrackingConfig | None = None,
    drift: pd.DataFrame | None = None,
    min_frames_to_split: int = 3,
    core_um: float = 3.0,
    min_kept_fraction: float = 0.5,
    apart_um: float = 0.3,
    apart_frames: int = 3,
    entered_only: bool = True,
    backward: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, list[tuple[int, int, np.ndarray]]]]:
    """:func:`track_cells`, and touching cells segmented as one label keep both identities.

    When a label of frame ``t`` covers most of the last mask of a tracked cell that found no
    label of its own, and that label is the continuation of another tracked cell, and the two
    cells were seen apart (more than ``apart_um`` between their labels: background between
    them) in at least ``apart_frames`` frames, the label is split between them: every pixel goes to the cell whose mask of the previous frame is
    nearest (cells move far less than their size between frames, so the part of the blob a
    cell occupied just before is still that cell's). The parts carry the identities on while
    the cells stay glued; the ordinary overlap matching takes over when the segmentation
    separates them again. Both cells must have been tracked for ``min_frames_to_split``
    frames up to the previous one.

    A part is kept apart only while it is still a cell body (the stop rule): it keeps at
    least ``min_kept_fraction`` of the area the cell had when last segmented on its own (a
    cell body does not halve in a few frames; a piece that melts into its neighbour, e.g. an
    over-segmented lobe or a fan of fibers, does), and it has a core: a point at least
    ``core_um`` from the part's outline (the cut between the parts counting as outline; a
    cell body is 15-40 µm across, the thin fans and debris that are sometimes segmented are
    not). A new label lying mostly inside a tracked cell's last mask (a piece cut off it) is
    never split off again; nor are the pieces of one over-segmented cell, which always touch
    each other (the ``apart`` rule; one frame apart was not enough: a piece that a cut left a
    few pixels off its cell was then held apart for many frames). With ``entered_only``, only
    a cell first seen in the first frame or at the frame's edge is held apart: a cell comes
    into view there, while an object that appears in the middle of the field (a piece cut
    off a cell, a fan of fibers segmented for a few frames) is not a cell that can be lost.

    With ``backward`` the same tracking first runs from the last frame to the first, so that
    cells glued from the first frames (which separate later) are split too, with the
    identities they have after they separate; the forward pass then runs on the labels that
    pass split. Only cells glued without a break up to the first frame are split there (a
    glue that starts later is the forward pass's).

    Measured (``benchmarks/bench_tracking.py --e2e``, 384², 40 frames, seeds 1000-1007, with
    assignment at 98896fb): mean assignment accuracy 0.733 -> 0.736, summed per-cell count
    errors 248 -> 239, no movie worse in count error (one -0.008 in accuracy); ``backward``
    changed nothing more there (nor on the tuning seeds 0-15, where accuracy went 0.747 ->
    0.753). About 2x the CPU of :func:`track_cells` (~2 ms more per 384² frame).

    Returns
    -------
    mapping, cell_frames, splits
        As :func:`track_cells`, with labels that refer to the split frames; ``splits`` is
        ``{frame: [(y0, x0, crop), ...]}``: each ``crop`` is written over the frame's labels
        from ``(y0, x0)`` where it is non-zero (the split-off parts, with new label values
        above the frame's largest), in list order. :func:`relabel` (``splits=``) and
        :func:`write_splits` apply them.
    """
    config = _checked_config(cell_labels, pixel_size_um, frame_interval_s, config)
    rule = _SplitRule(min_frames=int(min_frames_to_split), core_px=core_um / pixel_size_um,
                      min_kept=float(min_kept_fraction), gap_px=apart_um / pixel_size_um,
                      apart_frames=int(apart_frames), origin=bool(entered_only))
    n_t = int(cell_labels.shape[0])
    before: dict[int, list] = {}
    if backward and n_t > 1:
        back = _Tracker(config, pixel_size_um, rule)
        found = []
        for k in range(n_t):
            found += back.step(k, np.asarray(cell_labels[n_t - 1 - k]))
        # only cells glued up to the first frame: a glue that starts later is the forward
        # pass's, which follows the cells into it in the order they lived it
        first: dict[int, int] = {}  # cell -> first (backward) frame of its split run to the end
        for k, cid in reversed(back.split_cells):
            if first.get(cid, n_t) == k + 1:
                first[cid] = k
        for (k, cid), piece in zip(back.split_cells, found, strict=True):
            if k >= first.get(cid, n_t):
                before.setdefault(n_t - 1 - k, []).append(piece)
    tracker = _Tracker(config, pixel_size_um, rule)
    splits: dict[int, list] = {}
    for t in range(n_t):
        lab = np.asarray(cell_labels[t])
        if t in before:
            lab = apply_splits(lab, before[t])
        pieces = before.get(t, []) + tracker.step(t, lab)
        if pieces:
            splits[t] = pieces
    mapping, cf = tracker.tables(pixel_size_um, frame_interval_s, drift)
    return mapping, cf, splits


def apply_splits(labels: np.ndarray, pieces: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """A copy of one frame's ``labels`` with the split pieces of that frame written in."""
    out = np.array(labels, dtype=np.promote_types(np.asarray(labels).dtype, np.int32))
    for y0, x0, crop in pieces:
        view = out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
        on = crop > 0
        view[on] = crop[on]
    return out


def write_splits(array: Any, splits: dict[int, list[tuple[int, int, np.ndarray]]]) -> None:
    """Write the splits of :func:`track_cells_split` into a writable label stack (zarr,
    numpy), frame by frame, so that the mapping's lookup table applies to it."""
    for t, pieces in splits.items():
        array[t] = apply_splits(np.asarray(array[t]), pieces).astype(array.dtype, copy=False)


@dataclass(frozen=True)
class _SplitRule:
    """When a label holding glued cells is split (see :func:`track_cells_split`)."""

    min_frames: int = 3
    core_px: float = 20.0
    min_kept: float = 0.5
    min_cover: float = 0.5  # the waiting cell's last mask lies this much in the label
    gap_px: float = 2.0  # cells "apart" in a frame: their labels more than this far apart
    apart_frames: int = 3  # ... in at least this many frames
    origin: bool = True  # only cells that came into view at the frame's edge or frame 0


class _Tracker:
    """Frame-by-frame identity keeping (module docstring); with a :class:`_SplitRule`, the
    labels holding glued cells are split (:func:`track_cells_split`)."""

    def __init__(self, config: TrackingConfig, pixel_size_um: float,
                 rule: _SplitRule | None) -> None:
        self.config, self.px, self.rule = config, pixel_size_um, rule
        self.tracks: dict[int, dict] = {}  # cell_id -> last seen state
        self.next_id = 1
        self.apart: dict[frozenset, int] = {}  # pairs of cells: frames seen apart
        self.map_rows: list[tuple[int, int, int]] = []
        self.frame_rows: list[dict] = []
        self.split_cells: list[tuple[int, int]] = []  # (frame, cell) of each split-off part

    def step(self, t: int, lab: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Identities for frame ``t`` (its labels ``lab``); returns the frame's split pieces."""
        config, tracks = self.config, self.tracks
        props = regionprops(lab)
        labels = [p.label for p in props]
        areas = np.array([p.area for p in props], dtype=np.float64)
        cents = np.array([p.centroid for p in props], dtype=np.float64).reshape(-1, 2)
        index = {lb: j for j, lb in enumerate(labels)}
        cands = [cid for cid, s in tracks.items() if t - s["frame"] <= config.cell_max_gap_frames + 1]
        cost = np.full((len(cands), len(labels)), _BIG)
        cover = np.zeros((len(cands), len(labels)))  # fraction of the track's mask in label
        for i, cid in enumerate(cands):
            s = tracks[cid]
            (r0, c0, r1, c1) = s["bbox"]
            inter = np.bincount(lab[r0:r1, c0:c1][s["mask"]].ravel())
            for lb in np.nonzero(inter)[0]:
                if lb == 0:
                    continue
                j = index[int(lb)]
                cover[i, j] = inter[lb] / s["area"]
                iou = inter[lb] / (s["area"] + areas[j] - inter[lb])
                if iou >= config.cell_min_iou:
                    cost[i, j] = 1.0 - iou + 0.1 * (t - s["frame"] - 1)
        matches = _match(cost)
        free_tr = sorted(set(range(len(cands))) - {i for i, _ in matches})
        free_lb = sorted(set(range(len(labels))) - {j for _, j in matches})
        if free_tr and free_lb:
            dist = np.full((len(free_tr), len(free_lb)), _BIG)
            for a, i in enumerate(free_tr):
                s = tracks[cands[i]]
                d = np.hypot(*(cents[free_lb] - s["centroid"]).T) * self.px
                ok = d <= config.cell_max_step_um * (t - s["frame"])
                dist[a, ok] = d[ok]
            matches += [(free_tr[a], free_lb[b]) for a, b in _match(dist)]
        ids = {j: cands[i] for i, j in matches}
        born_inside = set()
        for j in range(len(labels)):
            if j not in ids:
                ids[j] = self.next_id
                self.next_id += 1
                # a new label mostly inside a tracked cell's last mask is a piece cut off it
                # (over-segmentation), not a cell of its own: never split off again later
                if len(cands) and max(cover[i, j] * tracks[cands[i]]["area"]
                                      for i in range(len(cands))) >= 0.5 * areas[j]:
                    born_inside.add(ids[j])
        glued = self._glued(t, cands, matches, cover, ids) if self.rule else {}
        if self.rule is not None:
            done = {p for p, n in self.apart.items() if n >= self.rule.apart_frames}
            for pair in _apart_pairs(lab, props, ids, self.rule.gap_px, done):
                self.apart[pair] = self.apart.get(pair, 0) + 1
        pieces = []
        next_label = max(labels, default=0) + 1
        shape = lab.shape
        for j, p in enumerate(props):
            parts = self._split(lab, p, glued[j]) if j in glued else None
            if parts is None:
                self._record(t, labels[j], ids[j], p.image, p.bbox, areas[j], cents[j], shape,
                             whole=True, born_inside=ids[j] in born_inside)
                continue
            r0, c0, _, _ = p.bbox
            for cid, m in parts.items():
                lb = labels[j]
                if cid != ids[j]:  # the label's own cell keeps it, the others get new ones
                    lb = next_label
                    next_label += 1
                    pieces.append((int(r0), int(c0), np.where(m, lb, 0).astype(np.int32)))
                    self.split_cells.append((t, cid))
                yy, xx = np.nonzero(m)
                y0, x0 = yy.min(), xx.min()
                self._record(t, lb, cid, m[y0:yy.max() + 1, x0:xx.max() + 1],
                             (r0 + y0, c0 + x0, r0 + yy.max() + 1, c0 + xx.max() + 1),
                             float(len(yy)), np.array([r0 + yy.mean(), c0 + xx.mean()]), shape,
                             whole=False, born_inside=False)
        return pieces

    def _record(self, t: int, label: int, cid: int, mask: np.ndarray, bbox: tuple, area: float,
                cent: np.ndarray, shape: tuple, *, whole: bool, born_inside: bool) -> None:
        old = self.tracks.get(cid)
        self.tracks[cid] = {
            "frame": t, "bbox": tuple(int(v) for v in bbox), "mask": mask, "area": area,
            "centroid": cent, "n": old["n"] + 1 if old else 1,
            "piece": old["piece"] if old else born_inside,
            # first seen in the pass's first frame or at the frame's edge: a cell comes into
            # view there, it does not appear out of nothing in the middle of the field
            "origin": old["origin"] if old else (t == 0 or bool(
                bbox[0] == 0 or bbox[1] == 0 or bbox[2] == shape[0] or bbox[3] == shape[1])),
            # the area of the cell when last segmented on its own (the split stop rule)
            "own_area": area if whole or old is None else old["own_area"],
        }
        r0, c0, r1, c1 = bbox
        self.map_rows.append((t, int(label), cid))
        self.frame_rows.append({
            "frame": t, "cell_id": cid, "y_px": cent[0], "x_px": cent[1],
            "area_um2": area * self.px**2,
            "touches_border": bool(r0 == 0 or c0 == 0 or r1 == shape[0] or c1 == shape[1]),
        })

    def _glued(self, t: int, cands: list[int], matches: list, cover: np.ndarray,
               ids: dict[int, int]) -> dict[int, list[int]]:
        """Labels holding glued cells: ``{label index: [its matched cell, waiting cells]}``.

        A glued cell: established (``min_frames``, seen in the previous frame, not a piece
        cut off another cell), left without a label, its last mask mostly inside a label
        matched to another established cell that it was once seen apart from (pieces of one
        over-segmented cell always touch each other)."""
        rule, tracks = self.rule, self.tracks
        glued: dict[int, list[int]] = {}
        if not len(cands) or not cover.shape[1]:
            return glued
        matched = {i for i, _ in matches}
        for i, cid in enumerate(cands):
            s = tracks[cid]
            if (i in matched or s["frame"] != t - 1 or s["n"] < rule.min_frames or s["piece"]
                    or (rule.origin and not s["origin"])):
                continue
            j = int(np.argmax(cover[i]))
            if cover[i, j] < rule.min_cover:
                continue
            owner = tracks.get(ids[j])
            if (owner is None or owner["n"] < rule.min_frames or owner["frame"] != t - 1
                    or self.apart.get(frozenset((ids[j], cid)), 0) < rule.apart_frames):
                continue
            glued.setdefault(j, [ids[j]]).append(cid)
        return glued

    def _split(self, lab: np.ndarray, prop: Any, owners: list[int]) -> dict[int, np.ndarray] | None:
        """Split the label ``prop`` between the cells ``owners`` (the first is the label's
        matched cell): each pixel to the cell whose last mask is nearest (Euclidean distance
        transform with indices, scipy). Waiting cells whose part fails the stop rule are left
        out and the split redone; None when no waiting cell is left (or the matched cell's
        own part fails). Returns each cell's mask in the label's bounding box."""
        r0, c0, r1, c1 = prop.bbox
        region = prop.image
        shape = lab.shape
        # the frame's edge is not the cells' outline (a cell cut by it continues beyond)
        edges = (r0 == 0, r1 == shape[0], c0 == 0, c1 == shape[1])
        owners = list(owners)
        while len(owners) > 1:
            seed = np.zeros(region.shape, np.int64)
            clash = np.zeros(region.shape, bool)
            keep = []
            for cid in owners:
                st = self.tracks[cid]
                sr0, sc0, sr1, sc1 = st["bbox"]
                y0, x0 = max(sr0, r0), max(sc0, c0)
                y1, x1 = min(sr1, r1), min(sc1, c1)
                if y1 <= y0 or x1 <= x0:
                    continue
                m = (st["mask"][y0 - sr0:y1 - sr0, x0 - sc0:x1 - sc0]
                     & region[y0 - r0:y1 - r0, x0 - c0:x1 - c0])
                # at least 1/4 of its last mask in the label, else the cell is not in there
                if m.sum() < 0.25 * st["area"]:
                    continue
                view = seed[y0 - r0:y1 - r0, x0 - c0:x1 - c0]
                clash[y0 - r0:y1 - r0, x0 - c0:x1 - c0] |= m & (view > 0)
                view[m] = cid
                keep.append(cid)
            if owners[0] not in keep:
                return None
            if len(keep) < len(owners):
                owners = keep
                continue
            seed[clash] = 0
            if not (seed > 0).any():
                return None
            _, (iy, ix) = ndimage.distance_transform_edt(seed == 0, return_indices=True)
            ids = np.where(region, seed[iy, ix], 0)
            parts = {cid: ids == cid for cid in owners}
            failed = [cid for cid in owners if not self._supported(parts[cid], cid, edges)]
            if not failed:
                return parts
            if owners[0] in failed:
                return None
            owners = [cid for cid in owners if cid not in failed]
        return None

    def _supported(self, part: np.ndarray, cid: int, edges: tuple[bool, ...]) -> bool:
        """The stop rule: a part keeps ``min_kept`` of the cell's own area and has a core."""
        area = float(part.sum())
        if area < self.rule.min_kept * self.tracks[cid]["own_area"]:
            return False
        # distance to the part's outline; pad with background except on the frame's edges.
        # On a grid of ~1/8 of the core depth: the test needs no finer distances, and the
        # transform of a whole cell at full resolution cost more than the rest of the tracking
        step = max(1, int(self.rule.core_px // 8))
        padded = np.pad(part[::step, ::step], 1)
        top, bottom, left, right = edges
        if top:
            padded[0] = padded[1]
        if bottom:
            padded[-1] = padded[-2]
        if left:
            padded[:, 0] = padded[:, 1]
        if right:
            padded[:, -1] = padded[:, -2]
        return float(ndimage.distance_transform_edt(padded).max()) * step >= self.rule.core_px

    def tables(self, pixel_size_um: float, frame_interval_s: float,
               drift: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        mapping = pd.DataFrame(self.map_rows, columns=["frame", "label", "cell_id"]).astype("int64")
        cf = pd.DataFrame(self.frame_rows)
        if len(cf) == 0:
            return mapping, schema.empty(CELL_FRAME_COLUMNS)
        cf["time_s"] = cf["frame"] * frame_interval_s
        cf = cf.sort_values(["cell_id", "frame"], kind="stable").reset_index(drop=True)
        step = _steps_um(cf, pixel_size_um, drift)
        dt_min = cf.groupby("cell_id")["frame"].diff().to_numpy() * frame_interval_s / 60.0
        cf["speed_um_per_min"] = step / dt_min
        cf = cf.sort_values(["frame", "cell_id"], kind="stable")
        return mapping, schema.conform(cf, CELL_FRAME_COLUMNS)


def _apart_pairs(lab: np.ndarray, props: list, ids: dict[int, int], gap_px: float,
                 skip: set) -> set:
    """Pairs of cell ids whose labels in this frame are more than ``gap_px`` apart (pairs
    whose bounding boxes come that close are tested by a distance transform, scipy); pairs
    in ``skip`` are left out."""
    out = set()
    boxes = np.array([p.bbox for p in props], dtype=np.int64).reshape(-1, 4)
    for a in range(len(props)):
        for b in range(a + 1, len(props)):
            if frozenset((ids[a], ids[b])) in skip:
                continue
            (a0, a1, a2, a3), (b0, b1, b2, b3) = boxes[a], boxes[b]
            if a0 > b2 + gap_px or b0 > a2 + gap_px or a1 > b3 + gap_px or b1 > a3 + gap_px:
                out.add(frozenset((ids[a], ids[b])))
                continue
            g = math.ceil(gap_px)
            y0, x0 = max(min(a0, b0) - g, 0), max(min(a1, b1) - g, 0)
            y1, x1 = max(a2, b2) + g, max(a3, b3) + g
            crop = lab[y0:y1, x0:x1]
            near = ndimage.distance_transform_edt(crop != props[a].label) <= gap_px
            if not (near & (crop == props[b].label)).any():
                out.add(frozenset((ids[a], ids[b])))
    return out


def _corrected_yx(cf: pd.DataFrame, drift: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    dy, dx = drift_at_frames(drift, cf["frame"].to_numpy())
    return cf["y_px"].to_numpy(np.float64) - dy, cf["x_px"].to_numpy(np.float64) - dx


def _steps_um(cf: pd.DataFrame, pixel_size_um: float, drift: pd.DataFrame | None) -> np.ndarray:
    """Centroid step from the cell's previous observed frame (NaN at its first), µm.

    ``cf`` must be sorted by cell_id, then frame.
    """
    y, x = _corrected_yx(cf, drift)
    same = np.r_[False, cf["cell_id"].to_numpy()[1:] == cf["cell_id"].to_numpy()[:-1]]
    step = np.full(len(cf), np.nan)
    step[1:] = np.hypot(np.diff(y), np.diff(x)) * pixel_size_um
    step[~same] = np.nan
    return step


def relabel(labels: np.ndarray, mapping: pd.DataFrame, *, frame: int | None = None,
            splits: dict | None = None) -> np.ndarray:
    """Replace the segmentation labels of one frame by cell ids (0 stays background).

    ``mapping`` holds ``label, cell_id`` (and ``frame``: rows of other frames are ignored
    when ``frame`` is given). Labels absent from the mapping become 0. ``splits`` (from
    :func:`track_cells_split`; needs ``frame``): that frame's split pieces are written into
    the labels first.
    """
    m = mapping if frame is None else mapping[mapping["frame"] == frame]
    if splits and frame is not None and frame in splits:
        labels = apply_splits(labels, splits[frame])
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lb = m["label"].to_numpy(np.int64)
    keep = lb <= labels.max()
    lut[lb[keep]] = m["cell_id"].to_numpy(np.int64)[keep]
    return lut[labels]


def summarize_cells(
    cell_frames: pd.DataFrame,
    tracks: pd.DataFrame | None = None,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    drift: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per tracked cell: observation span, motion and migrasome count.

    Definitions: ``observed_s = (last_frame - first_frame) * frame_interval_s``;
    ``path_length_um`` = sum of centroid steps between consecutive observations
    (drift-corrected when ``drift`` is given); ``mean_speed_um_per_min = path_length_um /
    observed_s * 60`` (NaN when observed once); ``net_displacement_um`` = first to last
    centroid; ``persistence = net / path`` (NaN when path is 0); ``n_migrasomes`` = tracks
    whose ``cell_id`` is this cell; ``migrasomes_per_100um = n_migrasomes / path_length_um *
    100`` (NaN when the path is 0); ``touches_border`` = in any frame; ``mean_area_um2``.

    Parameters
    ----------
    cell_frames
        Table from :func:`track_cells` (``frame, cell_id, y_px, x_px, area_um2`` and
        optionally ``touches_border``).
    tracks
        Migrasome tracks with ``cell_id`` (e.g. from ``assign.assign_tracks``); None: no counts.
    pixel_size_um, frame_interval_s
        Calibration, µm per pixel and s.
    drift
        Cumulative drift ``frame, dy_px, dx_px``, to correct the path length.
    """
    if len(cell_frames) == 0:
        return schema.empty(CELL_COLUMNS)
    cf = cell_frames.sort_values(["cell_id", "frame"], kind="stable").reset_index(drop=True)
    step = _steps_um(cf, pixel_size_um, drift)
    y, x = _corrected_yx(cf, drift)
    cf = cf.assign(_step=step, _y=y, _x=x)
    if "touches_border" not in cf:
        cf["touches_border"] = False
    counts = (tracks["cell_id"].value_counts() if tracks is not None and len(tracks)
              else pd.Series(dtype="int64"))
    rows = []
    for cid, g in cf.groupby("cell_id", sort=True):
        first, last = int(g["frame"].iloc[0]), int(g["frame"].iloc[-1])
        path = float(np.nansum(g["_step"].to_numpy()))
        observed = (last - first) * frame_interval_s
        net = math.hypot(g["_y"].iloc[-1] - g["_y"].iloc[0],
                         g["_x"].iloc[-1] - g["_x"].iloc[0]) * pixel_size_um
        n_mig = int(counts.get(cid, 0))
        rows.append({
            "cell_id": int(cid), "first_frame": first, "last_frame": last,
            "n_frames": len(g), "observed_s": observed,
            "touches_border": bool(g["touches_border"].any()),
            "path_length_um": path,
            "mean_speed_um_per_min": path / observed * 60.0 if observed > 0 else math.nan,
            "n_migrasomes": n_mig,
            "migrasomes_per_100um": n_mig / path * 100.0 if path > 0 else math.nan,
            "net_displacement_um": net,
            "persistence": net / path if path > 0 else math.nan,
            "mean_area_um2": float(g["area_um2"].mean()),
        })
    return schema.conform(pd.DataFrame(rows), CELL_COLUMNS)
