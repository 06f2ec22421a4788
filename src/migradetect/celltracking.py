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
``relabel(labels, mapping, *, frame=None) -> labels with cell ids``
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
separates cells that pass close to each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
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


def track_cells(
    cell_labels: Any,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    config: TrackingConfig | None = None,
    drift: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every segmented cell an identity that is stable over frames.

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
    if config is None:
        from migradetect.tracking import TrackingConfig

        config = TrackingConfig()
    if getattr(cell_labels, "ndim", 3) != 3:
        raise InputError(f"cell labels must be a (T, Y, X) stack, got {cell_labels.ndim} dims.",
                         fix="pass one label image per frame stacked over time.")
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise InputError("pixel_size_um and frame_interval_s must be > 0.",
                         fix="give the movie's calibration.")
    n_t = int(cell_labels.shape[0])
    tracks: dict[int, dict] = {}  # cell_id -> last seen state
    next_id = 1
    map_rows, frame_rows = [], []
    max_age = config.cell_max_gap_frames + 1
    for t in range(n_t):
        lab = np.asarray(cell_labels[t])
        shape = lab.shape
        props = regionprops(lab)
        labels = [p.label for p in props]
        areas = np.array([p.area for p in props], dtype=np.float64)
        cents = np.array([p.centroid for p in props], dtype=np.float64).reshape(-1, 2)
        index = {lb: j for j, lb in enumerate(labels)}
        cands = [cid for cid, s in tracks.items() if t - s["frame"] <= max_age]
        cost = np.full((len(cands), len(labels)), _BIG)
        for i, cid in enumerate(cands):
            s = tracks[cid]
            (r0, c0, r1, c1) = s["bbox"]
            inter = np.bincount(lab[r0:r1, c0:c1][s["mask"]].ravel())
            for lb in np.nonzero(inter)[0]:
                if lb == 0:
                    continue
                j = index[int(lb)]
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
                d = np.hypot(*(cents[free_lb] - s["centroid"]).T) * pixel_size_um
                ok = d <= config.cell_max_step_um * (t - s["frame"])
                dist[a, ok] = d[ok]
            matches += [(free_tr[a], free_lb[b]) for a, b in _match(dist)]
        ids = {}
        for i, j in matches:
            ids[j] = cands[i]
        for j in range(len(labels)):
            if j not in ids:
                ids[j] = next_id
                next_id += 1
        for j, p in enumerate(props):
            cid = ids[j]
            tracks[cid] = {"frame": t, "bbox": p.bbox, "mask": p.image, "area": areas[j],
                           "centroid": cents[j]}
            r0, c0, r1, c1 = p.bbox
            map_rows.append((t, labels[j], cid))
            frame_rows.append({
                "frame": t, "cell_id": cid, "y_px": cents[j, 0], "x_px": cents[j, 1],
                "area_um2": areas[j] * pixel_size_um**2, "time_s": t * frame_interval_s,
                "touches_border": bool(r0 == 0 or c0 == 0 or r1 == shape[0] or c1 == shape[1]),
            })
    mapping = pd.DataFrame(map_rows, columns=["frame", "label", "cell_id"]).astype("int64")
    cf = pd.DataFrame(frame_rows)
    if len(cf) == 0:
        return mapping, schema.empty(CELL_FRAME_COLUMNS)
    cf = cf.sort_values(["cell_id", "frame"], kind="stable").reset_index(drop=True)
    step = _steps_um(cf, pixel_size_um, drift)
    dt_min = cf.groupby("cell_id")["frame"].diff().to_numpy() * frame_interval_s / 60.0
    cf["speed_um_per_min"] = step / dt_min
    cf = cf.sort_values(["frame", "cell_id"], kind="stable")
    return mapping, schema.conform(cf, CELL_FRAME_COLUMNS)


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


def relabel(labels: np.ndarray, mapping: pd.DataFrame, *, frame: int | None = None) -> np.ndarray:
    """Replace the segmentation labels of one frame by cell ids (0 stays background).

    ``mapping`` holds ``label, cell_id`` (and ``frame``: rows of other frames are ignored
    when ``frame`` is given). Labels absent from the mapping become 0.
    """
    m = mapping if frame is None else mapping[mapping["frame"] == frame]
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
