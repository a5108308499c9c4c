"""Lab scenarios take any crashkernel= value and extra capture-kernel
parameters (issue #16: a recommended command line checked in the lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpsim.lab import LabError, qemu, scenario

META = {"vmlinuz": "/boot/vmlinuz", "initrd_first": "/boot/initrd"}


def _append(scen: scenario.Scenario) -> list[str]:
    argv = qemu.command_line(META, scen, Path("/tmp/r"), Path("/tmp/q"), 1, 2, Path("/tmp/d"))
    return argv[argv.index("-append") + 1].split()


def test_crashkernel_and_capture_append_reach_the_command_line() -> None:
    scen = scenario.from_dict({"name": "s", "crashkernel": "128M@64M", "capture_append": ["foo=1", "bar"]})
    words = _append(scen)
    assert "crashkernel=128M@64M" in words and "crashkernel=160M" not in words
    assert "lab_capextra=foo=1,bar" in words
    # the default stays crashkernel_mib
    assert "crashkernel=160M" in _append(scenario.from_dict({"name": "d"}))
    # with the IOMMU, intel_iommu=off comes first and only once
    io = _append(scenario.from_dict({"name": "i", "iommu": True, "capture_append": ["intel_iommu=off", "x=1"]}))
    assert "lab_capextra=intel_iommu=off,x=1" in io


@pytest.mark.parametrize("data,fragment", [
    ({"crashkernel": "128Q"}, "is not SIZE[@OFFSET]"),
    ({"crashkernel": "16M"}, "crashkernel size must be in"),
    ({"crashkernel": "300M"}, "crashkernel size must be in"),
    ({"capture_append": ["a b"]}, "one parameter"),
    ({"capture_append": ["a,b"]}, "one parameter"),
])
def test_bad_values_are_refused(data: dict, fragment: str) -> None:
    with pytest.raises(LabError, match=fragment.replace("[", r"\[")):
        scenario.from_dict({"name": "bad", **data})


def test_a_relative_run_directory_gives_qemu_absolute_paths(tmp_path, monkeypatch):
    """QEMU starts in the run directory: `lab run --out out/lab/x` could not find its QMP socket."""
    from kdumpsim.lab import cycle

    class Started(Exception):
        pass

    seen = {}

    def command_line(meta, scen, rundir, qmp_path, guest_port, host_port, disk):
        seen.update(rundir=rundir, qmp=qmp_path, disk=disk)
        raise Started
    monkeypatch.setattr(qemu, "command_line", command_line)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Started):
        cycle.run(scenario.from_dict({"name": "rel"}), Path("out/run"), meta={"qemu_binary": "x"})
    assert all(p.is_absolute() for p in seen.values()), seen
    assert seen["rundir"] == tmp_path / "out" / "run"
