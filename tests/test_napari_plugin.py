"""The napari plugin: manifest, reader, sample data, run and review widgets, screenshot.

Needs napari and a display (pytest-xvfb provides one). Result folders are made by hand
(tests/test_napari_core.py) so expected values are known; one test runs the real pipeline
on a small simulated movie through the run widget and compares with a direct API run.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

import tifffile  # noqa: E402

from migradetect import curation, io, pipeline, schema  # noqa: E402
from migradetect.config import load_config  # noqa: E402
from migradetect.report import read_csv  # noqa: E402

from migradetect_napari._layers import camera  # noqa: E402
from test_napari_core import DT, N_FRAMES, PX, write_result_folder  # noqa: E402

pytestmark = pytest.mark.napari

PLUGIN = "migradetect"


def write_ome(path: Path, shape=(4, 2, 24, 32)) -> np.ndarray:
    data = (np.arange(np.prod(shape)) % 1000).astype(np.uint16).reshape(shape)
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
        "TimeIncrement": 30.0, "TimeIncrementUnit": "s", "Channel": {"Name": ["gfp", "cell"]}})
    return data


# ---------------------------------------------------------------------------- manifest


def test_every_contribution_points_at_an_existing_command():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    commands = {c.id: c for c in manifest.contributions.commands}
    used = ([r.command for r in manifest.contributions.readers]
            + [w.command for w in manifest.contributions.widgets]
            + [s.command for s in manifest.contributions.sample_data])
    assert len(used) == 5
    for cid in used:
        assert cid in commands, cid
    for command in commands.values():
        module, _, attr = command.python_name.partition(":")
        obj = __import__(module, fromlist=[attr])
        assert callable(getattr(obj, attr)), command.python_name


# ---------------------------------------------------------------------------- reader


def test_reader_declines_foreign_files(tmp_path):
    from migradetect_napari._reader import get_reader

    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    fake = tmp_path / "fake.tif"
    fake.write_text("not a tiff at all")
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    for path in (png, fake, folder, tmp_path / "missing.tif", [str(png), str(fake)]):
        assert get_reader(str(path) if not isinstance(path, list) else path) is None


def test_reader_movie_file_and_frame_folder(tmp_path):
    from migradetect_napari._reader import get_reader

    data = write_ome(tmp_path / "m.ome.tif")
    out = get_reader(str(tmp_path / "m.ome.tif"))(str(tmp_path / "m.ome.tif"))
    assert [(kw["name"], kind) for _, kw, kind in out] == [("m [gfp]", "image"),
                                                           ("m [cell]", "image")]
    arr, kw, _ = out[1]
    assert type(arr).__name__ == "Array" and arr.chunks[0] == (1,) * 4  # lazy
    assert kw["scale"] == pytest.approx((30.0, 0.2, 0.2))
    np.testing.assert_array_equal(np.asarray(arr[2]), data[2, 1])

    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        tifffile.imwrite(frames / f"f{t}.tif", data[t, 0])
    out = get_reader(str(frames))(str(frames))
    assert len(out) == 1 and out[0][0].shape == (3, 24, 32)
    assert out[0][1]["scale"] == (1.0, 1.0, 1.0) and "units" not in out[0][1]  # uncalibrated


def test_reader_result_folder_with_movie(tmp_path):
    from migradetect_napari._reader import get_reader

    write_ome(tmp_path / "m.ome.tif", shape=(N_FRAMES, 1, 40, 50))
    folder = write_result_folder(tmp_path / "out" / "exp" / "m1",
                                 movie_path=tmp_path / "m.ome.tif")
    out = get_reader(str(folder))(str(folder))
    kinds = [(kw["name"], kind) for _, kw, kind in out]
    assert kinds == [("m1", "image"), ("cells", "labels"), ("fibers", "labels"),
                     ("migrasomes", "points"), ("migrasome tracks", "tracks"),
                     ("cell tracks", "tracks")]
    for _, kw, _ in out:
        assert kw["scale"] == pytest.approx((30.0, 0.2, 0.2))
    pts = out[3]
    feats = pts[1]["features"]
    assert list(feats["track_id"]) == list(pts[1]["metadata"]["migradetect"]["tables"][
        "migrasomes.csv"]["track_id"])
    np.testing.assert_allclose(pts[1]["size"] * PX,
                               np.maximum(feats["diameter_um"], 3 * PX))


# ---------------------------------------------------------------------------- sample data


def test_sample_data_is_scaled():
    from migradetect_napari._sample_data import simulated_movie_layers

    (data, kw, kind), = simulated_movie_layers("wga", size=48, n_frames=2, n_cells=1)
    assert kind == "image" and data.shape == (2, 48, 48)
    assert kw["scale"] == pytest.approx((60.0, 0.15, 0.15))


# ---------------------------------------------------------------------------- widgets


@pytest.fixture
def small_movie_viewer(make_napari_viewer):
    from migradetect_napari._layers import add_layers
    from migradetect_napari._sample_data import simulated_movie_layers

    viewer = make_napari_viewer()
    add_layers(viewer, simulated_movie_layers("tspan4_gfp", size=160, n_frames=5, seed=3,
                                              n_cells=1))
    return viewer


def test_run_widget_config_matches_cli_and_saves_preset(small_movie_viewer, tmp_path):
    viewer = small_movie_viewer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Run migradetect")
    assert widget.pixel_size_um.value == pytest.approx(0.15)  # from the layer's calibration
    assert widget.frame_interval_s.value == pytest.approx(60.0)
    assert widget.build_config() == load_config("tspan4_gfp")  # untouched = the CLI's config
    widget.preset.value = "wga"
    assert widget.emission_nm.value == pytest.approx(570.0)
    widget.max_step_um.value = 1.7
    widget.threshold_snr.value = 4.5
    cfg = widget.build_config()
    assert cfg == load_config("wga", {"tracking": {"max_step_um": 1.7},
                                      "migrasomes": {"threshold_snr": 4.5}})
    path = widget.save_preset(tmp_path / "mine.yaml")
    assert load_config(path) == cfg


def test_run_widget_preview_and_run_adds_layers(small_movie_viewer, qtbot, tmp_path):
    viewer = small_movie_viewer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Run migradetect")
    viewer.dims.set_current_step(0, 4)
    out = widget.preview()
    assert out is not None and out.frame == 4
    for name in ("preview cells", "preview fibers", "preview migrasomes"):
        assert name in viewer.layers
    widget.out_dir.value = tmp_path / "res"
    widget.experiment.value = "exp"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: "migrasomes" in viewer.layers, timeout=10_000)
    for name in ("cells", "fibers", "migrasomes", "cell tracks"):
        assert name in viewer.layers, name
    assert widget.progress.value == widget.progress.max
    movie_dir = tmp_path / "res" / "exp" / "simulated tspan4_gfp"
    assert (movie_dir / "manifest.json").is_file()
    # same numbers as a direct API run (what the CLI calls) on the same pixels
    movie = io.movie_from_array(np.asarray(viewer.layers["simulated tspan4_gfp"].data),
                                pixel_size_um=0.15, frame_interval_s=60.0, name="direct")
    direct = pipeline.analyze_movie(movie, load_config("tspan4_gfp"), experiment="exp")
    got = read_csv(movie_dir / "migrasomes.csv", schema.MIGRASOMES)
    assert len(got) > 0
    want = schema.conform(direct.tables["migrasomes.csv"], schema.MIGRASOMES)
    cols = ["frame", "track_id", "cell_id", "y_px", "x_px", "diameter_um", "score"]
    np.testing.assert_allclose(got[cols].to_numpy(float), want[cols].to_numpy(float),
                               rtol=1e-5)
    assert len(read_csv(movie_dir / "cells.csv", schema.CELLS)) == len(
        direct.tables["cells.csv"])


def test_run_widget_cancel(small_movie_viewer, qtbot):
    viewer = small_movie_viewer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Run migradetect")
    w = widget.run()
    widget.cancel()  # the run stops at its first progress report
    with qtbot.waitSignal(w.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled"
    assert "migrasomes" not in viewer.layers


# ---------------------------------------------------------------------------- review


def _click(widget, world):
    widget._on_click(widget.viewer, SimpleNamespace(type="mouse_press", position=world))


def test_review_round_trip(make_napari_viewer, tmp_path):
    folder = write_result_folder(tmp_path / "out" / "exp" / "m1")
    auto = (folder / "migrasomes.csv").read_bytes()
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Review migrasomes")
    assert widget.table.rowCount() == 3

    widget.select_track(2)  # birth frame 2, camera on the track
    assert viewer.dims.current_step[0] == 2
    assert tuple(camera(viewer).center[-2:]) == pytest.approx((30.0 * PX, 40.0 * PX))
    assert len(widget.axes.lines) == 1 and len(widget.axes.lines[0].get_xdata()) == 3

    widget.select_track(1)
    widget.reject_track()
    assert set(viewer.layers["migrasomes"].features.query("track_id == 1")["curation"]) == {
        "rejected"}
    widget.select_track(3)
    widget.start_pick_cell()
    _click(widget, (5 * DT, 30.0 * PX, 10.0 * PX))  # inside cell 2 (rows 22-38, cols 5-15)
    widget.start_add()
    viewer.dims.set_current_step(0, 4)
    _click(widget, (4 * DT, 25.0 * PX, 8.0 * PX))
    assert len(viewer.layers["migrasomes"].data) == 9
    assert widget.selected == 4  # the added track; give it to cell 2 as well
    widget.start_pick_cell()
    _click(widget, (4 * DT, 35.0 * PX, 12.0 * PX))
    assert widget.save() == folder / "curated"
    assert (folder / "migrasomes.csv").read_bytes() == auto  # never overwritten

    viewer2 = make_napari_viewer()
    viewer2.open(str(folder), plugin=PLUGIN)
    feats = viewer2.layers["migrasomes"].features
    states = feats.groupby("track_id")["curation"].first().to_dict()
    assert states == {1: "rejected", 2: "auto", 3: "reassigned", 4: "added"}
    cells = read_csv(folder / "curated" / "cells.csv", schema.CELLS).set_index("cell_id")
    assert cells.loc[1, "n_migrasomes"] == 0 and cells.loc[2, "n_migrasomes"] == 3
    summary = read_csv(folder / "curated" / "summary.csv", schema.SUMMARY)
    assert int(summary["n_migrasomes"].iloc[0]) == 3
    info = json.loads((folder / "curated" / "curation.json").read_text())
    assert info["n_migrasomes_auto"] == 2 and info["n_migrasomes_curated"] == 3
    assert curation.curation_info(folder)["stale"] is False


def test_review_keys_next_and_detection(make_napari_viewer, tmp_path):
    folder = write_result_folder(tmp_path / "exp" / "m1")
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Review migrasomes")
    from app_model.types import KeyBinding

    handlers = {k: viewer.keymap[KeyBinding.from_str(k)] for k in ("a", "r", "n", "d")}
    widget.select_track(2)
    handlers["r"](viewer)  # what pressing 'r' runs
    assert widget.tables["tracks.csv"].set_index("track_id").loc[2, "curation"] == "rejected"
    handlers["a"](viewer)
    assert widget.tables["tracks.csv"].set_index("track_id").loc[2, "curation"] == "accepted"
    widget.next_track()
    first = widget.selected
    widget.next_track()
    assert widget.selected != first
    widget.select_track(1)
    viewer.dims.set_current_step(0, 0)
    widget.reject_detection()
    tr = widget.tables["tracks.csv"].set_index("track_id")
    assert tr.loc[1, "first_frame"] == 1 and tr.loc[1, "curation"] == "auto"
    widget.accept_track()
    assert widget.tables["tracks.csv"].set_index("track_id").loc[1, "curation"] == "accepted"


# ---------------------------------------------------------------------------- screenshot


def test_screenshot_shows_points_at_known_positions(make_napari_viewer, tmp_path):
    folder = write_result_folder(tmp_path / "exp" / "m1")
    viewer = make_napari_viewer(show=True)
    viewer.open(str(folder), plugin=PLUGIN)
    viewer.layers["migrasomes"].opacity = 1.0
    viewer.dims.set_current_step(0, 3)  # tracks 1 (y 10, x 12) and 2 (y 30, x 40) visible
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    cy, cx = camera(viewer).center[-2:]
    zoom = camera(viewer).zoom
    magenta = np.array([255, 0, 255])
    for y_px, x_px in ((10.0, 12.0), (30.0, 40.0)):
        row = int(round((y_px * PX - cy) * zoom + h / 2))
        col = int(round((x_px * PX - cx) * zoom + w / 2))
        patch = shot[row - 1:row + 2, col + 2:col + 5, :3].reshape(-1, 3).astype(int)
        assert np.abs(patch - magenta).max(axis=1).min() < 60, (y_px, x_px, patch)
    # a point of track 3 (frame 5 only) is not drawn in frame 3
    row = int(round((20.0 * PX - cy) * zoom + h / 2))
    col = int(round((5.0 * PX - cx) * zoom + w / 2))
    assert np.abs(shot[row, col, :3].astype(int) - magenta).max() > 100
