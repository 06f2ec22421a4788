"""TIFF image planes: where each plane lies in a file, and reading it back.

Private helper of :mod:`migradetect.io`. At open, :func:`_series_planes` turns a tifffile
series into a ``(T, C, Z)`` array of :class:`_Plane` (file path, strip/tile offsets and byte
counts, decoding :class:`_Layout`); inside dask tasks, :func:`_read_block` reads the planes
of one (t, c) by seeking to those offsets. Task arguments are plain picklable values, so the
same graph runs on a ``dask.distributed`` cluster.

The small strip/tile decoder is written here on purpose: tifffile decodes pages only through
``TiffFile`` objects that hold open file handles (not picklable), so the tasks call the
imagecodecs codecs (via tifffile's codec table) on bytes they read themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from migradetect.errors import InputError

#: TIFF compressions decoded here (decoders from imagecodecs via tifffile's codec table)
_COMPRESSIONS = {1: "none", 5: "LZW", 8: "deflate", 32946: "deflate", 32773: "packbits",
                 34925: "LZMA", 50000: "zstd"}


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
# Plane geometry of a tifffile series (runs once at open)
# --------------------------------------------------------------------------------------------
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


def _native(layout: _Layout) -> np.dtype:
    return np.dtype(layout.dtype).newbyteorder("=")
