#!/usr/bin/env bash
# Debian packages the real-kdump lab needs (kdumpsim.lab; see lab/README.md).
# The guest kernel itself is fetched by `python -m kdumpsim.lab setup`
# (apt-get download linux-image-6.1.0-*-amd64-unsigned), not installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(
  qemu-system-x86   # qemu-system-x86_64 7.2: -netdev dgram, -action panic=pause, QMP dump-guest-memory
  busybox-static    # the guest userland of both initramfs images
  kexec-tools       # kexec -p in the first kernel (copied into its initramfs)
  gcc libc6-dev     # the static panic helper (pvpanic outb, then sysrq 'c')
  cpio              # not used by the builder (it writes newc itself); handy to inspect images
  file              # setup checks that busybox is static
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "lab packages present: ${PKGS[*]}"
