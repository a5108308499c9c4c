"""One component at a time, each on the smallest setup that shows what a user
relies on: RAM history, address ranges, the topology, the CPUs' NMI round,
purgatory, the capture kernel's header parse and its IOMMU and driver steps."""

from __future__ import annotations

import json
import random

import simpy

from kdumpsim.crash.procvmcore import VmcoreInitError, vmcore_init
from kdumpsim.crash.run import run_crash
from kdumpsim.machine.layout import Machine
from kdumpsim.machine.ram import PhysicalMemory
from kdumpsim.machine.ranges import FreeRanges, RandomPlacer, Taken
from kdumpsim.units import MiB

MS = 1_000_000


# ---------------------------------------------------------------- ram
def test_ram_keeps_history_and_reads_as_of_a_time():
    mem = PhysicalMemory([(0, 1 * MiB)], key=7)
    before = mem.read(0x2000, 16)
    mem.write(0x2004, b"abcd", 5, "nic0")
    mem.write(0x2006, b"ZZ", 9, "nic0")
    assert mem.read(0x2000, 16, 4) == before                       # before the first write
    assert mem.read(0x2004, 4, 5) == b"abcd"
    assert mem.read(0x2004, 4, 9) == b"abZZ"                       # later writes on top
    assert mem.touched_in(0, 1 * MiB) == [2]
    assert mem.is_ram(0xFF000, 0x1000) and not mem.is_ram(0xFF000, 0x2000)


def test_ram_content_is_a_function_of_the_seed_not_of_memory_size():
    small, big = PhysicalMemory([(0, 1 * MiB)], key=3), PhysicalMemory([(0, 1 << 40)], key=3)
    assert small.read(0x5000, 64) == big.read(0x5000, 64)
    assert PhysicalMemory([(0, 1 * MiB)], key=4).read(0x5000, 64) != small.read(0x5000, 64)


# ---------------------------------------------------------------- ranges
def test_free_ranges_place_like_locate_hole():
    free = FreeRanges([(0, 64 * MiB)])
    free.remove(16 * MiB, 32 * MiB)
    assert free.alloc(8 * MiB, 2 * MiB) == 0                        # bottom-up: the lowest hole
    assert free.alloc(8 * MiB, 2 * MiB, top_down=True) == 56 * MiB  # top-down: the highest
    assert free.alloc(40 * MiB, MiB) is None                        # no hole is that big


def test_random_placer_never_overlaps_and_fills_a_crowded_space():
    taken = Taken()
    placer = RandomPlacer([(0, 64 * 4096)], taken)
    rng = random.Random(1)
    got = [placer.place(rng, 4096, 4096) for _ in range(64)]
    assert None not in got and len(set(got)) == 64                  # first fit finds the last free pages
    assert placer.place(rng, 4096, 4096) is None


# ---------------------------------------------------------------- topology
def test_dma_route_crosses_the_iommu_only_from_a_bus_behind_it(small_modern):
    cfg = small_modern('devices=[{name: n0, kind: nic_rx_ring, bus: pcie0}, {name: n1, kind: nic_rx_ring, bus: pcie1}]',
                       "topology.iommu={capture_kernel: copy_tables}", "topology.buses.pcie0.iommu=true")
    topo = Machine(cfg, 0).topology
    assert topo.route("n0", "mem0").iommu and not topo.route("n1", "mem0").iommu
    assert topo.route("n0", "mem0").latency >= cfg.topology.buses[0].latency


# ---------------------------------------------------------------- cpu
def test_the_nmi_round_ends_at_the_first_poll_when_everyone_answers(small_modern):
    run = run_crash(small_modern("devices=[]"), 0)
    assert run.phase["nmi_shootdown_done"] == 1 * MS
    others = [c for c in run.cpus if c.id != run.machine.cfg.cpus.panic_cpu]
    assert all(c.state == "halted" and c.saved_at is not None and c.saved_at < 1 * MS for c in others)


def test_a_hung_cpu_makes_the_panicking_one_wait_the_full_second(small_modern):
    run = run_crash(small_modern("devices=[]", "cpus.unresponsive={2: hung}"), 0)
    assert run.phase["nmi_shootdown_done"] == 1000 * MS
    assert run.cpus[2].saved_at is None and run.trace.first("nmi_timeout").details["missing"] == [2]


def test_post_crash_cma_wait_comes_between_shutdown_and_purgatory(small_modern):
    run = run_crash(small_modern("devices=[]", "kexec.crashkernel_cma=32M", "timing.cma_dma_wait=2s"), 0)
    assert run.phase["purgatory_start"] >= run.phase["nmi_shootdown_done"] + 2_000 * MS


# ---------------------------------------------------------------- purgatory
def test_purgatory_catches_a_write_before_its_hash_and_misses_one_after(small_modern):
    base = run_crash(small_modern("devices=[]"), 0)
    kernel = base.image.segment("kernel")
    hashed_at = base.hash_times["kernel"]
    for when, expect in ((hashed_at[0] - 100_000, "mismatch"), (hashed_at[1] + 1000, "ok")):
        cfg = small_modern("devices=" + json.dumps([{
            "name": "fw0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "4K", "chunk": "4K", "period": "100s",
            "start": f"{when}ns", "placement": {"mode": "stale", "start": kernel.start, "end": kernel.start + 4096}}]))
        assert run_crash(cfg, 0).purgatory_result == expect


# ---------------------------------------------------------------- procvmcore
def test_vmcore_init_refuses_headers_that_are_not_elf(small_modern):
    run = run_crash(small_modern("devices=[]"), 0)
    mem, m = run.machine.memory, run.machine
    layout = vmcore_init(mem, run.image.elfcorehdr, 10**12, m.arch, m.era, m.ram_ranges[-1][1])
    assert layout.chunks and len(layout.note_sources) == m.ncpus + 1          # CPU notes + VMCOREINFO
    mem.write(run.image.elfcorehdr, b"\0\0\0\0", 10**12, "fw0")
    try:
        vmcore_init(mem, run.image.elfcorehdr, 10**12 + 1, m.arch, m.era, m.ram_ranges[-1][1])
    except VmcoreInitError as e:
        assert "not sane" in str(e)
    else:
        raise AssertionError("a corrupt ELF header must leave /proc/vmcore unset")


# ---------------------------------------------------------------- capture
def test_capture_kernel_steps_come_in_the_configured_order(small_modern):
    cfg = small_modern('devices=[{name: n0, kind: nic_rx_ring, bus: pcie0, capture_driver: true, packet_rate: 5}]',
                       "topology.iommu={capture_kernel: copy_tables}", "topology.buses.pcie0.iommu=true")
    run = run_crash(cfg, 0)
    jump = run.phase["capture_boot_start"]
    t = run.timing
    assert run.trace.first("iommu_init").time == jump + t.iommu_init
    assert run.engines[0].stopped_at == jump + t.driver_init
    assert run.phase["vmcore_init"] == jump + t.vmcore_init
    assert run.phase["dump_start"] == jump + t.capture_boot + t.dump_start_delay


def test_a_run_takes_an_environment_subclass_to_count_its_events(small_modern):
    class Counting(simpy.Environment):
        steps = 0

        def step(self):
            Counting.steps += 1
            super().step()
    run = run_crash(small_modern("devices=[]"), 0, env_type=Counting)
    assert isinstance(run.env, Counting) and Counting.steps >= len(run.trace)


def test_a_serial_console_delays_the_shootdown_and_post_notifiers_delay_kdump(small_modern):
    plain = run_crash(small_modern("devices=[]"), 0)
    serial = run_crash(small_modern("devices=[]", "kernel.console_rate=11520B/s"), 0)     # 115200 baud
    assert serial.phase["nmi_shootdown_done"] - plain.phase["nmi_shootdown_done"] == 2449 * 10**9 // 11520 + 1
    post = run_crash(small_modern("devices=[]", "kernel.crash_kexec_post_notifiers=true", "timing.panic_notifiers=20s"), 0)
    # the other CPUs are stopped first, then the notifiers run, then kdump
    assert post.phase["nmi_shootdown_done"] == plain.phase["nmi_shootdown_done"]
    assert post.phase["purgatory_start"] - plain.phase["purgatory_start"] == 20 * 10**9
