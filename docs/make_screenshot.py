"""Make docs/review_widget.png: the review widget on the simulated TSPAN4-GFP sample.

Runs the analysis through the run widget (as a user would), opens the review widget,
does a small scripted curation (reject the two lowest-scoring tracks, give an unassigned
track to a cell, add a migrasome of the ground truth that was missed), saves it, prints
the counts before and after, and saves a screenshot of the whole window.

Usage (needs a display; on a headless machine use Xvfb)::

    xvfb-run -a python docs/make_screenshot.py [--out docs/review_widget.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from migradetect import curation, synthetic
from migradetect.report import read_csv
from migradetect.schema import SUMMARY
from migradetect_napari._layers import add_layers
from migradetect_napari._sample_data import SAMPLE_FRAMES, SAMPLE_SEED, SAMPLE_SIZE

log = logging.getLogger("make_screenshot")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("review_widget.png")))
    parser.add_argument("--results", default=None, help="folder for the run's results "
                        "(default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out_root = Path(args.results or tempfile.mkdtemp(prefix="migradetect_shot_"))
    viewer = napari.Viewer(show=True, title="migradetect review")
    viewer.window.resize(1500, 950)
    sim = synthetic.simulate(preset="tspan4_gfp", seed=SAMPLE_SEED, size=SAMPLE_SIZE,
                             n_frames=SAMPLE_FRAMES, n_cells=2)
    from migradetect_napari._sample_data import simulated_movie_layers

    add_layers(viewer, simulated_movie_layers("tspan4_gfp"))
    _, run = viewer.window.add_plugin_dock_widget("migradetect", "Run migradetect")
    run.out_dir.value = out_root
    run.experiment.value = "sample"
    t0 = time.perf_counter()
    worker = run.run()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    while not finished:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    log.info("run: %.1f s; %s", time.perf_counter() - t0, run.status.value)
    viewer.window.remove_dock_widget("all")

    _, review = viewer.window.add_plugin_dock_widget("migradetect", "Review migrasomes")
    tables = review.tables
    movie_dir = Path(review.points.metadata["migradetect"]["movie_dir"])
    tracks = tables["tracks.csv"]
    mig = tables["migrasomes.csv"]

    review.setMaximumWidth(620)
    # 1. reject the two counted tracks with the lowest mean detection score
    counted = tracks.loc[curation.counted_tracks(tracks, SAMPLE_FRAMES).to_numpy(), "track_id"]
    score = (mig.loc[mig["track_id"].isin(counted)].groupby("track_id")["score"].mean()
             .sort_values())
    for tid in score.index[:2]:
        review.select_track(int(tid))
        review.reject_track()
    # 2. give the first unassigned track to the cell nearest to it at its birth
    cells_layer = viewer.layers["cells"]
    unassigned = tracks.loc[(tracks["cell_id"] < 0) & ~tracks["track_id"].isin(score.index[:2])]
    if len(unassigned):
        tid = int(unassigned["track_id"].iloc[0])
        cell_frames = tables["cell_frames.csv"]
        row = mig.loc[mig["track_id"] == tid].iloc[0]
        here = cell_frames.loc[cell_frames["frame"] == row["frame"]]
        if len(here):
            d = np.hypot(here["y_px"] - row["y_px"], here["x_px"] - row["x_px"])
            target = here.iloc[int(np.argmin(d.to_numpy()))]
            review.select_track(tid)
            review.start_pick_cell()
            world = cells_layer.data_to_world((row["frame"], target["y_px"], target["x_px"]))
            review._on_click(viewer, type("E", (), {"type": "mouse_press",
                                                    "position": tuple(world)})())
    # 3. add a ground-truth migrasome far (> 1 µm) from every detection of its frame
    truth = sim.truth["migrasomes"]
    truth = truth.loc[truth["visible"].astype(bool)] if "visible" in truth else truth
    px = sim.pixel_size_um
    for r in truth.sort_values("diameter_um", ascending=False).itertuples():
        same = mig.loc[mig["frame"] == r.frame]
        if len(same) == 0 or np.min(np.hypot(same["y_px"] - r.y_px,
                                             same["x_px"] - r.x_px)) * px > 1.0:
            viewer.dims.set_current_step(0, int(r.frame))
            review.diameter.setValue(float(r.diameter_um))
            review.start_add()
            world = review.points.data_to_world((r.frame, r.y_px, r.x_px))
            review._on_click(viewer, type("E", (), {"type": "mouse_press",
                                                    "position": tuple(world)})())
            break
    review.save()
    before = read_csv(movie_dir / "migrasomes.csv")
    info = curation.curation_info(movie_dir)
    summary = read_csv(movie_dir / "curated" / "summary.csv", SUMMARY)
    print(json.dumps({"results": str(movie_dir), "auto_detections": len(before),
                      "auto_tracks": int(len(tracks)),
                      "counts": info["counts"],
                      "n_migrasomes_auto": info["n_migrasomes_auto"],
                      "n_migrasomes_curated": info["n_migrasomes_curated"],
                      "curated_summary": summary.iloc[0].to_dict()}, indent=1, default=str))

    # show a kept track for the picture
    kept = review.tables["tracks.csv"]
    kept = kept.loc[kept["curation"] != "rejected"].sort_values("n_frames", ascending=False)
    if len(kept):
        review.select_track(int(kept["track_id"].iloc[0]))
    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.02)
    image = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    imsave(args.out, image, check_contrast=False)
    log.info("wrote %s (%d x %d)", args.out, image.shape[1], image.shape[0])
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
