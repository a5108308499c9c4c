"""The crash path on the shipped models: outcomes a user relies on, each
provoked by placing and timing DMA where the paper says it matters."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from kdumpsim.config.model import load_model
from kdumpsim.kexec.load import kexec_load
from kdumpsim.machine.layout import Machine
from kdumpsim.measure import simulate
from kdumpsim.measure.metrics import truth_page
from kdumpsim.measure.report import build_report, dumps
from kdumpsim.names import OUTCOMES
from kdumpsim.units import MiB

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.yaml"))
MS, S = 1_000_000, 1_000_000_000


def model(name: str, *overrides: str):
    return load_model(ROOT / "models" / f"{name}.yaml", list(overrides))


def small_modern(*overrides: str):
    """The modern model on 1 GiB so tests stay fast; the dump copied with dd
    (file order: these tests pin read times to file offsets)."""
    return model("modern-x86_64", "capture.collector=dd",
                 'memory.iomem=["00001000-0009fbff : System RAM", "00100000-3fffffff : System RAM"]',
                 "memory.numa_nodes=1", "topology.buses.pcie1.numa_node=0", "cpus.count=4", "cpus.sockets=1", "cpus.panic_cpu=1",
                 "kexec.crashkernel=128M", "kexec.initrd_size=8M", *overrides)


def device(kind: str, start: str, lo: int, hi: int, mode: str = "range", **extra) -> str:
    """One device without a capture-kernel driver, its buffers in [lo, hi):
    mode range (the first kernel's allocator there) or stale (programmed before
    the reservation existed, the named way into reserved memory)."""
    spec = {"name": "dev0", "kind": kind, "bus": "pci0", "start": start, "capture_driver": False,
            "placement": {"mode": mode, "start": lo, "end": hi}, **extra}
    return "devices=" + json.dumps([spec])


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_no_dma_is_ok_and_nothing_corrupted(path: Path) -> None:
    run = simulate(load_model(path, ["devices=[]"]), seed=3)
    assert run.outcome == "ok"
    assert run.metrics["corrupted_bytes"] == 0
    assert run.metrics["dump_fidelity"] == 1.0
    assert run.metrics["cpus_saved"] == run.machine.ncpus


def test_dma_into_a_segment_before_purgatory_is_detected() -> None:
    # The paper's vmlinux sits at 16 MB; a NIC that firmware programmed there
    # (stale DMA) writing right at the panic lands before purgatory hashes it.
    run = simulate(model("paper-i386-2005", device("nic_rx_ring", "0ms", 16 * MiB, 20 * MiB, "stale")), 1)
    assert run.outcome == "purgatory_mismatch"
    assert run.metrics["detected"] is True
    assert run.trace.first("purgatory_mismatch") is not None
    assert run.trace.first("capture_boot_start") is None          # purgatory hangs: no capture kernel
    assert run.metrics["regions"]["kernel"]["writers"].keys() == {"dev0"}


def test_dma_into_capture_kernel_after_the_check_is_silent() -> None:
    run = simulate(model("paper-i386-2005", device("nic_rx_ring", "1s", 16 * MiB, 20 * MiB, "stale")), 1)
    hashed = run.hash_times["kernel"][1]
    first = min(e.time for e in run.trace.of_kind("dma_write"))
    assert first > hashed                                  # every write came after the check
    assert run.purgatory_result == "ok"
    assert run.outcome == "capture_kernel_corrupted"
    assert run.metrics["regions"]["kernel"]["bytes"] > 0


def test_dma_during_dump_copy_corrupts_exactly_the_pages_read_after_it() -> None:
    # A storage controller whose driver the capture kernel lacks completes 8
    # commands of 64 KiB into first-kernel RAM at 768 MiB during the copy.
    dev = device("storage", "6.5s", 768 * MiB, 800 * MiB, commands=8, command_size="64K", bus="pcie0")
    run = simulate(small_modern(dev), 2)
    assert run.outcome == "ok_dump_corrupted"
    copy = run.copy
    assert copy.start < min(e.time for e in run.trace.of_kind("dma_write"))
    # Expected: pages whose last device write came before the copy read them.
    expected = set()
    for chunk in run.vmcore.chunks:
        if chunk.origin != chunk.paddr:
            continue            # the backup copy: checked below as its own region
        for pfn in run.machine.memory.touched_in(chunk.paddr, chunk.paddr + chunk.size):
            read_at = copy.read_time(chunk.offset + (pfn * 4096 - chunk.paddr))
            if run.machine.memory.page(pfn, read_at) != truth_page(run, pfn):
                expected.add(pfn)
    assert expected, "the DMA should land before the copy reaches 768 MiB"
    assert run.metrics["dump_pages_corrupted"] == len(expected)
    assert run.metrics["regions"]["dumped_ram"]["writers"].keys() == {"dev0"}
    for name in ("kernel", "initrd", "elfcorehdr", "dumped_backup"):
        assert run.metrics["regions"][name]["bytes"] == 0


def test_dma_after_the_copy_passed_leaves_the_dump_intact() -> None:
    # Same device, but at 48 MiB, which the copy has read before the commands complete.
    dev = device("storage", "6.5s", 48 * MiB, 64 * MiB, commands=8, command_size="64K", bus="pcie0")
    run = simulate(small_modern(dev), 2)
    assert run.metrics["dma"]["dev0"]["writes"] > 0
    assert run.outcome == "ok"


def test_a_cpu_that_never_answers_leaves_its_note_empty_after_1000_ms() -> None:
    run = simulate(model("paper-i386-2005", "devices=[]", "cpus.unresponsive={2: hung}"), 0)
    assert run.phase["nmi_shootdown_done"] == 1000 * MS
    assert run.trace.first("nmi_timeout").details["missing"] == [2]
    cpu2 = run.cpus[2]
    assert cpu2.saved_at is None
    assert run.machine.memory.read(cpu2.note_addr, 1024) == bytes(1024)
    assert run.outcome == "cpu_state_missing"
    assert run.metrics["cpus_missing"] == [2]
    assert run.metrics["cpus_saved"] == 3
    # The others answered within microseconds: the wait ended at the first 1 ms poll without a hang.
    ok = simulate(model("paper-i386-2005", "devices=[]"), 0)
    assert ok.phase["nmi_shootdown_done"] == 1 * MS


def test_a_lost_nmi_is_the_same_for_the_dump() -> None:
    run = simulate(small_modern("devices=[]", "cpus.unresponsive={3: nmi_lost}"), 0)
    assert run.outcome == "cpu_state_missing" and run.metrics["cpus_missing"] == [3]


def test_2004_design_fails_under_low_memory_dma_where_2005_does_not() -> None:
    # The first kernel's drivers own buffers in its low memory (the allocator's
    # pages between its image and 16 MiB): the 2004 capture kernel runs there.
    low = device("nic_rx_ring", "1s", 5 * MiB, 16 * MiB)
    outcomes = {d: {simulate(model(f"paper-i386-{d}", low), s).outcome for s in range(3)} for d in ("2004", "2005")}
    assert outcomes["2004"] == {"capture_kernel_corrupted"}
    assert outcomes["2005"] <= {"ok", "ok_dump_corrupted"}


def test_devices_stop_at_capture_driver_init() -> None:
    spec = {"name": "snd0", "kind": "cyclic", "bus": "pcie0", "start": "0ms", "capture_driver": True}
    run = simulate(small_modern("devices=" + json.dumps([spec])), 0)
    eng = run.engines[0]
    assert eng.stop_reason == "driver_reset"
    assert eng.stopped_at == run.phase["capture_boot_start"] + run.timing.driver_init
    assert max(e.time for e in run.trace.of_kind("dma_write")) <= eng.stopped_at


def test_rx_ring_stops_when_its_descriptors_are_used_up() -> None:
    spec = {"name": "nic", "kind": "nic_rx_ring", "bus": "pcie0", "descriptors": 32, "packet_rate": 1e6}
    run = simulate(small_modern("devices=" + json.dumps([spec])), 0)
    assert run.engines[0].stop_reason == "ring_exhausted"
    assert run.metrics["dma"]["nic"]["writes"] == 2 * 30       # N-2 packets, each a payload and a write-back


def test_same_model_and_seed_give_identical_report_and_trace(tmp_path: Path) -> None:
    def once(seed: int) -> tuple[str, str]:
        run = simulate(model("modern-x86_64"), seed)
        with open(tmp_path / "t.jsonl", "w") as fh:
            run.trace.write_jsonl(fh)
        return dumps(build_report(run)), (tmp_path / "t.jsonl").read_text()
    assert once(5) == once(5)
    assert once(5) != once(6)


def test_report_lists_what_a_reader_needs() -> None:
    run = simulate(model("modern-x86_64"), 1)
    r = build_report(run)
    assert r["outcome"] in OUTCOMES
    assert len(r["cpus"]) == 32 and {"id", "pid", "registers"} <= r["cpus"][0].keys()
    assert {"rip", "rsp", "eflags"} <= r["cpus"][0]["registers"].keys()
    assert r["reservation"]["end"] - r["reservation"]["start"] == 256 * MiB
    # kexec_file_load (the modern default): the segments in the kernel's load order,
    # the elfcorehdr first at the reservation's start, no backup region
    assert r["kexec_method"] == "kexec_file_load"
    assert [s["name"] for s in r["segments"]] == ["elfcorehdr", "purgatory", "params", "kernel", "initrd"]
    assert r["segments"][0]["start"] == r["reservation"]["start"] and r["backup"] is None
    assert r["ram"][0] == {"start": 0x1000, "end": 0x9fc00}
    old = build_report(simulate(model("modern-x86_64", "kexec.method=kexec_load"), 1))
    starts = [s["start"] for s in old["segments"]]
    assert old["kexec_method"] == "kexec_load"
    assert starts == sorted(starts) and {"kernel", "initrd", "elfcorehdr", "backup"} <= {s["name"] for s in old["segments"]}


def test_automatic_placement_is_16m_aligned_top_down_below_4g() -> None:
    m = Machine(model("modern-x86_64"), 0)
    r = m.reservation
    assert r.automatic and r.start % (16 * MiB) == 0 and r.end <= 4 << 30
    # The highest aligned 256 MiB under the RAM range ending at 0x7ffe0000.
    assert r.start == 0x6F000000


def test_segments_and_command_lines_follow_kexec_tools() -> None:
    old = kexec_load(Machine(model("paper-i386-2005"), 0))
    assert old.segment("kernel").start == 16 * MiB               # vmlinux linked at 16 MB (paper 3.1)
    assert "memmap=exactmap memmap=640K@0K" in old.cmdline
    assert old.cmdline.endswith(f"elfcorehdr={old.elfcorehdr // 1024}K")
    new = kexec_load(Machine(model("modern-x86_64"), 0))
    assert "memmap=" not in new.cmdline and "reset_devices" in new.cmdline   # E820 since 2014
    for image in (old, new):
        assert len(image.segments) <= 16
        assert [s.start for s in image.segments] == sorted(s.start for s in image.segments)
        assert image.backup_src[1] <= 640 * 1024


def test_nmi_latency_comes_from_the_topology() -> None:
    m = Machine(model("modern-x86_64"), 0)
    topo = m.topology
    same_socket = topo.ipi_latency(5, 6)
    other_socket = topo.ipi_latency(5, 20)
    assert same_socket == m.cfg.topology.apic_bus_latency
    assert other_socket == same_socket + m.cfg.topology.socket_link_latency


def test_memory_does_not_grow_with_ram_size() -> None:
    def peak(iomem_end: str) -> int:
        cfg = model("modern-x86_64", f'memory.iomem=["00001000-0009fbff : System RAM", '
                    f'"00100000-7fffffff : System RAM", "100000000-{iomem_end} : System RAM"]')
        tracemalloc.start()
        simulate(cfg, 0)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top
    small, huge = peak("13fffffff"), peak("100ffffffff")    # 3 GiB vs 1 TiB
    assert huge < small * 1.1
