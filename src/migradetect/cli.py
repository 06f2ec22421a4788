"""The ``migradetect`` command line: thin subcommands over library functions.

``main(argv) -> int`` is callable from tests. Exit codes: 0 success, 1 some movies failed,
2 bad usage or bad input/config, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from migradetect import __version__
from migradetect.errors import MigradetectError

log = logging.getLogger("migradetect")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _channel(value: str) -> str | int:
    """A channel given on the command line: an index if it is a number, else a name."""
    return int(value) if value.lstrip("-").isdigit() else value


def _z(value: str) -> str | int:
    if value in ("max", "sum"):
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"--z must be 'max', 'sum' or a plane index, not {value!r}")


def _add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixel-size", type=float, metavar="UM",
                   help="pixel size in µm (overrides the file's calibration)")
    p.add_argument("--frame-interval", type=float, metavar="S",
                   help="time between frames in s (overrides the file's calibration)")
    p.add_argument("--z", type=_z, default=None, metavar="max|sum|INDEX",
                   help="how z-stacks are reduced (default: the preset's, usually max)")


def _cmd_info(args: argparse.Namespace) -> int:
    from migradetect.io import describe, open_movies

    for movie in open_movies(args.movie, pixel_size_um=args.pixel_size,
                             frame_interval_s=args.frame_interval,
                             z=args.z if args.z is not None else "max", require_calibration=False):
        print(describe(movie))
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from migradetect.synthetic import simulate, write_simulation

    sim = simulate(
        preset=args.preset, seed=args.seed, size=args.size, n_frames=args.frames,
        n_cells=args.cells, pixel_size_um=args.pixel_size, frame_interval_s=args.frame_interval,
        snr=args.snr, drift=args.drift, crowded=args.crowded,
    )
    path = write_simulation(sim, Path(args.out), fmt=args.format, write_clean=args.clean)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from migradetect.evaluate import evaluate_dirs, format_table

    table = evaluate_dirs(Path(args.truth), Path(args.result))
    print(format_table(table))
    if args.json:
        table.to_json(args.json, orient="records", indent=1)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from migradetect.batch import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migradetect",
        description="Detect, track and measure migrasomes in live-cell microscopy movies.",
    )
    parser.add_argument("--version", action="version", version=f"migradetect {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show a movie's axes, shape, dtype, chunks and calibration")
    p.add_argument("movie", help="a TIFF / OME-TIFF file or a folder of one TIFF per frame")
    _add_calibration_options(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("simulate", help="write a synthetic movie with its ground truth")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--preset", choices=("tspan4_gfp", "wga"), default="tspan4_gfp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (square)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--pixel-size", type=float, default=0.15, metavar="UM")
    p.add_argument("--frame-interval", type=float, default=60.0, metavar="S")
    p.add_argument("--snr", default="high", help="high, medium, low or a number")
    p.add_argument("--drift", action="store_true", help="add smooth drift and one sudden jump")
    p.add_argument("--crowded", action="store_true", help="many migrasomes close together")
    p.add_argument("--format", choices=("ome", "imagej", "plain", "folder"), default="ome")
    p.add_argument("--clean", action="store_true", help="also write the noise-free render")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("evaluate", help="score a result folder against simulator truth")
    p.add_argument("truth", help="truth folder written by `migradetect simulate`")
    p.add_argument("result", help="per-movie result folder written by `migradetect run`")
    p.add_argument("--json", help="also write the metrics as JSON to this file")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("run", help="analyse one movie or a folder of experiments")
    p.add_argument("input", help="a movie, an experiment folder or a folder of experiments")
    p.add_argument("--out", required=True, help="output folder (never inside INPUT)")
    p.add_argument("--config", default=None,
                   help="preset name (tspan4_gfp, wga) or YAML file (default: tspan4_gfp)")
    _add_calibration_options(p)
    p.add_argument("--channel-migrasome", type=_channel, default=None, metavar="C",
                   help="channel (name or index) showing migrasomes and fibers")
    p.add_argument("--channel-cell", type=_channel, default=None, metavar="C",
                   help="channel (name or index) showing cell bodies")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="start a local dask.distributed cluster with N workers")
    p.add_argument("--force", action="store_true", help="recompute finished movies")
    p.add_argument("--dry-run", action="store_true", help="list what would run, then stop")
    p.set_defaults(func=_cmd_run)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``migradetect`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except MigradetectError as exc:
        print(f"migradetect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("migradetect: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
