"""Imaging side of the simulator: stage drift, illumination, bleaching, camera and noise.

Private helper of :mod:`migradetect.synthetic`. The SNR of an object is its own peak above
the background in the noise-free frame divided by the standard deviation of the noise over
background pixels (measured per frame from the noisy minus the noise-free frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from migradetect._synth_optics import Optics
from migradetect._synth_render import FrameRender

CAMERA_OFFSET = 100.0  # counts


def stage_drift(rng: np.random.Generator, n_frames: int, pixel_size_um: float,
                enabled: bool) -> tuple[np.ndarray, dict]:
    """Cumulative image shift (dy, dx) in px of fixed objects relative to frame 0.

    Smooth drift of 5-10 µm over the movie with a gentle wobble, plus one sudden 3 µm jump at
    a random frame in the middle half of the movie.
    """
    out = np.zeros((n_frames, 2))
    info: dict = {"enabled": enabled}
    if not enabled or n_frames < 2:
        return out, info
    s = np.linspace(0.0, 1.0, n_frames)
    total = rng.uniform(5.0, 10.0)
    ang = rng.uniform(0, 2 * np.pi)
    wob = rng.uniform(0, 2 * np.pi)
    path = total * s[:, None] * np.array([math.sin(ang), math.cos(ang)])
    wobble = np.sin(np.pi * s * rng.uniform(1, 3))[:, None]
    path += 1.0 * wobble * np.array([math.sin(wob), math.cos(wob)])
    jump_frame = int(rng.integers(max(1, n_frames // 4), max(2, 3 * n_frames // 4 + 1)))
    jang = rng.uniform(0, 2 * np.pi)
    path[jump_frame:] += 3.0 * np.array([math.sin(jang), math.cos(jang)])
    out = (path - path[0]) / pixel_size_um
    info.update(smooth_um=total, jump_frame=jump_frame, jump_um=3.0)
    return out, info


@dataclass(frozen=True)
class Camera:
    """Illumination, bleaching and camera of one movie (drawn per seed)."""

    illum: np.ndarray  # (Y, X) float32, relative excitation, max 1
    bleach: np.ndarray  # (T,) remaining fluorescence per frame
    gain: float  # counts per photon
    read_noise: float  # counts
    bg_photons: float  # background photons per pixel at full illumination
    info: dict

    @classmethod
    def draw(cls, rng: np.random.Generator, shape: tuple[int, int], t_frames: np.ndarray) -> Camera:
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        cy, cx = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * max(shape)) ** 2
        vig = rng.uniform(0.1, 0.3)
        g = rng.uniform(-0.1, 0.1, 2)
        tilt = 1.0 + g[0] * (yy / shape[0] - 0.5) + g[1] * (xx / shape[1] - 0.5)
        field = (1.0 - vig * r2 / 2.0) * tilt
        gain = float(rng.uniform(0.8, 2.0))
        read_noise = float(rng.uniform(1.0, 3.0))
        bg_photons = float(rng.uniform(15.0, 50.0))
        loss = float(rng.uniform(0.1, 0.4))
        bleach_tau = max(float(t_frames[-1]), 1.0) / -math.log(1.0 - loss)  # min
        info = {"offset_counts": CAMERA_OFFSET, "gain_counts_per_photon": gain,
                "read_noise_counts": read_noise, "background_photons": bg_photons,
                "bleach_tau_s": bleach_tau * 60.0, "bleach_loss": loss, "vignetting": vig,
                "gradient": g.tolist()}
        return cls((field / field.max()).astype(np.float32), np.exp(-t_frames / bleach_tau), gain,
                   read_noise, bg_photons, info)

    def background_sd(self, background: np.ndarray) -> float:
        """Expected noise std (counts) over the background pixels of a frame."""
        level = float(self.illum[background].mean() if background.any() else self.illum.mean())
        return math.sqrt(self.gain**2 * self.bg_photons * level + self.read_noise**2 + 1 / 12)


def collect(records: dict, fr: FrameRender, f: int, camera: Camera, shape: tuple[int, int]) -> None:
    """Append frame ``f``'s object rows with their own peak per unit of brightness."""
    ny, nx = shape
    bleach = float(camera.bleach[f])

    def local(row):
        y = int(np.clip(round(row["y_px"]), 0, ny - 1))
        x = int(np.clip(round(row["x_px"]), 0, nx - 1))
        return float(camera.illum[y, x]) * bleach

    for row in fr.migrasomes:
        k = local(row)
        records["migrasomes"].append({**row, "frame": f, "peak_unit": row["peak_rel"] * k,
                                      "mean_unit": row["mean_rel"] * k})
    for row in fr.fibers:
        if row["visible"]:
            records["fibers"].append({**row, "frame": f, "peak_unit": row["peak_rel"] * local(row)})
    for row in fr.puncta:
        records["puncta"].append({**row, "frame": f, "peak_unit": row["peak_rel"] * local(row)})
    labels = fr.cell_labels
    for cid in np.unique(labels[labels > 0]):
        mask = labels == cid
        level = float(np.median(fr.cell_rel[mask] * camera.illum[mask])) * bleach
        records["cells"].append({"frame": f, "cell_id": int(cid), "peak_unit": level})


def brightness(records: dict, plateau: dict[int, float], bg_sd: np.ndarray, camera: Camera,
               optics: Optics, shell_um: float, target: float,
               shape: tuple[int, int]) -> tuple[float, str]:
    """Photons per relative unit such that typical migrasomes reach the target SNR.

    Typical: 0.8-1.25 µm, at >= 90 % of their plateau, in view; the median of their SNR is set
    to ``target``. Without any in view, a 1 µm migrasome at median illumination, mid-movie
    bleaching and an average sub-pixel position is used.
    """
    typical = [r for r in records["migrasomes"] if 0.8 < r["diameter_um"] < 1.25
               and r["diameter_um"] >= 0.9 * plateau[r["track_id"]]
               and 0 <= r["y_px"] < shape[0] and 0 <= r["x_px"] < shape[1]]
    if typical:
        per_photon = np.median([camera.gain * r["peak_unit"] / bg_sd[r["frame"]] for r in typical])
        return target / float(per_photon), "typical migrasomes of this movie"
    offsets = (np.arange(4) + 0.5) / 4
    peaks = [optics.vesicle_patch(10.0 + oy, 10.0 + ox, 0.5, shell_um)[2].max()
             for oy in offsets for ox in offsets]
    p_ref = float(np.mean(peaks)) / float(optics.radial_profile(0.5, shell_um).max())
    i_ref = float(np.median(camera.illum))
    b_ref = float(camera.bleach[len(camera.bleach) // 2])
    photons = target * float(np.median(bg_sd)) / (camera.gain * p_ref * i_ref * b_ref)
    return photons, "reference 1 um migrasome"


def expose(signal: np.ndarray, photons: float, camera: Camera,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts (float32) and a noisy uint16 frame from the signal per unit brightness.

    Shot noise is Poisson in photons; the camera multiplies by its gain, adds Gaussian read
    noise and its offset, rounds and clips to 16 bits.
    """
    expected = photons * signal + np.float32(camera.bg_photons) * camera.illum  # photons
    clean = (CAMERA_OFFSET + camera.gain * expected).astype(np.float32)
    noisy = rng.poisson(expected).astype(np.float32)
    noisy *= np.float32(camera.gain)
    noisy += rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(camera.read_noise)
    noisy += np.float32(CAMERA_OFFSET)
    np.rint(noisy, out=noisy)
    return clean, np.clip(noisy, 0, 65535).astype(np.uint16)


def finish_records(records: dict, photons: float, camera: Camera, noise: np.ndarray) -> None:
    """Turn the per-unit peaks of every row into SNR and intensities in counts."""
    for key in ("migrasomes", "fibers", "puncta", "cells"):
        for r in records[key]:
            r["snr"] = camera.gain * photons * r.pop("peak_unit") / noise[r["frame"]]
            if "mean_unit" in r:
                r["intensity_mean"] = camera.gain * photons * r.pop("mean_unit")
