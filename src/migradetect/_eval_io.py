"""Reading the folders :func:`migradetect.evaluate.evaluate_dirs` compares: the truth
folder of ``migradetect simulate``, a result folder of ``migradetect run``, their tables,
calibration and label stores. Private.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from migradetect.errors import InputError


def _truth_folder(path: Path) -> Path:
    for folder in (path / "truth", path):
        if (folder / "migrasomes.csv").is_file():
            return folder
    raise InputError("is not a truth folder: neither truth/migrasomes.csv nor migrasomes.csv "
                     "is in it.", path=path,
                     fix="pass the folder written by `migradetect simulate` or its truth/ folder.")


def _find_key(obj: Any, key: str) -> float | None:
    """The first number stored under ``key`` anywhere in a nested JSON object."""
    if isinstance(obj, dict):
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        children = list(obj.values())
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _calibration(truth: Path, result: Path) -> tuple[float, float]:
    docs = []
    for path in (truth / "truth.json", result / "manifest.json"):
        if path.is_file():
            try:
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot be read as JSON ({exc}).", path=path,
                                 fix="re-create it with `migradetect simulate` / `run`.") from exc
    values = {}
    for key in ("pixel_size_um", "frame_interval_s"):
        values[key] = next((v for d in docs if (v := _find_key(d, key)) is not None), None)
    if values["pixel_size_um"] is None:
        raise InputError("no pixel_size_um in truth/truth.json nor in the result's "
                         "manifest.json.", path=truth,
                         fix="add \"pixel_size_um\" to truth.json.")
    frame_interval = values["frame_interval_s"]
    return values["pixel_size_um"], math.nan if frame_interval is None else frame_interval


#: Columns each table must have to be scored.
NEEDED_COLUMNS = {
    "migrasomes.csv": ("frame", "track_id", "y_px", "x_px", "diameter_um"),
    "tracks.csv": ("track_id", "cell_id", "plateau_diameter_um", "growth_time_s"),
    "cell_frames.csv": ("frame", "cell_id", "y_px", "x_px"),
    "drift.csv": ("frame", "dy_px", "dx_px"),
}


def _read_csv(path: Path, *, required: bool = False) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise InputError("is missing.", path=path,
                             fix="pass a per-movie result folder written by `migradetect run`.")
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot be read as CSV ({exc}).", path=path,
                         fix="re-create it, or delete it and run again.") from exc
    missing = [c for c in NEEDED_COLUMNS.get(path.name, ()) if c not in df.columns]
    if missing:
        raise InputError(f"lacks the columns {missing}.", path=path,
                         fix="re-create it with this version of migradetect.")
    return df


def _labels(folder: Path) -> dict[str, Any]:
    """Arrays of ``folder/labels.zarr`` by name (empty if there is none)."""
    path = folder / "labels.zarr"
    if not path.exists():
        return {}
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        return {name: group[name] for name in ("cells", "fibers", "migrasomes")
                if name in group}
    except Exception as exc:  # zarr raises several unrelated types for a broken store
        raise InputError(f"cannot be opened as a zarr group ({exc}).", path=path,
                         fix="delete it and run again.") from exc
