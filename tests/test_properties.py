"""Timeline invariants over random models (hypothesis).

Models are the shipped ones with random overrides: 1-16 CPUs, the panicking
CPU, unresponsive CPUs (hung / NMI lost), 0-3 DMA devices of random kinds,
placements, start times, durations and drivers, a valid crashkernel= choice,
the 2004 or 2005 design, the kernel era, and (x86_64) an IOMMU. Each example
is simulated once (cached per model + seed) and checked against:

- simulated time never goes backwards in the trace;
- the outcome is one of sim.OUTCOMES and agrees with the trace;
- the phases come in order;
- no CPU has an event after it halted (the panicking CPU: after machine_kexec);
- purgatory starts only after every answering CPU halted, or after the
  1000 ms NMI timeout (nmi_shootdown_done <= timeout + one poll);
- no DMA write (or fault) from a device after its dma_stopped;
- the dump copy never reads a file byte twice: chunks of /proc/vmcore do not
  overlap in file offsets and read times are monotonic in the offset. (Physical
  sources may repeat on purpose: the modern kernel-text PT_LOAD maps RAM that a
  System RAM PT_LOAD maps too, and the 2004 layout reads the backup region
  both as the first 16 MB and as itself.)
- the Perfetto timeline of every such trace is well formed.

A property that fails because of a model bug is kept here as
xfail(strict=True) with the minimal example in the reason.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from kdumpsim.config.model import read_yaml, validate_model
from kdumpsim.crash.run import CrashRun
from kdumpsim.errors import LayoutError
from kdumpsim.measure import simulate
from kdumpsim.names import OUTCOMES
from kdumpsim.trace.timeline import to_perfetto

ROOT = Path(__file__).resolve().parents[1]
BASES = {p.stem: read_yaml(p) for p in sorted((ROOT / "models").glob("*.yaml"))}
# A smaller modern machine (2 GiB over two ranges) keeps examples fast.
SMALL_MODERN_IOMEM = ["00001000-0009fbff : System RAM", "00100000-7fffffff : System RAM"]
# crashkernel= choices that fit each (arch, era, design).
CRASHKERNEL = {
    ("i386", "2005", "2005"): ["32M@16M", "64M@16M", "48M@32M"],   # 2.6.13 takes only size@base
    ("i386", "2005", "2004"): ["32M@16M", "64M@32M", "48M@64M"],
    ("i386", "modern", "2005"): ["64M@16M", "96M@32M", "128M"],
    ("x86_64", "modern", "2005"): ["256M", "128M", "512M@256M", "192M"],
}
PROPS = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DURATIONS = ["0ms", "5us", "200us", "1ms", "20ms", "150ms", "1s", "3s", "6.5s", "9.5s", "12.5s", "20s"]


@st.composite
def devices(draw, buses: list[str], ram_lo: int, ram_hi: int) -> list[dict]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["nic_rx_ring", "virtio_net", "cyclic", "storage"]))
        duration = draw(st.sampled_from([None, "1ms", "50ms", "1s", "20s"]))
        mode = draw(st.sampled_from(["allocator", "range", "stale", "wild"]))
        placement: dict = {"mode": mode}
        if mode in ("range", "stale"):
            lo = draw(st.integers(ram_lo >> 20, (ram_hi >> 20) - 8)) << 20
            placement.update(start=lo, end=min(ram_hi, lo + (draw(st.sampled_from([16, 32, 128])) << 20)))
        d = {"name": f"dev{i}", "kind": kind, "bus": draw(st.sampled_from(buses)),
             "start": draw(st.sampled_from(DURATIONS)), "duration": duration, "placement": placement,
             "capture_driver": draw(st.booleans()), "needs_reset_devices": draw(st.booleans())}
        if kind == "nic_rx_ring":
            d.update(descriptors=draw(st.sampled_from([3, 16, 256])), queues=draw(st.sampled_from([1, 4])),
                     packet_rate=draw(st.sampled_from([1000, 50_000, 1_000_000])))
        elif kind == "virtio_net":
            d.update(queue_size=draw(st.sampled_from([64, 256])), virtio_pci=draw(st.booleans()),
                     packet_rate=draw(st.sampled_from([1000, 50_000, 1_000_000])))
        elif kind == "cyclic":
            d.update(buffer_size=draw(st.sampled_from(["4K", "16K", "64K"])), chunk=4096,
                     period=draw(st.sampled_from(["1ms", "10ms"] if duration else ["10ms", "100ms"])))
        else:
            d.update(commands=draw(st.sampled_from([1, 8, 64])),
                     command_size=draw(st.sampled_from(["4K", "64K", "128K"])), hmb=draw(st.sampled_from([0, "8M"])))
        out.append(d)
    return out


@st.composite
def models(draw) -> dict:
    """Raw model data: a shipped model with random overrides (validated by the caller)."""
    base = draw(st.sampled_from(sorted(BASES)))
    raw = copy.deepcopy(BASES[base])
    arch = raw["arch"]
    if arch == "i386":
        design = draw(st.sampled_from(["2005", "2004"]))
        era = "2005" if design == "2004" else draw(st.sampled_from(["2005", "modern"]))
    else:
        design, era = "2005", "modern"
        raw["memory"] = {"numa_nodes": 1, "iomem": SMALL_MODERN_IOMEM}
        for b in raw["topology"]["buses"]:
            b["numa_node"] = 0
        if draw(st.booleans()):
            raw["topology"]["iommu"] = {"capture_kernel": draw(st.sampled_from(["copy_tables", "copy_failed", "off"]))}
            raw["topology"]["buses"][0]["iommu"] = True
    raw["design"], raw["era"] = design, era
    count = draw(st.integers(1, 16))
    panic = draw(st.integers(0, count - 1))
    others = [c for c in range(count) if c != panic]
    unresponsive = draw(st.dictionaries(st.sampled_from(others) if others else st.nothing(),
                                        st.sampled_from(["hung", "nmi_lost"]), max_size=min(3, len(others))))
    raw["cpus"] = {"count": count, "sockets": draw(st.integers(1, min(2, count))), "panic_cpu": panic,
                   "unresponsive": unresponsive}
    raw.setdefault("kexec", {})["crashkernel"] = draw(st.sampled_from(CRASHKERNEL[(arch, era, design)]))
    if arch == "x86_64":                          # the kernel's loader, or kexec-tools'
        raw["kexec"]["method"] = draw(st.sampled_from(["kexec_file_load", "kexec_load"]))
        if draw(st.booleans()):
            raw.setdefault("kernel", {})["version"] = draw(st.sampled_from(["6.1", "6.6", "4.18"]))
    if draw(st.integers(0, 7)) == 0:
        raw["kexec"]["skip_checks"] = True          # kexec --skip-checks: no sha256 in purgatory
        raw["kexec"]["method"] = "kexec_load"       # (kexec-tools' option: kexec_file_load always checks)
    ram = [line for line in raw["memory"]["iomem"] if line.endswith("System RAM")][-1]
    lo, hi = (int(x, 16) for x in ram.split(" ")[0].split("-"))
    buses = [b["name"] for b in raw["topology"]["buses"]]
    raw["devices"] = draw(devices(buses, max(lo, 1 << 20), hi + 1))
    return raw


@functools.lru_cache(maxsize=64)
def _run(raw_json: str, seed: int) -> CrashRun | None:
    try:
        return simulate(validate_model(json.loads(raw_json), "<hypothesis>"), seed)
    except LayoutError:
        return None     # e.g. 8 MiB of DMA buffers asked for in a range the kernel mostly occupies


def run_of(raw: dict, seed: int) -> CrashRun:
    run = _run(json.dumps(raw, sort_keys=True), seed)
    if run is None:
        reject()        # an impossible layout (a user error the CLI reports), not an example
    return run


seeds = st.integers(0, 2**16)


# ------------------------------------------------------------------ properties
def check_time_never_goes_backwards(run: CrashRun) -> None:
    times = [e.time for e in run.trace]
    bad = next((i for i, (a, b) in enumerate(zip(times, times[1:])) if a > b), None)
    assert bad is None, f"trace time went backwards at event {bad + 1}: {run.trace.events[bad + 1]}"


def check_outcome_is_known_and_agrees_with_the_trace(run: CrashRun) -> None:
    assert run.outcome in OUTCOMES
    kinds = {e.kind for e in run.trace}
    assert (run.outcome == "purgatory_mismatch") == ("purgatory_mismatch" in kinds)
    assert (run.outcome == "capture_kernel_corrupted") == ("capture_kernel_corrupted" in kinds)
    if run.outcome in ("ok", "ok_dump_corrupted", "cpu_state_missing"):
        assert "dump_end" in kinds


def check_phases_in_order(run: CrashRun) -> None:
    order = ["nmi_shootdown_done", "purgatory_start", "purgatory_end", "capture_boot_start", "vmcore_init",
             "capture_boot_end", "dump_start", "dump_end"]
    reached = [run.phase[p] for p in order if p in run.phase]
    assert reached == sorted(reached), f"phases out of order: {run.phase}"


def check_no_cpu_acts_after_it_halted(run: CrashRun) -> None:
    panic_cpu = f"cpu{run.machine.cfg.cpus.panic_cpu}"
    last_word: dict[str, str] = {}
    for i, e in enumerate(run.trace):
        if not e.actor.startswith("cpu"):
            continue
        assert e.actor not in last_word, f"{e.actor} {e.kind} at {e.time} ns after it {last_word[e.actor]}"
        if e.kind == "halted" or (e.actor == panic_cpu and e.kind == "machine_kexec"):
            last_word[e.actor] = f"{e.kind} (event {i})"
    for c in run.cpus:
        if c.answer == "ok" and f"cpu{c.id}" != panic_cpu:
            assert c.halted_at is not None, f"cpu{c.id} answers NMIs but never halted"
        elif c.answer != "ok":
            assert c.halted_at is None and c.saved_at is None, f"unresponsive cpu{c.id} halted or saved"


def check_purgatory_waits_for_answering_cpus_or_the_timeout(run: CrashRun) -> None:
    t = run.timing
    done = run.phase["nmi_shootdown_done"]
    assert done <= t.nmi_timeout + t.nmi_poll, f"NMI wait ended at {done} ns, after the timeout"
    start = run.phase["purgatory_start"]
    assert start >= done
    assert run.trace.first("purgatory_start").time == start
    panic = run.machine.cfg.cpus.panic_cpu
    unresponsive = sorted(c.id for c in run.cpus if c.answer != "ok")
    if unresponsive:
        assert done >= t.nmi_timeout, "gave up waiting before the 1000 ms timeout"
        assert run.trace.first("nmi_timeout").details["missing"] == unresponsive
    else:
        assert run.trace.first("nmi_timeout") is None
    for c in run.cpus:
        if c.answer == "ok" and c.id != panic:
            assert c.halted_at is not None and c.halted_at <= start, f"cpu{c.id} still running in purgatory"


def check_no_dma_after_the_device_stopped(run: CrashRun) -> None:
    stopped: dict[str, int] = {}
    specs = {d.name: d for d in run.machine.cfg.devices}
    for e in run.trace:
        if e.kind == "dma_stopped":
            assert e.actor not in stopped, f"{e.actor} stopped twice"
            stopped[e.actor] = e.time
        elif e.kind in ("dma_write", "dma_fault", "dma_to_nowhere"):
            assert e.actor not in stopped, \
                f"{e.actor} {e.kind} at {e.time} ns after its dma_stopped at {stopped[e.actor]} ns"
            assert e.time >= max(0, specs[e.actor].start), f"{e.actor} wrote before its traffic started"
    for eng in run.engines:
        assert stopped.get(eng.name) == eng.stopped_at


def check_makedumpfile_order(run: CrashRun) -> None:
    """makedumpfile: struct pages first, then the kept pages in pfn order, each once."""
    copy_ = run.copy
    pfns = sorted({(c.origin + off) // 4096 for c in run.vmcore.chunks for off in range(0, c.size, 1 << 24)})
    kept = [p for p in pfns if copy_.read_by_makedumpfile(p)]
    times = [copy_.page_read_time(p) for p in kept]
    assert times == sorted(times) and len(set(times)) == len(times), "kept pages not read once each in pfn order"
    assert all(copy_.cycles[0].pages_start <= t < copy_.end for t in times)
    assert all(copy_.start <= copy_.memmap_read_time(p) < copy_.cycle_of(p).pages_start for p in pfns)
    assert run.phase["dump_end"] == copy_.end


def check_dump_copy_reads_each_byte_once(run: CrashRun) -> None:
    if run.copy is None:
        assert "dump_start" not in {e.kind for e in run.trace}
        return
    v, copy_ = run.vmcore, run.copy
    chunks = list(v.chunks)
    assert chunks == sorted(chunks, key=lambda c: c.offset), "chunks not in file order"
    assert not chunks or chunks[0].offset >= v.notes_offset + len(v.notes), "PT_LOAD data overlaps the notes"
    for a, b in zip(chunks, chunks[1:]):
        assert a.offset + a.size <= b.offset, f"file chunks overlap: {a} {b}"
    assert not chunks or chunks[-1].offset + chunks[-1].size <= v.size
    if copy_.collector == "makedumpfile":
        check_makedumpfile_order(run)
        return
    offsets = sorted({0, v.size, *(c.offset for c in chunks), *(c.offset + c.size for c in chunks)})
    times = [copy_.read_time(o) for o in offsets]
    assert times == sorted(times) and times[0] == copy_.start, "read time not monotonic in the file offset"
    assert copy_.end >= times[-1]
    segs = run.trace.of_kind("dump_copy_segment")
    assert [e.time for e in segs] == [copy_.read_time(c.offset + c.size) for c in chunks]
    assert run.phase["dump_end"] == copy_.end
    # Physical sources repeat only where the layout means it to (see the module docstring).
    ks, ke = run.machine.kernel_image
    for a in chunks:
        for b in chunks:
            if a.offset < b.offset and a.paddr < b.paddr + b.size and b.paddr < a.paddr + a.size:
                kernel_text = any(c.paddr == ks and c.paddr + c.size == ke for c in (a, b)) \
                    and run.machine.arch == "x86_64"
                backup_copy = any(c.origin != c.paddr for c in (a, b)) and run.machine.cfg.design == "2004"
                assert kernel_text or backup_copy, f"physical memory read twice: {a} and {b}"


def check_perfetto_timeline_is_well_formed(run: CrashRun) -> None:
    doc = to_perfetto(run.trace.events)
    last: dict[tuple, float] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "M":
            continue
        assert e["ts"] >= 0 and e.get("dur", 0) >= 0, e
        key = (e["pid"], e["tid"])
        assert e["ts"] >= last.get(key, 0), f"ts goes backwards on track {key}: {e}"
        last[key] = e["ts"]
    names = {e["args"]["name"].split(" ")[0] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {f"cpu{c.id}" for c in run.cpus} <= names
    assert {eng.name for eng in run.engines} <= names


CHECKS = [check_time_never_goes_backwards, check_outcome_is_known_and_agrees_with_the_trace,
          check_phases_in_order, check_no_cpu_acts_after_it_halted,
          check_purgatory_waits_for_answering_cpus_or_the_timeout, check_no_dma_after_the_device_stopped,
          check_dump_copy_reads_each_byte_once, check_perfetto_timeline_is_well_formed]


def _pinned(base: str, seed: int, **over) -> tuple[dict, int]:
    raw = copy.deepcopy(BASES[base])
    for k, v in over.items():
        raw[k] = v
    return raw, seed


# One simulation per example, every property checked on it (a property-per-test
# layout would simulate each example once per property: 8x the time). A
# property that fails for a model bug moves to its own xfail(strict=True) test.
@PROPS
@given(models(), seeds)
@example(*_pinned("paper-i386-2005", 0, cpus={"count": 4, "unresponsive": {1: "hung", 3: "nmi_lost"}}))
@example(*_pinned("paper-i386-2005", 1, devices=[{
    "name": "eth0", "kind": "nic_rx_ring", "bus": "pci0", "start": "0ms", "capture_driver": False,
    "placement": {"mode": "stale", "start": 16 << 20, "end": 48 << 20}}]))
@example(*_pinned("paper-i386-2004", 2, cpus={"count": 1}))
def test_timeline_invariants(raw: dict, seed: int) -> None:
    run = run_of(raw, seed)
    for check in CHECKS:
        check(run)


def test_the_strategy_reaches_every_outcome_family() -> None:
    """The pinned examples above cover the failure paths the random ones may miss."""
    outcomes = {run_of(*_pinned("paper-i386-2005", 0, cpus={"count": 4, "unresponsive": {1: "hung"}})).outcome,
                run_of(*_pinned("paper-i386-2005", 1, devices=[{
                    "name": "eth0", "kind": "nic_rx_ring", "bus": "pci0", "start": "0ms", "capture_driver": False,
                    "placement": {"mode": "stale", "start": 16 << 20, "end": 20 << 20}}])).outcome}
    assert outcomes == {"cpu_state_missing", "purgatory_mismatch"}
