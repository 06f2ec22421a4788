"""Performance benchmark of migradetect on simulated movies, with reference tools.

    python benchmarks/run.py [--quick] [--sizes 512,1024,2048] [--frames N]

Movies are simulated on MEASURING seeds (1000+, TSPAN4-GFP preset, 3 cells per 512^2 so the
density is the same at every size), written as OME-TIFF to a temporary folder and opened
with ``migradetect.io.open_movie`` (the real lazy reader). Measured:

1. Per size (512^2, 1024^2, 2048^2; ``--quick``: 512 and 1024, fewer frames), per frame after a
   warm-up frame (imports and numba compilation excluded), wall (perf_counter) and CPU
   (process_time) seconds and frames/s of each stage: ``read`` (lazy read of one frame: the
   I/O limit), ``preprocess`` (subtract_background + noise_sigma), ``cells``, ``fibers``,
   ``migrasomes`` and ``process_frame`` (all of it, what one dask task runs). Then the whole
   ``pipeline.analyze_movie`` on the threaded scheduler with 2 threads writing labels to a
   temporary zarr, split by its progress callback into the per-frame phase and the
   across-time steps (drift, cell tracking, linking, assignment, growth + summaries, and the
   tables + manifest). And the wall time including start-up: a fresh ``migradetect run``
   process on the movie, timed end to end (its peak RSS is recorded too).
2. References on the same frames, set up as a careful user would: ``trackpy.batch`` (numba
   engine, ``processes='auto'``, diameter an odd number of px near the typical migrasome
   diameter, minmass chosen for the best F1 by a sweep on the first frames against the truth),
   ``trackpy.link`` on its detections (search range 1 µm, memory 2) and
   ``skimage.feature.blob_log`` (best threshold of a small sweep on the first frame). Ratios:
   migradetect whole-pipeline frames/s over trackpy.batch frames/s (target >= 1.0, aim 1.5),
   detect_migrasomes over blob_log, linking step over trackpy.link.
3. Peak RSS of the process tree (psutil every 20 ms) of a fresh process analysing a T-frame
   and a 10T-frame movie (1024^2; ``--quick``: 512^2; the 10T movie is the T movie played
   forwards and backwards, so that both hold the same scenes): target peak(10T) - peak(T)
   <= 50 MiB, and per-frame wall time after warm-up at 10T within 15 % of that at T.
4. Density: a crowded scene against the sparse one at the same size.
5. Accuracy next to the speed: detection F1 and median diameter error
   (``evaluate.detection_scores``), complete tracks (``evaluate.tracking_scores``).
6. A ``dask.distributed`` LocalCluster of 2 one-thread worker processes against the threaded
   scheduler with 2 threads on the same movie: throughput ratio (target >= 0.9) and whether
   the CSVs written by ``report.write_movie_results`` are byte-identical.

Prints tables, writes ``benchmarks/results/perf-<UTC timestamp>.json`` and
``benchmarks/results/perf-latest.json`` (machine info, load average at start and end, every
number, the targets and whether they are met), and prints each metric's ratio to the previous
``perf-latest.json``. The machine may be shared: compare runs made under similar load.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402  (benchmarks/ is not a package)

log = logging.getLogger("bench")

N_THREADS = 2
SEED = 1000
QUICK = {"sizes": (512, 1024), "frames": {512: 8, 1024: 4, 2048: 3}, "memory_size": 512,
         "memory_frames": 4, "density_size": 512, "dist_size": 512}
FULL = {"sizes": (512, 1024, 2048), "frames": {512: 20, 1024: 10, 2048: 4},
        "memory_size": 1024, "memory_frames": 6, "density_size": 1024, "dist_size": 1024}
TARGETS = {"whole_vs_trackpy_batch": 1.0, "whole_vs_trackpy_batch_aim": 1.5,
           "rss_growth_10T_mib": 50.0, "per_frame_time_10T_over_T": 1.15,
           "distributed_over_threaded": 0.9}


# ----------------------------------------------------------------------------- helpers


def _config() -> Any:
    from migradetect.config import load_config

    return load_config("tspan4_gfp")


def _frame_table(df: pd.DataFrame, *, y: str = "y", x: str = "x", frame: str = "frame",
                 diameter_um: np.ndarray | None = None) -> pd.DataFrame:
    out = pd.DataFrame({"frame": df[frame].to_numpy(np.int64),
                        "y_px": df[y].to_numpy(float), "x_px": df[x].to_numpy(float)})
    out["diameter_um"] = np.nan if diameter_um is None else diameter_um
    return out


def _truth_for(truth: dict[str, Any], frames: list[int]) -> pd.DataFrame:
    mig = truth["migrasomes"]
    return mig[mig["frame"].isin(frames)].reset_index(drop=True)


def _accuracy(truth: dict[str, Any], migrasomes: pd.DataFrame, px: float,
              n_frames: int) -> dict[str, float]:
    """Detection F1, diameter error and complete tracks of a migrasomes table."""
    from migradetect.evaluate import detection_scores, tracking_scores

    t = _truth_for(truth, list(range(n_frames)))
    pred = migrasomes.reset_index(drop=True)
    det = detection_scores(t, pred, pixel_size_um=px)
    out = {"f1": det["f1"], "precision": det["precision"], "recall": det["recall"],
           "diameter_rel_error_median": det["diameter_rel_error_median"],
           "n_truth": det["n_truth"], "n_pred": det["n_pred"]}
    if "track_id" in pred.columns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = tracking_scores(t, pred, pixel_size_um=px)
        out["complete_tracks"] = tr["complete_tracks"]
        out["id_switches_per_100_track_frames"] = tr["id_switches_per_100_track_frames"]
    return out


def _analyze(movie: Any, cfg: Any, labels_path: Path, client: Any = None
             ) -> tuple[Any, dict[str, float]]:
    """``analyze_movie`` (2 threads unless ``client``) with its phases timed by ``progress``."""
    import dask

    from migradetect.pipeline import analyze_movie

    n = int(movie.n_frames)
    marks: list[tuple[int, float]] = []

    def progress(done: int, total: int) -> None:
        marks.append((int(done), time.perf_counter()))

    t0 = time.perf_counter()
    c0 = time.process_time()
    with dask.config.set(num_workers=N_THREADS):
        res = analyze_movie(movie, cfg, experiment="bench", labels_path=labels_path,
                            client=client, progress=progress)
    end = time.perf_counter()
    cpu = time.process_time() - c0
    per_frame_end = next((t for d, t in marks if d >= n), end)
    steps = [t for d, t in marks if d > n]
    names = ["drift", "cell_tracking", "linking", "assignment", "growth_and_summaries"]
    times = {"whole_s": end - t0, "cpu_s_main_process": cpu,
             "per_frame_phase_s": per_frame_end - t0,
             "across_time_s": end - per_frame_end}
    prev = per_frame_end
    for name, t in zip(names, steps, strict=False):
        times[f"{name}_s"] = t - prev
        prev = t
    times["tables_and_manifest_s"] = end - prev
    times["fps"] = n / times["whole_s"]
    times["per_frame_phase_fps"] = n / times["per_frame_phase_s"]
    return res, times


_WARMED: set[str] = set()


def warm_up_across_time(movie: Any, cfg: Any, work: Path) -> float:
    """Once per process: analyse the first 3 frames, compiling the across-time code paths
    (drift, tracking, linking, growth) so that the timed runs exclude JIT compilation."""
    import dataclasses

    if "across" in _WARMED:
        return 0.0
    _WARMED.add("across")
    short = dataclasses.replace(movie, data=movie.data[: min(3, movie.n_frames)])
    with bc.Timer() as tm:
        _analyze(short, cfg, work / "warmup-labels.zarr")
    shutil.rmtree(work / "warmup-labels.zarr", ignore_errors=True)
    return tm.wall


# ----------------------------------------------------------------------------- stages


def measure_stages(bm: bc.BenchMovie, cfg: Any) -> dict[str, Any]:
    """Per-stage wall/CPU time per frame after a warm-up frame (see module docstring)."""
    from migradetect import cells, fibers, migrasomes, pipeline, preprocess

    px, psf = bm.pixel_size_um, float(cfg.optics.psf_sigma)
    n = bm.n_frames
    reads: tuple[list[float], list[float]] = ([], [])
    frames = []
    for t in range(n):
        with bc.Timer() as tm:
            frames.append(bc.read_frame(bm.movie, t))
        reads[0].append(tm.wall)
        reads[1].append(tm.cpu)
    with bc.Timer() as warm:
        pipeline.process_frame(frames[0], frame_index=0, pixel_size_um=px, psf_sigma_um=psf,
                               config=cfg)
    names = ("preprocess", "cells", "fibers", "migrasomes", "process_frame")
    acc: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in names}

    def rec(name: str, tm: bc.Timer) -> None:
        acc[name][0].append(tm.wall)
        acc[name][1].append(tm.cpu)

    for t, raw in enumerate(frames):
        with bc.Timer() as tm:
            corrected, _bg = preprocess.subtract_background(raw, pixel_size_um=px,
                                                            config=cfg.preprocess)
            preprocess.noise_sigma(corrected)
        rec("preprocess", tm)
        with bc.Timer() as tm:
            labels = cells.segment_cells(raw, pixel_size_um=px, config=cfg.cells,
                                         marker=cfg.marker)
        rec("cells", tm)
        with bc.Timer() as tm:
            fibers.segment_fibers(corrected, pixel_size_um=px, psf_sigma_um=psf,
                                  config=cfg.fibers, cell_labels=labels, frame_index=t)
        rec("fibers", tm)
        with bc.Timer() as tm:
            migrasomes.detect_migrasomes(corrected, pixel_size_um=px, psf_sigma_um=psf,
                                         config=cfg.migrasomes, cell_labels=labels,
                                         frame_index=t)
        rec("migrasomes", tm)
        with bc.Timer() as tm:
            pipeline.process_frame(raw, frame_index=t, pixel_size_um=px, psf_sigma_um=psf,
                                   config=cfg)
        rec("process_frame", tm)
    out: dict[str, Any] = {"read": bc.summarize(*reads), "warmup_frame_s": warm.wall}
    for k in names:
        out[k] = bc.summarize(*acc[k])
    out["read"]["mb_per_s"] = bm.size * bm.size * 2 / 1e6 * out["read"]["fps"]
    return {"stages": out, "frames": frames}


# ----------------------------------------------------------------------------- references


def _odd(x: float) -> int:
    k = int(math.ceil(x))
    return max(3, k if k % 2 else k + 1)


def measure_trackpy(bm: bc.BenchMovie, frames: list[np.ndarray]) -> dict[str, Any]:
    """trackpy.batch (numba, processes='auto', best minmass) and trackpy.link, timed and scored."""
    import trackpy as tp
    import trackpy.diag  # noqa: F401
    from trackpy.feature import locate  # noqa: F401 - fails early if trackpy is broken

    from migradetect.evaluate import detection_scores

    tp.quiet()
    px = bm.pixel_size_um
    truth = bm.truth["migrasomes"]
    vis = truth[truth["visible"].astype(bool)] if "visible" in truth else truth
    typical_um = float(np.nanmedian(vis["diameter_um"])) if len(vis) else 1.0
    diameter = _odd(max(typical_um, 1.2) / px)
    n_sub = min(2, len(frames))
    sub_truth = _truth_for(bm.truth, list(range(n_sub)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        allf = tp.batch(frames[:n_sub], diameter, minmass=0, engine="numba", processes=1)
        masses = allf["mass"].to_numpy(float)
        best = (-1.0, 0.0)
        for q in (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98, 0.99):
            thr = float(np.quantile(masses, q)) if masses.size else 0.0
            pred = _frame_table(allf[allf["mass"] >= thr])
            f1 = detection_scores(sub_truth, pred, pixel_size_um=px)["f1"]
            if f1 > best[0]:
                best = (f1, thr)
        minmass = best[1]
        # single-process locate per frame (numba JIT already compiled above)
        with bc.Timer() as t1:
            tp.batch(frames, diameter, minmass=minmass, engine="numba", processes=1)
        with bc.Timer() as tb:
            feats = tp.batch(frames, diameter, minmass=minmass, engine="numba",
                             processes="auto")
        search = 1.0 / px
        with bc.Timer() as tl:
            linked = tp.link(feats, search_range=search, memory=2)
    pred = _frame_table(feats).assign(track_id=linked["particle"].to_numpy(np.int64))
    acc = _accuracy(bm.truth, pred, px, len(frames))
    n = len(frames)
    return {
        "diameter_px": diameter, "minmass": minmass, "minmass_sweep_best_f1": best[0],
        "numba": bool(getattr(tp.feature, "NUMBA_AVAILABLE", True)),
        "processes": "auto", "search_range_px": search, "memory": 2,
        "batch_wall_s": tb.wall, "batch_fps": n / tb.wall,
        "locate_1proc_fps": n / t1.wall, "locate_1proc_cpu_s_per_frame": t1.cpu / n,
        "link_wall_s": tl.wall, "n_features": len(feats), "accuracy": acc,
    }


def measure_blob_log(bm: bc.BenchMovie, frames: list[np.ndarray]) -> dict[str, Any]:
    """skimage.feature.blob_log with the best threshold of a sweep on frame 0."""
    from skimage.feature import blob_log

    from migradetect.evaluate import detection_scores

    px = bm.pixel_size_um
    min_sigma = max(1.0, 0.2 / px)             # ~ the PSF sigma
    max_sigma = 1.75 / math.sqrt(2) / px       # a 3.5 µm vesicle (radius = sqrt(2) sigma)

    def detect(frame: np.ndarray, threshold: float, t: int) -> pd.DataFrame:
        img = frame.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo if hi > lo else 1.0)
        b = blob_log(img, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=8,
                     threshold=threshold)
        return pd.DataFrame({"frame": np.full(len(b), t, np.int64), "y_px": b[:, 0],
                             "x_px": b[:, 1],
                             "diameter_um": 2 * math.sqrt(2) * b[:, 2] * px})

    sub_truth = _truth_for(bm.truth, [0])
    best = (-1.0, 0.0)
    for thr in (0.01, 0.02, 0.04, 0.08):
        f1 = detection_scores(sub_truth, detect(frames[0], thr, 0), pixel_size_um=px)["f1"]
        if f1 > best[0]:
            best = (f1, thr)
    use = frames[: min(len(frames), 4)]
    with bc.Timer() as tm:
        preds = [detect(f, best[1], t) for t, f in enumerate(use)]
    pred = pd.concat(preds, ignore_index=True)
    acc = _accuracy(bm.truth, pred, px, len(use))
    return {"threshold": best[1], "sweep_best_f1": best[0], "n_frames": len(use),
            "wall_s_per_frame": tm.wall / len(use), "fps": len(use) / tm.wall,
            "cpu_s_per_frame": tm.cpu / len(use), "accuracy": acc}


# ----------------------------------------------------------------------------- per size


def cli_run(bm: bc.BenchMovie, work: Path) -> dict[str, Any]:
    """A fresh ``migradetect run`` process on the movie, timed end to end, RSS sampled."""
    exe = shutil.which("migradetect")
    cmd = ([exe] if exe else [sys.executable, "-c",
                              "import sys; from migradetect.cli import main; sys.exit(main())"])
    out = work / "cli-out"
    r = bc.run_sampled([*cmd, "run", str(bm.path), "--out", str(out)], timeout_s=3600)
    if r["returncode"] != 0:
        log.warning("migradetect run failed (%s): %s", r["returncode"], r["stderr_tail"])
    return {"wall_s_incl_startup": r["wall_s"], "fps_incl_startup": bm.n_frames / r["wall_s"],
            "peak_rss_mib": r["peak_rss_mib"], "returncode": r["returncode"]}


def measure_movie(bm: bc.BenchMovie, cfg: Any, work: Path, *, references: bool,
                  cli: bool) -> dict[str, Any]:
    """Stages, whole pipeline, accuracy (and references, start-up) of one movie."""
    log.info("measuring %dx%d, %d frames%s", bm.size, bm.size, bm.n_frames,
             " (crowded)" if bm.crowded else "")
    st = measure_stages(bm, cfg)
    st["stages"]["across_time_warmup_s"] = warm_up_across_time(bm.movie, cfg, work)
    res, whole = _analyze(bm.movie, cfg, work / "labels.zarr")
    out: dict[str, Any] = {
        "size": bm.size, "n_frames": bm.n_frames, "crowded": bm.crowded, "seed": bm.seed,
        "simulate_s": bm.simulate_s, "stages": st["stages"], "pipeline_2_threads": whole,
        "accuracy": _accuracy(bm.truth, res.tables["migrasomes.csv"], bm.pixel_size_um,
                              bm.n_frames),
    }
    del res
    if cli:
        out["cli"] = cli_run(bm, work)
    if references:
        out["trackpy"] = measure_trackpy(bm, st["frames"])
        out["blob_log"] = measure_blob_log(bm, st["frames"])
        tpk, bl = out["trackpy"], out["blob_log"]
        out["ratios"] = {
            "whole_fps_over_trackpy_batch_fps": whole["fps"] / tpk["batch_fps"],
            "per_frame_phase_fps_over_trackpy_batch_fps":
                whole["per_frame_phase_fps"] / tpk["batch_fps"],
            "process_frame_fps_over_trackpy_locate_1proc_fps":
                st["stages"]["process_frame"]["fps"] / tpk["locate_1proc_fps"],
            "detect_migrasomes_fps_over_blob_log_fps":
                st["stages"]["migrasomes"]["fps"] / bl["fps"],
            "linking_s_over_trackpy_link_s":
                whole.get("linking_s", math.nan) / max(tpk["link_wall_s"], 1e-9),
        }
    return out


# ----------------------------------------------------------------------------- memory


def _child_analyze(movie_path: str, work: str, json_out: str) -> int:
    """Child process of the memory benchmark: warm up, analyse, write results, report times."""
    from migradetect import io
    from migradetect.report import write_movie_results

    cfg = _config()
    movie = io.open_movie(movie_path)
    from migradetect import pipeline

    with bc.Timer() as warm:
        pipeline.process_frame(bc.read_frame(movie, 0), frame_index=0,
                               pixel_size_um=float(movie.calibration.pixel_size_um),
                               psf_sigma_um=float(cfg.optics.psf_sigma), config=cfg)
    warm_across = warm_up_across_time(movie, cfg, Path(work))
    res, times = _analyze(movie, cfg, Path(work) / "labels.zarr")
    times["across_time_warmup_s"] = warm_across
    write_movie_results(res, Path(work) / "out")
    n = int(movie.n_frames)
    times.update(n_frames=n, warmup_s=warm.wall,
                 per_frame_wall_s=times["per_frame_phase_s"] / n)
    Path(json_out).write_text(json.dumps(times), encoding="utf-8")
    return 0


def _write_pingpong(src: Path, dst: Path, n_frames: int) -> None:
    """Write ``n_frames`` frames of movie ``src`` played forwards then backwards (ImageJ TIFF,
    same calibration), frame by frame: a 10T movie whose frames hold the same scenes as the
    T movie. A 10T-frame simulation is not comparable: its scene keeps filling with
    migrasomes and fibers, so later frames cost more for reasons that have nothing to do
    with the movie's length."""
    import tifffile

    from migradetect import io

    movie = io.open_movie(src)
    n = int(movie.n_frames)
    period = max(2 * n - 2, 1)

    def frames():
        for t in range(n_frames):
            k = t % period
            yield np.asarray(bc.read_frame(movie, k if k < n else period - k), dtype=np.uint16)

    px = float(movie.calibration.pixel_size_um)
    shape = tuple(int(v) for v in movie.data.shape[-2:])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(dst, frames(), shape=(n_frames, *shape), dtype=np.uint16, imagej=True,
                     resolution=(1 / px, 1 / px),
                     metadata={"axes": "TYX", "unit": "um",
                               "finterval": float(movie.calibration.frame_interval_s)})


def measure_memory(size: int, n_short: int, work: Path) -> dict[str, Any]:
    """Peak RSS and per-frame time of fresh processes on T and 10T frames (the 10T movie is
    the T movie played forwards and backwards, so both hold the same scenes)."""
    runs = {}
    base = work / "mem-T"
    bm = bc.make_movie(base, size=size, n_frames=n_short, seed=SEED + 1)
    del bm
    for label, n in (("T", n_short), ("10T", 10 * n_short)):
        folder = work / f"mem-{label}"
        path = folder / "movie.ome.tif"
        if label == "10T":
            path = folder / "movie.tif"
            _write_pingpong(base / "movie.ome.tif", path, n)
        js = folder / "times.json"
        r = bc.run_sampled([sys.executable, str(Path(__file__).resolve()), "--child-analyze",
                            str(path), str(folder / "work"), str(js)],
                           timeout_s=3600)
        if r["returncode"] != 0 or not js.exists():
            raise RuntimeError(f"memory child failed ({r['returncode']}): {r['stderr_tail']}")
        times = json.loads(js.read_text(encoding="utf-8"))
        runs[label] = {"n_frames": n, "peak_rss_mib": r["peak_rss_mib"],
                       "wall_s_incl_startup": r["wall_s"], **times}
    for label in ("T", "10T"):
        shutil.rmtree(work / f"mem-{label}", ignore_errors=True)
    growth = runs["10T"]["peak_rss_mib"] - runs["T"]["peak_rss_mib"]
    lin = runs["10T"]["per_frame_wall_s"] / runs["T"]["per_frame_wall_s"]
    return {"size": size, "runs": runs, "rss_growth_mib": growth,
            "per_frame_time_10T_over_T": lin,
            "rss_ok": growth <= TARGETS["rss_growth_10T_mib"],
            "linearity_ok": lin <= TARGETS["per_frame_time_10T_over_T"]}


# ----------------------------------------------------------------------------- distributed


def _warm_worker(path: str) -> float:
    """Run on each worker: import and compile (one frame) before the timed run."""
    from migradetect import io, pipeline

    t0 = time.perf_counter()
    cfg = _config()
    movie = io.open_movie(path)
    pipeline.process_frame(bc.read_frame(movie, 0), frame_index=0,
                           pixel_size_um=float(movie.calibration.pixel_size_um),
                           psf_sigma_um=float(cfg.optics.psf_sigma), config=cfg)
    return time.perf_counter() - t0


def measure_distributed(bm: bc.BenchMovie, cfg: Any, work: Path) -> dict[str, Any]:
    """LocalCluster (2 one-thread worker processes) vs threaded (2 threads): speed, CSVs."""
    from distributed import Client, LocalCluster

    from migradetect.report import write_movie_results

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with bc.Timer() as boot, warnings.catch_warnings():
        # dashboard off; the scheduler's small HTTP server (health routes) still binds a port
        # and warns when 8787 is taken by another engineer's cluster: harmless here
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0")
        client = Client(cluster)
    try:
        warm = client.run(_warm_worker, str(bm.path))
        res_d, td = _analyze(bm.movie, cfg, work / "dist" / "labels.zarr", client=client)
        write_movie_results(res_d, work / "dist")
    finally:
        client.close()
        cluster.close()
    res_t, tt = _analyze(bm.movie, cfg, work / "thr" / "labels.zarr")
    write_movie_results(res_t, work / "thr")
    identical = {}
    for f in sorted((work / "thr").glob("*.csv")):
        other = work / "dist" / f.name
        identical[f.name] = other.exists() and other.read_bytes() == f.read_bytes()
    ratio = td["fps"] / tt["fps"]
    return {"size": bm.size, "n_frames": bm.n_frames, "cluster_start_s": boot.wall,
            "worker_warmup_s": max(warm.values()) if warm else math.nan,
            "distributed": td, "threaded": tt, "throughput_ratio": ratio,
            "csv_identical": identical, "all_csv_identical": all(identical.values()),
            "ratio_ok": ratio >= TARGETS["distributed_over_threaded"]}


# ----------------------------------------------------------------------------- report


def _print_tables(result: dict[str, Any]) -> None:
    rows = []
    for key, m in result["movies"].items():
        s, w = m["stages"], m["pipeline_2_threads"]
        rows.append({
            "movie": key, "T": m["n_frames"], "read": s["read"]["fps"],
            "prep": s["preprocess"]["fps"], "cells": s["cells"]["fps"],
            "fibers": s["fibers"]["fps"], "migr": s["migrasomes"]["fps"],
            "frame": s["process_frame"]["fps"], "cpu_s/fr": s["process_frame"]["cpu_s_per_frame"],
            "perfr2t": w["per_frame_phase_fps"], "across_s": w["across_time_s"],
            "whole2t": w["fps"], "cli_fps": m.get("cli", {}).get("fps_incl_startup", math.nan),
            "cli_s": m.get("cli", {}).get("wall_s_incl_startup", math.nan),
            "F1": m["accuracy"]["f1"], "diam_err": m["accuracy"]["diameter_rel_error_median"],
            "complete": m["accuracy"].get("complete_tracks", math.nan),
        })
    print(bc.table(rows, list(rows[0]), "\nFrames/s per stage (1 thread, after warm-up), "
                   "per-frame phase and whole pipeline (2 threads), CLI incl. start-up"))
    steps = []
    for key, m in result["movies"].items():
        w = m["pipeline_2_threads"]
        steps.append({"movie": key, **{k.removesuffix("_s"): w.get(k, math.nan) for k in (
            "per_frame_phase_s", "drift_s", "cell_tracking_s", "linking_s", "assignment_s",
            "growth_and_summaries_s", "tables_and_manifest_s", "whole_s")}})
    print(bc.table(steps, list(steps[0]), "\nanalyze_movie phases (s, 2 threads)"))
    refs = []
    for key, m in result["movies"].items():
        if "trackpy" not in m:
            continue
        tp, bl, r = m["trackpy"], m["blob_log"], m["ratios"]
        refs.append({
            "movie": key, "mig_fps": m["pipeline_2_threads"]["fps"], "tp_batch_fps":
            tp["batch_fps"], "mig/tp": r["whole_fps_over_trackpy_batch_fps"],
            "perfr/tp": r["per_frame_phase_fps_over_trackpy_batch_fps"],
            "tp_1proc_fps": tp["locate_1proc_fps"], "blob_fps": bl["fps"],
            "detect/blob": r["detect_migrasomes_fps_over_blob_log_fps"],
            "link_s": m["pipeline_2_threads"].get("linking_s", math.nan),
            "tp_link_s": tp["link_wall_s"],
            "F1_mig": m["accuracy"]["f1"], "F1_tp": tp["accuracy"]["f1"],
            "F1_blob": bl["accuracy"]["f1"],
            "compl_mig": m["accuracy"].get("complete_tracks", math.nan),
            "compl_tp": tp["accuracy"].get("complete_tracks", math.nan),
        })
    if refs:
        print(bc.table(refs, list(refs[0]), "\nReferences on the same frames "
                       "(trackpy numba, processes='auto'; target mig/tp >= 1.0, aim 1.5)"))
    mem = result.get("memory")
    if mem:
        rows = [{"run": k, "frames": v["n_frames"], "peak_rss_mib": v["peak_rss_mib"],
                 "s/frame": v["per_frame_wall_s"], "whole_s": v["whole_s"],
                 "incl_startup_s": v["wall_s_incl_startup"]} for k, v in mem["runs"].items()]
        print(bc.table(rows, list(rows[0]), f"\nMemory at {mem['size']}^2 (fresh process each)"
                       f": RSS growth {mem['rss_growth_mib']:.1f} MiB (target <= 50), per-frame"
                       f" time 10T/T {mem['per_frame_time_10T_over_T']:.3f} (target <= 1.15)"))
    dist = result.get("distributed")
    if dist:
        print(f"\nDistributed (2 workers x 1 thread) vs threaded (2 threads) at {dist['size']}^2"
              f", {dist['n_frames']} frames: {dist['distributed']['whole_s']:.2f} s vs "
              f"{dist['threaded']['whole_s']:.2f} s, throughput ratio "
              f"{dist['throughput_ratio']:.3f} (target >= 0.9); CSVs byte-identical: "
              f"{dist['all_csv_identical']} {dist['csv_identical']}; cluster start "
              f"{dist['cluster_start_s']:.1f} s")
    print(f"\nLoad average at start {result['load_average_start']}, "
          f"end {result['load_average_end']}; {result['elapsed_s']:.0f} s in all")


def _checks(result: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for key, m in result["movies"].items():
        if "ratios" in m:
            r = m["ratios"]["whole_fps_over_trackpy_batch_fps"]
            checks[f"{key}.whole_vs_trackpy_batch"] = {
                "value": r, "target": TARGETS["whole_vs_trackpy_batch"],
                "met": r >= TARGETS["whole_vs_trackpy_batch"],
                "aim_met": r >= TARGETS["whole_vs_trackpy_batch_aim"]}
    if "memory" in result:
        mem = result["memory"]
        checks["rss_growth_mib"] = {"value": mem["rss_growth_mib"],
                                    "target": TARGETS["rss_growth_10T_mib"], "met": mem["rss_ok"]}
        checks["per_frame_time_10T_over_T"] = {
            "value": mem["per_frame_time_10T_over_T"],
            "target": TARGETS["per_frame_time_10T_over_T"], "met": mem["linearity_ok"]}
    if "distributed" in result:
        d = result["distributed"]
        checks["distributed_over_threaded"] = {"value": d["throughput_ratio"],
                                               "target": TARGETS["distributed_over_threaded"],
                                               "met": d["ratio_ok"]}
        checks["distributed_csv_identical"] = {"met": d["all_csv_identical"]}
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="512 and 1024 px only, fewer frames, memory at 512 px")
    parser.add_argument("--sizes", default=None, help="comma-separated frame sizes in px")
    parser.add_argument("--frames", type=int, default=None, help="frames per movie (all sizes)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                        "references,cli,memory,density,distributed")
    parser.add_argument("--child-analyze", nargs=3, metavar=("MOVIE", "WORK", "JSON"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_analyze:
        return _child_analyze(*args.child_analyze)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("migradetect").setLevel(logging.WARNING)
    plan = dict(QUICK if args.quick else FULL)
    sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes else plan["sizes"])
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    def n_frames(size: int) -> int:
        return args.frames or plan["frames"].get(size, 4)

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "migradetect performance (benchmarks/run.py)",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if args.quick else "full", "argv": sys.argv[1:],
        "machine": bc.machine_info(), "load_average_start": bc.load_average(),
        "threads": N_THREADS, "targets": TARGETS, "movies": {},
    }
    import trackpy.diag

    result["machine"]["trackpy_numba"] = "numba is available" in _capture(
        trackpy.diag.performance_report)
    cfg = _config()
    previous = bc.load_previous()
    work_root = Path(tempfile.mkdtemp(prefix="migradetect-bench-"))
    try:
        movies: dict[int, bc.BenchMovie] = {}
        for size in sizes:
            bm = bc.make_movie(work_root / f"m{size}", size=size, n_frames=n_frames(size),
                               seed=SEED)
            movies[size] = bm
            result["movies"][f"{size}"] = measure_movie(
                bm, cfg, work_root / f"m{size}" / "w", references="references" not in skip,
                cli="cli" not in skip)
        if "density" not in skip:
            size = plan["density_size"] if plan["density_size"] in sizes else sizes[0]
            bm = bc.make_movie(work_root / f"c{size}", size=size, n_frames=n_frames(size),
                               seed=SEED, crowded=True)
            result["movies"][f"{size}-crowded"] = measure_movie(
                bm, cfg, work_root / f"c{size}" / "w", references=False, cli=False)
            sparse = result["movies"][f"{size}"]
            crowd = result["movies"][f"{size}-crowded"]
            result["density"] = {
                "size": size,
                "detections_per_frame_sparse": sparse["accuracy"]["n_pred"] / sparse["n_frames"],
                "detections_per_frame_crowded": crowd["accuracy"]["n_pred"] / crowd["n_frames"],
                "process_frame_time_crowded_over_sparse":
                    crowd["stages"]["process_frame"]["wall_s_per_frame"]
                    / sparse["stages"]["process_frame"]["wall_s_per_frame"],
                "whole_time_crowded_over_sparse":
                    crowd["pipeline_2_threads"]["whole_s"] / sparse["pipeline_2_threads"]["whole_s"],
            }
        if "distributed" not in skip:
            size = plan["dist_size"] if plan["dist_size"] in movies else sizes[0]
            result["distributed"] = measure_distributed(movies[size], cfg,
                                                        work_root / f"dist{size}")
        if "memory" not in skip:
            result["memory"] = measure_memory(plan["memory_size"], args.frames and max(
                2, args.frames // 2) or plan["memory_frames"], work_root / "memory")
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    result["load_average_end"] = bc.load_average()
    result["elapsed_s"] = time.perf_counter() - t0
    result["checks"] = _checks(result)
    metrics = {k: v for k, v in bc.flatten({"movies": result["movies"],
                                            "memory": result.get("memory", {}),
                                            "distributed": result.get("distributed", {}),
                                            "density": result.get("density", {})}).items()}
    result["metrics"] = metrics
    _print_tables(result)
    print("\nChecks:")
    for k, v in result["checks"].items():
        print(f"  {k}: {'MET' if v['met'] else 'NOT MET'}"
              + (f" (value {v['value']:.3g}, target {v['target']})" if "value" in v else ""))
    print("\nCompared with the previous perf-latest.json (new / old):")
    if previous and previous.get("mode") != result["mode"]:
        print(f"  (previous run was mode={previous.get('mode')}: sizes/frames may differ)")
    for line in bc.compare(metrics, (previous or {}).get("metrics")):
        print("  " + line)
    stamped, _latest = bc.write_results(result)
    print(f"\nWrote {stamped} and perf-latest.json")
    return 0


def _capture(fn: Any) -> str:
    import contextlib
    import io as _io

    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
