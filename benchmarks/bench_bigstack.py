"""Benchmark: peak memory of the whole pipeline on a 3.4 GB stack (2048 x 2048 x 400, uint16).

Issue #7 asks that a 3.4 GB stack runs with peak RSS <= 1 GiB on the threaded scheduler.
The stack is built from a simulated TSPAN4-GFP movie (measuring seed 1000, 512 x 512, 40
frames) tiled 4 x 4 in space and played forwards and backwards in time (frame 40 is frame
39 again, and so on), so that every frame holds realistic cells, fibers and migrasomes while
the file is written frame by frame and never held in memory. It is an ImageJ hyperstack (one
IFD with contiguous data, as ImageJ writes stacks > 4 GB), kept under ``benchmarks/data/``
(git-ignored) and reused.

A fresh ``migradetect run FILE --out OUT`` process (threaded scheduler, the shipped
``tspan4_gfp`` preset) analyses it while the parent samples the RSS of the process tree
every 20 ms (file-backed pages count). A short stack (``--short`` frames, default 40) is run
the same way so that the growth of the peak with the movie's length is reported as well.

Usage::

    python benchmarks/bench_bigstack.py                     # 400 and 40 frames of 2048 x 2048
    python benchmarks/bench_bigstack.py --frames 100 --short 10 --size 1024   # smaller try

Results go to ``benchmarks/results/bigstack.json`` and a table is printed. This takes long
(hundreds of frames of 2048 x 2048); CI never runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _bench_common as bc  # noqa: E402

SEED = 1000
TILE = 512
BASE_FRAMES = 40
LIMIT_MIB = 1024.0


def _base_movie() -> tuple[np.ndarray, float, float]:
    """The simulated 512 x 512 x 40 movie (uint16), its pixel size and frame interval."""
    from migradetect.synthetic import simulate

    sim = simulate(preset="tspan4_gfp", seed=SEED, size=TILE, n_frames=BASE_FRAMES, n_cells=3)
    frames = np.ascontiguousarray(sim.image[:, 0])
    return frames, sim.pixel_size_um, sim.frame_interval_s


def _pingpong(t: int, n: int) -> int:
    """Frame index of ``t`` when a movie of ``n`` frames is played forwards then backwards."""
    period = 2 * n - 2
    k = t % period
    return k if k < n else period - k


def write_stack(path: Path, n_frames: int, size: int) -> dict[str, Any]:
    """Write (or reuse) the tiled stack as an ImageJ hyperstack, frame by frame."""
    import tifffile

    expected = n_frames * size * size * 2
    if path.exists() and path.stat().st_size >= expected:
        try:
            with tifffile.TiffFile(path) as tif:
                if tif.series[0].shape == (n_frames, size, size):
                    return {"reused": True, "bytes": expected}
        except Exception:  # an unreadable leftover is simply rewritten
            pass
    base, px, dt = _base_movie()
    reps = -(-size // TILE)

    def frames():
        for t in range(n_frames):
            tile = base[_pingpong(t, len(base))]
            yield np.tile(tile, (reps, reps))[:size, :size]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    tifffile.imwrite(tmp, frames(), shape=(n_frames, size, size), dtype=np.uint16, imagej=True,
                     truncate=True, resolution=(1 / px, 1 / px),
                     metadata={"axes": "TYX", "unit": "um", "finterval": dt})
    tmp.replace(path)
    return {"reused": False, "bytes": expected, "write_s": time.perf_counter() - t0}


def run_one(path: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """A fresh ``migradetect run`` on ``path`` with its process tree's RSS sampled."""
    exe = shutil.which("migradetect")
    cmd = ([exe] if exe else [sys.executable, "-c",
                              "import sys; from migradetect.cli import main; sys.exit(main())"])
    out = work / f"out-{path.stem}"
    r = bc.run_sampled([*cmd, "run", str(path), "--out", str(out)], timeout_s=timeout_s)
    n_frames = None
    summary = out / "summary.csv"
    if summary.exists():
        import pandas as pd

        table = pd.read_csv(summary)
        n_frames = int(table["n_frames"].iloc[0]) if "n_frames" in table and len(table) else None
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s_incl_startup": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
            "returncode": r["returncode"], "n_frames_done": n_frames,
            "stderr_tail": r["stderr_tail"] if r["returncode"] else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=400, help="frames of the long stack")
    parser.add_argument("--short", type=int, default=40, help="frames of the short stack")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per run")
    parser.add_argument("--delete", action="store_true", help="delete the stacks afterwards")
    parser.add_argument("--out", default=str(HERE / "results" / "bigstack.json"))
    args = parser.parse_args(argv)

    data = HERE / "data"
    result: dict[str, Any] = {
        "benchmark": "bigstack", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:], "machine": bc.machine_info(),
        "load_average_start": bc.load_average(), "limit_mib": LIMIT_MIB, "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="md-bigstack-") as tmp:
        work = Path(tmp)
        for label, n in (("short", args.short), ("long", args.frames)):
            path = data / f"bigstack_{args.size}_{n}.tif"
            written = write_stack(path, n, args.size)
            run = run_one(path, work, args.timeout)
            run.update(n_frames=n, gb=written["bytes"] / 1e9, stack=written,
                       fps_incl_startup=n / run["wall_s_incl_startup"])
            result["runs"][label] = run
            print(f"{label}: {n} frames {args.size}x{args.size} ({run['gb']:.2f} GB): "
                  f"peak RSS {run['peak_rss_mib']:.0f} MiB, {run['wall_s_incl_startup']:.0f} s "
                  f"({run['fps_incl_startup']:.2f} frames/s incl. start-up), "
                  f"exit {run['returncode']}", flush=True)
            if args.delete:
                path.unlink(missing_ok=True)
    long, short = result["runs"]["long"], result["runs"]["short"]
    result["rss_growth_mib"] = long["peak_rss_mib"] - short["peak_rss_mib"]
    result["long_ok"] = bool(long["returncode"] == 0 and long["peak_rss_mib"] <= LIMIT_MIB)
    result["load_average_end"] = bc.load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"peak RSS long {long['peak_rss_mib']:.0f} MiB (limit {LIMIT_MIB:.0f}: "
          f"{'met' if result['long_ok'] else 'MISSED'}), growth over short "
          f"{result['rss_growth_mib']:+.0f} MiB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
