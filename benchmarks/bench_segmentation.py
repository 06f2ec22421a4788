"""Benchmark of background removal, cell and retraction-fiber segmentation on simulated movies.

Usage::

    python benchmarks/bench_segmentation.py [--quick] [--seeds N] [--first-seed S]
        [--n-cells K] [--out PATH]

For both presets (``tspan4_gfp``, ``wga``, each analysed with its shipped preset config) x SNR
``high``/``medium``/``low`` x sparse/crowded scenes, movies are simulated on MEASURING seeds
(1000+; the methods were tuned on seeds 0-99 only) and every frame is segmented. Scores:

- fiber centreline recall / precision within 2 px (``evaluate.fiber_scores``) of the predicted
  skeleton against the simulator's 1-px true centrelines, scored OUTSIDE the true cell bodies
  dilated by ``CELL_MARGIN_UM`` (1 µm): retraction fibers are ridges outside the cells, and the
  simulator draws about 15 % of its centrelines over cell bodies, where no line is visible on
  top of the cell (they used to count as misses). Precision stays over EVERY predicted pixel
  (partners: every true centreline pixel, over cells too): a fiber predicted along a cell's
  rim (a ridge in membrane stains) is a false positive wherever it lies. The former recall
  (every true pixel) is reported too as ``fiber_recall_all``, and ``fiber_precision_outside``
  is the precision over predicted pixels outside the same zone;
- cell IoU (``evaluate.cell_iou``: per frame, true cells matched one-to-one to predicted
  labels, mean matched IoU over true cell-frames, 0 for a missed cell);
- cell OBJECT errors, which the IoU hides (:func:`object_scores`, per true cell-frame and
  predicted label-frame): ``matched`` (true cells matched one-to-one to a label at IoU
  >= 0.5), ``merges`` (labels covering >= 2 true cells by >= 30 % of each: touching cells
  glued), ``splits`` (true cells of which >= 2 labels, each lying mostly (>= 50 %) inside
  it, cover >= 20 % each), ``false_cells`` (labels lying mostly (> 50 %) outside every true
  cell: debris, fans of fibers, migrasome swarms), ``missed`` (true cells less than 30 %
  covered by any label);
- CPU time per 1024 x 1024 frame (``time.process_time`` after a warm-up) of
  subtract_background + segment_cells + segment_fibers.

Prints a table and writes JSON to ``benchmarks/results/segmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from migradetect.cells import segment_cells
from migradetect.config import load_config
from migradetect.evaluate import cell_iou, fiber_scores
from migradetect.fibers import segment_fibers
from migradetect.preprocess import subtract_background
from migradetect.synthetic import simulate

PRESETS = ("tspan4_gfp", "wga")
SNRS = ("high", "medium", "low")
TARGETS = {"fiber_recall": 0.9, "fiber_precision": 0.9, "cell_iou": 0.9}
#: Margin (µm) around the true cell bodies where fiber pixels are not scored.
CELL_MARGIN_UM = 1.0


#: Object-level criteria (see the module docstring).
MATCH_IOU, MERGE_COVER, SPLIT_COVER, INSIDE, MISS_COVER = 0.5, 0.3, 0.2, 0.5, 0.3
OBJECT_KEYS = ("n_true", "n_pred", "matched", "merges", "splits", "false_cells", "missed")


def object_scores(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, int]:
    """Object-level errors of a cell segmentation, summed over frames.

    ``true_labels``, ``pred_labels``: ``(Y, X)`` or ``(T, Y, X)`` integer labels. Each frame
    is scored on its own (ids need not agree over time). Returns counts: ``n_true`` (true
    cell-frames), ``n_pred`` (predicted label-frames), ``matched``, ``merges``, ``splits``,
    ``false_cells``, ``missed`` (criteria in the module docstring).
    """
    t_all, p_all = np.asarray(true_labels), np.asarray(pred_labels)
    if t_all.ndim == 2:
        t_all, p_all = t_all[None], p_all[None]
    out = dict.fromkeys(OBJECT_KEYS, 0)
    for t, p in zip(t_all, p_all):
        ids_t, inv_t = np.unique(t, return_inverse=True)
        ids_p, inv_p = np.unique(p, return_inverse=True)
        # contingency table, row/column 0 = background where the ids include 0
        ov = np.bincount(inv_t.ravel() * ids_p.size + inv_p.ravel(),
                         minlength=ids_t.size * ids_p.size).reshape(ids_t.size, ids_p.size)
        # areas from the full labels, then the overlaps of cells only (id 0: background)
        area_t = ov[ids_t > 0].sum(axis=1).astype(float)
        area_p = ov[:, ids_p > 0].sum(axis=0).astype(float)
        ov = ov[ids_t > 0][:, ids_p > 0].astype(float)
        nt, npred = area_t.size, area_p.size
        out["n_true"] += nt
        out["n_pred"] += npred
        if nt == 0:
            out["false_cells"] += npred
            continue
        if npred == 0:
            out["missed"] += nt
            continue
        iou = ov / (area_t[:, None] + area_p[None, :] - ov)
        # IoU > 0.5 is one-to-one by itself; at exactly 0.5 the best pairs are kept
        r, c = linear_sum_assignment(iou, maximize=True)
        out["matched"] += int(np.sum(iou[r, c] >= MATCH_IOU))
        cover_t = ov / area_t[:, None]  # fraction of each true cell in each label
        inside_p = ov / area_p[None, :]  # fraction of each label in each true cell
        out["merges"] += int(np.sum((cover_t >= MERGE_COVER).sum(axis=0) >= 2))
        out["splits"] += int(np.sum(((cover_t >= SPLIT_COVER) & (inside_p >= INSIDE))
                                    .sum(axis=1) >= 2))
        out["false_cells"] += int(np.sum(inside_p.sum(axis=0) < INSIDE))
        out["missed"] += int(np.sum(cover_t.sum(axis=1) < MISS_COVER))
    return out


def segment_movie(image: np.ndarray, preset: str, pixel_size_um: float):
    """Cells and fiber skeletons of every frame of a (T, Y, X) movie."""
    cfg = load_config(preset)
    cells = np.zeros(image.shape, dtype=np.int32)
    fibers = np.zeros(image.shape, dtype=np.int32)
    for t, frame in enumerate(image):
        cells[t] = segment_cells(frame, pixel_size_um=pixel_size_um, config=cfg.cells,
                                 marker=cfg.marker)
        fibers[t], _ = segment_fibers(frame, pixel_size_um=pixel_size_um,
                                      psf_sigma_um=cfg.optics.psf_sigma, config=cfg.fibers,
                                      cell_labels=cells[t], frame_index=t)
    return cells, fibers


def score_case(preset: str, snr: str, crowded: bool, seeds: list[int], n_frames: int,
               size: int, n_cells: int = 3) -> dict:
    hit = {"cells_true": [], "cells_pred": [], "fib_true": [], "fib_pred": [], "fib_ex": []}
    measured = []
    for seed in seeds:
        sim = simulate(preset=preset, seed=seed, size=size, n_frames=n_frames, snr=snr,
                       crowded=crowded, n_cells=n_cells)
        image = sim.image[:, 0]
        cells, fibers = segment_movie(image, preset, sim.pixel_size_um)
        hit["cells_true"].append(sim.cell_labels)
        hit["cells_pred"].append(cells)
        hit["fib_true"].append(sim.fiber_labels)
        hit["fib_pred"].append(fibers)
        margin = int(round(CELL_MARGIN_UM / sim.pixel_size_um))
        hit["fib_ex"].append(np.stack([
            ndimage.binary_dilation(c > 0, structure=np.ones((3, 3), bool), iterations=margin)
            for c in sim.cell_labels]))
        measured.append(sim.params["snr_measured"])
    fs = fiber_scores(np.concatenate(hit["fib_true"]), np.concatenate(hit["fib_pred"]),
                      tolerance_px=2.0, exclude=np.concatenate(hit["fib_ex"]))
    fs_all = fiber_scores(np.concatenate(hit["fib_true"]), np.concatenate(hit["fib_pred"]),
                          tolerance_px=2.0)
    ci = cell_iou(np.concatenate(hit["cells_true"]), np.concatenate(hit["cells_pred"]))
    obj = object_scores(np.concatenate(hit["cells_true"]), np.concatenate(hit["cells_pred"]))

    def med(key):
        vals = [m.get(key) for m in measured if m.get(key) is not None]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.median(vals)) if vals else float("nan")

    return {
        "preset": preset, "snr": snr, "crowded": crowded, "seeds": seeds,
        "n_frames": n_frames, "size": size, "n_cells": n_cells,
        "fiber_recall": fs["recall"], "fiber_precision": fs_all["precision"],
        "fiber_true_px": fs["n_true_px"], "fiber_pred_px": fs_all["n_pred_px"],
        "fiber_recall_all": fs_all["recall"], "fiber_precision_outside": fs["precision"],
        "cell_iou": ci["cell_iou_mean"], "cell_foreground_iou": ci["foreground_iou"],
        "n_true_cell_frames": ci["n_true_cell_frames"],
        **{f"cells_{k}": v for k, v in obj.items()},
        "snr_fibers_measured": med("fibers_all"), "snr_cells_measured": med("cells"),
    }


def time_per_frame(preset: str, seed: int, repeats: int) -> dict:
    """CPU seconds per 1024 x 1024 frame (after a warm-up frame)."""
    sim = simulate(preset=preset, seed=seed, size=1024, n_frames=2, snr="medium", n_cells=6)
    cfg = load_config(preset)
    px = sim.pixel_size_um
    frames = sim.image[:, 0]

    def run(frame):
        t0 = time.process_time()
        subtract_background(frame, pixel_size_um=px, config=cfg.preprocess)
        t1 = time.process_time()
        cells = segment_cells(frame, pixel_size_um=px, config=cfg.cells, marker=cfg.marker)
        t2 = time.process_time()
        segment_fibers(frame, pixel_size_um=px, psf_sigma_um=cfg.optics.psf_sigma,
                       config=cfg.fibers, cell_labels=cells)
        t3 = time.process_time()
        return t1 - t0, t2 - t1, t3 - t2

    run(frames[0])  # warm-up (imports, numba compilation inside skan)
    times = np.array([run(frames[i % len(frames)]) for i in range(repeats)])
    med = np.median(times, axis=0)
    return {"preset": preset, "background_s": float(med[0]), "cells_s": float(med[1]),
            "fibers_s": float(med[2]), "total_s": float(med.sum()), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 frames per case")
    parser.add_argument("--seeds", type=int, default=3, help="measuring seeds per case")
    parser.add_argument("--first-seed", type=int, default=1000,
                        help="first seed (>= 1000 to measure; 0-99 only for tuning)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--n-cells", type=int, default=3,
                        help="cells per movie (e.g. 6 in 512²: dense, often touching cells)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "segmentation.json")
    args = parser.parse_args(argv)
    n_seeds, n_frames = (1, 2) if args.quick else (args.seeds, args.frames)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    rows = []
    for preset in PRESETS:
        for snr in SNRS:
            for crowded in (False, True):
                row = score_case(preset, snr, crowded, seeds, n_frames, args.size,
                                 args.n_cells)
                rows.append(row)
                print(f"{preset:11s} {snr:6s} {'crowded' if crowded else 'sparse':7s} "
                      f"fiber R {row['fiber_recall']:.3f} P {row['fiber_precision']:.3f} "
                      f"(recall over all true px {row['fiber_recall_all']:.3f}, precision "
                      f"outside cells {row['fiber_precision_outside']:.3f})  "
                      f"cell IoU {row['cell_iou']:.3f} objects {row['cells_matched']}/"
                      f"{row['cells_n_true']} matched, {row['cells_merges']} merged, "
                      f"{row['cells_splits']} split, {row['cells_false_cells']} false, "
                      f"{row['cells_missed']} missed  "
                      f"(SNR fibers {row['snr_fibers_measured']:.2f}, cells "
                      f"{row['snr_cells_measured']:.2f})", flush=True)
    timing = [time_per_frame(p, args.first_seed, 3 if args.quick else 5) for p in PRESETS]
    print("\nCPU time per 1024x1024 frame (s): background + cells + fibers")
    for t in timing:
        print(f"{t['preset']:11s} {t['background_s']:.3f} + {t['cells_s']:.3f} + "
              f"{t['fibers_s']:.3f} = {t['total_s']:.3f}")
    misses = [
        f"{r['preset']}/{r['snr']}/{'crowded' if r['crowded'] else 'sparse'}: {k} "
        f"{r[k]:.3f} < {v}"
        for r in rows if r["snr"] in ("high", "medium")
        for k, v in TARGETS.items() if not (r[k] >= v)
    ]
    print("\nmisses against targets (high/medium SNR):" if misses else "\nall targets met")
    for m in misses:
        print("  " + m)
    result = {
        "benchmark": "segmentation", "quick": args.quick, "seeds": seeds, "frames": n_frames,
        "size": args.size, "n_cells": args.n_cells, "targets": TARGETS, "cases": rows,
        "timing_1024": timing,
        "misses": misses, "python": sys.version.split()[0], "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
