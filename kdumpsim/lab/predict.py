"""predict: the lab machine of a run directory as a kdumpsim model, simulated.

    model = export_model(result, run_record, profile, timing="run")
    predicted = predict(rundir)        # writes RUNDIR/model.yaml and RUNDIR/predicted.json

The model is the lab machine as measured: its System RAM ranges, the
crashkernel reservation at its real base, one CPU, the NIC as a device
(`nic_rx_ring` for e1000, `virtio_net`) with the ring size N, the free
descriptor count measured at the panic (`posted`), the scenario's frame rate
and length, periodic arrivals (the lab's sender is paced, not Poisson), the
traffic window (the sender runs until the dump ends), whether the capture
kernel loads the NIC driver and virtio_pci; and a timing block.

Timing, two sources:
- `run` (default): the run's own measured phase times. The simulation then
  checks the device model (how many frames land, in how many pages, why the
  DMA stops) given when things happened; it cannot check the times.
- `profile`: the lab's timing profile (data/qemu-tcg-profile.yaml, medians of
  named runs). This is the prediction without looking at the run; compare
  checks its phase times against the run within +-30 %.

The RX buffers: where result.json lists every posted buffer (`rx_buffers.addrs`,
measured since this module exists), the model puts them at those addresses
(placement mode `given`, in the order the NIC fills them; the ring at
`rx_buffers.ring_phys`; the kernel image where /proc/iomem showed its code,
rodata and data), and the
set of DMA-changed dumped pages can be compared page for page. Older results
list only a sample: the model's allocator places page_frag slices itself and
only counts are compared.

predicted.json uses the figure names of result.json: `post_panic.landed_old_ring`,
`post_panic.in_vmcore`, `dma_stop.reason`, `pages.classes.payload/ring`,
`phases_s.*`.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from kdumpsim.config.model import ModelConfig, model_from_dict
from kdumpsim.crash.run import CrashRun
from kdumpsim.measure import simulate

from . import LabError

PROFILE = Path(__file__).resolve().parent / "data" / "qemu-tcg-profile.yaml"
PAGE = 4096
NIC = "nic0"
RUNNING_AT_END = "running_at_end"      # still writing when the dump copy ended
# The lab's capture initramfs (busybox, the disk and NIC modules; initrd-capture.gz of
# the lab's image cache, 2026-11-30: 1762818-1763109 bytes across the scenarios): the
# capture kernel unpacks it into its reservation (kdumpsim.crash.capturemem).
LAB_CAPTURE_INITRD = 1763109


def load_profile(path: Path = PROFILE) -> dict[str, float]:
    """{name: value} of the timing profile (seconds; dump_throughput in MB/s)."""
    data = yaml.safe_load(path.read_text())
    out = {}
    for name, entry in data["values"].items():
        measured = [m["value"] for m in entry.get("measured", [])]
        if measured and abs(statistics.median(measured) - entry["value"]) > 1e-3:
            raise LabError(f"{path}: {name} is {entry['value']} but the median of its runs is "
                           f"{statistics.median(measured)}")
        out[name] = float(entry["value"])
    return out


def _hex(v: Any) -> int:
    return int(v, 16) if isinstance(v, str) else int(v)


def _s(x: float) -> str:
    """Seconds as a model duration, to the microsecond."""
    return f"{round(x * 1e6)}us"


def _size(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)


def lab_timing(result: dict, run_record: dict | None, profile: dict[str, float], source: str) -> dict[str, float]:
    """The phase times the model is given, in seconds: capture_kernel_start
    (from the panic), capture_boot, probe (the NIC's reset point, or None),
    dump_start_delay (from /init), dump_throughput (MB/s), traffic_end (from
    the panic; None: until the ring is exhausted)."""
    sc, ph = result["scenario"], result.get("phases_s", {})
    virtio = sc["nic"] == "virtio-net"
    driver = bool(sc["capture_loads_nic"])
    t: dict[str, Any] = {}
    if source == "profile":
        t["capture_kernel_start"] = profile["capture_kernel_start"]
        t["capture_boot"] = profile["capture_boot"]
        if driver:
            t["probe"] = profile["nic_driver_probe"]
        elif virtio and sc["disk"] == "virtio":
            t["probe"] = profile["disk_driver_probe"]
        else:
            t["probe"] = None
        t["dump_start_delay"] = profile["dump_start_delay_nic_driver" if driver else "dump_start_delay"]
        t["dump_throughput"] = profile["dump_throughput"]
    elif source == "run":
        start = ph.get("capture_kernel_start")
        if start is None or ph.get("capture_init") is None or ph.get("dump_start") is None:
            raise LabError("result.json lacks the capture kernel's phase times (capture_kernel_start, "
                           "capture_init, dump_start); use --timing profile")
        t["capture_kernel_start"] = start
        t["capture_boot"] = ph["capture_init"] - start
        if driver:
            t["probe"] = ph["nic_driver_load"] - start
        elif virtio and sc["disk"] == "virtio":
            t["probe"] = ph["disk_driver_load"] - start
        else:
            t["probe"] = None
        t["dump_start_delay"] = ph["dump_start"] - ph["capture_init"]
        t["dump_throughput"] = ph.get("dump_rate_mb_s") or profile["dump_throughput"]
    else:
        raise LabError(f"unknown timing source {source!r} (run | profile)")
    # The sender: paced at rate_pps from the panic until the host stops it after the dump.
    t["traffic_end"] = None
    times = (run_record or {}).get("times", {})
    if "stopped" in times and "cont" in times:
        t["traffic_end"] = times["stopped"] - times["cont"]
    elif source == "profile" or ph.get("dump_end") is None:
        t["traffic_end"] = (t["capture_kernel_start"] + t["capture_boot"] + t["dump_start_delay"]
                            + ph.get("vmcore_bytes", 423288832) / (t["dump_throughput"] * 1e6))
    else:
        t["traffic_end"] = ph["dump_end"]
    return t


def _decrypted_freed(serial: str | None) -> int | None:
    """Bytes of "Freeing unused decrypted memory: NK" in the first kernel's log."""
    m = re.search(r"Freeing unused decrypted memory: (\d+)K", serial or "")
    return int(m.group(1)) * 1024 if m else None


def export_model(result: dict, run_record: dict | None = None, profile: dict[str, float] | None = None,
                 timing: str = "run", given: bool = True, serial: str | None = None) -> dict:
    """The lab machine of `result` (result.json) as a kdumpsim model (a dict, YAML-ready).
    With `given` and a result that lists every RX buffer address (rx_buffers.addrs),
    the buffers are placed at those addresses (placement mode `given`) and the
    kernel image where /proc/iomem showed it."""
    profile = profile if profile is not None else load_profile()
    sc, mach, ring = result["scenario"], result["machine"], result["ring"]
    if sc.get("iommu"):
        raise LabError("predict does not model the IOMMU scenario yet (the lab's IOVAs are not exported)")
    t = lab_timing(result, run_record, profile, timing)
    iomem = []
    for start, end in mach["system_ram"]:
        iomem.append(f"{_hex(start):08x}-{_hex(end) - 1:08x} : System RAM")
    ck_start, ck_end = (_hex(x) for x in mach["crashkernel"])
    posted = ring.get("free_descriptors_at_panic")
    n = ring["ring_len"]
    dev: dict[str, Any] = {
        "name": NIC,
        "start": "0s",
        "packet_rate": float(sc["rate_pps"]),
        "packet_size": int(sc["frame_len"]),
        "arrivals": "periodic",
        "capture_driver": bool(sc["capture_loads_nic"]),
    }
    if sc["nic"] == "e1000":
        dev.update(kind="nic_rx_ring", descriptors=n)
    elif sc["nic"] == "virtio-net":
        dev.update(kind="virtio_net", queue_size=n, virtio_pci=sc["disk"] == "virtio")
    else:
        raise LabError(f"unknown lab NIC {sc['nic']!r}")
    if posted is not None:
        dev["posted"] = int(posted)
    rx = result.get("rx_buffers", {})
    model_kernel: dict[str, Any] = {"version": "6.1"}
    if mach.get("kernel_image"):
        # Kernel code, rodata, data and bss of /proc/iomem. The gaps between them are freed
        # at boot ("Freeing unused kernel image (text/rodata gap) memory"), and so is the
        # tail of the bss line: the lab found RX buffers in both (0x16f4cbc0 in the
        # text/rodata gap, 0x193f78c0 in 0x18310000-0x193fffff; e1000-nodriver-10pps,
        # 2026-11-30). Without the serial log to say how much of bss was freed, bss is left out.
        ranges = sorted((_hex(a), _hex(b)) for a, b in mach["kernel_image"])
        freed = _decrypted_freed(serial)
        if len(ranges) > 1:
            *ranges, (bss0, bss1) = ranges
            if freed is not None and bss1 - freed > bss0:
                # "Freeing unused decrypted memory: NK": the tail of bss..decrypted,
                # up to the 2 MiB-aligned end of the "Kernel bss" line, is given back
                ranges.append((bss0, (bss1 - freed) & ~(PAGE - 1)))
        model_kernel["image"] = [[hex(a), hex(b)] for a, b in ranges]
    if rx.get("addrs") and given:
        # the buffers' real addresses at the panic, in the order the NIC fills them
        placement: dict[str, Any] = {"mode": "given", "addresses": list(rx["addrs"])}
        if rx.get("ring_phys"):
            placement["rings"] = [rx["ring_phys"]]
        dev["placement"] = placement
    if t["probe"] is not None:
        dev["probe_at"] = _s(t["probe"])
    if t["traffic_end"] is not None:
        dev["duration"] = _s(t["traffic_end"])
    boot = t["capture_boot"]
    timing_block = {
        # panic -> capture kernel's first line, lumped into machine_kexec (TCG: purgatory, decompression, early boot)
        "machine_kexec": _s(t["capture_kernel_start"]),
        "capture_boot": _s(boot),
        "vmcore_init": _s(boot),
        "iommu_init": _s(min(boot, 0.5)),
        "driver_init": _s(min(boot, t["probe"] if t["probe"] is not None else boot)),
        "dump_start_delay": _s(t["dump_start_delay"]),
        "dump_throughput": f"{t['dump_throughput']}MB/s",
    }
    return {
        "name": f"lab-{sc['name']}",
        "description": (f"the kdumpsim lab machine of run {sc['name']} (QEMU TCG, {mach['ram_mib']} MiB, "
                        f"crashkernel={_size(ck_end - ck_start)}@{ck_start:#x}); timing from the {timing}"),
        "arch": "x86_64",
        "era": "modern",
        "design": "2005",
        "cpus": {"count": 1},
        "memory": {"iomem": iomem},
        # the lab loads with `kexec -p` of kexec-tools 2.0.25: the kexec_load path
        "kexec": {"crashkernel": f"{_size(ck_end - ck_start)}@{ck_start:#x}", "method": "kexec_load",
                  "initrd_size": LAB_CAPTURE_INITRD},
        "capture": {"collector": "dd"},          # the lab's kdump copies /proc/vmcore with dd
        "kernel": model_kernel,
        "timing": timing_block,
        "devices": [dev],
    }


def figures(run: CrashRun, result: dict | None = None) -> dict:
    """The simulated run's figures, named as in result.json."""
    eng = next(e for e in run.engines if e.name == NIC)
    rings = [(b.phys, b.phys + b.size) for b in eng.rings]
    ns = 1e-9
    payload_writes: list[tuple[int, int, int]] = []      # (time, addr, length)
    ring_writes: list[tuple[int, int, int]] = []
    for w in run.machine.memory.log:
        if w.actor != NIC or w.time <= 0:
            continue
        in_ring = any(s <= w.addr < e for s, e in rings)
        (ring_writes if in_ring else payload_writes).append((w.time, w.addr, w.length))
    chunks = [(c.origin, c.origin + c.size, c.offset) for c in run.vmcore.chunks] if run.vmcore else []
    dump_copy = run.copy

    def read_time(addr: int) -> int | None:
        """When the copy reads `addr` for the last time: kexec-tools' kernel-text
        PT_LOAD holds the kernel image (and the freed gaps in it) a second time,
        and the lab finds a frame or a changed page in either copy."""
        if dump_copy is None:
            return None
        times = [dump_copy.read_time(off + addr - s) for s, e, off in chunks if s <= addr < e]
        return max(times, default=None)

    def changed_pages(writes: list[tuple[int, int, int]]) -> set[int]:
        pages = set()
        for when, addr, length in writes:
            for p in range(addr // PAGE, (addr + length - 1) // PAGE + 1):
                rt = read_time(p * PAGE)
                if rt is not None and when < rt:
                    pages.add(p)
        return pages

    def landed_before_read(when: int, addr: int) -> bool:
        rt = read_time(addr)
        return rt is not None and when < rt

    payload_pages = changed_pages(payload_writes)
    ring_pages = changed_pages(ring_writes) - payload_pages
    ph = run.phase
    jump = ph.get("purgatory_end")
    phases: dict[str, Any] = {}
    if jump is not None:
        phases["capture_kernel_start"] = round(jump * ns, 3)
    if "capture_boot_end" in ph:
        phases["capture_init"] = round(ph["capture_boot_end"] * ns, 3)
    probe = eng.spec.probe_at
    if probe is not None and jump is not None:
        phases["nic_driver_load" if eng.spec.capture_driver else "disk_driver_load"] = round((jump + probe) * ns, 3)
    for name in ("dump_start", "dump_end"):
        if name in ph:
            phases[name] = round(ph[name] * ns, 3)
    if run.vmcore is not None:
        phases["vmcore_bytes"] = run.vmcore.size
    if run.copy is not None:
        phases["dump_rate_mb_s"] = round(run.copy.throughput / 1e6, 1)
    times = sorted(t for t, _, _ in payload_writes)
    return {
        "schema": "kdumpsim-lab-predicted/1",
        "post_panic": {
            "landed_old_ring": len(payload_writes),
            "in_vmcore": sum(landed_before_read(t, a) for t, a, _ in payload_writes),
        },
        "dma_stop": {
            # None: nothing stopped it before the simulated run ended (after the dump)
            "reason": eng.stop_reason or RUNNING_AT_END,
            "stopped_s": round(eng.stopped_at * ns, 3) if eng.stopped_at is not None else None,
            "last_landed_s": round(times[-1] * ns, 3) if times else None,
        },
        "pages": {"classes": {"payload": len(payload_pages), "ring": len(ring_pages)},
                  "dma_changed": len(payload_pages) + len(ring_pages),
                  "dma_pages": [hex(p * PAGE) for p in sorted(payload_pages | ring_pages)]},
        "rx_buffers": {"buffers": len(eng.buffers), "placement": eng.spec.placement.mode,
                       "pages": len({b.phys // PAGE for b in eng.buffers}
                                    | {(b.phys + 259) // PAGE for b in eng.buffers})},
        "phases_s": phases,
        "outcome": run.outcome,
    }


def simulate_model(model: dict, seed: int = 0) -> tuple[ModelConfig, CrashRun]:
    cfg = model_from_dict(model, source=model.get("name", "<lab model>"))
    return cfg, simulate(cfg, seed)


def _fit_jump(model: dict, seed: int) -> dict:
    """The model's own crash path (NMI shootdown, purgatory's sha256 at the modern
    rate, the backup copy) takes some time before machine_kexec's lumped delay:
    shorten the delay by it, so that the capture kernel starts when measured."""
    target = int(model["timing"]["machine_kexec"].removesuffix("us"))
    probe = copy.deepcopy(model)
    probe["timing"]["machine_kexec"] = "0us"
    _, run = simulate_model(probe, seed)
    own_us = run.phase.get("purgatory_end", 0) // 1000
    model["timing"]["machine_kexec"] = f"{max(0, target - own_us)}us"
    return model


def _read_run(rundir: Path) -> tuple[dict, dict | None]:
    path = rundir / "result.json"
    if not path.is_file():
        raise LabError(f"no result.json in {rundir} (run `python -m kdumpsim.lab measure {rundir}` first)")
    result = json.loads(path.read_text())
    rec_path = rundir / "run.json"
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    return result, record


def predict(rundir: str | Path, seed: int = 0, timing: str = "run") -> dict:
    """Export RUNDIR's machine (RUNDIR/model.yaml), simulate it with `timing`
    (run | profile), and also with the profile's times; write RUNDIR/predicted.json."""
    rundir = Path(rundir)
    result, record = _read_run(rundir)
    profile = load_profile()
    serial = (rundir / "serial.log").read_text(errors="replace") if (rundir / "serial.log").is_file() else None
    model = _fit_jump(export_model(result, record, profile, timing, serial=serial), seed)
    (rundir / "model.yaml").write_text(
        f"# exported by `python -m kdumpsim.lab predict {rundir}` (timing: {timing}); kdumpsim run this file\n"
        + yaml.safe_dump(model, sort_keys=False))
    _, run = simulate_model(model, seed)
    predicted = figures(run, result)
    predicted["timing"] = timing
    predicted["seed"] = seed
    predicted["model"] = "model.yaml"
    prof_model = model if timing == "profile" else _fit_jump(
        export_model(result, record, profile, "profile", serial=serial), seed)
    _, prof_run = simulate_model(prof_model, seed)
    prof = figures(prof_run, result)
    predicted["profile"] = {k: prof[k] for k in ("post_panic", "dma_stop", "pages", "phases_s")}
    (rundir / "predicted.json").write_text(json.dumps(predicted, indent=1) + "\n")
    return predicted
