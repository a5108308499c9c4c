"""Command line of the real-kdump lab.

    python -m kdumpsim.lab setup [--force] [--install]
    python -m kdumpsim.lab run SCENARIO.yaml [--out RUNDIR] [--discard-dumps]
    python -m kdumpsim.lab measure RUNDIR
    python -m kdumpsim.lab table RUNDIR...      (a markdown table of result.json files)

Errors the user can fix (a missing tool, a bad scenario, a guest that did not
reach a marker) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from . import LabError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdumpsim.lab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_setup = sub.add_parser("setup", help="check tools, fetch the guest kernel, build and cache the images")
    p_setup.add_argument("--force", action="store_true", help="rebuild the images even if cached")
    p_setup.add_argument("--install", action="store_true",
                         help="apt-get install missing Debian packages first (root)")
    p_run = sub.add_parser("run", help="run one kdump cycle of a scenario, then measure it")
    p_run.add_argument("scenario", type=Path)
    p_run.add_argument("--out", type=Path, help="run directory (default: a new one under the cache dir)")
    p_run.add_argument("--discard-dumps", action="store_true",
                       help="delete truth.elf, final.elf and disk.img after measuring")
    p_meas = sub.add_parser("measure", help="analyse a run directory (writes result.json, summary.txt)")
    p_meas.add_argument("rundir", type=Path)
    p_tab = sub.add_parser("table", help="markdown table of measured results (result.json of run dirs)")
    p_tab.add_argument("rundirs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "setup":
            from . import setup
            meta = setup.setup(force=args.force, install=args.install)
            print(json.dumps({k: meta[k] for k in ("dir", "kernel", "qemu", "kexec_tools")}, indent=1))
        elif args.cmd == "run":
            from . import cycle, measure, scenario, setup
            scen = scenario.load(args.scenario)
            meta = setup.setup(verbose=True)
            out = args.out
            if out is None:
                runs = setup.cache_dir() / "runs"
                runs.mkdir(parents=True, exist_ok=True)
                out = Path(tempfile.mkdtemp(prefix=f"{scen.name}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=runs))
            print(f"lab run {scen.name} -> {out}")
            cycle.run(scen, out, meta)
            result = measure.measure(out)
            print(measure.summary(result))
            if args.discard_dumps:
                cycle.discard_dumps(out)
        elif args.cmd == "table":
            from . import measure
            results = []
            for d in args.rundirs:
                path = d / "result.json" if d.is_dir() else d
                if not path.is_file():
                    raise LabError(f"no result.json in {d}")
                results.append(json.loads(path.read_text()))
            print(measure.table(results))
        elif args.cmd == "measure":
            from . import measure
            result = measure.measure(args.rundir)
            print(measure.summary(result))
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
