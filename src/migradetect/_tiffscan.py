"""Scanning TIFF files and frame folders: the movies (positions) they hold, with plane
offsets, raw calibration and channel names. Runs once at open; reads headers (IFDs) only.

Private helper of :mod:`migradetect.io` (which re-exports :func:`find_movie_files`,
:func:`is_frame_folder` and :func:`count_positions`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from migradetect._tiffmeta import (
    _imagej_calibration,
    _imagej_channel_names,
    _local,
    _ome_calibration,
    _ome_images,
    _RawCalibration,
    _tiff_resolution,
)
from migradetect._tiffplanes import _native, _series_planes, _truncated
from migradetect.errors import InputError

log = logging.getLogger("migradetect.io")

_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class _Found:
    """One movie (position) found in a file or folder, before options are applied."""

    planes: np.ndarray  # object array (T, C, Z) of _Plane
    height: int
    width: int
    dtype: np.dtype  # native dtype of the data
    fmt: str
    calibration: _RawCalibration = field(default_factory=_RawCalibration)
    channel_names: tuple[str | None, ...] | None = None


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def _is_tiff_name(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF_SUFFIXES) and not path.name.startswith(".")


def find_movie_files(folder: str | Path) -> list[Path]:
    """TIFF files (``.tif``/``.tiff``, any case, incl. ``.ome.tif``) directly in ``folder``.

    Hidden files are ignored; the list is in natural order (``t2`` before ``t10``).
    """
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if _is_tiff_name(p) and p.is_file()),
                  key=_natural_key)


def is_frame_folder(path: str | Path) -> bool:
    """Whether ``path`` is a non-empty folder holding only TIFF files (one per frame)."""
    path = Path(path)
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_file() and _is_tiff_name(p) for p in entries)


def _check_extent(found: _Found, path: Path) -> None:
    """InputError if any plane's data reach past the end of its file (a truncated copy)."""
    ends: dict[str, int] = {}
    for plane in found.planes.flat:
        end = max(o + c for o, c in zip(plane.offsets, plane.bytecounts))
        ends[plane.path] = max(ends.get(plane.path, 0), end)
    for file, end in ends.items():
        if end > Path(file).stat().st_size:
            raise _truncated(file, end)


def _open_tiff(path: Path) -> tifffile.TiffFile:
    if path.stat().st_size == 0:
        raise InputError("the file is empty (0 bytes).", path=path,
                         fix="copy or export the movie again.")
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for foreign or broken files
        raise InputError(f"it cannot be read as a TIFF file ({exc}).", path=path,
                         fix="check that it is a TIFF movie (not another format renamed .tif) "
                             "and that it was copied completely.") from exc


class _TiffErrors(logging.Handler):
    """Collects the errors tifffile logs (not raises) in this thread, e.g. on truncated IFDs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _scan_file(path: Path) -> list[_Found]:
    """All movies (positions) in one TIFF file, with plane offsets and raw calibration."""
    errors = _TiffErrors()
    tifffile_log = logging.getLogger("tifffile")
    tifffile_log.addHandler(errors)
    try:
        with _open_tiff(path) as tif:
            try:
                found = _scan_tiff(tif, path)
            except InputError:
                if errors.messages:  # the root cause is what tifffile found broken
                    raise _corrupt(path, errors.messages) from None
                raise
            except Exception as exc:  # corrupt IFDs surface as assorted errors in tifffile
                raise _corrupt(path, [*errors.messages, str(exc)]) from exc
    finally:
        tifffile_log.removeHandler(errors)
    if errors.messages:
        # tifffile logs and skips IFDs past the end of a truncated file; refuse rather than
        # silently return fewer frames
        raise _corrupt(path, errors.messages)
    for movie in found:
        _check_extent(movie, path)
    return found


def _scan_tiff(tif: tifffile.TiffFile, path: Path) -> list[_Found]:
    series = tif.series
    if not series:
        raise InputError("it holds no images.", path=path, fix="check the file.")
    kind = series[0].kind
    if kind == "ome":
        pixels = _ome_images(tif.ome_metadata or "")
        found = []
        for k, s in enumerate(series):
            planes, _, layout = _series_planes(s, path, flatten=False)
            px = pixels[k] if len(pixels) == len(series) else None
            if px is None:
                log.warning("%s: cannot match OME images to series; calibration and channel "
                            "names of position %d are not read", path, k)
            cal = _ome_calibration(px, tif.pages.first) if px is not None else _RawCalibration()
            names = None
            if px is not None:
                names = tuple(c.attrib.get("Name") for c in px if _local(c.tag) == "Channel")
                names = names if len(names) == planes.shape[1] else None
            found.append(_Found(planes, layout.height, layout.width, _native(layout), "ome",
                                cal, names))
        return found
    if kind == "imagej":
        planes, tcz, layout = _series_planes(series[0], path, flatten=False)
        meta = tif.imagej_metadata or {}
        return [_Found(planes, layout.height, layout.width, _native(layout), "imagej",
                       _imagej_calibration(meta, tif.pages.first),
                       _imagej_channel_names(meta, tcz))]
    if tif.is_imagej:
        raise InputError("its ImageJ metadata describe more image data than the file holds.",
                         path=path, fix="the file is truncated or corrupt; export it again.")
    # plain TIFF: every page a frame; pages written in several series (e.g. one tifffile
    # write per frame) are joined when they agree in size and type
    parts = [_series_planes(s, path, flatten=True) for s in series]
    layout = parts[0][2]
    if any((p.shape[1:], lay.height, lay.width, lay.dtype)
           != (parts[0][0].shape[1:], layout.height, layout.width, layout.dtype)
           for p, _, lay in parts):
        shapes = ", ".join(f"{s.shape} {s.dtype}" for s in series[:5])
        raise InputError(f"its pages differ in size or sample type ({shapes}).", path=path,
                         fix="save the movie as one stack of equally sized frames.")
    planes = np.concatenate([p for p, _, _ in parts], axis=0)
    cal = _RawCalibration()
    _tiff_resolution(tif.pages.first, cal)
    return [_Found(planes, layout.height, layout.width, _native(layout), "plain", cal)]


def _corrupt(path: Path, messages: list[str]) -> InputError:
    return InputError(f"the file is truncated or corrupt ({messages[0]}).", path=path,
                      fix="copy or export the movie again (the transfer may have been cut "
                          "off).")


def _scan_folder(folder: Path) -> _Found:
    """A folder of one TIFF per frame (natural order) as one movie."""
    if not any(not p.name.startswith(".") for p in folder.iterdir()):
        raise InputError("the folder is empty.", path=folder,
                         fix="point to a movie file or a folder holding one TIFF per frame.")
    files = find_movie_files(folder)
    if not files:
        raise InputError("the folder holds no TIFF files (.tif/.tiff).", path=folder,
                         fix="point to a movie file or a folder holding one TIFF per frame.")
    first: _Found | None = None
    parts = []
    for file in files:
        found = _scan_file(file)
        if len(found) > 1:
            raise InputError(f"frame file {file.name} holds {len(found)} positions.", path=folder,
                             fix="a frame folder must hold one single-position TIFF per frame.")
        this = found[0]
        if first is None:
            first = this
        elif (this.planes.shape[1:], this.height, this.width, this.dtype) != (
                first.planes.shape[1:], first.height, first.width, first.dtype):
            raise InputError(
                f"frame {file.name} is {_what(this)} but {files[0].name} is {_what(first)}; "
                "all frames of a folder must have the same size and type.", path=file,
                fix=f"remove or re-export {file.name} (folder {folder}).")
        parts.append(this.planes)
    assert first is not None
    return _Found(np.concatenate(parts, axis=0), first.height, first.width, first.dtype,
                  "folder", first.calibration, first.channel_names)


def _what(found: _Found) -> str:
    _, c, z = found.planes.shape
    return f"{found.height}x{found.width} {found.dtype} (C={c}, Z={z})"


def _scan(path: str | Path) -> list[_Found]:
    path = Path(path)
    if not path.exists():
        raise InputError("it does not exist.", path=path,
                         fix="check the path (spelling, and that the drive is mounted).")
    if path.is_dir():
        return [_scan_folder(path)]
    return _scan_file(path)


def count_positions(path: str | Path) -> int:
    """Number of movies (positions) in a file; 1 for a folder of frames or a plain file."""
    path = Path(path)
    if path.is_dir():
        return 1
    if not path.exists():
        raise InputError("it does not exist.", path=path, fix="check the path.")
    with _open_tiff(path) as tif:
        try:
            series = tif.series
        except Exception as exc:  # corrupt IFDs surface as assorted errors inside tifffile
            raise InputError(f"its TIFF structure cannot be parsed ({exc}).", path=path,
                             fix="the file is corrupt or truncated; export it again.") from exc
        return len(series) if series and series[0].kind == "ome" else 1
