"""Runs of the makedumpfile collector whose results are pinned in
tests/data/mdf_equivalence.json (tests/test_collector_equivalence.py).

`python -m tests.mdf_cases` rewrites the file from the code as it is: only
when a model change is meant to change makedumpfile's results."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import SMALL_MODERN, load_named

DATA = Path(__file__).parent / "data" / "mdf_equivalence.json"
MiB = 1 << 20
MEMMAP_SMALL = 0x37000000        # mem_map of the small modern machine (test_collector.py)
BIG = ('memory.iomem=["00001000-0009fbff : System RAM", "00100000-27ffffffff : System RAM"]',
       "memory.numa_nodes=1", "topology.buses.pcie1.numa_node=0", "cpus.count=4", "cpus.sockets=1",
       "cpus.panic_cpu=1", "kexec.crashkernel=512M")   # mem_map at 0x2760000000


def ring(start: str, lo: int, hi: int, size: str = "256K", chunk: str = "16K", period: str = "10ms") -> str:
    spec = {"name": "dma0", "kind": "cyclic", "bus": "pcie0", "buffer_size": size, "chunk": chunk,
            "period": period, "capture_driver": False, "start": start,
            "placement": {"mode": "stale", "start": lo, "end": hi}}
    return "devices=" + json.dumps([spec])


# name -> (model, overrides, seeds, write the vmcore files)
CASES: dict[str, tuple[str, tuple[str, ...], tuple[int, ...], bool]] = {
    "small_memmap_ring": ("modern-x86_64", SMALL_MODERN + (ring("0ms", MEMMAP_SMALL, MEMMAP_SMALL + 12 * MiB),),
                          (1, 2), True),
    "small_memmap_ring_big": ("modern-x86_64", SMALL_MODERN + (ring("0ms", MEMMAP_SMALL, MEMMAP_SMALL + 16 * MiB,
                                                                    "2M", "64K", "1ms"),), (3,), True),
    "small_memmap_ring_d1": ("modern-x86_64", SMALL_MODERN + (ring("0ms", MEMMAP_SMALL, MEMMAP_SMALL + 12 * MiB),
                                                              "capture.dump_level=1"), (1,), True),
    "small_memmap_ring_d16": ("modern-x86_64", SMALL_MODERN + (ring("0ms", MEMMAP_SMALL, MEMMAP_SMALL + 12 * MiB),
                                                               "capture.dump_level=16"), (1,), True),
    "small_memmap_ring_d0": ("modern-x86_64", SMALL_MODERN + (ring("0ms", MEMMAP_SMALL, MEMMAP_SMALL + 12 * MiB),
                                                              "capture.dump_level=0"), (1,), False),
    "small_ram_ring": ("modern-x86_64", SMALL_MODERN + (ring("0ms", 600 * MiB, 700 * MiB),), (4,), True),
    "small_ram_ring_d6": ("modern-x86_64", SMALL_MODERN + (ring("0ms", 600 * MiB, 700 * MiB),
                                                           "capture.dump_level=6"), (4,), True),
    "small_default": ("modern-x86_64", SMALL_MODERN, (1, 5), True),
    "modern": ("modern-x86_64", (), (0, 1, 2), False),
    "modern_memmap_ring": ("modern-x86_64", (ring("0ms", 0x2_7800_0000, 0x2_7900_0000, "2M", "64K", "1ms"),),
                           (7,), False),
    "rhel8": ("rhel8-x86_64", (), (0,), False),
    # 160 GiB: makedumpfile works in two cycles; DMA rewrites the first struct pages of mem_map.
    "cyclic_memmap_ring": ("modern-x86_64", BIG + (ring("0ms", 0x27_6000_0000, 0x27_6100_0000, "2M", "64K", "1ms"),),
                           (3,), False),
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def fingerprint(model: str, overrides: tuple[str, ...], seed: int, files: bool) -> dict[str, Any]:
    """What a user sees of one run (results row, trace, vmcore files) and the
    collector's answers for a sample of pfns."""
    from kdumpsim.formats.vmcore import write_filtered_elf, write_vmcore
    from kdumpsim.measure import simulate
    from kdumpsim.measure.record import run_record

    run = simulate(load_named(model, *overrides), seed)
    out: dict[str, Any] = {"record": json.loads(json.dumps(run_record(run), sort_keys=True, default=str))}
    buf = io.StringIO()
    run.trace.write_jsonl(buf)
    out["trace"] = _sha(buf.getvalue().encode())
    out["metrics"] = _sha(json.dumps(run.metrics, sort_keys=True, default=str).encode())
    copy = run.copy
    if copy is not None and copy.collector == "makedumpfile":
        hi = copy.spans[-1][1]
        rng = np.random.default_rng(seed)
        sample = sorted(set(rng.integers(0, hi, 400).tolist())
                        | set(copy.overrides) | set(run.machine.memory.touched_pfns()))
        out["probe"] = _sha(json.dumps([[p, copy.read_by_makedumpfile(p), copy.page_read_time(p),
                                         copy.memmap_read_time(p)] for p in sample]).encode())
        out["counts"] = [copy.pages_read(), copy.zero_pages(), copy.keep_set_changed(),
                         copy.struct_pages_changed, len(copy.overrides)]
        out["dumpable"] = _sha(np.packbits(copy.dumpable(0, hi)).tobytes())
        offs = sorted({int(o) for o in rng.integers(0, run.vmcore.size, 200)})
        out["offsets"] = _sha(json.dumps([[o, copy.read_time(o), copy.kept(o)] for o in offs]).encode())
    if files and run.vmcore is not None:
        with tempfile.TemporaryDirectory() as d:
            write_vmcore(run, Path(d) / "vmcore")
            write_filtered_elf(run, Path(d) / "elf")
            out["vmcore"] = _sha((Path(d) / "vmcore").read_bytes())
            out["filtered_elf"] = _sha((Path(d) / "elf").read_bytes())
    return out


def all_fingerprints() -> dict[str, Any]:
    return {f"{name}/{seed}": fingerprint(model, ov, seed, files)
            for name, (model, ov, seeds, files) in CASES.items() for seed in seeds}


if __name__ == "__main__":
    DATA.write_text(json.dumps(all_fingerprints(), indent=1, sort_keys=True) + "\n")
