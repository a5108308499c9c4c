"""The `kdumpsim` command. Every subcommand has --help with an example.

Exit status: 0 success, 1 the run failed to produce what was asked (e.g. a
vmcore from a run that has none), 2 bad input (model, experiment, file),
3 `run --fail-on OUTCOME,...`: the run's outcome is one of those named
(what CI gates on; everything asked for is still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from kdumpsim import __version__
from kdumpsim.cli import experiment as cli_experiment
from kdumpsim.cli import golden as cli_golden
from kdumpsim.cli import importcmd as cli_import
from kdumpsim.cli import lab as cli_lab
from kdumpsim.cli import recommend as cli_recommend
from kdumpsim.cli import timeline as cli_timeline
from kdumpsim.errors import ConfigError, KdumpsimError, LayoutError, printable
from kdumpsim.names import OUTCOMES
from kdumpsim.units import MiB

EPILOG_RUN = """examples:
  kdumpsim run models/paper-i386-2005.yaml
  kdumpsim run models/modern-x86_64.yaml --seed 7 --report out/run.json --trace out/trace.jsonl
  kdumpsim run models/paper-i386-2005.yaml --set devices.eth0.packet_rate=20000 --vmcore out/vmcore
"""
EPILOG_RUN += """  kdumpsim run models/modern-x86_64.yaml --fail-on failed --json   # CI: exit 3 when the capture fails

--fail-on takes outcome names (comma-separated, repeatable) or `failed` (every
outcome but ok and ok_dump_corrupted); exit status 3 when the run's outcome is
one of them. Outcomes: {outcomes}
""".format(outcomes=", ".join(OUTCOMES))
EXIT_FAIL_ON = 3
EPILOG_VALIDATE = """examples:
  kdumpsim validate models/modern-x86_64.yaml
  kdumpsim validate models/modern-x86_64.yaml --set kexec.crashkernel=512M
"""
EPILOG_INSPECT = """examples:
  kdumpsim inspect out/vmcore
  kdumpsim inspect /var/crash/127.0.0.1-2026-11-26/vmcore --json
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _sigterm_unwinds(), _escaped_stdout():
        try:
            return args.func(args)
        except _Terminated:
            print("terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError as e:
            if e.filename is not None:      # an output file (a FIFO whose reader left): say so
                print(printable(f"kdumpsim: error: {e.filename}: {e.strerror}"), file=sys.stderr)
                return 1
            # stdout's reader stopped reading (| head): what it wanted it got; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as e:  # noqa: BLE001 - every known error kind becomes a message
            code, msg = _explain(e)
            if code is None:
                raise
            print(f"kdumpsim: error: {printable(msg)}", file=sys.stderr)
            return code


class _EscapingWriter:
    """stdout with every text written through errors.printable: a model's name,
    a vmcore's notes or a non-UTF-8 file name print as escapes, never as
    terminal commands or an encoding error."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _escaped_stdout() -> Iterator[None]:
    real = sys.stdout
    sys.stdout = _EscapingWriter(real)
    try:
        yield
    finally:
        sys.stdout = real


class _Terminated(KeyboardInterrupt):
    """SIGTERM: unwind like Ctrl-C (a sweep prints how to resume; outputs leave no temporary)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:             # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _explain(e: Exception) -> tuple[int | None, str]:
    """(exit status, one line) for an error a user should see; (None, "") for a bug."""
    if isinstance(e, LayoutError) and e.field:   # one that load()/simulate_checked() did not attribute to a file
        return e.exit_status, f"{e.field}: {e}"
    if isinstance(e, KdumpsimError):
        return e.exit_status, str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return 1, f"{where}{e.strerror or e}"
    return None, ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdumpsim",
        description="Simulate a Linux machine's crash and kdump's capture path (kexec, NMI shootdown, "
                    "purgatory, capture kernel, DMA that keeps going) and write real ELF vmcores.",
        epilog="start with: kdumpsim run models/paper-i386-2005.yaml   (then: kdumpsim <command> --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kdumpsim {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    _add(sub, "run", "simulate one crash of a model", EPILOG_RUN, _run_args, cmd_run)
    _add(sub, "validate", "check a model file and show its crashkernel layout", EPILOG_VALIDATE,
         _validate_args, cmd_validate)
    _add(sub, "inspect", "summarise any ELF vmcore (ours or a real /proc/vmcore copy)", EPILOG_INSPECT,
         _inspect_args, cmd_inspect)
    cli_timeline.register(sub)
    cli_experiment.register(sub)
    cli_golden.register(sub)
    cli_import.register(sub)
    cli_lab.register(sub)
    cli_recommend.register(sub)
    return p


def _add(sub, name: str, help_: str, epilog: str, args: Callable, func: Callable) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    args(sp)
    sp.set_defaults(func=func)
    return sp


def _run_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("model", help="model YAML (see models/)")
    a.add_argument("--seed", type=int, default=0, help="run seed (default 0); same model + seed = same bytes")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model field by dotted key, e.g. timing.capture_boot=20s or "
                        "devices.nic0.start=5ms (repeatable)")
    a.add_argument("--report", metavar="OUT.json", help="write the run report (JSON)")
    a.add_argument("--trace", metavar="OUT.jsonl", help="write every event, one JSON object per line")
    a.add_argument("--vmcore", metavar="OUT.vmcore", help="write /proc/vmcore as the capture kernel's copy read it")
    a.add_argument("--oldmem", metavar="OUT.raw", help="write the /dev/oldmem raw view (sparse file)")
    a.add_argument("--dumpfile", metavar="OUT", help="write what the collector writes: makedumpfile -E's filtered "
                                                     "ELF (capture.collector makedumpfile), or /proc/vmcore as dd "
                                                     "copied it")
    a.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a.add_argument("--json", action="store_true", help="print the run report as JSON on stdout instead of the "
                                                         "text summary (what --report writes)")
    a.add_argument("--fail-on", dest="fail_on", action="append", default=[], metavar="OUTCOME[,OUTCOME]",
                   help=f"exit with status {EXIT_FAIL_ON} when the run's outcome is one of these (or `failed`: any failed "
                        "capture); repeatable")


def _override_arg(a: argparse.ArgumentParser) -> None:
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model field by dotted key, as for `kdumpsim run` (repeatable)")


def _validate_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("model", help="model YAML (see models/)")
    _override_arg(a)


def fail_on_outcomes(values: list[str]) -> set[str]:
    """`--fail-on ok_dump_corrupted,failed` -> the outcome names; unknown names are a UsageError."""
    from kdumpsim.config.model import _did_you_mean
    from kdumpsim.errors import UsageError
    from kdumpsim.names import CAPTURE_OK, OUTCOMES
    chosen: set[str] = set()
    for value in values:
        for name in (n.strip() for n in value.split(",")):
            if not name:
                raise UsageError(f"--fail-on {value!r}: empty outcome name; give e.g. --fail-on failed")
            if name == "failed":
                chosen |= set(OUTCOMES) - set(CAPTURE_OK)
            elif name in OUTCOMES:
                chosen.add(name)
            else:
                choices = ["failed", *OUTCOMES]
                raise UsageError(f"--fail-on: unknown outcome {name!r}{_did_you_mean(name, choices)}; "
                                 f"outcomes: {', '.join(choices)}")
    return chosen


def check_free_space(path: str, need: int, what: str) -> None:
    """Say how big `path` will be; refuse (exit 2) if its file system has less free space."""
    import shutil
    from pathlib import Path

    from kdumpsim.errors import UsageError
    target = Path(path).absolute()
    where = next((d for d in target.parents if d.exists()), Path("/"))
    free = shutil.disk_usage(where).free
    if need > free:
        raise UsageError(f"{path}: the {what} would be {_gib(need)} but {where} has {_gib(free)} free; "
                         "use a model with less RAM (--set memory.iomem=...) or another directory")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _inspect_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("file", help="an ELF core file (vmcore)")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")


def load(model: str, overrides: list[str]):
    """Load and lay out a model; layout errors name the model file."""
    from kdumpsim.config.model import load_model
    from kdumpsim.kexec import load_capture_kernel
    from kdumpsim.machine.layout import Machine
    cfg = load_model(model, overrides)
    try:
        load_capture_kernel(Machine(cfg, 0))     # the reservation and the segments in it
    except LayoutError as e:
        raise ConfigError(model, e.field, str(e)) from None
    return cfg


def simulate_checked(model: str, cfg, seed: int):
    from kdumpsim.measure import simulate
    try:
        return simulate(cfg, seed)
    except LayoutError as e:
        raise ConfigError(model, e.field, str(e)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from kdumpsim.atomic import write_text
    from kdumpsim.measure.report import build_report, dumps
    fail_on = fail_on_outcomes(args.fail_on)
    cfg = load(args.model, args.overrides)
    ram = sum(r.size for r in cfg.memory.iomem if r.type == "System RAM")
    if args.vmcore:         # the vmcore holds all RAM but the reservation: at most RAM plus headers
        check_free_space(args.vmcore, ram, "vmcore (about the model's RAM)")
        if not args.quiet:
            print(f"vmcore: up to {_gib(ram)} (the model's RAM) will be written to {args.vmcore}", file=sys.stderr)
    if args.dumpfile:
        check_free_space(args.dumpfile, ram, "dump file (at most about the model's RAM)")
    if args.oldmem:         # sparse: holes take no space, RAM does
        check_free_space(args.oldmem, ram, "oldmem file (the model's RAM; holes are sparse)")
    run = simulate_checked(args.model, cfg, args.seed)
    report = build_report(run)
    if args.report:
        write_text(args.report, dumps(report))
    if args.trace:
        from kdumpsim.atomic import atomic_write
        with atomic_write(args.trace, "w") as fh:
            # First line: what run this is (kdumpsim timeline titles its chart with it).
            first = run.trace.events[0].time if run.trace.events else 0
            fh.write(json.dumps({"time_ns": first, "actor": "kdumpsim", "kind": "run_info", "model": cfg.name,
                                 "model_file": args.model, "seed": args.seed, "overrides": args.overrides},
                                sort_keys=True, separators=(",", ":")) + "\n")
            run.trace.write_jsonl(fh)
    if (args.vmcore or args.oldmem or args.dumpfile) and run.vmcore is None and run.outcome in fail_on:
        print(f"kdumpsim: no vmcore to write: the run's outcome is {run.outcome}", file=sys.stderr)
    elif args.vmcore or args.oldmem or args.dumpfile:
        from kdumpsim.formats.vmcore import write_filtered_elf, write_oldmem, write_vmcore
        if args.vmcore:
            write_vmcore(run, args.vmcore)
        if args.dumpfile:
            (write_filtered_elf if cfg.capture.collector == "makedumpfile" else write_vmcore)(run, args.dumpfile)
        if args.oldmem:
            write_oldmem(run, args.oldmem)
    if args.json:
        print(dumps(report))
    elif not args.quiet:
        print(_run_summary(run, OUTCOMES))
    if run.outcome in fail_on:
        if not args.quiet:
            print(f"kdumpsim: outcome {run.outcome} is in --fail-on: exit status {EXIT_FAIL_ON}", file=sys.stderr)
        return EXIT_FAIL_ON
    return 0


def _run_summary(run, outcomes: dict[str, str]) -> str:
    from kdumpsim.measure.report import assumptions
    m = run.metrics
    lines = [f"model      {run.machine.cfg.name} (seed {run.seed})",
             f"outcome    {run.outcome}: {outcomes[run.outcome]}",
             f"timing     profile {run.timing.profile}"
             + (" (measured in the QEMU TCG lab)" if run.timing.profile == "qemu-tcg" else " (assumed times)"),
             f"reserved   {run.machine.describe_reservation()}  crashkernel={run.machine.reservation.spec}",
             f"kexec      {run.image.method}: {_segment_list(run.image)}",
             f"cmdline    {run.image.cmdline}",
             f"cpus       {m['cpus_saved']}/{len(run.cpus)} notes saved"
             + (", missing: " + ", ".join(f"CPU {c} ({why.replace('_', ' ')})" for c, why in m["cpus_missing_why"].items())
                if m["cpus_missing"] else "")]
    for name, ns in sorted(m["phase_ns"].items(), key=lambda kv: kv[1]):
        lines.append(f"  {ns / 1e9:12.6f} s  {name}")
    if m["dump_fidelity"] is not None:
        changed, pages = m["dump_pages_corrupted"], m["dump_pages"]
        ppm = changed / pages * 1e6 if pages else 0.0
        per_million = (f", {ppm:.0f} per million" if ppm >= 10 else f", {ppm:.2g} per million") if changed else ""
        lines.append(f"dump       {changed} of {pages} dumped pages differ from RAM at the panic"
                     f"{per_million} (fidelity {_fidelity_text(m['dump_fidelity'])})")
    col = m.get("collector", {})
    if col.get("name") == "makedumpfile":
        lines.append(f"collector  makedumpfile -d {col['dump_level']}: {col['pages_excluded']} pages excluded "
                     f"({col['excluded_pages_hit']} of them written by DMA: no dump damage), "
                     f"{col['struct_pages_changed']} struct pages changed before it read them")
    elif col:
        lines.append("collector  dd: all of /proc/vmcore in file order")
    changed_regions = [(region, r) for region, r in m["regions"].items() if r["bytes"]]
    if changed_regions:
        lines.append("changed    bytes = bytes that now differ from what they should hold; "
                     "wrote = bytes a device wrote there (more: some writes left a byte as it was)")
    for region, r in changed_regions:
        who = ", ".join(f"{w} wrote {v['bytes']} B" for w, v in r["writers"].items())
        lines.append(f"changed    {region}: {r['bytes']} bytes changed in {r['pages']} pages ({who})")
    if run.capture_mem is not None:
        mem = run.capture_mem
        hits = ", ".join(f"{k} {n} B" for k, n in sorted(mem.hits.items())) or "nothing in use"
        lines.append(f"capture    kernel at {mem.kernel_at:#x} (KASLR), needs crashkernel>={mem.need.minimum >> 20}M"
                     + (f"; out of memory: {mem.oom}" if mem.oom else "") + f"; DMA hit {hits}")
    for name, d in m["dma"].items():
        stop = f"stopped at {d['stopped_ns'] / 1e9:.6f} s ({d['stop_reason']})" if d["stopped_ns"] is not None \
            else "never stopped"
        lines.append(f"dma        {name} ({d['kind']}, {d['placement']}): {d['writes']} writes, "
                     f"{d['faults']} faults, {d['to_nowhere']} to no RAM; {stop}")
    lines += [f"assumes    {a}" for a in assumptions(run)]
    return "\n".join(lines)


def _segment_list(image) -> str:
    """'elfcorehdr@0x6f000000 (hashed), purgatory@...': the segments in load order."""
    return ", ".join(f"{s.name}@{s.start:#x}" + ("" if s.hashed else " (not hashed)") for s in image.segments)


def _fidelity_text(f: float) -> str:
    """A fidelity with the digits that show it is not 1: 0.99997, not 1.000000."""
    if f >= 1:
        return "1 (no page changed)"
    digits = max(6, 2 - math.floor(math.log10(1 - f)))
    return f"{f:.{digits}f}"


def cmd_validate(args: argparse.Namespace) -> int:
    from kdumpsim.config.model import load_model
    from kdumpsim.crash.capturemem import capture_need, minimum_crashkernel, planned_segments
    from kdumpsim.kexec import load_capture_kernel
    from kdumpsim.machine.crashkernel import parse_crashkernel
    from kdumpsim.machine.layout import Machine
    cfg = load_model(args.model, args.overrides)
    collector = cfg.capture.collector
    modern = cfg.arch == "x86_64" and cfg.era == "modern" and cfg.design != "2004"
    try:
        m = Machine(cfg, 0)
        image = load_capture_kernel(m)
    except LayoutError as e:
        msg = str(e)
        ram = sum(b + 1 - a for a, b in ((r.start, r.end) for r in cfg.memory.iomem if r.type == "System RAM"))
        try:
            size = parse_crashkernel(cfg.kexec.crashkernel, ram)[0]
        except LayoutError:
            size = 0                 # unparseable: the error says so
        if modern and size and e.field == "kexec.crashkernel":    # the one error line also says how much it takes
            least = minimum_crashkernel(planned_segments(cfg), ram, collector)
            msg += f"; the capture kernel needs at least crashkernel={least // MiB}M to run (validate " \
                   "with a larger one shows the breakdown)"
        raise ConfigError(args.model, e.field, msg) from None
    reserved = sum(e - s for s, e in m.reservation.spans)
    print(f"{args.model}: ok ({cfg.name}: {cfg.arch}, {cfg.cpus.count} CPUs, "
          f"{m.ram_total / 2**30:.2f} GiB RAM, era {cfg.era}, design {cfg.design}, {image.method})")
    print(f"reservation {m.describe_reservation()}")
    for s in image.segments:
        print(f"  {s.name:<11} {s.start:#014x}-{s.end - 1:#014x}  {s.memsz:>10} bytes")
    need = sum(s.memsz for s in image.segments)
    parts = ", ".join(f"{s.name} {s.memsz / 2**20:.1f}M" for s in sorted(image.segments, key=lambda s: -s.memsz))
    print(f"needs      at least {need / 2**20:.1f}M for the segments ({parts})"
          + ("" if modern else "; the capture kernel's own memory at run time is modelled for modern x86_64 only"))
    if modern:
        segs = {s.name: s.memsz for s in image.segments}
        cneed = capture_need(segs, m.reservation.spans, m.ram_total, collector)
        at_least = (minimum_crashkernel(segs, m.ram_total, collector, m.reservation.spans[0][0])
                    if len(m.reservation.spans) == 1 else None)     # ,high: the two regions' own need
        for line in cneed.describe(reserved, at_least):
            print(line)
    print(f"timing profile {cfg.timing.profile}" + (" (assumptions within the published 4.6-6.5 s capture-service "
                                                     "start)" if cfg.timing.profile == "server" else
                                                     " (measured in the QEMU TCG lab)"))
    print(f"cmdline {image.cmdline}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from kdumpsim.formats.reader import format_summary, inspect_vmcore
    summary = inspect_vmcore(args.file)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_summary(summary))
    return 0
