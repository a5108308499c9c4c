"""kexec -p: loading the capture kernel into the crashkernel reservation,
by kexec-tools (`load`, the kexec_load syscall) or by the kernel
(`file_load`, kexec_file_load: `kexec -s`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdumpsim.kexec.file_load import kexec_file_load
from kdumpsim.kexec.load import KexecImage, kexec_load

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine


def load_capture_kernel(machine: Machine) -> KexecImage:
    """kexec -p with the model's kexec.method (docs/SOURCES.md §12)."""
    if machine.cfg.kexec.method == "kexec_file_load":
        return kexec_file_load(machine)
    return kexec_load(machine)
