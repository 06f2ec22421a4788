"""Writing a simulation (movie + truth folder) and reading the truth back.

Private helper of :mod:`migradetect.synthetic` (re-exported there). Layout::

    OUT/movie.ome.tif | movie.tif | movie/t0001.tif ...
    OUT/truth/{migrasomes,tracks,cells,cell_frames,fibers,drift,confounders}.csv
    OUT/truth/labels.zarr   (arrays ``cells``, ``fibers``; one chunk per frame)
    OUT/truth/truth.json    (parameters, measured SNR per structure, PSF used, seeds)
    OUT/truth/movie_clean.tif  (noise-free render, only with ``write_clean=True``)

Formats: ``ome`` (OME-TIFF: PhysicalSizeX/Y in µm, TimeIncrement in s, channel names),
``imagej`` (ImageJ hyperstack: resolution, unit "micron", finterval), ``plain`` (multi-page
TIFF whose only calibration is XResolution/YResolution in pixels per centimetre: it has no
frame interval, so give one when analysing it, e.g. ``--frame-interval 60``) and ``folder``
(one plain TIFF per frame, ``t0001.tif`` ...; same caveat).

Every file is written under a temporary name and renamed when complete; an existing,
non-empty output folder is refused rather than overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import tifffile
import zarr

from migradetect.errors import InputError, OutputError

if TYPE_CHECKING:
    from migradetect.synthetic import Simulation

FORMATS = ("ome", "imagej", "plain", "folder")
TABLES = ("migrasomes", "tracks", "cells", "cell_frames", "fibers", "drift", "confounders")
_NAMES = {"ome": "movie.ome.tif", "imagej": "movie.tif", "plain": "movie.tif", "folder": "movie"}


def _clean_json(o: Any) -> Any:
    """Replace NaN and infinities by None (JSON has no NaN), recursively."""
    if isinstance(o, dict):
        return {str(k): _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _ome_meta(sim: Simulation) -> dict:
    px = sim.pixel_size_um
    return {"axes": "TCYX", "PhysicalSizeX": px, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": px,
            "PhysicalSizeYUnit": "µm", "TimeIncrement": sim.frame_interval_s,
            "TimeIncrementUnit": "s",
            "Channel": {"Name": list(sim.channel_names)}}


def _write_movie(sim: Simulation, target: Path, fmt: str) -> None:
    px = sim.pixel_size_um
    data = sim.image
    per_cm = 1e4 / px
    if fmt == "ome":
        tifffile.imwrite(target, data, ome=True, photometric="minisblack", compression="zlib",
                         predictor=True, metadata=_ome_meta(sim))
    elif fmt == "imagej":
        # ImageJ hyperstacks are stored uncompressed so that ImageJ can read them as one block
        tifffile.imwrite(target, data, imagej=True, resolution=(1.0 / px, 1.0 / px),
                         metadata={"axes": "TCYX", "unit": "micron", "spacing": px,
                                   "finterval": sim.frame_interval_s,
                                   "Labels": list(sim.channel_names) * data.shape[0]})
    elif fmt == "plain":
        tifffile.imwrite(target, data.reshape(-1, *data.shape[2:]), photometric="minisblack",
                         compression="zlib", predictor=True, resolution=(per_cm, per_cm),
                         resolutionunit="CENTIMETER", metadata=None)
    else:
        target.mkdir()
        for t in range(data.shape[0]):
            frame = data[t, 0] if data.shape[1] == 1 else data[t]
            tifffile.imwrite(target / f"t{t + 1:04d}.tif", frame, photometric="minisblack",
                             compression="zlib", predictor=True, resolution=(per_cm, per_cm),
                             resolutionunit="CENTIMETER", metadata=None)


def write_simulation(sim: Simulation, out_dir: str | Path, *, fmt: str = "ome",
                     write_clean: bool = False) -> Path:
    """Write the movie and its truth folder into ``out_dir`` (created); return the movie path.

    Parameters
    ----------
    sim
        A :class:`~migradetect.synthetic.Simulation`.
    out_dir
        Output folder; it must not exist or be empty (nothing is ever overwritten).
    fmt
        ``"ome"``, ``"imagej"``, ``"plain"`` or ``"folder"`` (see the module docstring).
    write_clean
        Also write the noise-free render as ``truth/movie_clean.tif`` (float32 OME-TIFF).
    """
    out = Path(out_dir)
    if fmt not in FORMATS:
        raise OutputError(f"unknown movie format {fmt!r}", path=out,
                          fix=f"use one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError("output folder exists and is not empty; refusing to overwrite a movie",
                          path=out, fix="choose a new folder or delete this one")
    out.mkdir(parents=True, exist_ok=True)
    movie = out / _NAMES[fmt]
    tmp_movie = out / f".partial.{_NAMES[fmt]}"
    _write_movie(sim, tmp_movie, fmt)
    os.replace(tmp_movie, movie)

    tmp = out / ".partial.truth"
    tmp.mkdir()
    for name in TABLES:
        sim.truth[name].to_csv(tmp / f"{name}.csv", index=False)
    group = zarr.open_group(tmp / "labels.zarr", mode="w")
    chunks = (1, *sim.cell_labels.shape[1:])
    group.create_array("cells", data=sim.cell_labels, chunks=chunks)
    group.create_array("fibers", data=sim.fiber_labels, chunks=chunks)
    meta = {
        "format": fmt, "movie": movie.name, "params": sim.params, "snr": sim.params["snr_measured"],
        "psf": sim.params["psf"], "seed": sim.params["seed"],
        "tables": {name: f"{name}.csv" for name in TABLES},
        "notes": ("coordinates are image pixels including drift; fibers' n_tips counts the "
                  "adhesion tips and the cell end; confounders are intracellular puncta"),
    }
    text = json.dumps(_clean_json(meta), indent=1, default=_json_default, allow_nan=False)
    (tmp / "truth.json").write_text(text, encoding="utf-8")
    if write_clean:
        tifffile.imwrite(tmp / "movie_clean.tif", sim.clean, ome=True, photometric="minisblack",
                         compression="zlib", metadata=_ome_meta(sim))
    os.replace(tmp, out / "truth")
    return movie


def load_truth(truth_dir: str | Path) -> dict:
    """Read a truth folder written by :func:`write_simulation`.

    ``truth_dir`` may be the ``truth/`` folder or the simulation's output folder. Returns the
    tables (keys as in ``Simulation.truth``), ``meta`` (the parsed ``truth.json``) and
    ``cell_labels`` / ``fiber_labels`` (read-only zarr arrays, ``(T, Y, X)``).
    """
    path = Path(truth_dir)
    if (path / "truth").is_dir():
        path = path / "truth"
    if not (path / "truth.json").is_file():
        raise InputError("not a simulation truth folder (no truth.json)", path=path,
                         fix="pass the folder written by `migradetect simulate` or its truth/")
    out: dict[str, Any] = {"meta": json.loads((path / "truth.json").read_text(encoding="utf-8"))}
    for name in TABLES:
        f = path / f"{name}.csv"
        if not f.is_file():
            raise InputError(f"truth table {f.name} is missing", path=path,
                             fix="re-run `migradetect simulate`")
        out[name] = pd.read_csv(f)
    group = zarr.open_group(path / "labels.zarr", mode="r")
    out["cell_labels"], out["fiber_labels"] = group["cells"], group["fibers"]
    return out

