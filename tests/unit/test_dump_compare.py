"""dump_corruption's batched comparison (issue #19) gives what the plain
per-page comparison gives (dump_corruption_per_page: each unit read as the
copy read it, the truth's bytes joined, the device Deltas behind it), and
dma_hits what regions_of gives write by write (dma_hits_per_write): the
whole metrics of a run measured either way are the same."""

from __future__ import annotations

import json

import pytest

from kdumpsim.measure import metrics, simulate
from tests.conftest import SMALL_MODERN, load_named

# Two devices: a ring whose 6K chunks straddle pages, left running in 400 MiB
# of the first kernel's memory (pages makedumpfile keeps, excludes as free,
# cache or user, or reads as all zeros, before or after the ring reaches
# them), and a storage controller in its driver's buffers.
TWO_DEVICES = ('devices=[{"name": "nic0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "64M", "chunk": "6K", '
               '"period": "1ms", "duration": "60s", "capture_driver": false, '
               '"placement": {"mode": "stale", "start": 500M, "end": 900M}}, '
               '{"name": "nvme0", "kind": "storage", "bus": "pcie1", "queues": 4, "commands": 64, '
               '"command_size": "16K", "duration": "30s"}]')
# The paper's i386 machine (kexec_load, the 2005 design): its e1000, and a
# ring in the low 640K that the crash path backs up into the reservation.
LOW_640K = ('devices=[{"name": "eth0", "kind": "nic_rx_ring", "bus": "pci0", "packet_rate": 2000}, '
            '{"name": "low0", "kind": "cyclic", "bus": "pci0", "buffer_size": "256K", "chunk": "6K", '
            '"period": "1ms", "capture_driver": false, "placement": {"mode": "stale", "start": 0, "end": 640K}}]')

# name -> (model, overrides, seed)
CASES = {
    "makedumpfile_d31": ("modern-x86_64", SMALL_MODERN + (TWO_DEVICES,), 3),
    "makedumpfile_d1": ("modern-x86_64", SMALL_MODERN + (TWO_DEVICES, "capture.dump_level=1"), 3),
    "makedumpfile_d0": ("modern-x86_64", SMALL_MODERN + (TWO_DEVICES, "capture.dump_level=0"), 4),
    "dd": ("modern-x86_64", SMALL_MODERN + (TWO_DEVICES, "capture.collector=dd"), 3),
    "paper_2005_backup": ("paper-i386-2005", (LOW_640K,), 2),
}


def _record(model: str, overrides: tuple[str, ...], seed: int) -> dict:
    run = simulate(load_named(model, *overrides), seed, trace=False)
    return json.loads(json.dumps(run.metrics, sort_keys=True, default=str))


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_comparison_equals_the_per_page_one(name, monkeypatch) -> None:
    model, overrides, seed = CASES[name]
    batched = _record(model, overrides, seed)
    monkeypatch.setattr(metrics, "dump_corruption", metrics.dump_corruption_per_page)
    monkeypatch.setattr(metrics, "dma_hits", metrics.dma_hits_per_write)
    plain = _record(model, overrides, seed)
    assert batched == plain
    regions = batched["regions"]
    writers = set(regions["dumped_ram"]["writers"]) | set(regions["dumped_backup"]["writers"])
    assert len(writers) == 2, "both devices damaged the dump: a comparison with teeth"


@pytest.mark.parametrize("name", ["makedumpfile_d31", "dd"])
def test_the_batch_size_does_not_change_the_answer(name, monkeypatch) -> None:
    """Pages compared a few rows at a time (the batch edges fall inside the
    dump's units) give what the default batches give."""
    model, overrides, seed = CASES[name]
    whole = _record(model, overrides, seed)
    monkeypatch.setattr(metrics, "COMPARE_ROWS", 7)
    assert _record(model, overrides, seed) == whole


def test_the_cases_exercise_the_edges() -> None:
    """The cases above reach what the batched comparison must get right."""
    recs = {name: _record(*case) for name, case in CASES.items()}
    assert recs["makedumpfile_d31"]["collector"]["excluded_pages_hit"] > 0           # excluded pages DMA wrote
    assert recs["makedumpfile_d1"]["collector"]["excluded_pages_hit"] > 0            # all-zeros pages only
    assert recs["makedumpfile_d0"]["collector"]["excluded_pages_hit"] == 0
    assert recs["paper_2005_backup"]["regions"]["dumped_backup"]["writers"].keys() == {"low0"}


def test_dma_hits_equal_regions_of_write_by_write() -> None:
    """A ring across the reservation's start (the first kernel's mem_map, the
    elfcorehdr, the reservation's free memory) whose 6K writes cross region edges."""
    ring = ('devices=[{"name": "nic0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "8M", "chunk": "6K", '
            '"period": "1ms", "duration": "60s", "capture_driver": false, '
            '"placement": {"mode": "stale", "start": 0x37c00000, "end": 0x38400000}}]')
    run = simulate(load_named("modern-x86_64", *SMALL_MODERN, ring), 1, trace=False)
    edges = run.region_edges()
    crossing = [w for w in run.machine.memory.log if w.actor == "nic0" and w.time > 0
                and any(w.addr < e < w.addr + w.length for e in edges)]
    assert crossing, "some writes cross a region edge"
    for after in (0, run.phase["purgatory_end"], run.phase["capture_boot_start"]):
        assert metrics.dma_hits(run, after) == metrics.dma_hits_per_write(run, after)
    assert {"mem_map", "elfcorehdr", "reservation_free"} <= set(metrics.dma_hits(run))
