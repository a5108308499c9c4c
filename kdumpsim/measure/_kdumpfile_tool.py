"""libkdumpfile checks for kdumpsim.analysis, run under Debian's /usr/bin/python3
(python3-libkdumpfile is not importable from the project's venv): imports
nothing from kdumpsim.

    /usr/bin/python3 _kdumpfile_tool.py REQUEST.json

REQUEST: {"path": FILE, "vtop": [[vaddr, size], ...],   kernel-virtual reads
          "phys": [[paddr, size], ...],                   machine-physical reads
          "walk": {"root": paddr, "vaddrs": [...]},       4-level walks (x86_64)
          "pfn_scan": [first, last] | null}               which pages can be read
Output: {"error": str | null, "uts_release": str | null,
         "vtop": [{"hex": str} | {"error": str}], "phys": [...],
         "walk": [{"paddr": int} | {"error": str}],
         "readable": hex bitmap (bit i: pfn first + i) | null}

libkdumpfile translates the direct map and the kernel text linearly (from the
ELF program headers) and walks the page tables only elsewhere (vmemmap), so
"walk" walks them explicitly for any address: the entries are read from the
dump (physical), as makedumpfile's __vtop4_x86_64 does.

addrxlat.ostype is set to "linux" (libkdumpfile 0.5.1 does not infer it), so
kernel-virtual reads go through the dump's VMCOREINFO and page tables
(src/addrxlat/x86_64.c: init_top_pgt root, a linear map only for the direct
map and kernel text it detects).
"""

import json
import sys

import kdumpfile


def _read(ctx, space, addr, size):
    try:
        return {"hex": bytes(ctx.read(space, addr, size)).hex()}
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        return {"error": "%s: %s" % (type(exc).__name__, exc)}


def _walk(ctx, root, vaddr):
    """x86_64 4-level walk from the PGD at physical `root`."""
    table = root
    for level, shift in (("pgd", 39), ("pud", 30), ("pmd", 21), ("pte", 12)):
        where = table + ((vaddr >> shift) & 511) * 8
        try:
            entry = int.from_bytes(bytes(ctx.read(kdumpfile.KDUMP_MACHPHYSADDR, where, 8)), "little")
        except Exception as exc:  # noqa: BLE001
            return {"error": "%s at %#x: %s" % (level, where, exc)}
        if not entry & 1:
            return {"error": "%s entry %#x at %#x not present" % (level, entry, where)}
        frame = entry & 0x000FFFFFFFFFF000
        if level in ("pud", "pmd") and entry & 0x80:          # 1 GiB / 2 MiB page
            size = 1 << shift
            return {"paddr": (frame & ~(size - 1)) + (vaddr & (size - 1))}
        if level == "pte":
            return {"paddr": frame + (vaddr & 0xFFF)}
        table = frame
    return {"error": "unreachable"}


def main():
    with open(sys.argv[1]) as fh:
        req = json.load(fh)
    out = {"error": None, "uts_release": None, "vtop": [], "phys": [], "walk": [], "readable": None}
    try:
        ctx = kdumpfile.kdumpfile(req["path"])
        ctx.attr["addrxlat.ostype"] = "linux"
    except Exception as exc:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
        json.dump(out, sys.stdout)
        return
    try:
        out["uts_release"] = str(ctx.attr["linux.uts.release"])
    except Exception:  # noqa: BLE001
        pass
    out["vtop"] = [_read(ctx, kdumpfile.KDUMP_KVADDR, a, n) for a, n in req.get("vtop", [])]
    out["phys"] = [_read(ctx, kdumpfile.KDUMP_MACHPHYSADDR, a, n) for a, n in req.get("phys", [])]
    walk = req.get("walk")
    if walk:
        out["walk"] = [_walk(ctx, walk["root"], v) for v in walk["vaddrs"]]
    scan = req.get("pfn_scan")
    if scan:
        first, last = scan
        bits = bytearray((last - first + 8) // 8)
        for pfn in range(first, last + 1):
            try:
                ctx.read(kdumpfile.KDUMP_MACHPHYSADDR, pfn << 12, 1)
            except Exception:  # noqa: BLE001 - excluded (or never dumped)
                continue
            i = pfn - first
            bits[i >> 3] |= 1 << (i & 7)
        out["readable"] = bytes(bits).hex()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
