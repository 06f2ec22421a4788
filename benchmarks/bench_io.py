"""Benchmark: memory and throughput of reading a long movie lazily with ``migradetect.io``.

Writes (or reuses, under ``benchmarks/data/``, git-ignored) a ~3 GB uint16 ImageJ hyperstack
(2048 x 2048 x 360 frames, one IFD with contiguous data as ImageJ writes stacks > 4 GB; written
frame by frame, never held in memory) and one 10x shorter. For each, a fresh Python process
opens the movie and reduces it frame by frame (per-frame max and sum, dask threaded scheduler)
while a thread samples the process's RSS every 20 ms. Reported: frames/s, MB/s, peak RSS and the
growth of peak RSS from the short to the long movie (target: < 50 MiB, i.e. memory does not grow
with the movie's length). Before each run the file's pages are dropped from the page cache
(``posix_fadvise DONTNEED``; only this file's pages) unless ``--warm`` is given.

RSS does not grow with the movie's length: it reaches a plateau within the first tens of frames
(a few frame buffers in flight plus freed buffers that glibc keeps after raising its dynamic mmap
threshold; with ``MALLOC_MMAP_THRESHOLD_=131072`` the plateau is about half as high). The
short movie may end before the plateau is reached, which is most of the measured difference.

Usage::

    python benchmarks/bench_io.py                 # 360 and 36 frames of 2048 x 2048
    python benchmarks/bench_io.py --frames 60 --size 1024 --delete

Results go to ``benchmarks/results/io.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BASE_MAX = 999  # frame t holds values 0..BASE_MAX + t, so its max is BASE_MAX + t


def _frame(base: np.ndarray, t: int) -> np.ndarray:
    return base + np.uint16(t)


def _base(size: int) -> np.ndarray:
    rng = np.random.default_rng(1000)
    base = rng.integers(0, BASE_MAX, (size, size), dtype=np.uint16)
    base[0, 0] = BASE_MAX
    return base


def write_movie(path: Path, n_frames: int, size: int) -> None:
    """Write an ImageJ hyperstack frame by frame (reused when already there and complete)."""
    import tifffile

    expected = n_frames * size * size * 2
    if path.exists() and path.stat().st_size >= expected:
        try:
            with tifffile.TiffFile(path) as tif:
                if tif.series[0].shape == (n_frames, size, size):
                    return
        except Exception:  # an unreadable leftover is simply rewritten
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    base = _base(size)
    frames = (_frame(base, t) for t in range(n_frames))
    tmp = path.with_suffix(".tmp")
    tifffile.imwrite(tmp, frames, shape=(n_frames, size, size), dtype=np.uint16, imagej=True,
                     truncate=True, resolution=(1 / 0.15, 1 / 0.15),
                     metadata={"axes": "TYX", "unit": "um", "finterval": 60.0})
    tmp.replace(path)


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child(path: Path) -> dict:
    """Runs in a fresh process: open, reduce frame by frame, sample RSS; returns the numbers."""
    import dask
    import psutil

    from migradetect.io import open_movie

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    baseline = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    movie = open_movie(path)
    opened = time.perf_counter()
    frames = movie.frames(0)
    maxima, sums = dask.compute(frames.max(axis=(1, 2)), frames.sum(axis=(1, 2), dtype=np.float64),
                                scheduler="threads")
    end = time.perf_counter()
    stop.set()
    sampler.join()
    n = movie.n_frames
    ok = bool(np.array_equal(maxima, BASE_MAX + np.arange(n)))
    nbytes = frames.nbytes
    return {
        "path": str(path), "n_frames": n, "frame_shape": list(frames.shape[1:]),
        "bytes": int(nbytes), "open_s": opened - start, "reduce_s": end - opened,
        "frames_per_s": n / (end - opened), "mb_per_s": nbytes / 1e6 / (end - opened),
        "baseline_rss_mib": baseline / 2**20, "peak_rss_mib": peak[0] / 2**20,
        "peak_above_baseline_mib": (peak[0] - baseline) / 2**20,
        "maxima_correct": ok, "sum_first_frame": float(sums[0]),
        "threads": os.cpu_count(),
    }


def run_child(path: Path, warm: bool) -> dict:
    if not warm:
        _drop_cache(path)
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=360, help="frames of the long movie")
    parser.add_argument("--size", type=int, default=2048, help="frame width = height, px")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="where movies go")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "io.json")
    parser.add_argument("--warm", action="store_true", help="keep the files in page cache")
    parser.add_argument("--delete", action="store_true", help="delete the movies afterwards")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return 0

    long_path = args.data / f"bench_io_{args.size}px_{args.frames}f.tif"
    short_path = args.data / f"bench_io_{args.size}px_{max(1, args.frames // 10)}f.tif"
    t0 = time.perf_counter()
    write_movie(long_path, args.frames, args.size)
    write_movie(short_path, max(1, args.frames // 10), args.size)
    write_s = time.perf_counter() - t0
    try:
        results = {"short": run_child(short_path, args.warm),
                   "long": run_child(long_path, args.warm)}
    finally:
        if args.delete:
            long_path.unlink(missing_ok=True)
            short_path.unlink(missing_ok=True)
    growth = results["long"]["peak_rss_mib"] - results["short"]["peak_rss_mib"]
    summary = {
        "peak_rss_growth_mib": growth, "target_growth_mib": 50.0, "passed": growth < 50.0,
        "page_cache": "warm" if args.warm else "dropped before each run (posix_fadvise)",
        "write_s": write_s, "scheduler": "dask threads", **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))

    print(f"{'movie':<8}{'frames':>8}{'GB':>8}{'open s':>9}{'frames/s':>10}{'MB/s':>9}"
          f"{'peak RSS MiB':>14}{'above start':>13}{'correct':>9}")
    for key in ("short", "long"):
        r = results[key]
        print(f"{key:<8}{r['n_frames']:>8}{r['bytes'] / 1e9:>8.2f}{r['open_s']:>9.3f}"
              f"{r['frames_per_s']:>10.1f}{r['mb_per_s']:>9.0f}{r['peak_rss_mib']:>14.1f}"
              f"{r['peak_above_baseline_mib']:>13.1f}"
              f"{str(r['maxima_correct']):>9}")
    print(f"peak RSS growth long - short: {growth:.1f} MiB (target < 50 MiB): "
          f"{'PASS' if growth < 50 else 'FAIL'}; results in {args.out}")
    return 0 if growth < 50 and all(r["maxima_correct"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
