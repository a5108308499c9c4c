"""`python -m kdumpsim.lab setup`: check the host tools, fetch the guest kernel,
build the panic helper and the two initramfs images, and cache the result.

- Host tools come from Debian packages (lab/ci-install.sh installs them):
  qemu-system-x86 (7.2: `-netdev dgram`, `-action panic=pause`, QMP
  `dump-guest-memory`; QEMU 7.2 docs system/invocation), busybox-static,
  kexec-tools, gcc + libc6-dev (static helper).
- The guest kernel is Debian's linux-image-6.1.0-N-amd64-unsigned, fetched
  with `apt-get download` (pinned to 6.1.0-56 by default, or env
  KDUMPSIM_LAB_KERNEL; falls back to the newest 6.1.0-N offered by
  `apt-cache search`) and unpacked with `dpkg -x`.  Its version goes into
  every result.
- The cache directory (env KDUMPSIM_LAB_CACHE, default ~/.cache/kdumpsim-lab)
  holds debs/ (downloads), kernel-<pkg>/ (unpacked), and images-<key>/ where
  key is the SHA-256 of every input (kernel package, busybox, kexec and its
  libraries, helper source, init scripts, the lab's image code).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import LabError, initramfs

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_KERNEL_PKG = "linux-image-6.1.0-56-amd64-unsigned"
# tool -> Debian package that provides it
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "gcc": "gcc",
    "kexec": "kexec-tools",
    "apt-get": "apt",
    "dpkg": "dpkg",
    "ldd": "libc-bin",
}
BUSYBOX_STATIC = Path("/bin/busybox")


def cache_dir() -> Path:
    return Path(os.environ.get("KDUMPSIM_LAB_CACHE", "~/.cache/kdumpsim-lab")).expanduser()


def _sha(paths: list[Path], extra: bytes = b"") -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(extra)
    return h.hexdigest()


def find_tool(name: str) -> Path:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise LabError(f"missing tool {name} (Debian package {TOOLS.get(name, name)}; run lab/ci-install.sh)")
    return Path(path)


def install_missing() -> list[str]:
    """`apt-get install` the Debian packages of missing tools (root only).
    The same list as lab/ci-install.sh."""
    missing = [pkg for name, pkg in TOOLS.items() if not (shutil.which(name) or
               shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin"))]
    if not BUSYBOX_STATIC.is_file():
        missing.append("busybox-static")
    if not list(Path("/usr/lib").glob("*/libc.a")):
        missing.append("libc6-dev")
    if not shutil.which("file"):
        missing.append("file")
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError(f"missing packages {' '.join(missing)} and not root: run lab/ci-install.sh as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
    if proc.returncode != 0:
        raise LabError(f"apt-get install {' '.join(missing)} failed (exit {proc.returncode})")
    return missing


def check_tools() -> dict[str, Path]:
    tools = {name: find_tool(name) for name in TOOLS}
    if not BUSYBOX_STATIC.is_file():
        raise LabError("missing /bin/busybox (Debian package busybox-static; run lab/ci-install.sh)")
    out = subprocess.run(["file", "-b", str(BUSYBOX_STATIC)], capture_output=True, text=True).stdout \
        if shutil.which("file") else "statically linked"
    if "statically linked" not in out and "static-pie" not in out:
        raise LabError("/bin/busybox is not static (install busybox-static, not busybox)")
    libc_a = list(Path("/usr/lib").glob("*/libc.a"))
    if not libc_a:
        raise LabError("missing static libc (Debian package libc6-dev) for the panic helper")
    tools["busybox"] = BUSYBOX_STATIC
    return tools


def _apt_candidates() -> list[str]:
    pinned = os.environ.get("KDUMPSIM_LAB_KERNEL", DEFAULT_KERNEL_PKG)
    names = [pinned]
    out = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"],
                         capture_output=True, text=True).stdout
    found = [line.split()[0] for line in out.splitlines() if line.strip()]
    found.sort(key=lambda n: int(re.search(r"6\.1\.0-(\d+)-", n).group(1)), reverse=True)
    names += [n for n in found if n != pinned]
    return names


def fetch_kernel(cache: Path) -> Path:
    """Download (once) the guest kernel .deb; return its path."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    pinned = os.environ.get("KDUMPSIM_LAB_KERNEL", DEFAULT_KERNEL_PKG)
    have = sorted(debs.glob(f"{pinned}_*.deb"))
    if have:
        return have[-1]
    errors = []
    for name in _apt_candidates():
        have = sorted(debs.glob(f"{name}_*.deb"))
        if have:
            return have[-1]
        proc = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
        have = sorted(debs.glob(f"{name}_*.deb"))
        if proc.returncode == 0 and have:
            if name != pinned:
                print(f"lab setup: {pinned} not offered, using {name}", file=sys.stderr)
            return have[-1]
        errors.append(f"{name}: {proc.stderr.strip().splitlines()[-1:] if proc.stderr else proc.returncode}")
    raise LabError("cannot download a linux-image-6.1.0-*-amd64-unsigned package "
                   f"(try `apt-get update`): {'; '.join(errors)}")


def unpack_kernel(deb: Path, cache: Path) -> tuple[Path, dict]:
    dest = cache / f"kernel-{deb.stem}"
    done = dest / ".unpacked"
    if not done.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
        done.touch()
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                          capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in info.strip().splitlines())
    vmlinuz = sorted((dest / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise LabError(f"no boot/vmlinuz-* in {deb.name}")
    release = vmlinuz[0].name[len("vmlinuz-"):]
    return dest, {"package": fields["Package"], "version": fields["Version"], "release": release,
                  "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}


def bzimage_init_size(vmlinuz: Path) -> int:
    """init_size from the bzImage setup header (offset 0x260; boot protocol 2.10+,
    Documentation/arch/x86/boot.rst)."""
    data = vmlinuz.read_bytes()[:0x270]
    return int.from_bytes(data[0x260:0x264], "little")


def setup(force: bool = False, verbose: bool = True, install: bool = False) -> dict:
    """Make sure everything a cycle needs exists; return the image metadata.
    With install=True, missing Debian packages are installed first."""
    if install:
        installed = install_missing()
        if installed and verbose:
            print(f"lab setup: installed {' '.join(installed)}")
    tools = check_tools()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    deb = fetch_kernel(cache)
    kroot, kinfo = unpack_kernel(deb, cache)
    vmlinuz = kroot / "boot" / f"vmlinuz-{kinfo['release']}"
    moddir = kroot / "lib" / "modules" / kinfo["release"]
    kexec = Path(os.path.realpath(tools["kexec"]))
    libs = initramfs.shared_libs(kexec)
    code = [Path(__file__), Path(initramfs.__file__)] + sorted(DATA_DIR.iterdir())
    key = _sha([tools["busybox"], kexec] + [Path(os.path.realpath(lib)) for lib in libs] + code,
               extra=kinfo["deb_sha256"].encode())[:16]
    out = cache / f"images-{key}"
    meta_path = out / "meta.json"
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        if verbose:
            print(f"lab setup: cached {out}")
        return meta
    tmp = cache / f".images-{key}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    helper = tmp / "panic-helper"
    proc = subprocess.run([str(tools["gcc"]), "-static", "-O2", "-Wall", "-o", str(helper),
                           str(DATA_DIR / "panic-helper.c")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"gcc failed to build the panic helper: {proc.stderr.strip().splitlines()[-1:]}")
    capture_gz, groups = initramfs.build_capture(tools["busybox"], moddir, DATA_DIR)
    (tmp / "initrd-capture.gz").write_bytes(capture_gz)
    first_gz, _ = initramfs.build_first(tools["busybox"], moddir, DATA_DIR, vmlinuz, capture_gz, kexec, helper)
    (tmp / "initrd-first.gz").write_bytes(first_gz)
    shutil.copyfile(vmlinuz, tmp / "vmlinuz")
    qemu_ver = subprocess.run([str(tools["qemu-system-x86_64"]), "--version"],
                              capture_output=True, text=True).stdout.splitlines()[0]
    kexec_ver = subprocess.run([str(kexec), "--version"], capture_output=True, text=True).stdout.strip()
    meta = {
        "key": key,
        "dir": str(out),
        "kernel": kinfo,
        "kernel_init_size": bzimage_init_size(vmlinuz),
        "vmlinuz": str(out / "vmlinuz"),
        "initrd_first": str(out / "initrd-first.gz"),
        "initrd_capture": str(out / "initrd-capture.gz"),
        "module_groups": groups,
        "qemu": qemu_ver,
        "kexec_tools": kexec_ver,
        "qemu_binary": str(tools["qemu-system-x86_64"]),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if verbose:
        print(f"lab setup: built {out} (kernel {kinfo['package']} {kinfo['version']})")
    return meta
