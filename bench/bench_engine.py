"""Event engine overhead: a crash run of the modern x86_64 model against a
bare SimPy loop doing the same number of events, in the same process.

Reports time per event of (a) the model's event loop (env.run: CPUs, DMA,
purgatory hashing real bytes, capture kernel) and (b) the whole simulate()
call (with the kexec load and the metrics), each against the bare loop.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import simpy
from common import ROOT, best_of, machine

from kdumpsim.config.model import load_model
from kdumpsim.measure import simulate


class CountingEnvironment(simpy.Environment):
    """Counts processed events and the time spent inside env.run."""
    steps = 0
    run_seconds = 0.0

    def step(self) -> None:
        CountingEnvironment.steps += 1
        super().step()

    def run(self, until=None):
        t = time.perf_counter()
        try:
            return super().run(until)
        finally:
            CountingEnvironment.run_seconds += time.perf_counter() - t


def bare_loop(events: int) -> None:
    """Processes that hand off through timeouts and a shared event, like the model's."""
    env = simpy.Environment()
    per = max(1, events // 64)

    def proc(env: simpy.Environment, n: int):
        for i in range(n):
            yield env.timeout(i % 7 + 1)

    for _ in range(max(1, events // per)):
        env.process(proc(env, per - 1))
    env.run()


class ProfilingEnvironment(simpy.Environment):
    """Profiles env.run only (the event loop), to say what dominates it."""
    stats: pstats.Stats | None = None

    def run(self, until=None):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return super().run(until)
        finally:
            prof.disable()
            ProfilingEnvironment.stats = pstats.Stats(prof)


BYTE_WORK = ("sha256 of the segments (real bytes)", "generating DMA payload bytes",
             "simulated RAM (per-page write deltas, reads)", "byte copies and comparisons (bytes, numpy)")


def where_time_goes(cfg, trace: bool = True) -> list[tuple[str, float]]:
    """Shares of the event loop's own time (cProfile tottime), grouped."""
    simulate(cfg, 1, env_type=ProfilingEnvironment, trace=trace)
    groups: dict[str, float] = {}
    for (path, _, name), (_, _, tottime, _, _) in ProfilingEnvironment.stats.stats.items():
        if "HASH" in name or "sha256" in name:
            key = "sha256 of the segments (real bytes)"
        elif "simpy" in path:
            key = "SimPy scheduling"
        elif "random_raw" in name or "getrandbits" in name or "randbytes" in name or "to_bytes" in name \
                or (path.endswith("dma.py") and name == "__call__"):      # PayloadStream
            key = "generating DMA payload bytes"
        elif path.endswith("ram.py"):
            key = "simulated RAM (per-page write deltas, reads)"
        elif "numpy" in path or "bytes" in name or "memoryview" in name:
            key = "byte copies and comparisons (bytes, numpy)"
        elif "kdumpsim" in path:
            key = "the rest of the model (" + path.rsplit("/", 1)[-1] + ")"
        else:
            key = "other built-ins"
        groups[key] = groups.get(key, 0.0) + tottime
    total = sum(groups.values())
    return sorted(((k, v / total) for k, v in groups.items()), key=lambda kv: -kv[1])


def main() -> dict:
    cfg = load_model(ROOT / "models/modern-x86_64.yaml")
    simulate(cfg, 0)                     # warm caches (stand-in images, imports)
    runs, total = 5, 0.0
    CountingEnvironment.steps = 0
    CountingEnvironment.run_seconds = 0.0
    for seed in range(runs):
        t = time.perf_counter()
        simulate(cfg, seed, env_type=CountingEnvironment)
        total += time.perf_counter() - t
    events = CountingEnvironment.steps // runs
    loop_per_event = CountingEnvironment.run_seconds / runs / events
    whole_per_event = total / runs / events
    bare = best_of(5, lambda: bare_loop(events)) / events
    out = {
        "events_per_run": events,
        "model_loop_events_per_s": 1 / loop_per_event,
        "bare_events_per_s": 1 / bare,
        "loop_ratio": loop_per_event / bare,
        "whole_ratio": whole_per_event / bare,
        "run_seconds": total / runs,
    }
    print(f"engine: {events} events per crash run (modern-x86_64)")
    print(f"  model event loop  {out['model_loop_events_per_s']:>12,.0f} events/s  "
          f"= {out['loop_ratio']:.1f}x the bare loop's time per event (target <= 3x)")
    print(f"  whole simulate()  {1 / whole_per_event:>12,.0f} events/s  = {out['whole_ratio']:.1f}x "
          f"({out['run_seconds'] * 1000:.0f} ms per run)")
    print(f"  bare SimPy loop   {out['bare_events_per_s']:>12,.0f} events/s")
    shares = where_time_goes(cfg)
    print("  where the event loop's time goes (cProfile): "
          + "; ".join(f"{name} {share:.0%}" for name, share in shares[:6]))
    out["shares"] = shares
    # A sweep's run: no trace. The loop's own cost is its time less the byte
    # work (payload bytes, RAM's write records and reads, sha256, copies), by
    # the shares cProfile gives that work inside the loop.
    CountingEnvironment.steps = 0
    CountingEnvironment.run_seconds = 0.0
    for seed in range(runs):
        simulate(cfg, seed, env_type=CountingEnvironment, trace=False)
    quiet = CountingEnvironment.run_seconds / CountingEnvironment.steps
    byte_share = sum(v for k, v in where_time_goes(cfg, trace=False) if k in BYTE_WORK)
    own = quiet * (1 - byte_share)
    out.update(sweep_loop_ratio=quiet / bare, own_ratio=own / bare, byte_share=byte_share)
    print(f"  without a trace (a sweep's run): {quiet / bare:.1f}x the bare loop per event; byte work "
          f"{byte_share:.0%} of it; the loop's own cost without it {own / bare:.1f}x (target <= 3x)")
    return out


if __name__ == "__main__":
    print(machine())
    main()
