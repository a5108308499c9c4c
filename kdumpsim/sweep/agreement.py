"""How often the model's `analysable_model` verdict (kdumpsim.measure.verdict)
agrees with the real tools' `analysable` (kdumpsim.measure.analysis) over an
experiment run with `analyse: true` (issue #15).

    python -m kdumpsim.sweep.agreement RESULTS_DIR [--experiment FILE] [--workers N]

RESULTS_DIR holds the experiment's results (results.parquet, or its parts/).
With --experiment the verdict is recomputed for every row by simulating the
run again (no vmcore, no tools): for results written before the model
changed. Prints the agreement with its 95% Wilson interval, the confusion
counts and the disagreeing runs.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from kdumpsim.sweep.results import wilson


def load(results: Path) -> Any:
    import pandas as pd
    whole = results / "results.parquet"
    if whole.exists():
        return pd.read_parquet(whole)
    parts = sorted((results / "parts").glob("*.parquet"))
    if not parts:
        raise SystemExit(f"{results}: no results.parquet and no parts/*.parquet")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _verdict(args: tuple[str, int, int]) -> tuple[bool | None, str]:
    from kdumpsim.measure import simulate
    from kdumpsim.measure.verdict import verdict_record
    from kdumpsim.sweep.design import load_experiment
    path, point, seed = args
    exp = load_experiment(path)
    v = verdict_record(simulate(exp.model_for(point), seed))
    return v["analysable_model"], v["structures_changed"]


def recompute(df: Any, experiment: str, workers: int) -> Any:
    jobs = [(experiment, int(p), int(s)) for p, s in zip(df["point"], df["seed"])]
    with ProcessPoolExecutor(workers) as pool:
        got = list(pool.map(_verdict, jobs, chunksize=4))
    df = df.copy()
    df["analysable_model"] = [g[0] for g in got]
    df["structures_changed"] = [g[1] for g in got]
    return df


def report(df: Any) -> dict[str, Any]:
    both = df[df["analysable_model"].notna() & df["analysable"].notna()]
    real, model = both["analysable"].astype(bool), both["analysable_model"].astype(bool)
    agree = int((real == model).sum())
    lo, hi = wilson(agree, len(both))
    return {"runs": len(both), "agree": agree, "agreement": agree / len(both) if len(both) else None,
            "ci95": (lo, hi),
            "confusion": {"both_analysable": int((real & model).sum()), "both_not": int((~real & ~model).sum()),
                          "model_only": int((~real & model).sum()), "real_only": int((real & ~model).sum())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdumpsim.sweep.agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--experiment", help="recompute the model's verdict by re-simulating each run of this experiment")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--csv", type=Path, help="also write the per-run comparison here")
    a = ap.parse_args(argv)
    df = load(a.results)
    if a.experiment:
        df = recompute(df, a.experiment, a.workers)
    r = report(df)
    print(f"runs {r['runs']}: agreement {r['agree']}/{r['runs']} = {100 * (r['agreement'] or 0):.1f}% "
          f"[95% CI {100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}]")
    print("confusion:", r["confusion"])
    cols = [c for c in ("placement", "dma_start", "replicate", "seed", "analysable", "log_readable", "filter_ok",
                        "pagetables_ok", "analysable_model", "structures_changed") if c in df]
    bad = df[df["analysable_model"].astype(bool) != df["analysable"].astype(bool)]
    if len(bad):
        print(bad[cols].to_string(index=False))
    if a.csv:
        df[cols].to_csv(a.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
