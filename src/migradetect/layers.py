"""Results and movies as napari layer-data tuples, without importing napari.

A layer-data tuple is ``(data, kwargs, layer_type)``, what napari readers and sample-data
functions return and what ``napari.layers.Layer.create(*tuple)`` turns into a layer. Keeping
the conversion here (plain numpy / dask / pandas) lets the core be tested without a display
and keeps the plugin thin.

Axes and scale
--------------
Every layer is ``(t, y, x)``: data coordinates are frame index and 0-based pixel centres
(``frame, y_px, x_px`` of the tables), and the layer ``scale`` is
``(frame_interval_s, pixel_size_um, pixel_size_um)`` with ``units ("s", "µm", "µm")``, so
the viewer's world coordinates are seconds and micrometres. A movie without a frame
interval (a single frame) uses 1 s per frame.

Points: one point per migrasome detection; ``size`` is the diameter in pixels (the layer's
scale turns it into µm on screen); features hold ``track_id, frame, cell_id,
diameter_um, score, curation``. Tracks: ``(track_id, t, y, x)`` rows sorted by track and
frame. Label stacks from ``labels.zarr`` stay lazy (dask arrays over the zarr chunks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

#: Key under which every layer made here records what it shows (``layer.metadata[KEY]``).
METADATA_KEY = "migradetect"

#: Face colours (RGBA, 0-1) of migrasome points by curation state.
CURATION_COLORS: dict[str, tuple[float, float, float, float]] = {
    "auto": (1.0, 0.0, 1.0, 1.0),  # magenta
    "accepted": (0.0, 1.0, 0.0, 1.0),  # green
    "rejected": (0.5, 0.5, 0.5, 0.6),  # grey
    "added": (0.0, 1.0, 1.0, 1.0),  # cyan
    "reassigned": (1.0, 1.0, 0.0, 1.0),  # yellow
}

#: Smallest point diameter drawn (pixels), so that tiny or unknown sizes stay visible.
MIN_POINT_SIZE_PX = 3.0

_UNITS = ("s", "µm", "µm")
_AXES = ("t", "y", "x")


def spatial_scale(pixel_size_um: float | None,
                  frame_interval_s: float | None) -> tuple[float, float, float]:
    """Layer scale ``(s per frame, µm per pixel, µm per pixel)``; unknown values become 1."""
    px = float(pixel_size_um) if pixel_size_um else 1.0
    dt = float(frame_interval_s) if frame_interval_s else 1.0
    return (dt, px, px)


def _common(scale: tuple[float, float, float], name: str, meta: Mapping[str, Any]) -> dict:
    units = _UNITS if meta.get("calibrated", True) else None  # no µm without a pixel size
    out = {"name": name, "scale": scale, "axis_labels": _AXES,
           "metadata": {METADATA_KEY: dict(meta)}}
    if units is not None:
        out["units"] = units
    return out


def movie_layers(movie: Any, *, name: str | None = None) -> list[LayerData]:
    """One lazy image layer per channel of a :class:`migradetect.io.Movie`.

    Parameters
    ----------
    movie
        The movie; ``movie.data`` is a dask array ``(T, C, 1, Y, X)`` (nothing is read here).
    name
        Layer name prefix (default the movie's name); channels add `` [channel name]`` when
        the movie has several.

    Returns
    -------
    list of (dask (T, Y, X), kwargs, "image")
    """
    cal = movie.calibration
    scale = spatial_scale(cal.pixel_size_um, cal.frame_interval_s)
    base = name or movie.name
    n_c = int(movie.data.shape[1])
    colormaps = ("green", "magenta", "cyan", "yellow")
    out = []
    for c in range(n_c):
        data = movie.data[:, c, 0]
        meta = {"role": "movie", "movie": movie.name, "channel": c,
                "channel_name": movie.channel_names[c],
                "path": str(movie.path), "pixel_size_um": cal.pixel_size_um,
                "frame_interval_s": cal.frame_interval_s,
                "calibrated": cal.pixel_size_um is not None}
        label = base if n_c == 1 else f"{base} [{movie.channel_names[c]}]"
        kw = _common(scale, label, meta)
        kw.update(blending="additive", colormap="gray" if n_c == 1 else colormaps[c % 4])
        out.append((data, kw, "image"))
    return out


def point_colors(curation: pd.Series | np.ndarray) -> np.ndarray:
    """RGBA face colours (N, 4) of points from their curation states (:data:`CURATION_COLORS`)."""
    values = np.asarray(curation, dtype=object)
    colors = np.array([CURATION_COLORS.get(str(v), CURATION_COLORS["auto"]) for v in values],
                      dtype=float).reshape(-1, 4)
    return colors


def migrasome_points(migrasomes: pd.DataFrame, *, pixel_size_um: float,
                     frame_interval_s: float | None, name: str = "migrasomes",
                     meta: Mapping[str, Any] | None = None) -> LayerData:
    """A points layer of migrasome detections (rows of ``migrasomes.csv``).

    Parameters
    ----------
    migrasomes
        Table with ``frame, y_px, x_px, track_id, cell_id, diameter_um, score`` and optionally
        ``curation`` (``"auto"`` when absent).
    pixel_size_um
        Pixel size in µm (point size = diameter in µm / pixel size, in pixels).
    frame_interval_s
        Time between frames in s (layer scale), None for 1.
    name, meta
        Layer name and extra metadata stored under :data:`METADATA_KEY`.

    Returns
    -------
    (ndarray (N, 3) of (frame, y_px, x_px), kwargs, "points")
    """
    m = migrasomes.reset_index(drop=True)
    data = m[["frame", "y_px", "x_px"]].to_numpy(dtype=float).reshape(-1, 3)
    curation = (m["curation"].astype(str) if "curation" in m.columns
                else pd.Series(["auto"] * len(m), dtype=str))
    features = pd.DataFrame({
        "track_id": m["track_id"].to_numpy(dtype=np.int64),
        "frame": m["frame"].to_numpy(dtype=np.int64),
        "cell_id": m["cell_id"].to_numpy(dtype=np.int64),
        "diameter_um": m["diameter_um"].to_numpy(dtype=float),
        "score": m["score"].to_numpy(dtype=float),
        "curation": curation.to_numpy(dtype=object).astype(str),
    })
    diam_px = m["diameter_um"].to_numpy(dtype=float) / float(pixel_size_um)
    size = np.where(np.isfinite(diam_px), np.maximum(diam_px, MIN_POINT_SIZE_PX),
                    MIN_POINT_SIZE_PX)
    scale = spatial_scale(pixel_size_um, frame_interval_s)
    kw = _common(scale, name, {"role": "migrasomes", **dict(meta or {})})
    colors = point_colors(curation) if len(m) else "magenta"  # napari refuses a (0, 4) array
    kw.update(features=features, size=size, face_color=colors,
              border_color="white", border_width=0.1, opacity=0.8, symbol="disc")
    return data, kw, "points"


def migrasome_tracks(migrasomes: pd.DataFrame, *, pixel_size_um: float,
                     frame_interval_s: float | None, name: str = "migrasome tracks",
                     meta: Mapping[str, Any] | None = None) -> LayerData | None:
    """A tracks layer of migrasome trajectories; rejected rows (``curation``) are left out.

    Returns None when no track is left (napari cannot make an empty tracks layer).
    """
    m = migrasomes
    if "curation" in m.columns:
        m = m.loc[m["curation"].astype(str) != "rejected"]
    m = m.loc[m["track_id"] >= 0]
    if len(m) == 0:
        return None
    m = m.sort_values(["track_id", "frame"], kind="stable")
    data = m[["track_id", "frame", "y_px", "x_px"]].to_numpy(dtype=float)
    features = pd.DataFrame({"track_id": m["track_id"].to_numpy(dtype=np.int64),
                             "cell_id": m["cell_id"].to_numpy(dtype=np.int64)})
    kw = _common(spatial_scale(pixel_size_um, frame_interval_s), name,
                 {"role": "migrasome_tracks", **dict(meta or {})})
    kw.update(features=features, tail_length=1000, tail_width=2)
    return data, kw, "tracks"


def cell_tracks(cell_frames: pd.DataFrame, *, pixel_size_um: float,
                frame_interval_s: float | None, name: str = "cell tracks",
                meta: Mapping[str, Any] | None = None) -> LayerData | None:
    """A tracks layer of cell centroid trajectories (rows of ``cell_frames.csv``), or None."""
    c = cell_frames.loc[cell_frames["cell_id"] >= 0]
    if len(c) == 0:
        return None
    c = c.sort_values(["cell_id", "frame"], kind="stable")
    data = c[["cell_id", "frame", "y_px", "x_px"]].to_numpy(dtype=float)
    features = pd.DataFrame({"cell_id": c["cell_id"].to_numpy(dtype=np.int64),
                             "area_um2": c["area_um2"].to_numpy(dtype=float)})
    kw = _common(spatial_scale(pixel_size_um, frame_interval_s), name,
                 {"role": "cell_tracks", **dict(meta or {})})
    kw.update(features=features, color_by="cell_id", tail_length=1000, tail_width=3)
    return data, kw, "tracks"


def label_layers(labels: Any, *, pixel_size_um: float, frame_interval_s: float | None,
                 meta: Mapping[str, Any] | None = None) -> list[LayerData]:
    """Labels layers for the ``cells`` and ``fibers`` stacks of a ``labels.zarr`` group.

    Parameters
    ----------
    labels
        A zarr group (or a mapping of name -> (T, Y, X) array); arrays are wrapped lazily
        with :func:`dask.array.from_array`, one chunk per frame.
    """
    out = []
    scale = spatial_scale(pixel_size_um, frame_interval_s)
    for key, name, opacity in (("cells", "cells", 0.35), ("fibers", "fibers", 0.9)):
        try:
            arr = labels[key]
        except KeyError:
            continue
        shape = tuple(arr.shape)
        data = da.from_array(arr, chunks=(1, *shape[1:]), asarray=True, fancy=False)
        kw = _common(scale, name, {"role": f"{key}_labels", **dict(meta or {})})
        kw.update(opacity=opacity)
        out.append((data, kw, "labels"))
    return out


def read_manifest(movie_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a movie result folder ({} when missing or unreadable)."""
    path = Path(movie_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_result_folder(path: str | Path) -> bool:
    """True for a per-movie folder of ``migradetect run`` (manifest.json + migrasomes.csv)."""
    path = Path(path)
    return (path.is_dir() and (path / "manifest.json").is_file()
            and (path / "migrasomes.csv").is_file())


def calibration_of(manifest: Mapping[str, Any]) -> tuple[float, float | None]:
    """(pixel_size_um, frame_interval_s) recorded in a manifest (1.0 / None when absent)."""
    movie = manifest.get("movie") or {}
    cal = manifest.get("calibration") or {}
    px = movie.get("pixel_size_um") or cal.get("pixel_size_um") or 1.0
    dt = movie.get("frame_interval_s") or cal.get("frame_interval_s")
    return float(px), (None if dt is None else float(dt))


def result_layers(movie_dir: str | Path, *, tables: Mapping[str, pd.DataFrame] | None = None,
                  open_movie: Any = None) -> list[LayerData]:
    """Every layer of one movie's results folder: movie, cells, fibers, points and tracks.

    Parameters
    ----------
    movie_dir
        A per-movie folder written by ``migradetect run`` (``manifest.json``, the contract
        CSVs, ``labels.zarr``).
    tables
        The tables to show; default: the curated tables when ``curated/`` holds them, else
        the automatic ones (:func:`migradetect.curation.load_tables`). They are also kept in
        the points layer's metadata (``metadata["migradetect"]["tables"]``) for the review
        widget.
    open_movie
        Callable ``path -> Movie`` used to open the input movie (default
        :func:`migradetect.io.open_movie` with the manifest's calibration); the movie layer is
        skipped, with a log message, when the file is gone or unreadable.
    """
    from migradetect import curation, io
    from migradetect.errors import MigradetectError

    movie_dir = Path(movie_dir)
    manifest = read_manifest(movie_dir)
    px, dt = calibration_of(manifest)
    if tables is None:
        tables = curation.load_tables(movie_dir)
    curated = "curation" in tables["migrasomes.csv"].columns and (
        movie_dir / curation.CURATED_DIR).is_dir()
    name = (manifest.get("movie") or {}).get("name") or movie_dir.name
    meta = {"movie_dir": str(movie_dir.resolve()), "movie": name, "pixel_size_um": px,
            "frame_interval_s": dt, "curated": bool(curated)}
    out: list[LayerData] = []

    src = (manifest.get("input") or {}).get("path") or manifest.get("input_path")
    if src and Path(src).exists():
        opener = open_movie or (lambda p: io.open_movie(
            p, pixel_size_um=px, frame_interval_s=dt,
            position=(manifest.get("input") or {}).get("position"),
            require_calibration=False))
        try:
            out.extend(movie_layers(opener(src), name=name))
        except MigradetectError as exc:
            log.warning("%s: cannot open the input movie (%s); showing results only",
                        movie_dir, exc)
    elif src:
        log.info("%s: the input movie %s no longer exists; showing results only", movie_dir, src)

    zpath = movie_dir / "labels.zarr"
    if zpath.exists():
        import zarr

        try:
            group = zarr.open_group(str(zpath), mode="r")
        except Exception as exc:  # noqa: BLE001 - a damaged label store must not hide the tables
            log.warning("%s: cannot open labels.zarr (%s)", movie_dir, exc)
        else:
            out.extend(label_layers(group, pixel_size_um=px, frame_interval_s=dt, meta=meta))

    points = migrasome_points(tables["migrasomes.csv"], pixel_size_um=px,
                              frame_interval_s=dt, meta=meta)
    points[1]["metadata"][METADATA_KEY]["tables"] = dict(tables)  # for the review widget
    out.append(points)
    for layer in (migrasome_tracks(tables["migrasomes.csv"], pixel_size_um=px,
                                   frame_interval_s=dt, meta=meta),
                  cell_tracks(tables["cell_frames.csv"], pixel_size_um=px,
                              frame_interval_s=dt, meta=meta)):
        if layer is not None:
            out.append(layer)
    return out

