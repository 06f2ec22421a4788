"""Core side of the napari plugin: layer conversion (layers.py) and curation (curation.py).

No napari needed: these run in the plain test suite. Tables are built by hand with known
values, so every expected count follows from the module docs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from migradetect import curation, layers, schema
from migradetect.report import read_csv, write_csv

PX = 0.2  # µm per pixel
DT = 30.0  # s per frame
N_FRAMES = 6
SHAPE = (40, 50)


def make_tables() -> dict[str, pd.DataFrame]:
    """Three tracks: 1 (cell 1, 4 frames), 2 (cell 2, 3 frames), 3 (cell -1, 1 frame, short)."""
    rows = []
    for tid, cell, frames, (y, x), d in ((1, 1, range(0, 4), (10.0, 12.0), 1.0),
                                         (2, 2, range(2, 5), (30.0, 40.0), 1.4),
                                         (3, -1, range(5, 6), (20.0, 5.0), 0.8)):
        for k, f in enumerate(frames):
            rows.append({"frame": f, "time_s": f * DT, "track_id": tid, "cell_id": cell,
                         "y_px": y, "x_px": x, "y_um": y * PX, "x_um": x * PX,
                         "diameter_um": d * (0.6 + 0.1 * k), "score": 0.9})
    fill = {"experiment": "exp", "movie": "m1"}
    mig = schema.conform(pd.DataFrame(rows).sort_values(["frame", "y_px", "x_px"]),
                         schema.MIGRASOMES, fill=fill)
    tracks = schema.conform(pd.DataFrame({
        "track_id": [1, 2, 3], "cell_id": [1, 2, -1],
        "assign_reason": ["fiber_at_birth", "rear_path", "cell_not_in_view"],
        "first_frame": [0, 2, 5], "last_frame": [3, 4, 5], "n_frames": [4, 3, 1],
        "birth_time_s": [0.0, 60.0, 150.0], "max_diameter_um": [0.9, 1.12, 0.48],
        "born_before_start": [True, False, False], "growing_at_end": [False, False, True],
        "short_track": [False, False, True]}), schema.TRACKS, fill=fill)
    cells = schema.conform(pd.DataFrame({
        "cell_id": [1, 2], "first_frame": [0, 0], "last_frame": [5, 5], "n_frames": [6, 6],
        "observed_s": [150.0, 150.0], "touches_border": [False, False],
        "path_length_um": [20.0, 10.0], "n_migrasomes": [1, 1]}), schema.CELLS, fill=fill)
    cell_frames = schema.conform(pd.DataFrame({
        "frame": list(range(6)) * 2, "cell_id": [1] * 6 + [2] * 6,
        "y_px": np.r_[np.linspace(5, 15, 6), np.linspace(25, 30, 6)],
        "x_px": np.r_[np.linspace(20, 30, 6), np.linspace(10, 12, 6)],
        "area_um2": 50.0}), schema.CELL_FRAMES, fill=fill)
    drift = schema.conform(pd.DataFrame({"frame": range(N_FRAMES), "dy_px": 0.0,
                                         "dx_px": 0.0}), schema.DRIFT, fill=fill)
    return {"migrasomes.csv": mig, "tracks.csv": tracks, "cells.csv": cells,
            "cell_frames.csv": cell_frames, "fibers.csv": schema.empty(schema.FIBERS),
            "drift.csv": drift}


def write_result_folder(folder: Path, *, movie_path: Path | None = None) -> Path:
    """A per-movie result folder as `migradetect run` writes it (tables, manifest, labels)."""
    folder.mkdir(parents=True)
    for name, df in make_tables().items():
        write_csv(df, folder / name)
    group = zarr.open_group(str(folder / "labels.zarr"), mode="w", zarr_format=3)
    cells = np.zeros((N_FRAMES, *SHAPE), np.int32)
    cells[:, 2:18, 15:35] = 1
    cells[:, 22:38, 5:15] = 2
    for name, data in (("cells", cells), ("fibers", np.zeros_like(cells)),
                       ("migrasomes", np.zeros_like(cells))):
        arr = group.create_array(name, shape=data.shape, chunks=(1, *SHAPE), dtype="int32")
        arr[:] = data
    manifest = {"format": "migradetect movie results v1", "experiment": "exp",
                "movie": {"name": "m1", "n_frames": N_FRAMES, "shape_yx": list(SHAPE),
                          "pixel_size_um": PX, "frame_interval_s": DT},
                "input": {"path": str(movie_path) if movie_path else "/nonexistent/m1.tif"},
                "started_utc": "2026-01-01T00:00:00+00:00",
                "finished_utc": "2026-01-01T00:01:00+00:00"}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------- layers


def test_points_layer_data_and_size_in_um():
    t = make_tables()
    data, kw, kind = layers.migrasome_points(t["migrasomes.csv"], pixel_size_um=PX,
                                             frame_interval_s=DT)
    assert kind == "points" and data.shape == (8, 3)
    assert kw["scale"] == (DT, PX, PX)
    np.testing.assert_allclose(data[:, 0], t["migrasomes.csv"]["frame"])
    # point size (px) times the pixel size gives the diameter in µm (above the minimum size)
    d = t["migrasomes.csv"]["diameter_um"].to_numpy()
    np.testing.assert_allclose(kw["size"], np.maximum(d / PX, layers.MIN_POINT_SIZE_PX))
    assert list(kw["features"].columns) == ["track_id", "frame", "cell_id", "diameter_um",
                                            "score", "curation"]
    assert (kw["features"]["curation"] == "auto").all()
    np.testing.assert_allclose(kw["face_color"], np.tile(layers.CURATION_COLORS["auto"], (8, 1)))


def test_tracks_layers_and_empty_tables():
    t = make_tables()
    data, kw, kind = layers.migrasome_tracks(t["migrasomes.csv"], pixel_size_um=PX,
                                             frame_interval_s=DT)
    assert kind == "tracks" and data.shape == (8, 4)
    assert sorted(set(data[:, 0])) == [1, 2, 3]
    assert np.all(np.diff(data[:, 0]) >= 0)  # sorted by track, then frame
    cdata, _, _ = layers.cell_tracks(t["cell_frames.csv"], pixel_size_um=PX,
                                     frame_interval_s=DT)
    assert cdata.shape == (12, 4)
    assert layers.migrasome_tracks(schema.empty(schema.MIGRASOMES), pixel_size_um=PX,
                                   frame_interval_s=DT) is None
    assert layers.cell_tracks(schema.empty(schema.CELL_FRAMES), pixel_size_um=PX,
                              frame_interval_s=DT) is None
    pdata, _, _ = layers.migrasome_points(schema.empty(schema.MIGRASOMES), pixel_size_um=PX,
                                          frame_interval_s=DT)
    assert pdata.shape == (0, 3)


def test_result_layers_lazy_labels_without_movie(tmp_path):
    folder = write_result_folder(tmp_path / "exp" / "m1")
    out = layers.result_layers(folder)
    kinds = [(kw["name"], kind) for _, kw, kind in out]
    assert kinds == [("cells", "labels"), ("fibers", "labels"), ("migrasomes", "points"),
                     ("migrasome tracks", "tracks"), ("cell tracks", "tracks")]
    cells = out[0][0]
    assert type(cells).__name__ == "Array"  # dask: read lazily, frame by frame
    assert cells.chunks[0] == (1,) * N_FRAMES
    assert int(cells[3, 10, 20].compute()) == 1


# ---------------------------------------------------------------------------- curation


def test_start_adds_auto_and_keeps_inputs():
    t = make_tables()
    c = curation.start(t)
    assert (c["tracks.csv"]["curation"] == "auto").all()
    assert "curation" not in t["tracks.csv"].columns


def test_actions_and_recomputed_counts():
    t = curation.start(make_tables())
    _, before = curation.recompute(t, n_frames=N_FRAMES, image_area_um2=2000.0)
    assert int(before["n_migrasomes"].iloc[0]) == 2  # track 3 is short and unassigned
    t = curation.set_track(t, 1, "rejected")
    assert (t["migrasomes.csv"].query("track_id == 1")["curation"] == "rejected").all()
    t = curation.reassign_track(t, 3, 2)  # the short track, confirmed by reassigning
    t, new_id = curation.add_migrasome(t, frame=4, y_px=25.0, x_px=8.0, diameter_um=1.1,
                                       pixel_size_um=PX, frame_interval_s=DT, cell_id=2)
    assert new_id == 4
    out, summary = curation.recompute(t, n_frames=N_FRAMES, image_area_um2=2000.0)
    tracks = out["tracks.csv"].set_index("track_id")
    assert tracks.loc[1, "curation"] == "rejected"
    assert tracks.loc[3, "curation"] == "reassigned" and tracks.loc[3, "cell_id"] == 2
    assert tracks.loc[3, "assign_reason"] == curation.MANUAL_REASON
    assert tracks.loc[4, "curation"] == "added"
    cells = out["cells.csv"].set_index("cell_id")
    assert cells.loc[1, "n_migrasomes"] == 0
    assert cells.loc[2, "n_migrasomes"] == 3  # track 2, reassigned 3, added 4
    assert cells.loc[2, "migrasomes_per_100um"] == pytest.approx(30.0)
    assert int(summary["n_migrasomes"].iloc[0]) == 3
    assert summary["migrasome_density_per_mm2"].iloc[0] == pytest.approx(3 / 2000e-6)
    assert int(summary["n_cells_with_migrasomes"].iloc[0]) == 1
    added = out["migrasomes.csv"].query("track_id == 4").iloc[0]
    assert added["y_um"] == pytest.approx(25.0 * PX) and added["time_s"] == 4 * DT


def test_detection_reject_updates_track_and_all_rejected_rejects_track():
    t = curation.start(make_tables())
    t = curation.set_detection(t, 1, 0, "rejected")
    tr = t["tracks.csv"].set_index("track_id")
    assert tr.loc[1, "curation"] == "auto"
    assert tr.loc[1, "first_frame"] == 1 and tr.loc[1, "n_frames"] == 3
    t = curation.set_detection(t, 3, 5, "rejected")
    assert t["tracks.csv"].set_index("track_id").loc[3, "curation"] == "rejected"
    with pytest.raises(KeyError):
        curation.set_detection(t, 1, 5, "rejected")
    with pytest.raises(ValueError):
        curation.set_track(t, 1, "maybe")


def test_save_load_round_trip_never_touches_auto(tmp_path):
    folder = write_result_folder(tmp_path / "exp" / "m1")
    auto_before = (folder / "tracks.csv").read_bytes()
    t = curation.start(curation.load_auto(folder))
    t = curation.set_track(t, 2, "rejected")
    t = curation.set_track(t, 1, "accepted")
    out = curation.save_curated(t, folder, note="test")
    assert out == folder / "curated"
    assert (folder / "tracks.csv").read_bytes() == auto_before
    info = curation.curation_info(folder)
    assert info["made_from"]["started_utc"] == "2026-01-01T00:00:00+00:00"
    assert info["stale"] is False
    assert info["n_migrasomes_auto"] == 2 and info["n_migrasomes_curated"] == 1
    assert info["counts"]["tracks"]["rejected"] == 1
    loaded = curation.load_tables(folder)
    assert list(loaded["tracks.csv"]["curation"]) == ["accepted", "rejected", "auto"]
    summary = read_csv(folder / "curated" / "summary.csv", schema.SUMMARY)
    assert int(summary["n_migrasomes"].iloc[0]) == 1
    cells = read_csv(folder / "curated" / "cells.csv", schema.CELLS).set_index("cell_id")
    assert cells.loc[2, "n_migrasomes"] == 0 and cells.loc[1, "n_migrasomes"] == 1
    # the reader shows the curation
    pts = [x for x in layers.result_layers(folder) if x[2] == "points"][0]
    assert sorted(set(pts[1]["features"]["curation"])) == ["accepted", "auto", "rejected"]
    assert pts[1]["metadata"]["migradetect"]["curated"] is True
    # a re-run (new manifest) marks the curation stale
    m = json.loads((folder / "manifest.json").read_text())
    m["started_utc"] = "2026-02-02T00:00:00+00:00"
    (folder / "manifest.json").write_text(json.dumps(m))
    assert curation.curation_info(folder)["stale"] is True
    assert not math.isnan(summary["migrasome_density_per_mm2"].iloc[0])
