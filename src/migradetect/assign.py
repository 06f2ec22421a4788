"""Assignment of each migrasome track to the cell that made it.

Public function
---------------
``assign_tracks(migrasomes, fibers, cell_frames, *, fiber_labels, cell_labels, pixel_size_um,
config=None, drift=None) -> DataFrame[track_id, cell_id, assign_reason, assign_distance_um]``

One row per ``track_id`` of ``migrasomes``; ``cell_id`` is -1 when unassigned, and
``assign_reason`` is one of ``schema.ASSIGN_REASONS``:

1. ``fiber_at_birth``: in one of the first ``birth_frames`` frames of the track, a fiber
   skeleton pixel lies within ``fiber_distance_um`` of the migrasome, and that fiber (the
   nearest one) belongs to a cell (``fibers`` table: ``frame, fiber_id, cell_id``; the fiber
   label image holds ``fiber_id`` values). Failing that, the frames before the first
   detection are searched backwards (up to ``rear_lookback_frames``) for the nearest fiber
   at that place still attached to a cell: a small migrasome is detected only after it has
   grown, and its fiber may have broken in between.
2. ``rear_path``: otherwise (the fiber has already broken, or no fiber is seen), the cells
   seen over the ``rear_lookback_frames`` frames up to the birth are scored by their smallest
   distance from the migrasome to the cell mask, counting only frames where the migrasome is
   at the cell's rear: inside the cell, or behind its centroid with respect to its direction of
   motion (from ``cell_frames`` centroids, drift-corrected). The nearest cell within
   ``rear_distance_um`` wins if the second one is at least ``ambiguity_margin_um`` farther.
3. ``ambiguous`` (-1): two cells are equally plausible, or cells were near but never had the
   migrasome behind them.
4. ``cell_not_in_view`` (-1): no cell came within ``rear_distance_um`` (e.g. a migrasome
   present from frame 0 whose cell was never in the field).

The migrasome position is the median of its drift-corrected positions over its first
``birth_frames`` frames (migrasomes are anchored), moved by each frame's drift before it is
looked up in that frame's label images. ``fiber_labels`` and ``cell_labels`` (cell ids, i.e.
relabelled with ``tracking.relabel``) are ``(T, Y, X)`` indexables read one frame at a time,
each frame at most once per call when the window of frames fits the cache.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
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


class _FrameCache:
    """Reads frames of a (T, Y, X) indexable on demand, keeping the most recent ones."""

    def __init__(self, stack: Any, size: int) -> None:
        self.stack, self.size, self.frames = stack, size, OrderedDict()

    def __call__(self, t: int) -> np.ndarray:
        if t in self.frames:
            self.frames.move_to_end(t)
            return self.frames[t]
        img = np.asarray(self.stack[t])
        self.frames[t] = img
        if len(self.frames) > self.size:
            self.frames.popitem(last=False)
        return img


def _nearest_labels(img: np.ndarray, p: np.ndarray, radius_px: float) -> dict[int, float]:
    """Smallest distance (px) from point ``p`` to each label within ``radius_px``."""
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
    fiber_cell: dict[tuple[int, int], int] = {}
    if fibers is not None and len(fibers):
        fiber_cell = {(int(f), int(i)): int(c) for f, i, c in
                      fibers[["frame", "fiber_id", "cell_id"]].itertuples(index=False)}
    motion = _velocities(cell_frames, drift)
    cache_size = config.birth_frames + config.rear_lookback_frames + 2
    fib = _FrameCache(fiber_labels, cache_size) if fiber_labels is not None else None
    cel = _FrameCache(cell_labels, cache_size) if cell_labels is not None else None
    n_t = int(cell_labels.shape[0]) if cell_labels is not None else None

    m = migrasomes.sort_values(["track_id", "frame"], kind="stable")
    fr = m["frame"].to_numpy(np.int64)
    dy, dx = drift_at_frames(drift, fr)
    m = m.assign(_yc=m["y_px"].to_numpy(np.float64) - dy, _xc=m["x_px"].to_numpy(np.float64) - dx)
    births = []
    for tid, g in m.groupby("track_id", sort=False):
        head = g.iloc[: config.birth_frames]
        births.append((int(head["frame"].iloc[0]), int(tid), head["frame"].to_numpy(),
                       np.array([head["_yc"].median(), head["_xc"].median()])))
    births.sort(key=lambda b: (b[0], b[1]))  # by birth frame: the frame caches slide forward

    n_all = int(max(fr.max(), n_t - 1 if n_t else 0)) + 1
    dyf, dxf = drift_at_frames(drift, np.arange(n_all))

    def at(pc: np.ndarray, f: int) -> np.ndarray:
        return pc + np.array([dyf[f], dxf[f]])

    rows = []
    for birth, tid, head_frames, pc in births:
        rows.append(_assign_one(tid, birth, head_frames, pc, at, fib, cel, n_t, fiber_cell,
                                motion, pixel_size_um, config))
    out = pd.DataFrame(rows, columns=list(ASSIGN_COLUMNS)).sort_values("track_id")
    return out.astype(ASSIGN_COLUMNS).reset_index(drop=True)


def _fiber_cell(fib, f: int, p: np.ndarray, fiber_cell: dict, radius_px: float):
    """(cell_id, distance px) of the nearest fiber within ``radius_px`` of ``p`` in frame
    ``f``; cell_id -1 when that fiber is attached to no cell; None when there is no fiber."""
    near = _nearest_labels(fib(f), p, radius_px)
    if not near:
        return None
    fiber_id, d = min(near.items(), key=lambda kv: kv[1])
    return fiber_cell.get((f, int(fiber_id)), -1), d


def _assign_one(tid, birth, head_frames, pc, at, fib, cel, n_t, fiber_cell, motion,
                pixel_size_um, config) -> tuple:
    if fib is not None:
        r_fib = config.fiber_distance_um / pixel_size_um
        # the fiber it sits on at birth, else the fiber seen there (still attached) over the
        # frames before its first detection: small migrasomes are seen late
        frames = [int(f) for f in head_frames]
        frames += list(range(birth - 1, max(-1, birth - 1 - config.rear_lookback_frames), -1))
        for f in frames:
            hit = _fiber_cell(fib, f, at(pc, f), fiber_cell, r_fib)
            if hit is not None and hit[0] >= 0:
                return tid, hit[0], "fiber_at_birth", hit[1] * pixel_size_um
    if cel is None:
        return tid, -1, "cell_not_in_view", math.nan
    radius = config.rear_distance_um / pixel_size_um
    best: dict[int, float] = {}
    seen_any = False
    last = min(birth, n_t - 1)
    for f in range(max(0, birth - config.rear_lookback_frames), last + 1):
        p = at(pc, f)
        for cid, d in _nearest_labels(cel(f), p, radius).items():
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
