"""Figures written next to the results: ``qc.png`` per movie and the per-experiment plots.

Only the non-interactive Agg canvas is used (never pyplot, never a GUI backend), so this works
headless, in threads and on cluster workers. Each function returns PNG bytes; writing them is
:mod:`migradetect.report`'s business.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from skimage.segmentation import find_boundaries

from migradetect.preprocess import block_mean

if TYPE_CHECKING:  # pragma: no cover
    from migradetect.pipeline import Results

log = logging.getLogger(__name__)

_DPI = 100
#: Longest side (px) of a qc panel's image: a panel is ~420 px wide at _DPI, so larger frames
#: are block-reduced first (a 2048² frame drawn at full size made ~1 GiB of float RGBA copies).
_QC_MAX_PX = 1024


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _reduce(a: np.ndarray, step: int, how: str) -> np.ndarray:
    """Block-reduce a 2-D array by ``step`` (edge-padded): ``mean`` (images) or ``any``
    (masks: a 1-px outline or skeleton stays visible)."""
    if step <= 1:
        return a
    if how == "mean":
        return block_mean(a, step)
    ny, nx = a.shape
    py, px = (-ny) % step, (-nx) % step
    if py or px:
        a = np.pad(a, ((0, py), (0, px)), mode="edge")
    return a.reshape(a.shape[0] // step, step, a.shape[1] // step, step).any(axis=(1, 3))


def _display_range(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1.0, 99.8])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def qc_figure(results: Results, *, max_panels: int = 3) -> bytes:
    """An overlay of the first, middle and last frames (those in ``results.qc_images``).

    Each panel shows the migrasome-channel frame (grey, 1-99.8 percentile stretch), cell
    outlines (cyan, from the ``cells`` label stack), fiber skeletons (yellow, from
    ``fibers``) and detected migrasomes as red circles whose diameter is ``diameter_um``.
    """
    frames = sorted(results.qc_images)[:max_panels]
    n = max(1, len(frames))
    fig = Figure(figsize=(4.2 * n, 4.4))
    labels = results.open_labels()
    dets = results.tables.get("migrasomes.csv")
    px = results.movie.get("pixel_size_um") or 1.0
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1)
        ax.set_axis_off()
        if not frames:
            ax.set_title("no frames")
            continue
        t = frames[i]
        full = np.asarray(results.qc_images[t])
        ny, nx = full.shape
        step = -(-max(ny, nx) // _QC_MAX_PX)
        extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)  # axes stay in full-frame pixels
        image = _reduce(full.astype(np.float32, copy=False), step, "mean")
        del full
        lo, hi = _display_range(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", extent=extent)
        overlay = np.zeros(image.shape + (4,), dtype=np.uint8)
        if labels is not None:
            outline = _reduce(find_boundaries(np.asarray(labels["cells"][t]), mode="inner"),
                              step, "any")
            skeleton = _reduce(np.asarray(labels["fibers"][t]) > 0, step, "any")
            overlay[outline] = (0, 255, 255, 230)
            overlay[skeleton] = (255, 230, 0, 230)
        ax.imshow(overlay, interpolation="nearest", extent=extent)
        n_det = 0
        if dets is not None and len(dets):
            d = dets[dets["frame"] == t]
            n_det = len(d)
            radii = np.nan_to_num(d["diameter_um"].to_numpy(float) / px / 2.0, nan=2.0)
            circles = [Circle((x, y), max(r, 1.0)) for y, x, r in
                       zip(d["y_px"].to_numpy(float), d["x_px"].to_numpy(float), radii,
                           strict=True)]
            ax.add_collection(PatchCollection(circles, facecolor="none", edgecolor="red",
                                              linewidth=0.8))
        ax.set_title(f"frame {t}: {n_det} migrasomes", fontsize=9)
    name = f"{results.movie.get('experiment', '')}/{results.movie.get('name', '')}"
    fig.suptitle(f"{name}  (cells cyan, fibers yellow, migrasomes red)", fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.94))
    return _png(fig)


def counted_only(tracks: pd.DataFrame, n_frames: Mapping[str, int]) -> pd.DataFrame:
    """The rows of a (per-experiment) tracks table that count as migrasomes in their movie
    (:func:`migradetect.across_time.counted_tracks`; ``n_frames``: frames per movie name;
    tracks of a movie missing from it are left out)."""
    from migradetect.across_time import counted_tracks

    keep = np.zeros(len(tracks), dtype=bool)
    for movie, idx in tracks.groupby("movie").indices.items():
        if movie in n_frames:
            keep[idx] = counted_tracks(tracks.iloc[idx], int(n_frames[movie])).to_numpy(bool)
    return tracks[keep]


def growth_curves_figure(migrasomes: pd.DataFrame, tracks: pd.DataFrame,
                         n_frames: Mapping[str, int] | None = None) -> bytes:
    """Diameter (µm) vs time since birth (min) for every track, aligned at birth.

    Thin grey lines are tracks (those born in the movie: ``born_before_start`` False, at least
    two frames); the red line is the median diameter at each time since birth (rounded to the
    second) and the band the interquartile range, shown where at least 3 tracks contribute.
    With ``n_frames`` (frames per movie name), only the tracks that count as migrasomes
    (:func:`migradetect.across_time.counted_tracks`, the rule of the per-cell counts) are drawn.
    """
    what = "migrasome tracks"
    if n_frames is not None:
        tracks = counted_only(tracks, n_frames)
        what = "counted migrasome tracks"
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel("time since birth (min)")
    ax.set_ylabel("diameter (µm)")
    key = ["experiment", "movie", "track_id"]
    t = tracks.loc[~tracks["born_before_start"].astype(bool) & (tracks["n_frames"] >= 2)
                   & tracks["birth_time_s"].notna(), key + ["birth_time_s"]]
    m = migrasomes.loc[migrasomes["track_id"] >= 0, key + ["time_s", "diameter_um"]]
    m = m.merge(t, on=key, how="inner")
    m = m[np.isfinite(m["time_s"]) & np.isfinite(m["diameter_um"])]
    if len(m) == 0:
        ax.text(0.5, 0.5, "no tracks with a birth in the movie", ha="center", va="center",
                transform=ax.transAxes)
        return _png(fig)
    m = m.assign(age_min=(m["time_s"] - m["birth_time_s"]) / 60.0)
    for _, g in m.groupby(key, sort=True):
        g = g.sort_values("age_min")
        ax.plot(g["age_min"], g["diameter_um"], color="0.6", linewidth=0.5, alpha=0.5)
    by_age = m.assign(age_s=np.round(m["age_min"] * 60.0)).groupby("age_s")["diameter_um"]
    stats = by_age.quantile([0.25, 0.5, 0.75]).unstack()
    stats = stats[by_age.size() >= 3]
    if len(stats):
        age = stats.index.to_numpy(float) / 60.0
        ax.fill_between(age, stats[0.25], stats[0.75], color="red", alpha=0.2, label="IQR")
        ax.plot(age, stats[0.5], color="red", linewidth=1.5, label="median")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{m.groupby(key).ngroups} {what}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def migrasomes_per_cell_figure(cells: pd.DataFrame, n_frames: Mapping[str, int]) -> bytes:
    """Migrasomes per counted cell, one box (with the cells as points) per movie.

    Cells are counted as in summary.csv (:func:`migradetect.report.counted_cells`).
    """
    from migradetect.report import counted_cells

    fig = Figure(figsize=(max(4.0, 0.8 * len(n_frames) + 2.0), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_ylabel("migrasomes per cell")
    data, names = [], []
    for movie in sorted(n_frames):
        c = counted_cells(cells[cells["movie"] == movie], n_frames[movie])
        data.append(c["n_migrasomes"].to_numpy(float))
        names.append(str(movie))
    if not any(len(d) for d in data):
        ax.text(0.5, 0.5, "no counted cells", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)
    positions = np.arange(1, len(data) + 1)
    ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for p, d in zip(positions, data, strict=True):
        ax.scatter(p + rng.uniform(-0.12, 0.12, len(d)), d, s=8, color="tab:blue", alpha=0.7)
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return _png(fig)
