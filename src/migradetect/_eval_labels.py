"""Fiber, cell and drift metrics: skeleton recall/precision, cell IoU and id matching,
drift error. Label stacks are read one frame at a time.

Private; the public names are re-exported by :mod:`migradetect.evaluate`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from migradetect._eval_util import _check_same_shape, _frames, _match_points, _ratio


# --------------------------------------------------------------------------- fibers, cells, drift


def fiber_scores(
    true_centrelines: Any,
    pred_skeleton: Any,
    *,
    tolerance_px: float = 2.0,
    exclude: Any = None,
) -> dict[str, float]:
    """Pixel recall and precision of a fiber skeleton against true centrelines.

    Parameters
    ----------
    true_centrelines, pred_skeleton
        ``(Y, X)`` or ``(T, Y, X)`` arrays of the same shape; non-zero = centreline pixel.
    tolerance_px
        A pixel counts as found when the other set has a pixel within this distance (px).
    exclude
        Optional boolean array of the same shape: pixels not scored at all (neither true
        nor predicted pixels there count). Retraction fibers are defined outside the cell
        bodies, so a fair score excludes the true cells (dilated by a small margin): a
        centreline drawn over a cell body cannot be seen as a ridge there. The other set's
        pixels inside ``exclude`` still count as partners (a true pixel just outside it is
        found by a predicted pixel just inside).

    Returns
    -------
    dict
        ``recall`` (fraction of true pixels near a predicted pixel), ``precision`` (fraction
        of predicted pixels near a true pixel), ``n_true_px``, ``n_pred_px`` (pixels scored).
    """
    _check_same_shape(true_centrelines, pred_skeleton)
    if exclude is not None:
        _check_same_shape(true_centrelines, exclude)
    hit_t = hit_p = n_t = n_p = 0
    ex_frames = _frames(exclude) if exclude is not None else None
    for t, p in zip(_frames(true_centrelines), _frames(pred_skeleton), strict=True):
        t, p = t > 0, p > 0
        scored = ~(next(ex_frames) > 0) if ex_frames is not None else np.ones(t.shape, bool)
        ts, ps = t & scored, p & scored
        n_t, n_p = n_t + int(ts.sum()), n_p + int(ps.sum())
        if ts.any() and p.any():
            # distance of every pixel to the nearest pixel of the other set
            hit_t += int((ndimage.distance_transform_edt(~p)[ts] <= tolerance_px).sum())
        if ps.any() and t.any():
            hit_p += int((ndimage.distance_transform_edt(~t)[ps] <= tolerance_px).sum())
    return {"recall": _ratio(hit_t, n_t), "precision": _ratio(hit_p, n_p),
            "n_true_px": float(n_t), "n_pred_px": float(n_p)}


def _overlaps(true_labels: Any, pred_labels: Any) -> dict[str, Any]:
    """Read both stacks once, frame by frame: per-frame matched IoUs of true cells, whole-stack
    intersections per (true, pred) label pair, label areas and foreground overlap."""
    _check_same_shape(true_labels, pred_labels)
    frame_ious: list[float] = []
    inter: list[pd.DataFrame] = []
    area_t: list[pd.Series] = []
    area_p: list[pd.Series] = []
    fg_i = fg_u = 0
    for t, p in zip(_frames(true_labels), _frames(pred_labels), strict=True):
        t, p = t.ravel().astype(np.int64), p.ravel().astype(np.int64)
        fg_i += int(np.count_nonzero((t > 0) & (p > 0)))
        fg_u += int(np.count_nonzero((t > 0) | (p > 0)))
        ids_t, at = np.unique(t[t > 0], return_counts=True)
        ids_p, ap = np.unique(p[p > 0], return_counts=True)
        both = (t > 0) & (p > 0)
        key = t[both] * (int(p.max()) + 1) + p[both]
        keys, counts = np.unique(key, return_counts=True)
        pt, pp = keys // (int(p.max()) + 1), keys % (int(p.max()) + 1)
        inter.append(pd.DataFrame({"t": pt, "p": pp, "n": counts}))
        area_t.append(pd.Series(at, index=ids_t))
        area_p.append(pd.Series(ap, index=ids_p))
        if ids_t.size == 0:
            continue
        iou = np.zeros((ids_t.size, max(ids_p.size, 1)))
        if ids_p.size:
            ri, ci = np.searchsorted(ids_t, pt), np.searchsorted(ids_p, pp)
            iou[ri, ci] = counts / (at[ri] + ap[ci] - counts)
        r, c = linear_sum_assignment(iou, maximize=True)
        best = np.zeros(ids_t.size)
        best[r] = iou[r, c]
        frame_ious.extend(best.tolist())
    none = pd.Series([], dtype=np.int64)
    return {"frame_ious": frame_ious,
            "inter": pd.concat(inter or [pd.DataFrame({"t": none, "p": none, "n": none})],
                               ignore_index=True),
            "area_t": pd.concat(area_t or [none]).groupby(level=0).sum(),
            "area_p": pd.concat(area_p or [none]).groupby(level=0).sum(), "fg": (fg_i, fg_u)}


def _stack_matching(ov: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series]:
    """Hungarian matching of true to predicted labels on their IoU over the whole stack."""
    area_t, area_p = ov["area_t"], ov["area_p"]
    pairs = ov["inter"].groupby(["t", "p"], as_index=False)["n"].sum()
    best = pd.Series(0.0, index=area_t.index, dtype=float)
    cols = ["truth_cell_id", "pred_cell_id", "iou"]
    if len(pairs) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=float if c == "iou" else np.int64)
                             for c in cols}), best
    ids_t, ids_p = area_t.index.to_numpy(), area_p.index.to_numpy()
    ri, ci = np.searchsorted(ids_t, pairs["t"]), np.searchsorted(ids_p, pairs["p"])
    iou = np.zeros((ids_t.size, ids_p.size))
    n = pairs["n"].to_numpy(float)
    iou[ri, ci] = n / (area_t.to_numpy()[ri] + area_p.to_numpy()[ci] - n)
    r, c = linear_sum_assignment(iou, maximize=True)
    ok = iou[r, c] > 0
    best.iloc[r[ok]] = iou[r[ok], c[ok]]
    table = pd.DataFrame({"truth_cell_id": ids_t[r[ok]].astype(np.int64),
                          "pred_cell_id": ids_p[c[ok]].astype(np.int64), "iou": iou[r[ok], c[ok]]})
    return table, best


def cell_iou(true_labels: Any, pred_labels: Any) -> dict[str, float]:
    """Intersection over union of cell segmentations.

    Parameters
    ----------
    true_labels, pred_labels
        ``(Y, X)`` or ``(T, Y, X)`` integer label stacks (0 = background), read frame by frame.

    Returns
    -------
    dict
        ``cell_iou_mean``: per frame, true cells are matched one-to-one to predicted labels
        (Hungarian on IoU) and the matched IoU (0 when unmatched) is averaged over all true
        cell-frames; ``cell_iou_tracked_mean``: the same with labels matched once over the
        whole stack (so it also scores consistent cell ids over time), averaged over true
        cells; ``foreground_iou``: IoU of the union of all cells; ``n_true_cells``,
        ``n_true_cell_frames``.
    """
    ov = _overlaps(true_labels, pred_labels)
    return _iou_summary(ov, _stack_matching(ov)[1])


def _iou_summary(ov: dict[str, Any], best: pd.Series) -> dict[str, float]:
    return {
        "cell_iou_mean": float(np.mean(ov["frame_ious"])) if ov["frame_ious"] else math.nan,
        "cell_iou_tracked_mean": float(best.mean()) if len(best) else math.nan,
        "foreground_iou": _ratio(*ov["fg"]),
        "n_true_cells": float(len(best)),
        "n_true_cell_frames": float(len(ov["frame_ious"])),
    }


def match_cells(true_labels: Any, pred_labels: Any) -> pd.DataFrame:
    """Match true to predicted cell ids by maximum IoU over the whole label stacks.

    Returns
    -------
    DataFrame
        ``truth_cell_id, pred_cell_id, iou`` (one-to-one, Hungarian; pairs with IoU 0 dropped).
    """
    return _stack_matching(_overlaps(true_labels, pred_labels))[0]


def match_cells_by_centroid(
    truth_cell_frames: pd.DataFrame,
    pred_cell_frames: pd.DataFrame,
    *,
    max_distance_px: float,
) -> pd.DataFrame:
    """Match true to predicted cell ids by their centroid tracks.

    Centroids (``frame, cell_id, y_px, x_px``) are matched one-to-one in each frame within
    ``max_distance_px``; then true and predicted ids are matched one-to-one (Hungarian) to
    maximise the number of frames they were paired in.

    Returns
    -------
    DataFrame
        ``truth_cell_id, pred_cell_id, n_frames``.
    """
    pairs = []
    pred_by_frame = {int(f): g for f, g in pred_cell_frames.groupby("frame", sort=False)}
    for frame, tg in truth_cell_frames.groupby("frame"):
        pg = pred_by_frame.get(int(frame))
        if pg is None:
            continue
        i, j, _ = _match_points(tg[["y_px", "x_px"]].to_numpy(float),
                                pg[["y_px", "x_px"]].to_numpy(float),
                                np.full(len(tg), float(max_distance_px)))
        pairs.append(pd.DataFrame({"t": tg["cell_id"].to_numpy(np.int64)[i],
                                   "p": pg["cell_id"].to_numpy(np.int64)[j]}))
    cols = ["truth_cell_id", "pred_cell_id", "n_frames"]
    if not pairs or sum(len(p) for p in pairs) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=np.int64) for c in cols})
    counts = pd.concat(pairs).value_counts().rename("n").reset_index()
    ids_t, ri = np.unique(counts["t"], return_inverse=True)
    ids_p, ci = np.unique(counts["p"], return_inverse=True)
    score = np.zeros((ids_t.size, ids_p.size))
    score[ri, ci] = counts["n"].to_numpy(float)
    r, c = linear_sum_assignment(score, maximize=True)
    ok = score[r, c] > 0
    return pd.DataFrame({"truth_cell_id": ids_t[r[ok]], "pred_cell_id": ids_p[c[ok]],
                         "n_frames": score[r[ok], c[ok]]}).astype(np.int64)


def drift_scores(truth_drift: pd.DataFrame, pred_drift: pd.DataFrame) -> dict[str, float]:
    """Error of the estimated stage drift.

    Both tables (``frame, dy_px, dx_px``) are aligned to their first common frame (normally
    frame 0) before comparison.

    Returns
    -------
    dict
        ``rms_px`` (root mean square of the per-frame error vector length, px), ``max_px``,
        ``n_frames``.
    """
    m = truth_drift[["frame", "dy_px", "dx_px"]].merge(
        pred_drift[["frame", "dy_px", "dx_px"]], on="frame", suffixes=("_t", "_p")
    ).sort_values("frame")
    if len(m) == 0:
        return {"rms_px": math.nan, "max_px": math.nan, "n_frames": 0.0}
    err = m[["dy_px_p", "dx_px_p"]].to_numpy(float) - m[["dy_px_t", "dx_px_t"]].to_numpy(float)
    err = err - err[0]
    d = np.hypot(err[:, 0], err[:, 1])
    return {"rms_px": float(np.sqrt(np.mean(d**2))), "max_px": float(d.max()),
            "n_frames": float(len(m))}
