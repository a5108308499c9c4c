"""crashkernel= ranges as kernel/crash_core.c parse_crashkernel_mem reads them (issue 17, item 6)."""

from __future__ import annotations

import pytest

from kdumpsim.errors import LayoutError
from kdumpsim.machine.crashkernel import parse_crashkernel
from kdumpsim.units import GiB, MiB


def test_the_first_matching_range_wins() -> None:
    assert parse_crashkernel("0-16G:128M,4G-16G:256M", 8 * GiB) == (128 * MiB, None)
    assert parse_crashkernel("4G-16G:256M,0-16G:128M@16M", 8 * GiB) == (256 * MiB, 16 * MiB)


def test_ram_is_rounded_up_to_128m_before_matching() -> None:
    # 511.6 MiB of System RAM counts as 512M: the range 512M- matches, as in the kernel
    assert parse_crashkernel("0-512M:64M,512M-:128M", 512 * MiB - 400 * 1024) == (128 * MiB, None)


@pytest.mark.parametrize(("spec", "fragment"), [
    ("1G-1G:64M", "end <= start"),
    ("2G-1G:64M,0-:64M", "end <= start"),
    ("0-:1G", "invalid size"),
    ("0-:0", "gives size 0"),
])
def test_the_kernel_refuses(spec: str, fragment: str) -> None:
    with pytest.raises(LayoutError, match=fragment):
        parse_crashkernel(spec, 1 * GiB)


def test_high_reserves_above_4g_with_a_low_region_both_left_out_of_the_dump():
    from conftest import load_named

    from kdumpsim.measure import simulate
    from kdumpsim.measure.report import build_report
    run = simulate(load_named("modern-x86_64", "kexec.crashkernel=256M,high", "devices=[]"), 0)
    r = run.machine.reservation
    assert r.start >= 4 << 30 and r.size == 256 * MiB
    assert r.low is not None and r.low[1] <= 4 << 30 and r.low[1] - r.low[0] == 256 * MiB   # max(64M + 8M, 256M)
    assert build_report(run)["reservation"]["low"] == list(r.low)
    for chunk in run.vmcore.chunks:                       # neither region is dumped (the backup copy
        assert not r.overlaps(chunk.origin, chunk.origin + chunk.size)   # lives in one, standing for low RAM)
    assert all(r.start <= s.start and s.end <= r.end for s in run.image.segments)


def test_low_size_can_be_given_and_high_needs_an_automatic_x86_64_reservation():
    import pytest
    from conftest import load_named

    from kdumpsim.machine.layout import Machine
    m = Machine(load_named("modern-x86_64", "kexec.crashkernel=256M,high", "kexec.crashkernel_low=128M"), 0)
    assert m.reservation.low[1] - m.reservation.low[0] == 128 * MiB
    with pytest.raises(LayoutError, match=",high is for an automatic"):
        Machine(load_named("modern-x86_64", "kexec.crashkernel=256M,high@6G"), 0)
