"""Command line of the real-kdump lab.

    python -m kdumpsim.lab setup [--force] [--install]
    python -m kdumpsim.lab run SCENARIO.yaml [--out RUNDIR] [--discard-dumps]
    python -m kdumpsim.lab measure RUNDIR
    python -m kdumpsim.lab table RUNDIR...      (a markdown table of result.json files)
    python -m kdumpsim.lab predict RUNDIR [--timing run|profile] [--seed N]
    python -m kdumpsim.lab compare RUNDIR... [--summary]   (exit 1: a figure outside its tolerance)

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
    add_commands(ap)
    return dispatch(ap.parse_args(argv))


def add_commands(ap: argparse.ArgumentParser) -> None:
    """The lab's sub-actions on `ap` (this module's parser, or `kdumpsim lab`'s)."""
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
    p_pred = sub.add_parser("predict", help="export the run's machine as a kdumpsim model (RUNDIR/model.yaml) "
                                            "and simulate it (RUNDIR/predicted.json)")
    p_pred.add_argument("rundir", type=Path)
    p_pred.add_argument("--timing", choices=("run", "profile"), default="run",
                        help="phase times from the run itself (default) or from the lab's timing profile")
    p_pred.add_argument("--seed", type=int, default=0)
    p_cmp = sub.add_parser("compare", help="predicted vs measured side by side; exit 1 when a figure is "
                                           "outside its tolerance")
    p_cmp.add_argument("rundirs", type=Path, nargs="+")
    p_cmp.add_argument("--predict", action="store_true", help="run predict first")
    p_cmp.add_argument("--summary", action="store_true", help="print one markdown row per run instead")


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed lab command (shared with `kdumpsim lab`)."""
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
        elif args.cmd == "predict":
            from . import predict
            predicted = predict.predict(args.rundir, seed=args.seed, timing=args.timing)
            print((args.rundir / "model.yaml").read_text())
            print(json.dumps({k: predicted[k] for k in ("post_panic", "dma_stop", "pages", "phases_s")}, indent=1))
        elif args.cmd == "compare":
            from . import compare, predict
            if args.predict:
                for d in args.rundirs:
                    predict.predict(d)
            if args.summary:
                print(compare.summary_table(args.rundirs))
            ok = True
            for d in args.rundirs:
                good, text, _ = compare.compare(d)
                ok = ok and good
                if not args.summary:
                    print(text + "\n")
            return 0 if ok else 1
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    return 0
