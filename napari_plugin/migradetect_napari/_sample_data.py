"""Sample-data contributions: small simulated movies (``migradetect.synthetic.simulate``).

Each returns the movie as image layer tuples with the simulated calibration as the
layer scale (µm, s), so the run widget reads the pixel size and frame interval from them.
"""

from __future__ import annotations

from typing import Any

from migradetect import io, layers, synthetic

SAMPLE_SIZE = 256  # pixels
SAMPLE_FRAMES = 20
SAMPLE_SEED = 7  # tests and demos use seeds 0-99


def simulated_movie_layers(preset: str, *, size: int = SAMPLE_SIZE,
                           n_frames: int = SAMPLE_FRAMES, seed: int = SAMPLE_SEED,
                           n_cells: int = 2) -> list[tuple[Any, dict[str, Any], str]]:
    """Image layer tuples of a simulated movie of ``preset`` (``tspan4_gfp`` or ``wga``)."""
    sim = synthetic.simulate(preset=preset, seed=seed, size=size, n_frames=n_frames,
                             n_cells=n_cells)
    movie = io.movie_from_array(sim.image, pixel_size_um=sim.pixel_size_um,
                                frame_interval_s=sim.frame_interval_s,
                                channel_names=sim.channel_names, name=f"simulated {preset}")
    out = layers.movie_layers(movie)
    for _, kw, _ in out:
        kw["metadata"][layers.METADATA_KEY]["simulation_seed"] = seed
    return out


def tspan4_gfp_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """A simulated TSPAN4-GFP movie (256 x 256 px, 20 frames, 0.15 µm/px, 60 s/frame)."""
    return simulated_movie_layers("tspan4_gfp")


def wga_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """A simulated WGA movie (256 x 256 px, 20 frames, 0.15 µm/px, 60 s/frame)."""
    return simulated_movie_layers("wga")
