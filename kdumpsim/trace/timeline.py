"""Timelines of one run's trace: Perfetto/Chrome JSON and a Gantt chart PNG.

    events = read_trace("out/trace.jsonl")      # or run.trace.events
    json.dump(to_perfetto(events), fh)           # open in ui.perfetto.dev
    plot_gantt(events, "out/gantt.png")          # or gantt_figure(events) in a notebook

Both views come from one model of the trace (`build_timeline`): a track per
CPU, per DMA engine, for purgatory and for the capture kernel (plus instant
only tracks for kexec, the IO-APIC and the IOMMU), each holding spans
(start, end) and instants.

Spans, from the events alone:
- a CPU that answers the NMI: running (panic -> nmi_received), NMI handler
  (nmi_received -> halted), halted (-> trace end); a CPU that never answers
  (nmi_blocked / nmi_lost) keeps running to the end of the trace;
- the panicking CPU: NMI shootdown wait (panic -> nmi_shootdown_done), crash
  shutdown (-> machine_kexec), then it runs purgatory and the capture kernel
  (-> trace end, drawn faintly: those tracks show what it does);
- purgatory: sha256 of each segment (until the next purgatory event), backup,
  2004 relocation per segment, the hang after a digest mismatch;
- capture kernel: boot (boot_start -> boot_done / capture_kernel_corrupted),
  dump start delay, dump copy with one child span per PT_LOAD;
- DMA engine: active from its first post-panic DMA (write, fault or write to
  nowhere) until dma_stopped (or the trace end), and an instant per write.

Time: the trace's time 0 is the panic. Perfetto `ts` is microseconds since
the panic; events before it (kexec load and DMA buffer mapping at -1 s) are
CLAMPED to ts 0 and keep their real time in args.time_ns. The Gantt chart
starts at the panic and uses a symlog axis (linear below 1 us, logarithmic
above), so the microsecond NMI round and the tens-of-seconds dump copy are
both readable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpsim.errors import TraceError
from kdumpsim.trace.events import Event

# Regions a DMA write may hit without touching the capture path itself
# (sim.CrashRun.region_of): anything else is a segment, the backup, notes...
HARMLESS_REGIONS = frozenset({"first_kernel_ram", "reservation_free"})
DMA_KINDS = frozenset({"dma_buffers_mapped", "dma_write", "dma_fault", "dma_to_nowhere", "dma_stopped",
                       "no_driver_in_capture_kernel", "driver_init_without_reset"})
# Events that mean the capture path itself went wrong.
ALARM_KINDS = frozenset({"purgatory_mismatch", "capture_kernel_corrupted", "vmcore_init_failed",
                         "nmi_timeout", "nmi_blocked", "nmi_lost"})
PATH_ACTORS = ("kexec", "purgatory", "capture", "ioapic", "iommu")
_CPU_RE = re.compile(r"^cpu(\d+)$")


# ------------------------------------------------------------------ model
@dataclass(frozen=True)
class Span:
    start: int           # ns
    end: int             # ns, >= start
    name: str
    cat: str             # colour / category key (see CATEGORY_STYLE)
    depth: int = 0       # 0: top-level on its track, 1: nested inside a depth-0 span
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Instant:
    time: int
    name: str
    cat: str             # "event", "dma_write", "corruption", "alarm", "setup"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Track:
    name: str            # the actor name: cpu3, purgatory, capture, nic0, ...
    group: str           # cpu | path | dma | other
    label: str           # row label for the plot
    spans: list[Span] = field(default_factory=list)
    instants: list[Instant] = field(default_factory=list)
    note: str = ""       # short state note (e.g. "hung: NMI blocked")


@dataclass
class Timeline:
    tracks: list[Track]
    start: int           # first event time (may be negative: kexec load)
    end: int             # last event time
    panic: int | None
    panic_cpu: str | None
    phases: dict[str, int]

    def track(self, name: str) -> Track | None:
        return next((t for t in self.tracks if t.name == name), None)


def _cpu_index(actor: str) -> int | None:
    m = _CPU_RE.match(actor)
    return int(m.group(1)) if m else None


def _events_by_actor(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.actor, []).append(e)
    return out


def _first(evs: Iterable[Event], *kinds: str) -> Event | None:
    return next((e for e in evs if e.kind in kinds), None)


def build_timeline(events: list[Event]) -> Timeline:
    """Spans and instants per track from a trace (list of Events)."""
    if not events:
        raise TraceError("the trace has no events")
    events = sorted(events, key=lambda e: e.time)      # stable: keeps same-time order
    start, end = events[0].time, events[-1].time
    by_actor = _events_by_actor(events)
    panic_ev = _first(events, "panic")
    panic = panic_ev.time if panic_ev else None
    t0 = max(0, start) if panic is None else panic
    classify = region_classifier(events)
    tracks: list[Track] = []

    cpus = sorted((a for a in by_actor if _cpu_index(a) is not None), key=_cpu_index)
    for actor in cpus:
        tracks.append(_cpu_track(actor, by_actor[actor], t0, end, panic_ev))
    for actor in PATH_ACTORS:
        if actor == "purgatory" and actor in by_actor:
            tracks.append(_purgatory_track(by_actor[actor], end))
        elif actor == "capture" and actor in by_actor:
            tracks.append(_capture_track(by_actor[actor], end))
        elif actor in by_actor:
            tracks.append(_instant_track(actor, "path", by_actor[actor]))
    devices = [a for a in by_actor if a not in cpus and a not in PATH_ACTORS
               and any(e.kind in DMA_KINDS for e in by_actor[a])]
    for actor in devices:       # in order of first appearance (= model order)
        tracks.append(_dma_track(actor, by_actor[actor], end, classify))
    for actor in by_actor:
        if actor not in cpus and actor not in PATH_ACTORS and actor not in devices:
            tracks.append(_instant_track(actor, "other", by_actor[actor]))
    phases = {e.kind: e.time for e in events if e.kind in (
        "panic", "nmi_shootdown_done", "machine_kexec", "purgatory_start", "jump_to_kernel", "boot_start",
        "vmcore_init", "boot_done", "dump_copy_start", "dump_copy_done", "purgatory_mismatch",
        "capture_kernel_corrupted")}
    return Timeline(tracks, start, end, panic, panic_ev.actor if panic_ev else None, phases)


def _instant(e: Event, cat: str | None = None) -> Instant:
    if cat is None:
        cat = "alarm" if e.kind in ALARM_KINDS else ("setup" if e.time < 0 else "event")
    return Instant(e.time, e.kind, cat, dict(e.details))


def _instant_track(actor: str, group: str, evs: list[Event]) -> Track:
    t = Track(actor, group, actor)
    t.instants = [_instant(e) for e in evs]
    return t


def _cpu_track(actor: str, evs: list[Event], t0: int, end: int, panic_ev: Event | None) -> Track:
    t = Track(actor, "cpu", actor)
    t.instants = [_instant(e) for e in evs]
    if panic_ev is not None and panic_ev.actor == actor:
        t.label = f"{actor} (panic)"
        done = _first(evs, "nmi_shootdown_done")
        kexec = _first(evs, "machine_kexec")
        wait_end = done.time if done else (kexec.time if kexec else end)
        t.spans.append(Span(panic_ev.time, wait_end, "panic + NMI shootdown", "panic"))
        if done is not None:
            shut_end = kexec.time if kexec else end
            t.spans.append(Span(done.time, shut_end, "crash shutdown (APIC off, save regs)", "shutdown"))
        if kexec is not None:
            t.spans.append(Span(kexec.time, end, "in purgatory / capture kernel", "kexeced"))
        return t
    recv, halted = _first(evs, "nmi_received"), _first(evs, "halted")
    lost, blocked = _first(evs, "nmi_lost"), _first(evs, "nmi_blocked")
    first_run_end = recv.time if recv else end
    never = lost is not None or blocked is not None or recv is None
    if never:
        why = "NMI lost" if lost else ("hung, NMI blocked" if blocked else "never got the NMI")
        t.note = why
        t.spans.append(Span(t0, end, f"running (never halted: {why})", "never_halted"))
        return t
    t.spans.append(Span(t0, max(t0, first_run_end), "running", "running"))
    stop = halted.time if halted else end
    t.spans.append(Span(recv.time, stop, "NMI handler (save regs, LAPIC off)", "nmi_handler"))
    if halted is not None:
        t.spans.append(Span(halted.time, end, "halted", "halted"))
    else:
        t.note = "never halted"
    return t


def _purgatory_track(evs: list[Event], end: int) -> Track:
    t = Track("purgatory", "path", "purgatory")
    t.instants = [_instant(e) for e in evs]
    start = _first(evs, "purgatory_start")
    if start is None:
        return t
    finish = _first(evs, "jump_to_kernel", "purgatory_mismatch")
    p_end = finish.time if finish else end
    t.spans.append(Span(start.time, p_end, "purgatory", "purgatory"))
    for i, e in enumerate(evs):
        nxt = evs[i + 1].time if i + 1 < len(evs) else end
        if e.kind == "sha256_segment":
            seg = e.details.get("segment", "?")
            t.spans.append(Span(e.time, nxt, f"sha256 {seg}", "sha256", 1, dict(e.details)))
        elif e.kind == "relocate_segment":
            seg = e.details.get("segment", "?")
            t.spans.append(Span(e.time, nxt, f"relocate {seg}", "relocate", 1, dict(e.details)))
        elif e.kind == "backup_start":
            done = next((x for x in evs[i + 1:] if x.kind == "backup_done"), None)
            t.spans.append(Span(e.time, done.time if done else end, "backup copy", "backup", 1, dict(e.details)))
    mismatch = _first(evs, "purgatory_mismatch")
    if mismatch is not None:
        t.spans.append(Span(mismatch.time, max(mismatch.time, end), "hang: for (;;)", "hang"))
        t.note = "sha256 mismatch: hangs"
    return t


def _capture_track(evs: list[Event], end: int) -> Track:
    t = Track("capture", "path", "capture kernel")
    t.instants = [_instant(e) for e in evs if e.kind != "dump_copy_segment"]
    boot = _first(evs, "boot_start")
    if boot is None:
        return t
    booted = _first(evs, "boot_done", "capture_kernel_corrupted")
    t.spans.append(Span(boot.time, booted.time if booted else end, "capture kernel boot", "boot"))
    if _first(evs, "capture_kernel_corrupted"):
        t.note = "corrupted: no dump"
    elif _first(evs, "vmcore_init_failed"):
        t.note = "no /proc/vmcore"
    copy = _first(evs, "dump_copy_start")
    if booted is not None and booted.kind == "boot_done" and copy is not None:
        t.spans.append(Span(booted.time, copy.time, "dump start delay", "delay"))
    if copy is not None:
        done = _first(evs, "dump_copy_done")
        t.spans.append(Span(copy.time, done.time if done else end, "dump copy (/proc/vmcore)", "dump",
                            0, dict(copy.details)))
        prev, n = copy.time, 0
        for e in evs:
            if e.kind == "dump_copy_segment":
                t.spans.append(Span(prev, e.time, f"PT_LOAD {n}", "dump_segment", 1, dict(e.details)))
                prev, n = e.time, n + 1
    return t


def _dma_track(actor: str, evs: list[Event], end: int, classify) -> Track:
    mapped = _first(evs, "dma_buffers_mapped")
    kind = mapped.details.get("device_kind") if mapped else None
    t = Track(actor, "dma", f"{actor} ({kind})" if kind else actor)
    active = _first(evs, "dma_write", "dma_fault", "dma_to_nowhere")
    stopped = _first(evs, "dma_stopped")
    cumulative = 0
    for e in evs:
        if e.kind == "dma_write":
            region = classify(e)
            cumulative += int(e.details.get("bytes", 0))
            cat = "dma_write" if region in HARMLESS_REGIONS else "corruption"
            t.instants.append(Instant(e.time, "dma_write", cat, {**e.details, "region": region,
                                                                  "cumulative_bytes": cumulative}))
        else:
            t.instants.append(_instant(e))
    if active is not None:
        if stopped is not None and stopped.time >= active.time:
            t.spans.append(Span(active.time, stopped.time,
                                f"DMA active (stopped: {stopped.details.get('reason', '?')})", "dma_active"))
        else:
            t.spans.append(Span(active.time, end, "DMA active (never stopped)", "dma_active"))
            t.note = "never stopped"
    return t


def region_classifier(events: list[Event]):
    """`f(dma_write event) -> region name`: the event's own `region` when the
    trace has it, else from what the trace says about the layout (segments
    hashed or relocated, the backup, crash notes, the reservation)."""
    regions: list[tuple[int, int, str]] = []
    reservation = None
    for e in events:
        d = e.details
        try:
            if e.kind == "kexec_load" and "reservation" in d:
                reservation = (int(d["reservation"][0]), int(d["reservation"][1]))
            elif e.kind == "sha256_segment":
                regions.append((int(d["start"]), int(d["start"]) + int(d["memsz"]), _seg_region(d["segment"])))
            elif e.kind == "relocate_segment":
                regions.append((int(d["dest"]), int(d["dest"]) + 4096 * int(d["pages"]), _seg_region(d["segment"])))
            elif e.kind == "backup_start" and d.get("dest") is not None:
                regions.append((int(d["dest"]), int(d["dest"]) + int(d["bytes"]), "backup"))
            elif e.kind == "crash_save_cpu":
                regions.append((int(d["addr"]), int(d["addr"]) + int(d["bytes"]), "crash_notes"))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    regions.sort()

    def classify(e: Event) -> str:
        if "region" in e.details:
            return str(e.details["region"])
        addr = e.details.get("addr")
        if not isinstance(addr, int):
            return "unknown"
        for lo, hi, name in regions:
            if lo <= addr < hi:
                return name
        if reservation and reservation[0] <= addr < reservation[1]:
            return "reservation_free"
        return "first_kernel_ram"
    return classify


def _seg_region(name: str) -> str:
    return str(name)      # segment names, as CrashRun.region_of reports them


# ------------------------------------------------------------------ Perfetto
_GROUP_PID = {"cpu": 1, "path": 2, "dma": 3, "other": 4}
_GROUP_NAME = {"cpu": "CPUs", "path": "kexec / purgatory / capture kernel", "dma": "DMA engines",
               "other": "other actors"}


def _us(ns: int) -> float | int:
    """ns -> microseconds; exact integers stay integers (stable, short JSON)."""
    return ns // 1000 if ns % 1000 == 0 else ns / 1000


def to_perfetto(events: list[Event]) -> dict[str, Any]:
    """Chrome/Perfetto Trace Event Format (JSON object form).

    One process per group (CPUs, capture path, DMA engines), one thread (tid)
    per track; "X" complete events for spans, "i" instant events (thread
    scope), a "C" counter of bytes written per DMA engine, "M" metadata for
    the names and order. ts/dur are microseconds since the panic (fractional
    for ns precision); pre-panic events are clamped to ts 0 (args.time_ns
    keeps their real time). Output is deterministic."""
    tl = build_timeline(events)
    origin = tl.panic if tl.panic is not None else 0
    meta: list[dict[str, Any]] = []
    body: list[dict[str, Any]] = []
    clamped = 0
    used_groups = sorted({t.group for t in tl.tracks}, key=_GROUP_PID.get)
    for g in used_groups:
        pid = _GROUP_PID[g]
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": _GROUP_NAME[g]}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})

    def ts_of(ns: int) -> float | int:
        nonlocal clamped
        rel = ns - origin
        if rel < 0:
            clamped += 1
            return 0
        return _us(rel)

    for tid, track in enumerate(tl.tracks, start=1):
        pid = _GROUP_PID[track.group]
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": track.label}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        for s in track.spans:
            lo, hi = max(s.start, origin), max(s.end, origin)
            body.append({"ph": "X", "name": s.name, "cat": s.cat, "pid": pid, "tid": tid,
                         "ts": _us(lo - origin), "dur": _us(hi - lo),
                         "args": {"start_ns": s.start, "end_ns": s.end, **_jsonable(s.args)}})
        for i in track.instants:
            body.append({"ph": "i", "s": "t", "name": i.name, "cat": i.cat, "pid": pid, "tid": tid,
                         "ts": ts_of(i.time), "args": {"time_ns": i.time, **_jsonable(i.args)}})
            if i.name == "dma_write":
                body.append({"ph": "C", "name": f"{track.name} bytes written", "pid": pid, "tid": tid,
                             "ts": ts_of(i.time), "args": {"bytes": i.args["cumulative_bytes"]}})
    order = {"X": 0, "C": 1, "i": 2}
    body.sort(key=lambda e: (e["ts"], e["pid"], e["tid"], order[e["ph"]], -e.get("dur", 0), e["name"],
                             json.dumps(e["args"], sort_keys=True)))
    return {
        "traceEvents": meta + body,
        "displayTimeUnit": "ns",
        "otherData": {"generator": "kdumpsim timeline", "time_origin": "panic (ts 0, microseconds)",
                      "events_clamped_to_panic": clamped, "trace_start_ns": tl.start, "trace_end_ns": tl.end},
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def perfetto_json(events: list[Event]) -> str:
    return json.dumps(to_perfetto(events), sort_keys=True, separators=(",", ":")) + "\n"


# ------------------------------------------------------------------ reading
MAX_TRACE_BYTES = 256 << 20          # a trace of a big run is tens of MiB
MAX_TRACE_EVENTS = 2_000_000
NUMERIC_FIELDS = ("bytes", "addr", "cumulative_bytes", "start", "memsz", "dest", "pages")


def _read_text(path: str | Path) -> str:
    """The file's text: a regular file of at most MAX_TRACE_BYTES (never a FIFO or /dev/zero)."""
    import os
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not block the open
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise TraceError(f"{path}: is a directory, not a trace file")
    with open(fd, "rb", closefd=True) as fh:
        if not stat.S_ISREG(st.st_mode):
            raise TraceError(f"{path}: not a regular file (a FIFO, device or socket); save the trace to a file")
        if st.st_size > MAX_TRACE_BYTES:
            raise TraceError(f"{path}: {st.st_size} bytes; a trace may have at most {MAX_TRACE_BYTES >> 20} MiB")
        try:
            data = fh.read(MAX_TRACE_BYTES + 1)
        except OSError as e:
            raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"{path}: a trace may have at most {MAX_TRACE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_trace(path: str | Path) -> list[Event]:
    """Load a `kdumpsim run --trace` JSONL file; bad input raises TraceError."""
    text = _read_text(path)
    events = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}: line {n}: not JSON ({e.msg}); expected a trace from "
                             "`kdumpsim run MODEL --trace OUT.jsonl`") from None
        except ValueError as e:      # an integer of more than 4300 digits
            raise TraceError(f"{path}: line {n}: {str(e).split(';')[0]}") from None
        except RecursionError:
            raise TraceError(f"{path}: line {n}: JSON nested too deeply for a trace event") from None
        if not isinstance(d, dict):
            raise TraceError(f"{path}: line {n}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("time_ns", "actor", "kind") if k not in d]
        if missing:
            raise TraceError(f"{path}: line {n}: not a trace event (missing {', '.join(missing)})")
        t = d.pop("time_ns")
        if not isinstance(t, int) or isinstance(t, bool) or not -(1 << 63) <= t < 1 << 63:
            raise TraceError(f"{path}: line {n}: time_ns must be an integer (64-bit), got {str(t)[:40]}")
        d.pop("time", None)
        for key, value in d.items():
            if key in NUMERIC_FIELDS and (not isinstance(value, int) or isinstance(value, bool)
                                          or not -(1 << 64) < value < 1 << 64):
                raise TraceError(f"{path}: line {n}: {key} must be an integer, got {str(value)[:40]}")
            if isinstance(value, float) and not math.isfinite(value):
                raise TraceError(f"{path}: line {n}: {key} must be a finite number, got {value}")
        events.append(Event(t, str(d.pop("actor")), str(d.pop("kind")), d))
        if len(events) > MAX_TRACE_EVENTS:
            raise TraceError(f"{path}: more than {MAX_TRACE_EVENTS} events")
    if not events:
        raise TraceError(f"{path}: the trace has no events")
    return events


# ------------------------------------------------------------------ Gantt
CATEGORY_STYLE: dict[str, tuple[str, str]] = {   # cat -> (colour, legend label)
    "running": ("#9ccf8a", "running"),
    "never_halted": ("#e8a33d", "running, never answered the NMI"),
    "nmi_handler": ("#d9534f", "NMI handler"),
    "halted": ("#c9c9c9", "halted"),
    "panic": ("#7b1f1f", "panic + NMI shootdown wait"),
    "shutdown": ("#b0413e", "crash shutdown (APIC off, save regs)"),
    "kexeced": ("#efe3f5", "runs purgatory / capture kernel"),
    "purgatory": ("#dfe7f3", "purgatory"),
    "sha256": ("#3b6fb6", "sha256 of a segment"),
    "backup": ("#8e5ea2", "backup copy"),
    "relocate": ("#2a9d8f", "relocate segment (2004)"),
    "hang": ("#000000", "hang in purgatory"),
    "boot": ("#f2c14e", "capture kernel boot"),
    "delay": ("#f7e6b0", "dump start delay"),
    "dump": ("#5fa8a0", "dump copy"),
    "dump_segment": ("#5fa8a0", "dump copy"),
    "dma_active": ("#f4c7c3", "DMA active"),
}


def _fmt_time(sec: float) -> str:
    if sec == 0:
        return "0"
    a = abs(sec)
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if a >= scale * 0.999:
            v = sec / scale
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 1e-9 else f"{v:.3g} {unit}"
    return f"{sec:.3g} s"


def fmt_ns(ns: int | float) -> str:
    """A signed human duration: 12300 -> '12.3 us'."""
    a = abs(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if a >= scale:
            return f"{ns / scale:.6g} {unit}"
    return f"{ns:g} ns"


def _bar_text(s: Span) -> str:
    return {"sha256": s.name.removeprefix("sha256 "), "relocate": s.name.removeprefix("relocate "),
            "backup": "backup", "boot": "boot", "delay": "", "dump": "", "dump_segment": s.name,
            "dma_active": "", "hang": "hang"}.get(s.cat, s.name)


def _mid(x0: float, x1: float, linthresh: float) -> float:
    """The visual middle of [x0, x1] on a symlog axis (geometric above linthresh)."""
    if x0 >= linthresh:
        return math.sqrt(x0 * x1)
    return (x0 + x1) / 2 if x1 <= linthresh else math.sqrt(max(x0, linthresh) * x1)


def plot_gantt(events: list[Event], path: str | Path, title: str | None = None) -> Path:
    """Write a Gantt chart PNG of the trace (see `gantt_figure`); returns the path."""
    fig = gantt_figure(events, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from kdumpsim.atomic import atomic_write
    with atomic_write(out, "wb") as fh:
        fig.savefig(fh, format="png")
    return out


def gantt_figure(events: list[Event], title: str | None = None):
    """A matplotlib Figure (no pyplot, no global backend change, so notebooks
    can display it): one row per CPU (panic CPU first, compact when there are
    many), purgatory, the capture kernel and each DMA engine, on a symlog time
    axis starting at the panic."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    tl = build_timeline(events)
    origin = tl.panic if tl.panic is not None else 0
    rows = [t for t in tl.tracks if t.group in ("cpu", "dma") or t.name in ("purgatory", "capture")]
    rows.sort(key=lambda t: ({"cpu": 0, "path": 1, "dma": 2}[t.group],
                             0 if t.name == tl.panic_cpu else 1, t.name == "capture"))
    ncpu = sum(t.group == "cpu" for t in rows)
    # Row heights in inches (the y data unit is the inch): CPU rows shrink when
    # there are many of them, the other rows keep a readable height.
    cpu_h = 0.24 if ncpu <= 8 else (0.17 if ncpu <= 48 else max(0.045, 8.0 / ncpu))
    other_h = 0.26
    heights = [other_h if t.group != "cpu" else (max(cpu_h, 0.2) if t.name == tl.panic_cpu else cpu_h)
               for t in rows]
    centers, y = [], sum(heights)
    for h in heights:
        centers.append(y - h / 2)
        y -= h
    plot_h = sum(heights)
    px_per_pt = 110 / 72
    fig_h = plot_h + 2.0          # final margins are set once the legend and labels are known
    fig = Figure(figsize=(13, fig_h), dpi=110)
    ax = fig.add_axes((0.11, 1.0 / fig_h, 0.875, plot_h / fig_h))
    linthresh = 1e-6
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.6)
    end_s = max((tl.end - origin) / 1e9, 1e-3)
    right = end_s * 1.7
    ax.set_xlim(-0.6e-6, right)
    ax.set_ylim(0, plot_h)
    row_pt = cpu_h * 72
    cpu_label = 8 if ncpu <= 16 else max(4.5, min(7.0, row_pt * 0.85))
    bar_text = 6.5

    def sec(ns: int) -> float:
        return (ns - origin) / 1e9

    def width_px(x0: float, x1: float) -> float:
        return ax.transData.transform((x1, 0))[0] - ax.transData.transform((x0, 0))[0]

    def text_fits(text: str, x0: float, x1: float, size: float) -> bool:
        return width_px(x0, x1) > len(text) * size * 0.58 * px_per_pt + 6

    used: dict[str, str] = {}
    markers_used: set[str] = set()
    shade = {"sha256": ("#3b6fb6", "#6f9be0", "#254f8f"), "relocate": ("#2a9d8f", "#4fbfb0", "#1d7268"),
             "dump_segment": ("#5fa8a0", "#7fc4bc", "#468a83")}
    for track, yc, rh in zip(rows, centers, heights):
        child_n = 0
        gap = min(0.04, rh * 0.18)
        for s in track.spans:
            x0, x1 = sec(max(s.start, origin)), sec(max(s.end, origin))
            color, label = CATEGORY_STYLE.get(s.cat, ("#999999", s.cat))
            used.setdefault(label, color)
            if s.cat in shade:
                color = shade[s.cat][child_n % 3]
                child_n += 1
            h = rh - gap if s.cat == "purgatory" else rh - 2 * gap
            ax.broken_barh([(x0, max(x1 - x0, 0))], (yc - h / 2, h), facecolors=color,
                           edgecolors="white" if s.depth else "none", linewidth=0.5 if s.depth else 0,
                           zorder=2 + s.depth)
            if s.cat in ("hang", "never_halted"):
                ax.annotate("", xy=(end_s * 1.35, yc), xytext=(max(x1, x0), yc),
                            arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0,
                                            mutation_scale=min(10, rh * 60)), zorder=4)
            text = _bar_text(s)
            if text and track.group != "cpu" and s.cat != "purgatory" and text_fits(text, x0, x1, bar_text):
                dark = s.cat in ("sha256", "relocate", "backup", "hang", "dump_segment", "dump")
                ax.text(_mid(x0, x1, linthresh), yc, text, ha="center", va="center", fontsize=bar_text,
                        color="white" if dark else "#222222", zorder=5, clip_on=True)
        writes = [i for i in track.instants if i.name == "dma_write"]
        ok = [sec(i.time) for i in writes if i.cat == "dma_write"]
        bad = [sec(i.time) for i in writes if i.cat == "corruption"]
        if ok:
            ax.vlines(ok, yc - rh * 0.36, yc + rh * 0.36, colors="#7a3b36", linewidth=0.35, alpha=0.6, zorder=3)
            used.setdefault("DMA write (first-kernel RAM or free reservation)", "#7a3b36")
        if bad:
            ax.plot(bad, [yc] * len(bad), linestyle="none", marker="x", color="#d00000", markersize=4,
                    markeredgewidth=1.0, zorder=6)
            markers_used.add("dma_hit")
            regions = sorted({str(i.args.get("region")) for i in writes if i.cat == "corruption"})
            ax.annotate("DMA into " + ", ".join(regions), (bad[0], yc), xytext=(-5, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=bar_text,
                        color="#a00000", zorder=7)
        for i in track.instants:
            x = sec(max(i.time, origin))
            if i.name in ("purgatory_mismatch", "capture_kernel_corrupted", "vmcore_init_failed"):
                ax.plot([x], [yc], marker="*", color="#d00000", markersize=11,
                        markeredgecolor="black", markeredgewidth=0.5, zorder=7)
                ax.annotate(i.name.replace("_", " "), (x, yc), xytext=(-8, 0), textcoords="offset points",
                            ha="right", va="center", fontsize=7, color="#a00000", zorder=7,
                            bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
                markers_used.add("alarm")
            elif i.name == "nmi_timeout":
                ax.plot([x], [yc], marker="v", color="#d00000", markersize=6, zorder=7)
                markers_used.add("timeout")
            elif i.name == "dma_stopped":
                ax.plot([x], [yc], marker="|", color="black", markersize=min(8, rh * 30), zorder=7)
                markers_used.add("stopped")
        if track.note and track.group == "cpu":       # inside the never-ending bar, where others halted
            ax.text(2e-5, yc, f"never answered the NMI ({track.note})", ha="left", va="center",
                    fontsize=min(cpu_label, 7), color="#5a2a00", zorder=8, clip_on=True)
        elif track.note and track.group == "dma":
            ax.annotate(track.note, (sec(tl.end), yc), xytext=(-4, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=bar_text, color="#5a2a00", zorder=8)

    # The panic and the phase boundaries, labels staggered so close ones stay readable.
    ax.axvline(0, color="#d00000", lw=1.2, zorder=8)
    marks = [(0.0, "panic", "#d00000")]
    for key, label in (("nmi_shootdown_done", "shootdown done"), ("purgatory_start", "purgatory"),
                       ("boot_start", "capture boot"), ("dump_copy_start", "dump copy"),
                       ("dump_copy_done", "dump done"), ("purgatory_mismatch", "hang"),
                       ("capture_kernel_corrupted", "corrupted")):
        if key in tl.phases:
            x = sec(tl.phases[key])
            ax.axvline(x, color="#555555", lw=0.6, ls=(0, (3, 3)), zorder=1)
            marks.append((x, f"{label} {_fmt_time(x)}", "#333333"))
    marks.sort(key=lambda m: m[0])
    level_right: list[float] = []
    for x, text, color in marks:
        px = ax.transData.transform((x, 0))[0]
        w = len(text) * 6.5 * 0.58 * px_per_pt
        lo = px if x == 0 else px - w / 2
        level = next((k for k, r in enumerate(level_right) if lo > r + 4), len(level_right))
        if level == len(level_right):
            level_right.append(0.0)
        level_right[level] = lo + w
        ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2 + 9 * level),
                    textcoords="offset points", fontsize=6.5, color=color,
                    ha="left" if x == 0 else "center", va="bottom")

    # Row labels: every CPU when they fit, else every k-th plus the notable ones.
    stride = max(1, math.ceil(5.0 / row_pt)) if ncpu > 48 else 1
    ticks, labels, styles = [], [], []
    cpu_seen = 0
    for t, yc in zip(rows, centers):
        notable = t.name == tl.panic_cpu or bool(t.note) or t.group != "cpu"
        if t.group == "cpu":
            cpu_seen += 1
        if notable or (cpu_seen - 1) % stride == 0:
            ticks.append(yc)
            labels.append(t.label)
            styles.append(t)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    for lbl, t in zip(ax.get_yticklabels(), styles):
        lbl.set_fontsize(cpu_label if t.group == "cpu" and t.name != tl.panic_cpu else max(cpu_label, 7.5))
        if t.name == tl.panic_cpu:
            lbl.set_color("#a00000")
            lbl.set_fontweight("bold")
        elif t.group == "path":
            lbl.set_fontweight("bold")
        elif t.note and t.group == "cpu":
            lbl.set_color("#b05a00")
    ax.tick_params(axis="y", length=0, pad=3)
    bottom_of = {id(t): yc - h / 2 for t, yc, h in zip(rows, centers, heights)}
    for a, b in zip(rows, rows[1:]):
        if a.group != b.group:
            ax.axhline(bottom_of[id(a)], color="#888888", lw=0.6, zorder=1)
    major = [0.0] + [10.0 ** k for k in range(-6, 4) if 10.0 ** k <= right]
    ax.xaxis.set_major_locator(FixedLocator(major))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_time(v)))
    minor = [m * 10.0 ** k for k in range(-6, 4) for m in range(2, 10) if m * 10.0 ** k <= right]
    ax.xaxis.set_minor_locator(FixedLocator(minor))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", which="major", color="#dddddd", lw=0.5, zorder=0)
    ax.set_xlabel("time since the panic (symlog axis: linear below 1 µs, logarithmic above)", fontsize=8.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    handles = [Patch(facecolor=c, label=lbl) for lbl, c in used.items()]
    if "dma_hit" in markers_used:
        handles.append(Line2D([], [], ls="none", marker="x", color="#d00000",
                              label="DMA write into a segment / backup / crash notes"))
    if "alarm" in markers_used:
        handles.append(Line2D([], [], ls="none", marker="*", color="#d00000", markeredgecolor="black",
                              markersize=9, label="corruption detected / capture path failed"))
    if "timeout" in markers_used:
        handles.append(Line2D([], [], ls="none", marker="v", color="#d00000", label="NMI wait timed out"))
    if "stopped" in markers_used:
        handles.append(Line2D([], [], ls="none", marker="|", color="black", markersize=8, label="DMA stopped"))
    ncol = 4
    legend_rows = math.ceil(len(handles) / ncol)
    top_in = 0.45 + 0.125 * len(level_right)       # title + staggered phase labels
    bottom_in = 0.62 + 0.16 * legend_rows           # tick labels, axis label, legend
    fig_h = plot_h + top_in + bottom_in
    fig.set_size_inches(13, fig_h)
    ax.set_position((0.11, bottom_in / fig_h, 0.875, plot_h / fig_h))
    fig.legend(handles=handles, loc="lower left", ncol=ncol, fontsize=7, frameon=False,
               bbox_to_anchor=(0.11, 0.04 / fig_h), handlelength=1.6, columnspacing=1.5)
    fig.suptitle(title if title is not None else "kdump crash path", fontsize=10.5, y=1 - 0.08 / fig_h, va="top")
    return fig
