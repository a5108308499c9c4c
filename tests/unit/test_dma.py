"""DMA goes only where the hardware or the kernel could put it (docs/SOURCES.md §11):
the page allocator's pages, or a named mechanism."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kdumpsim.errors import ConfigError, LayoutError
from kdumpsim.measure import simulate
from kdumpsim.units import MiB

KINDS = {
    "nic_rx_ring": {"descriptors": 256, "packet_rate": 100_000},
    "virtio_net": {"queue_size": 256, "packet_rate": 100_000, "virtio_pci": False},
    "storage": {"commands": 64, "command_size": "64K", "hmb": "8M", "queues": 4},
    "cyclic": {"buffer_size": "1M", "chunk": "64K", "period": "1ms"},
}


def _devices(*specs: dict) -> str:
    return "devices=" + json.dumps(list(specs))


def _dev(kind: str, name: str = "d0", **extra) -> dict:
    return {"name": name, "kind": kind, "bus": "pcie0", "start": "0ms", "capture_driver": False,
            **KINDS[kind], **extra}


def _kernel_owned(run) -> list[tuple[int, int, str]]:
    """Memory no driver of the first kernel can own."""
    m = run.machine
    owned = [(m.reservation.start, m.reservation.end, "reservation"), (*m.kernel_image, "kernel image"),
             (0, 1 * MiB, "low 1 MiB")]
    owned += [(a, a + m.crash_note_size, "crash_notes") for a in m.crash_notes]
    owned += [(m.vmcoreinfo_addr, m.vmcoreinfo_addr + 4096, "vmcoreinfo")] if m.vmcoreinfo_addr else []
    owned += m.kernel_structs.regions() if m.kernel_structs is not None else []
    return owned


def _writes(run, actor: str):
    return [w for w in run.machine.memory.log if w.actor == actor]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("mode", ["allocator", "range"])
def test_no_allocator_buffer_write_touches_kernel_owned_memory(small_modern, kind, mode):
    placement = {"mode": "allocator"} if mode == "allocator" else {"mode": "range", "start": 0, "end": 1 << 30}
    for seed in range(6):
        run = simulate(small_modern(_devices(_dev(kind, placement=placement, duration="20s"))), seed)
        writes = _writes(run, "d0")
        assert writes, "the device should write"
        owned = _kernel_owned(run)
        bad = [(hex(w.addr), name) for w in writes for s, e, name in owned if w.addr < e and s < w.addr + w.length]
        assert bad == [], f"seed {seed}: {bad[:5]}"
        assert simulate_record(run)["mechanisms"] == "none"


def test_a_window_with_only_kernel_memory_is_refused_with_a_named_way(small_modern):
    # 16-48 MiB holds the running kernel (and nothing a driver could get): no buffer fits.
    dev = _dev("nic_rx_ring", placement={"mode": "range", "start": 16 * MiB, "end": 48 * MiB})
    with pytest.raises(LayoutError, match="mode: stale"):
        simulate(small_modern(_devices(dev)), 0)


def test_reservation_placement_names_the_ways_in(small_modern):
    with pytest.raises(ConfigError, match="memblock-reserved at boot.*mode: stale"):
        small_modern(_devices(_dev("nic_rx_ring", placement={"mode": "reservation"})))


def _reservation_bytes(run, actor: str) -> int:
    r = run.machine.reservation
    return sum(max(0, min(w.addr + w.length, r.end) - max(w.addr, r.start)) for w in _writes(run, actor))


def test_stale_dma_reaches_the_reservation_and_says_so(small_modern):
    cfg = small_modern()
    r_start = 0x38000000                                 # crashkernel=128M on 1 GiB: top-down, 16 MiB aligned
    dev = _dev("nic_rx_ring", placement={"mode": "stale", "start": r_start, "end": r_start + 128 * MiB})
    run = simulate(small_modern(_devices(dev)), 1)
    assert run.machine.reservation.start == r_start and cfg.kexec.crashkernel == "128M"
    assert _reservation_bytes(run, "d0") > 0
    assert run.metrics["dma_hits"].keys() - {"first_kernel_ram"} <= {"reservation_free", "kernel", "initrd",
                                                                    "params", "purgatory", "elfcorehdr", "backup"}
    assert simulate_record(run)["mechanisms"] == "stale"


def simulate_record(run) -> dict:
    from kdumpsim.measure.record import run_record
    return run_record(run)


def test_wild_dma_lands_anywhere_in_its_window(small_modern):
    dev = _dev("cyclic", placement={"mode": "wild"}, duration="2s")
    run = simulate(small_modern(_devices(dev)), 3)
    regions = set(run.metrics["dma_hits"])
    assert len(regions) >= 2 and simulate_record(run)["mechanisms"] == "wild"


IOMMU = ['topology.iommu={capture_kernel: off}', "topology.buses.pcie0.iommu=true"]


def _iommu_nic(packet_rate: int = 20, **extra) -> dict:
    # iova_in_use: the device's other live mappings fill the IOVA space from 4 GiB
    # down to the reservation (0x38000000..0x40000000 on this 1 GiB machine).
    return _dev("nic_rx_ring", packet_rate=packet_rate, iova_in_use=(1 << 32) - 0x3C000000, **extra)


def test_iommu_off_in_the_capture_kernel_lands_old_iovas_as_physical_addresses(small_modern):
    on = simulate(small_modern(_devices(_iommu_nic()), *IOMMU), 2)
    assert _reservation_bytes(on, "d0") > 0
    first = min(w.time for w in _writes(on, "d0") if on.machine.reservation.start <= w.addr < on.machine.reservation.end)
    assert first >= on.phase["capture_boot_start"] + on.timing.iommu_init      # only once translation is off
    assert simulate_record(on)["mechanisms"] == "iommu_off"
    # The same device with the tables copied keeps landing in its own buffers.
    copied = simulate(small_modern(_devices(_iommu_nic()), "topology.iommu={capture_kernel: copy_tables}",
                                   "topology.buses.pcie0.iommu=true"), 2)
    assert _reservation_bytes(copied, "d0") == 0
    # AMD's amd_iommu=off leaves the old tables on.
    amd = simulate(small_modern(_devices(_iommu_nic()), "topology.iommu={capture_kernel: off, vendor: amd}",
                                "topology.buses.pcie0.iommu=true"), 2)
    assert _reservation_bytes(amd, "d0") == 0


def test_iommu_copy_failed_faults_after_fresh_tables(small_modern):
    run = simulate(small_modern(_devices(_iommu_nic(packet_rate=20)), "topology.iommu={capture_kernel: copy_failed}",
                                "topology.buses.pcie0.iommu=true"), 2)
    faults = run.trace.of_kind("dma_fault")
    fresh = run.trace.first("iommu_translation_enabled").time
    assert faults and min(e.time for e in faults) >= fresh
    assert all(e.time < fresh for e in run.trace.of_kind("dma_write") if e.actor == "d0"
               and e.time > run.phase["capture_boot_start"] + run.timing.iommu_init)


def test_passthrough_means_iova_is_physical(small_modern):
    run = simulate(small_modern(_devices(_iommu_nic()), "topology.iommu={capture_kernel: off, first_kernel: passthrough}",
                                "topology.buses.pcie0.iommu=true"), 2)
    assert _reservation_bytes(run, "d0") == 0 and simulate_record(run)["mechanisms"] == "none"


def test_cma_area_is_capture_memory_and_the_wait_delays_the_jump(small_modern):
    dev = _dev("storage", placement={"mode": "cma"}, commands=64, latency_median="2s", latency_p999="20s")
    runs = {wait: simulate(small_modern(_devices(dev), "kexec.crashkernel_cma=64M", f"timing.cma_dma_wait={wait}"), 4)
            for wait in ("0s", "10s")}
    for run in runs.values():
        cma = run.machine.cma
        assert cma is not None
        assert all(cma[0] <= w.addr < cma[1] for w in _writes(run, "d0"))
        # the CMA area leaves the dump
        assert all(c.paddr + c.size <= cma[0] or c.paddr >= cma[1] for c in run.vmcore.chunks)
    assert runs["10s"].phase["purgatory_start"] - runs["0s"].phase["purgatory_start"] == 10 * 10**9
    assert runs["0s"].metrics["cma_bytes_after_jump"] > runs["10s"].metrics["cma_bytes_after_jump"]
    assert simulate_record(runs["0s"])["mechanisms"] == "cma"


def test_cma_placement_needs_the_cma_area(small_modern):
    with pytest.raises(ConfigError, match="CMA holds movable pages only"):
        small_modern(_devices(_dev("storage", placement={"mode": "cma"})))


# ---------------------------------------------------------------- devices as the lab saw them
def test_e1000_owns_n_minus_2_and_packs_page_frag_slices(small_modern):
    run = simulate(small_modern(_devices(_dev("nic_rx_ring", packet_rate=1e6))), 0)
    eng = run.engines[0]
    assert len(eng.buffers) == 254 and eng.stop_reason == "ring_exhausted"
    assert run.metrics["dma"]["d0"]["writes"] == 2 * 254        # payload + descriptor write-back per packet
    starts = sorted(b.phys for b in eng.buffers)
    assert Counter(b - a for a, b in zip(starts, starts[1:])).most_common(1)[0][0] == 0x780   # 1920-byte stride
    per_page = Counter(b.phys >> 12 for b in eng.buffers)
    assert 2.0 <= len(eng.buffers) / len(per_page) <= 2.2          # 17 slices in 8 pages: ~2.1 per page
    assert all(b.phys % 0x8000 in {(0x8000 - k * 0x780 + 64) for k in range(1, 18)} for b in eng.buffers)


def test_virtio_net_is_reset_by_virtio_pci_even_without_its_driver(small_modern):
    dev = _dev("virtio_net", packet_rate=20, virtio_pci=True)
    run = simulate(small_modern(_devices(dev)), 0)
    eng = run.engines[0]
    assert eng.stop_reason == "virtio_pci_reset"
    assert eng.stopped_at == run.phase["capture_boot_start"] + run.timing.driver_init
    assert 256 - 32 <= len(eng.buffers) <= 256
    assert 2.5 <= len(eng.buffers) / len({b.phys >> 12 for b in eng.buffers}) <= 2.8


def test_a_device_without_a_capture_driver_never_stops(small_modern):
    run = simulate(small_modern(_devices(_dev("cyclic"))), 0)
    eng = run.engines[0]
    assert eng.stopped_at is None and run.metrics["dma"]["d0"]["stop_reason"] is None
    assert max(w.time for w in _writes(run, "d0")) > run.phase["dump_start"]
    assert run.trace.first("no_driver_in_capture_kernel") is not None


def test_e1000_ignores_reset_devices_and_nvme_resets_regardless(small_modern):
    nic = _dev("nic_rx_ring", packet_rate=20, capture_driver=True)
    nvme = _dev("storage", name="d1", capture_driver=True, latency_median="20s", latency_p999="60s")
    run = simulate(small_modern(_devices(nic, nvme), "kexec.append=irqpoll nr_cpus=1"), 0)
    assert "reset_devices" not in run.image.cmdline
    assert {e.name: e.stop_reason for e in run.engines} == {"d0": "driver_reset", "d1": "driver_reset"}


def test_a_write_is_credited_to_every_region_it_overlaps(small_modern):
    # One 128 KiB write of a stale buffer over the per-cpu units of CPUs 0 and 1.
    probe = simulate(small_modern("devices=[]"), 0)
    note = probe.machine.crash_notes[0]
    dev = _dev("cyclic", buffer_size="128K", chunk="128K", period="100s", start="-1ms",
               placement={"mode": "stale", "start": note - 0x1000, "end": note + 0x1F000})
    run = simulate(small_modern(_devices(dev)), 0)
    hits = run.metrics["dma_hits"]
    assert hits["crash_notes"]["d0"] == 2 * run.machine.crash_note_size       # both notes, not only the first byte's
    assert sum(sum(d.values()) for d in hits.values()) == 128 * 1024
    assert run.outcome == "cpu_state_missing"
    assert set(run.metrics["cpus_missing_why"].values()) == {"note_overwritten"}


def test_payload_bytes_do_not_shift_the_devices_decisions(small_modern):
    """A device's payload comes from its own stream: a run with larger packets
    has the same packets (arrival times, buffers) as one with small ones, so a
    sweep over packet size compares like with like."""
    def writes(size: int):
        dev = _dev("nic_rx_ring", packet_rate=20_000, packet_size=size, queues=4, duration="20ms")
        run = simulate(small_modern(_devices(dev)), 7, trace=False)
        return _writes(run, "d0")
    small = [w.addr for w in writes(64) if w.length == 64]
    large = [w.addr for w in writes(1400) if w.length == 1400]
    n = min(len(small), len(large))      # the window ends at 20 ms: larger packets take longer
    assert n > 100 and small[:n] == large[:n]
