"""Runs per second against the code of commit dd56f58 (issue #19 was filed
there), both measured in this bench run: that commit is checked out into a
temporary git worktree and run with PYTHONPATH pointing at it, in child
processes alternating with this tree's.

Two comparisons, each commit on its own files:
- dma_sweep: the same number of runs drawn (seeded) from each commit's own
  experiments/dma_sweep.yaml (dd56f58's is 1440 runs of 5 placements x 3
  devices x 4 starts x 3 durations; today's 1296 runs add the DMA mechanism
  axis and the issue #12 device models), simulated in one process as a
  sweep's worker does (run_chunk);
- a plain run: `models/modern-x86_64.yaml` (each commit's own version of the
  file) for seeds 0..N-1, simulate() with the trace kept, as `kdumpsim run`.

Then today's dma_sweep on the code issue #19's work started from (88206a7:
today's models, which cost a run more than dd56f58's), as it was and with
its one shortcut of the issue (purgatory's resumed sha256) turned off.

Each side is timed twice, alternating, and the best is kept; the ratio uses
CPU seconds of the child (least disturbed by other load on a shared machine),
wall seconds are printed too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import PY, ROOT, machine

BASELINE = "dd56f58"
ROUND_START = "88206a7"     # the code issue #19's work started from: today's models, the same results
SWEEP_RUNS = 120
PLAIN_RUNS = 10

CHILD = r"""
import json, random, sys, time
try:
    from kdumpsim.sweep.design import load_experiment
    from kdumpsim.sweep.executors import Chunk, run_chunk
    from kdumpsim.config.model import load_model
    from kdumpsim.measure import simulate
except ImportError:                     # dd56f58's flat layout
    from kdumpsim.experiment import load_experiment
    from kdumpsim.executors import Chunk, run_chunk
    from kdumpsim.config import load_model
    from kdumpsim.sim import simulate
what, n = sys.argv[1], int(sys.argv[2])
if what.endswith("+hash-all"):          # purgatory hashes every byte, as before issue #19
    import kdumpsim.crash.purgatory as purgatory
    purgatory.written_since_load = lambda mem, addr, size: True
    what = what.split("+")[0]
if what == "sweep":
    exp = load_experiment("experiments/dma_sweep.yaml")
    sample = random.Random(0).sample(exp.runs(), n)
    models = {p: exp.model_for(p) for p in {r.point for r in sample}}
    run_chunk(Chunk(tuple(sample[:2]), models))            # warm: imports, stand-in images
    work = lambda: run_chunk(Chunk(tuple(sample), models))
else:
    cfg = load_model("models/modern-x86_64.yaml")
    simulate(cfg, 0)
    work = lambda: [simulate(cfg, s) for s in range(n)]
c, w = time.process_time(), time.perf_counter()
work()
print(json.dumps({"cpu": time.process_time() - c, "wall": time.perf_counter() - w}))
"""


def checkout(d: Path, commit: str) -> Path:
    tree = d / commit
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)
    return tree


def timed(tree: Path, what: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([PY, "-c", CHILD, what, str(n)], cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(tree_a: Path, tree_b: Path, what: str, n: int, what_a: str | None = None) -> tuple[dict, dict]:
    a: list[dict] = []
    b: list[dict] = []
    for _ in range(2):
        a.append(timed(tree_a, what_a or what, n))
        b.append(timed(tree_b, what, n))
    return min(a, key=lambda r: r["cpu"]), min(b, key=lambda r: r["cpu"])


def main() -> dict:
    print(f"baseline: runs per second against commit {BASELINE}")
    d = Path(tempfile.mkdtemp(prefix="kdumpsim-baseline-"))
    trees: list[Path] = []
    try:
        trees.append(checkout(d, BASELINE))
        tree = trees[0]
        out = {}
        for what, n, text in (("sweep", SWEEP_RUNS, f"dma_sweep, {SWEEP_RUNS} sampled runs of each commit's own file"),
                              ("plain", PLAIN_RUNS, f"models/modern-x86_64.yaml, {PLAIN_RUNS} seeds")):
            old, new = best(tree, ROOT, what, n)
            ratio = old["cpu"] / new["cpu"]
            print(f"  {text}: now {n / new['cpu']:.1f} runs per CPU-second ({n / new['wall']:.1f}/s wall), "
                  f"{BASELINE} {n / old['cpu']:.1f} ({n / old['wall']:.1f}/s wall): {ratio:.2f}x"
                  + (" (target >= 4x)" if what == "sweep" else ""))
            out[what] = {"now_cpu": new["cpu"], "old_cpu": old["cpu"], "ratio": ratio, "runs": n}
        # The same dma_sweep file and results, before this round's shortcuts.
        trees.append(checkout(d, ROUND_START))
        old, new = best(trees[1], ROOT, "sweep", SWEEP_RUNS)
        print(f"  today's dma_sweep, the same {SWEEP_RUNS} runs, against {ROUND_START} (before issue #19's "
              f"shortcuts but the purgatory one): {old['cpu'] / new['cpu']:.2f}x")
        out["round"] = {"ratio": old["cpu"] / new["cpu"]}
        # ... and with purgatory hashing every byte there too: today's model computed
        # the straightforward way, none of issue #19's shortcuts (the same results).
        old, new = best(trees[1], ROOT, "sweep", SWEEP_RUNS, what_a="sweep+hash-all")
        print(f"  today's dma_sweep, the same {SWEEP_RUNS} runs, against {ROUND_START} with purgatory hashing "
              f"every byte (none of issue #19's shortcuts): {old['cpu'] / new['cpu']:.2f}x")
        out["straightforward"] = {"ratio": old["cpu"] / new["cpu"]}
        return out
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    print(machine())
    main()
