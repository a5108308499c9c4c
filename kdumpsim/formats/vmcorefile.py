"""The /proc/vmcore file as the capture kernel exports it: for every byte of
the file, where in old memory it comes from (fs/proc/vmcore.c). Built by
kdumpsim.crash.procvmcore, written out by kdumpsim.formats.vmcore."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdumpsim.formats import elf


@dataclass(frozen=True)
class Chunk:
    """File bytes [offset, offset+size) are old memory [paddr, paddr+size);
    they stand for physical memory at `origin` (differs for the backup copy)."""
    offset: int
    paddr: int
    size: int
    origin: int


@dataclass
class VmcoreLayout:
    elfclass: int
    e_machine: int
    phdrs: list[elf.Phdr]            # as exported: merged PT_NOTE first, then the PT_LOADs
    header: bytes                    # ELF header + program headers, padded to notes_offset
    notes: bytes                     # the merged notes
    notes_offset: int
    chunks: list[Chunk]
    size: int
    dropped_notes: list[int] = field(default_factory=list)   # p_offset of PT_NOTEs with no note
    note_sources: list[int] = field(default_factory=list)    # p_offset of each kept PT_NOTE

    def head_bytes(self) -> bytes:
        """Everything before the first PT_LOAD byte: header, notes, padding."""
        first = self.chunks[0].offset if self.chunks else self.size
        head = self.header + bytes(self.notes_offset - len(self.header)) + self.notes
        return head + bytes(first - len(head))
