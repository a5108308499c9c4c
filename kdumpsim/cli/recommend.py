"""`kdumpsim recommend MODEL`: the crashkernel= and capture options that fail least on this model."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """examples:
  kdumpsim recommend my-host.yaml                 # ~200 runs
  kdumpsim recommend my-host.yaml --runs 40 --workers 2

Candidates: crashkernel= size (the 3 largest of 64M/128M/160M/256M/512M up to a third of RAM) x
placement (automatic, @64M, @6G when RAM reaches it) x the capture kernel's
IOMMU mode (copy_tables or off, when the model has an IOMMU) x the kdump
initramfs with or without the NIC drivers. Ranked by failed captures (every
outcome but ok and ok_dump_corrupted), then damaged dumps.
"""


def register(sub: Any) -> None:
    sp = sub.add_parser("recommend", help="sweep crashkernel= and capture options for a model; name the best",
                        description="Sweep crashkernel= size and placement, the capture kernel's IOMMU mode and "
                                    "the NIC drivers in the kdump initramfs within a run budget; print the "
                                    "best command line with its failure rate and 95%% interval.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("model", help="model YAML (e.g. from kdumpsim import)")
    sp.add_argument("--runs", type=int, default=200, metavar="N", help="run budget (default 200)")
    sp.add_argument("--seed", type=int, default=1, help="master seed (default 1)")
    sp.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    sp.add_argument("--out", metavar="DIR", help="keep the sweep's results here (default: a temporary directory)")
    sp.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    from kdumpsim.errors import UsageError
    from kdumpsim.sweep.recommend import recommend, report
    if args.runs < 1:
        raise UsageError("--runs: must be at least 1")
    cands, refused = recommend(args.model, runs=args.runs, seed=args.seed, workers=args.workers, out_dir=args.out)
    print(report(cands, refused))
    return 0
