"""Project exceptions.

Every error a user can cause names the file, what is wrong with it and how to fix it, so that
a batch run's ``failures.csv`` row is enough to act on.
"""

from __future__ import annotations

from pathlib import Path


class MigradetectError(Exception):
    """Base class of all errors migradetect raises on purpose.

    Parameters
    ----------
    problem
        What is wrong, in one sentence.
    path
        The file or folder concerned, if any.
    fix
        What the user can do about it.
    stage
        The pipeline stage that failed (``open``, ``detect``, ``track`` ...), for reports.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        fix: str | None = None,
        stage: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        self.stage = stage
        super().__init__(self._message())

    def __reduce__(self):  # keep the fields when pickled to/from dask.distributed workers
        return (_rebuild, (type(self), self.problem, self.path, self.fix, self.stage))

    def _message(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        parts.append(self.problem)
        if self.fix:
            parts.append(f" Fix: {self.fix}")
        return "".join(parts)


def _rebuild(cls: type, problem: str, path: str | None, fix: str | None,
             stage: str | None) -> MigradetectError:
    return cls(problem, path=path, fix=fix, stage=stage)


class InputError(MigradetectError):
    """A movie or folder cannot be read as asked (corrupt, wrong axes, missing calibration)."""


class ConfigError(MigradetectError):
    """A parameter file or value is invalid (unknown key, wrong type, out of range)."""


class OutputError(MigradetectError):
    """Results cannot be written (unwritable or full output folder, locked output)."""
