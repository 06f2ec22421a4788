"""Builders of a corpus of small movie files, good and bad, for the batch tests.

Every builder writes one movie (a TIFF file or a folder of frames) into ``folder`` and returns
its path. ``MUST_FAIL`` movies must each give one clear row in ``failures.csv`` while the
batch goes on; ``MUST_SUCCEED`` movies must be analysed. The movies are tiny (64 x 64 px, a
few frames) so that a batch over all of them takes seconds. Calibration is 0.15 µm/px and
30 s/frame unless a builder says otherwise.

The picture: a cell (a broad Gaussian blob, 400 counts) drifting right by 1 px per frame over
a background of 100 counts with Gaussian noise (sigma 5), and one migrasome (a 1.5 px-sigma
spot, 2000 counts) at a fixed place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

PIXEL_SIZE_UM = 0.15
FRAME_INTERVAL_S = 30.0
SIZE = 64


def scene(n_frames: int = 4, *, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(T, Y, X) float64 frames of the picture described in the module docstring."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for t in range(n_frames):
        img = 100.0 + rng.normal(0.0, 5.0, (size, size))
        img += 400.0 * np.exp(-((yy - size * 0.45) ** 2 + (xx - size * 0.45 - t) ** 2) / (2 * 8**2))
        img += 2000.0 * np.exp(-((yy - size * 0.3) ** 2 + (xx - size * 0.7) ** 2) / (2 * 1.5**2))
        frames.append(img)
    return np.stack(frames)


def as_uint16(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 65535).astype(np.uint16)


def write_imagej(path: Path, data: np.ndarray, *, axes: str = "TYX",
                 pixel_size_um: float | None = PIXEL_SIZE_UM,
                 frame_interval_s: float | None = FRAME_INTERVAL_S,
                 extra: dict | None = None, **kwargs: object) -> Path:
    """An ImageJ hyperstack with spacing (resolution) and finterval."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict = {"axes": axes, "unit": "um"}
    if frame_interval_s is not None:
        metadata["finterval"] = frame_interval_s
    metadata.update(extra or {})
    resolution = None if pixel_size_um is None else (1 / pixel_size_um, 1 / pixel_size_um)
    tifffile.imwrite(path, data, imagej=True, resolution=resolution, metadata=metadata,
                     **kwargs)
    return path


def write_ome(path: Path, data: np.ndarray, *, axes: str = "TYX",
              channel_names: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict = {"axes": axes, "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeY": PIXEL_SIZE_UM,
                      "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
                      "TimeIncrement": FRAME_INTERVAL_S, "TimeIncrementUnit": "s"}
    if channel_names:
        metadata["Channel"] = {"Name": channel_names}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


# ---------------------------------------------------------------------------- must fail --


def truncated(folder: Path) -> Path:
    """A valid movie cut to 60 % of its bytes (an interrupted copy)."""
    path = write_imagej(folder / "truncated.tif", as_uint16(scene()))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def zero_bytes(folder: Path) -> Path:
    path = folder / "zero_bytes.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def not_a_tiff(folder: Path) -> Path:
    """A text file named .tif."""
    path = folder / "not_a_tiff.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("frame,intensity\n0,100\n", encoding="utf-8")
    return path


def rgb(folder: Path) -> Path:
    """An RGB (3 samples per pixel) movie: a colour export, not a fluorescence channel stack."""
    frames = (scene() / 16).clip(0, 255).astype(np.uint8)
    data = np.stack([frames] * 3, axis=-1)
    path = folder / "rgb.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="rgb", resolution=(1 / PIXEL_SIZE_UM,) * 2)
    return path


def mixed_frame_sizes(folder: Path) -> Path:
    """A frame folder whose last frame is smaller than the others."""
    movie = folder / "mixed_frame_sizes"
    movie.mkdir(parents=True, exist_ok=True)
    frames = as_uint16(scene())
    for t, frame in enumerate(frames):
        if t == len(frames) - 1:
            frame = frame[:32, :32]
        write_imagej(movie / f"t{t:03d}.tif", frame, axes="YX")
    return movie


def no_calibration(folder: Path) -> Path:
    """A plain TIFF stack without pixel size or frame interval."""
    path = folder / "no_calibration.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, as_uint16(scene()), photometric="minisblack")
    return path


def absurd_calibration(folder: Path) -> Path:
    """50 µm per pixel: a unit mistake (a microscope pixel is ~0.05-1 µm)."""
    return write_imagej(folder / "absurd_calibration.tif", as_uint16(scene()), pixel_size_um=50.0)


def all_nan(folder: Path) -> Path:
    """float32 frames that are NaN everywhere (a broken export)."""
    data = np.full((4, SIZE, SIZE), np.nan, dtype=np.float32)
    return write_imagej(folder / "all_nan.tif", data)


def channel_missing(folder: Path) -> Path:
    """A two-channel movie named GFP/BF: a config asking for channel 'TSPAN4' cannot run it."""
    data = np.stack([as_uint16(scene()), as_uint16(scene(seed=1) / 2)], axis=1)
    return write_ome(folder / "channel_missing.ome.tif", data, axes="TCYX",
                     channel_names=["GFP", "BF"])


# ------------------------------------------------------------------------- must succeed --


def good_imagej(folder: Path, name: str = "good_imagej") -> Path:
    return write_imagej(folder / f"{name}.tif", as_uint16(scene()))


def good_ome(folder: Path) -> Path:
    return write_ome(folder / "good_ome.ome.tif", as_uint16(scene(seed=2)))


def frame_folder(folder: Path) -> Path:
    """One TIFF per frame, numbered so that natural order differs from text order."""
    movie = folder / "frame_folder"
    movie.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(as_uint16(scene(seed=3))):
        write_imagej(movie / f"t{t}.tif", frame, axes="YX")
    return movie


def single_frame(folder: Path) -> Path:
    """T = 1 (a fixed stain): counts, no tracks; needs no frame interval."""
    return write_imagej(folder / "single_frame.tif", as_uint16(scene(1))[0], axes="YX",
                        frame_interval_s=None)


def all_black(folder: Path) -> Path:
    return write_imagej(folder / "all_black.tif", np.zeros((4, SIZE, SIZE), np.uint16))


def saturated(folder: Path) -> Path:
    """Half the field clipped at 65535."""
    data = as_uint16(scene() * 40)
    data[:, :, : SIZE // 2] = 65535
    return write_imagej(folder / "saturated.tif", data)


def few_nans(folder: Path) -> Path:
    """float32 data with a few NaN pixels (dead pixels in a processed export)."""
    data = scene().astype(np.float32)
    data[:, 5, 7] = np.nan
    data[2, 40:42, 10] = np.nan
    return write_imagej(folder / "few_nans.tif", data)


def unicode_name(folder: Path) -> Path:
    return write_imagej(folder / "zelle ü 1 – µ.tif", as_uint16(scene(seed=4)))


def two_channels(folder: Path) -> Path:
    """Channel 0 migrasomes, channel 1 cells."""
    data = np.stack([as_uint16(scene(seed=5)), as_uint16(scene(seed=6) / 2)], axis=1)
    return write_imagej(folder / "two_channels.tif", data, axes="TCYX")


def z_stack(folder: Path) -> Path:
    """Three z planes per frame (reduced by max)."""
    base = scene(seed=7)
    data = np.stack([base * 0.5, base, base * 0.7], axis=1)
    return write_imagej(folder / "z_stack.tif", as_uint16(data), axes="TZYX",
                        extra={"spacing": 0.5})


def multi_position(folder: Path) -> Path:
    """An OME-TIFF with two positions (series): two movies, ``multi_position_p0``/``_p1``."""
    path = folder / "multi_position.ome.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"axes": "TYX", "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeY": PIXEL_SIZE_UM,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
                "TimeIncrement": FRAME_INTERVAL_S, "TimeIncrementUnit": "s"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        for seed in (8, 9):
            tif.write(as_uint16(scene(seed=seed)), metadata=metadata)
    return path


def compressed(folder: Path) -> Path:
    return write_imagej(folder / "compressed.tif", as_uint16(scene(seed=10)),
                        compression="zlib")


def uint8(folder: Path) -> Path:
    return write_imagej(folder / "uint8.tif", (scene(seed=11) / 10).clip(0, 255).astype(np.uint8))


MUST_FAIL: dict[str, Callable[[Path], Path]] = {
    "truncated": truncated,
    "zero_bytes": zero_bytes,
    "not_a_tiff": not_a_tiff,
    "rgb": rgb,
    "mixed_frame_sizes": mixed_frame_sizes,
    "no_calibration": no_calibration,
    "absurd_calibration": absurd_calibration,
}

#: Movie name -> builder (the multi-position file gives two movies).
MUST_SUCCEED: dict[str, Callable[[Path], Path]] = {
    "good_imagej": good_imagej,
    "good_ome": good_ome,
    "frame_folder": frame_folder,
    "single_frame": single_frame,
    "all_black": all_black,
    "saturated": saturated,
    "zelle ü 1 – µ": unicode_name,
    "two_channels": two_channels,
    "z_stack": z_stack,
    "multi_position": multi_position,
    "compressed": compressed,
    "uint8": uint8,
}


#: Float movies with NaN pixels: ``all_nan`` must fail, ``few_nans`` must succeed.
NAN_KINDS: dict[str, Callable[[Path], Path]] = {"all_nan": all_nan, "few_nans": few_nans}


def build(root: Path, kinds: dict[str, Callable[[Path], Path]]) -> list[Path]:
    """Write every movie of ``kinds`` into ``root``; return their paths."""
    return [build_one(root) for build_one in kinds.values()]


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under ``root``: (size, mtime_ns, sha256 of content or '')."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns,
                                             digest)
    st = root.stat()
    out["."] = (0, st.st_mtime_ns, "")
    return out


def csv_bytes(out_dir: Path) -> dict[str, bytes]:
    """Every CSV under ``out_dir`` (relative path -> bytes): what byte-identical runs compare."""
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(out_dir.rglob("*.csv"))}
