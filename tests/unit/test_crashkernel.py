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
