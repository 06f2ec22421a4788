"""Optics of the simulator: the PSF actually used and the blurred profiles of each object kind.

Private helper of :mod:`migradetect.synthetic`. Deliberately *not* the analysis' model: the
PSF is either an Airy pattern (circular pupil, incoherent) or a Gaussian whose width is off
from the nominal ``0.21 * wavelength / NA`` by a per-seed factor, and objects are 3-D shapes
(hollow vesicle shells, solid tubes, membrane sheets) projected onto the image plane before
blurring.

Blurred profiles are computed in Fourier space, where the projected 3-D object and the PSF
multiply: the 2-D transform of the projection of a sphere is its 3-D transform on the
``k_z = 0`` plane, ``4 pi (sin(qR) - qR cos(qR)) / q**3``, and a radially symmetric image is
recovered with a zero-order Hankel transform. No library evaluates these analytic transforms
for us, so they are written out here (a matrix of ``J0(q r)`` values, built once per movie).
Intensities are projected thickness in µm (the PSF integrates to 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

_DQ = 0.25  # rad/µm, step of the frequency grid (profiles repeat every 2 pi / dq = 25 µm)
_DR = 0.005  # µm, step of the radial profile tables
_R_MAX = 4.5  # µm, largest radius at which a radial profile is tabulated
_DX = 0.004  # µm, step of the line and edge profile tables
_X_MAX = 3.0  # µm, extent of the line and edge profile tables


@dataclass(frozen=True)
class PSF:
    """The lateral PSF used by one simulation.

    Parameters
    ----------
    kind
        ``"airy"`` or ``"gaussian"``.
    wavelength_um, numerical_aperture
        Nominal emission wavelength (µm) and NA.
    scale
        Width factor applied to the nominal PSF (1.0 = nominal; drawn per seed in 0.8-1.2).
    """

    kind: str
    wavelength_um: float
    numerical_aperture: float
    scale: float

    @property
    def nominal_sigma_um(self) -> float:
        """The analysis' nominal Gaussian sigma, 0.21 λ/NA, in µm."""
        return 0.21 * self.wavelength_um / self.numerical_aperture

    @property
    def sigma_um(self) -> float:
        """Sigma of the Gaussian closest to the PSF actually used, in µm."""
        return self.nominal_sigma_um * self.scale

    def otf(self, q: np.ndarray) -> np.ndarray:
        """Optical transfer function at angular spatial frequency ``q`` (rad/µm), OTF(0) = 1."""
        q = np.abs(np.asarray(q, dtype=float))
        if self.kind == "gaussian":
            return np.exp(-0.5 * (q * self.sigma_um) ** 2)
        # Airy: incoherent circular pupil, cut-off 2 NA / λ cycles/µm (scaled wavelength)
        q_cut = 2 * np.pi * 2 * self.numerical_aperture / (self.wavelength_um * self.scale)
        nu = np.clip(q / q_cut, 0.0, 1.0)
        return (2 / np.pi) * (np.arccos(nu) - nu * np.sqrt(1 - nu**2))

    @property
    def q_max(self) -> float:
        """Frequency (rad/µm) beyond which the OTF is negligible."""
        if self.kind == "gaussian":
            return 5.5 / self.sigma_um
        return 2 * np.pi * 2 * self.numerical_aperture / (self.wavelength_um * self.scale)

    @property
    def support_um(self) -> float:
        """Radius (µm) beyond which the blurred image of a point is negligible."""
        return 5.0 * self.sigma_um + 0.1

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "wavelength_um": self.wavelength_um,
            "numerical_aperture": self.numerical_aperture,
            "scale": self.scale,
            "nominal_sigma_um": self.nominal_sigma_um,
            "equivalent_sigma_um": self.sigma_um,
        }


def _sphere_ft(q: np.ndarray, radius: float) -> np.ndarray:
    """3-D Fourier transform of a solid unit-density sphere at |k| = q (q > 0), in µm³."""
    if radius <= 0:
        return np.zeros_like(q)
    qr = q * radius
    small = qr < 1e-3
    out = np.empty_like(q)
    big = ~small
    out[big] = 4 * np.pi * (np.sin(qr[big]) - qr[big] * np.cos(qr[big])) / q[big] ** 3
    out[small] = 4 / 3 * np.pi * radius**3
    return out


@dataclass
class Optics:
    """Blurred, pixel-integrated profiles of the scene's objects for one PSF and pixel size.

    Radial profiles (vesicles) are cached per radius, rounded to 5 nm.
    """

    psf: PSF
    pixel_size_um: float
    _cache: dict = field(default_factory=dict, repr=False)
    fiber_cache: dict = field(default_factory=dict, repr=False)  # used by the renderer

    def __post_init__(self) -> None:
        # midpoint rule in q avoids q = 0; J0 matrix shared by every radial profile
        self.q = (np.arange(int(np.ceil(self.psf.q_max / _DQ))) + 0.5) * _DQ
        self.r = np.arange(0.0, _R_MAX, _DR)
        self._weights = self.psf.otf(self.q) * self.q * _DQ / (2 * np.pi)
        self._j0 = special.j0(np.outer(self.r, self.q))
        # sub-samples per pixel so that the pixel box is integrated over the blurred profile
        self.subsample = int(np.clip(np.ceil(1.5 * self.pixel_size_um / self.psf.sigma_um), 2, 6))
        self.x = np.arange(0.0, _X_MAX, _DX)

    # -- vesicles -------------------------------------------------------------------------
    def radial_profile(self, radius_um: float, shell_um: float | None) -> np.ndarray:
        """Blurred projected thickness (µm) of a vesicle vs. distance ``self.r`` (µm).

        ``shell_um`` is the thickness of the labelled shell (None: a solid sphere).
        """
        key = (round(radius_um / _DR), None if shell_um is None else round(shell_um / _DR))
        prof = self._cache.get(key)
        if prof is None:
            radius = key[0] * _DR
            ft = _sphere_ft(self.q, radius)
            if shell_um is not None:
                ft = ft - _sphere_ft(self.q, max(radius - key[1] * _DR, 0.0))
            n = min(len(self.r), int((radius + self.psf.support_um) / _DR) + 2)
            prof = np.zeros(len(self.r))
            prof[:n] = self._j0[:n] @ (ft * self._weights)
            self._cache[key] = prof
        return prof

    def vesicle_patch(
        self, cy: float, cx: float, radius_um: float, shell_um: float | None
    ) -> tuple[int, int, np.ndarray]:
        """Pixel-integrated image of one vesicle centred at pixel ``(cy, cx)``.

        Returns ``(y0, x0, patch)``: the patch's top-left pixel and its values (µm of
        projected thickness, blurred).
        """
        half = int(np.ceil((radius_um + self.psf.support_um) / self.pixel_size_um)) + 1
        y0, x0 = int(np.floor(cy)) - half, int(np.floor(cx)) - half
        # the patch depends only on the radius and the sub-pixel position (kept to 1/64 px):
        # anchored migrasomes at their plateau reuse it from frame to frame
        fy, fx = round((cy - np.floor(cy)) * 64), round((cx - np.floor(cx)) * 64)
        shell_key = None if shell_um is None else round(shell_um / _DR)
        key = ("patch", round(radius_um / _DR), shell_key, fy, fx)
        patch = self._cache.get(key)
        if patch is None:
            prof = self.radial_profile(radius_um, shell_um)
            n = 2 * half + 2
            s = self.subsample
            offs = (np.arange(s) + 0.5) / s - 0.5
            yy = (np.arange(n)[:, None] + offs[None, :]).ravel() - half - fy / 64
            xx = (np.arange(n)[:, None] + offs[None, :]).ravel() - half - fx / 64
            rr = np.hypot(yy[:, None], xx[None, :]) * self.pixel_size_um
            vals = np.interp(rr, self.r, prof, right=0.0)
            patch = vals.reshape(n, s, n, s).mean(axis=(1, 3))
            if len(self._cache) > 20000:  # bound the memory of long drifting movies
                self._cache.clear()
            self._cache[key] = patch
        return y0, x0, patch

    # -- lines and edges ------------------------------------------------------------------
    def line_profile(self, radius_um: float) -> np.ndarray:
        """Blurred projected thickness (µm) across a solid tube vs. distance ``self.x`` (µm).

        Includes integration over a pixel's width across the line.
        """
        key = ("line", round(radius_um / _DR))
        prof = self._cache.get(key)
        if prof is None:
            a = max(key[1] * _DR, 1e-3)
            k = self.q
            # 1-D transform of the projected disk 2 sqrt(a² - x²) is 2 pi a J1(ka) / k
            tube = 2 * np.pi * a * special.j1(k * a) / k
            box = np.sinc(k * self.pixel_size_um / (2 * np.pi))  # np.sinc(x) = sin(pi x)/(pi x)
            g = tube * self.psf.otf(k) * box
            prof = (np.cos(np.outer(self.x, k)) @ g) * _DQ / np.pi
            self._cache[key] = prof
        return prof

    def edge_profile(self) -> np.ndarray:
        """Blurred, pixel-integrated unit step vs. signed distance ``self.x`` (µm) inside.

        Value at distance ``d`` >= 0 inside the edge; the value outside at ``d`` is
        ``1 - edge(d)``.
        """
        prof = self._cache.get("edge")
        if prof is None:
            k = self.q
            box = np.sinc(k * self.pixel_size_um / (2 * np.pi))
            lsf = (np.cos(np.outer(self.x, k)) @ (self.psf.otf(k) * box)) * _DQ / np.pi
            cum = np.cumsum(lsf) * _DX - 0.5 * lsf[0] * _DX
            prof = np.clip(0.5 + cum, 0.0, 1.0)
            self._cache["edge"] = prof
        return prof

    def edge_value(self, signed_d_um: np.ndarray) -> np.ndarray:
        """Blurred unit step at signed distance (positive inside), in [0, 1]."""
        prof = self.edge_profile()
        v = np.interp(np.abs(signed_d_um), self.x, prof, right=1.0)
        return np.where(signed_d_um >= 0, v, 1.0 - v)

    def line_value(self, d_um: np.ndarray, radius_um: float) -> np.ndarray:
        """Blurred projected thickness (µm) of a tube at distance ``d_um`` from its axis."""
        return np.interp(np.abs(d_um), self.x, self.line_profile(radius_um), right=0.0)
