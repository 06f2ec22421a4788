"""Tests of migradetect.io: every format, calibration, laziness, distributed reads, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile

from migradetect import _tiffplanes, io
from migradetect.errors import InputError
from migradetect.io import (
    count_positions,
    describe,
    find_movie_files,
    is_frame_folder,
    open_movie,
    open_movies,
)


def _stack(shape: tuple[int, ...], dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """Seeded random data (distinct per plane) in the dtype's range."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    top = min(np.iinfo(dtype).max, 60000)
    return rng.integers(0, top, shape).astype(dtype)


def _tczyx(movie: io.Movie) -> np.ndarray:
    return movie.data.compute(scheduler="sync")


# ----------------------------------------------------------------------------- OME-TIFF --
def test_ome_tczyx_channels_units_and_max_projection(tmp_path: Path) -> None:
    data = _stack((3, 2, 4, 16, 20))
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
        "axes": "TCZYX", "PhysicalSizeX": 150, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 150, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5,
        "TimeIncrement": 1.5, "TimeIncrementUnit": "min", "Channel": {"Name": ["GFP", "WGA"]}})
    movie = open_movie(path)
    assert movie.name == "cells" and movie.source_format == "ome" and movie.position is None
    assert movie.data.shape == (3, 2, 1, 16, 20) and movie.data.dtype == np.uint16
    assert movie.data.chunksize == (1, 1, 1, 16, 20)
    assert movie.channel_names == ("GFP", "WGA") and movie.channel_names_from_file
    assert movie.n_z == 4 and movie.z_reduction == "max" and movie.n_frames == 3
    np.testing.assert_array_equal(_tczyx(movie)[:, :, 0], data.max(axis=2))
    cal = movie.calibration
    assert cal.pixel_size_um == pytest.approx(0.15) and cal.pixel_size_source == "OME PhysicalSizeX"
    assert cal.frame_interval_s == pytest.approx(90.0)
    assert cal.frame_interval_source == "OME TimeIncrement"
    assert cal.z_step_um == pytest.approx(0.5)
    # channel selection by name and by index
    wga = open_movie(path, channel="WGA")
    assert wga.data.shape == (3, 1, 1, 16, 20) and wga.channel_names == ("WGA",)
    np.testing.assert_array_equal(_tczyx(wga)[:, 0, 0], data[:, 1].max(axis=1))
    np.testing.assert_array_equal(movie.frames("GFP").compute(), data[:, 0].max(axis=1))
    assert movie.channel_index(1) == 1
    text = describe(movie)
    for part in ("cells.ome.tif", "ome", "TCZYX", "(3, 2, 1, 16, 20)", "uint16", "GFP", "WGA",
                 "0.15 µm", "OME PhysicalSizeX", "90 s", "OME TimeIncrement", "max of 4 planes"):
        assert part in text


@pytest.mark.parametrize("z", ["sum", 0, 3])
def test_z_reduction_sum_and_plane(tmp_path: Path, z: str | int) -> None:
    data = _stack((2, 1, 4, 8, 8))
    path = tmp_path / "zstack.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "TCZYX", "PhysicalSizeX": 0.2, "TimeIncrement": 30})
    movie = open_movie(path, z=z)
    got = _tczyx(movie)[:, :, 0]
    assert movie.data.shape == (2, 1, 1, 8, 8) and movie.n_z == 4
    if z == "sum":
        assert movie.z_reduction == "sum" and movie.data.dtype == np.float32
        np.testing.assert_allclose(got, data.sum(axis=2, dtype=np.float64), rtol=1e-6)
    else:
        assert movie.z_reduction == f"plane {z}" and movie.data.dtype == np.uint16
        np.testing.assert_array_equal(got, data[:, :, z])


def test_z_index_out_of_range_names_file(tmp_path: Path) -> None:
    path = tmp_path / "zstack.ome.tif"
    tifffile.imwrite(path, _stack((2, 3, 8, 8)), ome=True, photometric="minisblack",
                     metadata={"axes": "TZYX", "PhysicalSizeX": 0.2, "TimeIncrement": 30})
    with pytest.raises(InputError, match=r"zstack\.ome\.tif.*z plane 3 is out of range"):
        open_movie(path, z=3)


def test_ome_frame_interval_from_plane_delta_t(tmp_path: Path) -> None:
    path = tmp_path / "dt.ome.tif"
    tifffile.imwrite(path, _stack((4, 2, 8, 8)), ome=True, photometric="minisblack", metadata={
        "axes": "TCYX", "PhysicalSizeX": 0.2,
        "Plane": {"DeltaT": [0, 0, 0.5, 0.5, 1, 1, 1.5, 1.5], "DeltaTUnit": ["min"] * 8}})
    cal = open_movie(path).calibration
    assert cal.frame_interval_s == pytest.approx(30.0)
    assert cal.frame_interval_source == "OME Plane DeltaT"


def test_multi_position_ome(tmp_path: Path) -> None:
    first, second = _stack((4, 2, 8, 8), seed=1), _stack((3, 2, 8, 8), seed=2)
    path = tmp_path / "plate.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(first, photometric="minisblack",
                 metadata={"axes": "TCYX", "PhysicalSizeX": 0.2, "TimeIncrement": 10})
        tw.write(second, photometric="minisblack",
                 metadata={"axes": "TCYX", "PhysicalSizeX": 0.3, "TimeIncrement": 20})
    assert count_positions(path) == 2
    movies = open_movies(path)
    assert [m.name for m in movies] == ["plate_p0", "plate_p1"]
    assert [m.position for m in movies] == [0, 1]
    np.testing.assert_array_equal(_tczyx(movies[0])[:, :, 0], first)
    np.testing.assert_array_equal(_tczyx(movies[1])[:, :, 0], second)
    assert movies[1].calibration.pixel_size_um == pytest.approx(0.3)
    assert movies[1].calibration.frame_interval_s == pytest.approx(20.0)
    one = open_movie(path, position=1)
    assert one.name == "plate_p1"
    np.testing.assert_array_equal(_tczyx(one)[:, :, 0], second)
    with pytest.raises(InputError, match=r"plate\.ome\.tif.*2 positions.*position="):
        open_movie(path)
    with pytest.raises(InputError, match=r"plate\.ome\.tif.*position 2 is out of range"):
        open_movie(path, position=2)


# ------------------------------------------------------------------------------- ImageJ --
@pytest.mark.parametrize(("unit", "per_unit", "expected_um"), [
    ("um", 1 / 0.2, 0.2), ("micron", 1 / 0.25, 0.25), ("\\u00B5m", 1 / 0.1, 0.1),
    ("nm", 1 / 130, 0.13),
])
def test_imagej_hyperstack_calibration(tmp_path: Path, unit: str, per_unit: float,
                                       expected_um: float) -> None:
    data = _stack((3, 2, 2, 16, 12))  # TZCYX
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(per_unit, per_unit),
                     metadata={"axes": "TZCYX", "spacing": 0.5, "unit": unit, "finterval": 45})
    movie = open_movie(path, z="max")
    assert movie.source_format == "imagej" and movie.name == "hyper"
    assert movie.data.shape == (3, 2, 1, 16, 12) and movie.n_z == 2
    np.testing.assert_array_equal(_tczyx(movie)[:, :, 0], data.max(axis=1))
    cal = movie.calibration
    assert cal.pixel_size_um == pytest.approx(expected_um, rel=1e-5)
    assert cal.pixel_size_source == "ImageJ resolution"
    assert cal.frame_interval_s == pytest.approx(45.0)
    assert cal.frame_interval_source == "ImageJ finterval"
    assert cal.z_step_um == pytest.approx(0.5e-3 if unit == "nm" else 0.5)  # spacing in unit


def test_imagej_single_ifd_contiguous_offsets(tmp_path: Path) -> None:
    """Big ImageJ hyperstacks keep one IFD; plane offsets are computed arithmetically."""
    data = _stack((5, 2, 16, 20))
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, imagej=True, truncate=True, resolution=(5, 5),
                     metadata={"axes": "TCYX", "unit": "um", "finterval": 2.0})
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # really a single IFD
    movie = open_movie(path)
    assert movie.data.shape == (5, 2, 1, 16, 20)
    np.testing.assert_array_equal(_tczyx(movie)[:, :, 0], data)
    assert movie.calibration.frame_interval_s == 2.0


def test_imagej_channel_names_from_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, _stack((2, 2, 8, 8)), imagej=True, resolution=(5, 5), metadata={
        "axes": "TCYX", "unit": "um", "finterval": 2.0, "Labels": ["GFP", "DNA"] * 2})
    movie = open_movie(path)
    assert movie.channel_names == ("GFP", "DNA")
    with pytest.raises(InputError, match=r"labels\.tif.*no channel named 'mCherry'.*GFP.*DNA"):
        open_movie(path, channel="mCherry")


# -------------------------------------------------------------------------- plain TIFF --
@pytest.mark.parametrize(("unit", "per_unit", "expected_um"), [
    ("CENTIMETER", 1e4 / 0.2, 0.2), ("INCH", 25400 / 0.16, 0.16)])
def test_plain_multipage_resolution(tmp_path: Path, unit: str, per_unit: float,
                                    expected_um: float) -> None:
    data = _stack((5, 16, 20))
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, data, photometric="minisblack", resolution=(per_unit, per_unit),
                     resolutionunit=unit)
    movie = open_movie(path, frame_interval_s=30)
    assert movie.source_format == "plain" and movie.name == "plain"
    assert count_positions(path) == 1
    assert movie.data.shape == (5, 1, 1, 16, 20)
    np.testing.assert_array_equal(_tczyx(movie)[:, 0, 0], data)
    assert movie.calibration.pixel_size_um == pytest.approx(expected_um, rel=1e-6)
    assert movie.calibration.pixel_size_source == "TIFF XResolution"
    assert movie.calibration.frame_interval_source == "override (file had none)"


@pytest.mark.parametrize(("dtype", "options"), [
    (np.uint16, {"compression": "lzw"}),
    (np.uint16, {"compression": "lzw", "predictor": True}),
    (np.uint16, {"compression": "zlib", "predictor": True}),
    (np.uint16, {"compression": "deflate"}),
    (np.uint16, {"compression": "zstd", "predictor": True}),
    (np.uint8, {"compression": "zstd"}),
    (np.float32, {"compression": "zlib", "predictor": 3}),
    (np.float32, {"compression": "lzw", "predictor": 3, "byteorder": ">"}),
    (np.uint16, {"compression": "lzw", "predictor": True, "byteorder": ">", "bigtiff": True}),
    (np.uint16, {"bigtiff": True}),
    (np.uint16, {"byteorder": ">"}),
    (np.uint16, {"tile": (16, 16)}),
    (np.uint16, {"tile": (16, 16), "compression": "zlib", "predictor": True}),
    (np.float32, {"tile": (16, 32), "compression": "zstd", "predictor": 3}),
    (np.uint16, {"rowsperstrip": 7, "compression": "lzw"}),
    (np.uint8, {"rowsperstrip": 5}),
    (np.uint16, {"compression": "packbits"}),
])
def test_compression_tiles_strips_byteorder(tmp_path: Path, dtype, options: dict) -> None:
    data = _stack((3, 37, 45), dtype=dtype)  # odd sizes: partial strips and tiles
    path = tmp_path / "variant.tif"
    write = {k: v for k, v in options.items() if k not in ("bigtiff", "byteorder")}
    with tifffile.TiffWriter(path, bigtiff=options.get("bigtiff", False),
                             byteorder=options.get("byteorder", "<")) as tw:
        for frame in data:
            tw.write(frame, photometric="minisblack", **write)
    movie = open_movie(path, pixel_size_um=0.2, frame_interval_s=10)
    assert movie.data.dtype == np.dtype(dtype) and movie.data.shape == (3, 1, 1, 37, 45)
    np.testing.assert_array_equal(_tczyx(movie)[:, 0, 0], data)


def test_single_frame_needs_no_frame_interval(tmp_path: Path) -> None:
    data = _stack((24, 20))
    path = tmp_path / "fixed.tif"
    tifffile.imwrite(path, data, photometric="minisblack", resolution=(5e4, 5e4),
                     resolutionunit="CENTIMETER")
    movie = open_movie(path)
    assert movie.data.shape == (1, 1, 1, 24, 20) and movie.n_frames == 1
    assert movie.calibration.frame_interval_s is None
    assert movie.calibration.frame_interval_source == "missing"
    np.testing.assert_array_equal(_tczyx(movie)[0, 0, 0], data)


# ------------------------------------------------------------------------------ folders --
def test_folder_of_frames_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "run 1"
    folder.mkdir()
    data = _stack((12, 10, 14))
    for t in np.random.default_rng(3).permutation(12):  # write in shuffled order
        tifffile.imwrite(folder / f"img_t{t + 1}.TIF", data[t], photometric="minisblack")
    (folder / ".hidden.tif").write_bytes(b"not a tiff")
    movie = open_movie(folder, pixel_size_um=0.2, frame_interval_s=60)
    assert movie.source_format == "folder" and movie.name == "run 1"
    assert movie.data.shape == (12, 1, 1, 10, 14)
    np.testing.assert_array_equal(_tczyx(movie)[:, 0, 0], data)
    assert [m.name for m in open_movies(folder, pixel_size_um=0.2, frame_interval_s=60)] == [
        "run 1"]
    assert count_positions(folder) == 1
    names = [p.name for p in find_movie_files(folder)]
    assert names[:3] == ["img_t1.TIF", "img_t2.TIF", "img_t3.TIF"] and names[-1] == "img_t12.TIF"


def test_find_movie_files_and_is_frame_folder(tmp_path: Path) -> None:
    for name in ("b10.tif", "b2.TIFF", "a.ome.tif", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.tif").mkdir()
    assert [p.name for p in find_movie_files(tmp_path)] == ["a.ome.tif", "b2.TIFF", "b10.tif"]
    assert not is_frame_folder(tmp_path)  # notes.txt and a sub-folder
    frames = tmp_path / "frames"
    frames.mkdir()
    assert not is_frame_folder(frames)  # empty
    (frames / "f1.tif").write_bytes(b"x")
    (frames / ".DS_Store").write_bytes(b"x")
    assert is_frame_folder(frames)
    assert not is_frame_folder(frames / "f1.tif")


def test_folder_mixed_sizes_and_dtypes(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "f1.tif", _stack((8, 8)), photometric="minisblack")
    tifffile.imwrite(folder / "f2.tif", _stack((8, 9)), photometric="minisblack")
    with pytest.raises(InputError, match=r"f2\.tif.*8x9.*f1\.tif.*8x8"):
        open_movie(folder, pixel_size_um=0.2, frame_interval_s=1)
    tifffile.imwrite(folder / "f2.tif", _stack((8, 8), dtype=np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"f2\.tif.*uint8.*same size and type"):
        open_movie(folder, pixel_size_um=0.2, frame_interval_s=1)


def test_empty_folder_and_folder_without_tiffs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty.*folder is empty"):
        open_movie(empty)
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match=r"empty.*no TIFF files"):
        open_movie(empty)


# ------------------------------------------------------------------------- calibration --
def test_missing_calibration_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, _stack((3, 8, 8)), photometric="minisblack")
    with pytest.raises(InputError, match=r"bare\.tif.*no pixel size.*--pixel-size UM.*"
                                         r"pixel_size_um="):
        open_movie(path)
    with pytest.raises(InputError, match=r"bare\.tif.*no frame interval.*--frame-interval S"
                                         r".*frame_interval_s="):
        open_movie(path, pixel_size_um=0.2)
    movie = open_movie(path, require_calibration=False)
    cal = movie.calibration
    assert cal.pixel_size_um is None and cal.frame_interval_s is None
    assert cal.pixel_size_source == "missing" and cal.frame_interval_source == "missing"
    assert "unknown" in describe(movie)


def test_override_replaces_file_value(tmp_path: Path) -> None:
    path = tmp_path / "cal.ome.tif"
    tifffile.imwrite(path, _stack((3, 8, 8)), ome=True, photometric="minisblack",
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.2, "TimeIncrement": 30})
    movie = open_movie(path, pixel_size_um=0.11, frame_interval_s=60)
    cal = movie.calibration
    assert cal.pixel_size_um == 0.11 and cal.frame_interval_s == 60
    assert cal.pixel_size_source == "override (file said 0.2 µm)"
    assert cal.frame_interval_source == "override (file said 30 s)"


@pytest.mark.parametrize(("pixel", "interval", "match"), [
    (100.0, 30.0, "pixel size"), (0.001, 30.0, "pixel size"),
    (0.2, 0.0, "frame interval"), (0.2, -5.0, "frame interval"),
    (0.2, 2 * 86400.0, "frame interval")])
def test_absurd_calibration_override(tmp_path: Path, pixel: float, interval: float,
                                     match: str) -> None:
    path = tmp_path / "cal.tif"
    tifffile.imwrite(path, _stack((3, 8, 8)), photometric="minisblack")
    with pytest.raises(InputError, match=rf"cal\.tif.*{match}.*not plausible"):
        open_movie(path, pixel_size_um=pixel, frame_interval_s=interval)


def test_absurd_file_calibration(tmp_path: Path) -> None:
    path = tmp_path / "dpi.tif"  # 72 dpi: a screen resolution, not a microscope calibration
    tifffile.imwrite(path, _stack((3, 8, 8)), photometric="minisblack", resolution=(72, 72),
                     resolutionunit="INCH")
    with pytest.raises(InputError, match=r"dpi\.tif.*pixel size \(352\.778 µm.*not plausible"):
        open_movie(path, frame_interval_s=10)
    movie = open_movie(path, require_calibration=False)
    assert movie.calibration.pixel_size_um is None
    assert movie.calibration.pixel_size_source.startswith("missing (file said 352.778 µm")
    fixed = open_movie(path, pixel_size_um=0.2, frame_interval_s=10)
    assert fixed.calibration.pixel_size_source == "override (file said 352.778 µm)"


# --------------------------------------------------------------------- lazy / parallel --
def test_open_reads_no_pixels_and_one_task_per_frame(tmp_path: Path, monkeypatch) -> None:
    data = _stack((6, 2, 3, 8, 8))
    path = tmp_path / "lazy.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "TCZYX", "PhysicalSizeX": 0.2, "TimeIncrement": 30})
    reads: list[_tiffplanes._Plane] = []
    real = _tiffplanes._read_plane

    def counting(plane: _tiffplanes._Plane) -> np.ndarray:
        reads.append(plane)
        return real(plane)

    monkeypatch.setattr(_tiffplanes, "_read_plane", counting)
    movie = open_movie(path)
    assert reads == []
    graph = dict(movie.data.__dask_graph__())
    assert len(graph) == 6 * 2  # one task per (t, c); z planes are reduced inside it
    frame = movie.data[4, 1].compute(scheduler="sync")
    assert len(reads) == 3  # the 3 z planes of that one frame and channel, nothing else
    np.testing.assert_array_equal(frame[0], data[4, 1].max(axis=0))
    # the task arguments are plain picklable values (no open file handles)
    task_args = pickle.loads(pickle.dumps(movie.data))
    np.testing.assert_array_equal(task_args[2, 0, 0].compute(scheduler="sync"),
                                  data[2, 0].max(axis=0))


def test_distributed_cluster_matches_local(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    data = _stack((8, 2, 24, 20))
    path = tmp_path / "dist.tif"
    tifffile.imwrite(path, data, imagej=True, truncate=True, resolution=(5, 5),
                     metadata={"axes": "TCYX", "unit": "um", "finterval": 2.0})
    movie = open_movie(path)
    sums = movie.data.sum(axis=(1, 2, 3, 4), dtype=np.int64)
    local = sums.compute(scheduler="threads")
    np.testing.assert_array_equal(local, data.sum(axis=(1, 2, 3), dtype=np.int64))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        remote = client.compute(sums).result(timeout=60)
    np.testing.assert_array_equal(remote, local)


# ---------------------------------------------------------------------------- bad input --
def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("these are my notes, not an image\n")
    with pytest.raises(InputError, match=r"notes\.tif.*cannot be read as a TIFF"):
        open_movie(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif.*empty \(0 bytes\)"):
        open_movie(path)


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome", "lzw", "imagej_single_ifd"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_file(tmp_path: Path, kind: str, keep: float) -> None:
    data = _stack((6, 32, 32))
    path = tmp_path / f"cut_{kind}.tif"
    options = {
        "plain": {"photometric": "minisblack"},
        "imagej": {"imagej": True, "metadata": {"axes": "TYX"}},
        "ome": {"ome": True, "photometric": "minisblack", "metadata": {"axes": "TYX"}},
        "lzw": {"photometric": "minisblack", "compression": "lzw"},
        "imagej_single_ifd": {"imagej": True, "truncate": True, "metadata": {"axes": "TYX"}},
    }[kind]
    tifffile.imwrite(path, data, **options)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(InputError, match=rf"cut_{kind}\.tif.*truncated"):
        open_movie(path, pixel_size_um=0.2, frame_interval_s=10)


def test_rgb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, _stack((2, 8, 8, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"colour\.tif.*3 samples per pixel"):
        open_movie(path, pixel_size_um=0.2, frame_interval_s=10)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing_here\.tif.*does not exist"):
        open_movie(tmp_path / "nothing_here.tif")


def test_channel_index_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, _stack((2, 2, 8, 8)), ome=True, photometric="minisblack",
                     metadata={"axes": "TCYX", "PhysicalSizeX": 0.2, "TimeIncrement": 30})
    with pytest.raises(InputError, match=r"two\.ome\.tif.*channel index 5.*0: C0, 1: C1"):
        open_movie(path, channel=5)


def test_inputs_are_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "ro.tif"
    tifffile.imwrite(path, _stack((3, 8, 8)), photometric="minisblack")
    path.chmod(0o444)
    before = path.stat().st_mtime_ns
    movie = open_movie(path, pixel_size_um=0.2, frame_interval_s=1)
    with dask.config.set(scheduler="sync"):
        movie.data.sum().compute()
    assert path.stat().st_mtime_ns == before


def test_movie_from_array() -> None:
    stack = _stack((3, 2, 10, 12))
    movie = io.movie_from_array(stack, pixel_size_um=0.2, frame_interval_s=30,
                                channel_names=("GFP", "WGA"))
    assert movie.data.shape == (3, 2, 1, 10, 12) and movie.data.chunksize == (1, 1, 1, 10, 12)
    np.testing.assert_array_equal(movie.frames("WGA").compute(), stack[:, 1])
    assert movie.calibration.pixel_size_source == "given"
    with pytest.raises(InputError, match="pixel size you gave"):
        io.movie_from_array(stack, pixel_size_um=20, frame_interval_s=30)
