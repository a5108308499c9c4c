"""Read a vmcore with libkdumpfile and print what it sees as JSON.

Runs under Debian's /usr/bin/python3 (python3-libkdumpfile 0.5.1 is not
importable from the project's venv), so it imports nothing from kdumpsim and
is driven by tests/test_vmcore.py through a subprocess:

    /usr/bin/python3 tests/kdumpfile_probe.py REQUEST.json

REQUEST: {"path": FILE, "ostype": "linux" | null,
          "reads": [[space, addr, size], ...]}   space: KPHYSADDR | MACHPHYSADDR
Output:  {"attrs": {...}, "cpus": [{"pid": N, "regs": {name: int}}, ...],
          "ostype_error": str | null,
          "reads": [{"hex": str} | {"error": "Type: message"}, ...]}

`ostype` is set as the attribute "addrxlat.ostype" after opening, as
libkdumpfile's own python/vtop.py and python/showxlat.py do: libkdumpfile
0.5.1 never infers the OS of an ELF dump, not even from VMCOREINFO, and
without it cannot set up kernel-physical reads (x86_64: "Cannot determine
5-level paging", src/addrxlat/x86_64.c get_virt_bits; ia32: "Cannot determine
PAE state", src/addrxlat/ia32.c). The same holds for a real /proc/vmcore.
Setting it makes libkdumpfile read init_uts_ns (when VMCOREINFO names it) and
fail unless "Linux" is there (src/kdumpfile/open.c ostype_post_hook);
machine-physical reads need no OS knowledge.
"""

import json
import sys

import kdumpfile

ATTRS = ("arch.name", "arch.machine", "arch.ptr_size", "arch.page_size", "file.format",
         "file.description", "cpu.number", "max_pfn", "linux.uts.sysname", "linux.uts.nodename",
         "linux.uts.release", "linux.uts.machine",
         "linux.vmcoreinfo.lines.OSRELEASE", "linux.vmcoreinfo.lines.CRASHTIME", "addrxlat.ostype")
SPACES = {"KPHYSADDR": kdumpfile.KDUMP_KPHYSADDR, "MACHPHYSADDR": kdumpfile.KDUMP_MACHPHYSADDR}


def _get(attr_dir, key):
    """attr[key], or None when libkdumpfile does not have it."""
    try:
        value = attr_dir[key]
    except Exception:  # noqa: BLE001 - KeyError or a kdumpfile exception: both mean "not known"
        return None
    return value if isinstance(value, (int, str)) else repr(value)


def _error(exc):
    return "%s: %s" % (type(exc).__name__, exc)


def _read(ctx, space, addr, size):
    try:
        return {"hex": bytes(ctx.read(SPACES[space], addr, size)).hex()}
    except Exception as exc:  # noqa: BLE001 - the test wants to see every failure
        return {"error": _error(exc)}


def _cpus(ctx):
    out = []
    for i in range(int(ctx.attr["cpu.number"])):
        d = ctx.attr["cpu.%d" % i]
        regs = {name: int(d["reg"][name]) for name in d["reg"].keys()}
        out.append({"pid": int(d["pid"]), "regs": regs})
    return out


def main():
    with open(sys.argv[1]) as fh:
        req = json.load(fh)
    ctx = kdumpfile.kdumpfile(req["path"])
    ostype_error = None
    if req.get("ostype"):
        try:
            ctx.attr["addrxlat.ostype"] = req["ostype"]
        except Exception as exc:  # noqa: BLE001 - reported, the test decides
            ostype_error = _error(exc)
    result = {
        "attrs": {key: _get(ctx.attr, key) for key in ATTRS},
        "cpus": _cpus(ctx),
        "ostype_error": ostype_error,
        "reads": [_read(ctx, space, addr, size) for space, addr, size in req.get("reads", [])],
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
