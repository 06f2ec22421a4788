"""Benchmark of the across-time stages on simulated movies (measuring seeds 1000+).

Linking and growth are measured on the simulator's TRUTH detections degraded like a detector
would: positions jittered (sigma 0.3 px), diameters +-5 %, 5 % of detections missed and a few
false ones added. Linking uses the true drift plus noise (0.1 px per frame). Drift estimation
is measured separately on the movie frames (true cell masks standing in for segmentation),
pairwise chain plus refinement on the degraded detections, against the true drift.
trackpy (what ``link_migrasomes`` uses) and laptrack are timed on the same detections.

Co-located true pairs (another true migrasome < 1.5 px away in some frame; one blob in the
image, which a position-based evaluation cannot tell apart) are counted separately.

Targets: complete tracks >= 0.90, id switches <= 1 per 100 track-frames, plateau diameter
relative error <= 10 %, growth time error <= 2 frame intervals, drift RMS <= 0.3 px.

End-to-end mode (``--e2e``): the real pipeline (``pipeline.analyze_movie`` with the preset's
config) on the simulated movie written as OME-TIFF, scored with ``evaluate.evaluate_dirs``
(detection F1, complete tracks, id switches, assignment accuracy and coverage, exact counts per
producing cell, plateau diameter and growth time errors, drift RMS against the true drift),
plus the CPU seconds per frame of the per-frame part and of the across-time part (drift,
cell tracking, linking, assignment, growth: everything after the last per-frame window).
Run with ``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` for comparable CPU times. ``--snrs
high,medium,low`` repeats the 8 conditions at each simulator SNR preset (default: high only);
the per-cell count error and the numbers of growth pairs left out per flag are reported too.

``--breakdown`` (end-to-end) prints, per true cell with migrasomes, where its count error
comes from (:func:`count_breakdown`: glued cells, wrong-cell assignment, fragments, spurious
tracks, uncounted or unlinked true tracks) and the sums per movie. ``--first-seed`` picks the
first simulator seed: tune on seeds 0-99 (a tuning run writes no results file, except into
its ``--keep`` folder), measure on seeds >= 1000 (the default). ``--keep DIR`` keeps the
movies and result folders; ``--out FILE`` writes a measuring run's results there instead of
``benchmarks/results/tracking_e2e.json`` (a check run that must not replace the recorded ones).

``--reassign DIR`` re-runs only the assignment step (``across_time.assign`` with the current
code and each preset's config) on the result folders an earlier ``--e2e --keep DIR`` run left,
rewrites their ``tracks.csv`` / ``migrasomes.csv`` cell ids, and scores them as ``--e2e`` does
(assignment rows and ``--breakdown``): seconds per movie instead of minutes, the movies,
detections, cell tracks and fibers held fixed, so a change of the assignment alone is
measured.

Run: ``python benchmarks/bench_tracking.py [--seeds 2] [--size 384] [--frames 60] [--e2e]``;
prints a table and writes ``benchmarks/results/tracking.json`` (``tracking_e2e.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from migradetect import evaluate
from migradetect.drift import estimate_drift, refine_drift
from migradetect.growth import fit_tracks
from migradetect.synthetic import simulate
from migradetect.tracking import TrackingConfig, link_migrasomes

log = logging.getLogger("bench_tracking")
OUT = Path(__file__).parent / "results" / "tracking.json"


def degrade(truth: pd.DataFrame, shape: tuple[int, int], rng: np.random.Generator) -> pd.DataFrame:
    """Detector-like detections from the truth (visible rows only)."""
    vis = truth[truth["visible"].astype(bool)]
    keep = rng.random(len(vis)) >= 0.05
    det = pd.DataFrame({
        "frame": vis["frame"].to_numpy(np.int64)[keep],
        "y_px": vis["y_px"].to_numpy(float)[keep] + rng.normal(0, 0.3, keep.sum()),
        "x_px": vis["x_px"].to_numpy(float)[keep] + rng.normal(0, 0.3, keep.sum()),
        "diameter_um": vis["diameter_um"].to_numpy(float)[keep]
        * (1 + rng.uniform(-0.05, 0.05, keep.sum())),
        "intensity_integrated": 1.0,
    })
    n_false = max(1, len(det) // 100)
    n_t = int(truth["frame"].max()) + 1
    false = pd.DataFrame({
        "frame": rng.integers(0, n_t, n_false), "y_px": rng.uniform(0, shape[0], n_false),
        "x_px": rng.uniform(0, shape[1], n_false), "diameter_um": rng.uniform(0.4, 1.5, n_false),
        "intensity_integrated": 1.0,
    })
    return pd.concat([det, false], ignore_index=True)


def time_laptrack(det: pd.DataFrame, px: float, cfg: TrackingConfig) -> tuple[float, pd.DataFrame]:
    from laptrack import LapTrack

    d = det.assign(yc=det["y_px_drift_corrected"] * px, xc=det["x_px_drift_corrected"] * px,
                   dc=det["diameter_um"] * cfg.diameter_weight, row=np.arange(len(det)))
    lt = LapTrack(cutoff=cfg.max_step_um**2, gap_closing_cutoff=cfg.max_step_um**2,
                  gap_closing_max_frame_count=cfg.max_gap_frames, splitting_cutoff=False,
                  merging_cutoff=False)
    t0 = time.perf_counter()
    track_df, _, _ = lt.predict_dataframe(d, ["yc", "xc", "dc"], frame_col="frame",
                                          only_coordinate_cols=False)
    elapsed = time.perf_counter() - t0
    pred = det.copy()
    pred["track_id"] = track_df.sort_values("row")["track_id"].to_numpy(np.int64)
    return elapsed, pred


def observable_rms(true_drift: pd.DataFrame, pred: pd.DataFrame, frames) -> float:
    """RMS drift error (px) over ``frames``, after removing the mean error over them."""
    m = true_drift.merge(pred[["frame", "dy_px", "dx_px"]], on="frame", suffixes=("_t", "_p"))
    m = m[m["frame"].isin(frames)]
    if len(m) == 0:
        return float("nan")
    err = (m[["dy_px_p", "dx_px_p"]].to_numpy(float) - m[["dy_px_t", "dx_px_t"]].to_numpy(float))
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def switches_resolvable(vis: pd.DataFrame, pred: pd.DataFrame, matches: pd.DataFrame,
                        min_sep_px: float = 1.5) -> float:
    """Id switches per 100 matched track-frames, leaving out switches where the true
    migrasome has another true migrasome closer than ``min_sep_px`` in that frame (co-located
    pairs: one blob in the image, which a position-based evaluation cannot tell apart)."""
    from scipy.spatial import cKDTree

    m = matches.assign(tt=vis.loc[matches["truth_index"], "track_id"].to_numpy(),
                       pt=pred.loc[matches["pred_index"], "track_id"].to_numpy())
    m = m.sort_values(["tt", "frame"], kind="stable")
    sw = m[(m["tt"] == m["tt"].shift()) & (m["pt"] != m["pt"].shift())]
    n = 0
    trees = {}
    for f, i in zip(sw["frame"], sw["truth_index"]):
        if f not in trees:
            trees[f] = cKDTree(vis.loc[vis["frame"] == f, ["y_px", "x_px"]].to_numpy())
        dist, _ = trees[f].query(vis.loc[i, ["y_px", "x_px"]].to_numpy(float), k=2)
        n += dist[1] >= min_sep_px
    return 100.0 * n / max(len(m), 1)


def colocated_tracks(vis: pd.DataFrame, min_sep_px: float = 1.5) -> set:
    """True track ids that have another true migrasome closer than ``min_sep_px`` in some frame."""
    from scipy.spatial import cKDTree

    out = set()
    for _, g in vis.groupby("frame"):
        if len(g) < 2:
            continue
        d, _ = cKDTree(g[["y_px", "x_px"]].to_numpy()).query(g[["y_px", "x_px"]].to_numpy(), k=2)
        out.update(g["track_id"].to_numpy()[d[:, 1] < min_sep_px].tolist())
    return out


def run_case(preset: str, seed: int, crowded: bool, drift: bool, args) -> dict:
    t0 = time.perf_counter()
    sim = simulate(preset=preset, seed=seed, size=args.size, n_frames=args.frames,
                   n_cells=args.cells, drift=drift, crowded=crowded)
    t_sim = time.perf_counter() - t0
    px, dt = sim.params.get("pixel_size_um", 0.15), sim.params.get("frame_interval_s", 60.0)
    truth, true_tracks = sim.truth["migrasomes"], sim.truth["tracks"]
    true_drift = sim.truth["drift"]
    rng = np.random.default_rng(seed)
    det = degrade(truth, sim.image.shape[-2:], rng)
    noisy_drift = true_drift.assign(dy_px=true_drift["dy_px"] + rng.normal(0, 0.1, len(true_drift)),
                                    dx_px=true_drift["dx_px"] + rng.normal(0, 0.1, len(true_drift)))
    cfg = TrackingConfig()
    t0 = time.perf_counter()
    pred = link_migrasomes(det, pixel_size_um=px, config=cfg, drift=noisy_drift)
    t_trackpy = time.perf_counter() - t0
    visible = truth[truth["visible"].astype(bool)]
    matches = evaluate.match_detections(visible, pred, pixel_size_um=px)
    tm = evaluate.match_tracks(visible, pred, matches)
    scores = evaluate.tracking_scores(truth, pred, pixel_size_um=px, matches=matches,
                                      track_matching=tm)
    vis = truth[truth["visible"].astype(bool)]
    resolvable = switches_resolvable(vis, pred, matches)
    coloc = colocated_tracks(vis)
    complete = (tm["n_frames_in_pred_track"] >= 0.8 * tm["n_visible_frames"] - 1e-9) & (
        tm["pred_track_id"] >= 0)
    sep = ~tm["truth_track_id"].isin(coloc)
    # a miss in a track of <= 4 frames makes it incomplete whatever the linking: also report
    # completeness over the tracks whose detections were all kept (pure linking)
    matched_all = tm["n_matched_frames"] == tm["n_visible_frames"]
    tracks = fit_tracks(pred, frame_interval_s=dt, n_frames=args.frames, pixel_size_um=px)
    gs = evaluate.growth_scores(true_tracks, tracks, tm, frame_interval_s=dt)
    t_lap, lap_pred = time_laptrack(pred, px, cfg)
    lap_scores = evaluate.tracking_scores(truth, lap_pred, pixel_size_um=px)
    row = {
        "preset": preset, "seed": seed, "crowded": crowded, "drift": drift,
        "n_detections": len(det), "n_true_tracks": scores["n_true_tracks"],
        "complete_tracks": scores["complete_tracks"],
        "complete_tracks_separated": float(complete[sep].mean()),
        "complete_tracks_separated_all_detected": float(complete[sep & matched_all].mean()),
        "n_colocated_tracks": len(coloc),
        "id_switches_per_100": scores["id_switches_per_100_track_frames"],
        "id_switches_per_100_resolvable": float(resolvable),
        "plateau_rel_err": gs["plateau_rel_error_median"],
        "growth_time_err_frames": gs["growth_time_abs_error_median_frames"],
        "n_growth_used": gs["n_used"],
        "trackpy_s": t_trackpy, "laptrack_s": t_lap,
        "laptrack_complete": lap_scores["complete_tracks"],
        "sim_s": t_sim,
    }
    if drift:
        frames = sim.image[:, 0]
        t0 = time.perf_counter()
        coarse = estimate_drift(frames, sim.cell_labels, pixel_size_um=px)
        t_drift = time.perf_counter() - t0
        refined = refine_drift(det, coarse, pixel_size_um=px)
        row["drift_coarse_rms_px"] = evaluate.drift_scores(true_drift, coarse)["rms_px"]
        row["drift_rms_px"] = evaluate.drift_scores(true_drift, refined)["rms_px"]
        row["drift_max_px"] = evaluate.drift_scores(true_drift, refined)["max_px"]
        # frames with no cell-free structure and no visible migrasome (typically the first
        # frames, before any fiber or migrasome exists) carry no drift information: also
        # report the error over "observable" frames (>= 3 visible true migrasomes), aligned
        # on them instead of on frame 0
        n_vis = truth[truth["visible"].astype(bool)].groupby("frame").size()
        obs = n_vis[n_vis >= 3].index
        row["drift_rms_observable_px"] = observable_rms(true_drift, refined, obs)
        row["n_unobservable_frames"] = args.frames - len(obs)
        row["drift_s_per_frame"] = t_drift / max(args.frames - 1, 1)
    return row


E2E_METRICS = {
    "detection.f1": "det_f1",
    "tracking.complete_tracks": "complete_tracks",
    "tracking.id_switches_per_100_track_frames": "id_switches_per_100",
    "assignment.accuracy": "assign_accuracy",
    "assignment.coverage": "assign_coverage",
    "assignment.count_exact_fraction": "count_exact_fraction",
    "assignment.count_abs_error_mean": "count_abs_error_mean",
    "growth.plateau_rel_error_median": "plateau_rel_err",
    "growth.growth_time_abs_error_median_frames": "growth_time_err_frames",
    "growth.n_used": "n_growth_used",
    "growth.excluded_born_before_start": "n_flag_born_before_start",
    "growth.excluded_growing_at_end": "n_flag_growing_at_end",
    "growth.excluded_short_track": "n_flag_short_track",
    "drift.rms_px": "drift_rms_px",
    "drift.max_px": "drift_max_px",
}


def run_e2e(preset: str, seed: int, crowded: bool, drift: bool, args, workdir: Path,
            snr: str = "high") -> dict:
    """The real pipeline on one simulated movie, scored against its truth."""
    from migradetect import io, pipeline, report
    from migradetect.config import load_config
    from migradetect.synthetic import write_simulation

    sim = simulate(preset=preset, seed=seed, size=args.size, n_frames=args.frames,
                   n_cells=args.cells, drift=drift, crowded=crowded, snr=snr)
    folder = workdir / f"{preset}_{seed}_{int(crowded)}_{int(drift)}_{snr}"
    if folder.exists():  # a kept folder (--keep) of an earlier run
        import shutil

        shutil.rmtree(folder)
    write_simulation(sim, folder, fmt="ome")
    true_drift = sim.truth["drift"]
    n_vis = sim.truth["migrasomes"].loc[lambda d: d["visible"].astype(bool)].groupby("frame").size()
    del sim
    movie = io.open_movie(folder / "movie.ome.tif")
    config = load_config(preset)
    marks: dict[str, float] = {}

    def progress(done: int, total: int) -> None:
        if done == movie.n_frames and "per_frame" not in marks:
            marks["per_frame"] = time.process_time()

    c0 = time.process_time()
    res = pipeline.analyze_movie(movie, config, experiment="bench",
                                 labels_path=folder / "result" / "labels.zarr",
                                 progress=progress)
    c1 = time.process_time()
    report.write_movie_results(res, folder / "result")
    table = evaluate.evaluate_dirs(folder, folder / "result")
    values = dict(zip(table["metric"], table["value"], strict=True))
    row = {"preset": preset, "seed": seed, "snr": snr, "crowded": crowded, "drift": drift}
    row.update({short: values.get(name, float("nan")) for name, short in E2E_METRICS.items()})
    obs = n_vis[n_vis >= 3].index
    row["drift_rms_observable_px"] = observable_rms(true_drift, res.tables["drift.csv"], obs)
    pf = marks.get("per_frame", c1)
    row["per_frame_cpu_s_per_frame"] = (pf - c0) / args.frames
    row["across_time_cpu_s_per_frame"] = (c1 - pf) / args.frames
    return row


CAUSES = ("ok", "x_glued", "x_wrong_cell", "x_fragment", "x_short_true", "x_spurious",
          "m_glued", "m_wrong_cell", "m_unassigned", "m_short_flag", "m_not_linked",
          "m_no_pred_cell")


def count_breakdown(folder: Path) -> pd.DataFrame:
    """Where the per-cell count errors of one end-to-end result come from.

    One row per true cell with >= 1 counted true track (visible, >= 3 frames and lasting; the
    rule of ``evaluate.assignment_scores`` and cells.csv, ``across_time.counted_tracks``):
    ``n_true``, ``n_pred`` (counted tracks of its matched predicted cell) and the causes of the
    difference. Each counted predicted track of the matched cell is ``ok`` (the main match of
    one of this cell's true tracks) or an extra: ``x_glued`` (main match of a true track of
    another true cell that this predicted cell also covers: >= 20 % of that cell's area over the
    stack, i.e. glued cells or ids swapped over time), ``x_wrong_cell`` (main match of another
    cell's true track, the cells not overlapping: an assignment error), ``x_fragment`` (a piece
    of a true track whose main match is another predicted track), ``x_short_true`` (matches a
    true track too short to count), ``x_spurious`` (matches no true detection). Each true track
    not counted ``ok`` is a miss: ``m_glued`` / ``m_wrong_cell`` (its main predicted track went
    to another predicted cell that does / does not cover >= 20 % of this cell), ``m_unassigned``
    (cell -1), ``m_short_flag`` (main predicted track not counted: flagged short_track or not
    lasting), ``m_not_linked`` (no predicted track), ``m_no_pred_cell`` (this true cell has no
    matched predicted cell). ``match_iou`` is the whole-stack IoU of the cell matching (low: the
    matching itself is doubtful) and ``err`` = n_pred - n_true.
    """
    from migradetect import across_time
    from migradetect._eval_io import _calibration, _labels
    from migradetect._eval_labels import _overlaps, _stack_matching
    from migradetect._eval_util import _as_bool, _visible

    truth, result = folder / "truth", folder / "result"
    t_mig = _visible(pd.read_csv(truth / "migrasomes.csv")).reset_index(drop=True)
    p_mig = pd.read_csv(result / "migrasomes.csv")
    t_tr, p_tr = pd.read_csv(truth / "tracks.csv"), pd.read_csv(result / "tracks.csv")
    px, _ = _calibration(truth, result)
    matches = evaluate.match_detections(t_mig, p_mig, pixel_size_um=px)
    tm = evaluate.match_tracks(t_mig, p_mig, matches)
    ov = _overlaps(_labels(truth)["cells"], _labels(result)["cells"])
    cm, _ = _stack_matching(ov)
    to_pred = dict(zip(cm["truth_cell_id"], cm["pred_cell_id"], strict=True))
    iou_of = dict(zip(cm["truth_cell_id"], cm["iou"], strict=True))
    inter = ov["inter"].groupby(["t", "p"])["n"].sum()
    area_t = ov["area_t"]

    def covers(p: int, t: int) -> bool:
        return p >= 0 and t >= 0 and inter.get((t, p), 0) >= 0.2 * area_t.get(t, np.inf)

    # what cells.csv and evaluate count: across_time.counted_tracks on both sides
    n_frames = int(max(t_tr["last_frame"].max(), p_tr["last_frame"].max())) + 1
    t_count = dict(zip(t_tr["track_id"], (t_tr["n_frames"] >= 3)
                       & across_time.lasting_tracks(t_tr, n_frames), strict=True))
    t_cell = dict(zip(t_tr["track_id"], t_tr["cell_id"], strict=True))
    p_cell = dict(zip(p_tr["track_id"], p_tr["cell_id"], strict=True))
    p_tr = p_tr.assign(short_track=_as_bool(p_tr["short_track"]))
    # "short" here: not counted by the rule (flagged short_track, or not lasting)
    p_short = dict(zip(p_tr["track_id"], ~across_time.counted_tracks(p_tr, n_frames),
                       strict=True))
    primary = {int(p): int(t) for t, p in zip(tm["truth_track_id"], tm["pred_track_id"],
                                              strict=True) if p >= 0}
    counted_true = {int(t) for t in tm["truth_track_id"] if t_count.get(t, False)}
    # each predicted track's majority true track (over its matched detections)
    mm = matches.assign(tt=t_mig.loc[matches["truth_index"], "track_id"].to_numpy(),
                        pt=p_mig.loc[matches["pred_index"], "track_id"].to_numpy())
    major = mm.groupby("pt")["tt"].agg(lambda s: s.value_counts().index[0]).to_dict()
    rows = []
    for c in sorted({t_cell[t] for t in counted_true if t_cell.get(t, -1) >= 0}):
        mine = [t for t in counted_true if t_cell[t] == c]
        p = int(to_pred.get(c, -1))
        row = dict.fromkeys(CAUSES, 0)
        row.update(cell=int(c), pred_cell=p, match_iou=float(iou_of.get(c, 0.0)),
                   n_true=len(mine))
        pred_tracks = [k for k, v in p_cell.items() if v == p and p >= 0 and not p_short[k]]
        row["n_pred"] = len(pred_tracks)
        ok_true = set()
        for k in pred_tracks:
            t = primary.get(int(k), major.get(int(k)))
            if int(k) in primary and t in mine:
                row["ok"] += 1
                ok_true.add(t)
            elif int(k) in primary and t in counted_true:
                row["x_glued" if covers(p, t_cell[t]) else "x_wrong_cell"] += 1
            elif t is None:
                row["x_spurious"] += 1
            elif t not in counted_true:
                row["x_short_true"] += 1
            else:
                row["x_fragment"] += 1
        pmap = {v: k for k, v in primary.items()}
        for t in mine:
            if t in ok_true:
                continue
            k = pmap.get(t)
            if p < 0:
                row["m_no_pred_cell"] += 1
            elif k is None:
                row["m_not_linked"] += 1
            elif p_short.get(k, False):
                row["m_short_flag"] += 1
            elif p_cell.get(k, -1) < 0:
                row["m_unassigned"] += 1
            else:
                row["m_glued" if covers(p_cell[k], c) else "m_wrong_cell"] += 1
        row["err"] = row["n_pred"] - row["n_true"]
        rows.append(row)
    cols = ["cell", "pred_cell", "match_iou", "n_true", "n_pred", "err", *CAUSES]
    return pd.DataFrame(rows, columns=cols)


def reassign_folder(folder: Path) -> None:
    """Re-run the assignment on one kept end-to-end folder (``result/`` rewritten in place)."""
    import zarr

    from migradetect import across_time
    from migradetect.config import load_config

    result = folder / "result"
    preset = folder.name.rsplit("_", 4)[0]
    manifest = json.loads((result / "manifest.json").read_text())
    px = float(manifest["movie"]["pixel_size_um"])
    mig = pd.read_csv(result / "migrasomes.csv")
    group = zarr.open_group(str(result / "labels.zarr"), mode="r")
    table = across_time.assign(mig, pd.read_csv(result / "fibers.csv"),
                               pd.read_csv(result / "cell_frames.csv"), group,
                               pd.read_csv(result / "drift.csv"), pixel_size_um=px,
                               config=load_config(preset))
    cell = dict(zip(table["track_id"], table["cell_id"], strict=True))
    reason = dict(zip(table["track_id"], table["assign_reason"], strict=True))
    tracks = pd.read_csv(result / "tracks.csv")
    tracks["cell_id"] = tracks["track_id"].map(cell).fillna(-1).astype("int64")
    tracks["assign_reason"] = tracks["track_id"].map(reason).fillna("ambiguous")
    tracks.to_csv(result / "tracks.csv", index=False)
    mig["cell_id"] = mig["track_id"].map(cell).fillna(-1).astype("int64")
    mig.to_csv(result / "migrasomes.csv", index=False)


def main_reassign(args) -> None:
    """``--reassign DIR``: the assignment alone, re-run and scored on kept folders."""
    rows, breakdowns = [], []
    folders = sorted(f for f in Path(args.reassign).iterdir()
                     if (f / "result" / "manifest.json").is_file() and (f / "truth").is_dir())
    for folder in folders:
        preset, seed, crowded, drift, snr = folder.name.rsplit("_", 4)
        c0 = time.process_time()
        reassign_folder(folder)
        cpu = time.process_time() - c0
        table = evaluate.evaluate_dirs(folder, folder / "result")
        values = dict(zip(table["metric"], table["value"], strict=True))
        row = {"preset": preset, "seed": int(seed), "snr": snr, "crowded": crowded == "1",
               "drift": drift == "1", "assign_cpu_s": cpu}
        row.update({short: values.get(name, float("nan")) for name, short in E2E_METRICS.items()
                    if name.startswith("assignment.")})
        rows.append(row)
        b = count_breakdown(folder).assign(preset=preset, seed=int(seed))
        if args.breakdown:
            print(folder.name)
            print(b.round(2).to_string(index=False), flush=True)
        breakdowns.append(b)
    pd.set_option("display.width", 250)
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    print_count_totals(pd.concat(breakdowns, ignore_index=True))


def print_count_totals(b: pd.DataFrame) -> None:
    """Per movie and overall sums of :func:`count_breakdown` rows (``preset``, ``seed`` added)."""
    tot = b.groupby(["preset", "seed"])[["n_true", "n_pred", *CAUSES]].sum()
    tot["cells"] = b.groupby(["preset", "seed"]).size()
    tot["exact"] = b.groupby(["preset", "seed"])["err"].apply(lambda e: (e == 0).sum())
    tot["abs_err"] = b.groupby(["preset", "seed"])["err"].apply(lambda e: e.abs().sum())
    print("count breakdown (sums over true cells with migrasomes):")
    print(tot.to_string())
    print(tot.sum().to_string())


def main_e2e(args) -> None:
    import tempfile

    rows = []
    seed = args.first_seed
    breakdowns = []
    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for snr in args.snrs.split(","):
            for preset in args.presets.split(","):
                for crowded in (False, True):
                    for drift in (False, True):
                        for _ in range(args.seeds):
                            rows.append(run_e2e(preset, seed, crowded, drift, args, work,
                                                snr=snr))
                            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False),
                                  flush=True)
                            if args.breakdown:
                                folder = work / f"{preset}_{seed}_{int(crowded)}_{int(drift)}_{snr}"
                                b = count_breakdown(folder).assign(preset=preset, seed=seed)
                                print(b.round(2).to_string(index=False), flush=True)
                                breakdowns.append(b)
                            seed += 1
    df = pd.DataFrame(rows)
    if breakdowns:
        print_count_totals(pd.concat(breakdowns, ignore_index=True))
    summary = {
        "complete_tracks_min": float(df["complete_tracks"].min()),
        "id_switches_per_100_max": float(df["id_switches_per_100"].max()),
        "assign_accuracy_min": float(df["assign_accuracy"].min()),
        "assign_coverage_min": float(df["assign_coverage"].min()),
        "count_exact_fraction_min": float(df["count_exact_fraction"].min()),
        "plateau_rel_err_max": float(df["plateau_rel_err"].max()),
        "growth_time_err_frames_max": float(df["growth_time_err_frames"].max()),
        "drift_rms_px_max": float(df["drift_rms_px"].max()),
        "drift_rms_observable_px_max": float(df["drift_rms_observable_px"].max()),
        "across_time_cpu_s_per_frame_median": float(df["across_time_cpu_s_per_frame"].median()),
        "per_frame_cpu_s_per_frame_median": float(df["per_frame_cpu_s_per_frame"].median()),
    }
    pd.set_option("display.width", 250)
    print(df.round(3).to_string(index=False))
    print(json.dumps(summary, indent=2))
    out = Path(args.out) if args.out else OUT.with_name("tracking_e2e.json")
    if args.first_seed < 1000:  # a tuning run: never overwrites the measured results
        if not keep:
            return
        out = keep / "tracking_e2e.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary,
                               "cases": json.loads(df.to_json(orient="records"))}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1, help="seeds per condition (from 1000)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--e2e", action="store_true",
                   help="run the real pipeline on the movies (end-to-end) instead of linking "
                        "degraded truth detections")
    p.add_argument("--presets", default="tspan4_gfp,wga")
    p.add_argument("--first-seed", type=int, default=1000,
                   help="first simulator seed (tune on 0-99, measure on >= 1000)")
    p.add_argument("--keep", default="",
                   help="end-to-end: folder to keep the simulated movies and results in")
    p.add_argument("--breakdown", action="store_true",
                   help="end-to-end: print where each true cell's count error comes from")
    p.add_argument("--snrs", default="high",
                   help="end-to-end: simulator SNR presets to run, comma-separated "
                        "(high,medium,low); seeds continue from 1000 across them")
    p.add_argument("--out", default="",
                   help="end-to-end: write the measured results here instead of "
                        "benchmarks/results/tracking_e2e.json (a check run that must not replace "
                        "the recorded results)")
    p.add_argument("--reassign", default="",
                   help="re-run only the assignment on the folders an earlier --e2e --keep "
                        "DIR run left in DIR (rewriting their result tables) and score them")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.reassign:
        main_reassign(args)
        return
    if args.e2e:
        main_e2e(args)
        return
    rows = []
    seed = args.first_seed
    for preset in ("tspan4_gfp", "wga"):
        for crowded in (False, True):
            for drift in (False, True):
                for _ in range(args.seeds):
                    rows.append(run_case(preset, seed, crowded, drift, args))
                    seed += 1
                    print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    summary = {
        "complete_tracks_min": float(df["complete_tracks"].min()),
        "complete_tracks_mean": float(df["complete_tracks"].mean()),
        "complete_tracks_separated_min": float(df["complete_tracks_separated"].min()),
        "complete_tracks_separated_all_detected_min":
            float(df["complete_tracks_separated_all_detected"].min()),
        "id_switches_per_100_max": float(df["id_switches_per_100"].max()),
        "id_switches_per_100_resolvable_max": float(df["id_switches_per_100_resolvable"].max()),
        "plateau_rel_err_max": float(df["plateau_rel_err"].max()),
        "growth_time_err_frames_max": float(df["growth_time_err_frames"].max()),
        "drift_rms_px_max": float(df["drift_rms_px"].max()) if "drift_rms_px" in df else None,
        "drift_rms_observable_px_max": float(df["drift_rms_observable_px"].max())
        if "drift_rms_observable_px" in df else None,
        "trackpy_s_total": float(df["trackpy_s"].sum()),
        "laptrack_s_total": float(df["laptrack_s"].sum()),
        "n_detections_total": int(df["n_detections"].sum()),
    }
    pd.set_option("display.width", 250)
    print(df.drop(columns=["sim_s"]).round(3).to_string(index=False))
    print(json.dumps(summary, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "summary": summary,
                               "cases": json.loads(df.to_json(orient="records"))}, indent=2))


if __name__ == "__main__":
    main()
