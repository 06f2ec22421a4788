"""Curation of a movie's results: accept, reject, reassign and add migrasomes, then save.

Pure table functions (tables in, new tables out; inputs are never modified) plus the
reading and writing of ``curated/`` beside a movie's automatic results. The napari review
widget calls them; so can a script.

Curation states (the ``curation`` column of ``migrasomes.csv`` and ``tracks.csv``)
-------------------------------------------------------------------------------
``auto``        untouched automatic result;
``accepted``    confirmed by the user;
``rejected``    not a migrasome (a whole track, or one detection of a track);
``added``       a migrasome the detector missed, placed by the user (a new one-frame track);
``reassigned``  the track was given to another cell by the user (``assign_reason`` becomes
                ``manual``; reassigning confirms the track).

Which tracks are counted (cells.csv ``n_migrasomes``, summary.csv ``n_migrasomes``): never a
rejected track; always a track the user confirmed (``accepted``, ``added``, ``reassigned``),
short or not; an ``auto`` track by the automatic rule (not ``short_track`` and lasting: seen
in at least 5 frames or still there at the end of the movie; or spanning the whole movie;
:func:`migradetect.across_time.counted_tracks`). A track whose every detection
is rejected is rejected. Tracks whose detections were edited get their descriptive columns
(``first_frame``, ``last_frame``, ``n_frames``, ``birth_time_s``, ``max_diameter_um``,
``y_um``, ``x_um``) recomputed from their non-rejected detections; growth-fit columns keep
their automatic values.

Files
-----
``<movie_dir>/curated/`` holds the six contract tables (``migrasomes.csv`` and
``tracks.csv`` with the ``curation`` column; ``cells.csv`` recomputed; the others copied),
``summary.csv`` (one row, recomputed) and ``curation.json`` (written last: which run the
curation was made from -- the sha256 of its ``manifest.json``, its start/end times and
input checksum --, when it was saved, counts per state). The automatic files are never
touched; a re-run of the analysis never touches ``curated/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from migradetect import __version__, schema
from migradetect.errors import InputError, OutputError

log = logging.getLogger(__name__)

CURATION_COLUMN = "curation"
CURATION_STATES = ("auto", "accepted", "rejected", "added", "reassigned")
#: States the user set by hand: such tracks are counted even when short.
CONFIRMED_STATES = ("accepted", "added", "reassigned")
CURATED_DIR = "curated"
CURATION_FILE = "curation.json"
#: ``assign_reason`` of tracks whose cell the user chose (reassigned or added).
MANUAL_REASON = "manual"

Tables = dict[str, pd.DataFrame]

#: Schemas of the curated migrasomes and tracks tables (contract + ``curation``).
CURATED_MIGRASOMES: schema.Schema = {**schema.MIGRASOMES, CURATION_COLUMN: schema.STR}
CURATED_TRACKS: schema.Schema = {**schema.TRACKS, CURATION_COLUMN: schema.STR}


def curated_schema(name: str) -> schema.Schema:
    """Schema of a curated table by file name (contract + ``curation`` where it applies)."""
    return {"migrasomes.csv": CURATED_MIGRASOMES,
            "tracks.csv": CURATED_TRACKS}.get(name, schema.MOVIE_TABLES[name])


# ----------------------------------------------------------------------------------------
# actions (pure)
# ----------------------------------------------------------------------------------------


def start(tables: Mapping[str, pd.DataFrame]) -> Tables:
    """Copies of a movie's tables ready for curation (``curation`` = ``auto`` where absent)."""
    out: Tables = {}
    for name, table in schema.MOVIE_TABLES.items():
        df = tables.get(name)
        df = schema.empty(table) if df is None else df
        target = curated_schema(name)
        if CURATION_COLUMN in target and CURATION_COLUMN in df.columns:
            cur = df[CURATION_COLUMN].astype(str).replace({"": "auto", "nan": "auto"})
            df = df.assign(**{CURATION_COLUMN: cur})
        out[name] = schema.conform(df, target, fill={CURATION_COLUMN: "auto"})
    return out


def _check_state(state: str) -> None:
    if state not in CURATION_STATES:
        raise ValueError(f"unknown curation state {state!r}; use one of {CURATION_STATES}")


def _track_rows(tables: Tables, track_id: int) -> np.ndarray:
    mask = (tables["tracks.csv"]["track_id"] == int(track_id)).to_numpy()
    if not mask.any():
        raise KeyError(f"no track {track_id} in tracks.csv")
    return mask


def set_track(tables: Tables, track_id: int, state: str) -> Tables:
    """Accept or reject a whole track (its row in tracks.csv and all its detections).

    Accepting keeps ``added`` and ``reassigned`` (already confirmed) as they are; accepting a
    rejected track makes it and its detections ``accepted``.
    """
    _check_state(state)
    if state not in ("accepted", "rejected", "auto"):
        raise ValueError("set_track takes 'accepted', 'rejected' or 'auto'")
    tracks = tables["tracks.csv"].copy()
    mig = tables["migrasomes.csv"].copy()
    rows = _track_rows(tables, track_id)
    det = (mig["track_id"] == int(track_id)).to_numpy()
    if state == "accepted":
        keep = tracks[CURATION_COLUMN].isin(["added", "reassigned"]).to_numpy()
        tracks.loc[rows & ~keep, CURATION_COLUMN] = "accepted"
        kept = tracks.loc[rows, CURATION_COLUMN].iloc[0]
        mig.loc[det, CURATION_COLUMN] = kept
    else:
        tracks.loc[rows, CURATION_COLUMN] = state
        mig.loc[det, CURATION_COLUMN] = state
    return _describe({**tables, "tracks.csv": tracks, "migrasomes.csv": mig}, [track_id])


def set_detection(tables: Tables, track_id: int, frame: int, state: str) -> Tables:
    """Accept or reject one detection (the row of ``track_id`` in ``frame``).

    A track whose every detection is rejected becomes rejected; accepting a detection of a
    rejected track makes the track ``accepted`` again.
    """
    _check_state(state)
    if state not in ("accepted", "rejected"):
        raise ValueError("set_detection takes 'accepted' or 'rejected'")
    mig = tables["migrasomes.csv"].copy()
    tracks = tables["tracks.csv"].copy()
    det = ((mig["track_id"] == int(track_id)) & (mig["frame"] == int(frame))).to_numpy()
    if not det.any():
        raise KeyError(f"no detection of track {track_id} in frame {frame}")
    current = mig.loc[det, CURATION_COLUMN].iloc[0]
    if state == "accepted" and current in ("added", "reassigned"):
        return dict(tables)
    mig.loc[det, CURATION_COLUMN] = state
    rows = _track_rows(tables, track_id)
    states = mig.loc[mig["track_id"] == int(track_id), CURATION_COLUMN]
    if (states == "rejected").all():
        tracks.loc[rows, CURATION_COLUMN] = "rejected"
    elif state == "accepted" and tracks.loc[rows, CURATION_COLUMN].iloc[0] == "rejected":
        tracks.loc[rows, CURATION_COLUMN] = "accepted"
    return _describe({**tables, "tracks.csv": tracks, "migrasomes.csv": mig}, [track_id])


def reassign_track(tables: Tables, track_id: int, cell_id: int) -> Tables:
    """Give a track (and its detections) to ``cell_id`` (-1: no cell); state ``reassigned``.

    ``assign_reason`` becomes ``manual``. A rejected track stays rejected (only its cell
    changes); an added track stays ``added``.
    """
    tracks = tables["tracks.csv"].copy()
    mig = tables["migrasomes.csv"].copy()
    rows = _track_rows(tables, track_id)
    det = (mig["track_id"] == int(track_id)).to_numpy()
    tracks.loc[rows, "cell_id"] = int(cell_id)
    tracks.loc[rows, "assign_reason"] = MANUAL_REASON
    mig.loc[det, "cell_id"] = int(cell_id)
    state = tracks.loc[rows, CURATION_COLUMN].iloc[0]
    if state not in ("rejected", "added"):
        tracks.loc[rows, CURATION_COLUMN] = "reassigned"
        mig.loc[det & (mig[CURATION_COLUMN] != "rejected").to_numpy(),
                CURATION_COLUMN] = "reassigned"
    return {**tables, "tracks.csv": tracks, "migrasomes.csv": mig}


def add_migrasome(tables: Tables, *, frame: int, y_px: float, x_px: float,
                  diameter_um: float, pixel_size_um: float, frame_interval_s: float | None,
                  cell_id: int = -1, experiment: str | None = None,
                  movie: str | None = None) -> tuple[Tables, int]:
    """Add a migrasome the detector missed, as a new one-frame track (state ``added``).

    Parameters
    ----------
    frame
        0-based frame.
    y_px, x_px
        Centre in image pixels.
    diameter_um
        Diameter in µm (as measured by the user, or a default).
    pixel_size_um, frame_interval_s
        Calibration (µm per pixel, s per frame; None: a single frame, time 0).
    cell_id
        The cell that made it (-1: none yet); ``assign_reason`` is ``manual``.
    experiment, movie
        Names written in the rows (default: those of the existing rows).

    Returns
    -------
    (tables, track_id)
        The new tables and the new track's id (one more than the largest id).
    """
    mig = tables["migrasomes.csv"]
    tracks = tables["tracks.csv"]
    ids = np.concatenate([mig["track_id"].to_numpy(), tracks["track_id"].to_numpy(), [0]])
    track_id = int(ids.max()) + 1
    exp = experiment if experiment is not None else _first(tables, "experiment")
    mov = movie if movie is not None else _first(tables, "movie")
    t_s = float(frame) * float(frame_interval_s or 0.0)
    px = float(pixel_size_um)
    row = {"experiment": exp, "movie": mov, "frame": int(frame), "time_s": t_s,
           "track_id": track_id, "cell_id": int(cell_id), "y_px": float(y_px),
           "x_px": float(x_px), "y_um": float(y_px) * px, "x_um": float(x_px) * px,
           "diameter_um": float(diameter_um), "score": math.nan, CURATION_COLUMN: "added"}
    n_frames = _n_frames_hint(tables)
    trow = {"experiment": exp, "movie": mov, "track_id": track_id, "cell_id": int(cell_id),
            "assign_reason": MANUAL_REASON, "first_frame": int(frame), "last_frame": int(frame),
            "n_frames": 1, "birth_time_s": t_s, "max_diameter_um": float(diameter_um),
            "born_before_start": int(frame) == 0,
            "growing_at_end": n_frames is not None and int(frame) == n_frames - 1,
            "short_track": True, "y_um": float(y_px) * px, "x_um": float(x_px) * px,
            "final_diameter_um": float(diameter_um), CURATION_COLUMN: "added"}
    new_mig = pd.concat([mig, schema.conform(pd.DataFrame([row]), CURATED_MIGRASOMES)],
                        ignore_index=True)
    new_mig = new_mig.sort_values(["frame", "y_px", "x_px"], kind="stable")
    new_tracks = pd.concat([tracks, schema.conform(pd.DataFrame([trow]), CURATED_TRACKS)],
                           ignore_index=True)
    out = {**tables, "migrasomes.csv": schema.conform(new_mig, CURATED_MIGRASOMES),
           "tracks.csv": schema.conform(new_tracks, CURATED_TRACKS)}
    return out, track_id


def _first(tables: Tables, column: str) -> str:
    for name in ("migrasomes.csv", "tracks.csv", "cells.csv", "drift.csv"):
        df = tables.get(name)
        if df is not None and len(df) and column in df.columns:
            return str(df[column].iloc[0])
    return ""


def _n_frames_hint(tables: Tables) -> int | None:
    drift = tables.get("drift.csv")
    return None if drift is None or len(drift) == 0 else int(len(drift))


def _describe(tables: Tables, track_ids: list[int]) -> Tables:
    """Recompute descriptive track columns from the non-rejected detections of ``track_ids``."""
    mig = tables["migrasomes.csv"]
    tracks = tables["tracks.csv"].copy()
    for tid in track_ids:
        rows = (tracks["track_id"] == int(tid)).to_numpy()
        d = mig.loc[(mig["track_id"] == int(tid)) & (mig[CURATION_COLUMN] != "rejected")]
        if len(d) == 0:
            continue
        d = d.sort_values("frame")
        first = int(d["frame"].iloc[0])
        tracks.loc[rows, "first_frame"] = first
        tracks.loc[rows, "last_frame"] = int(d["frame"].iloc[-1])
        tracks.loc[rows, "n_frames"] = int(len(d))
        tracks.loc[rows, "birth_time_s"] = float(d["time_s"].iloc[0])
        tracks.loc[rows, "max_diameter_um"] = float(d["diameter_um"].max())
        tracks.loc[rows, "y_um"] = float(d["y_um"].mean())
        tracks.loc[rows, "x_um"] = float(d["x_um"].mean())
    return {**tables, "tracks.csv": tracks}


# ----------------------------------------------------------------------------------------
# counts
# ----------------------------------------------------------------------------------------


def counted_tracks(tracks: pd.DataFrame, n_frames: int) -> pd.Series:
    """Boolean mask of the tracks counted as migrasomes after curation (see module doc)."""
    from migradetect.across_time import counted_tracks as auto_rule

    state = (tracks[CURATION_COLUMN].astype(str) if CURATION_COLUMN in tracks.columns
             else pd.Series(["auto"] * len(tracks), index=tracks.index))
    auto = auto_rule(tracks, n_frames) if len(tracks) else pd.Series([], dtype=bool)
    return (state != "rejected") & (state.isin(CONFIRMED_STATES) | auto)


def recompute(tables: Tables, *, n_frames: int, pixel_size_um: float | None = None,
              frame_interval_s: float | None = None,
              image_area_um2: float | None = None) -> tuple[Tables, pd.DataFrame]:
    """Per-cell counts and the summary row from curated tables.

    ``cells.csv``: ``n_migrasomes`` = counted tracks (:func:`counted_tracks`) of the cell,
    ``migrasomes_per_100um`` = n_migrasomes / path_length_um * 100 (NaN for a zero path);
    ``migrasomes.csv``: each row gets its track's ``cell_id``. The summary row follows
    :func:`migradetect.report.summarize_movie` on the non-rejected tracks, with
    ``n_migrasomes`` and the density taken from :func:`counted_tracks`.

    Returns
    -------
    (tables, summary)
        New tables and a one-row summary table (schema.SUMMARY).
    """
    from migradetect.report import summarize_movie

    tables = start(tables)
    tracks = tables["tracks.csv"]
    mig = tables["migrasomes.csv"]
    cell_of = tracks.set_index("track_id")["cell_id"]
    if len(mig):
        ids = cell_of.reindex(mig["track_id"].to_numpy())
        mig = mig.assign(cell_id=np.where(ids.isna(), mig["cell_id"].to_numpy(),
                                          ids.fillna(-1).to_numpy()).astype(np.int64))
    counted = counted_tracks(tracks, n_frames).to_numpy(dtype=bool)
    per_cell = tracks.loc[counted & (tracks["cell_id"] >= 0).to_numpy(), "cell_id"].value_counts()
    cells = tables["cells.csv"].copy()
    n = per_cell.reindex(cells["cell_id"].to_numpy()).fillna(0).to_numpy(dtype=np.int64)
    path = cells["path_length_um"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        per100 = np.where(path > 0, n / path * 100.0, np.nan)
    cells = cells.assign(n_migrasomes=n, migrasomes_per_100um=per100)
    out = {**tables, "migrasomes.csv": mig, "cells.csv": cells}
    experiment, movie = _first(out, "experiment"), _first(out, "movie")
    kept = tracks.loc[(tracks[CURATION_COLUMN] != "rejected").to_numpy()]
    summary = summarize_movie({**out, "tracks.csv": kept}, experiment=experiment, movie=movie,
                              n_frames=n_frames, frame_interval_s=frame_interval_s,
                              image_area_um2=image_area_um2)
    n_mig = int(counted.sum())
    density = (n_mig / (float(image_area_um2) * 1e-6)
               if image_area_um2 is not None and image_area_um2 > 0 else math.nan)
    summary = summary.assign(n_migrasomes=np.int64(n_mig), migrasome_density_per_mm2=density)
    return out, schema.conform(summary, schema.SUMMARY)


def state_counts(tables: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, int]]:
    """How many tracks and detections are in each curation state."""
    out = {}
    for name, key in (("tracks.csv", "tracks"), ("migrasomes.csv", "detections")):
        df = tables[name]
        col = df[CURATION_COLUMN] if CURATION_COLUMN in df.columns else pd.Series(
            ["auto"] * len(df))
        out[key] = {s: int((col == s).sum()) for s in CURATION_STATES}
    return out


# ----------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _manifest(movie_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((movie_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"no readable manifest.json ({exc}).", path=movie_dir,
                         fix="give the per-movie folder written by `migradetect run` "
                             "(it holds manifest.json and the CSV tables).") from exc
    return data if isinstance(data, dict) else {}


def movie_meta(movie_dir: str | Path) -> dict[str, Any]:
    """``n_frames``, ``pixel_size_um``, ``frame_interval_s``, ``image_area_um2`` of a run."""
    movie_dir = Path(movie_dir)
    manifest = _manifest(movie_dir)
    movie = manifest.get("movie") or {}
    px = movie.get("pixel_size_um")
    shape = movie.get("shape_yx")
    area = (float(shape[0]) * float(shape[1]) * float(px) ** 2
            if px is not None and shape is not None and len(shape) == 2 else None)
    n_frames = movie.get("n_frames")
    return {"n_frames": None if n_frames is None else int(n_frames), "pixel_size_um": px,
            "frame_interval_s": movie.get("frame_interval_s"), "image_area_um2": area}


def load_auto(movie_dir: str | Path) -> Tables:
    """The automatic tables of a movie result folder (contract schemas)."""
    from migradetect.report import read_csv

    movie_dir = Path(movie_dir)
    return {name: read_csv(movie_dir / name, table)
            for name, table in schema.MOVIE_TABLES.items()}


def load_curated(movie_dir: str | Path) -> Tables | None:
    """The curated tables of ``movie_dir/curated/`` (with ``curation``), or None when absent.

    A curation made from another run than the current one (the results were re-made since)
    is still returned, with a warning in the log; :func:`curation_info` tells which run.
    """
    from migradetect.report import read_csv

    folder = Path(movie_dir) / CURATED_DIR
    if not (folder / CURATION_FILE).is_file():
        return None
    info = curation_info(movie_dir)
    if info.get("stale"):
        log.warning("%s: the curation was made from an earlier run (manifest changed since)",
                    folder)
    tables = {name: read_csv(folder / name, curated_schema(name))
              for name in schema.MOVIE_TABLES}
    return start(tables)


def load_tables(movie_dir: str | Path) -> Tables:
    """The curated tables when ``curated/`` holds a saved curation, else the automatic ones."""
    curated = load_curated(movie_dir)
    return curated if curated is not None else load_auto(movie_dir)


def curation_info(movie_dir: str | Path) -> dict[str, Any]:
    """The saved ``curation.json`` plus ``stale`` (made from another run than the current)."""
    movie_dir = Path(movie_dir)
    try:
        info = json.loads((movie_dir / CURATED_DIR / CURATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    made_from = (info.get("made_from") or {}).get("manifest_sha256")
    info["stale"] = made_from is not None and made_from != _sha256(movie_dir / "manifest.json")
    return info


def save_curated(tables: Mapping[str, pd.DataFrame], movie_dir: str | Path, *,
                 note: str | None = None) -> Path:
    """Recompute counts and write the curated tables to ``movie_dir/curated/``.

    Parameters
    ----------
    tables
        The curated tables (from :func:`start` and the actions).
    movie_dir
        The per-movie result folder the tables were made from (holds ``manifest.json``).
    note
        Free text saved in ``curation.json`` (who, why).

    Returns
    -------
    Path
        The ``curated/`` folder.

    Raises
    ------
    InputError
        ``movie_dir`` has no readable ``manifest.json``.
    OutputError
        ``curated/`` cannot be written.
    """
    from migradetect.report import atomic_write_json, write_csv

    movie_dir = Path(movie_dir)
    manifest = _manifest(movie_dir)
    meta = movie_meta(movie_dir)
    n_frames = meta["n_frames"] if meta["n_frames"] is not None else _n_frames_hint(
        dict(tables)) or 1
    auto_summary = None
    try:
        _, auto_summary = recompute(load_auto(movie_dir), n_frames=n_frames,
                                    pixel_size_um=meta["pixel_size_um"],
                                    frame_interval_s=meta["frame_interval_s"],
                                    image_area_um2=meta["image_area_um2"])
    except Exception as exc:  # noqa: BLE001 - the before-numbers are informative only
        log.warning("%s: cannot summarise the automatic tables (%s)", movie_dir, exc)
    curated, summary = recompute(dict(tables), n_frames=n_frames,
                                 pixel_size_um=meta["pixel_size_um"],
                                 frame_interval_s=meta["frame_interval_s"],
                                 image_area_um2=meta["image_area_um2"])
    folder = movie_dir / CURATED_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the curated folder ({exc.strerror}).", path=folder,
                          fix="check that the results folder is writable.") from exc
    for name in schema.MOVIE_TABLES:
        write_csv(schema.conform(curated[name], curated_schema(name)), folder / name)
    write_csv(summary, folder / "summary.csv")
    record = {
        "format": "migradetect curation v1",
        "migradetect_version": __version__,
        "saved_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "made_from": {
            "movie_dir": str(movie_dir.resolve()),
            "manifest_sha256": _sha256(movie_dir / "manifest.json"),
            "started_utc": manifest.get("started_utc"),
            "finished_utc": manifest.get("finished_utc"),
            "input_checksum": (manifest.get("input") or {}).get("checksum"),
        },
        "counts": state_counts(curated),
        "n_migrasomes_auto": (None if auto_summary is None
                              else int(auto_summary["n_migrasomes"].iloc[0])),
        "n_migrasomes_curated": int(summary["n_migrasomes"].iloc[0]),
        "note": note,
    }
    atomic_write_json(folder / CURATION_FILE, record)
    log.info("%s: curated results saved (%d migrasomes counted)", folder,
             record["n_migrasomes_curated"])
    return folder
