"""One movie through every stage: per-frame dask tasks, then across-time work on tables.

Public API
----------
``analyze_movie(movie, config, *, experiment, labels_path=None, client=None, progress=None)
-> Results``
    The whole analysis of one :class:`migradetect.io.Movie`. ``Results.tables`` holds the six
    contract tables keyed by file name (``migrasomes.csv`` ...), each conformed to
    ``schema.MOVIE_TABLES``; the label stacks are written to a zarr v3 group at
    ``labels_path``; ``Results.manifest`` records parameters, versions, input checksum,
    calibration and times. Write it with :func:`migradetect.report.write_movie_results`.
``process_frame(frame, *, cell_frame=None, frame_index, pixel_size_um, psf_sigma_um, config)
-> FrameOutput``
    The per-frame work on numpy arrays (what each dask task runs): preprocessing, cells,
    fibers, migrasomes. ``analyze_movie``'s per-frame results equal a plain loop over it.

How it runs
-----------
1. Per frame (independent; one dask task per frame over the movie's one-frame chunks, run in
   windows of ``2 x`` the number of worker threads so memory is bounded whatever the movie
   length): read the migrasome-channel frame (and the cell-channel frame when it differs),
   :func:`process_frame`, write the raw label images into ``labels.zarr`` (arrays ``cells``,
   ``fibers``, ``migrasomes``; int32, shape (T, Y, X), one chunk per frame: concurrent writes
   of different frames never share a chunk), return the small tables, per-frame stats and,
   when drift correction is on, the frame's drift product
   (:func:`migradetect.drift.prepare_frame`: band-passed, cells masked, float16 at ~0.3 µm
   pixels; 0.5 MiB for a 1024² frame), so the drift step never reads the movie again. The
   products go to a :class:`migradetect.drift.PairRegistrar` as each window arrives: the
   frame pairs are registered there and only the last ``drift.pair_gap`` products (plus one
   window) are held, so memory does not grow with the movie length. Memory per frame is
   bounded too: migrasome detection and fiber segmentation, the stages with the largest
   working memory, admit frames up to :data:`DETECTION_PIXEL_BUDGET` pixels at once (two
   2048² frames never run them together; 1024² frames are not held back), and the tasks of such large frames hand
   their freed work arrays back to the system (:func:`release_free_memory`) when they leave
   detection and before their thread takes the next frame.
2. Across time, on tables plus label stacks read frame by frame from the zarr group: drift
   (solved from the registered pairs, refined on anchored migrasomes), bleach
   factors, cell tracking (then the ``cells`` array is relabelled in
   place with cell ids), migrasome linking in drift-corrected coordinates (then the
   ``migrasomes`` array is relabelled with track ids), assignment to cells, growth fits, cell
   summaries. The relabelling of each stack runs in a background thread beside the table
   work that does not read that stack (linking beside the cell stack, assignment and growth
   beside the migrasome stack; for frames that take turns in detection, e.g. 2048², the
   migrasome stack is relabelled before assignment instead, for bounded memory).

Results are deterministic: the same movie and config give identical tables on the threaded
scheduler and on a distributed cluster. Rows are sorted (migrasomes by frame, y, x; tracks by
``track_id``; ids renumbered 1, 2, ... in order of first appearance).

Labels in ``labels.zarr``: ``cells`` holds cell ids (``cell_id`` of cell_frames.csv, 0 =
background), ``migrasomes`` holds track ids (``track_id`` of migrasomes.csv, disks of the
detected diameter), ``fibers`` holds per-frame fiber ids (``fiber_id`` of fibers.csv) on
1-pixel skeletons.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import functools
import hashlib
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import zarr

from migradetect import __version__, across_time, schema
from migradetect.config import Config, config_to_dict
from migradetect.scheduling import compute_bounded
from migradetect.errors import InputError

log = logging.getLogger(__name__)

#: Package versions recorded in every manifest.
VERSIONED_PACKAGES = ("numpy", "scipy", "scikit-image", "dask", "distributed", "pandas",
                      "tifffile", "zarr", "skan", "trackpy", "laptrack")

#: Files up to this size are hashed whole (sha256); larger ones get a fast digest.
FULL_HASH_MAX_BYTES = 512 * 2**20

#: Steps after the per-frame work that report progress (drift, cells, link, assign, growth).
N_ACROSS_TIME_STEPS = 5

LABEL_ARRAYS = ("cells", "fibers", "migrasomes")

#: Most pixels of frames in migrasome detection (and fiber segmentation) at once, over all
#: threads of the process.
#: Detection is the stage with the largest working memory: its scale space and per-candidate
#: windows peak at ~85 bytes per pixel on crowded frames (350 MiB for a 2048² frame, measured),
#: against ~15-20 for the other stages. 4 Mi px lets up to four 1024² frames detect at once
#: (no waiting with the usual 2-4 threads) but a 2048² frame only alone: two threads both in
#: detection were the spikes of a 2048² movie's peak RSS. A frame larger than the budget still
#: runs, alone. On a dask.distributed cluster each worker process has its own budget.
DETECTION_PIXEL_BUDGET = 4 * 2**20


class _PixelBudget:
    """A counting gate in pixels: :meth:`hold` waits while the frames inside would exceed
    ``limit`` (a frame larger than ``limit`` waits until the stage is empty, then runs).

    A frame of more than half the limit (one that takes turns) gives its thread's freed
    memory back (:func:`release_free_memory`) before it waits and when it leaves: the
    allocator would otherwise keep the stage's freed work arrays in that thread's arena while
    the next frame's stage allocates its own, and the turns would bound nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._used = 0
        self._cond = threading.Condition()

    def takes_turns(self, pixels: int) -> bool:
        """Whether a frame of ``pixels`` is large: more than half the limit."""
        return 2 * int(pixels) > self.limit

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = int(pixels)
        large = self.takes_turns(pixels)
        if large:
            release_free_memory()
        with self._cond:
            while self._used > 0 and self._used + pixels > self.limit:
                self._cond.wait()
            self._used += pixels
        try:
            yield
        finally:
            if large:
                release_free_memory()
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()


_DETECTION_GATE = _PixelBudget(DETECTION_PIXEL_BUDGET)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere: macOS and Windows return freed memory
    themselves)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Give the memory that freed arrays left in the C allocator back to the system.

    glibc raises its mmap threshold to the size of the largest array freed so far (up to
    32 MiB), so after the first frame the 4-16 MiB work arrays of a frame come from each
    thread's malloc arena, and an arena keeps its high-water mark after they are freed: with
    2 threads a 2048² movie held ~270 MiB of freed memory through the whole run.
    ``malloc_trim`` returns the free pages of every arena (a few ms; no-op off glibc).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class FrameOutput:
    """What :func:`process_frame` makes of one frame.

    Attributes
    ----------
    frame
        0-based frame index.
    cell_labels, fiber_labels, migrasome_labels
        int32 (Y, X) label images: raw per-frame cell labels, fiber skeleton labels (values are
        ``fiber_id``), migrasome disks (value ``k + 1`` for row ``k`` of ``detections``).
    detections
        schema.DETECTIONS table of the frame, plus ``det_index`` (its row number).
    fibers
        The fiber table of the frame (``cell_id`` are raw cell labels of this frame, -1 none).
    stats
        Per-frame numbers for bleach correction and QC: ``frame`` and the keys of
        :func:`migradetect.preprocess.frame_stats` (``signal`` measures bleaching).
    """

    frame: int
    cell_labels: np.ndarray
    fiber_labels: np.ndarray
    migrasome_labels: np.ndarray
    detections: pd.DataFrame
    fibers: pd.DataFrame
    stats: dict[str, float]


@dataclass
class Results:
    """Everything :func:`analyze_movie` makes of one movie.

    Attributes
    ----------
    tables
        Contract tables keyed by file name (``migrasomes.csv``, ``tracks.csv``, ``cells.csv``,
        ``cell_frames.csv``, ``fibers.csv``, ``drift.csv``), conformed to
        ``schema.MOVIE_TABLES`` with ``experiment`` and ``movie`` filled.
    labels_path
        The zarr v3 group holding ``cells``, ``fibers``, ``migrasomes`` (None when the labels
        were kept in memory, see ``labels``).
    manifest
        JSON-ready record: parameters, package versions, input path and checksum,
        calibration with its sources, channel roles, z reduction, shape, start/end times (UTC).
    movie
        ``experiment``, ``name``, ``n_frames``, ``shape_yx``, ``pixel_size_um``,
        ``frame_interval_s``.
    labels
        The open zarr group (in-memory when ``labels_path`` is None).
    qc_images
        A few raw migrasome-channel frames (first, middle, last) for ``qc.png``, by frame
        (numpy arrays, or lazy dask arrays of the movie read when drawn).
    frame_stats
        Per-frame statistics (one row per frame) and the bleach factor applied.
    """

    tables: dict[str, pd.DataFrame]
    labels_path: Path | None
    manifest: dict[str, Any]
    movie: dict[str, Any]
    labels: Any = None
    qc_images: dict[int, Any] = field(default_factory=dict)
    frame_stats: pd.DataFrame | None = None

    def open_labels(self) -> Any:
        """The label group (``cells``, ``fibers``, ``migrasomes`` arrays), or None."""
        if self.labels is not None:
            return self.labels
        if self.labels_path is not None and Path(self.labels_path).exists():
            return zarr.open_group(str(self.labels_path), mode="r")
        return None


# ----------------------------------------------------------------------------------------
# per frame
# ----------------------------------------------------------------------------------------


def process_frame(
    frame: np.ndarray,
    *,
    cell_frame: np.ndarray | None = None,
    frame_index: int,
    pixel_size_um: float,
    psf_sigma_um: float,
    config: Config,
) -> FrameOutput:
    """Preprocess one frame, segment cells and fibers, detect migrasomes.

    Parameters
    ----------
    frame
        (Y, X) migrasome-channel frame, camera counts (any numeric dtype; not modified).
    cell_frame
        (Y, X) cell-channel frame when cells are imaged in another channel; None: ``frame``.
    frame_index
        0-based frame number, written into the tables.
    pixel_size_um
        Pixel size in µm.
    psf_sigma_um
        Gaussian sigma of the lateral PSF in µm.
    config
        The run's parameters.
    """
    from migradetect import cells, fibers, migrasomes, preprocess

    raw = preprocess.finite_frame(np.asarray(frame), frame_index)
    corrected = preprocess.subtract_background(
        raw, pixel_size_um=pixel_size_um, config=config.preprocess)[0]
    if cell_frame is None:
        cell_image = raw
    else:
        cell_image = preprocess.finite_frame(np.asarray(cell_frame), frame_index)
    cell_labels = np.asarray(
        cells.segment_cells(cell_image, pixel_size_um=pixel_size_um, config=config.cells,
                            marker=config.marker), dtype=np.int32)
    del cell_image
    # detection and fibers, the two stages with the largest working memory, inside the gate
    # (bounded memory, DETECTION_PIXEL_BUDGET): with both in it, a 2048² movie's peak RSS fell
    # from ~1020 to ~940 MiB (detection alone gated) for ~5 % of its throughput
    with _DETECTION_GATE.hold(corrected.size):
        detections = migrasomes.detect_migrasomes(
            corrected, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
            config=config.migrasomes, cell_labels=cell_labels, frame_index=frame_index)
        fiber_labels, fiber_table = fibers.segment_fibers(
            corrected, pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um,
            config=config.fibers, cell_labels=cell_labels, frame_index=frame_index)
    del corrected
    detections = schema.conform(detections, schema.DETECTIONS)
    mig_labels = np.asarray(
        migrasomes.render_labels(detections, raw.shape, pixel_size_um), dtype=np.int32)
    detections = detections.assign(det_index=np.arange(len(detections), dtype=np.int64))
    stats = {"frame": int(frame_index), **preprocess.frame_stats(raw)}
    return FrameOutput(
        frame=int(frame_index), cell_labels=cell_labels,
        fiber_labels=np.asarray(fiber_labels, dtype=np.int32), migrasome_labels=mig_labels,
        detections=detections, fibers=pd.DataFrame(fiber_table).reset_index(drop=True),
        stats=stats,
    )


def _frame_task(
    frame: np.ndarray,
    cell_frame: np.ndarray | None,
    t: int,
    arrays: tuple[Any, Any, Any],
    pixel_size_um: float,
    psf_sigma_um: float,
    config: Config,
    drift_product: bool = False,
) -> tuple[int, pd.DataFrame, pd.DataFrame, dict[str, float], np.ndarray | None]:
    """One dask task: process frame ``t`` and write its labels into the zarr arrays.

    Returns ``(t, detections, fibers, stats, drift_product)``; the drift product
    (:func:`migradetect.drift.prepare_frame` of the migrasome channel with this frame's cells
    masked, float16 at ~0.3 µm pixels) is made only when ``drift_product`` is True, so the
    across-time drift step never reads the movie again.
    """
    from migradetect import drift, preprocess

    frame = np.asarray(frame).reshape(np.shape(frame)[-2:])
    if cell_frame is not None:
        cell_frame = np.asarray(cell_frame).reshape(np.shape(cell_frame)[-2:])
    out = process_frame(frame, cell_frame=cell_frame, frame_index=t,
                        pixel_size_um=pixel_size_um, psf_sigma_um=psf_sigma_um, config=config)
    cells_arr, fibers_arr, mig_arr = arrays
    cells_arr[t] = out.cell_labels
    fibers_arr[t] = out.fiber_labels
    mig_arr[t] = out.migrasome_labels
    product = None
    if drift_product:
        product = drift.prepare_frame(preprocess.finite_frame(frame, t), out.cell_labels,
                                      pixel_size_um=pixel_size_um, config=config.drift)
    result = (t, out.detections, out.fibers, out.stats, product)
    large = _DETECTION_GATE.takes_turns(frame.size)  # a frame that takes turns in detection
    del out, frame, cell_frame
    if large:  # this frame's freed work arrays, before the thread takes the next frame
        release_free_memory()  # (smaller frames reuse them: trimming cost them 2-3 % CPU)
    return result


def _relabel_task(array: Any, t: int, old: np.ndarray, new: np.ndarray) -> int:
    """Replace label values ``old`` by ``new`` in frame ``t`` of ``array`` (others -> 0)."""
    labels = np.asarray(array[t], dtype=np.int32)
    lut = np.zeros(int(max(labels.max(initial=0), old.max(initial=0))) + 1, dtype=np.int32)
    lut[old] = new
    if not labels.flags.writeable:
        labels = labels.copy()
    # in place, a block of rows at a time: a 2048² frame's second 16 MiB array is not made
    # (np.take into its own index array would copy the indices first)
    for r in range(0, labels.shape[0], 256):
        labels[r:r + 256] = lut[labels[r:r + 256]]
    array[t] = labels
    return t


def _n_threads(client: Any) -> int:
    if client is not None:
        try:
            return max(1, int(sum(client.nthreads().values())))
        except Exception:  # noqa: BLE001 - a client we cannot ask: be conservative
            return 2
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _compute_windows(tasks: list[Any], client: Any, window: int,
                     on_done: Callable[[int], None] | None = None,
                     consume: Callable[[int, Any], Any] | None = None) -> list[Any]:
    """Compute delayed ``tasks`` with at most ``window`` in flight (bounded memory); results
    in order. A new task starts as soon as one finishes (no idle workers at window ends).

    ``consume(index, result) -> kept`` (optional) sees each result as it arrives, in this
    thread, and returns what is kept (e.g. with large parts handed on and dropped).
    """
    return compute_bounded(tasks, client=client, n_workers=_n_threads(client),
                           max_in_flight=window, on_done=on_done, consume=consume)


def _run_beside(pool: ThreadPoolExecutor, client: Any, fn: Callable[[], Any]) -> Future:
    """``fn()`` in ``pool``'s thread on the local threaded scheduler; here and now (an
    already finished future) with a distributed ``client``."""
    if client is None:
        return pool.submit(fn)
    done: Future = Future()
    try:
        done.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - re-raised by .result(), as from a pool
        done.set_exception(exc)
    return done


@contextmanager
def _scheduler(client: Any):
    """Make dask calls inside stages use ``client`` (or the threaded scheduler).

    On the threaded scheduler the frames already run in parallel, one per thread: BLAS
    (numpy's OpenBLAS) is held to one thread meanwhile, else every frame task starts its own
    BLAS threads, which busy-wait for work and take the cores from the other frames (2 dask
    threads x 2 BLAS threads on 2 cores: the frames of a 1024² movie ran 6-11 % slower).
    dask.distributed workers get the same setting from their nanny (OPENBLAS_NUM_THREADS=1).
    """
    from threadpoolctl import threadpool_limits

    with dask.config.set(scheduler=client if client is not None else "threads"):
        if client is not None:
            yield
        else:
            with threadpool_limits(limits=1, user_api="blas"):
                yield


# ----------------------------------------------------------------------------------------
# the whole movie
# ----------------------------------------------------------------------------------------


def _calibration(movie: Any) -> tuple[float, float | None]:
    cal = movie.calibration
    px = cal.pixel_size_um
    if px is None or not px > 0:
        raise InputError(
            "the pixel size is unknown (not in the file), so sizes cannot be given in µm.",
            path=movie.path, fix="give the pixel size with --pixel-size UM (µm per pixel).",
            stage="open")
    interval = cal.frame_interval_s
    if movie.n_frames > 1 and (interval is None or not interval > 0):
        raise InputError(
            "the frame interval is unknown (not in the file), so times cannot be given in s.",
            path=movie.path, fix="give the time between frames with --frame-interval S.",
            stage="open")
    return float(px), (None if interval is None else float(interval))


def _open_labels(labels_path: Path | None, n_frames: int, shape: tuple[int, int],
                 client: Any) -> Any:
    if labels_path is None:
        if client is not None:
            raise ValueError("labels_path is required with a distributed client: workers "
                             "write the label frames into it.")
        store: Any = zarr.storage.MemoryStore()
    else:
        store = str(labels_path)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    for name in LABEL_ARRAYS:
        group.create_array(name, shape=(n_frames, *shape), chunks=(1, *shape), dtype="int32",
                           fill_value=0)
    group.attrs["axes"] = ["t", "y", "x"]
    return group


def analyze_movie(
    movie: Any,
    config: Config,
    *,
    experiment: str,
    labels_path: str | Path | None = None,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> Results:
    """Analyse one movie: detect, track, assign and measure migrasomes, cells and fibers.

    Parameters
    ----------
    movie
        A :class:`migradetect.io.Movie` (lazy dask data (T, C, 1, Y, X), one chunk per
        frame and channel) with a pixel size, and a frame interval when T > 1.
    config
        The run's parameters (channel roles, optics, one section per stage).
    experiment
        Experiment name written in every table.
    labels_path
        Where to write the zarr v3 label group (``.../<movie>/labels.zarr``); overwritten.
        None keeps the labels in memory (threaded scheduler only).
    client
        A ``dask.distributed.Client`` to run on; None: the local threaded scheduler.
    progress
        Called as ``progress(done, total)`` after each window of frames and each
        across-time step; ``total = n_frames + N_ACROSS_TIME_STEPS``.

    Returns
    -------
    Results

    Raises
    ------
    InputError
        The movie lacks a pixel size (or a frame interval while T > 1), or a channel named
        in the config does not exist.
    """
    started = _now()
    t0 = time.perf_counter()
    pixel_size_um, frame_interval_s = _calibration(movie)
    n_frames = int(movie.n_frames)
    shape = tuple(int(s) for s in movie.data.shape[-2:])
    c_mig = movie.channel_index(config.channels.migrasome)
    c_cell = None if config.channels.cell is None else movie.channel_index(config.channels.cell)
    if c_cell == c_mig:
        c_cell = None
    psf_sigma_um = float(config.optics.psf_sigma)
    labels_path = None if labels_path is None else Path(labels_path)
    total = n_frames + N_ACROSS_TIME_STEPS
    steps_done = [0]

    def report(done: int) -> None:
        if progress is not None:
            progress(int(done), int(total))

    def step() -> None:
        steps_done[0] += 1
        report(n_frames + steps_done[0])

    group = _open_labels(labels_path, n_frames, shape, client)
    run_id = uuid.uuid4().hex  # task keys unique per call: never shared between movies
    arrays = tuple(group[name] for name in LABEL_ARRAYS)
    qc_frames = sorted({0, n_frames // 2, n_frames - 1})
    data = movie.data
    want_drift = bool(config.drift.enabled and n_frames > 1)
    # the arguments shared by every frame are bound in a partial: dask.delayed would walk
    # the nested config dataclasses of every task (7 ms per frame in this thread, before the
    # first frame starts: 0.7 ms this way)
    frame_task = functools.partial(_frame_task, arrays=arrays, pixel_size_um=pixel_size_um,
                                   psf_sigma_um=psf_sigma_um, config=config,
                                   drift_product=want_drift)
    tasks = []
    for t in range(n_frames):
        mig = data[t, c_mig, 0]
        cell = None if c_cell is None else data[t, c_cell, 0]
        tasks.append(dask.delayed(frame_task)(
            mig, cell, t,
            dask_key_name=f"migradetect-frame-{run_id}-{t}"))
    window = 2 * _n_threads(client)
    registrar = None
    if want_drift:
        from migradetect import drift as drift_mod

        # drift pairs are registered as the windows of frames arrive (in this process, on
        # the threaded scheduler: shipping products to cluster workers costs more than
        # registering them), so at most pair_gap + one window of products are held
        registrar = drift_mod.PairRegistrar(
            n_frames, pixel_size_um=pixel_size_um, config=config.drift,
            compute=lambda tasks: list(dask.compute(*tasks, scheduler="sync")))

    def consume(_i: int, r: Any) -> Any:
        if registrar is None:
            return r
        registrar.add(r[0], r[4])
        registrar.register()  # in this thread, while the workers go on with later frames
        return r[:4] + (None,)

    with _scheduler(client):
        try:
            per_frame = _compute_windows(tasks, client, window, report, consume)
        except InputError as exc:  # a per-frame task knows the frame, not the file
            if exc.path is not None:
                raise
            raise InputError(exc.problem, path=movie.path, fix=exc.fix,
                             stage=exc.stage) from exc
        per_frame.sort(key=lambda r: r[0])
        dets = [r[1] for r in per_frame if len(r[1])]
        no_dets = schema.empty(schema.DETECTIONS).assign(det_index=pd.Series([], dtype="int64"))
        detections = pd.concat(dets, ignore_index=True) if dets else no_dets
        fib = [r[2] for r in per_frame if len(r[2])]
        fibers = pd.concat(fib, ignore_index=True) if fib else pd.DataFrame()
        stats = pd.DataFrame([r[3] for r in per_frame])
        # the qc frames are read again (lazily, when qc.png is drawn) rather than held from
        # the per-frame phase: three 2048² frames held to its end were 24 MiB of its peak RSS
        qc_images = {t: data[t, c_mig, 0].reshape(shape) for t in qc_frames}
        # the per-frame tables live on in the concatenated ones: the lists would hold a second
        # copy of every row through the across-time steps (memory growing with the movie)
        del per_frame, dets, fib
        release_free_memory()

        # --- drift (cells masked), bleaching --------------------------------------------
        drift = across_time.estimate_drift(
            movie, group, c_mig, pixel_size_um=pixel_size_um, config=config,
            detections=detections, key=run_id,
            compute=lambda tasks: _compute_windows(tasks, client, window),
            edges=None if registrar is None else registrar.edges())
        del registrar
        step()
        factors = across_time.bleach_factors(stats, config=config)
        stats = stats.assign(bleach_factor=factors)

        # --- cells: track, relabel the stack with cell ids -------------------------------
        # The relabelling of each stack (zarr reads, writes and compression: mostly outside
        # the GIL) runs in the background while this thread goes on with the table work
        # that does not read that stack: linking, then assignment and growth (assignment
        # reads the cell ids, so the cell stack is finished first). With a cluster the
        # relabelling is left in this thread (its workers do the work anyway).
        background = ThreadPoolExecutor(max_workers=1,
                                        thread_name_prefix="migradetect-relabel")
        with background:
            mapping, cell_frames = across_time.track_cells(
                group["cells"], pixel_size_um=pixel_size_um,
                frame_interval_s=frame_interval_s, drift=drift, config=config)
            relabel_cells = _run_beside(background, client, functools.partial(
                _compute_windows, across_time.relabel_tasks(
                    group["cells"], mapping, "label", "cell_id", n_frames, _relabel_task,
                    key=f"cells-{run_id}"), client, window))
            fibers = across_time.fibers_table(fibers, mapping)
            step()

            # --- migrasomes: link, relabel the stack with track ids ----------------------
            migrasomes = across_time.link(detections, drift, factors,
                                          pixel_size_um=pixel_size_um,
                                          frame_interval_s=frame_interval_s, config=config)
            del detections  # the linked table holds its rows (a long movie's is tens of MiB)
            relabel_cells.result()
            relabel_migrasomes = _run_beside(background, client, functools.partial(
                _compute_windows, across_time.relabel_tasks(
                    group["migrasomes"], migrasomes, "det_index", "track_id", n_frames,
                    _relabel_task, offset=1, key=f"migrasomes-{run_id}"), client, window))
            if _DETECTION_GATE.takes_turns(shape[0] * shape[1]):
                # large frames (2048²): the relabel's frames in flight (read, relabelled,
                # compressed: ~50 MiB each) beside assignment's own frames were the peak RSS
                # of a 400-frame 2048² movie; it finishes before assignment starts
                relabel_migrasomes.result()
            step()

            # --- assignment, growth, cell summaries --------------------------------------
            assignment = across_time.assign(migrasomes, fibers, cell_frames, group, drift,
                                            pixel_size_um=pixel_size_um, config=config)
            step()
            tracks = across_time.growth(migrasomes, assignment, n_frames=n_frames,
                                        frame_interval_s=frame_interval_s,
                                        pixel_size_um=pixel_size_um, config=config)
            migrasomes = across_time.attach_cells(migrasomes, tracks)
            cells = across_time.summarize_cells(cell_frames, tracks, drift,
                                                n_frames=n_frames,
                                                pixel_size_um=pixel_size_um,
                                                frame_interval_s=frame_interval_s)
            relabel_migrasomes.result()
        step()
        release_free_memory()

    fill = {"experiment": str(experiment), "movie": str(movie.name)}
    tables = {
        "migrasomes.csv": schema.conform(migrasomes, schema.MIGRASOMES, fill=fill),
        "tracks.csv": schema.conform(tracks, schema.TRACKS, fill=fill),
        "cells.csv": schema.conform(cells, schema.CELLS, fill=fill),
        "cell_frames.csv": schema.conform(cell_frames, schema.CELL_FRAMES, fill=fill),
        "fibers.csv": schema.conform(fibers, schema.FIBERS, fill=fill),
        "drift.csv": schema.conform(drift, schema.DRIFT, fill=fill),
    }
    meta = {
        "experiment": str(experiment), "name": str(movie.name), "n_frames": n_frames,
        "shape_yx": list(shape), "pixel_size_um": pixel_size_um,
        "frame_interval_s": frame_interval_s,
    }
    manifest = build_manifest(movie, config, experiment=experiment, meta=meta,
                              c_mig=c_mig, c_cell=c_cell, psf_sigma_um=psf_sigma_um,
                              labels_path=labels_path, started=started,
                              elapsed_s=time.perf_counter() - t0, client=client)
    log.info("%s: %d frames, %d detections, %d tracks, %d cells in %.1f s", movie.name,
             n_frames, len(tables["migrasomes.csv"]), len(tables["tracks.csv"]),
             len(tables["cells.csv"]), time.perf_counter() - t0)
    return Results(tables=tables, labels_path=labels_path, manifest=manifest, movie=meta,
                   labels=group if labels_path is None else None, qc_images=qc_images,
                   frame_stats=stats)


# ----------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Installed versions of migradetect and the libraries that shape its numbers."""
    out = {"migradetect": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def input_checksum(path: str | Path) -> dict[str, Any]:
    """Checksum of a movie file (or of a folder of frame files, in name order).

    Files up to :data:`FULL_HASH_MAX_BYTES` (512 MiB in total) are hashed whole with sha256
    (``method: "sha256"``). Larger inputs get a fast content digest, ``method:
    "sha256-size-head-tail"``: sha256 over, per file, its name, its size in bytes and its
    first and last MiB -- it changes when a file is replaced or re-saved, at a fraction of the
    cost, but not for an edit in the middle that keeps the size.
    """
    path = Path(path)
    files = _input_files(path)
    sizes = [f.stat().st_size for f in files]
    full = sum(sizes) <= FULL_HASH_MAX_BYTES
    h = hashlib.sha256()
    mib = 2**20
    for f, size in zip(files, sizes, strict=True):
        if len(files) > 1:
            h.update(f.name.encode("utf-8") + b"\0")
        with f.open("rb") as fh:
            if full:
                for block in iter(lambda fh=fh: fh.read(8 * mib), b""):
                    h.update(block)
            else:
                h.update(str(size).encode() + b"\0")
                h.update(fh.read(mib))
                if size > mib:
                    fh.seek(max(mib, size - mib))
                    h.update(fh.read(mib))
    return {"method": "sha256" if full else "sha256-size-head-tail", "digest": h.hexdigest(),
            "n_files": len(files), "size_bytes": int(sum(sizes))}


def build_manifest(movie: Any, config: Config, *, experiment: str, meta: dict[str, Any],
                   c_mig: int, c_cell: int | None, psf_sigma_um: float,
                   labels_path: Path | None, started: str, elapsed_s: float,
                   client: Any = None) -> dict[str, Any]:
    """The JSON-ready record saved as ``manifest.json`` beside a movie's results."""
    cal = movie.calibration
    path = Path(movie.path)
    try:
        checksum: dict[str, Any] = input_checksum(path)
    except OSError as exc:
        checksum = {"method": "unavailable", "error": str(exc)}
    names = list(getattr(movie, "channel_names", ()) or ())

    def channel(c: int | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {"index": int(c), "name": names[c] if c < len(names) else None}

    return {
        "format": "migradetect movie results v1",
        "experiment": str(experiment),
        "movie": meta,
        "input": {
            "path": str(path.resolve()),
            "checksum": checksum,
            "source_format": getattr(movie, "source_format", None),
            "position": getattr(movie, "position", None),
            "shape_tczyx": [int(s) for s in movie.data.shape],
            "dtype": str(movie.data.dtype),
            "channel_names": names,
            "n_z": getattr(movie, "n_z", None),
            "z_reduction": getattr(movie, "z_reduction", None),
        },
        "calibration": {
            "pixel_size_um": cal.pixel_size_um,
            "pixel_size_source": getattr(cal, "pixel_size_source", None),
            "frame_interval_s": cal.frame_interval_s,
            "frame_interval_source": getattr(cal, "frame_interval_source", None),
            "z_step_um": getattr(cal, "z_step_um", None),
            "psf_sigma_um": psf_sigma_um,
        },
        "channels": {"migrasome": channel(c_mig),
                     "cell": channel(c_cell) if c_cell is not None else channel(c_mig)},
        "parameters": config_to_dict(config),
        "versions": package_versions(),
        "labels": None if labels_path is None else labels_path.name,
        "scheduler": "threads" if client is None else "distributed",
        "started_utc": started,
        "finished_utc": _now(),
        "elapsed_s": round(float(elapsed_s), 3),
    }
