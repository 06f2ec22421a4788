"""Shared fixtures: one small simulated movie, written once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

#: The shared movie: small enough for fast tests (160 px, 12 frames), a 48 µm field with two
#: cells and ~20 migrasome tracks (seed 2).
SIM_KWARGS = dict(preset="tspan4_gfp", seed=2, size=160, n_frames=12, n_cells=2,
                  pixel_size_um=0.3, frame_interval_s=60.0, snr="high")


@dataclass(frozen=True)
class SimMovie:
    """A simulated movie on disk (``path``, OME-TIFF) with its :class:`Simulation`."""

    path: Path
    sim: object


@pytest.fixture(scope="session")
def sim_movie(tmp_path_factory: pytest.TempPathFactory) -> SimMovie:
    """``SIM_KWARGS`` simulated and written as ``movie.ome.tif`` (with ``truth/``), once."""
    from migradetect.synthetic import simulate, write_simulation

    sim = simulate(**SIM_KWARGS)
    path = write_simulation(sim, tmp_path_factory.mktemp("sim_movie"), fmt="ome")
    return SimMovie(path=Path(path), sim=sim)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the napari tests when no display can be had (Qt would abort the interpreter).

    pytest-xvfb sets DISPLAY during configuration when Xvfb is installed; without Xvfb and
    without a real display the GUI tests are skipped with a reason instead of crashing.
    """
    import os
    import shutil

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or shutil.which("Xvfb"):
        return
    skip = pytest.mark.skip(reason="no display: install Xvfb (see .ci/run) to run napari tests")
    for item in items:
        if "napari" in item.keywords:
            item.add_marker(skip)
