"""`kdumpsim lab`: the real-kdump lab (kdumpsim.lab) as a subcommand:
setup | run | measure | predict | compare | table, as `python -m kdumpsim.lab`."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  kdumpsim lab setup
  kdumpsim lab run lab/scenarios/e1000-nodriver-200pps.yaml --out /tmp/run-a --discard-dumps
  kdumpsim lab predict /tmp/run-a
  kdumpsim lab compare /tmp/run-a      (exit 1: a figure outside its tolerance)

See lab/README.md.
"""


def register(sub) -> None:
    from kdumpsim.lab.commands import add_commands
    sp = sub.add_parser("lab", help="real kdump cycles under QEMU, measured, and compared with the model",
                        description="The real-kdump lab: run a kdump cycle under QEMU (TCG), measure the "
                                    "post-panic DMA, export the lab machine as a model, compare.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(sp)
    sp.set_defaults(func=cmd_lab)


def cmd_lab(args: argparse.Namespace) -> int:
    from kdumpsim.lab.commands import dispatch
    return dispatch(args)
