"""Timelines of a run: the Perfetto JSON, the Gantt PNG and `kdumpsim timeline`."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from kdumpsim.cli.main import main
from kdumpsim.config.model import load_model
from kdumpsim.errors import TraceError
from kdumpsim.measure import simulate
from kdumpsim.trace.events import Event
from kdumpsim.trace.timeline import (
    build_timeline,
    gantt_figure,
    gantt_rows,
    perfetto_json,
    plot_gantt,
    read_trace,
    region_classifier,
    to_perfetto,
)
from kdumpsim.units import MiB

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
REQUIRED = {"X": {"name", "ph", "ts", "dur", "pid", "tid", "cat", "args"},
            "i": {"name", "ph", "ts", "pid", "tid", "s", "cat", "args"},
            "C": {"name", "ph", "ts", "pid", "args"},
            "M": {"name", "ph", "pid", "tid", "args"}}


def _device(kind: str, start: str, lo: int, hi: int, **extra) -> str:
    """A device firmware programmed before the reservation existed (stale DMA): the named way in."""
    spec = {"name": "dev0", "kind": kind, "bus": "pci0", "start": start, "capture_driver": False,
            "placement": {"mode": "stale", "start": lo, "end": hi}, **extra}
    return "devices=" + json.dumps([spec])


SCENARIOS = {
    "modern": ("modern-x86_64", [], 1),
    "paper": ("paper-i386-2005", [], 1),
    "paper-2004": ("paper-i386-2004", [], 1),
    "hung": ("paper-i386-2005", ["cpus.unresponsive={2: hung, 3: nmi_lost}"], 0),
    "mismatch": ("paper-i386-2005", [_device("nic_rx_ring", "0ms", 16 * MiB, 20 * MiB)], 1),
    "silent": ("paper-i386-2005", [_device("nic_rx_ring", "1s", 16 * MiB, 20 * MiB)], 1),
}


@pytest.fixture(scope="module")
def runs():
    cache = {}

    def get(name: str):
        if name not in cache:
            model, overrides, seed = SCENARIOS[name]
            cache[name] = simulate(load_model(MODELS / f"{model}.yaml", overrides), seed)
        return cache[name]
    return get


def _tracks(doc: dict) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


# ------------------------------------------------------------------ Perfetto
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_perfetto_json_is_valid_trace_event_format(runs, scenario: str) -> None:
    run = runs(scenario)
    doc = json.loads(perfetto_json(run.trace.events))
    assert doc["displayTimeUnit"] == "ns"
    events = doc["traceEvents"]
    assert events
    last: dict[tuple, float] = {}
    for e in events:
        assert e["ph"] in REQUIRED, e
        missing = REQUIRED[e["ph"]] - e.keys()
        assert not missing, f"{e} lacks {missing}"
        if e["ph"] == "M":
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        key = (e["pid"], e["tid"], e["name"] if e["ph"] == "C" else "")
        assert e["ts"] >= last.get(key, 0), f"ts goes backwards on track {key}"
        last[key] = e["ts"]
    # One track per CPU and per DMA engine, each named once.
    names = list(_tracks(doc).values())
    assert len(names) == len(set(names))
    cpu_tracks = [n for n in names if n.startswith("cpu")]
    assert len(cpu_tracks) == len(run.cpus)
    assert {n.split(" ")[0] for n in cpu_tracks} == {f"cpu{c.id}" for c in run.cpus}
    engine_tracks = [n for n in names if n.split(" ")[0] in {e.name for e in run.engines}]
    assert len(engine_tracks) == len(run.engines)
    # Spans on one track nest or follow each other (no partial overlap).
    by_track: dict[tuple, list] = {}
    for e in events:
        if e["ph"] == "X":
            by_track.setdefault((e["pid"], e["tid"]), []).append((e["args"]["start_ns"], e["args"]["end_ns"]))
    for spans in by_track.values():
        for a in spans:
            for b in spans:
                assert a[1] <= b[0] or b[1] <= a[0] or (a[0] <= b[0] and b[1] <= a[1]) \
                    or (b[0] <= a[0] and a[1] <= b[1]), f"partial overlap {a} {b}"


def test_perfetto_output_is_deterministic_and_sorted(runs) -> None:
    run = runs("paper")
    text = perfetto_json(run.trace.events)
    assert text == perfetto_json(list(run.trace.events))
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"


def test_times_are_microseconds_since_the_panic_and_pre_panic_events_clamp(runs) -> None:
    run = runs("paper")
    doc = to_perfetto(run.trace.events)
    load = next(e for e in doc["traceEvents"] if e["name"] == "kexec_load")
    assert load["ts"] == 0 and load["args"]["time_ns"] == -1_000_000_000
    assert doc["otherData"]["events_clamped_to_panic"] == len([e for e in run.trace if e.time < 0])
    start = run.phase["purgatory_start"]
    purg = next(e for e in doc["traceEvents"] if e["ph"] == "X" and e["name"] == "purgatory")
    assert purg["ts"] == start / 1000
    assert purg["dur"] == pytest.approx((run.phase["purgatory_end"] - start) / 1000)
    panic = next(e for e in doc["traceEvents"] if e["name"] == "panic")
    assert panic["ph"] == "i" and panic["ts"] == 0


def test_cpu_phases_running_nmi_halted(runs) -> None:
    run = runs("hung")
    tl = build_timeline(run.trace.events)
    cpu1 = tl.track("cpu1")
    assert [s.cat for s in cpu1.spans] == ["running", "nmi_handler", "halted"]
    assert cpu1.spans[0].end == cpu1.spans[1].start == run.cpus[1].nmi_at
    assert cpu1.spans[1].end == cpu1.spans[2].start == run.cpus[1].halted_at
    assert cpu1.spans[2].end == run.trace.events[-1].time
    for hung in ("cpu2", "cpu3"):       # never halt: one running span to the end of the trace
        t = tl.track(hung)
        assert [s.cat for s in t.spans] == ["never_halted"]
        assert t.spans[0].end == tl.end
    panic = tl.track("cpu0")
    assert [s.cat for s in panic.spans] == ["panic", "shutdown", "kexeced"]
    assert panic.spans[0].end == run.phase["nmi_shootdown_done"] == 1000_000_000
    assert any(i.name == "nmi_timeout" and i.cat == "alarm" for i in panic.instants)


def test_purgatory_capture_and_dma_spans(runs) -> None:
    run = runs("paper")
    tl = build_timeline(run.trace.events)
    purg = tl.track("purgatory")
    hashed = [s for s in purg.spans if s.cat == "sha256"]
    assert [s.args["segment"] for s in hashed] == [e.details["segment"] for e in run.trace.of_kind("sha256_segment")]
    for name, (start, end) in run.hash_times.items():
        span = next(s for s in hashed if s.args["segment"] == name)
        assert (span.start, span.end) == (start, end)
    backup = next(s for s in purg.spans if s.cat == "backup")
    assert backup.end == run.phase["purgatory_end"]
    cap = tl.track("capture")
    boot = next(s for s in cap.spans if s.cat == "boot")
    assert (boot.start, boot.end) == (run.phase["capture_boot_start"], run.phase["capture_boot_end"])
    dump = next(s for s in cap.spans if s.cat == "dump")
    assert (dump.start, dump.end) == (run.phase["dump_start"], run.phase["dump_end"])
    assert len([s for s in cap.spans if s.cat == "dump_segment"]) == len(run.vmcore.chunks)
    eng = run.engines[0]
    dma = tl.track(eng.name)
    active = next(s for s in dma.spans if s.cat == "dma_active")
    assert active.end == eng.stopped_at
    assert active.start == min(e.time for e in run.trace.of_kind("dma_write"))
    assert len([i for i in dma.instants if i.name == "dma_write"]) == eng.writes


def test_2004_relocation_and_mismatch_hang(runs) -> None:
    old = build_timeline(runs("paper-2004").trace.events).track("purgatory")
    assert [s.args["segment"] for s in old.spans if s.cat == "relocate"] == ["params", "kernel", "initrd"]
    bad = build_timeline(runs("mismatch").trace.events)
    purg = bad.track("purgatory")
    assert any(s.cat == "hang" for s in purg.spans)
    assert any(i.name == "purgatory_mismatch" and i.cat == "alarm" for i in purg.instants)
    assert bad.track("capture") is None


def test_dma_hits_into_segments_are_corruption_markers(runs) -> None:
    run = runs("silent")
    dma = build_timeline(run.trace.events).track("dev0")
    writes = [i for i in dma.instants if i.name == "dma_write"]
    assert writes and all(i.cat == "corruption" for i in writes if i.args["region"] != "first_kernel_ram")
    assert {i.args["region"] for i in writes if i.cat == "corruption"} == {"kernel"}
    # Without the region in the trace, the layout events classify the same way.
    stripped = [dataclasses.replace(e, details={k: v for k, v in e.details.items() if k != "region"})
                if e.kind == "dma_write" else e for e in run.trace]
    classify = region_classifier(stripped)
    for e, s in zip(run.trace, stripped):
        if e.kind == "dma_write":
            assert classify(s) == e.details["region"]
    nowhere = region_classifier([])(Event(5, "x", "dma_write", {"addr": 0x1000, "bytes": 4}))
    assert nowhere == "first_kernel_ram"


def test_trace_round_trip_gives_the_same_timeline(runs, tmp_path) -> None:
    run = runs("modern")
    buf = io.StringIO()
    run.trace.write_jsonl(buf)
    buf.seek(0)
    assert perfetto_json(_read(buf)) == perfetto_json(run.trace.events)
    path = tmp_path / "t.jsonl"
    path.write_text(buf.getvalue())
    assert read_trace(path) == _read(io.StringIO(buf.getvalue()))


# ------------------------------------------------------------------ Gantt
@pytest.mark.parametrize("scenario", ["modern", "hung", "mismatch", "paper-2004"])
def test_gantt_png_is_written_and_readable(runs, scenario: str, tmp_path) -> None:
    import matplotlib.image
    out = plot_gantt(runs(scenario).trace.events, tmp_path / "sub" / "gantt.png", title=scenario)
    assert out.stat().st_size > 10_000
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[1] > 1000 and img.shape[0] > 300
    assert not list(out.parent.glob(".*part"))        # written atomically, no leftovers


def test_gantt_with_many_cpus_stays_compact(tmp_path) -> None:
    import matplotlib.image
    cfg = load_model(MODELS / "paper-i386-2005.yaml", ["cpus.count=128", "devices=[]"])
    run = simulate(cfg, 0)
    img = matplotlib.image.imread(plot_gantt(run.trace.events, tmp_path / "many.png"))
    assert img.shape[0] < 1200        # the 127 CPUs that halted are one or two rows


def test_gantt_of_256_cpus_reads_at_page_width(tmp_path) -> None:
    """CPUs that did the same thing collapse into one row with a count and a spread;
    the ones that hung keep their own rows; the chart is a page wide with 7 pt labels."""
    import matplotlib.image
    cfg = load_model(MODELS / "modern-x86_64.yaml", ["cpus.count=256", "cpus.unresponsive={7: hung, 100: nmi_lost}"])
    run = simulate(cfg, 1)
    rows = gantt_rows(build_timeline(run.trace.events))
    cpu_rows = [r for r in rows if r.group == "cpu"]
    assert sum(len(r.cpus) for r in cpu_rows) == 256 and len(cpu_rows) <= 6
    assert [r.label for r in cpu_rows if len(r.cpus) == 1 and not r.panic] == ["cpu7", "cpu100"]
    group = next(r for r in cpu_rows if len(r.cpus) > 100)
    assert re.match(r"\d+ CPUs: NMI at [\d.–]+ µs, halted by [\d.]+ µs", group.note), group.note
    fig = gantt_figure(run.trace.events, model=cfg.name, seed=1)
    w, h = fig.get_size_inches()
    assert w == 7.0 and h < 6.5
    assert fig._suptitle.get_text() == "modern-x86_64, seed 1 (256 CPUs)"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == len(rows) and all(t.get_fontsize() >= 7 for t in fig.axes[0].get_yticklabels())
    img = matplotlib.image.imread(plot_gantt(run.trace.events, tmp_path / "256.png"))
    assert img.shape[1] == 1050 and img.shape[0] < 1000


def test_gantt_marks_phases_iommu_init_and_distinct_events() -> None:
    cfg = load_model(MODELS / "paper-i386-2005.yaml",
                     [_device("nic_rx_ring", "3s", 16 * MiB, 20 * MiB), "cpus.unresponsive={2: hung}"])
    events = simulate(cfg, 1).trace.events
    fig = gantt_figure(events)
    phase_texts = [t.get_text() for t in fig.axes[1].texts]
    for label in ("NMI round", "purgatory", "capture kernel boot", "driver probe", "capture kernel corrupted"):
        assert any(t.startswith(label) for t in phase_texts), (label, phase_texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "DMA write into the capture path" in legend and "corruption detected / capture failed" in legend
    assert "running, never answered the NMI" in legend
    iommu = [Event(-10, "kdumpsim", "run_info", {"model": "m", "seed": 3}), *events,
             Event(3_200_000_000, "iommu", "iommu_init", {"mode": "copy_tables"})]
    fig = gantt_figure(sorted(iommu, key=lambda e: e.time))
    assert any(t.get_text().startswith("IOMMU init") for t in fig.axes[1].texts)
    assert fig._suptitle.get_text() == "m, seed 3 (4 CPUs)"


def test_empty_trace_is_an_error(tmp_path) -> None:
    with pytest.raises(TraceError):
        to_perfetto([])
    with pytest.raises(TraceError):
        plot_gantt([], tmp_path / "x.png")


# ------------------------------------------------------------------ CLI
def test_cli_run_then_timeline(tmp_path, capsys) -> None:
    trace, perf, png = tmp_path / "t.jsonl", tmp_path / "out" / "t.json", tmp_path / "out" / "t.png"
    assert main(["run", str(MODELS / "paper-i386-2005.yaml"), "--seed", "1", "--trace", str(trace), "--quiet"]) == 0
    assert main(["timeline", str(trace), "--perfetto", str(perf), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert str(perf) in out and str(png) in out
    info = json.loads(trace.read_text().splitlines()[0])
    assert info["kind"] == "run_info" and info["model"] == "paper-i386-2005" and info["seed"] == 1
    assert not any(e["name"] == "run_info" for e in json.loads(perf.read_text())["traceEvents"])
    doc = json.loads(perf.read_text())
    assert any(e["name"] == "panic" for e in doc["traceEvents"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each output on its own.
    assert main(["timeline", str(trace), "--perfetto", str(tmp_path / "only.json"), "--quiet"]) == 0
    assert not (tmp_path / "only.png").exists()
    assert main(["timeline", str(trace), "--plot", str(tmp_path / "only.png"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_help_has_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["timeline", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "kdumpsim timeline out/trace.jsonl --perfetto" in out and "--plot" in out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "has no events"),
    ("{not json\n", "line 1: not JSON"),
    ('{"time_ns": 0, "actor": "cpu0", "kind": "panic"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ('{"actor": "cpu0", "kind": "panic"}\n', "missing time_ns"),
    ('{"time_ns": "soon", "actor": "cpu0", "kind": "panic"}\n', "time_ns must be an integer"),
])
def test_cli_bad_trace_files_exit_2(tmp_path, capsys, content, message) -> None:
    path = tmp_path / "trace.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["timeline", str(path), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdumpsim: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_directory_and_missing_outputs_exit_2(tmp_path, capsys) -> None:
    assert main(["timeline", str(tmp_path), "--perfetto", str(tmp_path / "x.json")]) == 2
    assert "is a directory" in capsys.readouterr().err
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"time_ns": 0, "actor": "cpu0", "kind": "panic"}\n')
    assert main(["timeline", str(trace)]) == 2
    assert "give --perfetto OUT.json and/or --plot OUT.png" in capsys.readouterr().err


def test_a_minimal_trace_still_draws(tmp_path) -> None:
    """Hand-written or truncated traces (a panic and little else) do not crash the views."""
    events = [Event(0, "cpu0", "panic", {}), Event(0, "cpu0", "nmi_ipi_sent", {"targets": 1}),
              Event(3000, "cpu1", "nmi_received", {}), Event(8000, "cpu1", "halted", {})]
    doc = to_perfetto(events)
    assert set(_tracks(doc).values()) == {"cpu0 (panic)", "cpu1"}
    png = plot_gantt(events, tmp_path / "m.png")
    from PIL import Image
    with Image.open(png) as im:                       # a real PNG of a page-wide chart
        assert im.format == "PNG" and im.size[0] >= 600


def _read(buf: io.StringIO) -> list[Event]:
    """A trace through the one reader, from a buffer."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write(buf.getvalue())
    try:
        return read_trace(fh.name)
    finally:
        Path(fh.name).unlink()


# ------------------------------------------------------------------ many tracks (issue 17 item 28)
def test_thousands_of_tracks_render_in_seconds(runs, tmp_path: Path) -> None:
    """14000 CPUs and 3000 DMA engines (a crafted trace; 3000 engines took 90 s,
    the chart growing a row per engine): CPUs collapse into groups, DMA engines
    past MAX_DMA_ROWS share one row that says how many it holds."""
    import time

    from kdumpsim.trace.timeline import MAX_DMA_ROWS
    base = runs("paper").trace.events
    cpu1 = [e for e in base if e.actor == "cpu1"]
    eth0 = [e for e in base if e.actor == "eth0"][:6]
    events = [e for e in base if e.actor != "cpu1"]
    events += [dataclasses.replace(e, actor=f"cpu{c}") for c in range(4, 14000) for e in cpu1]
    events += [dataclasses.replace(e, actor=f"dev{d}") for d in range(3000) for e in eth0]
    events.sort(key=lambda e: e.time)
    rows = gantt_rows(build_timeline(events))
    dma = [r for r in rows if r.group == "dma"]
    assert len(dma) == MAX_DMA_ROWS and dma[-1].label == f"{3001 - MAX_DMA_ROWS + 1} more DMA engines"
    # Engines that never stopped keep their rows (first come first); eth0 stopped: it is in the shared row.
    assert [r.label.split()[0] for r in dma[:-1]] == [f"dev{d}" for d in range(MAX_DMA_ROWS - 1)]
    assert dma[-1].note.startswith(
        f"{3001 - MAX_DMA_ROWS + 1} engines in one row ({3000 - MAX_DMA_ROWS + 1} never stopped)")
    assert sum(len(r.cpus) for r in rows if r.group == "cpu") == 14000 - 1     # cpu0, cpu2-cpu13999
    assert len(rows) < 30
    t0 = time.monotonic()
    plot_gantt(events, tmp_path / "many.png")
    assert time.monotonic() - t0 < 60                # ~5 s here; 90 s before for the engines alone
    assert (tmp_path / "many.png").stat().st_size > 10_000
