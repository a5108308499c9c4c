"""The collector's share of a run: modern-x86_64 (8 GiB) with makedumpfile
-d 31 against the same runs with dd, in one process, interleaved, best of
three rounds. Target: makedumpfile within 1.3x of dd."""

from __future__ import annotations

import time

from common import ROOT

SEEDS = range(1, 6)


def per_run(cfg) -> float:
    from kdumpsim.measure import simulate
    from kdumpsim.measure.record import run_record
    t = time.perf_counter()
    for s in SEEDS:
        run_record(simulate(cfg, s))
    return (time.perf_counter() - t) / len(SEEDS)


def main() -> dict:
    from kdumpsim.config.model import load_model
    path = ROOT / "models" / "modern-x86_64.yaml"
    dd, mdf = (load_model(path, [f"capture.collector={c}"]) for c in ("dd", "makedumpfile"))
    per_run(dd), per_run(mdf)                      # warm up (imports, caches)
    rounds = [(per_run(dd), per_run(mdf)) for _ in range(3)]
    t_dd, t_mdf = min(r[0] for r in rounds), min(r[1] for r in rounds)
    print("collector: one modern-x86_64 run (simulate + results row), best of 3 rounds of 5 seeds")
    print(f"  dd {t_dd:.3f} s, makedumpfile -d 31 {t_mdf:.3f} s: {t_mdf / t_dd:.2f}x (target <= 1.3x)")
    return {"dd": t_dd, "makedumpfile": t_mdf, "ratio": t_mdf / t_dd}


if __name__ == "__main__":
    from common import machine
    print(machine())
    main()
