"""`kdumpsim experiment FILE`: run a sweep, save it as it goes, summarise and plot it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  kdumpsim experiment experiments/dma_sweep.yaml --out results/dma_sweep
  kdumpsim experiment experiments/dma_sweep.yaml --out results/dma_sweep --resume   # after Ctrl-C
  kdumpsim experiment experiments/design_2004_vs_2005.yaml --workers 2
  kdumpsim experiment experiments/dma_sweep.yaml --executor dask --scheduler tcp://127.0.0.1:8786
  kdumpsim experiment experiments/dma_sweep.yaml --dry-run       # validate, count the runs

Results in DIR: results.parquet (a row per run; its `rerun` column re-creates
the run alone with `kdumpsim run`, from the repo root), manifest.json,
summary.csv, the plots (PNG), parts/ (saved chunks; --resume runs only what
is missing from them).
"""


def register(sub: Any) -> None:
    sp = sub.add_parser("experiment", help="run a parameter sweep from an experiment file",
                        description="Run every point of an experiment file (a base model, axes, replicates) "
                                    "and write a Parquet table, a manifest, a summary and plots.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("file", help="experiment YAML (see experiments/)")
    sp.add_argument("--out", metavar="DIR", help="results directory (default results/<experiment name>)")
    sp.add_argument("--workers", type=int, metavar="N",
                    help="worker processes (default: the CPUs available; local executor or local Dask cluster)")
    sp.add_argument("--executor", choices=("local", "dask"), default="local",
                    help="local processes (default) or a dask.distributed cluster")
    sp.add_argument("--scheduler", metavar="ADDR",
                    help="Dask scheduler address (tcp://HOST:PORT) or scheduler file; without it --executor "
                         "dask starts a LocalCluster")
    sp.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in DIR: run only the runs missing from DIR/parts")
    sp.add_argument("--chunk-size", type=int, metavar="N",
                    help="runs per task (default: about 40 chunks per worker, at most 25 runs)")
    sp.add_argument("--dry-run", action="store_true", help="validate every point, print the plan, run nothing")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from kdumpsim.sweep.runner import check_vmcore_space, default_out, prepare, run_experiment
    if args.dry_run:
        exp = prepare(args.file)
        check_vmcore_space(exp, Path(args.out) if args.out else default_out(exp))
        for p in exp.points:
            print(f"{p.index:5d}  {p.label}")
        return 0
    run_experiment(args.file, args.out, workers=args.workers, resume=args.resume, executor=args.executor,
                   scheduler=args.scheduler, chunk_size=args.chunk_size, progress=not args.no_progress)
    return 0
