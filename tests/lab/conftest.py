"""Lab test configuration: the `realkdump` marker (tests that boot QEMU)."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "realkdump: runs a real kdump cycle under QEMU TCG (needs KDUMPSIM_LAB=1 or CI; see lab/README.md)",
    )
