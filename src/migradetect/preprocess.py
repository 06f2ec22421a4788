"""Preprocessing: background and uneven-illumination removal, bleaching, optional denoising."""

from __future__ import annotations

from dataclasses import dataclass

from migradetect.params import param


@dataclass(frozen=True)
class PreprocessConfig:
    background_radius_um: float = param(
        6.0, unit="um", min=0.5, max=200.0,
        help="scale of the smooth background; larger than the largest migrasome",
    )
    bleach_correction: bool = param(True, help="correct intensities for photobleaching")
    denoise_sigma_um: float = param(0.0, unit="um", min=0.0, max=2.0,
                                    help="Gaussian denoising sigma; 0 disables")
