"""Seeded simulator of migrasome movies with ground truth (tests, sample data, benchmarks).

:func:`simulate` makes a movie of migrating cells that pull retraction fibers out of fixed
adhesions; migrasomes are born on the fibers (tips, branch points, crossings), stay anchored
on the dish and grow by several growth laws; intracellular puncta are confounders. Frames
are rendered from 3-D shapes (hollow vesicle shells, tubes) through a PSF that is *not* the
analysis' Gaussian (an Airy pattern or a Gaussian 0.8-1.2x the nominal width, per seed),
then imaged with uneven illumination, photobleaching, optional stage drift, Poisson shot
noise, Gaussian read noise and a camera offset. The truth follows the output contract
(``schema.py``) so that :mod:`migradetect.evaluate` can compare results with it.

Seeds: 0-99 are for tuning and tests; 1000 and above are for measuring (benchmarks).
Never tune the analysis on seeds >= 1000.

The SNR of a structure is (its peak above the background in the noise-free render) / (the
standard deviation of the noise over background pixels, measured per frame from the noisy
minus the noise-free frame). Presets ``high``, ``medium`` and ``low`` aim at 15, 5 and 3 for
a typical 1 µm migrasome at its plateau: the photons per unit brightness are chosen so that
the median SNR of the movie's migrasomes of 0.8-1.25 µm at >= 90 % of their plateau hits the
target; fibers, cells and puncta follow from the marker's labelling (TSPAN4-GFP fibers are
4-12x dimmer than a 1 µm migrasome, WGA fibers 2-4x). The SNR actually reached is measured
and written to the truth (``truth.json`` and a ``snr`` column per object row).

Truth migrasome rows start at birth. ``visible``: the centre is in the field of view (and the
diameter > 0); ``detectable``: visible, SNR >= 2 and diameter >= 0.3 µm (see
``_synth_truth``); :mod:`migradetect.evaluate` scores visible but undetectable rows as
"don't care".

Implementation: ``_synth_scene`` (dynamics, dish coordinates), ``_synth_optics`` (PSF and
blurred object profiles), ``_synth_render`` (frames and truth labels), ``_synth_camera``
(drift, illumination, bleaching, noise), ``_synth_truth`` (tables), ``_synth_io`` (files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from migradetect._synth_camera import (
    Camera,
    brightness,
    collect,
    expose,
    finish_records,
    stage_drift,
)
from migradetect._synth_io import load_truth, write_simulation
from migradetect._synth_optics import PSF, Optics
from migradetect._synth_render import Look, render_frame
from migradetect._synth_scene import build_scene
from migradetect._synth_truth import truth_tables
from migradetect.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SNR_TARGETS", "Simulation", "load_truth", "simulate", "write_simulation"]

#: Target SNR of a typical 1 µm migrasome at plateau, per named level.
SNR_TARGETS = {"high": 15.0, "medium": 5.0, "low": 3.0}
_OPTICS = {"tspan4_gfp": (0.51, 1.4, "TSPAN4-GFP"), "wga": (0.57, 1.4, "WGA-555")}


@dataclass(frozen=True)
class Simulation:
    """A simulated movie and its ground truth.

    Attributes
    ----------
    image
        ``(T, C, Y, X)`` uint16 camera counts.
    clean
        ``(T, C, Y, X)`` float32 noise-free expected counts (offset included).
    truth
        Tables keyed ``migrasomes``, ``tracks``, ``cells``, ``cell_frames``, ``fibers``,
        ``drift``, ``confounders`` (output-contract column names; coordinates are image
        pixels including drift, 0-based pixel centres).
    cell_labels, fiber_labels
        ``(T, Y, X)`` int32: cells labelled by ``cell_id``; 1-px fiber centrelines labelled by
        ``fiber_id``.
    params
        Everything needed to reproduce and interpret the movie (inputs, seeds, PSF used,
        camera, measured SNR per structure).
    """

    image: np.ndarray
    clean: np.ndarray
    truth: dict[str, pd.DataFrame]
    cell_labels: np.ndarray
    fiber_labels: np.ndarray
    params: dict

    @property
    def pixel_size_um(self) -> float:
        return float(self.params["pixel_size_um"])

    @property
    def frame_interval_s(self) -> float:
        return float(self.params["frame_interval_s"])

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.params["channel_names"])


def _check(preset, seed, size, n_frames, n_cells, pixel_size_um, frame_interval_s, snr, n_channels):
    if preset not in _OPTICS:
        raise ConfigError(f"unknown preset {preset!r}", fix=f"use one of {sorted(_OPTICS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}",
                          fix="use 0-99 for tuning/tests and >= 1000 for measuring")
    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) < 16:
        raise ConfigError(f"size must be an int or (ny, nx) of at least 16 px, got {size!r}",
                          fix="e.g. size=256 or size=(256, 384)")
    if n_frames < 1 or n_cells < 0 or pixel_size_um <= 0 or frame_interval_s <= 0:
        got = (n_frames, n_cells, pixel_size_um, frame_interval_s)
        raise ConfigError("n_frames >= 1, n_cells >= 0, pixel_size_um > 0 and frame_interval_s > 0 "
                          f"are required (got {got})", fix="pass physically meaningful values")
    if n_channels not in (1, 2):
        raise ConfigError(f"n_channels must be 1 or 2, got {n_channels}",
                          fix="1: the marker only; 2: the marker and a cytoplasmic cell channel")
    if isinstance(snr, str) and snr in SNR_TARGETS:
        target = SNR_TARGETS[snr]
    else:
        try:
            target = float(snr)
        except (TypeError, ValueError):
            raise ConfigError(f"snr must be 'high', 'medium', 'low' or a number, got {snr!r}",
                              fix="e.g. --snr medium or --snr 8") from None
        if not (0 < target < 1000):
            raise ConfigError(f"snr must be > 0, got {snr!r}", fix="e.g. 3 (hard) to 20 (easy)")
    return shape, target


def simulate(
    *,
    preset: str = "tspan4_gfp",
    seed: int,
    size: int | tuple[int, int] = 512,
    n_frames: int = 40,
    n_cells: int = 3,
    pixel_size_um: float = 0.15,
    frame_interval_s: float = 60.0,
    snr: str | float = "high",
    drift: bool = False,
    crowded: bool = False,
    psf: str | None = None,
    psf_error: float | None = None,
    n_channels: int = 1,
) -> Simulation:
    """Simulate a movie of migrating cells, retraction fibers and migrasomes with its truth.

    Parameters
    ----------
    preset
        ``"tspan4_gfp"`` (migrasomes 4-40x brighter than fibers, dim cells) or ``"wga"``
        (membrane stain: bright cell rims, fibers and migrasomes labelled more evenly).
    seed
        Seed of everything random (0-99: tuning and tests; >= 1000: measuring).
    size
        Frame size in pixels, ``int`` (square) or ``(ny, nx)``.
    n_frames, n_cells
        Number of frames and of migrating cells.
    pixel_size_um, frame_interval_s
        Pixel size (µm) and time between frames (s).
    snr
        ``"high"``, ``"medium"``, ``"low"`` or a number: target SNR of a 1 µm migrasome at
        plateau. The same seed gives the same scene at every SNR; only the brightness differs.
    drift
        Add smooth stage drift (5-10 µm over the movie) and one sudden 3 µm jump.
    crowded
        Twice the adhesion rate, a migrasome at almost every fiber tip, and many close or
        touching pairs.
    psf
        ``"airy"`` or ``"gaussian"``; None draws one per seed.
    psf_error
        Relative error of the PSF width versus the nominal 0.21 λ/NA (e.g. 0.15 = 15 % wider);
        None draws one in [-0.2, 0.2] per seed.
    n_channels
        1: the preset's marker; 2: the marker plus a cytoplasmic cell channel.

    Returns
    -------
    Simulation
    """
    shape, target = _check(preset, seed, size, n_frames, n_cells, pixel_size_um,
                           frame_interval_s, snr, n_channels)
    if psf not in (None, "airy", "gaussian"):
        raise ConfigError(f"psf must be 'airy', 'gaussian' or None, got {psf!r}",
                          fix="or leave it None to draw one per seed")
    r_optics, r_scene, r_look, r_drift, r_cam, r_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(6)
    )
    wavelength, na, marker_name = _OPTICS[preset]
    kind = str(r_optics.choice(["airy", "gaussian"])) if psf is None else psf
    scale = 1.0 + (float(r_optics.uniform(-0.2, 0.2)) if psf_error is None else float(psf_error))
    shell_um = float(r_optics.uniform(0.05, 0.1))
    optics = Optics(PSF(kind, wavelength, na, scale), pixel_size_um)
    look = Look.draw(r_look, preset)
    shift, drift_info = stage_drift(r_drift, n_frames, pixel_size_um, drift)
    t_frames = np.arange(n_frames) * frame_interval_s / 60.0
    scene = build_scene(r_scene, extent_um=np.array(shape) * pixel_size_um, n_cells=n_cells,
                        t_frames=t_frames, crowded=crowded, marker=preset, shell_um=shell_um)
    camera = Camera.draw(r_cam, shape, t_frames)

    # pass 1: noise-free signal per unit of brightness (relative units x illumination x bleaching)
    clean = np.empty((n_frames, n_channels, *shape), np.float32)
    image = np.empty((n_frames, n_channels, *shape), np.uint16)
    cell_labels = np.empty((n_frames, *shape), np.int32)
    fiber_labels = np.empty((n_frames, *shape), np.int32)
    background = np.empty((n_frames, *shape), bool)
    records: dict[str, list] = {"migrasomes": [], "fibers": [], "puncta": [], "cells": []}
    for f in range(n_frames):
        for c in range(n_channels):
            channel = "marker" if c == 0 else "cell"
            fr = render_frame(scene, f, shift[f], shape, optics, look, channel=channel)
            clean[f, c] = fr.rel * camera.illum * camera.bleach[f]
            if c == 0:
                cell_labels[f], fiber_labels[f] = fr.cell_labels, fr.fiber_labels
                background[f] = fr.rel < 2e-3
                collect(records, fr, f, camera, shape)
    bg_sd = np.array([camera.background_sd(background[f]) for f in range(n_frames)])
    plateau = {m.track_id: m.growth_summary()[0] for m in scene.migrasomes}
    photons, source = brightness(records, plateau, bg_sd, camera, optics, shell_um, target, shape)
    # pass 2: expected counts, shot and read noise; the noise is measured on background pixels
    noise = np.empty(n_frames)
    for f in range(n_frames):
        for c in range(n_channels):
            clean[f, c], image[f, c] = expose(clean[f, c], photons, camera, r_noise)
        resid = image[f, 0][background[f]] - clean[f, 0][background[f]].astype(float)
        noise[f] = float(resid.std()) if resid.size > 100 else float(bg_sd[f])
    finish_records(records, photons, camera, noise)
    truth = truth_tables(scene, records, shift, shape, pixel_size_um, frame_interval_s, cell_labels)
    snr_measured = _structure_snr(truth, records)
    params = {
        "preset": preset, "seed": int(seed), "size": list(shape), "n_frames": n_frames,
        "n_cells": n_cells, "pixel_size_um": pixel_size_um, "frame_interval_s": frame_interval_s,
        "snr": snr, "snr_target": target, "drift": drift_info, "crowded": crowded,
        "n_channels": n_channels,
        "channel_names": [marker_name] + (["cell"] if n_channels == 2 else []),
        "psf": optics.psf.as_dict(), "shell_thickness_um": shell_um,
        "look": {"fiber_peak_rel": look.fiber_peak, "cytoplasm_rel": look.cyto,
                 "rim_rel": look.rim},
        "camera": {**camera.info, "photons_per_unit": photons, "brightness_from": source},
        "snr_measured": snr_measured, "noise_std_counts_median": float(np.median(noise)),
        "n_fiber_crossings": scene.crossings, "scene": dict(scene.notes),
        "seeds": "0-99 tuning/tests; >= 1000 measuring",
    }
    log.info("simulated %s seed %d: %d tracks, SNR %s", preset, seed, len(truth["tracks"]),
             snr_measured)
    return Simulation(image, clean, truth, cell_labels, fiber_labels, params)


def _structure_snr(truth, records) -> dict:
    """Median measured SNR per kind of structure (NaN where there is none)."""
    mig = truth["migrasomes"]
    vis = mig[mig["visible"]]
    typical = vis[(vis["diameter_um"] > 0.8) & (vis["diameter_um"] < 1.25)
                  & (vis["diameter_um"] >= 0.9 * vis["plateau_diameter_um"])]

    def med(s):
        return float(np.median(s)) if len(s) else float("nan")

    fib = truth["fibers"]
    return {
        "migrasomes_typical_1um_plateau": med(typical["snr"]),
        "migrasomes_all": med(vis["snr"]),
        "fibers_attached": med(fib.loc[fib["cell_id"] > 0, "snr"]),
        "fibers_all": med(fib["snr"]),
        "cells": med([r["snr"] for r in records["cells"]]),
        "puncta": med([r["snr"] for r in records["puncta"]]),
    }


