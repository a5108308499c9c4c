"""kexec_file_load (`kexec -s -p`): the kernel's segment layout, its ELF core
headers, its digest regions, and crash hotplug's unhashed elfcorehdr (6.6)."""

from __future__ import annotations

import hashlib
import json

import pytest

from kdumpsim import defaults as D
from kdumpsim.crash.run import run_crash
from kdumpsim.errors import ConfigError
from kdumpsim.formats import elf
from kdumpsim.kexec import load_capture_kernel
from kdumpsim.kexec.file_load import hotplug_elfcorehdr_size, params_size
from kdumpsim.machine.layout import Machine
from kdumpsim.measure import simulate
from kdumpsim.units import MiB

PAGE = D.PAGE_SIZE


def _image(cfg):
    m = Machine(cfg, 0)
    return m, load_capture_kernel(m)


def _phdrs(data: bytes) -> list[elf.Phdr]:
    lay = elf.layout_for(elf.ELFCLASS64)
    e = lay.unpack_ehdr(data[:lay.ehdr_size])
    return [lay.unpack_phdr(data, e.e_phoff + i * lay.phdr_size) for i in range(e.e_phnum)]


def test_the_modern_models_default_to_kexec_file_load_and_the_paper_ones_do_not(model):
    assert model("modern-x86_64").kexec.method == "kexec_file_load"
    assert model("rhel8-x86_64").kexec.method == "kexec_file_load"          # RHEL 8 x86_64: KEXEC_ARGS="-s"
    assert model("paper-i386-2005").kexec.method == "kexec_load"
    assert model("paper-i386-2004").kexec.method == "kexec_load"


@pytest.mark.parametrize("name, sets, field", [
    ("paper-i386-2005", ["kexec.method=kexec_file_load"], "kexec.method"),
    ("modern-x86_64", ["kexec.skip_checks=true"], "kexec.skip_checks"),
])
def test_kexec_file_load_refuses_what_the_kernel_does_not_do(model, name, sets, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        model(name, *sets)


def test_segments_are_placed_as_bzimage64_load_adds_them(small_modern):
    m, image = _image(small_modern())
    r = m.reservation
    assert image.method == "kexec_file_load"
    assert [s.name for s in image.segments] == ["elfcorehdr", "purgatory", "params", "kernel", "initrd"]
    hdr, purg, params, kernel, initrd = image.segments
    assert hdr.start == r.start                                   # bottom-up: the reservation's start
    assert purg.end == r.end                                      # top-down from the reservation's end
    assert params.end == purg.start and params.memsz == 2 * PAGE  # boot_params + cmdline + setup_data
    assert kernel.start % D.CAPTURE_KERNEL_ALIGN_MODERN == 0 and kernel.end <= params.start
    assert kernel.start == (params.start - kernel.memsz) // D.CAPTURE_KERNEL_ALIGN_MODERN * D.CAPTURE_KERNEL_ALIGN_MODERN
    assert kernel.memsz == D.CAPTURE_KERNEL_INIT_SIZE_MODERN and initrd.end == kernel.start
    assert all(s.memsz % PAGE == 0 and r.start <= s.start and s.end <= r.end for s in image.segments)
    assert image.backup_src is None and image.segment("backup") is None
    assert image.cmdline == f"elfcorehdr={hdr.start:#x} irqpoll nr_cpus=1 reset_devices"
    assert params.data[PAGE:PAGE + len(image.cmdline) + 1] == image.cmdline.encode() + b"\0"
    assert len(params.data) == params_size(len("irqpoll nr_cpus=1 reset_devices") + 1)


def test_the_digest_covers_every_segment_but_purgatory_in_load_order(small_modern):
    _, image = _image(small_modern())
    hashed = [s for s in image.segments if s.name != "purgatory"]
    assert image.sha256_regions == [(s.start, s.memsz) for s in hashed]
    h = hashlib.sha256()
    for s in hashed:
        h.update(s.data + bytes(s.memsz - len(s.data)))
    assert image.sha256_digest == h.digest()


def test_crash_hotplug_leaves_the_elfcorehdr_out_of_the_digest(small_modern):
    _, six1 = _image(small_modern())
    _, six6 = _image(small_modern("kernel.version=6.6"))
    hdr1, hdr6 = six1.segment("elfcorehdr"), six6.segment("elfcorehdr")
    assert hdr1.hashed and (hdr1.start, hdr1.memsz) in six1.sha256_regions
    assert not hdr6.hashed and all(start != hdr6.start for start, _ in six6.sha256_regions)
    assert hdr6.memsz == -(-hotplug_elfcorehdr_size() // PAGE) * PAGE and hdr6.data == hdr1.data


def test_the_kernels_headers_leave_out_the_low_1m_and_the_reservation(small_modern):
    m, image = _image(small_modern("kexec.crashkernel_cma=32M"))
    hdr = image.segment("elfcorehdr")
    assert len(hdr.data) % D.KEXEC_FILE_ELF_CORE_HEADER_ALIGN == 0
    phdrs = _phdrs(hdr.data)
    notes = [p for p in phdrs if p.p_type == elf.PT_NOTE]
    assert [p.p_offset for p in notes] == m.crash_notes + [m.vmcoreinfo_addr]   # one per possible CPU, then VMCOREINFO
    assert [p.p_memsz for p in notes] == [m.crash_note_size] * m.ncpus + [D.VMCOREINFO_NOTE_SIZE]
    text, *ram = [p for p in phdrs if p.p_type == elf.PT_LOAD]
    ks, ke = m.kernel_image
    assert (text.p_paddr, text.p_memsz, text.p_vaddr) == (ks, ke - ks, D.START_KERNEL_MAP + ks)
    assert ram[0].p_paddr == 0x100000                              # the RAM at 0x1000 is below 1 MiB
    spans = m.reservation.spans + [m.cma]
    covered = sum(p.p_memsz for p in ram)
    assert covered == m.ram_total - 0x9EC00 - sum(e - s for s, e in spans)
    assert all(p.p_offset == p.p_paddr and p.p_vaddr == m.page_offset + p.p_paddr for p in ram)


def test_4_18_keeps_a_backup_region_that_its_purgatory_fills(small_modern):
    m, image = _image(small_modern("kernel.version=4.18"))
    assert [s.name for s in image.segments][:2] == ["backup", "elfcorehdr"]
    backup = image.segment("backup")
    assert backup.start == m.reservation.start and image.backup_src == (0x1000, 0x9EC00)
    low = [p for p in _phdrs(image.segment("elfcorehdr").data) if p.p_type == elf.PT_LOAD][1]
    assert (low.p_paddr, low.p_memsz, low.p_offset) == (0x1000, 0x9EC00, backup.start)
    run = run_crash(small_modern("kernel.version=4.18", "devices=[]"), 0)
    assert run.purgatory_result == "ok" and run.trace.first("backup_done") is not None


def _stale_into(seg, start: str) -> str:
    return "devices=" + json.dumps([{"name": "fw0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "4K",
                                     "chunk": "4K", "period": "100s", "start": start,
                                     "placement": {"mode": "stale", "start": seg.start, "end": seg.start + PAGE}}])


def test_dma_into_the_elfcorehdr_before_purgatory_is_caught_on_6_1_and_not_on_6_6(small_modern):
    for version, caught in (("6.1", True), ("6.6", False)):
        _, image = _image(small_modern(f"kernel.version={version}"))
        run = run_crash(small_modern(f"kernel.version={version}", _stale_into(image.segment("elfcorehdr"), "-1ms")), 0)
        if caught:
            assert run.purgatory_result == "mismatch" and "purgatory_end" not in run.phase
        else:                      # purgatory passes; vmcore_init then reads the DMA's bytes as headers
            assert run.purgatory_result == "ok"
            assert run.vmcore is None and "not sane" in run.vmcore_error


def test_purgatory_takes_the_time_of_what_it_hashes(small_modern):
    took = {}
    for sets in ((), ("kernel.version=6.6",), ("kexec.method=kexec_load",)):
        run = simulate(small_modern("devices=[]", *sets), 0)
        hashed = sum(s.memsz for s in run.image.segments if s.hashed)
        spans = run.hash_times.values()
        took[sets] = max(e for _, e in spans) - min(s for s, _ in spans)        # the sha256, not the backup copy
        assert took[sets] == pytest.approx(hashed / run.timing.sha256_rate * 1e9, rel=1e-3)
    # kexec_load also hashes its 636 KiB backup (as zeros) and 16 KiB headers: longer
    assert took[("kernel.version=6.6",)] < took[()] < took[("kexec.method=kexec_load",)]


def test_kexec_file_needs_the_reservation_to_hold_the_segments(small_modern):
    from kdumpsim.errors import LayoutError
    with pytest.raises(LayoutError, match="too small"):
        # init_size + initrd fit in 92M, but not with the 2 MiB-aligned kernel and the small segments
        _image(small_modern("kexec.crashkernel=92M@512M", "kexec.initrd_size=28M"))
    assert 92 * MiB > D.CAPTURE_KERNEL_INIT_SIZE_MODERN + D.INITRD_SIZE_MODERN


def test_6_6_describes_every_possible_cpu_and_vmcore_drops_the_empty_notes(small_modern):
    """cpus.possible=8 with 4 present: 6.1 (for_each_present_cpu) has 4 CPU
    PT_NOTEs, 6.6 (for_each_possible_cpu) 8; the 4 hotplug slots' buffers stay
    zero, so /proc/vmcore holds the same 4 NT_PRSTATUS notes either way."""
    counts = {}
    for version in ("6.1", "6.6"):
        run = simulate(small_modern("cpus.possible=8", "devices=[]", f"kernel.version={version}"), 0)
        m = run.machine
        notes = [p for p in _phdrs(run.image.segment("elfcorehdr").data) if p.p_type == elf.PT_NOTE]
        counts[version] = len(notes) - 1
        assert len(m.hotplug_notes) == 4
        assert run.vmcore.note_sources == m.crash_notes + [m.vmcoreinfo_addr]
        assert sorted(run.vmcore.dropped_notes) == (sorted(m.hotplug_notes) if version == "6.6" else [])
    assert counts == {"6.1": 4, "6.6": 8}


def test_possible_cpus_cannot_be_fewer_than_present(small_modern):
    with pytest.raises(ConfigError, match=r"cpus\.possible"):
        small_modern("cpus.possible=2")


def test_a_command_line_past_cmdline_size_is_refused(small_modern):
    from kdumpsim.errors import LayoutError
    _image(small_modern("kexec.append=" + "x" * (2048 - 31)))          # 2017 + NUL + 30 fits
    with pytest.raises(LayoutError, match="2048-byte limit"):
        _image(small_modern("kexec.append=" + "x" * (2048 - 30)))
