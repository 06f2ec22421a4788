"""A lock file that keeps two batch runs from writing into the same output folder.

``OUT_DIR/.migradetect.lock`` is created atomically (``O_CREAT | O_EXCL``) and holds the
host, process id, process start time and run start time as JSON. A lock left by a dead
process on this host is replaced with a warning; a lock held by a live process, or by a
process on another host (which cannot be checked from here), refuses the run with an error
that says who holds it and how to remove it.

Written here rather than taken from a library (``filelock``, ``fasteners``) because those
rely on ``flock``, which neither records the holder (needed for the error message) nor
works reliably on the network file systems of clusters.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import psutil

from migradetect.errors import OutputError

log = logging.getLogger(__name__)

LOCK_NAME = ".migradetect.lock"


def _process_start(pid: int) -> float | None:
    """Start time of process ``pid`` (s since the epoch), or None when it is not running."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # exists, but we may not look at it: count it as alive
        return float("-inf")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_alive(info: dict[str, Any]) -> bool:
    """Whether the process recorded in a lock on *this* host still runs.

    A pid can be reused by an unrelated process; if the running process started after the
    lock's holder did, it is not the holder.
    """
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = _process_start(pid)
    if started is None:
        return False
    holder_start = info.get("process_start")
    if isinstance(holder_start, (int, float)) and started > holder_start + 1.0:
        return False
    return True


class RunLock:
    """The lock of one output folder; use as a context manager.

    Parameters
    ----------
    out_dir
        The output folder (must exist).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.held = False

    def _content(self) -> str:
        pid = os.getpid()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": pid,
                "process_start": _process_start(pid),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "token": self.token,
            },
            indent=1,
        )

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file ({exc.strerror}).", path=self.path,
                fix="check that the output folder is writable and the disk is not full.",
            ) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self._content())
        return True

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; raise :class:`OutputError` if it is held."""
        for _ in range(3):  # a stale lock removed by a concurrent run: try again
            if self._try_create():
                self.held = True
                return
            info = _read(self.path)
            if info is None:
                if not self.path.exists():
                    continue
                raise OutputError(
                    "an unreadable lock file says another run may be writing here.",
                    path=self.path,
                    fix=f"if no other migradetect run uses this folder, delete {self.path}.",
                )
            here = socket.gethostname()
            who = (f"process {info.get('pid')} on host {info.get('host')} "
                   f"(started {info.get('started')})")
            if info.get("host") != here:
                raise OutputError(
                    f"locked by {who}; a process on another host cannot be checked from here.",
                    path=self.path,
                    fix=f"wait for that run to end; if it is dead, delete {self.path}.",
                )
            if _holder_alive(info):
                raise OutputError(
                    f"another migradetect run is writing into this folder: {who}.",
                    path=self.path,
                    fix="wait for it to end, or choose another --out folder.",
                )
            log.warning("removing a stale lock left by %s, which is no longer running", who)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise OutputError("could not take the lock (it keeps reappearing).", path=self.path,
                          fix="make sure only one run uses this output folder.")

    def release(self) -> None:
        """Remove the lock file if this object holds it (never someone else's)."""
        if not self.held:
            return
        self.held = False
        info = _read(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                self.path.unlink()
            except OSError as exc:
                log.warning("could not remove the lock file %s: %s", self.path, exc)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
