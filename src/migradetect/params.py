"""Declaring stage parameters: one frozen dataclass per stage, fields with units and bounds.

Stage modules declare their parameters with :func:`param`; :mod:`migradetect.config`
validates YAML presets, CLI options and widget values against these declarations, so the
CLI, the presets and the napari widgets build the same objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def param(
    default: Any,
    *,
    unit: str | None = None,
    min: float | None = None,  # noqa: A002 - reads naturally in declarations
    max: float | None = None,  # noqa: A002
    choices: tuple | None = None,
    help: str = "",  # noqa: A002
) -> Any:
    """A dataclass field with a unit, bounds and a help text (read by the config validator).

    ``min`` is inclusive, ``max`` is inclusive. ``choices`` lists the allowed values of a
    string parameter.
    """
    meta = {"unit": unit, "min": min, "max": max, "choices": choices, "help": help}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)
