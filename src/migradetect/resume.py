"""Resumable, atomic movie result folders.

A movie's outputs are written into a hidden sibling folder ``.<movie>.tmp-<pid>`` and moved
into place by :func:`install` only when complete, so an interrupted run never leaves a
half-written movie folder; the user's ``curated/`` sub-folder is carried over when older
results are replaced. :func:`clean_stale` removes what a killed run left behind.

A finished folder's ``manifest.json`` records ``status: complete``, the checksum of the input
and the SHA-256 of the parameters (:func:`input_checksum`, :func:`params_checksum`);
:func:`is_up_to_date` compares them to decide whether a movie can be skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migradetect import report
from migradetect.config import Config, config_to_dict

log = logging.getLogger(__name__)

#: Manifest keys written by the batch (the resume record).
STATUS_KEY, INPUT_KEY, PARAMS_KEY = "status", "input_checksum", "params_sha256"

_TMP_RE = re.compile(r"^\.(?P<movie>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_PARTIAL_FILE_RE = re.compile(r"^\..+\.tmp$")


def temp_folder(final: Path) -> Path:
    """The hidden sibling folder where ``final``'s new contents are written."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def input_checksum(path: str | Path) -> str:
    """The input's checksum as ``method:digest`` (see :func:`pipeline.input_checksum`)."""
    from migradetect.pipeline import input_checksum as checksum

    c = checksum(path)
    return f"{c['method']}:{c['digest']}"


def params_checksum(config: Config, *, pixel_size_um: float | None,
                    frame_interval_s: float | None, position: int | None) -> str:
    """SHA-256 of everything besides the input bytes that decides a movie's results."""
    record = {"config": config_to_dict(config), "pixel_size_um": pixel_size_um,
              "frame_interval_s": frame_interval_s, "position": position}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def read_manifest(movie_dir: Path) -> dict[str, Any] | None:
    """A movie folder's manifest, or None when absent or unreadable."""
    try:
        data = json.loads((movie_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_up_to_date(movie_dir: Path, input_sha: str, params_sha: str) -> bool:
    """Whether ``movie_dir`` holds complete results for this input and these parameters."""
    m = read_manifest(movie_dir)
    return (m is not None and m.get(STATUS_KEY) == "complete" and m.get(INPUT_KEY) == input_sha
            and m.get(PARAMS_KEY) == params_sha and report.is_movie_folder(movie_dir))


# ----------------------------------------------------------------------------------------
# atomic movie folders
# ----------------------------------------------------------------------------------------


def clean_stale(out_dir: Path) -> None:
    """Remove what killed runs left in ``out_dir`` and its experiment folders.

    Call only while holding the run lock, before this run writes anything: every temporary
    entry is then stale. ``.<movie>.tmp-<pid>`` folders are deleted; an ``.<movie>.old-<pid>``
    folder (a run killed while swapping in new results) is put back when the movie folder
    is missing, else its ``curated/`` is moved over when the new folder has none, then it is
    deleted. Hidden ``.<name>.<random>.tmp`` files of interrupted atomic writes
    (:func:`migradetect.report.atomic_write_bytes`) are deleted.
    """
    folders = [out_dir, *sorted(p for p in out_dir.iterdir()
                                if p.is_dir() and not p.name.startswith("."))]
    for folder in folders:
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and _PARTIAL_FILE_RE.match(entry.name):
                entry.unlink(missing_ok=True)
                continue
            m = _TMP_RE.match(entry.name)
            if not m or not entry.is_dir():
                continue
            final = folder / m["movie"]
            if m["kind"] == "old":
                if not final.exists():
                    log.warning("restoring %s from an interrupted replacement", final)
                    os.replace(entry, final)
                    continue
                if (entry / "curated").is_dir() and not (final / "curated").exists():
                    os.replace(entry / "curated", final / "curated")
            log.info("removing %s, left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few renames that must not be cut in the middle."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (ValueError, OSError):  # not the main thread: nothing to defer
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def install(tmp: Path, final: Path) -> None:
    """Move a complete movie folder ``tmp`` to ``final``, keeping ``final/curated``."""
    with _signals_deferred():
        if not final.exists():
            os.replace(tmp, final)
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        if (old / "curated").exists() and not (final / "curated").exists():
            os.replace(old / "curated", final / "curated")
        shutil.rmtree(old)
