"""Tests of the output edge: atomic writes, per-movie folders, experiment and run summaries."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from migradetect import report, schema
from migradetect.errors import OutputError
from migradetect.pipeline import Results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def _tables(experiment: str, movie: str, *, n_frames: int = 10) -> dict[str, pd.DataFrame]:
    """Small contract tables with known counts.

    Cells: 1 (3 migrasomes, 2 counted: track 4 is short), 2 (touches the border: not counted),
    3 (no migrasomes), 4 (seen in 2 frames only: not counted). Tracks 1..5; track 5 unassigned.
    """
    fill = {"experiment": experiment, "movie": movie}
    cells = pd.DataFrame({
        "cell_id": [1, 2, 3, 4],
        "first_frame": [0, 0, 0, 5],
        "last_frame": [9, 9, 9, 6],
        "n_frames": [10, 10, 10, 2],
        "touches_border": [False, True, False, False],
        "path_length_um": [20.0, 10.0, 5.0, 1.0],
        "n_migrasomes": [2, 4, 0, 1],
    })
    tracks = pd.DataFrame({
        "track_id": [1, 2, 3, 4, 5],
        "cell_id": [1, 1, 2, 1, -1],
        "assign_reason": ["fiber_at_birth", "rear_path", "fiber_at_birth", "rear_path",
                          "cell_not_in_view"],
        "first_frame": [1, 2, 0, 8, 3],
        "last_frame": [9, 9, 9, 9, 9],
        "n_frames": [9, 8, 10, 2, 7],
        "birth_time_s": [60.0, 120.0, 0.0, 480.0, 180.0],
        "max_diameter_um": [1.0, 1.5, 2.0, 0.6, 1.2],
        "plateau_diameter_um": [1.0, 1.4, 2.0, np.nan, 1.2],
        "growth_time_s": [120.0, 240.0, np.nan, np.nan, 180.0],
        "born_before_start": [False, False, True, False, False],
        "growing_at_end": [False, False, False, True, False],
        "short_track": [False, False, False, True, False],
    })
    rows = []
    for tid, first, last, dmax in zip(tracks["track_id"], tracks["first_frame"],
                                      tracks["last_frame"], tracks["max_diameter_um"],
                                      strict=True):
        for f in range(first, last + 1):
            rows.append({"frame": f, "time_s": 60.0 * f, "track_id": tid, "y_px": 10.0 + tid,
                         "x_px": 20.0 + tid, "diameter_um": dmax * min(1.0, (f - first + 1) / 3),
                         "intensity_integrated": 100.0 + f})
    mig = pd.DataFrame(rows)
    cell_frames = pd.DataFrame({"frame": np.arange(n_frames), "cell_id": 1,
                                "y_px": 30.0, "x_px": 40.0, "area_um2": 300.0})
    fibers = pd.DataFrame({"frame": [0, 1], "fiber_id": [1, 1], "cell_id": [1, -1],
                           "length_um": [4.5, 5.0], "n_tips": [2, 2], "n_branch_points": [0, 1]})
    drift = pd.DataFrame({"frame": np.arange(n_frames), "dy_px": 0.0, "dx_px": 0.0})
    raw = {"migrasomes.csv": mig, "tracks.csv": tracks, "cells.csv": cells,
           "cell_frames.csv": cell_frames, "fibers.csv": fibers, "drift.csv": drift}
    return {name: schema.conform(df, schema.MOVIE_TABLES[name], fill=fill)
            for name, df in raw.items()}


def _results(experiment: str, movie: str, *, n_frames: int = 10, shape=(40, 50),
             pixel_size_um: float = 0.2) -> Results:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    for name in ("cells", "fibers", "migrasomes"):
        group.create_array(name, shape=(n_frames, *shape), chunks=(1, *shape), dtype="int32")
    cells = np.zeros(shape, np.int32)
    cells[10:20, 10:25] = 1
    group["cells"][0] = cells
    meta = {"experiment": experiment, "name": movie, "n_frames": n_frames,
            "shape_yx": list(shape), "pixel_size_um": pixel_size_um, "frame_interval_s": 60.0}
    rng = np.random.default_rng(0)
    images = {t: rng.normal(100, 5, shape).astype(np.float32) for t in (0, n_frames - 1)}
    return Results(tables=_tables(experiment, movie, n_frames=n_frames), labels_path=None,
                   manifest={"experiment": experiment, "movie": meta, "started_utc": "now"},
                   movie=meta, labels=group, qc_images=images)


def test_write_csv_is_byte_identical_and_atomic(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": [0.1 + 0.2, np.nan], "c": ["x", ""],
                       "d": [True, False]})
    p1 = report.write_csv(df, tmp_path / "one.csv")
    p2 = report.write_csv(df.copy(), tmp_path / "sub" / "two.csv")
    assert p1.read_bytes() == p2.read_bytes()
    assert p1.read_text() == "a,b,c,d\n1,0.3,x,True\n2,,,False\n"
    report.write_csv(df.iloc[:0], tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text() == "a,b,c,d\n"
    _no_temp_files(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    report.atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="x.txt"):
        report.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    _no_temp_files(tmp_path)


def test_atomic_write_json_writes_nan_as_null(tmp_path):
    path = report.atomic_write_json(tmp_path / "m.json",
                                    {"a": math.nan, "b": np.float64(1.5), "c": np.int64(3),
                                     "d": Path("/x"), "e": (1, 2)})
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": 3, "d": "/x", "e": [1, 2]}


def test_write_failures_header_only_and_rows(tmp_path):
    report.write_failures([], tmp_path)
    assert (tmp_path / "failures.csv").read_text() == ",".join(schema.FAILURES) + "\n"
    report.write_failures([{"experiment": "e", "movie": "m", "path": "/p", "stage": "open",
                            "error": "InputError", "message": "bad, file"}], tmp_path)
    back = pd.read_csv(tmp_path / "failures.csv", keep_default_na=False)
    assert list(back.columns) == list(schema.FAILURES)
    assert back.loc[0, "message"] == "bad, file"


def test_write_movie_results_files_and_columns(tmp_path):
    res = _results("exp", "m1")
    folder = report.write_movie_results(res, tmp_path / "exp" / "m1")
    for name, table in schema.MOVIE_TABLES.items():
        header = (folder / name).read_text().splitlines()[0]
        assert header.split(",") == list(table)
    png = (folder / "qc.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert json.loads((folder / "manifest.json").read_text())["experiment"] == "exp"
    assert report.is_movie_folder(folder)
    back = report.read_csv(folder / "tracks.csv", schema.TRACKS)
    schema.check(back, schema.TRACKS)
    pd.testing.assert_frame_equal(back, res.tables["tracks.csv"], check_exact=False, rtol=1e-5)
    _no_temp_files(tmp_path)


def test_write_movie_results_empty_tables_give_headers(tmp_path):
    res = _results("exp", "m0", n_frames=1)
    res.tables = {name: schema.empty(t) for name, t in schema.MOVIE_TABLES.items()}
    folder = report.write_movie_results(res, tmp_path / "m0")
    for name, table in schema.MOVIE_TABLES.items():
        assert (folder / name).read_text() == ",".join(table) + "\n"
    assert (folder / "qc.png").read_bytes().startswith(PNG_MAGIC)


def test_summarize_movie_known_answer():
    tables = _tables("exp", "m1")
    row = report.summarize_movie(tables, experiment="exp", movie="m1", n_frames=10,
                                 frame_interval_s=60.0, image_area_um2=1000.0 * 500.0)
    schema.check(row, schema.SUMMARY)
    r = row.iloc[0]
    assert r["n_frames"] == 10 and r["duration_s"] == 540.0
    # counted cells: 1 (2 migrasomes) and 3 (0); cell 2 touches the border, cell 4 is brief
    assert r["n_cells"] == 2 and r["n_cells_with_migrasomes"] == 1
    assert r["pct_cells_with_migrasomes"] == 50.0
    assert r["migrasomes_per_cell_mean"] == 1.0 and r["migrasomes_per_cell_median"] == 1.0
    # 4 tracks not flagged short, over 0.5 mm^2
    assert r["n_migrasomes"] == 4
    assert r["migrasome_density_per_mm2"] == pytest.approx(8.0)
    # unflagged tracks: 1, 2, 5
    assert r["plateau_diameter_um_median"] == pytest.approx(1.2)
    assert r["growth_time_s_median"] == pytest.approx(180.0)


def test_summarize_movie_single_frame_counts_every_track():
    tables = _tables("exp", "m1")
    tracks = tables["tracks.csv"].assign(n_frames=1, short_track=True)
    cells = tables["cells.csv"].assign(n_frames=1)
    row = report.summarize_movie({**tables, "tracks.csv": tracks, "cells.csv": cells},
                                 experiment="exp", movie="m1", n_frames=1,
                                 frame_interval_s=None, image_area_um2=1e6).iloc[0]
    assert row["n_migrasomes"] == 5 and row["duration_s"] == 0.0
    assert row["n_cells"] == 3  # cells 1, 3, 4: a single frame is enough


def test_write_experiment_rebuilds_from_movie_folders(tmp_path):
    exp = tmp_path / "exp"
    for movie in ("m2", "m1"):
        report.write_movie_results(_results("exp", movie), exp / movie)
    # curated results, a temporary folder and an unfinished folder are ignored
    report.write_movie_results(_results("exp", "curated"), exp / "curated")
    report.write_movie_results(_results("exp", "tmp"), exp / ".m3.tmp-123")
    report.write_movie_results(_results("exp", "m4"), exp / "m4")
    (exp / "m4" / "manifest.json").unlink()
    summary = report.write_experiment(exp)
    assert list(summary["movie"]) == ["m1", "m2"]
    back = pd.read_csv(exp / "summary.csv")
    assert list(back.columns) == list(schema.SUMMARY)
    assert list(back["n_migrasomes"]) == [4, 4]
    assert back["migrasome_density_per_mm2"].iloc[0] == pytest.approx(4 / (40 * 50 * 0.04e-6))
    for name in ("migrasomes.csv", "tracks.csv", "cells.csv"):
        df = report.read_csv(exp / name, schema.MOVIE_TABLES[name])
        one = _tables("exp", "m1")[name]
        assert len(df) == 2 * len(one)
        assert list(df["movie"].unique()) == ["m1", "m2"]
        assert list(pd.read_csv(exp / name, nrows=0).columns) == list(schema.MOVIE_TABLES[name])
    for plot in ("growth_curves.png", "migrasomes_per_cell.png"):
        data = (exp / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    run = report.write_run_summary(tmp_path)
    assert len(run) == 2 and list(run["experiment"]) == ["exp", "exp"]
    assert list(pd.read_csv(tmp_path / "summary.csv").columns) == list(schema.SUMMARY)
    _no_temp_files(tmp_path)


def test_write_experiment_without_movies_writes_headers(tmp_path):
    exp = tmp_path / "empty"
    exp.mkdir()
    summary = report.write_experiment(exp)
    assert len(summary) == 0
    assert (exp / "summary.csv").read_text() == ",".join(schema.SUMMARY) + "\n"
    assert (exp / "growth_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_qc_panels_are_block_reduced_keeping_thin_lines():
    """Large frames are reduced before drawing (memory); a 1-px skeleton survives as 'any'."""
    from migradetect.plots import _reduce

    mask = np.zeros((2050, 2049), dtype=bool)
    mask[1001, :] = True  # a 1-px horizontal line
    small = _reduce(mask, 3, "any")
    assert small.shape == (684, 683)
    assert small[1001 // 3].all() and small.sum() == small.shape[1]
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(_reduce(img, 2, "mean"), [[2.5, 4.5], [10.5, 12.5]])
    assert _reduce(img, 1, "mean") is img


def _lasting_tracks_table() -> pd.DataFrame:
    """Tracks of a 20-frame movie (last frame 19), with known lasting / counted answers."""
    return pd.DataFrame({
        "track_id": [1, 2, 3, 4, 5, 6],
        "cell_id": [1, 1, 1, 2, 2, -1],
        # 1: 3 frames, lost at 9 -> transient; 2: 3 frames ending at 17 (within 2 of the end)
        # -> still there; 3: 5 frames lost at 12 -> seen long enough; 4: 4 frames lost at 15
        # -> transient; 5: whole movie; 6: 2 frames (short_track) at the end
        "first_frame": [7, 15, 8, 12, 0, 18],
        "last_frame": [9, 17, 12, 15, 19, 19],
        "n_frames": [3, 3, 5, 4, 20, 2],
        "born_before_start": [False, False, False, False, True, False],
        "growing_at_end": [False, False, False, False, False, True],
        "short_track": [False, False, False, False, False, True],
        "plateau_diameter_um": [0.4, 1.0, 1.2, 0.5, 2.0, np.nan],
        "growth_time_s": [60.0, 120.0, 180.0, 60.0, np.nan, np.nan],
    })


def test_lasting_and_counted_tracks_known_answer():
    from migradetect import across_time

    tracks = _lasting_tracks_table()
    lasting = across_time.lasting_tracks(tracks, 20)
    assert lasting.tolist() == [False, True, True, False, True, True]
    assert across_time.counted_tracks(tracks, 20).tolist() == [False, True, True, False, True,
                                                               False]
    # a track spanning the whole (short) movie counts whatever its flags
    short = tracks.assign(n_frames=2, short_track=True, first_frame=0, last_frame=1)
    assert across_time.counted_tracks(short, 2).all()
    # tables without last_frame: no lasting rule
    assert across_time.lasting_tracks(tracks.drop(columns="last_frame"), 20).all()
    # the per-cell counts of cells.csv use the same rule
    cf = pd.DataFrame({"frame": np.tile(np.arange(20), 2), "cell_id": np.repeat([1, 2], 20),
                       "y_px": 10.0, "x_px": 10.0, "area_um2": 100.0})
    drift = pd.DataFrame({"frame": np.arange(20), "dy_px": 0.0, "dx_px": 0.0})
    cells = across_time.summarize_cells(cf, tracks, drift, n_frames=20, pixel_size_um=0.1,
                                        frame_interval_s=60.0)
    assert cells.set_index("cell_id")["n_migrasomes"].to_dict() == {1: 2, 2: 1}


def test_unflagged_tracks_lasting_only_with_n_frames():
    tracks = _lasting_tracks_table()
    # not flagged: 1, 2, 3, 4; lasting among them: 2, 3
    assert report.unflagged_tracks(tracks)["track_id"].tolist() == [1, 2, 3, 4]
    assert report.unflagged_tracks(tracks, 20)["track_id"].tolist() == [2, 3]


def test_evaluation_counts_what_cells_csv_counts():
    from migradetect import across_time
    from migradetect.evaluate import assignment_scores

    pred = _lasting_tracks_table()
    # truth: the same tracks (ids 11..16), same cells, so predicted cell p = true cell p
    truth = pred.assign(track_id=pred["track_id"] + 10).drop(columns="short_track")
    matching = pd.DataFrame({"truth_track_id": truth["track_id"],
                             "pred_track_id": pred["track_id"]})
    s = assignment_scores(truth, pred, matching, n_frames=20)
    assert s["accuracy"] == 1.0 and s["n_cells_with_migrasomes"] == 2
    # truth counts (>= 3 frames, lasting): cell 1 -> tracks 12, 13; cell 2 -> 15. Both sides
    # apply one rule, so the counts agree exactly
    assert s["count_exact_fraction"] == 1.0 and s["count_abs_error_mean"] == 0.0
    # a transient predicted track added to cell 2 is not counted either
    extra = pd.concat([pred, pd.DataFrame({
        "track_id": [7], "cell_id": [2], "first_frame": [3], "last_frame": [5], "n_frames": [3],
        "born_before_start": [False], "growing_at_end": [False], "short_track": [False],
        "plateau_diameter_um": [0.3], "growth_time_s": [60.0]})], ignore_index=True)
    assert not across_time.counted_tracks(extra, 20).iloc[-1]
    assert assignment_scores(truth, extra, matching, n_frames=20)["count_abs_error_mean"] == 0.0
    # ... while a lasting one is (one extra in cell 2 of 2 cells: mean error 0.5)
    extra.loc[extra.index[-1], ["last_frame", "n_frames"]] = [19, 17]
    s = assignment_scores(truth, extra, matching, n_frames=20)
    assert s["count_abs_error_mean"] == 0.5 and s["count_exact_fraction"] == 0.5
    # n_frames inferred from the tables' last frames (19 -> 20 frames) gives the same
    assert assignment_scores(truth, extra, matching)["count_abs_error_mean"] == 0.5


def test_growth_curves_draw_only_the_tracks_that_count():
    from migradetect.plots import counted_only, growth_curves_figure

    # movie a: 20 frames; b: 10 frames
    tracks = pd.DataFrame({
        "experiment": "e",
        "movie": ["a", "a", "a", "b", "b"],
        "track_id": [1, 2, 3, 1, 2],
        "first_frame": [2, 3, 17, 1, 2],
        "last_frame": [12, 5, 19, 3, 9],
        "n_frames": [11, 3, 3, 3, 8],
        "short_track": [False, False, False, False, False],
        "born_before_start": [False, False, False, False, False],
        "birth_time_s": [60.0, 90.0, 510.0, 30.0, 60.0],
    })
    kept = counted_only(tracks, {"a": 20, "b": 10})
    # a/2: 3 frames, lost long before the end; b/1 likewise; a/3 is still there at the end
    assert list(zip(kept["movie"], kept["track_id"])) == [("a", 1), ("a", 3), ("b", 2)]
    assert counted_only(tracks, {"a": 20}).shape[0] == 2  # b unknown: left out
    rows = [(m, t, f, f * 30.0, 1.0) for m, t, a, b in zip(tracks.movie, tracks.track_id,
                                                            tracks.first_frame, tracks.last_frame)
            for f in range(a, b + 1)]
    mig = pd.DataFrame(rows, columns=["movie", "track_id", "frame", "time_s", "diameter_um"])
    png = growth_curves_figure(mig.assign(experiment="e"), tracks, {"a": 20, "b": 10})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
