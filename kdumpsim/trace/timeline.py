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
- capture kernel: boot (capture_boot_start -> capture_boot_end / capture_kernel_corrupted),
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpsim.errors import TraceError
from kdumpsim.names import PATH_ACTORS, cpu_of
from kdumpsim.trace.events import Event, read_trace  # noqa: F401  (read_trace: the one trace reader)

# Regions a DMA write may hit without touching the capture path itself
# (sim.CrashRun.region_of): anything else is a segment, the backup, notes...
HARMLESS_REGIONS = frozenset({"first_kernel_ram", "reservation_free"})
DMA_KINDS = frozenset({"dma_buffers_mapped", "dma_write", "dma_fault", "dma_to_nowhere", "dma_stopped",
                       "no_driver_in_capture_kernel", "driver_init_without_reset"})
# Events that mean the capture path itself went wrong.
ALARM_KINDS = frozenset({"purgatory_mismatch", "capture_kernel_corrupted", "vmcore_init_failed",
                         "nmi_timeout", "nmi_blocked", "nmi_lost", "capture_kernel_crashed", "capture_oom",
                         "dma_into_capture_memory"})


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


def _events_by_actor(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.actor, []).append(e)
    return out


def _first(evs: Iterable[Event], *kinds: str) -> Event | None:
    return next((e for e in evs if e.kind in kinds), None)


def build_timeline(events: list[Event]) -> Timeline:
    """Spans and instants per track from a trace (list of Events)."""
    events = [e for e in events if e.kind != "run_info"]     # what run wrote the trace: not a timeline event
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

    cpus = sorted((a for a in by_actor if cpu_of(a) is not None), key=cpu_of)
    cpu_set = set(cpus)     # membership tests below: a list made 14000 CPUs quadratic
    for actor in cpus:
        tracks.append(_cpu_track(actor, by_actor[actor], t0, end, panic_ev))
    for actor in PATH_ACTORS:
        if actor == "purgatory" and actor in by_actor:
            tracks.append(_purgatory_track(by_actor[actor], end))
        elif actor == "capture" and actor in by_actor:
            tracks.append(_capture_track(by_actor[actor], end))
        elif actor in by_actor:
            tracks.append(_instant_track(actor, "path", by_actor[actor]))
    devices = [a for a in by_actor if a not in cpu_set and a not in PATH_ACTORS
               and any(e.kind in DMA_KINDS for e in by_actor[a])]
    for actor in devices:       # in order of first appearance (= model order)
        tracks.append(_dma_track(actor, by_actor[actor], end, classify))
    device_set = set(devices)
    for actor in by_actor:
        if actor not in cpu_set and actor not in PATH_ACTORS and actor not in device_set:
            tracks.append(_instant_track(actor, "other", by_actor[actor]))
    phases = {e.kind: e.time for e in events if e.kind in (
        "panic", "nmi_shootdown_done", "machine_kexec", "purgatory_start", "purgatory_end", "capture_boot_start",
        "vmcore_init", "capture_boot_end", "dump_start", "dump_end", "purgatory_mismatch",
        "capture_kernel_corrupted", "capture_kernel_crashed", "capture_oom")}
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
    finish = _first(evs, "purgatory_end", "purgatory_mismatch")
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
    boot = _first(evs, "capture_boot_start")
    if boot is None:
        return t
    booted = _first(evs, "capture_boot_end", "capture_kernel_corrupted", "capture_kernel_crashed", "capture_oom")
    t.spans.append(Span(boot.time, booted.time if booted else end, "capture kernel boot", "boot"))
    if _first(evs, "capture_kernel_corrupted"):
        t.note = "corrupted: no dump"
    elif _first(evs, "capture_kernel_crashed"):
        t.note = "crashed (DMA into its memory): no dump"
    elif _first(evs, "capture_oom"):
        t.note = "out of memory: no dump"
    elif _first(evs, "vmcore_init_failed"):
        t.note = "no /proc/vmcore"
    copy = _first(evs, "dump_start")
    if booted is not None and booted.kind == "capture_boot_end" and copy is not None:
        t.spans.append(Span(booted.time, copy.time, "dump start delay", "delay"))
    if copy is not None:
        done = _first(evs, "dump_end")
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


# ------------------------------------------------------------------ Gantt
CATEGORY_STYLE: dict[str, tuple[str, str]] = {   # cat -> (colour, legend label)
    "running": ("#a6d9a0", "running"),
    "never_halted": ("#E69F00", "running, never answered the NMI"),
    "nmi_handler": ("#D55E00", "NMI handler (a group: first NMI to last halt)"),
    "halted": ("#d0d0d0", "halted"),
    "panic": ("#6b1d1d", "panic + NMI shootdown wait"),
    "shutdown": ("#b0413e", "crash shutdown (APIC off, save regs)"),
    "kexeced": ("#efe3f5", "runs purgatory / capture kernel"),
    "purgatory": ("#dfe7f3", "purgatory"),
    "sha256": ("#0072B2", "sha256 of a segment"),
    "backup": ("#8e5ea2", "backup copy"),
    "relocate": ("#2a9d8f", "relocate segment (2004)"),
    "hang": ("#000000", "hang in purgatory"),
    "boot": ("#F0E442", "capture kernel boot"),
    "delay": ("#f7efc0", "dump start delay"),
    "dump": ("#009E73", "dump copy"),
    "dump_segment": ("#009E73", "dump copy"),
    "dma_active": ("#c9d7e8", "DMA active"),
    "dma_never_stopped": ("#fbe3b5", "DMA active, never stopped"),
}
# Phases of the capture path, drawn as labelled bands above the rows.
PHASE_BANDS = (("panic", "nmi_shootdown_done", "NMI round", "#6b1d1d"),
               ("nmi_shootdown_done", "machine_kexec", "shutdown", "#b0413e"),
               ("purgatory_start", "purgatory_end", "purgatory", "#0072B2"),
               ("capture_boot_start", "capture_boot_end", "capture kernel boot", "#d8c600"),
               ("dump_start", "dump_end", "dump copy", "#009E73"))
# Instants on the phase row: key -> (label, marker, colour).
PHASE_MARKS = {"iommu_init": ("IOMMU init", "D", "#0072B2"), "driver_probe": ("driver probe", "^", "#009E73"),
               "vmcore_init": ("vmcore init", "o", "#555555"),
               "purgatory_mismatch": ("sha256 mismatch", "*", "#CC79A7"),
               "capture_kernel_corrupted": ("capture kernel corrupted", "*", "#CC79A7"),
               "capture_kernel_crashed": ("capture kernel crashed", "*", "#0072B2"),
               "capture_oom": ("capture kernel out of memory", "*", "#000000")}
MAX_DMA_ROWS = 16      # DMA engines drawn one to a row; the rest share one row (_dma_rows)
GANTT_WIDTH = 7.0      # inches: a page's width, at GANTT_DPI
GANTT_DPI = 150
LOG_FROM = 1e-6        # the time axis is linear below 1 us ...
LINEAR_FROM = 1.0      # ... logarithmic to 1 s, linear after (so the seconds-long dump copy is not a sliver)


def _fmt_time(sec: float) -> str:
    if sec == 0:
        return "0"
    a = abs(sec)
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if a >= scale * 0.999:
            v = sec / scale
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 1e-9 else f"{v:.3g} {unit}"
    return f"{sec:.3g} s"


def _span_text(lo: float, hi: float) -> str:
    """'1.2-1.9 µs' (one unit for both ends)."""
    if hi - lo < 1e-12:
        return _fmt_time(lo)
    a = max(abs(lo), abs(hi))
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if a >= scale * 0.999:
            return f"{lo / scale:.3g}–{hi / scale:.3g} {unit}"
    return f"{lo:.3g}–{hi:.3g} s"


def cpu_ranges(ids: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}–{ids[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class GanttRow:
    """One row of the chart: a track, or CPUs that did the same thing."""
    label: str
    group: str                      # cpu | path | dma
    spans: list[Span]
    instants: list[Instant] = field(default_factory=list)
    note: str = ""                  # text drawn in the row (what the CPUs of a group did)
    cpus: list[int] = field(default_factory=list)
    panic: bool = False


def _time_scale(end_s: float):
    """(forward, inverse, linear_from) of the time axis: linear to 1 µs, log to 1 s, linear after,
    the linear part as wide as half the log part (pure log when the trace ends within ~2 s)."""
    import numpy as np
    pivot = LINEAR_FROM if end_s > 2 * LINEAR_FROM else math.inf
    log_units = 1 + math.log10(min(pivot, end_s * 1.15) / LOG_FROM)
    per_s = 0.5 * log_units / (end_s * 1.15 - pivot) if pivot < math.inf else 0.0
    top = 1 + math.log10(pivot / LOG_FROM) if pivot < math.inf else math.inf

    def forward(x):
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = 1 + np.log10(np.maximum(x, LOG_FROM) / LOG_FROM)
        out = np.where(x <= LOG_FROM, x / LOG_FROM, lg)
        if pivot == math.inf:
            return out
        return np.where(x > pivot, top + (x - pivot) * per_s, out)

    def inverse(y):
        y = np.asarray(y, dtype=float)
        out = np.where(y <= 1, y * LOG_FROM, LOG_FROM * 10.0 ** (np.minimum(y, 40) - 1))
        if per_s:
            out = np.where(y > top, pivot + (y - top) / per_s, out)
        return out
    return forward, inverse, pivot


def _nice_step(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if span / step <= 5:
            return step
    return 10 ** math.ceil(math.log10(span / 5))


def gantt_rows(tl: Timeline) -> list[GanttRow]:
    """The chart's rows: the panic CPU; the other CPUs collapsed into groups that
    did the same thing (answered the NMI at about the same time, or hung the
    same way); purgatory; the capture kernel; each DMA engine."""
    rows: list[GanttRow] = []
    cpu_tracks = [t for t in tl.tracks if t.group == "cpu"]
    panic = next((t for t in cpu_tracks if t.name == tl.panic_cpu), None)
    if panic is not None:
        rows.append(GanttRow(f"{panic.name} (panic)", "cpu", panic.spans, panic.instants, panic=True,
                             cpus=[cpu_of(panic.name) or 0]))
    halted: list[tuple[int, Track]] = []
    odd: dict[str, list[tuple[int, Track]]] = {}
    for t in cpu_tracks:
        if t is panic:
            continue
        cats = tuple(s.cat for s in t.spans)
        cpu = cpu_of(t.name) or 0
        if cats == ("running", "nmi_handler", "halted"):
            halted.append((cpu, t))
        else:
            odd.setdefault(f"{'/'.join(cats)}|{t.note}", []).append((cpu, t))
    for cluster in _clusters(halted):
        recv = [t.spans[1].start for _, t in cluster]
        stop = [t.spans[2].start for _, t in cluster]
        ids = [c for c, _ in cluster]
        lo, hi = min(recv), max(stop)
        spans = [Span(cluster[0][1].spans[0].start, min(recv), "running", "running"),
                 Span(lo, hi, "NMI handler", "nmi_handler"), Span(hi, tl.end, "halted", "halted")]
        o = tl.panic if tl.panic is not None else 0
        note = (f"{len(ids)} CPUs: " if len(ids) > 1 else "") + (
            f"NMI at {_span_text((min(recv) - o) / 1e9, (max(recv) - o) / 1e9)}, halted by "
            f"{_fmt_time((hi - o) / 1e9)}")
        rows.append(GanttRow(_cpus_label(ids), "cpu", spans, note=note, cpus=ids))
    for members in odd.values():
        ids = [c for c, _ in members]
        first = members[0][1]
        note = first.note
        text = f"never answered the NMI ({note})" if first.spans and first.spans[0].cat == "never_halted" \
            else (note or "")
        rows.append(GanttRow(_cpus_label(ids), "cpu", first.spans,
                             [i for _, t in members for i in t.instants if i.cat == "alarm"], note=text, cpus=ids))
    rows[1 if panic is not None else 0:] = sorted(rows[1 if panic is not None else 0:], key=lambda r: min(r.cpus))
    for name in ("purgatory", "capture"):
        t = tl.track(name)
        if t is not None:
            rows.append(GanttRow(t.label, "path", t.spans, t.instants, note=t.note))
    rows += _dma_rows([t for t in tl.tracks if t.group == "dma"])
    return rows


def _dma_rows(tracks: list[Track]) -> list[GanttRow]:
    """A row per DMA engine, up to MAX_DMA_ROWS: past that (a chart's cost grows
    with its rows: 3000 engines took 90 s) the engines that wrote into the capture
    path or never stopped keep their rows, first come first, and the rest share
    one row that says how many it holds (the Perfetto timeline keeps them all)."""
    if len(tracks) <= MAX_DMA_ROWS:
        return [GanttRow(t.label, "dma", t.spans, t.instants, note=t.note) for t in tracks]
    def harmful(t: Track) -> bool:
        return bool(t.note) or any(i.cat == "corruption" for i in t.instants)
    ranked = sorted(range(len(tracks)), key=lambda k: (not harmful(tracks[k]), k))
    keep = sorted(ranked[:MAX_DMA_ROWS - 1])
    rest = [tracks[k] for k in sorted(ranked[MAX_DMA_ROWS - 1:])]
    rows = [GanttRow(tracks[k].label, "dma", tracks[k].spans, tracks[k].instants, note=tracks[k].note) for k in keep]
    spans = [s for t in rest for s in t.spans]
    never = sum(1 for t in rest if t.note)
    name = f"DMA active ({never} never stopped)" if never else "DMA active (all stopped)"
    merged = [Span(min(s.start for s in spans), max(s.end for s in spans), name, "dma_active")] if spans else []
    instants = sorted((i for t in rest for i in t.instants), key=lambda i: i.time)
    rows.append(GanttRow(f"{len(rest)} more DMA engines", "dma", merged, instants,
                         note=f"{len(rest)} engines in one row ({never} never stopped); Perfetto has each"))
    return rows


def _cpus_label(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"cpu{ids[0]}"
    text = cpu_ranges(ids)
    if len(text) <= 12:
        return f"CPUs {text} (×{len(ids)})"
    gaps = sorted(set(range(min(ids), max(ids) + 1)) - set(ids))
    if len(gaps) <= 3:
        return f"CPUs {min(ids)}–{max(ids)} but {', '.join(map(str, gaps))}"
    return f"{len(ids)} CPUs in {min(ids)}–{max(ids)}"


def _clusters(cpus: list[tuple[int, Track]], most: int = 4) -> list[list[tuple[int, Track]]]:
    """CPUs that halted, grouped by when the NMI reached them (a gap of more than
    a quarter of a microsecond and 10% starts a new group); one group if that makes too many."""
    if not cpus:
        return []
    order = sorted(cpus, key=lambda ct: ct[1].spans[1].start)
    groups = [[order[0]]]
    for prev, cur in zip(order, order[1:]):
        a, b = prev[1].spans[1].start, cur[1].spans[1].start
        if b - a > max(250, 0.1 * abs(a)):
            groups.append([cur])
        else:
            groups[-1].append(cur)
    if len(groups) > most:
        groups = [order]
    return [sorted(g, key=lambda ct: ct[0]) for g in groups]


def run_info(events: list[Event]) -> dict[str, Any]:
    """The model and seed a trace came from (a `run_info` event, written by `kdumpsim run --trace`)."""
    e = next((e for e in events if e.kind == "run_info"), None)
    return dict(e.details) if e is not None else {}


def _phase_times(tl: Timeline, events: list[Event]) -> dict[str, int]:
    out = dict(tl.phases)
    for e in events:
        if e.kind == "iommu_init":
            out.setdefault("iommu_init", e.time)
        elif e.kind in ("no_driver_in_capture_kernel", "driver_init_without_reset") or (
                e.kind == "dma_stopped" and e.details.get("reason") in ("driver_init", "reset_devices")):
            out.setdefault("driver_probe", e.time)
    return out


def plot_gantt(events: list[Event], path: str | Path, title: str | None = None) -> Path:
    """Write a Gantt chart PNG of the trace (see `gantt_figure`); returns the path."""
    fig = gantt_figure(events, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from kdumpsim.atomic import atomic_write
    with atomic_write(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=GANTT_DPI)
    return out


def gantt_title(events: list[Event], model: str | None = None, seed: int | None = None) -> str:
    info = run_info(events)
    model = model or info.get("model")
    seed = seed if seed is not None else info.get("seed")
    ncpu = len({e.actor for e in events if cpu_of(e.actor) is not None})
    what = f"{model}, seed {seed}" if model and seed is not None else (model or "kdump crash path")
    return f"{what} ({ncpu} CPUs)"


def gantt_figure(events: list[Event], title: str | None = None, *, model: str | None = None,
                 seed: int | None = None):
    """A matplotlib Figure (no pyplot, no global backend change, so notebooks
    can display it), 7 in wide: the phases of the capture path as labelled
    bands on top; the panic CPU; the other CPUs collapsed into rows of CPUs that
    did the same thing ("CPUs 1-31 (x31): NMI at 1-1.9 µs, halted by 6.9 µs");
    purgatory, the capture kernel and each DMA engine. Time runs from the
    panic: linear to 1 µs, logarithmic to 1 s, linear after. The title is
    `title`, else the model and seed (given, or from the trace's run_info event)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    tl = build_timeline(events)
    origin = tl.panic if tl.panic is not None else 0
    rows = gantt_rows(tl)
    phases = _phase_times(tl, events)
    end_s = max((tl.end - origin) / 1e9, 1e-3)
    forward, inverse, pivot = _time_scale(end_s)
    right = end_s * 1.15

    row_h, phase_h = 0.27, 0.34
    plot_h = row_h * len(rows)
    left_in, right_in, top_in = 1.45, 0.12, 0.42 + phase_h
    fig = Figure(figsize=(GANTT_WIDTH, plot_h + top_in + 1.5), dpi=GANTT_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    pax = fig.add_axes((0, 0, 1, 1), sharex=ax)
    w = (GANTT_WIDTH - left_in - right_in) / GANTT_WIDTH      # horizontal layout is final now (labels need it)
    ax.set_position((left_in / GANTT_WIDTH, 0.3, w, 0.5))
    pax.set_position((left_in / GANTT_WIDTH, 0.85, w, 0.1))
    ax.set_xscale("function", functions=(forward, inverse))
    ax.set_xlim(-0.6e-6, right)
    ax.set_ylim(0, plot_h)
    pax.set_ylim(0, 1)

    def sec(ns: int) -> float:
        return (max(ns, origin) - origin) / 1e9

    used: dict[str, str] = {}
    marks: set[str] = set()
    centers = [plot_h - row_h * (k + 0.5) for k in range(len(rows))]
    for row, yc in zip(rows, centers):
        child = 0
        for s in row.spans:
            x0, x1 = sec(s.start), sec(s.end)
            cat = s.cat
            if cat == "dma_active" and "never stopped" in s.name:
                cat = "dma_never_stopped"
            color, label = CATEGORY_STYLE.get(cat, ("#999999", cat))
            used.setdefault(label, color)
            h = row_h * (0.8 if s.depth == 0 else 0.6)
            if s.depth and cat in ("sha256", "relocate", "dump_segment"):
                color = _shade(color, child)
                child += 1
            ax.broken_barh([(x0, max(x1 - x0, 0))], (yc - h / 2, h), facecolors=color,
                           edgecolors="white" if s.depth else "none", linewidth=0.4 if s.depth else 0,
                           hatch="////" if cat == "dma_never_stopped" else None, zorder=2 + s.depth)
            if cat in ("hang", "never_halted", "dma_never_stopped"):
                ax.annotate("", xy=(right, yc), xytext=(x1 * 0.999, yc), zorder=4,
                            arrowprops=dict(arrowstyle="-|>", color="#333333", lw=0.8, mutation_scale=7))
                marks.add("forever")
            text = {"sha256": s.name.removeprefix("sha256 "), "boot": "boot", "dump": "dump copy",
                    "hang": "hang"}.get(cat, "")
            if text and not (row.note and row.group == "path") and _fits(ax, forward, x0, x1, text, 6):
                ax.text(_visual_mid(forward, inverse, x0, x1), yc, text, ha="center", va="center", fontsize=6,
                        color="white" if cat in ("sha256", "hang", "dump") else "#222222", zorder=6, clip_on=True)
        writes = [i for i in row.instants if i.name == "dma_write"]
        ok = [sec(i.time) for i in writes if i.cat == "dma_write"]
        bad = [sec(i.time) for i in writes if i.cat == "corruption"]
        if ok:
            ax.vlines(ok, yc - row_h * 0.3, yc + row_h * 0.3, colors="#2f4b7c", linewidth=0.3, alpha=0.55, zorder=3)
            marks.add("write")
        if bad:
            ax.plot(bad, [yc] * len(bad), ls="none", marker="x", color="#D55E00", ms=3.5, mew=0.9, zorder=6)
            marks.add("hit")
            regions = sorted({str(i.args.get("region")) for i in writes if i.cat == "corruption"})
            ax.annotate("DMA into " + ", ".join(regions), (bad[0], yc + row_h * 0.32), xytext=(0, 1),
                        textcoords="offset points", ha="left", va="bottom", fontsize=5.5, color="#8a3300", zorder=7)
        for i in row.instants:
            x = sec(i.time)
            if i.name == "nmi_timeout":
                ax.plot([x], [yc], marker="v", color="black", ms=5, zorder=7)
                marks.add("timeout")
            elif i.name == "dma_stopped":
                ax.plot([x], [yc], marker="|", color="black", ms=7, mew=1.2, zorder=7)
                marks.add("stopped")
            elif i.cat == "alarm" and i.name in PHASE_MARKS:
                ax.plot([x], [yc], marker="*", color="#CC79A7", ms=10, mec="black", mew=0.5, zorder=8)
                marks.add("alarm")
        if row.note and row.group == "cpu":
            ax.text(2e-5 if row.spans and row.spans[0].cat == "never_halted" else 1e-4, yc, row.note,
                    ha="left", va="center", fontsize=6.3, color="#222222", zorder=8, clip_on=True)
        elif row.note and row.group == "dma":
            ax.text(right, yc, row.note + "  ", ha="right", va="center", fontsize=6, color="#5a2a00", zorder=8)
        elif row.note:          # left of where the row's alarm (star) is, else at the right end
            alarms = [sec(i.time) for i in row.instants if i.cat == "alarm"]
            ax.annotate(row.note, (min(alarms) if alarms else right, yc), xytext=(-9, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=6, color="#5a2a00", zorder=9,
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))

    # Phase bands (top strip) and instants, with lines down through the rows.
    level_end: list[float] = []
    fig_w_px = GANTT_WIDTH * GANTT_DPI
    for a, b, label, color in PHASE_BANDS:
        if a not in phases:
            continue
        x0 = sec(phases[a])
        x1 = sec(phases[b]) if b in phases else (end_s if a != "panic" else x0)
        pax.broken_barh([(x0, max(x1 - x0, 0))], (0.08, 0.4), facecolors=color, alpha=0.85, zorder=2)
        ax.axvline(x0, color="#888888", lw=0.5, ls=(0, (3, 3)), zorder=1)
        text = f"{label} {_fmt_time(x0)}" if label != "NMI round" else f"{label} {_fmt_time(x1)}"
        level_end = _stagger(pax, forward, x0, x1, text, color, level_end, fig_w_px, "band")
    for key, (label, marker, color) in PHASE_MARKS.items():
        if key not in phases:
            continue
        x = sec(phases[key])
        pax.plot([x], [0.28], marker=marker, color=color, ms=7 if marker == "*" else 5, mec="black", mew=0.4,
                 zorder=4, ls="none")
        ax.axvline(x, color=color, lw=0.6, ls=(0, (1, 2)), zorder=1)
        level_end = _stagger(pax, forward, x, x, f"{label} {_fmt_time(x)}", color, level_end, fig_w_px, "mark")
    ax.axvline(0, color="#6b1d1d", lw=1.0, zorder=8)
    pax.axis("off")

    # Row labels
    ax.set_yticks(centers)
    ax.set_yticklabels([r.label for r in rows])
    for lbl, r in zip(ax.get_yticklabels(), rows):
        lbl.set_fontsize(7)
        if r.panic:
            lbl.set_color("#8b0000")
            lbl.set_fontweight("bold")
        elif r.group == "path":
            lbl.set_fontweight("bold")
        elif r.group == "cpu" and r.note.startswith("never"):
            lbl.set_color("#9a5a00")
    ax.tick_params(axis="y", length=0, pad=3)
    for k, (a, b) in enumerate(zip(rows, rows[1:])):
        if a.group != b.group:
            ax.axhline(plot_h - row_h * (k + 1), color="#888888", lw=0.5, zorder=1)

    # Time axis: decades to the pivot, round seconds after it.
    major = [0.0] + [10.0 ** k for k in range(-6, 1) if 10.0 ** k <= min(pivot, right)]
    if pivot < math.inf:
        step = _nice_step(right - pivot)
        major += [step * n for n in range(1, 200) if pivot + 0.4 * step < step * n <= right]
    ax.xaxis.set_major_locator(FixedLocator(major))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_time(v)))
    minor = [m * 10.0 ** k for k in range(-6, 0) for m in range(2, 10) if m * 10.0 ** k < min(pivot, right)]
    ax.xaxis.set_minor_locator(FixedLocator(minor))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=6.5)
    for lbl in ax.get_xticklabels():
        lbl.set_rotation(0)
    ax.grid(axis="x", which="major", color="#e2e2e2", lw=0.5, zorder=0)
    if pivot < math.inf:
        ax.axvspan(pivot, right, color="#f6f6f6", zorder=0)
    scale_text = ("linear to 1 µs, logarithmic to 1 s, linear after (shaded)" if pivot < math.inf
                  else "linear to 1 µs, logarithmic after")
    ax.set_xlabel(f"time since the panic ({scale_text})", fontsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    handles: list[Any] = [Patch(facecolor=c, label=lbl, hatch="////" if "never stopped" in lbl else None)
                          for lbl, c in used.items()]
    extra = {"write": Line2D([], [], ls="none", marker="|", color="#2f4b7c", label="DMA write (harmless RAM)"),
             "hit": Line2D([], [], ls="none", marker="x", color="#D55E00", label="DMA write into the capture path"),
             "alarm": Line2D([], [], ls="none", marker="*", color="#CC79A7", mec="black", ms=8,
                             label="corruption detected / capture failed"),
             "timeout": Line2D([], [], ls="none", marker="v", color="black", label="NMI wait timed out"),
             "stopped": Line2D([], [], ls="none", marker="|", color="black", ms=7, label="DMA stopped"),
             "forever": Line2D([], [], color="#333333", marker=">", ms=3, lw=0.8, label="goes on past the chart")}
    handles += [h for k, h in extra.items() if k in marks]
    handles += [Line2D([], [], ls="none", marker=m, color=c, mec="black", mew=0.4, label=label)
                for key, (label, m, c) in PHASE_MARKS.items() if key in phases and m != "*"]
    ncol = 3
    legend_rows = math.ceil(len(handles) / ncol)
    stagger_in = 0.13 * max(0, len(level_end) - 1)
    top_in += stagger_in
    bottom_in = 0.5 + 0.15 * legend_rows
    fig_h = plot_h + top_in + bottom_in
    fig.set_size_inches(GANTT_WIDTH, fig_h)
    ax.set_position((left_in / GANTT_WIDTH, bottom_in / fig_h, w, plot_h / fig_h))
    pax.set_position((left_in / GANTT_WIDTH, (bottom_in + plot_h + 0.02) / fig_h, w, phase_h / fig_h))
    fig.legend(handles=handles, loc="lower left", ncol=ncol, fontsize=6, frameon=False,
               bbox_to_anchor=(0.01, 0.02 / fig_h), handlelength=1.5, columnspacing=1.2)
    fig.suptitle(title if title is not None else gantt_title(events, model, seed), fontsize=9,
                 y=1 - 0.06 / fig_h, va="top")
    return fig


def _shade(color: str, k: int) -> str:
    """Alternate lighter / darker children so neighbouring segments stay apart."""
    from matplotlib.colors import to_rgb
    r, g, b = to_rgb(color)
    f = (1.0, 1.25, 0.8)[k % 3]
    return "#%02x%02x%02x" % tuple(int(max(0, min(1, c * f)) * 255) for c in (r, g, b))


def _fits(ax: Any, forward: Any, x0: float, x1: float, text: str, size: float) -> bool:
    lo, hi = ax.get_xlim()
    span = float(forward(hi) - forward(lo))
    w_in = ax.get_position().width * ax.figure.get_size_inches()[0]
    width_pt = float(forward(x1) - forward(x0)) / span * w_in * 72 if span else 0
    return width_pt > len(text) * size * 0.58 + 4


def _visual_mid(forward: Any, inverse: Any, x0: float, x1: float) -> float:
    return float(inverse((forward(x0) + forward(x1)) / 2))


def _stagger(pax: Any, forward: Any, x0: float, x1: float, text: str, color: str, level_end: list[float],
             fig_w_px: float, kind: str) -> list[float]:
    """A phase label above the band strip, on the first level where it does not overlap."""
    lo, hi = pax.get_xlim()
    span = float(forward(hi) - forward(lo))
    frac = pax.get_position().width
    left_frac = pax.get_position().x0

    def px(x: float) -> float:
        return (left_frac + float(forward(x) - forward(lo)) / span * frac) * fig_w_px

    w = len(text) * 6 * 0.55 * GANTT_DPI / 72
    ha = "left" if kind == "band" else "center"
    start = px(x0) if kind == "band" else px(x0) - w / 2
    if start + w > fig_w_px - 4:             # keep it on the page: end it at the mark instead
        ha, start = "right", px(x0) - w
    level = next((k for k, r in enumerate(level_end) if start > r + 3), len(level_end))
    if level == len(level_end):
        level_end.append(0.0)
    level_end[level] = start + w
    pax.annotate(text, (x0, 0.5), xytext=(0, 2 + 8 * level), textcoords="offset points", fontsize=6,
                 color=color if kind == "mark" else "#222222", ha=ha, va="bottom", annotation_clip=False)
    return level_end
