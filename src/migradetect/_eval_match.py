"""Detection and tracking metrics: matching true to predicted migrasomes, don't-care rows,
complete tracks, identity switches and the CTC metrics of traccuracy.

Private; the public names are re-exported by :mod:`migradetect.evaluate`, whose docstring
gives the conventions (visible and detectable truth rows, "don't care").
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from migradetect._eval_util import _detectable, _match_points, _median, _ratio, _visible

log = logging.getLogger("migradetect.evaluate")

MATCHES_COLUMNS = ("frame", "truth_index", "pred_index", "distance_px")


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
        True migrasomes per frame (``frame, y_px, x_px, diameter_um``, optional ``visible``
        and ``detectable``); only visible, detectable rows are matched.
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
    truth = truth[_detectable(truth)]
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


def ignored_predictions(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    matches: pd.DataFrame,
    *,
    pixel_size_um: float,
    min_radius_px: float = 3.0,
) -> pd.Index:
    """Predictions that are neither true nor false positives: on a "don't care" true row.

    A prediction left unmatched by :func:`match_detections` is ignored when a visible but
    undetectable true row of its frame lies within that row's matching radius
    (``max(min_radius_px, d / 2 / pixel_size_um)`` px). This is an ignore region: every
    unmatched prediction inside it is ignored, not only the nearest.

    Returns
    -------
    Index
        Index labels of the ignored rows of ``pred``.
    """
    truth = _visible(truth)
    dont_care = truth[~_detectable(truth)]
    left = pred[~pred.index.isin(matches["pred_index"])]
    if len(dont_care) == 0 or len(left) == 0:
        return pred.index[:0]
    out = []
    left_by_frame = {int(f): g for f, g in left.groupby("frame", sort=False)}
    for frame, tg in dont_care.groupby("frame", sort=True):
        pg = left_by_frame.get(int(frame))
        if pg is None:
            continue
        half = 0.5 * tg["diameter_um"].to_numpy(float) / float(pixel_size_um)
        radius = np.fmax(np.nan_to_num(half, nan=0.0), float(min_radius_px))
        near = cKDTree(tg[["y_px", "x_px"]].to_numpy(float)).sparse_distance_matrix(
            cKDTree(pg[["y_px", "x_px"]].to_numpy(float)), float(radius.max()),
            output_type="ndarray")
        near = near[near["v"] <= radius[near["i"]]]
        out.append(pg.index.to_numpy()[np.unique(near["j"])])
    return pred.index[pred.index.isin(np.concatenate(out))] if out else pred.index[:0]


def detection_scores(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    pixel_size_um: float,
    min_diameter_um: float = 0.8,
    matches: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Detection counts, precision, recall, F1, diameter and localisation errors.

    Truth rows that are visible but not detectable are "don't care": missing them is no
    false negative, and unmatched predictions on them (:func:`ignored_predictions`) are
    neither true nor false positives.

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
        ``n_truth`` (detectable rows), ``n_pred``, ``n_ignored`` (predictions on don't-care
        rows, in ``n_pred`` but neither ``tp`` nor ``fp``), ``tp, fp, fn, precision, recall,
        f1``,
        ``diameter_rel_error_median`` (median of ``|d_pred - d_true| / d_true`` over matches),
        ``diameter_rel_error_median_ge_<thr>`` and its count ``n_ge_<thr>``, and
        ``localisation_rms_px`` (root mean square matched distance, px).
    """
    truth = _visible(truth)
    if matches is None:
        matches = match_detections(truth, pred, pixel_size_um=pixel_size_um)
    n_ignored = len(ignored_predictions(truth, pred, matches, pixel_size_um=pixel_size_um))
    truth = truth[_detectable(truth)]
    tp = len(matches)
    fp, fn = len(pred) - tp - n_ignored, len(truth) - tp
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
        "n_ignored": float(n_ignored),
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
        One row per true track with at least one detectable frame: ``truth_track_id,
        pred_track_id`` (-1 if none of its detections was matched to a linked prediction),
        ``n_visible_frames`` (its *detectable* frames: the frames a detector can be asked to
        find; the name is kept for compatibility), ``n_matched_frames`` (detections matched
        to any prediction),
        ``n_frames_in_pred_track`` (detections matched to the chosen predicted track),
        ``id_switches`` (changes of predicted track id between consecutive matched frames).
    """
    truth = _visible(truth)
    truth = truth[_detectable(truth) & (truth["track_id"] >= 0).to_numpy()]
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
    ``min_fraction`` of the true track's detectable frames (visible frames too dim or too
    small for any detector are not asked for; tracks never detectable are not counted). An
    identity switch is a change of the matched predicted track id between consecutive matched
    frames of a true track.

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
    # CTC metrics on the same rule: don't-care truth rows and the predictions on them are
    # left out of both graphs (gaps in a track become skip edges).
    ignored = ignored_predictions(truth, pred, matches, pixel_size_um=pixel_size_um)
    scores.update(_traccuracy_scores(truth[_detectable(truth)], pred.drop(index=ignored),
                                     matches))
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
