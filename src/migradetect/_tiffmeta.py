"""Calibration and channel names from TIFF metadata: OME-XML, ImageJ, TIFF resolution tags.

Private helper of :mod:`migradetect.io`: the raw values found in a file (pixel size, frame
interval, z step, each with where it came from), with their units converted to µm and s.
Overrides and plausibility checks are applied by :mod:`migradetect.io`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
import tifffile

log = logging.getLogger("migradetect.io")

_LENGTH_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0,
              "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
              "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "å": 1e-4,
              "angstrom": 1e-4, "inch": 25400.0, "in": 25400.0}
_TIME_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
           "millisecond": 1e-3, "milliseconds": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9,
           "min": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0,
           "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0}


@dataclass
class _RawCalibration:
    pixel_size_um: float | None = None
    pixel_size_source: str = "missing"
    frame_interval_s: float | None = None
    frame_interval_source: str = "missing"
    z_step_um: float | None = None


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
