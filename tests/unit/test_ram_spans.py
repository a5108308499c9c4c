"""RAM's span storage (a big first write kept as one span, not one list per
page) answers every reader exactly as the per-page index does: the same
writes per page in the same order, the same pages at any time and filter,
the same touched pages, the same zero-copy views."""

from __future__ import annotations

import random

from kdumpsim.machine.ram import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory

NPAGES = 48
RAM = [(0, NPAGES * PAGE_SIZE)]
ZERO = [(40 * PAGE_SIZE, 44 * PAGE_SIZE)]


class PerPage(PhysicalMemory):
    """The plain index: every write noted page by page, never a span."""
    SPAN_MIN_PAGES = 1 << 62


class SmallSpans(PhysicalMemory):
    """Spans from 3 whole pages on, so short random writes make and split them."""
    SPAN_MIN_PAGES = 3


def _pair(cls: type[PhysicalMemory] = SmallSpans) -> tuple[PhysicalMemory, PhysicalMemory]:
    return cls(RAM, key=0x5EED, zero=ZERO), PerPage(RAM, key=0x5EED, zero=ZERO)


def _write(mems, addr: int, data: bytes, time: int, actor: str = "dev") -> None:
    for m in mems:
        m.write(addr, data, time, actor)


def _deltas(mem: PhysicalMemory, pfn: int, keep=None) -> list[tuple]:
    return [(d.time, d.offset, bytes(d.data), d.actor, d.src_off, d.seq, d.full) for d in mem.deltas_of(pfn, keep)]


def _pieces(mem: PhysicalMemory, addr: int, size: int, time) -> list[bytes]:
    return [bytes(p) for p in mem.iter_read(addr, size, time)]


def _one(mem: PhysicalMemory, addr: int, size: int, time) -> bytes | None:
    view = mem._one_write(addr, size, time)
    return None if view is None else bytes(view)


def assert_same(spans: PhysicalMemory, plain: PhysicalMemory, rng: random.Random, times: list) -> None:
    """Every reader of `spans` answers as `plain`'s does."""
    assert plain._spans == [], "the reference never makes spans"
    keeps = [None, lambda w: w.actor == "kexec", lambda w: w.actor != "kexec", lambda w: w.length >= PAGE_SIZE]
    for pfn in range(NPAGES + 2):
        assert spans.seqs_of(pfn) == plain.seqs_of(pfn), pfn
        assert spans.writes_to(pfn) == plain.writes_to(pfn), pfn
        assert (pfn in spans.deltas) == (pfn in plain.deltas), pfn
        got = spans.deltas.get(pfn)
        assert (got is None) == (plain.deltas.get(pfn) is None), pfn
        assert bytes(spans.compose(pfn, spans.seqs_of(pfn))) == bytes(plain.compose(pfn, plain.seqs_of(pfn)))
        for keep in keeps:
            assert _deltas(spans, pfn, keep) == _deltas(plain, pfn, keep), pfn
        for t in times:
            assert spans._visible_full(pfn, t) == plain._visible_full(pfn, t), (pfn, t)
            for keep in keeps:
                assert bytes(spans.page(pfn, t, keep)) == bytes(plain.page(pfn, t, keep)), (pfn, t)
    assert spans.touched_pfns() == plain.touched_pfns()
    assert sorted(spans.deltas) == sorted(plain.deltas) and len(spans.deltas) == len(plain.deltas)
    for _ in range(60):
        a = rng.randrange(NPAGES * PAGE_SIZE)
        b = rng.randrange(a, NPAGES * PAGE_SIZE + 1)
        t = rng.choice(times)
        assert spans.touched_in(a, b) == plain.touched_in(a, b), (a, b)
        assert _pieces(spans, a, b - a, t) == _pieces(plain, a, b - a, t), (a, b, t)
        assert spans.written_after(a, b - a + 1, t or 0) == plain.written_after(a, b - a + 1, t or 0)
        assert spans.written_by({"dev"}, t or 0, a, b) == plain.written_by({"dev"}, t or 0, a, b)
    for first in range(NPAGES):        # every page-aligned range, as purgatory reads segments
        for n in (1, 2, 3, 5, 8, 13, NPAGES - first):
            if first + n <= NPAGES:
                for t in times:
                    addr, size = first * PAGE_SIZE, n * PAGE_SIZE
                    assert _one(spans, addr, size, t) == _one(plain, addr, size, t), (first, n, t)


def test_random_write_sequences_read_the_same_with_spans_as_page_by_page():
    rng = random.Random(19)
    made = split = 0
    for _ in range(25):
        mems = _pair()
        times = [None, 0]
        for k in range(rng.randrange(1, 14)):
            aligned = rng.random() < 0.6
            npages = rng.choice([0, 1, 2, 3, 4, 7, 12, 20])
            size = npages * PAGE_SIZE + (0 if aligned else rng.randrange(1, PAGE_SIZE))
            start = rng.randrange(NPAGES) * PAGE_SIZE + (0 if aligned else rng.randrange(PAGE_SIZE))
            size = max(1, min(size, NPAGES * PAGE_SIZE - start))
            time = k * 10 + rng.randrange(3)
            first, end = start >> PAGE_SHIFT, ((start + size - 1) >> PAGE_SHIFT) + 1
            split += any(a < end and first < b for a, b, _ in mems[0]._spans)     # writes into a span
            before = len(mems[0]._spans)
            _write(mems, start, rng.randbytes(size), time, rng.choice(["kexec", "dev"]))
            made += len(mems[0]._spans) > before
            times += [time - 1, time]
        assert_same(*mems, rng, times)
    assert made > 20 and split > 10, (made, split)


def test_a_loaded_segment_is_one_span_and_one_view():
    """A 40-page load is noted as one span, not 40 lists, and purgatory's
    whole-segment read of it is one zero-copy view of the loaded bytes."""
    spans, plain = mems = _pair(PhysicalMemory)
    spans.SPAN_MIN_PAGES = 8
    data = random.Random(1).randbytes(40 * PAGE_SIZE)
    _write(mems, 4 * PAGE_SIZE, data, 0, "kexec")
    assert spans._spans == [(4, 44, 0)] and not spans._pages
    view = spans._one_write(4 * PAGE_SIZE, 40 * PAGE_SIZE, 5)
    assert isinstance(view, memoryview) and view.obj is spans._data[0] and bytes(view) == data
    assert [len(p) for p in spans.iter_read(4 * PAGE_SIZE, 40 * PAGE_SIZE, 5)] == [40 * PAGE_SIZE]
    assert spans._one_write(4 * PAGE_SIZE, 40 * PAGE_SIZE, -1) is None, "not yet loaded at time -1"
    _write(mems, 30 * PAGE_SIZE + 100, b"dma", 7)          # a later write into the span
    assert spans._spans == [(4, 30, 0), (31, 44, 0)] and spans.seqs_of(30) == [0, 1]
    assert spans._one_write(4 * PAGE_SIZE, 40 * PAGE_SIZE, 8) is None
    assert bytes(spans._one_write(4 * PAGE_SIZE, 26 * PAGE_SIZE, 8)) == data[:26 * PAGE_SIZE]
    assert bytes(spans._one_write(31 * PAGE_SIZE, 13 * PAGE_SIZE, 8)) == data[27 * PAGE_SIZE:]
    assert_same(spans, plain, random.Random(2), [None, -1, 0, 6, 7])


def test_writes_at_and_across_span_edges():
    spans, plain = mems = _pair()
    rng = random.Random(3)
    _write(mems, 10 * PAGE_SIZE, rng.randbytes(10 * PAGE_SIZE), 0, "kexec")       # span [10, 20)
    assert spans._spans == [(10, 20, 0)]
    _write(mems, 9 * PAGE_SIZE, rng.randbytes(PAGE_SIZE), 1)                      # the page before
    _write(mems, 20 * PAGE_SIZE, rng.randbytes(PAGE_SIZE), 2)                     # the page after
    assert spans._spans == [(10, 20, 0)], "neighbours leave the span alone"
    _write(mems, 10 * PAGE_SIZE, rng.randbytes(1), 3)                             # its first page's first byte
    _write(mems, 20 * PAGE_SIZE - 1, rng.randbytes(1), 4)                          # its last page's last byte
    assert spans._spans == [(11, 19, 0)]
    _write(mems, 15 * PAGE_SIZE - 5, rng.randbytes(8 * PAGE_SIZE), 5)             # from inside the span out past it
    assert spans._spans == [(11, 14, 0)] and spans.seqs_of(15) == [0, 5] and spans.seqs_of(22) == [5]
    _write(mems, 30 * PAGE_SIZE + 7, rng.randbytes(6 * PAGE_SIZE), 6, "kexec")    # unaligned: whole pages 31..35
    assert (31, 36, 6) in spans._spans and spans.seqs_of(30) == [6] == spans.seqs_of(36)
    _write(mems, 12 * PAGE_SIZE, rng.randbytes(26 * PAGE_SIZE), 7)                # over both spans and the gap
    assert spans._spans == [(11, 12, 0)]
    assert_same(spans, plain, rng, [None, 0, 1, 2, 3, 4, 5, 6, 7, -1])


def test_a_big_write_over_written_pages_is_noted_page_by_page():
    """Spans are for pages nobody wrote: a big write over a written page
    keeps the per-page lists, so each page's order of writes holds."""
    spans, plain = mems = _pair()
    rng = random.Random(4)
    _write(mems, 20 * PAGE_SIZE + 9, b"x", 0)
    _write(mems, 16 * PAGE_SIZE, rng.randbytes(10 * PAGE_SIZE), 1, "kexec")
    assert spans._spans == [] and spans.seqs_of(20) == [0, 1] and spans.seqs_of(16) == [1]
    _write(mems, 30 * PAGE_SIZE, rng.randbytes(5 * PAGE_SIZE), 2, "kexec")
    _write(mems, 28 * PAGE_SIZE, rng.randbytes(10 * PAGE_SIZE), 3, "kexec")     # over the span
    assert spans._spans == [] and spans.seqs_of(32) == [2, 3]
    assert_same(spans, plain, rng, [None, 0, 1, 2, 3])


def test_touched_in_across_spans_and_listed_pages():
    spans, plain = mems = _pair()
    rng = random.Random(5)
    _write(mems, 2 * PAGE_SIZE, rng.randbytes(5 * PAGE_SIZE), 0)
    _write(mems, 7 * PAGE_SIZE + 1, rng.randbytes(20), 1)
    _write(mems, 8 * PAGE_SIZE, rng.randbytes(4 * PAGE_SIZE), 2)
    _write(mems, 30 * PAGE_SIZE, rng.randbytes(9 * PAGE_SIZE), 3)
    assert len(spans._spans) == 3
    for a, b in [(0, NPAGES * PAGE_SIZE), (3 * PAGE_SIZE + 1, 9 * PAGE_SIZE - 1), (6 * PAGE_SIZE, 8 * PAGE_SIZE),
                 (7 * PAGE_SIZE + 50, 7 * PAGE_SIZE + 60), (12 * PAGE_SIZE, 30 * PAGE_SIZE), (38 * PAGE_SIZE, 1 << 40),
                 (5 * PAGE_SIZE, 5 * PAGE_SIZE)]:
        assert spans.touched_in(a, b) == plain.touched_in(a, b), (a, b)
    assert spans.touched_pfns() == plain.touched_pfns() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11] + list(range(30, 39))


def test_a_run_reads_the_same_as_with_the_per_page_index(small_modern, monkeypatch):
    """A whole run (kexec load, DMA, purgatory, the copy) with spans off
    gives the same record: the readers the stages use agree."""
    from kdumpsim.measure import simulate
    from kdumpsim.measure.record import run_record
    cfg = small_modern('devices=[{"name": "nic0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "64K", '
                       '"chunk": "6K", "period": "1ms", "duration": "40ms"}]')
    with_spans = simulate(cfg, 2, trace=False)
    assert with_spans.machine.memory._spans, "the load made spans"
    monkeypatch.setattr(PhysicalMemory, "SPAN_MIN_PAGES", 1 << 62)
    plain = simulate(cfg, 2, trace=False)
    assert not plain.machine.memory._spans
    assert run_record(with_spans) == run_record(plain)
    a, b = with_spans.machine.memory, plain.machine.memory
    assert a.touched_pfns() == b.touched_pfns()
    for pfn in a.touched_pfns()[::7]:
        assert a.seqs_of(pfn) == b.seqs_of(pfn)
