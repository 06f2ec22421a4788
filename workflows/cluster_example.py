"""Analyse a folder of experiments on a SLURM cluster, from Python (see slurm_cluster.md).

Usage (inside a small, long SLURM job; the dask workers are submitted as jobs of their own)::

    python cluster_example.py INPUT OUT_DIR [--config tspan4_gfp] [--jobs 4]

Needs ``dask-jobqueue`` (``pip install dask-jobqueue``). Edit ``SLURM`` for your site. With
``--local N`` it uses a local cluster of N worker processes instead (no SLURM), which is also
how to try the script on a laptop. Exit code as ``migradetect run``: 0 all done, 1 some movies
failed (see OUT_DIR/failures.csv), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from distributed import Client, LocalCluster

from migradetect.batch import run_batch
from migradetect.batch_cli import sigterm_as_interrupt
from migradetect.config import load_config

#: Resources of one worker job; adapt to your cluster.
SLURM = {
    "queue": "cpu",
    "account": None,
    "cores": 8,
    "processes": 8,  # single-threaded workers: one frame per CPU at a time
    "memory": "32GB",
    "walltime": "04:00:00",
    "local_directory": "$TMPDIR",
}


def make_cluster(jobs: int, local: int | None):
    """A SLURMCluster with ``jobs`` worker jobs, or a LocalCluster of ``local`` workers."""
    if local:
        return LocalCluster(n_workers=local, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=None)
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(log_directory=os.path.expandvars("$HOME/dask-logs"), **SLURM)
    cluster.scale(jobs=jobs)
    return cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--config", default="tspan4_gfp", help="preset name or YAML file")
    p.add_argument("--jobs", type=int, default=4, help="SLURM worker jobs")
    p.add_argument("--local", type=int, default=None, metavar="N",
                   help="use N local worker processes instead of SLURM")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    config = load_config(args.config)  # a bad parameter stops here, before any job starts
    with make_cluster(args.jobs, args.local) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=3600)  # the first worker job may queue a while
        try:
            with sigterm_as_interrupt():  # SLURM's SIGTERM at the time limit: stop cleanly
                result = run_batch(args.input, args.out, config, client=client,
                                   log_file="migradetect.log")
        except KeyboardInterrupt:
            return 130
    print(result.summary_line(), file=sys.stderr)
    return 1 if result.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
