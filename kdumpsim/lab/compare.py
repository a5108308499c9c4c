"""compare: predicted (predicted.json) against measured (result.json), side by side.

Each figure has its stated tolerance; `compare` fails when one is outside it:

- post-panic frames that landed in the old ring, and those in the vmcore:
  within 10 % of measured (the model's count: payload writes into RX buffers,
  not descriptor write-backs);
- dumped pages changed by DMA (payload pages + ring page): within 10 %; and
  where both sides list them (a result measured with every buffer address,
  predicted with placement `given`), the two page sets differ by at most
  10 % of the measured count (symmetric difference);
- why the old DMA stopped: equal (lab `traffic_ended` -- the sender stopped
  after the dump -- is the model's `running_at_end` or `traffic_ended`);
- phase times (capture kernel start, /init, the NIC's reset, dump start and
  end, dump rate, when the last frame landed): within +-30 % of measured
  (TCG times move that much with host load), predicted from the lab's timing
  profile (predicted.json `profile`), not from the run's own times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import LabError

COUNT_TOL = 0.10
SET_FIG = "DMA-changed dumped pages: pages not in both sets"
TIME_TOL = 0.30
# lab reason -> model reasons that mean the same
STOP_MAP = {
    "ring_exhausted": {"ring_exhausted"},
    "traffic_ended": {"traffic_ended", "running_at_end"},
    "driver_reset": {"driver_reset"},
    "virtio_pci_reset": {"virtio_pci_reset"},
}


@dataclass
class Check:
    figure: str
    measured: Any
    predicted: Any
    tolerance: str
    ok: bool

    def row(self) -> str:
        return f"| {self.figure} | {_fmt(self.measured)} | {_fmt(self.predicted)} | {self.tolerance} | " \
               f"{'ok' if self.ok else 'FAIL'} |"


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def within(measured: float | None, predicted: float | None, tol: float) -> bool:
    """|predicted - measured| <= tol * measured (both present)."""
    if measured is None or predicted is None:
        return False
    return abs(predicted - measured) <= tol * abs(measured) + 1e-9


def stop_equal(measured: str | None, predicted: str | None) -> bool:
    return measured is not None and predicted in STOP_MAP.get(measured, {measured})


def checks(result: dict, predicted: dict) -> list[Check]:
    """Every compared figure with its tolerance and verdict."""
    out: list[Check] = []
    pp, mp = result.get("post_panic", {}), predicted.get("post_panic", {})

    def count(fig: str, m: Any, p: Any) -> None:
        out.append(Check(fig, m, p, "10%", within(m, p, COUNT_TOL)))

    count("post-panic frames landed in the old ring", pp.get("landed_old_ring"), mp.get("landed_old_ring"))
    count("post-panic frames in the vmcore", pp.get("in_vmcore"), mp.get("in_vmcore"))
    cls = result.get("pages", {}).get("classes", {})
    m_pages = cls.get("payload", 0) + cls.get("ring", 0)
    if result.get("pages", {}).get("dma_pages") is not None:
        m_pages = len(set(result["pages"]["dma_pages"]))      # each page once (see measure: dma_pages)
    count("dumped pages changed by DMA (payload+ring)", m_pages, predicted.get("pages", {}).get("dma_changed"))
    m_set = result.get("pages", {}).get("dma_pages")
    p_set = predicted.get("pages", {}).get("dma_pages")
    if m_set is not None and p_set is not None:
        diff = len(set(m_set) ^ set(p_set))
        out.append(Check(SET_FIG, 0, diff,
                         f"<= 10% of {len(m_set)}", diff <= COUNT_TOL * len(m_set)))
    m_stop, p_stop = result.get("dma_stop", {}).get("reason"), predicted.get("dma_stop", {}).get("reason")
    out.append(Check("old DMA stop reason", m_stop, p_stop, "equal", stop_equal(m_stop, p_stop)))
    prof = predicted.get("profile", predicted)
    mph, pph = result.get("phases_s", {}), prof.get("phases_s", {})
    for name in ("capture_kernel_start", "capture_init", "nic_driver_load", "disk_driver_load",
                 "dump_start", "dump_end", "dump_rate_mb_s"):
        if name in pph:
            m, p = mph.get(name), pph[name]
            out.append(Check(f"{name} (profile)", m, p, "30%", within(m, p, TIME_TOL)))
    m_last = result.get("dma_stop", {}).get("last_landed_send_s")
    p_last = prof.get("dma_stop", {}).get("last_landed_s")
    if m_last is not None:
        out.append(Check("last frame landed at, s (profile)", m_last, p_last, "30%", within(m_last, p_last, TIME_TOL)))
    return out


def table(result: dict, predicted: dict, rows: list[Check] | None = None) -> str:
    rows = rows if rows is not None else checks(result, predicted)
    name = result.get("scenario", {}).get("name", "?")
    head = [f"{name}: predicted (kdumpsim, seed {predicted.get('seed', 0)}, timing from the "
            f"{predicted.get('timing', 'run')}; '(profile)': timing from the lab profile) vs measured",
            "", "| figure | measured | predicted | tolerance | |", "|---|---|---|---|---|"]
    return "\n".join(head + [r.row() for r in rows])


def compare(rundir: str | Path) -> tuple[bool, str, list[Check]]:
    """(all within tolerance, the side-by-side table, the checks) for RUNDIR."""
    result, predicted = _load(rundir)
    rows = checks(result, predicted)
    return all(r.ok for r in rows), table(result, predicted, rows), rows


def _load(rundir: str | Path) -> tuple[dict, dict]:
    """RUNDIR's result.json and predicted.json; LabError naming the one missing."""
    rundir = Path(rundir)
    paths = {n: rundir / f"{n}.json" for n in ("result", "predicted")}
    for n, p in paths.items():
        if not p.is_file():
            how = "measure" if n == "result" else "predict"
            raise LabError(f"no {p.name} in {rundir} (run `python -m kdumpsim.lab {how} {rundir}` first)")
    return json.loads(paths["result"].read_text()), json.loads(paths["predicted"].read_text())


def summary_table(rundirs: list[Path]) -> str:
    """One row per run directory (result.json + predicted.json): the figures
    compare checks, measured / predicted."""
    head = ["| scenario | frames landed in old ring (meas. / pred.) | in vmcore | DMA-changed dumped pages "
            "(payload+ring) | pages not in both sets | DMA stop (meas. / pred.) | capture kernel start, s (meas. / profile) | "
            "NIC reset, s | dump start, s | last frame landed, s (meas. / profile) | within tolerance |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for d in rundirs:
        result, predicted = _load(d)
        rows = checks(result, predicted)
        by = {r.figure: r for r in rows}

        def pair(fig: str, by: dict[str, Check] = by) -> str:
            r = by.get(fig)
            return "-" if r is None else f"{_fmt(r.measured)} / {_fmt(r.predicted)}"
        reset = pair("nic_driver_load (profile)") if "nic_driver_load (profile)" in by else pair(
            "disk_driver_load (profile)")
        failed = [r.figure for r in rows if not r.ok]
        lines.append(
            f"| {result['scenario']['name']} | {pair('post-panic frames landed in the old ring')} | "
            f"{pair('post-panic frames in the vmcore')} | {pair('dumped pages changed by DMA (payload+ring)')} | "
            f"{_fmt(getattr(by.get(SET_FIG), 'predicted', None))} | "
            f"{pair('old DMA stop reason')} | {pair('capture_kernel_start (profile)')} | {reset} | "
            f"{pair('dump_start (profile)')} | {pair('last frame landed at, s (profile)')} | "
            f"{'all' if not failed else 'no: ' + ', '.join(failed)} |")
    return "\n".join(head + lines)
