"""`kdumpsim recommend MODEL`: the crashkernel= and capture options that fail least on this model."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """examples:
  kdumpsim recommend my-host.yaml                 # ~200 runs
  kdumpsim recommend my-host.yaml --runs 40 --workers 2

Two sweeps within the run budget. First, half the budget goes to the
reservation: crashkernel= size (the 3 largest of 64M/128M/160M/256M/512M up
to a third of RAM) x placement (automatic; ,high with its low region when RAM
goes above 4 GiB; @64M; @6G when RAM reaches it; an extra ,cma area of the
same size), with the model's own options. Then the best reservation is run
with every combination of the options that apply: the capture kernel's IOMMU
mode (copy_tables or off), whether the kdump initramfs carries each kind of
device's driver, and reset_devices. Candidates are ranked by failed captures
(every outcome but ok and ok_dump_corrupted). Ties are broken by fewer
damaged dumps, then the smaller reservation, then fewer options changed from
the model, then the placement order; the report prints this rule.
"""


def register(sub: Any) -> None:
    sp = sub.add_parser("recommend", help="sweep crashkernel= and capture options for a model; name the best",
                        description="Sweep crashkernel= size and placement (,high, ,cma), then the capture "
                                    "kernel's IOMMU mode, the drivers in the kdump initramfs and reset_devices, "
                                    "within a run budget; print the best command line with its failure rate "
                                    "and 95%% interval, the next best, and why the others lose.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("model", help="model YAML (e.g. from kdumpsim import)")
    sp.add_argument("--runs", type=int, default=200, metavar="N", help="run budget (default 200)")
    sp.add_argument("--seed", type=int, default=1, help="master seed (default 1)")
    sp.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    sp.add_argument("--out", metavar="DIR",
                    help="keep both sweeps' results here (DIR/recommend-reservations, DIR/recommend-options; "
                         "default: a temporary directory)")
    sp.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    from kdumpsim.errors import UsageError
    from kdumpsim.sweep.recommend import recommend, report
    if args.runs < 1:
        raise UsageError("--runs: must be at least 1")
    rec = recommend(args.model, runs=args.runs, seed=args.seed, workers=args.workers, out_dir=args.out)
    print(report(rec, args.model))
    return 0
