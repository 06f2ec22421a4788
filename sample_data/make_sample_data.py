"""Regenerate the demo experiment in sample_data/ (run from the repository root).

    python sample_data/make_sample_data.py

Writes ``sample_data/demo_experiment/<movie>`` (movies only, so that ``migradetect run
sample_data/demo_experiment`` sees nothing else) and the ground truth of each movie in
``sample_data/truth/<movie>/``. Seeds 29, 34 and 44 are tuning seeds (0-99); never measure on them.
Refuses to run if the output folders already exist: delete them first.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from migradetect.synthetic import simulate, write_simulation

HERE = Path(__file__).resolve().parent
MOVIES = [
    # (movie name, format, simulate() arguments); 384 x 384 px at 0.2 µm/px, 30 frames, 60 s.
    # Seeds chosen (among tuning seeds) so that both cells stay inside the field for the whole
    # movie: cells touching the border are not counted per cell, and a 256-px field counted none.
    ("tspan4_gfp_01", "ome", dict(preset="tspan4_gfp", seed=29, size=384, n_frames=30, n_cells=2,
                                  pixel_size_um=0.2, frame_interval_s=60.0, snr="high")),
    ("wga_01", "ome", dict(preset="wga", seed=34, size=384, n_frames=30, n_cells=2,
                           pixel_size_um=0.2, frame_interval_s=60.0, snr="high")),
    ("tspan4_gfp_drift_02", "ome", dict(preset="tspan4_gfp", seed=44, size=384, n_frames=30,
                                        n_cells=2, pixel_size_um=0.2, frame_interval_s=60.0,
                                        snr="medium", drift=True)),
]
SUFFIX = {"ome": ".ome.tif", "imagej": ".tif"}


def main() -> int:
    experiment, truth_root = HERE / "demo_experiment", HERE / "truth"
    if experiment.exists() or truth_root.exists():
        print(f"{experiment} or {truth_root} exists; delete them first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        for name, fmt, kwargs in MOVIES:
            sim = simulate(**kwargs)
            out = Path(tmp) / name
            movie = write_simulation(sim, out, fmt=fmt)
            (Path(tmp) / "demo_experiment").mkdir(exist_ok=True)
            movie.rename(Path(tmp) / "demo_experiment" / f"{name}{SUFFIX[fmt]}")
            (Path(tmp) / "truth").mkdir(exist_ok=True)
            (out / "truth").rename(Path(tmp) / "truth" / name)
            snr = sim.params["snr_measured"]
            print(f"{name}: {len(sim.truth['tracks'])} migrasome tracks, "
                  f"SNR migrasomes {snr['migrasomes_typical_1um_plateau']:.1f}, "
                  f"fibers {snr['fibers_attached']:.1f}, cells {snr['cells']:.1f}")
        shutil.move(str(Path(tmp) / "demo_experiment"), experiment)
        shutil.move(str(Path(tmp) / "truth"), truth_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
