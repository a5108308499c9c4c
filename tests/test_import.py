"""`kdumpsim import` (issue 16 item 1): each fixture tree gives a model that
validates and runs; the kernel location and reservation match its /proc/iomem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kdumpsim.cli.main import main
from kdumpsim.config.model import load_model
from kdumpsim.importer.host import check, import_tree

DATA = Path(__file__).resolve().parent / "data" / "import"
TREES = ["host", "lab-guest", "server-2s"]


def _iomem_lines(tree: str, name: str) -> list[tuple[int, int]]:
    out = []
    for line in (DATA / tree / "proc" / "iomem").read_text().splitlines():
        m = re.match(r"^\s+([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        if m and m.group(3) == name:
            out.append((int(m.group(1), 16), int(m.group(2), 16)))
    return out


@pytest.mark.parametrize("tree", TREES)
def test_import_validates_and_runs(tree: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"{tree}.yaml"
    assert main(["import", "--root", str(DATA / tree), "-o", str(out)]) == 0
    assert main(["validate", str(out)]) == 0
    assert main(["run", str(out), "--quiet"]) == 0
    assert load_model(out).name


@pytest.mark.parametrize("tree", TREES)
def test_kernel_and_reservation_match_proc_iomem(tree: str) -> None:
    imp = import_tree(DATA / tree)
    code, bss = _iomem_lines(tree, "Kernel code"), _iomem_lines(tree, "Kernel bss")
    assert imp.kernel == (code[0][0], bss[0][1])
    crash = _iomem_lines(tree, "Crash kernel")
    assert imp.crash_kernel == (crash[0] if crash else None)
    # the model's first kernel sits where /proc/iomem says (its Kernel lines, [start, end))
    from kdumpsim.machine.layout import Machine as _Machine
    lines = sorted((s, e + 1) for n in ("Kernel code", "Kernel rodata", "Kernel data", "Kernel bss")
                   for s, e in _iomem_lines(tree, n))
    assert _Machine(load_model_text(imp.yaml_text), 0).kernel_ranges == lines
    if crash:
        cfg = load_model_text(imp.yaml_text)
        from kdumpsim.kexec.load import kexec_load
        from kdumpsim.machine.layout import Machine
        m = Machine(cfg, 0)
        kexec_load(m)
        assert (m.reservation.start, m.reservation.end - 1) == crash[0]
    assert check(imp) is None


def load_model_text(text: str):
    from kdumpsim.config.model import validate_model
    return validate_model(yaml.safe_load(text), "<imported>")


def test_lab_guest_matches_the_lab_run() -> None:
    imp = import_tree(DATA / "lab-guest")
    assert imp.raw["kexec"]["crashkernel"] == "160M@336M"
    assert imp.kernel == (0x0B000000, 0x0E3FFFFF)
    [nic] = imp.raw["devices"]
    assert nic["kind"] == "nic_rx_ring" and nic["descriptors"] == 256 and nic["name"] == "eth0"
    assert any("virtio-blk" in u for u in imp.unclassified)


def test_server_devices_iommu_and_topology() -> None:
    imp = import_tree(DATA / "server-2s")
    raw = imp.raw
    assert raw["cpus"] == {"count": 16, "sockets": 2} and raw["memory"]["numa_nodes"] == 2
    assert raw["topology"]["iommu"]["vendor"] == "intel"
    kinds = {d["name"]: (d["kind"], d["bus"]) for d in raw["devices"]}
    assert kinds == {"eth0": ("nic_rx_ring", "pci0"), "eth1": ("nic_rx_ring", "pci0"),
                     "eno1": ("nic_rx_ring", "pci1"), "nvme0": ("storage", "pci1")}
    assert [u for u in imp.unclassified if "mlx5_core" in u]
    assert "# /sys/bus/pci/devices/0000:99:00.0: [144d:a808]" in imp.yaml_text


def test_every_imported_value_names_its_file() -> None:
    text = import_tree(DATA / "server-2s").yaml_text
    for key in ("count:", "sockets:", "numa_nodes:", "iomem:", "crashkernel:", "iommu:", "buses:"):
        line = next(x for x in text.splitlines() if x.strip().startswith(key))
        assert "# " in line and ("/" in line.split("#", 1)[1]), line
    for line in text.splitlines():
        if line.startswith("  - name:"):
            assert "/sys/bus/pci/devices/" in line


def test_host_without_reservation_says_so() -> None:
    imp = import_tree(DATA / "host")
    assert imp.crash_kernel is None and imp.raw["kexec"]["crashkernel"] == "256M"
    assert any("reserves no crash kernel" in n for n in imp.notes)


@pytest.mark.parametrize("iomem, words", [
    ("00000000-00000000 : System RAM\n00000000-00000000 : Reserved\n", "without root"),
    ("garbage here\n", "line 1"),
    ("", "empty"),
])
def test_bad_iomem_is_one_line_exit_2(tmp_path: Path, capsys, iomem: str, words: str) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "iomem").write_text(iomem)
    assert main(["import", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "proc/iomem" in err


def test_missing_root_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["import", "--root", str(tmp_path / "nope")]) == 2
    assert main(["import", "--root", str(tmp_path)]) == 2
    assert "proc/iomem: no such file" in capsys.readouterr().err


def _with_kdump_files(tmp_path: Path, kernel_rel: str, initrd_rel: str, release: str | None = None) -> Path:
    import shutil
    import struct
    root = tmp_path / "tree"
    shutil.copytree(DATA / "lab-guest", root, symlinks=True)
    head = bytearray(40 * 512)                  # a bzImage setup header: 39 setup sectors, protocol 2.15
    head[0x1F1] = 39
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)
    struct.pack_into("<I", head, 0x260, 48 * 1024 * 1024)
    for rel, data in ((kernel_rel, bytes(head) + bytes(1 << 20)), (initrd_rel, bytes(3_000_000))):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if release:
        (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
        (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    return root


@pytest.mark.parametrize("kernel_rel, initrd_rel, release", [
    ("var/lib/kdump/vmlinuz", "var/lib/kdump/initrd.img", None),                        # Debian kdump-tools
    ("boot/vmlinuz-6.1.0-1", "boot/initramfs-6.1.0-1kdump.img", "6.1.0-1")])          # RHEL kdumpctl
def test_the_kdump_kernel_and_initrd_set_the_segments_and_the_need(tmp_path: Path, kernel_rel: str,
                                                                   initrd_rel: str, release: str | None) -> None:
    """The initrd kexec -p loads decides most of the capture kernel's memory need: the
    imported model takes its size (and the kernel's from its setup header), named."""
    root = _with_kdump_files(tmp_path, kernel_rel, initrd_rel, release)
    imp = import_tree(root)
    kx = imp.raw["kexec"]
    assert (kx["capture_kernel_size"], kx["capture_kernel_init_size"], kx["initrd_size"]) == \
        (1 << 20, 48 * 1024 * 1024, 3_000_000)
    assert f"initrd_size: 3000000   # {root / initrd_rel}: its size" in imp.yaml_text
    cfg = load_model_text(imp.yaml_text)
    assert cfg.kexec.initrd_size == 3_000_000 and cfg.kexec.capture_kernel_init_size == 48 * 1024 * 1024
    bare = import_tree(DATA / "lab-guest")
    assert "initrd_size" not in bare.raw["kexec"] and any("kdump initrd was not found" in n for n in bare.notes)
    # given on the command line, a file wins over the tree's
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1000))
    assert import_tree(root, kdump_initrd=other).raw["kexec"]["initrd_size"] == 1000


def test_a_kdump_kernel_that_is_not_a_vmlinuz_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"not a kernel" * 100)
    assert main(["import", "--root", str(DATA / "lab-guest"), "--kdump-kernel", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not a readable vmlinuz" in err[0]
