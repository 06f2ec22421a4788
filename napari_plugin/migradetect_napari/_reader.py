"""Reader contribution: movies (every format of ``migradetect.io``) and result folders.

``get_reader(path)`` returns a function that makes napari layer-data tuples, or None when
the path is not ours (a PNG, a random folder, a file named .tif that is not a TIFF): a
reader must never raise on foreign files. Movies stay lazy (dask, one chunk per frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from migradetect import io, layers
from migradetect.errors import MigradetectError

log = logging.getLogger(__name__)

LayerDataTuple = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def _single(path: str | Sequence[str]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return Path(path)
    except TypeError:
        return None


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """The reader for ``path``, or None when migradetect cannot read it.

    Accepted: a per-movie result folder of ``migradetect run`` (``manifest.json`` +
    ``migrasomes.csv``), a folder of one TIFF per frame, and a TIFF / OME-TIFF / ImageJ
    movie file (checked by reading its header, so a non-TIFF named ``.tif`` is declined).
    """
    p = _single(path)
    if p is None:
        return None
    try:
        if layers.is_result_folder(p):
            return _read_results
        if (p.is_dir() and io.is_frame_folder(p)) or (
                p.is_file() and p.name.lower().endswith((".tif", ".tiff"))):
            # opening is lazy (header and frame offsets only) and raises on foreign files
            movies = io.open_movies(p, require_calibration=False)
            return lambda _path: [t for m in movies for t in layers.movie_layers(m)]
    except MigradetectError as exc:
        log.info("migradetect declines %s: %s", p, exc)
    except Exception as exc:  # noqa: BLE001 - a reader must never raise on foreign files
        log.info("migradetect declines %s: %s: %s", p, type(exc).__name__, exc)
    return None


def read_movie(path: str | Path) -> list[LayerDataTuple]:
    """Image layers of every position and channel of a movie (lazy, scaled in µm and s)."""
    out: list[LayerDataTuple] = []
    for movie in io.open_movies(path, require_calibration=False):
        out.extend(layers.movie_layers(movie))
    return out


def read_results(path: str | Path) -> list[LayerDataTuple]:
    """Layers of a per-movie result folder (curated tables when ``curated/`` holds them)."""
    return layers.result_layers(path)


def _read_results(path: str | Sequence[str]) -> list[LayerDataTuple]:
    return read_results(_single(path))
