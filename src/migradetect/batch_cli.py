"""The ``migradetect run`` front end: options, progress bars, log file, dask cluster, signals.

The work itself is :func:`migradetect.batch.run_batch`; this module turns the command line
into its arguments, shows progress (tqdm bars on a terminal, one plain line per movie
otherwise, e.g. in a SLURM job log), lists movies for ``--dry-run`` and maps the outcome to
an exit code.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from migradetect.batch import (
    MovieOutcome, Progress, RunSettings, check_output_location, open_job, run_batch,
)
from migradetect.config import Config, load_config
from migradetect.discovery import MovieJob, discover
from migradetect.errors import ConfigError
from migradetect.resume import input_checksum, is_up_to_date, params_checksum


class LineProgress(Progress):
    """One plain line per movie on stderr (when stderr is not a terminal, e.g. in a job log)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.label = ""

    def start_movie(self, job: MovieJob, index: int, total: int) -> None:
        self.label = f"[{index + 1}/{total}] {job.key}"

    def end_movie(self, outcome: MovieOutcome) -> None:
        if outcome.status == "done":
            what = f"done in {outcome.seconds:.1f} s"
        elif outcome.status == "skipped":
            what = "skipped (up to date)"
        else:  # the message itself was logged as a warning
            what = f"FAILED ({(outcome.failure or {}).get('stage')})"
        print(f"{self.label}: {what}", file=self.stream, flush=True)


class TqdmProgress(Progress):
    """tqdm bars over movies and over the frames of the current movie."""

    def __init__(self, stream: Any) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream
        self.movies: Any = None
        self.bar: Any = None

    def start_movie(self, job: MovieJob, index: int, total: int) -> None:
        if self.movies is None:
            self.movies = self._tqdm(total=total, unit="movie", desc="movies", file=self.stream,
                                     position=0)
        self.movies.set_postfix_str(job.key)

    def frames(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=total, unit="frame", desc="frames", file=self.stream,
                                  position=1, leave=False)
        self.bar.n = done
        self.bar.refresh()

    def end_movie(self, outcome: MovieOutcome) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.movies.update(1)

    def close(self) -> None:
        for bar in (self.bar, self.movies):
            if bar is not None:
                bar.close()
        self.bar = self.movies = None


def _positive(name: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} {value} must be a positive number.",
                          fix=f"give {name} in physical units, e.g. {name} 0.15.")
    return value


def config_from_args(args: Any) -> Config:
    """The run's :class:`Config`: ``--config`` preset or file, then the channel/z options."""
    channels = {k: v for k, v in (("migrasome", args.channel_migrasome),
                                  ("cell", args.channel_cell), ("z", args.z)) if v is not None}
    return load_config(args.config or "tspan4_gfp", {"channels": channels} if channels else None)


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler``, or on a loopback LocalCluster of ``workers``
    single-threaded processes; None when neither is given (local threads)."""
    if scheduler is None and workers is None:
        yield None
        return
    if scheduler is not None and workers is not None:
        raise ConfigError("give either --scheduler or --workers, not both.",
                          fix="--scheduler uses a running cluster; --workers starts one here.")
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({exc}).",
                              fix="check the address (tcp://HOST:PORT) and that it runs.") from exc
        with client:
            yield client
        return
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1.", fix="e.g. --workers 4.")
    # the dashboard on a free port: dashboard_address=None still tries 8787, and a run failed
    # ("Port 8787 is already in use") beside another dask session holding it
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def _describe_job(job: MovieJob, settings: RunSettings, out_dir: Path) -> tuple[str, bool]:
    """One dry-run line for a movie; False when it cannot be opened."""
    head = f"{job.key}  <- {job.path}"
    if job.position is not None:
        head += f" [position {job.position}]"
    try:
        movie = open_job(job, settings)
    except Exception as exc:  # noqa: BLE001 - listed, not raised
        return f"{head}\n    ERROR {type(exc).__name__}: {' '.join(str(exc).split())}", False
    cal = movie.calibration
    ch = settings.config.channels
    names = movie.channel_names

    def role(c: str | int) -> str:
        i = movie.channel_index(c)
        return f"{i} ({names[i]})" if i < len(names) else str(i)

    cell = "same as migrasome" if ch.cell is None else role(ch.cell)
    src = settings.sources
    try:
        up = is_up_to_date(out_dir / job.experiment / job.movie, input_checksum(job.path),
                           params_checksum(settings.config, pixel_size_um=settings.pixel_size_um,
                                           frame_interval_s=settings.frame_interval_s,
                                           position=job.position))
    except OSError:
        up = False
    action = ("run" if not up else "recompute (--force)" if settings.force
              else "skip (up to date)")
    t, _, _, y, x = movie.data.shape
    lines = [
        head,
        f"    {t} frames x {y} x {x} px, {movie.data.dtype}"
        + (f", {movie.n_z} z planes reduced by {movie.z_reduction}" if movie.n_z > 1 else ""),
        f"    pixel size {cal.pixel_size_um} µm ({cal.pixel_size_source}), "
        f"frame interval {cal.frame_interval_s} s ({cal.frame_interval_source})",
        f"    channels: {', '.join(movie.channel_names)}; migrasome channel {role(ch.migrasome)} "
        f"(from {src.get('migrasome', 'config')}), cell channel {cell} "
        f"(from {src.get('cell', 'config')})",
        f"    action: {action}",
    ]
    return "\n".join(lines), True


def dry_run(input_path: str | Path, out_dir: str | Path, settings: RunSettings,
            stream: Any) -> int:
    """List what :func:`run_batch` would do, writing nothing; 0, or 1 if a movie would fail."""
    input_path = Path(input_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    check_output_location(input_path, out_dir)
    jobs = discover(input_path)
    check_output_location(input_path, out_dir, jobs)
    ok = 0
    for job in jobs:
        text, good = _describe_job(job, settings, out_dir)
        ok += good
        print(text, file=stream)
    print(f"{len(jobs)} movies: {ok} can be opened, {len(jobs) - ok} cannot "
          f"(dry run: nothing written)", file=stream)
    return 0 if ok == len(jobs) else 1


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (e.g. from a batch scheduler) into KeyboardInterrupt, like Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _console_at_own_level() -> Iterator[None]:
    """Keep console log handlers at the level the user chose while the run's log file takes
    INFO records (handlers without a level would otherwise show them)."""
    root = logging.getLogger()
    level = logging.getLogger("migradetect").getEffectiveLevel()
    patched = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in patched:
        h.setLevel(level)
    try:
        yield
    finally:
        for h in patched:
            h.setLevel(logging.NOTSET)


def run_cli(args: Any) -> int:
    """``migradetect run``: analyse INPUT into ``--out``; returns the exit code.

    0: every movie done or up to date; 1: some movies failed (see ``failures.csv``) or the
    summaries could not be written; 130: interrupted (Ctrl-C or SIGTERM). Errors in the
    config, input or output location raise :class:`~migradetect.errors.MigradetectError`
    before any movie starts (the CLI exits with 2).
    """
    config = config_from_args(args)
    preset = f"--config {args.config or 'tspan4_gfp'}"
    sources = {
        "migrasome": "--channel-migrasome" if args.channel_migrasome is not None else preset,
        "cell": "--channel-cell" if args.channel_cell is not None else preset,
    }
    settings = RunSettings(config, _positive("--pixel-size", args.pixel_size),
                           _positive("--frame-interval", args.frame_interval), bool(args.force),
                           None, sources)
    if args.dry_run:
        return dry_run(args.input, args.out, settings, sys.stdout)
    # refuse a bad --out before starting a cluster (run_batch checks again)
    check_output_location(Path(args.input).expanduser().resolve(),
                          Path(args.out).expanduser().resolve())
    interactive = sys.stderr.isatty()
    with ExitStack() as stack:
        client = stack.enter_context(dask_client(args.scheduler, args.workers))
        stack.enter_context(sigterm_as_interrupt())
        if interactive:  # log lines above the bars, not through them
            stack.enter_context(logging_redirect_tqdm())
        stack.enter_context(_console_at_own_level())
        progress = TqdmProgress(sys.stderr) if interactive else LineProgress(sys.stderr)
        try:
            result = run_batch(
                args.input, args.out, config, pixel_size_um=settings.pixel_size_um,
                frame_interval_s=settings.frame_interval_s, force=settings.force,
                client=client, progress=progress, log_file="migradetect.log",
            )
        except KeyboardInterrupt:
            progress.close()
            print("migradetect: interrupted; finished movies are kept, the same command "
                  "resumes the run.", file=sys.stderr)
            return 130
    print(result.summary_line(), file=sys.stderr)
    return 1 if result.count("failed") or result.report_errors else 0
