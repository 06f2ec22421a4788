"""``migradetect run`` end to end: exit codes, config errors, dry run, kill -9 and resume,
SIGTERM, a second concurrent run, and a loopback dask cluster giving identical CSVs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

import corpus
from migradetect import pipeline, report
from migradetect.cli import main
from migradetect.lock import LOCK_NAME

HERE = Path(__file__).resolve().parent


def cli(*args: object) -> int:
    return main(["run", *map(str, args)])


def spawn(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "migradetect.cli", "run", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def make_input(root: Path, n: int = 4) -> Path:
    for k in range(n):
        corpus.write_imagej(root / "exp" / f"m{k}.tif", corpus.as_uint16(corpus.scene(seed=k)))
    return root


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob(".*")
            if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sim_movie):
    """An uninterrupted threaded run over four movies: three tiny ones, then the shared
    simulated movie (cells, fibers, tracks: every table has rows). Returns (input, output)."""
    root = tmp_path_factory.mktemp("ref")
    inp = make_input(root / "in", 3)
    shutil.copy(sim_movie.path, inp / "exp" / "sim.ome.tif")
    assert cli(inp, "--out", root / "out") == 0
    for name in ("cells.csv", "tracks.csv", "fibers.csv", "cell_frames.csv"):
        assert len(report.read_csv(root / "out" / "exp" / "sim" / name)) > 0, name
    return inp, root / "out"


def test_exit_codes_summary_line_and_log(tmp_path, capsys):
    inp = tmp_path / "in"
    corpus.good_imagej(inp / "e", "a")
    corpus.good_imagej(inp / "e", "b")
    corpus.not_a_tiff(inp / "e")
    assert cli(inp, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "3 movies: 2 done, 0 skipped (up to date), 1 failed — see" in err
    assert "failures.csv" in err
    log = (tmp_path / "out" / "migradetect.log").read_text(encoding="utf-8")
    assert "e/a: done" in log and "e/not_a_tiff failed (open)" in log
    (inp / "e" / "not_a_tiff.tif").unlink()
    assert cli(inp, "--out", tmp_path / "out") == 0
    assert "2 movies: 0 done, 2 skipped (up to date), 0 failed" in capsys.readouterr().err
    assert report.read_csv(tmp_path / "out" / "failures.csv").empty


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("cells:\n  min_area_um3: 10\n", "cells.min_area_um3"),
    ("cells:\n  min_area_um2: -5\n", "cells.min_area_um2"),
    ("optics:\n  numerical_aperture: high\n", "optics.numerical_aperture"),
])
def test_config_errors_stop_before_any_movie(tmp_path, capsys, yaml_text, key):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    params = tmp_path / "params.yaml"
    params.write_text(yaml_text)
    assert cli(tmp_path / "in", "--out", tmp_path / "out", "--config", params) == 2
    err = capsys.readouterr().err
    assert key in err and str(params) in err
    assert not (tmp_path / "out").exists()


def test_bad_calibration_override_is_a_usage_error(tmp_path, capsys):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    assert cli(tmp_path / "in", "--out", tmp_path / "out", "--pixel-size", "-0.1") == 2
    assert "--pixel-size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_inside_input_refused(tmp_path, capsys):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    assert cli(tmp_path / "in", "--out", tmp_path / "in" / "results") == 2
    assert "inside the input" in capsys.readouterr().err
    assert not (tmp_path / "in" / "results").exists()


def test_dry_run_lists_movies_with_calibration_sources_and_writes_nothing(tmp_path, capsys):
    inp = tmp_path / "in"
    corpus.good_ome(inp / "e")
    corpus.no_calibration(inp / "e")
    corpus.two_channels(inp / "f")
    out = tmp_path / "out"
    assert cli(inp, "--out", out, "--dry-run") == 1
    text = capsys.readouterr().out
    assert not out.exists()
    assert "e/good_ome" in text and "(OME PhysicalSizeX)" in text and "(OME TimeIncrement)" in text
    assert "e/no_calibration" in text and "ERROR InputError" in text and "no pixel size" in text
    assert "f/two_channels" in text and "(ImageJ resolution)" in text
    assert "migrasome channel 0 (C0) (from --config tspan4_gfp)" in text
    assert "3 movies: 2 can be opened, 1 cannot" in text
    assert cli(inp / "f", "--out", out, "--dry-run", "--channel-cell", "1") == 0
    assert "cell channel 1 (C1) (from --channel-cell)" in capsys.readouterr().out
    # with an override the uncalibrated movie opens, and says where its value came from
    assert cli(inp / "e", "--out", out, "--dry-run", "--pixel-size", "0.2",
               "--frame-interval", "10") == 0
    text = capsys.readouterr().out
    assert "pixel size 0.2 µm (override" in text and not out.exists()


def test_channel_name_not_in_file_is_a_failure_row(tmp_path):
    inp = tmp_path / "in"
    corpus.channel_missing(inp / "e")
    corpus.write_ome(inp / "e" / "named.ome.tif",
                     corpus.as_uint16(corpus.scene()[:, None]).repeat(2, axis=1),
                     axes="TCYX", channel_names=["TSPAN4", "WGA"])
    out = tmp_path / "out"
    assert cli(inp, "--out", out, "--channel-migrasome", "TSPAN4", "--channel-cell", "WGA") == 1
    f = report.read_csv(out / "failures.csv")
    assert list(f["movie"]) == ["channel_missing"] and list(f["stage"]) == ["open"]
    assert "TSPAN4" in f.loc[0, "message"] and "GFP" in f.loc[0, "message"]
    assert report.is_movie_folder(out / "e" / "named")


def test_kill_9_mid_batch_then_rerun_gives_identical_csvs(reference, tmp_path, capsys, caplog):
    inp, ref_out = reference
    out = tmp_path / "out"
    proc = spawn(inp, "--out", out)
    first = out / "exp" / "m0" / "manifest.json"
    wait_for(first.exists, proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = [p for p in (out / "exp").iterdir() if report.is_movie_folder(p)]
    assert 1 <= len(done) < 4, "the run finished before it could be killed"
    assert (out / LOCK_NAME).exists()  # left behind by the killed run

    assert cli(inp, "--out", out) == 0
    err = capsys.readouterr().err
    assert "stale lock" in caplog.text
    assert f"{len(done)} skipped (up to date)" in err
    assert corpus.csv_bytes(out) == corpus.csv_bytes(ref_out)
    assert not leftovers(out) and not (out / LOCK_NAME).exists()


def test_sigterm_stops_cleanly_with_130(tmp_path, monkeypatch, capsys):
    """SIGTERM (what SLURM sends at the time limit) stops like Ctrl-C: the current movie's
    temporary folder is removed, finished movies and the summaries are kept, lock released."""
    inp, out = make_input(tmp_path / "in", 3), tmp_path / "out"
    real = pipeline.analyze_movie

    def analyze(movie, config, **kw):
        if movie.name == "m1":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives during this
        return real(movie, config, **kw)

    monkeypatch.setattr(pipeline, "analyze_movie", analyze)
    handler = signal.getsignal(signal.SIGTERM)
    assert cli(inp, "--out", out) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not leftovers(out) and not (out / LOCK_NAME).exists()
    assert sorted(p.name for p in (out / "exp").iterdir() if p.is_dir()) == ["m0"]
    assert list(pd.read_csv(out / "summary.csv")["movie"]) == ["m0"]
    assert report.read_csv(out / "failures.csv").empty


def test_second_concurrent_run_is_refused(tmp_path, capsys):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({
            "host": socket.gethostname(), "pid": other.pid,
            "process_start": psutil.Process(other.pid).create_time(),
            "started": "2026-11-20T10:00:00+00:00", "token": "x"}))
        assert cli(tmp_path / "in", "--out", out) == 2
        err = capsys.readouterr().err
        assert f"process {other.pid}" in err and "another migradetect run" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        other.kill()
        other.wait()
    # once that process is gone, its lock is stale and the run proceeds
    assert cli(tmp_path / "in", "--out", out) == 0


def test_local_cluster_gives_identical_csvs(reference, tmp_path):
    inp, ref_out = reference
    out = tmp_path / "out"
    assert cli(inp, "--out", out, "--workers", "2") == 0
    manifest = json.loads((out / "exp" / "m0" / "manifest.json").read_text())
    assert manifest["scheduler"] == "distributed"
    assert corpus.csv_bytes(out) == corpus.csv_bytes(ref_out)


@pytest.mark.parametrize(("options", "says"), [
    (["--workers", "0"], "--workers 0 must be at least 1"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "either --scheduler or --workers"),
])
def test_bad_cluster_options_are_usage_errors(tmp_path, capsys, options, says):
    corpus.good_imagej(tmp_path / "in" / "e", "a")
    assert cli(tmp_path / "in", "--out", tmp_path / "out", *options) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
