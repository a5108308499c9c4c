"""One crash: wall time and peak memory of `kdumpsim run` (no vmcore) for
1 GiB, 64 GiB and 1 TiB of RAM and 4, 64 and 256 CPUs, each in a fresh
process. Peak memory must not depend on RAM size; time must grow with CPUs
and DMA transfers, not with RAM."""

from __future__ import annotations

from common import PY, child, machine

RAM = {"1G": "3fffffff", "64G": "fffffffff", "1T": "ffffffffff"}
CPUS = (4, 64, 256)


def argv(ram: str, cpus: int) -> list[str]:
    iomem = ('["00001000-0009fbff : System RAM", "00100000-7fffffff : System RAM"'
             + (f', "100000000-{RAM[ram]} : System RAM"]' if ram != "1G" else "]"))
    if ram == "1G":
        iomem = '["00001000-0009fbff : System RAM", "00100000-3fffffff : System RAM"]'
    return [PY, "-m", "kdumpsim", "run", "models/modern-x86_64.yaml", "--quiet",
            "--set", f"memory.iomem={iomem}", "--set", f"cpus.count={cpus}", "--set", "cpus.panic_cpu=1",
            "--set", "kexec.crashkernel=256M"]


def main() -> dict:
    rows = {}
    for cpus in CPUS:
        for ram in RAM:
            wall, rss = min(child(argv(ram, cpus)) for _ in range(2))
            rows[(ram, cpus)] = (wall, rss)
    print("crash: kdumpsim run (no vmcore), modern-x86_64 with NIC + NVMe, best of 2")
    print(f"  {'CPUs':>5} " + "".join(f"{r:>22}" for r in RAM))
    for cpus in CPUS:
        cells = "".join(f"{rows[(r, cpus)][0]:>8.2f} s {rows[(r, cpus)][1] / 2**20:>7.0f} MiB " for r in RAM)
        print(f"  {cpus:>5} {cells}")
    mem_ratio = max(rows[("1T", c)][1] / rows[("1G", c)][1] for c in CPUS)
    time_ratio = max(rows[("1T", c)][0] / rows[("1G", c)][0] for c in CPUS)
    print(f"  peak memory 1 TiB / 1 GiB: {mem_ratio:.3f}x (target <= 1.10x); "
          f"time 1 TiB / 1 GiB: {time_ratio:.2f}x")
    return {"rows": {f"{r}/{c}": v for (r, c), v in rows.items()}, "mem_ratio": mem_ratio, "time_ratio": time_ratio}


if __name__ == "__main__":
    print(machine())
    main()
