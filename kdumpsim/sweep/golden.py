"""Golden timelines: each shipped model, run with a few fixed seeds, must keep
producing the same timeline (event order and times) unless we mean it to change.

    .venv/bin/python -m kdumpsim.sweep.golden            # check: print what moved, exit 1 on a difference
    .venv/bin/python -m kdumpsim.sweep.golden --regen    # rewrite tests/golden/*.jsonl on purpose (make golden)

A golden file (tests/golden/<model>-seed<N>.jsonl) is one header line (model,
seed, outcome, phase times, event count, a digest of the dropped details)
followed by one line per trace event: time_ns, actor, kind and its details,
except that DMA events (dma_write, dma_fault, dma_to_nowhere) keep only their
region: their addresses and sizes go into the header's digest, which keeps
the files small and still notices when a device writes somewhere else.
tests/test_golden.py uses `check_case`; a mismatch reads like

    modern-x86_64 seed 1: timeline differs from tests/golden/modern-x86_64-seed1.jsonl
      first difference at event 57:
        expected {"actor":"purgatory","kind":"sha256_segment",...,"time_ns":1072000}
        actual   {"actor":"purgatory","kind":"sha256_segment",...,"time_ns":1084300}
      purgatory_start moved +12.3 us; 40 events moved (max +12.3 us); 2 events added (nic0 dma_write x2)
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpsim import paths
from kdumpsim.trace.events import Event
from kdumpsim.units import fmt_duration

ROOT = paths.ROOT
GOLDEN_DIR = ROOT / "tests" / "golden"
MODELS_DIR = ROOT / "models"
SEEDS = (1, 2, 3)
FORMAT = "kdumpsim-golden-timeline/1"
REGEN_COMMAND = ".venv/bin/python -m kdumpsim.sweep.golden --regen   (or: make golden)"
# Events whose byte-level details are bulky and kept only as a digest.
DIGESTED_KINDS = {"dma_write": ("addr", "bytes"), "dma_fault": ("iova", "bytes"), "dma_to_nowhere": ("addr", "bytes")}


@dataclass(frozen=True)
class Case:
    model: str          # model file stem in models/
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-seed{self.seed}"

    def path(self, golden_dir: Path = GOLDEN_DIR) -> Path:
        return Path(golden_dir) / f"{self.name}.jsonl"


def cases(models_dir: Path = MODELS_DIR) -> list[Case]:
    """Every shipped model with every seed in SEEDS."""
    return [Case(p.stem, s) for p in sorted(Path(models_dir).glob("*.yaml")) for s in SEEDS]


# ------------------------------------------------------------------ content
def _line(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def timeline_records(events: Iterable[Event]) -> tuple[list[dict[str, Any]], str]:
    """(one dict per event without the bulky details, digest of what was dropped)."""
    records: list[dict[str, Any]] = []
    h = hashlib.sha256()
    for e in events:
        details = dict(e.details)
        dropped = DIGESTED_KINDS.get(e.kind, ())
        if dropped:
            h.update(_line({"t": e.time, "a": e.actor, **{k: details.get(k) for k in dropped}}).encode())
            for k in dropped:
                details.pop(k, None)
        rec = {"time_ns": e.time, "actor": e.actor, "kind": e.kind, **_plain(details)}
        prev = records[-1] if records else None
        if dropped and prev is not None and _same_burst(prev, rec):
            prev["writes"] = prev.get("writes", 1) + 1      # one record for a burst (an NVMe command's pages)
            prev["until_ns"] = e.time
            continue
        records.append(rec)
    return records, h.hexdigest()


def _same_burst(prev: dict[str, Any], rec: dict[str, Any]) -> bool:
    """Consecutive events of one actor that differ only in time (the digest keeps each one)."""
    def key(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("time_ns", "until_ns", "writes")}
    return key(prev) == key(rec)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


@dataclass
class Golden:
    header: dict[str, Any]
    records: list[dict[str, Any]]

    def dumps(self) -> str:
        return "".join(_line(r) + "\n" for r in [self.header, *self.records])


def simulate_case(case: Case, models_dir: Path = MODELS_DIR) -> Golden:
    from kdumpsim.config.model import load_model
    from kdumpsim.measure import simulate
    run = simulate(load_model(Path(models_dir) / f"{case.model}.yaml"), case.seed)
    records, digest = timeline_records(run.trace.events)
    header = {"format": FORMAT, "model": case.model, "seed": case.seed, "outcome": run.outcome,
              "events": len(records), "phase_ns": dict(sorted(run.phase.items())),
              "dma_details_sha256": digest, "regenerate": REGEN_COMMAND}
    return Golden(header, records)


def load_golden(path: Path) -> Golden:
    try:
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a golden timeline ({e})") from None
    if not lines or lines[0].get("format") != FORMAT:
        raise ValueError(f"{path}: not a golden timeline (expected a {FORMAT} header)")
    return Golden(lines[0], lines[1:])


# ------------------------------------------------------------------ diff
def _match(exp: list[dict[str, Any]], act: list[dict[str, Any]]):
    """Pair up events of the two timelines, per (actor, kind) stream in order:
    identical records first (difflib), then the rest of each differing stretch
    position by position. Returns (moved, changed, added, removed) as lists of
    (actor, kind, expected record or None, actual record or None)."""
    streams: dict[tuple[str, str], tuple[list, list]] = {}
    for r in exp:
        streams.setdefault((r["actor"], r["kind"]), ([], []))[0].append(r)
    for r in act:
        streams.setdefault((r["actor"], r["kind"]), ([], []))[1].append(r)
    moved: list[tuple[str, str, Any, Any]] = []
    changed: list[tuple[str, str, Any, Any]] = []
    added: list[tuple[str, str, Any, Any]] = []
    removed: list[tuple[str, str, Any, Any]] = []
    for (actor, kind), (e, a) in streams.items():
        sm = difflib.SequenceMatcher(None, [_line(r) for r in e], [_line(r) for r in a], autojunk=False)
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                continue
            for x, y in zip(e[i1:i2], a[j1:j2]):
                (moved if x["time_ns"] != y["time_ns"] else changed).append((actor, kind, x, y))
            n = min(i2 - i1, j2 - j1)
            removed += [(actor, kind, x, None) for x in e[i1 + n:i2]]
            added += [(actor, kind, None, y) for y in a[j1 + n:j2]]
    return moved, changed, added, removed


def _count_list(items: Iterable[tuple], limit: int = 4) -> str:
    c = Counter(f"{it[0]} {it[1]}" for it in items)
    parts = [f"{name} x{n}" if n > 1 else name for name, n in c.most_common(limit)]
    if len(c) > limit:
        parts.append(f"+{len(c) - limit} more kinds")
    return ", ".join(parts)


def _n(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def diff(expected: Golden, actual: Golden) -> list[str]:
    """Readable differences, [] when the timelines are identical."""
    out: list[str] = []
    eh, ah = expected.header, actual.header
    if eh.get("outcome") != ah.get("outcome"):
        out.append(f"outcome changed: {eh.get('outcome')} -> {ah.get('outcome')}")
    exp, act = expected.records, actual.records
    first = next((i for i, (a, b) in enumerate(zip(exp, act)) if a != b), None)
    if first is None and len(exp) != len(act):
        first = min(len(exp), len(act))
    if first is not None:
        out.append(f"first difference at event {first}:")
        out.append(f"  expected {_line(exp[first]) if first < len(exp) else '(no more events)'}")
        out.append(f"  actual   {_line(act[first]) if first < len(act) else '(no more events)'}")
    summary = []
    ep, ap = eh.get("phase_ns", {}), ah.get("phase_ns", {})
    for name in sorted(set(ep) | set(ap), key=lambda n: (ep.get(n, ap.get(n, 0)), n)):
        if name not in ap:
            summary.append(f"phase {name} no longer reached")
        elif name not in ep:
            summary.append(f"phase {name} now reached at {ap[name]} ns")
        elif ep[name] != ap[name]:
            summary.append(f"{name} moved {fmt_duration(signed=True, ns=ap[name] - ep[name])}")
    moved, changed, added, removed = _match(exp, act)
    if moved:
        deltas = [y["time_ns"] - x["time_ns"] for _, _, x, y in moved]
        big = max(deltas, key=abs)
        summary.append(f"{_n(len(moved))} moved (largest {fmt_duration(signed=True, ns=big)}: {_count_list(moved, 3)})")
    if added:
        summary.append(f"{_n(len(added))} added ({_count_list(added)})")
    if removed:
        summary.append(f"{_n(len(removed))} removed ({_count_list(removed)})")
    if changed:
        summary.append(f"{_n(len(changed))} changed details ({_count_list(changed)})")
    if not moved and not added and not removed and not changed and first is not None:
        summary.append("same events at the same times, in a different order")
    if eh.get("dma_details_sha256") != ah.get("dma_details_sha256"):
        summary.append("DMA addresses/sizes changed (dma_details_sha256 differs)")
    if summary:
        out.append("; ".join(summary))
    return out


def regen_command(golden_dir: Path = GOLDEN_DIR, models_dir: Path = MODELS_DIR, prog: str | None = None) -> str:
    """The command that regenerates these goldens, repeating a non-default --models/--dir."""
    import shlex
    if prog is None and Path(golden_dir) == GOLDEN_DIR and Path(models_dir) == MODELS_DIR:
        return REGEN_COMMAND
    parts = [prog or "kdumpsim golden", "--regen"]
    if Path(models_dir) != MODELS_DIR:
        parts += ["--models", shlex.quote(str(models_dir))]
    if Path(golden_dir) != GOLDEN_DIR:
        parts += ["--dir", shlex.quote(str(golden_dir))]
    return " ".join(parts)


def check_case(case: Case, golden_dir: Path = GOLDEN_DIR, models_dir: Path = MODELS_DIR,
               regen: str | None = None) -> str | None:
    """None when the simulation matches the golden file, else a readable report
    whose hint is `regen` (default: the command for these directories)."""
    regen = regen or regen_command(golden_dir, models_dir)
    path = case.path(golden_dir)
    if not path.exists():
        return f"{case.model} seed {case.seed}: no golden file {path}; create it with {regen}"
    problems = diff(load_golden(path), simulate_case(case, models_dir))
    if not problems:
        return None
    lines = [f"{case.model} seed {case.seed}: timeline differs from {path}"]
    lines += [f"  {p}" for p in problems]
    lines.append(f"  if the change is intended, regenerate: {regen}")
    return "\n".join(lines)


def regenerate(golden_dir: Path = GOLDEN_DIR, models_dir: Path = MODELS_DIR) -> list[tuple[Path, int]]:
    from kdumpsim.atomic import write_text
    written = []
    for case in cases(models_dir):
        path = case.path(golden_dir)
        write_text(path, simulate_case(case, models_dir).dumps())
        written.append((path, path.stat().st_size))
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare every golden file with the simulation "
                                                          "(the default); exit 1 on a difference")
    mode.add_argument("--regen", action="store_true", help="rewrite every golden file from the current simulation")
    p.add_argument("--dir", type=Path, default=GOLDEN_DIR, help=f"golden directory (default {GOLDEN_DIR})")
    p.add_argument("--models", type=Path, default=MODELS_DIR, help=f"models directory (default {MODELS_DIR})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdumpsim.sweep.golden",
                                description="Check (default) or regenerate the golden timelines in tests/golden.")
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace, prog: str | None = None) -> int:
    """Check or regenerate as `args` (from add_arguments) say; `prog` names the command in hints."""
    if args.regen:
        known = {c.path(args.dir) for c in cases(args.models)}
        for path, size in regenerate(args.dir, args.models):
            print(f"wrote {path} ({size} bytes)")
        for stale in sorted(set(Path(args.dir).glob("*-seed*.jsonl")) - known):
            print(f"note: {stale} belongs to no model/seed any more; delete it if it is not needed")
        return 0
    failed = 0
    for case in cases(args.models):
        report = check_case(case, args.dir, args.models, regen_command(args.dir, args.models, prog))
        if report:
            failed += 1
            print(report)
        else:
            print(f"ok  {case.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
