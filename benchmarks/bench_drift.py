"""Drift-only benchmark: the pipeline's drift step on simulated movies with stage drift.

Each case is simulated (``drift=True``), every frame goes through the per-frame pipeline work
(:func:`migradetect.pipeline.process_frame`: cell segmentation and migrasome detection, as
``analyze_movie`` runs it); the frames, cell masks and detections are cached under ``--cache``
(so that trying drift variants costs seconds), and each run reduces the frames to their drift
products (:func:`migradetect.drift.prepare_frame`). The drift step is then
:func:`migradetect.drift.register_products` + ``drift_from_edges`` + ``refine_drift`` with the
preset's config, scored against the true drift: RMS over all frames, and RMS over the
"observable" frames (>= 3 visible true migrasomes; mean error removed), as bench_tracking.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_drift.py --seeds 1000-1007
    ... --sparse              (sparse scenes; default crowded)
    ... --snr medium          (dim movies: right pairs correlate weakly)

``refine_drift`` includes the migrasome detections' pair shifts (fiducial pairs solved with
the image pairs) and the anchored-track refinement; ``coarse_rms_px`` is the image pairs alone.

Seeds 0-99 are for tuning, >= 1000 for reporting.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd

from migradetect import drift as drift_mod
from migradetect import evaluate, pipeline, preprocess
from migradetect.config import load_config
from migradetect.synthetic import simulate


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def per_frame(preset: str, seed: int, args) -> dict:
    """Simulate and run the per-frame work; cached (frames, cell masks and detections: the
    drift products are made from them on every run, so changes to ``prepare_frame`` count)."""
    snr = "" if args.snr == "high" else f"_{args.snr}"
    cache = (Path(args.cache)
             / f"{preset}_{seed}_{args.size}_{args.frames}_{int(args.crowded)}{snr}_raw.pkl")
    if cache.exists():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    sim = simulate(preset=preset, seed=seed, size=args.size, n_frames=args.frames,
                   n_cells=args.cells, drift=True, crowded=args.crowded, snr=args.snr)
    cfg = load_config(preset)
    px = float(sim.params.get("pixel_size_um", 0.15)) if isinstance(sim.params, dict) else 0.15
    dets, frames, cells = [], [], []
    for t in range(args.frames):
        frame = sim.image[t, 0]
        out = pipeline.process_frame(frame, frame_index=t, pixel_size_um=px,
                                     psf_sigma_um=float(cfg.optics.psf_sigma), config=cfg)
        dets.append(out.detections)
        frames.append(preprocess.finite_frame(frame, t).astype(np.float32))
        cells.append(np.asarray(out.cell_labels) > 0)
    vis = sim.truth["migrasomes"].loc[lambda d: d["visible"].astype(bool)]
    res = {"px": px, "frames": np.stack(frames), "cells": np.packbits(np.stack(cells), axis=-1),
           "shape": frames[0].shape, "detections": pd.concat(dets, ignore_index=True),
           "true_drift": sim.truth["drift"], "n_vis": vis.groupby("frame").size()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as fh:
        pickle.dump(res, fh)
    return res


def observable_rms(true_drift: pd.DataFrame, pred: pd.DataFrame, frames) -> float:
    m = true_drift.merge(pred[["frame", "dy_px", "dx_px"]], on="frame", suffixes=("_t", "_p"))
    m = m[m["frame"].isin(frames)]
    if len(m) == 0:
        return float("nan")
    err = m[["dy_px_p", "dx_px_p"]].to_numpy(float) - m[["dy_px_t", "dx_px_t"]].to_numpy(float)
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def run_case(preset: str, seed: int, args) -> dict:
    d = per_frame(preset, seed, args)
    cfg = load_config(preset)
    px, true = d["px"], d["true_drift"]
    cells = np.unpackbits(d["cells"], axis=-1, count=d["shape"][1]).astype(bool)
    p0 = time.process_time()
    products = [drift_mod.prepare_frame(d["frames"][t], cells[t], pixel_size_um=px,
                                        config=cfg.drift) for t in range(args.frames)]
    c0 = time.process_time()
    edges = drift_mod.register_products(products, pixel_size_um=px, config=cfg.drift)
    coarse = drift_mod.drift_from_edges(edges, args.frames, config=cfg.drift)
    c1 = time.process_time()
    refined = drift_mod.refine_drift(d["detections"], coarse, pixel_size_um=px,
                                     config=cfg.drift, tracking_config=cfg.tracking,
                                     pair_edges=edges)
    obs = d["n_vis"][d["n_vis"] >= 3].index
    row = {"preset": preset, "seed": seed, "crowded": args.crowded, "snr": args.snr,
           "coarse_rms_px": evaluate.drift_scores(true, coarse)["rms_px"],
           "rms_px": evaluate.drift_scores(true, refined)["rms_px"],
           "max_px": evaluate.drift_scores(true, refined)["max_px"],
           "observable_rms_px": observable_rms(true, refined, obs),
           "n_unobservable": args.frames - len(obs),
           "unregistered": int((~coarse["registered"]).sum()),
           "coarse_cpu_s_per_frame": (c1 - c0) / args.frames,
           "product_cpu_s_per_frame": (c0 - p0) / args.frames}
    if args.verbose:
        m = true.merge(refined[["frame", "dy_px", "dx_px"]], on="frame", suffixes=("_t", "_p"))
        m = m.merge(coarse[["frame", "dy_px", "dx_px", "registered"]].rename(
            columns={"dy_px": "dy_c", "dx_px": "dx_c"}), on="frame")
        m["n_vis"] = m["frame"].map(d["n_vis"]).fillna(0).astype(int)
        print(m.round(2).to_string())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1000-1007")
    p.add_argument("--presets", default="tspan4_gfp,wga")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--sparse", dest="crowded", action="store_false",
                   help="sparse scenes (default: crowded)")
    p.add_argument("--snr", default="high",
                   help="simulator SNR preset (high, medium, low): dim movies correlate weakly")
    p.add_argument("--cache", default="/tmp/migradetect_drift_cache")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    rows = []
    for preset in args.presets.split(","):
        for seed in parse_seeds(args.seeds):
            row = run_case(preset, seed, args)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
            rows.append(row)
    df = pd.DataFrame(rows)
    summary = {"rms_px_max": float(df["rms_px"].max()),
               "observable_rms_px_max": float(df["observable_rms_px"].max()),
               "n_rms_over_0.3": int((df["rms_px"] > 0.3).sum()),
               "n_observable_rms_over_0.3": int((df["observable_rms_px"] > 0.3).sum()),
               "coarse_cpu_s_per_frame_median": float(df["coarse_cpu_s_per_frame"].median()),
               "product_cpu_s_per_frame_median": float(df["product_cpu_s_per_frame"].median())}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary,
                                              "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
