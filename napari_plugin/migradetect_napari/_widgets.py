"""The run widget: parameters in µm and s, a one-frame preview, a whole-movie run.

The widget builds its :class:`migradetect.config.Config` exactly as the CLI does --
``load_config(preset or YAML file, overrides)`` -- so a GUI run and ``migradetect run`` with
the same values give the same numbers; "Save preset" writes the config with
``config.save_config`` for the CLI (``migradetect run --config FILE``). The image layers
are passed to the core as a :class:`migradetect.io.Movie` (``io.movie_from_array``); the
core never sees the viewer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

import napari.viewer

from migradetect import io, layers, pipeline, report
from migradetect.config import Config, load_config, presets_dir, save_config
from migradetect.errors import MigradetectError

from ._layers import add_layers, meta

log = logging.getLogger(__name__)

#: Names of the preview layers (replaced at every preview).
PREVIEW_NAMES = ("preview cells", "preview fibers", "preview migrasomes")


class RunCancelled(MigradetectError):
    """The user pressed Cancel during a run."""


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued Qt signal)."""

    progressed = Signal(int, int)


def preset_names() -> list[str]:
    """Preset names shipped in ``config.presets_dir()`` (``tspan4_gfp``, ``wga`` ...)."""
    return sorted(p.stem for p in Path(presets_dir()).glob("*.yaml"))


class RunWidget(Container):
    """Run migradetect on image layers of the viewer (npe2 widget "Run migradetect")."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.worker: Any = None
        self.results: pipeline.Results | None = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

        self.image = ComboBox(label="migrasome channel", choices=self._image_choices)
        self.cell_image = ComboBox(label="cell channel", choices=self._cell_choices)
        self.preset = ComboBox(label="preset", choices=preset_names(), value="tspan4_gfp")
        self.config_file = FileEdit(label="or YAML file", mode="r", filter="*.yaml *.yml",
                                    value="")
        self.pixel_size_um = FloatSpinBox(label="pixel size (µm)", min=0.001, max=50.0,
                                          step=0.001, value=0.15)
        self.frame_interval_s = FloatSpinBox(label="frame interval (s)", min=0.001,
                                             max=1e5, step=1.0, value=60.0)
        self.min_diameter_um = FloatSpinBox(label="min diameter (µm)", min=0.05, max=10.0,
                                            step=0.05)
        self.max_diameter_um = FloatSpinBox(label="max diameter (µm)", min=0.1, max=20.0,
                                            step=0.1)
        self.threshold_snr = FloatSpinBox(label="threshold (SNR)", min=0.0, max=100.0,
                                          step=0.5)
        self.emission_nm = FloatSpinBox(label="emission (nm)", min=300.0, max=1000.0,
                                        step=10.0)
        self.numerical_aperture = FloatSpinBox(label="NA", min=0.1, max=1.7, step=0.05)
        self.psf_sigma_um = FloatSpinBox(label="PSF sigma (µm, 0: from optics)", min=0.0,
                                         max=2.0, step=0.005)
        self.max_step_um = FloatSpinBox(label="tracking max step (µm)", min=0.01, max=20.0,
                                        step=0.1)
        self.experiment = LineEdit(label="experiment", value="napari")
        self.out_dir = FileEdit(label="output folder (optional)", mode="d", value="")
        self.preview_button = PushButton(text="Preview current frame")
        self.run_button = PushButton(text="Run on whole movie")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.save_button = PushButton(text="Save parameters as YAML preset...")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.extend([self.image, self.cell_image, self.preset, self.config_file,
                     self.pixel_size_um, self.frame_interval_s, self.min_diameter_um,
                     self.max_diameter_um, self.threshold_snr, self.emission_nm,
                     self.numerical_aperture, self.psf_sigma_um, self.max_step_um,
                     self.experiment, self.out_dir, self.preview_button, self.run_button,
                     self.cancel_button, self.save_button, self.progress, self.status])

        self.preset.changed.connect(self._load_preset)
        self.config_file.changed.connect(self._load_preset)
        self.image.changed.connect(self._read_calibration)
        self.preview_button.changed.connect(self.preview)
        self.run_button.changed.connect(lambda: self.run())
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._ask_save_preset)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_choices)
        self._load_preset()
        self._read_calibration()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.data.ndim in (2, 3)]

    def _cell_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [("(same as migrasome channel)", None), *self._image_choices()]

    def _refresh_choices(self, _event: Any = None) -> None:
        self.image.reset_choices()
        self.cell_image.reset_choices()

    def _read_calibration(self, _value: Any = None) -> None:
        """Take the pixel size and frame interval from the chosen layer (metadata or scale)."""
        layer = self.image.value
        if layer is None:
            return
        m = meta(layer)
        px, dt = m.get("pixel_size_um"), m.get("frame_interval_s")
        if m and not m.get("calibrated", True):
            self.status.value = ("the movie has no pixel size in its file: set the pixel size "
                                 "and frame interval before running")
        if not m:  # a layer from elsewhere: trust its scale only when it is not the default
            scale = tuple(float(s) for s in layer.scale)
            px = scale[-1] if scale[-1] != 1.0 else None
            dt = scale[0] if len(scale) == 3 and scale[0] != 1.0 else None
        if px:
            self.pixel_size_um.value = float(px)
        if dt:
            self.frame_interval_s.value = float(dt)

    # ------------------------------------------------------------------ config
    def _base(self) -> str | Path:
        path = self.config_file.value
        if path and str(path) not in ("", ".") and Path(path).is_file():
            return Path(path)
        return str(self.preset.value)

    def _load_preset(self, _value: Any = None) -> None:
        """Fill the parameter fields from the chosen preset or YAML file."""
        try:
            config = load_config(self._base())
        except MigradetectError as exc:
            self.status.value = str(exc)
            return
        self.min_diameter_um.value = config.migrasomes.min_diameter_um
        self.max_diameter_um.value = config.migrasomes.max_diameter_um
        self.threshold_snr.value = config.migrasomes.threshold_snr
        self.emission_nm.value = config.optics.emission_wavelength_nm
        self.numerical_aperture.value = config.optics.numerical_aperture
        self.psf_sigma_um.value = config.optics.psf_sigma_um or 0.0
        self.max_step_um.value = config.tracking.max_step_um

    def overrides(self) -> dict[str, Any]:
        """The widget's values as a nested override dict (what the CLI would pass)."""
        out: dict[str, Any] = {
            "optics": {"emission_wavelength_nm": float(self.emission_nm.value),
                       "numerical_aperture": float(self.numerical_aperture.value),
                       "psf_sigma_um": (float(self.psf_sigma_um.value)
                                        if self.psf_sigma_um.value > 0 else None)},
            "migrasomes": {"min_diameter_um": float(self.min_diameter_um.value),
                           "max_diameter_um": float(self.max_diameter_um.value),
                           "threshold_snr": float(self.threshold_snr.value)},
            "tracking": {"max_step_um": float(self.max_step_um.value)},
        }
        channels = self._channel_indexes()
        if channels:
            out["channels"] = channels
        return out

    def _channel_indexes(self) -> dict[str, int | None]:
        """Channel roles as indexes of the source file, when the layers came from our reader."""
        mig, cell = self.image.value, self.cell_image.value
        if mig is None or "channel" not in meta(mig):
            return {}
        c_mig = meta(mig)["channel"]
        c_cell = None if cell is None else meta(cell).get("channel")
        if cell is not None and (c_cell is None or meta(cell).get("path") != meta(mig).get("path")):
            return {}
        return {"migrasome": int(c_mig), "cell": None if c_cell is None else int(c_cell)}

    def build_config(self) -> Config:
        """The run's Config: ``load_config(preset or file, overrides())``, as the CLI builds it."""
        return load_config(self._base(), self.overrides())

    def save_preset(self, path: str | Path) -> Path:
        """Write the current parameters as a YAML preset (``migradetect run --config``)."""
        path = Path(path)
        save_config(self.build_config(), path)
        self.status.value = f"saved {path.name}"
        return path

    def _ask_save_preset(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        name, _ = QFileDialog.getSaveFileName(self.native, "Save parameters",
                                              "migradetect.yaml", "YAML (*.yaml *.yml)")
        if name:
            self.save_preset(name)

    # ------------------------------------------------------------------ data
    def _stack(self) -> tuple[Any, bool]:
        """(T, C, Y, X) dask stack of the chosen layers and whether a cell channel is given."""
        mig = self.image.value
        if mig is None:
            raise MigradetectError("no image layer is chosen.",
                                   fix="open a movie, then choose its migrasome channel.")
        cell = self.cell_image.value
        parts = [mig] if cell is None or cell is mig else [mig, cell]
        arrays = []
        for layer in parts:
            a = da.asarray(layer.data)
            arrays.append(a[None] if a.ndim == 2 else a)
        if len({a.shape for a in arrays}) != 1:
            raise MigradetectError(
                f"the channel layers differ in shape ({[a.shape for a in arrays]}).",
                fix="choose two channels of the same movie.")
        return da.stack(arrays, axis=1), len(arrays) == 2

    def movie(self) -> io.Movie:
        """The chosen layers as a Movie with the widget's calibration."""
        stack, two = self._stack()
        name = meta(self.image.value).get("movie") or self.image.value.name.split(" [")[0]
        return io.movie_from_array(stack, pixel_size_um=float(self.pixel_size_um.value),
                                   frame_interval_s=float(self.frame_interval_s.value),
                                   name=str(name).replace("/", "_"),
                                   channel_names=("migrasome", "cell") if two else None)

    def _run_config(self, movie: io.Movie) -> Config:
        """The config with channel roles pointing at the movie made of the chosen layers."""
        config = self.build_config()
        cell = 1 if movie.data.shape[1] == 2 else None
        return dataclasses.replace(config, channels=dataclasses.replace(
            config.channels, migrasome=0, cell=cell))

    def _movie_and_config(self) -> tuple[Any, Any] | None:
        """The movie and its run config, or None with the error shown in the status line."""
        try:
            movie = self.movie()
            return movie, self._run_config(movie)
        except MigradetectError as exc:
            self.status.value = str(exc)
            return None

    # ------------------------------------------------------------------ preview
    def preview(self) -> pipeline.FrameOutput | None:
        """Cells, fibers and migrasomes of the current frame only, as preview layers."""
        prepared = self._movie_and_config()
        if prepared is None:
            return None
        movie, config = prepared
        t = int(self.viewer.dims.current_step[0]) if movie.n_frames > 1 else 0
        t = min(max(t, 0), movie.n_frames - 1)
        frame = np.asarray(movie.data[t, 0, 0])
        cell = np.asarray(movie.data[t, 1, 0]) if movie.data.shape[1] == 2 else None
        px = float(self.pixel_size_um.value)
        out = pipeline.process_frame(frame, cell_frame=cell, frame_index=t, pixel_size_um=px,
                                     psf_sigma_um=config.optics.psf_sigma, config=config)
        scale = layers.spatial_scale(px, float(self.frame_interval_s.value))
        # one-frame (1, Y, X) stacks placed at frame t: shown on that frame only
        labels_kw = {"scale": scale, "translate": (t * scale[0], 0.0, 0.0),
                     "axis_labels": ("t", "y", "x"), "units": ("s", "µm", "µm")}
        det = out.detections.assign(track_id=-1, cell_id=-1)
        points = layers.migrasome_points(det, pixel_size_um=px,
                                         frame_interval_s=float(self.frame_interval_s.value),
                                         name=PREVIEW_NAMES[2], meta={"role": "preview"})
        add_layers(self.viewer, [
            (out.cell_labels[None], {"name": PREVIEW_NAMES[0], "opacity": 0.3, **labels_kw},
             "labels"),
            (out.fiber_labels[None], {"name": PREVIEW_NAMES[1], **labels_kw}, "labels"),
            points,
        ])
        self.status.value = f"frame {t}: {len(out.detections)} migrasomes"
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> Any:
        """Analyse the whole movie in a thread worker; results are added as layers."""
        prepared = self._movie_and_config()
        if prepared is None:
            return None
        movie, config = prepared
        out = str(self.out_dir.value or "")
        movie_dir = (Path(out) / str(self.experiment.value) / movie.name
                     if out not in ("", ".") else None)
        self._cancel.clear()
        self.progress.max = movie.n_frames + pipeline.N_ACROSS_TIME_STEPS
        self.progress.value = 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"running on {movie.n_frames} frames..."
        self.worker = create_worker(self._analyze, movie, config, str(self.experiment.value),
                                    movie_dir, _start_thread=False)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def _analyze(self, movie: io.Movie, config: Config, experiment: str,
                 movie_dir: Path | None) -> tuple[pipeline.Results | Exception, Path | None]:
        """Worker thread: the same call as the CLI, then (optionally) the same files.

        A cancel or a user-fixable error is returned (not raised) and shown in the widget.
        """
        def progress(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise RunCancelled("the run was cancelled.")
            self._relay.progressed.emit(int(done), int(total))

        labels_path = None
        try:
            if movie_dir is not None:
                movie_dir.mkdir(parents=True, exist_ok=True)
                labels_path = movie_dir / "labels.zarr"
            results = pipeline.analyze_movie(movie, config, experiment=experiment,
                                             labels_path=labels_path, progress=progress)
            if movie_dir is not None:
                report.write_movie_results(results, movie_dir)
        except (MigradetectError, OSError) as exc:  # user-fixable: shown in the widget
            return exc, movie_dir
        return results, movie_dir

    def cancel(self) -> None:
        """Stop the run at the next progress report (after the current window of frames)."""
        self._cancel.set()
        self.status.value = "cancelling..."

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max = total
        self.progress.value = done

    def _on_done(self, value: tuple[Any, Path | None]) -> None:
        results, movie_dir = value
        if isinstance(results, Exception):
            self._on_error(results)
            return
        self.results = results
        add_layers(self.viewer, results_to_layers(results, movie_dir))
        t = results.tables
        self.status.value = (f"{len(t['tracks.csv'])} migrasome tracks, "
                             f"{len(t['cells.csv'])} cells"
                             + (f"; saved in {movie_dir}" if movie_dir else ""))

    def _on_error(self, exc: Exception) -> None:
        self.status.value = ("cancelled" if isinstance(exc, RunCancelled)
                             else f"failed: {exc}")
        log.warning("migradetect run failed: %s", exc)

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False


def results_to_layers(results: pipeline.Results,
                      movie_dir: Path | None) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer tuples of a run's results (labels, points with the tables, tracks)."""
    px = float(results.movie["pixel_size_um"])
    dt = results.movie.get("frame_interval_s")
    m = {"movie_dir": None if movie_dir is None else str(Path(movie_dir).resolve()),
         "movie": results.movie.get("name"), "pixel_size_um": px, "frame_interval_s": dt,
         "curated": False}
    out = []
    group = results.open_labels()
    if group is not None:
        out.extend(layers.label_layers(group, pixel_size_um=px, frame_interval_s=dt, meta=m))
    points = layers.migrasome_points(results.tables["migrasomes.csv"], pixel_size_um=px,
                                     frame_interval_s=dt, meta=m)
    points[1]["metadata"][layers.METADATA_KEY]["tables"] = dict(results.tables)
    out.append(points)
    for extra in (layers.migrasome_tracks(results.tables["migrasomes.csv"], pixel_size_um=px,
                                          frame_interval_s=dt, meta=m),
                  layers.cell_tracks(results.tables["cell_frames.csv"], pixel_size_um=px,
                                     frame_interval_s=dt, meta=m)):
        if extra is not None:
            out.append(extra)
    return out
