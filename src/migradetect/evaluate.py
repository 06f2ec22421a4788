"""Metrics of an analysis against the simulator's ground truth.

Pure functions over tables and label stacks (detection, tracking, assignment, growth, fibers,
cells, drift), plus :func:`evaluate_dirs`, which reads a truth folder written by
``migradetect simulate`` and a per-movie result folder written by ``migradetect run`` and
returns one tidy table of metrics (``metric, value, n, note``).

Conventions: truth migrasome tables have one row per migrasome per frame with ``frame,
track_id, cell_id, y_px, x_px, diameter_um`` and, optionally, ``visible`` (only visible rows
are scored; without the column every row is). A prediction is a migrasomes table of the output
contract. Label stacks are ``(T, Y, X)`` (or a single ``(Y, X)`` frame) numpy, dask or zarr
arrays and are read one frame at a time.

Libraries: scipy (Hungarian matching, distance transforms), and traccuracy (a test extra)
for the standard CTC TRA/DET/LNK and track purity / target effectiveness, fed with our own
detection matching. The ">= 80 % of visible frames" complete-track score, the identity
switches, the assignment and growth scores are defined by this project and written here.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from migradetect.errors import InputError

log = logging.getLogger(__name__)

MATCHES_COLUMNS = ("frame", "truth_index", "pred_index", "distance_px")
GROWTH_FLAGS = ("born_before_start", "growing_at_end", "short_track")


# --------------------------------------------------------------------------- helpers


def _visible(truth: pd.DataFrame) -> pd.DataFrame:
    """Rows of a truth migrasome table that are visible (all rows without a ``visible`` column)."""
    if "visible" not in truth.columns:
        return truth
    return truth[_as_bool(truth["visible"])]


def _as_bool(col: pd.Series) -> np.ndarray:
    """A boolean column however it was read (bool, 0/1, "True"/"False"); missing is False."""
    if col.dtype == bool:
        return col.to_numpy()
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.fillna(0).to_numpy(float) != 0
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes")).to_numpy()


def _median(values: Any) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _frames(stack: Any) -> Iterator[np.ndarray]:
    """Yield ``(Y, X)`` numpy frames of a ``(T, Y, X)`` stack (or of one ``(Y, X)`` frame)."""
    if stack.ndim == 2:
        yield np.asarray(stack)
        return
    if stack.ndim != 3:
        raise ValueError(f"expected a (Y, X) or (T, Y, X) array, got shape {stack.shape}")
    for t in range(stack.shape[0]):
        yield np.asarray(stack[t])


def _check_same_shape(a: Any, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"stacks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def _match_points(a: np.ndarray, b: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, ...]:
    """One-to-one matching of points ``a`` (N, 2) to ``b`` (M, 2), pair i-j allowed only if
    their distance is <= ``radius[i]``. Maximises the number of pairs, then minimises the
    summed distance (Hungarian, solved per connected group of candidate pairs so that dense
    movies stay fast). Returns (i, j, distance) arrays."""
    empty = (np.empty(0, int), np.empty(0, int), np.empty(0, float))
    if len(a) == 0 or len(b) == 0:
        return empty
    # 'ndarray' output keeps zero distances (sparse matrix outputs would drop them).
    cand = cKDTree(a).sparse_distance_matrix(cKDTree(b), float(radius.max()), output_type="ndarray")
    cand = cand[cand["v"] <= radius[cand["i"]]]
    if len(cand) == 0:
        return empty
    n, m = len(a), len(b)
    graph = coo_matrix((np.ones(len(cand)), (cand["i"], n + cand["j"])), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    out_i, out_j, out_d = [], [], []
    edge_comp = comp[cand["i"]]
    for c in np.unique(edge_comp):
        e = cand[edge_comp == c]
        rows, ri = np.unique(e["i"], return_inverse=True)
        cols, ci = np.unique(e["j"], return_inverse=True)
        # A forbidden pair costs more than any set of allowed pairs can sum to.
        big = 1.0 + 2.0 * min(len(rows), len(cols)) * (float(e["v"].max()) + 1.0)
        cost = np.full((len(rows), len(cols)), big)
        cost[ri, ci] = e["v"]
        r, k = linear_sum_assignment(cost)
        ok = cost[r, k] < big
        out_i.append(rows[r[ok]])
        out_j.append(cols[k[ok]])
        out_d.append(cost[r[ok], k[ok]])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# --------------------------------------------------------------------------- detection


def match_detections(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    pixel_size_um: float,
    min_radius_px: float = 3.0,
) -> pd.DataFrame:
    """Match true and predicted migrasomes one-to-one, frame by frame.

    A true migrasome of diameter ``d`` (µm) may match a prediction of the same frame within
    ``max(min_radius_px, d / 2 / pixel_size_um)`` pixels; among allowed pairs the matching
    with the most pairs and then the smallest summed distance is chosen (Hungarian).

    Parameters
    ----------
    truth
        True migrasomes per frame (``frame, y_px, x_px, diameter_um``, optional ``visible``);
        invisible rows are ignored.
    pred
        Predicted migrasomes per frame (``frame, y_px, x_px``).
    pixel_size_um
        Pixel size in µm.
    min_radius_px
        Smallest matching radius in pixels.

    Returns
    -------
    DataFrame
        ``frame, truth_index, pred_index, distance_px``: index labels of the matched rows in
        ``truth`` and ``pred`` and their distance in pixels.
    """
    truth = _visible(truth)
    rows = []
    pred_by_frame = {int(f): g for f, g in pred.groupby("frame", sort=False)}
    for frame, tg in truth.groupby("frame", sort=True):
        pg = pred_by_frame.get(int(frame))
        if pg is None:
            continue
        half = 0.5 * tg["diameter_um"].to_numpy(float) / float(pixel_size_um)
        radius = np.fmax(np.nan_to_num(half, nan=0.0), float(min_radius_px))
        i, j, d = _match_points(
            tg[["y_px", "x_px"]].to_numpy(float), pg[["y_px", "x_px"]].to_numpy(float), radius
        )
        rows.append(pd.DataFrame({
            "frame": np.full(len(i), int(frame), dtype=np.int64),
            "truth_index": tg.index.to_numpy()[i].astype(np.int64),
            "pred_index": pg.index.to_numpy()[j].astype(np.int64),
            "distance_px": d.astype(float),
        }))
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=float if c == "distance_px" else np.int64)
                             for c in MATCHES_COLUMNS})
    return pd.concat(rows, ignore_index=True)


def detection_scores(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    pixel_size_um: float,
    min_diameter_um: float = 0.8,
    matches: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Detection counts, precision, recall, F1, diameter and localisation errors.

    Parameters
    ----------
    truth, pred
        True (visible rows are used) and predicted migrasomes per frame.
    pixel_size_um
        Pixel size in µm.
    min_diameter_um
        Diameter threshold (µm) of the second diameter error, over larger true migrasomes
        only (``diameter_rel_error_median_ge_0p8`` for the default 0.8 µm).
    matches
        Output of :func:`match_detections`, if already computed.

    Returns
    -------
    dict
        ``n_truth, n_pred, tp, fp, fn, precision, recall, f1``,
        ``diameter_rel_error_median`` (median of ``|d_pred - d_true| / d_true`` over matches),
        ``diameter_rel_error_median_ge_<thr>`` and its count ``n_ge_<thr>``, and
        ``localisation_rms_px`` (root mean square matched distance, px).
    """
    truth = _visible(truth)
    if matches is None:
        matches = match_detections(truth, pred, pixel_size_um=pixel_size_um)
    tp = len(matches)
    fp, fn = len(pred) - tp, len(truth) - tp
    d_true = truth.loc[matches["truth_index"], "diameter_um"].to_numpy(float)
    d_pred = pred.loc[matches["pred_index"], "diameter_um"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(d_pred - d_true) / d_true
    big = d_true >= min_diameter_um
    tag = f"{min_diameter_um:g}".replace(".", "p")
    dist = matches["distance_px"].to_numpy(float)
    return {
        "n_truth": float(len(truth)),
        "n_pred": float(len(pred)),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "diameter_rel_error_median": _median(rel),
        f"diameter_rel_error_median_ge_{tag}": _median(rel[big]),
        f"n_ge_{tag}": float(big.sum()),
        "localisation_rms_px": float(np.sqrt(np.mean(dist**2))) if tp else math.nan,
    }


# --------------------------------------------------------------------------- tracking


def _pred_track_ids(pred: pd.DataFrame, index: np.ndarray) -> np.ndarray:
    """Predicted track ids of rows ``index``; unlinked rows (-1) get unique negative ids, so
    that two unlinked detections never count as one track."""
    ids = pred.loc[index, "track_id"].to_numpy(np.int64).copy()
    bad = ids < 0
    ids[bad] = -2 - np.flatnonzero(bad)
    return ids


def match_tracks(truth: pd.DataFrame, pred: pd.DataFrame, matches: pd.DataFrame) -> pd.DataFrame:
    """Match each true track to the predicted track holding most of its matched detections.

    Parameters
    ----------
    truth, pred
        True (visible rows are used) and predicted migrasomes per frame, with ``track_id``.
    matches
        Output of :func:`match_detections` on the same tables.

    Returns
    -------
    DataFrame
        One row per true track with at least one visible frame: ``truth_track_id,
        pred_track_id`` (-1 if none of its detections was matched to a linked prediction),
        ``n_visible_frames``, ``n_matched_frames`` (detections matched to any prediction),
        ``n_frames_in_pred_track`` (detections matched to the chosen predicted track),
        ``id_switches`` (changes of predicted track id between consecutive matched frames).
    """
    truth = _visible(truth)
    truth = truth[truth["track_id"] >= 0]
    m = matches.copy()
    m = m[m["truth_index"].isin(truth.index)]
    m["truth_track_id"] = truth.loc[m["truth_index"], "track_id"].to_numpy(np.int64)
    m["pred_track_id"] = _pred_track_ids(pred, m["pred_index"].to_numpy())
    m = m.sort_values(["truth_track_id", "frame"], kind="stable")
    out = []
    n_visible = truth.groupby("track_id").size()
    groups = {int(k): g for k, g in m.groupby("truth_track_id", sort=False)}
    for tid, n_vis in n_visible.items():
        g = groups.get(int(tid))
        best, n_best, n_matched, switches = -1, 0, 0, 0
        if g is not None:
            ids = g["pred_track_id"].to_numpy()
            n_matched = len(ids)
            switches = int(np.count_nonzero(ids[1:] != ids[:-1]))
            linked = ids[ids >= 0]
            if linked.size:
                values, counts = np.unique(linked, return_counts=True)
                best, n_best = int(values[np.argmax(counts)]), int(counts.max())
        out.append((int(tid), best, int(n_vis), n_matched, n_best, switches))
    cols = ["truth_track_id", "pred_track_id", "n_visible_frames", "n_matched_frames",
            "n_frames_in_pred_track", "id_switches"]
    return pd.DataFrame(out, columns=cols).astype(np.int64)


def tracking_scores(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    pixel_size_um: float,
    min_fraction: float = 0.8,
    matches: pd.DataFrame | None = None,
    track_matching: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Track-level scores: complete tracks, identity switches and standard CTC metrics.

    A true track is *complete* when one predicted track holds matched detections on at least
    ``min_fraction`` of the true track's visible frames. An identity switch is a change of the
    matched predicted track id between consecutive matched frames of a true track.

    Parameters
    ----------
    truth, pred
        True (visible rows are used) and predicted migrasomes per frame, with ``track_id``.
    pixel_size_um
        Pixel size in µm (for the detection matching).
    min_fraction
        Fraction of visible frames a complete track must be recovered over.
    matches, track_matching
        Outputs of :func:`match_detections` and :func:`match_tracks`, if already computed.

    Returns
    -------
    dict
        ``n_true_tracks, n_pred_tracks, complete_tracks`` (fraction), ``id_switches``,
        ``id_switches_per_100_track_frames`` (per 100 matched true track-frames), and, when
        traccuracy is installed, ``ctc_tra, ctc_det, ctc_lnk, target_effectiveness,
        track_purity``.
    """
    truth = _visible(truth)
    if matches is None:
        matches = match_detections(truth, pred, pixel_size_um=pixel_size_um)
    if track_matching is None:
        track_matching = match_tracks(truth, pred, matches)
    tm = track_matching
    n_true = len(tm)
    complete = tm["n_frames_in_pred_track"] >= min_fraction * tm["n_visible_frames"] - 1e-9
    complete &= tm["pred_track_id"] >= 0
    switches = int(tm["id_switches"].sum())
    n_track_frames = int(tm["n_matched_frames"].sum())
    pred_ids = pred["track_id"].to_numpy(np.int64) if len(pred) else np.empty(0, np.int64)
    scores = {
        "n_true_tracks": float(n_true),
        "n_pred_tracks": float(len(np.unique(pred_ids[pred_ids >= 0]))),
        "complete_tracks": _ratio(int(complete.sum()), n_true),
        "id_switches": float(switches),
        "id_switches_per_100_track_frames": 100.0 * _ratio(switches, n_track_frames),
    }
    scores.update(_traccuracy_scores(truth, pred, matches))
    return scores


def _track_graph(table: pd.DataFrame) -> Any:
    """A traccuracy TrackingGraph: one node per row (id = position + 1), edges between
    consecutive rows of the same track (gaps become skip edges)."""
    import networkx as nx
    from traccuracy import TrackingGraph

    g = nx.DiGraph()
    frames = table["frame"].to_numpy(np.int64)
    ys, xs = table["y_px"].to_numpy(float), table["x_px"].to_numpy(float)
    g.add_nodes_from((k + 1, {"t": int(frames[k]), "y": float(ys[k]), "x": float(xs[k])})
                     for k in range(len(table)))
    tid = table["track_id"].to_numpy(np.int64)
    order = np.lexsort((frames, tid))
    same = (tid[order][1:] == tid[order][:-1]) & (tid[order][1:] >= 0)
    g.add_edges_from(zip(order[:-1][same] + 1, order[1:][same] + 1, strict=True))
    return TrackingGraph(g, frame_key="t", label_key=None, location_keys=("y", "x"))


def _traccuracy_scores(truth: pd.DataFrame, pred: pd.DataFrame, matches: pd.DataFrame) -> dict:
    """CTC TRA/DET/LNK and track purity / target effectiveness from traccuracy, fed with our
    own radius matching (traccuracy's PointMatcher has one global threshold, ours scales with
    the true diameter). traccuracy is a test extra: without it these scores are left out."""
    try:
        from traccuracy.matchers import Matched
        from traccuracy.metrics import CTCMetrics, TrackOverlapMetrics
    except ImportError:  # pragma: no cover - depends on the environment
        log.info("traccuracy is not installed; CTC and track-overlap metrics are skipped")
        return {}
    if len(truth) == 0 or len(pred) == 0:
        return {}
    t_pos = pd.Series(np.arange(len(truth)) + 1, index=truth.index)
    p_pos = pd.Series(np.arange(len(pred)) + 1, index=pred.index)
    mapping = list(zip(t_pos.loc[matches["truth_index"]].tolist(),
                       p_pos.loc[matches["pred_index"]].tolist(), strict=True))
    matched = Matched(_track_graph(truth), _track_graph(pred), mapping,
                      {"name": "migradetect_radius", "matching type": "one-to-one"})
    # traccuracy draws tqdm progress bars on stderr and offers no switch; only the CLI may
    # show progress, so they are swallowed here.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        # LNK is undefined without true links (single frames); it is left out below.
        warnings.filterwarnings("ignore", message="No edges in the GT graph", category=UserWarning)
        ctc = CTCMetrics().compute(matched).results
    out = {"ctc_tra": float(ctc["TRA"]), "ctc_det": float(ctc["DET"])}
    if matched.gt_graph.graph.number_of_edges():
        out["ctc_lnk"] = float(ctc["LNK"])
        overlap = TrackOverlapMetrics().compute(matched).results
        out["target_effectiveness"] = float(overlap["target_effectiveness"])
        out["track_purity"] = float(overlap["track_purity"])
    return out


# --------------------------------------------------------------------------- assignment, growth


def _cell_map(cell_matching: pd.DataFrame | None) -> dict[int, int] | None:
    if cell_matching is None:
        return None
    return {int(p): int(t) for t, p in zip(cell_matching["truth_cell_id"],
                                           cell_matching["pred_cell_id"], strict=True)}


def assignment_scores(
    truth_tracks: pd.DataFrame,
    pred_tracks: pd.DataFrame,
    matching: pd.DataFrame,
    *,
    cell_matching: pd.DataFrame | None = None,
) -> dict[str, float]:
    """How well migrasome tracks were assigned to their cells, and per-cell counts.

    Predicted cell ids are the tracker's own: they are first translated to true cell ids with
    ``cell_matching`` (from :func:`match_cells` or :func:`match_cells_by_centroid`); a
    predicted cell without a match is wrong for every track.

    Parameters
    ----------
    truth_tracks, pred_tracks
        Track tables (``track_id, cell_id``; -1 = no cell).
    matching
        True track -> predicted track (:func:`match_tracks`), one row per true track that was
        visible at least once (only those are counted per cell); rows with ``pred_track_id``
        -1 are left out of the accuracy.
    cell_matching
        ``truth_cell_id, pred_cell_id`` pairs; ``None`` means predicted ids are true ids.

    Returns
    -------
    dict
        ``n_matched_tracks``; ``accuracy`` (fraction of matched true tracks whose
        predicted cell is their true cell; -1 is wrong wherever the truth has a cell and right
        where it has none); ``coverage`` (fraction with a predicted cell);
        ``n_cells_with_migrasomes`` (true cells with >= 1 true track); ``count_exact_fraction``
        (of those, fraction whose matched predicted cell has exactly as many tracks) and
        ``count_abs_error_mean`` (tracks per cell).
    """
    to_true = _cell_map(cell_matching)
    true_cell = dict(zip(truth_tracks["track_id"].astype(int), truth_tracks["cell_id"].astype(int),
                         strict=True))
    pred_cell = dict(zip(pred_tracks["track_id"].astype(int), pred_tracks["cell_id"].astype(int),
                         strict=True))
    m = matching[matching["pred_track_id"] >= 0]
    correct, covered = [], []
    for t, p in zip(m["truth_track_id"].astype(int), m["pred_track_id"].astype(int), strict=True):
        pc = pred_cell.get(p, -1)
        mapped = pc if (to_true is None or pc < 0) else to_true.get(pc, -2)
        correct.append(mapped == true_cell.get(t, -1))
        covered.append(pc >= 0)
    # Per-cell counts: the true tracks of a cell that were visible (those listed in
    # `matching`) against every predicted track of its matched predicted cell.
    seen = truth_tracks[truth_tracks["track_id"].isin(matching["truth_track_id"])]
    true_counts = seen.loc[seen["cell_id"] >= 0, "cell_id"].astype(int).value_counts()
    pred_counts = pred_tracks.loc[pred_tracks["cell_id"] >= 0, "cell_id"].astype(int).value_counts()
    to_pred = ({t: t for t in true_counts.index} if to_true is None
               else {t: p for p, t in to_true.items()})
    errors = []
    for cell, n_true in true_counts.items():
        p = to_pred.get(int(cell))
        n_pred = int(pred_counts.get(p, 0)) if p is not None else 0
        errors.append(abs(n_pred - int(n_true)))
    errors_a = np.asarray(errors, dtype=float)
    return {
        "n_matched_tracks": float(len(m)),
        "accuracy": float(np.mean(correct)) if correct else math.nan,
        "coverage": float(np.mean(covered)) if covered else math.nan,
        "n_cells_with_migrasomes": float(len(true_counts)),
        "count_exact_fraction": float(np.mean(errors_a == 0)) if errors else math.nan,
        "count_abs_error_mean": float(np.mean(errors_a)) if errors else math.nan,
    }


def _flag(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.zeros(len(table), dtype=bool)
    return _as_bool(table[name])


def growth_scores(
    truth_tracks: pd.DataFrame,
    pred_tracks: pd.DataFrame,
    track_matching: pd.DataFrame,
    *,
    frame_interval_s: float,
) -> dict[str, float]:
    """Errors of the growth fit (plateau diameter, growth time) on matched tracks.

    Pairs flagged ``born_before_start``, ``growing_at_end`` or ``short_track`` in either the
    truth or the prediction are left out (their growth is not fully observed); the numbers
    left out per flag are reported.

    Parameters
    ----------
    truth_tracks, pred_tracks
        Track tables with ``track_id, plateau_diameter_um, growth_time_s`` and the flags.
    track_matching
        True track -> predicted track (:func:`match_tracks`).
    frame_interval_s
        Time between frames in s.

    Returns
    -------
    dict
        ``n_matched_tracks``, ``excluded_<flag>`` per flag, ``n_used``,
        ``plateau_rel_error_median`` (``|p_pred - p_true| / p_true``) and
        ``growth_time_abs_error_median_frames`` (``|g_pred - g_true|`` in frame intervals).
    """
    m = track_matching[track_matching["pred_track_id"] >= 0]
    t = truth_tracks.set_index(truth_tracks["track_id"].astype(int))
    p = pred_tracks.set_index(pred_tracks["track_id"].astype(int))
    m = m[m["truth_track_id"].isin(t.index) & m["pred_track_id"].isin(p.index)]
    tt, pp = t.loc[m["truth_track_id"]], p.loc[m["pred_track_id"]]
    keep = np.ones(len(m), dtype=bool)
    out: dict[str, float] = {"n_matched_tracks": float(len(m))}
    for name in GROWTH_FLAGS:
        flagged = _flag(tt, name) | _flag(pp, name)
        out[f"excluded_{name}"] = float(flagged.sum())
        keep &= ~flagged
    out["n_used"] = float(keep.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        p_true = tt["plateau_diameter_um"].to_numpy(float)[keep]
        p_pred = pp["plateau_diameter_um"].to_numpy(float)[keep]
        g_true = tt["growth_time_s"].to_numpy(float)[keep]
        g_pred = pp["growth_time_s"].to_numpy(float)[keep]
        out["plateau_rel_error_median"] = _median(np.abs(p_pred - p_true) / p_true)
        out["growth_time_abs_error_median_frames"] = _median(
            np.abs(g_pred - g_true) / float(frame_interval_s))
    return out


# --------------------------------------------------------------------------- fibers, cells, drift


def fiber_scores(
    true_centrelines: Any,
    pred_skeleton: Any,
    *,
    tolerance_px: float = 2.0,
) -> dict[str, float]:
    """Pixel recall and precision of a fiber skeleton against true centrelines.

    Parameters
    ----------
    true_centrelines, pred_skeleton
        ``(Y, X)`` or ``(T, Y, X)`` arrays of the same shape; non-zero = centreline pixel.
    tolerance_px
        A pixel counts as found when the other set has a pixel within this distance (px).

    Returns
    -------
    dict
        ``recall`` (fraction of true pixels near a predicted pixel), ``precision`` (fraction
        of predicted pixels near a true pixel), ``n_true_px``, ``n_pred_px``.
    """
    _check_same_shape(true_centrelines, pred_skeleton)
    hit_t = hit_p = n_t = n_p = 0
    for t, p in zip(_frames(true_centrelines), _frames(pred_skeleton), strict=True):
        t, p = t > 0, p > 0
        n_t, n_p = n_t + int(t.sum()), n_p + int(p.sum())
        if t.any() and p.any():
            # distance of every pixel to the nearest pixel of the other set
            hit_t += int((ndimage.distance_transform_edt(~p)[t] <= tolerance_px).sum())
            hit_p += int((ndimage.distance_transform_edt(~t)[p] <= tolerance_px).sum())
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


# --------------------------------------------------------------------------- folders


#: Short meaning of the main metrics, shown in the table's ``note`` column.
NOTES = {
    "detection.f1": "one-to-one within max(3 px, true radius)",
    "detection.localisation_rms_px": "matched pairs",
    "tracking.complete_tracks": "one predicted track over >= 80% of visible frames",
    "tracking.id_switches_per_100_track_frames": "per 100 matched true track-frames",
    "tracking.ctc_tra": "traccuracy CTC TRA on our matching",
    "assignment.accuracy": "matched tracks with the true cell (cell ids matched first)",
    "assignment.count_exact_fraction": "true cells with >= 1 track",
    "growth.plateau_rel_error_median": "tracks without growth flags",
    "growth.growth_time_abs_error_median_frames": "in frame intervals",
    "fibers.recall": "true centreline px within 2 px of the skeleton",
    "cells.cell_iou_mean": "per frame, Hungarian on IoU",
    "drift.rms_px": "after aligning both to frame 0",
}

#: Cells whose centroids are farther apart than this are never matched (µm).
CELL_MATCH_DISTANCE_UM = 10.0


def _truth_folder(path: Path) -> Path:
    for folder in (path / "truth", path):
        if (folder / "migrasomes.csv").is_file():
            return folder
    raise InputError("is not a truth folder: neither truth/migrasomes.csv nor migrasomes.csv "
                     "is in it.", path=path,
                     fix="pass the folder written by `migradetect simulate` or its truth/ folder.")


def _find_key(obj: Any, key: str) -> float | None:
    """The first number stored under ``key`` anywhere in a nested JSON object."""
    if isinstance(obj, dict):
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        children = list(obj.values())
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _calibration(truth: Path, result: Path) -> tuple[float, float]:
    docs = []
    for path in (truth / "truth.json", result / "manifest.json"):
        if path.is_file():
            try:
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot be read as JSON ({exc}).", path=path,
                                 fix="re-create it with `migradetect simulate` / `run`.") from exc
    values = {}
    for key in ("pixel_size_um", "frame_interval_s"):
        values[key] = next((v for d in docs if (v := _find_key(d, key)) is not None), None)
    if values["pixel_size_um"] is None:
        raise InputError("no pixel_size_um in truth/truth.json nor in the result's "
                         "manifest.json.", path=truth,
                         fix="add \"pixel_size_um\" to truth.json.")
    frame_interval = values["frame_interval_s"]
    return values["pixel_size_um"], math.nan if frame_interval is None else frame_interval


#: Columns each table must have to be scored.
NEEDED_COLUMNS = {
    "migrasomes.csv": ("frame", "track_id", "y_px", "x_px", "diameter_um"),
    "tracks.csv": ("track_id", "cell_id", "plateau_diameter_um", "growth_time_s"),
    "cell_frames.csv": ("frame", "cell_id", "y_px", "x_px"),
    "drift.csv": ("frame", "dy_px", "dx_px"),
}


def _read_csv(path: Path, *, required: bool = False) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise InputError("is missing.", path=path,
                             fix="pass a per-movie result folder written by `migradetect run`.")
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot be read as CSV ({exc}).", path=path,
                         fix="re-create it, or delete it and run again.") from exc
    missing = [c for c in NEEDED_COLUMNS.get(path.name, ()) if c not in df.columns]
    if missing:
        raise InputError(f"lacks the columns {missing}.", path=path,
                         fix="re-create it with this version of migradetect.")
    return df


def _labels(folder: Path) -> dict[str, Any]:
    """Arrays of ``folder/labels.zarr`` by name (empty if there is none)."""
    path = folder / "labels.zarr"
    if not path.exists():
        return {}
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        return {name: group[name] for name in ("cells", "fibers", "migrasomes")
                if name in group}
    except Exception as exc:  # zarr raises several unrelated types for a broken store
        raise InputError(f"cannot be opened as a zarr group ({exc}).", path=path,
                         fix="delete it and run again.") from exc


def _add(rows: list, section: str, scores: dict[str, float], n_key: str | None,
         n_keys: dict[str, str] | None = None) -> None:
    for key, value in scores.items():
        nk = (n_keys or {}).get(key, n_key)
        n = scores.get(nk, math.nan) if nk else math.nan
        name = f"{section}.{key}"
        rows.append({"metric": name, "value": float(value),
                     "n": -1 if not np.isfinite(n) else int(n), "note": NOTES.get(name, "")})


def _skip(rows: list, section: str, why: str) -> None:
    rows.append({"metric": section, "value": math.nan, "n": 0, "note": f"skipped: {why}"})


def _why_not(t_lab: dict[str, Any], p_lab: dict[str, Any], name: str) -> str | None:
    """Why two label stacks cannot be compared (None if they can)."""
    if name not in t_lab or name not in p_lab:
        return f"labels.zarr/{name} missing in truth or result"
    if tuple(t_lab[name].shape) != tuple(p_lab[name].shape):
        return (f"labels.zarr/{name} shapes differ: truth {tuple(t_lab[name].shape)}, "
                f"result {tuple(p_lab[name].shape)}")
    return None


def _cells_section(
    rows: list, t_lab: dict[str, Any], p_lab: dict[str, Any], t_cf: pd.DataFrame | None,
    p_cf: pd.DataFrame | None, *, max_distance_px: float,
) -> tuple[pd.DataFrame | None, str]:
    """Add the cell IoU rows; return the cell id matching (None if impossible) and its method.

    Label-stack IoU is preferred; centroid tracks of cell_frames.csv are the fallback, also
    used when the result's label values are not its tracked cell ids."""
    cell_matching = None
    if (why := _why_not(t_lab, p_lab, "cells")) is None:
        overlaps = _overlaps(t_lab["cells"], p_lab["cells"])
        cell_matching, best = _stack_matching(overlaps)
        _add(rows, "cells", _iou_summary(overlaps, best), "n_true_cell_frames",
             {"cell_iou_tracked_mean": "n_true_cells"})
        if p_cf is not None and len(cell_matching) and \
                cell_matching["pred_cell_id"].isin(p_cf["cell_id"]).mean() < 0.5:
            cell_matching = None
        else:
            return cell_matching, "cell ids matched by label IoU"
    else:
        _skip(rows, "cells", why)
    if t_cf is not None and p_cf is not None:
        return (match_cells_by_centroid(t_cf, p_cf, max_distance_px=max_distance_px),
                "cell ids matched by centroid tracks")
    return None, ""


def evaluate_dirs(truth_dir: str | Path, result_dir: str | Path) -> pd.DataFrame:
    """Score a per-movie result folder against the simulator's truth.

    Parameters
    ----------
    truth_dir
        The folder written by ``migradetect simulate`` (holding ``truth/``) or its ``truth/``
        folder itself.
    result_dir
        A per-movie result folder written by ``migradetect run`` (``migrasomes.csv`` ...).

    Returns
    -------
    DataFrame
        ``metric`` (``section.name``), ``value``, ``n`` (the sample size behind it, -1 if none)
        and ``note``. Sections whose inputs are missing get one row noting why they were
        skipped. Pixel size and frame interval come from ``truth.json`` (or the result's
        ``manifest.json``).
    """
    truth, result = _truth_folder(Path(truth_dir)), Path(result_dir)
    pixel_size_um, frame_interval_s = _calibration(truth, result)
    t_mig = _visible(_read_csv(truth / "migrasomes.csv", required=True)).reset_index(drop=True)
    # A result carrying `visible` is the truth itself (a self-check): filter it the same way.
    p_mig = _visible(_read_csv(result / "migrasomes.csv", required=True)).reset_index(drop=True)
    rows: list[dict] = []

    matches = match_detections(t_mig, p_mig, pixel_size_um=pixel_size_um)
    _add(rows, "detection", detection_scores(t_mig, p_mig, pixel_size_um=pixel_size_um,
                                             matches=matches), "n_truth")
    track_matching = match_tracks(t_mig, p_mig, matches)
    _add(rows, "tracking", tracking_scores(t_mig, p_mig, pixel_size_um=pixel_size_um,
                                           matches=matches, track_matching=track_matching),
         "n_true_tracks")

    t_lab, p_lab = _labels(truth), _labels(result)
    t_tracks, p_tracks = _read_csv(truth / "tracks.csv"), _read_csv(result / "tracks.csv")
    cell_matching, how = _cells_section(rows, t_lab, p_lab, _read_csv(truth / "cell_frames.csv"),
                                        _read_csv(result / "cell_frames.csv"),
                                        max_distance_px=CELL_MATCH_DISTANCE_UM / pixel_size_um)
    if t_tracks is None or p_tracks is None:
        _skip(rows, "assignment", "tracks.csv missing in truth or result")
        _skip(rows, "growth", "tracks.csv missing in truth or result")
    else:
        if cell_matching is None:
            _skip(rows, "assignment", "no cell labels or cell_frames.csv to match cell ids")
        else:
            _add(rows, "assignment", assignment_scores(t_tracks, p_tracks, track_matching,
                                                       cell_matching=cell_matching),
                 "n_matched_tracks", {k: "n_cells_with_migrasomes" for k in
                                      ("count_exact_fraction", "count_abs_error_mean")})
            for row in rows:
                if row["metric"] == "assignment.accuracy":
                    row["note"] = f"{row['note']}; {how}"
        if np.isfinite(frame_interval_s):
            _add(rows, "growth", growth_scores(t_tracks, p_tracks, track_matching,
                                               frame_interval_s=frame_interval_s), "n_used")
        else:
            _skip(rows, "growth", "no frame_interval_s in truth.json or manifest.json")

    if (why := _why_not(t_lab, p_lab, "fibers")) is None:
        _add(rows, "fibers", fiber_scores(t_lab["fibers"], p_lab["fibers"]), "n_true_px",
             {"precision": "n_pred_px"})
    else:
        _skip(rows, "fibers", why)

    t_drift, p_drift = _read_csv(truth / "drift.csv"), _read_csv(result / "drift.csv")
    if t_drift is None or p_drift is None:
        _skip(rows, "drift", "drift.csv missing in truth or result")
    else:
        _add(rows, "drift", drift_scores(t_drift, p_drift), "n_frames")
    table = pd.DataFrame(rows, columns=["metric", "value", "n", "note"])
    return table.astype({"value": float, "n": np.int64})


def format_table(df: pd.DataFrame) -> str:
    """The metrics table as aligned plain text (values to 4 significant digits)."""
    cells = [["metric", "value", "n", "note"]]
    for r in df.itertuples(index=False):
        value = "-" if not np.isfinite(r.value) else f"{r.value:.4g}"
        cells.append([str(r.metric), value, "" if r.n < 0 else str(r.n), str(r.note)])
    widths = [max(len(row[k]) for row in cells) for k in range(4)]
    lines = []
    for i, row in enumerate(cells):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                                row[2].rjust(widths[2]), row[3]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
