"""`kdumpsim timeline`: a run's trace as a Perfetto/Chrome JSON timeline and/or a Gantt PNG."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  kdumpsim run models/modern-x86_64.yaml --seed 1 --trace out/trace.jsonl
  kdumpsim timeline out/trace.jsonl --perfetto out/timeline.json --plot out/gantt.png

Open the JSON at https://ui.perfetto.dev (or chrome://tracing): one track per
CPU, DMA engine, purgatory and the capture kernel; ts is microseconds since the
panic (events before it, the kexec load at -1 s, are clamped to 0).
The PNG uses a symlog time axis: linear below 1 us, logarithmic above.
"""


def register(sub) -> None:
    sp = sub.add_parser("timeline", help="turn a run's trace into a Perfetto timeline and/or a Gantt chart",
                        description="Turn a trace written by `kdumpsim run --trace` into a Perfetto/Chrome "
                                    "JSON timeline (--perfetto) and/or a Gantt chart PNG (--plot).",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("trace", metavar="TRACE.jsonl", help="trace from `kdumpsim run MODEL --trace TRACE.jsonl`")
    sp.add_argument("--perfetto", metavar="OUT.json", help="write Chrome/Perfetto Trace Event Format JSON")
    sp.add_argument("--plot", metavar="OUT.png", help="write a Gantt chart PNG")
    sp.add_argument("--title", help="title of the Gantt chart (default: the model and seed the trace came from)")
    sp.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sp.set_defaults(func=cmd_timeline)


def cmd_timeline(args: argparse.Namespace) -> int:
    from kdumpsim.atomic import write_text
    from kdumpsim.errors import TraceError, UsageError
    from kdumpsim.trace.timeline import perfetto_json, plot_gantt, read_trace
    if not args.perfetto and not args.plot:
        raise UsageError("timeline: nothing to write: give --perfetto OUT.json and/or --plot OUT.png")
    try:
        events = read_trace(args.trace)
        if args.perfetto:
            write_text(args.perfetto, perfetto_json(events))
        if args.plot:
            plot_gantt(events, args.plot, title=args.title)
    except TraceError as e:
        raise UsageError(str(e)) from None
    if not args.quiet:
        for what, path in (("perfetto", args.perfetto), ("gantt", args.plot)):
            if path:
                print(f"{what:<9} {path}")
    return 0
