"""`kdumpsim experiment FILE`: run a sweep, save it as it goes, summarise and plot it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from kdumpsim.errors import WorkerLost

if TYPE_CHECKING:
    from kdumpsim.sweep.executors import Chunk, Executor, RunResult
    from kdumpsim.sweep.design import Experiment
    from kdumpsim.sweep.results import PartStore

EPILOG = """examples:
  kdumpsim experiment experiments/dma_sweep.yaml --out results/dma_sweep
  kdumpsim experiment experiments/dma_sweep.yaml --out results/dma_sweep --resume   # after Ctrl-C
  kdumpsim experiment experiments/design_2004_vs_2005.yaml --workers 2
  kdumpsim experiment experiments/dma_sweep.yaml --executor dask --scheduler tcp://127.0.0.1:8786
  kdumpsim experiment experiments/dma_sweep.yaml --dry-run       # validate, count the runs

Results in DIR: results.parquet (a row per run; its `rerun` column re-creates
the run alone with `kdumpsim run`, from the repo root), manifest.json,
summary.csv, the plots (PNG), parts/ (saved chunks; --resume runs only what
is missing from them).
"""


def register(sub: Any) -> None:
    sp = sub.add_parser("experiment", help="run a parameter sweep from an experiment file",
                        description="Run every point of an experiment file (a base model, axes, replicates) "
                                    "and write a Parquet table, a manifest, a summary and plots.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("file", help="experiment YAML (see experiments/)")
    sp.add_argument("--out", metavar="DIR", help="results directory (default results/<experiment name>)")
    sp.add_argument("--workers", type=int, metavar="N",
                    help="worker processes (default: the CPUs available; local executor or local Dask cluster)")
    sp.add_argument("--executor", choices=("local", "dask"), default="local",
                    help="local processes (default) or a dask.distributed cluster")
    sp.add_argument("--scheduler", metavar="ADDR",
                    help="Dask scheduler address (tcp://HOST:PORT) or scheduler file; without it --executor "
                         "dask starts a LocalCluster")
    sp.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in DIR: run only the runs missing from DIR/parts")
    sp.add_argument("--chunk-size", type=int, metavar="N", help="runs per task (default: about 10 chunks per worker)")
    sp.add_argument("--dry-run", action="store_true", help="validate every point, print the plan, run nothing")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from kdumpsim.errors import ConfigError
    from kdumpsim.sweep.executors import default_workers
    from kdumpsim.sweep.design import check_layouts, load_experiment, point_count_text
    # ConfigError, not cli.UsageError: the latter is another class under `python -m kdumpsim.cli`.
    if args.scheduler and args.executor != "dask":
        raise ConfigError("--scheduler", "", "needs --executor dask")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", "", "must be at least 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigError("--chunk-size", "", "must be at least 1")
    exp = load_experiment(args.file)
    check_layouts(exp)                  # an impossible point fails here, before any run
    out = Path(args.out or Path("results") / exp.spec.name)
    print(f"{exp.spec.name}: {point_count_text(exp)}", file=sys.stderr)
    _check_vmcore_space(exp, out)
    if args.dry_run:
        for p in exp.points:
            print(f"{p.index:5d}  {p.label}")
        return 0
    workers = args.workers or default_workers()
    return run_experiment(exp, out, workers, args)


def _check_vmcore_space(exp: Experiment, out: Path) -> None:
    """vmcores are as big as the model's RAM: say how much, refuse if the disk is too small."""
    import shutil

    from kdumpsim.errors import ConfigError
    if exp.spec.analyse:
        biggest = max(sum(r.end - r.start + 1 for r in exp.model_for(p.index).memory.iomem if r.type == "System RAM")
                      for p in exp.points)
        print(f"analyse: one vmcore of up to {biggest / 2**30:.1f} GiB at a time per worker in {out / 'scratch'}",
              file=sys.stderr)
    if exp.spec.vmcores == "none":
        return
    need = sum(sum(r.end - r.start + 1 for r in exp.model_for(p.index).memory.iomem if r.type == "System RAM")
               for p in exp.points)
    where = out if out.exists() else next(d for d in [out, *out.parents] if d.exists())
    free = shutil.disk_usage(where).free
    print(f"vmcores: first run of each point, about {need / 2**30:.1f} GiB in {out / 'vmcores'}", file=sys.stderr)
    if need > free:
        raise ConfigError(exp.source, "vmcores", f"'first' would write about {need / 2**30:.1f} GiB of vmcores "
                          f"({len(exp.points)} points) but {where} has {free / 2**30:.1f} GiB free: "
                          "use a model with less RAM, or vmcores: none")


def run_experiment(exp: Experiment, out: Path, workers: int, args: argparse.Namespace) -> int:
    from kdumpsim.sweep.executors import chunk_size, make_chunks, make_executor
    from kdumpsim.sweep.results import PartStore
    store = PartStore(out)
    started = _prepare(exp, out, store, args.resume)
    done = store.done()
    todo = [r for r in exp.runs() if (r.point, r.replicate) not in done]
    total = len(exp.points) * exp.spec.replicates
    if done:
        print(f"resuming: {len(done)} of {total} runs already in {store.parts}", file=sys.stderr)
    manifest = _manifest(exp, out, args, workers, started, status="running", runs=len(done))
    _write_manifest(out, manifest)
    vmcore_dir = str((out / "vmcores").resolve()) if exp.spec.vmcores == "first" else None
    t0 = time.monotonic()
    if todo:
        size = args.chunk_size or chunk_size(len(todo), workers)
        analyse_dir = str((out / "scratch").resolve()) if exp.spec.analyse else None
        chunks = make_chunks(todo, exp.model_for, size, exp.spec.seed, vmcore_dir, analyse_dir)
        with make_executor(args.executor, workers, args.scheduler) as ex:
            manifest["executor"] = _executor_text(ex)
            _run_chunks(exp, store, ex, chunks, total, len(done), args)
    return _finish(exp, out, store, manifest, len(todo), time.monotonic() - t0)


def _prepare(exp: Experiment, out: Path, store: PartStore, resume: bool) -> str:
    """Check a --resume continues the same experiment; else start afresh.
    Returns the start time to record (the first session's when resuming)."""
    from kdumpsim.errors import ConfigError
    from kdumpsim.sweep.results import read_manifest
    now = _now()
    previous = read_manifest(out)
    if resume:
        store.clean_temporaries()
        if previous and previous.get("experiment_sha256") != exp.sha256 and store.files():
            raise ConfigError(exp.source, "", f"changed since the run in {out} started (sha256 "
                              f"{previous.get('experiment_sha256', '?')[:12]}... != {exp.sha256[:12]}...): "
                              "its saved runs would not match; run without --resume to start afresh")
        return previous.get("started", now) if previous else now
    removed = store.clear() if store.parts.exists() else 0
    for stale in [out / "results.parquet", out / "summary.csv", *(out / "vmcores").glob("point-*.vmcore")]:
        stale.unlink(missing_ok=True)
    if removed:
        print(f"starting afresh: removed {removed} part files of an earlier run in {store.parts} "
              "(--resume continues one instead)", file=sys.stderr)
    return now


def _run_chunks(exp: Experiment, store: PartStore, ex: Executor, chunks: list[Chunk], total: int, done: int,
                args: argparse.Namespace) -> None:
    """Run the chunks, saving each chunk's rows as it arrives."""
    from tqdm import tqdm

    from kdumpsim.sweep.executors import run_chunk
    bar = tqdm(total=total, initial=done, unit="run", desc=exp.spec.name, file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True, mininterval=0.5, smoothing=0.05)
    saved = done
    try:
        for results in ex.map_unordered(run_chunk, chunks):
            rows = [_row(exp, r) for r in results]
            store.write(rows)
            saved += len(rows)
            bar.update(len(rows))
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {saved} of {total} runs saved in {store.parts}; "
              f"continue with: kdumpsim experiment {exp.source} --out {store.out} --resume", file=sys.stderr)
        raise
    except BrokenProcessPool as e:
        # A worker was killed (OOM killer, kill -9): what finished is saved.
        bar.close()
        raise WorkerLost(f"a worker process died ({e}); {saved} of {total} runs are saved in {store.parts}; "
                         f"continue with: kdumpsim experiment {exp.source} --out {store.out} --resume") from None
    finally:
        bar.close()


def _row(exp: Experiment, result: RunResult) -> dict[str, Any]:
    """One results row: identity, axis values, the kept metrics, how to re-run it."""
    from kdumpsim.errors import ConfigError
    from kdumpsim.sweep.design import kept
    p = exp.points[result.point]
    if result.error is not None:
        field_, message = result.error
        raise ConfigError(exp.source, f"point {p.index} ({p.label}) replicate {result.replicate}: {field_}", message)
    row: dict[str, Any] = {"point": p.index, "point_label": p.label, "replicate": result.replicate,
                           "seed": result.seed, **p.params}
    row.update({k: v for k, v in result.record.items() if kept(exp.spec, k)})
    row["overrides"] = json.dumps(p.overrides, separators=(",", ":"))
    row["rerun"] = exp.rerun_command(p, result.seed)
    return row


def _finish(exp: Experiment, out: Path, store: PartStore, manifest: dict, ran: int, seconds: float) -> int:
    """Merge the parts, print the summary, draw the plots, complete the manifest."""
    from kdumpsim.measure.record import RECORD_COLUMNS, RECORD_PREFIXES
    from kdumpsim.sweep.design import ID_COLUMNS, TAIL_COLUMNS
    from kdumpsim.sweep.plots import draw_plots
    from kdumpsim.sweep.results import merge
    first = list(ID_COLUMNS) + [a.name for a in exp.axes] + ["outcome"]
    table = merge(store, out / "results.parquet", first, list(RECORD_COLUMNS), list(RECORD_PREFIXES),
                  list(TAIL_COLUMNS))
    df = table.to_pandas()
    print_summary(exp, df, out)
    plots = draw_plots(exp, df, out)
    manifest.update(status="complete", finished=_now(), runs=table.num_rows, runs_this_session=ran,
                    seconds_this_session=round(seconds, 1), columns=table.column_names,
                    plots=[p.name for p in plots])
    _write_manifest(out, manifest)
    print(f"\n{table.num_rows} runs -> {out / 'results.parquet'}; plots: "
          f"{', '.join(p.name for p in plots) or 'none'}", file=sys.stderr)
    return 0


def print_summary(exp: Experiment, df: Any, out: Path) -> None:
    from kdumpsim.names import CAPTURE_OK
    from kdumpsim.sweep.results import format_table, marginal, summarize, summary_csv_rows, write_csv
    from kdumpsim.names import OUTCOMES
    seen = [o for o in OUTCOMES if (df["outcome"] == o).any()]
    rows = summarize(df, exp.points, seen, CAPTURE_OK)
    write_csv(summary_csv_rows(rows), out / "summary.csv")
    print(f"\n{exp.spec.name}: outcome shares per point, 95% Wilson intervals in brackets; "
          f"capture_failure = any outcome but {' / '.join(CAPTURE_OK)}")
    print(format_table(rows))
    for axis in exp.axes:
        labels = {p.index: p.display[axis.name] for p in exp.points}
        shares = marginal(df, axis.name, labels, list(dict.fromkeys(axis.display)), CAPTURE_OK)
        text = ", ".join(f"{v} {s.text()}" for v, s in shares)
        print(f"capture_failure by {axis.name}: {text}")


def _manifest(exp: Experiment, out: Path, args: argparse.Namespace, workers: int, started: str, **extra: Any) -> dict:
    from kdumpsim.sweep.results import versions
    return {
        "experiment": str(exp.path),
        "experiment_sha256": exp.sha256,
        "name": exp.spec.name,
        "model": exp.model_ref,
        "master_seed": exp.spec.seed,
        "replicates": exp.spec.replicates,
        "points": len(exp.points),
        "runs_total": len(exp.points) * exp.spec.replicates,
        "axes": [{"name": a.name, "keys": list(a.keys), "unit": a.unit, "values": list(a.display)} for a in exp.axes],
        "versions": versions(),
        "started": started,
        "resumed": bool(args.resume),
        "executor": args.executor,
        "workers": workers,
        "rerun_from": str(exp.root),
        "out": str(out),
        **extra,
    }


def _write_manifest(out: Path, manifest: dict) -> None:
    from kdumpsim.sweep.results import write_manifest
    write_manifest(out, manifest)


def _executor_text(ex: Executor) -> str:
    if ex.name == "dask":
        return f"dask {ex.scheduler} ({ex.workers} workers)"
    return f"local ({ex.workers} worker{'s' if ex.workers != 1 else ''})"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
