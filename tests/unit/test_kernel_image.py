"""The capture kernel as kexec loads it: a bzImage's protected-mode part into a
segment as big as its setup header's init_size (docs/SOURCES.md §1)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kdumpsim import defaults as D
from kdumpsim.errors import ConfigError, LayoutError
from kdumpsim.formats.bzimage import BzImageError, read_bzimage
from kdumpsim.kexec.load import kexec_load
from kdumpsim.machine.layout import Machine
from kdumpsim.measure import simulate

LAB_VMLINUZ = sorted(Path.home().glob(".cache/kdumpsim-lab/kernel-*/boot/vmlinuz-*"))


def _bzimage(path: Path, setup_sects: int = 39, payload: int = 0x7D8200, init_size: int = 0x3F98000,
             protocol: int = 0x20F) -> Path:
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, protocol)
    struct.pack_into("<I", head, 0x230, 0x200000)
    struct.pack_into("<I", head, 0x260, init_size)
    path.write_bytes(bytes(head) + bytes(payload))
    return path


def test_setup_header_gives_bufsz_and_memsz(tmp_path):
    bz = read_bzimage(_bzimage(tmp_path / "vmlinuz"))
    assert (bz.payload_size, bz.init_size, bz.kernel_alignment) == (0x7D8200, 0x3F98000, 0x200000)


@pytest.mark.parametrize("bad, match", [({"protocol": 0x209}, "offset 0x206"), ({"init_size": 0x1000}, "offset 0x260")])
def test_bad_headers_name_the_offset(tmp_path, bad, match):
    with pytest.raises(BzImageError, match=match):
        read_bzimage(_bzimage(tmp_path / "vmlinuz", **bad))


def test_the_kernel_segment_is_init_size_and_purgatory_hashes_it(model):
    image = kexec_load(Machine(model("modern-x86_64"), 0))
    kernel = image.segment("kernel")
    assert len(kernel.data) == D.CAPTURE_KERNEL_SIZE_MODERN and kernel.memsz == D.CAPTURE_KERNEL_INIT_SIZE_MODERN
    assert (kernel.start, kernel.memsz) in image.sha256_regions
    run = simulate(model("modern-x86_64", "devices=[]"), 0)
    hashed = sum(s.memsz for s in run.image.segments if s.hashed)
    rate = run.timing.sha256_rate
    took = run.phase["purgatory_end"] - run.phase["purgatory_start"]
    assert took >= hashed / rate * 1e9 * 0.99          # the time follows from what is hashed


def test_a_model_can_load_a_real_vmlinuz(model, tmp_path):
    path = LAB_VMLINUZ[0] if LAB_VMLINUZ else _bzimage(tmp_path / "vmlinuz")
    bz = read_bzimage(path)
    cfg = model("modern-x86_64", f"kexec.capture_kernel_image={path}")
    kernel = kexec_load(Machine(cfg, 0)).segment("kernel")
    assert len(kernel.data) == bz.payload_size and kernel.memsz == -(-bz.init_size // 4096) * 4096


def test_image_and_sizes_together_are_refused(model, tmp_path):
    with pytest.raises(ConfigError, match="either capture_kernel_image or the sizes"):
        model("modern-x86_64", f"kexec.capture_kernel_image={_bzimage(tmp_path / 'v')}", "kexec.capture_kernel_size=8M")


def test_48m_with_a_28m_initramfs_does_not_fit(small_modern):
    with pytest.raises(LayoutError, match="init_size.*do not fit in crashkernel=48M"):
        simulate(small_modern("kexec.crashkernel=48M"), 0)
