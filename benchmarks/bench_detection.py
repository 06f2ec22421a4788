"""Benchmark of migrasome detection against the simulator's truth and two references.

    python benchmarks/bench_detection.py [--quick] [--seeds 1000,1001] [--out PATH]
    python benchmarks/bench_detection.py --diagnose [--seeds 0-19] [--presets wga] [--snrs high]

For each marker preset (tspan4_gfp, wga) x SNR (high, medium, low) x scene (sparse,
crowded), movies are simulated on MEASURING seeds (1000+; the detector was tuned on seeds
0-99 only) and a few frames per movie are analysed with ONE fixed configuration per marker
(the shipped preset, no tuning per movie or SNR). Scores (migradetect.evaluate): one-to-one
matching per frame within max(3 px, true diameter / 2); precision, recall, F1; median
relative diameter error over matched true migrasomes >= 0.8 µm.

References, scored on the same frames with the same inside-cell rejection:
- trackpy.locate (diameter: odd number of px near 1.2 µm) with its BEST minmass per
  condition (a sweep over quantiles of the masses found with minmass=0: an oracle choice);
- skimage.feature.blob_log (sigmas for 0.4-3.5 µm blobs) with its BEST threshold per
  condition (same oracle sweep on the scale-normalised LoG response of each blob).
CPU time of detect_migrasomes (raw and background-subtracted frame) and of preprocessing
(subtract_background + noise_sigma) per 1024^2 frame (time.process_time, after a warm-up;
run with OMP_NUM_THREADS=1 for one thread) is measured on one simulated 1024^2 frame per
preset. Prints a table and writes JSON.

``--diagnose`` (for tuning: use seeds 0-99) classifies every miss by the stage of the
detector that lost it (no scale-space candidate [at the border], isotropy, DoG response,
profile fit, line excess, duplicate/merger selection, rim merge, inside-cell rejection)
and every false detection by what lies under it (near a true migrasome, an intracellular
punctum, a cell's outline, a fiber, the border), with counts per preset, SNR and scene;
it reads the detector's intermediate arrays through ``migradetect.migrasomes.TRACE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from migradetect.config import load_config
from migradetect.evaluate import detection_scores
from migradetect.migrasomes import detect_migrasomes
from migradetect.synthetic import simulate

log = logging.getLogger("bench_detection")
PRESETS = ("tspan4_gfp", "wga")
SNRS = ("high", "medium", "low")


def _inside(labels: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    iy = np.clip(np.rint(y).astype(int), 0, labels.shape[0] - 1)
    ix = np.clip(np.rint(x).astype(int), 0, labels.shape[1] - 1)
    return labels[iy, ix] > 0


def _trackpy_all(frame: np.ndarray, diameter: int) -> pd.DataFrame:
    import trackpy

    trackpy.quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = trackpy.locate(frame.astype(np.float64), diameter, minmass=0, preprocess=True)
    return pd.DataFrame({"y_px": f["y"].to_numpy(float), "x_px": f["x"].to_numpy(float),
                         "value": f["mass"].to_numpy(float),
                         "diameter_um": np.full(len(f), np.nan)})


def _blob_log_all(frame: np.ndarray, px: float) -> pd.DataFrame:
    from skimage.feature import blob_log

    img = frame.astype(np.float64)
    img = img - np.median(img)
    img /= max(img.max(), 1e-9)
    s_min, s_max = 0.2 / px / np.sqrt(2) * 1.0, 1.75 / px / np.sqrt(2)
    blobs = blob_log(img, min_sigma=s_min, max_sigma=s_max, num_sigma=8, threshold=0.005,
                     overlap=0.5)
    if len(blobs) == 0:
        return pd.DataFrame({"y_px": [], "x_px": [], "value": [], "diameter_um": []})
    vals = np.empty(len(blobs))
    for s in np.unique(blobs[:, 2]):  # scale-normalised LoG response at each blob's own scale
        resp = -s * s * ndi.gaussian_laplace(img, s)
        sel = blobs[:, 2] == s
        vals[sel] = resp[blobs[sel, 0].astype(int), blobs[sel, 1].astype(int)]
    return pd.DataFrame({"y_px": blobs[:, 0], "x_px": blobs[:, 1], "value": vals,
                         "diameter_um": 2 * np.sqrt(2) * blobs[:, 2] * px})


def _best_threshold(truth: pd.DataFrame, cands: pd.DataFrame, px: float) -> dict:
    """Best F1 over thresholds on ``value`` (oracle choice)."""
    if len(cands) == 0:
        return detection_scores(truth, cands.assign(frame=pd.Series([], dtype=np.int64)),
                                pixel_size_um=px) | {"threshold": float("nan")}
    # quantiles dense near the top: noise blobs can outnumber true ones 100 to 1
    levels = np.concatenate([np.linspace(0.0, 0.9, 19), 1.0 - np.geomspace(0.1, 0.0005, 40)])
    qs = np.unique(np.quantile(cands["value"], levels))
    best = None
    for q in qs:
        p = cands[cands["value"] >= q].reset_index(drop=True)
        s = detection_scores(truth, p, pixel_size_um=px)
        if best is None or s["f1"] > best["f1"]:
            best = s | {"threshold": float(q)}
    return best


def _summary(s: dict) -> dict:
    keys = ("n_truth", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
            "diameter_rel_error_median_ge_0p8", "n_ge_0p8", "localisation_rms_px")
    return {k: float(s[k]) for k in keys if k in s}


def run_condition(preset: str, snr: str, crowded: bool, seeds: list[int], size: int,
                  n_frames: int, frames: list[int]) -> dict:
    conf = load_config(preset)
    cfg, psf = conf.migrasomes, conf.optics.psf_sigma
    truths, preds, tps, bls = [], [], [], []
    cpu, n_cpu, px = 0.0, 0, None
    for k, seed in enumerate(seeds):
        sim = simulate(preset=preset, seed=seed, size=size, n_frames=n_frames, snr=snr,
                       crowded=crowded)
        px = sim.pixel_size_um
        tp_diam = int(round(1.2 / px)) | 1
        tr = sim.truth["migrasomes"]
        for f in frames:
            frame = sim.image[f, 0]
            labels = sim.cell_labels[f]
            t0 = time.process_time()
            det = detect_migrasomes(frame, pixel_size_um=px, psf_sigma_um=psf, config=cfg,
                                    cell_labels=labels, frame_index=f)
            cpu += time.process_time() - t0
            n_cpu += 1
            key = 1000 * k + f  # keep movies apart in the per-frame matching
            preds.append(det.assign(frame=key))
            t = tr[tr["frame"] == f]
            truths.append(t.assign(frame=key))
            for store, table in ((tps, _trackpy_all(frame, tp_diam)), (bls, _blob_log_all(frame, px))):
                if cfg.reject_inside_cells and len(table):
                    table = table[~_inside(labels, table["y_px"].to_numpy(), table["x_px"].to_numpy())]
                store.append(table.assign(frame=key))
    truth = pd.concat(truths, ignore_index=True)
    pred = pd.concat(preds, ignore_index=True)
    ours = detection_scores(truth, pred, pixel_size_um=px)
    vis = truth[truth["visible"]] if "visible" in truth else truth
    bright = vis[vis["snr"] >= 3.0] if "snr" in vis else vis
    ours_bright = detection_scores(bright, pred, pixel_size_um=px)
    ref_tp = _best_threshold(truth, pd.concat(tps, ignore_index=True), px)
    ref_bl = _best_threshold(truth, pd.concat(bls, ignore_index=True), px)
    return {
        "preset": preset, "snr": snr, "scene": "crowded" if crowded else "sparse",
        "pixel_size_um": px, "seeds": seeds, "frames": frames, "size": size,
        "migradetect": _summary(ours),
        "migradetect_recall_truth_snr_ge_3": float(ours_bright["recall"]),
        "trackpy_best": _summary(ref_tp) | {"minmass": ref_tp["threshold"]},
        "blob_log_best": _summary(ref_bl) | {"threshold": ref_bl["threshold"]},
        "cpu_s_per_frame": cpu / max(n_cpu, 1),
    }


def cpu_per_1024(preset: str, seed: int) -> dict[str, float]:
    """CPU seconds per 1024^2 frame (process_time, median of 5 after a warm-up).

    ``detect``: detect_migrasomes on the raw frame (as in the conditions above);
    ``detect_corrected``: on the background-subtracted frame (what the pipeline passes);
    ``preprocess``: subtract_background + noise_sigma (as benchmarks/run.py times it).
    """
    from migradetect import preprocess

    conf = load_config(preset)
    sim = simulate(preset=preset, seed=seed, size=1024, n_frames=12, n_cells=6, snr="medium")
    frame, px = sim.image[-1, 0], sim.pixel_size_um
    labels = sim.cell_labels[-1]
    kw = dict(pixel_size_um=px, psf_sigma_um=conf.optics.psf_sigma, config=conf.migrasomes,
              cell_labels=labels)
    corrected, _bg = preprocess.subtract_background(frame, pixel_size_um=px,
                                                    config=conf.preprocess)

    def pre() -> None:
        c, _ = preprocess.subtract_background(frame, pixel_size_um=px, config=conf.preprocess)
        preprocess.noise_sigma(c)

    def median_cpu(fn) -> float:
        fn()  # warm-up: model tables, imports
        times = []
        for _ in range(5):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return float(np.median(times))

    return {"detect": median_cpu(lambda: detect_migrasomes(frame, **kw)),
            "detect_corrected": median_cpu(lambda: detect_migrasomes(corrected, **kw)),
            "preprocess": median_cpu(pre)}


def _classify_misses(tv: pd.DataFrame, fn_idx, det: pd.DataFrame, tr: dict, cfg, px: float,
                     shape: tuple[int, int]) -> list[str]:
    """The detector stage that lost each missed true migrasome (see the module docstring)."""
    raw = tr.get("raw", {})
    ry, rx = raw.get("y", np.empty(0)), raw.get("x", np.empty(0))
    keep = raw.get("keep", np.empty(0, bool))
    cy, cx = tr.get("cy", np.empty(0)), tr.get("cx", np.empty(0))
    out = []
    for ti in fn_idx:
        row = tv.loc[ti]
        y, x = float(row["y_px"]), float(row["x_px"])
        rad = max(3.0, float(row["diameter_um"]) / 2 / px)
        near_raw = np.flatnonzero(np.hypot(ry - y, rx - x) <= rad)
        nk = np.flatnonzero(np.hypot(cy - y, cx - x) <= rad)
        if near_raw.size == 0:
            border = min(y, x, shape[0] - 1 - y, shape[1] - 1 - x) < 3
            cls = "no_candidate_border" if border else "no_candidate"
        elif not keep[near_raw].any():
            iso_fail = raw["iso"][near_raw] < cfg.min_isotropy
            cls = "isotropy" if iso_fail.all() else ("dog_response" if not iso_fail.any()
                                                      else "isotropy+response")
        elif nk.size == 0:
            cls = "centroid_moved"
        elif not tr["fit_ok"][nk].any():
            cls = "profile_fit"
        elif not np.isin(nk, tr["line_ok"]).any():
            cls = "line_excess"
        elif not np.isin(nk, tr["selected"]).any():
            cls = "duplicate_or_merger"
        elif not np.isin(nk, tr["rim_merged"]).any():
            cls = "rim_merge"
        elif (np.hypot(det["y_px"] - y, det["x_px"] - x) <= rad).any():
            cls = "matched_to_another"
        else:
            fin = tr["rim_merged"]
            hit = (np.hypot(tr["rim_cy"][fin] - y, tr["rim_cx"][fin] - x) <= rad).any()
            cls = "inside_cell" if hit else "moved_by_rim_merge"
        out.append(cls)
    return out


def _classify_false(fp: pd.DataFrame, truth_vis: pd.DataFrame, conf: pd.DataFrame,
                    fibers: np.ndarray, cells: np.ndarray, px: float) -> list[str]:
    """What lies under each false detection (see the module docstring)."""
    out = []
    ny, nx = cells.shape
    for _, p in fp.iterrows():
        y, x = float(p["y_px"]), float(p["x_px"])
        iy, ix = round(y), round(x)
        if len(truth_vis):
            d = np.hypot(truth_vis["y_px"] - y, truth_vis["x_px"] - x).to_numpy()
            rad = np.maximum(3.0, truth_vis["diameter_um"].to_numpy() / 2 / px)
            near_truth = bool((d <= 2.5 * rad + 2).any())
        else:
            near_truth = False
        if near_truth:
            cls = "near_true_migrasome"
        elif len(conf) and (np.hypot(conf["y_px"] - y, conf["x_px"] - x) <= 4).any():
            cls = "intracellular_punctum"
        elif (cells[max(iy - 4, 0):iy + 5, max(ix - 4, 0):ix + 5] > 0).any():
            cls = "cell_outline"
        elif (fibers[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3] > 0).any():
            cls = "fiber"
        elif min(y, x, ny - 1 - y, nx - 1 - x) < 3:
            cls = "border"
        else:
            cls = "other"
        out.append(cls)
    return out


def diagnose(presets: list[str], snrs: list[str], seeds: list[int], size: int, n_frames: int,
             frames: list[int]) -> list[dict]:
    """Misses and false detections by cause, per preset x SNR x scene (tuning seeds)."""
    from collections import Counter

    from migradetect import migrasomes
    from migradetect.evaluate import ignored_predictions, match_detections

    rows = []
    for preset in presets:
        conf = load_config(preset)
        cfg, psf = conf.migrasomes, conf.optics.psf_sigma
        for snr in snrs:
            for crowded in (False, True):
                fn_c, fp_c, tp = Counter(), Counter(), 0
                for seed in seeds:
                    sim = simulate(preset=preset, seed=seed, size=size, n_frames=n_frames,
                                   snr=snr, crowded=crowded)
                    px, tr_all = sim.pixel_size_um, sim.truth["migrasomes"]
                    for f in frames:
                        migrasomes.TRACE = trace = {}
                        try:
                            det = detect_migrasomes(sim.image[f, 0], pixel_size_um=px,
                                                    psf_sigma_um=psf, config=cfg,
                                                    cell_labels=sim.cell_labels[f],
                                                    frame_index=f)
                        finally:
                            migrasomes.TRACE = None
                        t = tr_all[tr_all["frame"] == f]
                        m = match_detections(t, det, pixel_size_um=px)
                        ign = ignored_predictions(t, det, m, pixel_size_um=px)
                        vis = t[t["visible"].astype(bool)]
                        tv = vis[vis["detectable"].astype(bool)]
                        tp += len(m)
                        fn_idx = tv.index[~tv.index.isin(m["truth_index"])]
                        fp = det[~det.index.isin(m["pred_index"]) & ~det.index.isin(ign)]
                        fn_c.update(_classify_misses(tv, fn_idx, det, trace, cfg, px,
                                                     sim.image.shape[2:]))
                        c = sim.truth["confounders"]
                        fp_c.update(_classify_false(fp, vis, c[c["frame"] == f],
                                                    sim.fiber_labels[f], sim.cell_labels[f],
                                                    px))
                n_fn, n_fp = sum(fn_c.values()), sum(fp_c.values())
                f1 = 2 * tp / max(2 * tp + n_fn + n_fp, 1)
                scene = "crowded" if crowded else "sparse"
                log.info(f"{preset:<11}{snr:<7}{scene:<8} F1 {f1:.3f} tp {tp} "
                         f"FN {n_fn} {dict(fn_c.most_common())} FP {n_fp} "
                         f"{dict(fp_c.most_common())}")
                rows.append({"preset": preset, "snr": snr, "scene": scene, "f1": f1, "tp": tp,
                             "misses": dict(fn_c), "false": dict(fp_c), "seeds": seeds})
    return rows


def _seed_list(text: str) -> list[int]:
    """``"0-19"`` or ``"1000,1001"``."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, small frames")
    ap.add_argument("--seeds", default=None,
                    help="seeds: 1000,1001 or a range 0-19 (default 1000,1001; --diagnose 0-19)")
    ap.add_argument("--diagnose", action="store_true",
                    help="classify misses and false detections by cause (tuning seeds)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="with --diagnose")
    ap.add_argument("--snrs", default=",".join(SNRS), help="with --diagnose")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detection.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        seeds, size, n_frames, frames = [1000], 384, 20, [9, 19]
    else:
        seeds, size, n_frames, frames = [1000, 1001], 512, 24, [7, 15, 23]
    if args.diagnose:  # the quick benchmark's frames, on tuning seeds
        rows = diagnose(args.presets.split(","), args.snrs.split(","),
                        _seed_list(args.seeds or "0-19"), 384, 20, [9, 19])
        if args.out != ap.get_default("out"):
            Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return 0
    if args.seeds:
        seeds = _seed_list(args.seeds)
    rows = []
    header = (f"{'preset':<11}{'snr':<7}{'scene':<8}| {'P':>5} {'R':>5} {'F1':>5} {'dErr':>5} "
              f"{'R(snr>=3)':>9} | {'tp_F1':>5} {'log_F1':>6} | {'ms/fr':>6}")
    log.info(header)
    for preset in PRESETS:
        for snr in SNRS:
            for crowded in (False, True):
                r = run_condition(preset, snr, crowded, seeds, size, n_frames, frames)
                rows.append(r)
                m = r["migradetect"]
                log.info(f"{preset:<11}{snr:<7}{r['scene']:<8}| {m['precision']:5.3f} "
                         f"{m['recall']:5.3f} {m['f1']:5.3f} "
                         f"{m['diameter_rel_error_median_ge_0p8']:5.3f} "
                         f"{r['migradetect_recall_truth_snr_ge_3']:9.3f} | "
                         f"{r['trackpy_best']['f1']:5.3f} {r['blob_log_best']['f1']:6.3f} | "
                         f"{1000 * r['cpu_s_per_frame']:6.1f}")
    cpu = {p: cpu_per_1024(p, seeds[0]) for p in PRESETS}
    for p, t in cpu.items():
        log.info(f"CPU per 1024^2 frame, {p}: detect {1000 * t['detect']:.1f} ms (raw frame), "
                 f"{1000 * t['detect_corrected']:.1f} ms (background-subtracted), "
                 f"preprocess {1000 * t['preprocess']:.1f} ms (process_time, median of 5)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"conditions": rows, "cpu_s_per_1024_frame": cpu,
                               "quick": bool(args.quick)}, indent=1), encoding="utf-8")
    log.info(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
