"""Batch runs (library level): discovery, resume, failure isolation, atomic folders, locks."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

import corpus
from migradetect import batch, discovery, pipeline, report, resume
from migradetect.config import load_config
from migradetect.errors import InputError, OutputError
from migradetect.lock import LOCK_NAME, RunLock

CONFIG = load_config("tspan4_gfp")


def run(inp: Path, out: Path, **kw) -> batch.BatchReport:
    return batch.run_batch(inp, out, CONFIG, **kw)


def failures(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "failures.csv", keep_default_na=False)


def temp_folders(out: Path) -> list[Path]:
    """Temporary movie folders and partial files (the store inside labels.zarr aside)."""
    return [p for p in out.rglob(".*")
            if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------- discovery --


def test_discover_experiments_movies_positions_and_hidden(tmp_path):
    inp = tmp_path / "screen"
    corpus.good_imagej(inp / "exp1", "a")
    corpus.frame_folder(inp / "exp1")
    corpus.multi_position(inp / "exp2")
    corpus.good_imagej(inp, "loose")  # a TIFF directly in INPUT: experiment "screen"
    (inp / "exp1" / ".DS_Store").write_bytes(b"x")
    corpus.good_imagej(inp / "exp1", ".hidden")
    corpus.good_imagej(inp / ".trash", "b")
    (inp / "exp1" / "notes.txt").write_text("not a movie")
    jobs = discovery.discover(inp)
    got = [(j.experiment, j.movie, j.path.name, j.position) for j in jobs]
    assert got == [
        ("screen", "loose", "loose.tif", None),
        ("exp1", "a", "a.tif", None),
        ("exp1", "frame_folder", "frame_folder", None),
        ("exp2", "multi_position_p0", "multi_position.ome.tif", 0),
        ("exp2", "multi_position_p1", "multi_position.ome.tif", 1),
    ]


def test_discover_single_movie_file_and_frame_folder(tmp_path):
    path = corpus.good_imagej(tmp_path / "day1", "m")
    assert [(j.experiment, j.movie) for j in discovery.discover(path)] == [("day1", "m")]
    folder = corpus.frame_folder(tmp_path / "day2")
    assert [(j.experiment, j.movie, j.path) for j in discovery.discover(folder)] == [
        ("day2", "frame_folder", folder)]
    # a folder of multi-frame movie files given as INPUT is an experiment, not a frame folder
    corpus.good_imagej(tmp_path / "day3", "x")
    corpus.good_imagej(tmp_path / "day3", "y")
    assert [(j.experiment, j.movie) for j in discovery.discover(tmp_path / "day3")] == [
        ("day3", "x"), ("day3", "y")]


def test_discover_same_stem_twice_gets_distinct_names(tmp_path):
    corpus.good_imagej(tmp_path / "e", "a")
    corpus.write_ome(tmp_path / "e" / "a.ome.tif", corpus.as_uint16(corpus.scene()))
    names = [j.movie for j in discovery.discover(tmp_path)]
    assert names == ["a.ome.tif", "a.tif"]


def test_discover_refuses_two_experiments_with_one_name(tmp_path):
    corpus.good_imagej(tmp_path / "day1", "a")  # loose movie: experiment "day1"
    corpus.good_imagej(tmp_path / "day1" / "day1", "a")  # sub-folder named like INPUT
    with pytest.raises(InputError, match="share the output folder 'day1/a'"):
        discovery.discover(tmp_path / "day1")


def test_discover_empty_or_missing_input_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / ".hidden.tif").write_bytes(b"")
    with pytest.raises(InputError, match="holds no movies"):
        discovery.discover(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        discovery.discover(tmp_path / "nope")


# ------------------------------------------------------------------------ the batch run --


def test_batch_of_five_with_two_corrupt(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        corpus.good_imagej(inp / "exp", name)
    corpus.truncated(inp / "exp")
    corpus.zero_bytes(inp / "exp")
    result = run(inp, out)
    assert (result.count("done"), result.count("failed")) == (3, 2)
    assert "5 movies: 3 done, 0 skipped (up to date), 2 failed" in result.summary_line()
    f = failures(out)
    assert list(f.columns) == ["experiment", "movie", "path", "stage", "error", "message"]
    assert sorted(f["movie"]) == ["truncated", "zero_bytes"]
    assert set(f["stage"]) == {"open"} and set(f["error"]) == {"InputError"}
    assert all(Path(p).name in m for p, m in zip(f["path"], f["message"], strict=True))
    for name in ("a", "b", "c"):
        assert report.is_movie_folder(out / "exp" / name)
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["movie"]) == ["a", "b", "c"]
    assert not temp_folders(out)
    assert (out / LOCK_NAME).exists() is False


def test_no_failures_gives_header_only_failures_csv(tmp_path):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    result = run(tmp_path / "in", tmp_path / "out")
    assert result.count("done") == 1
    assert (tmp_path / "out" / "failures.csv").read_text() == (
        "experiment,movie,path,stage,error,message\n")


def test_resume_skips_finished_and_force_keeps_curated(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    corpus.good_imagej(inp / "e", "a")
    corpus.good_imagej(inp / "e", "b")
    run(inp, out)
    manifest = out / "e" / "a" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["status"] == "complete" and m["input_checksum"].startswith("sha256:")
    before = manifest.stat().st_mtime_ns
    csvs = corpus.csv_bytes(out)

    again = run(inp, out)
    assert again.count("skipped") == 2 and again.count("done") == 0
    assert manifest.stat().st_mtime_ns == before
    assert corpus.csv_bytes(out) == csvs

    # a changed parameter recomputes (only) what it affects: every movie here
    other = load_config("tspan4_gfp", {"optics": {"numerical_aperture": 1.3}})
    assert batch.run_batch(inp, out, other).count("done") == 2
    assert batch.run_batch(inp, out, other).count("skipped") == 2

    curated = out / "e" / "a" / "curated"
    curated.mkdir()
    (curated / "migrasomes.csv").write_text("curation\nkept\n")
    time.sleep(0.01)
    forced = batch.run_batch(inp, out, other, force=True)
    assert forced.count("done") == 2
    assert manifest.stat().st_mtime_ns != before
    assert (curated / "migrasomes.csv").read_text() == "curation\nkept\n"
    assert not temp_folders(out)


def test_changed_input_is_recomputed(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    path = corpus.good_imagej(inp / "e", "a")
    run(inp, out)
    corpus.write_imagej(path, corpus.as_uint16(corpus.scene(seed=42)))
    assert run(inp, out).count("done") == 1


def test_nothing_in_input_changes(tmp_path):
    inp = tmp_path / "in"
    corpus.good_imagej(inp / "e", "a")
    corpus.frame_folder(inp / "e")
    corpus.zero_bytes(inp / "e")
    for p in [*inp.rglob("*"), inp]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        before = corpus.snapshot(inp)
        result = run(inp, tmp_path / "out")
        assert result.count("done") == 2
        assert corpus.snapshot(inp) == before
    finally:
        for p in [inp, *inp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_out_inside_input_is_refused(tmp_path):
    inp = tmp_path / "in"
    corpus.good_imagej(inp / "e", "a")
    for out in (inp, inp / "results", inp / "e" / "deeper"):
        with pytest.raises(OutputError, match="inside the input"):
            run(inp, out)
    assert sorted(p.name for p in inp.rglob("*")) == ["a.tif", "e"]
    # results that would land on the input itself (OUT a parent of INPUT)
    movie = corpus.frame_folder(tmp_path / "data" / "frame_folder_exp")
    with pytest.raises(OutputError, match="would be written into the input"):
        run(movie, tmp_path / "data")


# ------------------------------------------------------------------ atomic folders, crashes --


def test_interrupt_removes_temp_folder_keeps_finished_and_releases_lock(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        corpus.good_imagej(inp / "e", name)
    real = pipeline.analyze_movie

    def analyze(movie, config, **kw):
        if movie.name == "b":
            assert kw["labels_path"].parent.name == ".b.tmp-%d" % os.getpid()
            assert kw["labels_path"].parent.is_dir()
            raise KeyboardInterrupt
        return real(movie, config, **kw)

    monkeypatch.setattr(pipeline, "analyze_movie", analyze)
    with pytest.raises(KeyboardInterrupt):
        run(inp, out)
    assert report.is_movie_folder(out / "e" / "a")
    assert not (out / "e" / "b").exists() and not (out / "e" / "c").exists()
    assert not temp_folders(out)
    assert not (out / LOCK_NAME).exists()
    assert list(pd.read_csv(out / "e" / "summary.csv")["movie"]) == ["a"]
    monkeypatch.setattr(pipeline, "analyze_movie", real)
    again = run(inp, out)
    assert (again.count("skipped"), again.count("done")) == (1, 2)


def test_full_disk_stops_with_clear_error_and_loses_no_finished_movie(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        corpus.good_imagej(inp / "e", name)
    real = report.write_movie_results

    def write(results, movie_dir):
        if results.movie["name"] == "b":
            (Path(movie_dir) / "migrasomes.csv").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(results, movie_dir)

    monkeypatch.setattr(report, "write_movie_results", write)
    with pytest.raises(OutputError, match="No space left on device") as info:
        run(inp, out)
    assert "finished before it are complete" in str(info.value)
    assert report.is_movie_folder(out / "e" / "a")
    assert not (out / "e" / "b").exists() and not (out / "e" / "c").exists()
    assert not temp_folders(out) and not (out / LOCK_NAME).exists()
    f = failures(out)
    assert list(f["movie"]) == ["b"] and list(f["stage"]) == ["write"]


@pytest.mark.parametrize("where", ["output", "input"])
def test_permission_denied_stops_only_for_output_files(tmp_path, monkeypatch, where):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b"):
        corpus.good_imagej(inp / "e", name)

    def analyze(movie, config, *, labels_path, **kw):
        target = labels_path if where == "output" else movie.path
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(pipeline, "analyze_movie", analyze)
    if where == "output":
        with pytest.raises(OutputError, match="Permission denied"):
            run(inp, out)
        assert len(failures(out)) == 1
    else:
        assert run(inp, out).count("failed") == 2
        assert set(failures(out)["stage"]) == {"analyze"}
    assert not temp_folders(out) and not (out / LOCK_NAME).exists()


def test_other_write_errors_fail_only_that_movie(tmp_path, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b"):
        corpus.good_imagej(inp / "e", name)
    real = report.write_movie_results

    def write(results, movie_dir):
        if results.movie["name"] == "a":
            raise ValueError("cannot draw the QC figure")
        return real(results, movie_dir)

    monkeypatch.setattr(report, "write_movie_results", write)
    result = run(inp, out)
    assert (result.count("failed"), result.count("done")) == (1, 1)
    assert failures(out).loc[0, ["movie", "stage", "error"]].tolist() == ["a", "write",
                                                                          "ValueError"]


def test_stale_temp_folders_are_cleaned_and_interrupted_swap_restored(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    corpus.good_imagej(inp / "e", "a")
    corpus.good_imagej(inp / "e", "b")
    run(inp, out)
    dead = 999_999_999
    junk = out / "e" / f".a.tmp-{dead}"
    (junk / "labels.zarr").mkdir(parents=True)
    (junk / "migrasomes.csv").write_text("half")
    # killed between "move the old results away" and "move the new ones in":
    (out / "e" / "b").rename(out / "e" / f".b.old-{dead}")
    # killed while writing a summary atomically
    (out / "e" / ".summary.csv.k2j4x.tmp").write_text("experiment,mo")
    again = run(inp, out)
    assert again.count("skipped") == 2  # b was restored, a untouched
    assert not temp_folders(out)


def test_install_replaces_atomically_and_moves_curated(tmp_path):
    final = tmp_path / "e" / "m"
    (final / "curated").mkdir(parents=True)
    (final / "curated" / "x.csv").write_text("mine")
    (final / "old.csv").write_text("old")
    tmp = resume.temp_folder(final)
    tmp.mkdir()
    (tmp / "new.csv").write_text("new")
    resume.install(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["curated", "new.csv"]
    assert (final / "curated" / "x.csv").read_text() == "mine"
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]


# ------------------------------------------------------------------------------- locks --


def _lock_info(**kw) -> str:
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "process_start": psutil.Process().create_time(), "started": "2026-01-01T00:00:00",
            "token": "other"}
    info.update(kw)
    return json.dumps(info)


def test_lock_held_by_live_process_refuses(tmp_path):
    (tmp_path / LOCK_NAME).write_text(_lock_info())
    with pytest.raises(OutputError, match=f"process {os.getpid()} on host"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "other"


def test_lock_from_other_host_is_reported_not_broken(tmp_path):
    (tmp_path / LOCK_NAME).write_text(_lock_info(host="node-17"))
    with pytest.raises(OutputError, match="host node-17") as info:
        RunLock(tmp_path).acquire()
    assert "delete" in str(info.value) and LOCK_NAME in str(info.value)
    assert (tmp_path / LOCK_NAME).exists()


def test_stale_lock_is_replaced_with_warning(tmp_path, caplog):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (tmp_path / LOCK_NAME).write_text(_lock_info(pid=child.pid))
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    assert "stale lock" in caplog.text


def test_lock_of_reused_pid_is_stale(tmp_path):
    # our own pid, but recorded as started long before this process: another process
    (tmp_path / LOCK_NAME).write_text(_lock_info(process_start=1000.0))
    with RunLock(tmp_path):
        pass


def test_run_refused_while_locked_writes_nothing(tmp_path):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(_lock_info())
    with pytest.raises(OutputError, match="another migradetect run"):
        run(tmp_path / "in", out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


# ------------------------------------------------------------------------------ corpus --


def test_corpus_bad_movies_fail_alone_good_ones_succeed(tmp_path):
    inp, out = tmp_path / "input data", tmp_path / "out"
    bad = corpus.build(inp / "bad", corpus.MUST_FAIL)
    corpus.build(inp / "good ü", corpus.MUST_SUCCEED)
    corpus.good_imagej(inp / "again", "good_imagej")  # same movie name, other experiment
    before = corpus.snapshot(inp)
    result = run(inp, out)

    assert corpus.snapshot(inp) == before
    f = failures(out)
    assert sorted(f["movie"]) == sorted(corpus.MUST_FAIL)
    assert (f["experiment"] == "bad").all()
    assert sorted(f["path"]) == sorted(str(p) for p in bad)
    for row in f.itertuples():
        assert row.stage in ("open", "analyze"), row
        assert row.error == "InputError", row
        assert Path(row.path).name in row.message, row  # names the file
        assert "Fix:" in row.message, row  # and what to do
    good = {**{m: "good ü" for m in corpus.MUST_SUCCEED if m != "multi_position"},
            "multi_position_p0": "good ü", "multi_position_p1": "good ü"}
    assert result.count("done") == len(good) + 1
    for movie, exp in good.items():
        assert report.is_movie_folder(out / exp / movie), movie
    assert report.is_movie_folder(out / "again" / "good_imagej")

    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(good) + 1
    single = summary.set_index("movie").loc["single_frame"]
    assert single["n_frames"] == 1 and single["duration_s"] == 0
    tracks = report.read_csv(out / "good ü" / "single_frame" / "tracks.csv")
    assert tracks["growth_time_s"].isna().all()
    black = out / "good ü" / "all_black"
    for name in report.schema.MOVIE_TABLES:
        header = (black / name).read_text().splitlines()[0]
        assert header.startswith("experiment,movie"), name
    assert len(report.read_csv(black / "migrasomes.csv")) == 0
    assert not temp_folders(out)


def test_nan_pixels_few_are_tolerated_all_fail_clearly(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    corpus.build(inp / "e", corpus.NAN_KINDS)
    result = run(inp, out)
    assert (result.count("done"), result.count("failed")) == (1, 1)
    f = failures(out)
    assert list(f["movie"]) == ["all_nan"] and f.loc[0, "error"] == "InputError"
    assert "all_nan.tif" in f.loc[0, "message"] and "Fix:" in f.loc[0, "message"]
    assert report.is_movie_folder(out / "e" / "few_nans")


def test_long_movie_is_computed_in_frame_windows(tmp_path):
    """A movie is never computed whole: at most 2 x threads frames are in flight, so memory
    stays bounded whatever its length (progress arrives frame by frame)."""
    import dask

    n = 12
    corpus.write_imagej(tmp_path / "in" / "e" / "long.tif",
                        corpus.as_uint16(corpus.scene(n, seed=3)))
    calls: list[tuple[int, int]] = []

    class Record(batch.Progress):
        def frames(self, done, total):
            calls.append((done, total))

    with dask.config.set(num_workers=1):
        result = run(tmp_path / "in", tmp_path / "out", progress=Record())
    assert result.count("done") == 1
    frame_steps = [d for d, _ in calls if d <= n]
    assert frame_steps[:n] == list(range(1, n + 1))
    assert len(report.read_csv(tmp_path / "out" / "e" / "long" / "drift.csv")) == n
