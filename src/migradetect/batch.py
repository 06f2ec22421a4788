"""Batch runs over folders of experiments: resumable, failure-isolated, interruptible.

:func:`run_batch` analyses every movie :func:`~migradetect.discovery.discover` finds under an
input path and writes ``OUT_DIR/<experiment>/<movie>/`` for each (DESIGN.md, "Output
contract"). It is built to survive bad input and interruption:

- **Atomic movie folders.** A movie's outputs are written into a hidden sibling folder
  ``.<movie>.tmp-<pid>`` and renamed into place only when complete; when replacing older
  results, their ``curated/`` folder (the user's corrections) is carried over. Temporary
  folders left by a killed run are removed by the next run.
- **Resume.** A movie whose ``manifest.json`` says ``status: complete`` for the same input
  checksum and parameters is skipped; ``force=True`` recomputes it (``curated/`` is kept).
- **Failure isolation.** A movie that cannot be opened, analysed or written is recorded in
  ``OUT_DIR/failures.csv`` (experiment, movie, path, stage, error, message) and the batch
  goes on. A full or unwritable output folder stops the batch with an
  :class:`~migradetect.errors.OutputError` (every later movie would fail the same way).
- **Safety.** Nothing is written inside the input; an output folder inside the input is
  refused; a lock file keeps two runs out of one output folder (:mod:`migradetect.lock`).

:func:`run_cli` is the ``migradetect run`` front end (:mod:`migradetect.batch_cli`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migradetect import __version__, io, pipeline, report
from migradetect.config import Config
from migradetect.discovery import MovieJob, discover
from migradetect.errors import MigradetectError, OutputError
from migradetect.lock import RunLock
from migradetect.resume import (
    INPUT_KEY, PARAMS_KEY, STATUS_KEY, clean_stale, input_checksum, install, is_up_to_date,
    params_checksum, temp_folder,
)

log = logging.getLogger(__name__)

#: errno values meaning the output file system takes no more files: stop the batch.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: errno values meaning a file may not be written: stop the batch when it is an output file.
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class MovieOutcome:
    """What happened to one movie: ``done``, ``skipped`` or ``failed`` (with the failure row)."""

    job: MovieJob
    status: str
    seconds: float = 0.0
    failure: dict[str, str] | None = None


@dataclass
class BatchReport:
    """The outcome of :func:`run_batch`, movie by movie."""

    out_dir: Path
    outcomes: list[MovieOutcome] = field(default_factory=list)
    #: Errors while writing failures.csv or the summaries (the movies' results are fine).
    report_errors: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[dict[str, str]]:
        return [o.failure for o in self.outcomes if o.failure is not None]

    def summary_line(self) -> str:
        """E.g. ``12 movies: 10 done, 1 skipped (up to date), 1 failed — see OUT/failures.csv``"""
        n = len(self.outcomes)
        line = (f"{n} movie{'s' if n != 1 else ''}: {self.count('done')} done, "
                f"{self.count('skipped')} skipped (up to date), {self.count('failed')} failed")
        if self.count("failed"):
            line += f" — see {self.out_dir / 'failures.csv'}"
        return line


class Progress:
    """Progress over movies and frames; :func:`run_cli` gives a tqdm or plain-line one.

    This base class reports nothing (library use).
    """

    def start_movie(self, job: MovieJob, index: int, total: int) -> None:
        """A movie starts (``index`` is 0-based)."""

    def frames(self, done: int, total: int) -> None:
        """``done`` of ``total`` frames of the current movie are analysed."""

    def end_movie(self, outcome: MovieOutcome) -> None:
        """A movie ended (done, skipped or failed)."""

    def close(self) -> None:
        """The batch ended."""


# ----------------------------------------------------------------------------------------
# checks, checksums, resume
# ----------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_location(input_path: Path, out_dir: Path, jobs: list[MovieJob] = ()) -> None:
    """Refuse an output folder inside (or equal to) the input, or results that would land there.

    Both paths must be resolved. With ``jobs``, also refuse when a movie's output folder
    would overlap the input (e.g. ``--out`` a parent of INPUT whose experiment folder
    is INPUT itself).
    """
    if input_path.is_dir() and _inside(out_dir, input_path):
        raise OutputError(
            f"the output folder is inside the input folder {input_path}; migradetect never "
            "writes into its input.", path=out_dir,
            fix="choose an --out folder outside INPUT.",
        )
    for job in jobs:
        target = out_dir / job.experiment / job.movie
        if _inside(target, input_path) or _inside(input_path, target):
            raise OutputError(
                f"the results of {job.key} would be written into the input {input_path}.",
                path=out_dir, fix="choose an --out folder that does not contain INPUT.",
            )


# ----------------------------------------------------------------------------------------
# one movie
# ----------------------------------------------------------------------------------------


def _failure(job: MovieJob, stage: str, exc: BaseException) -> dict[str, str]:
    message = " ".join(str(exc).split()) or repr(exc)
    return {"experiment": job.experiment, "movie": job.movie, "path": str(job.path),
            "stage": stage, "error": type(exc).__name__, "message": message}


def _fatal_write_error(exc: BaseException | None, out_dir: Path) -> OSError | None:
    """The OSError behind ``exc`` when the output folder is full or unwritable, else None.

    Every later movie would fail the same way, so the batch stops. A permission error on a
    file outside ``out_dir`` (an unreadable input) only fails its movie.
    """
    while exc is not None:
        if isinstance(exc, OSError):
            if exc.errno in FULL_ERRNOS:
                return exc
            if exc.errno in DENIED_ERRNOS and exc.filename is not None and _inside(
                    Path(os.fsdecode(exc.filename)).absolute(), out_dir):
                return exc
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass(frozen=True)
class RunSettings:
    """What every movie of a run is analysed with (see :func:`run_batch`)."""

    config: Config
    pixel_size_um: float | None
    frame_interval_s: float | None
    force: bool
    client: Any
    #: Where each channel role comes from (``migrasome``/``cell`` -> text), for --dry-run.
    sources: dict[str, str] = field(default_factory=dict)


def open_job(job: MovieJob, settings: RunSettings) -> io.Movie:
    """Open a movie lazily and check that the configured channels exist in it."""
    ch = settings.config.channels
    movie = io.open_movie(job.path, pixel_size_um=settings.pixel_size_um,
                          frame_interval_s=settings.frame_interval_s, z=ch.z,
                          position=job.position)
    movie.channel_index(ch.migrasome)
    if ch.cell is not None:
        movie.channel_index(ch.cell)
    return movie


def _run_movie(job: MovieJob, out_dir: Path, settings: RunSettings, progress: Progress,
               checksums: dict[Path, str]) -> MovieOutcome:
    t0 = time.perf_counter()
    exp_dir = out_dir / job.experiment
    final = exp_dir / job.movie
    stage = "open"
    tmp: Path | None = None
    try:
        if job.path not in checksums:
            checksums[job.path] = input_checksum(job.path)
        input_sha = checksums[job.path]
        params_sha = params_checksum(settings.config, pixel_size_um=settings.pixel_size_um,
                                     frame_interval_s=settings.frame_interval_s,
                                     position=job.position)
        if not settings.force and is_up_to_date(final, input_sha, params_sha):
            log.info("%s: up to date, skipped", job.key)
            return MovieOutcome(job, "skipped")
        movie = open_job(job, settings)
        stage = "analyze"
        tmp = temp_folder(final)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        results = pipeline.analyze_movie(
            movie, settings.config, experiment=job.experiment,
            labels_path=tmp / "labels.zarr", client=settings.client, progress=progress.frames,
        )
        stage = "write"
        manifest = dict(results.manifest)
        manifest.update({STATUS_KEY: "complete", INPUT_KEY: input_sha, PARAMS_KEY: params_sha,
                         "input_path": str(job.path), "position": job.position})
        report.write_movie_results(dataclasses.replace(results, manifest=manifest), tmp)
        install(tmp, final)
        tmp = None
        seconds = time.perf_counter() - t0
        log.info("%s: done in %.1f s", job.key, seconds)
        return MovieOutcome(job, "done", seconds)
    except Exception as exc:  # noqa: BLE001 - one bad movie must not stop the batch
        if stage != "open" and _fatal_write_error(exc, out_dir) is not None:
            raise
        log.warning("%s failed (%s): %s: %s", job.key, stage, type(exc).__name__, exc)
        if final.exists():
            log.warning("%s: the results of an earlier run are kept in %s", job.key, final)
        if not isinstance(exc, MigradetectError):  # a bug, not bad input: keep the traceback
            log.info("traceback of the failure of %s", job.key, exc_info=True)
        return MovieOutcome(job, "failed", time.perf_counter() - t0, _failure(job, stage, exc))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------


@contextmanager
def _log_to(path: Path | None) -> Iterator[None]:
    """Copy the ``migradetect`` loggers' INFO and up into ``path`` while the block runs."""
    if path is None:
        yield
        return
    logger = logging.getLogger("migradetect")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def _write_reports(out_dir: Path, jobs: list[MovieJob], outcomes: list[MovieOutcome]
                   ) -> list[str]:
    """failures.csv, then the experiment and run summaries rebuilt from the movie folders.

    Each is tried even when an earlier one fails (e.g. on a full disk); returns the errors.
    """
    steps: list[tuple[str, Callable[[], object]]] = [
        ("failures.csv", lambda: report.write_failures(
            [o.failure for o in outcomes if o.failure is not None], out_dir)),
    ]
    for exp in sorted({j.experiment for j in jobs}):
        if (out_dir / exp).is_dir():
            steps.append((f"{exp}/summary.csv",
                          lambda d=out_dir / exp: report.write_experiment(d)))
    steps.append(("summary.csv", lambda: report.write_run_summary(out_dir)))
    errors = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - write what can be written
            log.error("could not write %s: %s", out_dir / name, exc)
            log.debug("traceback", exc_info=True)
            errors.append(f"{name}: {exc}")
    return errors


def run_batch(
    input_path: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    force: bool = False,
    client: Any = None,
    progress: Progress | None = None,
    log_file: str | Path | None = None,
) -> BatchReport:
    """Analyse every movie under ``input_path`` into ``out_dir``.

    Parameters
    ----------
    input_path
        A movie, an experiment folder or a folder of experiments (see
        :func:`~migradetect.discovery.discover`). Never written to.
    out_dir
        Output folder (created); must not lie inside ``input_path``.
    config
        The parameters of every movie.
    pixel_size_um, frame_interval_s
        Calibration overrides (µm per pixel, s between frames) for every movie.
    force
        Recompute movies whose results are up to date (their ``curated/`` is kept).
    client
        A ``dask.distributed.Client`` to compute on; None: local threads.
    progress
        Receives movie and frame progress.
    log_file
        Also log the run (INFO and up of the ``migradetect`` loggers) to this file, relative
        to ``out_dir`` unless absolute, e.g. ``"migradetect.log"``; written only once the
        lock is held.

    Returns
    -------
    BatchReport
        One outcome per movie. ``out_dir/failures.csv`` lists the failed ones.

    Raises
    ------
    InputError
        INPUT does not exist or holds no movie.
    OutputError
        Bad output location, output folder locked, full or unwritable.
    KeyboardInterrupt
        After cleaning up (temporary folder removed, reports written, lock released).
    """
    input_path = Path(input_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    progress = progress or Progress()
    check_output_location(input_path, out_dir)
    jobs = discover(input_path)
    check_output_location(input_path, out_dir, jobs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror}).", path=out_dir,
                          fix="check the path and your permissions.") from exc
    settings = RunSettings(config, pixel_size_um, frame_interval_s, force, client)
    batch = BatchReport(out_dir)
    with RunLock(out_dir), _log_to(None if log_file is None else out_dir / log_file):
        log.info("migradetect %s run: %s -> %s, %d movies%s", __version__, input_path,
                 out_dir, len(jobs), " (--force)" if force else "")
        clean_stale(out_dir)
        checksums: dict[Path, str] = {}
        try:
            for i, job in enumerate(jobs):
                progress.start_movie(job, i, len(jobs))
                try:
                    outcome = _run_movie(job, out_dir, settings, progress, checksums)
                except Exception as exc:  # only a full or unwritable output comes here
                    fatal = _fatal_write_error(exc, out_dir)
                    if fatal is None:  # pragma: no cover - _run_movie lets nothing else out
                        raise
                    batch.outcomes.append(MovieOutcome(job, "failed", 0.0,
                                                       _failure(job, "write", exc)))
                    raise OutputError(
                        f"cannot write results ({fatal.strerror}) while writing {job.key}; "
                        "the movies finished before it are complete.", path=out_dir,
                        fix="free disk space or fix the folder's permissions, then run the "
                            "same command again (finished movies are skipped).",
                    ) from exc
                batch.outcomes.append(outcome)
                progress.end_movie(outcome)
        finally:
            progress.close()
            batch.report_errors = _write_reports(out_dir, jobs, batch.outcomes)
    return batch


def run_cli(args: Any) -> int:
    """``migradetect run`` (see :func:`migradetect.batch_cli.run_cli`)."""
    from migradetect.batch_cli import run_cli as run

    return run(args)
