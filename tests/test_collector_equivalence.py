"""The makedumpfile collector's fast paths give exactly the results pinned
from the straightforward per-page code (tests/mdf_cases.py,
tests/data/mdf_equivalence.json): the results row, the trace, the vmcore
and filtered ELF bytes, and the collector's answers for a sample of pfns and
file offsets, with DMA into mem_map (changed struct pages) and into
excluded pages, at several dump levels."""

from __future__ import annotations

import json

import pytest

from tests.mdf_cases import CASES, DATA, fingerprint

EXPECTED = json.loads(DATA.read_text())
SLOW = {"modern", "modern_memmap_ring", "rhel8", "cyclic_memmap_ring"}


def _params():
    """Each run without its files (fast, except the big machines), and the
    runs that write files with them (slow: a 1 GiB vmcore)."""
    for name, (model, ov, seeds, files) in CASES.items():
        for seed in seeds:
            slow = [pytest.mark.slow] if name in SLOW else []
            yield pytest.param(name, model, ov, seed, False, id=f"{name}/{seed}", marks=slow)
            if files:
                yield pytest.param(name, model, ov, seed, True, id=f"{name}/{seed}/files", marks=[pytest.mark.slow])


@pytest.mark.parametrize("name,model,overrides,seed,files", list(_params()))
def test_makedumpfile_results_are_unchanged(name, model, overrides, seed, files) -> None:
    want = EXPECTED[f"{name}/{seed}"]
    if not files:
        want = {k: v for k, v in want.items() if k not in ("vmcore", "filtered_elf")}
    got = fingerprint(model, overrides, seed, files)
    assert got["record"] == want["record"]
    assert got == want


def test_the_pinned_cases_exercise_the_paths_that_matter() -> None:
    recs = {k: v["record"] for k, v in EXPECTED.items()}
    assert any(r["keep_set_changed"] > 0 for r in recs.values())        # mem_map DMA changed the keep set
    assert any(r["excluded_pages_hit"] > 0 for r in recs.values())      # DMA into excluded pages
    assert any(not r["analysable_model"] for r in recs.values())
    assert {v["record"]["dump_level"] for v in EXPECTED.values()} >= {0, 1, 6, 16, 31}
