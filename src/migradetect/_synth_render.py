"""Rendering the simulated scene into noise-free frames, truth labels and per-object records.

Private helper of :mod:`migradetect.synthetic`. Every object is drawn in a local patch of
the frame (never over the whole frame): vesicles from their blurred radial profile, fibers
from the blurred profile across a tube evaluated at each pixel's distance to the fiber's
centreline, cells from a blurred edge and membrane rim at each pixel's distance to the
outline. Intensities are in *relative units*: a 1 µm migrasome of brightness 1 peaks at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.draw import line as draw_line

from migradetect._synth_optics import Optics
from migradetect._synth_scene import Cell, Scene

_PHI = np.linspace(-np.pi, np.pi, 721)
_CHUNK_UM = 3.0  # fibers are drawn in pieces this long, each in its own small box


@dataclass(frozen=True)
class Look:
    """How a marker labels each structure (relative units; reference migrasome peak = 1)."""

    marker: str
    fiber_peak: float  # peak of a 100 nm wide fiber
    cyto: float  # cell interior
    rim: float  # extra at the cell membrane edge
    nucleus: float  # interior factor over the nucleus

    @classmethod
    def draw(cls, rng: np.random.Generator, marker: str) -> Look:
        if marker == "tspan4_gfp":
            return cls(marker, 1.0 / rng.uniform(4.0, 12.0), rng.uniform(0.15, 0.3), 0.05, 0.5)
        return cls(marker, 1.0 / rng.uniform(2.0, 4.0), rng.uniform(0.15, 0.25),
                   rng.uniform(0.6, 0.9), 0.85)


@dataclass
class FrameRender:
    rel: np.ndarray  # (Y, X) float64, relative units
    cell_labels: np.ndarray  # (Y, X) int32
    fiber_labels: np.ndarray  # (Y, X) int32
    cell_rel: np.ndarray  # (Y, X) own intensity of the cells (for SNR)
    migrasomes: list[dict]
    fibers: list[dict]
    puncta: list[dict]


def _add(img: np.ndarray, y0: int, x0: int, patch: np.ndarray) -> bool:
    """Add ``patch`` with its top-left corner at pixel (y0, x0), clipped to ``img``."""
    ny, nx = img.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + patch.shape[0], ny), min(x0 + patch.shape[1], nx)
    if ya >= yb or xa >= xb:
        return False
    img[ya:yb, xa:xb] += patch[ya - y0:yb - y0, xa - x0:xb - x0]
    return True


def _cell(img, cell_rel, labels, cell: Cell, t: float, shift: np.ndarray, optics: Optics,
          look: Look) -> None:
    """Draw one cell; return its label mask."""
    px = optics.pixel_size_um
    i = cell.index(t)
    cy, cx = cell.centre[i] / px + shift
    r_tab = cell.radius(_PHI, t)
    dr = np.gradient(r_tab, _PHI)
    reach = (r_tab.max() + optics.psf.support_um) / px + 1
    ny, nx = img.shape
    ya, yb = max(int(cy - reach), 0), min(int(cy + reach) + 2, ny)
    xa, xb = max(int(cx - reach), 0), min(int(cx + reach) + 2, nx)
    if ya >= yb or xa >= xb:
        return None
    vy = ((np.arange(ya, yb, dtype=np.float32) - np.float32(cy)) * np.float32(px))[:, None]
    vx = ((np.arange(xa, xb, dtype=np.float32) - np.float32(cx)) * np.float32(px))[None, :]
    rho = np.hypot(vy, vx)
    two_pi = np.float32(2 * np.pi)
    phi = np.arctan2(vy, vx) - np.float32(cell.heading[i] - np.pi)
    phi = np.mod(phi, two_pi) - np.float32(np.pi)
    r = np.interp(phi, _PHI, r_tab).astype(np.float32)
    slope = np.interp(phi, _PHI, dr).astype(np.float32)
    d = (r - rho) * r / np.sqrt(r**2 + slope**2)  # signed, µm, + inside
    # cell-frame coordinates for the texture and the nucleus
    along = rho * np.cos(phi)
    across = rho * np.sin(phi)
    tex = np.ones_like(rho)
    for ky, kx, ph in cell.texture.astype(np.float32):
        tex += np.float32(0.06) * np.cos(ky * across + kx * along + ph)
    off, ra, rb = cell.nucleus
    nuc = np.sqrt(((along - off * cell.a_long) / (ra * cell.a_long)) ** 2
                  + (across / (rb * cell.a_short)) ** 2)
    nuc_factor = 1.0 - (1.0 - look.nucleus) * optics.edge_value((1.0 - nuc) * ra * cell.a_long)
    height = 0.35 + 0.65 * np.clip(d / (0.35 * cell.a_short), 0.0, 1.0)
    rim = optics.line_value(d, 0.1) / optics.line_profile(0.1)[0]
    val = look.cyto * optics.edge_value(d) * height * tex * nuc_factor + look.rim * rim
    img[ya:yb, xa:xb] += val
    cell_rel[ya:yb, xa:xb] += val
    inside = d >= 0
    sub = labels[ya:yb, xa:xb]
    sub[inside] = cell.cell_id
    mask = np.zeros(img.shape, bool)
    mask[ya:yb, xa:xb] = inside
    return mask


def _seg_distance(yy, xx, p, q) -> np.ndarray:
    """Distance (px) from pixel centres to the segment p-q (px)."""
    v = q - p
    ll = float(v @ v)
    if ll == 0:
        return np.hypot(yy - p[0], xx - p[1])
    u = np.clip(((yy - p[0]) * v[0] + (xx - p[1]) * v[1]) / ll, 0, 1)
    return np.hypot(yy - (p[0] + u * v[0]), xx - (p[1] + u * v[1]))


def _fiber_canvas(lines_px, radius_um, shape, optics: Optics):
    """Blurred image of one fiber (its polylines in px) in its bounding box, and its centreline.

    Returns ``(y0, x0, canvas, rr, cc)``: the box's top-left pixel, the profile values (µm of
    projected thickness) and the centreline pixels inside the frame.
    """
    px = optics.pixel_size_um
    pad = optics.psf.support_um / px + 1
    pts = np.concatenate(lines_px)
    y0, x0 = int(np.floor(pts[:, 0].min() - pad)), int(np.floor(pts[:, 1].min() - pad))
    y1, x1 = int(np.ceil(pts[:, 0].max() + pad)) + 1, int(np.ceil(pts[:, 1].max() + pad)) + 1
    canvas = np.zeros((y1 - y0, x1 - x0))
    ny, nx = shape
    rows, cols = [], []
    for line in lines_px:
        for p, q in zip(line[:-1], line[1:]):
            n = max(1, math.ceil(np.linalg.norm(q - p) * px / _CHUNK_UM))
            for k in range(n):
                a, b = p + (q - p) * k / n, p + (q - p) * (k + 1) / n
                lo, hi = np.minimum(a, b) - pad, np.maximum(a, b) + pad
                ya, yb = int(np.floor(lo[0])), int(np.ceil(hi[0])) + 1
                xa, xb = int(np.floor(lo[1])), int(np.ceil(hi[1])) + 1
                ya, yb, xa, xb = max(ya, 0, y0), min(yb, ny, y1), max(xa, 0, x0), min(xb, nx, x1)
                if ya >= yb or xa >= xb:
                    continue
                yy, xx = np.arange(ya, yb)[:, None], np.arange(xa, xb)[None, :]
                val = optics.line_value(_seg_distance(yy, xx, a, b) * px, radius_um)
                sub = canvas[ya - y0:yb - y0, xa - x0:xb - x0]
                np.maximum(sub, val, out=sub)
            (py, px_), (qy, qx) = np.rint(p).astype(int), np.rint(q).astype(int)
            rr, cc = draw_line(py, px_, qy, qx)
            ok = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
            rows.append(rr[ok])
            cols.append(cc[ok])
    return y0, x0, canvas, np.concatenate(rows), np.concatenate(cols)


def _fiber(img, flabels, lines_px, radius_um, weight, fiber_id, optics: Optics,
           static: bool) -> float:
    """Draw one fiber (its polylines in px); return its own peak (relative units).

    A ``static`` (broken) fiber is cached by its geometry, so that it is drawn once while the
    stage does not drift.
    """
    geometry = tuple(np.rint(np.concatenate(lines_px) * 64).astype(int).ravel())
    key = ("fiber", fiber_id, radius_um, geometry)
    cache = optics.fiber_cache
    hit = cache.get(key) if static else None
    if hit is None:
        hit = _fiber_canvas(lines_px, radius_um, img.shape, optics)
        if static:
            if len(cache) > 500:  # a drifting stage moves every fiber: bound the memory
                cache.clear()
            cache[key] = hit
    y0, x0, canvas, rr, cc = hit
    flabels[rr, cc] = fiber_id
    canvas = canvas * weight
    _add(img, y0, x0, canvas)
    return float(canvas.max()) if canvas.size else 0.0


def render_frame(scene: Scene, f: int, shift: np.ndarray, shape: tuple[int, int], optics: Optics,
                 look: Look, *, channel: str = "marker") -> FrameRender:
    """Noise-free frame ``f`` in relative units, with truth labels and per-object records.

    ``shift`` is the drift (dy, dx) in pixels; ``channel`` is ``"marker"`` (the preset's
    stain) or ``"cell"`` (a cytoplasmic cell marker: cells only, faint fibers).
    """
    px = optics.pixel_size_um
    t = float(scene.t_frames[f])
    img = np.zeros(shape)
    cell_rel = np.zeros(shape)
    clabels = np.zeros(shape, np.int32)
    flabels = np.zeros(shape, np.int32)
    cell_look = look if channel == "marker" else Look("cell", 0.02, 1.0, 0.0, 0.9)
    for cell in scene.cells:
        _cell(img, cell_rel, clabels, cell, t, shift, optics, cell_look)
    ref_line = optics.line_profile(0.05)[0]
    fibers = []
    for fib in scene.fibers:
        lines, alpha, cid = fib.polylines(scene.cells[fib.cell_id - 1], t)
        if not lines or alpha < 1e-3:
            continue
        lines_px = [ln / px + shift for ln in lines]
        # membrane tube: brightness grows with the circumference (radius), not the cross-section
        weight = cell_look.fiber_peak / ref_line * fib.brightness * alpha * 0.05 / fib.radius_um
        peak = _fiber(img, flabels, lines_px, fib.radius_um, weight, fib.fiber_id, optics,
                      static=cid < 0)
        pts = np.concatenate(lines_px)
        inview = bool(((pts[:, 0] >= -0.5) & (pts[:, 0] < shape[0] - 0.5) & (pts[:, 1] >= -0.5)
                       & (pts[:, 1] < shape[1] - 0.5)).any() or peak > 0)
        length = sum(float(np.linalg.norm(np.diff(ln, axis=0), axis=1).sum()) for ln in lines)
        n_branch = len(lines) - 1
        mid = lines_px[0][len(lines_px[0]) // 2]
        fibers.append({"fiber_id": fib.fiber_id, "cell_id": cid, "length_um": length,
                       "n_tips": 2 + n_branch, "n_branch_points": n_branch, "visible": inview,
                       "peak_rel": peak, "y_px": float(mid[0]), "x_px": float(mid[1])})
    migrasomes = []
    if channel == "marker":
        ref = optics.radial_profile(0.5, scene.notes["shell_um"]).max()
        for mg in scene.migrasomes:
            d = float(mg.diameter(np.array([t]))[0])
            if d <= 0:
                continue
            cy, cx = mg.pos / px + shift
            y0, x0, patch = optics.vesicle_patch(cy, cx, d / 2, mg.shell_um)
            patch = patch * (mg.brightness / ref)
            _add(img, y0, x0, patch)
            migrasomes.append({"track_id": mg.track_id, "y_px": cy, "x_px": cx, "diameter_um": d,
                               "peak_rel": float(patch.max()),
                               "mean_rel": float(patch[patch >= 0.5 * patch.max()].mean())})
    puncta = []
    for pu in scene.puncta if channel == "marker" else []:
        cell = scene.cells[pu.cell_id - 1]
        i = cell.index(t)
        rad = pu.rho[i] * float(cell.radius(np.array(pu.phi[i]), t))
        ang = cell.heading[i] + pu.phi[i]
        cy, cx = (cell.centre[i] + rad * np.array([math.sin(ang), math.cos(ang)])) / px + shift
        r = pu.diameter_um / 2
        y0, x0, patch = optics.vesicle_patch(cy, cx, r, None)
        patch = patch * (pu.brightness / optics.radial_profile(r, None).max())
        if _add(img, y0, x0, patch):
            puncta.append({"punctum_id": pu.punctum_id, "cell_id": pu.cell_id,
                           "y_px": cy, "x_px": cx,
                           "diameter_um": pu.diameter_um, "peak_rel": float(patch.max())})
    return FrameRender(img, clabels, flabels, cell_rel, migrasomes, fibers, puncta)
