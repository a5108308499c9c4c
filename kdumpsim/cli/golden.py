"""`kdumpsim golden`: check (default) or regenerate golden timelines (kdumpsim.sweep.golden)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  kdumpsim golden                                  # check tests/golden against models/ (exit 1 on a difference)
  kdumpsim golden --regen                          # rewrite them on purpose
  kdumpsim golden --models my-models --dir my-goldens   # your own models and goldens

A mismatch prints what moved and the command that regenerates, with your
--models and --dir repeated.
"""


def register(sub: Any) -> None:
    from kdumpsim.sweep import golden
    sp = sub.add_parser("golden", help="check or regenerate golden timelines (CI: exit 1 when one moved)",
                        description="Run every model in --models with seeds "
                                    f"{', '.join(map(str, golden.SEEDS))} and compare the timelines with the "
                                    "golden files in --dir (or rewrite them with --regen).",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    golden.add_arguments(sp)
    sp.set_defaults(func=cmd_golden)


def cmd_golden(args: argparse.Namespace) -> int:
    from kdumpsim.errors import UsageError
    from kdumpsim.sweep import golden
    models = Path(args.models)
    if not models.is_dir():
        raise UsageError(f"--models {models}: not a directory of model files")
    if not golden.cases(models):
        raise UsageError(f"--models {models}: no *.yaml model files in it")
    if not args.regen and not Path(args.dir).is_dir():
        raise UsageError(f"--dir {args.dir}: no such directory; create the goldens with "
                         f"{golden.regen_command(args.dir, models, 'kdumpsim golden')}")
    try:
        return golden.run(args, prog="kdumpsim golden")
    except ValueError as e:      # a golden file that is not one
        raise UsageError(str(e).splitlines()[0]) from None
