"""Open microscopy movies lazily, with their calibration.

``open_movie`` turns a TIFF / OME-TIFF / ImageJ hyperstack / folder of one TIFF per frame into a
:class:`Movie`: a dask array ``(T, C, Z, Y, X)`` with one chunk per frame and channel, plus the
pixel size and frame interval and where each came from.

Nothing is read when a movie is opened except the TIFF headers (IFDs): the file offsets and
byte counts of every image plane are computed once, and each dask task reads its plane by
seeking to them. The tasks' arguments are plain picklable values (a path, offsets, a decoding
layout), so the same array computes on a ``dask.distributed`` cluster (tifffile's zarr store
cannot be pickled). Large ImageJ hyperstacks keep a single IFD for contiguous data; their plane
offsets are computed arithmetically from the first one.

Layout: this module holds the public API (data types, opening, calibration overrides,
``describe``); ``_tiffscan`` finds the movies in files and folders, ``_tiffplanes`` computes
and reads plane offsets (with a small strip/tile decoder, see there why), ``_tiffmeta``
parses OME / ImageJ / TIFF-resolution calibration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from migradetect._tiffmeta import _RawCalibration
# _Layout, _Plane and _read_plane are re-exported for code that reached them here before
from migradetect._tiffplanes import _Block, _Layout, _Plane, _read_block, _read_plane  # noqa: F401
from migradetect._tiffscan import (
    _Found,
    _scan,
    count_positions,
    find_movie_files,
    is_frame_folder,
)
from migradetect.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "MAX_FRAME_INTERVAL_S", "PIXEL_SIZE_RANGE_UM", "Calibration", "Movie", "count_positions",
    "describe", "find_movie_files", "is_frame_folder", "movie_from_array", "open_movie",
    "open_movies",
]
#: plausible pixel sizes of a light-microscopy movie, µm (outside: a unit mistake)
PIXEL_SIZE_RANGE_UM = (0.01, 5.0)
#: longest plausible time between frames, s (one day)
MAX_FRAME_INTERVAL_S = 86400.0

_PIXEL_FIX = "give the pixel size with --pixel-size UM (command line) or pixel_size_um= (Python)"
_FRAME_FIX = ("give the time between frames with --frame-interval S (command line) or "
              "frame_interval_s= (Python)")


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Physical calibration of a movie and where each value came from.

    Attributes
    ----------
    pixel_size_um
        Lateral pixel size in µm, or None when unknown.
    frame_interval_s
        Time between frames in s, or None when unknown (allowed for single-frame movies).
    z_step_um
        Distance between z planes in µm, or None.
    pixel_size_source, frame_interval_source
        e.g. ``"OME PhysicalSizeX"``, ``"ImageJ resolution"``, ``"TIFF XResolution"``,
        ``"override (file said 0.2)"``, ``"missing"``.
    """

    pixel_size_um: float | None
    frame_interval_s: float | None
    z_step_um: float | None = None
    pixel_size_source: str = "missing"
    frame_interval_source: str = "missing"


@dataclass(frozen=True, eq=False)
class Movie:
    """A lazily read movie.

    Attributes
    ----------
    data
        dask array ``(T, C, Z, Y, X)``, Z already reduced to 1, chunks ``(1, 1, 1, Y, X)``.
    calibration
        Pixel size, frame interval and their sources.
    channel_names
        One name per channel of ``data`` (``"C0"``, ``"C1"``... when the file has none).
    path
        The file or folder the movie was read from.
    name
        File stem without ``.ome``/``.tif``, ``<stem>_p<k>`` per position, or the folder name.
    position
        Position index in a multi-position file, else None.
    z_reduction
        ``"max"``, ``"sum"``, ``"plane K"`` or ``"none"`` (single plane).
    n_z
        Number of z planes before the reduction.
    source_format
        ``"ome"``, ``"imagej"``, ``"plain"`` or ``"folder"``.
    channel_names_from_file
        Whether ``channel_names`` were read from the file.
    """

    data: da.Array
    calibration: Calibration
    channel_names: tuple[str, ...]
    path: Path
    name: str
    position: int | None = None
    z_reduction: str = "none"
    n_z: int = 1
    source_format: str = "plain"
    channel_names_from_file: bool = False

    @property
    def n_frames(self) -> int:
        """Number of time points T."""
        return int(self.data.shape[0])

    def channel_index(self, channel: str | int) -> int:
        """Index into ``data``'s C axis of a channel given by name or 0-based index."""
        return _channel_index(channel, self.channel_names, self.path)

    def frames(self, channel: str | int = 0) -> da.Array:
        """The ``(T, Y, X)`` dask stack of one channel (one chunk per frame)."""
        return self.data[:, self.channel_index(channel), 0]


# -------------------------------------------------------------------------------- opening --
def _channel_index(channel: str | int, names: tuple[str, ...], path: str | Path) -> int:
    listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if 0 <= channel < len(names):
            return int(channel)
        raise InputError(f"channel index {channel} is out of range; the movie has "
                         f"{len(names)} channel(s) ({listing}).", path=path,
                         fix="give a 0-based channel index or one of the channel names.")
    if channel in names:
        return names.index(str(channel))
    raise InputError(f"there is no channel named {channel!r}; the channels are {listing}.",
                     path=path, fix="give one of these channel names or a 0-based index.")


def _z_plan(z: str | int, n_z: int, path: Path) -> tuple[list[int], str, str]:
    """Planes to read, the in-task reduction and the recorded ``z_reduction``."""
    if isinstance(z, (int, np.integer)) and not isinstance(z, bool):
        if not 0 <= z < n_z:
            raise InputError(f"z plane {z} is out of range: the movie has {n_z} z plane(s) "
                             f"(0..{n_z - 1}).", path=path,
                             fix=f"give --z max, --z sum or a plane index 0..{n_z - 1}.")
        return [int(z)], "none", "none" if n_z == 1 else f"plane {int(z)}"
    if z not in ("max", "sum"):
        raise InputError(f"z reduction {z!r} is not understood.", path=path,
                         fix="give 'max', 'sum' or a 0-based plane index.")
    if n_z == 1:
        return [0], "none", "none"
    return list(range(n_z)), str(z), str(z)


def _plausible_pixel(value: float) -> bool:
    return PIXEL_SIZE_RANGE_UM[0] <= value <= PIXEL_SIZE_RANGE_UM[1]


def _plausible_interval(value: float) -> bool:
    return 0 < value <= MAX_FRAME_INTERVAL_S


def _resolve(name: str, file_value: float | None, file_source: str, override: float | None,
             needed: bool, require: bool, plausible, unit: str, fix: str,
             path: Path) -> tuple[float | None, str]:
    """Apply an override / the file's value / the requirement to one calibration value."""
    said = f"file said {file_value:g} {unit}" if file_value is not None else "file had none"
    if override is not None:
        if not plausible(float(override)):
            raise InputError(f"the {name} you gave ({override:g} {unit}) is not plausible.",
                             path=path, fix=f"check the unit (it must be in {unit}); {fix}.")
        return float(override), f"override ({said})"
    if file_value is not None and not plausible(file_value):
        if require:
            raise InputError(f"the file's {name} ({file_value:g} {unit}, from {file_source}) "
                             "is not plausible.", path=path, fix=f"{fix}.")
        return None, f"missing ({said}, from {file_source}: not plausible)"
    if file_value is None:
        if require and needed:
            raise InputError(f"the file has no {name}.", path=path, fix=f"{fix}.")
        return None, "missing"
    return file_value, file_source


def _calibrate(raw: _RawCalibration, n_frames: int, pixel_size_um: float | None,
               frame_interval_s: float | None, require: bool, path: Path) -> Calibration:
    pixel, pixel_source = _resolve(
        "pixel size", raw.pixel_size_um, raw.pixel_size_source, pixel_size_um, True, require,
        _plausible_pixel, "µm", _PIXEL_FIX, path)
    interval, interval_source = _resolve(
        "frame interval", raw.frame_interval_s, raw.frame_interval_source, frame_interval_s,
        n_frames > 1, require, _plausible_interval, "s", _FRAME_FIX, path)
    return Calibration(pixel, interval, raw.z_step_um, pixel_source, interval_source)


def _stem(path: Path) -> str:
    name = path.resolve().name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _make_movie(found: _Found, path: Path, position: int | None, channel: str | int | None,
                pixel_size_um: float | None, frame_interval_s: float | None, z: str | int,
                require_calibration: bool) -> Movie:
    n_t, n_c, n_z = found.planes.shape
    file_names = found.channel_names
    from_file = bool(file_names) and all(file_names)
    names = tuple(str(n) for n in file_names) if from_file else tuple(
        f"C{i}" for i in range(n_c))
    channels = list(range(n_c)) if channel is None else [_channel_index(channel, names, path)]
    z_planes, reduction, z_reduction = _z_plan(z, n_z, path)
    calibration = _calibrate(found.calibration, n_t, pixel_size_um, frame_interval_s,
                             require_calibration, path)
    out_dtype = np.dtype(np.float32) if reduction == "sum" else found.dtype
    stat = path.stat()
    token = tokenize(str(path.resolve()), stat.st_size, stat.st_mtime_ns, position, channels,
                     z_planes, reduction)
    key = f"open_movie-{token}"
    graph = {
        (key, t, j, 0, 0, 0): (_read_block, _Block(
            tuple(found.planes[t, c, zi] for zi in z_planes), reduction, found.height,
            found.width, out_dtype.str))
        for t in range(n_t) for j, c in enumerate(channels)}
    chunks = ((1,) * n_t, (1,) * len(channels), (1,), (found.height,), (found.width,))
    data = da.Array(HighLevelGraph.from_collections(key, graph, dependencies=()), key, chunks,
                    dtype=out_dtype)
    name = _stem(path) if position is None else f"{_stem(path)}_p{position}"
    log.debug("opened %s: %s %s", path, data.shape, data.dtype)
    return Movie(data, calibration, tuple(names[c] for c in channels), path, name, position,
                 z_reduction, n_z, found.fmt, from_file)


def open_movie(path: str | Path, *, channel: str | int | None = None,
               pixel_size_um: float | None = None, frame_interval_s: float | None = None,
               z: str | int = "max", position: int | None = None,
               require_calibration: bool = True) -> Movie:
    """Open a movie lazily as ``(T, C, Z=1, Y, X)`` with its calibration.

    Parameters
    ----------
    path
        A TIFF / OME-TIFF / ImageJ file, or a folder of one TIFF per frame (natural order).
    channel
        Keep only this channel (name or 0-based index); default all.
    pixel_size_um
        Pixel size in µm; replaces the file's value.
    frame_interval_s
        Time between frames in s; replaces the file's value.
    z
        How z-stacks are reduced: ``"max"``, ``"sum"`` (float32) or a 0-based plane index.
    position
        Which position of a multi-position OME-TIFF (0-based); required when it has several.
    require_calibration
        Raise when the pixel size (or, for T > 1, the frame interval) is unknown; when False
        the value is None and its source ``"missing"``.

    Returns
    -------
    Movie

    Raises
    ------
    InputError
        Unreadable, truncated, RGB or inconsistent input; unknown channel; z out of range;
        missing or implausible calibration. The message names the file and the fix.
    """
    path = Path(path)
    found = _scan(path)
    if position is None:
        if len(found) > 1:
            raise InputError(f"the file holds {len(found)} positions.", path=path,
                             fix=f"choose one with position=0..{len(found) - 1} or open them "
                                 "all with open_movies().")
        index = 0
    elif not 0 <= position < len(found):
        raise InputError(f"position {position} is out of range: the file holds {len(found)}.",
                         path=path, fix=f"give a position 0..{len(found) - 1}.")
    else:
        index = position
    return _make_movie(found[index], path, index if len(found) > 1 else None, channel,
                       pixel_size_um, frame_interval_s, z, require_calibration)


def open_movies(path: str | Path, *, channel: str | int | None = None,
                pixel_size_um: float | None = None, frame_interval_s: float | None = None,
                z: str | int = "max", require_calibration: bool = True) -> list[Movie]:
    """Open every movie in ``path``: one per position of a multi-position OME-TIFF, else one.

    Options as in :func:`open_movie`.
    """
    path = Path(path)
    found = _scan(path)
    return [_make_movie(f, path, k if len(found) > 1 else None, channel, pixel_size_um,
                        frame_interval_s, z, require_calibration) for k, f in enumerate(found)]


def movie_from_array(stack: np.ndarray | da.Array, *, pixel_size_um: float | None,
                     frame_interval_s: float | None, channel_names: tuple[str, ...] | None = None,
                     name: str = "array", path: str | Path | None = None) -> Movie:
    """Wrap an in-memory (or dask) stack as a :class:`Movie`, e.g. a napari layer or test data.

    Parameters
    ----------
    stack
        ``(T, Y, X)``, ``(T, C, Y, X)`` or ``(T, C, 1, Y, X)`` array.
    pixel_size_um, frame_interval_s
        Calibration in µm and s (None: unknown); checked for plausibility.
    channel_names
        One per channel; default ``C0``, ``C1``...
    name, path
        Recorded on the movie (``path`` defaults to ``name``).
    """
    shape = tuple(stack.shape)
    if len(shape) == 3:
        stack = stack[:, None, None]
    elif len(shape) == 4:
        stack = stack[:, :, None]
    elif len(shape) != 5 or shape[2] != 1:
        raise InputError(f"an array of shape {shape} is not (T, Y, X), (T, C, Y, X) or "
                         "(T, C, 1, Y, X).", path=path or name,
                         fix="reduce z first and order the axes as T, C, Y, X.")
    data = da.asarray(stack).rechunk((1, 1, 1, *stack.shape[3:]))
    where = Path(path) if path is not None else Path(name)
    # checked like overrides (InputError when implausible), then labelled as given
    calibration = replace(
        _calibrate(_RawCalibration(), data.shape[0], pixel_size_um, frame_interval_s, False,
                   where),
        pixel_size_source="missing" if pixel_size_um is None else "given",
        frame_interval_source="missing" if frame_interval_s is None else "given")
    names = tuple(channel_names) if channel_names else tuple(
        f"C{i}" for i in range(data.shape[1]))
    if len(names) != data.shape[1]:
        raise InputError(f"{len(names)} channel names for {data.shape[1]} channels.",
                         path=where, fix="give one name per channel.")
    return Movie(data, calibration, names, where, name, source_format="array",
                 channel_names_from_file=channel_names is not None)


def describe(movie: Movie) -> str:
    """A human-readable summary: path, format, axes, shape, dtype, chunks, channels, calibration.
    """
    cal = movie.calibration
    t, c, _, y, x = movie.data.shape
    chunk_bytes = y * x * movie.data.dtype.itemsize
    names = ", ".join(f"{i}: {n}" for i, n in enumerate(movie.channel_names))
    if not movie.channel_names_from_file:
        names += " (no names in the file)"

    def value(v: float | None, unit: str) -> str:
        return "unknown" if v is None else f"{v:.6g} {unit}"

    if movie.n_z == 1:
        z_text = "single plane"
    elif movie.z_reduction.startswith("plane"):
        z_text = f"{movie.z_reduction} of {movie.n_z} kept"
    else:
        z_text = f"{movie.z_reduction} of {movie.n_z} planes"
    duration = "" if cal.frame_interval_s is None else \
        f" ({(t - 1) * cal.frame_interval_s:.6g} s from first to last frame)"
    lines = [
        f"movie:          {movie.name}" + ("" if movie.position is None
                                           else f" (position {movie.position})"),
        f"path:           {movie.path}",
        f"format:         {movie.source_format}",
        "axes:           TCZYX",
        f"shape:          {movie.data.shape}  (T={t}, C={c}, Z=1, Y={y}, X={x})",
        f"dtype:          {movie.data.dtype}",
        f"chunks:         (1, 1, 1, {y}, {x}): one per frame and channel, "
        f"{movie.data.npartitions} chunks of {_size_text(chunk_bytes)}",
        f"channels:       {names}",
        f"pixel size:     {value(cal.pixel_size_um, 'µm')}  [{cal.pixel_size_source}]",
        f"frame interval: {value(cal.frame_interval_s, 's')}  [{cal.frame_interval_source}]"
        + duration,
        f"z step:         {value(cal.z_step_um, 'µm')}",
        f"z reduction:    {z_text}",
    ]
    return "\n".join(lines)


def _size_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"
