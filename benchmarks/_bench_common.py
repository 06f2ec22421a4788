"""Helpers shared by ``benchmarks/run.py``: machine info, simulated movies, RSS sampling,
timing, result tables and comparison with the previous run.

Not part of the package: the benchmark scripts import it from their own folder.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench")

MIB = 2**20
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- machine


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """CPU count, platform and the versions of the libraries that shape the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["memory_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil ships with distributed
        pass
    for name in ("migradetect", "numpy", "scipy", "scikit-image", "dask", "distributed",
                 "zarr", "tifffile", "pandas", "trackpy", "numba"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


# ----------------------------------------------------------------------------- movies


@dataclass
class BenchMovie:
    """A simulated movie written as OME-TIFF, opened with the package's lazy reader."""

    path: Path
    movie: Any  # migradetect.io.Movie
    truth: dict[str, Any]
    pixel_size_um: float
    size: int
    n_frames: int
    crowded: bool
    seed: int
    simulate_s: float


def make_movie(folder: Path, *, size: int, n_frames: int, seed: int, crowded: bool = False,
               n_cells: int | None = None) -> BenchMovie:
    """Simulate a TSPAN4-GFP movie (measuring seed), write it as OME-TIFF, open it lazily.

    The number of cells grows with the field of view (3 cells per 512 x 512 px) so that the
    density of structures is the same at every size.
    """
    from migradetect import io
    from migradetect.synthetic import simulate, write_simulation

    if seed < 1000:
        raise ValueError("benchmarks measure on seeds >= 1000 (0-99 are for tuning)")
    if n_cells is None:
        n_cells = max(1, round(3 * (size / 512) ** 2))
    t0 = time.perf_counter()
    sim = simulate(preset="tspan4_gfp", seed=seed, size=size, n_frames=n_frames,
                   n_cells=n_cells, crowded=crowded)
    folder.mkdir(parents=True, exist_ok=True)
    write_simulation(sim, folder, fmt="ome")
    elapsed = time.perf_counter() - t0
    path = folder / "movie.ome.tif"
    movie = io.open_movie(path)
    truth = dict(sim.truth)
    del sim
    return BenchMovie(path=path, movie=movie, truth=truth,
                      pixel_size_um=float(movie.calibration.pixel_size_um), size=size,
                      n_frames=n_frames, crowded=crowded, seed=seed, simulate_s=elapsed)


def read_frame(movie: Any, t: int) -> np.ndarray:
    """Frame ``t`` of the first channel as a numpy (Y, X) array (a real lazy read)."""
    return np.asarray(movie.data[t, 0, 0].compute(scheduler="synchronous"))


# ----------------------------------------------------------------------------- timing


class Timer:
    """Wall (perf_counter) and CPU (process_time) seconds of a ``with`` block."""

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def summarize(walls: Sequence[float], cpus: Sequence[float]) -> dict[str, float]:
    """Median wall and CPU seconds per frame and the frames/s they give."""
    w = float(np.median(walls)) if len(walls) else float("nan")
    c = float(np.median(cpus)) if len(cpus) else float("nan")
    return {"wall_s_per_frame": w, "cpu_s_per_frame": c,
            "fps": 1.0 / w if w > 0 else float("nan"), "n_frames": len(walls)}


# ----------------------------------------------------------------------------- RSS


class TreeRSSSampler(threading.Thread):
    """Sample the summed RSS of a process and all its children every ``interval_s``.

    RSS counts file-backed pages (mapped TIFF pages, shared libraries) as well as anonymous
    memory; children are looked up at every sample, so worker processes started later count.
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval_s
        self._stop_event = threading.Event()
        self.peak_bytes = 0
        self.n_samples = 0

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self.n_samples += 1
            self._stop_event.wait(self._interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_bytes


def run_sampled(cmd: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None
                ) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process, sampling the RSS of its process tree every 20 ms.

    Returns wall seconds end to end (start-up included), peak RSS (MiB), return code and the
    last lines of stderr.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    sampler = TreeRSSSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    return {"wall_s": wall, "peak_rss_mib": peak / MIB, "returncode": proc.returncode,
            "stdout": out, "stderr_tail": "\n".join(err.strip().splitlines()[-15:]),
            "n_rss_samples": sampler.n_samples}


# ----------------------------------------------------------------------------- results


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as ``{"a.b.c": value}`` (for run-to-run comparison)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (bool, np.bool_)):
        return out
    elif isinstance(obj, (int, float, np.integer, np.floating)):
        out[prefix] = float(obj)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``perf-<UTC timestamp>.json`` and ``perf-latest.json``; return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = json.dumps(_jsonable(result), indent=1, sort_keys=False) + "\n"
    stamped = results_dir / f"perf-{stamp}.json"
    latest = results_dir / "perf-latest.json"
    for path in (stamped, latest):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return stamped, latest


def load_previous(results_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The previous ``perf-latest.json`` or None."""
    path = results_dir / "perf-latest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def compare(current: dict[str, float], previous: dict[str, float] | None) -> list[str]:
    """Lines ``metric  previous -> current  (ratio)`` for every metric both runs have."""
    if not previous:
        return ["(no previous perf-latest.json to compare with)"]
    lines = []
    width = max((len(k) for k in current), default=10)
    for key in sorted(current):
        if key not in previous or previous[key] in (None, 0):
            continue
        old, new = previous[key], current[key]
        if old is None or new is None:
            continue
        ratio = new / old if old else float("nan")
        lines.append(f"{key:<{width}}  {old:12.4g} -> {new:12.4g}   x{ratio:6.3f}")
    return lines or ["(no metric in common with the previous run)"]


def table(rows: list[dict[str, Any]], columns: Sequence[str], title: str) -> str:
    """A plain fixed-width text table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if not np.isfinite(v) else f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
