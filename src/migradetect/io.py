"""Open microscopy movies lazily, with their calibration.

``open_movie`` turns a TIFF / OME-TIFF / ImageJ hyperstack / folder of one TIFF per frame into a
:class:`Movie`: a dask array ``(T, C, Z, Y, X)`` with one chunk per frame and channel, plus the
pixel size and frame interval and where each came from.

Nothing is read when a movie is opened except the TIFF headers (IFDs): the file offsets and
byte counts of every image plane are computed once, here, and each dask task reads its plane by
seeking to them. The tasks' arguments are plain picklable values (a path, offsets, a decoding
layout), so the same array computes on a ``dask.distributed`` cluster (tifffile's zarr store
cannot be pickled). Large ImageJ hyperstacks keep a single IFD for contiguous data; their plane
offsets are computed arithmetically from the first one.

The small strip/tile decoder below is written here on purpose: tifffile decodes pages only
through ``TiffFile`` objects that hold open file handles (not picklable), so the tasks call the
imagecodecs codecs (via tifffile's codec table) on bytes they read themselves.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field, replace
from pathlib import Path

import dask.array as da
import imagecodecs
import numpy as np
import tifffile
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from migradetect.errors import InputError

log = logging.getLogger(__name__)

#: plausible pixel sizes of a light-microscopy movie, µm (outside: a unit mistake)
PIXEL_SIZE_RANGE_UM = (0.01, 5.0)
#: longest plausible time between frames, s (one day)
MAX_FRAME_INTERVAL_S = 86400.0

_TIFF_SUFFIXES = (".tif", ".tiff")
#: TIFF compressions decoded here (decoders from imagecodecs via tifffile's codec table)
_COMPRESSIONS = {1: "none", 5: "LZW", 8: "deflate", 32946: "deflate", 32773: "packbits",
                 34925: "LZMA", 50000: "zstd"}
_LENGTH_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0,
              "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
              "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "å": 1e-4,
              "angstrom": 1e-4, "inch": 25400.0, "in": 25400.0}
_TIME_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
           "millisecond": 1e-3, "milliseconds": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9,
           "min": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0,
           "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0}
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


# --------------------------------------------------------------------------------------------
# Reading (runs inside dask tasks; arguments are plain picklable values)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Layout:
    """How one image plane is stored: size, file dtype (with byte order) and segmentation."""

    height: int
    width: int
    dtype: str
    compression: int = 1
    predictor: int = 1
    fillorder: int = 1
    tile: tuple[int, int] | None = None  # (rows, cols) of a tile; None: strips
    rows_per_strip: int = 0


@dataclass(frozen=True, slots=True)
class _Plane:
    """Where one image plane lies in a file."""

    path: str
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]
    layout: _Layout


@dataclass(frozen=True, slots=True)
class _Block:
    """One dask chunk: the z planes of one (t, c) and how to reduce them."""

    planes: tuple[_Plane, ...]
    reduction: str  # "max", "sum" or "none"
    height: int
    width: int
    dtype: str  # output dtype


def _segment_geometry(layout: _Layout, index: int) -> tuple[int, int, int, int]:
    """Row, column, rows and columns of segment ``index`` as stored (tiles may overhang)."""
    if layout.tile is None:
        row = index * layout.rows_per_strip
        return row, 0, min(layout.rows_per_strip, layout.height - row), layout.width
    tile_rows, tile_cols = layout.tile
    across = math.ceil(layout.width / tile_cols)
    return (index // across) * tile_rows, (index % across) * tile_cols, tile_rows, tile_cols


def _decode_segment(data: bytes, layout: _Layout, rows: int, cols: int) -> np.ndarray:
    """Decompress and un-predict one strip or tile into a native-order ``(rows, cols)`` array."""
    if layout.fillorder == 2:
        data = imagecodecs.bitorder_decode(data)
    dtype = np.dtype(layout.dtype)
    if layout.predictor == 3:
        dtype = dtype.newbyteorder("=")  # the float predictor works on raw byte order
    n = rows * cols
    if layout.compression != 1:
        data = tifffile.TIFF.DECOMPRESSORS[layout.compression](data, out=n * dtype.itemsize)
    count = len(data) // dtype.itemsize
    if count < n:
        raise ValueError(f"segment holds {count} values, expected {n}")
    arr = np.frombuffer(data, dtype, count=n).reshape(rows, cols).astype(dtype.newbyteorder("="))
    if layout.predictor == 2:
        imagecodecs.delta_decode(arr, axis=-1, out=arr)
    elif layout.predictor == 3:
        arr = imagecodecs.floatpred_decode(arr, axis=-1, out=arr)
    return arr


def _read_plane(plane: _Plane) -> np.ndarray:
    """Read one ``(Y, X)`` plane from its file offsets, in native byte order."""
    lay = plane.layout
    file_dtype = np.dtype(lay.dtype)
    out = np.zeros((lay.height, lay.width), file_dtype.newbyteorder("="))
    raw = lay.compression == 1 and lay.predictor == 1 and lay.fillorder == 1 and lay.tile is None
    with open(plane.path, "rb") as fh:
        if raw and _is_contiguous(plane, out.itemsize):
            # fast path: the whole plane in one read straight into the output buffer
            fh.seek(plane.offsets[0])
            got = fh.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise _truncated(plane.path, plane.offsets[0] + out.nbytes)
            if not file_dtype.isnative:
                out.byteswap(inplace=True)
            return out
        for index, (offset, count) in enumerate(zip(plane.offsets, plane.bytecounts)):
            if count == 0:  # sparse segment: stays 0
                continue
            row, col, rows, cols = _segment_geometry(lay, index)
            fh.seek(offset)
            data = fh.read(count)
            if len(data) < count:
                raise _truncated(plane.path, offset + count)
            try:
                seg = _decode_segment(data, lay, rows, cols)
            except Exception as exc:  # any codec failure means corrupt data; report the file
                raise InputError(
                    f"image data at byte {offset} cannot be decoded "
                    f"({_COMPRESSIONS.get(lay.compression, lay.compression)}: {exc}).",
                    path=plane.path, fix="the file is corrupt; export the movie again.",
                ) from exc
            out[row:row + rows, col:col + cols] = seg[:lay.height - row, :lay.width - col]
    return out


def _read_block(block: _Block) -> np.ndarray:
    """Dask task: read the z planes of one (t, c) and reduce them to a (1, 1, 1, Y, X) chunk."""
    result: np.ndarray | None = None
    for plane in block.planes:
        img = _read_plane(plane)
        if result is None:
            result = img.astype(np.float32) if block.reduction == "sum" else img
        elif block.reduction == "sum":
            result += img
        else:
            np.maximum(result, img, out=result)
    assert result is not None
    return result.astype(block.dtype, copy=False)[None, None, None]


def _is_contiguous(plane: _Plane, itemsize: int) -> bool:
    """Whether an uncompressed strip plane is one unpadded run of bytes in the file."""
    lay, offsets, counts = plane.layout, plane.offsets, plane.bytecounts
    strip_bytes = lay.rows_per_strip * lay.width * itemsize
    return (all(o == p + c for o, p, c in zip(offsets[1:], offsets[:-1], counts[:-1]))
            and all(c == strip_bytes for c in counts[:-1])
            and sum(counts) >= lay.height * lay.width * itemsize)


def _truncated(path: str | Path, needed: int) -> InputError:
    return InputError(
        f"the file is truncated: image data reach byte {needed} but the file is shorter.",
        path=path, fix="copy or export the movie again (the transfer may have been cut off).",
    )


# --------------------------------------------------------------------------------------------
# Scanning files (offsets, shapes, metadata); runs once at open
# --------------------------------------------------------------------------------------------
@dataclass
class _RawCalibration:
    pixel_size_um: float | None = None
    pixel_size_source: str = "missing"
    frame_interval_s: float | None = None
    frame_interval_source: str = "missing"
    z_step_um: float | None = None


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


def _layout_of(page: tifffile.TiffPage, path: Path) -> _Layout:
    """Decoding layout of a keyframe; InputError for what this reader cannot decode."""
    if page.samplesperpixel > 1:
        raise InputError(
            f"its images have {page.samplesperpixel} samples per pixel (RGB/colour), but a "
            "stack of single-channel planes is expected.", path=path,
            fix="save the colour channels as separate channels (in Fiji: Image > Color > "
                "Make Composite, then save as TIFF).")
    if page.imagedepth > 1:
        raise InputError("it holds volumetric (ImageDepth > 1) pages, which are not supported.",
                         path=path, fix="save the z planes as separate pages (ImageJ/OME-TIFF).")
    compression = int(page.compression)
    if compression not in _COMPRESSIONS:
        raise InputError(
            f"its compression {page.compression.name} is not supported.", path=path,
            fix="save it uncompressed or with LZW, deflate or zstd compression.")
    predictor = int(page.predictor)
    dtype = page.dtype
    if (predictor not in (1, 2, 3) or dtype is None or page.bitspersample not in (8, 16, 32, 64)
            or np.dtype(dtype).kind not in "uif"):
        raise InputError(
            f"its sample type ({page.bitspersample}-bit, {page.sampleformat.name}, predictor "
            f"{predictor}) is not supported.", path=path,
            fix="save it as 8/16-bit integer or 32-bit float TIFF.")
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    rows_per_strip = min(int(page.rowsperstrip) or page.imagelength, page.imagelength)
    return _Layout(int(page.imagelength), int(page.imagewidth),
                   np.dtype(dtype).newbyteorder(page.parent.byteorder).str, compression,
                   predictor, int(page.fillorder), tile, rows_per_strip)


def _n_segments(layout: _Layout) -> int:
    if layout.tile is None:
        return math.ceil(layout.height / layout.rows_per_strip)
    return math.ceil(layout.height / layout.tile[0]) * math.ceil(layout.width / layout.tile[1])


def _series_planes(series: tifffile.TiffPageSeries, path: Path,
                   flatten: bool) -> tuple[np.ndarray, np.ndarray, _Layout]:
    """(T, C, Z) arrays of planes and of page indices of a tifffile series, and its layout.

    ``flatten``: every page is a frame (plain TIFF) unless the series names T, C or Z axes.
    """
    keyframe = series.keyframe
    layout = _layout_of(keyframe, path)
    axes, shape = series.get_axes(False), series.get_shape(False)
    dims = [(a, int(n)) for a, n in zip(axes, shape) if a not in "YXS"]
    if axes.replace("S", "")[-2:] != "YX" or any(a in "YX" for a, _ in dims):
        raise InputError(f"its image axes {axes!r} are not supported.", path=path,
                         fix="save the movie as an ImageJ hyperstack or OME-TIFF.")
    n_pages = math.prod(n for _, n in dims)
    index = np.arange(n_pages)
    named = [a for a, n in dims if a in "TCZ" and n > 1]
    if flatten and not named:
        tcz = index.reshape(n_pages, 1, 1)
    else:
        kept = [(a, n) for a, n in dims if n > 1]
        unknown = [a for a, _ in kept if a not in "TCZ"]
        if len(unknown) > 1 or (unknown and "T" in named):
            raise InputError(f"its axes {axes!r} include dimensions that are not time, "
                             "channel or z.", path=path,
                             fix="save one movie per position / series (T, C, Z, Y, X only).")
        arr = index.reshape([n for _, n in kept])
        letters = ["T" if a not in "TCZ" else a for a, _ in kept]
        for a in "TCZ":
            if a not in letters:
                arr, letters = arr[..., None], [*letters, a]
        tcz = np.transpose(arr, [letters.index(a) for a in "TCZ"])
    bytes_per_plane = layout.height * layout.width * np.dtype(layout.dtype).itemsize
    if len(series) == n_pages and not series.is_truncated:
        layouts = {id(keyframe): layout}
        planes = [_page_plane(series[i], path, layout, layouts) for i in range(n_pages)]
    elif (series.dataoffset is not None and layout.compression == 1 and layout.tile is None
          and layout.predictor == 1):
        # contiguous data after one IFD (ImageJ hyperstacks > 4 GB, truncated series):
        # plane i starts i plane sizes after the first
        contiguous = _Layout(layout.height, layout.width, layout.dtype,
                             fillorder=layout.fillorder, rows_per_strip=layout.height)
        start = int(series.dataoffset)
        planes = [_Plane(str(path), (start + i * bytes_per_plane,), (bytes_per_plane,),
                         contiguous) for i in range(n_pages)]
    else:
        raise InputError(
            f"it holds {len(series)} image planes but its metadata describe {n_pages}.",
            path=path, fix="the file is truncated or corrupt; export the movie again.")
    out = np.empty(n_pages, dtype=object)
    out[:] = planes
    return out[tcz], tcz, layout


def _page_plane(page: tifffile.TiffPage | tifffile.TiffFrame | None, path: Path,
                layout: _Layout, layouts: dict[int, _Layout]) -> _Plane:
    """Offsets of one page; ``layouts`` caches the layout of each keyframe by id."""
    if page is None:
        raise InputError("some image planes its metadata list are missing from the file.",
                         path=path, fix="the file is truncated, or a companion file of a "
                                        "multi-file OME-TIFF is missing; export it again.")
    keyframe = page.keyframe
    page_layout = layouts.get(id(keyframe))
    if page_layout is None:
        page_layout = layouts[id(keyframe)] = _layout_of(keyframe, path)
    if (page_layout.height, page_layout.width, page_layout.dtype) != (
            layout.height, layout.width, layout.dtype):
        raise InputError("its pages differ in size or sample type.", path=path,
                         fix="save the movie with frames of one size and type.")
    offsets = tuple(int(o) for o in page.dataoffsets)
    counts = tuple(int(c) for c in page.databytecounts)
    if len(offsets) != _n_segments(page_layout) or len(counts) != len(offsets):
        raise InputError(f"page {page.index} has {len(offsets)} data segments where "
                         f"{_n_segments(page_layout)} are expected.", path=path,
                         fix="the file is corrupt; export the movie again.")
    return _Plane(str(page.parent.filehandle.path), offsets, counts, page_layout)


def _check_extent(found: _Found, path: Path) -> None:
    """InputError if any plane's data reach past the end of its file (a truncated copy)."""
    ends: dict[str, int] = {}
    for plane in found.planes.flat:
        end = max(o + c for o, c in zip(plane.offsets, plane.bytecounts))
        ends[plane.path] = max(ends.get(plane.path, 0), end)
    for file, end in ends.items():
        if end > Path(file).stat().st_size:
            raise _truncated(file, end)


# ---------------------------------------------------------------------------- calibration --
def _length_um(value: object, unit: str | None) -> float | None:
    if value is None:
        return None
    factor = _LENGTH_UM.get((unit or "µm").strip().lower())
    if factor is None:
        log.warning("unknown length unit %r: ignoring the calibration", unit)
        return None
    number = float(value)
    return number * factor if number > 0 else None


def _time_s(value: object, unit: str | None) -> float | None:
    if value is None:
        return None
    factor = _TIME_S.get((unit or "s").strip().lower())
    if factor is None:
        log.warning("unknown time unit %r: ignoring the frame interval", unit)
        return None
    number = float(value)
    return number * factor if number > 0 else None


def _tiff_resolution(page: tifffile.TiffPage, cal: _RawCalibration) -> None:
    """Pixel size from XResolution + ResolutionUnit (centimeter/inch), if both are given."""
    tag = page.tags.get("XResolution")
    if cal.pixel_size_um is not None or tag is None:
        return
    num, den = tag.value
    per_unit = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(int(page.resolutionunit))
    if num > 0 and den > 0 and per_unit is not None:
        cal.pixel_size_um = per_unit * den / num
        cal.pixel_size_source = "TIFF XResolution"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_images(xml: str) -> list[ElementTree.Element]:
    """The OME Pixels elements of the Images that hold data, in file order."""
    root = ElementTree.fromstring(xml)
    pixels = []
    for image in root:
        if _local(image.tag) != "Image":
            continue
        for px in image:
            if _local(px.tag) == "Pixels" and any(_local(c.tag) == "TiffData" for c in px):
                pixels.append(px)
    return pixels


def _ome_calibration(pixels: ElementTree.Element, page: tifffile.TiffPage) -> _RawCalibration:
    a = pixels.attrib
    cal = _RawCalibration()
    size_x = _length_um(a.get("PhysicalSizeX"), a.get("PhysicalSizeXUnit"))
    size_y = _length_um(a.get("PhysicalSizeY"), a.get("PhysicalSizeYUnit"))
    if size_x is not None:
        cal.pixel_size_um, cal.pixel_size_source = size_x, "OME PhysicalSizeX"
        if size_y is not None and abs(size_y - size_x) > 0.01 * size_x:
            log.warning("pixels are not square (x %g µm, y %g µm); using x", size_x, size_y)
    cal.z_step_um = _length_um(a.get("PhysicalSizeZ"), a.get("PhysicalSizeZUnit"))
    interval = _time_s(a.get("TimeIncrement"), a.get("TimeIncrementUnit"))
    if interval is not None:
        cal.frame_interval_s, cal.frame_interval_source = interval, "OME TimeIncrement"
    else:  # fall back to the time stamps of the planes of the first channel and z plane
        stamps = {}
        for plane in pixels:
            p = plane.attrib
            if (_local(plane.tag) == "Plane" and "DeltaT" in p
                    and int(p.get("TheC", 0)) == 0 and int(p.get("TheZ", 0)) == 0):
                stamps[int(p.get("TheT", 0))] = _time_s(p["DeltaT"], p.get("DeltaTUnit")) or 0.0
        if len(stamps) > 1:
            times = np.array([stamps[t] for t in sorted(stamps)])
            step = float(np.median(np.diff(times)))
            if step > 0:
                cal.frame_interval_s, cal.frame_interval_source = step, "OME Plane DeltaT"
    _tiff_resolution(page, cal)
    return cal


def _imagej_calibration(meta: dict, page: tifffile.TiffPage) -> _RawCalibration:
    cal = _RawCalibration()
    unit = str(meta.get("unit", "")).strip().lower()
    tag = page.tags.get("XResolution")
    if unit in _LENGTH_UM:
        if tag is not None and tag.value[0] > 0 and tag.value[1] > 0:
            cal.pixel_size_um = _LENGTH_UM[unit] * tag.value[1] / tag.value[0]
            cal.pixel_size_source = "ImageJ resolution"
        if meta.get("spacing"):
            cal.z_step_um = _length_um(meta["spacing"], unit)
    elif not unit:
        _tiff_resolution(page, cal)
    interval = _time_s(meta.get("finterval"), str(meta.get("tunit", "s")))
    if interval is not None:
        cal.frame_interval_s, cal.frame_interval_source = interval, "ImageJ finterval"
    return cal


def _imagej_channel_names(meta: dict, tcz_index: np.ndarray) -> tuple[str, ...] | None:
    """Channel names from ImageJ slice labels, when every plane of a channel has the same one."""
    labels = meta.get("Labels")
    n_c = tcz_index.shape[1]
    if not labels or len(labels) != tcz_index.size:
        return None
    names = []
    for c in range(n_c):
        found = {labels[int(i)] for i in tcz_index[:, c, :].flat}
        if len(found) != 1 or not next(iter(found)):
            return None
        names.append(str(next(iter(found))))
    return tuple(names) if len(set(names)) == n_c else None


# ------------------------------------------------------------------------------- scanning --
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


def _native(layout: _Layout) -> np.dtype:
    return np.dtype(layout.dtype).newbyteorder("=")


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
