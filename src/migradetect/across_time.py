"""The across-time steps of :func:`migradetect.pipeline.analyze_movie`, on tables.

Each function takes the per-frame results (tables, label stacks indexable ``(T, Y, X)`` and
read one frame at a time) and returns a table, guarding the cases the stages need not
handle themselves: a single frame, no detections, no cells, drift disabled. Ids are
renumbered here so that the output is deterministic (1, 2, ... in order of first appearance,
rows sorted by frame, then y, then x).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import pandas as pd

from migradetect import preprocess, schema
from migradetect.config import Config

log = logging.getLogger(__name__)

_CELL_FRAME_COLUMNS = {c: d for c, d in schema.CELL_FRAMES.items()
                       if c not in ("experiment", "movie")}
_ASSIGN_COLUMNS = {"track_id": schema.I64, "cell_id": schema.I64, "assign_reason": schema.STR}


def zero_drift(n_frames: int) -> pd.DataFrame:
    """The drift table of a movie without drift: one row per frame, 0 px."""
    frames = np.arange(n_frames, dtype=np.int64)
    return pd.DataFrame({"frame": frames, "dy_px": np.zeros(n_frames),
                         "dx_px": np.zeros(n_frames)})


def _pair_task(prev: np.ndarray, cur: np.ndarray, cells: Any, t: int, pixel_size_um: float,
               config: Any) -> tuple[float, float, float]:
    """Shift of frame ``t`` relative to frame ``t - 1``, cells (from the label stack) masked."""
    from migradetect import drift as drift_mod

    prev = preprocess.finite_frame(np.asarray(prev), t - 1)
    cur = preprocess.finite_frame(np.asarray(cur), t)
    if np.ptp(prev) == 0 or np.ptp(cur) == 0:
        return 0.0, 0.0, math.nan  # a blank frame has nothing to register: no pair
    return drift_mod.register_pair(prev, cur,
                                   np.asarray(cells[t - 1]), np.asarray(cells[t]),
                                   pixel_size_um=pixel_size_um, config=config)


def estimate_drift(movie: Any, group: Any, channel: int, *, pixel_size_um: float,
                   config: Config, detections: pd.DataFrame,
                   compute: Callable[[list[Any]], list[Any]], key: str,
                   products: list[Any] | None = None,
                   edges: list[Any] | None = None) -> pd.DataFrame:
    """Cumulative stage drift per frame (``frame, dy_px, dx_px``, 0 at frame 0).

    With ``edges`` (the registered pairs of a :class:`migradetect.drift.PairRegistrar` fed
    by the per-frame tasks, what ``analyze_movie`` does) or ``products`` (one
    :func:`migradetect.drift.prepare_frame` result per frame; registered here with
    :func:`migradetect.drift.register_products`), the drift is solved by
    :func:`migradetect.drift.drift_from_edges`.
    Without them, each pair of consecutive frames of the migrasome channel is read and
    registered in its own dask task (computed with ``compute``) with the cells of the
    ``cells`` label stack masked out. The result is then refined on the anchored migrasome
    detections (``drift.refine_drift``, when ``drift.refine`` is on). A single frame, or
    ``drift.enabled`` False, gives zero drift. ``key`` makes the task keys unique.
    """
    from migradetect import drift as drift_mod

    n = int(movie.n_frames)
    if n < 2 or not config.drift.enabled:
        return zero_drift(n)
    fid = None
    if edges is not None or products is not None:
        if edges is None:
            if len(products) != n:
                raise ValueError(f"{len(products)} drift products for {n} frames")
            # registered here from memory, on the threaded scheduler whatever ran the frames
            # (shipping the products to cluster workers costs more than registering them)
            edges = drift_mod.register_products(products, pixel_size_um=pixel_size_um,
                                                config=config.drift)
        if config.drift.refine and len(detections):
            # the migrasomes' pairs join the image pairs in this one solve (refine_drift
            # would otherwise solve the pair graph a second time with them)
            fid = drift_mod.fiducial_edges(detections, n, pixel_size_um=pixel_size_um,
                                           config=config.drift)
        table = drift_mod.drift_from_edges(edges, n, config=config.drift, fiducial_edges=fid)
    else:
        frames = movie.data[:, channel, 0]
        cells = group["cells"]
        tasks = [dask.delayed(_pair_task)(frames[t - 1], frames[t], cells, t, pixel_size_um,
                                          config.drift,
                                          dask_key_name=f"migradetect-drift-{key}-{t}")
                 for t in range(1, n)]
        table = drift_mod.drift_from_pairs(compute(tasks), config=config.drift)
    if len(detections):
        table = drift_mod.refine_drift(detections, table, pixel_size_um=pixel_size_um,
                                       config=config.drift, tracking_config=config.tracking,
                                       pair_edges=edges, fiducial_pairs=fid)
    table = pd.DataFrame(table)[["frame", "dy_px", "dx_px"]]
    full = zero_drift(n)[["frame"]].merge(table, on="frame", how="left")
    full[["dy_px", "dx_px"]] = full[["dy_px", "dx_px"]].astype(float).fillna(0.0)
    return full


def bleach_factors(stats: pd.DataFrame, *, config: Config) -> np.ndarray:
    """One multiplicative bleaching factor per frame (1.0 everywhere when disabled)."""
    from migradetect import preprocess

    n = len(stats)
    if n < 2 or not config.preprocess.bleach_correction:
        return np.ones(n)
    factors = np.asarray(preprocess.bleach_factors(
        stats, model=config.preprocess.bleach_model, key="signal",
        smoothing_frames=config.preprocess.bleach_smoothing_frames), dtype=float)
    if factors.shape != (n,) or not np.all(np.isfinite(factors)):
        log.warning("bleaching factors unusable (%s); intensities left uncorrected", factors)
        return np.ones(n)
    return factors


def track_cells(cell_labels: Any, *, pixel_size_um: float, frame_interval_s: float | None,
                drift: pd.DataFrame | None, config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell identities over time: ``(mapping(frame, label, cell_id), cell_frames)``.

    Cell ids are renumbered 1, 2, ... in order of first appearance (frame, then y, then x of
    the centroid), so they do not depend on segmentation label order. With
    ``config.cells.split_glued_in_time``, a label holding two touching cells is split between
    them (:func:`celltracking.track_cells_split`) and the parts are written into
    ``cell_labels`` as labels of their own, so the mapping's lookup table applies to it.
    """
    from migradetect import celltracking, tracking

    interval = frame_interval_s if frame_interval_s is not None else 1.0
    if config.cells.split_glued_in_time:
        mapping, cf, splits = celltracking.track_cells_split(
            cell_labels, pixel_size_um=pixel_size_um, frame_interval_s=interval,
            config=config.tracking, drift=drift, core_um=config.cells.min_half_width_um)
        celltracking.write_splits(cell_labels, splits)
    else:
        mapping, cf = tracking.track_cells(cell_labels, pixel_size_um=pixel_size_um,
                                           frame_interval_s=interval, config=config.tracking,
                                           drift=drift)
    if len(cf) == 0:
        return (pd.DataFrame({"frame": pd.Series([], dtype="int64"),
                              "label": pd.Series([], dtype="int64"),
                              "cell_id": pd.Series([], dtype="int64")}),
                schema.empty(_CELL_FRAME_COLUMNS))
    order = cf.sort_values(["frame", "y_px", "x_px", "cell_id"], kind="stable")
    firsts = order.drop_duplicates("cell_id")["cell_id"].to_numpy()
    new = {int(c): i + 1 for i, c in enumerate(firsts)}
    cf = cf.assign(cell_id=cf["cell_id"].map(new).astype("int64"))
    mapping = mapping.assign(cell_id=mapping["cell_id"].map(new).fillna(0).astype("int64"))
    if frame_interval_s is None:
        cf = cf.assign(time_s=0.0, speed_um_per_min=math.nan)
    else:
        cf = cf.assign(time_s=cf["frame"].to_numpy(float) * frame_interval_s)
    cf = cf.sort_values(["frame", "cell_id"], kind="stable").reset_index(drop=True)
    return mapping.reset_index(drop=True), schema.conform(cf, _CELL_FRAME_COLUMNS)


def relabel_tasks(array: Any, table: pd.DataFrame, old_col: str, new_col: str, n_frames: int,
                  task: Callable[..., int], *, key: str, offset: int = 0) -> list[Any]:
    """Delayed tasks that rewrite each frame of ``array``: value ``old + offset`` -> ``new``.

    Every frame gets a task (values absent from ``table`` become 0); task keys are
    ``migradetect-relabel-<key>-<frame>``, so ``key`` must be unique per call.
    """
    groups = {int(t): g for t, g in table.groupby("frame", sort=True)} if len(table) else {}
    tasks = []
    for t in range(n_frames):
        g = groups.get(t)
        if g is None:
            old = np.zeros(0, dtype=np.int64)
            new = np.zeros(0, dtype=np.int32)
        else:
            old = g[old_col].to_numpy(np.int64) + offset
            new = np.clip(g[new_col].to_numpy(np.int64), 0, None).astype(np.int32)
        tasks.append(dask.delayed(task)(array, t, old, new,
                                        dask_key_name=f"migradetect-relabel-{key}-{t}"))
    return tasks


def link(detections: pd.DataFrame, drift: pd.DataFrame, factors: np.ndarray, *,
         pixel_size_um: float, frame_interval_s: float | None, config: Config) -> pd.DataFrame:
    """Link detections into tracks and add the contract columns of migrasomes.csv.

    Rows are sorted by frame, y, x; ``track_id`` is renumbered 1, 2, ... in that order of
    first appearance. Adds ``time_s``, ``y_um``, ``x_um``, drift-corrected pixel
    coordinates and ``intensity_integrated_corrected`` (times the frame's bleach factor).
    ``det_index`` (row within its frame's detections) is kept for relabelling.
    """
    from migradetect import tracking

    det = detections.sort_values(["frame", "y_px", "x_px", "det_index"], kind="stable")
    det = det.reset_index(drop=True)
    if len(det) == 0:
        out = det.assign(track_id=pd.Series([], dtype="int64"))
    else:
        out = tracking.link_migrasomes(det, pixel_size_um=pixel_size_um, config=config.tracking,
                                       drift=drift)
        if len(out) != len(det) or not np.array_equal(out["det_index"].to_numpy(),
                                                      det["det_index"].to_numpy()):
            raise RuntimeError("link_migrasomes changed the rows of the detection table")
        raw = out["track_id"].to_numpy(np.int64)
        # unlinked rows (negative id) become one-frame tracks of their own
        raw = np.where(raw < 0, raw.max(initial=0) + 1 + np.arange(len(raw)), raw)
        _, first = np.unique(raw, return_index=True)
        new = {int(raw[i]): k + 1 for k, i in enumerate(np.sort(first))}
        out = out.assign(track_id=np.array([new[int(r)] for r in raw], dtype=np.int64))
    frames = out["frame"].to_numpy(np.int64)
    dmap = drift.set_index("frame")
    dy = dmap["dy_px"].reindex(frames).fillna(0.0).to_numpy(float)
    dx = dmap["dx_px"].reindex(frames).fillna(0.0).to_numpy(float)
    interval = 0.0 if frame_interval_s is None else float(frame_interval_s)
    f = np.asarray(factors, dtype=float)
    return out.assign(
        time_s=frames.astype(float) * interval,
        y_um=out["y_px"].to_numpy(float) * pixel_size_um,
        x_um=out["x_px"].to_numpy(float) * pixel_size_um,
        y_px_drift_corrected=out["y_px"].to_numpy(float) - dy,
        x_px_drift_corrected=out["x_px"].to_numpy(float) - dx,
        intensity_integrated_corrected=out["intensity_integrated"].to_numpy(float)
        * (f[frames] if len(frames) else np.ones(0)),
        cell_id=np.full(len(out), -1, dtype=np.int64),
    )


def fibers_table(fibers: pd.DataFrame, mapping: pd.DataFrame) -> pd.DataFrame:
    """The fiber table with per-frame cell labels replaced by cell ids (-1: none)."""
    columns = {c: d for c, d in schema.FIBERS.items() if c not in ("experiment", "movie")}
    if len(fibers) == 0:
        return schema.empty(columns)
    raw = fibers.rename(columns={"cell_id": "label"})
    out = raw.merge(mapping, on=["frame", "label"], how="left")
    out["cell_id"] = out["cell_id"].fillna(-1).astype("int64")
    out = out.sort_values(["frame", "fiber_id"], kind="stable").reset_index(drop=True)
    return schema.conform(out, columns)


def assign(migrasomes: pd.DataFrame, fibers: pd.DataFrame, cell_frames: pd.DataFrame,
           group: Any, drift: pd.DataFrame, *, pixel_size_um: float,
           config: Config) -> pd.DataFrame:
    """Each track's cell: ``track_id, cell_id, assign_reason`` (one row per track)."""
    from migradetect import assign as assign_mod

    if len(migrasomes) == 0:
        return schema.empty(_ASSIGN_COLUMNS)
    table = assign_mod.assign_tracks(migrasomes, fibers, cell_frames,
                                     fiber_labels=group["fibers"], cell_labels=group["cells"],
                                     pixel_size_um=pixel_size_um, config=config.assign,
                                     drift=drift)
    return schema.conform(pd.DataFrame(table), _ASSIGN_COLUMNS)


def growth(migrasomes: pd.DataFrame, assignment: pd.DataFrame, *, n_frames: int,
           frame_interval_s: float | None, pixel_size_um: float,
           config: Config) -> pd.DataFrame:
    """The track table: growth measures plus each track's cell and assignment reason."""
    from migradetect import growth as growth_mod

    columns = {c: d for c, d in schema.TRACKS.items() if c not in ("experiment", "movie")}
    if len(migrasomes) == 0:
        return schema.empty(columns)
    interval = frame_interval_s if frame_interval_s is not None else 1.0
    tracks = growth_mod.fit_tracks(migrasomes, frame_interval_s=interval, n_frames=n_frames,
                                   config=config.growth, pixel_size_um=pixel_size_um)
    tracks = tracks.drop(columns=[c for c in ("cell_id", "assign_reason") if c in tracks])
    # a track too short for a growth curve (e.g. a single-frame movie) still has a size
    observed_max = migrasomes.groupby("track_id")["diameter_um"].max()
    fill = tracks["max_diameter_um"].isna()
    tracks.loc[fill, "max_diameter_um"] = (
        observed_max.reindex(tracks.loc[fill, "track_id"]).to_numpy(float))
    tracks = tracks.merge(assignment, on="track_id", how="left")
    missing = tracks["assign_reason"].isna() | (tracks["assign_reason"] == "")
    if missing.any():
        log.warning("%d tracks got no assignment; marked ambiguous", int(missing.sum()))
        tracks.loc[missing, "assign_reason"] = "ambiguous"
        tracks.loc[missing, "cell_id"] = -1
    tracks["cell_id"] = tracks["cell_id"].fillna(-1).astype("int64")
    if frame_interval_s is None:
        for col in ("birth_time_s", "growth_time_s", "fit_time_constant_s"):
            if col in tracks:
                tracks[col] = math.nan
    tracks = tracks.sort_values("track_id", kind="stable").reset_index(drop=True)
    return schema.conform(tracks, columns)


def attach_cells(migrasomes: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Give every detection its track's ``cell_id`` (-1 when unassigned)."""
    if len(migrasomes) == 0:
        return migrasomes
    cell = tracks.set_index("track_id")["cell_id"]
    ids = cell.reindex(migrasomes["track_id"].to_numpy()).fillna(-1).astype("int64")
    return migrasomes.assign(cell_id=ids.to_numpy())


#: A track that is lost before the end of the movie counts only when seen in this many frames.
MIN_FRAMES_IF_LOST = 5
#: A track whose last frame is within this many frames of the movie's last frame is still
#: there at the end (the linker's ``max_gap_frames`` default: missed detections at the end).
END_TOLERANCE_FRAMES = 2


def lasting_tracks(tracks: pd.DataFrame, n_frames: int, *,
                   min_frames_if_lost: int = MIN_FRAMES_IF_LOST,
                   end_tolerance_frames: int = END_TOLERANCE_FRAMES) -> pd.Series:
    """Which tracks persist like a migrasome: still seen at the end of the movie (last frame
    within ``end_tolerance_frames`` of it), or seen in at least ``min_frames_if_lost`` frames.

    A migrasome is anchored on the dish and stays once made (minutes to hours); what
    appears for a few frames and vanishes long before the end is a noise blob, a passing
    intracellular punctum or a fragment of another track. All True for tables without
    ``n_frames`` or ``last_frame``.
    """
    if "last_frame" not in tracks.columns or "n_frames" not in tracks.columns:
        return pd.Series(True, index=tracks.index)
    n = tracks["n_frames"].to_numpy(np.int64)
    last = tracks["last_frame"].to_numpy(np.int64)
    keep = (n >= min_frames_if_lost) | (last >= int(n_frames) - 1 - end_tolerance_frames)
    return pd.Series(keep, index=tracks.index)


def counted_tracks(tracks: pd.DataFrame, n_frames: int) -> pd.Series:
    """Which tracks count as migrasomes: not ``short_track`` and lasting
    (:func:`lasting_tracks`), or spanning the whole movie.

    A movie shorter than ``min_track_frames`` (e.g. a single frame) flags every track short;
    a track seen in every frame of it still counts.
    """
    spans = (tracks["n_frames"] >= n_frames if "n_frames" in tracks.columns
             else pd.Series(False, index=tracks.index))
    return (~tracks["short_track"].astype(bool) & lasting_tracks(tracks, n_frames)) | spans


def summarize_cells(cell_frames: pd.DataFrame, tracks: pd.DataFrame, drift: pd.DataFrame, *,
                    n_frames: int, pixel_size_um: float,
                    frame_interval_s: float | None) -> pd.DataFrame:
    """One row per cell; ``n_migrasomes`` counts its assigned tracks (:func:`counted_tracks`)."""
    from migradetect import tracking

    columns = {c: d for c, d in schema.CELLS.items() if c not in ("experiment", "movie")}
    if len(cell_frames) == 0:
        return schema.empty(columns)
    interval = frame_interval_s if frame_interval_s is not None else 1.0
    counted = tracks.loc[counted_tracks(tracks, n_frames) & (tracks["cell_id"] >= 0)]
    cells = tracking.summarize_cells(cell_frames, counted, pixel_size_um=pixel_size_um,
                                     frame_interval_s=interval, drift=drift)
    if frame_interval_s is None:
        cells = cells.assign(observed_s=0.0, mean_speed_um_per_min=math.nan)
    return schema.conform(cells.sort_values("cell_id", kind="stable"), columns)
