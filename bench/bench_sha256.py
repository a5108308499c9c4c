"""Purgatory hashing: the model's verify_sha256_digest reads the segments out
of simulated RAM (real bytes) and hashes them; its rate against hashlib
hashing the same bytes from one buffer."""

from __future__ import annotations

import hashlib

import simpy
from common import ROOT, best_of, machine

from kdumpsim.config.model import load_model
from kdumpsim.crash.purgatory import verify_sha256_digest
from kdumpsim.measure import simulate


def main() -> dict:
    run = simulate(load_model(ROOT / "models/modern-x86_64.yaml", ["devices=[]"]), 0)
    segs = [s for s in run.image.segments if s.hashed]
    nbytes = sum(s.memsz for s in segs)
    buffer = b"".join(s.data + bytes(s.memsz - len(s.data)) for s in segs)

    def model() -> None:
        run.env = simpy.Environment(initial_time=run.phase["purgatory_start"])   # RAM as purgatory saw it
        proc = run.env.process(verify_sha256_digest(run))
        run.env.run(until=proc)
        assert proc.value is True

    ours = best_of(5, model)
    base = best_of(5, lambda: hashlib.sha256(buffer).digest())
    print(f"sha256: purgatory {nbytes / ours / 1e6:,.0f} MB/s vs hashlib {nbytes / base / 1e6:,.0f} MB/s "
          f"over {nbytes / 2**20:.0f} MiB: ratio {base / ours:.2f}x (target >= 0.9x)")
    return {"ratio": base / ours, "mb_s": nbytes / ours / 1e6, "hashlib_mb_s": nbytes / base / 1e6}


if __name__ == "__main__":
    print(machine())
    main()
