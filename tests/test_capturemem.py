"""The capture kernel in its reservation over time (kdumpsim.crash.capturemem):
DMA into its pages matters only while they are in use, and names what it hit;
a reservation too small for its run is capture_oom; validate states the minimum."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdumpsim.config.model import load_model, model_from_dict
from kdumpsim.crash.capturemem import dump_tool_memory
from kdumpsim.measure import simulate
from kdumpsim.units import GiB, KiB, MiB

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "modern-x86_64.yaml"
# A small machine (as tests/test_vmcore.py): 95 MiB + 128 MiB below 4 GiB, 64 MiB above.
SMALL = ('memory.iomem=["00001000-0009fbff : System RAM", "00100000-05ffffff : System RAM", '
         '"06000000-07ffffff : reserved", "08000000-0fffffff : System RAM", "10000000-fedfffff : PCI Bus", '
         '"100000000-103ffffff : System RAM"]', "kexec.crashkernel=96M", "kexec.capture_kernel_init_size=16M",
         "kexec.initrd_size=4M", "cpus.count=2", "cpus.panic_cpu=1", "cpus.unresponsive={}", "devices=[]")


def _run(*extra: str, seed: int = 1):
    return simulate(load_model(MODEL, [*SMALL, *extra]), seed)


def _poker(addr: int, start: float, duration: float) -> str:
    """A stale-placed cyclic engine writing one page at `addr` every 1 ms in [start, start+duration) s."""
    return (f"devices=[{{name: poke0, kind: cyclic, bus: pcie0, buffer_size: 4K, chunk: 4K, period: 1ms, "
            f"capture_driver: false, start: {round(start * 1e6)}us, duration: {round(duration * 1e6)}us, "
            f"placement: {{mode: stale, start: {addr:#x}, end: {addr + 4096:#x}}}}}]")


def test_a_quiet_run_lays_the_capture_kernel_out_and_ends_ok():
    run = _run()
    mem = run.capture_mem
    assert run.outcome == "ok" and mem.hits == {} and mem.oom is None
    res = run.machine.reservation
    assert res.start <= mem.kernel_at < res.end and mem.kernel_at % (2 * MiB) == 0      # KASLR's 2 MiB slots
    kinds = {u.kind for u in mem.uses}
    assert {"kernel_image", "kernel_memblock", "kernel_runtime", "initramfs", "dump_buffers", "page_cache"} <= kinds
    assert [e.kind for e in run.trace if e.kind in ("kernel_relocated", "initrd_freed")] == ["kernel_relocated",
                                                                                             "initrd_freed"]


def test_kaslr_follows_the_seed():
    assert _run(seed=1).capture_mem.kernel_at == _run(seed=1).capture_mem.kernel_at
    assert len({_run(seed=s).capture_mem.kernel_at for s in range(1, 6)}) > 1


def test_kaslr_is_off_with_nokaslr_or_more_than_four_memmap_options():
    """kaslr.c: `nokaslr`, or memmap_too_large (a fifth memmap=): the kernel runs where kexec loaded it."""
    for seed in (1, 2, 3):
        base = _run(seed=seed)
        kernel = base.image.segment("kernel").start
        assert _run("kexec.append=nokaslr", seed=seed).capture_mem.kernel_at == kernel
        five = " ".join(f"memmap={n}K$0x{0x9f000 + n:x}" for n in range(1, 6))
        assert _run(f"kexec.append={five}", seed=seed).capture_mem.kernel_at == kernel
    four = " ".join(f"memmap={n}K$0x{0x9f000 + n:x}" for n in range(1, 5))
    assert len({_run(f"kexec.append={four}", seed=s).capture_mem.kernel_at for s in range(1, 6)}) > 1


def test_dma_into_the_kernel_image_crashes_the_capture_kernel_and_names_it():
    base = _run()
    at = base.capture_mem.kernel_at + 64 * KiB
    jump = base.phase["capture_boot_start"] / 1e9
    run = _run(_poker(at, jump + 1.0, 0.01))
    assert run.outcome == "capture_kernel_crashed" and run.capture_crashed == "kernel_image"
    hit = next(e for e in run.trace if e.kind == "dma_into_capture_memory")
    assert hit.details["hit"] == "kernel_image" and hit.details["effect"] == "capture_kernel_crashed"
    assert "dump_end" not in run.phase and any(e.kind == "capture_kernel_crashed" for e in run.trace)
    # the same page before the capture kernel exists is free reservation memory: nothing happens
    before = _run(_poker(at, 0.0, min(0.1, jump / 2)))
    assert before.outcome == "ok" and before.capture_mem.hits == {}


def test_the_initrd_matters_until_populate_rootfs_frees_it():
    base = _run()
    seg = base.image.segment("initrd")
    freed = base.capture_mem.initrd_freed / 1e9
    jump = base.phase["capture_boot_start"] / 1e9
    addr = seg.start
    early = _run(_poker(addr, jump + 0.001, 0.002))              # before it is unpacked: the rootfs is wrong
    assert early.outcome == "capture_kernel_corrupted" and "initrd" in early.capture_corrupted
    late = _run(_poker(addr, freed + 0.01, 0.01))                 # freed, not yet handed out again
    assert late.outcome == "ok" and late.capture_mem.hits == {}
    assert early.metrics["regions"]["initrd"]["bytes"] > 0 and late.metrics["regions"]["initrd"]["bytes"] == 0


def test_dma_into_the_dump_tools_pages_damages_the_dump_file():
    base = _run()
    mem = base.capture_mem
    buf = next(u for u in mem.uses if u.kind == "dump_buffers")
    start = base.phase["dump_start"] / 1e9
    run = _run(_poker(buf.start, start + 0.001, 0.005))
    assert run.outcome == "ok_dump_corrupted" and run.capture_mem.dump_file_damage > 0
    assert run.metrics["capture_memory_hits"].keys() == {"dump_buffers"}
    from kdumpsim.measure.record import run_record
    row = run_record(run)
    assert row["capture_memory_hit"] == "dump_buffers" and row["dump_file_corrupted_bytes"] > 0


def test_crashkernel_high_puts_swiotlb_in_the_low_region():
    run = simulate(load_model(MODEL, ["kexec.crashkernel=256M,high"]), 1)
    low = run.machine.reservation.low
    swiotlb = [u for u in run.capture_mem.uses if u.kind == "swiotlb"]
    assert low is not None and sum(u.end - u.start for u in swiotlb) == 64 * MiB
    assert all(low[0] <= u.start and u.end <= low[1] for u in swiotlb) and run.outcome != "capture_oom"


def test_a_reservation_too_small_for_the_run_is_capture_oom():
    """The segments fit (kexec loads them), the unpacked 28M initramfs does not."""
    cfg = load_model(MODEL, ["kexec.crashkernel=128M"])
    run = simulate(cfg, 1)
    assert run.outcome == "capture_oom" and run.capture_mem.oom == "the unpacked initramfs"
    assert "dump_start" not in run.phase
    oom = next(e for e in run.trace if e.kind == "capture_oom")
    assert oom.details["need"] > oom.details["reservation"]


def test_makedumpfile_bitmaps_grow_with_ram_then_cyclic_mode_caps_them():
    dd = dump_tool_memory("dd", 8 * GiB)
    assert dd == dump_tool_memory("dd", 1024 * GiB)
    small, big, huge = (dump_tool_memory("makedumpfile", r) for r in (8 * GiB, 32 * GiB, 1024 * GiB))
    assert small < big < huge
    assert huge == dump_tool_memory("makedumpfile", 4096 * GiB) == 2 * 4 * MiB + 4 * MiB    # 2 x the 4 MiB cap


def _validate(*sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kdumpsim", "validate", str(MODEL)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_validate_states_the_minimum_and_says_too_small():
    ok = _validate()
    assert ok.returncode == 0 and "minimum    crashkernel=" in ok.stdout and ": ok" in ok.stdout
    assert "initramfs" in ok.stdout and "dump tool" in ok.stdout
    small = _validate("kexec.crashkernel=128M")
    assert small.returncode == 0 and "TOO SMALL" in small.stdout
    refused = _validate("kexec.crashkernel=48M")                   # the issue's case: kexec cannot even load it
    assert refused.returncode == 2 and refused.stdout == ""
    assert "needs at least crashkernel=" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_the_stated_minimum_is_where_runs_stop_running_out_of_memory():
    """validate's minimum at a fixed address: that size runs, 1M less is capture_oom."""
    import re
    out = _validate("kexec.crashkernel=256M@1G").stdout
    least = int(re.search(r"minimum    crashkernel=(\d+)M", out).group(1))
    assert 96 < least < 256
    at_least = simulate(load_model(MODEL, [f"kexec.crashkernel={least}M@1G", "devices=[]"]), 1)
    below = simulate(load_model(MODEL, [f"kexec.crashkernel={least - 1}M@1G", "devices=[]"]), 1)
    assert at_least.outcome == "ok" and below.outcome == "capture_oom"


@pytest.mark.parametrize("collector", ["dd", "makedumpfile"])
def test_the_need_takes_the_collector(collector):
    from kdumpsim.crash.capturemem import capture_need
    need = capture_need({"kernel": 64 * MiB, "initrd": 28 * MiB}, [(0, 256 * MiB)], 8 * GiB, collector)
    assert need.parts["dump_tool"] == dump_tool_memory(collector, 8 * GiB)
    assert need.minimum >= need.boot


def test_timing_profiles():
    cfg = model_from_dict({"name": "t", "arch": "x86_64", "cpus": {"count": 1},
                           "memory": {"iomem": ["00100000-3fffffff : System RAM"]},
                           "kexec": {"crashkernel": "256M"}, "timing": {"profile": "qemu-tcg", "dump_start_delay": "1s"}})
    assert cfg.timing.capture_boot == 2_014_000_000          # the lab's median capture kernel start -> /init
    assert cfg.timing.dump_start_delay == 1_000_000_000      # an explicit field overrides the profile
    default = load_model(MODEL)
    assert default.timing.profile == "server" and default.timing.capture_boot == 4_500_000_000


def test_a_cma_area_is_capture_kernel_ram_and_dma_into_its_used_pages_crashes_it():
    """crashkernel=,cma pages are handed to the capture kernel as RAM: its allocator
    uses them, so a stalled controller still writing there after the jump hits them."""
    nvme = ("devices=[{name: nvme0, kind: storage, bus: pcie1, queues: 8, commands: 256, command_size: 64K, "
            "placement: {mode: cma}, latency_median: 1s, latency_p999: 30s}]")
    run = simulate(load_model(MODEL, ["cpus.count=8", "kexec.crashkernel_cma=512M", nvme,
                                      "timing.cma_dma_wait=0s"]), 3)
    cma = run.machine.cma
    assert cma is not None and any(cma[0] <= u.start and u.end <= cma[1] for u in run.capture_mem.uses)
    assert run.outcome == "capture_kernel_crashed"
    hit = next(e for e in run.trace if e.kind == "dma_into_capture_memory")
    assert cma[0] <= hit.details["addr"] < cma[1]
