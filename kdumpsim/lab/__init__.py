"""kdumpsim.lab: a real kdump cycle under QEMU, to measure post-panic DMA.

The lab boots a Debian 6.1 kernel in QEMU (TCG), loads a capture kernel with
`kexec -p`, receives tagged numbered frames on an emulated NIC (e1000 or
virtio-net) over a loopback `-netdev dgram`, panics the guest, and measures in
the saved /proc/vmcore what the NIC wrote after the panic.  The method is the
one in the project's shared reference REAL-KDUMP-LAB.md.

Modules, one job each:
  scenario   -- load and check a scenario YAML file
  setup      -- check tools, fetch the guest kernel, build helper and images
  initramfs  -- write the two initramfs images (newc cpio, gzip)
  qemu       -- QEMU command line, QMP client, serial console reader
  traffic    -- tagged frame format and the bounded loopback sender
  elfcore    -- read ELF core files (vmcore, dump-guest-memory) by paddr
  nicstate   -- read NIC RX ring registers and descriptors
  iommu      -- VT-d state at the pause; IOVA -> physical from a RAM image
  cycle      -- run one kdump cycle and write a run directory
  measure    -- analyse a run directory into a JSON result and a summary
CLI: python -m kdumpsim.lab setup | run SCENARIO | measure RUNDIR | table RUNDIR...
"""

from __future__ import annotations


class LabError(Exception):
    """A lab failure to report as one line with exit status 2."""
