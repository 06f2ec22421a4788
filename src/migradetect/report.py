"""Writing results: atomic CSV/JSON files, per-movie folders, per-experiment summaries.

This is the output edge of migradetect (see DESIGN.md, "Output contract"). Everything here
writes through :func:`atomic_write_bytes`: the data goes to a temporary file in the target's
own folder, is flushed and fsynced, then moved over the target with :func:`os.replace`, so a
reader (or a resumed run) never sees a half-written file.

CSV files are written with a fixed float format (:data:`FLOAT_FORMAT`), ``index=False``, ``\\n``
line ends and empty cells for missing values, so the same tables give byte-identical files on
every run. Empty tables are written as their header line.

Per movie (:func:`write_movie_results`): the six contract CSVs, ``qc.png`` and
``manifest.json`` -- the manifest is written last, so its presence marks a complete folder.
Per experiment (:func:`write_experiment`) and per run (:func:`write_run_summary`) the tables
are rebuilt from the movie folders' CSV files, so they stay right after a resumed run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from migradetect import schema
from migradetect.across_time import counted_tracks, lasting_tracks
from migradetect.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    from migradetect.pipeline import Results

log = logging.getLogger(__name__)

#: Float format of every CSV written (6 significant digits: 0.01 px at 2048 px, 0.1 s at 5 h).
FLOAT_FORMAT = "%.6g"

#: A cell is counted in summary.csv when it is seen in at least this many frames (or in every
#: frame of a shorter movie) and never touches the image border.
MIN_CELL_FRAMES = 3

#: Folder names inside an experiment folder that are never read as movie results.
IGNORED_FOLDERS = ("curated",)


# ----------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The parent folder is created if needed. On failure the temporary file is removed and an
    :class:`~migradetect.errors.OutputError` naming the file is raised; an existing ``path`` is
    left untouched.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write the file ({exc.strerror or exc}).", path=path,
            fix="check that the output folder exists, is writable and has free space.",
            stage="write",
        ) from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename on POSIX file systems (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN/inf written as null) to ``path`` atomically."""
    text = json.dumps(_finite(dict(data)), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def csv_text(df: pd.DataFrame) -> str:
    """The CSV text migradetect writes for ``df`` (fixed float format, no index, ``\\n``)."""
    return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n", na_rep="")


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV to ``path`` atomically; an empty table writes its header line.

    The format is fixed (:func:`csv_text`), so equal tables give byte-identical files.
    """
    return atomic_write_text(path, csv_text(df))


def read_csv(path: str | Path, table: schema.Schema | None = None) -> pd.DataFrame:
    """Read a CSV written by :func:`write_csv`, conformed to ``table``'s schema if given.

    Empty string cells of string columns stay empty strings (not NaN).
    """
    path = Path(path)
    try:
        if table is not None:
            str_cols = {c: "str" for c, d in table.items() if d == schema.STR}
            df = pd.read_csv(path, dtype=str_cols, keep_default_na=False,
                             na_values={c: [""] for c, d in table.items() if d != schema.STR})
        else:
            df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, ValueError) as exc:
        raise OutputError(f"cannot read the result table ({exc}).", path=path,
                          fix="delete the movie's folder and run again to rebuild it.",
                          stage="report") from exc
    if table is not None:
        if "experiment" in df.columns:
            df["experiment"] = df["experiment"].astype("str")
        if "movie" in df.columns:
            df["movie"] = df["movie"].astype("str")
        df = schema.conform(df, table)
    return df


def write_failures(rows: Iterable[Mapping[str, Any]], out_dir: str | Path) -> Path:
    """Write ``out_dir/failures.csv`` (schema.FAILURES) from dict rows; header only if none."""
    df = pd.DataFrame(list(rows))
    df = schema.conform(df, schema.FAILURES) if len(df) else schema.empty(schema.FAILURES)
    return write_csv(df, Path(out_dir) / "failures.csv")


# ----------------------------------------------------------------------------------------
# one movie
# ----------------------------------------------------------------------------------------


def write_movie_results(results: Results, movie_dir: str | Path) -> Path:
    """Write one movie's results into ``movie_dir`` (created if needed).

    Writes the six contract tables (``migrasomes.csv``, ``tracks.csv``, ``cells.csv``,
    ``cell_frames.csv``, ``fibers.csv``, ``drift.csv``), ``qc.png`` (detections, cell
    outlines and fibers over the first, middle and last frames) and, last,
    ``manifest.json``. ``labels.zarr`` is written by the pipeline itself at
    ``results.labels_path`` (give :func:`migradetect.pipeline.analyze_movie`
    ``labels_path=movie_dir / "labels.zarr"``).

    Returns
    -------
    Path
        ``movie_dir``.
    """
    movie_dir = Path(movie_dir)
    movie_dir.mkdir(parents=True, exist_ok=True)
    for name, table in schema.MOVIE_TABLES.items():
        df = results.tables.get(name)
        df = schema.empty(table) if df is None else schema.conform(df, table)
        write_csv(df, movie_dir / name)
    from migradetect.plots import qc_figure  # matplotlib only when writing

    atomic_write_bytes(movie_dir / "qc.png", qc_figure(results))
    atomic_write_json(movie_dir / "manifest.json", results.manifest)
    return movie_dir


def is_movie_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete movie result (``manifest.json`` and the CSVs)."""
    folder = Path(folder)
    if not folder.is_dir() or _ignored(folder.name):
        return False
    return (folder / "manifest.json").is_file() and all(
        (folder / name).is_file() for name in schema.MOVIE_TABLES
    )


def _ignored(name: str) -> bool:
    return (
        name in IGNORED_FOLDERS
        or name.startswith((".", "_", "~"))
        or name.endswith((".tmp", ".partial", ".lock", ".zarr"))
    )


def movie_folders(experiment_dir: str | Path) -> list[Path]:
    """Complete movie result folders inside ``experiment_dir``, sorted by name.

    Folders named ``curated``, hidden or temporary folders (names starting with ``.``, ``_``
    or ``~``, or ending with ``.tmp``/``.partial``/``.lock``) and incomplete folders (no
    ``manifest.json``) are skipped.
    """
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return []
    return sorted(p for p in experiment_dir.iterdir() if is_movie_folder(p))


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable manifest.json (%s); summary uses the CSVs only", folder, exc)
        return {}


# ----------------------------------------------------------------------------------------
# summaries
# ----------------------------------------------------------------------------------------


def counted_cells(cells: pd.DataFrame, n_frames: int) -> pd.DataFrame:
    """The cells counted in summary.csv (the per-cell denominators).

    A cell is counted when it never touches the image border (``touches_border`` False: its
    migrasomes and fibers may lie outside the field) and is seen in at least
    ``min(MIN_CELL_FRAMES, n_frames)`` frames (3 frames, or every frame of a shorter movie),
    which drops segmentation flickers.
    """
    need = max(1, min(MIN_CELL_FRAMES, int(n_frames)))
    keep = (~cells["touches_border"].astype(bool)) & (cells["n_frames"] >= need)
    return cells.loc[keep].reset_index(drop=True)


def unflagged_tracks(tracks: pd.DataFrame, n_frames: int | None = None) -> pd.DataFrame:
    """Tracks with a whole observed growth: not born before the start, not growing at the end,
    not short (the tracks whose plateau diameter and growth time are summarised); with
    ``n_frames`` (frames in the movie), also lasting like a migrasome
    (:func:`migradetect.across_time.lasting_tracks`, the rule of the counts): a blob seen for
    a few frames that vanishes long before the end is no migrasome, and such blobs are
    mostly small, which biases the median plateau diameter low."""
    keep = ~(tracks["born_before_start"].astype(bool) | tracks["growing_at_end"].astype(bool)
             | tracks["short_track"].astype(bool))
    if n_frames is not None:
        keep &= lasting_tracks(tracks, n_frames).to_numpy(bool)
    return tracks.loc[keep].reset_index(drop=True)


def _median(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def summarize_movie(
    tables: Mapping[str, pd.DataFrame],
    *,
    experiment: str,
    movie: str,
    n_frames: int | None = None,
    frame_interval_s: float | None = None,
    image_area_um2: float | None = None,
) -> pd.DataFrame:
    """One summary.csv row (schema.SUMMARY) from a movie's contract tables.

    Definitions
    -----------
    n_frames
        Frames in the movie (given, else the rows of ``drift.csv``, which has one per frame).
    duration_s
        ``(n_frames - 1) * frame_interval_s``: time from the first to the last frame (0 for a
        single frame; NaN when the frame interval is unknown and there are several frames).
    n_cells
        Cells of ``cells.csv`` passing :func:`counted_cells` (never touching the border, seen
        in >= min(3, n_frames) frames).
    n_cells_with_migrasomes, pct_cells_with_migrasomes
        Counted cells with ``n_migrasomes`` >= 1, and their percentage of ``n_cells``.
    n_migrasomes
        Migrasome tracks of the movie (rows of ``tracks.csv``), assigned to a cell or not,
        that are not flagged ``short_track`` and are lasting (still seen at the end of the
        movie, or seen in at least 5 frames: :func:`migradetect.across_time.lasting_tracks`),
        or span every frame of the movie (so a single-frame movie counts every detection):
        each track is one migrasome. The same rule
        (:func:`migradetect.across_time.counted_tracks`) gives ``n_migrasomes`` of cells.csv.
    migrasomes_per_cell_mean / _median
        Mean / median of ``n_migrasomes`` over the counted cells.
    migrasome_density_per_mm2
        ``n_migrasomes`` / imaged area (Y * X * pixel_size_um**2) in mm^2.
    plateau_diameter_um_median, growth_time_s_median
        Medians over :func:`unflagged_tracks` (lasting ones only) with finite values.
    """
    cells = schema.conform(tables.get("cells.csv", schema.empty(schema.CELLS)), schema.CELLS)
    tracks = schema.conform(tables.get("tracks.csv", schema.empty(schema.TRACKS)), schema.TRACKS)
    drift = tables.get("drift.csv")
    if n_frames is None:
        n_frames = 0 if drift is None else len(drift)
    n_frames = int(n_frames)
    if n_frames <= 1:
        duration = 0.0 if n_frames == 1 else math.nan
    elif frame_interval_s is None:
        duration = math.nan
    else:
        duration = (n_frames - 1) * float(frame_interval_s)
    counted = counted_cells(cells, n_frames)
    n_cells = len(counted)
    per_cell = counted["n_migrasomes"].to_numpy(dtype=float)
    n_with = int(np.count_nonzero(per_cell > 0))
    n_mig = int(counted_tracks(tracks, n_frames).sum())
    density = (
        n_mig / (float(image_area_um2) * 1e-6)
        if image_area_um2 is not None and image_area_um2 > 0 else math.nan
    )
    good = unflagged_tracks(tracks, n_frames)
    row = {
        "experiment": experiment,
        "movie": movie,
        "n_frames": n_frames,
        "duration_s": duration,
        "n_cells": n_cells,
        "n_cells_with_migrasomes": n_with,
        "pct_cells_with_migrasomes": 100.0 * n_with / n_cells if n_cells else math.nan,
        "n_migrasomes": n_mig,
        "migrasomes_per_cell_mean": float(per_cell.mean()) if n_cells else math.nan,
        "migrasomes_per_cell_median": float(np.median(per_cell)) if n_cells else math.nan,
        "migrasome_density_per_mm2": density,
        "plateau_diameter_um_median": _median(good["plateau_diameter_um"]),
        "growth_time_s_median": _median(good["growth_time_s"]),
    }
    return schema.conform(pd.DataFrame([row]), schema.SUMMARY)


def _movie_meta(manifest: Mapping[str, Any]) -> tuple[int | None, float | None, float | None]:
    """(n_frames, frame_interval_s, image area in µm²) from a manifest, None where unknown."""
    meta = manifest.get("movie") or {}
    n_frames = meta.get("n_frames")
    interval = meta.get("frame_interval_s")
    px = meta.get("pixel_size_um")
    shape = meta.get("shape_yx")
    area = None
    if px is not None and shape is not None and len(shape) == 2:
        area = float(shape[0]) * float(shape[1]) * float(px) ** 2
    return (None if n_frames is None else int(n_frames),
            None if interval is None else float(interval), area)


def write_experiment(experiment_dir: str | Path) -> pd.DataFrame:
    """Rebuild an experiment's tables and plots from its movie folders; return its summary.

    Reads every complete movie folder (:func:`movie_folders`; ``curated`` and hidden or
    temporary folders are ignored) and writes into ``experiment_dir``: ``migrasomes.csv``,
    ``tracks.csv``, ``cells.csv`` (the movies' tables concatenated in folder-name order),
    ``summary.csv`` (one row per movie, see :func:`summarize_movie` for every definition),
    ``growth_curves.png`` and ``migrasomes_per_cell.png``. Works after a resumed run because
    it only reads files. An experiment without finished movies gets header-only tables.

    Returns
    -------
    DataFrame
        The summary table (schema.SUMMARY).
    """
    experiment_dir = Path(experiment_dir)
    parts: dict[str, list[pd.DataFrame]] = {n: [] for n in ("migrasomes.csv", "tracks.csv",
                                                            "cells.csv")}
    summaries = []
    for folder in movie_folders(experiment_dir):
        manifest = _read_manifest(folder)
        tables = {name: read_csv(folder / name, table)
                  for name, table in schema.MOVIE_TABLES.items()}
        for name in parts:
            parts[name].append(tables[name])
        n_frames, interval, area = _movie_meta(manifest)
        first = tables["drift.csv"]
        movie = (manifest.get("movie") or {}).get("name") or (
            str(first["movie"].iloc[0]) if len(first) else folder.name)
        experiment = manifest.get("experiment") or (
            str(first["experiment"].iloc[0]) if len(first) else experiment_dir.name)
        summaries.append(summarize_movie(
            tables, experiment=experiment, movie=movie, n_frames=n_frames,
            frame_interval_s=interval, image_area_um2=area,
        ))
    combined = {}
    for name, dfs in parts.items():
        table = schema.MOVIE_TABLES[name]
        dfs = [d for d in dfs if len(d)]
        combined[name] = (schema.conform(pd.concat(dfs, ignore_index=True), table)
                          if dfs else schema.empty(table))
        write_csv(combined[name], experiment_dir / name)
    summary = (schema.conform(pd.concat(summaries, ignore_index=True), schema.SUMMARY)
               if summaries else schema.empty(schema.SUMMARY))
    write_csv(summary, experiment_dir / "summary.csv")

    from migradetect.plots import growth_curves_figure, migrasomes_per_cell_figure

    n_frames_by_movie = dict(zip(summary["movie"], summary["n_frames"], strict=True))
    atomic_write_bytes(experiment_dir / "growth_curves.png",
                       growth_curves_figure(combined["migrasomes.csv"], combined["tracks.csv"],
                                            n_frames_by_movie))
    atomic_write_bytes(experiment_dir / "migrasomes_per_cell.png",
                       migrasomes_per_cell_figure(combined["cells.csv"], n_frames_by_movie))
    return summary


def write_run_summary(out_dir: str | Path) -> pd.DataFrame:
    """Write ``out_dir/summary.csv``: every experiment's ``summary.csv`` rows stacked.

    Experiments are the sub-folders of ``out_dir`` holding a ``summary.csv`` (hidden and
    temporary folders skipped), in name order. Returns the stacked table (schema.SUMMARY).
    """
    out_dir = Path(out_dir)
    frames = []
    if out_dir.is_dir():
        for folder in sorted(p for p in out_dir.iterdir() if p.is_dir() and not _ignored(p.name)):
            path = folder / "summary.csv"
            if path.is_file():
                frames.append(read_csv(path, schema.SUMMARY))
    frames = [f for f in frames if len(f)]
    summary = (schema.conform(pd.concat(frames, ignore_index=True), schema.SUMMARY)
               if frames else schema.empty(schema.SUMMARY))
    write_csv(summary, out_dir / "summary.csv")
    return summary
