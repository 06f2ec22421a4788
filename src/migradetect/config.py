"""Typed, validated parameters for a whole run, and the YAML presets in ``workflows/``.

One frozen dataclass per stage lives in the stage's module (fields declared with
:func:`migradetect.params.param`); :class:`Config` gathers them. The CLI, the presets and the
napari widgets all build a :class:`Config` through :func:`config_from_dict`, so a GUI run and
a CLI run with the same values give the same numbers. Unknown keys, wrong types and values out
of range are :class:`~migradetect.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migradetect.assign import AssignConfig
from migradetect.cells import CellConfig
from migradetect.drift import DriftConfig
from migradetect.errors import ConfigError
from migradetect.fibers import FiberConfig
from migradetect.growth import GrowthConfig
from migradetect.migrasomes import MigrasomeConfig
from migradetect.params import param
from migradetect.preprocess import PreprocessConfig
from migradetect.tracking import TrackingConfig


@dataclass(frozen=True)
class ChannelConfig:
    """Which channel shows what, and how z-stacks are reduced."""

    migrasome: str | int = param(0, help="channel (name or 0-based index) with migrasomes and fibers")
    cell: str | int | None = param(
        None, help="channel with cell bodies; None: the migrasome channel does both"
    )
    z: str | int = param("max", help="z reduction: 'max', 'sum' or a 0-based plane index")


@dataclass(frozen=True)
class OpticsConfig:
    """Imaging optics, used to derive the PSF width (Gaussian sigma of the lateral PSF)."""

    emission_wavelength_nm: float = param(520.0, unit="nm", min=300.0, max=1000.0)
    numerical_aperture: float = param(1.4, min=0.1, max=1.7)
    psf_sigma_um: float | None = param(
        None, unit="um", min=0.02, max=2.0,
        help="override the PSF sigma; None: 0.21 * wavelength / NA",
    )

    @property
    def psf_sigma(self) -> float:
        """Lateral PSF Gaussian sigma in µm (0.21 λ/NA approximates the Airy core)."""
        if self.psf_sigma_um is not None:
            return float(self.psf_sigma_um)
        return 0.21 * self.emission_wavelength_nm / 1000.0 / self.numerical_aperture


@dataclass(frozen=True)
class Config:
    """Every parameter of one run. ``marker`` names the labelling style."""

    marker: str = param("tspan4_gfp", choices=("tspan4_gfp", "wga"))
    channels: ChannelConfig = field(default_factory=ChannelConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    cells: CellConfig = field(default_factory=CellConfig)
    fibers: FiberConfig = field(default_factory=FiberConfig)
    migrasomes: MigrasomeConfig = field(default_factory=MigrasomeConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)


PRESETS = ("tspan4_gfp", "wga")


def presets_dir() -> Path:
    """Folder holding the shipped YAML presets (package data, or the source tree's workflows/)."""
    here = Path(__file__).resolve().parent
    shipped = here / "workflows"
    if shipped.is_dir():
        return shipped
    return here.parent.parent / "workflows"  # editable install / source checkout


def _type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type hint; return (ok, coerced value)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(float(value)), float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            inner = args[0] if args else Any
            out = []
            for v in value:
                ok, cv = _type_ok(v, inner) if inner is not Any else (True, v)
                if not ok:
                    return False, value
                out.append(cv)
            return True, tuple(out)
        return False, value
    return True, value


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls: type, data: Mapping[str, Any], where: str, source: str | None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"'{where}' must be a mapping of parameters, got {type(data).__name__}.",
            path=source, fix=f"write '{where}:' followed by indented 'key: value' lines.",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown parameter '{where + '.' if where else ''}{unknown[0]}'.",
            path=source,
            fix=f"remove it or use one of: {', '.join(sorted(fields))}.",
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key, source)
            continue
        ok, value = _type_ok(value, hint)
        if not ok:
            raise ConfigError(
                f"parameter '{key}' = {value!r} has the wrong type; expected {_type_name(hint)}.",
                path=source, fix=f"give '{key}' a value of type {_type_name(hint)}.",
            )
        meta = f.metadata
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ConfigError(
                    f"parameter '{key}' = {value}{unit} is out of range "
                    f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]{unit}.",
                    path=source, fix=f"set '{key}' within that range.",
                )
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"parameter '{key}' = {value!r} is not one of {list(choices)}.",
                path=source, fix=f"set '{key}' to one of {list(choices)}.",
            )
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # cross-field checks in __post_init__
        raise ConfigError(f"invalid '{where or 'config'}': {exc}", path=source,
                          fix="correct the values named above.") from exc


def config_from_dict(data: Mapping[str, Any] | None, *, source: str | Path | None = None) -> Config:
    """Build a validated :class:`Config` from nested mappings (YAML, CLI, widgets).

    Keys absent from ``data`` take the defaults of the ``marker``'s preset when ``marker`` is
    given, else the dataclass defaults.
    """
    return _build(Config, dict(data or {}), "", None if source is None else str(source))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = config_to_dict(v) if dataclasses.is_dataclass(v) else plain(v)
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested merge of two config dicts; ``override`` wins."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML parameter file into a dict, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the parameter file ({exc.strerror}).", path=path,
                          fix="check the path given to --config.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"is not valid YAML: {exc}", path=path,
                          fix="correct the YAML syntax (indentation, colons).") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("must hold a mapping of sections (marker, cells, migrasomes, ...).",
                          path=path, fix="see workflows/tspan4_gfp.yaml for the layout.")
    return data


def load_config(preset_or_path: str | Path = "tspan4_gfp",
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a shipped preset by name (``tspan4_gfp``, ``wga``) or a YAML file by path.

    A YAML file may name a ``preset:`` to start from; its other keys override it. Then
    ``overrides`` (nested dict, e.g. from CLI options) are applied.
    """
    name = str(preset_or_path)
    if name in PRESETS:
        path = presets_dir() / f"{name}.yaml"
    else:
        path = Path(name)
        if not path.exists():
            raise ConfigError(
                "no such parameter file or preset.", path=path,
                fix=f"give a YAML file path or one of the presets: {', '.join(PRESETS)}.",
            )
    data = read_yaml(path)
    base = data.pop("preset", None)
    if base is not None:
        if base not in PRESETS:
            raise ConfigError(f"unknown preset {base!r}.", path=path,
                              fix=f"use one of: {', '.join(PRESETS)}.")
        data = merge(read_yaml(presets_dir() / f"{base}.yaml"), data)
    data = merge(data, overrides or {})
    return config_from_dict(data, source=path)


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as a YAML preset that :func:`load_config` reads back identically."""
    from migradetect.report import atomic_write_text  # local: report imports config

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
